//! Leaving the network: the running node releases its record, heartbeat and leases, then
//! removes everything weft made on the host; `--leave` without an agent does the same from the
//! state dir ([`leave_offline`]). Teardown goes on past failures and reports them all.

use super::{node_identity, Ctx, Node};
use crate::backend;
use crate::firewall::Runner;
use crate::firewall_glue::NodeFirewall;
use crate::kernel::{Kernel, Netlink};
use crate::pods;
use crate::routes::Action;
use crate::state::{PodRecord, StateDir};
use anyhow::{anyhow, Result};
use ipnet::IpNet;
use std::time::Duration;
use tracing::{info, warn};
use weft_config::subnet::Family;
use weft_config::{AgentConfig, Keys, SubnetRecord};
use weft_store::{EtcdStore, Store};

impl<K: Kernel, S: Store> Node<K, S> {
    /// Releases the subnets (every family's record) and removes everything the agent made.
    /// Goes on past failures.
    pub(super) async fn leave<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) -> Result<()> {
        let mut errors = Vec::new();
        let hb = ctx.keys.node(&ctx.cfg.node_name);
        let c = &self.store;
        for (_, subnet) in self.subnets.iter() {
            let key = ctx.keys.subnet(*subnet);
            if let Err(e) = c.delete_if(&key, self.record_value.clone().into_bytes()).await {
                errors.push(format!("{e:#}"));
            }
        }
        if let Err(e) = c.delete(&hb).await {
            errors.push(format!("{e:#}"));
        }
        for l in [self.subnet_lease, self.heartbeat_lease].into_iter().filter(|l| *l != 0) {
            if let Err(e) = c.revoke(l).await {
                errors.push(format!("{e:#}"));
            }
        }
        let families: Vec<Family> = self.subnets.families().collect();
        if let Some(w) = self.docker.leave_warning() {
            warn!("{w}");
        }
        // Docker's endpoints lose their veths too (owns_netns is false: sandboxes are Docker's).
        let all = self.all_pods();
        errors.extend(teardown_local(&ctx.nl, &ctx.cfg, &all, &ctx.state, &ctx.firewall, &families).await);
        self.pods.clear();
        self.docker = Default::default();
        if errors.is_empty() {
            info!("left the network; everything weft made on this node is removed");
            Ok(())
        } else {
            Err(anyhow!(errors.join("; ")))
        }
    }
}

/// Removes routes, pods, firewall rules (those of `families`, the families the node held
/// subnets of), the bridge and the agent's files. Returns every error.
pub async fn teardown_local<K: Kernel, R: Runner>(
    nl: &K,
    cfg: &AgentConfig,
    pods: &[PodRecord],
    state: &StateDir,
    fw: &NodeFirewall<R>,
    families: &[Family],
) -> Vec<String> {
    let mut errors = Vec::new();
    match nl.weft_routes().await {
        Ok(routes) => {
            for r in routes {
                if let Err(e) = nl.apply(&Action::Del(r)).await {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        Err(e) => errors.push(format!("{e:#}")),
    }
    for p in pods {
        if let Err(e) = pods::detach(nl, p, p.owns_netns).await {
            errors.push(format!("pod {}: {e:#}", p.name));
        }
        if crate::resolv::managed(p) {
            if let Err(e) = crate::resolv::remove(&cfg.paths.netns_etc, &p.netns) {
                errors.push(format!("pod {}: {e:#}", p.name));
            }
        }
    }
    for name in backend::leftover_links::<K>(cfg) {
        match nl.link(&name).await {
            Ok(Some(t)) => {
                if let Err(e) = nl.del_link(t.index).await {
                    errors.push(format!("{e:#}"));
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if let Err(e) = fw.remove(families) {
        errors.push(format!("{e:#}"));
    }
    match nl.link(&cfg.bridge.name).await {
        Ok(Some(b)) => {
            if let Err(e) = nl.del_link(b.index).await {
                errors.push(format!("{e:#}"));
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(format!("{e:#}")),
    }
    for f in [&cfg.paths.subnet_env] {
        if let Err(e) = std::fs::remove_file(f) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("removing {}: {e}", f.display()));
            }
        }
    }
    if let Err(e) = state.remove_all() {
        errors.push(format!("{e:#}"));
    }
    errors
}

/// `--leave` with no agent running: release the records in etcd (if reachable; every family's
/// the state dir remembers) and remove what the state dir says the agent made.
pub async fn leave_offline(cfg: AgentConfig) -> Result<()> {
    let nl = Netlink::open()?;
    let state = StateDir::new(&cfg.paths.state_dir);
    let node_id = node_identity(&cfg)?;
    let keys = Keys::new(&cfg.network);
    let mut pods = state.load_pods().unwrap_or_default();
    // Docker endpoints' veths go too (their sandboxes are Docker's).
    let book = crate::docker::Book::load(&state).unwrap_or_default();
    if let Some(w) = book.leave_warning() {
        warn!("{w}");
    }
    pods.extend(book.pod_records());
    let mut errors = Vec::new();
    let held: Vec<IpNet> = [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|f| state.load_subnet_of(f).ok().flatten())
        .map(|s| s.subnet)
        .collect();
    // The firewall rules of the families held (IPv4's when the state dir remembers none, as
    // before dual-stack).
    let mut families: Vec<Family> = held.iter().map(|s| Family::of_net(*s)).collect();
    if families.is_empty() {
        families.push(Family::V4);
    }
    if !held.is_empty() {
        match tokio::time::timeout(Duration::from_secs(10), EtcdStore::connect(&cfg.etcd)).await {
            Ok(Ok(c)) => {
                for subnet in held {
                    let key = keys.subnet(subnet);
                    if let Ok(Some(rec)) = c.get(&key).await {
                        if SubnetRecord::from_json(&key, &rec.value).is_ok_and(|r| r.node_id == node_id) {
                            if let Err(e) = c.delete_if(&key, rec.value).await {
                                errors.push(format!("{e:#}"));
                            }
                        }
                    }
                }
                let _ = c.delete(&keys.node(&cfg.node_name)).await;
            }
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(_) => errors.push("timed out connecting to etcd; the subnet record stays until evicted".into()),
        }
    }
    let fw = NodeFirewall::new(&cfg);
    errors.extend(teardown_local(&nl, &cfg, &pods, &state, &fw, &families).await);
    if let Some(d) = &cfg.docker {
        // Leaving for good: Docker no longer finds the plugin (a stop keeps its spec file).
        crate::docker::server::remove_files(d, true);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}
