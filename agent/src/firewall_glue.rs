//! Binds the firewall module to the agent: the rule set for this node's network, subnet and
//! forward policy (which the backends decide), and keeping the blocking iptables/nft calls off
//! the async workers' hot path. A spec is of one family, the cluster CIDR's: the policy's overrides
//! of the other family are left to that family's spec.

use crate::firewall::{self, FirewallSpec, ForwardMode, ForwardPolicy, Runner, SystemRunner};
use anyhow::{anyhow, Result};
use ipnet::{IpNet, Ipv4Net};
use weft_config::subnet::Family;
use weft_config::AgentConfig;

/// This node's firewall rules: a [`firewall::Executor`] bound to the agent config's network,
/// bridge and `ip_masq`. The daemon keeps one to ensure the rules; `leave` makes one to remove them.
pub struct NodeFirewall<R: Runner = SystemRunner> {
    inner: firewall::Executor<R>,
    network: String,
    bridge: String,
    ip_masq: bool,
}

impl NodeFirewall<SystemRunner> {
    /// The rules driven through the real `iptables` and `nft`.
    pub fn new(cfg: &AgentConfig) -> Self {
        Self::with_runner(cfg, SystemRunner)
    }
}

impl<R: Runner> NodeFirewall<R> {
    /// The rules driven through `runner` (a recording fake in tests).
    pub fn with_runner(cfg: &AgentConfig, runner: R) -> Self {
        Self {
            inner: firewall::Executor::new(runner),
            network: cfg.network.clone(),
            bridge: cfg.bridge.name.clone(),
            ip_masq: cfg.ip_masq,
        }
    }

    fn spec(&self, cluster: IpNet, subnet: IpNet, policy: &ForwardPolicy) -> FirewallSpec {
        let family = Family::of_net(cluster);
        FirewallSpec {
            network: self.network.clone(),
            cluster_cidr: cluster,
            node_subnet: subnet,
            bridge: self.bridge.clone(),
            mode: policy.default.clone(),
            overrides: policy
                .overrides
                .iter()
                .filter(|(net, _)| Family::of_net(**net) == family)
                .map(|(net, mode)| (*net, mode.clone()))
                .collect(),
            ip_masq: self.ip_masq,
        }
    }

    /// Checks the rules and restores whatever is missing (a few short processes): the
    /// policy's default mode for the cluster CIDR, its overrides for their peer subnets.
    pub fn ensure(&self, cluster: IpNet, subnet: IpNet, policy: &ForwardPolicy) -> Result<()> {
        let spec = self.spec(cluster, subnet, policy);
        // The firewall module logs each repair itself.
        tokio::task::block_in_place(|| self.inner.ensure(&spec)).map(drop).map_err(|e| anyhow!("firewall: {e}"))
    }

    /// Removes every rule and chain of this network. Needs only the network name.
    pub fn remove(&self) -> Result<()> {
        let none = IpNet::V4(Ipv4Net::default());
        let spec = self.spec(none, none, &ForwardPolicy::uniform(ForwardMode::Open));
        tokio::task::block_in_place(|| self.inner.remove(&spec))
            .map_err(|errs| anyhow!("firewall: {}", errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glue(extra: &str) -> NodeFirewall {
        let text = format!("node_name = \"n1\"\nnetwork = \"lab\"\n[etcd]\nendpoints = [\"http://a:1\"]\n{extra}");
        NodeFirewall::new(&AgentConfig::parse("agent.toml", &text).expect("config"))
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
