//! `weftctl network`: write and show the network config agents read at start.

use super::{print_out, with_store, UsageError};
use clap::Subcommand;
use std::process::ExitCode;
use weft_config::{Backend, NetworkConfig};
use weft_controller::network::{self, InitPlan};

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Write the network config (idempotent; refuses to change a different one without --force).
    Init {
        /// Cluster CIDR all node subnets are carved from.
        #[arg(long)]
        cidr: String,
        /// Prefix length of each node's subnet.
        #[arg(long)]
        subnet_len: u8,
        #[arg(long, value_parser = super::parse_backend)]
        backend: Backend,
        /// Replace a different config (never the CIDR or subnet length while subnets exist).
        #[arg(long)]
        force: bool,
    },
    /// Print the network config.
    Show {
        #[arg(long)]
        json: bool,
    },
}

/// `NetworkConfig::new` errors rendered against the flag that holds the bad value.
fn network_config(cidr: &str, subnet_len: u8, backend: Backend) -> Result<NetworkConfig, UsageError> {
    NetworkConfig::new("--cidr", cidr, subnet_len, backend).map_err(|e| {
        let flag = if e.field == "subnet_len" { "--subnet-len" } else { "--cidr" };
        UsageError::new(format!("{flag}: {}", e.message))
    })
}

/// Runs `network init` or `network show` against the store named by the global flags.
pub fn run(g: &super::Global, cmd: &NetworkCmd) -> anyhow::Result<ExitCode> {
    // Check input before connecting, so bad flags exit 2 without touching etcd.
    let opts = super::etcd_opts(g)?;
    let wanted = match cmd {
        NetworkCmd::Init { cidr, subnet_len, backend, .. } => Some(network_config(cidr, *subnet_len, *backend)?),
        NetworkCmd::Show { .. } => None,
    };
    let net = g.network.as_str();
    with_store(opts, |store| async move {
        match cmd {
            NetworkCmd::Init { force, .. } => {
                let wanted = wanted.ok_or_else(|| anyhow::anyhow!("network config missing"))?;
                let plan = network::init(&store, net, &wanted, *force).await.map_err(|e| {
                    match e.downcast::<network::InitError>() {
                        Ok(refusal) => UsageError::new(refusal.to_string()).into(),
                        Err(e) => e,
                    }
                })?;
                match plan {
                    InitPlan::Unchanged => {}
                    InitPlan::Create => println!("network {net} created: {}", network::describe(&wanted)),
                    InitPlan::Replace { .. } => println!("network {net} replaced: {}", network::describe(&wanted)),
                }
                Ok(ExitCode::SUCCESS)
            }
            NetworkCmd::Show { json } => {
                let c = network::show(&store, net).await?;
                print_out(*json, &c, || network::render(net, &c))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_cidr_is_refused_against_its_flag_before_etcd() {
        let e = network_config("fd00:10:244::/56", 64, Backend::HostGw).expect_err("ipv6");
        assert_eq!(e.to_string(), "--cidr: expected an IPv4 CIDR like 10.244.0.0/16, found \"fd00:10:244::/56\"");
    }
}
