//! Unit tests of the Docker plugin's node side on `MemStore` + `FakeKernel`: each call goes
//! through the protocol's parsing and the daemon's handler, as from the socket. Docker's
//! addresses come from the pods' allocator and never collide with a pod's; the gateway is the
//! bridge's; repeated requests are idempotent; Join makes the veth on the bridge and Leave
//! removes it; reconciles only re-attach; a restart keeps everything; unknown endpoints are
//! released without complaint.

use super::*;
use crate::docker::protocol::{self, Method, Route};
use crate::kernel::fake::Call as KCall;
use serde_json::{json, Value};

const EP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const UNKNOWN: &str = "aaaaaaaaaaaabbbbbbbbbbbbccccccccccccddddddddddddeeeeeeeeeeeeffff";

/// One plugin call, parsed from `body` as the socket would, answered by the running node.
async fn docker(d: &mut TestDaemon, method: Method, body: Value) -> Result<Value, String> {
    let bytes = serde_json::to_vec(&body).expect("json");
    let call = match protocol::route(method, &bytes).map_err(|e| e.to_string())? {
        Route::Answer(v) => return Ok(v),
        Route::Node(call) => call,
    };
    let Phase::Running(node) = &mut d.phase else { panic!("daemon is not running") };
    node.docker_call(&d.ctx, call).await
}

async fn api(d: &mut TestDaemon, req: Request) -> Response {
    let Phase::Running(node) = &mut d.phase else { panic!("daemon is not running") };
    node.handle(&d.ctx, req).await
}

fn address(pool: &str, addr: &str) -> Value {
    json!({"PoolID": pool, "Address": addr, "Options": {}})
}

fn endpoint(id: &str) -> Value {
    json!({"NetworkID": "net1", "EndpointID": id})
}

/// n1 with the config pod p1 (10.244.0.2).
fn world() -> World {
    let mut w = World::new(CIDR);
    w.extra = "[[pods]]\nname = \"p1\"\nnetns = \"ns-p1\"\n".into();
    w
}

fn link(w: &World, name: &str) -> Option<crate::kernel::Link> {
    w.nl.links().into_iter().find(|l| l.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_addresses_come_from_the_pods_allocator_and_survive_a_restart() {
    let w = world();
    let (mut d, _h) = w.started().await;
    let bridge = link(&w, "weft0").expect("bridge").index;

    let pool = docker(&mut d, Method::RequestPool, json!({"AddressSpace": "weft-local", "Pool": "", "V6": false}))
        .await
        .expect("pool");
    assert_eq!(pool, json!({"PoolID": "10.244.0.0/24", "Pool": "0.0.0.0/0", "Data": {}}));
    let asked = json!({"Pool": "10.244.0.0/24", "V6": false});
    let pool = docker(&mut d, Method::RequestPool, asked).await.expect("pool");
    assert_eq!(pool, json!({"PoolID": "10.244.0.0/24", "Pool": "10.244.0.0/24", "Data": {}}));
    let e = docker(&mut d, Method::RequestPool, json!({"V6": true})).await.expect_err("no IPv6 here");
    assert_eq!(e, "this node holds no IPv6 subnet (the weft network has no IPv6 pool)");
    let gw = json!({"PoolID": "10.244.0.0/24", "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}});
    assert_eq!(docker(&mut d, Method::RequestAddress, gw).await, Ok(json!({"Address": "10.244.0.1/24", "Data": {}})));
    let net = json!({"NetworkID": "net1", "IPv4Data": [{"AddressSpace": "weft-local", "Pool": "0.0.0.0/0", "Gateway": "10.244.0.1/24"}], "IPv6Data": [], "Options": {}});
    assert_eq!(docker(&mut d, Method::CreateNetwork, net).await, Ok(json!({})));
    let foreign = json!({"NetworkID": "net2", "IPv4Data": [{"Pool": "172.18.0.0/16"}]});
    let e = docker(&mut d, Method::CreateNetwork, foreign).await.expect_err("not weft's pool");
    assert!(e.contains("--ipam-driver weft"), "{e}");

    // The pod p1 holds .2: Docker gets .3, and may not have .2.
    let a = docker(&mut d, Method::RequestAddress, address("10.244.0.0/24", "")).await.expect("address");
    assert_eq!(a["Address"], "10.244.0.3/24");
    let e = docker(&mut d, Method::RequestAddress, address("10.244.0.0/24", "10.244.0.2")).await.expect_err("p1's");
    assert_eq!(e, "10.244.0.2 belongs to weft pod p1");
    // Asked again for its own address (Docker's restart replays): the same answer.
    assert_eq!(docker(&mut d, Method::RequestAddress, address("10.244.0.0/24", "10.244.0.3/24")).await, Ok(a.clone()));

    let create = json!({"NetworkID": "net1", "EndpointID": EP, "Interface": {"Address": "10.244.0.3/24", "AddressIPv6": "", "MacAddress": ""}, "Options": {}});
    let mac = json!({"Interface": {"MacAddress": "02:42:0a:f4:00:03"}});
    assert_eq!(docker(&mut d, Method::CreateEndpoint, create.clone()).await, Ok(mac.clone()), "a MAC from the address");
    assert_eq!(docker(&mut d, Method::CreateEndpoint, create.clone()).await, Ok(mac), "idempotent");
    let mut own_mac = create.clone();
    own_mac["Interface"]["MacAddress"] = json!("02:00:00:00:00:01");
    assert_eq!(
        docker(&mut d, Method::CreateEndpoint, own_mac).await,
        Ok(json!({})),
        "Docker's own MAC is not answered"
    );
    w.nl.take_calls();
    let join =
        json!({"NetworkID": "net1", "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/0f1e", "Options": {}});
    let joined = docker(&mut d, Method::Join, join.clone()).await.expect("join");
    assert_eq!(
        joined,
        json!({"InterfaceName": {"SrcName": "wca8ae6e6ee929", "DstPrefix": "eth"}, "Gateway": "10.244.0.1", "StaticRoutes": []})
    );
    let host = link(&w, "wda8ae6e6ee929").expect("host veth");
    assert_eq!((host.controller, host.up, host.mtu), (Some(bridge), true, 1500));
    let peer = link(&w, "wca8ae6e6ee929").expect("the end Docker moves into the sandbox");
    assert_eq!((peer.mtu, peer.controller), (1500, None));

    // Listed as a pod with source docker; its address is not given to a new pod; not deletable.
    let Response::Pods { pods } = api(&mut d, Request::PodList).await else { panic!("pod list") };
    let dp = pods.iter().find(|p| p.name == "docker-0123456789ab").expect("docker pod listed");
    assert_eq!(
        (dp.source.as_str(), dp.netns.as_str(), dp.ifname.as_str()),
        ("docker", "/var/run/docker/netns/0f1e", "eth0")
    );
    assert_eq!(dp.ip, Some("10.244.0.3".parse().expect("ip")));
    let add = Request::PodAdd { name: "p2".into(), netns: None, ifname: None, netns_path: None, dns: None };
    let Response::Pod(p2) = api(&mut d, add).await else { panic!("pod add") };
    assert_eq!(p2.ip, Some("10.244.0.4".parse().expect("ip")), "skips Docker's .3");
    let Response::Error { message } = api(&mut d, Request::PodDel { name: "docker-0123456789ab".into() }).await else {
        panic!("docker pods are not deleted through weft")
    };
    assert_eq!(message, "pod docker-0123456789ab is a Docker container's endpoint; remove the container with docker");

    // A full reconcile leaves the endpoint alone, and puts its veth back when it came off.
    w.nl.take_calls();
    full(&mut d).await;
    let calls = w.nl.take_calls();
    assert!(
        !calls
            .iter()
            .any(|(_, c)| matches!(c, KCall::SetLink { index, .. } | KCall::DelLink(index) if *index == host.index)),
        "{calls:?}"
    );
    let nl = w.nl.clone();
    nl.set_link(host.index, None, false, None).await.expect("down");
    full(&mut d).await;
    let again = link(&w, "wda8ae6e6ee929").expect("still there");
    assert!(again.up && again.controller == Some(bridge), "{again:?}");

    // An agent restart keeps the endpoint, its address and its veth.
    assert!(w.path("state/docker.json").exists());
    drop(d);
    let (mut d, _h) = w.started().await;
    let Response::Pods { pods } = api(&mut d, Request::PodList).await else { panic!("pod list") };
    assert!(pods.iter().any(|p| p.name == "docker-0123456789ab" && p.source == "docker"), "{pods:?}");
    assert_eq!(link(&w, "wda8ae6e6ee929").map(|l| l.index), Some(host.index), "the veth is kept");
    let next = docker(&mut d, Method::RequestAddress, address("10.244.0.0/24", "")).await.expect("address");
    assert_eq!(next["Address"], "10.244.0.5/24", "neither p1, Docker's .3 nor p2");

    // docker rm: Leave, DeleteEndpoint, ReleaseAddress; everything comes back.
    assert_eq!(docker(&mut d, Method::Leave, endpoint(EP)).await, Ok(json!({})));
    assert!(link(&w, "wda8ae6e6ee929").is_none() && link(&w, "wca8ae6e6ee929").is_none());
    assert_eq!(docker(&mut d, Method::DeleteEndpoint, endpoint(EP)).await, Ok(json!({})));
    for addr in ["10.244.0.3/24", "10.244.0.5/24", "10.244.0.1/24"] {
        let rel = json!({"PoolID": "10.244.0.0/24", "Address": addr});
        assert_eq!(docker(&mut d, Method::ReleaseAddress, rel).await, Ok(json!({})));
    }
    assert_eq!(docker(&mut d, Method::ReleasePool, json!({"PoolID": "10.244.0.0/24"})).await, Ok(json!({})));
    assert_eq!(docker(&mut d, Method::DeleteNetwork, json!({"NetworkID": "net1"})).await, Ok(json!({})));
    let Response::Pods { pods } = api(&mut d, Request::PodList).await else { panic!("pod list") };
    assert!(!pods.iter().any(|p| p.source == "docker"), "{pods:?}");
    let freed = docker(&mut d, Method::RequestAddress, address("10.244.0.0/24", "")).await.expect("address");
    assert_eq!(freed["Address"], "10.244.0.3/24", "released addresses are free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_docker_cleans_up_endpoints_the_agent_may_not_know() {
    let w = world();
    let (mut d, _h) = w.started().await;
    // Stale endpoints Docker cleans up after its own restart: unknown ones are fine.
    assert_eq!(docker(&mut d, Method::Leave, endpoint(UNKNOWN)).await, Ok(json!({})));
    assert_eq!(docker(&mut d, Method::DeleteEndpoint, endpoint(UNKNOWN)).await, Ok(json!({})));
    let rel = json!({"PoolID": "10.244.0.0/24", "Address": "10.244.0.77/24"});
    assert_eq!(docker(&mut d, Method::ReleaseAddress, rel).await, Ok(json!({})));
    // A Join for an endpoint never created is an error, and makes nothing.
    let join = json!({"NetworkID": "n", "EndpointID": UNKNOWN, "SandboxKey": "/x"});
    assert_eq!(docker(&mut d, Method::Join, join).await, Err(format!("unknown endpoint {UNKNOWN}")));
    assert!(link(&w, "wd00f6bdf50b1c").is_none());
    // A pool id from before a subnet change is refused rather than mis-allocated.
    let e = docker(&mut d, Method::RequestAddress, address("10.244.7.0/24", "")).await.expect_err("stale pool");
    assert!(e.starts_with("pool \"10.244.7.0/24\" is not one of this node's subnets"), "{e}");
    // Malformed bodies never reach the node.
    let e = docker(&mut d, Method::CreateEndpoint, json!({"EndpointID": 7})).await.expect_err("malformed");
    assert!(e.starts_with("malformed NetworkDriver.CreateEndpoint request: "), "{e}");
    assert!(!w.path("state/docker.json").exists(), "nothing changed, nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_calls_wait_for_the_running_node_and_a_failed_join_leaves_no_veth() {
    let w = world();
    // etcd is away at first: the node cannot run yet.
    w.host.unreachable.store(true, std::sync::atomic::Ordering::SeqCst);
    let (d, h) = w.daemon();
    let node_call = |method: Method, body: &[u8]| match protocol::route(method, body).expect("parse") {
        Route::Node(c) => c,
        Route::Answer(_) => panic!("a node call"),
    };
    let test = async {
        // Given up on before the node runs (the plugin answered Docker "not ready"): it must
        // never run, not even once the node is up.
        let create = format!(r#"{{"NetworkID":"n","EndpointID":"{EP}","Interface":{{"Address":"10.244.0.9/24"}}}}"#);
        let (cmd, pending) = plugin::Command::new(node_call(Method::CreateEndpoint, create.as_bytes()));
        h.docker.send(cmd).await.expect("send");
        assert!(pending.answer(Duration::from_millis(50)).await.is_none(), "given up on");
        w.host.unreachable.store(false, std::sync::atomic::Ordering::SeqCst);
        // Sent before the node is up: answered once it runs (after the one given up on).
        let (cmd, pending) = plugin::Command::new(node_call(Method::RequestPool, br#"{"V6":false}"#));
        h.docker.send(cmd).await.expect("send");
        let r = pending.answer(Duration::from_secs(10)).await.expect("answered in time");
        assert_eq!(r.expect("pool")["PoolID"], "10.244.0.0/24");
        let (tx, rx) = tokio::sync::oneshot::channel();
        h.commands.send((Request::PodList, tx)).await.expect("send");
        let Response::Pods { pods } = rx.await.expect("pod list") else { panic!("pod list") };
        assert!(!pods.iter().any(|p| p.source == "docker"), "the given-up CreateEndpoint ran: {pods:?}");
        assert!(!w.path("state/docker.json").exists(), "nothing of it was saved");
        h.stop.send(()).await.expect("stop");
    };
    let (exit, ()) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(d.run(), test) }).await.expect("stops");
    assert!(matches!(exit.expect("run"), Exit::Signal));

    let (mut d, _h) = w.started().await;
    let create = json!({"NetworkID": "n", "EndpointID": EP, "Interface": {"Address": "10.244.0.9/24"}});
    docker(&mut d, Method::CreateEndpoint, create).await.expect("create");
    w.nl.fail_next(|c| matches!(c, KCall::SetLink { .. }), libc::EBUSY);
    let join = json!({"NetworkID": "n", "EndpointID": EP, "SandboxKey": "/x"});
    let e = docker(&mut d, Method::Join, join.clone()).await.expect_err("kernel failure");
    assert!(e.starts_with("attaching wda8ae6e6ee929 to the bridge"), "{e}");
    assert!(link(&w, "wda8ae6e6ee929").is_none() && link(&w, "wca8ae6e6ee929").is_none(), "undone");
    let Response::Pods { pods } = api(&mut d, Request::PodList).await else { panic!("pod list") };
    assert_eq!(pods.iter().find(|p| p.source == "docker").map(|p| p.netns.as_str()), Some("-"), "not joined");
    // Docker retries: the second Join works.
    docker(&mut d, Method::Join, join).await.expect("join");
    assert!(link(&w, "wda8ae6e6ee929").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_file_outlives_a_stop_and_goes_with_a_leave() {
    let mut w = world();
    let (socket, spec) = (w.path("docker/plugin.sock"), w.path("docker/plugins/weft.spec"));
    w.extra = format!("[docker]\nsocket = \"{}\"\nspec_file = \"{}\"\n{}", socket.display(), spec.display(), w.extra);
    // The test host serves no plugin: the files stand for what the real one writes.
    let plant = || {
        std::fs::create_dir_all(spec.parent().expect("dir")).expect("mkdir");
        std::fs::write(&spec, format!("unix://{}\n", socket.display())).expect("spec");
        std::fs::write(&socket, b"").expect("socket");
    };
    /// Runs a daemon until `req` (sent once it is running) or a stop ends it.
    async fn run_until(w: &World, req: Option<Request>) -> Exit {
        let (d, h) = w.daemon();
        let test = async {
            loop {
                let (tx, rx) = tokio::sync::oneshot::channel();
                h.commands.send((Request::PodList, tx)).await.expect("send");
                if matches!(rx.await.expect("reply"), Response::Pods { .. }) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            match req {
                Some(req) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    h.commands.send((req, tx)).await.expect("send");
                    assert!(matches!(rx.await.expect("reply"), Response::Done));
                }
                None => h.stop.send(()).await.expect("stop"),
            }
        };
        let (exit, ()) =
            tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(d.run(), test) }).await.expect("ends");
        exit.expect("run")
    }

    // SIGTERM: Docker's restore at boot gives up on a plugin without a spec file, so it stays.
    plant();
    assert!(matches!(run_until(&w, None).await, Exit::Signal));
    assert!(spec.exists(), "a stop keeps the spec file");
    assert!(!socket.exists(), "the socket goes");
    // Leaving the network: the plugin goes for good.
    plant();
    assert!(matches!(run_until(&w, Some(Request::Leave)).await, Exit::Left));
    assert!(!spec.exists() && !socket.exists(), "a leave removes both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_weft_network_is_refused_and_a_join_not_saved_leaves_no_veth() {
    let w = world();
    let (mut d, _h) = w.started().await;
    let net = |id: &str| json!({"NetworkID": id, "IPv4Data": [{"Pool": "10.244.0.0/24", "Gateway": "10.244.0.1/24"}]});
    assert_eq!(docker(&mut d, Method::CreateNetwork, net("net1")).await, Ok(json!({})));
    let create = json!({"NetworkID": "net1", "EndpointID": EP, "Interface": {"Address": "10.244.0.9/24"}});
    docker(&mut d, Method::CreateEndpoint, create).await.expect("create");
    // Two networks on weft would give a container on both two interfaces in one subnet.
    let e = docker(&mut d, Method::CreateNetwork, net("net2")).await.expect_err("a second weft network");
    assert!(e.starts_with("this node already has a weft network (net1, with containers)"), "{e}");
    let other = json!({"NetworkID": "net2", "EndpointID": UNKNOWN, "Interface": {"Address": "10.244.0.10/24"}});
    let e = docker(&mut d, Method::CreateEndpoint, other).await.expect_err("not the node's network");
    assert_eq!(e, "network net2 is not this node's weft network (net1); use that one");
    let kept = std::fs::read_to_string(w.path("state/docker.json")).expect("saved");
    assert!(kept.contains("\"network\": \"net1\"") || kept.contains("\"network\":\"net1\""), "{kept}");

    // A Join whose state cannot be saved is not done: Docker hears an error, and no veth stays.
    std::fs::remove_file(w.path("state/docker.json")).expect("rm");
    std::fs::create_dir_all(w.path("state/docker.json/blocked")).expect("mkdir");
    let join = json!({"NetworkID": "net1", "EndpointID": EP, "SandboxKey": "/x"});
    let e = docker(&mut d, Method::Join, join.clone()).await.expect_err("not saved");
    assert!(e.contains("docker.json"), "{e}");
    let (host, peer) = crate::docker::book::veth_names(EP);
    assert!(link(&w, &host).is_none() && link(&w, &peer).is_none(), "the veth of a Join not saved is removed");
    let Response::Pods { pods } = api(&mut d, Request::PodList).await else { panic!("pod list") };
    assert_eq!(pods.iter().find(|p| p.source == "docker").map(|p| p.netns.as_str()), Some("-"), "not joined");
    // Once the state dir is writable again, Docker's retry works.
    std::fs::remove_dir_all(w.path("state/docker.json")).expect("rm");
    docker(&mut d, Method::Join, join).await.expect("join");
    assert!(link(&w, &host).is_some());
}
