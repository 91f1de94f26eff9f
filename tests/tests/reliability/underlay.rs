//! Section 9: underlay changes (link down and up, a smaller MTU), host-gw and quic.

use super::common::*;
use nix::sys::signal::Signal;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};
use weft_config::Backend;
use weft_lab::{Lab, Topology};
use weft_tests::*;

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
