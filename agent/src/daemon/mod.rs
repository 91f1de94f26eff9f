//! The agent's lifecycle: connect, acquire a subnet, plumb the node, then reconcile forever on
//! every etcd change and on a timer. One loop owns all state; the API and signals feed into it.
//!
//! The daemon is generic over its effects: the kernel (`K`: netlink, or `FakeKernel`), the
//! store (`S`: etcd, or `MemStore`), the firewall's command runner (`R`) and the [`Host`]
//! (how to reach etcd, the API socket, metrics, watchdog, sysctl, systemd). Its phase is
//! explicit (`Phase`): no subnet yet is `Connected`, a subnet is `Running(Node)`.
//! Layout: `acquire` (underlay, network config, the claim), `plumb` (bridge, firewall, pods),
//! `reconcile` (list/watch, routes, own record, heartbeat), `handlers` (the API), `leave`
//! (leave and teardown), `decide` (pure decisions), `ops` (health marks, probes, CNI pods),
//! `host` (the production effects).

use crate::api::{self, Command};
use crate::backend::{Drivers, UnderlayInfo};
use crate::docker::{self as plugin, Book};
use crate::firewall::{ForwardPolicy, Runner, SystemRunner};
use crate::firewall_glue::NodeFirewall;
use crate::kernel::{Kernel, Netlink};
use crate::state::{self, PodRecord, StateDir};
use anyhow::{bail, Context, Result};
use futures::future::BoxFuture;
use ipnet::IpNet;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use weft_config::api::{Request, Response, Status};
use weft_config::peers::{PeerSet, RawRecord};
use weft_config::subnet::PerFamily;
use weft_config::{AgentConfig, Keys, NetworkConfig};
use weft_store::{EtcdStore, Store, Watch};

mod acquire;
pub mod decide;
mod docker;
mod handlers;
mod host;
mod leave;
mod ops;
mod plumb;
mod reconcile;
mod switch;
pub(crate) mod sync_entries;
#[cfg(test)]
mod tests;

pub use host::SystemHost;
pub use leave::{leave_offline, teardown_local};

/// Why the loop ended.
pub enum Exit {
    /// SIGTERM/SIGINT: leave routes and pods in place.
    Signal,
    /// `leave` through the API: everything was removed.
    Left,
}

struct Shutdown;

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The node's identity: `node_id` from the config, else /etc/machine-id.
pub fn node_identity(cfg: &AgentConfig) -> Result<String> {
    if let Some(id) = &cfg.node_id {
        return Ok(id.clone());
    }
    let id = std::fs::read_to_string("/etc/machine-id")
        .context("reading /etc/machine-id (set node_id in agent.toml instead)")?;
    let id = id.trim();
    if id.is_empty() {
        bail!("/etc/machine-id is empty; set node_id in agent.toml");
    }
    Ok(id.to_string())
}

/// What the daemon needs from the machine besides the kernel and the firewall: how to reach
/// the store, and the services around the loop. [`SystemHost`] is the real one.
pub trait Host<S: Store>: Send + Sync + 'static {
    /// Connects to the store (production: `EtcdStore::connect(&cfg.etcd)`).
    fn connect(&self) -> BoxFuture<'static, Result<S>>;
    /// Turns on IPv4 forwarding (production: the `net/ipv4/ip_forward` sysctl).
    fn enable_forwarding(&self) -> Result<()>;
    /// Turns on IPv6 forwarding for a network with an IPv6 pool, keeping the router
    /// advertisements on `underlay` accepted so the node keeps its own default route
    /// (production: `net/ipv6/conf/<underlay>/accept_ra` = 2, then
    /// `net/ipv6/conf/all/forwarding` = 1, in the agent's own namespace).
    fn enable_ipv6_forwarding(&self, underlay: &str) -> Result<()>;
    /// Starts the API socket (fed into `commands`), the Docker plugin with `[docker]` (fed
    /// into `docker`), `/metrics` and the watchdog. An error (the Docker plugin's socket or
    /// spec file cannot be made) fails the start.
    fn spawn_services(
        &self,
        status: &Arc<RwLock<Status>>,
        live: &api::LiveQuic,
        commands: mpsc::Sender<Command>,
        docker: mpsc::Sender<plugin::Command>,
    ) -> Result<()>;
    /// The node is set up (READY=1 to systemd).
    fn ready(&self, line: &str);
    /// The loop is ending (STOPPING=1 to systemd).
    fn stopping(&self);
    /// Starts the reachability probes (only called with `[probes] enabled`).
    fn spawn_probe(&self, store: S, status: Arc<RwLock<Status>>);
}

/// What every phase shares: the config, identity and the effects.
pub(crate) struct Ctx<K: Kernel, S: Store, R: Runner> {
    cfg: AgentConfig,
    node_id: String,
    keys: Keys,
    nl: K,
    state: StateDir,
    status: Arc<RwLock<Status>>,
    epoch: u64,
    firewall: NodeFirewall<R>,
    live: api::LiveQuic,
    host: Arc<dyn Host<S>>,
}

impl<K: Kernel, S: Store, R: Runner> Ctx<K, S, R> {
    fn set_status(&self, f: impl FnOnce(&mut Status)) {
        let mut guard = self.status.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
    }
}

/// Where the daemon is in its life.
pub(crate) enum Phase<K: Kernel, S: Store> {
    /// Waiting for the underlay interface.
    Starting,
    /// Underlay known and the store reachable: claiming a subnet.
    Connected(Connected<K, S>),
    /// The subnet is ours: plumbing, then reconciling until the end.
    Running(Box<Node<K, S>>),
}

/// The `Connected` phase: what a claim attempt keeps between tries.
pub(crate) struct Connected<K: Kernel, S: Store> {
    store: S,
    underlay: UnderlayInfo,
    /// The backends built by an earlier attempt (rebuilt only when the backend changes).
    drivers: Option<Drivers<K>>,
    /// The subnet record's lease (0 until granted).
    lease: i64,
}

/// A node that holds its subnet: everything the reconcile loop works on.
pub(crate) struct Node<K: Kernel, S: Store> {
    store: S,
    underlay: UnderlayInfo,
    net: NetworkConfig,
    /// The backends carrying cross-host traffic, built from the network config.
    drivers: Drivers<K>,
    /// The subnet of the network's first family (IPv4 when it has an IPv4 pool): the one the
    /// bridge, the pods and the firewall use until they carry both families.
    subnet: IpNet,
    /// Every subnet the node holds, one per pool of the network (`subnet` among them), each
    /// under its family's key with the same record value and lease.
    subnets: PerFamily<IpNet>,
    /// The own record's JSON as written.
    record_value: String,
    /// The lease of the own records (every family's: renewed and revoked together).
    subnet_lease: i64,
    heartbeat_lease: i64,
    /// MTU of the bridge and pods.
    mtu: u32,
    /// The forward policy of the last plan, which the firewall rules follow.
    forward: Option<ForwardPolicy>,
    bridge_index: u32,
    pods: Vec<PodRecord>,
    /// What Docker holds on this node (`docker.json`): its addresses and endpoints.
    docker: Book,
    records: BTreeMap<String, RawRecord>,
    revision: i64,
    /// `None` while etcd is away (re-listed every second).
    watch: Option<Watch>,
    peers: PeerSet,
    seen_skips: HashSet<(String, i64)>,
}

/// The daemon: a context, a phase and the inputs of its loop.
pub struct Daemon<K: Kernel, S: Store, R: Runner = SystemRunner> {
    ctx: Ctx<K, S, R>,
    phase: Phase<K, S>,
    commands: mpsc::Receiver<Command>,
    /// Calls of the Docker plugin; only a running node takes them. Until then they wait; one
    /// that waits too long is answered "not ready" by the plugin and never runs (see
    /// [`plugin::Command::take`]).
    docker: mpsc::Receiver<plugin::Command>,
    /// One message per SIGTERM/SIGINT (production) or per test's stop.
    stop: mpsc::Receiver<()>,
}

/// What a test (or an embedding) keeps to talk to a daemon it made with [`Daemon::with`].
pub struct Handle {
    pub commands: mpsc::Sender<Command>,
    pub docker: mpsc::Sender<plugin::Command>,
    pub status: Arc<RwLock<Status>>,
    pub stop: mpsc::Sender<()>,
}

impl Daemon<Netlink, EtcdStore, SystemRunner> {
    /// The real daemon: netlink, etcd, iptables/nft, the API socket, metrics and signals.
    pub fn new(cfg: AgentConfig) -> Result<Self> {
        let node_id = node_identity(&cfg)?;
        let host = Arc::new(SystemHost::new(&cfg));
        let stop = host::signals()?;
        let nl = Netlink::open()?;
        let (daemon, handle) = Self::with(cfg, node_id, nl, SystemRunner, host)?;
        forward_stops(stop, handle.stop);
        Ok(daemon)
    }
}

/// Feeds the signal task's stops into the daemon's.
fn forward_stops(mut from: mpsc::Receiver<()>, to: mpsc::Sender<()>) {
    tokio::spawn(async move {
        while from.recv().await.is_some() {
            if to.send(()).await.is_err() {
                break;
            }
        }
    });
}

impl<K: Kernel, S: Store, R: Runner + Send + Sync> Daemon<K, S, R> {
    /// A daemon over the given effects. Starts the host's services (API, metrics, watchdog).
    pub fn with(cfg: AgentConfig, node_id: String, nl: K, runner: R, host: Arc<dyn Host<S>>) -> Result<(Self, Handle)> {
        let keys = Keys::new(&cfg.network);
        let state = StateDir::new(&cfg.paths.state_dir);
        let status = Status {
            node: cfg.node_name.clone(),
            node_id: node_id.clone(),
            network: cfg.network.clone(),
            pid: std::process::id(),
            ready: false,
            etcd_connected: false,
            subnet: None,
            subnet6: None,
            public_ip: None,
            public_ip6: None,
            backend: None,
            peers: vec![],
            pods: vec![],
            reconciles: 0,
            reconcile_errors: 0,
            skipped_records: 0,
            last_error: None,
            quic: None,
            health: crate::metrics::initial_health(&cfg, now_secs()),
            probes: vec![],
            last_route_removed: None,
        };
        let status = Arc::new(RwLock::new(status));
        let (tx, rx) = mpsc::channel(32);
        let (docker_tx, docker_rx) = mpsc::channel(32);
        let (stop_tx, stop_rx) = mpsc::channel(4);
        let live: api::LiveQuic = Arc::default();
        host.spawn_services(&status, &live, tx.clone(), docker_tx.clone())?;
        let epoch = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        let ctx = Ctx {
            firewall: NodeFirewall::with_runner(&cfg, runner),
            keys,
            nl,
            state,
            status: status.clone(),
            epoch,
            live,
            host,
            node_id,
            cfg,
        };
        let handle = Handle { commands: tx, docker: docker_tx, status, stop: stop_tx };
        Ok((Self { ctx, phase: Phase::Starting, commands: rx, docker: docker_rx, stop: stop_rx }, handle))
    }

    /// Sleeps for `d` while answering API calls with "not ready"; returns early on a stop.
    async fn idle(&mut self, d: Duration, phase: &str) -> Result<(), Shutdown> {
        self.ctx.mark(|h, now| h.loop_tick = now);
        let deadline = tokio::time::sleep(d);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return Ok(()),
                Some(()) = self.stop.recv() => return Err(Shutdown),
                Some((_, reply)) = self.commands.recv() => {
                    let _ = reply.send(Response::Error { message: format!("agent not ready: {phase}") });
                }
            }
        }
    }

    pub async fn run(mut self) -> Result<Exit> {
        self.ctx.state.create()?;
        state::write_atomic(&self.ctx.cfg.paths.pid_file, format!("{}\n", std::process::id()).as_bytes(), 0o644)?;
        self.ctx.host.enable_forwarding()?;
        let r = self.run_inner().await;
        self.ctx.host.stopping();
        let _ = std::fs::remove_file(&self.ctx.cfg.paths.socket);
        let _ = std::fs::remove_file(&self.ctx.cfg.paths.pid_file);
        if let Some(d) = &self.ctx.cfg.docker {
            // The spec file stays unless the node left: Docker's restore at boot needs it.
            plugin::server::remove_files(d, matches!(r, Ok(Exit::Left)));
        }
        r
    }

    async fn run_inner(&mut self) -> Result<Exit> {
        if self.start().await.is_err() {
            return Ok(Exit::Signal);
        }
        let Phase::Running(node) = &mut self.phase else { bail!("started without a subnet") };
        info!(node = %self.ctx.cfg.node_name, subnet = ?Some(node.subnet), "ready");
        node.on_ready(&self.ctx);
        self.main_loop().await
    }

    /// Everything up to "ready". Err(Shutdown) when a stop arrived meanwhile.
    async fn start(&mut self) -> Result<(), Shutdown> {
        let mut backoff = Backoff::new();
        let underlay = loop {
            match acquire::underlay_info(&self.ctx).await {
                Ok(u) => break u,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "underlay not usable yet");
                    self.idle(backoff.next(), "waiting for the underlay interface").await?;
                }
            }
        };
        backoff = Backoff::new();
        let store = loop {
            match self.ctx.host.connect().await {
                Ok(c) => {
                    self.ctx.set_status(|s| s.etcd_connected = true);
                    self.ctx.mark_etcd_ok();
                    break c;
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), endpoints = ?self.ctx.cfg.etcd.endpoints, "etcd not reachable, retrying");
                    // At most 1 s apart: a node started during an etcd outage joins as soon
                    // as etcd is back (a refused connection costs nothing).
                    self.idle(backoff.next().min(Duration::from_secs(1)), "connecting to etcd").await?;
                }
            }
        };
        self.phase = Phase::Connected(Connected { store, underlay, drivers: None, lease: 0 });
        backoff = Backoff::new();
        loop {
            match self.try_acquire().await {
                Ok(true) => break,
                Ok(false) => self.idle(Duration::from_millis(50), "claiming a subnet").await?,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "cannot acquire a subnet yet, retrying");
                    self.ctx.set_status(|s| s.last_error = Some(format!("{e:#}")));
                    self.idle(backoff.next(), "acquiring a subnet").await?;
                }
            }
        }
        backoff = Backoff::new();
        loop {
            let r = match &mut self.phase {
                Phase::Running(node) => node.plumb(&self.ctx).await,
                _ => Err(anyhow::anyhow!("no subnet")),
            };
            match r {
                Ok(()) => break,
                Err(e) => {
                    error!(error = %format!("{e:#}"), "node setup failed, retrying");
                    self.ctx.set_status(|s| s.last_error = Some(format!("{e:#}")));
                    self.idle(backoff.next(), "setting up the bridge and pods").await?;
                }
            }
        }
        if let Phase::Running(node) = &mut self.phase {
            node.first_pass(&self.ctx).await;
        }
        Ok(())
    }

    /// One claim attempt in the `Connected` phase; on success the phase becomes `Running`.
    /// Ok(false) on a lost race (retry at once).
    async fn try_acquire(&mut self) -> Result<bool> {
        let Phase::Connected(c) = &mut self.phase else { bail!("not connected to etcd") };
        // Read before claiming, so a state file that cannot be read costs no claim.
        let book = Book::load(&self.ctx.state)?;
        acquire::refresh_public_ip6(&self.ctx, &mut c.underlay).await;
        let Some(claim) = acquire::try_acquire(&self.ctx, &c.store, &c.underlay, &mut c.drivers, &mut c.lease).await?
        else {
            return Ok(false);
        };
        let Phase::Connected(c) = std::mem::replace(&mut self.phase, Phase::Starting) else {
            bail!("not connected to etcd")
        };
        let mut node = Node::new(c.store, c.underlay, c.lease, claim);
        let stale = book.stale(&node.subnets);
        if !stale.is_empty() {
            warn!(
                stale = ?stale, subnets = ?node.subnets,
                "Docker's weft network still uses an old subnet of this node: its containers have no route; \
                 remove them and the weft Docker network, then create it again"
            );
        }
        node.docker = book;
        self.phase = Phase::Running(Box::new(node));
        Ok(true)
    }

    async fn main_loop(&mut self) -> Result<Exit> {
        let Phase::Running(node) = &mut self.phase else { bail!("no subnet") };
        let ctx = &self.ctx;
        let timers = &ctx.cfg.timers;
        let mut tick = tokio::time::interval(timers.reconcile);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut hb = tokio::time::interval(timers.heartbeat_ttl / 3);
        hb.tick().await;
        let mut renew = tokio::time::interval(timers.subnet_lease / 10);
        renew.tick().await;
        // While the watch is down (etcd away), retry it every second rather than at the next
        // full reconcile, so nodes that joined meanwhile are routed as soon as etcd is back.
        let mut rewatch = tokio::time::interval(Duration::from_secs(1));
        rewatch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let watching = node.watch.is_some();
            let watch_msg = async {
                match node.watch.as_mut() {
                    Some(w) => Some(w.next().await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(()) = self.stop.recv() => return Ok(Exit::Signal),
                Some((req, reply)) = self.commands.recv() => {
                    let leave = matches!(req, Request::Leave);
                    let resp = node.handle(ctx, req).await;
                    let _ = reply.send(resp);
                    if leave {
                        return Ok(Exit::Left);
                    }
                }
                Some(cmd) = self.docker.recv() => {
                    let method = cmd.method();
                    match cmd.take() {
                        Some((call, reply)) => reply.send(node.docker_call(ctx, call).await),
                        // Docker already heard "not ready": running it now would do what
                        // Docker believes failed.
                        None => info!(method = method.name(), "docker: skipping a call its caller gave up on"),
                    }
                }
                msg = watch_msg => {
                    if let Some(msg) = msg {
                        node.on_watch(ctx, msg).await;
                    }
                }
                _ = tick.tick() => node.on_tick(ctx).await,
                _ = rewatch.tick(), if !watching => {
                    if node.rewatch(ctx).await.is_ok() {
                        info!("etcd watch re-established");
                        node.reconcile(ctx, true).await;
                    }
                }
                _ = hb.tick() => {
                    if let Err(e) = node.beat(ctx).await {
                        warn!(error = %format!("{e:#}"), "heartbeat failed");
                    }
                }
                _ = renew.tick() => node.renew(ctx).await,
            }
        }
    }
}

/// Exponential backoff from 200 ms to 5 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(200))
    }
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        d
    }
}
