//! Getting to a subnet: the underlay interface, the network config, and one claim attempt
//! (`lease::decide` per pool over what etcd holds, then one transaction for every family's
//! record), which ends in a [`Claim`].

use super::{decide, Ctx, Node};
use crate::backend::{self, BuildContext, Drivers, UnderlayInfo};
use crate::docker::Book;
use crate::firewall::Runner;
use crate::kernel::Kernel;
use crate::lease::{self, Blocked, Decision, Write};
use crate::state::{self, SubnetState};
use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use tracing::{info, warn};
use weft_config::peers::PeerSet;
use weft_config::records::{pool_fields, PRIMARY_FAMILY};
use weft_config::subnet::{self, Family, PerFamily};
use weft_config::{Heartbeat, NetworkConfig};
use weft_store::{Compare, Op, Store};

/// A won claim: the subnets, their record and what the node runs with.
pub(super) struct Claim<K: Kernel> {
    pub net: NetworkConfig,
    pub drivers: Drivers<K>,
    /// The subnet of the network's first family (see `Node::subnet`).
    pub subnet: IpNet,
    /// One subnet per pool of the network.
    pub subnets: PerFamily<IpNet>,
    pub record_value: String,
    pub mtu: u32,
}

impl<K: Kernel, S: Store> Node<K, S> {
    pub(super) fn new(store: S, underlay: UnderlayInfo, subnet_lease: i64, claim: Claim<K>) -> Self {
        Self {
            store,
            underlay,
            net: claim.net,
            drivers: claim.drivers,
            subnet: claim.subnet,
            subnets: claim.subnets,
            record_value: claim.record_value,
            subnet_lease,
            heartbeat_lease: 0,
            mtu: claim.mtu,
            forward: None,
            bridge_index: 0,
            pods: vec![],
            docker: Book::default(),
            records: BTreeMap::new(),
            revision: 0,
            watch: None,
            peers: PeerSet::default(),
            seen_skips: HashSet::new(),
        }
    }

    /// Takes the claim of a re-acquire (the subnet moved): the old lease is left to expire.
    pub(super) fn adopt(&mut self, lease: i64, claim: Claim<K>) {
        self.net = claim.net;
        self.drivers = claim.drivers;
        self.subnet = claim.subnet;
        self.subnets = claim.subnets;
        self.record_value = claim.record_value;
        self.mtu = claim.mtu;
        self.subnet_lease = lease;
    }

    /// Each held subnet with the cluster CIDR of its pool, as subnet.env lists them.
    pub(super) fn leases(&self) -> Vec<(IpNet, IpNet)> {
        leases(&self.net, &self.subnets)
    }
}

/// Each subnet of `subnets` with the cluster CIDR of the pool of its family.
fn leases(net: &NetworkConfig, subnets: &PerFamily<IpNet>) -> Vec<(IpNet, IpNet)> {
    subnets.iter().filter_map(|(f, s)| Some((net.pool(f)?.cidr, *s))).collect()
}

pub(super) async fn underlay_info<K: Kernel, S: Store, R: Runner>(ctx: &Ctx<K, S, R>) -> Result<UnderlayInfo> {
    let nl = &ctx.nl;
    let link = match &ctx.cfg.underlay.interface {
        Some(name) => nl.link(name).await?.with_context(|| format!("underlay interface {name} does not exist"))?,
        None => {
            let idx = nl
                .default_route_oif(Family::V4)
                .await?
                .context("no default route to pick the underlay interface from; set underlay.interface")?;
            nl.link_by_index(idx).await?.context("default route interface vanished")?
        }
    };
    let all = nl.addrs(link.index).await?;
    let addrs: Vec<IpNet> = all.iter().copied().filter(|a| Family::of_net(*a) == PRIMARY_FAMILY).collect();
    let public_ip = match ctx.cfg.underlay.public_ip {
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
    let public_ip6 = public_ip6(ctx, &link.name, &all);
    Ok(UnderlayInfo { index: link.index, name: link.name, public_ip, public_ip6, mtu: link.mtu.max(576) })
}

/// The IPv6 underlay address: `[underlay] public_ip6`, else the first global IPv6 address of
/// the interface's `addrs` (none: `None`, which only a network with an IPv6 pool minds).
fn public_ip6<K: Kernel, S: Store, R: Runner>(ctx: &Ctx<K, S, R>, iface: &str, addrs: &[IpNet]) -> Option<IpAddr> {
    let global = |a: &&IpNet| Family::of_net(**a) == Family::V6 && subnet::is_routable_unicast(a.addr());
    match ctx.cfg.underlay.public_ip6 {
        Some(ip) => {
            if !addrs.iter().any(|a| a.addr() == ip) {
                warn!(ip = %ip, iface = %iface, "configured public_ip6 is not an address of the underlay interface");
            }
            Some(ip)
        }
        None => addrs.iter().find(global).map(|a| a.addr()),
    }
}

/// Looks for an IPv6 underlay address again when there was none (it may have come since: a
/// router advertisement, or duplicate address detection finishing). Best effort.
pub(super) async fn refresh_public_ip6<K: Kernel, S: Store, R: Runner>(ctx: &Ctx<K, S, R>, u: &mut UnderlayInfo) {
    if u.public_ip6.is_some() {
        return;
    }
    if let Ok(addrs) = ctx.nl.addrs(u.index).await {
        u.public_ip6 = public_ip6(ctx, &u.name, &addrs);
    }
}

async fn read_network<K: Kernel, S: Store, R: Runner>(ctx: &Ctx<K, S, R>, store: &S) -> Result<NetworkConfig> {
    let key = ctx.keys.config();
    let rec =
        store.get(&key).await?.with_context(|| format!("no network config at {key}; run `weftctl network init`"))?;
    Ok(NetworkConfig::from_json(&key, &rec.value)?)
}

/// The subnet of `family` remembered in the state dir for this network (an unreadable file is
/// ignored, with a warning).
fn persisted<K: Kernel, S: Store, R: Runner>(ctx: &Ctx<K, S, R>, family: Family) -> Option<IpNet> {
    match ctx.state.load_subnet_of(family) {
        Ok(s) => s.filter(|s| s.network == ctx.cfg.network).map(|s| s.subnet),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "ignoring unreadable subnet state");
            None
        }
    }
}

/// One attempt at the subnets: Ok(None) on a lost race (retry at once). `drivers` and
/// `lease` carry over between attempts.
pub(super) async fn try_acquire<K: Kernel, S: Store, R: Runner>(
    ctx: &Ctx<K, S, R>,
    store: &S,
    u: &UnderlayInfo,
    drivers: &mut Option<Drivers<K>>,
    lease: &mut i64,
) -> Result<Option<Claim<K>>> {
    let cfg = &ctx.cfg;
    let net = read_network(ctx, store).await?;
    if let (Some(pool), None) = (net.pool(Family::V6), u.public_ip6) {
        bail!(
            "the network has an IPv6 pool ({} {}) but underlay interface {} has no global IPv6 address and \
             [underlay] public_ip6 is not set: peers could not reach this node's IPv6 subnet",
            pool_fields(Family::V6).0,
            pool.cidr,
            u.name
        );
    }
    let d = match drivers.take() {
        Some(d) if d.serve(&net) => drivers.insert(d),
        _ => drivers.insert(backend::build(&BuildContext { cfg, net: &net, live: &ctx.live })?),
    };
    d.check(&ctx.nl).await?;
    d.prepare(u)?;
    let (raw, _) = store.list(&ctx.keys.subnet_records_prefix(net.pools())).await?;
    let hb_key = ctx.keys.node(&cfg.node_name);
    let live =
        (store.get(&hb_key).await?).and_then(|r| Heartbeat::from_json(&hb_key, &r.value).ok()).map(|h| h.node_id);
    let decisions = net.pools().map(|family, pool| {
        let existing = decide::existing_of(&ctx.keys, family, &raw);
        lease::decide(&lease::Inputs {
            pool: *pool,
            node_name: &cfg.node_name,
            node_id: &ctx.node_id,
            persisted: persisted(ctx, family),
            existing: &existing,
            live_identity: live.as_deref(),
        })
    });
    for (_, decision) in decisions.iter() {
        match decision {
            Decision::TakeOver { subnet, previous_id, .. } => {
                warn!(subnet = %subnet, previous_id = %previous_id, "taking over the record of this node name from a dead identity");
            }
            Decision::Claim { subnet, moved_from: Some(old) } => {
                warn!(old = %old, new = %subnet, "PREVIOUS SUBNET IS TAKEN BY ANOTHER NODE: moving to a new subnet and re-addressing every pod");
            }
            _ => {}
        }
    }
    let record = decide::own_record(cfg, &ctx.node_id, ctx.epoch, u, &net, d).to_json();
    if *lease == 0 {
        *lease = store.grant(cfg.timers.subnet_lease).await?;
    }
    let writes = match lease::writes(&decisions) {
        Ok(w) => w,
        Err(Blocked::Refused(msg)) => bail!(msg),
        Err(Blocked::Exhausted { cidr, subnet_len, taken }) => {
            bail!("no free /{subnet_len} left in {cidr} ({taken} subnets taken); free one with `weftctl node evict` or widen the network")
        }
    };
    let subnets = writes.map(|_, w| w.subnet());
    let subnet = *subnets.first();
    let won = write_records(store, &ctx.keys, &writes, &record, *lease).await?;
    if !won {
        info!(subnet = %subnet, "lost a race for the subnet, retrying");
        return Ok(None);
    }
    ctx.mark(|h, now| h.record_renewed = now);
    for (_, s) in subnets.iter() {
        ctx.state.save_subnet(&SubnetState {
            network: cfg.network.clone(),
            subnet: *s,
            node_id: ctx.node_id.clone(),
        })?;
    }
    let mtu = d.pod_mtu(u.mtu, cfg.bridge.mtu);
    let env = state::subnet_env_of(&leases(&net, &subnets), mtu, cfg.ip_masq);
    state::write_atomic(&cfg.paths.subnet_env, env.as_bytes(), 0o644)?;
    let (v4, v6) = subnets.as_options();
    let public_ip6 = decide::published_ip6(u, &net);
    ctx.set_status(|s| {
        s.subnet = v4.map(|s| s.to_string());
        s.subnet6 = v6.map(|s| s.to_string());
        s.public_ip = Some(u.public_ip);
        s.public_ip6 = public_ip6;
        s.backend = Some(net.backend.to_string());
        s.last_error = None;
    });
    match v6 {
        None => info!(subnet = %subnet, public_ip = %u.public_ip, "subnet acquired"),
        Some(s6) => {
            info!(subnet = ?v4, subnet6 = %s6, public_ip = %u.public_ip, public_ip6 = ?public_ip6, "subnets acquired")
        }
    }
    let Some(drivers) = drivers.take() else { bail!("no backend yet") };
    Ok(Some(Claim { net, drivers, subnet, subnets, record_value: record, mtu }))
}

/// Writes `value` under the key of every write's subnet, all in one transaction on `lease`
/// (a node holds all its subnets or none). Returns false when a compare failed (a lost race).
pub(super) async fn write_records<S: Store>(
    store: &S,
    keys: &weft_config::Keys,
    writes: &PerFamily<Write>,
    value: &str,
    lease: i64,
) -> Result<bool> {
    let (mut compares, mut puts, mut what) = (Vec::new(), Vec::new(), Vec::new());
    for (_, w) in writes.iter() {
        let key = keys.subnet(w.subnet());
        match *w {
            Write::Create(_) => {
                compares.push(Compare::created_at(&key, 0));
                what.push(format!("claiming {key}"));
            }
            Write::Replace { mod_revision, .. } => {
                compares.push(Compare::modified_at(&key, mod_revision));
                what.push(format!("updating {key}"));
            }
        }
        puts.push(Op::put(&key, value, lease));
    }
    store.txn(compares, puts, vec![]).await.with_context(|| what.join(" and "))
}
