//! Docker plugin calls as the running node answers them: the book's decisions (addresses,
//! endpoints) plus the kernel work (the endpoint's veth on the bridge), saved to the state dir
//! after every change. Calls arrive through the daemon's loop, so they are serialized with
//! the API, the pods and the reconciles, and one allocator serves pods and containers alike.

use super::{Ctx, Node};
use crate::docker::book::{self, Attachment, View};
use crate::docker::protocol::{Call, CreateNetwork};
use crate::firewall::Runner;
use crate::kernel::Kernel;
use crate::state::PodRecord;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use tracing::{info, warn};
use weft_store::Store;

impl<K: Kernel, S: Store> Node<K, S> {
    /// The addresses of weft's own pods, with their names.
    fn pod_addrs(&self) -> BTreeMap<IpAddr, String> {
        self.pods.iter().flat_map(|p| p.ips().map(|a| (a, p.name.clone()))).collect()
    }

    /// Answers one call: the JSON body, or the message of an `{"Err":...}`.
    pub(super) async fn docker_call<R: Runner>(&mut self, ctx: &Ctx<K, S, R>, call: Call) -> Result<Value, String> {
        let before = self.docker.clone();
        // The veth a Join makes, to take back if the Join cannot be remembered.
        let made = match &call {
            Call::Join(j) => Some(book::veth_names(&j.endpoint_id).0),
            _ => None,
        };
        let r = self.docker_inner(ctx, call).await;
        if self.docker != before {
            if let Err(e) = self.docker.save(&ctx.state) {
                // Not remembered means not done: Docker hears of the failure and retries.
                self.docker = before;
                if let Some(host) = made.filter(|_| r.is_ok()) {
                    if let Err(e) = self.delete_veth(ctx, &host).await {
                        warn!(veth = %host, error = %format!("{e:#}"), "docker: removing the veth of a Join not saved");
                    }
                }
                return Err(format!("{e:#}"));
            }
            self.publish_pods(ctx);
        }
        r.map_err(|e| format!("{e:#}"))
    }

    async fn docker_inner<R: Runner>(&mut self, ctx: &Ctx<K, S, R>, call: Call) -> Result<Value> {
        let pods = self.pod_addrs();
        let view = View { subnets: self.subnets, pods: &pods };
        match call {
            Call::RequestPool(req) => {
                let (id, pool) = book::request_pool(&self.subnets, &req)?;
                info!(pool = %id, v6 = req.v6, "docker: pool");
                Ok(json!({"PoolID": id.to_string(), "Pool": pool, "Data": {}}))
            }
            Call::ReleasePool(req) => {
                info!(pool = %req.pool_id, "docker: pool released");
                Ok(json!({}))
            }
            Call::RequestAddress(req) => {
                let addr = self.docker.request_address(&view, &req)?;
                info!(addr = %addr, gateway = req.is_gateway(), "docker: address");
                Ok(json!({"Address": addr.to_string(), "Data": {}}))
            }
            Call::ReleaseAddress(req) => {
                if self.docker.release_address(&req.address)? {
                    info!(addr = %req.address, "docker: address released");
                }
                Ok(json!({}))
            }
            Call::CreateNetwork(req) => {
                check_network(&self.subnets, &req)?;
                let old = self.docker.network().map(str::to_string);
                self.docker.create_network(&req.network_id)?;
                if let Some(old) = old.filter(|o| *o != req.network_id) {
                    // Its later endpoints are refused (Docker may have dropped it unheard).
                    warn!(network = %req.network_id, old = %old, "docker: a weft network replaces one without endpoints");
                }
                info!(network = %req.network_id, "docker: network created");
                Ok(json!({}))
            }
            Call::DeleteNetwork(req) => {
                self.docker.delete_network(&req.network_id);
                info!(network = %req.network_id, "docker: network deleted");
                Ok(json!({}))
            }
            Call::CreateEndpoint(req) => {
                if self.docker.create_endpoint(&view, &req)? {
                    info!(endpoint = %req.endpoint_id, "docker: endpoint created");
                }
                // Docker gave the addresses, so the answer names none. Without a MAC of its own
                // (`--mac-address`) the container gets one derived from its address, as Docker's
                // bridge driver does: a container restarted with the same address keeps it, and
                // the neighbour entries of the node and of other containers stay right (a random
                // MAC leaves them stale for tens of seconds).
                let given = req.interface.as_ref().is_some_and(|i| !i.mac_address.is_empty());
                match self.docker.endpoint(&req.endpoint_id).ok().and_then(|e| book::mac_for(&e.addrs)) {
                    Some(mac) if !given => Ok(json!({"Interface": {"MacAddress": mac}})),
                    _ => Ok(json!({})),
                }
            }
            Call::DeleteEndpoint(req) => {
                if let Some(ep) = self.docker.endpoints.get(&req.endpoint_id).cloned() {
                    if let Attachment::Joined { host_veth, .. } = &ep.attachment {
                        self.delete_veth(ctx, host_veth).await?;
                    }
                    self.docker.delete_endpoint(&req.endpoint_id);
                    info!(endpoint = %req.endpoint_id, "docker: endpoint deleted");
                }
                Ok(json!({}))
            }
            Call::Join(req) => {
                book::check_id(&req.endpoint_id)?;
                let (v4, v6) = self.docker.gateways(&req.endpoint_id, &self.subnets)?;
                let (host, peer) = book::veth_names(&req.endpoint_id);
                self.make_veth(ctx, &host, &peer).await?;
                let joined = Attachment::Joined { sandbox: req.sandbox_key.clone(), host_veth: host.clone() };
                self.docker.attach(&req.endpoint_id, joined);
                info!(endpoint = %req.endpoint_id, veth = %host, sandbox = %req.sandbox_key, "docker: joined");
                let mut answer = json!({"InterfaceName": {"SrcName": peer, "DstPrefix": "eth"}, "StaticRoutes": []});
                if let Some(gw) = v4 {
                    answer["Gateway"] = json!(gw.to_string());
                }
                if let Some(gw) = v6 {
                    answer["GatewayIPv6"] = json!(gw.to_string());
                }
                Ok(answer)
            }
            Call::Leave(req) => {
                if let Some(ep) = self.docker.endpoints.get(&req.endpoint_id).cloned() {
                    if let Attachment::Joined { host_veth, .. } = &ep.attachment {
                        self.delete_veth(ctx, host_veth).await?;
                    }
                    self.docker.attach(&req.endpoint_id, Attachment::Detached);
                    info!(endpoint = %req.endpoint_id, "docker: left");
                }
                Ok(json!({}))
            }
        }
    }

    /// A fresh veth pair: `host` on the bridge (up, the pod MTU), `peer` left down for Docker to
    /// move into the sandbox. Leftovers of an earlier Join go first.
    async fn make_veth<R: Runner>(&self, ctx: &Ctx<K, S, R>, host: &str, peer: &str) -> Result<()> {
        let nl = &ctx.nl;
        for name in [host, peer] {
            if let Some(old) = nl.link(name).await? {
                nl.del_link(old.index).await?;
            }
        }
        nl.add_veth(host, peer, self.mtu).await?;
        let link = nl.link(host).await?.with_context(|| format!("veth {host} missing after creation"))?;
        if let Err(e) = nl.set_link(link.index, Some(self.mtu), true, Some(self.bridge_index)).await {
            let _ = nl.del_link(link.index).await;
            return Err(e.context(format!("attaching {host} to the bridge")));
        }
        Ok(())
    }

    async fn delete_veth<R: Runner>(&self, ctx: &Ctx<K, S, R>, host: &str) -> Result<()> {
        if let Some(l) = ctx.nl.link(host).await? {
            ctx.nl.del_link(l.index).await?;
        }
        Ok(())
    }

    /// The reconcile's part for Docker endpoints: never creates or deletes one (Docker does),
    /// only puts a joined endpoint's host veth back on the bridge (up, the pod MTU) when it
    /// came off (the bridge was re-created, someone detached it).
    pub(super) async fn ensure_docker_veths<R: Runner>(&self, ctx: &Ctx<K, S, R>) {
        for (id, ep) in &self.docker.endpoints {
            let Attachment::Joined { host_veth, .. } = &ep.attachment else { continue };
            let link = match ctx.nl.link(host_veth).await {
                Ok(Some(l)) => l,
                Ok(None) => continue, // the container is gone; Docker's Leave will follow
                Err(e) => {
                    warn!(endpoint = %id, error = %format!("{e:#}"), "docker endpoint veth");
                    continue;
                }
            };
            if link.controller == Some(self.bridge_index) && link.up && link.mtu == self.mtu {
                continue;
            }
            info!(endpoint = %id, veth = %host_veth, "re-attaching a Docker endpoint's veth to the bridge");
            if let Err(e) = ctx.nl.set_link(link.index, Some(self.mtu), true, Some(self.bridge_index)).await {
                warn!(endpoint = %id, error = %format!("{e:#}"), "re-attaching a Docker endpoint's veth");
            }
        }
    }

    /// Pods and Docker endpoints, as listed.
    pub(super) fn all_pods(&self) -> Vec<PodRecord> {
        self.pods.iter().cloned().chain(self.docker.pod_records()).collect()
    }
}

fn check_network(subnets: &weft_config::subnet::PerFamily<ipnet::IpNet>, req: &CreateNetwork) -> Result<()> {
    let pools = req.ipv4_data.iter().chain(&req.ipv6_data).map(|d| (d.pool.as_str(), d.gateway.as_str()));
    book::check_network_pools(subnets, pools)?;
    Ok(())
}
