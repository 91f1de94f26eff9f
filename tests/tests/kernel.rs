//! The real `Kernel` (netlink) on the operations the next backends need: a vxlan device,
//! weft-owned neighbour and FDB entries beside foreign ones made with `ip neigh`/`bridge fdb`,
//! and the WireGuard kind. Everything happens in namespaces this test makes and its guard
//! removes, also when an assertion fails.

use serde_json::Value;
use std::net::IpAddr;
use std::process::Command;
use weft_agent::kernel::{errno, Fdb, Kernel, Mac, Neighbour, Netlink, NotOurs, Owner, Vxlan};
use weft_tests::ops::NsGuard;
use weft_tests::require_root;

const NS: &str = "weftkt-kernel";

fn ip_in(args: &[&str]) -> String {
    let out = Command::new("ip").args(["-n", NS]).args(args).output().expect("running ip");
    assert!(out.status.success(), "ip -n {NS} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bridge_in(args: &[&str]) -> String {
    let out = Command::new("bridge").args(["-n", NS]).args(args).output().expect("running bridge");
    assert!(out.status.success(), "bridge -n {NS} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// `ip -j neigh show dev DEV` entry for `dst`, if any.
fn ip_neigh(dev: &str, dst: &str) -> Option<Value> {
    let all = json(&ip_in(&["-j", "neigh", "show", "dev", dev]));
    all.as_array()?.iter().find(|n| n["dst"] == dst).cloned()
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
