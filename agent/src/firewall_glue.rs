//! Binds the firewall module to the agent: the rule set for this node's network, subnet and
//! forward policy (which the backends decide), and keeping the blocking iptables/nft calls off
//! the async workers' hot path. The agent's addresses are IPv4 for now: this is where they become
//! the family-generic spec's (an IPv4 spec).

use crate::firewall::{self, FirewallSpec, ForwardMode, ForwardPolicy, Runner, SystemRunner};
use anyhow::{anyhow, Result};
use ipnet::Ipv4Net;
use weft_config::AgentConfig;

pub struct Firewall<R: Runner = SystemRunner> {
    inner: firewall::Firewall<R>,
    network: String,
    bridge: String,
    ip_masq: bool,
}

impl Firewall<SystemRunner> {
    /// The rules driven through the real `iptables` and `nft`.
    pub fn new(cfg: &AgentConfig) -> Self {
        Self::with_runner(cfg, SystemRunner)
    }
}

impl<R: Runner> Firewall<R> {
    /// The rules driven through `runner` (a recording fake in tests).
    pub fn with_runner(cfg: &AgentConfig, runner: R) -> Self {
        Self {
            inner: firewall::Firewall::new(runner),
            network: cfg.network.clone(),
            bridge: cfg.bridge.name.clone(),
            ip_masq: cfg.ip_masq,
        }
    }

    fn spec(&self, cluster: Ipv4Net, subnet: Ipv4Net, policy: &ForwardPolicy) -> FirewallSpec {
        FirewallSpec {
            network: self.network.clone(),
            cluster_cidr: cluster.into(),
            node_subnet: subnet.into(),
            bridge: self.bridge.clone(),
            mode: policy.default.clone(),
            overrides: policy.overrides.clone(),
            ip_masq: self.ip_masq,
        }
    }

    /// Checks the rules and restores whatever is missing (a few short processes): the
    /// policy's default mode for the cluster CIDR, its overrides for their peer subnets.
    pub fn ensure(&self, cluster: Ipv4Net, subnet: Ipv4Net, policy: &ForwardPolicy) -> Result<()> {
        let spec = self.spec(cluster, subnet, policy);
        // The firewall module logs each repair itself.
        tokio::task::block_in_place(|| self.inner.ensure(&spec)).map(drop).map_err(|e| anyhow!("firewall: {e}"))
    }

    /// Removes every rule and chain of this network. Needs only the network name.
    pub fn remove(&self) -> Result<()> {
        let spec = self.spec(Ipv4Net::default(), Ipv4Net::default(), &ForwardPolicy::uniform(ForwardMode::Open));
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
    fn the_policy_lands_in_the_spec() {
        let fw = glue("");
        let mut policy = ForwardPolicy::uniform(ForwardMode::Tunnel { tun: "weft-tun0".into() });
        policy.overrides.insert("10.244.2.0/24".parse().expect("net"), ForwardMode::Open);
        let spec = fw.spec("10.244.0.0/16".parse().expect("net"), "10.244.1.0/24".parse().expect("net"), &policy);
        assert_eq!((spec.network.as_str(), spec.bridge.as_str()), ("lab", "weft0"));
        assert_eq!(spec.mode, policy.default);
        assert_eq!(spec.overrides, policy.overrides);
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn the_agent_installs_the_ipv4_rules() {
        let spec = glue("").spec(
            "10.244.0.0/16".parse().expect("net"),
            "10.244.1.0/24".parse().expect("net"),
            &ForwardPolicy::uniform(ForwardMode::Open),
        );
        assert_eq!((spec.family(), spec.tag().as_str()), (firewall::Family::V4, "weft:lab"));
    }
}
