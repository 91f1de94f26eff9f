//! The quic backend behind the seam: its registration, what it publishes (endpoint and
//! certificate fingerprint), its routes (`peer_subnet dev <tun> src <own gateway>` plus the
//! fail-closed blackhole for the cluster CIDR), and the tunnel it starts and feeds.

use super::{bind_socket, tls, tun_mtu_for, PeerSpec, Settings, Tunnel, UDP_IP_OVERHEAD};
use crate::api::LiveQuic;
use crate::backend::{BuildContext, Driver, NodeView, Plan, Refused, Registration, UnderlayInfo};
use crate::firewall::ForwardMode;
use crate::kernel::Kernel;
use crate::routes::{Route, RouteKind};
use anyhow::{Context, Result};
use futures::future::BoxFuture;
use std::net::SocketAddr;
use tracing::warn;
use weft_config::agent::QuicConfig;
use weft_config::peers::Peer;

pub const NAME: &str = "quic";

/// Metric of the fail-closed blackhole for the cluster CIDR: the lowest priority, so it only
/// catches pod traffic that has no other route (the tun is gone), instead of letting it leave
/// in plaintext through the default route.
pub const BLACKHOLE_METRIC: u32 = 4_000_000_000;

pub fn registration<K: Kernel>() -> Registration<K> {
    Registration {
        name: NAME,
        build: build::<K>,
        leftover_links: |cfg| cfg.quic.iter().map(|q| q.tun.clone()).collect(),
    }
}

fn build<K: Kernel>(ctx: &BuildContext) -> Result<Box<dyn Driver<K>>> {
    let q =
        ctx.cfg.quic.clone().context(
            "the network's backend is quic but agent.toml has no [quic] section (ca_file, cert_file, key_file)",
        )?;
    Ok(Box::new(QuicDriver {
        q,
        node: ctx.cfg.node_name.clone(),
        live: ctx.live.clone(),
        tunnel: None,
        socket: None,
        fingerprint: None,
        tun_index: 0,
    }))
}

pub struct QuicDriver {
    q: QuicConfig,
    node: String,
    live: LiveQuic,
    tunnel: Option<Tunnel>,
    /// The UDP socket, bound before the record that makes peers dial is published, and handed
    /// to the tunnel when it starts.
    socket: Option<std::net::UdpSocket>,
    fingerprint: Option<String>,
    /// The tun device's index, read before each plan.
    tun_index: u32,
}

/// What the tunnel needs of a peer: its endpoint from the peer's `backend_data`.
fn endpoint(peer: &Peer) -> Option<SocketAddr> {
    peer.backend_data.get(NAME)?.get("endpoint")?.as_str()?.parse().ok()
}

/// The peers the tunnel can reach, as it needs them: those with an endpoint.
pub fn specs(peers: &[&Peer]) -> Vec<PeerSpec> {
    peers
        .iter()
        .filter_map(|p| {
            Some(PeerSpec { node: p.node.clone(), subnet: p.subnet, endpoint: endpoint(p)?, epoch: p.epoch })
        })
        .collect()
}

/// Pure: the quic routes for `peers` through the tun at `tun_index`.
pub fn plan(peers: &[&Peer], tun_index: u32, node: &NodeView) -> Plan {
    let refuse = |p: &Peer, reason: String| Refused { node: p.node.clone(), subnet: p.subnet, reason };
    let mut plan = Plan {
        routes: vec![Route {
            dst: node.cluster,
            kind: RouteKind::Blackhole,
            via: None,
            oif: None,
            src: None,
            metric: BLACKHOLE_METRIC,
        }],
        refused: Vec::new(),
    };
    for p in peers {
        if endpoint(p).is_none() {
            plan.refused.push(refuse(p, "its record has no QUIC endpoint (is it running the quic backend?)".into()));
            continue;
        }
        // The source is the own gateway of the peer subnet's family (the peer's source check).
        let r = Route {
            dst: p.subnet,
            kind: RouteKind::Unicast,
            via: None,
            oif: Some(tun_index),
            src: Some(node.gateway()),
            metric: 0,
        };
        match r.check_family() {
            Ok(()) => plan.routes.push(r),
            Err(e) => plan.refused.push(refuse(p, e.to_string())),
        }
    }
    plan
}

impl<K: Kernel> Driver<K> for QuicDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pod_mtu(&self, underlay_mtu: u32, bridge_mtu: Option<u32>) -> u32 {
        let tun = self.q.mtu.unwrap_or_else(|| tun_mtu_for(underlay_mtu));
        bridge_mtu.map_or(tun, |b| b.min(tun))
    }

    fn fixed_mtu_note(&self) -> Option<&'static str> {
        Some("underlay MTU changed; the quic tunnel keeps its MTU until the agent is restarted")
    }

    fn prepare(&mut self, _underlay: &UnderlayInfo) -> Result<()> {
        let id = tls::load(&self.q, &self.node)?;
        self.fingerprint = Some(id.fingerprint);
        if self.tunnel.is_none() && self.socket.is_none() {
            self.socket = Some(bind_socket(self.q.port)?);
        }
        Ok(())
    }

    fn backend_data(&self, underlay: &UnderlayInfo) -> Option<serde_json::Value> {
        let mut data = serde_json::Map::new();
        data.insert("endpoint".into(), SocketAddr::from((underlay.public_ip, self.q.port)).to_string().into());
        if let Some(f) = &self.fingerprint {
            data.insert("cert_fingerprint".into(), f.clone().into());
        }
        Some(data.into())
    }

    /// The tun device and endpoint (started once; the device persists across restarts), the
    /// certificate reloaded when its files changed, the device up at the pod MTU.
    fn ensure<'a>(&'a mut self, nl: &'a K, node: &'a NodeView) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match &self.tunnel {
                None => {
                    let settings = Settings {
                        node: self.node.clone(),
                        local_subnet: node.subnet,
                        tun_mtu: node.mtu,
                        udp_payload: u16::try_from(node.underlay.mtu.saturating_sub(UDP_IP_OVERHEAD)).unwrap_or(1472),
                        quic: self.q.clone(),
                        socket: self.socket.take(),
                    };
                    let t = Tunnel::start(settings)?;
                    *self.live.write().unwrap_or_else(|p| p.into_inner()) = Some(t.status_fn());
                    self.tunnel = Some(t);
                }
                Some(t) => {
                    if let Err(e) = t.reload_tls_if_changed() {
                        warn!(error = %format!("{e:#}"), "renewed certificate not usable; keeping the old one");
                    }
                }
            }
            let tun = &self.q.tun;
            let link = nl.link(tun).await?.with_context(|| format!("tun device {tun} missing"))?;
            if !link.up || link.mtu != node.mtu {
                nl.set_link(link.index, Some(node.mtu), true, None).await?;
            }
            Ok(())
        })
    }

    fn observe<'a>(&'a mut self, nl: &'a K) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let tun = &self.q.tun;
            self.tun_index = nl.link(tun).await?.with_context(|| format!("tun device {tun} missing"))?.index;
            Ok(())
        })
    }

    fn plan(&self, peers: &[&Peer], node: &NodeView) -> Plan {
        plan(peers, self.tun_index, node)
    }

    fn hand_over(&mut self, peers: &[&Peer], _node: &NodeView) {
        if let Some(t) = &self.tunnel {
            t.set_peers(&specs(peers));
        }
    }

    fn forward_mode(&self) -> ForwardMode {
        ForwardMode::Tunnel { tun: self.q.tun.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::{node, peer};

    fn quic_peer(name: &str, subnet: &str, endpoint: Option<&str>) -> Peer {
        let mut p = peer(name, subnet, "172.30.1.12");
        if let Some(e) = endpoint {
            p.backend_data.insert(NAME.into(), serde_json::json!({ "endpoint": e, "cert_fingerprint": "ab" }));
        }
        p
    }

    #[test]
    fn routes_through_the_tun_from_the_gateway_plus_the_blackhole() {
        let n = node("172.30.0.11/24");
        let peers = [
            quic_peer("n2", "10.244.2.0/24", Some("172.30.1.12:7946")),
            quic_peer("n3", "10.244.3.0/24", None),
            quic_peer("n4", "10.244.4.0/24", Some("not an endpoint")),
        ];
        let p = plan(&peers.iter().collect::<Vec<_>>(), 9, &n);
        assert_eq!(p.routes.len(), 2);
        assert_eq!((p.routes[0].dst.to_string(), p.routes[0].kind), ("10.244.0.0/16".into(), RouteKind::Blackhole));
        assert_eq!(p.routes[0].metric, BLACKHOLE_METRIC);
        let r = &p.routes[1];
        assert_eq!((r.dst.to_string(), r.oif, r.via), ("10.244.2.0/24".into(), Some(9), None));
        assert_eq!(r.src, Some("10.244.1.1".parse().expect("literal")), "the own gateway, for the peer's source check");
        let refused: Vec<_> = p.refused.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(refused, ["n3", "n4"]);
        assert!(p.refused[0].reason.contains("no QUIC endpoint"));
    }

    #[test]
    fn a_peer_subnet_of_another_family_than_the_own_gateway_is_refused() {
        let n = node("172.30.0.11/24");
        let p = quic_peer("n6", "fd00:10:244:6::/64", Some("172.30.1.16:7946"));
        let plan = plan(&[&p], 9, &n);
        assert_eq!(plan.routes.len(), 1, "the blackhole alone");
        assert_eq!(
            plan.refused[0].reason,
            "route fd00:10:244:6::/64: source 10.244.1.1 is not IPv6 like the destination"
        );
    }

    #[test]
    fn specs_carry_endpoint_and_epoch_of_reachable_peers_only() {
        let mut a = quic_peer("n2", "10.244.2.0/24", Some("172.30.1.12:7946"));
        a.epoch = 42;
        let b = quic_peer("n3", "10.244.3.0/24", None);
        let s = specs(&[&a, &b]);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].node.as_str(), s[0].epoch), ("n2", 42));
        assert_eq!(s[0].endpoint, "172.30.1.12:7946".parse().expect("literal"));
    }
}
