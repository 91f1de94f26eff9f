//! Records stored in etcd. They are written by other nodes and by operators, so every read is
//! validated: unknown fields are tolerated (a newer agent may add some), a newer schema version
//! is accepted as long as the fields this version needs are there, anything malformed is an
//! error that names the key.

use crate::dns::DnsSettings;
use crate::error::ConfigError;
use crate::subnet::{self, parse_cidr_of, CidrError, Family, PerFamily};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Schema version this build writes for records, heartbeats and IPv4-only network configs.
pub const SCHEMA_VERSION: u32 = 1;
/// Schema of a network config with an IPv6 pool (`cidr6`): the newest network config schema
/// this build knows. Older agents read it as IPv4-only, or refuse it when it has no `cidr`.
pub const NETWORK_SCHEMA_V6: u32 = 2;
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
    /// A kernel VXLAN device per family: pod packets in UDP to the peer's underlay address.
    Vxlan,
    /// A kernel WireGuard device: pod packets encrypted in UDP to the peer's underlay address.
    #[serde(rename = "wireguard")]
    WireGuard,
    /// Per peer and family: host-gw's plain route when the peer's underlay address is on-link,
    /// else the network's `encap` backend (vxlan, quic or wireguard).
    Auto,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::HostGw => "host-gw",
            Backend::Quic => "quic",
            Backend::Vxlan => "vxlan",
            Backend::WireGuard => "wireguard",
            Backend::Auto => "auto",
        })
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host-gw" => Ok(Backend::HostGw),
            "quic" => Ok(Backend::Quic),
            "vxlan" => Ok(Backend::Vxlan),
            "wireguard" => Ok(Backend::WireGuard),
            "auto" => Ok(Backend::Auto),
            other => Err(format!("expected one of host-gw, quic, vxlan, wireguard, auto, found {other:?}")),
        }
    }
}

/// The family of the fields that predate dual-stack: the cluster CIDR `cidr`, the subnets under
/// `subnets/` and the underlay address `public_ip` are IPv4. IPv6 has fields of its own
/// (`cidr6`, `subnets6/`, `public_ip6`) instead of changing what these hold.
pub const PRIMARY_FAMILY: Family = Family::V4;

/// The network config's field names of each family's pool: (cluster CIDR, subnet length).
pub fn pool_fields(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::V4 => ("cidr", "subnet_len"),
        Family::V6 => ("cidr6", "subnet_len6"),
    }
}

/// One address pool: a cluster CIDR carved into node subnets of `subnet_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub cidr: IpNet,
    pub subnet_len: u8,
}

/// `/weft/v1/<network>/config`: written by `weftctl network init`. An IPv4 pool (`cidr`,
/// `subnet_len`), an IPv6 pool (`cidr6`, `subnet_len6`) or both. An IPv4-only config is
/// written exactly as schema 1 had it; one with `cidr6` is schema 2, which schema-1 agents
/// serve as IPv4-only (or refuse, missing `cidr`, when it is IPv6-only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "NetworkWire", into = "NetworkWire")]
pub struct NetworkConfig {
    pub schema: u32,
    /// The pool of each family the network serves.
    pools: PerFamily<Pool>,
    pub backend: Backend,
    /// The VXLAN settings (stored only when vxlan is used; the defaults otherwise).
    pub vxlan: VxlanOptions,
    /// The `auto` backend's encapsulation for peers that are not on-link: vxlan (the default)
    /// or quic (stored only for `auto`).
    pub encap: Backend,
    /// The pods' resolver settings (stored only when set; older agents ignore the field).
    pub dns: DnsSettings,
}

/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The VXLAN network identifier and UDP port every node of a `vxlan` network uses. The
/// defaults are flannel's (VNI 1, port 8472, the Linux kernel's own default), so a weft node
/// and a flannel node are not told apart on the wire by these two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanOptions {
    pub vni: u32,
    pub port: u16,
}

impl Default for VxlanOptions {
    fn default() -> Self {
        Self { vni: 1, port: 8472 }
    }
}

impl VxlanOptions {
    /// Checks both values; errors name the field (`vni`, `vxlan_port`).
    pub fn check(&self, source: &str) -> Result<(), ConfigError> {
        if !(1..=MAX_VNI).contains(&self.vni) {
            return Err(ConfigError::new(source, "vni", format!("expected 1 to {MAX_VNI}, found {}", self.vni)));
        }
        if self.port == 0 {
            return Err(ConfigError::new(source, "vxlan_port", "expected a UDP port from 1 to 65535, found 0"));
        }
        Ok(())
    }
}

/// The network config as stored: each pool's fields present only when it exists.
#[derive(Serialize, Deserialize)]
struct NetworkWire {
    schema: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cidr: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subnet_len: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cidr6: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subnet_len6: Option<u8>,
    backend: Backend,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vni: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vxlan_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encap: Option<Backend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns: Option<DnsSettings>,
}

impl TryFrom<NetworkWire> for NetworkConfig {
    type Error = ConfigError;
    fn try_from(w: NetworkWire) -> Result<Self, ConfigError> {
        NetworkConfig::from_wire("network config", w)
    }
}

impl From<NetworkConfig> for NetworkWire {
    fn from(c: NetworkConfig) -> Self {
        let (v4, v6) = c.pools.as_options();
        NetworkWire {
            schema: c.schema,
            cidr: v4.map(|p| p.cidr),
            subnet_len: v4.map(|p| p.subnet_len),
            cidr6: v6.map(|p| p.cidr),
            subnet_len6: v6.map(|p| p.subnet_len),
            backend: c.backend,
            vni: c.uses(Backend::Vxlan).then_some(c.vxlan.vni),
            vxlan_port: c.uses(Backend::Vxlan).then_some(c.vxlan.port),
            encap: (c.backend == Backend::Auto).then_some(c.encap),
            dns: (!c.dns.is_empty()).then_some(c.dns),
        }
    }
}

impl NetworkConfig {
    /// Builds a validated IPv4-only config; `source` names the origin in errors (a flag or an
    /// etcd key).
    pub fn new(source: &str, cidr: &str, subnet_len: u8, backend: Backend) -> Result<Self, ConfigError> {
        Self::with_pools(source, Some((cidr, subnet_len)), None, backend)
    }

    /// Builds a validated config of an IPv4 pool, an IPv6 pool or both, each given as (CIDR,
    /// subnet length). Errors name the field (`cidr`, `subnet_len`, `cidr6`, `subnet_len6`).
    pub fn with_pools(
        source: &str,
        v4: Option<(&str, u8)>,
        v6: Option<(&str, u8)>,
        backend: Backend,
    ) -> Result<Self, ConfigError> {
        let parse = |family: Family, given: Option<(&str, u8)>| -> Result<Option<Pool>, ConfigError> {
            let Some((cidr, subnet_len)) = given else { return Ok(None) };
            let cidr = parse_cidr_of(family, cidr)
                .map_err(|e| ConfigError::new(source, pool_fields(family).0, e.to_string()))?;
            Ok(Some(Pool { cidr, subnet_len }))
        };
        let (v4, v6) = (parse(Family::V4, v4)?, parse(Family::V6, v6)?);
        let schema = if v6.is_some() { NETWORK_SCHEMA_V6 } else { SCHEMA_VERSION };
        let pools = PerFamily::from_options(v4, v6)
            .ok_or_else(|| ConfigError::new(source, "cidr", "expected an IPv4 pool, an IPv6 pool (cidr6) or both"))?;
        let c = Self {
            schema,
            pools,
            backend,
            vxlan: VxlanOptions::default(),
            encap: Backend::Vxlan,
            dns: DnsSettings::default(),
        };
        c.validate(source)?;
        Ok(c)
    }

    /// The same config with `auto`'s encapsulation (vxlan, quic or wireguard; an error names `encap`).
    pub fn with_encap(mut self, source: &str, encap: Backend) -> Result<Self, ConfigError> {
        self.encap = encap;
        self.validate(source)?;
        Ok(self)
    }

    /// Whether the network runs `backend`'s driver on its nodes: as its backend, or as `auto`'s
    /// encapsulation (auto always runs host-gw too).
    pub fn uses(&self, backend: Backend) -> bool {
        self.backend == backend
            || (self.backend == Backend::Auto && (backend == self.encap || backend == Backend::HostGw))
    }

    /// The same config with these VXLAN settings (checked; errors name `vni` or `vxlan_port`).
    pub fn with_vxlan(mut self, source: &str, vxlan: VxlanOptions) -> Result<Self, ConfigError> {
        vxlan.check(source)?;
        self.vxlan = vxlan;
        Ok(self)
    }

    /// The same config with these resolver settings (checked; errors name `dns.<list>`).
    pub fn with_dns(mut self, source: &str, dns: DnsSettings) -> Result<Self, ConfigError> {
        dns.check(source, "dns")?;
        self.dns = dns;
        Ok(self)
    }

    /// The same config apart from the resolver settings: whether a change needs more than new
    /// resolv.conf files.
    pub fn same_but_dns(&self, other: &NetworkConfig) -> bool {
        let strip = |c: &NetworkConfig| NetworkConfig { dns: DnsSettings::default(), ..c.clone() };
        strip(self) == strip(other)
    }

    /// The pool of `family`, if the network serves it.
    pub fn pool(&self, family: Family) -> Option<Pool> {
        self.pools.get(family).copied()
    }

    /// The pool of every family the network serves (IPv4 first).
    pub fn pools(&self) -> &PerFamily<Pool> {
        &self.pools
    }

    fn validate(&self, source: &str) -> Result<(), ConfigError> {
        for (family, p) in self.pools.iter() {
            check_pool(source, pool_fields(family), family, p.cidr, p.subnet_len)?;
        }
        self.vxlan.check(source)?;
        self.dns.check(source, "dns")?;
        if !matches!(self.encap, Backend::Vxlan | Backend::Quic | Backend::WireGuard) {
            return Err(ConfigError::new(
                source,
                "encap",
                format!("expected vxlan, quic or wireguard, found {}", self.encap),
            ));
        }
        Ok(())
    }

    /// The stored fields as a config: each pool needs both of its fields; a config with no
    /// pool is refused, saying so when its schema is newer than this build knows.
    fn from_wire(source: &str, w: NetworkWire) -> Result<Self, ConfigError> {
        let pool = |family: Family, cidr: Option<IpNet>, len: Option<u8>| -> Result<Option<Pool>, ConfigError> {
            let (cidr_field, len_field) = pool_fields(family);
            match (cidr, len) {
                (Some(cidr), Some(subnet_len)) => Ok(Some(Pool { cidr, subnet_len })),
                (Some(_), None) => {
                    Err(ConfigError::new(source, len_field, format!("missing (required with {cidr_field})")))
                }
                (None, Some(_)) => {
                    Err(ConfigError::new(source, cidr_field, format!("missing (required with {len_field})")))
                }
                (None, None) => Ok(None),
            }
        };
        let (v4, v6) = (pool(Family::V4, w.cidr, w.subnet_len)?, pool(Family::V6, w.cidr6, w.subnet_len6)?);
        let Some(pools) = PerFamily::from_options(v4, v6) else {
            let message = if w.schema > NETWORK_SCHEMA_V6 {
                format!(
                    "schema {} is newer than this build knows ({NETWORK_SCHEMA_V6}) and has no pool it can serve \
                     (cidr or cidr6); upgrade weft",
                    w.schema
                )
            } else {
                "missing: expected cidr (IPv4), cidr6 (IPv6) or both".to_string()
            };
            return Err(ConfigError::new(source, "cidr", message));
        };
        let defaults = VxlanOptions::default();
        let vxlan = VxlanOptions { vni: w.vni.unwrap_or(defaults.vni), port: w.vxlan_port.unwrap_or(defaults.port) };
        let c = Self {
            schema: w.schema,
            pools,
            backend: w.backend,
            vxlan,
            encap: w.encap.unwrap_or(Backend::Vxlan),
            // Older agents ignore `dns`; this one drops what it cannot use rather than refuse
            // the whole network for a hand-edited resolver entry.
            dns: w.dns.map(|d| d.sanitized()).unwrap_or_default(),
        };
        c.validate(source)?;
        Ok(c)
    }

    /// Parses and validates the etcd value stored at `key`.
    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Self, ConfigError> {
        check_size(key, bytes)?;
        let w: NetworkWire = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError::new(key, "", format!("invalid network config JSON: {e}")))?;
        Self::from_wire(key, w)
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
    /// The IPv6 underlay address, which peers route the node's IPv6 subnet via; present when
    /// the network has an IPv6 pool (absent from the JSON otherwise).
    pub public_ip6: Option<IpAddr>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_ip6: Option<IpAddr>,
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
            public_ip6: w.public_ip6,
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
            public_ip6: r.public_ip6,
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
        if let Some(ip6) = r.public_ip6 {
            if Family::of(ip6) != Family::V6 {
                return Err(ConfigError::new(
                    key,
                    "public_ip6",
                    format!("expected an IPv6 address like {}, found {ip6}", Family::V6.example_addr()),
                ));
            }
            if !subnet::is_routable_unicast(ip6) {
                return Err(ConfigError::new(
                    key,
                    "public_ip6",
                    format!("expected a unicast address that is not link-local, found {ip6}"),
                ));
            }
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
    /// The IPv4 subnet (absent when the network has no IPv4 pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<IpNet>,
    /// The IPv6 subnet, when the network has an IPv6 pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<IpNet>,
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

/// A subnet key's last segment under `subnets/` checked against the network's IPv4 pool (see
/// [`check_subnet_key_of`]).
pub fn check_subnet_key(net: &NetworkConfig, key: &str, last_segment: &str) -> Result<IpNet, ConfigError> {
    check_subnet_key_of(net, PRIMARY_FAMILY, key, last_segment)
}

/// A subnet key's last segment under the prefix of `family` (`subnets/`, `subnets6/`) checked
/// against the network: a pool of that family exists, and the subnet is of the family, inside
/// its CIDR, of its length, aligned. Errors say what was wrong, for the skip log.
pub fn check_subnet_key_of(
    net: &NetworkConfig,
    family: Family,
    key: &str,
    last_segment: &str,
) -> Result<IpNet, ConfigError> {
    let s = subnet::from_key_form(last_segment)
        .ok_or_else(|| ConfigError::new(key, "", format!("expected a subnet key like {}", family.example_key())))?;
    let Some(pool) = net.pool(family) else {
        let field = pool_fields(family).0;
        return Err(ConfigError::new(key, "", format!("the network has no {family} pool ({field})")));
    };
    let got = Family::of_net(s);
    if got != family {
        return Err(ConfigError::new(
            key,
            "",
            format!("expected an {family} subnet key like {}, found the {got} subnet {s}", family.example_key()),
        ));
    }
    if s.prefix_len() != pool.subnet_len {
        return Err(ConfigError::new(
            key,
            "",
            format!("subnet {s} is not a /{} as the network config says", pool.subnet_len),
        ));
    }
    if !subnet::contains(pool.cidr, s) {
        return Err(ConfigError::new(key, "", format!("subnet {s} is outside the cluster CIDR {}", pool.cidr)));
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
    fn a_vxlan_network_stores_its_vni_and_port_and_others_do_not() {
        let k = "/weft/v1/default/config";
        let c = NetworkConfig::new("x", "10.244.0.0/16", 24, Backend::Vxlan).expect("valid");
        assert_eq!(c.vxlan, VxlanOptions { vni: 1, port: 8472 }, "flannel's defaults");
        let c = c.with_vxlan("--vni", VxlanOptions { vni: 42, port: 4789 }).expect("valid");
        let j = c.to_json();
        assert_eq!(
            j,
            r#"{"schema":1,"cidr":"10.244.0.0/16","subnet_len":24,"backend":"vxlan","vni":42,"vxlan_port":4789}"#
        );
        assert_eq!(NetworkConfig::from_json(k, j.as_bytes()).expect("parse"), c);
        let without = br#"{"schema":1,"cidr":"10.244.0.0/16","subnet_len":24,"backend":"vxlan"}"#;
        assert_eq!(NetworkConfig::from_json(k, without).expect("defaults").vxlan, VxlanOptions::default());
        let e = c.clone().with_vxlan("--vni", VxlanOptions { vni: 1 << 24, port: 8472 }).expect_err("24 bits");
        assert_eq!(e.to_string(), "--vni: vni: expected 1 to 16777215, found 16777216");
        let e = c.with_vxlan("--vxlan-port", VxlanOptions { vni: 1, port: 0 }).expect_err("port");
        assert_eq!(e.to_string(), "--vxlan-port: vxlan_port: expected a UDP port from 1 to 65535, found 0");
        let stored = br#"{"schema":1,"cidr":"10.244.0.0/16","subnet_len":24,"backend":"vxlan","vni":0}"#;
        let e = NetworkConfig::from_json(k, stored).expect_err("stored vni 0");
        assert_eq!(e.to_string(), "/weft/v1/default/config: vni: expected 1 to 16777215, found 0");
    }

    #[test]
    fn an_auto_network_stores_its_encapsulation() {
        let k = "/weft/v1/default/config";
        let c = NetworkConfig::new("x", "10.244.0.0/16", 24, Backend::Auto).expect("valid");
        assert_eq!(c.encap, Backend::Vxlan, "vxlan by default");
        assert_eq!(
            c.to_json(),
            r#"{"schema":1,"cidr":"10.244.0.0/16","subnet_len":24,"backend":"auto","vni":1,"vxlan_port":8472,"encap":"vxlan"}"#
        );
        assert!(c.uses(Backend::HostGw) && c.uses(Backend::Vxlan) && !c.uses(Backend::Quic));
        let q = c.clone().with_encap("--encap", Backend::Quic).expect("valid");
        assert_eq!(
            q.to_json(),
            r#"{"schema":1,"cidr":"10.244.0.0/16","subnet_len":24,"backend":"auto","encap":"quic"}"#
        );
        assert_eq!(NetworkConfig::from_json(k, q.to_json().as_bytes()).expect("parse"), q);
        let wg = c.clone().with_encap("--encap", Backend::WireGuard).expect("valid");
        assert_eq!(
            wg.to_json(),
            r#"{"schema":1,"cidr":"10.244.0.0/16","subnet_len":24,"backend":"auto","encap":"wireguard"}"#
        );
        assert_eq!(NetworkConfig::from_json(k, wg.to_json().as_bytes()).expect("parse"), wg);
        assert!(wg.uses(Backend::WireGuard) && !wg.uses(Backend::Vxlan));
        let e = c.with_encap("--encap", Backend::HostGw).expect_err("host-gw cannot encapsulate");
        assert_eq!(e.to_string(), "--encap: encap: expected vxlan, quic or wireguard, found host-gw");
    }

    #[test]
    fn the_wireguard_backend_reads_and_writes_as_wireguard() {
        assert_eq!("wireguard".parse::<Backend>(), Ok(Backend::WireGuard));
        assert_eq!(Backend::WireGuard.to_string(), "wireguard");
        assert_eq!(serde_json::to_string(&Backend::WireGuard).expect("json"), r#""wireguard""#);
        let c = NetworkConfig::new("x", "10.244.0.0/16", 24, Backend::WireGuard).expect("valid");
        assert_eq!(c.to_json(), r#"{"schema":1,"cidr":"10.244.0.0/16","subnet_len":24,"backend":"wireguard"}"#);
        assert_eq!(NetworkConfig::from_json("/k", c.to_json().as_bytes()).expect("parse"), c);
        assert_eq!(
            "wire-guard".parse::<Backend>(),
            Err("expected one of host-gw, quic, vxlan, wireguard, auto, found \"wire-guard\"".to_string())
        );
    }

    #[test]
    fn a_network_stores_its_resolvers_only_when_set() {
        let k = "/weft/v1/default/config";
        let dns = DnsSettings {
            servers: vec!["203.0.113.2".parse().expect("literal")],
            search: vec!["lab.weft".into()],
            options: vec!["ndots:2".into()],
        };
        let c = net().with_dns("--dns-server", dns.clone()).expect("valid");
        let j = c.to_json();
        assert_eq!(
            j,
            r#"{"schema":1,"cidr":"10.244.0.0/16","subnet_len":24,"backend":"host-gw","dns":{"servers":["203.0.113.2"],"search":["lab.weft"],"options":["ndots:2"]}}"#
        );
        assert_eq!(NetworkConfig::from_json(k, j.as_bytes()).expect("parse").dns, dns);
        assert!(c.same_but_dns(&net()) && c != net());
        assert!(!c.same_but_dns(&NetworkConfig::new("x", "10.244.0.0/16", 24, Backend::Vxlan).expect("valid")));
        let stored = br#"{"schema":1,"cidr":"10.244.0.0/16","subnet_len":24,"backend":"host-gw","dns":{"search":["a b","ok.example"]}}"#;
        let read = NetworkConfig::from_json(k, stored).expect("a bad resolver entry does not cost the network");
        assert_eq!(read.dns.search, ["ok.example"], "the bad entry is dropped");
        let e = net().with_dns("--dns-search", DnsSettings { search: vec!["a b".into()], ..dns }).expect_err("refused");
        assert_eq!(e.field, "dns.search[0]");
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
        let e = NetworkConfig::from_json(k, br#"{"schema":1,"cidr":"10.1.0.0/16","subnet_len":24,"backend":"ipip"}"#)
            .expect_err("backend");
        assert!(
            e.to_string().starts_with("/weft/v1/default/config: invalid network config JSON: unknown variant `ipip`"),
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
            public_ip6: None,
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
            public_ip6: None,
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
            public_ip6: None,
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

    const DUAL: &str = r#"{"schema":2,"cidr":"10.244.0.0/16","subnet_len":24,"cidr6":"fd00:10:244::/56","subnet_len6":64,"backend":"host-gw"}"#;
    const V6_ONLY: &str = r#"{"schema":2,"cidr6":"fd00:10:244::/56","subnet_len6":64,"backend":"quic"}"#;

    fn pool(cidr: &str, subnet_len: u8) -> Pool {
        Pool { cidr: cidr.parse().expect("literal"), subnet_len }
    }

    #[test]
    fn a_config_with_an_ipv6_pool_is_schema_2_and_reads_back() {
        let k = "/weft/v1/default/config";
        let dual = NetworkConfig::with_pools(
            "t",
            Some(("10.244.0.0/16", 24)),
            Some(("fd00:10:244::/56", 64)),
            Backend::HostGw,
        )
        .expect("dual");
        assert_eq!(dual.to_json(), DUAL);
        assert_eq!(NetworkConfig::from_json(k, DUAL.as_bytes()), Ok(dual.clone()));
        assert_eq!(dual.pool(Family::V4), Some(pool("10.244.0.0/16", 24)));
        assert_eq!(dual.pool(Family::V6), Some(pool("fd00:10:244::/56", 64)));
        assert_eq!(dual.pools().families().collect::<Vec<_>>(), [Family::V4, Family::V6]);
        let v6 = NetworkConfig::with_pools("t", None, Some(("fd00:10:244::/56", 64)), Backend::Quic).expect("v6");
        assert_eq!(v6.to_json(), V6_ONLY);
        assert_eq!(NetworkConfig::from_json(k, V6_ONLY.as_bytes()), Ok(v6.clone()));
        assert_eq!((v6.pool(Family::V4), v6.pools().first_family()), (None, Family::V6));
        // The IPv4-only config is what it always was, through both constructors and serde.
        let v4 = NetworkConfig::with_pools("t", Some(("10.244.0.0/16", 24)), None, Backend::HostGw).expect("v4");
        assert_eq!(v4, net());
        assert_eq!(v4.schema, 1);
        assert_eq!(serde_json::from_str::<NetworkConfig>(&v4.to_json()).expect("serde"), v4);
        assert_eq!(serde_json::to_string(&v4).expect("serde"), v4.to_json());
    }

    /// The fields a schema-1 agent reads from the network config, with its types.
    #[derive(Deserialize)]
    struct Schema1Network {
        schema: u32,
        cidr: IpNet,
        subnet_len: u8,
        backend: Backend,
    }

    #[test]
    fn a_schema1_agent_serves_a_dual_config_as_ipv4_and_refuses_an_ipv6_only_one() {
        let old: Schema1Network = serde_json::from_str(DUAL).expect("a schema-1 agent parses it");
        assert_eq!((old.schema, old.cidr.to_string(), old.subnet_len), (2, "10.244.0.0/16".into(), 24));
        assert_eq!(old.backend, Backend::HostGw);
        let e = serde_json::from_str::<Schema1Network>(V6_ONLY).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("missing field `cidr`"), "{e}");
    }

    #[test]
    fn a_config_this_build_cannot_serve_is_refused_naming_key_and_field() {
        let k = "/weft/v1/default/config";
        let refused: &[(&str, &str)] = &[
            (
                r#"{"schema":3,"pools":[{"cidr":"10.244.0.0/16"}],"backend":"host-gw"}"#,
                "/weft/v1/default/config: cidr: schema 3 is newer than this build knows (2) and has no pool it can serve (cidr or cidr6); upgrade weft",
            ),
            (
                r#"{"schema":2,"backend":"host-gw"}"#,
                "/weft/v1/default/config: cidr: missing: expected cidr (IPv4), cidr6 (IPv6) or both",
            ),
            (
                r#"{"schema":2,"cidr6":"fd00:10:244::/56","backend":"host-gw"}"#,
                "/weft/v1/default/config: subnet_len6: missing (required with cidr6)",
            ),
            (
                r#"{"schema":2,"cidr":"10.244.0.0/16","subnet_len":24,"subnet_len6":64,"backend":"host-gw"}"#,
                "/weft/v1/default/config: cidr6: missing (required with subnet_len6)",
            ),
            (
                r#"{"schema":1,"cidr":"10.244.0.0/16","backend":"host-gw"}"#,
                "/weft/v1/default/config: subnet_len: missing (required with cidr)",
            ),
            (
                r#"{"schema":2,"cidr6":"10.245.0.0/16","subnet_len6":24,"backend":"host-gw"}"#,
                "/weft/v1/default/config: cidr6: expected an IPv6 CIDR like fd00:10:244::/56, found \"10.245.0.0/16\"",
            ),
            (
                r#"{"schema":2,"cidr6":"fd00:10:244::1/56","subnet_len6":64,"backend":"host-gw"}"#,
                "/weft/v1/default/config: cidr6: fd00:10:244::1/56 has host bits set",
            ),
            (
                r#"{"schema":2,"cidr6":"fd00:10:244::/56","subnet_len6":127,"backend":"host-gw"}"#,
                "/weft/v1/default/config: subnet_len6: expected a prefix length from 57 to 126 (longer than the cluster's /56), found 127",
            ),
        ];
        for (json, want) in refused {
            let e = NetworkConfig::from_json(k, json.as_bytes()).expect_err(json);
            assert_eq!(e.to_string(), *want);
        }
        // A newer schema is served as long as a pool this build knows is there.
        let newer = br#"{"schema":3,"cidr6":"fd00:10:244::/56","subnet_len6":64,"backend":"host-gw","cidr7":"x"}"#;
        assert_eq!(
            NetworkConfig::from_json(k, newer).map(|c| c.pool(Family::V6)),
            Ok(Some(pool("fd00:10:244::/56", 64)))
        );
    }

    #[test]
    fn pools_given_to_the_constructor_are_checked_against_their_fields() {
        let e =
            NetworkConfig::with_pools("--cidr6", None, Some(("10.244.0.0/16", 24)), Backend::HostGw).expect_err("v4");
        assert_eq!(
            e.to_string(),
            "--cidr6: cidr6: expected an IPv6 CIDR like fd00:10:244::/56, found \"10.244.0.0/16\""
        );
        let e = NetworkConfig::with_pools("x", None, Some(("fd00:10:244::/56", 56)), Backend::HostGw).expect_err("len");
        assert_eq!(
            (e.field.as_str(), e.message.starts_with("expected a prefix length from 57 to 126")),
            ("subnet_len6", true)
        );
        let e = NetworkConfig::with_pools("x", None, None, Backend::HostGw).expect_err("none");
        assert_eq!(e.to_string(), "x: cidr: expected an IPv4 pool, an IPv6 pool (cidr6) or both");
        let e = NetworkConfig::with_pools("x", Some(("10.244.0.0/16", 8)), Some(("fd00::/56", 64)), Backend::HostGw)
            .expect_err("the IPv4 pool is checked too");
        assert_eq!(e.field, "subnet_len");
    }

    #[test]
    fn an_ipv6_underlay_address_is_carried_beside_the_ipv4_one() {
        let r = SubnetRecord {
            schema: 1,
            node: "n1".into(),
            node_id: "id-1".into(),
            public_ip: IpAddr::V4(Ipv4Addr::new(172, 30, 0, 11)),
            public_ip6: Some("fd00:30::11".parse().expect("literal")),
            backend: Backend::HostGw,
            epoch: 5,
            backend_data: BackendData::new(),
        };
        let json = r.to_json();
        assert_eq!(
            json,
            r#"{"schema":1,"node":"n1","node_id":"id-1","public_ip":"172.30.0.11","public_ip6":"fd00:30::11","backend":"host-gw","epoch":5}"#
        );
        assert_eq!(SubnetRecord::from_json("k", json.as_bytes()), Ok(r));
        let old: Schema1Reader = serde_json::from_str(&json).expect("a schema-1 agent parses it");
        assert_eq!(old.public_ip, Ipv4Addr::new(172, 30, 0, 11));
        let bad: &[(&[u8], &str)] = &[
            (
                br#"{"schema":1,"node":"n","node_id":"a","public_ip":"192.0.2.1","public_ip6":"192.0.2.2","backend":"host-gw"}"#,
                "k: public_ip6: expected an IPv6 address like 2001:db8::10, found 192.0.2.2",
            ),
            (
                br#"{"schema":1,"node":"n","node_id":"a","public_ip":"192.0.2.1","public_ip6":"fe80::1","backend":"host-gw"}"#,
                "k: public_ip6: expected a unicast address that is not link-local, found fe80::1",
            ),
            (
                br#"{"schema":1,"node":"n","node_id":"a","public_ip":"192.0.2.1","public_ip6":"ff02::1","backend":"host-gw"}"#,
                "k: public_ip6: expected a unicast address that is not link-local, found ff02::1",
            ),
        ];
        for (bytes, want) in bad {
            assert_eq!(SubnetRecord::from_json("k", bytes).expect_err("bad").to_string(), *want);
        }
    }

    #[test]
    fn a_heartbeat_names_its_ipv6_subnet_beside_the_ipv4_one() {
        let mut hb = Heartbeat {
            schema: 1,
            node_id: "id1".into(),
            subnet: Some("10.244.1.0/24".parse().expect("literal")),
            subnet6: None,
            status: "ready".into(),
            updated: 9,
            epoch: 3,
        };
        assert_eq!(
            hb.to_json(),
            r#"{"schema":1,"node_id":"id1","subnet":"10.244.1.0/24","status":"ready","updated":9,"epoch":3}"#
        );
        hb.subnet6 = Some("fd00:10:244:1::/64".parse().expect("literal"));
        assert_eq!(Heartbeat::from_json("k", hb.to_json().as_bytes()), Ok(hb));
    }

    #[test]
    fn subnet_keys_of_each_family_are_checked_against_its_pool() {
        let dual = NetworkConfig::from_json("c", DUAL.as_bytes()).expect("dual");
        let ok = check_subnet_key_of(&dual, Family::V6, "k", "fd00:10:244:ff::-64");
        assert_eq!(ok.map(|s| s.to_string()), Ok("fd00:10:244:ff::/64".into()));
        let checks: &[(Family, &str, &str)] = &[
            (Family::V6, "fd00:10:245::-64", "k: subnet fd00:10:245::/64 is outside the cluster CIDR fd00:10:244::/56"),
            (Family::V6, "fd00:10:244:1::-80", "k: subnet fd00:10:244:1::/80 is not a /64 as the network config says"),
            (
                Family::V6,
                "10.244.1.0-24",
                "k: expected an IPv6 subnet key like fd00:10:244:1::-64, found the IPv4 subnet 10.244.1.0/24",
            ),
            (Family::V6, "junk", "k: expected a subnet key like fd00:10:244:1::-64"),
        ];
        for (family, seg, want) in checks {
            assert_eq!(check_subnet_key_of(&dual, *family, "k", seg).expect_err(seg).to_string(), *want);
        }
        let e = check_subnet_key_of(&net(), Family::V6, "k", "fd00:10:244:1::-64").expect_err("no pool");
        assert_eq!(e.to_string(), "k: the network has no IPv6 pool (cidr6)");
        let v6 = NetworkConfig::from_json("c", V6_ONLY.as_bytes()).expect("v6");
        let e = check_subnet_key(&v6, "k", "10.244.1.0-24").expect_err("no pool");
        assert_eq!(e.to_string(), "k: the network has no IPv4 pool (cidr)");
    }
}
