//! The daemon's operational side, kept apart from the lifecycle in `mod.rs`: health marks
//! (what /healthz and /readyz judge), the readiness notification to systemd, the reachability
//! probe task, and pods whose namespace arrives as a path (the CNI plugin's ADD).

use super::{decide, now_secs, Ctx, Node};
use crate::firewall::Runner;
use crate::kernel::Kernel;
use crate::pods::{self, AttachRequest, PodNet};
use crate::state::{PodRecord, PodSource};
use anyhow::{bail, Context, Result};
use std::path::Path;
use tracing::{info, warn};
use weft_config::api::{Health, Response};
use weft_store::Store;

impl<K: Kernel, S: Store, R: Runner> Ctx<K, S, R> {
    /// Records progress (`f` gets the health marks and "now").
    pub(super) fn mark(&self, f: impl FnOnce(&mut Health, u64)) {
        let now = now_secs();
        self.set_status(|s| f(&mut s.health, now));
    }

    /// etcd answered just now.
    pub(super) fn mark_etcd_ok(&self) {
        self.mark(|h, now| h.etcd_ok = now);
    }
}

/// A pod from a CNI ADD that comes from a dead namespace: its bind mount under /run/netns is
/// gone (a reboot, or someone unmounted it). Such a pod is forgotten, never re-created.
pub(super) fn cni_pod_gone(p: &PodRecord) -> bool {
    let gone = p.source == PodSource::Cni && crate::netns::open(&p.netns).is_err();
    if gone {
        info!(pod = %p.name, netns = %p.netns, "CNI pod's namespace is gone; forgetting the pod");
    }
    gone
}

impl<K: Kernel, S: Store> Node<K, S> {
    /// The heartbeat, with its progress marks: the loop went round, and on success the
    /// heartbeat is fresh and etcd answered.
    pub(super) async fn beat<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) -> Result<()> {
        ctx.mark(|h, now| h.loop_tick = now);
        self.heartbeat(ctx).await?;
        ctx.mark(|h, now| (h.heartbeat, h.etcd_ok) = (now, now));
        Ok(())
    }

    /// Once, when the node is set up: READY=1 to systemd and the probe task.
    pub(super) fn on_ready<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) {
        ctx.host.ready(&decide::ready_line(&self.subnets, &self.peers));
        if !ctx.cfg.probes.enabled {
            return;
        }
        ctx.host.spawn_probe(self.store.clone(), ctx.status.clone());
    }

    /// `pod_add` with a namespace path: bind-mount it at /run/netns/<netns>, then attach.
    /// Idempotent for the same name, namespace and interface.
    pub(super) async fn pod_add_path<R: Runner>(
        &mut self,
        ctx: &Ctx<K, S, R>,
        name: String,
        netns: Option<String>,
        ifname: Option<String>,
        path: String,
    ) -> Result<Response> {
        let (netns, ifname) = decide::pod_names(&name, netns, ifname)?;
        crate::netns_path::check_path(&path).map_err(anyhow::Error::msg)?;
        let subnets = self.subnets;
        if let Some(p) = self.pods.iter().find(|p| p.name == name) {
            let same_ns = crate::netns_path::is_attached(&p.netns, Path::new(&path))
                .with_context(|| format!("opening namespace {path}"))?;
            if p.netns == netns && p.ifname == ifname && same_ns {
                let p = p.clone();
                // Repair anything missing (the ADD may be a retry after a partial failure).
                let used = self.used_addrs(Some(&name));
                let req = AttachRequest {
                    name: &name,
                    netns: &netns,
                    ifname: &ifname,
                    source: PodSource::Cni,
                    remembered: Some(p.addrs),
                    owns_netns: true,
                };
                let net = PodNet { nl: &ctx.nl, bridge_index: self.bridge_index, subnets, mtu: self.mtu };
                let rec = pods::attach(&net, &req, &used).await?;
                if rec != p {
                    if let Some(slot) = self.pods.iter_mut().find(|q| q.name == name) {
                        *slot = rec.clone();
                    }
                    ctx.state.save_pods(&self.pods)?;
                    self.publish_pods(ctx);
                }
                return Ok(Response::Pod(self.pod_info(&rec)));
            }
            bail!("pod {name} exists with namespace {} and interface {}", p.netns, p.ifname);
        }
        if let Some(p) = self.pods.iter().find(|p| p.netns == netns) {
            bail!("namespace {netns} already belongs to pod {}", p.name);
        }
        let mounted = crate::netns_path::attach(&netns, Path::new(&path))
            .with_context(|| format!("attaching namespace {path} as /run/netns/{netns}"))?;
        let used = self.used_addrs(None);
        let req = AttachRequest {
            name: &name,
            netns: &netns,
            ifname: &ifname,
            source: PodSource::Cni,
            remembered: None,
            owns_netns: true,
        };
        let net = PodNet { nl: &ctx.nl, bridge_index: self.bridge_index, subnets, mtu: self.mtu };
        let rec = match pods::attach(&net, &req, &used).await {
            Ok(r) => r,
            Err(e) => {
                if mounted {
                    if let Err(u) = crate::netns::remove(&netns) {
                        warn!(netns = %netns, error = %u, "undoing the namespace bind mount");
                    }
                }
                return Err(e);
            }
        };
        self.pods.push(rec.clone());
        ctx.state.save_pods(&self.pods)?;
        self.publish_pods(ctx);
        info!(pod = %name, ip = %rec.ips_text(), netns = %path, "CNI pod added");
        Ok(Response::Pod(self.pod_info(&rec)))
    }
}
