//! A live backend change (`weftctl network init --backend B --force`, or other settings of
//! the backend): every full reconcile reads the network config and follows it without a
//! restart. Pods keep their addresses; the routes to the same subnets are replaced in place.
//!
//! When the old and the new backend share no driver (host-gw → vxlan, vxlan → quic, ...), the
//! old drivers keep running behind the new ones ([`Drivers::hand_over_to`]): a peer whose
//! record names the new backend goes to the new drivers, the others stay on the old ones, and
//! the own record carries both backends' data, so a pair of nodes of which one has switched
//! and the other not yet still agree on a path. Once no peer is left on the old backend (or
//! after [`RETIRE_AFTER`]), the old drivers stop and their devices go. When they share a
//! driver (auto ↔ its encap, another VNI), the drivers are dropped and built anew through a
//! re-acquire, and the peers lose packets until both ends have switched.

use super::{acquire, decide, Ctx, Node};
use crate::backend::{self, BuildContext, Drivers};
use crate::firewall::Runner;
use crate::kernel::Kernel;
use crate::lease::Write;
use crate::state;
use anyhow::{bail, Result};
use std::time::Duration;
use tracing::{info, warn};
use weft_config::records::SubnetRecord;
use weft_config::subnet::{Family, PerFamily};
use weft_config::NetworkConfig;
use weft_store::Store;

/// How long the old backend keeps carrying peers that have not switched (an agent too old to
/// follow, a node that is down): then it stops, and so does their traffic.
pub const RETIRE_AFTER: Duration = Duration::from_secs(300);
/// How long a reconcile waits for the network config: a slow or unreachable etcd (whose watch
/// has not broken yet) only postpones the check to the next full reconcile.
const CONFIG_READ_TIMEOUT: Duration = Duration::from_secs(1);

impl<K: Kernel, S: Store> Node<K, S> {
    /// One full reconcile's look at the network config, after the data plane's work: ends a
    /// change under way when it can, and starts one when the backend or its settings changed
    /// (same pools: a changed pool needs the agents restarted and is only reported). True when
    /// the drivers changed (the caller plumbs and routes again).
    pub(super) async fn follow_network_config<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) -> Result<bool> {
        let mut changed = false;
        if let Some((old_peers, running)) = self.drivers.retiring() {
            if old_peers == 0 || running >= RETIRE_AFTER {
                if old_peers > 0 {
                    warn!(peers = old_peers, "peers still on the old backend after {RETIRE_AFTER:?}; stopping it");
                }
                self.retire(ctx).await?;
                changed = true;
            }
        }
        let key = ctx.keys.config();
        let Ok(read) = tokio::time::timeout(CONFIG_READ_TIMEOUT, self.store.get(&key)).await else {
            return Ok(changed);
        };
        let Some(rec) = read? else { return Ok(changed) };
        let net = NetworkConfig::from_json(&key, &rec.value)?;
        if net == self.net {
            return Ok(changed);
        }
        // Resolvers need no more than new resolv.conf files, whatever else changed with them.
        if net.dns != self.net.dns {
            info!("the network's resolver settings changed; rewriting the pods' resolv.conf");
            self.net.dns = net.dns.clone();
            for pod in &self.pods {
                self.sync_resolv(ctx, pod);
            }
            self.publish_pods(ctx);
            if net == self.net {
                return Ok(changed);
            }
        }
        if net.pools() != self.net.pools() {
            warn!("the network's address pools changed; restart the agents to follow (nothing else changed here)");
            return Ok(changed);
        }
        if self.drivers.retiring().is_some() {
            // Another change before the last one finished: the last one's old drivers go now.
            self.retire(ctx).await?;
        }
        let (old_names, new_names) = (backend::driver_names(&self.net), backend::driver_names(&net));
        info!(from = %old_names.join("+"), to = %new_names.join("+"), "the network's backend changed; switching without a restart");
        if old_names.iter().any(|n| new_names.contains(n)) {
            return self.rebuild(ctx, &old_names).await.map(|()| true);
        }
        let live = &ctx.live;
        let mut new = backend::build(&BuildContext { cfg: &ctx.cfg, net: &net, live })?;
        new.check(&ctx.nl).await?;
        new.prepare(&self.underlay)?;
        let old = std::mem::replace(&mut self.drivers, Drivers::from_list(vec![]));
        self.drivers = old.hand_over_to(new, net.backend);
        self.net = net;
        self.republish(ctx).await?;
        info!("the old backend keeps carrying the peers that have not switched yet");
        Ok(true)
    }

    /// Ends a change: the old drivers stop, their devices go, MTU and record follow.
    async fn retire<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) -> Result<()> {
        let old = self.drivers.retire();
        info!(backends = %old.join("+"), "every peer has switched; stopping the old backend");
        self.remove_devices(ctx, &old).await?;
        self.republish(ctx).await
    }

    /// The change when old and new share a driver: everything built anew through a re-acquire
    /// (which keeps the subnets and republishes the record on a new lease; the old lease is
    /// revoked). On failure the old drivers are built again.
    async fn rebuild<R: Runner>(&mut self, ctx: &Ctx<K, S, R>, old_names: &[String]) -> Result<()> {
        let old = std::mem::replace(&mut self.drivers, Drivers::from_list(vec![]));
        let old_view = (self.net.clone(), self.record_value.clone(), self.mtu);
        let old_lease = self.subnet_lease;
        drop(old);
        if let Err(e) = self.reacquire(ctx).await {
            (self.net, self.record_value, self.mtu) = old_view;
            let live = &ctx.live;
            self.drivers = backend::build(&BuildContext { cfg: &ctx.cfg, net: &self.net, live })?;
            self.drivers.prepare(&self.underlay)?;
            return Err(e.context(format!("switching the backend from {}; staying on it", old_names.join("+"))));
        }
        let now = backend::driver_names(&self.net);
        let gone: Vec<&str> = old_names.iter().map(String::as_str).filter(|n| !now.iter().any(|m| m == n)).collect();
        self.remove_devices(ctx, &gone).await?;
        if old_lease != self.subnet_lease {
            if let Err(e) = self.store.revoke(old_lease).await {
                warn!(error = %format!("{e:#}"), "revoking the records' previous lease (it expires on its own)");
            }
        }
        Ok(())
    }

    /// Deletes the devices the named backends leave on a node.
    async fn remove_devices<R: Runner>(&self, ctx: &Ctx<K, S, R>, backends: &[&str]) -> Result<()> {
        for reg in backend::registry::<K>().into_iter().filter(|r| backends.contains(&r.name)) {
            for name in (reg.leftover_links)(&ctx.cfg) {
                if let Some(l) = ctx.nl.link(&name).await? {
                    info!(device = %name, backend = reg.name, "removing a device of a backend no longer run");
                    ctx.nl.del_link(l.index).await?;
                }
            }
        }
        Ok(())
    }

    /// After the drivers changed: the pod MTU they can all carry (the bridge and pods follow in
    /// the plumbing), subnet.env, the status, and the own record with every driver's data,
    /// rewritten under each own key on the records' lease.
    async fn republish<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) -> Result<()> {
        self.mtu = self.drivers.pod_mtu(self.underlay.mtu, ctx.cfg.bridge.mtu);
        let env = state::subnet_env_of(&self.leases(), self.mtu, ctx.cfg.ip_masq);
        state::write_atomic(&ctx.cfg.paths.subnet_env, env.as_bytes(), 0o644)?;
        let backend = self.net.backend.to_string();
        ctx.set_status(|s| s.backend = Some(backend));
        let rec = decide::own_record(&ctx.cfg, &ctx.node_id, ctx.epoch, &self.underlay, &self.net, &self.drivers);
        self.record_value = rec.to_json();
        self.rewrite_own_records(ctx).await
    }

    /// Writes `record_value` under each own key, in one transaction that compares each key
    /// as just read: a key this node no longer holds (evicted and taken by another node) is
    /// never overwritten; the next full reconcile re-acquires instead.
    pub(super) async fn rewrite_own_records<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) -> Result<()> {
        let (mut writes, mut current) = ((None, None), true);
        for (family, s) in self.subnets.iter() {
            let key = ctx.keys.subnet(*s);
            let w = match self.store.get(&key).await? {
                None => {
                    current = false;
                    Write::Create(*s)
                }
                Some(r) => {
                    current &= r.value == self.record_value.as_bytes();
                    let ours = SubnetRecord::from_json(&key, &r.value).is_ok_and(|t| t.node_id == ctx.node_id);
                    if !ours {
                        bail!("{key} is held by another node now; not rewriting it");
                    }
                    Write::Replace { subnet: *s, mod_revision: r.mod_revision }
                }
            };
            match family {
                Family::V4 => writes.0 = Some(w),
                Family::V6 => writes.1 = Some(w),
            }
        }
        let Some(writes) = PerFamily::from_options(writes.0, writes.1) else { return Ok(()) };
        if current {
            // Already as wanted (the watch had not shown it yet).
            return Ok(());
        }
        if !acquire::write_records(&self.store, &ctx.keys, &writes, &self.record_value, self.subnet_lease).await? {
            bail!("the own records changed while being rewritten; the next reconcile looks again");
        }
        ctx.mark(|h, now| h.record_renewed = now);
        Ok(())
    }
}
