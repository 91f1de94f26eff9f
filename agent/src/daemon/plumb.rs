//! Local plumbing of a node that holds its subnet: the bridge and its gateway address, the
//! backends' devices, the firewall rules and the pods (from agent.toml and the state dir).

use super::{decide, ops, Ctx, Node};
use crate::firewall::Runner;
use crate::kernel::Kernel;
use crate::pods::{self, AttachRequest, PodNet};
use crate::state::{PodRecord, PodSource};
use anyhow::{anyhow, Context, Result};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::IpAddr;
use tracing::{info, warn};
use weft_config::api::{PodAddr, PodInfo};
use weft_config::subnet::{self, Family, PerFamily};
use weft_store::Store;

impl<K: Kernel, S: Store> Node<K, S> {
    /// IPv6 forwarding (with an IPv6 pool), bridge, gateway addresses, firewall and pods.
    pub(super) async fn plumb<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) -> Result<()> {
        let nl = &ctx.nl;
        if self.subnets.get(Family::V6).is_some() {
            ctx.host
                .enable_ipv6_forwarding(&self.underlay.name)
                .with_context(|| format!("turning on IPv6 forwarding (accept_ra = 2 on {})", self.underlay.name))?;
        }
        self.bridge_index = nl.ensure_bridge(&ctx.cfg.bridge.name, self.mtu).await?;
        // The gateway of every family the node holds a subnet of (IPv4 first).
        let current = nl.addrs(self.bridge_index).await?;
        for (_, subnet) in self.subnets.iter() {
            let plan = decide::bridge(*subnet, &current)?;
            for a in plan.stale {
                info!(addr = %a, "removing a stale bridge address");
                nl.del_addr(self.bridge_index, a).await?;
            }
            nl.add_addr(self.bridge_index, plan.gateway).await?;
        }
        let node = self.node_view(ctx).await?;
        self.drivers.ensure(nl, &node).await?;
        self.apply_firewall(ctx);
        self.ensure_docker_veths(ctx).await;
        self.ensure_pods(ctx).await
    }

    /// The firewall rules of every pool the node holds a subnet of (one spec per family,
    /// IPv4 first; a failing family does not keep the other's from being repaired).
    pub(super) fn apply_firewall<R: Runner>(&self, ctx: &Ctx<K, S, R>) {
        let policy = self.forward.clone().unwrap_or_else(|| self.drivers.default_forward());
        for (cluster, subnet) in self.leases() {
            if let Err(e) = ctx.firewall.ensure(cluster, subnet, &policy) {
                warn!(error = %format!("{e:#}"), "firewall rules");
                ctx.set_status(|s| {
                    s.reconcile_errors += 1;
                    s.last_error = Some(format!("{e:#}"));
                });
            }
        }
    }

    /// Makes every pod of the config and of the state dir exist; forgets config pods that are no
    /// longer declared.
    async fn ensure_pods<R: Runner>(&mut self, ctx: &Ctx<K, S, R>) -> Result<()> {
        let (cfg, nl, subnets) = (&ctx.cfg, &ctx.nl, self.subnets);
        let mut known = if self.pods.is_empty() { ctx.state.load_pods()? } else { self.pods.clone() };
        let declared: BTreeSet<&str> = cfg.pods.iter().map(|p| p.name.as_str()).collect();
        let mut result = Vec::new();
        for gone in known.iter().filter(|p| p.source == PodSource::Config && !declared.contains(p.name.as_str())) {
            info!(pod = %gone.name, "pod no longer in agent.toml; removing it");
            if let Err(e) = pods::detach(nl, gone, gone.owns_netns).await {
                warn!(pod = %gone.name, error = %format!("{e:#}"), "removing pod");
            }
        }
        known.retain(|p| p.source != PodSource::Config || declared.contains(p.name.as_str()));
        let mut wanted: Vec<(String, String, String, PodSource)> =
            cfg.pods.iter().map(|p| (p.name.clone(), p.netns.clone(), p.ifname.clone(), PodSource::Config)).collect();
        for p in &known {
            if p.source != PodSource::Config && !declared.contains(p.name.as_str()) && !ops::cni_pod_gone(p) {
                wanted.push((p.name.clone(), p.netns.clone(), p.ifname.clone(), p.source));
            }
        }
        let mut errors = Vec::new();
        for (name, netns, ifname, source) in wanted {
            let prev = known.iter().find(|p| p.name == name);
            let used: BTreeSet<IpAddr> = known
                .iter()
                .filter(|p| p.name != name)
                .flat_map(PodRecord::ips)
                .chain(result.iter().flat_map(PodRecord::ips))
                .chain(self.docker.used())
                .collect();
            let req = AttachRequest {
                name: &name,
                netns: &netns,
                ifname: &ifname,
                source,
                remembered: prev.map(|p| p.addrs),
                owns_netns: prev.is_some_and(|p| p.owns_netns),
            };
            let net = PodNet { nl, bridge_index: self.bridge_index, subnets, mtu: self.mtu };
            match pods::attach(&net, &req, &used).await {
                Ok(rec) => {
                    for (family, new) in rec.addrs.iter() {
                        let old = prev.and_then(|p| p.ip(family));
                        if old.is_some_and(|o| o != *new) {
                            warn!(pod = %name, old = ?old, new = %new, "pod re-addressed");
                        }
                    }
                    result.push(rec);
                }
                Err(e) => {
                    errors.push(format!("pod {name}: {e:#}"));
                    if let Some(p) = prev {
                        result.push(p.clone());
                    }
                }
            }
        }
        self.pods = result;
        ctx.state.save_pods(&self.pods)?;
        self.publish_pods(ctx);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(errors.join("; ")))
        }
    }

    pub(super) fn pod_info(&self, p: &PodRecord) -> PodInfo {
        pod_info(p, &self.subnets)
    }

    pub(super) fn publish_pods<R: Runner>(&self, ctx: &Ctx<K, S, R>) {
        let infos: Vec<PodInfo> = self.all_pods().iter().map(|p| self.pod_info(p)).collect();
        ctx.set_status(|s| s.pods = infos);
    }
}

/// A pod as the API shows it: each of its addresses with the prefix length and gateway of the
/// node's subnet of that family (an address of a family the node holds no subnet of is left out).
fn pod_info(p: &PodRecord, subnets: &PerFamily<IpNet>) -> PodInfo {
    let mut info = PodInfo::new(
        p.name.clone(),
        p.netns.clone(),
        p.ifname.clone(),
        p.host_veth.clone(),
        p.source.as_str().to_string(),
    );
    for (family, ip) in p.addrs.iter() {
        if let Some(subnet) = subnets.get(family) {
            info.set_addr(PodAddr { ip: *ip, prefix_len: subnet.prefix_len(), gateway: subnet::gateway(*subnet) });
        }
    }
    info
}
