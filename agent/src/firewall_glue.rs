//! Binds the firewall module to the agent: which rule set this node wants, and keeping the
//! blocking iptables/nft calls off the async workers' hot path.

use crate::firewall::{self, FirewallSpec, ForwardMode, ForwardPolicy};
use anyhow::{anyhow, Result};
use ipnet::Ipv4Net;
use weft_config::{AgentConfig, Backend, NetworkConfig};

pub struct Firewall {
    inner: firewall::Firewall,
    network: String,
    bridge: String,
    ip_masq: bool,
    tun: Option<String>,
}

impl Firewall {
    pub fn new(cfg: &AgentConfig) -> Self {
        Self {
            inner: firewall::Firewall::system(),
            network: cfg.network.clone(),
            bridge: cfg.bridge.name.clone(),
            ip_masq: cfg.ip_masq,
            tun: cfg.quic.as_ref().map(|q| q.tun.clone()),
        }
    }

    /// One forward mode for every peer of `backend`: open for host-gw, the tun only for quic.
    pub fn uniform_policy(&self, backend: Backend) -> ForwardPolicy {
        let mode = match (backend, &self.tun) {
            (Backend::Quic, Some(tun)) => ForwardMode::Tunnel { tun: tun.clone() },
            (Backend::Quic, None) => ForwardMode::Tunnel { tun: "weft-tun0".into() },
            (Backend::HostGw, _) => ForwardMode::Open,
        };
        ForwardPolicy::uniform(mode)
    }

    fn spec(&self, cluster: Ipv4Net, subnet: Ipv4Net, policy: &ForwardPolicy) -> FirewallSpec {
        FirewallSpec {
            network: self.network.clone(),
            cluster_cidr: cluster,
            node_subnet: subnet,
            bridge: self.bridge.clone(),
            mode: policy.default.clone(),
            overrides: policy.overrides.clone(),
            ip_masq: self.ip_masq,
        }
    }

    /// Checks the rules and restores whatever is missing (a few short processes); one forward
    /// mode for the whole cluster CIDR, from the network's backend.
    pub fn ensure(&self, net: &NetworkConfig, subnet: Ipv4Net) -> Result<()> {
        self.ensure_policy(net, subnet, &self.uniform_policy(net.backend))
    }

    /// Like [`Self::ensure`] with a forward policy per peer subnet (a node whose peers use
    /// different backends): `policy.default` for the cluster CIDR, the overrides for their subnets.
    pub fn ensure_policy(&self, net: &NetworkConfig, subnet: Ipv4Net, policy: &ForwardPolicy) -> Result<()> {
        let spec = self.spec(net.cidr, subnet, policy);
        // The firewall module logs each repair itself.
        tokio::task::block_in_place(|| self.inner.ensure(&spec)).map(drop).map_err(|e| anyhow!("firewall: {e}"))
    }

    /// Removes every rule and chain of this network. Needs only the network name.
    pub fn remove(&self) -> Result<()> {
        let spec = self.spec(Ipv4Net::default(), Ipv4Net::default(), &self.uniform_policy(Backend::HostGw));
        tokio::task::block_in_place(|| self.inner.remove(&spec))
            .map_err(|errs| anyhow!("firewall: {}", errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glue(extra: &str) -> Firewall {
        let text = format!("node_name = \"n1\"\nnetwork = \"lab\"\n[etcd]\nendpoints = [\"http://a:1\"]\n{extra}");
        Firewall::new(&AgentConfig::parse("agent.toml", &text).expect("config"))
    }

    #[test]
    fn uniform_policy_follows_the_backend_and_the_configured_tun() {
        let quic = "[quic]\nca_file = \"/ca.pem\"\ncert_file = \"/n.pem\"\nkey_file = \"/n.key\"\ntun = \"qt0\"\n";
        assert_eq!(
            glue(quic).uniform_policy(Backend::Quic),
            ForwardPolicy::uniform(ForwardMode::Tunnel { tun: "qt0".into() })
        );
        assert_eq!(glue("").uniform_policy(Backend::Quic).default, ForwardMode::Tunnel { tun: "weft-tun0".into() });
        assert_eq!(glue(quic).uniform_policy(Backend::HostGw), ForwardPolicy::uniform(ForwardMode::Open));
    }

    #[test]
    fn the_policy_lands_in_the_spec() {
        let fw = glue("");
        let mut policy = fw.uniform_policy(Backend::Quic);
        policy.overrides.insert("10.244.2.0/24".parse().expect("net"), ForwardMode::Open);
        let spec = fw.spec("10.244.0.0/16".parse().expect("net"), "10.244.1.0/24".parse().expect("net"), &policy);
        assert_eq!((spec.network.as_str(), spec.bridge.as_str()), ("lab", "weft0"));
        assert_eq!(spec.mode, policy.default);
        assert_eq!(spec.overrides, policy.overrides);
        assert!(spec.validate().is_ok());
    }
}
