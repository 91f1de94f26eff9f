//! Unit tests of a node running the wireguard backend on `MemStore` + `FakeKernel`: a kernel
//! without WireGuard is refused before anything is claimed or published, with the reason in the
//! status; a kernel with it gets the device, the key file and the public key in the record.

use super::*;

fn wireguard_world() -> World {
    let net = NetworkConfig::new("test", CIDR, 24, Backend::WireGuard).expect("net");
    World::with_net(MemStore::new(), &net)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_without_wireguard_is_refused_before_a_subnet_is_claimed() {
    let w = wireguard_world();
    let _ = w.nl.clone().without_wireguard();
    let (mut d, h) = w.daemon();
    assert!(tokio::time::timeout(Duration::from_millis(500), d.start()).await.is_err(), "keeps waiting, no exit");
    let st = status(&h);
    assert_eq!(
        st.last_error.as_deref(),
        Some(
            "the wireguard backend cannot run on this node: this kernel has no WireGuard: the `wireguard` kernel \
             module is not loaded and could not be loaded (load it with `modprobe wireguard` on the host, or use \
             another backend: vxlan or quic)"
        )
    );
    assert!(!st.ready && st.subnet.is_none());
    let (records, _) = w.store().list(&Keys::new("lab").subnet_records_prefix(&PerFamily::V4(()))).await.expect("list");
    assert!(records.is_empty(), "no record published: {records:?}");
    assert!(!w.path("state/wireguard.key").exists(), "no key made for a backend that cannot run");
    assert!(w.nl.links().iter().all(|l| l.name != "weft-wg0"), "no device");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_publishes_its_public_key_and_holds_its_device() {
    let w = wireguard_world();
    let (mut d, h) = w.started().await;
    let subnet = node(&mut d).subnet;
    let raw = w.get(&Keys::new("lab").subnet(subnet)).expect("own record");
    let rec = SubnetRecord::from_json("k", &raw).expect("valid record");
    assert_eq!(rec.backend, Backend::WireGuard);
    let key_text = std::fs::read_to_string(w.path("state/wireguard.key")).expect("key file in the state dir");
    let private = crate::kernel::wireguard::decode_key(&key_text).expect("a key");
    let public = crate::backend::wireguard::public_key(&private);
    assert_eq!(
        rec.backend_data.get("wireguard"),
        Some(&serde_json::json!({
            "public_key": crate::kernel::wireguard::encode_key(&public),
            "port": 51820
        }))
    );
    let dev = w.nl.links().into_iter().find(|l| l.name == "weft-wg0").expect("device");
    assert_eq!((dev.mtu, dev.up), (1440, true));
    assert_eq!(status(&h).backend.as_deref(), Some("wireguard"));
}
