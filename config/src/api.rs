//! The local agent API, spoken over the agent's Unix socket: one JSON request per line, one
//! JSON response per line. Shared by the agent (server) and weftctl (client).

use serde::{Deserialize, Serialize};
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
    Pod(PodInfo),
    Pods { pods: Vec<PodInfo> },
    Done,
    Error { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub name: String,
    pub netns: String,
    pub ifname: String,
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub gateway: IpAddr,
    pub host_veth: String,
    /// `config` (declared in agent.toml) or `api` (added through the socket).
    pub source: String,
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
    /// The latest reachability probe of every peer's gateway.
    #[serde(default)]
    pub probes: Vec<ProbeResult>,
    /// The last route this agent deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_route_removed: Option<RouteRemoved>,
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
    /// Connections made to this peer since start (1 + reconnects).
    pub connects: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r: Request = serde_json::from_str(r#"{"op":"pod_add","name":"x"}"#).expect("parse");
        assert_eq!(r, Request::PodAdd { name: "x".into(), netns: None, ifname: None, netns_path: None });
        assert_eq!(
            serde_json::to_string(&r).expect("ser"),
            r#"{"op":"pod_add","name":"x","netns":null,"ifname":null}"#,
            "older agents still parse a pod_add without a path"
        );
        assert_eq!(serde_json::to_string(&Request::Status).expect("ser"), r#"{"op":"status"}"#);
        assert_eq!(serde_json::to_string(&Response::Done).expect("ser"), r#"{"result":"done"}"#);
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
    }
}
