//! Dead-node eviction, decided purely: [`Evictor::scan`] takes what the leader just read (the
//! subnet records with their revisions, the heartbeat keys present) and the time, and says
//! which nodes to evict and whether the mass-death guard holds. It does no I/O; the daemon
//! (`service::leader`) reads, calls it, and carries the evictions out with [`plan`].
//!
//! The clock of a node starts when THIS leader first sees its heartbeat absent, never at the
//! node's last renewal: a new leader, or a leader that just had an etcd error, knows nothing
//! about how long a key has been gone, so [`Evictor::reset`] forgets every clock. The clocks
//! also restart when a mass-death episode ends (what looked like mass death was likely a
//! partition or an etcd problem).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use weft_config::{Keys, SubnetRecord};
use weft_store::{Compare, Leadership, Op, RawRecord};

/// How many eviction records the leader keeps under `controller/evictions/`.
pub const KEEP_EVICTIONS: usize = 50;

/// `[evict]` as the state machine needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub after: Duration,
    pub max_dead_share: f64,
}

/// What one scan read from etcd.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The subnet records of every family (`subnets/` and `subnets6/`), with revisions.
    pub subnets: Vec<RawRecord>,
    /// The names under `nodes/` (heartbeat keys present).
    pub heartbeats: BTreeSet<String>,
}

/// A subnet record to delete: its key, subnet, and the revision it was seen at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub key: String,
    pub subnet: IpNet,
    pub mod_revision: i64,
}

/// A node to evict, with the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub node: String,
    /// Its subnet records, of every family.
    pub records: Vec<Held>,
    /// How long this leader has seen its heartbeat absent.
    pub absent_for: Duration,
    /// One line for the log and the eviction record.
    pub evidence: String,
}

/// The mass-death guard: too many nodes look dead at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Guard {
    pub dead: usize,
    pub total: usize,
}

/// What a scan decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Nodes known: holding a subnet record or a heartbeat.
    pub nodes: usize,
    /// Nodes holding a subnet record without a heartbeat.
    pub dead: usize,
    /// Evict these, each in one transaction.
    pub evict: Vec<Eviction>,
    /// `Some` while the guard holds: nothing is evicted.
    pub held: Option<Guard>,
    /// The guard started holding with this scan (log it once per episode).
    pub held_started: bool,
    /// The guard stopped holding with this scan.
    pub held_ended: bool,
}

/// The state across scans: when this leader first saw each heartbeat absent.
#[derive(Debug, Clone)]
pub struct Evictor {
    policy: Policy,
    absent_since: BTreeMap<String, Instant>,
    holding: bool,
}

impl Evictor {
    pub fn new(policy: Policy) -> Self {
        Self { policy, absent_since: BTreeMap::new(), holding: false }
    }

    /// Forgets every clock: after a leader change or an etcd error the view may be stale.
    pub fn reset(&mut self) {
        self.absent_since.clear();
        self.holding = false;
    }

    /// Forgets one node's clock (its eviction was done, or failed because its records changed).
    pub fn forget(&mut self, node: &str) {
        self.absent_since.remove(node);
    }

    /// Since when this leader has seen `node`'s heartbeat absent.
    pub fn absent_since(&self, node: &str) -> Option<Instant> {
        self.absent_since.get(node).copied()
    }

    /// One scan at `now`.
    pub fn scan(&mut self, now: Instant, snap: &Snapshot, keys: &Keys) -> Scan {
        let mut held_by: BTreeMap<String, Vec<Held>> = BTreeMap::new();
        for r in &snap.subnets {
            let Some((_, seg)) = keys.subnet_segment_of(&r.key) else { continue };
            let Some(subnet) = weft_config::subnet::from_key_form(seg) else { continue };
            // A malformed record names no node; it is nobody's to evict.
            let Ok(rec) = SubnetRecord::from_json(&r.key, &r.value) else { continue };
            held_by.entry(rec.node).or_default().push(Held {
                key: r.key.clone(),
                subnet,
                mod_revision: r.mod_revision,
            });
        }
        let all: BTreeSet<&String> = held_by.keys().chain(snap.heartbeats.iter()).collect();
        let nodes = all.len();
        let dead: Vec<String> = held_by.keys().filter(|n| !snap.heartbeats.contains(*n)).cloned().collect();
        // Clocks: start for the newly absent, stop for the back and for the gone.
        self.absent_since.retain(|n, _| dead.contains(n));
        for n in &dead {
            self.absent_since.entry(n.clone()).or_insert(now);
        }
        let dead_count = dead.len();
        let over = nodes > 0 && dead_count as f64 / nodes as f64 > self.policy.max_dead_share;
        let was_holding = self.holding;
        self.holding = over;
        let mut scan = Scan {
            nodes,
            dead: dead_count,
            evict: Vec::new(),
            held: over.then_some(Guard { dead: dead_count, total: nodes }),
            held_started: over && !was_holding,
            held_ended: !over && was_holding,
        };
        if over {
            return scan;
        }
        if was_holding {
            // The episode ends: what looked like mass death was likely a partition or an etcd
            // problem, so the nodes still absent get their grace period anew.
            for n in &dead {
                self.absent_since.insert(n.clone(), now);
            }
        }
        for n in dead {
            let since = self.absent_since.get(&n).copied().unwrap_or(now);
            let absent_for = now.saturating_duration_since(since);
            if absent_for < self.policy.after {
                continue;
            }
            let records = held_by.remove(&n).unwrap_or_default();
            let list: Vec<String> = records.iter().map(|h| format!("{}@{}", h.subnet, h.mod_revision)).collect();
            let evidence = format!(
                "heartbeat {} absent for {} s as seen by this leader (limit {} s); {dead_count} of {nodes} node(s) look dead; records {}",
                keys.node(&n),
                absent_for.as_secs(),
                self.policy.after.as_secs(),
                list.join(", ")
            );
            scan.evict.push(Eviction { node: n, records, absent_for, evidence });
        }
        scan
    }
}

/// The record kept under `controller/evictions/` for every eviction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictionRecord {
    pub schema: u32,
    pub node: String,
    pub subnet: Option<String>,
    pub subnet6: Option<String>,
    /// Unix seconds.
    pub at: u64,
    pub absent_secs: u64,
    pub evidence: String,
    /// The controller that evicted.
    pub leader: String,
}

impl EvictionRecord {
    pub fn new(e: &Eviction, at_ms: u64, leader: &str) -> Self {
        let of = |v6: bool| e.records.iter().find(|h| h.subnet.addr().is_ipv6() == v6).map(|h| h.subnet.to_string());
        Self {
            schema: 1,
            node: e.node.clone(),
            subnet: of(false),
            subnet6: of(true),
            at: at_ms / 1000,
            absent_secs: e.absent_for.as_secs(),
            evidence: e.evidence.clone(),
            leader: leader.to_string(),
        }
    }
}

/// The one transaction of an eviction: while `lead` still holds the election and the node's
/// records are as seen and its heartbeat is still absent, delete its subnet records (every
/// family) and its probe record, and write the eviction record. Returns the compares, the
/// writes and the eviction record's key.
pub fn plan(
    keys: &Keys,
    lead: &Leadership,
    e: &Eviction,
    rec: &EvictionRecord,
    at_ms: u64,
) -> (Vec<Compare>, Vec<Op>, String) {
    let mut compares = vec![Compare::created_at(&lead.key, lead.rev), Compare::created_at(&keys.node(&e.node), 0)];
    let mut ops = Vec::new();
    for h in &e.records {
        compares.push(Compare::modified_at(&h.key, h.mod_revision));
        ops.push(Op::delete(&h.key));
    }
    ops.push(Op::delete(&keys.probe(&e.node)));
    let key = keys.eviction(at_ms, &e.node);
    let json = serde_json::to_string(rec).unwrap_or_default();
    ops.push(Op::put(&key, json, 0));
    (compares, ops, key)
}

/// The eviction records to delete so that the newest [`KEEP_EVICTIONS`] stay (`keys` in any
/// order; they sort by time).
pub fn trim(keys: &[String]) -> Vec<String> {
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort();
    let excess = sorted.len().saturating_sub(KEEP_EVICTIONS);
    sorted.into_iter().take(excess).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn keys() -> Keys {
        Keys::new("default")
    }

    fn rec(key: &str, node: &str, rev: i64) -> RawRecord {
        RawRecord {
            key: format!("/weft/v1/default/{key}"),
            value: format!(
                r#"{{"schema":1,"node":"{node}","node_id":"id-{node}","public_ip":"172.30.0.11","backend":"host-gw"}}"#
            )
            .into_bytes(),
            create_revision: rev,
            mod_revision: rev,
        }
    }

    /// n1..n4 with IPv4 records (n1 also IPv6), heartbeats of `alive`.
    fn snap(alive: &[&str]) -> Snapshot {
        Snapshot {
            subnets: vec![
                rec("subnets/10.244.1.0-24", "n1", 11),
                rec("subnets/10.244.2.0-24", "n2", 12),
                rec("subnets/10.244.3.0-24", "n3", 13),
                rec("subnets/10.244.4.0-24", "n4", 14),
                rec("subnets6/fd00:10:244:1::-64", "n1", 15),
                RawRecord {
                    key: "/weft/v1/default/subnets/10.244.9.0-24".into(),
                    value: b"garbage".to_vec(),
                    create_revision: 9,
                    mod_revision: 9,
                },
            ],
            heartbeats: alive.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn policy(after: u64, share: f64) -> Policy {
        Policy { after: Duration::from_secs(after), max_dead_share: share }
    }

    fn evicted(s: &Scan) -> Vec<&str> {
        s.evict.iter().map(|e| e.node.as_str()).collect()
    }

    #[test]
    fn a_node_is_evicted_after_being_seen_absent_for_the_limit() {
        let t0 = Instant::now();
        let mut ev = Evictor::new(policy(60, 0.5));
        let s = ev.scan(t0, &snap(&["n2", "n3", "n4"]), &keys());
        assert_eq!((s.nodes, s.dead, s.held), (4, 1, None));
        assert!(s.evict.is_empty(), "the clock starts now, whatever the heartbeat's age");
        assert!(ev.scan(t0 + 59 * S, &snap(&["n2", "n3", "n4"]), &keys()).evict.is_empty());
        let s = ev.scan(t0 + 60 * S, &snap(&["n2", "n3", "n4"]), &keys());
        assert_eq!(evicted(&s), ["n1"]);
        let e = &s.evict[0];
        assert_eq!(e.absent_for, 60 * S);
        let held: Vec<(&str, i64)> = e.records.iter().map(|h| (h.key.as_str(), h.mod_revision)).collect();
        assert_eq!(
            held,
            [("/weft/v1/default/subnets/10.244.1.0-24", 11), ("/weft/v1/default/subnets6/fd00:10:244:1::-64", 15)],
            "every family, with the revisions seen"
        );
        assert!(e.evidence.starts_with("heartbeat /weft/v1/default/nodes/n1 absent for 60 s as seen by this leader (limit 60 s); 1 of 4 node(s) look dead; records 10.244.1.0/24@11, fd00:10:244:1::/64@15"), "{}", e.evidence);
    }

    #[test]
    fn a_node_back_in_time_stops_its_clock() {
        let t0 = Instant::now();
        let mut ev = Evictor::new(policy(60, 0.5));
        ev.scan(t0, &snap(&["n2", "n3", "n4"]), &keys());
        ev.scan(t0 + 30 * S, &snap(&["n1", "n2", "n3", "n4"]), &keys());
        assert_eq!(ev.absent_since("n1"), None);
        ev.scan(t0 + 40 * S, &snap(&["n2", "n3", "n4"]), &keys());
        assert!(ev.scan(t0 + 90 * S, &snap(&["n2", "n3", "n4"]), &keys()).evict.is_empty(), "absent again from 40 s");
        assert_eq!(evicted(&ev.scan(t0 + 100 * S, &snap(&["n2", "n3", "n4"]), &keys())), ["n1"]);
    }

    #[test]
    fn reset_restarts_every_clock() {
        // A leader change (a new Evictor, or reset on the new term) and an etcd error both reset.
        let t0 = Instant::now();
        let mut ev = Evictor::new(policy(60, 0.5));
        ev.scan(t0, &snap(&["n2", "n3", "n4"]), &keys());
        ev.reset(); // etcd error at 50 s
        assert!(ev.scan(t0 + 61 * S, &snap(&["n2", "n3", "n4"]), &keys()).evict.is_empty());
        assert!(ev.scan(t0 + 120 * S, &snap(&["n2", "n3", "n4"]), &keys()).evict.is_empty());
        assert_eq!(evicted(&ev.scan(t0 + 121 * S, &snap(&["n2", "n3", "n4"]), &keys())), ["n1"]);
        ev.forget("n1");
        assert!(ev.scan(t0 + 122 * S, &snap(&["n2", "n3", "n4"]), &keys()).evict.is_empty(), "forgotten: counted anew");
    }

    #[test]
    fn the_guard_holds_while_too_many_look_dead() {
        let t0 = Instant::now();
        let mut ev = Evictor::new(policy(10, 0.5));
        // 2 of 4 dead is exactly half: not more than the share.
        let s = ev.scan(t0, &snap(&["n3", "n4"]), &keys());
        assert_eq!((s.dead, s.held), (2, None));
        // 3 of 4: held, logged once.
        let s = ev.scan(t0 + 20 * S, &snap(&["n4"]), &keys());
        assert_eq!(s.held, Some(Guard { dead: 3, total: 4 }));
        assert!(s.held_started && s.evict.is_empty());
        let s = ev.scan(t0 + 40 * S, &snap(&["n4"]), &keys());
        assert!(s.held.is_some() && !s.held_started && s.evict.is_empty(), "same episode");
        // n3 comes back: 2 of 4, the episode ends, and n1 and n2 get their grace period anew.
        let s = ev.scan(t0 + 41 * S, &snap(&["n3", "n4"]), &keys());
        assert!(s.held_ended && s.held.is_none());
        assert!(s.evict.is_empty(), "the clocks restart when the episode ends");
        assert!(ev.scan(t0 + 50 * S, &snap(&["n3", "n4"]), &keys()).evict.is_empty());
        assert_eq!(evicted(&ev.scan(t0 + 51 * S, &snap(&["n3", "n4"]), &keys())), ["n1", "n2"]);
        // A lone node that looks dead is all of its cluster: held.
        let mut lone = Evictor::new(policy(1, 0.5));
        let one = Snapshot { subnets: vec![rec("subnets/10.244.1.0-24", "n1", 3)], heartbeats: BTreeSet::new() };
        assert!(lone.scan(t0 + 100 * S, &one, &keys()).held.is_some());
        // max_dead_share = 1: never held.
        let mut all = Evictor::new(policy(1, 1.0));
        all.scan(t0, &snap(&[]), &keys());
        assert_eq!(all.scan(t0 + S, &snap(&[]), &keys()).evict.len(), 4);
    }

    #[test]
    fn heartbeats_without_records_count_as_nodes_and_are_never_evicted() {
        let t0 = Instant::now();
        let mut ev = Evictor::new(policy(1, 0.5));
        let s = ev.scan(t0, &snap(&["n2", "n3", "n4", "n5", "n6"]), &keys());
        assert_eq!((s.nodes, s.dead), (6, 1));
        assert_eq!(evicted(&ev.scan(t0 + S, &snap(&["n2", "n3", "n4", "n5", "n6"]), &keys())), ["n1"]);
    }

    #[test]
    fn the_transaction_compares_leadership_revisions_and_absence() {
        let t0 = Instant::now();
        let mut ev = Evictor::new(policy(5, 0.5));
        ev.scan(t0, &snap(&["n2", "n3", "n4"]), &keys());
        let s = ev.scan(t0 + 6 * S, &snap(&["n2", "n3", "n4"]), &keys());
        let lead = Leadership {
            name: keys().controller_election(),
            key: format!("{}/694d", keys().controller_election()),
            rev: 42,
            lease: 0x694d,
        };
        let at_ms = 1_700_000_000_123;
        let r = EvictionRecord::new(&s.evict[0], at_ms, "c1");
        assert_eq!(
            (r.subnet.as_deref(), r.subnet6.as_deref(), r.at, r.absent_secs),
            (Some("10.244.1.0/24"), Some("fd00:10:244:1::/64"), 1_700_000_000, 6)
        );
        let (compares, ops, key) = plan(&keys(), &lead, &s.evict[0], &r, at_ms);
        assert_eq!(
            compares,
            [
                Compare::created_at("/weft/v1/default/controller/election/694d", 42),
                Compare::created_at("/weft/v1/default/nodes/n1", 0),
                Compare::modified_at("/weft/v1/default/subnets/10.244.1.0-24", 11),
                Compare::modified_at("/weft/v1/default/subnets6/fd00:10:244:1::-64", 15),
            ]
        );
        assert_eq!(key, "/weft/v1/default/controller/evictions/1700000000123-n1");
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(
            ops,
            [
                Op::delete("/weft/v1/default/subnets/10.244.1.0-24"),
                Op::delete("/weft/v1/default/subnets6/fd00:10:244:1::-64"),
                Op::delete("/weft/v1/default/probes/n1"),
                Op::put(&key, json.clone(), 0),
            ]
        );
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v["schema"], 1);
        assert_eq!(v["leader"], "c1");
        assert_eq!(v["node"], "n1");
    }

    #[tokio::test]
    async fn a_deposed_leader_cannot_evict() {
        use weft_store::{MemStore, Store};
        let s = MemStore::new();
        let k = keys();
        for r in snap(&[]).subnets {
            s.put(&r.key, r.value, 0).await.expect("put");
        }
        let (records, _) = s.list("/weft/v1/default/subnets").await.expect("list");
        let lease = s.grant(Duration::from_secs(10)).await.expect("grant");
        let lead = s.campaign(&k.controller_election(), lease, "c1").await.expect("campaign");
        let mut ev = Evictor::new(policy(1, 1.0));
        let t0 = Instant::now();
        let view =
            Snapshot { subnets: records, heartbeats: ["n2", "n3", "n4"].iter().map(|n| n.to_string()).collect() };
        ev.scan(t0, &view, &k);
        let scan = ev.scan(t0 + S, &view, &k);
        let e = &scan.evict[0];
        let r = EvictionRecord::new(e, 5_000, "c1");
        let (c, o, key) = plan(&k, &lead, e, &r, 5_000);
        s.resign(&lead).await.expect("resign");
        assert!(!s.txn(c, o, vec![]).await.expect("txn"), "deposed: the compare on the election key fails");
        let lead2 = s.campaign(&k.controller_election(), lease, "c1").await.expect("campaign again");
        let (c, o, _) = plan(&k, &lead2, e, &r, 5_000);
        assert!(s.txn(c.clone(), o.clone(), vec![]).await.expect("txn"));
        assert!(s.get(&key).await.expect("get").is_some());
        assert!(s.get("/weft/v1/default/subnets/10.244.1.0-24").await.expect("get").is_none());
        assert!(!s.txn(c, o, vec![]).await.expect("txn"), "never twice: the records' revisions changed");
    }

    #[test]
    fn trim_keeps_the_newest() {
        let all: Vec<String> = (0..53u64).rev().map(|i| keys().eviction(1_000 + i, "n")).collect();
        let gone = trim(&all);
        assert_eq!(gone.len(), 3);
        assert_eq!(gone[0], keys().eviction(1_000, "n"));
        assert_eq!(gone[2], keys().eviction(1_002, "n"));
        assert!(trim(&all[..50]).is_empty());
    }
}
