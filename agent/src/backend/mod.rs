//! The backend seam: how cross-host traffic is carried, behind one trait.
//!
//! A [`Driver`] turns the peer set into kernel state and says what it publishes about this
//! node. The daemon talks to the node's drivers only through [`Drivers`] and never names one:
//! - [`registry`] maps a network config's backend name to a factory (flannel's `Register`);
//!   [`build`] makes the node's drivers from the network config.
//! - [`Driver::backend_data`] is what a driver publishes in the node's record, under its own
//!   name; peers' entries reach [`Driver::plan`] as opaque JSON that only that driver reads.
//! - [`Driver::plan`] is pure: from the peers assigned to the driver and the node's view of
//!   itself, the routes it wants, the peers it refuses (with a reason) and the forward policy
//!   for their subnets. The daemon applies all drivers' routes with one diff (`routes::plan`).
//! - The effects a driver needs of its own (a tun device and its data path, later a VXLAN
//!   device) happen in [`Driver::prepare`] (before the record is published), [`Driver::ensure`]
//!   (every full reconcile) and [`Driver::observe`] (before each plan).
//!
//! A node may run several drivers at once ([`Drivers`]): each peer goes to the first driver
//! that [`Driver::accepts`] it, and the last takes every peer left, so `auto` (host-gw for
//! on-link peers, an encapsulating driver for the rest) and a live backend change (old and new
//! side by side) need no change here. Today every network has exactly one.

pub mod host_gw;
pub mod quic;
pub mod vxlan;
pub mod wireguard;

use crate::api::LiveQuic;
use crate::firewall::{ForwardMode, ForwardPolicy};
use crate::kernel::{Fdb, Kernel, Neighbour, WgPeer};
use crate::routes::Route;
use anyhow::{bail, Result};
use futures::future::BoxFuture;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use weft_config::peers::Peer;
use weft_config::records::BackendData;
use weft_config::subnet::{Family, PerFamily};
use weft_config::{AgentConfig, NetworkConfig};

/// The node's underlay interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayInfo {
    pub index: u32,
    pub name: String,
    pub public_ip: IpAddr,
    /// The IPv6 address peers route this node's IPv6 subnet via: `[underlay] public_ip6`, else
    /// the interface's first global IPv6 address (`None` without one; a network with an IPv6
    /// pool needs it).
    pub public_ip6: Option<IpAddr>,
    pub mtu: u32,
}

/// What a driver knows of its own node when it plans or plumbs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub underlay: UnderlayInfo,
    /// Connected prefixes of the underlay interface (address/len as configured on it), every
    /// family.
    pub prefixes: Vec<IpNet>,
    /// The cluster CIDR of each family the network serves.
    pub clusters: PerFamily<IpNet>,
    /// This node's pod subnet of each family (one per cluster CIDR).
    pub subnets: PerFamily<IpNet>,
    /// MTU of the bridge and pods.
    pub mtu: u32,
}

impl NodeView {
    /// The gateway (the bridge's address) of the pod subnet of `family`, if the node has one.
    pub fn gateway(&self, family: Family) -> Option<IpAddr> {
        self.subnets.get(family).map(|s| weft_config::subnet::gateway(*s))
    }
}

impl UnderlayInfo {
    /// The underlay address of `family`: `public_ip`, or `public_ip6` (if known).
    pub fn public_ip_of(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => Some(self.public_ip),
            Family::V6 => self.public_ip6,
        }
    }
}

/// A peer that gets no route, and why (reported in status and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub node: String,
    pub subnet: IpNet,
    pub reason: String,
}

/// What one driver (or all of them together) wants in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub routes: Vec<Route>,
    pub refused: Vec<Refused>,
    /// Neighbour entries on the drivers' own devices.
    pub neighbours: Vec<Neighbour>,
    /// Remote FDB entries on the drivers' own devices.
    pub fdb: Vec<Fdb>,
    /// The devices whose weft neighbour and FDB entries this plan covers: on these, every weft
    /// entry it does not list is stale.
    pub entry_links: Vec<u32>,
    /// Which driver carries each peer subnet (filled by [`Drivers::plan`]).
    pub carriers: BTreeMap<IpNet, &'static str>,
    /// The peers each of the drivers' WireGuard devices should hold (every other peer on
    /// such a device is stale).
    pub wireguard: Vec<WgPlan>,
}

/// The peers one WireGuard device should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPlan {
    pub link: u32,
    pub peers: Vec<WgPeer>,
}

impl Plan {
    fn extend(&mut self, other: Plan) {
        self.routes.extend(other.routes);
        self.refused.extend(other.refused);
        self.neighbours.extend(other.neighbours);
        self.fdb.extend(other.fdb);
        self.entry_links.extend(other.entry_links);
        self.carriers.extend(other.carriers);
        self.wireguard.extend(other.wireguard);
    }
}

/// One way of carrying cross-host traffic, over kernel `K` (netlink, or the fake in tests).
/// Object safe, so one node can hold several.
pub trait Driver<K: Kernel>: Send {
    /// The backend's name: as in the network config, and the key of its `backend_data`.
    fn name(&self) -> &'static str;

    /// MTU of the bridge and pods for an underlay MTU, given agent.toml's `bridge.mtu`.
    fn pod_mtu(&self, underlay_mtu: u32, bridge_mtu: Option<u32>) -> u32;

    /// `None` when a changed underlay MTU can be followed at run time; else why not.
    fn fixed_mtu_note(&self) -> Option<&'static str> {
        None
    }

    /// Whether the kernel can run this driver, asked before [`Driver::prepare`]: a driver the
    /// node cannot run is refused before its record is published, with the reason.
    fn check<'a>(&'a self, _nl: &'a K) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Before the node's record is published (and again on every re-acquire): load
    /// credentials, bind sockets, anything peers rely on once they see the record.
    fn prepare(&mut self, _underlay: &UnderlayInfo) -> Result<()> {
        Ok(())
    }

    /// What this driver publishes in the node's record under its name, if anything.
    fn backend_data(&self, _underlay: &UnderlayInfo) -> Option<serde_json::Value> {
        None
    }

    /// Local plumbing on every full reconcile (devices, data paths). Idempotent.
    fn ensure<'a>(&'a mut self, _nl: &'a K, _node: &'a NodeView) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Reads what [`Driver::plan`] needs from the kernel, before each plan.
    fn observe<'a>(&'a mut self, _nl: &'a K) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether this driver carries traffic to `peer` (when several drivers run, the first
    /// that accepts a peer gets it; the last driver gets every peer left).
    fn accepts(&self, _peer: &Peer, _node: &NodeView) -> bool {
        true
    }

    /// Pure: routes and refusals for the peers assigned to this driver.
    fn plan(&self, peers: &[&Peer], node: &NodeView) -> Plan;

    /// Hands the planned peers to the driver's data path, if it has one (before the routes
    /// are applied, so a tunnel dials while the routes go in).
    fn hand_over(&mut self, _peers: &[&Peer], _node: &NodeView) {}

    /// How forwarded traffic to and from this driver's peers is filtered.
    fn forward_mode(&self) -> ForwardMode;
}

/// What builds a driver; one per backend in [`registry`].
pub struct Registration<K: Kernel> {
    pub name: &'static str,
    pub build: fn(&BuildContext) -> Result<Box<dyn Driver<K>>>,
    /// Devices this backend may have left on the node, removed by `--leave` whatever backend
    /// the network has now.
    pub leftover_links: fn(&AgentConfig) -> Vec<String>,
}

/// What a factory gets.
pub struct BuildContext<'a> {
    pub cfg: &'a AgentConfig,
    /// The network config the driver serves (its backend's settings).
    pub net: &'a NetworkConfig,
    /// Where a data path publishes its live status for the API.
    pub live: &'a LiveQuic,
}

/// Every backend weft knows. Adding one: a module with a `registration()`, listed here.
pub fn registry<K: Kernel>() -> [Registration<K>; 4] {
    [host_gw::registration(), quic::registration(), vxlan::registration(), wireguard::registration()]
}

/// The names of the drivers a network config runs, in order: its backend's, or for `auto`
/// host-gw (for on-link peers) and then its encapsulation (for every other peer).
pub fn driver_names(net: &NetworkConfig) -> Vec<String> {
    match net.backend {
        weft_config::Backend::Auto => vec![host_gw::NAME.to_string(), net.encap.to_string()],
        b => vec![b.to_string()],
    }
}

/// The drivers of a node: built from the network config.
pub fn build<K: Kernel>(ctx: &BuildContext) -> Result<Drivers<K>> {
    let names = driver_names(ctx.net);
    let mut list = Vec::new();
    for name in &names {
        let Some(reg) = registry::<K>().into_iter().find(|r| r.name == name) else {
            bail!("backend {name} is not built into this agent");
        };
        list.push((reg.build)(ctx)?);
    }
    Ok(Drivers { list, retiring: None })
}

/// Every device any backend may have left, for teardown.
pub fn leftover_links<K: Kernel>(cfg: &AgentConfig) -> Vec<String> {
    registry::<K>().into_iter().flat_map(|r| (r.leftover_links)(cfg)).collect()
}

/// The drivers a node runs, as one.
pub struct Drivers<K: Kernel> {
    list: Vec<Box<dyn Driver<K>>>,
    /// During a live backend change: the old backend's drivers, after the new ones in `list`.
    retiring: Option<Retiring>,
}

/// The old backend's drivers running beside the new ones during a live backend change, for
/// the peers that have not switched yet.
struct Retiring {
    /// The backend changed to: a peer whose record names it goes to the new drivers.
    to: weft_config::Backend,
    /// How many of `list` (from the front) are the new backend's.
    new: usize,
    /// Peers the old drivers carried at the last plan.
    old_peers: usize,
    since: std::time::Instant,
}

impl<K: Kernel> Drivers<K> {
    /// Drivers made by hand (tests; an empty set stands in while a re-acquire holds the real one).
    pub fn from_list(list: Vec<Box<dyn Driver<K>>>) -> Self {
        Self { list, retiring: None }
    }

    /// Live backend change: `new` (the drivers of backend `to`) carry every peer whose record
    /// names `to`, and these (the old backend's) keep carrying the peers that have not switched
    /// yet, until [`Drivers::retire`].
    pub fn hand_over_to(self, new: Drivers<K>, to: weft_config::Backend) -> Drivers<K> {
        let n = new.list.len();
        let mut list = new.list;
        list.extend(self.list);
        Drivers { list, retiring: Some(Retiring { to, new: n, old_peers: 0, since: std::time::Instant::now() }) }
    }

    /// During a live backend change: how many peers the old drivers carried at the last plan,
    /// and for how long they have run beside the new ones.
    pub fn retiring(&self) -> Option<(usize, std::time::Duration)> {
        self.retiring.as_ref().map(|r| (r.old_peers, r.since.elapsed()))
    }

    /// Ends a live backend change: the old drivers stop (dropped). Returns their names.
    pub fn retire(&mut self) -> Vec<&'static str> {
        let Some(r) = self.retiring.take() else { return Vec::new() };
        let old = self.list.split_off(r.new.min(self.list.len()));
        old.iter().map(|d| d.name()).collect()
    }

    /// The backend names, joined by `+` (`host-gw+vxlan` for auto).
    pub fn names(&self) -> String {
        self.list.iter().map(|d| d.name()).collect::<Vec<_>>().join("+")
    }

    /// Whether these are the drivers `net` runs (else they are built anew).
    pub fn serve(&self, net: &NetworkConfig) -> bool {
        self.list.iter().map(|d| d.name().to_string()).eq(driver_names(net))
    }

    /// The bridge and pod MTU: what every driver can carry.
    pub fn pod_mtu(&self, underlay_mtu: u32, bridge_mtu: Option<u32>) -> u32 {
        self.list.iter().map(|d| d.pod_mtu(underlay_mtu, bridge_mtu)).min().unwrap_or(underlay_mtu)
    }

    pub fn fixed_mtu_note(&self) -> Option<&'static str> {
        self.list.iter().find_map(|d| d.fixed_mtu_note())
    }

    /// Every driver's [`Driver::check`]: the first that cannot run fails it.
    pub async fn check(&self, nl: &K) -> Result<()> {
        for d in &self.list {
            d.check(nl).await?;
        }
        Ok(())
    }

    pub fn prepare(&mut self, underlay: &UnderlayInfo) -> Result<()> {
        self.list.iter_mut().try_for_each(|d| d.prepare(underlay))
    }

    /// Every driver's data for the node's record, keyed by backend name.
    pub fn backend_data(&self, underlay: &UnderlayInfo) -> BackendData {
        self.list.iter().filter_map(|d| Some((d.name().to_string(), d.backend_data(underlay)?))).collect()
    }

    pub async fn ensure(&mut self, nl: &K, node: &NodeView) -> Result<()> {
        for d in &mut self.list {
            d.ensure(nl, node).await?;
        }
        Ok(())
    }

    pub async fn observe(&mut self, nl: &K) -> Result<()> {
        for d in &mut self.list {
            d.observe(nl).await?;
        }
        Ok(())
    }

    /// Which driver carries each peer: the first that accepts it, else the last. During a
    /// live backend change, among the new drivers for a peer whose record names the new
    /// backend, among the old ones for the others.
    fn assign<'p>(&self, peers: &[&'p Peer], node: &NodeView) -> Vec<Vec<&'p Peer>> {
        let mut out = vec![Vec::new(); self.list.len()];
        for p in peers {
            let range = match &self.retiring {
                Some(r) if p.backend == r.to => 0..r.new,
                Some(r) => r.new..self.list.len(),
                None => 0..self.list.len(),
            };
            let last = range.end.saturating_sub(1);
            let i = range.clone().find(|&i| self.list[i].accepts(p, node)).unwrap_or(last);
            if let Some(v) = out.get_mut(i) {
                v.push(*p);
            }
        }
        out
    }

    /// Pure: every driver's plan for its share of the peers, and the forward policy.
    pub fn plan(&self, peers: &[&Peer], node: &NodeView) -> (Plan, ForwardPolicy) {
        self.plan_shares(&self.assign(peers, node), node)
    }

    fn plan_shares(&self, shares: &[Vec<&Peer>], node: &NodeView) -> (Plan, ForwardPolicy) {
        let mut plan = Plan::default();
        for (d, share) in self.list.iter().zip(shares) {
            plan.extend(d.plan(share, node));
            plan.carriers.extend(share.iter().map(|p| (p.subnet, d.name())));
        }
        (plan, self.forward_policy(shares))
    }

    /// Fail closed by default: when any driver tunnels, the cluster CIDR gets its mode, so a
    /// subnet not seen yet is never forwarded in plaintext; peers of a driver with another mode
    /// are overrides.
    fn forward_policy(&self, shares: &[Vec<&Peer>]) -> ForwardPolicy {
        let modes: Vec<ForwardMode> = self.list.iter().map(|d| d.forward_mode()).collect();
        let default = modes
            .iter()
            .find(|m| !matches!(m, ForwardMode::Open))
            .or(modes.first())
            .cloned()
            .unwrap_or(ForwardMode::Open);
        let mut overrides = BTreeMap::new();
        for (mode, share) in modes.iter().zip(shares) {
            if *mode != default {
                overrides.extend(share.iter().map(|p| (p.subnet, mode.clone())));
            }
        }
        ForwardPolicy { default, overrides }
    }

    /// The forward policy before any peer is known: the default alone.
    pub fn default_forward(&self) -> ForwardPolicy {
        self.forward_policy(&[])
    }

    /// [`Drivers::plan`], then the planned peers handed to each driver's data path (before the
    /// routes are applied), assigning the peers to drivers once for both.
    pub fn plan_and_hand_over(&mut self, peers: &[&Peer], node: &NodeView) -> (Plan, ForwardPolicy) {
        let shares = self.assign(peers, node);
        if let Some(r) = &mut self.retiring {
            r.old_peers = shares.iter().skip(r.new).map(Vec::len).sum();
        }
        let planned = self.plan_shares(&shares, node);
        for (d, share) in self.list.iter_mut().zip(&shares) {
            d.hand_over(share, node);
        }
        planned
    }
}

#[cfg(test)]
pub(crate) mod tests;
