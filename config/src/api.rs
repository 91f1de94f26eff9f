//! The local agent API, spoken over the agent's Unix socket: one JSON request per line, one
//! JSON response per line. Shared by the agent (server) and weftctl (client).

use crate::dns::DnsSettings;
use crate::subnet::Family;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Largest request line the agent reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    PodAdd {
        name: String,
        /// Defaults to the pod name.
        #[serde(default)]
        netns: Option<String>,
        /// Defaults to eth0.
        #[serde(default)]
        ifname: Option<String>,
        /// A namespace given as a path (a CNI runtime's `CNI_NETNS`, e.g. /proc/PID/ns/net): the
        /// agent bind-mounts it at `/run/netns/<netns>` and the pod is of source `cni`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns_path: Option<String>,
        /// The pod's own resolver settings, over the network's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dns: Option<DnsSettings>,
    },
    PodDel {
        name: String,
    },
    PodList,
    /// Release the subnet, remove everything the agent made, and exit.
    Leave,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    Pod(Box<PodInfo>),
    Pods { pods: Vec<PodInfo> },
    Done,
    Error { message: String },
}

/// A pod as the API shows it: one address per family of the network. The IPv4 one stays in
/// `ip`/`prefix_len`/`gateway` as before dual-stack (null in a network without an IPv4 pool);
/// the IPv6 one is `ip6`/`prefix_len6`/`gateway6`, absent without an IPv6 pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub name: String,
    pub netns: String,
    pub ifname: String,
    /// The IPv4 address.
    pub ip: Option<IpAddr>,
    pub prefix_len: Option<u8>,
    /// The IPv4 gateway (the bridge's IPv4 address).
    pub gateway: Option<IpAddr>,
    /// The IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_len6: Option<u8>,
    /// The IPv6 gateway (the bridge's IPv6 address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<IpAddr>,
    pub host_veth: String,
    /// `config` (declared in agent.toml) or `api` (added through the socket).
    pub source: String,
    /// The pod's resolver settings: its own over the network's (absent when neither sets any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsSettings>,
}

/// One of a pod's addresses: the address, its prefix length and the gateway of its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddr {
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub gateway: IpAddr,
}

impl PodInfo {
    /// A pod with no address yet (see [`PodInfo::set_addr`]).
    pub fn new(name: String, netns: String, ifname: String, host_veth: String, source: String) -> Self {
        PodInfo {
            name,
            netns,
            ifname,
            ip: None,
            prefix_len: None,
            gateway: None,
            ip6: None,
            prefix_len6: None,
            gateway6: None,
            host_veth,
            source,
            dns: None,
        }
    }

    /// The pod's addresses, IPv4 first (fields of one family that are only partly set are
    /// left out).
    pub fn addrs(&self) -> Vec<PodAddr> {
        let v4 = (self.ip, self.prefix_len, self.gateway);
        let v6 = (self.ip6, self.prefix_len6, self.gateway6);
        [v4, v6]
            .into_iter()
            .filter_map(|(ip, prefix_len, gateway)| {
                Some(PodAddr { ip: ip?, prefix_len: prefix_len?, gateway: gateway? })
            })
            .collect()
    }

    /// Sets the fields of `a`'s family.
    pub fn set_addr(&mut self, a: PodAddr) {
        let (ip, prefix_len, gateway) = match a.ip {
            IpAddr::V4(_) => (&mut self.ip, &mut self.prefix_len, &mut self.gateway),
            IpAddr::V6(_) => (&mut self.ip6, &mut self.prefix_len6, &mut self.gateway6),
        };
        (*ip, *prefix_len, *gateway) = (Some(a.ip), Some(a.prefix_len), Some(a.gateway));
    }

    /// The addresses as `ADDR/LEN`, joined by `sep` (`-` for none).
    pub fn addrs_text(&self, sep: &str) -> String {
        let all: Vec<String> = self.addrs().iter().map(|a| format!("{}/{}", a.ip, a.prefix_len)).collect();
        if all.is_empty() {
            "-".into()
        } else {
            all.join(sep)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node: String,
    pub subnet: String,
    pub public_ip: IpAddr,
    /// Route installed and matching the desired one.
    pub route_ok: bool,
    /// Why the peer cannot be routed (e.g. not on-link for host-gw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// When a reconcile first saw this peer's route installed (ms since the Unix epoch; 0 = not
    /// installed). Kept while the route stays; `weftctl lab bench --scale` measures join
    /// convergence with it.
    #[serde(default)]
    pub route_since_unix_ms: u64,
    /// The backend carrying this peer subnet (`host-gw` or the encapsulation under `auto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl PeerStatus {
    /// The family of the peer's subnet (`None` for a subnet that does not parse).
    pub fn family(&self) -> Option<Family> {
        self.subnet.parse::<IpNet>().ok().map(Family::of_net)
    }
}

/// The last route this agent deleted (a peer left); what `weftctl lab bench --scale` measures
/// leave convergence with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRemoved {
    pub subnet: String,
    /// When the delete was applied (ms since the Unix epoch).
    pub unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub node_id: String,
    pub network: String,
    pub pid: u32,
    pub ready: bool,
    pub etcd_connected: bool,
    /// The IPv4 subnet (`None` until acquired, and in a network without an IPv4 pool).
    #[serde(default)]
    pub subnet: Option<String>,
    /// The IPv6 subnet, in a network with an IPv6 pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    #[serde(default)]
    pub public_ip: Option<IpAddr>,
    /// The IPv6 underlay address the record publishes (networks with an IPv6 pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip6: Option<IpAddr>,
    #[serde(default)]
    pub backend: Option<String>,
    pub peers: Vec<PeerStatus>,
    pub pods: Vec<PodInfo>,
    pub reconciles: u64,
    pub reconcile_errors: u64,
    pub skipped_records: u64,
    /// Last reconcile error, if the latest one failed.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The quic backend's live state (absent for host-gw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<QuicStatus>,
    /// Progress marks behind /healthz and /readyz (seconds since the Unix epoch).
    #[serde(default)]
    pub health: Health,
    /// The latest reachability probe of every peer's gateway, of each family the node holds a
    /// subnet of (the family is the target's: a dual-stack peer has two entries).
    #[serde(default)]
    pub probes: Vec<ProbeResult>,
    /// The last route this agent deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_route_removed: Option<RouteRemoved>,
}

impl Status {
    /// The families the node holds a subnet of, IPv4 first.
    pub fn families(&self) -> Vec<Family> {
        let held = [(Family::V4, &self.subnet), (Family::V6, &self.subnet6)];
        held.into_iter().filter(|(_, s)| s.is_some()).map(|(f, _)| f).collect()
    }

    /// Whether the node holds a subnet of either family.
    pub fn holds_subnet(&self) -> bool {
        self.subnet.is_some() || self.subnet6.is_some()
    }

    /// The distinct peer nodes (`peers` lists a dual-stack peer once per subnet).
    pub fn peer_nodes(&self) -> BTreeSet<&str> {
        self.peers.iter().map(|p| p.node.as_str()).collect()
    }

    /// The full mesh with `n` peer nodes: for each family the node holds a subnet of, `n`
    /// peer nodes with a subnet of that family, and every peer subnet's route installed.
    pub fn meshed_with(&self, n: usize) -> bool {
        let families = self.families();
        !families.is_empty()
            && self.peer_nodes().len() == n
            && self.peers.iter().all(|p| p.route_ok)
            && families.iter().all(|f| {
                let of_family = self.peers.iter().filter(|p| p.family() == Some(*f));
                of_family.map(|p| p.node.as_str()).collect::<BTreeSet<_>>().len() == n
            })
    }
}

/// When the agent last made progress; the inputs of /healthz, /readyz and their metrics.
/// Times are seconds since the Unix epoch, 0 = never.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Health {
    /// The agent process started.
    pub started: u64,
    /// The daemon loop last went round (reconcile, heartbeat or a retry while starting).
    pub loop_tick: u64,
    /// Seconds without a loop tick after which the loop counts as stuck.
    pub stuck_after_secs: u64,
    /// etcd last answered (list, watch event, heartbeat, lease renewal).
    pub etcd_ok: u64,
    /// Seconds without an answer from etcd after which the agent is not ready.
    pub etcd_grace_secs: u64,
    /// The own subnet record was last written or its lease renewed.
    pub record_renewed: u64,
    /// The heartbeat was last refreshed.
    pub heartbeat: u64,
}

/// One reachability probe: an ICMP echo from this node's gateway to a peer's gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub node: String,
    pub target: IpAddr,
    pub ok: bool,
    /// Round trip of the latest successful probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    /// When the probe ran (seconds since the Unix epoch).
    pub at: u64,
}

impl ProbeResult {
    /// The family probed: the target's (from the own gateway of the same family).
    pub fn family(&self) -> Family {
        Family::of(self.target)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QuicStatus {
    pub tun: String,
    pub mtu: u32,
    pub endpoint: String,
    /// Seconds until this node's certificate expires (negative once expired).
    pub cert_expires_in_secs: i64,
    pub peers: Vec<QuicPeerStatus>,
    /// Decapsulated or tun packets dropped, by reason (`bad_source`, `bad_destination`,
    /// `malformed`, `no_peer`, `too_big`, `send_failed`, `tun_write`).
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Connections refused during the handshake or after it (bad certificate, unknown node, wrong address).
    pub refused: u64,
    /// Data path threads (each on UDP port `endpoint`'s + its index); 1 from an older agent.
    #[serde(default = "one")]
    pub threads: usize,
    /// Packets a data path thread read for a peer whose connection another thread holds, and
    /// handed over (pairs with fewer threads than this node).
    #[serde(default)]
    pub handed: u64,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QuicPeerStatus {
    pub node: String,
    /// The peer's subnet of the network's first family (IPv4 when it has an IPv4 pool).
    pub subnet: String,
    /// The peer's IPv6 subnet, when the network has an IPv6 pool (carried on the same
    /// connection as `subnet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    pub connected: bool,
    /// This node dials the peer (the other accepts).
    pub dialer: bool,
    pub rtt_us: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Connections made to this peer since start (1 + reconnects), summed over the pair's
    /// threads.
    pub connects: u64,
    /// Data path threads the pair uses (the smaller count of the two nodes), each with its own
    /// connection; `connected` when all of them are, `rtt_us` thread 0's. 1 from an older agent.
    #[serde(default = "one")]
    pub threads: usize,
    /// Each of the pair's threads' connection, thread 0 first (empty from an older agent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<QuicShardStatus>,
}

/// One data path thread's connection to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QuicShardStatus {
    pub connected: bool,
    pub rtt_us: u64,
    /// DATAGRAM frames (tunnelled packets) sent and received on the current connection.
    pub tx_datagrams: u64,
    pub rx_datagrams: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r: Request = serde_json::from_str(r#"{"op":"pod_add","name":"x"}"#).expect("parse");
        assert_eq!(r, Request::PodAdd { name: "x".into(), netns: None, ifname: None, netns_path: None, dns: None });
        assert_eq!(
            serde_json::to_string(&r).expect("ser"),
            r#"{"op":"pod_add","name":"x","netns":null,"ifname":null}"#,
            "older agents still parse a pod_add without a path"
        );
        assert_eq!(serde_json::to_string(&Request::Status).expect("ser"), r#"{"op":"status"}"#);
        assert_eq!(serde_json::to_string(&Response::Done).expect("ser"), r#"{"result":"done"}"#);
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
    }

    fn pod() -> PodInfo {
        PodInfo::new("p1".into(), "ns1".into(), "eth0".into(), "wv0".into(), "config".into())
    }

    #[test]
    fn pod_entries_keep_ip_for_ipv4_and_add_ip6_beside_it() {
        let a = |ip: &str, len, gw: &str| PodAddr {
            ip: ip.parse().expect("lit"),
            prefix_len: len,
            gateway: gw.parse().expect("lit"),
        };
        let (v4, v6) = (a("10.244.1.2", 24, "10.244.1.1"), a("fd00:10:244:1::2", 64, "fd00:10:244:1::1"));
        let mut p = pod();
        p.set_addr(v4);
        let json = serde_json::to_string(&p).expect("json");
        assert_eq!(
            json,
            r#"{"name":"p1","netns":"ns1","ifname":"eth0","ip":"10.244.1.2","prefix_len":24,"gateway":"10.244.1.1","host_veth":"wv0","source":"config"}"#,
            "an IPv4 pod's entry is as before dual-stack"
        );
        p.set_addr(v6);
        assert_eq!(p.addrs(), vec![v4, v6]);
        assert_eq!(p.addrs_text(" "), "10.244.1.2/24 fd00:10:244:1::2/64");
        let json = serde_json::to_value(&p).expect("json");
        assert_eq!((json["ip"].as_str(), json["ip6"].as_str()), (Some("10.244.1.2"), Some("fd00:10:244:1::2")));
        let mut only6 = pod();
        only6.set_addr(v6);
        let json = serde_json::to_value(&only6).expect("json");
        assert!(json["ip"].is_null() && json.get("ip").is_some(), "ip is null without an IPv4 pool: {json}");
        assert_eq!(serde_json::from_value::<PodInfo>(json).expect("read back"), only6);
        assert_eq!(pod().addrs_text(" "), "-");
    }

    fn peer(node: &str, subnet: &str, route_ok: bool) -> PeerStatus {
        PeerStatus {
            node: node.into(),
            subnet: subnet.into(),
            public_ip: "172.30.0.12".parse().expect("lit"),
            route_ok,
            problem: None,
            route_since_unix_ms: 0,
            via: None,
        }
    }

    #[test]
    fn a_dual_stack_peer_is_one_node_with_two_subnets() {
        let mut st: Status = serde_json::from_str(
            r#"{"node":"n1","node_id":"i","network":"d","pid":1,"ready":true,"etcd_connected":true,
                "subnet":"10.244.1.0/24","peers":[],"pods":[],"reconciles":0,"reconcile_errors":0,
                "skipped_records":0}"#,
        )
        .expect("status");
        st.subnet6 = Some("fd00:10:244:1::/64".into());
        st.peers = vec![
            peer("n2", "10.244.2.0/24", true),
            peer("n3", "10.244.3.0/24", true),
            peer("n2", "fd00:10:244:2::/64", true),
        ];
        assert_eq!(st.families(), [Family::V4, Family::V6]);
        assert_eq!(st.peer_nodes().into_iter().collect::<Vec<_>>(), ["n2", "n3"]);
        assert_eq!(st.peers[2].family(), Some(Family::V6));
        assert!(!st.meshed_with(2), "n3's IPv6 subnet is not known yet");
        st.peers.push(peer("n3", "fd00:10:244:3::/64", false));
        assert!(!st.meshed_with(2), "n3's IPv6 route is not installed yet");
        st.peers[3].route_ok = true;
        assert!(st.meshed_with(2));
        assert!(!st.meshed_with(3));
        st.subnet6 = None;
        st.peers.truncate(2);
        assert!(st.meshed_with(2), "IPv4 only, as before dual-stack");
        st.subnet = None;
        assert!(!st.holds_subnet() && !st.meshed_with(2), "no subnet held, no mesh");
        let probe = ProbeResult {
            node: "n2".into(),
            target: "fd00:10:244:2::1".parse().expect("lit"),
            ok: true,
            rtt_us: None,
            at: 0,
        };
        assert_eq!(probe.family(), Family::V6);
    }
}
