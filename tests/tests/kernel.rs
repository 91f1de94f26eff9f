//! The real `Kernel` (netlink) on the operations the next backends need: a vxlan device,
//! weft-owned neighbour and FDB entries beside foreign ones made with `ip neigh`/`bridge fdb`,
//! and the WireGuard kind; and the same calls with IPv6 (addresses, routes of both families
//! read back as written, neighbour and FDB entries); and the probe's ICMP echo rounds over both families. Everything happens in namespaces these
//! tests make and their guards remove, also when an assertion fails.

use ipnet::IpNet;
use serde_json::Value;
use std::net::IpAddr;
use std::process::Command;
use weft_agent::kernel::{errno, Fdb, Kernel, Mac, Neighbour, Netlink, NotOurs, Owner, Vxlan};
use weft_agent::routes::{self, Action, Family, MixedFamily, Route, RouteKind};
use weft_tests::ops::NsGuard;
use weft_tests::require_root;

const NS: &str = "weftkt-kernel";
const NS6: &str = "weftkt-kernel6";

fn run_in(tool: &str, ns: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(["-n", ns]).args(args).output().unwrap_or_else(|e| panic!("running {tool}: {e}"));
    assert!(out.status.success(), "{tool} -n {ns} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_in(args: &[&str]) -> String {
    run_in("ip", NS, args)
}

fn bridge_in(args: &[&str]) -> String {
    run_in("bridge", NS, args)
}

fn ip6_in(args: &[&str]) -> String {
    run_in("ip", NS6, args)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn mac(s: &str) -> Mac {
    s.parse().expect("literal")
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("literal")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("literal")
}

/// `ip -j neigh show dev DEV` entry for `dst`, if any.
fn ip_neigh(dev: &str, dst: &str) -> Option<Value> {
    let all = json(&ip_in(&["-j", "neigh", "show", "dev", dev]));
    all.as_array()?.iter().find(|n| n["dst"] == dst).cloned()
}

/// `ip -j -6 neigh show dev DEV` entry for `dst` in the IPv6 test's namespace, if any.
fn ip6_neigh(dev: &str, dst: &str) -> Option<Value> {
    let all = json(&ip6_in(&["-j", "-6", "neigh", "show", "dev", dev]));
    all.as_array()?.iter().find(|n| n["dst"] == dst).cloned()
}

/// `ip -j -6 route show DST` in the IPv6 test's namespace.
fn ip6_routes(dst: &str) -> Vec<Value> {
    json(&ip6_in(&["-j", "-6", "route", "show", dst])).as_array().cloned().unwrap_or_default()
}

/// `bridge -j fdb show dev DEV` entry for `mac`, if any.
fn bridge_fdb(dev: &str, mac: &str) -> Option<Value> {
    let all = json(&bridge_in(&["-j", "fdb", "show", "dev", dev]));
    all.as_array()?.iter().find(|n| n["mac"] == mac).cloned()
}

#[test]
fn vxlan_device_and_weft_owned_neighbour_and_fdb_entries() {
    require_root();
    let _guard = NsGuard(vec![NS.to_string()]);
    weft_agent::netns::remove(NS).expect("clearing a leftover namespace");
    weft_agent::netns::ensure(NS).expect("creating the test namespace");
    ip_in(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    ip_in(&["addr", "add", "172.31.0.1/24", "dev", "eth0"]);
    ip_in(&["link", "set", "eth0", "up"]);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let k = Netlink::open_in(NS).expect("netlink in the test namespace");
        let eth0 = k.link("eth0").await.expect("lookup").expect("eth0").index;

        // A vxlan device: unicast, learning off, on the underlay.
        let spec =
            Vxlan { vni: 42, port: 4789, local: Some(addr("172.31.0.1")), underlay: Some(eth0), learning: false };
        let vx = k.add_vxlan("weft-vx0", 1450, &spec).await.expect("creating the vxlan device");
        let link = k.link("weft-vx0").await.expect("lookup").expect("vxlan device listed");
        assert_eq!(link.index, vx);
        assert_eq!(link.kind.as_deref(), Some("vxlan"));
        assert_eq!(link.mtu, 1450);
        assert_eq!(link.vxlan.as_ref(), Some(&spec), "the kernel reports what was asked");
        assert!(link.mac.is_some(), "a vxlan device has a MAC (the VTEP MAC a backend publishes)");
        let info = json(&ip_in(&["-d", "-j", "link", "show", "weft-vx0"]));
        let data = &info[0]["linkinfo"]["info_data"];
        assert_eq!(data["id"], 42, "{data}");
        assert_eq!(data["port"], 4789, "{data}");
        assert_eq!(data["learning"], false, "{data}");
        assert_eq!(data["local"], "172.31.0.1", "{data}");
        let again = k.add_vxlan("weft-vx0", 1450, &spec).await.expect_err("the name is taken");
        assert_eq!(errno(&again), Some(nix::libc::EEXIST), "{again:#}");
        k.set_link(vx, None, true, None).await.expect("vxlan up");

        // Foreign entries, made the way an operator would.
        ip_in(&["neigh", "add", "10.244.8.0", "lladdr", "02:00:00:00:00:08", "dev", "weft-vx0"]);
        bridge_in(&["fdb", "add", "02:00:00:00:00:08", "dev", "weft-vx0", "dst", "172.31.0.8"]);

        // weft's neighbour entry: permanent, marked with weft's protocol.
        let ours = Neighbour { ifindex: vx, ip: addr("10.244.9.0"), mac: mac("02:00:00:00:00:09") };
        k.add_neighbour(&ours).await.expect("adding weft's neighbour");
        let e = k.add_neighbour(&ours).await.expect_err("exclusive add of an existing entry");
        assert_eq!(errno(&e), Some(nix::libc::EEXIST), "{e:#}");
        let listed = k.neighbours(vx).await.expect("listing neighbours");
        let owner_of = |ip: &str| listed.iter().find(|l| l.entry.ip == addr(ip)).map(|l| (l.owner, l.entry.mac));
        assert_eq!(owner_of("10.244.9.0"), Some((Owner::Weft, mac("02:00:00:00:00:09"))), "{listed:?}");
        assert_eq!(owner_of("10.244.8.0"), Some((Owner::Other, mac("02:00:00:00:00:08"))), "{listed:?}");
        let seen = ip_neigh("weft-vx0", "10.244.9.0").expect("ip sees weft's entry");
        assert_eq!(seen["protocol"], "213", "{seen}");
        assert_eq!(seen["state"], serde_json::json!(["PERMANENT"]), "{seen}");

        // Replace moves weft's entry; the foreign one is refused, for replace and delete.
        let moved = Neighbour { mac: mac("02:00:00:00:00:19"), ..ours.clone() };
        k.replace_neighbour(&moved).await.expect("replacing weft's neighbour");
        assert_eq!(ip_neigh("weft-vx0", "10.244.9.0").expect("still there")["lladdr"], "02:00:00:00:00:19");
        let foreign = Neighbour { ifindex: vx, ip: addr("10.244.8.0"), mac: mac("02:00:00:00:00:aa") };
        let e = k.replace_neighbour(&foreign).await.expect_err("a foreign entry is not replaced");
        assert!(e.downcast_ref::<NotOurs>().is_some(), "{e:#}");
        let e = k.del_neighbour(vx, addr("10.244.8.0")).await.expect_err("a foreign entry is not deleted");
        assert!(e.downcast_ref::<NotOurs>().is_some(), "{e:#}");
        assert_eq!(ip_neigh("weft-vx0", "10.244.8.0").expect("foreign entry kept")["lladdr"], "02:00:00:00:00:08");
        k.del_neighbour(vx, addr("10.244.9.0")).await.expect("deleting weft's neighbour");
        assert!(ip_neigh("weft-vx0", "10.244.9.0").is_none());
        let e = k.del_neighbour(vx, addr("10.244.9.0")).await.expect_err("deleting it twice");
        assert_eq!(errno(&e), Some(nix::libc::ENOENT), "{e:#}");

        // weft's FDB entry: MAC -> underlay address, marked extern_learn.
        let fdb = Fdb { ifindex: vx, mac: mac("02:00:00:00:00:09"), dst: addr("172.31.0.9") };
        k.add_fdb(&fdb).await.expect("adding weft's fdb entry");
        let e = k.add_fdb(&fdb).await.expect_err("exclusive add of an existing entry");
        assert_eq!(errno(&e), Some(nix::libc::EEXIST), "{e:#}");
        let listed = k.fdb(vx).await.expect("listing fdb");
        let owner_of = |m: &str| listed.iter().find(|l| l.entry.mac == mac(m)).map(|l| (l.owner, l.entry.dst));
        assert_eq!(owner_of("02:00:00:00:00:09"), Some((Owner::Weft, addr("172.31.0.9"))), "{listed:?}");
        assert_eq!(owner_of("02:00:00:00:00:08"), Some((Owner::Other, addr("172.31.0.8"))), "{listed:?}");
        let seen = bridge_fdb("weft-vx0", "02:00:00:00:00:09").expect("bridge sees weft's entry");
        assert!(seen["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "extern_learn")), "{seen}");
        k.replace_fdb(&Fdb { dst: addr("172.31.0.19"), ..fdb.clone() }).await.expect("replacing weft's fdb entry");
        assert_eq!(bridge_fdb("weft-vx0", "02:00:00:00:00:09").expect("still there")["dst"], "172.31.0.19");
        let foreign = Fdb { ifindex: vx, mac: mac("02:00:00:00:00:08"), dst: addr("172.31.0.99") };
        let e = k.replace_fdb(&foreign).await.expect_err("a foreign entry is not replaced");
        assert!(e.downcast_ref::<NotOurs>().is_some(), "{e:#}");
        let e = k.del_fdb(vx, foreign.mac).await.expect_err("a foreign entry is not deleted");
        assert!(e.downcast_ref::<NotOurs>().is_some(), "{e:#}");
        assert_eq!(bridge_fdb("weft-vx0", "02:00:00:00:00:08").expect("foreign entry kept")["dst"], "172.31.0.8");
        k.del_fdb(vx, fdb.mac).await.expect("deleting weft's fdb entry");
        assert!(bridge_fdb("weft-vx0", "02:00:00:00:00:09").is_none());
        let e = k.del_fdb(vx, fdb.mac).await.expect_err("deleting it twice");
        assert_eq!(errno(&e), Some(nix::libc::ENOENT), "{e:#}");

        // WireGuard: created where the kernel has it, a clear error where it does not.
        match k.add_wireguard("weft-wg0", 1420).await {
            Ok(i) => {
                let l = k.link_by_index(i).await.expect("lookup").expect("wireguard device listed");
                assert_eq!(l.kind.as_deref(), Some("wireguard"));
            }
            Err(e) => {
                assert_eq!(errno(&e), Some(nix::libc::EOPNOTSUPP), "{e:#}");
                assert!(format!("{e:#}").contains("no WireGuard"), "{e:#}");
            }
        }

        // Deleting the device takes weft's remaining state on it along.
        k.del_link(vx).await.expect("deleting the vxlan device");
        assert!(k.link("weft-vx0").await.expect("lookup").is_none());
    });
}

#[test]
fn ipv6_address_routes_neighbour_and_fdb_entry_beside_ipv4_ones() {
    require_root();
    let _guard = NsGuard(vec![NS6.to_string()]);
    weft_agent::netns::remove(NS6).expect("clearing a leftover namespace");
    weft_agent::netns::ensure(NS6).expect("creating the test namespace");
    ip6_in(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    ip6_in(&["link", "set", "eth0p", "up"]);
    ip6_in(&["link", "set", "eth0", "up"]);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let k = Netlink::open_in(NS6).expect("netlink in the test namespace");
        let eth0 = k.link("eth0").await.expect("lookup").expect("eth0").index;

        // Addresses of both families through the same calls; IPv6 ones skip DAD, so they are
        // usable (e.g. as a route's source) at once.
        for a in ["172.31.0.1/24", "fd00:31::1/64"] {
            k.add_addr(eth0, net(a)).await.unwrap_or_else(|e| panic!("adding {a}: {e:#}"));
            k.add_addr(eth0, net(a)).await.unwrap_or_else(|e| panic!("adding {a} again: {e:#}"));
        }
        let listed = k.addrs(eth0).await.expect("listing addresses");
        assert!(listed.contains(&net("172.31.0.1/24")) && listed.contains(&net("fd00:31::1/64")), "{listed:?}");
        let shown = json(&ip6_in(&["-j", "-6", "addr", "show", "dev", "eth0"]));
        let info = shown[0]["addr_info"].as_array().cloned().unwrap_or_default();
        let ours = info.iter().find(|a| a["local"] == "fd00:31::1").expect("ip sees the IPv6 address");
        assert_eq!(ours["prefixlen"], 64, "{ours}");
        assert_eq!(ours["nodad"], true, "{ours}");
        assert!(ours.get("tentative").is_none(), "{ours}");

        // weft's IPv6 neighbour entry beside a foreign one, with the ownership mark.
        ip6_in(&["-6", "neigh", "add", "fd00:31::8", "lladdr", "02:00:00:00:00:08", "dev", "eth0"]);
        let nb = Neighbour { ifindex: eth0, ip: addr("fd00:31::a"), mac: mac("02:00:00:00:00:0a") };
        k.add_neighbour(&nb).await.expect("adding weft's IPv6 neighbour");
        let e = k.add_neighbour(&nb).await.expect_err("exclusive add of an existing entry");
        assert_eq!(errno(&e), Some(nix::libc::EEXIST), "{e:#}");
        let listed = k.neighbours(eth0).await.expect("listing neighbours");
        let owner_of = |ip: &str| listed.iter().find(|l| l.entry.ip == addr(ip)).map(|l| (l.owner, l.entry.mac));
        assert_eq!(owner_of("fd00:31::a"), Some((Owner::Weft, mac("02:00:00:00:00:0a"))), "{listed:?}");
        assert_eq!(owner_of("fd00:31::8"), Some((Owner::Other, mac("02:00:00:00:00:08"))), "{listed:?}");
        let seen = ip6_neigh("eth0", "fd00:31::a").expect("ip sees weft's entry");
        assert_eq!(seen["protocol"], "213", "{seen}");
        assert_eq!(seen["state"], serde_json::json!(["PERMANENT"]), "{seen}");
        k.replace_neighbour(&Neighbour { mac: mac("02:00:00:00:00:1a"), ..nb.clone() }).await.expect("replacing it");
        assert_eq!(ip6_neigh("eth0", "fd00:31::a").expect("still there")["lladdr"], "02:00:00:00:00:1a");
        let foreign = Neighbour { ifindex: eth0, ip: addr("fd00:31::8"), mac: mac("02:00:00:00:00:aa") };
        let e = k.replace_neighbour(&foreign).await.expect_err("a foreign entry is not replaced");
        assert!(e.downcast_ref::<NotOurs>().is_some(), "{e:#}");
        let e = k.del_neighbour(eth0, foreign.ip).await.expect_err("a foreign entry is not deleted");
        assert!(e.downcast_ref::<NotOurs>().is_some(), "{e:#}");
        k.del_neighbour(eth0, nb.ip).await.expect("deleting weft's IPv6 neighbour");
        assert!(ip6_neigh("eth0", "fd00:31::a").is_none());
        assert!(ip6_neigh("eth0", "fd00:31::8").is_some(), "the foreign entry stays");

        // Routes of both families in one plan: what weft writes reads back as written (IPv6's
        // default metric 1024 and its blackholes on lo included), so a second plan is empty.
        ip6_in(&["-6", "route", "add", "fd00:46::/64", "via", "fd00:31::7", "dev", "eth0"]);
        let unicast = |dst: &str, via: Option<&str>, src: Option<&str>| Route {
            dst: net(dst),
            kind: RouteKind::Unicast,
            via: via.map(addr),
            oif: Some(eth0),
            src: src.map(addr),
            metric: 0,
            onlink: false,
        };
        let desired = vec![
            unicast("10.244.9.0/24", Some("172.31.0.9"), None),
            unicast("fd00:44::/64", Some("fd00:31::9"), None),
            unicast("fd00:45::/64", None, Some("fd00:31::1")),
            // vxlan's routes: via a gateway no prefix of the device covers.
            Route { onlink: true, ..unicast("10.244.8.0/24", Some("10.244.8.0"), None) },
            Route { onlink: true, ..unicast("fd00:47::/64", Some("fd00:47::"), None) },
            Route {
                dst: net("fd00:40::/48"),
                kind: RouteKind::Blackhole,
                via: None,
                oif: None,
                src: None,
                metric: 4_000_000_000,
                onlink: false,
            },
        ];
        assert!(k.weft_routes().await.expect("listing routes").is_empty(), "the foreign route is not weft's");
        for a in routes::plan(&desired, &[]) {
            k.apply(&a).await.unwrap_or_else(|e| panic!("{a:?}: {e:#}"));
        }
        let mut listed = k.weft_routes().await.expect("listing routes");
        listed.sort();
        let mut want = desired.clone();
        want.sort();
        assert_eq!(listed, want);
        assert!(routes::plan(&desired, &listed).is_empty(), "in sync after one pass");
        let r = ip6_routes("fd00:44::/64");
        assert_eq!(
            (r.len(), &r[0]["gateway"], &r[0]["protocol"]),
            (1, &Value::from("fd00:31::9"), &Value::from("213")),
            "{r:?}"
        );
        assert_eq!(ip6_routes("fd00:45::/64")[0]["prefsrc"], "fd00:31::1");
        assert_eq!(ip6_routes("fd00:40::/48")[0]["type"], "blackhole");
        let v4 = json(&ip6_in(&["-j", "route", "show", "10.244.9.0/24"]));
        assert_eq!(v4[0]["gateway"], "172.31.0.9", "{v4}");

        // A changed gateway is replaced in place: still one route, no IPv6 multipath sibling.
        let mut moved = desired.clone();
        moved[1].via = Some(addr("fd00:31::19"));
        let actions = routes::plan(&moved, &listed);
        assert_eq!(actions, vec![Action::Replace { old: desired[1].clone(), new: moved[1].clone() }]);
        k.apply(&actions[0]).await.expect("replacing the IPv6 route");
        let r = ip6_routes("fd00:44::/64");
        assert_eq!((r.len(), &r[0]["gateway"]), (1, &Value::from("fd00:31::19")), "{r:?}");
        assert!(r[0].get("nexthops").is_none(), "{r:?}");

        // A route mixing families is refused before anything is sent.
        let mixed = unicast("10.244.8.0/24", Some("fd00:31::9"), None);
        let e = k.apply(&Action::Add(mixed)).await.expect_err("a v6 gateway on a v4 route");
        assert!(e.downcast_ref::<MixedFamily>().is_some(), "{e:#}");

        // Leaving deletes weft's routes of both families; the foreign one stays.
        for a in routes::plan(&[], &k.weft_routes().await.expect("listing routes")) {
            k.apply(&a).await.unwrap_or_else(|e| panic!("{a:?}: {e:#}"));
        }
        assert!(k.weft_routes().await.expect("listing routes").is_empty());
        assert_eq!(ip6_routes("fd00:46::/64").len(), 1, "the foreign IPv6 route stays");

        // The default route per family.
        assert_eq!(k.default_route_oif(Family::V6).await.expect("lookup"), None);
        k.replace_default_route(addr("fe80::1"), eth0).await.expect("an IPv6 default route");
        assert_eq!(k.default_route_oif(Family::V6).await.expect("lookup"), Some(eth0));
        assert_eq!(k.default_route_oif(Family::V4).await.expect("lookup"), None, "no IPv4 default here");

        // An FDB entry with an IPv6 underlay destination, on a vxlan device with an IPv6 source.
        let spec =
            Vxlan { vni: 43, port: 4789, local: Some(addr("fd00:31::1")), underlay: Some(eth0), learning: false };
        let vx = k.add_vxlan("weft-vx6", 1430, &spec).await.expect("creating an IPv6 vxlan device");
        let link = k.link_by_index(vx).await.expect("lookup").expect("listed");
        assert_eq!(link.vxlan.as_ref(), Some(&spec), "the kernel reports what was asked");
        let fdb = Fdb { ifindex: vx, mac: mac("02:00:00:00:00:09"), dst: addr("fd00:31::9") };
        k.add_fdb(&fdb).await.expect("adding weft's fdb entry");
        let listed = k.fdb(vx).await.expect("listing fdb");
        let found = listed.iter().find(|l| l.entry.mac == fdb.mac).map(|l| (l.owner, l.entry.dst));
        assert_eq!(found, Some((Owner::Weft, addr("fd00:31::9"))), "{listed:?}");
        let all = json(&run_in("bridge", NS6, &["-j", "fdb", "show", "dev", "weft-vx6"]));
        let seen = all.as_array().and_then(|a| a.iter().find(|n| n["mac"] == "02:00:00:00:00:09")).cloned();
        let seen = seen.expect("bridge sees weft's entry");
        assert_eq!(seen["dst"], "fd00:31::9", "{seen}");
        assert!(seen["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "extern_learn")), "{seen}");
        k.del_fdb(vx, fdb.mac).await.expect("deleting weft's fdb entry");
        assert!(k.fdb(vx).await.expect("listing fdb").iter().all(|l| l.entry.mac != fdb.mac));
    });
}

/// The agent's reachability probe over both families: ICMPv4 and ICMPv6 echo from one
/// namespace to another over a veth pair; an address nobody holds and a target of the other
/// family stay unanswered.
#[test]
fn probe_rounds_of_both_families_answer_only_real_peers() {
    const A: &str = "weftkt-probe-a";
    const B: &str = "weftkt-probe-b";
    require_root();
    let _guard = NsGuard(vec![A.to_string(), B.to_string()]);
    for ns in [A, B] {
        weft_agent::netns::remove(ns).expect("clearing a leftover namespace");
        weft_agent::netns::ensure(ns).expect("creating the test namespace");
    }
    run_in("ip", A, &["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", B]);
    for (ns, v4, v6) in [(A, "10.99.0.1/24", "fd00:99::1/64"), (B, "10.99.0.2/24", "fd00:99::2/64")] {
        run_in("ip", ns, &["addr", "add", v4, "dev", "eth0"]);
        run_in("ip", ns, &["addr", "add", v6, "dev", "eth0", "nodad"]);
        run_in("ip", ns, &["link", "set", "eth0", "up"]);
        run_in("ip", ns, &["link", "set", "lo", "up"]);
    }
    // A new link's first IPv6 packets can go before neighbour discovery works (the agent
    // probes every few seconds anyway): rounds repeat until the peer answered, at most five.
    let timeout = std::time::Duration::from_millis(500);
    let rounds = |src: &str, targets: &[&str]| {
        let targets: Vec<IpAddr> = targets.iter().map(|t| addr(t)).collect();
        let mut answered = Vec::new();
        for _ in 0..5 {
            let got = weft_lab::in_netns(A, || weft_agent::probe::round(addr(src), &targets, timeout))
                .expect("entering the test namespace")
                .unwrap_or_else(|e| panic!("a round from {src}: {e}"));
            assert!(got.values().all(|rtt| *rtt < timeout), "{got:?}");
            answered.extend(got.into_keys());
            if !answered.is_empty() {
                break;
            }
        }
        answered
    };
    assert_eq!(rounds("10.99.0.1", &["10.99.0.2", "10.99.0.3", "fd00:99::2"]), vec![addr("10.99.0.2")]);
    assert_eq!(rounds("fd00:99::1", &["fd00:99::2", "fd00:99::3", "10.99.0.2"]), vec![addr("fd00:99::2")]);
}
