//! Root tests of the lab with real etcd and real agents (`cargo build --bins` first): the routed
//! topology (two segments joined by the underlay namespace, which host-gw cannot cross) and
//! the TLS-only etcd every lab runs. Each test builds its own lab; the lab's Drop removes it,
//! also when an assertion fails.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;
use weft_controller::pki;
use weft_lab::{in_netns, Lab, LabSpec, Topology};

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "these tests need root: they build network namespaces");
}

fn up(spec: LabSpec) -> Lab {
    require_root();
    let id = spec.id.clone();
    Lab::up(spec).unwrap_or_else(|e| panic!("lab {id} did not come up: {e:#}"))
}

fn ping(lab: &Lab, from: &str, to: Ipv4Addr) -> bool {
    let to = to.to_string();
    lab.exec(from, &["ping", "-n", "-q", "-c1", "-W1", &to]).map(|o| o.status.success()).unwrap_or(false)
}

fn stdout(lab: &Lab, target: &str, args: &[&str]) -> String {
    let out = lab.exec(target, args).unwrap_or_else(|e| panic!("{args:?} in {target}: {e:#}"));
    assert!(out.status.success(), "{args:?} in {target}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pod_ip(lab: &Lab, i: usize) -> Ipv4Addr {
    let st = lab.wait_ready(i, Duration::from_secs(10)).expect("ready");
    match st.pods.first().and_then(|p| p.ip) {
        Some(std::net::IpAddr::V4(ip)) => ip,
        other => panic!("n{i} has no IPv4 pod: {other:?}"),
    }
}

/// Sends one UDP datagram from `from` to `to:port` served in `to_ns`; true if it arrived.
fn udp_crosses(from_ns: &str, to_ns: &str, to: Ipv4Addr, port: u16) -> bool {
    let server = in_netns(to_ns, || UdpSocket::bind((to, port))).expect("enter").expect("bind");
    server.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    in_netns(from_ns, || -> std::io::Result<usize> {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?.send_to(b"weft", (to, port))
    })
    .expect("enter")
    .expect("send");
    let mut buf = [0u8; 16];
    matches!(server.recv_from(&mut buf), Ok((4, _)) if &buf[..4] == b"weft")
}

#[test]
fn routed_lab_carries_udp_across_segments_but_host_gw_cannot() {
    let lab = up(LabSpec {
        id: "cr1".into(),
        nodes: 3,
        pods: 1,
        topology: Topology::Routed,
        reconcile_secs: 2,
        ..LabSpec::default()
    });
    // n1 and n3 on segment A, n2 on segment B.
    assert_eq!(lab.node_ip(1), Ipv4Addr::new(172, 30, 0, 11));
    assert_eq!(lab.node_ip(2), Ipv4Addr::new(172, 30, 1, 12));
    assert_eq!(lab.node_ip(3), Ipv4Addr::new(172, 30, 0, 13));
    let routes = stdout(&lab, "n2", &["ip", "-4", "route", "show", "default"]);
    assert!(routes.contains("via 172.30.1.1"), "n2's default route goes via segment B's router: {routes}");

    // The underlay between segments works: ping and UDP, both ways through the router.
    assert!(ping(&lab, "n1", lab.node_ip(2)), "n1 (segment A) cannot reach n2 (segment B)");
    assert!(ping(&lab, "n2", lab.node_ip(1)), "n2 (segment B) cannot reach n1 (segment A)");
    assert!(udp_crosses(&lab.node_ns(1), &lab.node_ns(2), lab.node_ip(2), 7400), "UDP n1 -> n2 lost");
    assert!(udp_crosses(&lab.node_ns(2), &lab.node_ns(1), lab.node_ip(1), 7401), "UDP n2 -> n1 lost");

    // The router knows no pod subnet.
    let u = stdout(&lab, "u", &["ip", "-4", "route", "show"]);
    assert!(!u.contains("10.244."), "the router must not route pod subnets: {u}");

    // Pods on one segment reach each other (the control), but not across the router.
    let (p1, p2, p3) = (pod_ip(&lab, 1), pod_ip(&lab, 2), pod_ip(&lab, 3));
    assert!(ping(&lab, "n1/p1", p3), "host-gw between n1 and n3 (same segment) must work");
    assert!(!ping(&lab, "n1/p1", p2), "host-gw pod traffic must not cross segments");
    assert!(!ping(&lab, "n2/p1", p1), "host-gw pod traffic must not cross segments");

    // The agent says why: the cross-segment peer is listed with a problem and no route.
    let st = lab.wait_ready(1, Duration::from_secs(5)).expect("ready");
    let peer = |name: &str| st.peers.iter().find(|p| p.node == name).unwrap_or_else(|| panic!("{name}: {st:?}"));
    let n2 = peer("n2");
    assert!(!n2.route_ok, "{n2:?}");
    let problem = n2.problem.as_deref().unwrap_or_else(|| panic!("n2 listed without a problem: {n2:?}"));
    assert!(problem.contains("172.30.1.12"), "{problem}");
    let n3 = peer("n3");
    assert!(n3.route_ok && n3.problem.is_none(), "{n3:?}");
    let table = stdout(&lab, "n1", &["ip", "-4", "route", "show", "proto", "213"]);
    assert!(!table.contains(&n2.subnet), "no route for the unroutable peer: {table}");

    let ns: Vec<String> = (1..=3).map(|i| lab.node_ns(i)).collect();
    let report = lab.down();
    assert!(report.is_ok(), "{report:?}");
    let left = weft_lab::netns::list().expect("list");
    assert!(!left.iter().any(|n| n.starts_with("weftcr1-")), "namespaces left: {left:?}");
    assert!(ns.iter().all(|n| weft_lab::netns::ns_id(n).is_none()));
}

/// Connects to the lab's etcd from node `i`'s namespace with `opts`; the error text if refused.
fn etcd_from_node(lab: &Lab, i: usize, opts: &weft_controller::etcd::EtcdOpts) -> Result<(), String> {
    let opts = opts.clone();
    in_netns(&lab.node_ns(i), move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(weft_controller::etcd::connect(&opts)).map(drop).map_err(|e| format!("{e:#}"))
    })
    .expect("enter")
}

#[test]
fn lab_etcd_takes_tls_clients_of_the_lab_ca_only() {
    let lab = up(LabSpec { id: "cr2".into(), nodes: 1, pods: 0, ..LabSpec::default() });
    let good = lab.etcd_opts();
    assert_eq!(good.endpoints, vec!["https://172.30.0.2:2379".to_string()]);
    etcd_from_node(&lab, 1, &good).expect("weftctl's certificate is accepted");
    let n1 = lab.cert_files("n1");
    let as_node = weft_controller::etcd::EtcdOpts { cert: Some(n1.cert), key: Some(n1.key), ..good.clone() };
    etcd_from_node(&lab, 1, &as_node).expect("the node certificate doubles as etcd client certificate");

    // Without a client certificate, with a self-signed one, with one of another CA: refused.
    let none = weft_controller::etcd::EtcdOpts { cert: None, key: None, ..good.clone() };
    assert!(etcd_from_node(&lab, 1, &none).is_err(), "etcd must require a client certificate");
    let scratch = lab.dir().join("scratch");
    let selfie = pki::self_signed(&scratch, &pki::IssueRequest::node("weftctl")).expect("self-signed");
    let forged =
        weft_controller::etcd::EtcdOpts { cert: Some(selfie.files.cert), key: Some(selfie.files.key), ..good.clone() };
    assert!(etcd_from_node(&lab, 1, &forged).is_err(), "a self-signed client certificate must be refused");
    let other_ca = scratch.join("other");
    pki::init_ca(&other_ca, &pki::CaOptions::default()).expect("other CA");
    let foreign = pki::issue(&other_ca, &other_ca, &pki::IssueRequest::node("weftctl")).expect("foreign");
    let foreign = weft_controller::etcd::EtcdOpts {
        cert: Some(foreign.files.cert),
        key: Some(foreign.files.key),
        ..good.clone()
    };
    assert!(etcd_from_node(&lab, 1, &foreign).is_err(), "a certificate of another CA must be refused");
    // Plain HTTP gets nowhere either.
    let plain = weft_controller::etcd::EtcdOpts {
        endpoints: vec!["http://172.30.0.2:2379".into()],
        ca: None,
        cert: None,
        key: None,
        ..good
    };
    assert!(etcd_from_node(&lab, 1, &plain).is_err(), "etcd must not answer plain HTTP");

    // `lab exec` hands weftctl the TLS settings.
    let out = lab.exec("n1", &["weftctl", "nodes"]).expect("exec");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("n1 ")));
}
