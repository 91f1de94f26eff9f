//! Binds the firewall module to the agent's config: which rules this node wants.

use anyhow::Result;
use ipnet::Ipv4Net;
use weft_config::{AgentConfig, NetworkConfig};

pub struct Firewall {
    network: String,
    bridge: String,
    ip_masq: bool,
    last: std::sync::Mutex<Option<(Ipv4Net, Ipv4Net)>>,
}

impl Firewall {
    pub fn new(cfg: &AgentConfig) -> Self {
        Self { network: cfg.network.clone(), bridge: cfg.bridge.name.clone(), ip_masq: cfg.ip_masq, last: Default::default() }
    }

    pub fn ensure(&self, net: &NetworkConfig, subnet: Ipv4Net) -> Result<()> {
        let _ = (&self.network, &self.bridge, self.ip_masq);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((net.cidr, subnet));
        Ok(())
    }

    pub fn remove(&self) -> Result<()> {
        Ok(())
    }
}
