//! Pods' resolvers on the lab: the network's settings (`lab up --dns-*`, written by network
//! init) in every pod's `/etc/netns/<pod>/resolv.conf`, a pod's own settings over them, a change
//! of the network followed without a restart, and a lookup against a real resolver (dnsmasq in
//! the external namespace) from a pod. `lab down` removes the files.

use std::time::Duration;
use weft_config::dns::DnsSettings;
use weft_tests::dns::{ip_netns_exec, Dnsmasq, RESOLVER};
use weft_tests::*;

#[test]
fn pods_resolve_through_the_networks_resolver_and_their_own_settings() {
    let lab = lab("dns1", 2, 1, |s| {
        s.ip_masq = true; // the external namespace has no route to pod subnets
        s.dns = Some(DnsSettings {
            servers: vec![RESOLVER.parse().expect("literal")],
            search: vec!["weft.test".into()],
            options: vec!["ndots:1".into()],
        });
    });
    let _resolver = Dnsmasq::start(&lab, &[("web.weft.test", "203.0.113.80")]).expect("dnsmasq");
    let want = format!("# written by weft-agent\nnameserver {RESOLVER}\nsearch weft.test\noptions ndots:1\n");
    for i in 1..=2 {
        let (ok, conf) = ip_netns_exec(&lab.pod_ns(i, 1), &["cat", "/etc/resolv.conf"]);
        assert!(ok, "n{i}/p1 has no resolv.conf");
        assert_eq!(conf, want, "n{i}/p1's resolv.conf");
    }
    // `lab exec` into a pod sees the same file, as `ip netns exec` does; the node does not.
    assert_eq!(run_ok(&lab, "n1/p1", &["cat", "/etc/resolv.conf"]), want, "lab exec n1/p1");
    assert_ne!(run_ok(&lab, "n1", &["cat", "/etc/resolv.conf"]), want, "the node keeps the host's file");
    // A short name through the search list, answered by dnsmasq across the node's masquerade.
    let (ok, hosts) = ip_netns_exec(&lab.pod_ns(2, 1), &["getent", "hosts", "web"]);
    assert!(ok && hosts.starts_with("203.0.113.80 "), "lookup from n2/p1: {hosts:?}");

    // A pod with its own option keeps the network's server and search list.
    let ns = format!("{}-own", lab.node_ns(1));
    run_ok(&lab, "n1", &["weftctl", "pod", "add", "own", "--netns", &ns, "--dns-option", "ndots:3"]);
    let (_, conf) = ip_netns_exec(&ns, &["cat", "/etc/resolv.conf"]);
    assert_eq!(conf, format!("# written by weft-agent\nnameserver {RESOLVER}\nsearch weft.test\noptions ndots:3\n"));
    let (ok, hosts) = ip_netns_exec(&ns, &["getent", "hosts", "web.weft.test"]);
    assert!(ok && hosts.starts_with("203.0.113.80 "), "lookup from the API pod: {hosts:?}");
    run_ok(&lab, "n1", &["weftctl", "pod", "del", "own"]);
    assert!(!std::path::Path::new("/etc/netns").join(&ns).exists(), "the deleted pod's directory was left behind");

    // The network's search list changes: the pods follow within a reconcile, no restart, and a
    // process that started before the change reads the new file (it is rewritten in place, and
    // `ip netns exec` bound the file itself).
    let pids = (lab.agent_pid(1), lab.agent_pid(2));
    let early = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.pod_ns(1, 1), "sh", "-c", "sleep 6; cat /etc/resolv.conf"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("a process in n1/p1");
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
            "host-gw",
            "--dns-server",
            RESOLVER,
            "--dns-search",
            "other.test",
            "--force",
        ],
    );
    let followed = wait_for(Duration::from_secs(15), || {
        (1..=2).all(|i| {
            ip_netns_exec(&lab.pod_ns(i, 1), &["cat", "/etc/resolv.conf"]).1
                == format!("# written by weft-agent\nnameserver {RESOLVER}\nsearch other.test\n")
        })
    });
    let took = followed.expect("pods did not get the new search list within 15 s");
    eprintln!("resolv.conf of both pods followed the network config in {took:?}");
    let seen = early.wait_with_output().expect("the early process");
    assert!(
        String::from_utf8_lossy(&seen.stdout).contains("search other.test"),
        "a process started before the change still reads the old file: {}",
        String::from_utf8_lossy(&seen.stdout)
    );
    assert_eq!((lab.agent_pid(1), lab.agent_pid(2)), pids, "no agent restarted");
    let st = lab.wait_ready(2, Duration::from_secs(5)).expect("ready");
    let listed = st.pods.iter().find(|p| p.name == "p1").and_then(|p| p.dns.clone()).expect("p1's dns in the status");
    assert_eq!(listed.search, vec!["other.test".to_string()]);

    // The agent's --leave removes its pods' files; lab down removes what is left.
    let etc = std::path::Path::new("/etc/netns");
    lab.leave(1).expect("n1 leaves");
    assert!(!etc.join(lab.pod_ns(1, 1)).exists(), "n1's --leave left its pod's resolv.conf");
    assert!(etc.join(lab.pod_ns(2, 1)).join("resolv.conf").exists(), "n2's pod keeps its file");
    let pod_dirs = [lab.pod_ns(1, 1), lab.pod_ns(2, 1)];
    let report = lab.down();
    assert!(report.is_ok(), "lab down: {:?}", report.errors);
    for d in pod_dirs {
        assert!(!std::path::Path::new("/etc/netns").join(&d).exists(), "/etc/netns/{d} left after lab down");
    }
}
