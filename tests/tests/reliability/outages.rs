//! Sections 1-3: agent restarts, an etcd outage, and a three-member etcd cluster losing a
//! member (then its leader).

use super::common::*;
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use weft_config::api::Status;
use weft_config::Backend;
use weft_lab::{etcd_server, IpFamily, Lab, Topology};
use weft_tests::*;

// ---------------------------------------------------------------------------------------------
// 1. Agent restarts.

/// SIGTERM-then-start and SIGKILL-then-start of either node's agent lose no packet of a 10 ms
/// stream in each direction (per address family of the lab); subnets and pod addresses stay,
/// the pid changes. (quic: `quic.rs::tunnels_come_back_within_three_seconds_of_a_restart`.)
fn agent_restart(id: &str, backend: Backend, topology: Topology, family: IpFamily) {
    let lab = lab(id, 2, 1, |s| {
        s.backend = backend;
        s.topology = topology;
        s.ip_family = family;
    });
    let before: Vec<Status> = (1..=2).map(|i| ready_status(&lab, i)).collect();
    let streams = streams_both_ways(&lab, (1, 1), (2, 1), 7201);
    assert_eq!(streams.len(), if family == IpFamily::Dual { 4 } else { 2 }, "a stream each way per family");
    std::thread::sleep(Duration::from_millis(500));
    for (i, sig) in [(1, Signal::SIGTERM), (1, Signal::SIGKILL), (2, Signal::SIGTERM), (2, Signal::SIGKILL)] {
        let pid = lab.agent_pid(i).expect("pid");
        let t = Instant::now();
        lab.stop_agent(i, sig).expect("stop");
        std::thread::sleep(Duration::from_millis(300));
        let new_pid = lab.start_agent(i).expect("start");
        let st = lab.wait_ready(i, Duration::from_secs(20)).expect("ready again");
        eprintln!("measured: {id}: n{i} {sig}: agent ready again {} after the signal", secs(t.elapsed()));
        assert_ne!(pid, new_pid, "the agent must really have restarted");
        assert_eq!(st.pid, new_pid, "the status comes from the new agent");
        let b = &before[i - 1];
        assert_eq!((&st.subnet, &st.subnet6), (&b.subnet, &b.subnet6), "subnets changed across {sig}");
        assert_eq!(pod_ips(&st), pod_ips(b), "pod addresses changed across {sig}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_lossless(&lab, &streams.into_iter().map(Stream::stop).collect::<Vec<_>>());
}

#[test]
fn r1_agent_restart_host_gw_loses_nothing() {
    agent_restart("r1", Backend::HostGw, Topology::Flat, IpFamily::V4);
}

/// Dual-stack: no packet of either family is lost across the restarts.
#[test]
fn r1_agent_restart_host_gw_dual_stack_loses_nothing() {
    agent_restart("r1d", Backend::HostGw, Topology::Flat, IpFamily::Dual);
}

/// vxlan on the routed lab, dual-stack: the restarted agent keeps the kernel's VXLAN devices
/// and their FDB, neighbour and route entries, so no packet of either family is lost.
#[test]
fn r1_agent_restart_vxlan_dual_stack_loses_nothing() {
    agent_restart("r1vd", Backend::Vxlan, Topology::Routed, IpFamily::Dual);
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

/// Stops etcd for 10 s (30 s with WEFT_FULL=1) under a 10 ms stream each way between n1 and n2
/// (one per address family of the lab): no loss; both agents report `etcd_connected: false` and
/// `ready: false`; n3, started during the outage, waits without a subnet, joins once etcd is back
/// and is routable from n1 and n2 (over every family) within 2 s of being ready.
fn etcd_outage(id: &str, backend: Backend, topology: Topology, family: IpFamily) {
    // The default reconcile period (10 s): reconnecting must not wait for it.
    let lab = lab(id, 3, 1, |s| {
        s.backend = backend;
        s.topology = topology;
        s.deferred_agents = 1;
        s.reconcile_secs = 10;
        s.ip_family = family;
    });
    let streams = streams_both_ways(&lab, (1, 1), (2, 1), 7211);
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
    for ip2 in pod_ips_now(&lab, 2) {
        assert!(ping_addr(&lab, "n1/p1", ip2, "1"), "data plane broken during the outage (to {ip2})");
    }

    let back = Instant::now();
    lab.start_etcd().expect("start etcd");
    let healthy = back.elapsed();
    let st3 = lab.wait_ready(3, Duration::from_secs(30)).expect("n3 joins once etcd is back");
    let joined = back.elapsed();
    let p3 = st3.pods.first().expect("n3 pod");
    let ip3: Vec<IpAddr> = p3.ip.into_iter().chain(p3.ip6).collect();
    let routable = wait_for(Duration::from_secs(15), || {
        (1..=2).all(|i| ip3.iter().all(|ip| ping_addr(&lab, &format!("n{i}/p1"), *ip, "0.3")))
    });
    let routable = routable.unwrap_or_else(|| panic!("n3's pod {ip3:?} not reachable from n1 and n2 within 15 s"));
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
    let results: Vec<StreamResult> = streams.into_iter().map(Stream::stop).collect();
    match backend {
        Backend::Quic => assert_gapless(&lab, &results),
        _ => assert_lossless(&lab, &results),
    }
}

/// Node `i`'s first pod's addresses (IPv4 first), as its agent reports them now.
fn pod_ips_now(lab: &Lab, i: usize) -> Vec<IpAddr> {
    let st = status_now(lab, i).unwrap_or_else(|| panic!("n{i} does not answer"));
    let p = st.pods.first().unwrap_or_else(|| panic!("n{i} has no pod"));
    let ips: Vec<IpAddr> = p.ip.into_iter().chain(p.ip6).collect();
    assert!(!ips.is_empty(), "n{i}'s pod has no address: {p:?}");
    ips
}

#[test]
fn r2_etcd_outage_host_gw() {
    etcd_outage("r2", Backend::HostGw, Topology::Flat, IpFamily::V4);
}

#[test]
fn r2_etcd_outage_quic() {
    etcd_outage("r2q", Backend::Quic, Topology::Routed, IpFamily::V4);
}

/// Dual-stack over quic (both families on one tunnel per pair): no loss of either family, and
/// the node joining after the outage is reachable over both.
#[test]
fn r2_etcd_outage_quic_dual_stack() {
    etcd_outage("r2qd", Backend::Quic, Topology::Routed, IpFamily::Dual);
}

/// vxlan on the routed lab, dual-stack: the VXLAN entries keep carrying both families while etcd
/// is away, and n3 gets its entries on n1 and n2 once it joins.
#[test]
fn r2_etcd_outage_vxlan_dual_stack() {
    etcd_outage("r2vd", Backend::Vxlan, Topology::Routed, IpFamily::Dual);
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
    assert_lossless(&lab, &[a.stop()]);
}
