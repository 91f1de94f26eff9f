//! [`EtcdStore`]: the [`Store`] over etcd-client. Connecting pins one member at a time (the
//! agent's order after the last good one; weftctl's in the order given), with TLS when
//! configured, and proves the member with a linearizable count-only read.

use crate::opts::{deadline, Detailed, EtcdOpts};
use crate::{CmpOp, Compare, Leadership, Op, RawRecord, Store, Target, Watch};
use anyhow::{anyhow, Context, Result};
use etcd_client::{
    Certificate, Client, CompareOp, ConnectOptions, GetOptions, Identity, LeaderKey, PutOptions, ResignOptions,
    TlsOptions, Txn, TxnOp, WatchOptions,
};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use weft_config::agent::EtcdConfig;

/// Index of the endpoint the last successful [`EtcdStore::connect`] used (`usize::MAX`: none yet).
static LAST_GOOD: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The order in which to try `n` endpoints: after the one used last (so a reconnect after a
/// failure tries the others first), or from an offset taken from the pid (so the agents of a
/// cluster spread over the members).
fn try_order(n: usize, last: usize, pid: u32) -> Vec<usize> {
    let start = if last == usize::MAX { pid as usize } else { last + 1 };
    (0..n).map(|k| (start + k) % n.max(1)).collect()
}

/// etcd through one pinned member. Clones share the connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// weftctl's deadline on every call (on top of the client's own timeouts), with
    /// transport errors spelled out; `None` for the agent, which relies on the client's.
    deadline: Option<Duration>,
}

impl EtcdStore {
    /// The agent's connect: one endpoint at a time, keeping the first that answers a
    /// linearizable read (so it is a member of the quorum). etcd-client's balanced channel over
    /// several endpoints fails requests routed to a dead member (etcdv3/etcd-client#39), so the
    /// agent never uses one: it pins one member and, when that breaks, connects afresh here.
    pub async fn connect(cfg: &EtcdConfig) -> Result<Self> {
        let order = try_order(cfg.endpoints.len(), LAST_GOOD.load(Ordering::Relaxed), std::process::id());
        let mut errors = Vec::new();
        for k in order {
            let ep = &cfg.endpoints[k];
            match connect_one(cfg, ep).await {
                Ok(client) => {
                    LAST_GOOD.store(k, Ordering::Relaxed);
                    return Ok(Self { client, deadline: None });
                }
                Err(e) => errors.push(format!("{ep}: {e:#}")),
            }
        }
        Err(anyhow!("no etcd endpoint answered: {}", errors.join("; ")))
    }

    /// weftctl's connect (see [`connect_client`]); every call then runs under `opts.timeout`.
    pub async fn connect_opts(opts: &EtcdOpts) -> Result<Self> {
        Ok(Self { client: connect_client(opts).await?, deadline: Some(opts.timeout) })
    }

    /// The etcd-client underneath, for what the trait does not cover (member lists, status).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    async fn call<T>(&self, fut: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T> {
        match self.deadline {
            Some(t) => deadline(t, fut).await,
            None => Ok(fut.await?),
        }
    }
}

async fn connect_one(cfg: &EtcdConfig, endpoint: &str) -> Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    if let Some(tls) = &cfg.tls {
        let ca = std::fs::read(&tls.ca_file).with_context(|| format!("reading etcd CA {}", tls.ca_file.display()))?;
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = &tls.identity {
            let c =
                std::fs::read(cert).with_context(|| format!("reading etcd client certificate {}", cert.display()))?;
            let k = std::fs::read(key).with_context(|| format!("reading etcd client key {}", key.display()))?;
            t = t.identity(Identity::from_pem(c, k));
        }
        opts = opts.with_tls(t);
    }
    let mut client = Client::connect([endpoint], Some(opts)).await.context("connecting to etcd")?;
    // connect() is lazy about reachability; a linearizable read proves this member answers and
    // is part of a quorum (a member cut off from the others cannot serve it).
    client
        .get("/weft/", Some(GetOptions::new().with_count_only()))
        .await
        .context("reading from etcd (is the member part of a quorum?)")?;
    Ok(client)
}

/// weftctl's connect: proves the connection with one cheap (linearizable) read, all within the
/// timeout. Endpoints are tried one at a time, in the order given, and the first that answers
/// is kept (see [`EtcdStore::connect`] for why not a balanced channel).
pub async fn connect_client(opts: &EtcdOpts) -> Result<Client> {
    let what = || format!("connecting to etcd at {}", opts.display());
    let mut co = ConnectOptions::new().with_connect_timeout(opts.timeout).with_timeout(opts.timeout);
    if let Some(ca) = &opts.ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading --etcd-ca {}", ca.display()))?;
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(pem));
        if let (Some(cert), Some(key)) = (&opts.cert, &opts.key) {
            let c = std::fs::read(cert).with_context(|| format!("reading --etcd-cert {}", cert.display()))?;
            let k = std::fs::read(key).with_context(|| format!("reading --etcd-key {}", key.display()))?;
            tls = tls.identity(Identity::from_pem(c, k));
        }
        co = co.with_tls(tls);
    }
    let mut errors = Vec::new();
    for ep in &opts.endpoints {
        let attempt = async {
            let mut client = deadline(opts.timeout, Client::connect([ep], Some(co.clone()))).await?;
            deadline(opts.timeout, client.get(weft_config::keys::ROOT, Some(GetOptions::new().with_count_only())))
                .await?;
            anyhow::Ok(client)
        };
        match attempt.await {
            Ok(c) => return Ok(c),
            Err(e) if opts.endpoints.len() == 1 => return Err(e.context(what())),
            Err(e) => errors.push(format!("{ep}: {e:#}")),
        }
    }
    Err(anyhow::anyhow!("{}", errors.join("; ")).context(what()))
}

pub(crate) fn record(kv: &etcd_client::KeyValue) -> RawRecord {
    RawRecord {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

fn compare(c: Compare) -> etcd_client::Compare {
    let op = match c.op {
        CmpOp::Equal => CompareOp::Equal,
        CmpOp::NotEqual => CompareOp::NotEqual,
        CmpOp::Less => CompareOp::Less,
        CmpOp::Greater => CompareOp::Greater,
    };
    let k = c.key.as_str();
    let out = match c.target {
        Target::Value(v) => etcd_client::Compare::value(k, op, v),
        Target::CreateRevision(r) => etcd_client::Compare::create_revision(k, op, r),
        Target::ModRevision(r) => etcd_client::Compare::mod_revision(k, op, r),
    };
    if c.prefix {
        out.with_prefix()
    } else {
        out
    }
}

fn txn_op(op: Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))),
        Op::Delete { key } => TxnOp::delete(key, None),
    }
}

impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<RawRecord>> {
        let mut c = self.client.clone();
        let resp = self.call(c.get(key, None)).await.with_context(|| format!("reading {key}"))?;
        Ok(resp.kvs().first().map(record))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<RawRecord>, i64)> {
        let mut c = self.client.clone();
        let resp = self
            .call(c.get(prefix, Some(GetOptions::new().with_prefix())))
            .await
            .with_context(|| format!("listing {prefix}"))?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok((resp.kvs().iter().map(record).collect(), rev))
    }

    async fn count(&self, prefix: &str) -> Result<(i64, i64)> {
        let mut c = self.client.clone();
        let resp = self.call(c.get(prefix, Some(GetOptions::new().with_prefix().with_count_only()))).await?;
        Ok((resp.count(), resp.header().map_or(0, |h| h.revision())))
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<Watch> {
        let mut c = self.client.clone();
        let mut opts = WatchOptions::new().with_prefix();
        if from_revision > 0 {
            opts = opts.with_start_revision(from_revision);
        }
        let stream = self.call(c.watch(prefix, Some(opts))).await.with_context(|| format!("watching {prefix}"))?;
        Ok(Watch::etcd(stream))
    }

    async fn txn(&self, compares: Vec<Compare>, then: Vec<Op>, otherwise: Vec<Op>) -> Result<bool> {
        let mut c = self.client.clone();
        let txn = Txn::new()
            .when(compares.into_iter().map(compare).collect::<Vec<_>>())
            .and_then(then.into_iter().map(txn_op).collect::<Vec<_>>())
            .or_else(otherwise.into_iter().map(txn_op).collect::<Vec<_>>());
        Ok(self.call(c.txn(txn)).await?.succeeded())
    }

    async fn put(&self, key: &str, value: impl Into<Vec<u8>> + Send, lease: i64) -> Result<()> {
        let mut c = self.client.clone();
        self.call(c.put(key, value, Some(PutOptions::new().with_lease(lease))))
            .await
            .with_context(|| format!("writing {key}"))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut c = self.client.clone();
        let resp = self.call(c.delete(key, None)).await.with_context(|| format!("deleting {key}"))?;
        Ok(resp.deleted() > 0)
    }

    async fn grant(&self, ttl: Duration) -> Result<i64> {
        let mut c = self.client.clone();
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        Ok(self.call(c.lease_grant(secs, None)).await.context("granting an etcd lease")?.id())
    }

    async fn keep_alive_once(&self, lease: i64) -> Result<bool> {
        let mut c = self.client.clone();
        let (mut keeper, mut stream) = self.call(c.lease_keep_alive(lease)).await.context("renewing lease")?;
        keeper.keep_alive().await.context("renewing lease")?;
        let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .map_err(|_| anyhow!("timed out renewing lease {lease:x}"))?
            .context("renewing lease")?;
        Ok(resp.is_some_and(|r| r.ttl() > 0))
    }

    async fn revoke(&self, lease: i64) -> Result<()> {
        let mut c = self.client.clone();
        match self.call(c.lease_revoke(lease)).await {
            Ok(_) => Ok(()),
            Err(e) if format!("{e:#}").contains("requested lease not found") => Ok(()),
            Err(e) => Err(e.context("revoking lease")),
        }
    }

    async fn campaign(&self, name: &str, lease: i64, value: impl Into<Vec<u8>> + Send) -> Result<Leadership> {
        // No deadline: campaigning waits for the current leader to go, however long that takes.
        let mut c = self.client.clone();
        let resp =
            c.campaign(name, value, lease).await.map_err(Detailed).with_context(|| format!("campaigning in {name}"))?;
        let k = resp.leader().with_context(|| format!("campaigning in {name}: etcd named no leader key"))?;
        Ok(Leadership {
            name: String::from_utf8_lossy(k.name()).into_owned(),
            key: String::from_utf8_lossy(k.key()).into_owned(),
            rev: k.rev(),
            lease: k.lease(),
        })
    }

    async fn resign(&self, l: &Leadership) -> Result<()> {
        let mut c = self.client.clone();
        let key =
            LeaderKey::new().with_name(l.name.as_str()).with_key(l.key.as_str()).with_rev(l.rev).with_lease(l.lease);
        self.call(c.resign(Some(ResignOptions::new().with_leader(key))))
            .await
            .with_context(|| format!("resigning from {}", l.name))?;
        Ok(())
    }

    async fn leader(&self, name: &str) -> Result<Option<RawRecord>> {
        let mut c = self.client.clone();
        match self.call(c.leader(name)).await {
            Ok(resp) => Ok(resp.kv().map(record)),
            Err(e) if format!("{e:#}").contains("election: no leader") => Ok(None),
            Err(e) => Err(e.context(format!("reading the leader of {name}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_tried_after_the_last_good_one() {
        assert_eq!(try_order(3, usize::MAX, 7), [1, 2, 0], "first connect: offset by pid");
        assert_eq!(try_order(3, 0, 7), [1, 2, 0], "after member 0: the others first");
        assert_eq!(try_order(3, 2, 7), [0, 1, 2]);
        assert_eq!(try_order(1, 0, 7), [0]);
        assert!(try_order(0, usize::MAX, 7).is_empty());
    }
}
