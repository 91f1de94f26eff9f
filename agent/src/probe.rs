//! Reachability probes: every `[probes] interval_secs` the agent sends one ICMP echo request
//! from its own gateway address to every peer's gateway address of the same family (IPv4 and,
//! on a dual-stack node, IPv6: a round per family, at once), through the overlay both ways
//! (host-gw routes or the QUIC tunnel), and waits up to a second for the replies. The results go
//! into the status (and so `/metrics`) and into `/weft/v1/<net>/probes/<node>` under a lease,
//! which `weftctl status` reads into a reachability matrix.
//!
//! One raw ICMP socket per round and family (CAP_NET_RAW; ICMPv4 or ICMPv6 echo as the own
//! gateway is), run on a blocking thread; a few bytes per peer.
//! Nothing is sent to anything but peer gateways taken from valid subnet records.

use anyhow::{Context, Result};
use ipnet::IpNet;
use nix::sys::socket::SockaddrStorage;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use weft_config::api::{ProbeResult, Status};
use weft_config::probes::{PeerProbe, ProbeRecord};
use weft_config::subnet::{self, Family};
use weft_config::Keys;
use weft_store::{EtcdStore, Store};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST6: u8 = 128;
const ECHO_REPLY6: u8 = 129;

/// RFC 1071 checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request of `family` with identifier `id`, sequence `seq` and an 8-byte payload.
/// ICMPv4 carries its checksum; ICMPv6's covers a pseudo-header, so the kernel fills it in on
/// a raw ICMPv6 socket (RFC 3542) and it is left zero here.
pub fn echo_request(family: Family, id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = match family {
        Family::V4 => ECHO_REQUEST,
        Family::V6 => ECHO_REQUEST6,
    };
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"weftprob");
    if family == Family::V4 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// From a raw ICMPv4 socket's read (IPv4 header + ICMP): the source and sequence of an echo
/// reply carrying identifier `id`; `None` for anything else.
pub fn parse_reply(buf: &[u8], id: u16) -> Option<(Ipv4Addr, u16)> {
    let ihl = usize::from(*buf.first()? & 0x0f) * 4;
    if *buf.first()? >> 4 != 4 || ihl < 20 || buf.len() < ihl + 8 {
        return None;
    }
    let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
    Some((src, echo_reply_seq(&buf[ihl..], ECHO_REPLY, id)?))
}

/// From a raw ICMPv6 socket's read (the ICMPv6 message alone: the kernel strips the IPv6
/// header, the source comes with `recvfrom`): the sequence of an echo reply carrying `id`.
pub fn parse_reply6(buf: &[u8], id: u16) -> Option<u16> {
    echo_reply_seq(buf, ECHO_REPLY6, id)
}

fn echo_reply_seq(icmp: &[u8], reply: u8, id: u16) -> Option<u16> {
    if icmp.len() < 8 || icmp[0] != reply || icmp[1] != 0 || u16::from_be_bytes([icmp[4], icmp[5]]) != id {
        return None;
    }
    Some(u16::from_be_bytes([icmp[6], icmp[7]]))
}

/// One round from the own gateway `src` to the `targets` of its family (ICMPv4 or ICMPv6 echo
/// as `src` is): an echo to each, replies collected until `timeout`. Returns the round trip of
/// each target that answered; targets of the other family are not probed by this round.
pub fn round(src: IpAddr, targets: &[IpAddr], timeout: Duration) -> std::io::Result<HashMap<IpAddr, Duration>> {
    let family = Family::of(src);
    let (domain, protocol) = match family {
        Family::V4 => (Domain::IPV4, Protocol::ICMPV4),
        Family::V6 => (Domain::IPV6, Protocol::ICMPV6),
    };
    let sock = Socket::new(domain, Type::RAW, Some(protocol))?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let id = (std::process::id() as u16) ^ (nanos as u16) ^ ((nanos >> 16) as u16);
    let mut sent = HashMap::new();
    for (seq, t) in targets.iter().filter(|t| Family::of(**t) == family).enumerate() {
        let seq = seq as u16;
        // A failed send (no route) is simply an unanswered probe.
        if sock.send_to(&echo_request(family, id, seq), &SocketAddr::new(*t, 0).into()).is_ok() {
            sent.insert(seq, (*t, Instant::now()));
        }
    }
    let deadline = Instant::now() + timeout;
    let mut got = HashMap::new();
    let mut buf = [0u8; 1500];
    while got.len() < sent.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))?;
        let (n, from) = match nix::sys::socket::recvfrom::<SockaddrStorage>(sock.as_raw_fd(), &mut buf) {
            Ok(r) => r,
            Err(nix::Error::EAGAIN | nix::Error::ETIMEDOUT) => break,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let reply = match family {
            Family::V4 => parse_reply(&buf[..n], id).map(|(src, seq)| (IpAddr::V4(src), seq)),
            Family::V6 => {
                let src = from.as_ref().and_then(|a| a.as_sockaddr_in6()).map(|a| IpAddr::V6(a.ip()));
                src.zip(parse_reply6(&buf[..n], id))
            }
        };
        if let Some((from, seq)) = reply {
            if let Some((target, at)) = sent.get(&seq) {
                if *target == from {
                    got.entry(from).or_insert_with(|| at.elapsed());
                }
            }
        }
    }
    Ok(got)
}

/// What the probe task needs from the daemon.
pub struct Probe {
    pub store: EtcdStore,
    /// To connect afresh when publishing keeps failing (another etcd member may be alive).
    pub etcd: weft_config::agent::EtcdConfig,
    pub keys: Keys,
    pub node: String,
    pub interval: Duration,
    pub status: Arc<RwLock<Status>>,
}

fn now_secs() -> u64 {
    crate::metrics::now_secs()
}

impl Probe {
    /// Runs forever: a round every interval, results into the status and etcd.
    pub fn spawn(mut self) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut lease = 0i64;
            let mut failures = 0u32;
            loop {
                tick.tick().await;
                let results = self.run_round().await;
                match self.publish(&results, &mut lease).await {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        tracing::debug!(error = %format!("{e:#}"), "publishing probe results");
                        failures += 1;
                        if failures >= 2 {
                            if let Ok(Ok(c)) =
                                tokio::time::timeout(Duration::from_secs(10), EtcdStore::connect(&self.etcd)).await
                            {
                                self.store = c;
                                lease = 0;
                            }
                        }
                    }
                }
            }
        });
    }

    async fn run_round(&self) -> Vec<ProbeResult> {
        let plans = {
            let st = self.status.read().unwrap_or_else(|p| p.into_inner());
            plan(&st)
        };
        let timeout = (self.interval / 2).min(Duration::from_secs(1));
        // The families' rounds run at once, each on its own socket and blocking thread.
        let rounds = plans.iter().map(|p| {
            let (src, targets) = (p.src, p.targets.iter().map(|(_, t)| *t).collect::<Vec<IpAddr>>());
            async move {
                if targets.is_empty() {
                    return HashMap::new();
                }
                let answered = tokio::task::spawn_blocking(move || round(src, &targets, timeout))
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("probe thread panicked")));
                answered.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, family = %Family::of(src), "reachability probe failed");
                    HashMap::new()
                })
            }
        });
        let answered = futures::future::join_all(rounds).await;
        let results = results(plans, &answered, now_secs());
        let mut st = self.status.write().unwrap_or_else(|p| p.into_inner());
        st.probes = results.clone();
        results
    }

    async fn publish(&mut self, results: &[ProbeResult], lease: &mut i64) -> Result<()> {
        let mut record = record(results, now_secs(), self.interval.as_secs());
        let (auto, peers) = {
            let st = self.status.read().unwrap_or_else(|p| p.into_inner());
            (st.backend.as_deref() == Some("auto"), st.peers.clone())
        };
        if auto {
            record = with_paths(record, &peers);
        }
        // The record lives a few rounds past the last one, so a dead node's results vanish.
        let ttl = (self.interval * 3).max(Duration::from_secs(10));
        if *lease == 0 || !self.store.keep_alive_once(*lease).await.unwrap_or(false) {
            *lease = self.store.grant(ttl).await.context("probe lease")?;
        }
        self.store.put(&self.keys.probe(&self.node), record.to_json(), *lease).await
    }
}

/// One family's round: from the own gateway of that family to every peer gateway of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundPlan {
    pub src: IpAddr,
    /// Peer node name and the gateway of its subnet of `src`'s family.
    pub targets: Vec<(String, IpAddr)>,
}

/// The rounds a status calls for, IPv4 first: one per family the node holds a subnet of, each
/// to the peers' subnets of that family (a dual-stack peer is probed once per family; a peer
/// without a subnet of a family the node holds is not probed over it).
pub fn plan(st: &Status) -> Vec<RoundPlan> {
    let own = [&st.subnet, &st.subnet6];
    own.into_iter()
        .filter_map(|s| s.as_deref()?.parse::<IpNet>().ok())
        .map(|own| {
            let family = Family::of_net(own);
            let targets = st
                .peers
                .iter()
                .filter_map(|p| p.subnet.parse::<IpNet>().ok().map(|s| (p, s)))
                .filter(|(_, s)| Family::of_net(*s) == family)
                .map(|(p, s)| (p.node.clone(), subnet::gateway(s)))
                .collect();
            RoundPlan { src: subnet::gateway(own), targets }
        })
        .collect()
}

/// The results of the `plans`' rounds, given what answered each (same order) and when.
pub fn results(plans: Vec<RoundPlan>, answered: &[HashMap<IpAddr, Duration>], at: u64) -> Vec<ProbeResult> {
    let none = HashMap::new();
    plans
        .into_iter()
        .enumerate()
        .flat_map(|(i, p)| {
            let answered = answered.get(i).unwrap_or(&none);
            p.targets
                .into_iter()
                .map(|(node, target)| {
                    let rtt = answered.get(&target);
                    ProbeResult { node, target, ok: rtt.is_some(), rtt_us: rtt.map(|d| d.as_micros() as u64), at }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The record published for a round's results: each family's under its own field.
pub fn record(results: &[ProbeResult], updated: u64, interval_secs: u64) -> ProbeRecord {
    let mut r = ProbeRecord {
        schema: weft_config::records::SCHEMA_VERSION,
        updated,
        interval_secs,
        peers: BTreeMap::new(),
        peers6: BTreeMap::new(),
    };
    for p in results {
        r.of_mut(p.family()).insert(p.node.clone(), PeerProbe { ok: p.ok, rtt_us: p.rtt_us, via: None });
    }
    r
}

/// Under `auto`, each result gets the backend carrying that peer's subnet of its family (from
/// the peers' status), so `weftctl status` shows the choice per pair and family.
pub fn with_paths(mut r: ProbeRecord, peers: &[weft_config::api::PeerStatus]) -> ProbeRecord {
    for p in peers {
        let (Some(family), Some(via)) = (p.family(), p.via.as_deref().and_then(|v| v.parse().ok())) else { continue };
        if let Some(probe) = r.of_mut(family).get_mut(&p.node) {
            probe.via = Some(via);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_packets() {
        let p = echo_request(Family::V4, 0x1234, 7);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!(&p[..8], &[8, 0, p[2], p[3], 0x12, 0x34, 0, 7]);
        // A reply as a raw socket returns it: IPv4 header (20 bytes) + ICMP.
        let mut r = vec![0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 244, 2, 1, 10, 244, 1, 1];
        let mut icmp = p.to_vec();
        icmp[0] = ECHO_REPLY;
        r.extend_from_slice(&icmp);
        assert_eq!(parse_reply(&r, 0x1234), Some(("10.244.2.1".parse().expect("lit"), 7)));
        assert_eq!(parse_reply(&r, 0x9999), None, "someone else's ping");
        assert_eq!(parse_reply(&r[..24], 0x1234), None, "truncated");
        let mut req = r.clone();
        req[20] = ECHO_REQUEST;
        assert_eq!(parse_reply(&req, 0x1234), None, "not a reply");
    }

    #[test]
    fn echo_packets_v6() {
        let p = echo_request(Family::V6, 0xbeef, 300);
        assert_eq!(&p[..8], &[128, 0, 0, 0, 0xbe, 0xef, 1, 44], "checksum left to the kernel");
        let mut reply = p;
        reply[0] = ECHO_REPLY6;
        assert_eq!(parse_reply6(&reply, 0xbeef), Some(300));
        assert_eq!(parse_reply6(&reply, 0xbeee), None, "someone else's ping");
        assert_eq!(parse_reply6(&p, 0xbeef), None, "a request, not a reply");
        assert_eq!(parse_reply6(&reply[..7], 0xbeef), None, "truncated");
        // A neighbour solicitation (type 135) the same socket also sees.
        assert_eq!(parse_reply6(&[135, 0, 0, 0, 0, 0, 0, 0], 0), None);
    }

    fn status(subnet: Option<&str>, subnet6: Option<&str>, peers: &[(&str, &str)]) -> Status {
        let peers: Vec<serde_json::Value> = peers
            .iter()
            .map(|(node, subnet)| {
                serde_json::json!({"node": node, "subnet": subnet, "public_ip": "172.30.0.12", "route_ok": true})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "node": "n1", "node_id": "i", "network": "d", "pid": 1, "ready": true,
            "etcd_connected": true, "subnet": subnet, "subnet6": subnet6, "peers": peers,
            "pods": [], "reconciles": 0, "reconcile_errors": 0, "skipped_records": 0
        }))
        .expect("status")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("lit")
    }

    #[test]
    fn a_dual_stack_node_probes_each_family_from_its_own_gateway() {
        let st = status(
            Some("10.244.1.0/24"),
            Some("fd00:10:244:1::/64"),
            &[
                ("n2", "10.244.2.0/24"),
                ("n3", "10.244.3.0/24"),
                ("n2", "fd00:10:244:2::/64"),
                ("n3", "fd00:10:244:3::/64"),
                ("n4", "not a subnet"),
            ],
        );
        let plans = plan(&st);
        assert_eq!(
            plans,
            [
                RoundPlan {
                    src: ip("10.244.1.1"),
                    targets: vec![("n2".into(), ip("10.244.2.1")), ("n3".into(), ip("10.244.3.1"))],
                },
                RoundPlan {
                    src: ip("fd00:10:244:1::1"),
                    targets: vec![("n2".into(), ip("fd00:10:244:2::1")), ("n3".into(), ip("fd00:10:244:3::1"))],
                },
            ]
        );
        let v4: HashMap<IpAddr, Duration> = [(ip("10.244.2.1"), Duration::from_micros(250))].into();
        let v6: HashMap<IpAddr, Duration> =
            [(ip("fd00:10:244:2::1"), Duration::from_micros(300)), (ip("fd00:10:244:3::1"), Duration::from_micros(90))]
                .into();
        let got = results(plans, &[v4, v6], 77);
        let brief: Vec<(&str, IpAddr, bool, Option<u64>)> =
            got.iter().map(|r| (r.node.as_str(), r.target, r.ok, r.rtt_us)).collect();
        assert_eq!(
            brief,
            [
                ("n2", ip("10.244.2.1"), true, Some(250)),
                ("n3", ip("10.244.3.1"), false, None),
                ("n2", ip("fd00:10:244:2::1"), true, Some(300)),
                ("n3", ip("fd00:10:244:3::1"), true, Some(90)),
            ]
        );
        assert!(got.iter().all(|r| r.at == 77));
        let rec = record(&got, 80, 10);
        assert_eq!(
            rec.to_json(),
            r#"{"schema":1,"updated":80,"interval_secs":10,"peers":{"n2":{"ok":true,"rtt_us":250},"n3":{"ok":false}},"peers6":{"n2":{"ok":true,"rtt_us":300},"n3":{"ok":true,"rtt_us":90}}}"#
        );
    }

    #[test]
    fn under_auto_each_result_names_the_backend_carrying_its_peer_subnet() {
        let r = |node: &str, target: &str| ProbeResult {
            node: node.into(),
            target: ip(target),
            ok: true,
            rtt_us: None,
            at: 1,
        };
        let got = [r("n2", "10.244.2.1"), r("n2", "fd00:10:244:2::1"), r("n3", "10.244.3.1")];
        let peer = |node: &str, subnet: &str, via: Option<&str>| weft_config::api::PeerStatus {
            node: node.into(),
            subnet: subnet.into(),
            public_ip: ip("172.30.0.2"),
            route_ok: true,
            problem: None,
            route_since_unix_ms: 0,
            via: via.map(str::to_string),
        };
        let peers = [
            peer("n2", "10.244.2.0/24", Some("vxlan")),
            peer("n2", "fd00:10:244:2::/64", Some("host-gw")),
            peer("n3", "10.244.3.0/24", None),
        ];
        let rec = with_paths(record(&got, 1, 10), &peers);
        assert_eq!(
            rec.to_json(),
            r#"{"schema":1,"updated":1,"interval_secs":10,"peers":{"n2":{"ok":true,"via":"vxlan"},"n3":{"ok":true}},"peers6":{"n2":{"ok":true,"via":"host-gw"}}}"#
        );
        let back = ProbeRecord::from_json("k", rec.to_json().as_bytes()).expect("parses");
        assert_eq!(back, rec);
        let bad = r#"{"schema":1,"updated":1,"interval_secs":10,"peers":{"n2":{"ok":true,"via":"carrier-pigeon"}}}"#;
        assert!(ProbeRecord::from_json("k", bad.as_bytes()).is_err(), "an unknown backend makes the record unusable");
    }

    #[test]
    fn single_family_nodes_probe_their_family_alone() {
        let peers = [("n2", "10.244.2.0/24"), ("n2", "fd00:10:244:2::/64")];
        let v4 = plan(&status(Some("10.244.1.0/24"), None, &peers));
        assert_eq!(v4, [RoundPlan { src: ip("10.244.1.1"), targets: vec![("n2".into(), ip("10.244.2.1"))] }]);
        let rec = record(&results(v4, &[HashMap::new()], 1), 1, 10);
        assert_eq!(
            rec.to_json(),
            r#"{"schema":1,"updated":1,"interval_secs":10,"peers":{"n2":{"ok":false}}}"#,
            "an IPv4 node's record is as before dual-stack"
        );
        let v6 = plan(&status(None, Some("fd00:10:244:1::/64"), &peers));
        assert_eq!(
            v6,
            [RoundPlan { src: ip("fd00:10:244:1::1"), targets: vec![("n2".into(), ip("fd00:10:244:2::1"))] }]
        );
        let rec = record(&results(v6, &[HashMap::new()], 1), 1, 10);
        assert_eq!(
            rec.to_json(),
            r#"{"schema":1,"updated":1,"interval_secs":10,"peers":{},"peers6":{"n2":{"ok":false}}}"#
        );
        assert!(plan(&status(None, None, &peers)).is_empty(), "no subnet yet, nothing to probe from");
    }
}
