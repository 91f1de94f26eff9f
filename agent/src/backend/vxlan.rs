//! vxlan: pod packets in UDP between nodes, encapsulated by the kernel, so traffic crosses
//! routers at kernel speed. flannel's default backend, built the same way: no multicast and no
//! learning; every peer's entries come from its subnet record.
//!
//! One VXLAN device per family the node holds a subnet of: [`DEVICE`] over the IPv4 underlay
//! for IPv4 subnets, [`DEVICE6`] over the IPv6 underlay for IPv6 ones (a VXLAN device sends over
//! one family). Each holds the node's VTEP address, the network address of its subnet (as a
//! /32 or /128), and the node's VTEP MAC ([`vtep_mac`], derived from the node's name, so it
//! survives restarts and a lost state dir). Per peer subnet, on the device of its family:
//! - an FDB entry: the peer's VTEP MAC is behind the peer's underlay address;
//! - a neighbour entry: the peer's VTEP address is at the peer's VTEP MAC;
//! - `peer_subnet via <peer VTEP address> dev <device> onlink`.
//!
//! All three are planned purely from the peer set and applied with the same diff (routes by
//! `routes::plan`, entries by `entries::plan`). The devices are made (and repaired when
//! deleted, downed or changed) from inside the node's namespace, where the agent runs: a VXLAN
//! device keeps its UDP socket in the namespace it was created in.

use super::host_gw::is_link_local;
use super::{BuildContext, Driver, NodeView, Plan, Refused, Registration, UnderlayInfo};
use crate::firewall::ForwardMode;
use crate::kernel::{Fdb, Kernel, Link, Mac, Neighbour, Vxlan};
use crate::routes::{Route, RouteKind};
use anyhow::{Context, Result};
use futures::future::BoxFuture;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use tracing::{info, warn};
use weft_config::peers::Peer;
use weft_config::records::VxlanOptions;
use weft_config::subnet::Family;

pub const NAME: &str = "vxlan";
/// The device carrying IPv4 subnets over the IPv4 underlay.
pub const DEVICE: &str = "weft-vxlan";
/// The device carrying IPv6 subnets over the IPv6 underlay.
pub const DEVICE6: &str = "weft-vxlan6";
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
pub const OVERHEAD_V4: u32 = 50;
/// The same over IPv6 (40-byte outer header).
pub const OVERHEAD_V6: u32 = 70;

pub fn registration<K: Kernel>() -> Registration<K> {
    Registration { name: NAME, build: build::<K>, leftover_links: |_| vec![DEVICE.to_string(), DEVICE6.to_string()] }
}

fn build<K: Kernel>(ctx: &BuildContext) -> Result<Box<dyn Driver<K>>> {
    Ok(Box::new(VxlanDriver {
        opts: ctx.net.vxlan,
        mac: vtep_mac(&ctx.cfg.node_name),
        ipv6_pool: ctx.net.pool(Family::V6).is_some(),
        links: BTreeMap::new(),
        last_node: None,
        broken: BTreeMap::new(),
    }))
}

/// The device name of `family`.
pub fn device(family: Family) -> &'static str {
    match family {
        Family::V4 => DEVICE,
        Family::V6 => DEVICE6,
    }
}

/// The node's VTEP MAC: a locally administered unicast address from a hash (FNV-1a) of the
/// node's name, the same on every start of the same node.
pub fn vtep_mac(node: &str) -> Mac {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain(*b"/weft-vxlan") {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    Mac([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

/// The VTEP address of a node's subnet: the subnet's network address.
pub fn vtep_addr(subnet: IpNet) -> IpAddr {
    subnet.network()
}

fn host_prefix(ip: IpAddr) -> IpNet {
    let len = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    IpNet::new(ip, len).unwrap_or_else(|_| IpNet::from(ip))
}

/// A peer's VTEP MAC from its record's `backend_data.vxlan.vtep_mac`, or why there is none.
fn peer_mac(peer: &Peer) -> Result<Mac, String> {
    let v = peer
        .backend_data
        .get(NAME)
        .and_then(|d| d.get("vtep_mac"))
        .and_then(|m| m.as_str())
        .ok_or("its record has no VTEP MAC (is it running the vxlan backend?)")?;
    v.parse().map_err(|e| format!("its record's VTEP MAC is unusable: {e}"))
}

pub struct VxlanDriver {
    opts: VxlanOptions,
    mac: Mac,
    /// Whether the network has an IPv6 pool (its subnets travel with the IPv6 overhead).
    ipv6_pool: bool,
    /// The device of each family, as last seen (read before each plan).
    links: BTreeMap<Family, u32>,
    /// What the node looked like at the last full reconcile, so that a device found missing
    /// or down before a plan is made again at once.
    last_node: Option<NodeView>,
    /// Why a family's device could not be made again before the last plan: its peers are
    /// refused with that reason while the other family keeps working.
    broken: BTreeMap<Family, String>,
}

impl VxlanDriver {
    /// The device settings for the node's underlay address of `family`.
    fn spec(&self, underlay: &UnderlayInfo, family: Family) -> Option<Vxlan> {
        Some(Vxlan {
            vni: self.opts.vni,
            port: self.opts.port,
            local: Some(underlay.public_ip_of(family)?),
            underlay: Some(underlay.index),
            learning: false,
        })
    }

    fn device_mtu(underlay_mtu: u32, family: Family) -> u32 {
        let overhead = match family {
            Family::V4 => OVERHEAD_V4,
            Family::V6 => OVERHEAD_V6,
        };
        underlay_mtu.saturating_sub(overhead).max(576)
    }

    /// Makes the device of `family` as `node` needs it: created if missing, made anew when
    /// its settings are not weft's (another VNI, port, local address or underlay, learning on,
    /// another kind), then MAC, MTU, up and the VTEP address. Returns its index.
    async fn ensure_device<K: Kernel>(&self, nl: &K, node: &NodeView, family: Family, subnet: IpNet) -> Result<u32> {
        let name = device(family);
        let Some(spec) = self.spec(&node.underlay, family) else {
            anyhow::bail!("{name}: the underlay has no {family} address to send VXLAN packets from");
        };
        let mtu = Self::device_mtu(node.underlay.mtu, family);
        let existing = nl.link(name).await?;
        let index = match existing {
            Some(l) if fits(&l, &spec) => l.index,
            other => {
                if let Some(l) = other {
                    info!(device = name, found = ?l.vxlan, kind = ?l.kind, "replacing a device whose settings are not weft's");
                    nl.del_link(l.index).await?;
                } else {
                    info!(device = name, vni = spec.vni, port = spec.port, local = ?spec.local, "creating the vxlan device");
                }
                nl.add_vxlan(name, mtu, &spec).await?
            }
        };
        let link = nl.link_by_index(index).await?.with_context(|| format!("{name} vanished"))?;
        if link.mac != Some(self.mac) {
            nl.set_mac(index, self.mac).await?;
        }
        if link.mtu != mtu || !link.up {
            nl.set_link(index, Some(mtu), true, None).await?;
        }
        let want = host_prefix(vtep_addr(subnet));
        for a in nl.addrs(index).await? {
            if a != want && !is_link_local(a.addr()) {
                info!(device = name, addr = %a, "removing a stale VTEP address");
                nl.del_addr(index, a).await?;
            }
        }
        nl.add_addr(index, want).await?;
        Ok(index)
    }
}

/// Whether an existing link is a VXLAN device with exactly these settings.
fn fits(l: &Link, spec: &Vxlan) -> bool {
    l.kind.as_deref() == Some("vxlan") && l.vxlan.as_ref() == Some(spec)
}

impl<K: Kernel> Driver<K> for VxlanDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The underlay's MTU less the VXLAN overhead of every family the network carries (the
    /// IPv6 one when it has an IPv6 pool).
    fn pod_mtu(&self, underlay_mtu: u32, bridge_mtu: Option<u32>) -> u32 {
        let family = if self.ipv6_pool { Family::V6 } else { Family::V4 };
        let tunnel = Self::device_mtu(underlay_mtu, family);
        bridge_mtu.map_or(tunnel, |b| b.min(tunnel))
    }

    fn backend_data(&self, _underlay: &UnderlayInfo) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "vtep_mac": self.mac.to_string() }))
    }

    fn ensure<'a>(&'a mut self, nl: &'a K, node: &'a NodeView) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.last_node = Some(node.clone());
            let mut links = BTreeMap::new();
            for (family, subnet) in node.subnets.iter() {
                links.insert(family, self.ensure_device(nl, node, family, *subnet).await?);
            }
            // A device of a family the node holds no subnet of any more goes.
            for family in [Family::V4, Family::V6] {
                if node.subnets.get(family).is_none() {
                    if let Some(l) = nl.link(device(family)).await? {
                        nl.del_link(l.index).await?;
                    }
                }
            }
            self.links = links;
            Ok(())
        })
    }

    fn observe<'a>(&'a mut self, nl: &'a K) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(node) = self.last_node.clone() else { return Ok(()) };
            let mut links = BTreeMap::new();
            for (family, subnet) in node.subnets.iter() {
                let found = nl.link(device(family)).await?;
                let index = match found {
                    Some(l) if l.up && self.spec(&node.underlay, family).is_some_and(|s| fits(&l, &s)) => l.index,
                    // A device that cannot be made again costs its own family only.
                    _ => match self.ensure_device(nl, &node, family, *subnet).await {
                        Ok(index) => index,
                        Err(e) => {
                            warn!(device = device(family), error = %format!("{e:#}"), "cannot make the vxlan device again; its peers are refused until it can");
                            self.broken.insert(family, format!("{e:#}"));
                            continue;
                        }
                    },
                };
                self.broken.remove(&family);
                links.insert(family, index);
            }
            self.links = links;
            Ok(())
        })
    }

    fn plan(&self, peers: &[&Peer], node: &NodeView) -> Plan {
        let mut plan = Plan::default();
        for p in peers {
            let family = Family::of_net(p.subnet);
            let refuse = |reason: String| Refused { node: p.node.clone(), subnet: p.subnet, reason };
            let Some(&dev) = self.links.get(&family) else {
                let reason = match (node.subnets.get(family), self.broken.get(&family)) {
                    (None, _) => format!("this node has no {family} subnet, so no {} device", device(family)),
                    (Some(_), Some(e)) => format!("the {} device could not be made: {e}", device(family)),
                    (Some(_), None) => format!("the {} device is not there yet", device(family)),
                };
                plan.refused.push(refuse(reason));
                continue;
            };
            if Family::of(p.public_ip) != family {
                plan.refused.push(refuse(format!("its underlay address {} is not {family}", p.public_ip)));
                continue;
            }
            let mac = match peer_mac(p) {
                Ok(m) => m,
                Err(reason) => {
                    plan.refused.push(refuse(reason));
                    continue;
                }
            };
            let vtep = vtep_addr(p.subnet);
            plan.fdb.push(Fdb { ifindex: dev, mac, dst: p.public_ip });
            plan.neighbours.push(Neighbour { ifindex: dev, ip: vtep, mac });
            plan.routes.push(Route {
                dst: p.subnet,
                kind: RouteKind::Unicast,
                via: Some(vtep),
                oif: Some(dev),
                src: None,
                metric: 0,
                onlink: true,
            });
        }
        plan.entry_links = self.links.values().copied().collect();
        plan
    }

    fn forward_mode(&self) -> ForwardMode {
        ForwardMode::Open
    }
}

#[cfg(test)]
mod tests;
