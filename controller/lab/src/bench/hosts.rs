//! The two-host topology every non-lab row runs on, and the kernel and lab rows.

use super::super::names::LabNames;
use super::super::{netns, plumbing, Lab, LabSpec};
use super::measure::*;
use super::parse::*;
use super::report::*;
use anyhow::Context;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::Duration;
use weft_config::subnet::Family;

/// Two hosts on one underlay bridge, each with a pod behind a bridge, as in
/// shared/bench/baseline.sh: namespaces `<prefix>ku` (bridge `br-u`), `<prefix>kh1`/`kh2`
/// (hosts, `eth0` 192.168.100.i/24, forwarding, bridge `cni0` 10.244.i.1/24) and
/// `<prefix>kc1`/`kc2` (pods, `eth0` 10.244.i.2/24, default via 10.244.i.1). No routes between
/// the pod subnets until [`HostPair::route_via_underlay`] (other rows add a tunnel instead).
/// [`HostPair::up_dual`] adds the same layout in IPv6 on the same links: `fd00:192:168:100::i/64`
/// on the hosts' `eth0`, `fd00:10:244:i::1/64` on `cni0`, `fd00:10:244:i::2/64` in the pods.
/// Every namespace is removed when this is dropped, also after a failed `up`.
#[derive(Debug)]
pub struct HostPair {
    pub(super) prefix: String,
    pub(super) made: Vec<String>,
    /// The IPv6 layout is there too.
    pub(super) v6: bool,
}

impl HostPair {
    pub const UNDERLAY_NET: [u8; 3] = [192, 168, 100];

    /// Builds the pair (IPv4 only) in namespaces named `<prefix>k...`; refuses if any already
    /// exists.
    pub fn up(prefix: &str) -> anyhow::Result<HostPair> {
        Self::build(prefix, false)
    }

    /// Like [`HostPair::up`], with the IPv6 layout beside the IPv4 one.
    pub fn up_dual(prefix: &str) -> anyhow::Result<HostPair> {
        Self::build(prefix, true)
    }

    fn build(prefix: &str, v6: bool) -> anyhow::Result<HostPair> {
        let mut pair = HostPair { prefix: prefix.to_string(), made: Vec::new(), v6 };
        let all = [pair.underlay_ns(), pair.host_ns(1), pair.host_ns(2), pair.pod_ns(1), pair.pod_ns(2)];
        let existing = netns::list()?;
        if let Some(ns) = all.iter().find(|n| existing.contains(n)) {
            anyhow::bail!("namespace {ns} already exists (another bench running, or a crashed one: weftctl lab down)");
        }
        for ns in &all {
            // Recorded once made: a name that turned out to be taken is never removed.
            plumbing::add_netns(ns)?;
            pair.made.push(ns.clone());
        }
        let u = pair.underlay_ns();
        batch(&u, &["link set lo up".into(), "link add br-u type bridge".into(), "link set br-u up".into()])?;
        for i in 1..=2 {
            let (h, c) = (pair.host_ns(i), pair.pod_ns(i));
            batch(
                &u,
                &[format!("link add p{i} type veth peer name eth0 netns {h}"), format!("link set p{i} master br-u up")],
            )?;
            batch(
                &h,
                &[
                    format!("addr add {}/24 dev eth0", Self::underlay_ip(i)),
                    "link set eth0 up".into(),
                    "link set lo up".into(),
                    "link add cni0 type bridge".into(),
                    format!("addr add {}/24 dev cni0", Self::gateway(i)),
                    "link set cni0 up".into(),
                    format!("link add vc type veth peer name eth0 netns {c}"),
                    "link set vc master cni0 up".into(),
                ],
            )?;
            netns::write_sysctl(&h, "net/ipv4/ip_forward", "1")?;
            batch(
                &c,
                &[
                    format!("addr add {}/24 dev eth0", Self::pod_ip(i)),
                    "link set eth0 up".into(),
                    "link set lo up".into(),
                    format!("route add default via {}", Self::gateway(i)),
                ],
            )?;
            if v6 {
                // nodad: usable at once (nothing else on these links could hold the address).
                batch(
                    &h,
                    &[
                        format!("addr add {}/64 dev eth0 nodad", Self::underlay_ip6(i)),
                        format!("addr add {}/64 dev cni0 nodad", Self::gateway6(i)),
                    ],
                )?;
                netns::write_sysctl(&h, "net/ipv6/conf/all/forwarding", "1")?;
                batch(
                    &c,
                    &[
                        format!("addr add {}/64 dev eth0 nodad", Self::pod_ip6(i)),
                        format!("route add default via {}", Self::gateway6(i)),
                    ],
                )?;
            }
        }
        Ok(pair)
    }

    /// Plain routes: each host reaches the other's pod subnet via the other's underlay address
    /// (of each family the pair has).
    pub fn route_via_underlay(&self) -> anyhow::Result<()> {
        for (i, j) in [(1, 2), (2, 1)] {
            let mut lines = vec![format!("route add {} via {}", Self::pod_subnet(j), Self::underlay_ip(j))];
            if self.v6 {
                lines.push(format!("route add {} via {}", Self::pod_subnet6(j), Self::underlay_ip6(j)));
            }
            batch(&self.host_ns(i), &lines)?;
        }
        Ok(())
    }

    pub fn underlay_ns(&self) -> String {
        format!("{}ku", self.prefix)
    }

    pub fn host_ns(&self, i: usize) -> String {
        format!("{}kh{i}", self.prefix)
    }

    pub fn pod_ns(&self, i: usize) -> String {
        format!("{}kc{i}", self.prefix)
    }

    /// 192.168.100.i
    pub fn underlay_ip(i: usize) -> Ipv4Addr {
        let [a, b, c] = Self::UNDERLAY_NET;
        Ipv4Addr::new(a, b, c, octet(i))
    }

    /// 10.244.i.1
    pub fn gateway(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, octet(i), 1)
    }

    /// 10.244.i.2
    pub fn pod_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, octet(i), 2)
    }

    /// 10.244.i.0/24
    pub fn pod_subnet(i: usize) -> String {
        format!("10.244.{}.0/24", octet(i))
    }

    /// fd00:192:168:100::i
    pub fn underlay_ip6(i: usize) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x192, 0x168, 0x100, 0, 0, 0, u16::from(octet(i)))
    }

    /// fd00:10:244:i::1
    pub fn gateway6(i: usize) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(octet(i)), 0, 0, 0, 1)
    }

    /// fd00:10:244:i::2
    pub fn pod_ip6(i: usize) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(octet(i)), 0, 0, 0, 2)
    }

    /// fd00:10:244:i::/64
    pub fn pod_subnet6(i: usize) -> String {
        format!("{}/64", Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(octet(i)), 0, 0, 0, 0))
    }

    /// From pod 1 to pod 2 (over IPv4).
    pub fn endpoints(&self) -> Endpoints {
        Endpoints { client_ns: self.pod_ns(1), server_ns: self.pod_ns(2), server_ip: Self::pod_ip(2).into() }
    }

    /// From pod 1 to pod 2 over `family`; IPv6 only on a pair made with [`HostPair::up_dual`].
    pub fn endpoints_in(&self, family: Family) -> anyhow::Result<Endpoints> {
        let server_ip: IpAddr = match family {
            Family::V4 => Self::pod_ip(2).into(),
            Family::V6 if self.v6 => Self::pod_ip6(2).into(),
            Family::V6 => anyhow::bail!("the host pair {}k* has no IPv6 addresses", self.prefix),
        };
        Ok(Endpoints { client_ns: self.pod_ns(1), server_ns: self.pod_ns(2), server_ip })
    }
}

pub(super) fn octet(i: usize) -> u8 {
    u8::try_from(i).unwrap_or(u8::MAX)
}

impl Drop for HostPair {
    fn drop(&mut self) {
        // Pods first, then hosts, then the underlay (the kernel does not mind; it reads well).
        for ns in self.made.iter().rev() {
            if let Err(e) = netns::remove(ns) {
                eprintln!("bench: {e}");
            }
        }
    }
}

/// `ip -n NS -batch -` bounded by a timeout; the first failing line is reported.
pub(crate) fn batch(ns: &str, lines: &[String]) -> anyhow::Result<()> {
    let input = lines.join("\n") + "\n";
    let what = format!("ip -n {ns} -batch ({})", lines.first().map_or("", String::as_str));
    let out = run_timeout(
        Command::new("ip").args(["-n", ns, "-batch", "-"]),
        Some(input.as_bytes()),
        Duration::from_secs(20),
        &what,
    )?;
    if !out.status.success() {
        anyhow::bail!("{what} failed ({}): {}", out.status, one_line(&out.stderr));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rows and the whole bench.

/// The kernel row over each of `families` (IPv4, IPv6, or both in that order): one
/// [`HostPair`] with plain routes, no agent, measured over one family after the other. One
/// result per family; a pair that cannot be built fails every one.
pub fn bench_kernel(names: &LabNames, families: &[Family], opts: MeasureOpts) -> Vec<anyhow::Result<Measurement>> {
    let built =
        if families.contains(&Family::V6) { HostPair::up_dual(&names.prefix()) } else { HostPair::up(&names.prefix()) };
    let pair = match built.and_then(|pair| pair.route_via_underlay().map(|()| pair)) {
        Ok(pair) => pair,
        Err(e) => return each_fails(families, &e),
    };
    families.iter().map(|&f| measure(&pair.endpoints_in(f)?, opts, &[])).collect()
}

/// VNI and UDP port of the hand-built VXLAN devices of the kernel-vxlan row: not weft's
/// defaults, so the row never mistakes an agent's device for its own.
pub const KERNEL_VXLAN: (u32, u16) = (4242, 4790);
/// The MTU of the kernel-vxlan row's VXLAN devices, bridges and pods (the underlay's 1500 less
/// the 50 bytes of IPv4 VXLAN headers, as the vxlan backend sets it).
pub const KERNEL_VXLAN_MTU: u32 = 1450;

/// The kernel-vxlan row (IPv4): the kernel row's host pair with, on each host, a VXLAN device
/// `vx0` made by hand (no learning; an all-zeros FDB entry sends every frame to the other
/// host), `10.99.0.i/24` on it, and the other pod subnet routed via the other host's `vx0`
/// address. Bridges, veths and pods get [`KERNEL_VXLAN_MTU`]. No agent anywhere.
pub fn bench_kernel_vxlan(names: &LabNames, opts: MeasureOpts) -> anyhow::Result<Measurement> {
    let pair = HostPair::up(&names.prefix())?;
    let (vni, port) = KERNEL_VXLAN;
    let mtu = KERNEL_VXLAN_MTU;
    for (i, j) in [(1usize, 2usize), (2, 1)] {
        batch(
            &pair.host_ns(i),
            &[
                format!(
                    "link add vx0 type vxlan id {vni} dstport {port} local {} dev eth0 nolearning",
                    HostPair::underlay_ip(i)
                ),
                format!("link set vx0 mtu {mtu} up"),
                format!("addr add 10.99.0.{i}/24 dev vx0"),
                format!("route add {} via 10.99.0.{j} dev vx0", HostPair::pod_subnet(j)),
                format!("link set cni0 mtu {mtu}"),
                format!("link set vc mtu {mtu}"),
            ],
        )?;
        let append = ["fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst"];
        let dst = HostPair::underlay_ip(j).to_string();
        let out = run_timeout(
            Command::new("ip").args(["netns", "exec", &pair.host_ns(i), "bridge"]).args(append).arg(&dst),
            None,
            Duration::from_secs(10),
            "bridge fdb append",
        )?;
        anyhow::ensure!(out.status.success(), "bridge fdb append on host {i}: {}", one_line(&out.stderr));
        batch(&pair.pod_ns(i), &[format!("link set eth0 mtu {mtu}")])?;
    }
    let ep = pair.endpoints();
    let path = route_get(&pair.host_ns(1), ep.server_ip)?;
    anyhow::ensure!(path.contains(" dev vx0 "), "host 1 routes pod 2 as `{path}`, not through vx0");
    let m = measure(&ep, opts, &[])?;
    Ok(Measurement { path: Some(path), ..m })
}

/// The same error for every family's row (a topology that did not come up).
fn each_fails(families: &[Family], e: &anyhow::Error) -> Vec<anyhow::Result<Measurement>> {
    families.iter().map(|_| Err(anyhow::anyhow!("{e:#}"))).collect()
}

/// A lab row over each of `families`: brings up `spec` (2 nodes with at least 1 pod each, its
/// `ip_family` holding every family asked for) once, and for one family after the other
/// measures n1/p1 -> n2/p1 at the pod's address of that family with both agents' RSS sampled,
/// then tears the lab down (also on failure). One result per family.
pub fn bench_lab(
    spec: LabSpec,
    families: &[Family],
    opts: MeasureOpts,
    ready_timeout: Duration,
) -> Vec<anyhow::Result<Measurement>> {
    let lab = match lab_for_bench(spec, families) {
        Ok(lab) => lab,
        Err(e) => return each_fails(families, &e),
    };
    let out = match lab.wait_ready(2, ready_timeout) {
        Ok(status) => families.iter().map(|&f| measure_lab_family(&lab, &status, f, opts)).collect(),
        Err(e) => each_fails(families, &e),
    };
    let report = lab.down();
    for e in report.errors.iter().chain(&report.warnings) {
        eprintln!("bench: lab down: {e}");
    }
    out
}

fn lab_for_bench(spec: LabSpec, families: &[Family]) -> anyhow::Result<Lab> {
    anyhow::ensure!(spec.nodes >= 2 && spec.pods >= 1, "a bench lab needs 2 nodes with a pod each");
    for &f in families {
        let has = match f {
            Family::V4 => spec.ip_family.has_v4(),
            Family::V6 => spec.ip_family.has_v6(),
        };
        anyhow::ensure!(has, "a {} lab has no {f} pod addresses", spec.ip_family);
    }
    Lab::up(spec)
}

/// One family's measurement in a lab that is up and ready: n2/p1's address of `family` (from
/// n2's agent `status`), a reply, n1's route to it checked against the backend, then the runs and
/// the agents' idle CPU.
fn measure_lab_family(
    lab: &Lab,
    status: &weft_config::api::Status,
    family: Family,
    opts: MeasureOpts,
) -> anyhow::Result<Measurement> {
    let pod = LabNames::pod_name(1);
    let ip = status
        .pods
        .iter()
        .find(|p| p.name == pod)
        .and_then(|p| p.addrs().into_iter().map(|a| a.ip).find(|ip| Family::of(*ip) == family))
        .with_context(|| format!("agent of n2 reports no {family} address of pod {pod}"))?;
    let peer: IpAddr = match family {
        Family::V4 => lab.node_ip(2).into(),
        Family::V6 => lab.node_ip6(2).context("the lab's n2 has no IPv6 underlay address")?.into(),
    };
    // n1/p1 sends, so n1's agent is the sender side.
    let watch: Vec<Watched> = [(1, Side::Sender), (2, Side::Receiver)]
        .into_iter()
        .filter_map(|(i, side)| lab.agent_pid(i).map(|pid| Watched::new(LabNames::node_name(i), pid, side)))
        .collect();
    anyhow::ensure!(watch.len() == 2, "an agent of the lab is not running");
    let ep = Endpoints { client_ns: lab.pod_ns(1, 1), server_ns: lab.pod_ns(2, 1), server_ip: ip };
    // The pods must talk over the backend under test, not whatever an agent that does not know
    // it yet falls back to: check n1's route to the pod once it answers.
    wait_reachable(&ep.client_ns, ip, REACH_TIMEOUT)?;
    let path = route_get(&lab.node_ns(1), ip)?;
    check_path(lab.spec().backend, &path, peer).map_err(anyhow::Error::msg)?;
    let m = measure(&ep, opts, &watch)?;
    let pids: Vec<u32> = watch.iter().map(|w| w.pid).collect();
    Ok(Measurement { path: Some(path), idle_cpu_pct: idle_cpu_pct(&pids, IDLE_WINDOW), ..m })
}
