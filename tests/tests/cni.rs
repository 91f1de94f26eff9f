//! The weft-cni plugin, called exactly as a container runtime calls it (CNI_* variables, the
//! network config on stdin, the result or a CNI error on stdout) in a namespace the test made
//! inside a lab, and chained with Debian's containernetworking-plugins (bandwidth, portmap),
//! whose real effects are checked: the tc qdisc on the host veth, and a DNAT that carries a TCP
//! connection from another node to the container. Run one at a time (`--test-threads=1`).

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use weft_lab::{in_netns, netns, plumbing, Lab};
use weft_tests::ops::*;
use weft_tests::*;

/// A container namespace for `lab` (named with the lab's prefix, so `lab down` removes it too)
/// and a guard for it and for the agent's bind mount of it.
fn container(lab: &Lab, name: &str, id: &str) -> (Container, NsGuard) {
    let ns = format!("{}{name}", lab.names().prefix());
    plumbing::add_netns(&ns).expect("container namespace");
    let pod = weft_agent::cni::pod_name(id, "eth0");
    let guard = NsGuard(vec![pod, ns.clone()]);
    (Container { id: id.into(), netns: netns::netns_path(&ns).display().to_string(), ifname: "eth0".into() }, guard)
}

/// `a.b.c.d/len` as address and prefix length.
fn split_cidr(s: &str) -> (IpAddr, u8) {
    let (a, l) = s.split_once('/').unwrap_or_else(|| panic!("{s:?} is not address/len"));
    (a.parse().expect("address"), l.parse().expect("prefix length"))
}

fn ns_of(c: &Container) -> String {
    c.netns.rsplit('/').next().expect("name").to_string()
}

fn cmd_out(ns: &str, args: &[&str]) -> String {
    let out = netns::command_in(ns, args[0]).expect("command").args(&args[1..]).output().expect("run");
    assert!(out.status.success(), "{args:?} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mac_of(ns: &str, ifname: &str) -> String {
    let v: Value = serde_json::from_str(&cmd_out(ns, &["ip", "-j", "link", "show", ifname])).expect("ip -j");
    v[0]["address"].as_str().expect("address").to_string()
}

#[test]
fn add_check_del_as_a_runtime_calls_it() {
    let lab = lab("cn1", 2, 1, |_| {});
    let bin = weft_cni_bin(&lab);
    let node = lab.node_ns(1);
    let st = lab.wait_ready(1, Duration::from_secs(20)).expect("ready");
    let subnet = weft_config::subnet::parse_cidr(&st.subnet.expect("subnet")).expect("subnet");
    let (c, _guard) = container(&lab, "n1-c1", "0f3a9c1e5d7b2a4c6e8f0a1b3c5d7e9f");
    let conf = weft_conf(&lab, 1, "1.0.0");

    // VERSION
    let v = run_plugin(&node, &bin, "VERSION", &c, &json!({"cniVersion":"1.0.0"}), DEBIAN_CNI_DIR).expect("run");
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(v.json()["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"]));

    // ADD: a result per the spec, for an interface that really is there.
    let add = run_plugin(&node, &bin, "ADD", &c, &conf, DEBIAN_CNI_DIR).expect("run");
    assert_eq!(add.code, 0, "{add:?}");
    let r = add.json();
    assert_eq!(r["cniVersion"], "1.0.0");
    let ifaces = r["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifaces.len(), 2, "{r}");
    let host_veth = ifaces[0]["name"].as_str().expect("host veth");
    assert!(ifaces[0].get("sandbox").is_none(), "the host side has no sandbox");
    assert_eq!(ifaces[0]["mac"].as_str(), Some(mac_of(&node, host_veth).as_str()));
    assert_eq!(ifaces[1], json!({"name":"eth0","mac":mac_of(&ns_of(&c), "eth0"),"sandbox":c.netns}));
    let ip0 = &r["ips"][0];
    assert_eq!(ip0["interface"], 1, "ips[].interface indexes interfaces[]");
    let address = ip0["address"].as_str().expect("address");
    let (addr, len) = split_cidr(address);
    assert!(subnet.contains(&addr) && len == subnet.prefix_len(), "{address} in {subnet}");
    let gw = weft_config::subnet::gateway(subnet);
    assert_eq!(ip0["gateway"], gw.to_string());
    assert_eq!(r["routes"], json!([{"dst":"0.0.0.0/0","gw":gw.to_string()}]));
    assert!(ip0.get("version").is_none(), "1.0.0 results carry no ips[].version");
    // It is a real attachment: the address is inside, and traffic crosses to another node's pod.
    assert!(cmd_out(&ns_of(&c), &["ip", "-4", "addr", "show", "eth0"]).contains(address));
    let far = pod_ip(&lab, 2, "p1");
    let ping = netns::command_in(&ns_of(&c), "ping")
        .expect("cmd")
        .args(["-n", "-q", "-c1", "-W", "2", &far.to_string()])
        .output()
        .expect("ping");
    assert!(ping.status.success(), "container -> n2/p1 {far}");
    // The agent knows the pod (so it never gives the address out again).
    let pods = lab.client(1).expect("client").pod_list().expect("pods");
    let pod = pods.iter().find(|p| p.ip == Some(addr)).expect("pod in the agent's list");
    assert_eq!((pod.source.as_str(), pod.name.as_str()), ("cni", weft_agent::cni::pod_name(&c.id, "eth0").as_str()));

    // ADD again is the same attachment (a runtime retry).
    let again = run_plugin(&node, &bin, "ADD", &c, &conf, DEBIAN_CNI_DIR).expect("run");
    assert_eq!((again.code, again.json()["ips"].clone()), (0, r["ips"].clone()));

    // CHECK with the cached result: nothing on stdout, exit 0.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = r.clone();
    let ok = run_plugin(&node, &bin, "CHECK", &c, &check_conf, DEBIAN_CNI_DIR).expect("run");
    assert_eq!((ok.code, ok.stdout.as_str()), (0, ""), "{ok:?}");
    // A broken attachment fails CHECK with a CNI error object.
    cmd_out(&ns_of(&c), &["ip", "addr", "flush", "dev", "eth0"]);
    let bad = run_plugin(&node, &bin, "CHECK", &c, &check_conf, DEBIAN_CNI_DIR).expect("run");
    assert_ne!(bad.code, 0);
    let e = bad.json();
    assert_eq!((e["cniVersion"].as_str(), e["code"].as_u64()), (Some("1.0.0"), Some(101)), "{e}");
    assert!(e["msg"].as_str().expect("msg").contains("lacks"), "{e}");
    // ADD repairs it (same address), and CHECK passes again.
    let fixed = run_plugin(&node, &bin, "ADD", &c, &conf, DEBIAN_CNI_DIR).expect("run");
    assert_eq!((fixed.code, fixed.json()["ips"].clone()), (0, r["ips"].clone()));
    assert_eq!(run_plugin(&node, &bin, "CHECK", &c, &check_conf, DEBIAN_CNI_DIR).expect("run").code, 0);

    // Errors per the spec: JSON with code/msg on stdout, non-zero exit.
    let cases: Vec<(&str, Value, &str, u64)> = vec![
        ("ADD", json!({"cniVersion":"9.9.9","name":"weft","type":"weft-cni"}), "incompatible version", 1),
        ("ADD", json!({"cniVersion":"1.0.0","type":"weft-cni"}), "missing name", 7),
        (
            "ADD",
            json!({"cniVersion":"1.0.0","name":"weft","type":"weft-cni","socket":"/run/weft-lab/cn1/none.sock"}),
            "agent away",
            11,
        ),
        ("BOGUS", conf.clone(), "unknown command", 4),
        ("CHECK", conf.clone(), "CHECK without prevResult", 7),
    ];
    for (cmd, cfg, what, code) in cases {
        let out = run_plugin(&node, &bin, cmd, &c, &cfg, DEBIAN_CNI_DIR).expect("run");
        assert_ne!(out.code, 0, "{what}");
        let e = out.json();
        assert_eq!(e["code"].as_u64(), Some(code), "{what}: {e}");
        assert!(e["msg"].as_str().is_some_and(|m| !m.is_empty()) && e.get("details").is_some(), "{what}: {e}");
    }
    let mut garbage = netns::command_in(&node, &bin).expect("cmd");
    garbage
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "x")
        .env("CNI_NETNS", &c.netns)
        .env("CNI_IFNAME", "eth0");
    let mut child =
        garbage.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(b"{not json").expect("write");
    let out = child.wait_with_output().expect("wait");
    let e: Value = serde_json::from_slice(&out.stdout).expect("error JSON");
    assert_eq!((out.status.success(), e["code"].as_u64()), (false, Some(6)), "{e}");

    // DEL removes the pod, the veth and the agent's bind mount, and leaves the runtime's
    // namespace alone; a second DEL is fine too.
    for round in 0..2 {
        let del = run_plugin(&node, &bin, "DEL", &c, &check_conf, DEBIAN_CNI_DIR).expect("run");
        assert_eq!((del.code, del.stdout.as_str()), (0, ""), "DEL #{round}: {del:?}");
    }
    let pods = lab.client(1).expect("client").pod_list().expect("pods");
    assert!(!pods.iter().any(|p| p.source == "cni"), "{pods:?}");
    let links = cmd_out(&node, &["ip", "-o", "link"]);
    assert!(!links.contains(host_veth), "host veth {host_veth} still there");
    assert!(netns::ns_id(&weft_agent::cni::pod_name(&c.id, "eth0")).is_none(), "bind mount left behind");
    assert!(netns::ns_id(&ns_of(&c)).is_some(), "the runtime's namespace must survive DEL");
}

#[test]
fn conflist_chains_bandwidth_and_portmap() {
    let lab = lab("cn2", 2, 0, |_| {});
    let node = lab.node_ns(1);
    for p in ["bandwidth", "portmap"] {
        assert!(
            std::path::Path::new(DEBIAN_CNI_DIR).join(p).exists(),
            "{DEBIAN_CNI_DIR}/{p} missing: apt-get install containernetworking-plugins (deploy/install-deps.sh does)"
        );
    }
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/cni/10-weft.conflist"))
        .expect("conflist");
    let mut list: Value = serde_json::from_str(&text).expect("conflist is JSON");
    assert_eq!(list["plugins"][0]["type"], "weft-cni", "weft comes first");
    list["plugins"][0]["socket"] = json!(lab.node_config(1).expect("cfg").paths.socket);
    let (c, _guard) = container(&lab, "n1-c1", "chain-1");
    let args = json!({
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 800_000},
        "dns": {"servers": ["203.0.113.2"], "searches": ["weft.test"], "options": ["ndots:2"]},
    });
    let result = conflist_add(&lab, &node, &list, &c, &args).expect("ADD through the chain");
    assert_eq!(
        result["dns"],
        json!({"nameservers": ["203.0.113.2"], "search": ["weft.test"], "options": ["ndots:2"]}),
        "the runtime's dns capability comes back in the result"
    );
    let pods = lab.client(1).expect("client").pod_list().expect("pods");
    assert_eq!(pods.len(), 1, "{pods:?}");
    let etc = std::path::Path::new("/etc/netns").join(&pods[0].netns);
    assert!(!etc.exists(), "a runtime's namespace gets no file from weft: {}", etc.display());
    let host_veth = result["interfaces"][0]["name"].as_str().expect("host veth").to_string();
    let (ip, _) = split_cidr(result["ips"][0]["address"].as_str().expect("ip"));

    // bandwidth: a token bucket on the host veth (traffic towards the container).
    let qdisc = cmd_out(&node, &["tc", "qdisc", "show", "dev", &host_veth]);
    assert!(qdisc.contains("qdisc tbf") && qdisc.contains("rate 8Mbit"), "{qdisc}");

    // portmap: n2 connects to n1's underlay address, port 8080; the container answers on 80.
    let server_ns = ns_of(&c);
    let server = std::thread::spawn(move || {
        in_netns(&server_ns, || -> anyhow::Result<SocketAddr> {
            let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 80))?;
            l.set_nonblocking(false)?;
            let (mut s, peer) = l.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf)?;
            anyhow::ensure!(&buf == b"hello", "server got {buf:?}");
            s.write_all(b"from-the-container")?;
            Ok(peer)
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    let n1 = lab.node_ip(1);
    let got = in_netns(&lab.node_ns(2), move || -> anyhow::Result<String> {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((n1, 8080)), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"hello")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .expect("netns")
    .expect("connect through the DNAT");
    assert_eq!(got, "from-the-container");
    let peer = server.join().expect("server thread").expect("netns").expect("server");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(lab.node_ip(2)), "portmap DNATs without masquerading outside traffic");
    let nat = cmd_out(&node, &["iptables", "-t", "nat", "-S"]);
    assert!(nat.contains(&format!("--to-destination {ip}:80")), "{nat}");

    // CHECK through the chain, then DEL in reverse: the DNAT and the pod are gone.
    // Debian's portmap (plugins 1.1.1) fails CHECK for IPv4-only containers by looking for
    // IPv6 rules too (containernetworking/plugins#819, fixed upstream later): check the rest.
    let mut checkable = list.clone();
    checkable["plugins"].as_array_mut().expect("plugins").retain(|p| p["type"] != "portmap");
    conflist_run(&lab, &node, &checkable, &c, &args, "CHECK", &result).expect("CHECK through the chain");
    conflist_run(&lab, &node, &list, &c, &args, "DEL", &result).expect("DEL through the chain");
    let nat = cmd_out(&node, &["iptables", "-t", "nat", "-S"]);
    assert!(!nat.contains(&ip.to_string()), "DNAT left behind:\n{nat}");
    assert!(!cmd_out(&node, &["ip", "-o", "link"]).contains(&host_veth));
    let pods = lab.client(1).expect("client").pod_list().expect("pods");
    assert!(pods.is_empty(), "{pods:?}");
}

#[test]
fn a_dual_stack_add_lists_both_families_and_check_checks_both() {
    let lab = lab("cn3", 1, 0, |s| s.ip_family = weft_lab::IpFamily::Dual);
    let bin = weft_cni_bin(&lab);
    let node = lab.node_ns(1);
    let st = lab.wait_ready(1, Duration::from_secs(20)).expect("ready");
    let subnet = weft_config::subnet::parse_cidr(&st.subnet.expect("subnet")).expect("subnet");
    let subnet6: ipnet::IpNet = st.subnet6.expect("subnet6").parse().expect("subnet6");
    let (gw, gw6) = (weft_config::subnet::gateway(subnet), weft_config::subnet::gateway(subnet6));
    let (c, _guard) = container(&lab, "n1-c3", "5e1d9c3a7b2f4e6d8c0a1b3c5d7e9f02");
    let conf = weft_conf(&lab, 1, "1.0.0");

    // ADD: one address per family with its gateway, a default route per family.
    let add = run_plugin(&node, &bin, "ADD", &c, &conf, DEBIAN_CNI_DIR).expect("run");
    assert_eq!(add.code, 0, "{add:?}");
    let r = add.json();
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 2, "{r}");
    let (a4, l4) = split_cidr(ips[0]["address"].as_str().expect("address"));
    let (a6, l6) = split_cidr(ips[1]["address"].as_str().expect("address"));
    assert!(subnet.contains(&a4) && l4 == subnet.prefix_len(), "{r}");
    assert!(subnet6.contains(&a6) && l6 == subnet6.prefix_len(), "{r}");
    assert_eq!(
        (ips[0]["gateway"].as_str(), ips[1]["gateway"].as_str()),
        (Some(&*gw.to_string()), Some(&*gw6.to_string()))
    );
    assert_eq!(r["routes"], json!([{"dst":"0.0.0.0/0","gw":gw.to_string()}, {"dst":"::/0","gw":gw6.to_string()}]));
    // Both are really there and usable: the container reaches both gateways.
    let inside = cmd_out(&ns_of(&c), &["ip", "addr", "show", "eth0"]);
    assert!(inside.contains(&format!("{a4}/{l4}")) && inside.contains(&format!("{a6}/{l6}")), "{inside}");
    for to in [gw, gw6] {
        let ping = netns::command_in(&ns_of(&c), "ping")
            .expect("cmd")
            .args(["-n", "-q", "-c1", "-W", "2", &to.to_string()])
            .output()
            .expect("ping");
        assert!(ping.status.success(), "container -> gateway {to}");
    }
    let pods = lab.client(1).expect("client").pod_list().expect("pods");
    let pod = pods.iter().find(|p| p.ip6 == Some(a6)).expect("pod in the agent's list");
    assert_eq!(pod.ip, Some(a4));

    // CHECK checks both families: it passes, then fails once the IPv6 default route is gone.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = r.clone();
    let ok = run_plugin(&node, &bin, "CHECK", &c, &check_conf, DEBIAN_CNI_DIR).expect("run");
    assert_eq!((ok.code, ok.stdout.as_str()), (0, ""), "{ok:?}");
    cmd_out(&ns_of(&c), &["ip", "-6", "route", "del", "default"]);
    let bad = run_plugin(&node, &bin, "CHECK", &c, &check_conf, DEBIAN_CNI_DIR).expect("run");
    let e = bad.json();
    assert_eq!(e["code"].as_u64(), Some(101), "{e}");
    assert!(e["msg"].as_str().expect("msg").contains("IPv6 default route"), "{e}");
    let fixed = run_plugin(&node, &bin, "ADD", &c, &conf, DEBIAN_CNI_DIR).expect("run");
    assert_eq!((fixed.code, fixed.json()["ips"].clone()), (0, r["ips"].clone()));
    assert_eq!(run_plugin(&node, &bin, "CHECK", &c, &check_conf, DEBIAN_CNI_DIR).expect("run").code, 0);

    let del = run_plugin(&node, &bin, "DEL", &c, &conf, DEBIAN_CNI_DIR).expect("run");
    assert_eq!(del.code, 0, "{del:?}");
    let pods = lab.client(1).expect("client").pod_list().expect("pods");
    assert!(pods.is_empty(), "{pods:?}");
}
