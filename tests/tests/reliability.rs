//! Reliability (issue 5) on the lab: agent restarts, etcd outages and member loss, races for
//! subnets, exhaustion, stale and damaged state, hostile etcd records, broken config and CLI
//! input, property tests over the untrusted-input parsers, and underlay changes. Every lab test
//! builds its own lab (ids r1..r9) and the lab's Drop removes it, also on failure. Results are
//! printed as `measured:` lines (run with `--nocapture`) and recorded in docs/RELIABILITY.md.
//!
//! `WEFT_FULL=1` runs the long variants (a 30 s etcd outage instead of 10 s, 20 race rounds
//! instead of 3); `WEFT_FUZZ_CASES=N` sets the property-test case count (default 2000).
//!
//! Run: `cargo build --workspace --bins && cargo test -p weft-tests --test reliability --
//! --test-threads=1 --nocapture` (as root; the r7 and r8 tests need no root).

use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_config::api::Status;
use weft_config::Backend;
use weft_lab::{etcd_server, in_netns, Lab, Topology};
use weft_tests::*;

fn full() -> bool {
    std::env::var_os("WEFT_FULL").is_some_and(|v| v == "1")
}

/// The agent's status as it is now (not waiting for ready); `None` when it does not answer.
fn status_now(lab: &Lab, i: usize) -> Option<Status> {
    lab.client(i).ok()?.with_timeout(Duration::from_secs(2)).status().ok()
}

fn ready_status(lab: &Lab, i: usize) -> Status {
    lab.wait_ready(i, Duration::from_secs(30)).unwrap_or_else(|e| panic!("n{i} not ready: {e:#}"))
}

fn pod_ips(st: &Status) -> Vec<(String, Ipv4Addr)> {
    st.pods.iter().map(|p| (p.name.clone(), v4(p.ip))).collect()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Continuous traffic: a UDP stream with sequence numbers, one datagram every 10 ms, from one pod
// to another; the receiver records what arrived, so loss and the longest gap are exact.

struct Stream {
    label: String,
    started: Instant,
    stop_sending: Arc<AtomicBool>,
    stop_receiving: Arc<AtomicBool>,
    sender: std::thread::JoinHandle<(u64, u64)>,
    receiver: std::thread::JoinHandle<(BTreeSet<u64>, Duration)>,
}

#[derive(Debug)]
struct StreamResult {
    label: String,
    sent: u64,
    send_errors: u64,
    received: u64,
    lost: u64,
    /// The sequence numbers lost, as ranges (where in the stream the loss happened).
    lost_ranges: Vec<(u64, u64)>,
    max_gap: Duration,
}

impl std::fmt::Display for StreamResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: sent {}, received {}, lost {}, send errors {}, longest gap between arrivals {:.0} ms",
            self.label,
            self.sent,
            self.received,
            self.lost,
            self.send_errors,
            self.max_gap.as_secs_f64() * 1000.0
        )?;
        if !self.lost_ranges.is_empty() {
            let ranges: Vec<String> = self
                .lost_ranges
                .iter()
                .map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
                .collect();
            write!(f, " (lost sequence numbers {}, of 0-{})", ranges.join(", "), self.sent.saturating_sub(1))?;
        }
        Ok(())
    }
}

/// Starts a stream from pod `from` = (node, pod index) to pod `to` on UDP `port`.
fn stream(lab: &Lab, from: (usize, usize), to: (usize, usize), port: u16) -> Stream {
    let src_ns = lab.pod_ns(from.0, from.1);
    let dst_ns = lab.pod_ns(to.0, to.1);
    let dst_ip = pod_ip(lab, to.0, &format!("p{}", to.1));
    let label = format!("n{}/p{} -> n{}/p{}", from.0, from.1, to.0, to.1);
    // The stream measures what a working path loses; an agent is ready before its tunnels
    // to the other nodes are (quic dials after both records are seen), so wait for the path.
    let from_pod = format!("n{}/p{}", from.0, from.1);
    if wait_for(Duration::from_secs(10), || ping_within(lab, &from_pod, dst_ip, "0.2")).is_none() {
        panic!("{label}: no path within 10 s, before the stream started");
    }
    let stop_sending = Arc::new(AtomicBool::new(false));
    let stop_receiving = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stop_r = stop_receiving.clone();
    let receiver = std::thread::spawn(move || {
        in_netns(&dst_ns, move || {
            let s = UdpSocket::bind((dst_ip, port)).expect("bind receiver");
            s.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            let _ = ready_tx.send(());
            let mut got = BTreeSet::new();
            let mut last: Option<Instant> = None;
            let mut max_gap = Duration::ZERO;
            let mut buf = [0u8; 64];
            while !stop_r.load(Ordering::SeqCst) {
                if let Ok(n) = s.recv(&mut buf) {
                    if n == 8 {
                        got.insert(u64::from_be_bytes(buf[..8].try_into().expect("8 bytes")));
                        let now = Instant::now();
                        if let Some(l) = last {
                            max_gap = max_gap.max(now - l);
                        }
                        last = Some(now);
                    }
                }
            }
            (got, max_gap)
        })
        .expect("receiver namespace")
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("receiver did not start");
    let stop_s = stop_sending.clone();
    let sender = std::thread::spawn(move || {
        in_netns(&src_ns, move || {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind sender");
            let (mut seq, mut errors) = (0u64, 0u64);
            let mut next = Instant::now();
            while !stop_s.load(Ordering::SeqCst) {
                if s.send_to(&seq.to_be_bytes(), (dst_ip, port)).is_err() {
                    errors += 1;
                }
                seq += 1;
                next += Duration::from_millis(10);
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
            (seq, errors)
        })
        .expect("sender namespace")
    });
    Stream { label, started: Instant::now(), stop_sending, stop_receiving, sender, receiver }
}

impl Stream {
    /// Stops the stream after it ran for at least 2 s.
    fn stop(self) -> StreamResult {
        if let Some(d) = Duration::from_secs(2).checked_sub(self.started.elapsed()) {
            std::thread::sleep(d);
        }
        self.stop_sending.store(true, Ordering::SeqCst);
        let (sent, send_errors) = self.sender.join().expect("sender thread");
        std::thread::sleep(Duration::from_millis(300));
        self.stop_receiving.store(true, Ordering::SeqCst);
        let (got, max_gap) = self.receiver.join().expect("receiver thread");
        let received = got.range(..sent).count() as u64;
        let lost_ranges = missing_ranges(&got, sent);
        StreamResult { label: self.label, sent, send_errors, received, lost: sent - received, lost_ranges, max_gap }
    }
}

/// The numbers below `sent` missing from `got`, as inclusive ranges.
fn missing_ranges(got: &BTreeSet<u64>, sent: u64) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for n in (0..sent).filter(|n| !got.contains(n)) {
        match ranges.last_mut() {
            Some(last) if last.1 + 1 == n => last.1 = n,
            _ => ranges.push((n, n)),
        }
    }
    ranges
}

#[test]
fn missing_ranges_name_each_run_of_lost_numbers() {
    let got: BTreeSet<u64> = [3, 4, 7, 9].into_iter().collect();
    assert_eq!(missing_ranges(&got, 11), [(0, 2), (5, 6), (8, 8), (10, 10)]);
    assert_eq!(missing_ranges(&got, 5), [(0, 2)]);
    assert!(missing_ranges(&(0..4).collect(), 4).is_empty());
}

fn assert_lossless(results: &[StreamResult]) {
    for r in results {
        eprintln!("measured: {r}");
    }
    for r in results {
        assert!(r.sent >= 150, "stream {} barely ran: {r}", r.label);
        assert_eq!(r.lost, 0, "packets lost: {r}");
    }
}

// ---------------------------------------------------------------------------------------------
// etcd from the test, with weftctl's certificate, from inside the lab's underlay namespace.

enum Op {
    Put(String, Vec<u8>),
    Del(String),
    DelPrefix(String),
}

fn etcd_run<T: Send>(
    lab: &Lab,
    f: impl for<'c> FnOnce(
            &'c mut etcd_client::Client,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>> + Send + 'c>>
        + Send,
) -> T {
    let opts = lab.etcd_opts();
    let ns = lab.names().underlay_ns();
    in_netns(&ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let mut c = weft_controller::etcd::connect(&opts).await?;
            f(&mut c).await
        })
    })
    .expect("underlay namespace")
    .unwrap_or_else(|e| panic!("etcd: {e:#}"))
}

fn etcd_ops(lab: &Lab, ops: Vec<Op>) {
    etcd_run(lab, move |c| {
        Box::pin(async move {
            for op in ops {
                match op {
                    Op::Put(k, v) => drop(c.put(k, v, None).await?),
                    Op::Del(k) => drop(c.delete(k, None).await?),
                    Op::DelPrefix(k) => drop(c.delete(k, Some(etcd_client::DeleteOptions::new().with_prefix())).await?),
                }
            }
            Ok(())
        })
    })
}

fn etcd_keys(lab: &Lab, prefix: &str) -> Vec<String> {
    let prefix = prefix.to_string();
    etcd_run(lab, move |c| {
        Box::pin(async move {
            let r = c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix().with_keys_only())).await?;
            Ok(r.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect())
        })
    })
}

/// Index (1-based) of the member that leads the lab's etcd cluster.
fn etcd_leader(lab: &Lab) -> usize {
    let eps = lab.etcd_endpoints();
    etcd_run(lab, move |c| {
        Box::pin(async move {
            let leader = c.status().await?.leader();
            let members = c.member_list().await?;
            let m = members
                .members()
                .iter()
                .find(|m| m.id() == leader)
                .ok_or_else(|| anyhow::anyhow!("leader {leader:x} is not a member"))?;
            let url = m.client_urls().first().cloned().unwrap_or_default();
            eps.iter().position(|e| *e == url).map(|k| k + 1).ok_or_else(|| anyhow::anyhow!("leader URL {url}"))
        })
    })
}

/// The etcd member (1-based) node `i`'s agent holds a connection to, from `ss`.
fn etcd_member_of(lab: &Lab, i: usize) -> Option<usize> {
    let out = run_ok(lab, &format!("n{i}"), &["ss", "-Htn", "state", "established", "( dport = :2379 )"]);
    let eps = lab.etcd_endpoints();
    let peer = out.split_whitespace().find(|w| w.ends_with(":2379"))?.to_string();
    eps.iter().position(|e| e.ends_with(&peer)).map(|k| k + 1)
}

const SUBNETS: &str = "/weft/v1/default/subnets/";
const NODES: &str = "/weft/v1/default/nodes/";

fn subnet_key(subnet: &str) -> String {
    format!("{SUBNETS}{}", subnet.replace('/', "-"))
}

fn record_json(node: &str, ip: &str) -> String {
    format!(
        r#"{{"schema":1,"node":"{node}","node_id":"evil-{node}","public_ip":"{ip}","backend":"host-gw","epoch":1}}"#
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Agent restarts.

/// host-gw: SIGTERM-then-start and SIGKILL-then-start of either node's agent lose no packet of
/// a 10 ms stream in each direction; subnet and pod addresses stay, the pid changes. (quic:
/// `quic.rs::tunnels_come_back_within_three_seconds_of_a_restart`.)
#[test]
fn r1_agent_restart_host_gw_loses_nothing() {
    let lab = lab("r1", 2, 1, |_| {});
    let before: Vec<Status> = (1..=2).map(|i| ready_status(&lab, i)).collect();
    let a = stream(&lab, (1, 1), (2, 1), 7201);
    let b = stream(&lab, (2, 1), (1, 1), 7202);
    std::thread::sleep(Duration::from_millis(500));
    for (i, sig) in [(1, Signal::SIGTERM), (1, Signal::SIGKILL), (2, Signal::SIGTERM), (2, Signal::SIGKILL)] {
        let pid = lab.agent_pid(i).expect("pid");
        let t = Instant::now();
        lab.stop_agent(i, sig).expect("stop");
        std::thread::sleep(Duration::from_millis(300));
        let new_pid = lab.start_agent(i).expect("start");
        let st = lab.wait_ready(i, Duration::from_secs(20)).expect("ready again");
        eprintln!("measured: n{i} {sig}: agent ready again {} after the signal", secs(t.elapsed()));
        assert_ne!(pid, new_pid, "the agent must really have restarted");
        assert_eq!(st.pid, new_pid, "the status comes from the new agent");
        assert_eq!(st.subnet, before[i - 1].subnet, "subnet changed across {sig}");
        assert_eq!(pod_ips(&st), pod_ips(&before[i - 1]), "pod addresses changed across {sig}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_lossless(&[a.stop(), b.stop()]);
}

// ---------------------------------------------------------------------------------------------
// 2. etcd outage.

fn outage_secs() -> u64 {
    if full() {
        30
    } else {
        10
    }
}

/// Stops etcd for 10 s (30 s with WEFT_FULL=1) under a 10 ms stream each way between n1 and n2:
/// no loss; both agents report `etcd_connected: false` and `ready: false`; n3, started during the
/// outage, waits without a subnet, joins once etcd is back and is routable from n1 and n2 within
/// 2 s of being ready.
fn etcd_outage(id: &str, backend: Backend, topology: Topology) {
    // The default reconcile period (10 s): reconnecting must not wait for it.
    let lab = lab(id, 3, 1, |s| {
        s.backend = backend;
        s.topology = topology;
        s.deferred_agents = 1;
        s.reconcile_secs = 10;
    });
    let a = stream(&lab, (1, 1), (2, 1), 7211);
    let b = stream(&lab, (2, 1), (1, 1), 7212);
    std::thread::sleep(Duration::from_millis(500));

    let t0 = Instant::now();
    lab.stop_etcd().expect("stop etcd");
    // Not ready for etcd at once (`etcd_connected: false`); `ready` keeps meaning "this node's
    // data plane is set up" (it is, and it keeps working), and /readyz turns 503 once etcd has
    // been silent for its grace period (issue 6).
    let noticed = wait_for(Duration::from_secs(10), || {
        (1..=2).all(|i| status_now(&lab, i).is_some_and(|s| !s.etcd_connected && s.ready))
    });
    let noticed = noticed.unwrap_or_else(|| {
        panic!("agents still report etcd_connected: {:?}", (1..=2).map(|i| status_now(&lab, i)).collect::<Vec<_>>())
    });
    eprintln!("measured: {id}: both agents report etcd_connected=false {} after etcd stopped", secs(noticed));

    lab.start_agent(3).expect("start n3 during the outage");
    std::thread::sleep(Duration::from_secs(2));
    let s3 = status_now(&lab, 3).expect("n3 answers while waiting for etcd");
    assert!(!s3.ready && s3.subnet.is_none() && !s3.etcd_connected, "n3 must wait for etcd: {s3:?}");
    assert!(lab.agent_pid(3).is_some(), "n3 must keep running while etcd is away");

    let outage = Duration::from_secs(outage_secs());
    if let Some(d) = outage.checked_sub(t0.elapsed()) {
        std::thread::sleep(d);
    }
    // Still down, still carrying traffic.
    assert!((1..=2).all(|i| status_now(&lab, i).is_some_and(|s| !s.etcd_connected)));
    let ip2 = pod_ip_now(&lab, 2);
    assert!(ping(&lab, "n1/p1", ip2), "data plane broken during the outage");

    let back = Instant::now();
    lab.start_etcd().expect("start etcd");
    let healthy = back.elapsed();
    let st3 = lab.wait_ready(3, Duration::from_secs(30)).expect("n3 joins once etcd is back");
    let joined = back.elapsed();
    let ip3 = v4(st3.pods.first().expect("n3 pod").ip);
    let routable =
        wait_for(Duration::from_secs(15), || (1..=2).all(|i| ping_within(&lab, &format!("n{i}/p1"), ip3, "0.3")));
    let routable = routable.unwrap_or_else(|| panic!("n3's pod {ip3} not reachable from n1 and n2 within 15 s"));
    let reachable = back.elapsed();
    let resync = wait_for(Duration::from_secs(10), || {
        (1..=2).all(|i| status_now(&lab, i).is_some_and(|s| s.etcd_connected && s.ready))
    });
    assert!(
        resync.is_some(),
        "n1/n2 did not reconnect: {:?}",
        (1..=2).map(|i| status_now(&lab, i)).collect::<Vec<_>>()
    );
    eprintln!(
        "measured: {id}: outage {} s; etcd healthy {} after its start; n3 ready {} after etcd start; \
         n3 routable from n1 and n2 {} after it was ready ({} after etcd start)",
        outage.as_secs(),
        secs(healthy),
        secs(joined),
        secs(routable),
        secs(reachable)
    );
    assert!(joined <= Duration::from_secs(4), "n3 joined only {} after etcd was started", secs(joined));
    assert!(routable <= Duration::from_secs(2), "n3 routable only {} after it was ready", secs(routable));
    assert_lossless(&[a.stop(), b.stop()]);
}

fn pod_ip_now(lab: &Lab, i: usize) -> Ipv4Addr {
    status_now(lab, i).and_then(|s| s.pods.first().map(|p| v4(p.ip))).expect("pod address")
}

#[test]
fn r2_etcd_outage_host_gw() {
    etcd_outage("r2", Backend::HostGw, Topology::Flat);
}

#[test]
fn r2_etcd_outage_quic() {
    etcd_outage("r2q", Backend::Quic, Topology::Routed);
}

// ---------------------------------------------------------------------------------------------
// 3. A three-member etcd cluster loses a member.

#[test]
fn r3_three_member_etcd_survives_losing_a_member() {
    let lab = lab("r3", 3, 1, |s| {
        s.etcd_members = 3;
        s.deferred_agents = 1;
    });
    let eps = lab.etcd_endpoints();
    assert_eq!(eps, ["https://172.30.0.2:2379", "https://172.30.0.3:2379", "https://172.30.0.4:2379"]);
    for i in 1..=3 {
        assert_eq!(lab.node_config(i).expect("config").etcd.endpoints, eps, "n{i} must get every endpoint");
    }
    let a = stream(&lab, (1, 1), (2, 1), 7221);
    // Kill the member n1's agent talks to (the leader if that cannot be told).
    let leader = etcd_leader(&lab);
    let pinned = etcd_member_of(&lab, 1);
    let victim = pinned.unwrap_or(leader);
    eprintln!(
        "measured: r3: leader is member {leader}, n1's agent talks to member {pinned:?}; killing member {victim}"
    );
    let t = Instant::now();
    lab.stop_etcd_member(victim, Signal::SIGKILL).expect("kill a member");
    // The cluster still answers (a new leader is elected among the two left).
    let answers =
        wait_for(Duration::from_secs(10), || lab.exec("n1", &["weftctl", "nodes"]).is_ok_and(|o| o.status.success()));
    let answers = answers.expect("cluster unavailable after losing one member of three");
    eprintln!("measured: r3: member {victim} killed; the cluster answers weftctl again after {}", secs(answers));
    // A new node joins.
    let t_join = Instant::now();
    lab.start_agent(3).expect("start n3");
    let st3 = lab.wait_ready(3, Duration::from_secs(30)).expect("n3 joins with a member down");
    let joined = t_join.elapsed();
    let ip3 = v4(st3.pods.first().expect("pod").ip);
    let t_ready = Instant::now();
    let routable =
        wait_for(Duration::from_secs(10), || (1..=2).all(|i| ping_within(&lab, &format!("n{i}/p1"), ip3, "0.3")))
            .expect("n3 routable from n1 and n2");
    let connected = wait_for(Duration::from_secs(10), || {
        (1..=3).all(|i| status_now(&lab, i).is_some_and(|s| s.etcd_connected && s.ready))
    });
    assert!(
        connected.is_some(),
        "agents not connected: {:?}",
        (1..=3).map(|i| status_now(&lab, i)).collect::<Vec<_>>()
    );
    eprintln!(
        "measured: r3: n3 ready {} after start ({} after the kill); routable from n1 and n2 {} after ready",
        secs(joined),
        secs(t.elapsed()),
        secs(routable)
    );
    assert!(routable <= Duration::from_secs(2), "n3 routable only {} after ready", secs(t_ready.elapsed()));
    let subnets: BTreeSet<String> = (1..=3).map(|i| ready_status(&lab, i).subnet.expect("subnet")).collect();
    assert_eq!(subnets.len(), 3, "{subnets:?}");
    // The killed member comes back with its data dir and rejoins.
    assert_ne!(etcd_member_of(&lab, 1), Some(victim), "n1 still talks to the dead member");
    lab.start_etcd_member(victim).expect("restart the member");
    let rejoined = wait_for(Duration::from_secs(20), || etcd_server::probe_member(lab.names(), victim).is_ok());
    assert!(rejoined.is_some(), "member {victim} did not rejoin");
    // Then the leader: the other two elect a new one, and the agents stay connected.
    let leader = etcd_leader(&lab);
    lab.stop_etcd_member(leader, Signal::SIGKILL).expect("kill the leader");
    let answers =
        wait_for(Duration::from_secs(10), || lab.exec("n1", &["weftctl", "nodes"]).is_ok_and(|o| o.status.success()))
            .expect("cluster unavailable after losing its leader");
    let connected = wait_for(Duration::from_secs(10), || {
        (1..=3).all(|i| status_now(&lab, i).is_some_and(|s| s.etcd_connected && s.ready))
    });
    assert!(connected.is_some(), "agents not connected after the leader died");
    eprintln!(
        "measured: r3: leader (member {leader}) killed: cluster answers again after {}, all agents connected after {}",
        secs(answers),
        secs(connected.unwrap_or_default())
    );
    assert_lossless(&[a.stop()]);
}

// ---------------------------------------------------------------------------------------------
// 4. Races and exhaustion.

/// 20 agents started at once against an empty network get 20 distinct subnets; 3 rounds (20
/// with WEFT_FULL=1), each from scratch (records, heartbeats and state dirs removed).
#[test]
fn r4_twenty_agents_at_once_get_distinct_subnets() {
    const N: usize = 20;
    let rounds = if full() { 20 } else { 3 };
    let lab = lab("r4", N, 0, |s| {
        s.deferred_agents = N;
        s.reconcile_secs = 10;
    });
    let mut times = Vec::new();
    for round in 1..=rounds {
        assert!(etcd_keys(&lab, SUBNETS).is_empty(), "round {round} must start from an empty network");
        let t = Instant::now();
        for i in 1..=N {
            lab.start_agent(i).expect("start");
        }
        lab.wait_all_ready(Duration::from_secs(90)).expect("all ready");
        times.push(t.elapsed());
        let subnets: Vec<String> =
            (1..=N).map(|i| status_now(&lab, i).and_then(|s| s.subnet).expect("subnet")).collect();
        let distinct: BTreeSet<&String> = subnets.iter().collect();
        assert_eq!(distinct.len(), N, "round {round}: duplicate subnets {subnets:?}");
        let keys = etcd_keys(&lab, SUBNETS);
        assert_eq!(keys.len(), N, "round {round}: etcd holds {keys:?}");
        for s in &subnets {
            let net: ipnet::Ipv4Net = s.parse().expect("subnet");
            assert!(net.prefix_len() == 24 && "10.244.0.0/16".parse::<ipnet::Ipv4Net>().expect("cidr").contains(&net));
        }
        // Back to an empty network for the next round.
        for i in 1..=N {
            lab.stop_agent(i, Signal::SIGKILL).expect("stop");
            let _ = std::fs::remove_dir_all(lab.node_paths(i).state_dir);
        }
        etcd_ops(&lab, vec![Op::DelPrefix(SUBNETS.into()), Op::DelPrefix(NODES.into())]);
    }
    let worst = times.iter().max().copied().unwrap_or_default();
    let races: usize = (1..=N)
        .map(|i| {
            let log = std::fs::read_to_string(lab.node_paths(i).log).unwrap_or_default();
            log.matches("lost a race for the subnet").count()
        })
        .sum();
    assert!(races > 0, "the agents never raced: the test proves nothing");
    eprintln!("measured: r4: {races} lost races (transaction conflicts) retried over all rounds");
    eprintln!(
        "measured: r4: {rounds} rounds of {N} agents at once, all distinct; slowest round ready in {}",
        secs(worst)
    );
}

/// A /26 cluster with /28 subnets holds four nodes: the fifth agent reports a clear error,
/// keeps retrying without touching the others, and gets the subnet a leaving node frees.
#[test]
fn r4_exhaustion_fifth_agent_errors_and_keeps_retrying() {
    let lab = lab("r4x", 5, 1, |s| {
        s.cidr = "10.244.0.0/26".into();
        s.subnet_len = 28;
        s.deferred_agents = 1;
    });
    let before: Vec<(Status, Vec<String>)> = (1..=4).map(|i| (ready_status(&lab, i), route_table(&lab, i))).collect();
    lab.start_agent(5).expect("start n5");
    let want =
        "no free /28 left in 10.244.0.0/26 (4 subnets taken); free one with `weftctl node evict` or widen the network";
    let seen = wait_for(Duration::from_secs(10), || {
        status_now(&lab, 5).is_some_and(|s| s.last_error.as_deref() == Some(want))
    });
    assert!(seen.is_some(), "n5 status: {:?}", status_now(&lab, 5));
    std::thread::sleep(Duration::from_secs(6));
    let log = std::fs::read_to_string(lab.node_paths(5).log).expect("n5 log");
    let tries = log.lines().filter(|l| l.contains("cannot acquire a subnet yet") && l.contains(want)).count();
    assert!(tries >= 3, "n5 should keep retrying with the same error ({tries} tries):\n{log}");
    let s5 = status_now(&lab, 5).expect("n5 answers");
    assert!(!s5.ready && s5.subnet.is_none(), "{s5:?}");
    assert!(lab.agent_pid(5).is_some(), "n5 must keep running");
    for (i, (st, routes)) in before.iter().enumerate() {
        let n = i + 1;
        let now = status_now(&lab, n).expect("answers");
        assert_eq!((now.pid, &now.subnet), (st.pid, &st.subnet), "n{n} changed");
        assert_eq!(&route_table(&lab, n), routes, "n{n}'s routes changed");
    }
    eprintln!(
        "measured: r4x: n5 reports {want:?} {} after its start; {tries} tries in the next 6 s; n1-n4 unchanged",
        secs(seen.unwrap_or_default())
    );
    // Freeing a subnet lets the waiting node in.
    let freed = before[3].0.subnet.clone();
    lab.leave(4).expect("n4 leaves");
    let t = Instant::now();
    let st5 = lab.wait_ready(5, Duration::from_secs(20)).expect("n5 gets the freed subnet");
    assert_eq!(st5.subnet, freed);
    eprintln!("measured: r4x: n5 took the freed {} {} after n4 left", freed.unwrap_or_default(), secs(t.elapsed()));
}

// ---------------------------------------------------------------------------------------------
// 5. Stale and damaged state.

fn weft_routes(lab: &Lab, i: usize) -> Vec<String> {
    route_table(lab, i).into_iter().filter(|r| r.contains("proto 213")).collect()
}

/// Lines of `iptables -S` and of the `inet mine` nftables table that are not weft's (weft puts
/// tagged accepts into every foreign base chain on the forward hook, by design).
fn foreign_rules(lab: &Lab, node: &str) -> (Vec<String>, Vec<String>) {
    let not_weft = |text: String| -> Vec<String> {
        text.lines().filter(|l| !l.contains("weft:")).map(|l| l.trim().to_string()).collect()
    };
    let ipt = not_weft(run_ok(lab, node, &["iptables", "-S"]));
    let nft = not_weft(run_ok(lab, node, &["nft", "list", "table", "inet", "mine"]));
    (ipt, nft)
}

#[test]
fn r5_stale_and_damaged_state_is_repaired_and_foreign_state_left_alone() {
    let lab = lab("r5", 3, 1, |_| {});
    let sub: Vec<String> = (1..=3).map(|i| ready_status(&lab, i).subnet.expect("subnet")).collect();

    // A peer that left while n1's agent was down loses its route at n1's start.
    lab.stop_agent(1, Signal::SIGTERM).expect("stop n1");
    lab.leave(3).expect("n3 leaves");
    assert!(weft_routes(&lab, 1).iter().any(|r| r.starts_with(&sub[2])), "n1 (agent down) still routes n3");
    lab.start_agent(1).expect("start n1");
    ready_status(&lab, 1);
    let routes = weft_routes(&lab, 1);
    assert!(!routes.iter().any(|r| r.starts_with(&sub[2])), "stale route survived the start: {routes:?}");
    assert_eq!(routes, [format!("{} via {} dev eth0 proto 213", sub[1], lab.node_ip(2))]);

    // State weft does not own: a route inside the cluster CIDR with another protocol, one
    // outside it, an iptables rule and an nftables table.
    for args in [
        &["ip", "route", "add", "10.244.200.0/24", "via", "172.30.0.1", "proto", "static"][..],
        &["ip", "route", "add", "198.51.100.0/24", "via", "172.30.0.1"],
        &["iptables", "-A", "FORWARD", "-s", "198.51.100.0/24", "-j", "DROP"],
        &["iptables", "-I", "INPUT", "-p", "udp", "--dport", "9999", "-j", "ACCEPT"],
        &["nft", "add", "table", "inet", "mine"],
        &["nft", "add", "chain", "inet", "mine", "guard", "{ type filter hook forward priority 10; policy accept; }"],
        &["nft", "add", "rule", "inet", "mine", "guard", "ip", "saddr", "198.51.100.0/24", "counter", "accept"],
    ] {
        run_ok(&lab, "n1", args);
    }
    let foreign_routes: Vec<String> = route_table(&lab, 1).into_iter().filter(|r| !r.contains("proto 213")).collect();
    let foreign = foreign_rules(&lab, "n1");

    // A weft route deleted by hand comes back within one reconcile period (2 s).
    let ip2 = pod_ip(&lab, 2, "p1");
    let t = Instant::now();
    run_ok(&lab, "n1", &["ip", "route", "del", &sub[1], "proto", "213"]);
    assert!(!ping_within(&lab, "n1/p1", ip2, "0.3"), "control: no route, no ping");
    wait_for(Duration::from_secs(4), || weft_routes(&lab, 1).iter().any(|r| r.starts_with(&sub[1])))
        .expect("deleted route not restored");
    let deleted = t.elapsed();
    assert!(ping(&lab, "n1/p1", ip2));
    // A weft route changed by hand (wrong gateway) is put right within one period.
    run_ok(&lab, "n1", &["ip", "route", "replace", &sub[1], "via", "172.30.0.99", "dev", "eth0", "proto", "213"]);
    let want = format!("{} via {} dev eth0 proto 213", sub[1], lab.node_ip(2));
    let changed = wait_for(Duration::from_secs(4), || weft_routes(&lab, 1).contains(&want)).expect("route not fixed");
    // weft's firewall rules after a flush come back within one period (with a FORWARD DROP
    // policy, hostgw.rs::forward_drop_policies_do_not_break_pods_and_rules_come_back shows
    // traffic coming back too).
    let weft_rules = |lab: &Lab| run_ok(lab, "n1", &["iptables", "-S", "WEFT-FWD-default"]).lines().count();
    let rules = weft_rules(&lab);
    run_ok(&lab, "n1", &["iptables", "-F", "WEFT-FWD-default"]);
    run_ok(
        &lab,
        "n1",
        &["iptables", "-D", "FORWARD", "-m", "comment", "--comment", "weft:default", "-j", "WEFT-FWD-default"],
    );
    let flushed = wait_for(Duration::from_secs(4), || {
        weft_rules(&lab) == rules && run_ok(&lab, "n1", &["iptables", "-S", "FORWARD"]).contains("-j WEFT-FWD-default")
    })
    .expect("firewall rules not restored");
    eprintln!(
        "measured: r5: route deleted by hand back after {}, wrong gateway fixed after {}, flushed rules back after {} (reconcile period 2 s)",
        secs(deleted),
        secs(changed),
        secs(flushed),
    );
    for d in [deleted, changed, flushed] {
        assert!(d <= Duration::from_millis(2600), "repair took {} (> one reconcile period)", secs(d));
    }
    // A peer's subnet is weft's destination: a route of another protocol put there by hand
    // (`ip route replace ... proto static`) is replaced by weft's own within one period. Every
    // other destination, also inside the cluster CIDR, is left alone (checked below).
    run_ok(&lab, "n1", &["ip", "route", "replace", &sub[1], "via", "172.30.0.99", "proto", "static"]);
    let retaken =
        wait_for(Duration::from_secs(4), || route_table(&lab, 1).iter().filter(|r| r.starts_with(&sub[1])).eq([&want]))
            .unwrap_or_else(|| panic!("foreign route on a peer subnet not replaced: {:?}", route_table(&lab, 1)));
    eprintln!("measured: r5: a proto-static route on a peer's subnet replaced by weft's after {}", secs(retaken));

    // Foreign routes and rules survived all of it, and a restart.
    lab.stop_agent(1, Signal::SIGTERM).expect("stop");
    lab.start_agent(1).expect("start");
    ready_status(&lab, 1);
    std::thread::sleep(Duration::from_millis(2500));
    let now: Vec<String> = route_table(&lab, 1).into_iter().filter(|r| !r.contains("proto 213")).collect();
    assert_eq!(now, foreign_routes, "routes weft does not own were touched");
    assert_eq!(foreign_rules(&lab, "n1"), foreign, "rules weft does not own were touched");
}

// ---------------------------------------------------------------------------------------------
// 6. Hostile etcd records.

#[test]
fn r6_hostile_records_are_skipped_and_counted_once() {
    let lab = lab("r6", 3, 1, |_| {});
    let own1 = ready_status(&lab, 1).subnet.expect("subnet");
    let own_base = own1.split('/').next().expect("addr").to_string();
    let mut padded = record_json("big", "172.30.0.98");
    padded.insert_str(1, &format!(r#""pad":"{}","#, "x".repeat(5000)));
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        ("malformed JSON", subnet_key("10.244.50.0/24"), br#"{"schema":1,"node":"#.to_vec()),
        ("subnet outside the cluster CIDR", subnet_key("10.99.0.0/24"), record_json("evil1", "172.30.0.97").into()),
        (
            "subnet overlapping n1's own (a /25 inside it)",
            format!("{SUBNETS}{own_base}-25"),
            record_json("evil2", "172.30.0.96").into(),
        ),
        (
            "another node's name (n2) at a new key",
            subnet_key("10.244.60.0/24"),
            record_json("n2", "172.30.0.95").into(),
        ),
        ("oversized value (5 KiB)", subnet_key("10.244.70.0/24"), padded.into_bytes()),
        ("a key that is no subnet", format!("{SUBNETS}not-a-subnet"), record_json("evil3", "172.30.0.94").into()),
    ];
    let snapshot = |lab: &Lab| -> Vec<(u32, u64, Vec<String>)> {
        (1..=3)
            .map(|i| {
                let s = status_now(lab, i).expect("status");
                (s.pid, s.skipped_records, route_table(lab, i))
            })
            .collect()
    };
    let pids: Vec<u32> = (1..=3).map(|i| lab.agent_pid(i).expect("pid")).collect();
    for (what, key, value) in &cases {
        let before = snapshot(&lab);
        etcd_ops(&lab, vec![Op::Put(key.clone(), value.clone())]);
        let counted = wait_for(Duration::from_secs(5), || {
            (1..=3).all(|i| status_now(&lab, i).is_some_and(|s| s.skipped_records == before[i - 1].1 + 1))
        });
        assert!(counted.is_some(), "{what}: skip not counted: {:?}", snapshot(&lab));
        // A full reconcile later (2 s), the count has not moved again and nothing else has.
        std::thread::sleep(Duration::from_millis(2500));
        let after = snapshot(&lab);
        for i in 0..3 {
            assert_eq!(after[i].0, before[i].0, "{what}: n{} agent pid changed", i + 1);
            assert_eq!(after[i].1, before[i].1 + 1, "{what}: n{} skip counter", i + 1);
            assert_eq!(after[i].2, before[i].2, "{what}: n{} route table changed", i + 1);
        }
        eprintln!(
            "measured: r6: {what}: skipped_records +1 on every node within {}, routes and pids unchanged",
            secs(counted.unwrap_or_default())
        );
    }
    assert_eq!((1..=3).map(|i| lab.agent_pid(i).expect("pid")).collect::<Vec<_>>(), pids, "an agent restarted");
    let log = std::fs::read_to_string(lab.node_paths(1).log).expect("log");
    assert!(log.contains("skipping subnet record"), "skips are logged");
    // Removing them changes nothing either.
    let before = snapshot(&lab);
    etcd_ops(&lab, cases.iter().map(|(_, k, _)| Op::Del(k.clone())).collect());
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(snapshot(&lab), before);
}

// ---------------------------------------------------------------------------------------------
// 7. Bad config and CLI input (no root needed).

fn bin(name: &str) -> PathBuf {
    let dir = weft_lab::bins::bin_dir().expect("binary directory");
    let p = dir.join(name);
    assert!(p.is_file(), "{} missing: run cargo build --workspace --bins first", p.display());
    p
}

/// Runs `cmd` in a network namespace of its own when possible (nothing it does could reach any
/// real network), with no WEFT_* variables, killing it after 10 s. Returns (exit code, stderr).
fn run_isolated(mut cmd: Command) -> (Option<i32>, String) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WEFT_") || k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "off").stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    cmd.stderr(std::process::Stdio::piped());
    use std::os::unix::process::CommandExt;
    // SAFETY: only the unshare system call runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            use nix::sched::{unshare, CloneFlags};
            if unshare(CloneFlags::CLONE_NEWNET).is_err() {
                let _ = unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const GOOD_TOML: &str = r#"node_name = "node-a"
node_id = "id-a"
[etcd]
endpoints = ["https://10.0.0.5:2379"]
ca_file = "/etc/weft/ca.pem"
[paths]
state_dir = "@DIR@/state"
subnet_env = "@DIR@/subnet.env"
socket = "@DIR@/agent.sock"
pid_file = "@DIR@/agent.pid"
"#;

/// (what is wrong, the file, the exact stderr line after `weft-agent: FILE: `).
fn broken_configs() -> Vec<(&'static str, String, &'static str)> {
    let good = GOOD_TOML.to_string();
    let edit = |from: &str, to: &str| {
        assert!(good.contains(from), "{from}");
        good.replacen(from, to, 1)
    };
    vec![
        ("missing node_name", edit("node_name = \"node-a\"\n", ""), "node_name: required, expected a string"),
        ("node_name of the wrong type", edit("\"node-a\"", "5"), "node_name: expected a string, found an integer"),
        (
            "node_name not a name",
            edit("\"node-a\"", "\"Node A\""),
            "node_name: expected lowercase letters, digits, '-', '_' or '.', 1 to 63 characters, found \"Node A\"",
        ),
        (
            "missing [etcd]",
            edit("[etcd]\nendpoints = [\"https://10.0.0.5:2379\"]\nca_file = \"/etc/weft/ca.pem\"\n", ""),
            "etcd.endpoints: expected at least one URL",
        ),
        (
            "endpoints of the wrong type",
            edit("[\"https://10.0.0.5:2379\"]", "\"https://10.0.0.5:2379\""),
            "etcd.endpoints: expected an array of strings, found a string",
        ),
        (
            "endpoint without a scheme",
            edit("https://10.0.0.5:2379", "10.0.0.5:2379"),
            "etcd.endpoints[0]: expected a URL like http://10.0.0.5:2379, found \"10.0.0.5:2379\"",
        ),
        (
            "plain http with a CA",
            edit("https://10.0.0.5:2379", "http://10.0.0.5:2379"),
            "etcd.endpoints: expected https:// URLs when ca_file is set",
        ),
        (
            "public_ip not an address",
            format!("{good}[underlay]\npublic_ip = \"10.0.0.300\"\n"),
            "underlay.public_ip: expected an IPv4 address like 192.0.2.10, found \"10.0.0.300\"",
        ),
        (
            "public_ip given as a CIDR",
            format!("{good}[underlay]\npublic_ip = \"10.0.0.0/24\"\n"),
            "underlay.public_ip: expected an IPv4 address like 192.0.2.10, found \"10.0.0.0/24\"",
        ),
        (
            "public_ip not unicast",
            format!("{good}[underlay]\npublic_ip = \"224.0.0.1\"\n"),
            "underlay.public_ip: expected a unicast address other nodes can reach, found 224.0.0.1",
        ),
        (
            "bridge MTU too small",
            format!("{good}[bridge]\nmtu = 100\n"),
            "bridge.mtu: expected an integer from 576 to 65535, found 100",
        ),
        (
            "reconcile period zero",
            format!("{good}[timers]\nreconcile_secs = 0\n"),
            "timers.reconcile_secs: expected an integer from 1 to 3600, found 0",
        ),
        (
            "relative path",
            edit("\"@DIR@/state\"", "\"state\""),
            "paths.state_dir: expected an absolute path, found \"state\"",
        ),
        (
            "unknown key with a suggestion",
            format!("node_nme = \"x\"\n{good}"),
            "node_nme: unknown key (did you mean `node_name`?)",
        ),
        (
            "unknown key in a section",
            edit("ca_file =", "ca_fil ="),
            "etcd.ca_fil: unknown key (did you mean `ca_file`?)",
        ),
        ("invalid TOML", format!("{good}[timers\n"), "invalid TOML (line 11, column 8): unclosed table, expected `]`"),
        (
            "duplicate pod",
            format!("{good}[[pods]]\nname = \"web\"\n[[pods]]\nname = \"web\"\nnetns = \"other\"\n"),
            "pods[1].name: duplicate pod name \"web\" (also pods[0])",
        ),
        (
            "quic without its files",
            format!("{good}[quic]\nport = 7946\n"),
            "quic.ca_file: required in [quic], expected an absolute path",
        ),
        (
            "port out of range",
            format!("{good}[quic]\nport = 70000\n"),
            "quic.port: expected an integer from 1 to 65535, found 70000",
        ),
    ]
}

#[test]
fn r7_broken_agent_configs_exit_2_with_one_exact_line() {
    let dir = std::env::temp_dir().join(format!("weft-r7-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let agent = bin("weft-agent");
    let mut failures = Vec::new();
    let cases = broken_configs();
    for (what, text, want) in &cases {
        let file = dir.join("agent.toml");
        std::fs::write(&file, text.replace("@DIR@", &dir.to_string_lossy())).expect("write");
        let mut cmd = Command::new(&agent);
        cmd.arg("--config").arg(&file);
        let (code, stderr) = run_isolated(cmd);
        let want = format!("weft-agent: {}: {want}\n", file.display());
        if code != Some(2) || stderr != want {
            failures.push(format!("{what}: exit {code:?}, stderr {stderr:?}, expected exit 2 and {want:?}"));
        }
    }
    // A file that is not there.
    let missing = dir.join("missing.toml");
    let mut cmd = Command::new(&agent);
    cmd.arg("--config").arg(&missing);
    let (code, stderr) = run_isolated(cmd);
    let want = format!("weft-agent: {}: cannot read: No such file or directory (os error 2)\n", missing.display());
    if code != Some(2) || stderr != want {
        failures.push(format!("missing file: exit {code:?}, stderr {stderr:?}"));
    }
    // The good file is accepted (checked with --check so nothing starts).
    let file = dir.join("good.toml");
    std::fs::write(&file, GOOD_TOML.replace("@DIR@", &dir.to_string_lossy())).expect("write");
    let mut cmd = Command::new(&agent);
    cmd.arg("--config").arg(&file).arg("--check");
    let (code, stderr) = run_isolated(cmd);
    assert_eq!((code, stderr.as_str()), (Some(0), ""), "the base config must be valid");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len() + 1, failures.join("\n"));
    eprintln!("measured: r7: {} broken agent.toml files, each exit 2 with its exact one-line message", cases.len() + 1);
}

/// weftctl: bad arguments exit 2 with one line naming the flag (clap's own parse errors add
/// its "For more information, try '--help'." hint after a blank line).
#[test]
fn r7_bad_weftctl_arguments_exit_2_with_one_exact_line() {
    let ctl = bin("weftctl");
    let e = ["--etcd", "https://192.0.2.1:2379"];
    let nb = ["--agent-bin", "/nonexistent/weft-agent"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&e[..], &["network", "init", "--cidr", "10.244.0.1/16", "--subnet-len", "24", "--backend", "host-gw"]].concat(),
            "error: --cidr: 10.244.0.1/16 has host bits set (did you mean 10.244.0.0/16?)",
        ),
        (
            [&e[..], &["network", "init", "--cidr", "10.244.0.0/16", "--subnet-len", "40", "--backend", "host-gw"]].concat(),
            "error: --subnet-len: expected a prefix length from 17 to 30 (longer than the cluster's /16), found 40",
        ),
        (
            [&e[..], &["network", "init", "--cidr", "10.244.0.0/33", "--subnet-len", "24", "--backend", "host-gw"]].concat(),
            "error: --cidr: expected an IPv4 CIDR like 10.244.0.0/16, found \"10.244.0.0/33\"",
        ),
        (
            [&e[..], &["network", "init", "--cidr", "10.244.0.0/16", "--subnet-len", "24", "--backend", "vxlan"]].concat(),
            "error: invalid value 'vxlan' for '--backend <BACKEND>': expected one of host-gw, quic, found \"vxlan\"",
        ),
        (
            [&e[..], &["network", "init", "--cidr", "10.244.0.0/16", "--subnet-len", "400", "--backend", "quic"]].concat(),
            "error: invalid value '400' for '--subnet-len <SUBNET_LEN>': 400 is not in 0..=255",
        ),
        (vec!["--etcd", "10.0.0.5:2379", "nodes"], "error: --etcd: expected a URL like http://10.0.0.5:2379, found \"10.0.0.5:2379\""),
        (vec!["nodes"], "error: --etcd: required (or set WEFT_ETCD), e.g. --etcd http://10.0.0.5:2379"),
        (
            vec!["--network", "Bad Net", "nodes"],
            "error: --network: expected lowercase letters, digits, '-', '_' or '.', 1 to 63 characters, found \"Bad Net\"",
        ),
        ([&e[..], &["node", "evict", "Bad Name"]].concat(), "error: NAME: expected a node name, found \"Bad Name\""),
        (
            vec!["pod", "add", "Web"],
            "error: NAME: expected lowercase letters, digits, '-', '_' or '.', 1 to 63 characters, found \"Web\"",
        ),
        ([&["lab", "--id", "r7x", "up", "--nodes", "0"][..], &nb[..]].concat(), "error: --nodes: expected 1 to 200, found 0"),
        (
            [&["lab", "--id", "r7x", "up", "--nodes", "2", "--etcd-members", "7"][..], &nb[..]].concat(),
            "error: --etcd-members: expected 1 to 5, found 7",
        ),
        (
            [&["lab", "--id", "r7x", "up", "--nodes", "2", "--cidr", "10.244.0.0/26", "--subnet-len", "24"][..], &nb[..]].concat(),
            "error: --subnet-len: expected a prefix length from 27 to 30 (longer than the cluster's /26), found 24",
        ),
        (
            [&["lab", "--id", "r7x", "up", "--nodes", "2", "--deferred-agents", "3"][..], &nb[..]].concat(),
            "error: --deferred-agents: expected at most --nodes (2), found 3",
        ),
        (
            [&["lab", "--id", "Bad", "up", "--nodes", "1"][..], &nb[..]].concat(),
            "error: --id: expected 1 to 12 lowercase letters or digits, found \"Bad\"",
        ),
        (
            vec!["lab", "--id", "r7x", "exec", "x1", "--", "true"],
            "error: TARGET: expected a target like n1, n1/p2, etcd, u or ext, found \"x1\"",
        ),
        (vec!["lab", "--id", "r7x", "agent", "start", "p1"], "error: NODE: expected a node like n1, found \"p1\""),
    ];
    let mut failures = Vec::new();
    for (args, want) in &cases {
        let mut cmd = Command::new(&ctl);
        cmd.args(args);
        let (code, stderr) = run_isolated(cmd);
        let first = stderr.lines().next().unwrap_or_default();
        let rest = stderr.split_once('\n').map(|(_, r)| r).unwrap_or_default();
        let rest_ok = rest.is_empty() || rest == "\nFor more information, try '--help'.\n";
        if code != Some(2) || first != *want || !rest_ok {
            failures.push(format!(
                "weftctl {}: exit {code:?}, stderr {stderr:?}, expected exit 2 and {want:?}",
                args.join(" ")
            ));
        }
    }
    assert!(!Path::new("/run/weft-lab/r7x").exists(), "a refused lab up made files");
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len(), failures.join("\n"));
    eprintln!("measured: r7: {} bad weftctl invocations, each exit 2 with its exact message", cases.len());
}

// ---------------------------------------------------------------------------------------------
// 8. Property tests over the untrusted-input parsers and the packet checks (bounded in CI;
// WEFT_FUZZ_CASES=1000000 for the long run recorded in docs/RELIABILITY.md). The cargo-fuzz
// targets in fuzz/ run the same functions under libFuzzer.

mod props {
    use proptest::prelude::*;
    use std::net::Ipv4Addr;
    use weft_agent::quic::packet::{build_udp, check_inbound, ip_addrs, ipv4_addrs, DropReason, Prefix};
    use weft_config::peers::{build_peer_set, RawRecord};
    use weft_config::{agent::valid_name, Backend, Keys, NetworkConfig, SubnetRecord};
    use weft_tests::v4;

    fn cases() -> u32 {
        std::env::var("WEFT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
    }

    fn config() -> ProptestConfig {
        ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() }
    }

    fn prefix() -> impl Strategy<Value = (Prefix, ipnet::IpNet)> {
        (any::<u32>(), 8u8..=30).prop_map(|(a, l)| {
            let n = ipnet::Ipv4Net::new(Ipv4Addr::from(a), l).expect("len").trunc();
            (Prefix::new(n), n.into())
        })
    }

    /// Packets: arbitrary bytes, or a well-formed header with some bytes overwritten.
    fn packet() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..80),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::collection::vec((0usize..80, any::<u8>()), 0..4)
            )
                .prop_map(|(s, d, payload, edits)| {
                    let mut p = build_udp(Ipv4Addr::from(s), Ipv4Addr::from(d), &payload);
                    for (i, b) in edits {
                        if let Some(x) = p.get_mut(i) {
                            *x = b;
                        }
                    }
                    p
                }),
        ]
    }

    fn record_text() -> impl Strategy<Value = Vec<u8>> {
        let field = prop_oneof![
            Just(r#""schema":1"#.to_string()),
            Just(r#""schema":0"#.to_string()),
            "[a-z0-9.-]{0,70}".prop_map(|n| format!(r#""node":"{n}""#)),
            "[ -~]{0,130}".prop_map(|n| format!(r#""node_id":{}"#, serde_json::to_string(&n).unwrap_or_default())),
            any::<u32>().prop_map(|a| format!(r#""public_ip":"{}""#, Ipv4Addr::from(a))),
            Just(r#""public_ip":"not-an-ip""#.to_string()),
            prop_oneof![Just("host-gw"), Just("quic"), Just("vxlan")].prop_map(|b| format!(r#""backend":"{b}""#)),
            any::<u64>().prop_map(|e| format!(r#""epoch":{e}"#)),
            any::<u32>().prop_map(|a| format!(r#""quic_endpoint":"{}:7946""#, Ipv4Addr::from(a))),
            "[ -~]{0,20}".prop_map(|x| format!(r#""extra":{}"#, serde_json::to_string(&x).unwrap_or_default())),
        ];
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(field, 0..9).prop_map(|f| format!("{{{}}}", f.join(",")).into_bytes()),
            "[{}\\[\\]\":,a-z0-9 .-]{0,120}".prop_map(String::into_bytes),
        ]
    }

    fn network() -> impl Strategy<Value = NetworkConfig> {
        (any::<u32>(), 8u8..=24, 0u8..=8).prop_filter_map("valid network", |(a, l, extra)| {
            let cidr = ipnet::Ipv4Net::new(Ipv4Addr::from(a), l).ok()?.trunc();
            NetworkConfig::new("p", &cidr.to_string(), (l + 1 + extra).min(30), Backend::HostGw).ok()
        })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn ipv4_addrs_accepts_only_sane_headers(p in packet()) {
            if let Ok((s, d)) = ipv4_addrs(&p) {
                prop_assert!(p.len() >= 20 && p[0] >> 4 == 4 && usize::from(p[0] & 15) * 4 >= 20);
                prop_assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
                prop_assert_eq!(s, u32::from_be_bytes([p[12], p[13], p[14], p[15]]));
                prop_assert_eq!(d, u32::from_be_bytes([p[16], p[17], p[18], p[19]]));
            }
        }

        #[test]
        fn check_inbound_admits_only_peer_to_local(p in packet(), (peer, pn) in prefix(), (local, ln) in prefix()) {
            match check_inbound(&p, &peer, &local) {
                Ok(()) => {
                    let (s, d) = ip_addrs(&p).expect("admitted packets parse");
                    prop_assert!(pn.contains(&s) && ln.contains(&d));
                }
                Err(DropReason::Malformed) => prop_assert!(ip_addrs(&p).is_err()),
                Err(DropReason::BadSource) => prop_assert!(!pn.contains(&ip_addrs(&p).expect("parses").0)),
                Err(DropReason::BadDestination) => prop_assert!(!ln.contains(&ip_addrs(&p).expect("parses").1)),
                Err(other) => prop_assert!(false, "unexpected verdict {:?}", other),
            }
        }

        #[test]
        fn subnet_records_parse_or_fail_with_one_line(bytes in record_text()) {
            match SubnetRecord::from_json("/k", &bytes) {
                Ok(r) => {
                    prop_assert!(valid_name(&r.node) && !r.node_id.is_empty() && r.schema >= 1);
                    prop_assert!(!r.public_ip.is_unspecified() && !r.public_ip.is_loopback() && !r.public_ip.is_multicast());
                    let again = SubnetRecord::from_json("/k", r.to_json().as_bytes()).expect("own output parses");
                    prop_assert_eq!(again, r);
                }
                Err(e) => prop_assert!(!e.to_string().contains('\n'), "multi-line error: {}", e),
            }
        }

        #[test]
        fn network_configs_parse_only_when_valid(cidr in any::<u32>(), len in 0u8..=40, sub in 0u8..=40, junk in record_text()) {
            let text = format!(r#"{{"schema":1,"cidr":"{}/{len}","subnet_len":{sub},"backend":"quic"}}"#, Ipv4Addr::from(cidr));
            for bytes in [text.as_bytes(), &junk[..]] {
                match NetworkConfig::from_json("/c", bytes) {
                    Ok(c) => {
                        prop_assert_eq!(c.cidr.network(), c.cidr.addr());
                        prop_assert!(c.subnet_len > c.cidr.prefix_len() && c.subnet_len >= 8 && c.subnet_len <= 30);
                    }
                    Err(e) => prop_assert!(!e.to_string().contains('\n')),
                }
            }
        }

        #[test]
        fn peer_sets_hold_only_trustworthy_peers(
            net in network(),
            recs in proptest::collection::vec((any::<u32>(), prop_oneof![Just(None), (0u8..=32).prop_map(Some)], prop_oneof![Just("n1"), Just("n2"), Just("n3"), Just("me")], record_text(), 0i64..20), 0..12),
            own_pick in any::<u32>(),
        ) {
            let keys = Keys::new("default");
            let raw: Vec<RawRecord> = recs
                .iter()
                .enumerate()
                .map(|(i, (a, len, node, junk, rev))| {
                    let len = len.unwrap_or(net.subnet_len);
                    let seg = format!("{}-{len}", Ipv4Addr::from(*a));
                    let value = if i % 2 == 0 {
                        format!(r#"{{"schema":1,"node":"{node}","node_id":"id-{node}","public_ip":"192.0.2.{}","backend":"host-gw"}}"#, i + 1).into_bytes()
                    } else {
                        junk.clone()
                    };
                    RawRecord { key: format!("{}{seg}", keys.subnets_prefix()), value, create_revision: *rev, mod_revision: *rev }
                })
                .collect();
            let own = weft_config::subnet::first_free(net.cidr, net.subnet_len, &[]).map(|s| {
                let n = 1u32 << (net.subnet_len - net.cidr.prefix_len()).min(31);
                let k = own_pick % n;
                let base = u32::from(v4(s.network()));
                ipnet::IpNet::from(ipnet::Ipv4Net::new(Ipv4Addr::from(base + (k << (32 - net.subnet_len))), net.subnet_len).expect("len"))
            });
            let set = build_peer_set(&net, &keys, &raw, "me", own);
            let mut names = std::collections::BTreeSet::new();
            for (subnet, p) in &set.peers {
                prop_assert_eq!(*subnet, p.subnet);
                prop_assert!(p.subnet.prefix_len() == net.subnet_len && net.cidr.contains(&p.subnet));
                prop_assert!(Some(p.subnet) != own, "own subnet as a peer");
                prop_assert!(p.node != "me", "own name as a peer");
                prop_assert!(names.insert(p.node.clone()), "node {} twice", p.node);
            }
            prop_assert!(set.peers.len() + set.skipped.len() <= raw.len());
        }

        #[test]
        fn agent_configs_never_panic_and_errors_are_one_line(text in "[a-z_\\[\\]=\"\n .0-9/:]{0,200}") {
            if let Err(e) = weft_config::AgentConfig::parse("agent.toml", &text) {
                prop_assert!(!e.to_string().contains('\n'), "multi-line error: {}", e);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Underlay changes.

/// Every interface of the underlay namespace, the node namespaces and etcd's get `mtu`: the
/// whole underlay segment changes, as it would on a real network.
fn set_underlay_mtu(lab: &Lab, nodes: usize, mtu: u32) {
    let m = mtu.to_string();
    let u = lab.names().underlay_ns();
    let links = Command::new("ip").args(["-n", &u, "-o", "link", "show", "type", "veth"]).output().expect("ip link");
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        let name = l.split(':').nth(1).map(|s| s.trim().split('@').next().unwrap_or_default().to_string());
        if let Some(name) = name.filter(|n| n.starts_with('v')) {
            let st = Command::new("ip").args(["-n", &u, "link", "set", &name, "mtu", &m]).status().expect("ip");
            assert!(st.success(), "mtu of {name} in {u}");
        }
    }
    for i in 1..=nodes {
        run_ok(lab, &format!("n{i}"), &["ip", "link", "set", "eth0", "mtu", &m]);
    }
    run_ok(lab, "etcd", &["ip", "link", "set", "eth0", "mtu", &m]);
}

/// MTU of `dev` in `target`'s namespace (from netlink: /sys shows the root namespace's devices).
fn mtu_of(lab: &Lab, target: &str, dev: &str) -> u32 {
    let out = run_ok(lab, target, &["ip", "-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j link");
    v[0]["mtu"].as_u64().and_then(|m| u32::try_from(m).ok()).expect("mtu")
}

/// A DF ping carrying `payload` bytes.
fn df_ping(lab: &Lab, from: &str, to: Ipv4Addr, payload: u32) -> bool {
    let (s, to) = (payload.to_string(), to.to_string());
    lab.exec(from, &["ping", "-n", "-q", "-c1", "-W1", "-M", "do", "-s", &s, &to]).is_ok_and(|o| o.status.success())
}

#[test]
fn r9_underlay_down_up_and_mtu_host_gw() {
    let lab = lab("r9", 2, 1, |_| {});
    let sub2 = ready_status(&lab, 2).subnet.expect("subnet");
    let ip2 = pod_ip(&lab, 2, "p1");
    let routes = weft_routes(&lab, 1);

    // Down: the kernel drops every route through eth0, weft's too; the agent keeps running
    // and reports the failed re-adds.
    run_ok(&lab, "n1", &["ip", "link", "set", "eth0", "down"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(weft_routes(&lab, 1).is_empty(), "kernel keeps routes of a down link?");
    let down = status_now(&lab, 1).expect("agent answers while its underlay is down");
    assert!(down.peers.iter().any(|p| p.subnet == sub2 && !p.route_ok), "{down:?}");
    let pid = lab.agent_pid(1).expect("agent survives its underlay going down");
    // Up: the lab's default route is the host's business (DHCP would restore it); weft's
    // routes come back within one reconcile period.
    run_ok(&lab, "n1", &["ip", "link", "set", "eth0", "up"]);
    run_ok(&lab, "n1", &["ip", "route", "replace", "default", "via", "172.30.0.1"]);
    let back = wait_for(Duration::from_secs(5), || weft_routes(&lab, 1) == routes).expect("routes not restored");
    assert!(wait_for(Duration::from_secs(3), || ping(&lab, "n1/p1", ip2)).is_some(), "no traffic after up");
    assert_eq!(lab.agent_pid(1), Some(pid));
    eprintln!(
        "measured: r9: underlay down 3 s then up: weft routes back {} after up; while down: route_ok=false, last error {:?}",
        secs(back),
        down.last_error
    );
    assert!(back <= Duration::from_millis(2600), "routes back only after {}", secs(back));

    // MTU 1500 -> 1400: the bridge and pod MTU follow within one reconcile period.
    assert_eq!(mtu_of(&lab, "n1/p1", "eth0"), 1500);
    set_underlay_mtu(&lab, 2, 1400);
    let followed = wait_for(Duration::from_secs(5), || {
        (1..=2).all(|i| {
            mtu_of(&lab, &format!("n{i}/p1"), "eth0") == 1400 && mtu_of(&lab, &format!("n{i}"), "weft0") == 1400
        })
    });
    let followed = followed.unwrap_or_else(|| {
        panic!("MTU not followed: pod {} bridge {}", mtu_of(&lab, "n1/p1", "eth0"), mtu_of(&lab, "n1", "weft0"))
    });
    let env = std::fs::read_to_string(lab.node_paths(1).subnet_env).expect("subnet.env");
    assert!(env.contains("FLANNEL_MTU=1400\n"), "{env}");
    assert!(df_ping(&lab, "n1/p1", ip2, 1400 - 28), "a full-size packet must pass");
    assert!(!df_ping(&lab, "n1/p1", ip2, 1400 - 27), "an oversized DF packet must be refused");
    eprintln!(
        "measured: r9: underlay MTU 1500 -> 1400: bridge, pods and FLANNEL_MTU at 1400 after {}; DF ping of 1400 bytes passes, 1401 refused",
        secs(followed)
    );
}

#[test]
fn r9_underlay_down_up_and_mtu_quic() {
    let lab = lab("r9q", 2, 1, |s| {
        s.backend = Backend::Quic;
        s.topology = Topology::Routed;
    });
    let ip2 = pod_ip(&lab, 2, "p1");
    let tun_mtu = |lab: &Lab, i: usize| mtu_of(lab, &format!("n{i}"), "weft-tun0");
    assert_eq!(tun_mtu(&lab, 1), 1434);

    // Down for 3 s (shorter than the 5 s idle timeout) and for 8 s (longer): the tunnel is back
    // after up either way.
    for down in [3, 8] {
        run_ok(&lab, "n1", &["ip", "link", "set", "eth0", "down"]);
        std::thread::sleep(Duration::from_secs(down));
        assert!(!ping_within(&lab, "n1/p1", ip2, "0.3"), "traffic with the underlay down?");
        run_ok(&lab, "n1", &["ip", "link", "set", "eth0", "up"]);
        run_ok(&lab, "n1", &["ip", "route", "replace", "default", "via", "172.30.0.1"]);
        let back =
            wait_for(Duration::from_secs(10), || ping_within(&lab, "n1/p1", ip2, "0.3")).expect("tunnel not back");
        eprintln!(
            "measured: r9q: underlay down {down} s then up: pod traffic through the tunnel back {} after up",
            secs(back)
        );
        assert!(back <= Duration::from_secs(3), "tunnel back only after {}", secs(back));
    }

    // MTU 1500 -> 1400: the running agents keep their tunnel MTU (a known limit): packets that
    // still fit pass, full-size ones are lost. A restart of every agent adopts the new MTU.
    set_underlay_mtu(&lab, 2, 1400);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(tun_mtu(&lab, 1), 1434, "the tunnel MTU does not follow a running agent");
    assert!(df_ping(&lab, "n1/p1", ip2, 1000), "small packets still pass");
    assert!(!df_ping(&lab, "n1/p1", ip2, 1434 - 28), "full-size packets cannot fit the smaller underlay");
    for i in 1..=2 {
        lab.stop_agent(i, Signal::SIGTERM).expect("stop");
        lab.start_agent(i).expect("start");
    }
    for i in 1..=2 {
        ready_status(&lab, i);
    }
    let want = 1400 - 66;
    assert_eq!((tun_mtu(&lab, 1), tun_mtu(&lab, 2)), (want, want));
    assert_eq!(mtu_of(&lab, "n1/p1", "eth0"), want);
    let env = std::fs::read_to_string(lab.node_paths(1).subnet_env).expect("subnet.env");
    assert!(env.contains(&format!("FLANNEL_MTU={want}\n")), "{env}");
    let t = Instant::now();
    let ok = wait_for(Duration::from_secs(10), || df_ping(&lab, "n1/p1", ip2, want - 28));
    assert!(ok.is_some(), "a full-size packet at the new MTU must pass after the restart");
    eprintln!("measured: r9q: underlay MTU 1400: tun MTU stays 1434 until restart; after restarting both agents tun/pod MTU {want}, full-size DF ping passes ({})", secs(t.elapsed()));
}
