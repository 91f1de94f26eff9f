//! Unit tests of the daemon on `MemStore`, `FakeKernel` and a recording firewall runner: the
//! real lifecycle code (acquire, restart, take-over, reconcile, leave, etcd outage), run as an
//! ordinary user in a temporary directory.

use super::*;
use crate::firewall::FirewallError;
use crate::kernel::fake::FakeKernel;
use crate::routes::{Route, RouteKind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use weft_config::{Backend, Heartbeat, SubnetRecord};
use weft_store::MemStore;

type TestDaemon = Daemon<FakeKernel, MemStore, FakeRunner>;

/// Records every firewall command; answers listings with an empty, valid ruleset.
#[derive(Clone, Default)]
struct FakeRunner(Arc<Mutex<Vec<String>>>);

impl FakeRunner {
    fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Runner for FakeRunner {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, FirewallError> {
        let line = format!("{program} {}", args.join(" "));
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line.clone());
        Ok(if line.ends_with("-t filter -S") {
            "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n".into()
        } else if line.ends_with("-t nat -S") {
            "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n".into()
        } else if line == "nft -j list chains" {
            r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]}"#.into()
        } else {
            String::new()
        })
    }
}

/// The host as a test sees it: the store (or an unreachable one), and what was asked of it.
#[derive(Default)]
struct TestHost {
    store: MemStore,
    unreachable: AtomicBool,
    forwarding: AtomicBool,
    /// The underlays IPv6 forwarding was turned on for (one entry per call).
    forwarding6: Mutex<Vec<String>>,
    ready: AtomicUsize,
}

impl Host<MemStore> for TestHost {
    fn connect(&self) -> BoxFuture<'static, Result<MemStore>> {
        let (store, down) = (self.store.clone(), self.unreachable.load(Ordering::SeqCst));
        Box::pin(async move {
            if down {
                bail!("connection refused");
            }
            Ok(store)
        })
    }
    fn enable_forwarding(&self) -> Result<()> {
        self.forwarding.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn enable_ipv6_forwarding(&self, underlay: &str) -> Result<()> {
        self.forwarding6.lock().unwrap_or_else(|p| p.into_inner()).push(underlay.to_string());
        Ok(())
    }
    fn spawn_services(
        &self,
        _: &Arc<RwLock<Status>>,
        _: &api::LiveQuic,
        _: mpsc::Sender<Command>,
        _: mpsc::Sender<plugin::Command>,
    ) -> Result<()> {
        Ok(())
    }
    fn ready(&self, _: &str) {
        self.ready.fetch_add(1, Ordering::SeqCst);
    }
    fn stopping(&self) {}
    fn spawn_probe(&self, _: MemStore, _: Arc<RwLock<Status>>) {}
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "weft-daemon-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            now_unix_ms()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One node's world: its directory, kernel, firewall runner and the shared store.
struct World {
    dir: TempDir,
    nl: FakeKernel,
    eth0: u32,
    runner: FakeRunner,
    host: Arc<TestHost>,
    /// Appended to the agent.toml of [`World::cfg`] (top-level keys, `[[pods]]`).
    extra: String,
}

const CIDR: &str = "10.244.0.0/16";

fn n(s: &str) -> IpNet {
    s.parse().expect("literal")
}

/// A prefix of the IPv4-only routes layer.
fn n4(s: &str) -> ipnet::Ipv4Net {
    s.parse().expect("literal")
}

impl World {
    /// Node n1 (identity id1) on 172.30.0.11/24, a host-gw network of `cidr` in the store.
    fn new(cidr: &str) -> Self {
        let store = MemStore::new();
        Self::with_store(store, cidr)
    }

    fn with_store(store: MemStore, cidr: &str) -> Self {
        let net = NetworkConfig::new("test", cidr, 24, Backend::HostGw).expect("net");
        Self::with_net(store, &net)
    }

    /// Node n1 on 172.30.0.11/24, the network `net` in the store.
    fn with_net(store: MemStore, net: &NetworkConfig) -> Self {
        let nl = FakeKernel::new();
        let eth0 = nl.seed_link("eth0", "veth", 1500);
        nl.seed_address(eth0, "172.30.0.11/24".parse().expect("addr"));
        let w = Self {
            dir: TempDir::new(),
            nl,
            eth0,
            runner: FakeRunner::default(),
            host: Arc::new(TestHost::default()),
            extra: String::new(),
        };
        let w = Self { host: Arc::new(TestHost { store, ..TestHost::default() }), ..w };
        w.put(&Keys::new("lab").config(), net.to_json());
        w
    }

    fn store(&self) -> &MemStore {
        &self.host.store
    }

    fn put(&self, key: &str, value: String) {
        let s = self.store().clone();
        let key = key.to_string();
        futures::executor::block_on(async move { s.put(&key, value, 0).await }).expect("put");
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let s = self.store().clone();
        let key = key.to_string();
        futures::executor::block_on(async move { s.get(&key).await }).expect("get").map(|r| r.value)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    fn cfg(&self) -> AgentConfig {
        let d = self.dir.0.display();
        let text = format!(
            "node_name = \"n1\"\nnode_id = \"id1\"\nnetwork = \"lab\"\n{}[etcd]\nendpoints = [\"http://127.0.0.1:1\"]\n\
             [underlay]\ninterface = \"eth0\"\n[paths]\nstate_dir = \"{d}/state\"\nsubnet_env = \"{d}/subnet.env\"\n\
             socket = \"{d}/agent.sock\"\npid_file = \"{d}/agent.pid\"\nnetns_etc = \"{d}/netns-etc\"\n[metrics]\nenabled = false\n\
             [probes]\nenabled = false\n{}",
            self.extra.split_once("[[").map_or(self.extra.as_str(), |(top, _)| top),
            self.extra.split_once("[[").map_or(String::new(), |(_, tables)| format!("[[{tables}")),
        );
        AgentConfig::parse("agent.toml", &text).expect("config")
    }

    fn daemon(&self) -> (TestDaemon, Handle) {
        let host: Arc<dyn Host<MemStore>> = self.host.clone();
        let (d, h) =
            Daemon::with(self.cfg(), "id1".into(), self.nl.clone(), self.runner.clone(), host).expect("daemon");
        d.ctx.state.create().expect("state dir");
        (d, h)
    }

    /// A daemon through `start` (acquire, plumb, first list and reconcile).
    async fn started(&self) -> (TestDaemon, Handle) {
        let (mut d, h) = self.daemon();
        assert!(tokio::time::timeout(Duration::from_secs(10), d.start()).await.expect("start in time").is_ok());
        (d, h)
    }

    fn weft_routes(&self) -> Vec<Route> {
        self.nl.routes().into_iter().filter(|t| t.proto == crate::kernel::WEFT_PROTO).map(|t| t.route).collect()
    }

    fn bridge_addrs(&self) -> Option<Vec<IpNet>> {
        let b = self.nl.links().into_iter().find(|l| l.name == "weft0")?;
        let nl = self.nl.clone();
        Some(futures::executor::block_on(async move { nl.addrs(b.index).await }).expect("addrs"))
    }

    /// A peer's record as its agent writes it (with its own lease-less put).
    fn peer(&self, name: &str, subnet: &str, public_ip: &str) {
        self.put(&Keys::new("lab").subnet(n(subnet)), record(name, &format!("id-{name}"), public_ip).to_json());
    }

    fn route_via(&self, dst: &str, gw: &str) -> Route {
        Route {
            dst: n4(dst).into(),
            kind: RouteKind::Unicast,
            via: Some(gw.parse().expect("ip")),
            oif: Some(self.eth0),
            src: None,
            metric: 0,
            onlink: false,
        }
    }
}

use ipnet::IpNet;

fn record(node: &str, id: &str, public_ip: &str) -> SubnetRecord {
    SubnetRecord {
        schema: 1,
        node: node.into(),
        node_id: id.into(),
        public_ip: public_ip.parse().expect("ip"),
        public_ip6: None,
        backend: Backend::HostGw,
        epoch: 1,
        backend_data: Default::default(),
    }
}

fn node(d: &mut TestDaemon) -> &mut Node<FakeKernel, MemStore> {
    match &mut d.phase {
        Phase::Running(node) => node,
        _ => panic!("daemon is not running"),
    }
}

fn status(h: &Handle) -> Status {
    h.status.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Delivers the next watch message (within a second) to the daemon, as the loop does.
async fn pump(d: &mut TestDaemon) {
    let node = match &mut d.phase {
        Phase::Running(node) => node,
        _ => panic!("daemon is not running"),
    };
    let w = node.watch.as_mut().expect("watching");
    let msg = tokio::time::timeout(Duration::from_secs(1), w.next()).await.expect("a watch message");
    node.on_watch(&d.ctx, msg).await;
}

async fn full(d: &mut TestDaemon) {
    let Phase::Running(node) = &mut d.phase else { panic!("daemon is not running") };
    node.reconcile(&d.ctx, true).await;
}

async fn tick(d: &mut TestDaemon) {
    let Phase::Running(node) = &mut d.phase else { panic!("daemon is not running") };
    node.on_tick(&d.ctx).await;
}

fn subnet_key(s: &str) -> String {
    Keys::new("lab").subnet(n(s))
}

#[path = "backend_change_tests.rs"]
mod backend_change_tests;
#[path = "docker_tests.rs"]
mod docker_tests;
#[path = "dual_tests.rs"]
mod dual;

#[path = "dual_node_tests.rs"]
mod dual_node;

#[path = "dns_tests.rs"]
mod dns;

#[path = "wireguard_tests.rs"]
mod wireguard;

// ---- acquire ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_claims_the_lowest_free_subnet_and_plumbs_the_bridge() {
    let w = World::new(CIDR);
    w.peer("n2", "10.244.0.0/24", "172.30.0.12");
    let (mut d, h) = w.started().await;
    assert_eq!(node(&mut d).subnet, n("10.244.1.0/24"), "10.244.0.0/24 is taken by n2");
    let raw = w.get(&subnet_key("10.244.1.0/24")).expect("own record");
    let rec = SubnetRecord::from_json("k", &raw).expect("valid record");
    assert_eq!((rec.node.as_str(), rec.node_id.as_str(), rec.backend), ("n1", "id1", Backend::HostGw));
    assert_eq!(rec.public_ip.to_string(), "172.30.0.11");
    assert_eq!(w.bridge_addrs(), Some(vec!["10.244.1.1/24".parse().expect("addr")]));
    let st = status(&h);
    assert_eq!(st.subnet.as_deref(), Some("10.244.1.0/24"));
    assert!(st.ready && st.etcd_connected);
    assert_eq!(st.backend.as_deref(), Some("host-gw"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_attempts_share_one_lease_and_find_their_own_record_again() {
    let w = World::new(CIDR);
    let (d, _h) = w.daemon();
    let Daemon { ctx, .. } = &d;
    let store = w.store().clone();
    let u = acquire::underlay_info(ctx).await.expect("underlay");
    assert_eq!((u.name.as_str(), u.public_ip.to_string().as_str(), u.mtu), ("eth0", "172.30.0.11", 1500));
    let (mut drivers, mut lease) = (None, 0);
    let first = acquire::try_acquire(ctx, &store, &u, &mut drivers, &mut lease).await.expect("attempt");
    assert_eq!(first.map(|c| c.subnet), Some(n("10.244.0.0/24")));
    assert_ne!(lease, 0, "the attempt granted the record's lease");
    let rev = store.get(&subnet_key("10.244.0.0/24")).await.expect("get").expect("record");
    assert_eq!(rev.create_revision, rev.mod_revision, "created by this claim");
    let again = acquire::try_acquire(ctx, &store, &u, &mut drivers, &mut lease).await.expect("attempt");
    assert_eq!(again.map(|c| c.subnet), Some(n("10.244.0.0/24")), "the own record is reused, not a second claim");
    assert_eq!(store.leases(), vec![lease], "one lease across attempts");
    let (raw, _) = store.list(&Keys::new("lab").subnets_prefix()).await.expect("list");
    assert_eq!(raw.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_writes_subnet_env_and_the_state_dir() {
    let w = World::new(CIDR);
    let (_d, _h) = w.started().await;
    let env = std::fs::read_to_string(w.path("subnet.env")).expect("subnet.env");
    assert!(env.contains("FLANNEL_NETWORK=10.244.0.0/16"), "{env}");
    assert!(env.contains("FLANNEL_SUBNET=10.244.0.1/24"), "{env}");
    assert!(env.contains("FLANNEL_MTU=1500"), "{env}");
    let st = StateDir::new(&w.path("state")).load_subnet().expect("state").expect("subnet state");
    assert_eq!((st.subnet, st.node_id.as_str(), st.network.as_str()), (n("10.244.0.0/24"), "id1", "lab"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_enables_forwarding_through_the_host_and_reports_ready_once() {
    let w = World::new(CIDR);
    let (d, h) = w.daemon();
    let test = async {
        for _ in 0..200 {
            if status(&h).ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(status(&h).ready, "ready in time");
        assert!(w.host.forwarding.load(Ordering::SeqCst), "ip_forward went through the host");
        assert_eq!(w.host.ready.load(Ordering::SeqCst), 1);
        assert!(w.path("agent.pid").exists());
        h.stop.send(()).await.expect("stop");
    };
    let (exit, ()) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(d.run(), test) }).await.expect("stops");
    let exit = exit.expect("run");
    assert!(matches!(exit, Exit::Signal));
    assert!(!w.path("agent.pid").exists(), "the pid file goes on exit");
    assert!(!w.weft_routes().is_empty() || w.bridge_addrs().is_some(), "a stop leaves the node plumbed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_ready_the_api_answers_not_ready() {
    let w = World::new(CIDR);
    w.host.unreachable.store(true, Ordering::SeqCst);
    let (d, h) = w.daemon();
    let test = async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        h.commands.send((Request::PodList, tx)).await.expect("send");
        let resp = tokio::time::timeout(Duration::from_secs(5), rx).await.expect("answer").expect("reply");
        match resp {
            Response::Error { message } => assert_eq!(message, "agent not ready: connecting to etcd"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(!status(&h).etcd_connected);
        h.stop.send(()).await.expect("stop");
    };
    let (exit, ()) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(d.run(), test) }).await.expect("stops");
    let exit = exit.expect("run");
    assert!(matches!(exit, Exit::Signal));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_the_state_dir_reuses_the_subnet() {
    let w = World::new(CIDR);
    w.peer("n2", "10.244.0.0/24", "172.30.0.12");
    let (d, _h) = w.started().await;
    drop(d);
    // Meanwhile a lower subnet was freed: the node still keeps its own.
    let s = w.store().clone();
    s.delete(&subnet_key("10.244.0.0/24")).await.expect("delete");
    let (mut d, h) = w.started().await;
    assert_eq!(node(&mut d).subnet, n("10.244.1.0/24"));
    assert_eq!(status(&h).subnet.as_deref(), Some("10.244.1.0/24"));
    assert!(w.get(&subnet_key("10.244.0.0/24")).is_none(), "nothing claimed beside it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_the_state_dir_finds_the_subnet_by_identity() {
    let w = World::new(CIDR);
    w.peer("n2", "10.244.0.0/24", "172.30.0.12");
    let (d, _h) = w.started().await;
    drop(d);
    std::fs::remove_dir_all(w.path("state")).expect("remove state");
    w.store().delete(&subnet_key("10.244.0.0/24")).await.expect("delete");
    let (mut d, _h) = w.started().await;
    assert_eq!(node(&mut d).subnet, n("10.244.1.0/24"), "the record in etcd names this identity");
    let (raw, _) = w.store().list(&Keys::new("lab").subnets_prefix()).await.expect("list");
    assert_eq!(raw.len(), 1, "one record, no second claim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_this_name_from_a_dead_identity_is_taken_over() {
    let w = World::new(CIDR);
    w.put(&subnet_key("10.244.7.0/24"), record("n1", "old-machine", "172.30.0.50").to_json());
    let (mut d, _h) = w.started().await;
    assert_eq!(node(&mut d).subnet, n("10.244.7.0/24"));
    let rec = SubnetRecord::from_json("k", &w.get(&subnet_key("10.244.7.0/24")).expect("record")).expect("valid");
    assert_eq!((rec.node_id.as_str(), rec.public_ip.to_string().as_str()), ("id1", "172.30.0.11"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_heartbeat_of_another_identity_refuses_the_name() {
    let w = World::new(CIDR);
    w.put(&subnet_key("10.244.7.0/24"), record("n1", "other-machine", "172.30.0.50").to_json());
    let hb = decide::heartbeat("other-machine", n("10.244.7.0/24"), 1, 1);
    w.put(&Keys::new("lab").node("n1"), hb.to_json());
    let (mut d, h) = w.daemon();
    let r = tokio::time::timeout(Duration::from_millis(700), d.start()).await;
    assert!(r.is_err(), "start keeps retrying");
    assert!(matches!(d.phase, Phase::Connected(_)), "no subnet: still connected only");
    let err = status(&h).last_error.expect("an error");
    assert!(err.contains("held by another live machine"), "{err}");
    let rec = SubnetRecord::from_json("k", &w.get(&subnet_key("10.244.7.0/24")).expect("record")).expect("valid");
    assert_eq!(rec.node_id, "other-machine", "the other machine's record is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_is_a_clear_error_and_retried_until_a_subnet_frees() {
    let w = World::new("10.244.0.0/23");
    w.peer("n2", "10.244.0.0/24", "172.30.0.12");
    w.peer("n3", "10.244.1.0/24", "172.30.0.13");
    let (mut d, h) = w.daemon();
    assert!(tokio::time::timeout(Duration::from_millis(500), d.start()).await.is_err(), "keeps retrying");
    let err = status(&h).last_error.expect("an error");
    assert!(err.contains("no free /24 left in 10.244.0.0/23 (2 subnets taken)"), "{err}");
    w.store().delete(&subnet_key("10.244.1.0/24")).await.expect("free one");
    assert!(tokio::time::timeout(Duration::from_secs(10), d.start()).await.expect("in time").is_ok());
    assert_eq!(node(&mut d).subnet, n("10.244.1.0/24"));
}

// ---- reconcile ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_record_that_appears_gets_its_route() {
    let w = World::new(CIDR);
    let (mut d, h) = w.started().await;
    assert!(w.weft_routes().is_empty());
    w.peer("n2", "10.244.5.0/24", "172.30.0.12");
    pump(&mut d).await;
    assert_eq!(w.weft_routes(), vec![w.route_via("10.244.5.0/24", "172.30.0.12")]);
    let st = status(&h);
    assert_eq!(st.peers.len(), 1);
    assert!(st.peers[0].route_ok && st.peers[0].route_since_unix_ms > 0, "{:?}", st.peers[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_peer_record_takes_its_route_away() {
    let w = World::new(CIDR);
    w.peer("n2", "10.244.5.0/24", "172.30.0.12");
    w.peer("n3", "10.244.6.0/24", "172.30.0.13");
    let (mut d, h) = w.started().await;
    assert_eq!(w.weft_routes().len(), 2);
    w.store().delete(&subnet_key("10.244.5.0/24")).await.expect("delete");
    pump(&mut d).await;
    assert_eq!(w.weft_routes(), vec![w.route_via("10.244.6.0/24", "172.30.0.13")]);
    let st = status(&h);
    assert_eq!(st.last_route_removed.map(|r| r.subnet).as_deref(), Some("10.244.5.0/24"));
    assert_eq!(st.peers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_deleted_behind_the_daemons_back_returns_on_a_full_reconcile() {
    let w = World::new(CIDR);
    w.peer("n2", "10.244.5.0/24", "172.30.0.12");
    let (mut d, _h) = w.started().await;
    let r = w.route_via("10.244.5.0/24", "172.30.0.12");
    w.nl.apply(&crate::routes::Action::Del(r.clone())).await.expect("delete");
    assert!(w.weft_routes().is_empty());
    full(&mut d).await;
    assert_eq!(w.weft_routes(), vec![r]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_weft_route_is_removed_and_a_foreign_one_kept() {
    let w = World::new(CIDR);
    w.nl.seed_route(w.route_via("10.244.9.0/24", "172.30.0.99"), crate::kernel::WEFT_PROTO);
    w.nl.seed_route(w.route_via("192.168.50.0/24", "172.30.0.1"), 4);
    let (_d, _h) = w.started().await;
    assert!(w.weft_routes().is_empty(), "weft's route to a subnet nobody holds went");
    assert!(w.nl.routes().iter().any(|t| t.route.dst == n4("192.168.50.0/24").into()), "someone else's route stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_record_is_skipped_and_counted_once() {
    let w = World::new(CIDR);
    w.peer("n2", "10.244.5.0/24", "172.30.0.12");
    w.put(&subnet_key("10.244.8.0/24"), "{not json".into());
    let (mut d, h) = w.started().await;
    assert_eq!(w.weft_routes(), vec![w.route_via("10.244.5.0/24", "172.30.0.12")], "the good peer is routed");
    assert_eq!(status(&h).skipped_records, 1);
    full(&mut d).await;
    full(&mut d).await;
    assert_eq!(status(&h).skipped_records, 1, "the same record version counts once");
    w.put(&subnet_key("10.244.8.0/24"), "[]".into());
    pump(&mut d).await;
    assert_eq!(status(&h).skipped_records, 2, "a new bad version counts again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_off_link_peer_is_refused_with_a_reason() {
    let w = World::new(CIDR);
    w.peer("n3", "10.244.6.0/24", "172.31.0.13");
    let (_d, h) = w.started().await;
    assert!(w.weft_routes().is_empty());
    let st = status(&h);
    assert!(!st.peers[0].route_ok);
    assert!(st.peers[0].problem.as_deref().is_some_and(|p| p.contains("not on-link")), "{:?}", st.peers[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_own_record_is_recreated_on_the_next_full_reconcile() {
    let w = World::new(CIDR);
    let (mut d, _h) = w.started().await;
    let key = subnet_key("10.244.0.0/24");
    let before = w.get(&key).expect("record");
    w.store().delete(&key).await.expect("evict");
    pump(&mut d).await;
    assert!(w.get(&key).is_none(), "an event-driven reconcile leaves the record alone");
    full(&mut d).await;
    assert_eq!(w.get(&key), Some(before), "the same record is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_subnet_lease_is_replaced_and_the_record_recreated() {
    let w = World::new(CIDR);
    let (mut d, _h) = w.started().await;
    let old = node(&mut d).subnet_lease;
    assert!(w.store().expire_lease(old));
    pump(&mut d).await;
    full(&mut d).await;
    let new = node(&mut d).subnet_lease;
    assert_ne!(new, old);
    assert!(w.store().leases().contains(&new));
    assert!(w.get(&subnet_key("10.244.0.0/24")).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_holding_the_subnet_moves_this_node_to_a_free_one() {
    let w = World::new(CIDR);
    let (mut d, h) = w.started().await;
    w.put(&subnet_key("10.244.0.0/24"), record("n9", "id9", "172.30.0.19").to_json());
    pump(&mut d).await;
    full(&mut d).await;
    assert_eq!(node(&mut d).subnet, n("10.244.1.0/24"));
    assert_eq!(w.bridge_addrs(), Some(vec!["10.244.1.1/24".parse().expect("addr")]), "the old gateway went");
    assert_eq!(status(&h).subnet.as_deref(), Some("10.244.1.0/24"));
    let rec = SubnetRecord::from_json("k", &w.get(&subnet_key("10.244.1.0/24")).expect("record")).expect("valid");
    assert_eq!(rec.node_id, "id1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_underlay_mtu_is_followed_by_bridge_and_subnet_env() {
    let w = World::new(CIDR);
    let (mut d, _h) = w.started().await;
    w.nl.set_link(w.eth0, Some(1400), true, None).await.expect("mtu");
    full(&mut d).await;
    assert_eq!(node(&mut d).mtu, 1400);
    let bridge = w.nl.links().into_iter().find(|l| l.name == "weft0").expect("bridge");
    assert_eq!(bridge.mtu, 1400);
    let env = std::fs::read_to_string(w.path("subnet.env")).expect("env");
    assert!(env.contains("FLANNEL_MTU=1400"), "{env}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_bridge_address_is_removed() {
    let w = World::new(CIDR);
    let b = w.nl.ensure_bridge("weft0", 1500).await.expect("bridge");
    w.nl.seed_address(b, "10.244.33.1/24".parse().expect("addr"));
    let (_d, _h) = w.started().await;
    assert_eq!(w.bridge_addrs(), Some(vec!["10.244.0.1/24".parse().expect("addr")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firewall_rules_for_the_cluster_are_written_through_the_runner() {
    let w = World::new(CIDR);
    let (_d, h) = w.started().await;
    let writes: Vec<String> =
        w.runner.calls().into_iter().filter(|c| c.contains(" -A ") || c.contains(" -I ")).collect();
    assert!(writes.iter().any(|c| c.contains("10.244.0.0/16") && c.contains("ACCEPT")), "{writes:#?}");
    assert_eq!(status(&h).reconcile_errors, 0, "{:?}", status(&h).last_error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_is_published_and_renewed_after_expiry() {
    let w = World::new(CIDR);
    let (mut d, _h) = w.started().await;
    let key = Keys::new("lab").node("n1");
    let hb = Heartbeat::from_json(&key, &w.get(&key).expect("heartbeat")).expect("valid");
    assert_eq!((hb.node_id.as_str(), hb.subnet, hb.status.as_str()), ("id1", Some(n("10.244.0.0/24")), "ready"));
    let lease = node(&mut d).heartbeat_lease;
    assert!(w.store().expire_lease(lease));
    assert!(w.get(&key).is_none());
    let Phase::Running(node) = &mut d.phase else { panic!("running") };
    node.beat(&d.ctx).await.expect("beat");
    assert!(w.get(&key).is_some(), "back under a new lease");
}

// ---- API ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lists_no_pods_and_refuses_to_delete_an_unknown_one() {
    let w = World::new(CIDR);
    let (mut d, _h) = w.started().await;
    let Phase::Running(node) = &mut d.phase else { panic!("running") };
    assert!(matches!(node.handle(&d.ctx, Request::PodList).await, Response::Pods { pods } if pods.is_empty()));
    match node.handle(&d.ctx, Request::PodDel { name: "nope".into() }).await {
        Response::Error { message } => assert_eq!(message, "no pod named nope"),
        other => panic!("unexpected {other:?}"),
    }
    match node.handle(&d.ctx, Request::Status).await {
        Response::Error { message } => assert!(message.contains("API task"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
}

// ---- leave ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_releases_everything_in_etcd_and_on_the_node() {
    let w = World::new(CIDR);
    w.peer("n2", "10.244.5.0/24", "172.30.0.12");
    let (d, h) = w.started().await;
    assert_eq!(w.weft_routes().len(), 1);
    let mut d = d;
    let test = async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        h.commands.send((Request::Leave, tx)).await.expect("send");
        let resp = tokio::time::timeout(Duration::from_secs(10), rx).await.expect("answer").expect("reply");
        assert!(matches!(resp, Response::Done), "{resp:?}");
    };
    let (exit, ()) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(d.main_loop(), test) }).await.expect("ends");
    let exit = exit.expect("loop");
    assert!(matches!(exit, Exit::Left));
    assert!(w.get(&subnet_key("10.244.0.0/24")).is_none(), "own record gone");
    assert!(w.get(&Keys::new("lab").node("n1")).is_none(), "heartbeat gone");
    assert!(w.get(&subnet_key("10.244.5.0/24")).is_some(), "the peer's record stays");
    assert!(w.store().leases().is_empty(), "both leases revoked: {:?}", w.store().leases());
    assert!(w.weft_routes().is_empty());
    assert!(w.bridge_addrs().is_none(), "bridge deleted");
    assert!(!w.path("subnet.env").exists() && !w.path("state").exists());
}

// ---- etcd outage ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_keeps_routes_and_reports_disconnected() {
    let w = World::new(CIDR);
    w.peer("n2", "10.244.5.0/24", "172.30.0.12");
    let (mut d, h) = w.started().await;
    w.store().set_down(true);
    pump(&mut d).await;
    assert!(node(&mut d).watch.is_none());
    assert!(!status(&h).etcd_connected);
    tick(&mut d).await;
    let st = status(&h);
    assert!(!st.etcd_connected && st.ready);
    assert_eq!(w.weft_routes(), vec![w.route_via("10.244.5.0/24", "172.30.0.12")], "the data plane stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_a_relist_routes_a_peer_that_joined_meanwhile() {
    let w = World::new(CIDR);
    let (mut d, h) = w.started().await;
    w.store().set_down(true);
    pump(&mut d).await;
    w.store().set_down(false);
    w.peer("n3", "10.244.6.0/24", "172.30.0.13");
    tick(&mut d).await;
    assert!(status(&h).etcd_connected);
    assert!(node(&mut d).watch.is_some(), "watching again");
    assert_eq!(w.weft_routes(), vec![w.route_via("10.244.6.0/24", "172.30.0.13")]);
    w.peer("n4", "10.244.7.0/24", "172.30.0.14");
    pump(&mut d).await;
    assert_eq!(w.weft_routes().len(), 2, "the new watch delivers");
}
