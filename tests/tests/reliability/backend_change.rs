//! Section 10: changing the backend of a running network (`weftctl network init --backend B
//! --force`): the agents follow within a reconcile, without a restart, pods keep their
//! addresses, traffic resumes, and nothing of the old backend stays. The loss of each change
//! is measured and printed, not required to be 0: nodes switch one after the other, and while
//! one has switched and the other has not, their packets travel two different ways.

use super::common::*;
use std::time::{Duration, Instant};
use weft_config::Backend;
use weft_tests::*;

/// What of a backend would be left on a node: its devices, quic's blackhole routes and its
/// fail-closed forward rules (IPv4's: the lab is IPv4).
fn leftovers(lab: &weft_lab::Lab, i: usize) -> Vec<String> {
    let mut found = Vec::new();
    for dev in ["weft-tun0", "weft-vxlan", "weft-vxlan6"] {
        if lab.exec(&format!("n{i}"), &["ip", "link", "show", dev]).is_ok_and(|o| o.status.success()) {
            found.push(dev.to_string());
        }
    }
    found.extend(weft_owned(route_table(lab, i)).into_iter().filter(|r| r.starts_with("blackhole")));
    let rules = run_ok(lab, &format!("n{i}"), &["iptables", "-S"]);
    if rules.lines().any(|l| l.contains("weft") && (l.contains("-j DROP") || l.contains("weft-tun0"))) {
        found.push("fail-closed rules".into());
    }
    found
}

/// The devices and blackholes backend `b` leaves on a node while it runs.
fn owned_by(b: Backend) -> Vec<String> {
    match b {
        Backend::Quic => {
            vec!["weft-tun0".into(), "blackhole 10.244.0.0/16 proto 213".into(), "fail-closed rules".into()]
        }
        Backend::Vxlan => vec!["weft-vxlan".into()],
        _ => vec![],
    }
}

#[test]
fn r10_the_backend_of_a_running_network_changes_without_a_restart() {
    // quic first, so every node has a [quic] section to switch back to.
    let lab = lab("r10", 2, 1, |s| s.backend = Backend::Quic);
    let before: Vec<_> = (1..=2).map(|i| ready_status(&lab, i)).collect();
    let pids: Vec<_> = (1..=2).map(|i| lab.agent_pid(i).expect("pid")).collect();
    for (k, to) in [Backend::HostGw, Backend::Vxlan, Backend::Quic].into_iter().enumerate() {
        let streams = streams_both_ways(&lab, (1, 1), (2, 1), 7400 + 2 * k as u16);
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        run_ok(
            &lab,
            "n1",
            &[
                "weftctl",
                "network",
                "init",
                "--cidr",
                "10.244.0.0/16",
                "--subnet-len",
                "24",
                "--backend",
                &to.to_string(),
                "--force",
            ],
        );
        let switched = wait_for(Duration::from_secs(15), || {
            (1..=2).all(|i| {
                status_now(&lab, i).is_some_and(|s| {
                    s.backend.as_deref() == Some(to.to_string().as_str()) && s.peers.iter().all(|p| p.route_ok)
                }) && leftovers(&lab, i) == owned_by(to)
            })
        });
        let left: Vec<_> = (1..=2).map(|i| leftovers(&lab, i)).collect();
        assert!(switched.is_some(), "not switched to {to} within 15 s: devices and blackholes {left:?}");
        let failures = cross_node_ping_failures_all(&lab, 2, &["p1"]);
        assert!(failures.is_empty(), "after switching to {to}: {failures:?}");
        std::thread::sleep(Duration::from_millis(500));
        let results: Vec<StreamResult> = streams.into_iter().map(Stream::stop).collect();
        for r in &results {
            eprintln!("measured: r10: to {to} (switched {} after the change): {r}", secs(t.elapsed()));
            assert!(r.received() > 0, "the stream never ran: {r}");
        }
        assert!(results.iter().all(|r| r.resumed()), "traffic did not resume after switching to {to}: {results:?}");
    }
    for i in 1..=2 {
        let st = ready_status(&lab, i);
        assert_eq!(lab.agent_pid(i).expect("pid"), pids[i - 1], "n{i}'s agent was not restarted");
        assert_eq!(
            (&st.subnet, pod_ips(&st)),
            (&before[i - 1].subnet, pod_ips(&before[i - 1])),
            "n{i} kept its subnet and pods"
        );
    }
}
