//! Leader election and the leader's work. A term: grant a session lease (TTL
//! `session_ttl_secs`) and keep it alive, campaign with it, and once leading, scan for dead
//! nodes every `scan_secs` until something ends the term: the lease lost (a keepalive answered
//! "gone" or failed), any etcd error, the election key no longer ours, or shutdown. A term always
//! ends with resign and revoke (etcd 3.4 keeps a cancelled campaign's key until its lease
//! expires, which would block every other candidate that long). Then a new term starts, with
//! the eviction clocks reset.
//!
//! Every write of the leader is a transaction comparing its election key's create revision, so
//! a deposed leader's writes fail.

use super::evict::{self, EvictionRecord, Evictor, Snapshot};
use super::{now_ms, Shared};
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use weft_config::subnet::Family;
use weft_config::Keys;
use weft_store::{Compare, Leadership, Op, Store};

/// How a term ended.
#[derive(Debug)]
pub enum Ended {
    /// Shutdown was asked for; resigned and revoked.
    Shutdown,
    /// Leadership (or candidacy) was lost; campaign again.
    Lost(String),
}

/// Renews `lease` every third of `ttl` until a renewal fails; returns why.
async fn keep_alive(store: &impl Store, lease: i64, ttl: Duration) -> String {
    loop {
        tokio::time::sleep(ttl / 3).await;
        match tokio::time::timeout(ttl, store.keep_alive_once(lease)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return format!("session lease {lease:x} expired"),
            Ok(Err(e)) => return format!("renewing the session lease: {e:#}"),
            Err(_) => return format!("renewing the session lease: no answer within {} s", ttl.as_secs()),
        }
    }
}

/// Waits for `shutdown` to become true.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// One term: candidacy, leadership if won, and the cleanup. The caller loops.
pub async fn term<S: Store>(
    store: &S,
    shared: &Arc<Shared>,
    evictor: &mut Evictor,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let ttl = shared.cfg.election.session_ttl;
    let election = shared.keys.controller_election();
    let lease = tokio::select! {
        r = store.grant(ttl) => match r {
            Ok(l) => l,
            Err(e) => return Ended::Lost(format!("{e:#}")),
        },
        _ = stopped(shutdown) => return Ended::Shutdown,
    };
    let keepalive = keep_alive(store, lease, ttl);
    tokio::pin!(keepalive);
    // A campaign waits for the current leader to go; the client's request timeout may end it
    // first, so it is simply made again with the same lease (etcd finds the key already there).
    // Only the lease (keepalive) or shutdown ends the candidacy.
    let leadership = loop {
        let started = Instant::now();
        let won = tokio::select! {
            r = store.campaign(&election, lease, shared.election_value()) => r,
            why = &mut keepalive => {
                finish(store, None, lease).await;
                return Ended::Lost(why);
            }
            _ = stopped(shutdown) => {
                finish(store, None, lease).await;
                return Ended::Shutdown;
            }
        };
        match won {
            Ok(l) => break l,
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "campaign returned without leadership; campaigning again");
                if started.elapsed() < Duration::from_secs(1) {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        why = &mut keepalive => {
                            finish(store, None, lease).await;
                            return Ended::Lost(why);
                        }
                        _ = stopped(shutdown) => {
                            finish(store, None, lease).await;
                            return Ended::Shutdown;
                        }
                    }
                }
            }
        }
    };
    tracing::info!(controller = %shared.name, key = %leadership.key, rev = leadership.rev, "leading: this controller now evicts dead nodes");
    shared.set_leader(true);
    shared.metrics.leader_changes.inc();
    // Clocks from an earlier term are stale: this leader starts counting now.
    evictor.reset();
    let ended = tokio::select! {
        why = &mut keepalive => Ended::Lost(why),
        r = lead(store, shared, &leadership, evictor) => Ended::Lost(match r {
            Ok(()) => "leadership ended".to_string(),
            Err(e) => format!("{e:#}"),
        }),
        _ = stopped(shutdown) => Ended::Shutdown,
    };
    shared.set_leader(false);
    evictor.reset();
    finish(store, Some(&leadership), lease).await;
    ended
}

/// Resigns (when leading) and revokes the session lease, each within a few seconds; errors are
/// logged (an expired lease is as good as a revoked one).
async fn finish(store: &impl Store, leadership: Option<&Leadership>, lease: i64) {
    let limit = Duration::from_secs(3);
    if let Some(l) = leadership {
        match tokio::time::timeout(limit, store.resign(l)).await {
            Ok(Ok(())) => tracing::info!(key = %l.key, "resigned"),
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "resigning failed"),
            Err(_) => tracing::warn!("resigning: no answer within 3 s"),
        }
    }
    match tokio::time::timeout(limit, store.revoke(lease)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "revoking the session lease failed; it expires by itself")
        }
        Err(_) => tracing::warn!("revoking the session lease: no answer within 3 s; it expires by itself"),
    }
}

/// Fails unless the election key is still this leadership's.
async fn still_leading(store: &impl Store, l: &Leadership) -> Result<()> {
    match store.get(&l.key).await? {
        Some(r) if r.create_revision == l.rev => Ok(()),
        _ => bail!("deposed: election key {} is gone or no longer ours", l.key),
    }
}

/// Reads the subnet records of both families and the heartbeat names.
async fn snapshot(store: &impl Store, keys: &Keys) -> Result<Snapshot> {
    let mut subnets = Vec::new();
    for f in [Family::V4, Family::V6] {
        subnets.extend(store.list(&keys.subnets_prefix_of(f)).await?.0);
    }
    let (beats, _) = store.list(&keys.nodes_prefix()).await?;
    let heartbeats = beats.iter().filter_map(|r| keys.node_segment(&r.key)).map(str::to_string).collect();
    Ok(Snapshot { subnets, heartbeats })
}

/// The leader's loop: scan, evict, repeat. Returns on the first error (the term ends, and
/// with it every clock).
async fn lead<S: Store>(store: &S, shared: &Arc<Shared>, l: &Leadership, evictor: &mut Evictor) -> Result<()> {
    let keys = &shared.keys;
    let mut tick = tokio::time::interval(shared.cfg.evict.scan);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        still_leading(store, l).await?;
        let snap = snapshot(store, keys).await.context("reading nodes for the eviction scan")?;
        let scan = evictor.scan(Instant::now(), &snap, keys);
        shared.note_scan(&scan);
        if let Some(g) = scan.held {
            shared.metrics.eviction_held_scans.inc();
            if scan.held_started {
                tracing::warn!(
                    dead = g.dead,
                    total = g.total,
                    max_dead_share = shared.cfg.evict.max_dead_share,
                    "mass-death guard: {} of {} nodes look dead at once, more than the share allowed; holding every eviction (a partition or an etcd problem, not dead machines)",
                    g.dead,
                    g.total
                );
            }
            continue;
        }
        if scan.held_ended {
            tracing::info!(dead = scan.dead, total = scan.nodes, "mass-death guard released");
        }
        let mut evicted = false;
        for e in &scan.evict {
            let at_ms = now_ms();
            let rec = EvictionRecord::new(e, at_ms, &shared.name);
            let (compares, ops, key) = evict::plan(keys, l, e, &rec, at_ms);
            let ok = store.txn(compares, ops, vec![]).await.with_context(|| format!("evicting node {}", e.node))?;
            evictor.forget(&e.node);
            if ok {
                evicted = true;
                shared.metrics.evictions.inc();
                tracing::warn!(node = %e.node, subnet = ?rec.subnet, subnet6 = ?rec.subnet6, record = %key, evidence = %e.evidence, "evicted dead node");
            } else {
                still_leading(store, l).await?;
                tracing::info!(node = %e.node, "not evicted: its records or heartbeat changed since the scan; counting again");
            }
        }
        if evicted {
            trim(store, keys, l).await?;
        }
    }
}

/// Deletes all but the newest eviction records, while still leader.
async fn trim(store: &impl Store, keys: &Keys, l: &Leadership) -> Result<()> {
    let (records, _) = store.list(&keys.evictions_prefix()).await?;
    let all: Vec<String> = records.into_iter().map(|r| r.key).collect();
    let gone = evict::trim(&all);
    if gone.is_empty() {
        return Ok(());
    }
    let ops = gone.iter().map(|k| Op::delete(k)).collect();
    store.txn(vec![Compare::created_at(&l.key, l.rev)], ops, vec![]).await.context("trimming eviction records")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::config::ControllerConfig;
    use crate::service::evict::Policy;
    use weft_store::MemStore;

    fn shared(name: &str) -> Arc<Shared> {
        shared_evicting(name, 3600)
    }

    fn shared_evicting(name: &str, after_secs: u64) -> Arc<Shared> {
        let text = format!(
            "name = \"{name}\"\n[etcd]\nendpoints = [\"http://a:2379\"]\n[evict]\nscan_secs = 1\nafter_secs = {after_secs}\n"
        );
        let cfg = ControllerConfig::parse("c.toml", &text).expect("valid");
        Arc::new(Shared::new(name.into(), cfg))
    }

    async fn wait_until(f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test]
    async fn one_leads_the_other_takes_over_and_shutdown_resigns() {
        let store = MemStore::new();
        let policy = Policy { after: Duration::from_secs(3600), max_dead_share: 0.5 };
        let (a, b) = (shared("c1"), shared("c2"));
        let (stop_a, mut rx_a) = watch::channel(false);
        let (stop_b, mut rx_b) = watch::channel(false);
        let (sa, sb) = (store.clone(), store.clone());
        let (a2, b2) = (a.clone(), b.clone());
        let ta = tokio::spawn(async move { term(&sa, &a2, &mut Evictor::new(policy), &mut rx_a).await });
        wait_until(|| a.is_leader()).await;
        let tb = tokio::spawn(async move { term(&sb, &b2, &mut Evictor::new(policy), &mut rx_b).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(a.is_leader() && !b.is_leader(), "one leader at a time");
        let election = a.keys.controller_election();
        let leader = store.leader(&election).await.expect("leader").expect("someone leads");
        assert_eq!(leader.value, a.election_value().into_bytes());
        assert_eq!(a.metrics.leader_changes.get(), 1);

        stop_a.send(true).expect("send");
        assert!(matches!(ta.await.expect("join"), Ended::Shutdown));
        assert!(!a.is_leader());
        wait_until(|| b.is_leader()).await;
        let leader = store.leader(&election).await.expect("leader").expect("someone leads");
        assert_eq!(leader.value, b.election_value().into_bytes());
        let (keys, _) = store.list(&format!("{election}/")).await.expect("list");
        assert_eq!(keys.len(), 1, "c1 resigned and revoked: only c2's key is left");

        stop_b.send(true).expect("send");
        assert!(matches!(tb.await.expect("join"), Ended::Shutdown));
        assert!(store.leader(&election).await.expect("leader").is_none());
        assert!(store.list(&format!("{election}/")).await.expect("list").0.is_empty());
    }

    #[tokio::test]
    async fn a_leader_whose_key_is_deleted_steps_down() {
        let store = MemStore::new();
        let policy = Policy { after: Duration::from_secs(3600), max_dead_share: 0.5 };
        let a = shared("c1");
        let (_stop, mut rx) = watch::channel(false);
        let (s2, a2) = (store.clone(), a.clone());
        let t = tokio::spawn(async move { term(&s2, &a2, &mut Evictor::new(policy), &mut rx).await });
        wait_until(|| a.is_leader()).await;
        let election = a.keys.controller_election();
        let key = store.leader(&election).await.expect("leader").expect("leads").key;
        store.delete(&key).await.expect("delete");
        match t.await.expect("join") {
            Ended::Lost(why) => assert!(why.contains("deposed"), "{why}"),
            Ended::Shutdown => panic!("not a shutdown"),
        }
        assert!(!a.is_leader());
    }

    /// n1..n4 hold subnets; n1's heartbeat is absent.
    async fn cluster_with_a_dead_node(store: &MemStore) {
        for i in 1..=4 {
            let rec = format!(
                r#"{{"schema":1,"node":"n{i}","node_id":"id-n{i}","public_ip":"172.30.0.1{i}","backend":"host-gw"}}"#
            );
            store.put(&format!("/weft/v1/default/subnets/10.244.{i}.0-24"), rec, 0).await.expect("put");
            store.put(&format!("/weft/v1/default/probes/n{i}"), "{}", 0).await.expect("put");
            if i > 1 {
                store.put(&format!("/weft/v1/default/nodes/n{i}"), "{}", 0).await.expect("put");
            }
        }
    }

    #[tokio::test]
    async fn the_leader_evicts_a_dead_node_once() {
        let store = MemStore::new();
        cluster_with_a_dead_node(&store).await;
        let a = shared_evicting("c1", 1);
        let policy = Policy { after: Duration::from_secs(1), max_dead_share: 0.5 };
        let (stop, mut rx) = watch::channel(false);
        let (s2, a2) = (store.clone(), a.clone());
        let t = tokio::spawn(async move { term(&s2, &a2, &mut Evictor::new(policy), &mut rx).await });
        for _ in 0..100 {
            if a.metrics.evictions.get() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(a.metrics.evictions.get(), 1);
        assert!(store.get("/weft/v1/default/subnets/10.244.1.0-24").await.expect("get").is_none());
        assert!(store.get("/weft/v1/default/probes/n1").await.expect("get").is_none());
        assert!(store.get("/weft/v1/default/probes/n2").await.expect("get").is_some());
        let (recs, _) = store.list(&a.keys.evictions_prefix()).await.expect("list");
        assert_eq!(recs.len(), 1);
        let rec: EvictionRecord = serde_json::from_slice(&recs[0].value).expect("record");
        assert_eq!(
            (rec.node.as_str(), rec.subnet.as_deref(), rec.leader.as_str()),
            ("n1", Some("10.244.1.0/24"), "c1")
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(a.metrics.evictions.get(), 1, "never twice");
        stop.send(true).expect("send");
        assert!(matches!(t.await.expect("join"), Ended::Shutdown));
    }

    #[tokio::test]
    async fn an_etcd_outage_ends_leadership_and_restarts_the_clocks() {
        let store = MemStore::new();
        cluster_with_a_dead_node(&store).await;
        let a = shared("c1");
        let policy = Policy { after: Duration::from_secs(3600), max_dead_share: 0.5 };
        let (_stop, mut rx) = watch::channel(false);
        let (s2, a2) = (store.clone(), a.clone());
        let t = tokio::spawn(async move {
            let mut ev = Evictor::new(policy);
            let ended = term(&s2, &a2, &mut ev, &mut rx).await;
            (ended, ev)
        });
        wait_until(|| a.is_leader()).await;
        tokio::time::sleep(Duration::from_millis(200)).await; // a scan saw n1 absent
        store.set_down(true);
        let (ended, ev) = tokio::time::timeout(Duration::from_secs(5), t).await.expect("ends").expect("join");
        assert!(matches!(ended, Ended::Lost(_)), "{ended:?}");
        assert!(!a.is_leader());
        assert_eq!(ev.absent_since("n1"), None, "the clock restarts after the outage");
        assert_eq!(a.metrics.evictions.get(), 0);
    }

    #[tokio::test]
    async fn a_lost_session_lease_ends_leadership() {
        let store = MemStore::new();
        let a = shared("c1");
        let policy = Policy { after: Duration::from_secs(3600), max_dead_share: 0.5 };
        let (_stop, mut rx) = watch::channel(false);
        let (s2, a2) = (store.clone(), a.clone());
        let t = tokio::spawn(async move { term(&s2, &a2, &mut Evictor::new(policy), &mut rx).await });
        wait_until(|| a.is_leader()).await;
        let lease = store.leases()[0];
        assert!(store.expire_lease(lease));
        let ended = tokio::time::timeout(Duration::from_secs(5), t).await.expect("ends").expect("join");
        match ended {
            Ended::Lost(why) => assert!(why.contains("expired") || why.contains("deposed"), "{why}"),
            Ended::Shutdown => panic!("not a shutdown"),
        }
        assert!(!a.is_leader());
    }
}
