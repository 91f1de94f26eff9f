//! The agent's lifecycle: connect, acquire a subnet, plumb the node, then reconcile forever on
//! every etcd change and on a timer. One loop owns all state; the API and signals feed into it.

use crate::api::{self, Command};
use crate::backend::{self, BuildContext, Drivers, NodeView, Plan, UnderlayInfo};
use crate::firewall::ForwardPolicy;
use crate::firewall_glue::Firewall;
use crate::kernel::{write_sysctl, Kernel, Netlink};
use crate::lease::{self, Decision, Existing};
use crate::pods::{self, AttachRequest, PodNet};
use crate::routes::{self, Action, Route};
use crate::state::{self, PodRecord, PodSource, StateDir, SubnetState};
use anyhow::{anyhow, bail, Context, Result};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use weft_config::api::{PeerStatus, PodInfo, Request, Response, RouteRemoved, Status};
use weft_config::peers::{build_peer_set, Peer, PeerSet, RawRecord};
use weft_config::{subnet, AgentConfig, Heartbeat, Keys, NetworkConfig, SubnetRecord};
use weft_store::{EtcdStore, EventKind, Store, Watch, WatchMsg};

mod ops;

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

pub struct Daemon {
    cfg: AgentConfig,
    node_id: String,
    keys: Keys,
    nl: Netlink,
    state: StateDir,
    status: Arc<RwLock<Status>>,
    commands: mpsc::Receiver<Command>,
    sigterm: Signal,
    sigint: Signal,
    epoch: u64,
    firewall: Firewall,
    store: Option<EtcdStore>,
    net: Option<NetworkConfig>,
    underlay: Option<UnderlayInfo>,
    subnet: Option<Ipv4Net>,
    record_value: String,
    subnet_lease: i64,
    heartbeat_lease: i64,
    records: BTreeMap<String, RawRecord>,
    revision: i64,
    watch: Option<Watch>,
    peers: PeerSet,
    seen_skips: HashSet<(String, i64)>,
    bridge_index: u32,
    mtu: u32,
    pods: Vec<PodRecord>,
    live: api::LiveQuic,
    /// The backends carrying cross-host traffic, built from the network config.
    drivers: Option<Drivers<Netlink>>,
    /// The forward policy of the last plan, which the firewall rules follow.
    forward: Option<ForwardPolicy>,
}

impl Daemon {
    pub fn new(cfg: AgentConfig) -> Result<Self> {
        let node_id = node_identity(&cfg)?;
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
            public_ip: None,
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
        let sock = cfg.paths.socket.clone();
        let st = status.clone();
        let live: api::LiveQuic = Arc::default();
        let live2 = live.clone();
        crate::metrics::spawn(&cfg.metrics, status.clone(), live.clone());
        crate::notify::spawn_watchdog(status.clone(), live.clone());
        tokio::spawn(async move {
            if let Err(e) = api::serve(&sock, st, live2, tx).await {
                error!(error = %format!("{e:#}"), "api server stopped");
            }
        });
        let epoch = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        Ok(Self {
            firewall: Firewall::new(&cfg),
            cfg,
            node_id,
            keys,
            nl: Netlink::open()?,
            state,
            status,
            commands: rx,
            sigterm: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            sigint: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            epoch,
            store: None,
            net: None,
            underlay: None,
            subnet: None,
            record_value: String::new(),
            subnet_lease: 0,
            heartbeat_lease: 0,
            records: BTreeMap::new(),
            revision: 0,
            watch: None,
            peers: PeerSet::default(),
            seen_skips: HashSet::new(),
            bridge_index: 0,
            mtu: 1500,
            pods: vec![],
            live,
            drivers: None,
            forward: None,
        })
    }

    fn set_status(&self, f: impl FnOnce(&mut Status)) {
        let mut guard = self.status.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
    }

    /// Sleeps for `d` while answering API calls with "not ready"; returns early on a signal.
    async fn idle(&mut self, d: Duration, phase: &str) -> Result<(), Shutdown> {
        self.mark(|h, now| h.loop_tick = now);
        let deadline = tokio::time::sleep(d);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return Ok(()),
                _ = self.sigterm.recv() => return Err(Shutdown),
                _ = self.sigint.recv() => return Err(Shutdown),
                Some((_, reply)) = self.commands.recv() => {
                    let _ = reply.send(Response::Error { message: format!("agent not ready: {phase}") });
                }
            }
        }
    }

    pub async fn run(mut self) -> Result<Exit> {
        self.state.create()?;
        state::write_atomic(&self.cfg.paths.pid_file, format!("{}\n", std::process::id()).as_bytes(), 0o644)?;
        write_sysctl("net/ipv4/ip_forward", "1")?;
        let r = self.run_inner().await;
        crate::notify::stopping();
        let _ = std::fs::remove_file(&self.cfg.paths.socket);
        let _ = std::fs::remove_file(&self.cfg.paths.pid_file);
        r
    }

    async fn run_inner(&mut self) -> Result<Exit> {
        if self.start().await.is_err() {
            return Ok(Exit::Signal);
        }
        info!(node = %self.cfg.node_name, subnet = ?self.subnet, "ready");
        self.on_ready();
        self.main_loop().await
    }

    /// Everything up to "ready". Err(Shutdown) when a signal arrived meanwhile.
    async fn start(&mut self) -> Result<(), Shutdown> {
        let mut backoff = Backoff::new();
        loop {
            match self.underlay_info().await {
                Ok(u) => {
                    self.underlay = Some(u);
                    break;
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "underlay not usable yet");
                    self.idle(backoff.next(), "waiting for the underlay interface").await?;
                }
            }
        }
        backoff = Backoff::new();
        loop {
            match EtcdStore::connect(&self.cfg.etcd).await {
                Ok(c) => {
                    self.store = Some(c);
                    self.set_status(|s| s.etcd_connected = true);
                    self.mark_etcd_ok();
                    break;
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), endpoints = ?self.cfg.etcd.endpoints, "etcd not reachable, retrying");
                    // At most 1 s apart: a node started during an etcd outage joins as soon
                    // as etcd is back (a refused connection costs nothing).
                    self.idle(backoff.next().min(Duration::from_secs(1)), "connecting to etcd").await?;
                }
            }
        }
        backoff = Backoff::new();
        loop {
            match self.try_acquire().await {
                Ok(true) => break,
                Ok(false) => self.idle(Duration::from_millis(50), "claiming a subnet").await?,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "cannot acquire a subnet yet, retrying");
                    self.set_status(|s| s.last_error = Some(format!("{e:#}")));
                    self.idle(backoff.next(), "acquiring a subnet").await?;
                }
            }
        }
        backoff = Backoff::new();
        loop {
            match self.plumb().await {
                Ok(()) => break,
                Err(e) => {
                    error!(error = %format!("{e:#}"), "node setup failed, retrying");
                    self.set_status(|s| s.last_error = Some(format!("{e:#}")));
                    self.idle(backoff.next(), "setting up the bridge and pods").await?;
                }
            }
        }
        if let Err(e) = self.relist().await {
            warn!(error = %format!("{e:#}"), "initial peer list failed; retrying on the next reconcile");
        }
        self.reconcile(true).await;
        if let Err(e) = self.beat().await {
            warn!(error = %format!("{e:#}"), "heartbeat failed");
        }
        Ok(())
    }

    async fn underlay_info(&self) -> Result<UnderlayInfo> {
        let link = match &self.cfg.underlay.interface {
            Some(name) => {
                self.nl.link(name).await?.with_context(|| format!("underlay interface {name} does not exist"))?
            }
            None => {
                let idx = self
                    .nl
                    .default_route_oif()
                    .await?
                    .context("no default route to pick the underlay interface from; set underlay.interface")?;
                self.nl.link_by_index(idx).await?.context("default route interface vanished")?
            }
        };
        let addrs = self.nl.addrs(link.index).await?;
        let public_ip = match self.cfg.underlay.public_ip {
            Some(ip) => {
                if !addrs.iter().any(|a| a.addr() == ip) {
                    warn!(ip = %ip, iface = %link.name, "configured public_ip is not an address of the underlay interface");
                }
                ip
            }
            None => addrs
                .first()
                .map(|a| a.addr())
                .with_context(|| format!("underlay interface {} has no IPv4 address", link.name))?,
        };
        Ok(UnderlayInfo { index: link.index, name: link.name, public_ip, mtu: link.mtu.max(576) })
    }

    fn store(&self) -> Result<&EtcdStore> {
        self.store.as_ref().ok_or_else(|| anyhow!("not connected to etcd"))
    }

    async fn read_network(&mut self) -> Result<NetworkConfig> {
        let key = self.keys.config();
        let rec = self
            .store()?
            .get(&key)
            .await?
            .with_context(|| format!("no network config at {key}; run `weftctl network init`"))?;
        Ok(NetworkConfig::from_json(&key, &rec.value)?)
    }

    fn own_record(&self) -> Result<SubnetRecord> {
        let u = self.underlay.as_ref().context("underlay unknown")?;
        let net = self.net.as_ref().context("network config unknown")?;
        let drivers = self.drivers.as_ref().context("no backend yet")?;
        Ok(SubnetRecord {
            schema: weft_config::records::SCHEMA_VERSION,
            node: self.cfg.node_name.clone(),
            node_id: self.node_id.clone(),
            public_ip: u.public_ip,
            backend: net.backend,
            epoch: self.epoch,
            backend_data: drivers.backend_data(u),
        })
    }

    /// The node as the backends see it, with the underlay's current prefixes.
    async fn node_view(&self) -> Result<NodeView> {
        let underlay = self.underlay.clone().context("underlay unknown")?;
        let prefixes = self.nl.addrs(underlay.index).await?;
        let cluster = self.net.as_ref().context("network config unknown")?.cidr;
        let subnet = self.subnet.context("no subnet")?;
        Ok(NodeView { underlay, prefixes, cluster, subnet, mtu: self.mtu })
    }

    /// One attempt at the subnet: Ok(false) on a lost race (retry at once).
    async fn try_acquire(&mut self) -> Result<bool> {
        let net = self.read_network().await?;
        self.net = Some(net.clone());
        if self.drivers.as_ref().is_none_or(|d| d.names() != net.backend.to_string()) {
            self.drivers = Some(backend::build(&net, &BuildContext { cfg: &self.cfg, live: &self.live })?);
        }
        let u = self.underlay.clone().context("underlay unknown")?;
        self.drivers.as_mut().context("no backend yet")?.prepare(&u)?;
        let prefix = self.keys.subnets_prefix();
        let (raw, _) = self.store()?.list(&prefix).await?;
        let existing: Vec<Existing> = raw
            .iter()
            .filter_map(|r| {
                let seg = self.keys.subnet_segment(&r.key)?;
                let subnet = subnet::from_key_form(seg)?;
                Some(Existing {
                    subnet,
                    record: SubnetRecord::from_json(&r.key, &r.value).ok(),
                    mod_revision: r.mod_revision,
                })
            })
            .collect();
        let hb_key = self.keys.node(&self.cfg.node_name);
        let live = (self.store()?.get(&hb_key).await?)
            .and_then(|r| Heartbeat::from_json(&hb_key, &r.value).ok())
            .map(|h| h.node_id);
        let persisted = match self.state.load_subnet() {
            Ok(s) => s.filter(|s| s.network == self.cfg.network).map(|s| s.subnet),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "ignoring unreadable subnet state");
                None
            }
        };
        let decision = lease::decide(&lease::Inputs {
            net: &net,
            node_name: &self.cfg.node_name,
            node_id: &self.node_id,
            persisted,
            existing: &existing,
            live_identity: live.as_deref(),
        });
        let record = self.own_record()?.to_json();
        if self.subnet_lease == 0 {
            let ttl = self.cfg.timers.subnet_lease;
            self.subnet_lease = self.store()?.grant(ttl).await?;
        }
        let lease_id = self.subnet_lease;
        let (subnet, won) = match decision {
            Decision::Refuse(msg) => bail!(msg),
            Decision::Exhausted { cidr, subnet_len, taken } => {
                bail!("no free /{subnet_len} left in {cidr} ({taken} subnets taken); free one with `weftctl node evict` or widen the network")
            }
            Decision::Reuse { subnet, mod_revision } => {
                let key = self.keys.subnet(subnet);
                (subnet, self.store()?.replace(&key, record.clone(), lease_id, mod_revision).await?)
            }
            Decision::TakeOver { subnet, mod_revision, previous_id } => {
                warn!(subnet = %subnet, previous_id = %previous_id, "taking over the record of this node name from a dead identity");
                let key = self.keys.subnet(subnet);
                (subnet, self.store()?.replace(&key, record.clone(), lease_id, mod_revision).await?)
            }
            Decision::Claim { subnet, moved_from } => {
                if let Some(old) = moved_from {
                    warn!(old = %old, new = %subnet, "PREVIOUS SUBNET IS TAKEN BY ANOTHER NODE: moving to a new subnet and re-addressing every pod");
                }
                let key = self.keys.subnet(subnet);
                (subnet, self.store()?.create(&key, record.clone(), lease_id).await?)
            }
        };
        if !won {
            info!(subnet = %subnet, "lost a race for the subnet, retrying");
            return Ok(false);
        }
        self.subnet = Some(subnet);
        self.record_value = record;
        self.mark(|h, now| h.record_renewed = now);
        self.state.save_subnet(&SubnetState {
            network: self.cfg.network.clone(),
            subnet,
            node_id: self.node_id.clone(),
        })?;
        self.mtu = self.drivers.as_ref().context("no backend yet")?.pod_mtu(u.mtu, self.cfg.bridge.mtu);
        let env = state::subnet_env(net.cidr, subnet, self.mtu, self.cfg.ip_masq);
        state::write_atomic(&self.cfg.paths.subnet_env, env.as_bytes(), 0o644)?;
        self.set_status(|s| {
            s.subnet = Some(subnet.to_string());
            s.public_ip = Some(u.public_ip);
            s.backend = Some(net.backend.to_string());
            s.last_error = None;
        });
        info!(subnet = %subnet, public_ip = %u.public_ip, "subnet acquired");
        Ok(true)
    }

    /// Bridge, gateway address, firewall and pods.
    async fn plumb(&mut self) -> Result<()> {
        let subnet = self.subnet.context("no subnet")?;
        let gw = Ipv4Net::new(subnet::gateway(subnet), subnet.prefix_len()).context("gateway")?;
        self.bridge_index = self.nl.ensure_bridge(&self.cfg.bridge.name, self.mtu).await?;
        for a in self.nl.addrs(self.bridge_index).await? {
            if a != gw {
                info!(addr = %a, "removing a stale bridge address");
                self.nl.del_addr(self.bridge_index, a).await?;
            }
        }
        self.nl.add_addr(self.bridge_index, gw).await?;
        let node = self.node_view().await?;
        self.drivers.as_mut().context("no backend yet")?.ensure(&self.nl, &node).await?;
        self.apply_firewall();
        self.ensure_pods().await
    }

    fn apply_firewall(&mut self) {
        if let (Some(net), Some(subnet), Some(d)) = (self.net.as_ref(), self.subnet, self.drivers.as_ref()) {
            let policy = self.forward.clone().unwrap_or_else(|| d.default_forward());
            if let Err(e) = self.firewall.ensure(net.cidr, subnet, &policy) {
                warn!(error = %format!("{e:#}"), "firewall rules");
                self.set_status(|s| {
                    s.reconcile_errors += 1;
                    s.last_error = Some(format!("{e:#}"));
                });
            }
        }
    }

    /// Makes every pod of the config and of the state dir exist; forgets config pods that are no
    /// longer declared.
    async fn ensure_pods(&mut self) -> Result<()> {
        let subnet = self.subnet.context("no subnet")?;
        let mut known = if self.pods.is_empty() { self.state.load_pods()? } else { self.pods.clone() };
        let declared: BTreeSet<&str> = self.cfg.pods.iter().map(|p| p.name.as_str()).collect();
        let mut result = Vec::new();
        for gone in known.iter().filter(|p| p.source == PodSource::Config && !declared.contains(p.name.as_str())) {
            info!(pod = %gone.name, "pod no longer in agent.toml; removing it");
            if let Err(e) = pods::detach(&self.nl, gone, gone.owns_netns).await {
                warn!(pod = %gone.name, error = %format!("{e:#}"), "removing pod");
            }
        }
        known.retain(|p| p.source != PodSource::Config || declared.contains(p.name.as_str()));
        let mut wanted: Vec<(String, String, String, PodSource)> = self
            .cfg
            .pods
            .iter()
            .map(|p| (p.name.clone(), p.netns.clone(), p.ifname.clone(), PodSource::Config))
            .collect();
        for p in &known {
            if p.source != PodSource::Config && !declared.contains(p.name.as_str()) && !Self::cni_pod_gone(p) {
                wanted.push((p.name.clone(), p.netns.clone(), p.ifname.clone(), p.source));
            }
        }
        let mut errors = Vec::new();
        for (name, netns, ifname, source) in wanted {
            let prev = known.iter().find(|p| p.name == name);
            let used: BTreeSet<Ipv4Addr> = known
                .iter()
                .filter(|p| p.name != name)
                .map(|p| p.ip)
                .chain(result.iter().map(|p: &PodRecord| p.ip))
                .collect();
            let req = AttachRequest {
                name: &name,
                netns: &netns,
                ifname: &ifname,
                source,
                remembered: prev.map(|p| p.ip),
                owns_netns: prev.is_some_and(|p| p.owns_netns),
            };
            let net = PodNet { nl: &self.nl, bridge_index: self.bridge_index, subnet, mtu: self.mtu };
            match pods::attach(&net, &req, &used).await {
                Ok(rec) => {
                    if prev.is_some_and(|p| p.ip != rec.ip) {
                        warn!(pod = %name, old = ?prev.map(|p| p.ip), new = %rec.ip, "pod re-addressed");
                    }
                    result.push(rec);
                }
                Err(e) => {
                    errors.push(format!("pod {name}: {e:#}"));
                    if let Some(p) = prev {
                        result.push(p.clone());
                    }
                }
            }
        }
        self.pods = result;
        self.state.save_pods(&self.pods)?;
        self.publish_pods(subnet);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(errors.join("; ")))
        }
    }

    fn pod_info(&self, p: &PodRecord, subnet: Ipv4Net) -> PodInfo {
        PodInfo {
            name: p.name.clone(),
            netns: p.netns.clone(),
            ifname: p.ifname.clone(),
            ip: p.ip,
            prefix_len: subnet.prefix_len(),
            gateway: subnet::gateway(subnet),
            host_veth: p.host_veth.clone(),
            source: p.source.as_str().to_string(),
        }
    }

    fn publish_pods(&self, subnet: Ipv4Net) {
        let infos: Vec<PodInfo> = self.pods.iter().map(|p| self.pod_info(p, subnet)).collect();
        self.set_status(|s| s.pods = infos);
    }

    /// [`Self::relist`]; when that fails on the current connection, connects afresh (trying
    /// every endpoint, so a dead etcd member is left for a live one) and tries once more.
    async fn rewatch(&mut self) -> Result<()> {
        if self.relist().await.is_ok() {
            return Ok(());
        }
        self.store = Some(EtcdStore::connect(&self.cfg.etcd).await?);
        self.relist().await
    }

    /// Re-reads every subnet record and restarts the watch from that revision.
    async fn relist(&mut self) -> Result<()> {
        let prefix = self.keys.subnets_prefix();
        let (raw, rev) = self.store()?.list(&prefix).await?;
        self.records = raw.into_iter().map(|r| (r.key.clone(), r)).collect();
        self.revision = rev;
        let w = self.store()?.watch(&prefix, rev + 1).await?;
        self.watch = Some(w);
        self.set_status(|s| s.etcd_connected = true);
        self.mark_etcd_ok();
        Ok(())
    }

    fn rebuild_peers(&mut self) {
        let Some(net) = self.net.as_ref() else { return };
        let raw: Vec<RawRecord> = self.records.values().cloned().collect();
        self.peers = build_peer_set(net, &self.keys, &raw, &self.cfg.node_name, self.subnet);
        let mut new_skips = 0;
        for s in &self.peers.skipped {
            if self.seen_skips.insert((s.key.clone(), s.mod_revision)) {
                new_skips += 1;
                warn!(key = %s.key, reason = %s.reason, "skipping subnet record");
            }
        }
        if new_skips > 0 {
            self.set_status(|s| s.skipped_records += new_skips);
        }
    }

    /// Makes sure the own record is in etcd (re-created after an eviction or expiry).
    async fn ensure_own_record(&mut self) -> Result<()> {
        let Some(subnet) = self.subnet else { return Ok(()) };
        let key = self.keys.subnet(subnet);
        match self.records.get(&key) {
            Some(r) if r.value == self.record_value.as_bytes() => Ok(()),
            Some(r) => {
                let theirs = SubnetRecord::from_json(&key, &r.value).ok();
                if theirs.as_ref().is_some_and(|t| t.node_id == self.node_id) {
                    return Ok(());
                }
                error!(subnet = %subnet, holder = ?theirs.map(|t| t.node), "another node now holds this node's subnet; re-acquiring");
                self.subnet = None;
                self.subnet_lease = 0;
                while !self.try_acquire().await? {}
                self.plumb().await?;
                Ok(())
            }
            None => {
                warn!(subnet = %subnet, "own subnet record missing in etcd; re-creating it");
                let (lease, ttl) = (self.subnet_lease, self.cfg.timers.subnet_lease);
                if !self.store()?.keep_alive_once(lease).await.unwrap_or(false) {
                    self.subnet_lease = self.store()?.grant(ttl).await?;
                }
                let (lease, value) = (self.subnet_lease, self.record_value.clone());
                if !self.store()?.create(&key, value, lease).await? {
                    bail!("lost the race to re-create {key}");
                }
                self.mark(|h, now| h.record_renewed = now);
                Ok(())
            }
        }
    }

    async fn reconcile_routes(&mut self) -> Result<()> {
        let node = self.node_view().await?;
        let drivers = self.drivers.as_mut().context("no backend yet")?;
        drivers.observe(&self.nl).await?;
        let peers: Vec<&Peer> = self.peers.peers.values().collect();
        let (plan, policy) = drivers.plan(&peers, &node);
        drivers.hand_over(&peers, &node);
        if self.forward.as_ref().is_some_and(|f| *f != policy) {
            // Peers moved between backends with different forward modes: the rules follow now.
            self.forward = Some(policy);
            self.apply_firewall();
        } else {
            self.forward = Some(policy);
        }
        let Plan { routes: desired, refused } = plan;
        for r in &refused {
            warn!(peer = %r.node, subnet = %r.subnet, reason = %r.reason, "peer not routable");
        }
        let current = self.nl.weft_routes().await?;
        let actions = routes::plan(&desired, &current);
        let mut errors = Vec::new();
        let mut removed = None;
        for a in &actions {
            info!(action = ?describe(a), "route");
            match self.nl.apply(a).await {
                Err(e) => errors.push(format!("{e:#}")),
                Ok(()) => {
                    if let Action::Del(r) = a {
                        removed = Some(RouteRemoved { subnet: r.dst.to_string(), unix_ms: now_unix_ms() });
                    }
                }
            }
        }
        let installed: BTreeSet<Route> = if actions.is_empty() {
            current.into_iter().collect()
        } else {
            self.nl.weft_routes().await?.into_iter().collect()
        };
        // When each peer's route was first seen installed: carried over from the last snapshot.
        let now_ms = now_unix_ms();
        let since: BTreeMap<(String, String), u64> = {
            let st = self.status.read().unwrap_or_else(|p| p.into_inner());
            st.peers.iter().map(|p| ((p.node.clone(), p.subnet.clone()), p.route_since_unix_ms)).collect()
        };
        let peers: Vec<PeerStatus> = self
            .peers
            .peers
            .values()
            .map(|p| {
                let subnet = p.subnet.to_string();
                let route_ok = desired.iter().any(|d| d.dst == p.subnet && installed.contains(d));
                let before = since.get(&(p.node.clone(), subnet.clone())).copied().filter(|&t| t > 0);
                PeerStatus {
                    node: p.node.clone(),
                    route_since_unix_ms: if route_ok { before.unwrap_or(now_ms) } else { 0 },
                    subnet,
                    public_ip: p.public_ip,
                    route_ok,
                    problem: refused.iter().find(|r| r.subnet == p.subnet).map(|r| r.reason.clone()),
                }
            })
            .collect();
        self.set_status(|s| {
            s.peers = peers;
            if removed.is_some() {
                s.last_route_removed = removed;
            }
        });
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(errors.join("; ")))
        }
    }

    /// Notices a changed underlay MTU. host-gw: the bridge, the pods and subnet.env follow (the
    /// plumbing that comes next applies it) unless `bridge.mtu` pins them. A backend whose MTU
    /// is fixed when it starts (quic's tunnel and QUIC packet size) says so; only a restart
    /// adopts the new one then.
    async fn follow_underlay_mtu(&mut self) {
        let Some(old) = self.underlay.clone() else { return };
        let Ok(Some(link)) = self.nl.link_by_index(old.index).await else { return };
        let mtu = link.mtu.max(576);
        if mtu == old.mtu {
            return;
        }
        self.underlay = Some(UnderlayInfo { mtu, ..old.clone() });
        if let Some(note) = self.drivers.as_ref().and_then(|d| d.fixed_mtu_note()) {
            warn!(old = old.mtu, new = mtu, pod_mtu = self.mtu, "{note}");
            return;
        }
        if self.cfg.bridge.mtu.is_some() {
            info!(old = old.mtu, new = mtu, "underlay MTU changed; bridge.mtu pins the bridge and pod MTU");
            return;
        }
        info!(old = old.mtu, new = mtu, "underlay MTU changed; the bridge, pods and subnet.env follow");
        self.mtu = mtu;
        if let (Some(net), Some(subnet)) = (self.net.as_ref(), self.subnet) {
            let env = state::subnet_env(net.cidr, subnet, mtu, self.cfg.ip_masq);
            if let Err(e) = state::write_atomic(&self.cfg.paths.subnet_env, env.as_bytes(), 0o644) {
                warn!(error = %format!("{e:#}"), "rewriting subnet.env");
            }
        }
    }

    /// One reconcile. `full` also re-checks firewall, bridge, pods and the own record.
    async fn reconcile(&mut self, full: bool) {
        self.rebuild_peers();
        let mut errors = Vec::new();
        if full {
            if self.watch.is_some() {
                if let Err(e) = self.ensure_own_record().await {
                    errors.push(format!("own record: {e:#}"));
                }
            }
            self.follow_underlay_mtu().await;
            if let Err(e) = self.plumb().await {
                errors.push(format!("{e:#}"));
            }
        }
        if let Err(e) = self.reconcile_routes().await {
            errors.push(format!("routes: {e:#}"));
        }
        let ready = errors.is_empty() || self.subnet.is_some();
        self.set_status(|s| {
            s.reconciles += 1;
            s.health.loop_tick = now_secs();
            s.ready = ready;
            if errors.is_empty() {
                s.last_error = None;
            } else {
                s.reconcile_errors += 1;
                s.last_error = Some(errors.join("; "));
            }
        });
        if !errors.is_empty() {
            warn!(errors = %errors.join("; "), "reconcile incomplete");
        }
    }

    async fn heartbeat(&mut self) -> Result<()> {
        let ttl = self.cfg.timers.heartbeat_ttl;
        let lease = self.heartbeat_lease;
        let alive = lease != 0 && self.store()?.keep_alive_once(lease).await?;
        if alive {
            return Ok(());
        }
        self.heartbeat_lease = self.store()?.grant(ttl).await?;
        let hb = Heartbeat {
            schema: weft_config::records::SCHEMA_VERSION,
            node_id: self.node_id.clone(),
            subnet: self.subnet,
            status: "ready".into(),
            updated: now_secs(),
            epoch: self.epoch,
        };
        let key = self.keys.node(&self.cfg.node_name);
        let lease = self.heartbeat_lease;
        self.store()?.put(&key, hb.to_json(), lease).await
    }

    async fn main_loop(&mut self) -> Result<Exit> {
        let mut tick = tokio::time::interval(self.cfg.timers.reconcile);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut hb = tokio::time::interval(self.cfg.timers.heartbeat_ttl / 3);
        hb.tick().await;
        let mut renew = tokio::time::interval(self.cfg.timers.subnet_lease / 10);
        renew.tick().await;
        // While the watch is down (etcd away), retry it every second rather than at the next
        // full reconcile, so nodes that joined meanwhile are routed as soon as etcd is back.
        let mut rewatch = tokio::time::interval(Duration::from_secs(1));
        rewatch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let watching = self.watch.is_some();
            let watch_msg = async {
                match self.watch.as_mut() {
                    Some(w) => Some(w.next().await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.sigterm.recv() => return Ok(Exit::Signal),
                _ = self.sigint.recv() => return Ok(Exit::Signal),
                Some((req, reply)) = self.commands.recv() => {
                    let leave = matches!(req, Request::Leave);
                    let resp = self.handle(req).await;
                    let _ = reply.send(resp);
                    if leave {
                        return Ok(Exit::Left);
                    }
                }
                msg = watch_msg => {
                    if let Some(msg) = msg {
                        self.on_watch(msg).await;
                    }
                }
                _ = tick.tick() => {
                    if self.watch.is_none() {
                        match self.rewatch().await {
                            Ok(()) => info!("etcd watch re-established"),
                            Err(e) => {
                                self.set_status(|s| s.etcd_connected = false);
                                warn!(error = %format!("{e:#}"), "etcd still unreachable; data plane kept as is");
                            }
                        }
                    }
                    self.reconcile(true).await;
                }
                _ = rewatch.tick(), if !watching => {
                    if self.rewatch().await.is_ok() {
                        info!("etcd watch re-established");
                        self.reconcile(true).await;
                    }
                }
                _ = hb.tick() => {
                    if let Err(e) = self.beat().await {
                        warn!(error = %format!("{e:#}"), "heartbeat failed");
                    }
                }
                _ = renew.tick() => {
                    let lease = self.subnet_lease;
                    match self.store() {
                        Ok(c) => match c.keep_alive_once(lease).await {
                            Ok(true) => self.mark(|h, now| (h.record_renewed, h.etcd_ok) = (now, now)),
                            Ok(false) => warn!("subnet lease expired; the record is re-created on the next reconcile"),
                            Err(e) => warn!(error = %format!("{e:#}"), "renewing subnet lease"),
                        },
                        Err(e) => warn!(error = %format!("{e:#}"), "renewing subnet lease"),
                    }
                }
            }
        }
    }

    async fn on_watch(&mut self, msg: WatchMsg) {
        match msg {
            WatchMsg::Broken(error) => {
                warn!(error = ?error, "etcd watch broken; re-listing every second until etcd answers");
                self.watch = None;
                self.set_status(|s| s.etcd_connected = false);
                return;
            }
            WatchMsg::Compacted { compact_revision, reason } => {
                warn!(compact = compact_revision, reason = %reason, "watch cancelled; re-listing");
                self.watch = None;
                if let Err(e) = self.relist().await {
                    warn!(error = %format!("{e:#}"), "re-list failed");
                }
            }
            WatchMsg::Events(events) => {
                for ev in events {
                    let rev = ev.kv.mod_revision;
                    match ev.kind {
                        EventKind::Put => {
                            self.records.insert(ev.kv.key.clone(), ev.kv);
                        }
                        EventKind::Delete => {
                            self.records.remove(&ev.kv.key);
                        }
                    }
                    self.revision = self.revision.max(rev);
                }
            }
        }
        self.mark_etcd_ok();
        self.reconcile(false).await;
    }

    async fn handle(&mut self, req: Request) -> Response {
        let r = match req {
            Request::Status => unreachable_status(),
            Request::PodList => {
                let subnet = self.subnet.unwrap_or_default();
                return Response::Pods { pods: self.pods.iter().map(|p| self.pod_info(p, subnet)).collect() };
            }
            Request::PodAdd { name, netns, ifname, netns_path: Some(path) } => {
                self.pod_add_path(name, netns, ifname, path).await
            }
            Request::PodAdd { name, netns, ifname, netns_path: None } => self.pod_add(name, netns, ifname).await,
            Request::PodDel { name } => self.pod_del(&name).await,
            Request::Leave => self.leave().await.map(|()| Response::Done),
        };
        r.unwrap_or_else(|e| Response::Error { message: format!("{e:#}") })
    }

    async fn pod_add(&mut self, name: String, netns: Option<String>, ifname: Option<String>) -> Result<Response> {
        let (netns, ifname) = pod_names(&name, netns, ifname)?;
        let subnet = self.subnet.context("no subnet yet")?;
        if let Some(p) = self.pods.iter().find(|p| p.name == name) {
            if p.netns == netns && p.ifname == ifname {
                return Ok(Response::Pod(self.pod_info(p, subnet)));
            }
            bail!("pod {name} exists with namespace {} and interface {}", p.netns, p.ifname);
        }
        if let Some(p) = self.pods.iter().find(|p| p.netns == netns && p.ifname == ifname) {
            bail!("namespace {netns} interface {ifname} already belongs to pod {}", p.name);
        }
        let used: BTreeSet<Ipv4Addr> = self.pods.iter().map(|p| p.ip).collect();
        let req = AttachRequest {
            name: &name,
            netns: &netns,
            ifname: &ifname,
            source: PodSource::Api,
            remembered: None,
            owns_netns: false,
        };
        let net = PodNet { nl: &self.nl, bridge_index: self.bridge_index, subnet, mtu: self.mtu };
        let rec = pods::attach(&net, &req, &used).await?;
        self.pods.push(rec.clone());
        self.state.save_pods(&self.pods)?;
        self.publish_pods(subnet);
        info!(pod = %name, ip = %rec.ip, "pod added");
        Ok(Response::Pod(self.pod_info(&rec, subnet)))
    }

    async fn pod_del(&mut self, name: &str) -> Result<Response> {
        let Some(pos) = self.pods.iter().position(|p| p.name == name) else { bail!("no pod named {name}") };
        if self.pods[pos].source == PodSource::Config {
            bail!("pod {name} is declared in agent.toml; remove it there and restart the agent");
        }
        let pod = self.pods[pos].clone();
        pods::detach(&self.nl, &pod, pod.owns_netns).await?;
        self.pods.remove(pos);
        self.state.save_pods(&self.pods)?;
        if let Some(s) = self.subnet {
            self.publish_pods(s);
        }
        info!(pod = %name, "pod deleted");
        Ok(Response::Done)
    }

    /// Releases the subnet and removes everything the agent made. Goes on past failures.
    async fn leave(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        if let Some(subnet) = self.subnet {
            let key = self.keys.subnet(subnet);
            let value = self.record_value.clone().into_bytes();
            let hb = self.keys.node(&self.cfg.node_name);
            let leases = [self.subnet_lease, self.heartbeat_lease];
            match self.store() {
                Ok(c) => {
                    if let Err(e) = c.delete_if(&key, value).await {
                        errors.push(format!("{e:#}"));
                    }
                    if let Err(e) = c.delete(&hb).await {
                        errors.push(format!("{e:#}"));
                    }
                    for l in leases.into_iter().filter(|l| *l != 0) {
                        if let Err(e) = c.revoke(l).await {
                            errors.push(format!("{e:#}"));
                        }
                    }
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        errors.extend(teardown_local(&self.nl, &self.cfg, &self.pods, &self.state, &self.firewall).await);
        self.pods.clear();
        if errors.is_empty() {
            info!("left the network; everything weft made on this node is removed");
            Ok(())
        } else {
            Err(anyhow!(errors.join("; ")))
        }
    }
}

fn unreachable_status() -> Result<Response> {
    Err(anyhow!("status is served by the API task"))
}

fn describe(a: &Action) -> String {
    match a {
        Action::Add(r) => format!("add {} via {:?}", r.dst, r.via),
        Action::Replace { old, new } => format!("replace {} via {:?} (was via {:?})", new.dst, new.via, old.via),
        Action::Del(r) => format!("delete {} via {:?}", r.dst, r.via),
    }
}

/// Checks a pod request's names and fills in the defaults: namespace = pod name, interface eth0.
fn pod_names(name: &str, netns: Option<String>, ifname: Option<String>) -> Result<(String, String)> {
    use weft_config::agent::{valid_ifname, valid_name, valid_netns};
    let netns = netns.unwrap_or_else(|| name.to_string());
    let ifname = ifname.unwrap_or_else(|| "eth0".into());
    if !valid_name(name) {
        bail!("invalid pod name {name:?}: lowercase letters, digits, '-', '_' or '.', 1 to 63 characters");
    }
    if !valid_netns(&netns) {
        bail!("invalid namespace name {netns:?}");
    }
    if !valid_ifname(&ifname) {
        bail!("invalid interface name {ifname:?}");
    }
    Ok((netns, ifname))
}

/// Removes routes, pods, firewall rules, the bridge and the agent's files. Returns every error.
pub async fn teardown_local<K: Kernel>(
    nl: &K,
    cfg: &AgentConfig,
    pods: &[PodRecord],
    state: &StateDir,
    fw: &Firewall,
) -> Vec<String> {
    let mut errors = Vec::new();
    match nl.weft_routes().await {
        Ok(routes) => {
            for r in routes {
                if let Err(e) = nl.apply(&Action::Del(r)).await {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        Err(e) => errors.push(format!("{e:#}")),
    }
    for p in pods {
        if let Err(e) = pods::detach(nl, p, p.owns_netns).await {
            errors.push(format!("pod {}: {e:#}", p.name));
        }
    }
    for name in backend::leftover_links::<K>(cfg) {
        match nl.link(&name).await {
            Ok(Some(t)) => {
                if let Err(e) = nl.del_link(t.index).await {
                    errors.push(format!("{e:#}"));
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if let Err(e) = fw.remove() {
        errors.push(format!("{e:#}"));
    }
    match nl.link(&cfg.bridge.name).await {
        Ok(Some(b)) => {
            if let Err(e) = nl.del_link(b.index).await {
                errors.push(format!("{e:#}"));
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(format!("{e:#}")),
    }
    for f in [&cfg.paths.subnet_env] {
        if let Err(e) = std::fs::remove_file(f) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("removing {}: {e}", f.display()));
            }
        }
    }
    if let Err(e) = state.remove_all() {
        errors.push(format!("{e:#}"));
    }
    errors
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

/// `--leave` with no agent running: release the record in etcd (if reachable) and remove what
/// the state dir says the agent made.
pub async fn leave_offline(cfg: AgentConfig) -> Result<()> {
    let nl = Netlink::open()?;
    let state = StateDir::new(&cfg.paths.state_dir);
    let node_id = node_identity(&cfg)?;
    let keys = Keys::new(&cfg.network);
    let pods = state.load_pods().unwrap_or_default();
    let mut errors = Vec::new();
    if let Ok(Some(s)) = state.load_subnet() {
        match tokio::time::timeout(Duration::from_secs(10), EtcdStore::connect(&cfg.etcd)).await {
            Ok(Ok(c)) => {
                let key = keys.subnet(s.subnet);
                if let Ok(Some(rec)) = c.get(&key).await {
                    if SubnetRecord::from_json(&key, &rec.value).is_ok_and(|r| r.node_id == node_id) {
                        if let Err(e) = c.delete_if(&key, rec.value).await {
                            errors.push(format!("{e:#}"));
                        }
                    }
                }
                let _ = c.delete(&keys.node(&cfg.node_name)).await;
            }
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(_) => errors.push("timed out connecting to etcd; the subnet record stays until evicted".into()),
        }
    }
    let fw = Firewall::new(&cfg);
    errors.extend(teardown_local(&nl, &cfg, &pods, &state, &fw).await);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}
