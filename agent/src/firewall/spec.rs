//! What the firewall should look like for one weft network: the spec, the forward policy, the
//! names weft owns (tag, chain names) and the validation of everything that reaches a command line.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use super::FirewallError;

/// Longest network name used verbatim in a chain name (`WEFT-MASQ-` + 18 = 28 characters).
const MAX_CHAIN_SUFFIX: usize = 18;

/// What the firewall should look like for one weft network on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    /// Network name (also the ownership tag `weft:<network>`).
    pub network: String,
    pub cluster_cidr: Ipv4Net,
    /// This node's pod subnet; must lie inside `cluster_cidr`.
    pub node_subnet: Ipv4Net,
    /// The pod bridge, e.g. `weft0`.
    pub bridge: String,
    /// The forward mode for the whole cluster CIDR (the default of the policy).
    pub mode: ForwardMode,
    /// Peer subnets whose traffic is carried differently from `mode` (say, host-gw peers of a
    /// node whose default is a tunnel). Each lies inside `cluster_cidr`, outside `node_subnet`,
    /// and overlaps no other override. Empty: exactly the rules of `mode` alone.
    pub overrides: BTreeMap<Ipv4Net, ForwardMode>,
    /// Masquerade pod traffic that leaves the cluster CIDR.
    pub ip_masq: bool,
}

/// Which forwarded pod traffic is accepted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ForwardMode {
    /// host-gw: accept forwarded traffic from or to the cluster CIDR.
    Open,
    /// quic: accept pod traffic only from the tun device and the bridge; never pod-addressed
    /// traffic arriving on another interface (the underlay), which would bypass the tunnel's
    /// authentication.
    Tunnel { tun: String },
}

/// The forward policy of a node: a default mode for the cluster CIDR and per-peer-subnet
/// overrides (what a node running several backends at once asks for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPolicy {
    pub default: ForwardMode,
    pub overrides: BTreeMap<Ipv4Net, ForwardMode>,
}

impl ForwardPolicy {
    /// One mode for every peer (today's host-gw and quic cases).
    pub fn uniform(mode: ForwardMode) -> Self {
        Self { default: mode, overrides: BTreeMap::new() }
    }
}

impl FirewallSpec {
    /// The comment on every rule weft writes for this network.
    pub fn tag(&self) -> String {
        tag(&self.network)
    }

    /// weft's chain in the iptables filter table for this network.
    pub fn forward_chain(&self) -> String {
        format!("WEFT-FWD-{}", chain_suffix(&self.network))
    }

    /// weft's chain in the iptables nat table for this network.
    pub fn masq_chain(&self) -> String {
        format!("WEFT-MASQ-{}", chain_suffix(&self.network))
    }

    /// The overrides whose mode differs from the default, in address order (the others change
    /// nothing and produce no rule).
    pub fn effective_overrides(&self) -> impl Iterator<Item = (&Ipv4Net, &ForwardMode)> + '_ {
        self.overrides.iter().filter(move |(_, m)| **m != self.mode)
    }

    /// Checks everything that ends up in a command line.
    pub fn validate(&self) -> Result<(), FirewallError> {
        validate_network(&self.network)?;
        validate_ifname("bridge", &self.bridge)?;
        self.validate_mode(&self.mode)?;
        if self.cluster_cidr.prefix_len() == 0 {
            return Err(FirewallError::InvalidSpec("cluster CIDR must not be 0.0.0.0/0".into()));
        }
        if !self.cluster_cidr.contains(&self.node_subnet) {
            return Err(FirewallError::InvalidSpec(format!(
                "node subnet {} is not inside the cluster CIDR {}",
                self.node_subnet, self.cluster_cidr
            )));
        }
        let mut seen: Vec<Ipv4Net> = Vec::new();
        for (subnet, mode) in &self.overrides {
            self.validate_mode(mode)?;
            if *subnet != subnet.trunc() {
                return Err(FirewallError::InvalidSpec(format!("override {subnet} has host bits set")));
            }
            if !self.cluster_cidr.contains(subnet) {
                return Err(FirewallError::InvalidSpec(format!(
                    "override {subnet} is not inside the cluster CIDR {}",
                    self.cluster_cidr
                )));
            }
            if overlap(subnet, &self.node_subnet) {
                return Err(FirewallError::InvalidSpec(format!(
                    "override {subnet} overlaps the node subnet {}",
                    self.node_subnet
                )));
            }
            if let Some(other) = seen.iter().find(|o| overlap(o, subnet)) {
                return Err(FirewallError::InvalidSpec(format!("overrides {other} and {subnet} overlap")));
            }
            seen.push(*subnet);
        }
        Ok(())
    }

    fn validate_mode(&self, mode: &ForwardMode) -> Result<(), FirewallError> {
        if let ForwardMode::Tunnel { tun } = mode {
            validate_ifname("tun", tun)?;
            if tun == &self.bridge {
                return Err(FirewallError::InvalidSpec(format!("tun and bridge are both {tun:?}")));
            }
        }
        Ok(())
    }
}

fn overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

pub(super) fn tag(network: &str) -> String {
    format!("weft:{network}")
}

/// The network name, or a short form with a hash when a chain name would get too long.
fn chain_suffix(network: &str) -> String {
    if network.len() <= MAX_CHAIN_SUFFIX {
        return network.to_string();
    }
    let head: String = network.chars().take(8).collect();
    format!("{head}-H{:08X}", fnv1a32(network.as_bytes()))
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

pub(super) fn validate_network(network: &str) -> Result<(), FirewallError> {
    let ok = !network.is_empty()
        && network.len() <= 63
        && network.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
        && !network.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(FirewallError::InvalidSpec(format!(
            "network name {network:?}: expected lowercase letters, digits, '-', '_' or '.', 1 to 63 characters"
        )))
    }
}

fn validate_ifname(what: &str, name: &str) -> Result<(), FirewallError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && !name.starts_with(['-', '!', '.'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(FirewallError::InvalidSpec(format!(
            "{what} interface name {name:?}: expected 1 to 15 letters, digits, '-', '_', '.' or '@'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{spec, tunnel};
    use super::*;

    #[test]
    fn chain_names_are_per_network_and_short_enough() {
        let mut s = spec(ForwardMode::Open, false);
        assert_eq!(
            (s.forward_chain(), s.masq_chain(), s.tag()),
            ("WEFT-FWD-t".into(), "WEFT-MASQ-t".into(), "weft:t".into())
        );
        s.network = "a".repeat(18);
        assert_eq!(s.masq_chain(), format!("WEFT-MASQ-{}", "a".repeat(18)));
        assert_eq!(s.masq_chain().len(), 28);
        s.network = "production-cluster-eu-west-1".into();
        assert_eq!(s.forward_chain(), format!("WEFT-FWD-producti-H{:08X}", fnv1a32(b"production-cluster-eu-west-1")));
        let other = FirewallSpec { network: "production-cluster-eu-west-2".into(), ..s.clone() };
        assert_ne!(s.forward_chain(), other.forward_chain());
        s.network = "x".repeat(63);
        assert!(s.masq_chain().len() <= 28 && s.forward_chain().len() <= 28);
        // FNV-1a reference values.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
    }

    fn with_override(mut s: FirewallSpec, subnet: &str, mode: ForwardMode) -> FirewallSpec {
        s.overrides.insert(subnet.parse().expect("net"), mode);
        s
    }

    #[test]
    fn overrides_are_validated() {
        let base = spec(tunnel(), false);
        assert!(with_override(base.clone(), "10.244.2.0/24", ForwardMode::Open).validate().is_ok());
        let cases = [
            (with_override(base.clone(), "10.99.2.0/24", ForwardMode::Open), "not inside"),
            (with_override(base.clone(), "10.244.1.0/25", ForwardMode::Open), "overlaps the node subnet"),
            (with_override(base.clone(), "10.244.0.0/16", ForwardMode::Open), "overlaps the node subnet"),
            (
                with_override(
                    with_override(base.clone(), "10.244.2.0/23", ForwardMode::Open),
                    "10.244.3.0/24",
                    ForwardMode::Open,
                ),
                "overlap",
            ),
            (with_override(base.clone(), "10.244.2.1/24", ForwardMode::Open), "host bits"),
            (with_override(base.clone(), "10.244.2.0/24", ForwardMode::Tunnel { tun: "r-c1".into() }), "both"),
            (with_override(base, "10.244.2.0/24", ForwardMode::Tunnel { tun: "-j".into() }), "tun interface"),
        ];
        for (s, needle) in cases {
            let err = s.validate().expect_err(needle);
            assert!(err.to_string().contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn overrides_equal_to_the_default_are_not_effective() {
        let mut s = spec(tunnel(), false);
        s.overrides.insert("10.244.3.0/24".parse().expect("net"), tunnel());
        s.overrides.insert("10.244.2.0/24".parse().expect("net"), ForwardMode::Open);
        let eff: Vec<String> = s.effective_overrides().map(|(p, _)| p.to_string()).collect();
        assert_eq!(eff, ["10.244.2.0/24"]);
        assert_eq!(ForwardPolicy::uniform(ForwardMode::Open).overrides.len(), 0);
    }
}
