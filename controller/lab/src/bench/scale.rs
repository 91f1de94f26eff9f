//! `weftctl lab bench --scale N`: an N-node host-gw lab (1 pod per node) and what scale costs:
//! `lab up` time, join and leave convergence (a subnet record written or deleted → the route
//! installed or removed on every other node), agent RSS and idle CPU with N−1 peers, and the
//! etcd load (revisions per node per hour, watches per agent).
//!
//! Times: the bench watches the subnets prefix itself (from the etcd namespace) and takes the
//! moment a record's PUT or DELETE reaches it as "record written". Every agent reports when a
//! reconcile first saw a peer's route installed (`PeerStatus::route_since_unix_ms`) and when it
//! last deleted one (`Status::last_route_removed`); the bench polls status (every 100 ms, which
//! does not affect the figures: the times are the agents' own) and subtracts. One clock: the
//! whole lab runs on this machine.

use super::args::BenchArgs;
use super::measure::cpu_pct_over;
use super::parse::vm_rss_kib;
use crate::names::LabNames;
use crate::{Lab, LabSpec};
use anyhow::Context;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use weft_config::Backend;
use weft_controller::agent_client::AgentClient;
use weft_store::{EtcdStore, EventKind, Store, WatchMsg};

/// How long one node's route change may take before the bench gives up on it.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone)]
pub struct ScaleOpts {
    pub id: String,
    pub nodes: usize,
    /// Leave + re-join cycles (each on another node, from the last one down).
    pub cycles: usize,
    /// Seconds of the idle window (agent CPU, etcd revisions).
    pub idle_secs: u64,
    pub agent_bin: Option<std::path::PathBuf>,
    pub weftctl_bin: Option<std::path::PathBuf>,
    pub ready_timeout_secs: u64,
}

/// p50/p99/max of a set of samples (ms).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Dist {
    pub samples: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Dist {
    pub fn of(xs: &[f64]) -> Dist {
        let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        Dist { samples: v.len(), p50: percentile(&v, 50.0), p99: percentile(&v, 99.0), max: v.last().copied() }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleReport {
    pub command: String,
    pub nodes: usize,
    pub started_unix: u64,
    pub loadavg_start: Option<[f64; 3]>,
    pub loadavg_end: Option<[f64; 3]>,
    pub up_secs: f64,
    /// From the start of `lab up` until every agent routes to all N−1 peers.
    pub full_mesh_secs: f64,
    pub join_ms: Dist,
    pub leave_ms: Dist,
    /// Nodes that did not converge within the timeout, per cycle.
    pub missed: Vec<String>,
    pub rss_mib_max: f64,
    pub rss_mib_median: f64,
    pub cpu_pct_max: f64,
    pub cpu_pct_median: f64,
    pub idle_secs: u64,
    pub etcd_revisions: i64,
    pub revisions_per_node_hour: f64,
    pub expected_writes_per_node_hour: f64,
    pub watches_per_agent: u32,
}

// ---------------------------------------------------------------------------------------------
// Pure parts.

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The three load averages from /proc/loadavg.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// etcd writes one agent makes per hour, from its timers: the subnet lease renewed every tenth
/// of its TTL, the probe record put every probe interval (with its lease renewed as often). The
/// heartbeat is a lease keep-alive every third of its TTL: no revision, but a request to the
/// leader, counted as a write here.
pub fn expected_writes_per_hour(heartbeat_ttl_secs: f64, subnet_lease_secs: f64, probe_secs: Option<f64>) -> f64 {
    let per_hour = |every: f64| 3600.0 / every;
    let mut w = per_hour(heartbeat_ttl_secs / 3.0) + per_hour(subnet_lease_secs / 10.0);
    if let Some(p) = probe_secs {
        w += 2.0 * per_hour(p);
    }
    w
}

/// Of those, the ones that make an etcd revision (puts): the probe records only.
pub fn expected_revisions_per_hour(probe_secs: Option<f64>) -> f64 {
    probe_secs.map_or(0.0, |p| 3600.0 / p)
}

/// `10.244.3.0/24` → `10.244.3.0-24` (the last segment of a subnet record's key).
pub fn key_segment(subnet: &str) -> String {
    subnet.replace('/', "-")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn loadavg() -> Option<[f64; 3]> {
    parse_loadavg(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.0}"))
}

fn fmt_load(l: Option<[f64; 3]>) -> String {
    l.map_or("?".into(), |l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
}

pub fn render(r: &ScaleReport) -> String {
    let target = |ok: bool| if ok { "ok" } else { "MISSED" };
    let mut s = String::new();
    s += &format!("weftctl lab bench --scale {} (host-gw, 1 pod per node)\n", r.nodes);
    s += &format!("  load average at start {}, at end {}\n", fmt_load(r.loadavg_start), fmt_load(r.loadavg_end));
    s += &format!(
        "  lab up                 {:.1} s (target for 50 nodes: 60 s){}\n",
        r.up_secs,
        if r.nodes <= 50 { format!(" {}", target(r.up_secs <= 60.0)) } else { String::new() }
    );
    s +=
        &format!("  full mesh after up     {:.1} s (every agent routes all {} peers)\n", r.full_mesh_secs, r.nodes - 1);
    for (name, d) in [("join", &r.join_ms), ("leave", &r.leave_ms)] {
        let ok = d.p50.is_some_and(|x| x <= 200.0) && d.p99.is_some_and(|x| x <= 1000.0);
        s += &format!(
            "  {name:<5} convergence      p50 {} ms, p99 {} ms, max {} ms over {} samples (target p50 200, p99 1000) {}\n",
            fmt_opt(d.p50),
            fmt_opt(d.p99),
            fmt_opt(d.max),
            d.samples,
            target(ok)
        );
    }
    if !r.missed.is_empty() {
        s += &format!("  not converged: {}\n", r.missed.join(", "));
    }
    s += &format!(
        "  agent RSS              max {:.1} MiB, median {:.1} MiB with {} peers (target 20) {}\n",
        r.rss_mib_max,
        r.rss_mib_median,
        r.nodes - 1,
        target(r.rss_mib_max <= 20.0)
    );
    s += &format!(
        "  agent idle CPU         max {:.2} %, median {:.2} % over {} s (target 0.5) {}\n",
        r.cpu_pct_max,
        r.cpu_pct_median,
        r.idle_secs,
        target(r.cpu_pct_max <= 0.5)
    );
    s += &format!(
        "  etcd                   {} revisions in {} s = {:.0} per node per hour (timers: {:.0} writes incl. lease keep-alives); {} watch per agent\n",
        r.etcd_revisions, r.idle_secs, r.revisions_per_node_hour, r.expected_writes_per_node_hour, r.watches_per_agent
    );
    s
}

// ---------------------------------------------------------------------------------------------
// Effects.

#[derive(Debug, Clone)]
struct Event {
    segment: String,
    put: bool,
    node: Option<String>,
    at_ms: u64,
}

/// Watches the subnets prefix from the etcd namespace until dropped.
struct Watcher {
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<Event>>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Watcher {
    fn start(lab: &Lab) -> anyhow::Result<Watcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ns, opts) = (lab.names().etcd_ns(), lab.etcd_opts());
        let prefix = weft_config::Keys::new(crate::names::NETWORK).subnets_prefix();
        let (stop2, events2) = (stop.clone(), events.clone());
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            crate::netns::in_netns(&ns, move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(async move {
                    let store = EtcdStore::connect_opts(&opts).await?;
                    let mut stream = store.watch(&prefix, 0).await.context("watching the subnets prefix")?;
                    let _ = ready_tx.send(());
                    while !stop2.load(Ordering::SeqCst) {
                        let events = match tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
                            Err(_) => continue,
                            Ok(WatchMsg::Events(events)) => events,
                            Ok(WatchMsg::Broken(Some(e))) => anyhow::bail!("watch: {e}"),
                            Ok(WatchMsg::Broken(None)) => anyhow::bail!("watch ended"),
                            // Next comes Broken(None).
                            Ok(WatchMsg::Compacted { .. }) => continue,
                        };
                        let at_ms = now_ms();
                        for ev in events {
                            let put = ev.kind == EventKind::Put;
                            let node = serde_json::from_slice::<serde_json::Value>(&ev.kv.value)
                                .ok()
                                .and_then(|v| v.get("node").and_then(|n| n.as_str()).map(str::to_string));
                            let segment = ev.kv.key.rsplit('/').next().unwrap_or_default().to_string();
                            events2.lock().unwrap_or_else(|p| p.into_inner()).push(Event { segment, put, node, at_ms });
                        }
                    }
                    anyhow::Ok(())
                })
            })?
        });
        ready_rx.recv_timeout(Duration::from_secs(15)).context("the bench's etcd watch did not start")?;
        Ok(Watcher { stop, events, thread: Some(thread) })
    }

    /// Waits for the first event after `from` that `pick` accepts.
    fn wait(&self, from: usize, timeout: Duration, pick: impl Fn(&Event) -> bool) -> anyhow::Result<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events.lock().unwrap_or_else(|p| p.into_inner())[from..].iter().find(|e| pick(e)) {
                return Ok(e.clone());
            }
            anyhow::ensure!(Instant::now() < deadline, "no such etcd event within {} s", timeout.as_secs());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn len(&self) -> usize {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The current etcd revision, read from the etcd namespace.
fn etcd_revision(lab: &Lab) -> anyhow::Result<i64> {
    let opts = lab.etcd_opts();
    crate::netns::in_netns(&lab.names().etcd_ns(), move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let store = EtcdStore::connect_opts(&opts).await?;
            let (_, revision) = store.count(weft_config::keys::ROOT).await?;
            anyhow::Ok(revision)
        })
    })?
}

/// Asks every node in `nodes` (in parallel, every 100 ms) until `done` returns a value for it;
/// returns the values and the nodes that did not answer so within the timeout.
fn poll_all<T: Send>(
    lab: &Lab,
    nodes: &[usize],
    timeout: Duration,
    done: impl Fn(&weft_config::api::Status) -> Option<T> + Sync,
) -> (Vec<T>, Vec<usize>) {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<usize> = nodes.to_vec();
    let mut got = Vec::new();
    while !pending.is_empty() && Instant::now() < deadline {
        let results: Vec<(usize, Option<T>)> = std::thread::scope(|s| {
            let hs: Vec<_> = pending
                .chunks(pending.len().div_ceil(8))
                .map(|chunk| {
                    let done = &done;
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|&i| {
                                let v = lab
                                    .client(i)
                                    .ok()
                                    .and_then(|c| c.with_timeout(Duration::from_secs(2)).status().ok())
                                    .and_then(|st| done(&st));
                                (i, v)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        pending.clear();
        for (i, v) in results {
            match v {
                Some(v) => got.push(v),
                None => pending.push(i),
            }
        }
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    (got, pending)
}

fn status_of(lab: &Lab, i: usize) -> anyhow::Result<weft_config::api::Status> {
    Ok(AgentClient::new(lab.node_config(i)?.paths.socket).with_timeout(Duration::from_secs(5)).status()?)
}

/// Runs the bench; `log` gets progress lines.
pub fn run(opts: &ScaleOpts, command: String, log: impl Fn(&str)) -> anyhow::Result<ScaleReport> {
    let n = opts.nodes;
    anyhow::ensure!((3..=crate::names::MAX_NODES).contains(&n), "--scale: expected 3 to {}", crate::names::MAX_NODES);
    let cycles = opts.cycles.min(n - 1);
    let mut r = ScaleReport {
        command,
        nodes: n,
        started_unix: weft_controller::output::unix_now(),
        loadavg_start: loadavg(),
        idle_secs: opts.idle_secs,
        watches_per_agent: 1,
        ..ScaleReport::default()
    };
    log(&format!("lab up: {n} nodes, host-gw, 1 pod each (load {})", fmt_load(r.loadavg_start)));
    let t0 = Instant::now();
    let lab = Lab::up(LabSpec {
        id: opts.id.clone(),
        nodes: n,
        pods: 1,
        backend: Backend::HostGw,
        agent_bin: opts.agent_bin.clone(),
        weftctl_bin: opts.weftctl_bin.clone(),
        ready_timeout_secs: opts.ready_timeout_secs,
        ..LabSpec::default()
    })?;
    r.up_secs = t0.elapsed().as_secs_f64();
    log(&format!("lab up took {:.1} s; waiting for the full mesh", r.up_secs));
    let all: Vec<usize> = (1..=n).collect();
    let (_, missing) = poll_all(&lab, &all, Duration::from_secs(opts.ready_timeout_secs), |st| {
        // Peer nodes, every family's route of each installed (a dual-stack peer has two).
        st.meshed_with(n - 1).then_some(())
    });
    anyhow::ensure!(missing.is_empty(), "no full mesh on {} node(s), e.g. n{}", missing.len(), missing[0]);
    r.full_mesh_secs = t0.elapsed().as_secs_f64();

    // Idle window: CPU, RSS, etcd revisions.
    let pids: Vec<u32> = all.iter().filter_map(|&i| lab.agent_pid(i)).collect();
    anyhow::ensure!(pids.len() == n, "only {} of {n} agents running", pids.len());
    log(&format!("idle window: {} s", opts.idle_secs));
    let rev0 = etcd_revision(&lab)?;
    let idle = Duration::from_secs(opts.idle_secs);
    let mut cpu = cpu_pct_over(&pids, idle);
    let window = idle.as_secs_f64();
    let rev1 = etcd_revision(&lab)?;
    let mut rss: Vec<f64> = pids.iter().filter_map(|&p| vm_rss_kib(p)).map(|k| k as f64 / 1024.0).collect();
    cpu.sort_by(f64::total_cmp);
    rss.sort_by(f64::total_cmp);
    r.cpu_pct_max = cpu.last().copied().unwrap_or(0.0);
    r.cpu_pct_median = percentile(&cpu, 50.0).unwrap_or(0.0);
    r.rss_mib_max = rss.last().copied().unwrap_or(0.0);
    r.rss_mib_median = percentile(&rss, 50.0).unwrap_or(0.0);
    r.etcd_revisions = rev1 - rev0;
    r.revisions_per_node_hour = (rev1 - rev0) as f64 / window * 3600.0 / n as f64;
    let cfg = lab.node_config(1)?;
    let probe = cfg.probes.enabled.then_some(cfg.probes.interval.as_secs_f64());
    r.expected_writes_per_node_hour =
        expected_writes_per_hour(cfg.timers.heartbeat_ttl.as_secs_f64(), cfg.timers.subnet_lease.as_secs_f64(), probe);

    // Leave and re-join cycles.
    let watcher = Watcher::start(&lab)?;
    let (mut join, mut leave) = (Vec::new(), Vec::new());
    for c in 0..cycles {
        let victim = n - c;
        let name = LabNames::node_name(victim);
        let others: Vec<usize> = all.iter().copied().filter(|&i| i != victim).collect();
        let subnet = status_of(&lab, victim)?.subnet.with_context(|| format!("{name} has no subnet"))?;
        let seg = key_segment(&subnet);
        log(&format!("cycle {}/{cycles}: {name} leaves ({subnet})", c + 1));
        let from = watcher.len();
        lab.leave(victim)?;
        let del = watcher.wait(from, Duration::from_secs(10), |e| !e.put && e.segment == seg)?;
        let (got, missed) = poll_all(&lab, &others, CONVERGE_TIMEOUT, |st| {
            let gone = !st.peers.iter().any(|p| p.subnet == subnet);
            let rm = st.last_route_removed.as_ref().filter(|x| x.subnet == subnet && x.unix_ms + 1000 >= del.at_ms);
            gone.then(|| rm.map(|x| x.unix_ms as f64 - del.at_ms as f64)).flatten()
        });
        leave.extend(got);
        r.missed.extend(missed.iter().map(|i| format!("leave of {name} on n{i}")));
        log(&format!("cycle {}/{cycles}: {name} joins", c + 1));
        let from = watcher.len();
        lab.start_agent(victim)?;
        let put = watcher.wait(from, Duration::from_secs(60), |e| e.put && e.node.as_deref() == Some(name.as_str()))?;
        let (got, missed) = poll_all(&lab, &others, CONVERGE_TIMEOUT, |st| {
            let p = st.peers.iter().find(|p| p.node == name && p.route_ok && p.route_since_unix_ms > 0)?;
            Some(p.route_since_unix_ms as f64 - put.at_ms as f64)
        });
        join.extend(got);
        r.missed.extend(missed.iter().map(|i| format!("join of {name} on n{i}")));
        lab.wait_ready(victim, Duration::from_secs(60))?;
    }
    drop(watcher);
    r.join_ms = Dist::of(&join);
    r.leave_ms = Dist::of(&leave);
    r.loadavg_end = loadavg();
    log("lab down");
    let report = lab.down();
    for e in &report.errors {
        log(&format!("lab down: error: {e}"));
    }
    Ok(r)
}

/// `weftctl lab bench --scale N`.
pub fn cli(id: &str, args: &BenchArgs, nodes: usize) -> anyhow::Result<std::process::ExitCode> {
    let opts = ScaleOpts {
        id: id.to_string(),
        nodes,
        cycles: args.cycles,
        idle_secs: args.idle_secs,
        agent_bin: args.agent_bin.clone(),
        weftctl_bin: std::env::current_exe().ok(),
        ready_timeout_secs: args.ready_timeout.max(180),
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let r = run(&opts, command, |line| eprintln!("{line}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r).context("encoding JSON")?);
    } else {
        print!("{}", render(&r));
    }
    Ok(if r.missed.is_empty() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        let d = Dist::of(&[3.0, 1.0, f64::NAN, 2.0]);
        assert_eq!(d, Dist { samples: 3, p50: Some(2.0), p99: Some(3.0), max: Some(3.0) });
    }

    #[test]
    fn proc_stat_ticks() {
        let stat = "4242 (weft agent) S 1 4242 4242 0 -1 4194560 812 0 0 0 137 45 0 0 20 0 6 0 9876 12345 678";
        assert_eq!(super::super::parse::parse_stat_ticks(stat), Some(182));
        assert_eq!(super::super::parse::parse_stat_ticks("garbage"), None);
        assert_eq!(parse_loadavg("5.59 4.02 3.25 3/612 1234\n"), Some([5.59, 4.02, 3.25]));
        assert_eq!(parse_loadavg(""), None);
    }

    #[test]
    fn etcd_writes_from_timers() {
        // heartbeat every 5 s (720/h), subnet lease every 2.4 h, probes every 10 s (put + lease).
        let w = expected_writes_per_hour(15.0, 86400.0, Some(10.0));
        assert!((w - (720.0 + 3600.0 / 8640.0 + 720.0)).abs() < 1e-9, "{w}");
        assert_eq!(expected_revisions_per_hour(Some(10.0)), 360.0);
        assert_eq!(expected_revisions_per_hour(None), 0.0);
        assert_eq!(key_segment("10.244.3.0/24"), "10.244.3.0-24");
    }
}
