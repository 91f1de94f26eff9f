//! The lab's wiring, made with iproute2 inside the lab's namespaces (`ip -n NS -batch -`: one
//! process per namespace and step). Nothing here touches the root namespace: every `ip` call
//! names a lab namespace, and sysctls are written from a thread inside one.
//!
//! ```text
//!  weft0-etcd (172.30.0.2) ─┐
//!  weft0-n1 (172.30.0.11) ──┼─ br0 in weft0-u (172.30.0.1, forwards) ── vext 203.0.113.1 ── weft0-ext (203.0.113.2)
//!  weft0-nN (172.30.0.10+N)─┘
//! ```
//!
//! The routed topology adds a second segment, `br1` (172.30.1.1/24) in the same underlay
//! namespace, holding the even nodes; the underlay namespace routes between the segments (and
//! has no route to pod subnets, so host-gw cannot cross them):
//!
//! ```text
//!  weft0-etcd, weft0-n1, n3.. ── br0 172.30.0.1 ─┐ weft0-u  ┌─ br1 172.30.1.1 ── weft0-n2, n4.. (172.30.1.10+i)
//!                                                └─ vext ── weft0-ext
//! ```

use super::names::{
    LabNames, NodeAddr, BRIDGE_A, BRIDGE_B, EXT6_IP, EXT6_ROUTER_IP, EXT_IP, EXT_PREFIX, EXT_ROUTER_IP, ROUTER6_B_IP,
    ROUTER6_IP, ROUTER_B_IP, ROUTER_IP, UNDERLAY6_PREFIX, UNDERLAY_PREFIX,
};
use super::netns::write_sysctl;
use super::{IpFamily, Topology};
use anyhow::Context;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Segment A's bridge (the only one in the flat topology).
pub const BRIDGE: &str = BRIDGE_A;

/// Runs `cmd` to completion; a failure names `what`, the command and its stderr.
pub fn run(cmd: &mut Command, what: &str) -> anyhow::Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{what}: starting {shown}"))?;
    if !out.status.success() {
        anyhow::bail!("{what}: {shown} failed ({}): {}", out.status, one_line(&out.stderr));
    }
    Ok(out)
}

fn one_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `ip netns add NAME`.
pub fn add_netns(name: &str) -> anyhow::Result<()> {
    run(Command::new("ip").args(["netns", "add", name]), &format!("creating namespace {name}")).map(drop)
}

/// Runs `lines` as one `ip -n NS -batch -`; the first failing line stops it and is reported.
pub fn ip_batch(ns: &str, lines: &[String], what: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: starting ip -n {ns} -batch -"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(lines.join("\n").as_bytes()).with_context(|| format!("{what}: feeding ip -batch"))?;
        stdin.write_all(b"\n").with_context(|| format!("{what}: feeding ip -batch"))?;
    }
    let out = child.wait_with_output().with_context(|| format!("{what}: waiting for ip -batch"))?;
    if !out.status.success() {
        anyhow::bail!("{what}: ip -n {ns} -batch failed ({}): {}", out.status, one_line(&out.stderr));
    }
    Ok(())
}

/// The underlay bridge(s) and router, and the external namespace behind it; with IPv6 in
/// `family`, the same again with the ULA prefixes (addresses without duplicate address
/// detection, usable at once).
pub fn underlay_lines(names: &LabNames, topology: Topology, family: IpFamily) -> (Vec<String>, Vec<String>) {
    let ext = names.ext_ns();
    let v6 = family.has_v6();
    let mut u = vec![
        "link set lo up".to_string(),
        format!("link add {BRIDGE_A} type bridge"),
        format!("addr add {ROUTER_IP}/{UNDERLAY_PREFIX} dev {BRIDGE_A}"),
        format!("link set {BRIDGE_A} up"),
    ];
    if v6 {
        u.push(format!("addr add {ROUTER6_IP}/{UNDERLAY6_PREFIX} dev {BRIDGE_A} nodad"));
    }
    if topology == Topology::Routed {
        u.extend([
            format!("link add {BRIDGE_B} type bridge"),
            format!("addr add {ROUTER_B_IP}/{UNDERLAY_PREFIX} dev {BRIDGE_B}"),
            format!("link set {BRIDGE_B} up"),
        ]);
        if v6 {
            u.push(format!("addr add {ROUTER6_B_IP}/{UNDERLAY6_PREFIX} dev {BRIDGE_B} nodad"));
        }
    }
    u.extend([
        format!("link add vext type veth peer name eth0 netns {ext}"),
        format!("addr add {EXT_ROUTER_IP}/{EXT_PREFIX} dev vext"),
        "link set vext up".to_string(),
    ]);
    if v6 {
        u.push(format!("addr add {EXT6_ROUTER_IP}/{UNDERLAY6_PREFIX} dev vext nodad"));
    }
    let mut e = vec![
        "link set lo up".to_string(),
        "link set eth0 up".to_string(),
        format!("addr add {EXT_IP}/{EXT_PREFIX} dev eth0"),
        format!("route add default via {EXT_ROUTER_IP}"),
    ];
    if v6 {
        e.extend([
            format!("addr add {EXT6_IP}/{UNDERLAY6_PREFIX} dev eth0 nodad"),
            format!("route add ::/0 via {EXT6_ROUTER_IP}"),
        ]);
    }
    (u, e)
}

/// Underlay side (`host_if` on the segment's bridge) and inside side (`eth0` with the address,
/// default route via the segment's router; with IPv6 in `family`, the IPv6 ones too) of a
/// namespace attached to the underlay.
pub fn attach_lines(ns: &str, host_if: &str, addr: NodeAddr, family: IpFamily) -> (Vec<String>, Vec<String>) {
    let u = vec![
        format!("link add {host_if} type veth peer name eth0 netns {ns}"),
        format!("link set {host_if} master {}", addr.bridge),
        format!("link set {host_if} up"),
    ];
    let mut inside = vec![
        "link set lo up".to_string(),
        "link set eth0 up".to_string(),
        format!("addr add {}/{UNDERLAY_PREFIX} dev eth0", addr.ip),
        format!("route add default via {}", addr.gateway),
    ];
    if family.has_v6() {
        inside.extend([
            format!("addr add {}/{UNDERLAY6_PREFIX} dev eth0 nodad", addr.ip6()),
            format!("route add ::/0 via {}", addr.gateway6()),
        ]);
    }
    (u, inside)
}

/// Where etcd sits: segment A in every topology.
pub fn etcd_addr() -> NodeAddr {
    NodeAddr { ip: super::names::ETCD_IP, gateway: ROUTER_IP, bridge: BRIDGE_A }
}

/// Builds the underlay, router and external namespace (all three namespaces already exist).
pub fn setup_underlay(names: &LabNames, topology: Topology, family: IpFamily) -> anyhow::Result<()> {
    let (u, e) = underlay_lines(names, topology, family);
    for ns in [names.underlay_ns(), names.ext_ns()] {
        before_links(&ns, family)?;
    }
    ip_batch(&names.underlay_ns(), &u, "building the underlay")?;
    ip_batch(&names.ext_ns(), &e, "building the external namespace")?;
    write_sysctl(&names.underlay_ns(), "net/ipv4/ip_forward", "1")?;
    if family.has_v6() {
        write_sysctl(&names.underlay_ns(), "net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// Attaches namespace `ns` (already made) to its segment's bridge with address `addr.ip` (and
/// `addr.ip6()` when `family` has IPv6); `forward` turns on forwarding of those families.
pub fn attach(
    names: &LabNames,
    ns: &str,
    host_if: &str,
    addr: NodeAddr,
    family: IpFamily,
    forward: bool,
) -> anyhow::Result<()> {
    let (u, inside) = attach_lines(ns, host_if, addr, family);
    before_links(ns, family)?;
    ip_batch(&names.underlay_ns(), &u, &format!("attaching {ns} to the underlay"))?;
    ip_batch(ns, &inside, &format!("addressing {ns}"))?;
    if forward {
        write_sysctl(ns, "net/ipv4/ip_forward", "1")?;
        if family.has_v6() {
            write_sysctl(ns, "net/ipv6/conf/all/forwarding", "1")?;
        }
    }
    Ok(())
}

/// Settings a namespace's new links take from `default` when they are made: with IPv6, no
/// duplicate address detection (a lab's addresses are unique by construction, and a tentative
/// address cannot be a route's source).
fn before_links(ns: &str, family: IpFamily) -> anyhow::Result<()> {
    if family.has_v6() {
        write_sysctl(ns, "net/ipv6/conf/default/accept_dad", "0")?;
    }
    Ok(())
}

/// The last `lines` lines of a log file, for error messages (or why it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            if all.is_empty() {
                format!("{} is empty", path.display())
            } else {
                format!("last lines of {}:\n{}", path.display(), all[start..].join("\n"))
            }
        }
        Err(e) => format!("cannot read {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::node_addr;

    #[test]
    fn wiring_lines_name_only_lab_namespaces() {
        let names = LabNames::new("5").expect("id");
        let (u, e) = underlay_lines(&names, Topology::Flat, IpFamily::V4);
        assert!(u.contains(&"link add vext type veth peer name eth0 netns weft5-ext".to_string()));
        assert!(u.contains(&"addr add 172.30.0.1/24 dev br0".to_string()));
        assert!(!u.iter().any(|l| l.contains("br1")), "flat has one segment: {u:?}");
        assert_eq!(e.last().map(String::as_str), Some("route add default via 203.0.113.1"));
        let (u, inside) = attach_lines("weft5-n2", "vn2", node_addr(Topology::Flat, 2), IpFamily::V4);
        assert_eq!(u[0], "link add vn2 type veth peer name eth0 netns weft5-n2");
        assert_eq!(u[1], "link set vn2 master br0");
        assert!(inside.contains(&"addr add 172.30.0.12/24 dev eth0".to_string()));
        assert!(inside.contains(&"route add default via 172.30.0.1".to_string()));
    }

    #[test]
    fn routed_wiring_puts_even_nodes_behind_the_router() {
        let names = LabNames::new("5").expect("id");
        let (u, _) = underlay_lines(&names, Topology::Routed, IpFamily::V4);
        assert!(u.contains(&"addr add 172.30.1.1/24 dev br1".to_string()), "{u:?}");
        assert!(u.contains(&"addr add 172.30.0.1/24 dev br0".to_string()), "{u:?}");
        assert!(!u.iter().any(|l| l.contains("10.244.")), "the router must not route pod subnets: {u:?}");
        let (u, inside) = attach_lines("weft5-n2", "vn2", node_addr(Topology::Routed, 2), IpFamily::V4);
        assert_eq!(u[1], "link set vn2 master br1");
        assert!(inside.contains(&"addr add 172.30.1.12/24 dev eth0".to_string()));
        assert!(inside.contains(&"route add default via 172.30.1.1".to_string()));
        let (u, inside) = attach_lines("weft5-n3", "vn3", node_addr(Topology::Routed, 3), IpFamily::V4);
        assert_eq!(u[1], "link set vn3 master br0");
        assert!(inside.contains(&"route add default via 172.30.0.1".to_string()));
    }

    #[test]
    fn ipv6_wiring_adds_ula_addresses_without_dad_beside_the_ipv4_ones() {
        let names = LabNames::new("5").expect("id");
        let (u4, e4) = underlay_lines(&names, Topology::Routed, IpFamily::V4);
        let (u, e) = underlay_lines(&names, Topology::Routed, IpFamily::Dual);
        assert!(u4.iter().chain(&e4).all(|l| !l.contains(':')), "a v4 lab has no IPv6 line: {u4:?} {e4:?}");
        assert!(u4.iter().all(|l| u.contains(l)), "the IPv4 lines stay as they are");
        for want in ["addr add fd00:172:30::1/64 dev br0 nodad", "addr add fd00:172:30:1::1/64 dev br1 nodad"] {
            assert!(u.contains(&want.to_string()), "{want} missing: {u:?}");
        }
        assert!(e.contains(&"route add ::/0 via 2001:db8::1".to_string()), "{e:?}");
        let (_, inside) = attach_lines("weft5-n2", "vn2", node_addr(Topology::Routed, 2), IpFamily::V6);
        assert!(inside.contains(&"addr add fd00:172:30:1::12/64 dev eth0 nodad".to_string()), "{inside:?}");
        assert!(inside.contains(&"route add ::/0 via fd00:172:30:1::1".to_string()), "{inside:?}");
        assert!(inside.contains(&"addr add 172.30.1.12/24 dev eth0".to_string()), "etcd needs IPv4: {inside:?}");
        assert!(!u.iter().chain(&inside).any(|l| l.contains("fd00:10:244")), "the router knows no pod subnet");
    }

    #[test]
    fn tails() {
        let p = std::env::temp_dir().join(format!("weftctl-tail-{}", std::process::id()));
        std::fs::write(&p, "a\nb\nc\n").expect("write");
        assert_eq!(tail(&p, 2), format!("last lines of {}:\nb\nc", p.display()));
        let _ = std::fs::remove_file(&p);
        assert!(tail(&p, 2).starts_with("cannot read"));
    }
}
