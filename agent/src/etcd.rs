//! etcd effects: connecting (with TLS when configured), reading the network config, listing and
//! watching subnet records, claiming a subnet in a transaction, and the leases behind records
//! and heartbeats.

use anyhow::{anyhow, Context, Result};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions, TlsOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use weft_config::agent::EtcdConfig;
use weft_config::peers::RawRecord;

/// Index of the endpoint the last successful [`connect`] used (`usize::MAX`: none yet).
static LAST_GOOD: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The order in which to try `n` endpoints: after the one used last (so a reconnect after a
/// failure tries the others first), or from an offset taken from the pid (so the agents of a
/// cluster spread over the members).
fn try_order(n: usize, last: usize, pid: u32) -> Vec<usize> {
    let start = if last == usize::MAX { pid as usize } else { last + 1 };
    (0..n).map(|k| (start + k) % n.max(1)).collect()
}

/// Connects to one endpoint at a time and keeps the first that answers a linearizable read (so
/// it is a member of the quorum). etcd-client's balanced channel over several endpoints fails
/// requests routed to a dead member (etcdv3/etcd-client#39), so the agent never uses one: it
/// pins one member and, when that breaks, the daemon connects afresh here.
pub async fn connect(cfg: &EtcdConfig) -> Result<Client> {
    let order = try_order(cfg.endpoints.len(), LAST_GOOD.load(Ordering::Relaxed), std::process::id());
    let mut errors = Vec::new();
    for k in order {
        let ep = &cfg.endpoints[k];
        match connect_one(cfg, ep).await {
            Ok(c) => {
                LAST_GOOD.store(k, Ordering::Relaxed);
                return Ok(c);
            }
            Err(e) => errors.push(format!("{ep}: {e:#}")),
        }
    }
    Err(anyhow!("no etcd endpoint answered: {}", errors.join("; ")))
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

/// Value and revisions of one key, or `None`.
pub async fn get(client: &mut Client, key: &str) -> Result<Option<(Vec<u8>, i64)>> {
    let resp = client.get(key, None).await.with_context(|| format!("reading {key}"))?;
    Ok(resp.kvs().first().map(|kv| (kv.value().to_vec(), kv.mod_revision())))
}

/// All keys under `prefix`, and the store revision they were read at.
pub async fn list(client: &mut Client, prefix: &str) -> Result<(Vec<RawRecord>, i64)> {
    let resp =
        client.get(prefix, Some(GetOptions::new().with_prefix())).await.with_context(|| format!("listing {prefix}"))?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let records = resp
        .kvs()
        .iter()
        .map(|kv| RawRecord {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
        .collect();
    Ok((records, rev))
}

pub async fn watch_from(client: &mut Client, prefix: &str, revision: i64) -> Result<WatchStream> {
    client
        .watch(prefix, Some(WatchOptions::new().with_prefix().with_start_revision(revision)))
        .await
        .with_context(|| format!("watching {prefix}"))
}

/// Puts `value` at `key` only if the key does not exist. Returns false on conflict.
pub async fn create(client: &mut Client, key: &str, value: String, lease: i64) -> Result<bool> {
    let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
        key,
        value,
        Some(PutOptions::new().with_lease(lease)),
    )]);
    Ok(client.txn(txn).await.with_context(|| format!("claiming {key}"))?.succeeded())
}

/// Puts `value` at `key` only if it is still at `mod_revision`. Returns false on conflict.
pub async fn replace(client: &mut Client, key: &str, value: String, lease: i64, mod_revision: i64) -> Result<bool> {
    let txn = Txn::new().when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)]).and_then([TxnOp::put(
        key,
        value,
        Some(PutOptions::new().with_lease(lease)),
    )]);
    Ok(client.txn(txn).await.with_context(|| format!("updating {key}"))?.succeeded())
}

/// Deletes `key` only if its value still equals `value` (never another node's newer record).
pub async fn delete_if(client: &mut Client, key: &str, value: Vec<u8>) -> Result<bool> {
    let txn = Txn::new().when([Compare::value(key, CompareOp::Equal, value)]).and_then([TxnOp::delete(key, None)]);
    Ok(client.txn(txn).await.with_context(|| format!("deleting {key}"))?.succeeded())
}

pub async fn put(client: &mut Client, key: &str, value: String, lease: i64) -> Result<()> {
    client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
        .with_context(|| format!("writing {key}"))?;
    Ok(())
}

pub async fn grant(client: &mut Client, ttl: Duration) -> Result<i64> {
    let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    Ok(client.lease_grant(secs, None).await.context("granting an etcd lease")?.id())
}

/// Renews a lease once. Returns false when the lease no longer exists (expired or revoked).
pub async fn renew(client: &mut Client, lease: i64) -> Result<bool> {
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.context("renewing lease")?;
    keeper.keep_alive().await.context("renewing lease")?;
    let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .map_err(|_| anyhow!("timed out renewing lease {lease:x}"))?
        .context("renewing lease")?;
    Ok(resp.is_some_and(|r| r.ttl() > 0))
}

pub async fn revoke(client: &mut Client, lease: i64) -> Result<()> {
    match client.lease_revoke(lease).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("requested lease not found") => Ok(()),
        Err(e) => Err(anyhow!(e).context("revoking lease")),
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
