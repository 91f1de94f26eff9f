//! Section 4: agents racing for subnets, and a cluster CIDR with no subnet left.

use super::common::*;
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use weft_config::api::Status;
use weft_tests::*;

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
