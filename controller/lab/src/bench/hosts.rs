//! The two-host topology every non-lab row runs on, and the kernel and lab rows.

use super::super::names::LabNames;
use super::super::{netns, plumbing, Lab, LabSpec};
use super::measure::*;
use super::parse::*;
use super::report::*;
use anyhow::Context;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

/// Two hosts on one underlay bridge, each with a pod behind a bridge, as in
/// shared/bench/baseline.sh: namespaces `<prefix>ku` (bridge `br-u`), `<prefix>kh1`/`kh2`
/// (hosts, `eth0` 192.168.100.i/24, forwarding, bridge `cni0` 10.244.i.1/24) and
/// `<prefix>kc1`/`kc2` (pods, `eth0` 10.244.i.2/24, default via 10.244.i.1). No routes between
/// the pod subnets until [`HostPair::route_via_underlay`] (other rows add a tunnel instead).
/// Every namespace is removed when this is dropped, also after a failed `up`.
#[derive(Debug)]
pub struct HostPair {
    pub(super) prefix: String,
    pub(super) made: Vec<String>,
}

impl HostPair {
    pub const UNDERLAY_NET: [u8; 3] = [192, 168, 100];

    /// Builds the pair in namespaces named `<prefix>k...`; refuses if any already exists.
    pub fn up(prefix: &str) -> anyhow::Result<HostPair> {
        let mut pair = HostPair { prefix: prefix.to_string(), made: Vec::new() };
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
        }
        Ok(pair)
    }

    /// Plain routes: each host reaches the other's pod subnet via the other's underlay address.
    pub fn route_via_underlay(&self) -> anyhow::Result<()> {
        for (i, j) in [(1, 2), (2, 1)] {
            batch(&self.host_ns(i), &[format!("route add {} via {}", Self::pod_subnet(j), Self::underlay_ip(j))])?;
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

    /// From pod 1 to pod 2.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints { client_ns: self.pod_ns(1), server_ns: self.pod_ns(2), server_ip: Self::pod_ip(2).into() }
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

/// The kernel row: a [`HostPair`] with plain routes, no agent.
pub fn bench_kernel(names: &LabNames, opts: MeasureOpts) -> anyhow::Result<Measurement> {
    let pair = HostPair::up(&names.prefix())?;
    pair.route_via_underlay()?;
    measure(&pair.endpoints(), opts, &[])
}

/// A lab row: brings up `spec` (2 nodes with at least 1 pod each), measures n1/p1 -> n2/p1 with
/// both agents' RSS sampled, and tears the lab down (also on failure).
pub fn bench_lab(spec: LabSpec, opts: MeasureOpts, ready_timeout: Duration) -> anyhow::Result<Measurement> {
    anyhow::ensure!(spec.nodes >= 2 && spec.pods >= 1, "a bench lab needs 2 nodes with a pod each");
    let backend = spec.backend;
    let lab = Lab::up(spec)?;
    let status = lab.wait_ready(2, ready_timeout)?;
    let pod = LabNames::pod_name(1);
    let ip = status
        .pods
        .iter()
        .find(|p| p.name == pod)
        .and_then(|p| p.addrs().first().map(|a| a.ip))
        .with_context(|| format!("agent of n2 reports no pod {pod}"))?;
    let watch: Vec<(String, u32)> =
        (1..=2).filter_map(|i| lab.agent_pid(i).map(|pid| (LabNames::node_name(i), pid))).collect();
    anyhow::ensure!(watch.len() == 2, "an agent of the lab is not running");
    let ep = Endpoints { client_ns: lab.pod_ns(1, 1), server_ns: lab.pod_ns(2, 1), server_ip: ip };
    // The pods must talk over the backend under test, not whatever an agent that does not know
    // it yet falls back to: check n1's route to the pod once it answers.
    let checked = wait_reachable(&ep.client_ns, ip, REACH_TIMEOUT)
        .and_then(|()| route_get(&lab.node_ns(1), ip))
        .and_then(|path| check_path(backend, &path, lab.node_ip(2)).map_err(anyhow::Error::msg).map(|()| path));
    let m = checked.and_then(|path| {
        let m = measure(&ep, opts, &watch)?;
        let pids: Vec<u32> = watch.iter().map(|w| w.1).collect();
        Ok(Measurement { path: Some(path), idle_cpu_pct: idle_cpu_pct(&pids, IDLE_WINDOW), ..m })
    });
    let report = lab.down();
    for e in report.errors.iter().chain(&report.warnings) {
        eprintln!("bench: lab down: {e}");
    }
    m
}
