//! Records stored in etcd. They are written by other nodes and by operators, so every read is
//! validated: unknown fields are tolerated (a newer agent may add some), a newer schema version
//! is accepted as long as the fields this version needs are there, anything malformed is an
//! error that names the key.

use crate::error::ConfigError;
use crate::subnet::{self, parse_cidr, CidrError, Family};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;
/// Largest record value accepted from etcd; anything bigger is refused unread.
pub const MAX_RECORD_BYTES: usize = 4096;

/// How cross-host traffic is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Plain routes to each peer subnet via the peer's underlay address (needs L2 adjacency).
    HostGw,
    /// A tun device whose packets travel as QUIC datagrams between nodes.
    Quic,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::HostGw => "host-gw",
            Backend::Quic => "quic",
        })
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host-gw" => Ok(Backend::HostGw),
            "quic" => Ok(Backend::Quic),
            other => Err(format!("expected one of host-gw, quic, found {other:?}")),
        }
    }
}

/// The family of the cluster CIDR (`cidr`), of the subnets under `subnets/` and of the
/// underlay addresses: IPv4, the only family switched on. Dual-stack adds IPv6 in fields of
/// its own (`cidr6`, `subnets6/`) instead of changing what these hold.
pub const PRIMARY_FAMILY: Family = Family::V4;

/// `/weft/v1/<network>/config`: written by `weftctl network init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub schema: u32,
    /// The cluster CIDR all node subnets are carved from (IPv4).
    pub cidr: IpNet,
    /// Prefix length of each node's subnet.
    pub subnet_len: u8,
    pub backend: Backend,
}

impl NetworkConfig {
    /// Builds a validated config; `source` names the origin in errors (a flag or an etcd key).
    pub fn new(source: &str, cidr: &str, subnet_len: u8, backend: Backend) -> Result<Self, ConfigError> {
        let cidr = parse_cidr(cidr).map_err(|e| ConfigError::new(source, "cidr", e.to_string()))?;
        let c = Self { schema: SCHEMA_VERSION, cidr, subnet_len, backend };
        c.validate(source)?;
        Ok(c)
    }

    fn validate(&self, source: &str) -> Result<(), ConfigError> {
        check_pool(source, ("cidr", "subnet_len"), PRIMARY_FAMILY, self.cidr, self.subnet_len)
    }

    /// Parses and validates the etcd value stored at `key`.
    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Self, ConfigError> {
        check_size(key, bytes)?;
        let c: Self = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError::new(key, "", format!("invalid network config JSON: {e}")))?;
        c.validate(key)?;
        Ok(c)
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data with derived impls cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One address pool of a network config: `cidr` of `family`, carved into subnets of
/// `subnet_len`, each leaving room for a gateway and pods (at most /30 in IPv4, /126 in IPv6).
/// The two field names are those errors name.
fn check_pool(
    source: &str,
    (cidr_field, len_field): (&str, &str),
    family: Family,
    cidr: IpNet,
    subnet_len: u8,
) -> Result<(), ConfigError> {
    if Family::of_net(cidr) != family {
        let e = CidrError::Syntax { family, given: cidr.to_string() };
        return Err(ConfigError::new(source, cidr_field, e.to_string()));
    }
    if cidr.network() != cidr.addr() {
        return Err(ConfigError::new(source, cidr_field, format!("{cidr} has host bits set")));
    }
    let min = (cidr.prefix_len() + 1).max(8);
    let max = family.bits() - 2;
    if subnet_len < min || subnet_len > max {
        return Err(ConfigError::new(
            source,
            len_field,
            format!(
                "expected a prefix length from {min} to {max} (longer than the cluster's /{}), found {subnet_len}",
                cidr.prefix_len()
            ),
        ));
    }
    Ok(())
}

/// What each backend publishes about its node, keyed by backend name (`"quic"`, ...). Opaque
/// here: only the backend of that name reads its entry (flannel's `BackendData`).
pub type BackendData = BTreeMap<String, serde_json::Value>;

/// The backend name whose data schema-1 records carried as top-level fields.
const LEGACY_QUIC: &str = "quic";

/// `/weft/v1/<network>/subnets/<a.b.c.d-len>`: who owns a subnet and how to reach it.
///
/// Rolling upgrades: schema-1 agents read `quic_endpoint` and `cert_fingerprint` at the top
/// level, so a record whose `backend_data` has a `quic` entry is written with those two fields
/// too; a record from an old agent (top-level fields only) reads as if it had the `quic` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RecordWire", into = "RecordWire")]
pub struct SubnetRecord {
    pub schema: u32,
    /// Node name (what operators see).
    pub node: String,
    /// Machine identity (`node_id` or /etc/machine-id): decides who may reuse the record.
    pub node_id: String,
    /// Underlay address peers route to (host-gw) or dial (quic); IPv4.
    pub public_ip: IpAddr,
    pub backend: Backend,
    /// Changes on every agent start, so peers can tell a restart from a long-lived session.
    pub epoch: u64,
    /// Per-backend data (endpoints, keys, MACs), opaque outside the backend that wrote it.
    pub backend_data: BackendData,
}

/// The record as it is stored: today's fields plus the schema-1 mirror of the quic data.
#[derive(Serialize, Deserialize)]
struct RecordWire {
    schema: u32,
    node: String,
    node_id: String,
    public_ip: IpAddr,
    backend: Backend,
    #[serde(default)]
    epoch: u64,
    /// Typed as schema 1 had them, so a malformed one still makes the record invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quic_endpoint: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cert_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    backend_data: BackendData,
}

/// The schema-1 names of the quic entry's fields: (top-level field, key in `backend_data.quic`).
const LEGACY_QUIC_FIELDS: [(&str, &str); 2] = [("quic_endpoint", "endpoint"), ("cert_fingerprint", "cert_fingerprint")];

impl From<RecordWire> for SubnetRecord {
    fn from(w: RecordWire) -> Self {
        let mut backend_data = w.backend_data;
        if !backend_data.contains_key(LEGACY_QUIC) && (w.quic_endpoint.is_some() || w.cert_fingerprint.is_some()) {
            let mut q = serde_json::Map::new();
            let [(_, endpoint), (_, fingerprint)] = LEGACY_QUIC_FIELDS;
            if let Some(e) = w.quic_endpoint {
                q.insert(endpoint.to_string(), e.to_string().into());
            }
            if let Some(f) = w.cert_fingerprint {
                q.insert(fingerprint.to_string(), f.into());
            }
            backend_data.insert(LEGACY_QUIC.to_string(), serde_json::Value::Object(q));
        }
        SubnetRecord {
            schema: w.schema,
            node: w.node,
            node_id: w.node_id,
            public_ip: w.public_ip,
            backend: w.backend,
            epoch: w.epoch,
            backend_data,
        }
    }
}

impl From<SubnetRecord> for RecordWire {
    fn from(r: SubnetRecord) -> Self {
        let legacy = |key: &str| r.backend_data.get(LEGACY_QUIC).and_then(|q| q.get(key)?.as_str().map(String::from));
        let [(_, endpoint), (_, fingerprint)] = LEGACY_QUIC_FIELDS;
        RecordWire {
            quic_endpoint: legacy(endpoint).and_then(|e| e.parse().ok()),
            cert_fingerprint: legacy(fingerprint),
            schema: r.schema,
            node: r.node,
            node_id: r.node_id,
            public_ip: r.public_ip,
            backend: r.backend,
            epoch: r.epoch,
            backend_data: r.backend_data,
        }
    }
}

impl SubnetRecord {
    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Self, ConfigError> {
        check_size(key, bytes)?;
        let r: Self = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError::new(key, "", format!("invalid subnet record JSON: {e}")))?;
        if !crate::names::valid_name(&r.node) {
            return Err(ConfigError::new(key, "node", format!("invalid node name {:?}", r.node)));
        }
        if r.node_id.is_empty() || r.node_id.len() > 128 {
            return Err(ConfigError::new(key, "node_id", "expected 1 to 128 characters"));
        }
        let ip = r.public_ip;
        if Family::of(ip) != PRIMARY_FAMILY {
            return Err(ConfigError::new(
                key,
                "public_ip",
                format!("expected an {PRIMARY_FAMILY} address like {}, found {ip}", PRIMARY_FAMILY.example_addr()),
            ));
        }
        if !subnet::is_unicast(ip) {
            return Err(ConfigError::new(key, "public_ip", format!("expected a unicast address, found {ip}")));
        }
        if r.schema == 0 {
            return Err(ConfigError::new(key, "schema", "expected a version of 1 or more"));
        }
        Ok(r)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `/weft/v1/<network>/nodes/<name>`: short-TTL liveness, refreshed by the running agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub schema: u32,
    pub node_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<IpNet>,
    /// `ready` once routes and pods are in place, `starting` before.
    pub status: String,
    /// Seconds since the Unix epoch of the last refresh.
    pub updated: u64,
    #[serde(default)]
    pub epoch: u64,
}

impl Heartbeat {
    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Self, ConfigError> {
        check_size(key, bytes)?;
        serde_json::from_slice(bytes).map_err(|e| ConfigError::new(key, "", format!("invalid heartbeat JSON: {e}")))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn check_size(key: &str, bytes: &[u8]) -> Result<(), ConfigError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(ConfigError::new(
            key,
            "",
            format!("value of {} bytes exceeds the {MAX_RECORD_BYTES}-byte limit", bytes.len()),
        ));
    }
    Ok(())
}

/// A subnet key's last segment (under `subnets/`) checked against the network: of the cluster
/// CIDR's family, inside it, of the configured length, aligned. Errors say what was wrong, for
/// the skip log.
pub fn check_subnet_key(net: &NetworkConfig, key: &str, last_segment: &str) -> Result<IpNet, ConfigError> {
    let s = subnet::from_key_form(last_segment)
        .ok_or_else(|| ConfigError::new(key, "", "expected a subnet key like 10.244.1.0-24"))?;
    let (want, got) = (Family::of_net(net.cidr), Family::of_net(s));
    if got != want {
        return Err(ConfigError::new(
            key,
            "",
            format!("expected an {want} subnet key like {}, found the {got} subnet {s}", want.example_key()),
        ));
    }
    if s.prefix_len() != net.subnet_len {
        return Err(ConfigError::new(
            key,
            "",
            format!("subnet {s} is not a /{} as the network config says", net.subnet_len),
        ));
    }
    if !subnet::contains(net.cidr, s) {
        return Err(ConfigError::new(key, "", format!("subnet {s} is outside the cluster CIDR {}", net.cidr)));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn net() -> NetworkConfig {
        NetworkConfig::new("test", "10.244.0.0/16", 24, Backend::HostGw).expect("valid")
    }

    #[test]
    fn network_config_validation() {
        assert_eq!(net().to_json(), r#"{"schema":1,"cidr":"10.244.0.0/16","subnet_len":24,"backend":"host-gw"}"#);
        let e = NetworkConfig::new("--cidr", "10.244.0.1/16", 24, Backend::HostGw).expect_err("misaligned");
        assert_eq!(e.to_string(), "--cidr: cidr: 10.244.0.1/16 has host bits set (did you mean 10.244.0.0/16?)");
        let e = NetworkConfig::new("--subnet-len", "10.244.0.0/16", 16, Backend::HostGw).expect_err("too short");
        assert_eq!(e.to_string(), "--subnet-len: subnet_len: expected a prefix length from 17 to 30 (longer than the cluster's /16), found 16");
        assert!(NetworkConfig::new("x", "10.244.0.0/16", 31, Backend::HostGw).is_err());
        assert!(NetworkConfig::new("x", "10.244.0.0/26", 28, Backend::HostGw).is_ok());
    }

    #[test]
    fn network_config_tolerates_unknown_fields_and_rejects_junk() {
        let k = "/weft/v1/default/config";
        let c = NetworkConfig::from_json(
            k,
            br#"{"schema":2,"cidr":"10.1.0.0/16","subnet_len":24,"backend":"quic","future":{"x":1}}"#,
        )
        .expect("ok");
        assert_eq!(c.backend, Backend::Quic);
        assert!(NetworkConfig::from_json(k, b"{").is_err());
        let e = NetworkConfig::from_json(k, br#"{"schema":1,"cidr":"10.1.0.0/16","subnet_len":24,"backend":"vxlan"}"#)
            .expect_err("backend");
        assert!(
            e.to_string().starts_with("/weft/v1/default/config: invalid network config JSON: unknown variant `vxlan`"),
            "{e}"
        );
    }

    #[test]
    fn subnet_record_round_trip_and_tolerance() {
        let r = SubnetRecord {
            schema: 1,
            node: "n1".into(),
            node_id: "id-1".into(),
            public_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            backend: Backend::HostGw,
            epoch: 7,
            backend_data: BackendData::new(),
        };
        let json = r.to_json();
        assert_eq!(SubnetRecord::from_json("k", json.as_bytes()), Ok(r.clone()));
        let newer = br#"{"schema":3,"node":"n1","node_id":"id-1","public_ip":"192.0.2.1","backend":"host-gw","epoch":7,"labels":{"zone":"a"}}"#;
        assert_eq!(SubnetRecord::from_json("k", newer).map(|x| x.node), Ok("n1".into()));
    }

    /// What a schema-1 agent (before backend_data) wrote for a quic node, byte for byte.
    const SCHEMA1_QUIC: &str = r#"{"schema":1,"node":"n2","node_id":"id-2","public_ip":"172.30.0.12","backend":"quic","epoch":1700000000000000000,"quic_endpoint":"172.30.0.12:7946","cert_fingerprint":"ab12"}"#;

    #[test]
    fn a_schema1_quic_record_reads_as_backend_data() {
        let r = SubnetRecord::from_json("k", SCHEMA1_QUIC.as_bytes()).expect("schema-1 record");
        assert_eq!(r.backend, Backend::Quic);
        assert_eq!(r.backend_data.len(), 1);
        assert_eq!(
            r.backend_data["quic"],
            serde_json::json!({"endpoint": "172.30.0.12:7946", "cert_fingerprint": "ab12"})
        );
        // Written back, it is what a schema-1 agent reads: the same top-level fields.
        let again: serde_json::Value = serde_json::from_str(&r.to_json()).expect("json");
        assert_eq!(again["quic_endpoint"], "172.30.0.12:7946");
        assert_eq!(again["cert_fingerprint"], "ab12");
    }

    /// The fields a schema-1 agent reads, with its types: what it makes of a new record.
    #[derive(Deserialize)]
    struct Schema1Reader {
        schema: u32,
        node: String,
        public_ip: Ipv4Addr,
        backend: Backend,
        epoch: u64,
        quic_endpoint: Option<SocketAddr>,
        cert_fingerprint: Option<String>,
    }

    #[test]
    fn a_schema1_agent_reads_what_a_new_agent_writes() {
        let mut data = BackendData::new();
        data.insert("quic".into(), serde_json::json!({"endpoint": "172.30.0.11:7946", "cert_fingerprint": "cd34"}));
        data.insert("vxlan".into(), serde_json::json!({"vtep_mac": "02:00:00:00:00:01"}));
        let r = SubnetRecord {
            schema: SCHEMA_VERSION,
            node: "n1".into(),
            node_id: "id-1".into(),
            public_ip: IpAddr::V4(Ipv4Addr::new(172, 30, 0, 11)),
            backend: Backend::Quic,
            epoch: 9,
            backend_data: data,
        };
        let json = r.to_json();
        let old: Schema1Reader = serde_json::from_str(&json).expect("a schema-1 agent parses it");
        assert_eq!((old.schema, old.node.as_str(), old.backend, old.epoch), (1, "n1", Backend::Quic, 9));
        assert_eq!(old.public_ip, Ipv4Addr::new(172, 30, 0, 11));
        assert_eq!(old.quic_endpoint, Some("172.30.0.11:7946".parse().expect("literal")));
        assert_eq!(old.cert_fingerprint.as_deref(), Some("cd34"));
        // and a new agent reads its own record back unchanged
        assert_eq!(SubnetRecord::from_json("k", json.as_bytes()), Ok(r));
    }

    #[test]
    fn a_host_gw_record_is_written_as_schema1_wrote_it() {
        let r = SubnetRecord {
            schema: 1,
            node: "n1".into(),
            node_id: "id-1".into(),
            public_ip: IpAddr::V4(Ipv4Addr::new(172, 30, 0, 11)),
            backend: Backend::HostGw,
            epoch: 5,
            backend_data: BackendData::new(),
        };
        assert_eq!(
            r.to_json(),
            r#"{"schema":1,"node":"n1","node_id":"id-1","public_ip":"172.30.0.11","backend":"host-gw","epoch":5}"#
        );
    }

    #[test]
    fn a_malformed_schema1_quic_endpoint_still_invalidates_the_record() {
        let bad = br#"{"schema":1,"node":"n2","node_id":"id-2","public_ip":"172.30.0.12","backend":"quic","quic_endpoint":"nowhere"}"#;
        let e = SubnetRecord::from_json("k", bad).expect_err("bad endpoint").to_string();
        assert!(e.starts_with("k: invalid subnet record JSON"), "{e}");
    }

    #[test]
    fn subnet_record_rejections() {
        let bad: &[(&[u8], &str)] = &[
            (b"not json", "k: invalid subnet record JSON"),
            (
                br#"{"schema":1,"node":"N!","node_id":"a","public_ip":"192.0.2.1","backend":"host-gw"}"#,
                "k: node: invalid node name",
            ),
            (
                br#"{"schema":1,"node":"n","node_id":"","public_ip":"192.0.2.1","backend":"host-gw"}"#,
                "k: node_id: expected 1 to 128",
            ),
            (
                br#"{"schema":1,"node":"n","node_id":"a","public_ip":"0.0.0.0","backend":"host-gw"}"#,
                "k: public_ip: expected a unicast",
            ),
            (
                br#"{"schema":0,"node":"n","node_id":"a","public_ip":"192.0.2.1","backend":"host-gw"}"#,
                "k: schema: expected a version",
            ),
            (
                br#"{"schema":1,"node":"n","public_ip":"192.0.2.1","backend":"host-gw"}"#,
                "k: invalid subnet record JSON: missing field `node_id`",
            ),
        ];
        for (bytes, want) in bad {
            let e = SubnetRecord::from_json("k", bytes).expect_err("bad record").to_string();
            assert!(e.starts_with(want), "{e} should start with {want}");
        }
        let big = vec![b' '; MAX_RECORD_BYTES + 1];
        assert_eq!(
            SubnetRecord::from_json("k", &big).expect_err("big").to_string(),
            "k: value of 4097 bytes exceeds the 4096-byte limit"
        );
    }

    #[test]
    fn subnet_keys_checked_against_network() {
        let n = net();
        assert_eq!(check_subnet_key(&n, "k", "10.244.3.0-24").map(|s| s.to_string()), Ok("10.244.3.0/24".into()));
        assert!(check_subnet_key(&n, "k", "10.245.3.0-24")
            .expect_err("outside")
            .to_string()
            .contains("outside the cluster CIDR"));
        assert!(check_subnet_key(&n, "k", "10.244.3.0-25").expect_err("len").to_string().contains("is not a /24"));
        assert!(check_subnet_key(&n, "k", "10.244.3.1-24").is_err());
        assert!(check_subnet_key(&n, "k", "junk").is_err());
    }

    #[test]
    fn an_ipv6_cluster_cidr_is_refused_until_ipv6_is_switched_on() {
        let e = NetworkConfig::new("--cidr", "fd00:10:244::/56", 64, Backend::HostGw).expect_err("ipv6");
        assert_eq!(e.to_string(), "--cidr: cidr: expected an IPv4 CIDR like 10.244.0.0/16, found \"fd00:10:244::/56\"");
        let k = "/weft/v1/default/config";
        let e = NetworkConfig::from_json(
            k,
            br#"{"schema":1,"cidr":"fd00:10:244::/56","subnet_len":64,"backend":"host-gw"}"#,
        )
        .expect_err("ipv6");
        assert_eq!(
            e.to_string(),
            "/weft/v1/default/config: cidr: expected an IPv4 CIDR like 10.244.0.0/16, found \"fd00:10:244::/56\""
        );
    }

    #[test]
    fn an_ipv6_subnet_under_subnets_is_refused() {
        let e = check_subnet_key(&net(), "/weft/v1/default/subnets/fd00:10:244:1::-64", "fd00:10:244:1::-64")
            .expect_err("ipv6");
        assert_eq!(
            e.to_string(),
            "/weft/v1/default/subnets/fd00:10:244:1::-64: expected an IPv4 subnet key like 10.244.1.0-24, found the IPv6 subnet fd00:10:244:1::/64"
        );
    }

    #[test]
    fn an_ipv6_public_ip_in_a_record_is_refused() {
        let v6 =
            br#"{"schema":1,"node":"n2","node_id":"id-2","public_ip":"2001:db8::12","backend":"host-gw","epoch":1}"#;
        let e = SubnetRecord::from_json("k", v6).expect_err("ipv6");
        assert_eq!(e.to_string(), "k: public_ip: expected an IPv4 address like 192.0.2.10, found 2001:db8::12");
    }

    #[test]
    fn the_pool_check_knows_both_families() {
        let v6: IpNet = "fd00:10:244::/56".parse().expect("literal");
        assert_eq!(check_pool("x", ("cidr6", "subnet_len6"), Family::V6, v6, 64), Ok(()));
        let e = check_pool("x", ("cidr6", "subnet_len6"), Family::V6, v6, 127).expect_err("too long");
        assert_eq!(
            e.to_string(),
            "x: subnet_len6: expected a prefix length from 57 to 126 (longer than the cluster's /56), found 127"
        );
        let v4: IpNet = "10.244.0.0/16".parse().expect("literal");
        let e = check_pool("x", ("cidr6", "subnet_len6"), Family::V6, v4, 24).expect_err("family");
        assert_eq!(e.to_string(), "x: cidr6: expected an IPv6 CIDR like fd00:10:244::/56, found \"10.244.0.0/16\"");
    }
}
