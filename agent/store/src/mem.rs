//! [`MemStore`]: an in-memory [`Store`] with etcd's semantics, for unit tests. One global
//! revision (1 when empty) that every write bumps once; create and mod revisions per key;
//! watches that replay history from a revision and then follow live changes, in order; a
//! compaction that makes older watches report `Compacted`; leases that expire only when the
//! test says so (`expire_lease`, or `advance` on a virtual clock), deleting their keys with
//! Delete events; election like etcd's (`name/<lease hex>`, the oldest candidate leads); and
//! failure injection (`set_down(true)`: every call fails like an unreachable etcd and open
//! watches break).

use crate::{CmpOp, Compare, EventKind, Leadership, Op, RawRecord, Store, Target, Watch, WatchEvent, WatchMsg};
use anyhow::{anyhow, bail, Context, Result};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

const DOWN: &str = "etcd unreachable (the in-memory store is down)";

struct Entry {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    lease: i64,
}

struct Lease {
    ttl: Duration,
    /// On the virtual clock.
    expires: Duration,
    keys: BTreeSet<String>,
}

struct Watcher {
    prefix: String,
    /// Events below this revision are not delivered.
    min_rev: i64,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

struct State {
    rev: i64,
    compacted: i64,
    kvs: BTreeMap<String, Entry>,
    /// The events of every revision since the compaction.
    history: Vec<(i64, Vec<WatchEvent>)>,
    watchers: Vec<Watcher>,
    leases: BTreeMap<i64, Lease>,
    next_lease: i64,
    now: Duration,
    down: bool,
}

/// The fake. Clones share one store.
#[derive(Clone)]
pub struct MemStore {
    state: Arc<Mutex<State>>,
    /// Bumped on every change, so a waiting campaign looks again.
    changed: Arc<watch::Sender<u64>>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    pub fn new() -> Self {
        let state = State {
            rev: 1,
            compacted: 0,
            kvs: BTreeMap::new(),
            history: Vec::new(),
            watchers: Vec::new(),
            leases: BTreeMap::new(),
            next_lease: 0x7a00,
            now: Duration::ZERO,
            down: false,
        };
        Self { state: Arc::new(Mutex::new(state)), changed: Arc::new(watch::channel(0).0) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock, or the error of an unreachable etcd.
    fn up(&self) -> Result<MutexGuard<'_, State>> {
        let s = self.lock();
        if s.down {
            bail!(DOWN);
        }
        Ok(s)
    }

    fn poke(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// The current store revision.
    pub fn revision(&self) -> i64 {
        self.lock().rev
    }

    /// Makes every call fail like an unreachable etcd (`true`) and breaks open watches, or
    /// brings the store back (`false`; watches must be opened again).
    pub fn set_down(&self, down: bool) {
        let mut s = self.lock();
        s.down = down;
        if down {
            for w in s.watchers.drain(..) {
                let _ = w.tx.send(WatchMsg::Broken(Some(DOWN.into())));
            }
        }
        drop(s);
        self.poke();
    }

    /// Forgets the history before `rev`: a watch from an older revision reports `Compacted`.
    pub fn compact(&self, rev: i64) {
        let mut s = self.lock();
        s.compacted = s.compacted.max(rev.min(s.rev));
        let c = s.compacted;
        s.history.retain(|(r, _)| *r >= c);
    }

    /// Expires a lease now, as etcd does when its TTL runs out: its keys are deleted (one
    /// revision, Delete events). Works while down (the server side goes on). Returns whether
    /// the lease existed.
    pub fn expire_lease(&self, id: i64) -> bool {
        let existed = self.lock().drop_lease(id);
        self.poke();
        existed
    }

    /// Moves the virtual clock on by `d`; leases not renewed within their TTL expire.
    pub fn advance(&self, d: Duration) {
        let mut s = self.lock();
        s.now += d;
        let now = s.now;
        let due: Vec<i64> = s.leases.iter().filter(|(_, l)| l.expires <= now).map(|(id, _)| *id).collect();
        for id in due {
            s.drop_lease(id);
        }
        drop(s);
        self.poke();
    }

    /// The ids of the leases that exist.
    pub fn leases(&self) -> Vec<i64> {
        self.lock().leases.keys().copied().collect()
    }

    fn write(&self, ops: Vec<Op>) -> Result<()> {
        self.up()?.apply(ops)?;
        self.poke();
        Ok(())
    }
}

fn holds(o: Ordering, op: CmpOp) -> bool {
    match op {
        CmpOp::Equal => o == Ordering::Equal,
        CmpOp::NotEqual => o != Ordering::Equal,
        CmpOp::Less => o == Ordering::Less,
        CmpOp::Greater => o == Ordering::Greater,
    }
}

fn raw(key: &str, e: &Entry) -> RawRecord {
    RawRecord {
        key: key.to_string(),
        value: e.value.clone(),
        create_revision: e.create_revision,
        mod_revision: e.mod_revision,
    }
}

impl State {
    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
        self.kvs.range(prefix.to_string()..).take_while(move |(k, _)| k.starts_with(prefix))
    }

    fn compare(&self, c: &Compare) -> bool {
        let entries: Vec<Option<&Entry>> = if c.prefix {
            let v: Vec<_> = self.under(&c.key).map(|(_, e)| Some(e)).collect();
            if v.is_empty() {
                vec![None]
            } else {
                v
            }
        } else {
            vec![self.kvs.get(&c.key)]
        };
        entries.into_iter().all(|e| match (&c.target, e) {
            // etcd: a value compare on a key that does not exist always fails.
            (Target::Value(_), None) => false,
            (Target::Value(v), Some(e)) => holds(e.value.as_slice().cmp(v.as_slice()), c.op),
            (Target::CreateRevision(r), e) => holds(e.map_or(0, |e| e.create_revision).cmp(r), c.op),
            (Target::ModRevision(r), e) => holds(e.map_or(0, |e| e.mod_revision).cmp(r), c.op),
        })
    }

    /// Applies `ops` at one new revision (none when nothing changes) and tells the watchers.
    fn apply(&mut self, ops: Vec<Op>) -> Result<()> {
        for op in &ops {
            if let Op::Put { lease, .. } = op {
                if *lease != 0 && !self.leases.contains_key(lease) {
                    bail!("etcdserver: requested lease not found");
                }
            }
        }
        let rev = self.rev + 1;
        let mut events = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let create_revision = match self.kvs.get(&key) {
                        Some(old) => {
                            let (old_lease, created) = (old.lease, old.create_revision);
                            if let Some(l) = self.leases.get_mut(&old_lease) {
                                l.keys.remove(&key);
                            }
                            created
                        }
                        None => rev,
                    };
                    if let Some(l) = self.leases.get_mut(&lease) {
                        l.keys.insert(key.clone());
                    }
                    let e = Entry { value, create_revision, mod_revision: rev, lease };
                    events.push(WatchEvent { kind: EventKind::Put, kv: raw(&key, &e) });
                    self.kvs.insert(key, e);
                }
                Op::Delete { key } => {
                    if let Some(old) = self.kvs.remove(&key) {
                        if let Some(l) = self.leases.get_mut(&old.lease) {
                            l.keys.remove(&key);
                        }
                        let kv = RawRecord { key, value: vec![], create_revision: 0, mod_revision: rev };
                        events.push(WatchEvent { kind: EventKind::Delete, kv });
                    }
                }
            }
        }
        if events.is_empty() {
            return Ok(());
        }
        self.rev = rev;
        self.watchers.retain(|w| {
            let mine: Vec<WatchEvent> = events.iter().filter(|e| e.kv.key.starts_with(&w.prefix)).cloned().collect();
            rev < w.min_rev || mine.is_empty() || w.tx.send(WatchMsg::Events(mine)).is_ok()
        });
        self.history.push((rev, events));
        Ok(())
    }

    /// Removes a lease and deletes its keys. Returns whether it existed.
    fn drop_lease(&mut self, id: i64) -> bool {
        let Some(l) = self.leases.remove(&id) else { return false };
        let ops = l.keys.iter().map(|k| Op::delete(k)).collect();
        // Deletes need no lease, so this cannot fail.
        let _ = self.apply(ops);
        true
    }

    /// The oldest candidate of election `name`.
    fn leader(&self, name: &str) -> Option<RawRecord> {
        let prefix = format!("{name}/");
        self.under(&prefix).min_by_key(|(_, e)| e.create_revision).map(|(k, e)| raw(k, e))
    }
}

impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<RawRecord>> {
        let s = self.up().with_context(|| format!("reading {key}"))?;
        Ok(s.kvs.get(key).map(|e| raw(key, e)))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<RawRecord>, i64)> {
        let s = self.up().with_context(|| format!("listing {prefix}"))?;
        Ok((s.under(prefix).map(|(k, e)| raw(k, e)).collect(), s.rev))
    }

    async fn count(&self, prefix: &str) -> Result<(i64, i64)> {
        let s = self.up()?;
        Ok((s.under(prefix).count() as i64, s.rev))
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<Watch> {
        let mut s = self.up().with_context(|| format!("watching {prefix}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        if from_revision > 0 && from_revision < s.compacted {
            let reason = format!("required revision {from_revision} has been compacted");
            let _ = tx.send(WatchMsg::Compacted { compact_revision: s.compacted, reason });
            return Ok(Watch::mem(rx));
        }
        let min_rev = if from_revision > 0 { from_revision } else { s.rev + 1 };
        for (rev, events) in &s.history {
            let mine: Vec<WatchEvent> = events.iter().filter(|e| e.kv.key.starts_with(prefix)).cloned().collect();
            if *rev >= min_rev && !mine.is_empty() {
                let _ = tx.send(WatchMsg::Events(mine));
            }
        }
        s.watchers.push(Watcher { prefix: prefix.to_string(), min_rev, tx });
        Ok(Watch::mem(rx))
    }

    async fn txn(&self, compares: Vec<Compare>, then: Vec<Op>, otherwise: Vec<Op>) -> Result<bool> {
        let mut s = self.up()?;
        let ok = compares.iter().all(|c| s.compare(c));
        s.apply(if ok { then } else { otherwise })?;
        drop(s);
        self.poke();
        Ok(ok)
    }

    async fn put(&self, key: &str, value: impl Into<Vec<u8>> + Send, lease: i64) -> Result<()> {
        self.write(vec![Op::put(key, value, lease)]).with_context(|| format!("writing {key}"))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut s = self.up().with_context(|| format!("deleting {key}"))?;
        let existed = s.kvs.contains_key(key);
        s.apply(vec![Op::delete(key)])?;
        drop(s);
        self.poke();
        Ok(existed)
    }

    async fn grant(&self, ttl: Duration) -> Result<i64> {
        let mut s = self.up().context("granting an etcd lease")?;
        let id = s.next_lease;
        s.next_lease += 1;
        let ttl = Duration::from_secs(ttl.as_secs());
        let expires = s.now + ttl;
        s.leases.insert(id, Lease { ttl, expires, keys: BTreeSet::new() });
        Ok(id)
    }

    async fn keep_alive_once(&self, lease: i64) -> Result<bool> {
        let mut s = self.up().context("renewing lease")?;
        let now = s.now;
        Ok(match s.leases.get_mut(&lease) {
            Some(l) => {
                l.expires = now + l.ttl;
                true
            }
            None => false,
        })
    }

    async fn revoke(&self, lease: i64) -> Result<()> {
        self.up().context("revoking lease")?.drop_lease(lease);
        self.poke();
        Ok(())
    }

    async fn campaign(&self, name: &str, lease: i64, value: impl Into<Vec<u8>> + Send) -> Result<Leadership> {
        let key = format!("{name}/{lease:x}");
        let value = value.into();
        {
            let mut s = self.up().with_context(|| format!("campaigning in {name}"))?;
            if !s.kvs.contains_key(&key) {
                s.apply(vec![Op::put(&key, value, lease)]).with_context(|| format!("campaigning in {name}"))?;
            }
        }
        self.poke();
        loop {
            let mut changed = self.changed.subscribe();
            {
                let s = self.up().with_context(|| format!("campaigning in {name}"))?;
                let own = s.kvs.get(&key).ok_or_else(|| anyhow!("campaigning in {name}: the candidate key is gone"))?;
                if s.leader(name).is_some_and(|l| l.key == key) {
                    return Ok(Leadership { name: name.to_string(), key, rev: own.create_revision, lease });
                }
            }
            changed.changed().await.context("the in-memory store is gone")?;
        }
    }

    async fn resign(&self, l: &Leadership) -> Result<()> {
        let mut s = self.up().with_context(|| format!("resigning from {}", l.name))?;
        if s.kvs.get(&l.key).is_some_and(|e| e.create_revision == l.rev) {
            s.apply(vec![Op::delete(&l.key)])?;
        }
        drop(s);
        self.poke();
        Ok(())
    }

    async fn leader(&self, name: &str) -> Result<Option<RawRecord>> {
        let s = self.up().with_context(|| format!("reading the leader of {name}"))?;
        Ok(s.leader(name))
    }
}

#[cfg(test)]
mod tests;
