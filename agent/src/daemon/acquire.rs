//! Getting to a subnet: the underlay interface, the network config, and one claim attempt
//! (`lease::decide` over what etcd holds, then a transaction), which ends in a [`Claim`].

use super::{decide, Ctx, Node};
use crate::backend::{self, BuildContext, Drivers, UnderlayInfo};
use crate::firewall::Runner;
use crate::kernel::Kernel;
use crate::lease::{self, Decision};
use crate::state::{self, SubnetState};
use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use tracing::{info, warn};
use weft_config::peers::PeerSet;
use weft_config::records::PRIMARY_FAMILY;
use weft_config::subnet::{self, Family};
use weft_config::{Heartbeat, NetworkConfig};
use weft_store::Store;

/// A won claim: the subnet, its record and what the node runs with.
pub(super) struct Claim<K: Kernel> {
    pub net: NetworkConfig,
    pub drivers: Drivers<K>,
    pub subnet: IpNet,
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
            record_value: claim.record_value,
            subnet_lease,
            heartbeat_lease: 0,
            mtu: claim.mtu,
            forward: None,
            bridge_index: 0,
            pods: vec![],
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
        self.record_value = claim.record_value;
        self.mtu = claim.mtu;
        self.subnet_lease = lease;
    }

    /// The cluster CIDR of `subnet` (the network's first pool).
    pub(super) fn cluster(&self) -> IpNet {
        self.net.pools().first().cidr
    }
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

async fn read_network<K: Kernel, S: Store, R: Runner>(ctx: &Ctx<K, S, R>, store: &S) -> Result<NetworkConfig> {
    let key = ctx.keys.config();
    let rec =
        store.get(&key).await?.with_context(|| format!("no network config at {key}; run `weftctl network init`"))?;
    Ok(NetworkConfig::from_json(&key, &rec.value)?)
}

/// One attempt at the subnet: Ok(None) on a lost race (retry at once). `drivers` and
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
    let pool = net
        .pool(PRIMARY_FAMILY)
        .with_context(|| format!("network {} has no IPv4 pool (cidr); this agent serves IPv4 only", cfg.network))?;
    let d = match drivers.take() {
        Some(d) if d.names() == net.backend.to_string() => drivers.insert(d),
        _ => drivers.insert(backend::build(&net, &BuildContext { cfg, live: &ctx.live })?),
    };
    d.prepare(u)?;
    let (raw, _) = store.list(&ctx.keys.subnets_prefix()).await?;
    let existing = decide::existing(&ctx.keys, &raw);
    let hb_key = ctx.keys.node(&cfg.node_name);
    let live =
        (store.get(&hb_key).await?).and_then(|r| Heartbeat::from_json(&hb_key, &r.value).ok()).map(|h| h.node_id);
    let persisted = match ctx.state.load_subnet() {
        Ok(s) => s.filter(|s| s.network == cfg.network).map(|s| s.subnet),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "ignoring unreadable subnet state");
            None
        }
    };
    let decision = lease::decide(&lease::Inputs {
        pool,
        node_name: &cfg.node_name,
        node_id: &ctx.node_id,
        persisted,
        existing: &existing,
        live_identity: live.as_deref(),
    });
    let record = decide::own_record(cfg, &ctx.node_id, ctx.epoch, u, &net, d).to_json();
    if *lease == 0 {
        *lease = store.grant(cfg.timers.subnet_lease).await?;
    }
    let lease_id = *lease;
    let (subnet, won) = match decision {
        Decision::Refuse(msg) => bail!(msg),
        Decision::Exhausted { cidr, subnet_len, taken } => {
            bail!("no free /{subnet_len} left in {cidr} ({taken} subnets taken); free one with `weftctl node evict` or widen the network")
        }
        Decision::Reuse { subnet, mod_revision } => {
            let key = ctx.keys.subnet(subnet);
            (subnet, store.replace(&key, record.clone(), lease_id, mod_revision).await?)
        }
        Decision::TakeOver { subnet, mod_revision, previous_id } => {
            warn!(subnet = %subnet, previous_id = %previous_id, "taking over the record of this node name from a dead identity");
            let key = ctx.keys.subnet(subnet);
            (subnet, store.replace(&key, record.clone(), lease_id, mod_revision).await?)
        }
        Decision::Claim { subnet, moved_from } => {
            if let Some(old) = moved_from {
                warn!(old = %old, new = %subnet, "PREVIOUS SUBNET IS TAKEN BY ANOTHER NODE: moving to a new subnet and re-addressing every pod");
            }
            let key = ctx.keys.subnet(subnet);
            (subnet, store.create(&key, record.clone(), lease_id).await?)
        }
    };
    if !won {
        info!(subnet = %subnet, "lost a race for the subnet, retrying");
        return Ok(None);
    }
    ctx.mark(|h, now| h.record_renewed = now);
    ctx.state.save_subnet(&SubnetState { network: cfg.network.clone(), subnet, node_id: ctx.node_id.clone() })?;
    let mtu = d.pod_mtu(u.mtu, cfg.bridge.mtu);
    let env = state::subnet_env(pool.cidr, subnet, mtu, cfg.ip_masq);
    state::write_atomic(&cfg.paths.subnet_env, env.as_bytes(), 0o644)?;
    ctx.set_status(|s| {
        s.subnet = Some(subnet.to_string());
        s.public_ip = Some(u.public_ip);
        s.backend = Some(net.backend.to_string());
        s.last_error = None;
    });
    info!(subnet = %subnet, public_ip = %u.public_ip, "subnet acquired");
    let Some(drivers) = drivers.take() else { bail!("no backend yet") };
    Ok(Some(Claim { net, drivers, subnet, record_value: record, mtu }))
}
