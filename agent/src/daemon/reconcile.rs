//! The running node's loop work: list and watch the subnet records, the one reconcile (own
//! record, MTU, plumbing, routes, peer status), the heartbeat and the lease renewal.

use super::acquire;
use super::{decide, now_secs, now_unix_ms, Ctx, Node};
use crate::backend::{NodeView, Plan, UnderlayInfo};
use crate::firewall::Runner;
use crate::kernel::Kernel;
use crate::lease::Write;
use crate::routes::{self, Action, Route};
use crate::state;
use anyhow::{anyhow, bail, Result};
use std::collections::BTreeSet;
use tracing::{error, info, warn};
use weft_config::api::RouteRemoved;
use weft_config::peers::{build_peer_set, Peer, RawRecord};
use weft_config::subnet::{Family, PerFamily};
use weft_config::SubnetRecord;
use weft_store::{EventKind, Store, WatchMsg};

impl<K: Kernel, S: Store> Node<K, S> {
    /// The node as the backends see it, with the underlay's current prefixes.
    pub(super) async fn node_view<R: Runner>(&self, ctx: &Ctx<K, S, R>) -> Result<NodeView> {
        let prefixes = ctx.nl.addrs(self.underlay.index).await?;
        Ok(NodeView {
            underlay: self.underlay.clone(),
            prefixes,
            clusters: self.net.pools().map(|_, p| p.cidr),
            subnets: self.subnets,
            mtu: self.mtu,
        })
    }

    /// After the first plumbing: the first list, reconcile and heartbeat.
    pub(super) async fn first_pass<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) {
        if let Err(e) = self.relist(ctx).await {
            warn!(error = %format!("{e:#}"), "initial peer list failed; retrying on the next reconcile");
        }
        self.reconcile(ctx, true).await;
        if let Err(e) = self.beat(ctx).await {
            warn!(error = %format!("{e:#}"), "heartbeat failed");
        }
    }

    /// The periodic full reconcile (re-watching first if etcd was away).
    pub(super) async fn on_tick<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) {
        if self.watch.is_none() {
            match self.rewatch(ctx).await {
                Ok(()) => info!("etcd watch re-established"),
                Err(e) => {
                    ctx.set_status(|s| s.etcd_connected = false);
                    warn!(error = %format!("{e:#}"), "etcd still unreachable; data plane kept as is");
                }
            }
        }
        self.reconcile(ctx, true).await;
    }

    /// Keeps the subnet record's lease alive.
    pub(super) async fn renew<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) {
        match self.store.keep_alive_once(self.subnet_lease).await {
            Ok(true) => ctx.mark(|h, now| (h.record_renewed, h.etcd_ok) = (now, now)),
            Ok(false) => warn!("subnet lease expired; the record is re-created on the next reconcile"),
            Err(e) => warn!(error = %format!("{e:#}"), "renewing subnet lease"),
        }
    }

    pub(super) async fn heartbeat<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) -> Result<()> {
        let lease = self.heartbeat_lease;
        let alive = lease != 0 && self.store.keep_alive_once(lease).await?;
        if alive {
            return Ok(());
        }
        self.heartbeat_lease = self.store.grant(ctx.cfg.timers.heartbeat_ttl).await?;
        let hb = decide::heartbeat(&ctx.node_id, self.subnets, ctx.epoch, now_secs());
        let key = ctx.keys.node(&ctx.cfg.node_name);
        self.store.put(&key, hb.to_json(), self.heartbeat_lease).await
    }

    pub(super) async fn on_watch<R: Runner>(&mut self, ctx: &Ctx<K, S, R>, msg: WatchMsg) {
        match msg {
            WatchMsg::Broken(error) => {
                warn!(error = ?error, "etcd watch broken; re-listing every second until etcd answers");
                self.watch = None;
                ctx.set_status(|s| s.etcd_connected = false);
                return;
            }
            WatchMsg::Compacted { compact_revision, reason } => {
                warn!(compact = compact_revision, reason = %reason, "watch cancelled; re-listing");
                self.watch = None;
                if let Err(e) = self.relist(ctx).await {
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
        ctx.mark_etcd_ok();
        self.reconcile(ctx, false).await;
    }

    /// [`Self::relist`]; when that fails on the current connection, connects afresh (trying
    /// every endpoint, so a dead etcd member is left for a live one) and tries once more.
    pub(super) async fn rewatch<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) -> Result<()> {
        if self.relist(ctx).await.is_ok() {
            return Ok(());
        }
        self.store = ctx.host.connect().await?;
        self.relist(ctx).await
    }

    /// Re-reads every subnet record (of every family the network serves) and restarts the
    /// watch from that revision.
    pub(super) async fn relist<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) -> Result<()> {
        let prefix = ctx.keys.subnet_records_prefix(self.net.pools());
        let (raw, rev) = self.store.list(&prefix).await?;
        self.records = raw.into_iter().map(|r| (r.key.clone(), r)).collect();
        self.revision = rev;
        self.watch = Some(self.store.watch(&prefix, rev + 1).await?);
        ctx.set_status(|s| s.etcd_connected = true);
        ctx.mark_etcd_ok();
        Ok(())
    }

    fn rebuild_peers<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) {
        let raw: Vec<RawRecord> = self.records.values().cloned().collect();
        let own = self.subnets.values().copied();
        self.peers = build_peer_set(&self.net, &ctx.keys, &raw, &ctx.cfg.node_name, own);
        let new = decide::new_skips(&mut self.seen_skips, &self.peers.skipped);
        for s in &new {
            warn!(key = %s.key, reason = %s.reason, "skipping subnet record");
        }
        if !new.is_empty() {
            let n = new.len() as u64;
            ctx.set_status(|s| s.skipped_records += n);
        }
    }

    /// Makes sure the own records are in etcd (re-created after an eviction or expiry), one per
    /// family, on the one lease.
    async fn ensure_own_record<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) -> Result<()> {
        let mut missing = Vec::new();
        let held = self.subnets;
        for (family, subnet) in held.iter() {
            let key = ctx.keys.subnet(*subnet);
            match self.records.get(&key) {
                Some(r) if r.value == self.record_value.as_bytes() => {}
                Some(r) => {
                    let theirs = SubnetRecord::from_json(&key, &r.value).ok();
                    if theirs.as_ref().is_some_and(|t| t.node_id == ctx.node_id) {
                        // Ours, but not what this agent wrote last (a rewrite that failed
                        // half-way, an edit by hand): written again, compared on its revision.
                        warn!(subnet = %subnet, "own subnet record differs from what this agent wrote; rewriting it");
                        return self.rewrite_own_records(ctx).await;
                    }
                    error!(subnet = %subnet, holder = ?theirs.map(|t| t.node), "another node now holds this node's subnet; re-acquiring");
                    self.reacquire(ctx).await?;
                    return self.plumb(ctx).await;
                }
                None => missing.push((family, *subnet)),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        for (_, subnet) in &missing {
            warn!(subnet = %subnet, "own subnet record missing in etcd; re-creating it");
        }
        if !self.store.keep_alive_once(self.subnet_lease).await.unwrap_or(false) {
            self.subnet_lease = self.store.grant(ctx.cfg.timers.subnet_lease).await?;
        }
        let create = |family| missing.iter().find(|(f, _)| *f == family).map(|(_, s)| Write::Create(*s));
        let Some(writes) = PerFamily::from_options(create(Family::V4), create(Family::V6)) else { return Ok(()) };
        if !acquire::write_records(&self.store, &ctx.keys, &writes, &self.record_value, self.subnet_lease).await? {
            let keys: Vec<String> = writes.iter().map(|(_, w)| ctx.keys.subnet(w.subnet())).collect();
            bail!("lost the race to re-create {}", keys.join(" and "));
        }
        ctx.mark(|h, now| h.record_renewed = now);
        Ok(())
    }

    /// Claims a subnet afresh with a new lease, keeping the backends. On failure the node
    /// keeps its old view and the next full reconcile tries again.
    pub(super) async fn reacquire<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) -> Result<()> {
        let mut drivers = Some(std::mem::replace(&mut self.drivers, crate::backend::Drivers::from_list(vec![])));
        let mut lease = 0;
        acquire::refresh_public_ip6(ctx, &mut self.underlay).await;
        let r = loop {
            match acquire::try_acquire(ctx, &self.store, &self.underlay, &mut drivers, &mut lease).await {
                Ok(Some(claim)) => break Ok(claim),
                Ok(None) => continue,
                Err(e) => break Err(e),
            }
        };
        match r {
            Ok(claim) => {
                self.adopt(lease, claim);
                Ok(())
            }
            Err(e) => {
                if let Some(d) = drivers {
                    self.drivers = d;
                }
                Err(e)
            }
        }
    }

    async fn reconcile_routes<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) -> Result<()> {
        let nl = &ctx.nl;
        let node = self.node_view(ctx).await?;
        self.drivers.observe(nl).await?;
        let peers: Vec<&Peer> = self.peers.peers.values().collect();
        let (plan, policy) = self.drivers.plan_and_hand_over(&peers, &node);
        // Peers that moved between backends with different forward modes: the rules follow now.
        let moved = self.forward.as_ref().is_some_and(|f| *f != policy);
        self.forward = Some(policy);
        if moved {
            self.apply_firewall(ctx);
        }
        for r in &plan.refused {
            warn!(peer = %r.node, subnet = %r.subnet, reason = %r.reason, "peer not routable");
        }
        // Neighbour and FDB entries before the routes that go via them.
        let mut errors = super::sync_entries::sync(nl, &plan).await;
        // WireGuard peers (and their allowed IPs) before the routes into their device.
        errors.extend(super::sync_entries::sync_wireguard(nl, &plan).await);
        let Plan { routes: desired, refused, carriers, .. } = plan;
        let current = nl.weft_routes().await?;
        let actions = routes::plan(&desired, &current);
        let mut removed = None;
        for a in &actions {
            info!(action = ?decide::describe(a), "route");
            match nl.apply(a).await {
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
            nl.weft_routes().await?.into_iter().collect()
        };
        let before = ctx.status.read().unwrap_or_else(|p| p.into_inner()).peers.clone();
        let peers =
            decide::peer_statuses(&self.peers.peers, &desired, &installed, &refused, &carriers, &before, now_unix_ms());
        ctx.set_status(|s| {
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
    async fn follow_underlay_mtu<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) {
        let old = self.underlay.clone();
        let Ok(Some(link)) = ctx.nl.link_by_index(old.index).await else { return };
        let change = decide::mtu_change(old.mtu, link.mtu, self.drivers.fixed_mtu_note(), ctx.cfg.bridge.mtu.is_some());
        let mtu = link.mtu.max(576);
        match change {
            decide::MtuChange::Same => return,
            decide::MtuChange::Fixed(note) => warn!(old = old.mtu, new = mtu, pod_mtu = self.mtu, "{note}"),
            decide::MtuChange::Pinned => {
                info!(old = old.mtu, new = mtu, "underlay MTU changed; bridge.mtu pins the bridge and pod MTU")
            }
            decide::MtuChange::Follow(mtu) => {
                // The pod MTU the backends can carry over the new underlay MTU (less vxlan's
                // outer headers; host-gw's is the underlay's own).
                let pod_mtu = self.drivers.pod_mtu(mtu, None);
                info!(
                    old = old.mtu,
                    new = mtu,
                    pod_mtu,
                    "underlay MTU changed; the bridge, pods and subnet.env follow"
                );
                self.mtu = pod_mtu;
                let env = state::subnet_env_of(&self.leases(), pod_mtu, ctx.cfg.ip_masq);
                if let Err(e) = state::write_atomic(&ctx.cfg.paths.subnet_env, env.as_bytes(), 0o644) {
                    warn!(error = %format!("{e:#}"), "rewriting subnet.env");
                }
            }
        }
        self.underlay = UnderlayInfo { mtu, ..old };
    }

    /// One reconcile. `full` also re-checks firewall, bridge, pods and the own record.
    pub(super) async fn reconcile<R: Runner>(&mut self, ctx: &Ctx<K, S, R>, full: bool) {
        self.rebuild_peers(ctx);
        let mut errors = Vec::new();
        if full {
            if self.watch.is_some() {
                if let Err(e) = self.ensure_own_record(ctx).await {
                    errors.push(format!("own record: {e:#}"));
                }
            }
            self.follow_underlay_mtu(ctx).await;
            if let Err(e) = self.plumb(ctx).await {
                errors.push(format!("{e:#}"));
            }
        }
        if let Err(e) = self.reconcile_routes(ctx).await {
            errors.push(format!("routes: {e:#}"));
        }
        // The network config last, so the data plane never waits for etcd; a backend change
        // found there is plumbed and routed at once.
        if full && self.watch.is_some() {
            match self.follow_network_config(ctx).await {
                Ok(false) => {}
                Ok(true) => {
                    if let Err(e) = self.plumb(ctx).await {
                        errors.push(format!("{e:#}"));
                    }
                    if let Err(e) = self.reconcile_routes(ctx).await {
                        errors.push(format!("routes: {e:#}"));
                    }
                }
                Err(e) => errors.push(format!("network config: {e:#}")),
            }
        }
        let ready = decide::ready(&errors, true);
        ctx.set_status(|s| {
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
}
