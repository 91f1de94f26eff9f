//! Applies the drivers' neighbour and FDB entries (a vxlan peer's VTEP MAC and address) on
//! their own devices, diffed by [`crate::entries::plan`] like routes are, and the peers of
//! their WireGuard devices, diffed by [`crate::backend::wireguard::peer_changes`].

use crate::backend::Plan;
use crate::entries::{self, Entry, EntryAction};
use crate::kernel::Kernel;
use anyhow::Result;
use std::fmt::Debug;
use std::future::Future;
use tracing::info;

/// Every device the plan covers brought to its entries: FDB entries first (a neighbour entry
/// is only useful once its MAC has a destination). Returns the errors, one per failed change.
pub async fn sync<K: Kernel>(nl: &K, plan: &Plan) -> Vec<String> {
    let mut errors = Vec::new();
    for &link in &plan.entry_links {
        let fdb: Vec<_> = plan.fdb.iter().filter(|f| f.ifindex == link).cloned().collect();
        match nl.fdb(link).await {
            Ok(listed) => apply(nl, "fdb entry", entries::plan(&fdb, &listed), &mut errors).await,
            Err(e) => errors.push(format!("listing fdb entries of link #{link}: {e:#}")),
        }
        let neighbours: Vec<_> = plan.neighbours.iter().filter(|n| n.ifindex == link).cloned().collect();
        match nl.neighbours(link).await {
            Ok(listed) => apply(nl, "neighbour", entries::plan(&neighbours, &listed), &mut errors).await,
            Err(e) => errors.push(format!("listing neighbours of link #{link}: {e:#}")),
        }
    }
    errors
}

/// Every WireGuard device the plan covers brought to its peers: each peer not wanted removed,
/// each missing or different one set; peers as wanted untouched. Returns the errors.
pub async fn sync_wireguard<K: Kernel>(nl: &K, plan: &Plan) -> Vec<String> {
    let mut errors = Vec::new();
    for dev in &plan.wireguard {
        let current = match nl.wireguard(dev.link).await {
            Ok(d) => d.peers,
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        };
        for change in crate::backend::wireguard::peer_changes(&dev.peers, &current) {
            info!(change = ?change, "wireguard peer");
            if let Err(e) = nl.set_wireguard(dev.link, &change).await {
                errors.push(format!("wireguard peer: {e:#}"));
            }
        }
    }
    errors
}

/// How one kind of entry is changed in the kernel.
trait Table<K: Kernel>: Entry + Send + Sync {
    fn add(&self, nl: &K) -> impl Future<Output = Result<()>> + Send;
    fn replace(&self, nl: &K) -> impl Future<Output = Result<()>> + Send;
    fn del(&self, nl: &K) -> impl Future<Output = Result<()>> + Send;
    fn claim(&self, nl: &K) -> impl Future<Output = Result<()>> + Send;
}

impl<K: Kernel> Table<K> for crate::kernel::Fdb {
    fn add(&self, nl: &K) -> impl Future<Output = Result<()>> + Send {
        nl.add_fdb(self)
    }
    fn replace(&self, nl: &K) -> impl Future<Output = Result<()>> + Send {
        nl.replace_fdb(self)
    }
    fn del(&self, nl: &K) -> impl Future<Output = Result<()>> + Send {
        nl.del_fdb(self.ifindex, self.mac)
    }
    fn claim(&self, nl: &K) -> impl Future<Output = Result<()>> + Send {
        nl.claim_fdb(self)
    }
}

impl<K: Kernel> Table<K> for crate::kernel::Neighbour {
    fn add(&self, nl: &K) -> impl Future<Output = Result<()>> + Send {
        nl.add_neighbour(self)
    }
    fn replace(&self, nl: &K) -> impl Future<Output = Result<()>> + Send {
        nl.replace_neighbour(self)
    }
    fn del(&self, nl: &K) -> impl Future<Output = Result<()>> + Send {
        nl.del_neighbour(self.ifindex, self.ip)
    }
    fn claim(&self, nl: &K) -> impl Future<Output = Result<()>> + Send {
        nl.claim_neighbour(self)
    }
}

async fn apply<K: Kernel, T: Table<K> + Debug>(
    nl: &K,
    what: &str,
    actions: Vec<EntryAction<T>>,
    errors: &mut Vec<String>,
) {
    for a in &actions {
        info!(action = ?a, "{what}");
        let r = match a {
            EntryAction::Add(e) => e.add(nl).await,
            EntryAction::Replace(e) => e.replace(nl).await,
            EntryAction::Del(e) => e.del(nl).await,
            EntryAction::Claim(e) => e.claim(nl).await,
        };
        if let Err(e) = r {
            errors.push(format!("{what}: {e:#}"));
        }
    }
}
