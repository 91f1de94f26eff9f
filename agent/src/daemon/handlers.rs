//! The API's requests as the running node answers them: pods (list, add, delete) and leave.
//! Status is served by the API task from the shared snapshot.

use super::{decide, Ctx, Node};
use crate::firewall::Runner;
use crate::kernel::Kernel;
use crate::pods::{self, AttachRequest, PodNet};
use crate::state::{PodRecord, PodSource};
use anyhow::{anyhow, bail, Result};
use std::collections::BTreeSet;
use std::net::IpAddr;
use tracing::info;
use weft_config::api::{Request, Response};
use weft_store::Store;

impl<K: Kernel, S: Store> Node<K, S> {
    pub(super) async fn handle<R: Runner>(&mut self, ctx: &Ctx<K, S, R>, req: Request) -> Response {
        let r = match req {
            Request::Status => Err(anyhow!("status is served by the API task")),
            Request::PodList => {
                return Response::Pods { pods: self.all_pods().iter().map(|p| self.pod_info(p)).collect() }
            }
            Request::PodAdd { name, netns, ifname, netns_path: Some(path) } => {
                self.pod_add_path(ctx, name, netns, ifname, path).await
            }
            Request::PodAdd { name, netns, ifname, netns_path: None } => self.pod_add(ctx, name, netns, ifname).await,
            Request::PodDel { name } => self.pod_del(ctx, &name).await,
            Request::Leave => self.leave(ctx).await.map(|()| Response::Done),
        };
        r.unwrap_or_else(|e| Response::Error { message: format!("{e:#}") })
    }

    async fn pod_add<R: Runner>(
        &mut self,
        ctx: &Ctx<K, S, R>,
        name: String,
        netns: Option<String>,
        ifname: Option<String>,
    ) -> Result<Response> {
        let (netns, ifname) = decide::pod_names(&name, netns, ifname)?;
        if let Some(p) = self.pods.iter().find(|p| p.name == name) {
            if p.netns == netns && p.ifname == ifname {
                return Ok(Response::Pod(self.pod_info(p)));
            }
            bail!("pod {name} exists with namespace {} and interface {}", p.netns, p.ifname);
        }
        if let Some(p) = self.pods.iter().find(|p| p.netns == netns && p.ifname == ifname) {
            bail!("namespace {netns} interface {ifname} already belongs to pod {}", p.name);
        }
        let used = self.used_addrs(None);
        let req = AttachRequest {
            name: &name,
            netns: &netns,
            ifname: &ifname,
            source: PodSource::Api,
            remembered: None,
            owns_netns: false,
        };
        let net = PodNet { nl: &ctx.nl, bridge_index: self.bridge_index, subnets: self.subnets, mtu: self.mtu };
        let rec = pods::attach(&net, &req, &used).await?;
        self.pods.push(rec.clone());
        ctx.state.save_pods(&self.pods)?;
        self.publish_pods(ctx);
        info!(pod = %name, ip = %rec.ips_text(), "pod added");
        Ok(Response::Pod(self.pod_info(&rec)))
    }

    async fn pod_del<R: Runner>(&mut self, ctx: &Ctx<K, S, R>, name: &str) -> Result<Response> {
        if self.docker.pod_records().iter().any(|p| p.name == name) {
            bail!("pod {name} is a Docker container's endpoint; remove the container with docker");
        }
        let Some(pos) = self.pods.iter().position(|p| p.name == name) else { bail!("no pod named {name}") };
        if self.pods[pos].source == PodSource::Config {
            bail!("pod {name} is declared in agent.toml; remove it there and restart the agent");
        }
        let pod = self.pods[pos].clone();
        pods::detach(&ctx.nl, &pod, pod.owns_netns).await?;
        self.pods.remove(pos);
        ctx.state.save_pods(&self.pods)?;
        self.publish_pods(ctx);
        info!(pod = %name, "pod deleted");
        Ok(Response::Done)
    }

    /// Every address a new pod must not take: the pods' (but `except`'s) and Docker's.
    pub(super) fn used_addrs(&self, except: Option<&str>) -> BTreeSet<IpAddr> {
        let mut used: BTreeSet<IpAddr> =
            self.pods.iter().filter(|p| Some(p.name.as_str()) != except).flat_map(PodRecord::ips).collect();
        used.extend(self.docker.used());
        used
    }
}
