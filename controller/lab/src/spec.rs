//! What a lab is made of: [`LabSpec`] (written to state.json as it is) with its
//! [`Topology`] and [`IpFamily`], and the checks `up` makes before building anything.

use crate::etcd_server;
use crate::names::{self, MAX_CONTROLLERS, MAX_NODES, MAX_PODS};
use crate::node::NodeKind;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use weft_config::Backend;
use weft_controller::error::UsageError;

/// How the underlay is laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// One L2 segment: every node on one bridge.
    #[default]
    Flat,
    /// Two L2 segments joined by the underlay namespace as a router: odd nodes on
    /// 172.30.0.0/24 (with etcd), even nodes on 172.30.1.0/24. UDP crosses; host-gw cannot.
    Routed,
}

impl std::fmt::Display for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Topology::Flat => "flat",
            Topology::Routed => "routed",
        })
    }
}

impl std::str::FromStr for Topology {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "flat" => Ok(Topology::Flat),
            "routed" => Ok(Topology::Routed),
            other => Err(format!("expected flat or routed, found {other:?}")),
        }
    }
}

/// The address families of a lab: of its pod network and of its underlay (etcd stays on the
/// IPv4 underlay in every lab, so IPv6-only labs keep IPv4 on the underlay for it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IpFamily {
    #[default]
    V4,
    V6,
    Dual,
}

impl IpFamily {
    /// The pod network has IPv4 subnets.
    pub fn has_v4(self) -> bool {
        self != IpFamily::V6
    }

    /// The pod network has IPv6 subnets (and the underlay IPv6 addresses).
    pub fn has_v6(self) -> bool {
        self != IpFamily::V4
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "v4",
            IpFamily::V6 => "v6",
            IpFamily::Dual => "dual",
        })
    }
}

impl std::str::FromStr for IpFamily {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v4" => Ok(IpFamily::V4),
            "v6" => Ok(IpFamily::V6),
            "dual" => Ok(IpFamily::Dual),
            other => Err(format!("expected v4, v6 or dual, found {other:?}")),
        }
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    /// Lab id: namespaces are `weft<id>-...`, files in `/run/weft-lab/<id>`.
    pub id: String,
    pub nodes: usize,
    /// Pods per node, declared in each agent's config (`p1`.., namespace `weft<id>-n<i>-p<j>`).
    pub pods: usize,
    pub backend: Backend,
    pub topology: Topology,
    pub ip_masq: bool,
    pub reconcile_secs: u64,
    /// `weft-agent` to run; default: next to the current executable (see [`crate::bins`]).
    pub agent_bin: Option<PathBuf>,
    /// `weftctl` to run inside namespaces; default: next to the current executable.
    pub weftctl_bin: Option<PathBuf>,
    /// How long `up` waits for every agent to be ready.
    pub ready_timeout_secs: u64,
    /// etcd members (1 to 5): member `k` runs in `weft<id>-etcd<k>` (the first in
    /// `weft<id>-etcd`) at 172.30.0.(1+k); agents get every endpoint.
    #[serde(default = "one")]
    pub etcd_members: usize,
    /// The last this-many nodes are wired and configured, but `up` does not start their agents
    /// (start them with [`crate::Lab::start_agent`]): nodes that join a running cluster later.
    #[serde(default)]
    pub deferred_agents: usize,
    /// Cluster CIDR and subnet length that `up` writes with `weftctl network init`.
    #[serde(default = "default_cidr")]
    pub cidr: String,
    #[serde(default = "default_subnet_len")]
    pub subnet_len: u8,
    /// What the nodes are made of (see [`crate::node`]); recorded so `down` needs no running lab.
    #[serde(default)]
    pub node_kind: NodeKind,
    /// Address families of the pod network (and of the underlay's data path).
    #[serde(default)]
    pub ip_family: IpFamily,
    /// IPv6 cluster CIDR and subnet length, used when `ip_family` has IPv6.
    #[serde(default = "default_cidr6")]
    pub cidr6: String,
    #[serde(default = "default_subnet_len6")]
    pub subnet_len6: u8,
    /// With `backend` auto: how peers behind the router are reached (vxlan, quic or wireguard).
    #[serde(default = "default_encap")]
    pub encap: Backend,
    /// `weft-controller` replicas (0: none, at most [`MAX_CONTROLLERS`]): replica `k` runs in
    /// `weft<id>-c<k>` at 172.30.0.(6+k); one leads, the others stand by.
    #[serde(default)]
    pub controllers: usize,
    /// The controllers' `evict_after` (whole seconds); `None`: the controller's default (1 h).
    #[serde(default)]
    pub evict_after: Option<Duration>,
    /// Nodes join with a token instead of certificates the lab issues (needs a controller): the
    /// lab creates one token for all of them and gives each agent.toml a `[bootstrap]` section.
    #[serde(default)]
    pub join: bool,
    /// With `join`: the lifetime of the certificates the controller signs
    /// (`[bootstrap] cert_lifetime_secs`); `None`: the controller's default (30 days).
    #[serde(default)]
    pub join_cert_lifetime: Option<Duration>,
    /// With `join`: the agents' `[bootstrap] renew_before_secs`; `None`: their default (a third
    /// of the lifetime). Tests set both to see a renewal within seconds.
    #[serde(default)]
    pub join_renew_before: Option<Duration>,
    /// `weft-controller` to run; default: next to the current executable (see [`crate::bins`]).
    #[serde(default)]
    pub controller_bin: Option<PathBuf>,
    /// The network's resolver settings (`network init --dns-*`): the pods' resolv.conf, and the
    /// lab's Docker daemons' `dns` settings.
    #[serde(default)]
    pub dns: Option<weft_config::dns::DnsSettings>,
    /// With quic (or auto over quic): every agent's `quic.threads`; `None`: the agent's default
    /// (the core count, at most 8).
    #[serde(default)]
    pub quic_threads: Option<usize>,
}

fn default_encap() -> Backend {
    Backend::Vxlan
}

fn default_cidr6() -> String {
    names::CLUSTER_CIDR6.to_string()
}

fn default_subnet_len6() -> u8 {
    names::SUBNET_LEN6
}

fn one() -> usize {
    1
}

fn default_cidr() -> String {
    names::CLUSTER_CIDR.to_string()
}

fn default_subnet_len() -> u8 {
    names::SUBNET_LEN
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            id: "0".into(),
            nodes: 2,
            pods: 0,
            backend: Backend::HostGw,
            topology: Topology::Flat,
            ip_masq: false,
            reconcile_secs: 10,
            agent_bin: None,
            weftctl_bin: None,
            ready_timeout_secs: 60,
            etcd_members: 1,
            deferred_agents: 0,
            cidr: default_cidr(),
            subnet_len: default_subnet_len(),
            node_kind: NodeKind::default(),
            ip_family: IpFamily::default(),
            cidr6: default_cidr6(),
            subnet_len6: default_subnet_len6(),
            encap: default_encap(),
            controllers: 0,
            evict_after: None,
            join: false,
            join_cert_lifetime: None,
            join_renew_before: None,
            controller_bin: None,
            dns: None,
            quic_threads: None,
        }
    }
}

/// Most VM nodes a lab boots (each takes 250-600 MB of memory and a share of two cores under
/// TCG).
pub const MAX_VMS: usize = 8;

impl LabSpec {
    /// A lab of `n` VM nodes: they join with a token through one controller, as the VM guide's
    /// nodes do, and get 15 minutes to become ready (software emulation).
    pub fn vms(id: &str, n: usize) -> Self {
        Self {
            id: id.to_string(),
            nodes: n,
            node_kind: NodeKind::Vm,
            controllers: 1,
            join: true,
            ready_timeout_secs: 900,
            ..Self::default()
        }
    }

    /// Checks the spec; errors name the flag and the expectation.
    pub fn validate(&self) -> Result<(), UsageError> {
        names::validate_id(&self.id).map_err(|e| UsageError::new(e.to_string()))?;
        if self.node_kind == NodeKind::Vm {
            self.validate_vms()?;
        }
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return Err(UsageError::new(format!("--nodes: expected 1 to {MAX_NODES}, found {}", self.nodes)));
        }
        if self.pods > MAX_PODS {
            return Err(UsageError::new(format!("--pods: expected 0 to {MAX_PODS}, found {}", self.pods)));
        }
        if !(1..=3600).contains(&self.reconcile_secs) {
            return Err(UsageError::new(format!(
                "--reconcile-secs: expected 1 to 3600, found {}",
                self.reconcile_secs
            )));
        }
        if !(1..=etcd_server::MAX_MEMBERS).contains(&self.etcd_members) {
            return Err(UsageError::new(format!(
                "--etcd-members: expected 1 to {}, found {}",
                etcd_server::MAX_MEMBERS,
                self.etcd_members
            )));
        }
        if self.deferred_agents > self.nodes {
            return Err(UsageError::new(format!(
                "--deferred-agents: expected at most --nodes ({}), found {}",
                self.nodes, self.deferred_agents
            )));
        }
        if self.controllers > MAX_CONTROLLERS {
            return Err(UsageError::new(format!(
                "--controllers: expected 1 to {MAX_CONTROLLERS}, found {}",
                self.controllers
            )));
        }
        if let Some(after) = self.evict_after {
            if self.controllers == 0 {
                return Err(UsageError::new("--evict-after: needs --controller (nothing evicts without one)"));
            }
            if after.subsec_nanos() != 0 || after.is_zero() {
                return Err(UsageError::new(format!(
                    "--evict-after: expected whole seconds, at least 1 s, found {after:?}"
                )));
            }
        }
        if self.join && self.controllers == 0 {
            return Err(UsageError::new("--join: needs --controller (the controller signs the nodes' certificates)"));
        }
        let v4 = self.ip_family.has_v4().then_some((self.cidr.as_str(), self.subnet_len));
        let v6 = self.ip_family.has_v6().then_some((self.cidr6.as_str(), self.subnet_len6));
        weft_config::NetworkConfig::with_pools("flags", v4, v6, self.backend)
            .and_then(|c| c.with_encap("flags", self.encap))
            .and_then(|c| c.with_dns("flags", self.dns.clone().unwrap_or_default()))
            .map_err(|e| {
                let flag = format!("--{}", e.field.replace('_', "-"));
                UsageError::new(format!("{flag}: {}", e.message))
            })?;
        Ok(())
    }
}

impl LabSpec {
    /// What VM labs do not have (yet): they are one flat IPv4 segment with one etcd member, and
    /// their nodes join through a controller.
    fn validate_vms(&self) -> Result<(), UsageError> {
        if !(1..=MAX_VMS).contains(&self.nodes) {
            return Err(UsageError::new(format!("--vms: expected 1 to {MAX_VMS}, found {}", self.nodes)));
        }
        let unsupported = [
            (self.topology != Topology::Flat, "--topology routed"),
            (self.ip_family != IpFamily::V4, "--ip-family v6 or dual"),
            (self.etcd_members != 1, "--etcd-members above 1"),
            (self.deferred_agents != 0, "--deferred-agents"),
            (self.quic_threads.is_some(), "--quic-threads (the guide's agent.toml decides)"),
        ];
        if let Some((_, flag)) = unsupported.iter().find(|(bad, _)| *bad) {
            return Err(UsageError::new(format!("--vms: {flag} is not supported with VM nodes")));
        }
        if self.controllers == 0 || !self.join {
            return Err(UsageError::new(
                "--vms: VM nodes join with a token through the controller, as the VM guide's do (needs a controller and join)",
            ));
        }
        Ok(())
    }
}

/// A duration as `lab up --evict-after` takes it: a whole number followed by `s`, `m` or `h`
/// (`30s`, `5m`, `1h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected = || format!("expected a duration like 30s, 5m or 1h, found {s:?}");
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(expected)?);
    let n: u64 = digits.parse().map_err(|_| expected())?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(expected()),
    };
    match n.checked_mul(per) {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(format!("expected a duration of at least 1s, found {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "30", "s", "1.5h", "-1s", "1d", "1 s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse_duration("0s"), Err("expected a duration of at least 1s, found \"0s\"".into()));
    }

    #[test]
    fn controller_flags_are_checked() {
        let bad = |spec: LabSpec| spec.validate().expect_err("refused").to_string();
        let ctl = |controllers| LabSpec { controllers, ..LabSpec::default() };
        assert!(ctl(3).validate().is_ok());
        assert_eq!(bad(ctl(4)), "--controllers: expected 1 to 3, found 4");
        let after = Some(Duration::from_secs(6));
        assert_eq!(
            bad(LabSpec { evict_after: after, ..ctl(0) }),
            "--evict-after: needs --controller (nothing evicts without one)"
        );
        assert!(LabSpec { evict_after: after, ..ctl(1) }.validate().is_ok());
        assert!(bad(LabSpec { evict_after: Some(Duration::from_millis(1500)), ..ctl(1) }).contains("whole seconds"));
        assert!(bad(LabSpec { join: true, ..ctl(0) }).starts_with("--join: needs --controller"));
        assert!(LabSpec { join: true, ..ctl(1) }.validate().is_ok());
    }

    #[test]
    fn vm_labs_are_checked() {
        assert!(LabSpec::vms("v1", 3).validate().is_ok());
        let bad = |spec: LabSpec| spec.validate().expect_err("refused").to_string();
        assert_eq!(bad(LabSpec::vms("v1", 9)), "--vms: expected 1 to 8, found 9");
        assert_eq!(
            bad(LabSpec { topology: Topology::Routed, ..LabSpec::vms("v1", 2) }),
            "--vms: --topology routed is not supported with VM nodes"
        );
        assert!(bad(LabSpec { join: false, ..LabSpec::vms("v1", 2) }).contains("join with a token"));
        assert!(bad(LabSpec { quic_threads: Some(2), ..LabSpec::vms("v1", 2) }).contains("--quic-threads"));
    }

    #[test]
    fn state_files_from_before_controllers_still_load() {
        let mut v = serde_json::to_value(LabSpec::default()).expect("json");
        for k in ["controllers", "evict_after", "join", "controller_bin"] {
            v.as_object_mut().expect("object").remove(k);
        }
        let spec: LabSpec = serde_json::from_value(v).expect("an old spec");
        assert_eq!((spec.controllers, spec.evict_after, spec.join), (0, None, false));
    }
}
