//! What the firewall should look like for one weft network and address family: the spec, the
//! forward policy, the names weft owns (tag, chain names) and the validation of everything that
//! reaches a command line.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::FirewallError;

/// Longest network name used verbatim in a chain name (`WEFT-MASQ-` + 18 = 28 characters).
const MAX_CHAIN_SUFFIX: usize = 18;

/// The address family of a spec (the one `Family` of the whole project): its rules go
/// through `iptables` or `ip6tables`, and match nft's `ip` or `ip6` addresses.
pub use weft_config::subnet::Family;

/// What the firewall should look like for one weft network and one address family on this
/// node. The family is the cluster CIDR's; every other address of the spec must have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    /// Network name (also the ownership tag `weft:<network>`, `weft:<network>:ip6` for IPv6).
    pub network: String,
    pub cluster_cidr: IpNet,
    /// This node's pod subnet; must lie inside `cluster_cidr`.
    pub node_subnet: IpNet,
    /// The pod bridge, e.g. `weft0`.
    pub bridge: String,
    /// The forward mode for the whole cluster CIDR (the default of the policy).
    pub mode: ForwardMode,
    /// Peer subnets whose traffic is carried differently from `mode` (say, host-gw peers of a
    /// node whose default is a tunnel). Each lies inside `cluster_cidr`, outside `node_subnet`,
    /// and overlaps no other override. Empty: exactly the rules of `mode` alone.
    pub overrides: BTreeMap<IpNet, ForwardMode>,
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
    pub overrides: BTreeMap<IpNet, ForwardMode>,
}

impl ForwardPolicy {
    /// One mode for every peer (today's host-gw and quic cases).
    pub fn uniform(mode: ForwardMode) -> Self {
        Self { default: mode, overrides: BTreeMap::new() }
    }
}

impl FirewallSpec {
    /// The family of the spec's addresses (the cluster CIDR's).
    pub fn family(&self) -> Family {
        Family::of_net(self.cluster_cidr)
    }

    /// The comment on every rule weft writes for this network and family. The IPv6 rules have
    /// their own (`weft:<network>:ip6`, `:` never occurs in a network name): an nft chain of
    /// family `inet` holds the rules of both families, and each spec keeps only its own.
    pub fn tag(&self) -> String {
        match self.family() {
            Family::V4 => tag(&self.network),
            Family::V6 => format!("{}:ip6", tag(&self.network)),
        }
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
    pub fn effective_overrides(&self) -> impl Iterator<Item = (&IpNet, &ForwardMode)> + '_ {
        self.overrides.iter().filter(move |(_, m)| **m != self.mode)
    }

    /// Checks everything that ends up in a command line.
    pub fn validate(&self) -> Result<(), FirewallError> {
        validate_network(&self.network)?;
        validate_ifname("bridge", &self.bridge)?;
        self.validate_mode(&self.mode)?;
        if self.cluster_cidr.prefix_len() == 0 {
            return Err(FirewallError::InvalidSpec(format!("cluster CIDR must not be {}", self.cluster_cidr.trunc())));
        }
        self.validate_family("node subnet", &self.node_subnet)?;
        if !self.cluster_cidr.contains(&self.node_subnet) {
            return Err(FirewallError::InvalidSpec(format!(
                "node subnet {} is not inside the cluster CIDR {}",
                self.node_subnet, self.cluster_cidr
            )));
        }
        let mut seen: Vec<IpNet> = Vec::new();
        for (subnet, mode) in &self.overrides {
            self.validate_mode(mode)?;
            self.validate_family("override", subnet)?;
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

    /// One spec, one family: `net` must have the cluster CIDR's.
    fn validate_family(&self, what: &str, net: &IpNet) -> Result<(), FirewallError> {
        let family = Family::of_net(*net);
        if family == self.family() {
            return Ok(());
        }
        Err(FirewallError::InvalidSpec(format!(
            "{what} {net} is {} but the cluster CIDR {} is {}: one spec holds one address family",
            family,
            self.cluster_cidr,
            self.family()
        )))
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

fn overlap(a: &IpNet, b: &IpNet) -> bool {
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
    use super::super::fixtures::{spec, spec6, tunnel};
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

    #[test]
    fn a_spec_is_for_the_family_of_its_cluster_cidr() {
        let (v4, v6) = (spec(tunnel(), true), spec6(tunnel(), true));
        assert_eq!((v4.family(), v6.family()), (Family::V4, Family::V6));
        assert!(v4.validate().is_ok() && v6.validate().is_ok());
        // The IPv6 rules have their own tag, the chains (in ip6tables' own tables) the same names.
        assert_eq!((v4.tag(), v6.tag()), ("weft:t".to_string(), "weft:t:ip6".to_string()));
        assert_eq!((v6.forward_chain(), v6.masq_chain()), (v4.forward_chain(), v4.masq_chain()));
        let with_override6 = with_override(v6.clone(), "fd00:244:0:2::/64", ForwardMode::Open);
        assert!(with_override6.validate().is_ok());
        assert_eq!(with_override6.effective_overrides().count(), 1);
    }

    #[test]
    fn mixed_families_are_refused_with_a_clear_error() {
        let net = |s: &str| -> IpNet { s.parse().expect("net") };
        let cases = [
            (
                FirewallSpec { node_subnet: net("10.244.1.0/24"), ..spec6(tunnel(), false) },
                "node subnet 10.244.1.0/24 is IPv4 but the cluster CIDR fd00:244::/48 is IPv6",
            ),
            (
                FirewallSpec { node_subnet: net("fd00:244:0:1::/64"), ..spec(tunnel(), false) },
                "node subnet fd00:244:0:1::/64 is IPv6 but the cluster CIDR 10.244.0.0/16 is IPv4",
            ),
            (
                with_override(spec(tunnel(), false), "fd00:244:0:2::/64", ForwardMode::Open),
                "override fd00:244:0:2::/64 is IPv6 but the cluster CIDR 10.244.0.0/16 is IPv4",
            ),
            (
                with_override(spec6(tunnel(), false), "10.244.2.0/24", ForwardMode::Open),
                "override 10.244.2.0/24 is IPv4 but the cluster CIDR fd00:244::/48 is IPv6",
            ),
        ];
        for (s, needle) in cases {
            let err = s.validate().expect_err(needle);
            assert!(err.to_string().contains(needle), "{err} should mention {needle}");
        }
        // The other checks hold for IPv6 as they do for IPv4.
        let cases = [
            (FirewallSpec { cluster_cidr: net("::/0"), ..spec6(tunnel(), false) }, "must not be ::/0"),
            (FirewallSpec { node_subnet: net("fd00:99:0:1::/64"), ..spec6(tunnel(), false) }, "not inside"),
            (with_override(spec6(tunnel(), false), "fd00:244:0:1::/80", ForwardMode::Open), "overlaps the node subnet"),
            (with_override(spec6(tunnel(), false), "fd00:244:0:2::1/64", ForwardMode::Open), "host bits"),
            (with_override(spec6(tunnel(), false), "fd00:99::/64", ForwardMode::Open), "not inside"),
        ];
        for (s, needle) in cases {
            let err = s.validate().expect_err(needle);
            assert!(err.to_string().contains(needle), "{err} should mention {needle}");
        }
    }
}
