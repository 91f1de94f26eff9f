//! The quic backend on a routed lab (two L2 segments joined by a router that knows nothing of
//! pod subnets, so only the tunnel can carry pod traffic): real etcd over TLS, real agents,
//! real kernel. Each test builds its own lab; its Drop removes everything.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use weft_controller::pki;
use weft_lab::{in_netns, IpFamily, Lab, Topology};
use weft_tests::quic_client::{with_connection, ClientFiles};
use weft_tests::*;

/// A routed quic lab whose tunnels are all up. Agents are ready once their routes are in place;
/// a tunnel follows once the dialer has seen the peer's record and finished the handshake.
/// Tests that connect as a node rely on this too: a dial of the agent's own still pending would
/// replace the test's connection.
fn quic_lab(id: &str, nodes: usize, pods: usize) -> Lab {
    quic_lab_of(id, nodes, pods, IpFamily::V4)
}

/// [`quic_lab`] with the pod address families `family`.
fn quic_lab_of(id: &str, nodes: usize, pods: usize, family: IpFamily) -> Lab {
    let lab = lab(id, nodes, pods, |s| {
        s.backend = weft_config::Backend::Quic;
        s.topology = Topology::Routed;
        s.ip_family = family;
    });
    for i in 1..=nodes {
        wait_tunnels_up(&lab, i, nodes - 1);
    }
    lab
}

fn status(lab: &Lab, i: usize) -> weft_config::api::Status {
    lab.wait_ready(i, Duration::from_secs(20)).unwrap_or_else(|e| panic!("n{i} not ready: {e:#}"))
}

fn drops(lab: &Lab, i: usize, reason: &str) -> u64 {
    status(lab, i).quic.expect("quic status").drops.get(reason).copied().unwrap_or(0)
}

/// Waits until node `i` has tunnels to all of its `peers` peers.
fn wait_tunnels_up(lab: &Lab, i: usize, peers: usize) {
    let up = wait_for(Duration::from_secs(10), || {
        let st = status(lab, i).quic.expect("quic");
        st.peers.len() == peers && st.peers.iter().all(|p| p.connected)
    });
    assert!(up.is_some(), "n{i}'s tunnels did not come up: {:?}", status(lab, i).quic);
}

fn quic_endpoint(lab: &Lab, i: usize) -> SocketAddr {
    SocketAddr::from((lab.node_ip(i), weft_config::agent::DEFAULT_QUIC_PORT))
}

#[test]
fn routed_cluster_carries_pod_traffic_through_the_tunnel() {
    let lab = quic_lab("q1", 3, 2);
    let pods = all_pods(&lab, 3, &["p1", "p2"]);
    let failures = cross_node_ping_failures(&lab, &pods);
    assert!(failures.is_empty(), "pings failed: {failures:?}");
    for i in 1..=3 {
        for (j, _, ip) in &pods {
            if *j != i {
                assert!(ping(&lab, &format!("n{i}"), *ip), "node n{i} cannot reach the pod {ip} on n{j}");
            }
        }
    }
    // The segments really are routed: n1 and n2 sit on different subnets of the underlay.
    assert_ne!(lab.node_ip(1).octets()[2], lab.node_ip(2).octets()[2], "nodes 1 and 2 should be on different segments");

    // No NAT: the server sees the client's pod IP.
    let (c, s) = (pod_ip(&lab, 1, "p1"), pod_ip(&lab, 2, "p2"));
    let seen = tcp_source_seen(&lab.pod_ns(2, 2), s, 7101, &lab.pod_ns(1, 1)).expect("tcp");
    assert_eq!(seen.ip(), IpAddr::V4(c));

    // MTU: the pod's interface, the tun and FLANNEL_MTU agree, and a DF ping filling it passes.
    let st = status(&lab, 1);
    let q = st.quic.clone().expect("quic status");
    // quic.threads unset: the core count (at most 8), and every pair uses all of them.
    let auto = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let pairs: Vec<usize> = q.peers.iter().map(|p| p.threads).collect();
    eprintln!("n1: {} data path threads, pairs {pairs:?}, endpoint {}", q.threads, q.endpoint);
    assert_eq!((q.threads, pairs), (auto, vec![auto, auto]), "threads of n1 and of its pairs: {:?}", q.peers);
    let env = std::fs::read_to_string(lab.node_config(1).expect("cfg").paths.subnet_env).expect("subnet.env");
    assert!(env.contains(&format!("FLANNEL_MTU={}\n", q.mtu)), "subnet.env {env:?} vs tun MTU {}", q.mtu);
    let link = run_ok(&lab, "n1/p1", &["ip", "-j", "link", "show", "eth0"]);
    let v: serde_json::Value = serde_json::from_str(&link).expect("json");
    let mtu = v[0]["mtu"].as_u64().expect("mtu");
    assert_eq!(u64::from(q.mtu), mtu, "pod MTU {mtu} differs from the tun MTU {}", q.mtu);
    let fill = (mtu - 28).to_string();
    let far = pod_ip(&lab, 3, "p1").to_string();
    run_ok(&lab, "n1/p1", &["ping", "-n", "-q", "-c1", "-W2", "-M", "do", "-s", &fill, &far]);
}

#[test]
fn fifty_megabytes_arrive_intact() {
    let lab = quic_lab("q2", 2, 1);
    let server_ip = pod_ip(&lab, 2, "p1");
    let (tx, rx) = std::sync::mpsc::channel();
    let server_ns = lab.pod_ns(2, 1);
    let server = std::thread::spawn(move || {
        in_netns(&server_ns, || -> anyhow::Result<(usize, Vec<u8>)> {
            let l = TcpListener::bind((server_ip, 7102))?;
            let _ = tx.send(());
            let (mut s, _) = l.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut n = 0;
            loop {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                n += k;
            }
            Ok((n, h.finalize().to_vec()))
        })
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
    let total = 50 << 20;
    let sent = in_netns(&lab.pod_ns(1, 1), || -> anyhow::Result<Vec<u8>> {
        let mut c = TcpStream::connect((server_ip, 7102))?;
        let mut h = Sha256::new();
        let mut chunk = vec![0u8; 1 << 16];
        let mut x: u32 = 0x1234_5678;
        for _ in 0..(total / chunk.len()) {
            fill_xorshift(&mut chunk, &mut x);
            h.update(&chunk);
            c.write_all(&chunk)?;
        }
        Ok(h.finalize().to_vec())
    })
    .expect("netns")
    .expect("send");
    let (n, got) = server.join().expect("server thread").expect("netns").expect("receive");
    assert_eq!(n, total, "bytes received");
    assert_eq!(got, sent, "SHA-256 of what arrived differs from what was sent");
}

/// Time until n1/p1 reaches n2/p1 again after restarting node `i`'s agent.
fn restart_and_time(lab: &Lab, i: usize, target: Ipv4Addr) -> Duration {
    let pid = lab.agent_pid(i).expect("pid");
    lab.stop_agent(i, nix::sys::signal::Signal::SIGTERM).expect("stop");
    let new_pid = lab.start_agent(i).expect("start");
    assert_ne!(pid, new_pid, "the agent must really have restarted");
    let start = Instant::now();
    let back = wait_for(Duration::from_secs(10), || ping_within(lab, "n1/p1", target, "0.2"));
    assert!(back.is_some(), "tunnel not back 10 s after restarting n{i}");
    start.elapsed()
}

#[test]
fn tunnels_come_back_within_three_seconds_of_a_restart() {
    let lab = quic_lab("q3", 2, 1);
    let target = pod_ip(&lab, 2, "p1");
    assert!(ping(&lab, "n1/p1", target));
    // n1 < n2: n1 dials, n2 accepts. Restart each side in turn.
    let st = status(&lab, 1).quic.expect("quic");
    assert!(st.peers.iter().any(|p| p.node == "n2" && p.dialer), "n1 should be the dialer: {:?}", st.peers);
    let dialer = restart_and_time(&lab, 1, target);
    assert!(dialer <= Duration::from_secs(3), "dialer restart: tunnel back after {dialer:?}");
    let acceptor = restart_and_time(&lab, 2, target);
    assert!(acceptor <= Duration::from_secs(3), "acceptor restart: tunnel back after {acceptor:?}");
    eprintln!("tunnel back after restart: dialer {dialer:?}, acceptor {acceptor:?}");
}

#[test]
fn only_ca_certificates_of_the_right_node_get_in() {
    let lab = quic_lab("q4", 3, 1);
    let pki_dir = lab.pki_dir();
    let ca = pki::ca_files(&pki_dir);
    let n2 = pki::cert_files(&pki_dir, "n2");
    let fake_dir = lab.dir().join("fake");
    let fake = pki::self_signed(&fake_dir, &pki::IssueRequest::node("n2")).expect("self-signed");
    let server = quic_endpoint(&lab, 1);
    let refused = |lab: &Lab| status(lab, 1).quic.expect("quic").refused;

    // Positive control: n2's own CA-issued certificate, from n2's address, is accepted.
    let ok = with_connection(
        &lab.node_ns(2),
        &ClientFiles { ca: &ca.cert, cert: &n2.cert, key: &n2.key, name: "n2" },
        server,
        "n1",
        |c| async move {
            // A refused connection is closed right after the handshake with a TLS alert. An
            // accepted one stays open, or is closed by the agent with "replaced by a newer
            // connection" when the agent's own tunnel to the real n2 (n1 dials n2) comes up in
            // the meantime: that close proves the connection had been installed as n2's.
            tokio::time::sleep(Duration::from_millis(500)).await;
            match c.close_reason() {
                None => Ok(()),
                Some(r) if r.to_string().contains("replaced by a newer connection") => Ok(()),
                Some(r) => Err(anyhow::anyhow!("closed: {r}")),
            }
        },
    );
    assert!(ok.is_ok(), "a CA-issued certificate must be accepted: {ok:?}");

    // A self-signed certificate naming n2 is rejected by the agent's certificate check. (In TLS
    // 1.3 the client finishes first, so the rejection reaches it as the connection's close.)
    let before = refused(&lab);
    let bad = with_connection(
        &lab.node_ns(2),
        &ClientFiles { ca: &ca.cert, cert: &fake.files.cert, key: &fake.files.key, name: "n2" },
        server,
        "n1",
        |c| async move {
            match tokio::time::timeout(Duration::from_secs(3), c.closed()).await {
                Ok(r) => Ok(r.to_string()),
                Err(_) => Err(anyhow::anyhow!("a self-signed certificate was accepted (connection stayed open)")),
            }
        },
    );
    let err = match bad {
        Ok(reason) => reason,
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("error 48") && err.contains("UnknownIssuer"),
        "expected an unknown-CA certificate error, got: {err}"
    );
    eprintln!("self-signed certificate refused: {err}");
    assert!(wait_for(Duration::from_secs(2), || refused(&lab) > before).is_some(), "refusal not counted");

    // n2's valid certificate used from n3's address: the certificate names another node.
    let before = refused(&lab);
    let wrong = with_connection(
        &lab.node_ns(3),
        &ClientFiles { ca: &ca.cert, cert: &n2.cert, key: &n2.key, name: "n2" },
        server,
        "n1",
        |c| async move {
            let reason = tokio::time::timeout(Duration::from_secs(3), c.closed()).await;
            match reason {
                Ok(r) => Ok(r.to_string()),
                Err(_) => Err(anyhow::anyhow!("connection was not closed by the agent")),
            }
        },
    );
    let reason = wrong.expect("handshake completes, then the agent closes it");
    assert!(reason.contains("unknown node or wrong address"), "close reason: {reason}");
    assert!(wait_for(Duration::from_secs(2), || refused(&lab) > before).is_some(), "refusal not counted");
}

#[test]
fn spoofed_inner_source_is_dropped_and_counted() {
    let lab = quic_lab("q5", 2, 1);
    let pki_dir = lab.pki_dir();
    let ca = pki::ca_files(&pki_dir);
    let n2 = pki::cert_files(&pki_dir, "n2");
    let target = pod_ip(&lab, 1, "p1");
    let honest_src = pod_ip(&lab, 2, "p1");
    let spoofed_src: Ipv4Addr = "10.244.250.9".parse().expect("lit");

    // A UDP listener in n1/p1 collects what arrives.
    let (listener, rx) = udp_collector(lab.pod_ns(1, 1), target, 9, 4);
    let before = drops(&lab, 1, "bad_source");
    const SPOOFED: u64 = 7;
    with_connection(
        &lab.node_ns(2),
        &ClientFiles { ca: &ca.cert, cert: &n2.cert, key: &n2.key, name: "n2" },
        quic_endpoint(&lab, 1),
        "n1",
        |c| async move {
            for k in 0..SPOOFED {
                c.send_datagram(
                    weft_agent::quic::packet::build_udp(spoofed_src, target, format!("spoof{k}").as_bytes()).into(),
                )?;
            }
            // Positive control through the same connection: an honest source arrives.
            c.send_datagram(weft_agent::quic::packet::build_udp(honest_src, target, b"honest").into())?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(())
        },
    )
    .expect("tunnel as n2");
    listener.join().expect("listener");
    let got: Vec<Vec<u8>> = rx.try_iter().collect();
    assert!(got.iter().any(|p| p == b"honest"), "the honest packet did not arrive: the test proves nothing");
    assert!(!got.iter().any(|p| p.starts_with(b"spoof")), "a spoofed packet arrived");
    let after = drops(&lab, 1, "bad_source");
    assert_eq!(after - before, SPOOFED, "bad_source drops must rise by exactly the spoofed packets");
}

#[test]
fn plaintext_never_crosses_the_underlay() {
    let lab = quic_lab("q6", 2, 1);
    plaintext_stays_out(&lab, IpAddr::V4(pod_ip(&lab, 1, "p1")), IpAddr::V4(pod_ip(&lab, 2, "p1")));
}

/// IPv6 only, on the routed quic lab: every pod pair across nodes pings through the tunnel, also
/// after either agent's restart (which keeps the IPv6 subnet and pod addresses), and the
/// plaintext checks of [`plaintext_never_crosses_the_underlay`] hold for IPv6 packets.
#[test]
fn ipv6_only_routed_cluster_carries_every_pod_pair_and_keeps_plaintext_out() {
    let lab = quic_lab_of("q9", 2, 2, IpFamily::V6);
    let t0 = Instant::now();
    for (i, p) in [(1, "p1"), (1, "p2"), (2, "p1"), (2, "p2")] {
        let addrs = pod_addrs(&lab, i, p);
        assert!(addrs.len() == 1 && addrs[0].is_ipv6(), "n{i}/{p} must have one IPv6 address only: {addrs:?}");
    }
    let failures = cross_node_ping_failures_all(&lab, 2, &["p1", "p2"]);
    assert!(failures.is_empty(), "pod pairs that do not ping over the tunnel: {failures:?}");
    // Each agent's restart keeps its node's IPv6 subnet and pod addresses, and the tunnel
    // comes back within 3 s for every pod pair.
    for i in 1..=2 {
        let before = status(&lab, i);
        let pid = lab.agent_pid(i).expect("pid");
        lab.stop_agent(i, nix::sys::signal::Signal::SIGTERM).expect("stop");
        let new_pid = lab.start_agent(i).expect("start");
        assert_ne!(pid, new_pid, "the agent must really have restarted");
        let started = Instant::now();
        let after = status(&lab, i);
        assert_eq!((&after.subnet, &after.subnet6), (&before.subnet, &before.subnet6), "n{i}'s subnets");
        let ips =
            |st: &weft_config::api::Status| st.pods.iter().map(|p| (p.name.clone(), p.ip, p.ip6)).collect::<Vec<_>>();
        assert_eq!(ips(&after), ips(&before), "n{i}'s pod addresses across its restart");
        let far = pod_addrs(&lab, 3 - i, "p1")[0];
        let back = wait_for(Duration::from_secs(10), || ping_addr(&lab, &format!("n{i}/p1"), far, "0.2"));
        assert!(back.is_some(), "tunnel not back 10 s after restarting n{i}");
        let took = started.elapsed();
        eprintln!("measured: q9: IPv6 through the tunnel again {took:?} after n{i}'s agent started");
        assert!(took <= Duration::from_secs(3), "IPv6 through the tunnel only {took:?} after n{i}'s restart");
        let failures = cross_node_ping_failures_all(&lab, 2, &["p1", "p2"]);
        assert!(failures.is_empty(), "pod pairs that do not ping after n{i}'s restart: {failures:?}");
    }
    let (victim, remote) = (pod_addrs(&lab, 1, "p1")[0], pod_addrs(&lab, 2, "p1")[0]);
    plaintext_stays_out(&lab, victim, remote);
    eprintln!("measured: q9: checks took {} s", t0.elapsed().as_secs_f64());
}

/// On a routed quic lab of at least two nodes, in `victim`'s family (`victim` a pod of n1,
/// `remote` one of n2): pod-addressed plaintext that an attacker on n1's segment sends straight
/// to n1 never reaches the pod; and with n1's agent stopped (tun kept, nobody reading it), and
/// even with the tun gone, n1's pod traffic to remote subnets never leaves through the underlay
/// in plaintext (the cluster CIDR's blackhole), with a control showing the leak counter counts.
fn plaintext_stays_out(lab: &Lab, victim: IpAddr, remote: IpAddr) {
    let v6 = victim.is_ipv6();
    // The family's attacker address on segment A, cluster CIDR, nft family and `ip` flag.
    let (attacker, cidr, nft_family, ip_flag) = if v6 {
        ("fd00:172:30::250", weft_lab::names::CLUSTER_CIDR6, "ip6", "-6")
    } else {
        ("172.30.0.250", weft_lab::names::CLUSTER_CIDR, "ip", "-4")
    };
    let n1: IpAddr =
        if v6 { IpAddr::V6(lab.node_ip6(1).expect("an IPv6 underlay")) } else { IpAddr::V4(lab.node_ip(1)) };
    // An attacker on n1's segment sends pod-addressed UDP straight to n1.
    let atk = format!("{}-atk", lab.names().prefix().trim_end_matches('-'));
    run_ok(
        lab,
        "u",
        &["ip", "link", "add", "atk0", "type", "veth", "peer", "name", "eth0", "netns", &atk_ns_create(&atk)],
    );
    run_ok(lab, "u", &["ip", "link", "set", "atk0", "master", "br0", "up"]);
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip").arg("-n").arg(&atk).args(args).output().expect("ip");
        assert!(out.status.success(), "ip -n {atk} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    if v6 {
        ip(&["addr", "add", &format!("{attacker}/64"), "dev", "eth0", "nodad"]);
    } else {
        ip(&["addr", "add", &format!("{attacker}/24"), "dev", "eth0"]);
    }
    ip(&["link", "set", "eth0", "up"]);
    ip(&[ip_flag, "route", "add", cidr, "via", &n1.to_string()]);
    // Control first (it also resolves n1's link-layer address): the attacker does reach n1.
    let attacker_reaches_n1 = || {
        std::process::Command::new("ip")
            .args(["netns", "exec", &atk, "ping", "-n", "-q", "-c1", "-W1", &n1.to_string()])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        wait_for(Duration::from_secs(3), attacker_reaches_n1).is_some(),
        "the attacker cannot even reach n1 at {n1}: the test proves nothing"
    );
    let (listener, rx) = udp_collector(lab.pod_ns(1, 1), victim, 9, 2);
    in_netns(&atk, || {
        let s = UdpSocket::bind((attacker.parse::<IpAddr>().expect("lit"), 0)).expect("bind");
        for _ in 0..5 {
            s.send_to(b"plaintext", (victim, 9)).expect("send");
        }
    })
    .expect("attacker ns");
    listener.join().expect("listener");
    assert_eq!(rx.try_iter().count(), 0, "pod-addressed plaintext from the underlay reached the pod {victim}");

    // With the agent stopped (tun kept, nobody reading it) and even with the tun gone,
    // pod traffic to remote subnets never leaves through the underlay in plaintext.
    let daddr = format!("{nft_family} daddr {cidr}");
    run_ok(lab, "n1", &["nft", "add", "table", nft_family, "wefttest"]);
    run_ok(
        lab,
        "n1",
        &["nft", "add", "chain", nft_family, "wefttest", "post", "{ type filter hook postrouting priority 0; }"],
    );
    let mut rule = vec!["nft", "add", "rule", nft_family, "wefttest", "post", "oifname", "eth0"];
    rule.extend(daddr.split(' '));
    rule.push("counter");
    run_ok(lab, "n1", &rule);
    let leaked = |lab: &Lab| -> u64 {
        let out = run_ok(lab, "n1", &["nft", "-j", "list", "table", nft_family, "wefttest"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("nft json");
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("rule"))
            .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e.get("counter").and_then(|c| c["packets"].as_u64()))
            .sum()
    };
    lab.stop_agent(1, nix::sys::signal::Signal::SIGTERM).expect("stop");
    assert!(!ping_addr(lab, "n1/p1", remote, "1"), "traffic flowed with the agent stopped?");
    run_ok(lab, "n1", &["ip", "link", "del", "weft-tun0"]);
    let remote_s = remote.to_string();
    let routes = run_ok(lab, "n1", &["ip", ip_flag, "route", "show", "match", &remote_s]);
    assert!(
        routes.lines().any(|l| l.starts_with(&format!("blackhole {cidr}"))) && !routes.contains("weft-tun0"),
        "with the tun gone, remote pods must hit the blackhole: {routes}"
    );
    assert!(!ping_addr(lab, "n1/p1", remote, "1"));
    assert_eq!(leaked(lab), 0, "pod traffic left through the underlay in plaintext");
    // Control: without the blackhole the same traffic would leak out of the default route.
    run_ok(lab, "n1", &["ip", ip_flag, "route", "del", "blackhole", cidr]);
    let _ = ping_addr(lab, "n1/p1", remote, "1");
    assert!(leaked(lab) > 0, "the leak counter never counts: the test proves nothing");
}

/// Creates the attacker namespace (named with the lab's prefix, so the lab removes it).
fn atk_ns_create(name: &str) -> String {
    let out = std::process::Command::new("ip").args(["netns", "add", name]).output().expect("ip netns add");
    assert!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
    name.to_string()
}

#[test]
fn a_renewed_certificate_is_used_without_a_restart() {
    let lab = quic_lab("q7", 2, 1);
    let target = pod_ip(&lab, 2, "p1");
    let pid = lab.agent_pid(1).expect("pid");
    let long = status(&lab, 1).quic.expect("quic").cert_expires_in_secs;
    assert!(long > 300 * 86400, "lab certificates last about a year: {long}");
    // Renew n1's certificate with a 30-day lifetime, in place.
    let req = pki::IssueRequest { days: 30, force: true, ..pki::IssueRequest::node("n1") };
    pki::issue(&lab.pki_dir(), &lab.pki_dir(), &req).expect("renew");
    let renewed =
        wait_for(Duration::from_secs(6), || status(&lab, 1).quic.is_some_and(|q| q.cert_expires_in_secs < 31 * 86400));
    assert!(renewed.is_some(), "the agent did not pick up the renewed certificate");
    assert_eq!(lab.agent_pid(1), Some(pid), "picked up without a restart");
    // New handshakes use it: restart the peer so it must verify n1 again.
    lab.stop_agent(2, nix::sys::signal::Signal::SIGTERM).expect("stop");
    lab.start_agent(2).expect("start");
    assert!(
        wait_for(Duration::from_secs(5), || ping(&lab, "n1/p1", target)).is_some(),
        "no tunnel with the renewed certificate"
    );
}

#[test]
fn dual_stack_carries_both_families_over_one_connection_per_pair() {
    let lab = lab("q8", 2, 1, |s| {
        s.backend = weft_config::Backend::Quic;
        s.topology = Topology::Routed;
        s.ip_family = weft_lab::IpFamily::Dual;
    });
    // One peer per node, both subnets on its one connection.
    wait_tunnels_up(&lab, 1, 1);
    wait_tunnels_up(&lab, 2, 1);
    let (st1, st2) = (status(&lab, 1), status(&lab, 2));
    let (s4, s6) = (st2.subnet.clone().expect("subnet"), st2.subnet6.clone().expect("subnet6"));
    let peers = st1.quic.as_ref().expect("quic").peers.clone();
    assert_eq!(peers.len(), 1, "one connection to n2: {peers:?}");
    assert_eq!((peers[0].subnet.as_str(), peers[0].subnet6.as_deref()), (s4.as_str(), Some(s6.as_str())));

    // The bridges' IPv6 gateways (the agent's) are the routes' sources.
    let (gw1, gw2) = (bridge_ipv6_gateway(&lab, 1), bridge_ipv6_gateway(&lab, 2));
    let gw4 = st1.pods.first().and_then(|p| p.gateway).expect("a pod with an IPv4 gateway");
    // n1's weft routes of both families: the blackhole of each cluster CIDR, and n2's subnet of
    // each family through the tun from the own gateway of that family.
    // (Sorted as route_table sorts; an IPv4 route to a device is scope link, an IPv6 one has none.)
    let want4 = vec![
        format!("{s4} dev weft-tun0 proto 213 scope link src {gw4}"),
        "blackhole 10.244.0.0/16 proto 213".to_string(),
    ];
    let want6 = vec![
        "blackhole fd00:10:244::/56 dev lo proto 213".to_string(),
        format!("{s6} dev weft-tun0 proto 213 src {gw1}"),
    ];
    let routed = wait_for(Duration::from_secs(5), || weft_owned(route_table6(&lab, 1)) == want6);
    assert!(routed.is_some(), "weft's IPv6 routes on n1: {:?}", weft_owned(route_table6(&lab, 1)));
    assert_eq!(weft_owned(route_table(&lab, 1)), want4, "weft's IPv4 routes on n1");

    // IPv6 through the tunnel: n1 (from its IPv6 gateway) reaches n2's, and IPv4 pods still
    // reach each other.
    let to = gw2.to_string();
    let ping6 = || lab.exec("n1", &["ping", "-n", "-q", "-c1", "-W", "1", &to]).is_ok_and(|o| o.status.success());
    assert!(wait_for(Duration::from_secs(3), ping6).is_some(), "n1 cannot reach {gw2} over the tunnel");
    let failures = cross_node_ping_failures_all(&lab, 2, &["p1"]);
    assert!(failures.is_empty(), "pod pairs that do not ping over the tunnel: {failures:?}");
    let (ip1, ip2) = (pod_addrs(&lab, 1, "p1"), pod_addrs(&lab, 2, "p1"));
    let seen = tcp_source_seen(&lab.pod_ns(2, 1), ip2[1], 7202, &lab.pod_ns(1, 1)).expect("TCP over IPv6");
    assert_eq!(seen.ip(), ip1[1], "the server sees the client pod's own IPv6 address");

    // Spoofed IPv6 sources are dropped and counted; an honest one arrives.
    let pki_dir = lab.pki_dir();
    let ca = pki::ca_files(&pki_dir);
    let n2 = pki::cert_files(&pki_dir, "n2");
    let (listener, rx) = udp_collector(lab.node_ns(1), gw1, 9, 4);
    let before = drops(&lab, 1, "bad_source");
    let spoofed: [std::net::Ipv6Addr; 3] =
        ["fd00:10:244:ff::9".parse().expect("lit"), gw1, lab.node_ip(2).to_ipv6_mapped()];
    with_connection(
        &lab.node_ns(2),
        &ClientFiles { ca: &ca.cert, cert: &n2.cert, key: &n2.key, name: "n2" },
        quic_endpoint(&lab, 1),
        "n1",
        |c| async move {
            for (k, src) in spoofed.iter().enumerate() {
                let pkt = weft_agent::quic::packet::build_udp6(*src, gw1, format!("spoof{k}").as_bytes());
                c.send_datagram(pkt.into())?;
            }
            c.send_datagram(weft_agent::quic::packet::build_udp6(gw2, gw1, b"honest").into())?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(())
        },
    )
    .expect("tunnel as n2");
    listener.join().expect("listener");
    let got: Vec<Vec<u8>> = rx.try_iter().collect();
    assert!(got.iter().any(|p| p == b"honest"), "the honest IPv6 packet did not arrive: the test proves nothing");
    assert!(!got.iter().any(|p| p.starts_with(b"spoof")), "a spoofed IPv6 packet arrived");
    assert_eq!(drops(&lab, 1, "bad_source") - before, spoofed.len() as u64, "bad_source drops per spoofed packet");

    // The same cluster with its tunnels over the IPv6 underlay (quic.endpoint_family = "ipv6"
    // on every node): the socket on [::], 20 bytes less MTU, both families still carried.
    for i in 1..=2 {
        lab.stop_agent(i, nix::sys::signal::Signal::SIGTERM).expect("stop");
        let path = lab.node_paths(i).config;
        let toml = std::fs::read_to_string(&path).expect("agent.toml");
        assert!(toml.contains("[quic]\n"), "{toml}");
        let toml = toml.replacen("[quic]\n", "[quic]\nendpoint_family = \"ipv6\"\n", 1);
        std::fs::write(&path, toml).expect("agent.toml written");
    }
    for i in 1..=2 {
        lab.start_agent(i).expect("start");
    }
    wait_tunnels_up(&lab, 1, 1);
    wait_tunnels_up(&lab, 2, 1);
    let q = status(&lab, 1).quic.expect("quic");
    assert_eq!((q.endpoint.as_str(), q.mtu), ("[::]:7946", 1414), "an IPv6 socket and the IPv6 header's MTU");
    assert!(wait_for(Duration::from_secs(3), ping6).is_some(), "n1 cannot reach {gw2} over the IPv6 underlay");
    let failures = cross_node_ping_failures_all(&lab, 2, &["p1"]);
    assert!(failures.is_empty(), "pod pairs that do not ping over the IPv6 underlay: {failures:?}");
}

/// What went through one TCP connection: its bytes and their SHA-256.
type Carried = (usize, Vec<u8>);

/// `flows` TCP connections at once from pod `from` to pod `to` ((node, pod) indices), each
/// carrying `bytes` of its own pseudo-random data: what each sent and what arrived, as sorted
/// (bytes, SHA-256) lists (several flows spread over the tun queues, so over the data path
/// threads).
fn parallel_flows(
    lab: &Lab,
    from: (usize, usize),
    to: (usize, usize),
    port: u16,
    flows: usize,
    bytes: usize,
) -> (Vec<Carried>, Vec<Carried>) {
    let server_ip = pod_ip(lab, to.0, &format!("p{}", to.1));
    let (tx, rx) = std::sync::mpsc::channel();
    let server_ns = lab.pod_ns(to.0, to.1);
    let server = std::thread::spawn(move || {
        in_netns(&server_ns, || -> anyhow::Result<Vec<Carried>> {
            let l = TcpListener::bind((server_ip, port))?;
            let _ = tx.send(());
            // Threads started here inherit the pod's namespace.
            let mut readers = Vec::new();
            for _ in 0..flows {
                let (mut s, _) = l.accept()?;
                readers.push(std::thread::spawn(move || -> anyhow::Result<Carried> {
                    s.set_read_timeout(Some(Duration::from_secs(30)))?;
                    let (mut h, mut n, mut buf) = (Sha256::new(), 0, vec![0u8; 1 << 16]);
                    loop {
                        let k = s.read(&mut buf)?;
                        if k == 0 {
                            return Ok((n, h.finalize().to_vec()));
                        }
                        h.update(&buf[..k]);
                        n += k;
                    }
                }));
            }
            let mut got = Vec::new();
            for r in readers {
                got.push(r.join().map_err(|_| anyhow::anyhow!("reader panicked"))??);
            }
            got.sort();
            Ok(got)
        })
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
    let mut sent = in_netns(&lab.pod_ns(from.0, from.1), || -> anyhow::Result<Vec<Carried>> {
        let writers: Vec<_> = (0..flows)
            .map(|f| {
                std::thread::spawn(move || -> anyhow::Result<Carried> {
                    let mut c = TcpStream::connect((server_ip, port))?;
                    let (mut h, mut chunk) = (Sha256::new(), vec![0u8; 1 << 16]);
                    let mut x: u32 = 0x1234_5678 ^ (f as u32 + 1).wrapping_mul(0x9e37_79b9);
                    for _ in 0..bytes / chunk.len() {
                        fill_xorshift(&mut chunk, &mut x);
                        h.update(&chunk);
                        c.write_all(&chunk)?;
                    }
                    Ok((bytes / chunk.len() * chunk.len(), h.finalize().to_vec()))
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().map_err(|_| anyhow::anyhow!("writer panicked"))?).collect()
    })
    .expect("netns")
    .expect("send");
    sent.sort();
    let got = server.join().expect("server thread").expect("netns").expect("receive");
    (sent, got)
}

#[test]
fn nodes_of_one_and_two_data_path_threads_carry_every_pair_and_parallel_flows() {
    let lab = quic_lab("q10", 3, 1);
    // n2 runs one data path thread, n1 and n3 two: n1-n3 use two connections (thread i to
    // thread i, on port 7946 + i), n1-n2 and n2-n3 one (their thread 1 hands over to thread 0).
    let threads = [(1, 2), (2, 1), (3, 2)];
    for (i, _) in threads {
        lab.stop_agent(i, nix::sys::signal::Signal::SIGTERM).expect("stop");
    }
    for (i, n) in threads {
        let path = lab.node_paths(i).config;
        let toml = std::fs::read_to_string(&path).expect("agent.toml");
        assert!(toml.contains("[quic]\n"), "{toml}");
        std::fs::write(&path, toml.replacen("[quic]\n", &format!("[quic]\nthreads = {n}\n"), 1)).expect("written");
    }
    // n2 finds the single-queue device an agent from before threads left: it cannot attach to
    // it with the multi-queue flag (the kernel refuses other flags) and recreates it.
    run_ok(&lab, "n2", &["ip", "link", "del", "weft-tun0"]);
    run_ok(&lab, "n2", &["ip", "tuntap", "add", "dev", "weft-tun0", "mode", "tun", "vnet_hdr"]);
    for (i, _) in threads {
        lab.start_agent(i).expect("start");
    }
    for i in 1..=3 {
        wait_tunnels_up(&lab, i, 2);
    }
    let tun = run_ok(&lab, "n2", &["ip", "-d", "link", "show", "weft-tun0"]);
    assert!(tun.contains(" multi_queue "), "n2's tun was not recreated multi-queue: {tun}");
    let shown = |i: usize| {
        let q = status(&lab, i).quic.expect("quic");
        let peers: Vec<(String, usize, bool)> =
            q.peers.iter().map(|p| (p.node.clone(), p.threads, p.connected)).collect();
        (q.threads, peers)
    };
    let (n1, n2, n3) = (shown(1), shown(2), shown(3));
    eprintln!("(threads, [(peer, pair threads, connected)]): n1 {n1:?}, n2 {n2:?}, n3 {n3:?}");
    assert_eq!(n1, (2, vec![("n2".into(), 1, true), ("n3".into(), 2, true)]), "n1's status");
    assert_eq!(n2, (1, vec![("n1".into(), 1, true), ("n3".into(), 1, true)]), "n2's status");
    assert_eq!(n3, (2, vec![("n1".into(), 2, true), ("n2".into(), 1, true)]), "n3's status");

    let pods = all_pods(&lab, 3, &["p1"]);
    let failures = cross_node_ping_failures(&lab, &pods);
    assert!(failures.is_empty(), "pod pairs that do not ping: {failures:?}");

    // Eight flows at once each way between the two-thread nodes, and between a two-thread node
    // and the one-thread node (what n1 reads on queue 1 goes through its thread 0).
    // (A flow n1 opens to n2 starts on the queue of its hash; once n2's answer is written to
    // queue 0, the kernel sends the rest of it there too: 16 flows make it all but certain that
    // some first packets are handed over.)
    for (k, (from, to, flows)) in [(1, 3, 8), (3, 1, 8), (1, 2, 16), (2, 1, 8)].into_iter().enumerate() {
        let (sent, got) = parallel_flows(&lab, (from, 1), (to, 1), 7300 + k as u16, flows, 4 << 20);
        let short = |v: &[Carried]| v.iter().map(|(n, h)| format!("{n}:{:02x}{:02x}", h[0], h[1])).collect::<Vec<_>>();
        assert_eq!(got, sent, "n{from} to n{to}: (bytes, sha) arrived {:?}, sent {:?}", short(&got), short(&sent));
    }
    let q1 = status(&lab, 1).quic.expect("quic");
    eprintln!("n1 after the flows: handed {}, peers {:?}, drops {:?}", q1.handed, q1.peers, q1.drops);
    let n3 = q1.peers.iter().find(|p| p.node == "n3").expect("n3");
    let carried: Vec<(u64, u64)> = n3.shards.iter().map(|s| (s.tx_datagrams, s.rx_datagrams)).collect();
    assert!(
        carried.len() == 2 && carried.iter().all(|&(tx, rx)| tx > 0 && rx > 0),
        "n1-n3 should carry the 16 flows on both threads' connections: (tx, rx) datagrams by thread {carried:?}"
    );
    assert!(q1.handed > 0, "n1 handed no packet for n2 from thread 1 to thread 0: {q1:?}");
}

/// Fills `chunk` with the next bytes of a xorshift32 stream whose state is `x`: data that TCP
/// cannot compress away and a hash checks end to end.
fn fill_xorshift(chunk: &mut [u8], x: &mut u32) {
    for b in chunk.iter_mut() {
        *x ^= *x << 13;
        *x ^= *x >> 17;
        *x ^= *x << 5;
        *b = *x as u8;
    }
}
