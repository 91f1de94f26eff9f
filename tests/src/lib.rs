//! Helpers for the integration tests: each test builds its own lab (real etcd, real agents,
//! real kernel, all inside namespaces named `weft<id>-…`), and the lab's `Drop` removes it
//! again, also when an assertion fails.

pub mod browser;
pub mod dns;
pub mod ops;
pub mod quic_client;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use weft_lab::{in_netns, Lab, LabSpec};

/// Integration tests need root (namespaces, veths, routes). They fail without it, never skip.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "integration tests need root: they build network namespaces; run ./deploy/test.sh as root"
    );
}

/// Brings up a lab with `nodes` × `pods`, reconciling every 2 s so "within one reconcile"
/// checks stay short.
pub fn lab(id: &str, nodes: usize, pods: usize, tweak: impl FnOnce(&mut LabSpec)) -> Lab {
    require_root();
    let mut spec = LabSpec { id: id.into(), nodes, pods, reconcile_secs: 2, ..LabSpec::default() };
    tweak(&mut spec);
    match Lab::up(spec) {
        Ok(l) => l,
        Err(e) => panic!("lab {id} did not come up: {e:#}"),
    }
}

/// An address the agent reports, as the tests' IPv4 tools take it (IPv4 is the only family
/// switched on).
/// A pod's `ip` (`None` in a network without an IPv4 pool) is taken as well.
pub fn v4(ip: impl Into<Option<IpAddr>>) -> Ipv4Addr {
    match ip.into() {
        Some(IpAddr::V4(a)) => a,
        Some(IpAddr::V6(a)) => panic!("{a} is IPv6, but the lab runs IPv4 only"),
        None => panic!("no IPv4 address, but the lab runs IPv4 only"),
    }
}

/// The address the agent of node `i` gave pod `pod` (e.g. "p1").
pub fn pod_ip(lab: &Lab, i: usize, pod: &str) -> Ipv4Addr {
    let st = lab.wait_ready(i, Duration::from_secs(20)).unwrap_or_else(|e| panic!("node n{i} not ready: {e:#}"));
    st.pods
        .iter()
        .find(|p| p.name == pod)
        .map(|p| v4(p.ip))
        .unwrap_or_else(|| panic!("n{i} has no pod {pod}: {:?}", st.pods))
}

/// One ping with a one-second deadline.
pub fn ping(lab: &Lab, from: &str, to: Ipv4Addr) -> bool {
    ping_within(lab, from, to, "1")
}

/// Every address the agent of node `i` gave pod `pod`: IPv4 first, then IPv6.
pub fn pod_addrs(lab: &Lab, i: usize, pod: &str) -> Vec<IpAddr> {
    let st = lab.wait_ready(i, Duration::from_secs(20)).unwrap_or_else(|e| panic!("node n{i} not ready: {e:#}"));
    let p = st.pods.iter().find(|p| p.name == pod).unwrap_or_else(|| panic!("n{i} has no pod {pod}: {:?}", st.pods));
    p.ip.into_iter().chain(p.ip6).collect()
}

/// Pings (ICMPv4 or ICMPv6 as the addresses are) from every pod to every address of every pod
/// on another node, a few tries each (a new IPv6 link drops its first packets); returns the
/// pairs that never answered.
pub fn cross_node_ping_failures_all(lab: &Lab, nodes: usize, pods: &[&str]) -> Vec<String> {
    let all: Vec<(usize, &str, IpAddr)> = (1..=nodes)
        .flat_map(|i| pods.iter().map(move |p| (i, *p)))
        .flat_map(|(i, p)| pod_addrs(lab, i, p).into_iter().map(move |ip| (i, p, ip)))
        .collect();
    let mut failures = vec![];
    for (i, p, _) in &all {
        for (j, _, ip) in &all {
            if i == j {
                continue;
            }
            let to = ip.to_string();
            let once = || {
                lab.exec(&format!("n{i}/{p}"), &["ping", "-n", "-q", "-c1", "-W", "1", &to])
                    .is_ok_and(|o| o.status.success())
            };
            if !(once() || once() || once()) {
                failures.push(format!("n{i}/{p} -> {ip}"));
            }
        }
    }
    failures
}

/// One ping (ICMPv4 or ICMPv6 as `to` is) waiting at most `secs` (a decimal, e.g. "0.2") for
/// the reply.
pub fn ping_addr(lab: &Lab, from: &str, to: IpAddr, secs: &str) -> bool {
    let to = to.to_string();
    lab.exec(from, &["ping", "-n", "-q", "-c1", "-W", secs, &to]).is_ok_and(|o| o.status.success())
}

/// One ping waiting at most `secs` (a decimal, e.g. "0.2") for the reply.
pub fn ping_within(lab: &Lab, from: &str, to: Ipv4Addr, secs: &str) -> bool {
    let to = to.to_string();
    lab.exec(from, &["ping", "-n", "-q", "-c1", "-W", secs, &to]).map(|o| o.status.success()).unwrap_or(false)
}

/// Every pod's address on nodes 1..=nodes, as (node index, pod name, ip).
pub fn all_pods(lab: &Lab, nodes: usize, pods: &[&'static str]) -> Vec<(usize, &'static str, Ipv4Addr)> {
    (1..=nodes).flat_map(|i| pods.iter().map(move |p| (i, *p))).map(|(i, p)| (i, p, pod_ip(lab, i, p))).collect()
}

/// Pings from every pod to every pod on another node; returns the pairs that failed.
pub fn cross_node_ping_failures(lab: &Lab, pods: &[(usize, &str, Ipv4Addr)]) -> Vec<String> {
    let mut failures = vec![];
    for (i, p, _) in pods {
        for (j, _, ip) in pods {
            if i != j && !ping(lab, &format!("n{i}/{p}"), *ip) {
                failures.push(format!("n{i}/{p} -> {ip}"));
            }
        }
    }
    failures
}

/// Collects the UDP payloads that reach `ip:port` inside namespace `ns` for `secs` seconds.
/// Join the handle, then read the channel.
pub fn udp_collector(
    ns: String,
    ip: impl Into<IpAddr>,
    port: u16,
    secs: u64,
) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let ip: IpAddr = ip.into();
    let handle = std::thread::spawn(move || {
        let r = in_netns(&ns, || {
            let s = std::net::UdpSocket::bind((ip, port)).expect("bind the UDP collector");
            s.set_read_timeout(Some(Duration::from_secs(secs))).expect("timeout");
            let _ = ready_tx.send(());
            let mut buf = [0u8; 2048];
            while let Ok(n) = s.recv(&mut buf) {
                let _ = tx.send(buf[..n].to_vec());
            }
        });
        r.expect("entering the collector's namespace");
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("UDP collector did not start");
    (handle, rx)
}

/// Polls `f` every 100 ms until it is true or `timeout` passes; returns how long it took.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node's whole IPv4 main route table, from `ip -j route`, as sorted one-line strings
/// (`dst [via gw] dev X proto P [scope S] [src A]`).
pub fn route_table(lab: &Lab, i: usize) -> Vec<String> {
    route_table_of(lab, i, "-4")
}

/// A node's whole IPv6 main route table, as [`route_table`] gives the IPv4 one.
pub fn route_table6(lab: &Lab, i: usize) -> Vec<String> {
    route_table_of(lab, i, "-6")
}

/// The routes weft owns (`proto 213`) of a table from [`route_table`] or [`route_table6`].
pub fn weft_owned(table: Vec<String>) -> Vec<String> {
    table.into_iter().filter(|l| l.contains(" proto 213")).collect()
}

/// A node's main route table of the family `flag` (`-4` or `-6`).
fn route_table_of(lab: &Lab, i: usize, flag: &str) -> Vec<String> {
    let out = lab.exec(&format!("n{i}"), &["ip", flag, "-j", "route", "show", "table", "main"]).expect("ip route");
    assert!(out.status.success(), "ip route failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j route output is JSON");
    let mut lines: Vec<String> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|r| {
            let s = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
            let mut line = s("dst").unwrap_or_default();
            if let Some(t) = s("type").filter(|t| t != "unicast") {
                line = format!("{t} {line}");
            }
            if let Some(g) = s("gateway") {
                line += &format!(" via {g}");
            }
            if let Some(d) = s("dev") {
                line += &format!(" dev {d}");
            }
            if let Some(p) = r.get("protocol").map(|p| p.to_string().trim_matches('"').to_string()) {
                line += &format!(" proto {p}");
            }
            if let Some(sc) = s("scope").filter(|sc| sc != "global") {
                line += &format!(" scope {sc}");
            }
            if let Some(src) = s("prefsrc") {
                line += &format!(" src {src}");
            }
            line
        })
        .collect();
    lines.sort();
    lines
}

/// Opens a TCP connection from `client_ns` to `server_ip:port` served in `server_ns`, sends a
/// few bytes, and returns the peer address the server saw.
pub fn tcp_source_seen(
    server_ns: &str,
    server_ip: impl Into<IpAddr>,
    port: u16,
    client_ns: &str,
) -> Result<SocketAddr> {
    let server_ip: IpAddr = server_ip.into();
    let (tx, rx) = std::sync::mpsc::channel();
    let server_ns2 = server_ns.to_string();
    let server = std::thread::spawn(move || -> Result<SocketAddr> {
        in_netns(&server_ns2, || -> Result<SocketAddr> {
            let l = TcpListener::bind((server_ip, port)).with_context(|| format!("binding {server_ip}:{port}"))?;
            let _ = tx.send(());
            l.set_nonblocking(false)?;
            let (mut s, peer) = l.accept()?;
            let mut buf = [0u8; 5];
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.read_exact(&mut buf)?;
            if &buf != b"hello" {
                bail!("server got {buf:?}");
            }
            Ok(peer)
        })?
    });
    rx.recv_timeout(Duration::from_secs(5)).context("server did not start")?;
    in_netns(client_ns, || -> Result<()> {
        let mut c = TcpStream::connect_timeout(&SocketAddr::from((server_ip, port)), Duration::from_secs(5))
            .with_context(|| format!("connecting to {server_ip}:{port}"))?;
        c.write_all(b"hello")?;
        Ok(())
    })??;
    server.join().map_err(|_| anyhow::anyhow!("server thread panicked"))?
}

/// Runs a shell-free command in `target` and insists it succeeds; returns stdout.
pub fn run_ok(lab: &Lab, target: &str, args: &[&str]) -> String {
    let out = lab.exec(target, args).unwrap_or_else(|e| panic!("{args:?} in {target}: {e:#}"));
    assert!(
        out.status.success(),
        "{args:?} in {target} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Node `i`'s IPv6 gateway (the first address of its IPv6 subnet), checking that the agent put
/// it on the bridge `weft0` (within 10 s of being ready). Panics, naming what the bridge has,
/// when it is missing.
pub fn bridge_ipv6_gateway(lab: &Lab, i: usize) -> std::net::Ipv6Addr {
    let st = lab.wait_ready(i, Duration::from_secs(10)).expect("ready");
    let subnet: ipnet::Ipv6Net = st.subnet6.expect("an IPv6 subnet").parse().expect("an IPv6 prefix");
    let gw = std::net::Ipv6Addr::from_bits(subnet.network().to_bits() + 1);
    let node = format!("n{i}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let have = run_ok(lab, &node, &["ip", "-6", "-o", "addr", "show", "dev", "weft0"]);
        if have.contains(&format!(" {gw}/")) {
            return gw;
        }
        assert!(std::time::Instant::now() < deadline, "n{i}'s bridge has no IPv6 gateway {gw}: {have}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
