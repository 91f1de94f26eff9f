//! `/api/cluster`: what the cluster page shows, built purely from what etcd holds
//! ([`build`]) and read by every replica, leader or standby ([`read`]). The nodes and the
//! reachability matrices are `weftctl status`'s ([`crate::cluster_status::build`]); the
//! controller adds who leads, the free subnets per family, the recent evictions and the state
//! of the mass-death guard.

use super::evict::EvictionRecord;
use crate::cluster_status::{self, ClusterStatus};
use crate::nodes::{self, Kv};
use serde::Serialize;
use weft_config::subnet;
use weft_config::{Keys, NetworkConfig};
use weft_store::Store;

/// The mass-death guard as the leader last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GuardState {
    /// Evictions are held (more than `max_dead_share` of the nodes look dead).
    pub held: bool,
    /// Nodes holding a subnet record without a heartbeat, and all nodes, at the last scan.
    pub dead: usize,
    pub total: usize,
    /// Unix seconds the current episode started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

/// Free subnets of one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FreeSubnets {
    pub family: &'static str,
    pub pool: String,
    pub subnet_len: u8,
    pub total: u64,
    pub used: u64,
    pub free: u64,
}

/// The whole JSON document of `/api/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterView {
    /// This controller's name.
    pub controller: String,
    /// The leader's name (from its election value), `None` while nobody leads.
    pub leader: Option<String>,
    /// The leader's page URL, as it published it.
    pub leader_page: Option<String>,
    pub is_leader: bool,
    /// Unix seconds of this view.
    pub updated: u64,
    /// The last read failed with this (the view is then older than `updated`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub status: ClusterStatus,
    pub free: Vec<FreeSubnets>,
    /// Newest first.
    pub evictions: Vec<EvictionRecord>,
    /// `None` on a standby: only the leader scans.
    pub guard: Option<GuardState>,
    pub evict_after_secs: u64,
    pub max_dead_share: f64,
}

/// What one read of etcd gave.
#[derive(Debug, Clone, Default)]
pub struct Raw {
    pub config: Option<NetworkConfig>,
    pub subnets: Vec<Kv>,
    pub heartbeats: Vec<Kv>,
    pub probes: Vec<Kv>,
    pub evictions: Vec<Kv>,
    /// The leader's election value.
    pub leader: Option<Vec<u8>>,
}

/// What the daemon knows about itself for the view.
#[derive(Debug, Clone)]
pub struct Local {
    pub controller: String,
    pub network: String,
    pub is_leader: bool,
    pub guard: Option<GuardState>,
    pub evict_after_secs: u64,
    pub max_dead_share: f64,
}

/// The free subnets of every pool of `config`: all the pool holds minus the records under the
/// family's prefix that are subnets of it.
pub fn free_subnets(keys: &Keys, config: Option<&NetworkConfig>, subnets: &[Kv]) -> Vec<FreeSubnets> {
    let Some(config) = config else { return Vec::new() };
    config
        .pools()
        .iter()
        .map(|(family, pool)| {
            let total = subnet::subnet_count(pool.cidr, pool.subnet_len);
            let used = subnets
                .iter()
                .filter_map(|(k, _)| keys.subnet_segment_of(k))
                .filter(|(f, _)| *f == family)
                .filter_map(|(_, seg)| subnet::from_key_form(seg))
                .filter(|s| subnet::index_of(pool.cidr, pool.subnet_len, *s).is_some())
                .count() as u64;
            FreeSubnets {
                family: family.label(),
                pool: pool.cidr.to_string(),
                subnet_len: pool.subnet_len,
                total,
                used,
                free: total.saturating_sub(used),
            }
        })
        .collect()
}

/// The view. `now` is Unix seconds.
pub fn build(local: &Local, raw: &Raw, now: u64) -> ClusterView {
    let keys = Keys::new(&local.network);
    let status =
        cluster_status::build(&local.network, raw.config.clone(), &raw.subnets, &raw.heartbeats, &raw.probes, now);
    let leader_value: Option<serde_json::Value> = raw.leader.as_ref().and_then(|v| serde_json::from_slice(v).ok());
    let field = |f: &str| leader_value.as_ref().and_then(|v| v.get(f)).and_then(|v| v.as_str()).map(str::to_string);
    let mut evictions: Vec<EvictionRecord> =
        raw.evictions.iter().filter_map(|(_, v)| serde_json::from_slice(v).ok()).collect();
    evictions.reverse(); // keys sort by time: newest first
    ClusterView {
        controller: local.controller.clone(),
        leader: field("name"),
        leader_page: field("page"),
        is_leader: local.is_leader,
        updated: now,
        error: None,
        free: free_subnets(&keys, status.config.as_ref(), &raw.subnets),
        status,
        evictions,
        guard: local.guard.clone(),
        evict_after_secs: local.evict_after_secs,
        max_dead_share: local.max_dead_share,
    }
}

/// Reads what the view needs.
pub async fn read(store: &impl Store, network: &str) -> anyhow::Result<Raw> {
    let keys = Keys::new(network);
    let config = store.get(&keys.config()).await?.and_then(|r| NetworkConfig::from_json(&r.key, &r.value).ok());
    let subnets = nodes::list_subnet_records(store, &keys).await?;
    let heartbeats = nodes::list_prefix(store, &keys.nodes_prefix()).await?;
    let probes = nodes::list_prefix(store, &keys.probes_prefix()).await?;
    let evictions = nodes::list_prefix(store, &keys.evictions_prefix()).await?;
    let leader = store.leader(&keys.controller_election()).await?.map(|r| r.value);
    Ok(Raw { config, subnets, heartbeats, probes, evictions, leader })
}

/// Nodes known (a record or a heartbeat) and nodes with a heartbeat, for the metrics.
pub fn node_counts(v: &ClusterView) -> (usize, usize) {
    let named = v.status.nodes.iter().filter(|r| r.node.is_some());
    let alive = v.status.nodes.iter().filter(|r| r.node.is_some() && r.alive).count();
    (named.count(), alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> Kv {
        (k.to_string(), v.as_bytes().to_vec())
    }

    fn rec(node: &str) -> String {
        format!(
            r#"{{"schema":1,"node":"{node}","node_id":"id-{node}","public_ip":"172.30.0.11","public_ip6":"fd00:30::11","backend":"host-gw"}}"#
        )
    }

    fn raw() -> Raw {
        let cfg = NetworkConfig::with_pools(
            "t",
            Some(("10.244.0.0/16", 24)),
            Some(("fd00:10:244::/56", 64)),
            weft_config::Backend::HostGw,
        );
        Raw {
            config: cfg.ok(),
            subnets: vec![
                kv("/weft/v1/default/subnets/10.244.1.0-24", &rec("n1")),
                kv("/weft/v1/default/subnets/10.244.2.0-24", &rec("n2")),
                kv("/weft/v1/default/subnets6/fd00:10:244:1::-64", &rec("n1")),
            ],
            heartbeats: vec![kv(
                "/weft/v1/default/nodes/n1",
                r#"{"schema":1,"node_id":"id-n1","status":"ready","updated":990}"#,
            )],
            probes: vec![kv(
                "/weft/v1/default/probes/n1",
                r#"{"schema":1,"updated":995,"interval_secs":10,"peers":{"n2":{"ok":true,"rtt_us":150}}}"#,
            )],
            evictions: vec![
                kv(
                    "/weft/v1/default/controller/evictions/0000000001000-n7",
                    r#"{"schema":1,"node":"n7","subnet":"10.244.7.0/24","subnet6":null,"at":1,"absent_secs":60,"evidence":"e7","leader":"c1"}"#,
                ),
                kv(
                    "/weft/v1/default/controller/evictions/0000000002000-n8",
                    r#"{"schema":1,"node":"n8","subnet":"10.244.8.0/24","subnet6":null,"at":2,"absent_secs":60,"evidence":"e8","leader":"c2"}"#,
                ),
                kv("/weft/v1/default/controller/evictions/0000000003000-n9", "garbage"),
            ],
            leader: Some(br#"{"name":"c2","page":"http://10.0.0.2:9650/"}"#.to_vec()),
        }
    }

    #[test]
    fn the_json_view() {
        let local = Local {
            controller: "c1".into(),
            network: "default".into(),
            is_leader: false,
            guard: None,
            evict_after_secs: 3600,
            max_dead_share: 0.5,
        };
        let v = build(&local, &raw(), 1000);
        assert_eq!(node_counts(&v), (2, 1));
        let j = serde_json::to_value(&v).expect("json");
        assert_eq!(j["controller"], "c1");
        assert_eq!(j["leader"], "c2");
        assert_eq!(j["leader_page"], "http://10.0.0.2:9650/");
        assert_eq!(j["is_leader"], false);
        assert_eq!(j["network"], "default");
        assert_eq!(j["config"]["cidr"], "10.244.0.0/16");
        assert_eq!(j["nodes"][0]["node"], "n1");
        assert_eq!(j["nodes"][0]["subnet"], "10.244.1.0/24");
        assert_eq!(j["nodes"][0]["subnet6"], "fd00:10:244:1::/64");
        assert_eq!(j["nodes"][0]["alive"], true);
        assert_eq!(j["nodes"][1]["alive"], false);
        assert_eq!(
            j["reachability"][0],
            serde_json::json!({"from":"n1","to":"n2","state":"ok","rtt_us":150,"age_secs":5})
        );
        assert_eq!(j["reachability"][1]["state"], "unknown");
        assert_eq!(
            j["free"],
            serde_json::json!([
                {"family":"ipv4","pool":"10.244.0.0/16","subnet_len":24,"total":256,"used":2,"free":254},
                {"family":"ipv6","pool":"fd00:10:244::/56","subnet_len":64,"total":256,"used":1,"free":255},
            ])
        );
        assert_eq!(j["evictions"].as_array().map(Vec::len), Some(2), "the malformed one is left out");
        assert_eq!(j["evictions"][0]["node"], "n8", "newest first");
        assert_eq!(j["guard"], serde_json::Value::Null);
        assert!(j.get("error").is_none());
    }

    #[test]
    fn no_config_no_pools() {
        let keys = Keys::new("default");
        assert!(free_subnets(&keys, None, &raw().subnets).is_empty());
    }
}
