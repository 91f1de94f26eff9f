//! Binds the firewall module to the agent: the rule set for this node's network, subnet and
//! forward mode (which the backends decide), and keeping the blocking iptables/nft calls off
//! the async workers' hot path.

use crate::firewall::{self, FirewallSpec, ForwardMode};
use anyhow::{anyhow, Result};
use ipnet::Ipv4Net;
use weft_config::AgentConfig;

pub struct Firewall {
    inner: firewall::Firewall,
    network: String,
    bridge: String,
    ip_masq: bool,
}

impl Firewall {
    pub fn new(cfg: &AgentConfig) -> Self {
        Self {
            inner: firewall::Firewall::system(),
            network: cfg.network.clone(),
            bridge: cfg.bridge.name.clone(),
            ip_masq: cfg.ip_masq,
        }
    }

    fn spec(&self, cluster: Ipv4Net, subnet: Ipv4Net, mode: ForwardMode) -> FirewallSpec {
        FirewallSpec {
            network: self.network.clone(),
            cluster_cidr: cluster,
            node_subnet: subnet,
            bridge: self.bridge.clone(),
            mode,
            ip_masq: self.ip_masq,
        }
    }

    /// Checks the rules and restores whatever is missing (a few short processes).
    pub fn ensure(&self, cluster: Ipv4Net, subnet: Ipv4Net, mode: ForwardMode) -> Result<()> {
        let spec = self.spec(cluster, subnet, mode);
        // The firewall module logs each repair itself.
        tokio::task::block_in_place(|| self.inner.ensure(&spec)).map(drop).map_err(|e| anyhow!("firewall: {e}"))
    }

    /// Removes every rule and chain of this network. Needs only the network name.
    pub fn remove(&self) -> Result<()> {
        let spec = self.spec(Ipv4Net::default(), Ipv4Net::default(), ForwardMode::Open);
        tokio::task::block_in_place(|| self.inner.remove(&spec))
            .map_err(|errs| anyhow!("firewall: {}", errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))
    }
}
