//! The controller's Prometheus metrics (`/metrics`, OpenMetrics text via prometheus-client).
//! Unlike the agent, which builds a registry per scrape from a status snapshot, the controller
//! keeps one registry for its life: its counters (evictions, held scans, leader changes) are
//! events, and the join service registers its own counters in the same registry
//! ([`Metrics::registry`]).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label set of the per-family series (`family="ipv4"`).
pub type Labels = Vec<(String, String)>;

/// Every series the daemon sets; clones share the values.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    pub leader: Gauge,
    pub nodes: Gauge,
    pub nodes_alive: Gauge,
    pub subnets_free: Family<Labels, Gauge>,
    pub evictions: Counter,
    pub eviction_held: Gauge,
    pub eviction_held_scans: Counter,
    pub leader_changes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut reg = Registry::with_prefix("weft_controller");
        let m = Self {
            registry: Arc::new(Mutex::new(Registry::default())),
            leader: Gauge::default(),
            nodes: Gauge::default(),
            nodes_alive: Gauge::default(),
            subnets_free: Family::default(),
            evictions: Counter::default(),
            eviction_held: Gauge::default(),
            eviction_held_scans: Counter::default(),
            leader_changes: Counter::default(),
        };
        reg.register("leader", "1 while this controller leads the election, else 0", m.leader.clone());
        reg.register("nodes", "Nodes known: holding a subnet record or a heartbeat", m.nodes.clone());
        reg.register("nodes_alive", "Nodes whose heartbeat key is present", m.nodes_alive.clone());
        reg.register("subnets_free", "Subnets of the pool no record holds, by family", m.subnets_free.clone());
        reg.register("evictions", "Dead nodes this controller evicted", m.evictions.clone());
        reg.register(
            "eviction_held",
            "1 while the mass-death guard holds evictions (more than max_dead_share of the nodes look dead)",
            m.eviction_held.clone(),
        );
        reg.register(
            "eviction_held_scans",
            "Leader scans in which the mass-death guard held",
            m.eviction_held_scans.clone(),
        );
        reg.register("leader_changes", "Times this controller became leader", m.leader_changes.clone());
        Self { registry: Arc::new(Mutex::new(reg)), ..m }
    }

    /// The registry, for other parts of the daemon (the join service) to register their own
    /// series under the `weft_controller_` prefix.
    pub fn registry(&self) -> Arc<Mutex<Registry>> {
        self.registry.clone()
    }

    /// Sets the free subnets of one family (saturating: an IPv6 pool can hold 2^64).
    pub fn set_free(&self, family: &str, free: u64) {
        let labels = vec![("family".to_string(), family.to_string())];
        self.subnets_free.get_or_create(&labels).set(i64::try_from(free).unwrap_or(i64::MAX));
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match self.registry.lock() {
            Ok(reg) => {
                if let Err(e) = encode(&mut out, &reg) {
                    tracing::warn!(error = %e, "encoding metrics failed");
                }
            }
            Err(_) => tracing::warn!("metrics registry lock poisoned"),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exposed() {
        let m = Metrics::new();
        m.leader.set(1);
        m.nodes.set(3);
        m.nodes_alive.set(2);
        m.set_free("ipv4", 253);
        m.evictions.inc();
        m.eviction_held.set(0);
        m.eviction_held_scans.inc_by(2);
        m.leader_changes.inc();
        let t = m.render();
        for line in [
            "weft_controller_leader 1",
            "weft_controller_nodes 3",
            "weft_controller_nodes_alive 2",
            "weft_controller_subnets_free{family=\"ipv4\"} 253",
            "weft_controller_evictions_total 1",
            "weft_controller_eviction_held 0",
            "weft_controller_eviction_held_scans_total 2",
            "weft_controller_leader_changes_total 1",
            "# TYPE weft_controller_evictions counter",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing:\n{t}");
        }
        assert!(t.ends_with("# EOF\n"));
        // Another part registers its own series in the same registry.
        let c: Counter = Counter::default();
        m.registry().lock().expect("lock").register("join_issued", "test", c.clone());
        c.inc();
        assert!(m.render().contains("weft_controller_join_issued_total 1"));
    }
}
