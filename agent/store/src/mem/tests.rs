//! The fake's semantics, checked against what etcd does.

use super::*;

const TTL: Duration = Duration::from_secs(10);

async fn events(w: &mut Watch) -> Vec<(EventKind, String, i64)> {
    match tokio::time::timeout(Duration::from_secs(1), w.next()).await {
        Ok(WatchMsg::Events(ev)) => ev.into_iter().map(|e| (e.kind, e.kv.key, e.kv.mod_revision)).collect(),
        other => panic!("expected events, got {other:?}"),
    }
}

async fn nothing_pending(w: &mut Watch) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(50), w.next()).await {
        panic!("unexpected watch message {m:?}");
    }
}

use EventKind::{Delete, Put};

#[tokio::test]
async fn every_write_bumps_the_revision_and_keeps_create_revision() {
    let s = MemStore::new();
    assert_eq!(s.revision(), 1, "an empty etcd is at revision 1");
    s.put("/a", "1", 0).await.expect("put");
    s.put("/b", "1", 0).await.expect("put");
    s.put("/a", "2", 0).await.expect("put");
    let a = s.get("/a").await.expect("get").expect("present");
    assert_eq!((a.value.as_slice(), a.create_revision, a.mod_revision), (&b"2"[..], 2, 4));
    assert_eq!(s.revision(), 4);
    assert!(s.get("/c").await.expect("get").is_none());
    assert!(!s.delete("/c").await.expect("delete"), "nothing to delete");
    assert_eq!(s.revision(), 4, "a delete of nothing does not bump the revision");
    assert!(s.delete("/b").await.expect("delete"));
    assert_eq!(s.revision(), 5);
}

#[tokio::test]
async fn list_and_count_see_only_the_prefix_sorted() {
    let s = MemStore::new();
    for k in ["/w/s/2", "/w/s/1", "/w/n/1", "/w/s"] {
        s.put(k, k, 0).await.expect("put");
    }
    let (recs, rev) = s.list("/w/s/").await.expect("list");
    let keys: Vec<&str> = recs.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["/w/s/1", "/w/s/2"]);
    assert_eq!(rev, 5);
    assert_eq!(s.count("/w/").await.expect("count"), (4, 5));
}

#[tokio::test]
async fn create_replace_and_delete_if_compare_like_etcd() {
    let s = MemStore::new();
    assert!(s.create("/k", "a", 0).await.expect("create"));
    assert!(!s.create("/k", "b", 0).await.expect("create"), "exists");
    let rec = s.get("/k").await.expect("get").expect("present");
    assert!(!s.replace("/k", "c", 0, rec.mod_revision - 1).await.expect("replace"), "stale revision");
    assert!(s.replace("/k", "c", 0, rec.mod_revision).await.expect("replace"));
    assert_eq!(s.get("/k").await.expect("get").expect("present").value, b"c");
    assert!(!s.delete_if("/k", "a").await.expect("delete_if"), "value changed meanwhile");
    assert!(!s.delete_if("/nope", "").await.expect("delete_if"), "a value compare on no key fails");
    assert!(s.delete_if("/k", "c").await.expect("delete_if"));
    assert!(s.get("/k").await.expect("get").is_none());
}

#[tokio::test]
async fn prefix_compares_and_else_branch() {
    let s = MemStore::new();
    let empty = || vec![Compare::created_at("/p/", 0).with_prefix()];
    assert!(s.txn(empty(), vec![Op::put("/cfg", "1", 0)], vec![]).await.expect("txn"), "nothing under /p/");
    s.put("/p/x", "1", 0).await.expect("put");
    let ok = s.txn(empty(), vec![Op::put("/cfg", "2", 0)], vec![Op::put("/lost", "y", 0)]).await.expect("txn");
    assert!(!ok, "a key under the prefix has a create revision");
    assert_eq!(s.get("/cfg").await.expect("get").expect("present").value, b"1");
    assert_eq!(s.get("/lost").await.expect("get").expect("present").value, b"y", "else ops ran");
    let newer = Compare { op: CmpOp::Greater, ..Compare::modified_at("/cfg", 1) };
    assert!(s.txn(vec![newer], vec![], vec![]).await.expect("txn"));
}

#[tokio::test]
async fn one_txn_is_one_revision_and_one_batch() {
    let s = MemStore::new();
    s.put("/p/old", "x", 0).await.expect("put");
    let mut w = s.watch("/p/", 0).await.expect("watch");
    let ops = vec![Op::put("/p/a", "1", 0), Op::put("/p/b", "1", 0), Op::delete("/p/old"), Op::put("/q", "1", 0)];
    assert!(s.txn(vec![], ops, vec![]).await.expect("txn"));
    assert_eq!(s.revision(), 3);
    assert_eq!(events(&mut w).await, [(Put, "/p/a".into(), 3), (Put, "/p/b".into(), 3), (Delete, "/p/old".into(), 3)]);
    nothing_pending(&mut w).await;
}

#[tokio::test]
async fn watch_replays_from_a_revision_then_follows() {
    let s = MemStore::new();
    s.put("/p/a", "1", 0).await.expect("put"); // rev 2
    s.put("/other", "1", 0).await.expect("put"); // rev 3
    s.put("/p/b", "1", 0).await.expect("put"); // rev 4
    s.delete("/p/a").await.expect("delete"); // rev 5
    let mut w = s.watch("/p/", 3).await.expect("watch");
    assert_eq!(events(&mut w).await, [(Put, "/p/b".into(), 4)], "history from revision 3, own prefix only");
    assert_eq!(events(&mut w).await, [(Delete, "/p/a".into(), 5)]);
    s.put("/p/c", "1", 0).await.expect("put");
    s.put("/other", "2", 0).await.expect("put");
    s.put("/p/b", "2", 0).await.expect("put");
    assert_eq!(events(&mut w).await, [(Put, "/p/c".into(), 6)]);
    assert_eq!(events(&mut w).await, [(Put, "/p/b".into(), 8)]);
    nothing_pending(&mut w).await;
}

#[tokio::test]
async fn a_delete_event_carries_the_delete_revision() {
    let s = MemStore::new();
    s.put("/p/a", "v", 0).await.expect("put");
    let mut w = s.watch("/p/", 0).await.expect("watch");
    s.delete("/p/a").await.expect("delete");
    let WatchMsg::Events(ev) = w.next().await else { panic!("expected events") };
    assert_eq!(ev[0].kind, Delete);
    assert_eq!((ev[0].kv.create_revision, ev[0].kv.mod_revision, ev[0].kv.value.len()), (0, 3, 0));
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_says_so() {
    let s = MemStore::new();
    for v in ["1", "2", "3", "4"] {
        s.put("/p/a", v, 0).await.expect("put");
    }
    s.compact(4);
    let mut w = s.watch("/p/", 2).await.expect("watch");
    match w.next().await {
        WatchMsg::Compacted { compact_revision, .. } => assert_eq!(compact_revision, 4),
        other => panic!("expected compaction, got {other:?}"),
    }
    assert_eq!(w.next().await, WatchMsg::Broken(None), "the watch stays over");
    let mut w = s.watch("/p/", 4).await.expect("watch");
    assert_eq!(events(&mut w).await, [(Put, "/p/a".into(), 4)], "the compaction revision itself is kept");
    assert_eq!(events(&mut w).await, [(Put, "/p/a".into(), 5)]);
}

#[tokio::test]
async fn leases_expire_on_the_virtual_clock_unless_renewed() {
    let s = MemStore::new();
    let l = s.grant(TTL).await.expect("grant");
    s.put("/p/a", "1", l).await.expect("put");
    s.put("/p/b", "1", l).await.expect("put");
    s.put("/p/c", "1", 0).await.expect("put");
    let mut w = s.watch("/p/", 0).await.expect("watch");
    s.advance(Duration::from_secs(8));
    assert!(s.keep_alive_once(l).await.expect("renew"), "alive at 8 s");
    s.advance(Duration::from_secs(8));
    assert!(s.get("/p/a").await.expect("get").is_some(), "renewed at 8 s, so alive at 16 s");
    nothing_pending(&mut w).await;
    s.advance(Duration::from_secs(3));
    assert_eq!(events(&mut w).await, [(Delete, "/p/a".into(), 5), (Delete, "/p/b".into(), 5)]);
    assert!(s.get("/p/c").await.expect("get").is_some(), "keys without the lease stay");
    assert!(!s.keep_alive_once(l).await.expect("renew"), "an expired lease is gone");
    assert!(s.put("/p/d", "1", l).await.is_err(), "no writes under an expired lease");
}

#[tokio::test]
async fn expire_and_revoke_delete_the_lease_keys_only() {
    let s = MemStore::new();
    let (l1, l2) = (s.grant(TTL).await.expect("grant"), s.grant(TTL).await.expect("grant"));
    assert_ne!(l1, l2);
    s.put("/a", "1", l1).await.expect("put");
    s.put("/b", "1", l2).await.expect("put");
    s.put("/a2", "1", l1).await.expect("put");
    s.put("/a2", "2", 0).await.expect("put"); // a put without a lease detaches it
    assert!(s.expire_lease(l1));
    assert!(!s.expire_lease(l1), "already gone");
    assert!(s.get("/a").await.expect("get").is_none());
    assert!(s.get("/a2").await.expect("get").is_some(), "detached from the lease");
    assert_eq!(s.leases(), [l2]);
    s.revoke(l2).await.expect("revoke");
    s.revoke(l2).await.expect("revoking a lease that is gone is no error");
    assert!(s.get("/b").await.expect("get").is_none());
}

#[tokio::test]
async fn down_fails_every_call_and_breaks_watches() {
    let s = MemStore::new();
    let l = s.grant(TTL).await.expect("grant");
    let mut w = s.watch("/p/", 0).await.expect("watch");
    s.set_down(true);
    assert!(matches!(w.next().await, WatchMsg::Broken(Some(_))));
    let e = s.get("/p/a").await.expect_err("down");
    assert_eq!(format!("{e:#}"), format!("reading /p/a: {DOWN}"));
    assert!(s.put("/p/a", "1", 0).await.is_err());
    assert!(s.keep_alive_once(l).await.is_err());
    assert!(s.watch("/p/", 0).await.is_err());
    assert!(s.txn(vec![], vec![Op::put("/p/a", "1", 0)], vec![]).await.is_err());
    s.set_down(false);
    assert!(s.get("/p/a").await.expect("up again").is_none(), "nothing was written while down");
    let mut w = s.watch("/p/", 0).await.expect("watch");
    s.put("/p/a", "1", l).await.expect("put");
    assert_eq!(events(&mut w).await, [(Put, "/p/a".into(), 2)]);
}

#[tokio::test]
async fn election_the_oldest_candidate_leads() {
    let s = MemStore::new();
    let (l1, l2) = (s.grant(TTL).await.expect("grant"), s.grant(TTL).await.expect("grant"));
    assert_eq!(s.leader("/e").await.expect("leader"), None);
    let first = s.campaign("/e", l1, "one").await.expect("campaign");
    assert_eq!(first.key, format!("/e/{l1:x}"));
    let s2 = s.clone();
    let second = tokio::spawn(async move { s2.campaign("/e", l2, "two").await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!second.is_finished(), "waits while the first leads");
    assert_eq!(s.leader("/e").await.expect("leader").expect("a leader").value, b"one");
    s.resign(&first).await.expect("resign");
    let second = tokio::time::timeout(Duration::from_secs(1), second).await.expect("elected").expect("task");
    let second = second.expect("campaign");
    assert_eq!(s.leader("/e").await.expect("leader").expect("a leader").key, second.key);
    // Leadership also ends with the lease.
    assert!(s.expire_lease(l2));
    assert_eq!(s.leader("/e").await.expect("leader"), None);
}

#[tokio::test]
async fn a_waiting_campaign_fails_when_etcd_goes_away() {
    let s = MemStore::new();
    let (l1, l2) = (s.grant(TTL).await.expect("grant"), s.grant(TTL).await.expect("grant"));
    s.campaign("/e", l1, "one").await.expect("campaign");
    let s2 = s.clone();
    let waiting = tokio::spawn(async move { s2.campaign("/e", l2, "two").await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.set_down(true);
    let r = tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("woken").expect("task");
    assert!(r.is_err());
}

/// Code generic over `S: Store` (as a daemon would be) can spawn the trait's futures.
fn spawn_get<S: Store>(s: S, key: &'static str) -> tokio::task::JoinHandle<Result<Option<RawRecord>>> {
    tokio::spawn(async move { s.get(key).await })
}

#[tokio::test]
async fn generic_code_can_spawn_store_futures() {
    let s = MemStore::new();
    s.put("/k", "v", 0).await.expect("put");
    let got = spawn_get(s.clone(), "/k").await.expect("task").expect("get").expect("present");
    assert_eq!((got.value.as_slice(), got.create_revision), (&b"v"[..], 2));
}
