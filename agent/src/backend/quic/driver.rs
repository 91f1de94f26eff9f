//! The quic backend behind the seam: its registration, what it publishes (endpoint and
//! certificate fingerprint), its routes (`peer_subnet dev <tun> src <own gateway>` plus the
//! fail-closed blackhole for each cluster CIDR), and the tunnel it starts and feeds.
//!
//! Dual-stack: both families' peer subnets are routed through the one tun (each from the own
//! gateway of its family), and the tunnel gets one [`PeerSpec`] per peer node holding both its
//! subnets, so a pair of nodes keeps one connection. The tunnel runs over the IPv4 underlay
//! unless `quic.endpoint_family = "ipv6"`; nodes of one cluster must agree (a peer whose
//! endpoint is of the other family is refused with that reason).

use super::{bind_socket, data_threads, tls, tun_mtu_over, udp_ip_overhead, PeerSpec, Settings, Tunnel};
use crate::api::LiveQuic;
use crate::backend::{BuildContext, Driver, NodeView, Plan, Refused, Registration, UnderlayInfo};
use crate::firewall::ForwardMode;
use crate::kernel::Kernel;
use crate::routes::{Route, RouteKind};
use anyhow::{bail, Context, Result};
use futures::future::BoxFuture;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tracing::warn;
use weft_config::agent::QuicConfig;
use weft_config::peers::Peer;
use weft_config::subnet::{Family, PerFamily};

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
        threads: data_threads(&q),
        q,
        node: ctx.cfg.node_name.clone(),
        live: ctx.live.clone(),
        tunnel: None,
        sockets: Vec::new(),
        fingerprint: None,
        tun_index: 0,
    }))
}

pub struct QuicDriver {
    q: QuicConfig,
    node: String,
    live: LiveQuic,
    tunnel: Option<Tunnel>,
    /// Data path threads ([`data_threads`]), each on UDP port `quic.port` + its index.
    threads: usize,
    /// The UDP sockets, one per thread, bound before the record that makes peers dial is
    /// published, and handed to the tunnel when it starts.
    sockets: Vec<std::net::UdpSocket>,
    fingerprint: Option<String>,
    /// The tun device's index, read before each plan.
    tun_index: u32,
}

/// What the tunnel needs of a peer: its endpoint from the peer's `backend_data`.
fn endpoint(peer: &Peer) -> Option<SocketAddr> {
    peer.backend_data.get(NAME)?.get("endpoint")?.as_str()?.parse().ok()
}

/// The data path threads `peer` advertises (`threads` in its `backend_data`): 1 when absent (an
/// agent from before threads), and 1, logged, when not a count from 1 to 64.
fn peer_threads(peer: &Peer) -> usize {
    let Some(v) = peer.backend_data.get(NAME).and_then(|d| d.get("threads")) else { return 1 };
    match v.as_u64() {
        Some(n @ 1..=64) => n as usize,
        _ => {
            warn!(peer = %peer.node, threads = %v, "the record's quic threads is not a count from 1 to 64; using 1");
            1
        }
    }
}

/// The endpoint of `peer` that a node whose tunnel runs over `family` can dial, or why there is
/// none: no endpoint, or one of the other family (every node of a cluster uses one
/// `quic.endpoint_family`; an acceptor checks a connection comes from the advertised address).
fn reachable(peer: &Peer, family: Family) -> Result<SocketAddr, String> {
    let e = endpoint(peer).ok_or("its record has no QUIC endpoint (is it running the quic backend?)")?;
    let theirs = Family::of(e.ip());
    if theirs != family {
        return Err(format!(
            "its QUIC endpoint {e} is {theirs} and this node's is {family} (quic.endpoint_family must be the same on every node)"
        ));
    }
    Ok(e)
}

/// The peer nodes the tunnel can reach over `family`, as it needs them: one spec per node with
/// its subnets of both families (one connection per pair of nodes carries both), for the nodes
/// with an endpoint of that family.
pub fn specs(peers: &[&Peer], family: Family) -> Vec<PeerSpec> {
    let mut nodes: BTreeMap<&str, (Option<IpNet>, Option<IpNet>, &Peer)> = BTreeMap::new();
    for p in peers {
        let entry = nodes.entry(p.node.as_str()).or_insert((None, None, p));
        match Family::of_net(p.subnet) {
            Family::V4 => entry.0 = Some(p.subnet),
            Family::V6 => entry.1 = Some(p.subnet),
        }
    }
    nodes
        .into_values()
        .filter_map(|(v4, v6, p)| {
            Some(PeerSpec {
                node: p.node.clone(),
                subnets: PerFamily::from_options(v4, v6)?,
                endpoint: reachable(p, family).ok()?,
                epoch: p.epoch,
                threads: peer_threads(p),
            })
        })
        .collect()
}

/// Pure: the quic routes for `peers` through the tun at `tun_index`, for a node whose tunnel
/// runs over `family`: a blackhole per cluster CIDR, and each peer subnet through the tun from
/// the own gateway of its family (so the node's own packets pass the peer's source check).
pub fn plan(peers: &[&Peer], tun_index: u32, node: &NodeView, family: Family) -> Plan {
    let refuse = |p: &Peer, reason: String| Refused { node: p.node.clone(), subnet: p.subnet, reason };
    let blackhole = |cluster: &IpNet| Route {
        dst: *cluster,
        kind: RouteKind::Blackhole,
        via: None,
        oif: None,
        src: None,
        metric: BLACKHOLE_METRIC,
        onlink: false,
    };
    let mut plan = Plan { routes: node.clusters.iter().map(|(_, c)| blackhole(c)).collect(), ..Plan::default() };
    for p in peers {
        if let Err(reason) = reachable(p, family) {
            plan.refused.push(refuse(p, reason));
            continue;
        }
        // The source is the own gateway of the peer subnet's family (the peer's source check);
        // a node without a subnet of that family offers its first, which the check refuses.
        let own = Family::of_net(p.subnet);
        let src = node.gateway(own).or_else(|| node.gateway(node.subnets.first_family()));
        let r = Route {
            dst: p.subnet,
            kind: RouteKind::Unicast,
            via: None,
            oif: Some(tun_index),
            src,
            metric: 0,
            onlink: false,
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
        let tun = self.q.mtu.unwrap_or_else(|| tun_mtu_over(underlay_mtu, self.q.endpoint_family));
        bridge_mtu.map_or(tun, |b| b.min(tun))
    }

    fn fixed_mtu_note(&self) -> Option<&'static str> {
        Some("underlay MTU changed; the quic tunnel keeps its MTU until the agent is restarted")
    }

    fn prepare(&mut self, underlay: &UnderlayInfo) -> Result<()> {
        let family = self.q.endpoint_family;
        if underlay.public_ip_of(family).is_none() {
            bail!(
                "quic.endpoint_family is {family} but underlay {} has no global IPv6 address (set underlay.public_ip6)",
                underlay.name
            );
        }
        let id = tls::load(&self.q, &self.node)?;
        self.fingerprint = Some(id.fingerprint);
        if self.tunnel.is_none() && self.sockets.is_empty() {
            // The config checked that the ports fit ("auto" stays within them).
            let ports = (0..self.threads).map(|i| self.q.port.saturating_add(i as u16));
            self.sockets = ports.map(|p| bind_socket(p, self.q.endpoint_family)).collect::<Result<_>>()?;
        }
        Ok(())
    }

    fn backend_data(&self, underlay: &UnderlayInfo) -> Option<serde_json::Value> {
        let mut data = serde_json::Map::new();
        // `prepare` refused an IPv6 endpoint without an IPv6 underlay address.
        let ip = underlay.public_ip_of(self.q.endpoint_family).unwrap_or(underlay.public_ip);
        data.insert("endpoint".into(), SocketAddr::from((ip, self.q.port)).to_string().into());
        // Thread i listens on the endpoint's port + i; a record without it is one thread.
        data.insert("threads".into(), self.threads.into());
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
                        local_subnets: node.subnets,
                        tun_mtu: node.mtu,
                        udp_payload: u16::try_from(
                            node.underlay.mtu.saturating_sub(udp_ip_overhead(self.q.endpoint_family)),
                        )
                        .unwrap_or(1472),
                        quic: self.q.clone(),
                        threads: self.threads,
                        sockets: std::mem::take(&mut self.sockets),
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
        plan(peers, self.tun_index, node, self.q.endpoint_family)
    }

    fn hand_over(&mut self, peers: &[&Peer], _node: &NodeView) {
        if let Some(t) = &self.tunnel {
            t.set_peers(&specs(peers, self.q.endpoint_family));
        }
    }

    fn forward_mode(&self) -> ForwardMode {
        ForwardMode::Tunnel { tun: self.q.tun.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::{dual_node, ip, net, node, peer};
    use crate::kernel::fake::FakeKernel;
    use std::net::IpAddr;

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
        let p = plan(&peers.iter().collect::<Vec<_>>(), 9, &n, Family::V4);
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
        let plan = plan(&[&p], 9, &n, Family::V4);
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
        let s = specs(&[&a, &b], Family::V4);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].node.as_str(), s[0].epoch), ("n2", 42));
        assert_eq!(s[0].endpoint, "172.30.1.12:7946".parse().expect("literal"));
    }

    #[test]
    fn specs_carry_the_advertised_threads_one_when_absent_or_bad() {
        let with = |threads: Option<serde_json::Value>| {
            let mut p = quic_peer("n2", "10.244.2.0/24", Some("172.30.1.12:7946"));
            if let Some(t) = threads {
                p.backend_data.insert(NAME.into(), serde_json::json!({ "endpoint": "172.30.1.12:7946", "threads": t }));
            }
            specs(&[&p], Family::V4)[0].threads
        };
        assert_eq!(with(None), 1, "an agent from before threads");
        assert_eq!(with(Some(4.into())), 4);
        for bad in [serde_json::json!(0), serde_json::json!(65), serde_json::json!("2"), serde_json::json!(-1)] {
            assert_eq!(with(Some(bad.clone())), 1, "{bad}");
        }
    }

    /// Peer `name` (number `n`) of a dual-stack network: its IPv4 and IPv6 subnet, one record
    /// (so one endpoint and epoch) for both.
    fn dual_peer(name: &str, n: u8, endpoint: &str) -> [Peer; 2] {
        let mut v4 = quic_peer(name, &format!("10.244.{n}.0/24"), Some(endpoint));
        let mut v6 = quic_peer(name, &format!("fd00:10:244:{n}::/64"), Some(endpoint));
        v6.public_ip = ip(&format!("fd00:172:30:1::{n}"));
        v4.epoch = 7;
        v6.epoch = 7;
        [v4, v6]
    }

    #[test]
    fn dual_stack_routes_both_families_through_the_tun_from_the_gateway_of_each() {
        let n = dual_node("172.30.0.11/24", "fd00:172:30::11/64");
        let peers: Vec<Peer> = [dual_peer("n2", 2, "172.30.1.12:7946"), dual_peer("n3", 3, "172.30.0.13:7946")]
            .into_iter()
            .flatten()
            .collect();
        let p = plan(&peers.iter().collect::<Vec<_>>(), 9, &n, Family::V4);
        assert_eq!(p.refused, []);
        let blackhole = |dst: &str| Route {
            dst: net(dst),
            kind: RouteKind::Blackhole,
            via: None,
            oif: None,
            src: None,
            metric: BLACKHOLE_METRIC,
            onlink: false,
        };
        let tun = |dst: &str, src: &str| Route {
            dst: net(dst),
            kind: RouteKind::Unicast,
            via: None,
            oif: Some(9),
            src: Some(ip(src)),
            metric: 0,
            onlink: false,
        };
        assert_eq!(
            p.routes,
            [
                blackhole("10.244.0.0/16"),
                blackhole("fd00:10:244::/56"),
                tun("10.244.2.0/24", "10.244.1.1"),
                tun("fd00:10:244:2::/64", "fd00:10:244:1::1"),
                tun("10.244.3.0/24", "10.244.1.1"),
                tun("fd00:10:244:3::/64", "fd00:10:244:1::1"),
            ]
        );
    }

    #[test]
    fn an_ipv6_only_node_has_the_ipv6_blackhole_and_routes_alone() {
        let mut n = dual_node("172.30.0.11/24", "fd00:172:30::11/64");
        n.clusters = PerFamily::V6(net("fd00:10:244::/56"));
        n.subnets = PerFamily::V6(net("fd00:10:244:1::/64"));
        let [_, v6] = dual_peer("n2", 2, "172.30.1.12:7946");
        let p = plan(&[&v6], 9, &n, Family::V4);
        let dsts: Vec<(String, Option<IpAddr>)> = p.routes.iter().map(|r| (r.dst.to_string(), r.src)).collect();
        assert_eq!(
            dsts,
            [("fd00:10:244::/56".into(), None), ("fd00:10:244:2::/64".into(), Some(ip("fd00:10:244:1::1")))]
        );
    }

    #[test]
    fn one_spec_per_peer_node_carries_both_its_subnets() {
        let [a4, a6] = dual_peer("n2", 2, "172.30.1.12:7946");
        let [b4, _] = dual_peer("n3", 3, "172.30.0.13:7946");
        let c6 = quic_peer("n4", "fd00:10:244:4::/64", Some("172.30.0.14:7946"));
        let s = specs(&[&a4, &b4, &a6, &c6], Family::V4);
        assert_eq!(
            s,
            [
                PeerSpec {
                    node: "n2".into(),
                    subnets: PerFamily::Dual(net("10.244.2.0/24"), net("fd00:10:244:2::/64")),
                    endpoint: "172.30.1.12:7946".parse().expect("literal"),
                    epoch: 7,
                    threads: 1,
                },
                PeerSpec {
                    node: "n3".into(),
                    subnets: PerFamily::V4(net("10.244.3.0/24")),
                    endpoint: "172.30.0.13:7946".parse().expect("literal"),
                    epoch: 7,
                    threads: 1,
                },
                PeerSpec {
                    node: "n4".into(),
                    subnets: PerFamily::V6(net("fd00:10:244:4::/64")),
                    endpoint: "172.30.0.14:7946".parse().expect("literal"),
                    epoch: 1,
                    threads: 1,
                },
            ]
        );
    }

    #[test]
    fn a_peer_whose_endpoint_is_of_the_other_underlay_family_is_refused() {
        let n = dual_node("172.30.0.11/24", "fd00:172:30::11/64");
        let v6_end = dual_peer("n2", 2, "[fd00:172:30:1::12]:7946");
        let v4_end = dual_peer("n3", 3, "172.30.0.13:7946");
        let all: Vec<&Peer> = v6_end.iter().chain(&v4_end).collect();
        // Over IPv4: n2 (IPv6 endpoint) is refused, both its subnets, and gets no spec.
        let p = plan(&all, 9, &n, Family::V4);
        let refused: Vec<(&str, String)> = p.refused.iter().map(|r| (r.node.as_str(), r.subnet.to_string())).collect();
        assert_eq!(refused, [("n2", "10.244.2.0/24".into()), ("n2", "fd00:10:244:2::/64".into())]);
        assert_eq!(
            p.refused[0].reason,
            "its QUIC endpoint [fd00:172:30:1::12]:7946 is IPv6 and this node's is IPv4 (quic.endpoint_family must be the same on every node)"
        );
        assert_eq!(p.routes.len(), 4, "two blackholes and n3's two subnets");
        assert_eq!(specs(&all, Family::V4).iter().map(|s| s.node.as_str()).collect::<Vec<_>>(), ["n3"]);
        // Over IPv6 the other way round.
        let p = plan(&all, 9, &n, Family::V6);
        assert_eq!(p.refused.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(), ["n3", "n3"]);
        let s = specs(&all, Family::V6);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].node.as_str(), s[0].endpoint), ("n2", "[fd00:172:30:1::12]:7946".parse().expect("literal")));
    }

    fn driver(endpoint_family: Family) -> QuicDriver {
        let q = QuicConfig {
            port: 7946,
            ca_file: "/nonexistent/ca.pem".into(),
            cert_file: "/nonexistent/n1.pem".into(),
            key_file: "/nonexistent/n1.key".into(),
            tun: "weft-tun0".into(),
            mtu: None,
            threads: Some(2),
            endpoint_family,
        };
        QuicDriver {
            q,
            node: "n1".into(),
            live: LiveQuic::default(),
            tunnel: None,
            threads: 2,
            sockets: Vec::new(),
            fingerprint: None,
            tun_index: 0,
        }
    }

    #[test]
    fn the_endpoint_and_mtu_follow_the_underlay_family() {
        let u = dual_node("172.30.0.11/24", "fd00:172:30::11/64").underlay;
        let over4 = driver(Family::V4);
        let data = Driver::<FakeKernel>::backend_data(&over4, &u).expect("data");
        assert_eq!(data["endpoint"], "172.30.0.11:7946", "thread 0's, which an agent from before threads dials");
        assert_eq!(data["threads"], 2);
        assert_eq!(Driver::<FakeKernel>::pod_mtu(&over4, 1500, None), 1434);
        let mut over6 = driver(Family::V6);
        assert_eq!(Driver::<FakeKernel>::backend_data(&over6, &u).expect("data")["endpoint"], "[fd00:172:30::11]:7946");
        assert_eq!(Driver::<FakeKernel>::pod_mtu(&over6, 1500, None), 1414);
        let mut no6 = u.clone();
        no6.public_ip6 = None;
        let e = Driver::<FakeKernel>::prepare(&mut over6, &no6).expect_err("no IPv6 underlay address");
        assert_eq!(
            e.to_string(),
            "quic.endpoint_family is IPv6 but underlay eth0 has no global IPv6 address (set underlay.public_ip6)"
        );
    }
}
