//! Sections 5-6: stale and damaged state on a node (repaired; foreign state left alone), and
//! hostile records in etcd (skipped and counted once).

use super::common::*;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use weft_lab::Lab;
use weft_tests::*;

// ---------------------------------------------------------------------------------------------
// 5. Stale and damaged state.

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
