//! weft-store: the etcd layer of the agent and of weftctl (and, later, the controller). One
//! [`Store`] trait says what weft does with etcd: read and list keys, watch a prefix from a
//! revision, transactions with compares, leases, and leader election. [`EtcdStore`] is the real
//! thing over etcd-client; [`MemStore`] is an in-memory fake with etcd's semantics (revisions,
//! watches, compaction, lease expiry on a virtual clock, failure injection) for unit tests.
//!
//! Errors are `anyhow` errors carrying the key they concern ("reading KEY", "listing PREFIX"),
//! except [`Store::count`] and [`Store::txn`], whose purpose only the caller can name.

mod etcd;
mod mem;
pub mod opts;
mod watch;

pub use etcd::{connect_client, EtcdStore};
pub use mem::MemStore;
pub use opts::EtcdOpts;
pub use watch::{EventKind, Watch, WatchEvent, WatchMsg};
pub use weft_config::peers::RawRecord;

use anyhow::Result;
use std::future::Future;
use std::time::Duration;

/// How a [`Compare`] relates the stored field to the given one (stored `op` given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// The field a [`Compare`] looks at, with the value to compare it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Value(Vec<u8>),
    /// 0 for a key that does not exist.
    CreateRevision(i64),
    /// 0 for a key that does not exist.
    ModRevision(i64),
}

/// One condition of a transaction. With `prefix`, it must hold for every key under `key`; with
/// no key there, a revision compare sees 0 and a value compare fails (as etcd does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub prefix: bool,
    pub op: CmpOp,
    pub target: Target,
}

impl Compare {
    /// The key's value equals `value` (fails when the key does not exist).
    pub fn value_is(key: &str, value: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into(), prefix: false, op: CmpOp::Equal, target: Target::Value(value.into()) }
    }

    /// The key was created at `rev` (0: the key does not exist).
    pub fn created_at(key: &str, rev: i64) -> Self {
        Self { key: key.into(), prefix: false, op: CmpOp::Equal, target: Target::CreateRevision(rev) }
    }

    /// The key was last written at `rev` (0: the key does not exist).
    pub fn modified_at(key: &str, rev: i64) -> Self {
        Self { key: key.into(), prefix: false, op: CmpOp::Equal, target: Target::ModRevision(rev) }
    }

    /// The condition holds for every key under `self.key` instead of that one key.
    pub fn with_prefix(mut self) -> Self {
        self.prefix = true;
        self
    }
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `lease` 0: no lease.
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: String,
    },
}

impl Op {
    pub fn put(key: &str, value: impl Into<Vec<u8>>, lease: i64) -> Self {
        Op::Put { key: key.into(), value: value.into(), lease }
    }

    pub fn delete(key: &str) -> Self {
        Op::Delete { key: key.into() }
    }
}

/// Leadership won by [`Store::campaign`]: the election key (`name/<lease in hex>`), its
/// create revision (a transaction can compare on it to act only while leader) and its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub name: String,
    pub key: String,
    pub rev: i64,
    pub lease: i64,
}

/// What weft does with etcd. Every future is `Send`, so a daemon generic over `S: Store` can be
/// spawned; implementations are cheap to clone and share one connection.
pub trait Store: Clone + Send + Sync + 'static {
    /// The key's record (value and revisions), or `None`.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<RawRecord>>> + Send;

    /// Every key under `prefix`, sorted by key, and the store revision they were read at.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<(Vec<RawRecord>, i64)>> + Send;

    /// How many keys are under `prefix`, and the store revision (a cheap linearizable read).
    fn count(&self, prefix: &str) -> impl Future<Output = Result<(i64, i64)>> + Send;

    /// Changes under `prefix` from `from_revision` on (0: from now).
    fn watch(&self, prefix: &str, from_revision: i64) -> impl Future<Output = Result<Watch>> + Send;

    /// Applies `then` if every compare holds, else `otherwise`, atomically at one revision.
    /// Returns whether the compares held.
    fn txn(
        &self,
        compares: Vec<Compare>,
        then: Vec<Op>,
        otherwise: Vec<Op>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Writes `key` unconditionally (`lease` 0: no lease).
    fn put(&self, key: &str, value: impl Into<Vec<u8>> + Send, lease: i64) -> impl Future<Output = Result<()>> + Send;

    /// Deletes `key` unconditionally. Returns whether it existed.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool>> + Send;

    /// A lease of `ttl` (whole seconds).
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<i64>> + Send;

    /// Renews a lease once. Returns false when the lease no longer exists (expired or revoked).
    fn keep_alive_once(&self, lease: i64) -> impl Future<Output = Result<bool>> + Send;

    /// Revokes a lease and deletes its keys; a lease that is already gone is no error.
    fn revoke(&self, lease: i64) -> impl Future<Output = Result<()>> + Send;

    /// Waits until this candidate (`lease` keeps it alive) leads election `name`; `value` is
    /// what [`Store::leader`] reports while it leads.
    fn campaign(
        &self,
        name: &str,
        lease: i64,
        value: impl Into<Vec<u8>> + Send,
    ) -> impl Future<Output = Result<Leadership>> + Send;

    /// Gives leadership up (deletes the election key if it is still this leadership's).
    fn resign(&self, leadership: &Leadership) -> impl Future<Output = Result<()>> + Send;

    /// The current leader's election key and value, or `None` when nobody leads.
    fn leader(&self, name: &str) -> impl Future<Output = Result<Option<RawRecord>>> + Send;

    /// Puts `value` at `key` only if the key does not exist. Returns false on conflict.
    fn create(
        &self,
        key: &str,
        value: impl Into<Vec<u8>> + Send,
        lease: i64,
    ) -> impl Future<Output = Result<bool>> + Send {
        let (key, value) = (key.to_string(), value.into());
        async move {
            let put = Op::Put { key: key.clone(), value, lease };
            let r = self.txn(vec![Compare::created_at(&key, 0)], vec![put], vec![]).await;
            anyhow::Context::with_context(r, || format!("claiming {key}"))
        }
    }

    /// Puts `value` at `key` only if it is still at `mod_revision`. Returns false on conflict.
    fn replace(
        &self,
        key: &str,
        value: impl Into<Vec<u8>> + Send,
        lease: i64,
        mod_revision: i64,
    ) -> impl Future<Output = Result<bool>> + Send {
        let (key, value) = (key.to_string(), value.into());
        async move {
            let put = Op::Put { key: key.clone(), value, lease };
            let r = self.txn(vec![Compare::modified_at(&key, mod_revision)], vec![put], vec![]).await;
            anyhow::Context::with_context(r, || format!("updating {key}"))
        }
    }

    /// Deletes `key` only if its value still equals `value` (never another node's newer record).
    fn delete_if(&self, key: &str, value: impl Into<Vec<u8>> + Send) -> impl Future<Output = Result<bool>> + Send {
        let (key, value) = (key.to_string(), value.into());
        async move {
            let r = self.txn(vec![Compare::value_is(&key, value)], vec![Op::delete(&key)], vec![]).await;
            anyhow::Context::with_context(r, || format!("deleting {key}"))
        }
    }
}
