//! `weftctl status`, `weftctl nodes` and `weftctl node evict`: the cluster as etcd records it.

use super::{print_out, with_store, UsageError};
use clap::Subcommand;
use std::process::ExitCode;
use weft_controller::{cluster_status, nodes, output};

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Delete a node's subnet record(s) and heartbeat.
    Evict { name: String },
}

/// `weftctl status`: nodes, liveness, backend and the reachability matrix.
pub fn status(g: &super::Global, json: bool) -> anyhow::Result<ExitCode> {
    let (opts, net) = (super::etcd_opts(g)?, g.network.as_str());
    with_store(opts, |store| async move {
        let s = cluster_status::fetch(&store, net, output::unix_now()).await?;
        print_out(json, &s, || cluster_status::render(&s))
    })
}

/// `weftctl nodes`: subnet records joined with heartbeats.
pub fn list(g: &super::Global, json: bool) -> anyhow::Result<ExitCode> {
    let (opts, net) = (super::etcd_opts(g)?, g.network.as_str());
    with_store(opts, |store| async move {
        let rows = nodes::list(&store, net, output::unix_now()).await?;
        print_out(json, &rows, || nodes::render(&rows))
    })
}

/// `weftctl node evict NAME`.
pub fn run(g: &super::Global, cmd: &NodeCmd) -> anyhow::Result<ExitCode> {
    let NodeCmd::Evict { name } = cmd;
    let opts = super::etcd_opts(g)?;
    if !weft_config::agent::valid_name(name) {
        return Err(UsageError::new(format!("NAME: expected a node name, found {name:?}")).into());
    }
    let net = g.network.as_str();
    with_store(opts, |store| async move {
        for key in nodes::evict(&store, net, name).await? {
            outln!("evicted {name}: deleted {key}");
        }
        Ok(ExitCode::SUCCESS)
    })
}
