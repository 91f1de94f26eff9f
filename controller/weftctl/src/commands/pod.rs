//! `weftctl pod` and `weftctl agent status`: the local agent through its socket.

use super::{print_out, UsageError};
use clap::Subcommand;
use std::process::ExitCode;
use weft_controller::{agent_view, AgentClient};

#[derive(Subcommand, Debug)]
pub enum PodCmd {
    /// Create a pod (named network namespace with an address from the node's subnet).
    Add {
        name: String,
        /// Namespace name under /run/netns (default: the pod name).
        #[arg(long)]
        netns: Option<String>,
        /// Interface name inside the pod (default: eth0).
        #[arg(long)]
        ifname: Option<String>,
        /// The pod's own resolvers, over the network's.
        #[command(flatten)]
        dns: super::DnsFlags,
        #[arg(long)]
        json: bool,
    },
    /// Delete a pod.
    Del { name: String },
    /// List pods.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// What the agent reports about itself.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// `weftctl agent status`.
pub fn agent(g: &super::Global, cmd: &AgentCmd) -> anyhow::Result<ExitCode> {
    let AgentCmd::Status { json } = cmd;
    let s = AgentClient::new(&g.socket).status()?;
    print_out(*json, &s, || agent_view::render_status(&s))
}

pub fn run(g: &super::Global, cmd: &PodCmd) -> anyhow::Result<ExitCode> {
    let client = AgentClient::new(&g.socket);
    let check = |what: &str, name: &str| -> Result<(), UsageError> {
        if weft_config::agent::valid_name(name) {
            Ok(())
        } else {
            Err(UsageError::new(format!(
                "{what}: expected lowercase letters, digits, '-', '_' or '.', 1 to 63 characters, found {name:?}"
            )))
        }
    };
    match cmd {
        PodCmd::Add { name, netns, ifname, dns, json } => {
            check("NAME", name)?;
            if let Some(n) = netns.as_deref().filter(|n| !weft_config::agent::valid_netns(n)) {
                return Err(UsageError::new(format!(
                    "--netns: expected a namespace name without '/' or spaces, found {n:?}"
                ))
                .into());
            }
            if let Some(i) = ifname.as_deref().filter(|i| !weft_config::agent::valid_ifname(i)) {
                return Err(UsageError::new(format!(
                    "--ifname: expected an interface name of 1 to 15 characters, found {i:?}"
                ))
                .into());
            }
            let dns = Some(dns.settings()?).filter(|d| !d.is_empty());
            let p = client.pod_add_with(name, netns.as_deref(), ifname.as_deref(), dns)?;
            print_out(*json, &p, || agent_view::render_pod(&p))
        }
        PodCmd::Del { name } => {
            check("NAME", name)?;
            client.pod_del(name)?;
            outln!("pod {name} deleted");
            Ok(ExitCode::SUCCESS)
        }
        PodCmd::List { json } => {
            let pods = client.pod_list()?;
            print_out(*json, &pods, || agent_view::render_pods(&pods))
        }
    }
}
