//! The daemon's decisions as plain functions over plain data (no I/O, `now` as an argument):
//! what etcd's listing says is taken, the own record and heartbeat, what the bridge should
//! carry, what a changed underlay MTU means, which skipped records are news, and each peer's
//! status after a reconcile.

use crate::backend::{Drivers, Refused, UnderlayInfo};
use crate::kernel::Kernel;
use crate::lease::Existing;
use crate::routes::{Action, Route};
use anyhow::{bail, Result};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use weft_config::api::PeerStatus;
use weft_config::peers::{Peer, PeerSet, RawRecord, Skipped};
use weft_config::subnet::{Family, PerFamily};
use weft_config::{subnet, AgentConfig, Heartbeat, Keys, NetworkConfig, SubnetRecord};

/// The IPv4 subnets etcd lists as taken (see [`existing_of`]).
pub fn existing(keys: &Keys, raw: &[RawRecord]) -> Vec<Existing> {
    existing_of(keys, Family::V4, raw)
}

/// The subnets of `family` etcd lists as taken, from a listing of either family's records or
/// both (keys that are not subnets of that family's prefix are left out; an unreadable record
/// still takes its subnet).
pub fn existing_of(keys: &Keys, family: Family, raw: &[RawRecord]) -> Vec<Existing> {
    raw.iter()
        .filter_map(|r| {
            let (f, seg) = keys.subnet_segment_of(&r.key)?;
            if f != family {
                return None;
            }
            let subnet = subnet::from_key_form(seg)?;
            Some(Existing {
                subnet,
                record: SubnetRecord::from_json(&r.key, &r.value).ok(),
                mod_revision: r.mod_revision,
            })
        })
        .collect()
}

/// The record this node publishes.
pub fn own_record<K: Kernel>(
    cfg: &AgentConfig,
    node_id: &str,
    epoch: u64,
    u: &UnderlayInfo,
    net: &NetworkConfig,
    drivers: &Drivers<K>,
) -> SubnetRecord {
    SubnetRecord {
        schema: weft_config::records::SCHEMA_VERSION,
        node: cfg.node_name.clone(),
        node_id: node_id.to_string(),
        public_ip: u.public_ip,
        public_ip6: published_ip6(u, net),
        backend: net.backend,
        epoch,
        backend_data: drivers.backend_data(u),
    }
}

/// The IPv6 underlay address the record publishes: only in a network with an IPv6 pool, so an
/// IPv4-only network's records stay as they were.
pub fn published_ip6(u: &UnderlayInfo, net: &NetworkConfig) -> Option<IpAddr> {
    net.pool(Family::V6).and(u.public_ip6)
}

/// The heartbeat this node publishes at `now` (seconds), naming the subnets it holds.
pub fn heartbeat(node_id: &str, subnets: impl Into<PerFamily<IpNet>>, epoch: u64, now: u64) -> Heartbeat {
    let subnets = subnets.into();
    let (v4, v6) = subnets.as_options();
    Heartbeat {
        schema: weft_config::records::SCHEMA_VERSION,
        node_id: node_id.to_string(),
        subnet: v4.copied(),
        subnet6: v6.copied(),
        status: "ready".into(),
        updated: now,
        epoch,
    }
}

/// What the bridge should carry: the gateway address, and which of its current addresses go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgePlan {
    pub gateway: IpNet,
    pub stale: Vec<IpNet>,
}

/// The bridge of a node owning `subnet` that now has `current` (every family): addresses of
/// the subnet's family other than the gateway go; the other family and IPv6 link-local
/// addresses stay.
pub fn bridge(subnet: IpNet, current: &[IpNet]) -> Result<BridgePlan> {
    let Ok(gateway) = IpNet::new(subnet::gateway(subnet), subnet.prefix_len()) else { bail!("gateway") };
    let stale = current.iter().filter(|a| crate::pods::managed_addr(subnet, **a) && **a != gateway).copied().collect();
    Ok(BridgePlan { gateway, stale })
}

/// What a changed underlay MTU means for the bridge, pods and subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MtuChange {
    /// Unchanged.
    Same,
    /// The backend fixed its MTU when it started; only a restart adopts the new one.
    Fixed(&'static str),
    /// `bridge.mtu` pins the bridge and pods.
    Pinned,
    /// The bridge, pods and subnet.env follow the new MTU.
    Follow(u32),
}

/// `new` as read from the underlay link (clamped to 576 like the first reading).
pub fn mtu_change(old: u32, new: u32, fixed: Option<&'static str>, pinned: bool) -> MtuChange {
    let new = new.max(576);
    if new == old {
        MtuChange::Same
    } else if let Some(note) = fixed {
        MtuChange::Fixed(note)
    } else if pinned {
        MtuChange::Pinned
    } else {
        MtuChange::Follow(new)
    }
}

/// The skipped records not reported before (each record version once); marks them seen.
pub fn new_skips<'a>(seen: &mut HashSet<(String, i64)>, skipped: &'a [Skipped]) -> Vec<&'a Skipped> {
    skipped.iter().filter(|s| seen.insert((s.key.clone(), s.mod_revision))).collect()
}

/// Each peer's status after a reconcile: its route is ok when a desired route for its subnet
/// is installed; `route_since` carries over from `before` (0 = unknown) while it stays ok, and
/// starts at `now_ms` when it becomes ok; a refused peer carries the reason.
pub fn peer_statuses(
    peers: &BTreeMap<IpNet, Peer>,
    desired: &[Route],
    installed: &BTreeSet<Route>,
    refused: &[Refused],
    carriers: &BTreeMap<IpNet, &'static str>,
    before: &[PeerStatus],
    now_ms: u64,
) -> Vec<PeerStatus> {
    let since: BTreeMap<(&str, &str), u64> =
        before.iter().map(|p| ((p.node.as_str(), p.subnet.as_str()), p.route_since_unix_ms)).collect();
    peers
        .values()
        .map(|p| {
            let subnet = p.subnet.to_string();
            let route_ok = desired.iter().any(|d| d.dst == p.subnet && installed.contains(d));
            let prev = since.get(&(p.node.as_str(), subnet.as_str())).copied().filter(|&t| t > 0);
            PeerStatus {
                node: p.node.clone(),
                route_since_unix_ms: if route_ok { prev.unwrap_or(now_ms) } else { 0 },
                subnet,
                public_ip: p.public_ip,
                route_ok,
                problem: refused.iter().find(|r| r.subnet == p.subnet).map(|r| r.reason.clone()),
                via: carriers.get(&p.subnet).map(|c| c.to_string()),
            }
        })
        .collect()
}

/// Whether the node counts as ready after a reconcile: no error, or a subnet held (a node
/// that holds its subnet stays ready through etcd outages and peer trouble).
pub fn ready(errors: &[String], has_subnet: bool) -> bool {
    errors.is_empty() || has_subnet
}

/// The status line of the readiness notification: every subnet held and the number of peer
/// nodes (a dual-stack peer has a subnet per family but counts once).
pub fn ready_line(subnets: &PerFamily<IpNet>, peers: &PeerSet) -> String {
    let held: Vec<String> = subnets.values().map(ToString::to_string).collect();
    let subnets = match held.len() {
        1 => format!("subnet {}", held[0]),
        _ => format!("subnets {}", held.join(" and ")),
    };
    format!("ready: {subnets}, {} peer node(s)", peers.by_node().len())
}

/// A route action for the log.
pub fn describe(a: &Action) -> String {
    match a {
        Action::Add(r) => format!("add {} via {:?}", r.dst, r.via),
        Action::Replace { old, new } => format!("replace {} via {:?} (was via {:?})", new.dst, new.via, old.via),
        Action::Del(r) => format!("delete {} via {:?}", r.dst, r.via),
    }
}

/// Checks a pod request's names and fills in the defaults: namespace = pod name, interface eth0.
pub fn pod_names(name: &str, netns: Option<String>, ifname: Option<String>) -> Result<(String, String)> {
    use weft_config::agent::{valid_ifname, valid_name, valid_netns};
    let netns = netns.unwrap_or_else(|| name.to_string());
    let ifname = ifname.unwrap_or_else(|| "eth0".into());
    if !valid_name(name) {
        bail!("invalid pod name {name:?}: lowercase letters, digits, '-', '_' or '.', 1 to 63 characters");
    }
    if name.starts_with(weft_config::agent::DOCKER_POD_PREFIX) {
        bail!("invalid pod name {name:?}: names starting with \"docker-\" are Docker endpoints'");
    }
    if !valid_netns(&netns) {
        bail!("invalid namespace name {netns:?}");
    }
    if !valid_ifname(&ifname) {
        bail!("invalid interface name {ifname:?}");
    }
    Ok((netns, ifname))
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
