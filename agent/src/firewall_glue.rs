//! Binds the firewall module to the agent: the rule sets for this node's network, subnets and
//! forward policy (which the backends decide), and keeping the blocking iptables/nft calls off
//! the async workers' hot path. A spec is of one family, its cluster CIDR's (the policy's
//! overrides of the other family are left to that family's spec); a dual-stack node runs one
//! per family, IPv4 first.

use crate::firewall::{self, FirewallSpec, ForwardMode, ForwardPolicy, Runner, SystemRunner};
use anyhow::{anyhow, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft_config::subnet::Family;
use weft_config::AgentConfig;

/// This node's firewall rules: a [`firewall::Executor`] bound to the agent config's network,
/// bridge, `ip_masq` and `ip_masq6`. The daemon keeps one to ensure the rules; `leave` makes one
/// to remove them.
pub struct NodeFirewall<R: Runner = SystemRunner> {
    inner: firewall::Executor<R>,
    network: String,
    bridge: String,
    ip_masq: bool,
    ip_masq6: bool,
}

impl NodeFirewall<SystemRunner> {
    /// The rules driven through the real `iptables`/`ip6tables` and `nft`.
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
            ip_masq6: cfg.ip_masq6,
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
            ip_masq: match family {
                Family::V4 => self.ip_masq,
                Family::V6 => self.ip_masq6,
            },
        }
    }

    /// Checks the rules of the pool `cluster` (the node holding `subnet` of it) and restores
    /// whatever is missing (a few short processes): the policy's default mode for the cluster
    /// CIDR, its overrides of that family for their peer subnets.
    pub fn ensure(&self, cluster: IpNet, subnet: IpNet, policy: &ForwardPolicy) -> Result<()> {
        let spec = self.spec(cluster, subnet, policy);
        // The firewall module logs each repair itself.
        tokio::task::block_in_place(|| self.inner.ensure(&spec)).map(drop).map_err(|e| anyhow!("firewall: {e}"))
    }

    /// Removes every rule and chain of this network for each of `families` (those the node held
    /// subnets of). Needs only the network name.
    pub fn remove(&self, families: &[Family]) -> Result<()> {
        let mut errors = Vec::new();
        for family in families {
            let none = match family {
                Family::V4 => IpNet::V4(Ipv4Net::default()),
                Family::V6 => IpNet::V6(Ipv6Net::default()),
            };
            let spec = self.spec(none, none, &ForwardPolicy::uniform(ForwardMode::Open));
            if let Err(errs) = tokio::task::block_in_place(|| self.inner.remove(&spec)) {
                errors.extend(errs.iter().map(|e| e.to_string()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("firewall: {}", errors.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glue(extra: &str) -> NodeFirewall {
        let text = format!("node_name = \"n1\"\nnetwork = \"lab\"\n[etcd]\nendpoints = [\"http://a:1\"]\n{extra}");
        NodeFirewall::new(&AgentConfig::parse("agent.toml", &text).expect("config"))
    }

    /// With top-level keys `top` (ip_masq, ip_masq6).
    fn glue_with(top: &str) -> NodeFirewall {
        let text = format!("node_name = \"n1\"\nnetwork = \"lab\"\n{top}[etcd]\nendpoints = [\"http://a:1\"]\n");
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

    #[test]
    fn each_family_has_its_own_spec_and_masquerade_switch() {
        let net = |s: &str| s.parse::<IpNet>().expect("net");
        let mut policy = ForwardPolicy::uniform(ForwardMode::Open);
        policy.overrides.insert(net("10.244.2.0/24"), ForwardMode::Tunnel { tun: "weft-tun0".into() });
        policy.overrides.insert(net("fd00:10:244:2::/64"), ForwardMode::Tunnel { tun: "weft-tun0".into() });
        let fw = glue_with("ip_masq6 = true\n");
        let v4 = fw.spec(net("10.244.0.0/16"), net("10.244.1.0/24"), &policy);
        let v6 = fw.spec(net("fd00:10:244::/56"), net("fd00:10:244:1::/64"), &policy);
        assert_eq!((v4.family(), v4.tag().as_str(), v4.ip_masq), (firewall::Family::V4, "weft:lab", false));
        assert_eq!((v6.family(), v6.tag().as_str(), v6.ip_masq), (firewall::Family::V6, "weft:lab:ip6", true));
        assert_eq!(v4.overrides.keys().copied().collect::<Vec<_>>(), [net("10.244.2.0/24")]);
        assert_eq!(v6.overrides.keys().copied().collect::<Vec<_>>(), [net("fd00:10:244:2::/64")]);
        assert!(v4.validate().is_ok() && v6.validate().is_ok());
        let plain = glue_with("ip_masq = true\n");
        assert!(!plain.spec(net("fd00:10:244::/56"), net("fd00:10:244:1::/64"), &policy).ip_masq, "ip_masq is IPv4's");
    }
}
