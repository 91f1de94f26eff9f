//! Every name, path and address of a lab, computed from its id. Pure: no I/O.
//!
//! Namespaces are `weft<id>-<name>`: `weft0-u` (underlay and router), `weft0-etcd`, `weft0-ext`,
//! nodes `weft0-n1`.., pods `weft0-n1-p1`.. (made by the agents), controllers `weft0-c1`.. Files live in
//! `/run/weft-lab/<id>/`, certificates in `/run/weft-lab/<id>/pki/`.
//!
//! Addresses: segment A is 172.30.0.0/24 (router .1, etcd .2); in the flat topology every node
//! is on it at 172.30.0.(10+i). In the routed topology odd nodes stay on A and even nodes sit on
//! segment B, 172.30.1.0/24 (router 172.30.1.1), at 172.30.1.(10+i). Controller replica `k`
//! (1 to 3) sits on segment A at 172.30.0.(6+k): above etcd's members (.2 to .6), below the
//! first node (.11), so no node count or topology can collide with it.
//!
//! Labs with IPv6 ([`IpFamily::V6`] or [`IpFamily::Dual`]) add unique local addresses beside
//! those: segment A is fd00:172:30::/64, segment B fd00:172:30:1::/64, and every host keeps the
//! last group of its IPv4 address written the same way (node 1 is 172.30.0.11 and
//! fd00:172:30::11). The external namespace is 2001:db8::2 (the documentation prefix, as
//! 203.0.113.0/24 is for IPv4).

use super::{IpFamily, Topology};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use weft_controller::pki;

/// Where labs keep their files.
pub const LAB_ROOT: &str = "/run/weft-lab";
/// Where VM labs keep the files their VMs read through the shared root (not under /run, which
/// is a tmpfs of each guest's own).
pub const VM_SRC_ROOT: &str = "/var/lib/weft-lab";
/// Address of the underlay namespace on segment A (bridge `br0`); it routes between the
/// segments and toward the external namespace.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
/// Address of the underlay namespace on segment B (bridge `br1`, routed topology only).
pub const ROUTER_B_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 1, 1);
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
pub const UNDERLAY_PREFIX: u8 = 24;
/// Router side of the link to the external namespace.
pub const EXT_ROUTER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The external host: outside the cluster; the router has no route to pod subnets.
pub const EXT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const EXT_PREFIX: u8 = 24;
/// IPv6 underlay prefix length (both segments and the external link).
pub const UNDERLAY6_PREFIX: u8 = 64;
/// The router's IPv6 address on segment A and B, and on the link to the external namespace.
pub const ROUTER6_IP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x172, 0x30, 0, 0, 0, 0, 1);
pub const ROUTER6_B_IP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x172, 0x30, 1, 0, 0, 0, 1);
pub const EXT6_ROUTER_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const EXT6_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The IPv6 pod network of labs with IPv6, and its subnet length.
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/56";
pub const SUBNET_LEN6: u8 = 64;
/// etcd serves clients over TLS only and requires a client certificate signed by the lab's CA.
pub const ETCD_ENDPOINT: &str = "https://172.30.0.2:2379";
/// Certificate names in the lab's pki directory besides the nodes' (`n1`..): etcd's server
/// certificate (SAN IP 172.30.0.2 and DNS `etcd`) and weftctl's client certificate.
pub const ETCD_CERT: &str = "etcd";
pub const WEFTCTL_CERT: &str = "weftctl";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const SUBNET_LEN: u8 = 24;
pub const NETWORK: &str = "default";
/// Node addresses are 172.30.x.(10+i).
pub const MAX_NODES: usize = 200;
/// Most `weft-controller` replicas a lab runs (one leader, the others standing by).
pub const MAX_CONTROLLERS: usize = 3;
/// The controller's plain-HTTP port (page, `/api/cluster`, `/metrics`, `/healthz`).
pub const CONTROLLER_HTTP_PORT: u16 = 9650;
/// The controller's HTTPS join (bootstrap) port.
pub const CONTROLLER_BOOTSTRAP_PORT: u16 = 9651;
pub const MAX_PODS: usize = 50;
/// Where wireguard-go and boringtun make their control sockets (`<device>.sock`); shared by
/// every namespace, so the two hosts' devices need different names.
pub const WG_SOCKET_DIR: &str = "/var/run/wireguard";
/// Device tags of the bench's userspace WireGuard daemons, whose control sockets outlive a
/// bench killed with SIGKILL (`lab down` removes them).
pub const WG_DAEMON_TAGS: [&str; 3] = ["wg", "wo", "bt"];

/// The bench's tunnel device `<tag><id><i>` for host `i` of lab `id` (tags are two letters).
pub fn tunnel_device(tag: &str, id: &str, i: usize) -> String {
    format!("{tag}{id}{i}")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("--id: expected 1 to 12 lowercase letters or digits, found {0:?}")]
    BadId(String),
    #[error("expected a target like n1, n1/p2, c1, etcd, u or ext, found {0:?}")]
    BadTarget(String),
}

/// Checks a lab id: short, `[a-z0-9]`, so `weft<id>-` prefixes never overlap.
pub fn validate_id(id: &str) -> Result<(), NameError> {
    if id.is_empty() || id.len() > 12 || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(NameError::BadId(id.to_string()));
    }
    Ok(())
}

/// Where a node sits on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddr {
    pub ip: Ipv4Addr,
    /// The router's address on the node's segment (the node's default gateway).
    pub gateway: Ipv4Addr,
    /// The bridge of the node's segment in the underlay namespace.
    pub bridge: &'static str,
}

impl NodeAddr {
    /// The IPv6 address of the same host: the segment's ULA prefix, the IPv4 address's last
    /// group written the same way (172.30.1.12 is fd00:172:30:1::12).
    pub fn ip6(&self) -> Ipv6Addr {
        let [_, _, segment, host] = self.ip.octets();
        Ipv6Addr::new(0xfd00, 0x172, 0x30, u16::from(segment), 0, 0, 0, same_digits(host))
    }

    /// The router's IPv6 address on the node's segment.
    pub fn gateway6(&self) -> Ipv6Addr {
        let [_, _, segment, host] = self.gateway.octets();
        Ipv6Addr::new(0xfd00, 0x172, 0x30, u16::from(segment), 0, 0, 0, same_digits(host))
    }

    /// The addresses a lab of `family` gives this host on the underlay.
    pub fn ips(&self, family: IpFamily) -> Vec<std::net::IpAddr> {
        let mut ips = Vec::new();
        if family.has_v4() {
            ips.push(self.ip.into());
        }
        if family.has_v6() {
            ips.push(self.ip6().into());
        }
        ips
    }
}

/// A decimal number's digits read as hexadecimal (11 -> 0x11), so an IPv6 group reads like
/// the IPv4 octet it mirrors.
fn same_digits(octet: u8) -> u16 {
    u16::from_str_radix(&octet.to_string(), 16).unwrap_or(0)
}

/// Controller replica `k`'s address (1-based, at most [`MAX_CONTROLLERS`]): 172.30.0.(6+k), on
/// segment A in every topology.
pub fn controller_addr(k: usize) -> NodeAddr {
    let host = u8::try_from(6 + k.clamp(1, MAX_CONTROLLERS)).unwrap_or(7);
    NodeAddr { ip: Ipv4Addr::new(172, 30, 0, host), gateway: ROUTER_IP, bridge: BRIDGE_A }
}

/// Bridges of the two segments in the underlay namespace.
pub const BRIDGE_A: &str = "br0";
pub const BRIDGE_B: &str = "br1";

/// Where node `i` (1-based, at most [`MAX_NODES`]) sits in `topology`.
pub fn node_addr(topology: Topology, i: usize) -> NodeAddr {
    let host = u8::try_from(10 + i).unwrap_or(255);
    match topology {
        Topology::Routed if i.is_multiple_of(2) => {
            NodeAddr { ip: Ipv4Addr::new(172, 30, 1, host), gateway: ROUTER_B_IP, bridge: BRIDGE_B }
        }
        _ => NodeAddr { ip: Ipv4Addr::new(172, 30, 0, host), gateway: ROUTER_IP, bridge: BRIDGE_A },
    }
}

/// Files of one node's agent, all inside the node's lab directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub subnet_env: PathBuf,
    pub socket: PathBuf,
    pub pid_file: PathBuf,
    pub log: PathBuf,
}

/// Files of one controller replica, all inside its lab directory (`<lab>/ctl<k>/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerPaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

/// Names of one lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabNames {
    id: String,
    dir: PathBuf,
}

impl LabNames {
    pub fn new(id: &str) -> Result<Self, NameError> {
        Self::with_root(id, Path::new(LAB_ROOT))
    }

    /// Same names with the files under another root (for tests).
    pub fn with_root(id: &str, root: &Path) -> Result<Self, NameError> {
        validate_id(id)?;
        Ok(Self { id: id.to_string(), dir: root.join(id) })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `weft<id>-`: every namespace of this lab starts with it.
    pub fn prefix(&self) -> String {
        format!("weft{}-", self.id)
    }

    pub fn owns_ns(&self, ns: &str) -> bool {
        ns.strip_prefix(&self.prefix()).is_some_and(|rest| !rest.is_empty())
    }

    pub fn underlay_ns(&self) -> String {
        format!("{}u", self.prefix())
    }

    pub fn etcd_ns(&self) -> String {
        format!("{}etcd", self.prefix())
    }

    pub fn ext_ns(&self) -> String {
        format!("{}ext", self.prefix())
    }

    /// `n<i>` (1-based).
    pub fn node_name(i: usize) -> String {
        format!("n{i}")
    }

    /// `p<j>` (1-based).
    pub fn pod_name(j: usize) -> String {
        format!("p{j}")
    }

    pub fn node_ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix())
    }

    /// Namespace of pod `pod` on node `i`, as the lab configures it.
    pub fn pod_ns(&self, i: usize, pod: &str) -> String {
        format!("{}n{i}-{pod}", self.prefix())
    }

    /// `c<k>` (1-based): controller replica `k`'s name in the election and its certificate's.
    pub fn controller_name(k: usize) -> String {
        format!("c{k}")
    }

    /// `weft<id>-c<k>`: controller replica `k`'s namespace.
    pub fn controller_ns(&self, k: usize) -> String {
        format!("{}c{k}", self.prefix())
    }

    pub fn controller_paths(&self, k: usize) -> ControllerPaths {
        let dir = self.dir.join(format!("ctl{k}"));
        ControllerPaths { config: dir.join("controller.toml"), log: dir.join("controller.log"), dir }
    }

    pub fn node_id(&self, i: usize) -> String {
        format!("lab-{}-n{i}", self.id)
    }

    /// 172.30.0.(10+i): node `i`'s address in the *flat* topology. `Lab::node_ip` and
    /// [`node_addr`] follow the lab's topology.
    pub fn node_ip(i: usize) -> Ipv4Addr {
        node_addr(Topology::Flat, i).ip
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn etcd_data_dir(&self) -> PathBuf {
        self.dir.join("etcd").join("data")
    }

    pub fn etcd_log(&self) -> PathBuf {
        self.dir.join("etcd").join("etcd.log")
    }

    /// The lab's CA and certificates (see [`weft_controller::pki`] for the file layout).
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// The lab CA's `ca.pem` and `ca.key`.
    pub fn ca_files(&self) -> pki::CertFiles {
        pki::ca_files(&self.pki_dir())
    }

    /// `pki/NAME.pem` and `pki/NAME.key` (`n1`.., [`ETCD_CERT`], [`WEFTCTL_CERT`]).
    pub fn cert_files(&self, name: &str) -> pki::CertFiles {
        pki::cert_files(&self.pki_dir(), name)
    }

    /// VM node `i`'s directory: QEMU's control socket and console log, its disk, its seed. On
    /// disk under [`VM_SRC_ROOT`], not in /run: /run is usually a small tmpfs, and everything a
    /// guest writes (install.sh's copies of the binaries, journals) lands in its disk image.
    pub fn vm_dir(&self, i: usize) -> PathBuf {
        self.vm_files_dir().join(format!("vm{i}"))
    }

    /// What the VM guide copies to `/usr/local/src/weft` on every node (VM labs), where the
    /// VMs see it: on disk under [`VM_SRC_ROOT`], since a guest's `/run` and `/tmp` are its own.
    pub fn src_dir(&self) -> PathBuf {
        self.vm_files_dir().join("src")
    }

    /// The lab's files that its VMs read from this machine's root, and the VMs' own directories
    /// (`lab down` removes it).
    pub fn vm_files_dir(&self) -> PathBuf {
        Path::new(VM_SRC_ROOT).join(&self.id)
    }

    /// VM node `i`'s tap in the underlay namespace.
    pub fn vm_tap(i: usize) -> String {
        format!("vm{i}")
    }

    /// VM node `i`'s MAC address: QEMU's prefix, then the last two octets of its IPv4 address.
    pub fn vm_mac(i: usize) -> String {
        let [_, _, c, d] = Self::node_ip(i).octets();
        format!("52:54:00:30:{c:02x}:{d:02x}")
    }

    pub fn node_paths(&self, i: usize) -> NodePaths {
        let dir = self.dir.join(Self::node_name(i));
        NodePaths {
            config: dir.join("agent.toml"),
            state_dir: dir.join("state"),
            subnet_env: dir.join("subnet.env"),
            socket: dir.join("agent.sock"),
            pid_file: dir.join("agent.pid"),
            log: dir.join("agent.log"),
            dir,
        }
    }
}

/// What `lab exec` runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Node(usize),
    /// Node index and pod name.
    Pod(usize, String),
    /// Controller replica `k`.
    Controller(usize),
    Etcd,
    Underlay,
    Ext,
}

impl FromStr for Target {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let bad = || NameError::BadTarget(s.to_string());
        match s {
            "etcd" => return Ok(Target::Etcd),
            "u" => return Ok(Target::Underlay),
            "ext" => return Ok(Target::Ext),
            _ => {}
        }
        let index = |d: &str| {
            Some(d)
                .filter(|d| !d.is_empty() && !d.starts_with('0') && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<usize>().ok())
        };
        if let Some(k) = s.strip_prefix('c') {
            return index(k).filter(|k| (1..=MAX_CONTROLLERS).contains(k)).map(Target::Controller).ok_or_else(bad);
        }
        let (node, pod) = match s.split_once('/') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        };
        let i = node.strip_prefix('n').and_then(index).filter(|i| (1..=MAX_NODES).contains(i)).ok_or_else(bad)?;
        match pod {
            None => Ok(Target::Node(i)),
            Some(p) if weft_config::agent::valid_name(p) => Ok(Target::Pod(i, p.to_string())),
            Some(_) => Err(bad()),
        }
    }
}

impl Target {
    /// The namespace by the lab's naming rule.
    pub fn netns(&self, names: &LabNames) -> String {
        match self {
            Target::Node(i) => names.node_ns(*i),
            Target::Pod(i, p) => names.pod_ns(*i, p),
            Target::Controller(k) => names.controller_ns(*k),
            Target::Etcd => names.etcd_ns(),
            Target::Underlay => names.underlay_ns(),
            Target::Ext => names.ext_ns(),
        }
    }

    /// The node a target belongs to (whose socket `WEFT_SOCKET` points at).
    pub fn node(&self) -> Option<usize> {
        match self {
            Target::Node(i) | Target::Pod(i, _) => Some(*i),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_scheme() {
        let n = LabNames::new("0").expect("id");
        assert_eq!(n.underlay_ns(), "weft0-u");
        assert_eq!(n.etcd_ns(), "weft0-etcd");
        assert_eq!(n.ext_ns(), "weft0-ext");
        assert_eq!(n.node_ns(3), "weft0-n3");
        assert_eq!(n.pod_ns(3, "p2"), "weft0-n3-p2");
        assert_eq!(n.node_id(3), "lab-0-n3");
        assert_eq!(LabNames::node_ip(1), Ipv4Addr::new(172, 30, 0, 11));
        assert_eq!(n.pki_dir(), Path::new("/run/weft-lab/0/pki"));
        assert_eq!(n.ca_files().key, Path::new("/run/weft-lab/0/pki/ca.key"));
        assert_eq!(n.cert_files("n2").cert, Path::new("/run/weft-lab/0/pki/n2.pem"));
        assert_eq!(n.dir(), Path::new("/run/weft-lab/0"));
        let p = n.node_paths(2);
        assert_eq!(p.socket, Path::new("/run/weft-lab/0/n2/agent.sock"));
        assert_eq!(p.config, Path::new("/run/weft-lab/0/n2/agent.toml"));
        assert!(n.owns_ns("weft0-n1-p1"));
        assert!(!n.owns_ns("weft01-n1"), "lab 01 is another lab");
        assert!(!n.owns_ns("weft0-"));
        assert!(!n.owns_ns("other"));
    }

    #[test]
    fn routed_nodes_alternate_between_segments() {
        let a = |i| node_addr(Topology::Routed, i);
        assert_eq!(a(1), NodeAddr { ip: Ipv4Addr::new(172, 30, 0, 11), gateway: ROUTER_IP, bridge: "br0" });
        assert_eq!(a(2), NodeAddr { ip: Ipv4Addr::new(172, 30, 1, 12), gateway: ROUTER_B_IP, bridge: "br1" });
        assert_eq!(a(3).ip, Ipv4Addr::new(172, 30, 0, 13));
        assert_eq!(a(200).ip, Ipv4Addr::new(172, 30, 1, 210));
        for i in 1..=MAX_NODES {
            let f = node_addr(Topology::Flat, i);
            assert_eq!((f.gateway, f.bridge), (ROUTER_IP, "br0"));
            assert_ne!(f.ip, ETCD_IP);
            assert_ne!(a(i).ip, ETCD_IP);
        }
    }

    #[test]
    fn ipv6_addresses_mirror_the_ipv4_ones() {
        let a = node_addr(Topology::Routed, 2);
        assert_eq!(a.ip6(), "fd00:172:30:1::12".parse::<Ipv6Addr>().expect("lit"));
        assert_eq!(a.gateway6(), ROUTER6_B_IP);
        let f = node_addr(Topology::Flat, 200);
        assert_eq!(f.ip6(), "fd00:172:30::210".parse::<Ipv6Addr>().expect("lit"));
        assert_eq!(f.gateway6(), ROUTER6_IP);
        assert_eq!(f.ips(IpFamily::V4), vec![std::net::IpAddr::from(f.ip)]);
        assert_eq!(f.ips(IpFamily::V6), vec![std::net::IpAddr::from(f.ip6())]);
        assert_eq!(f.ips(IpFamily::Dual).len(), 2);
        let mut seen = std::collections::HashSet::new();
        for i in 1..=MAX_NODES {
            assert!(seen.insert(node_addr(Topology::Routed, i).ip6()), "node {i}'s IPv6 address is unique");
        }
    }

    #[test]
    fn controllers_sit_between_etcd_and_the_nodes() {
        let n = LabNames::new("0").expect("id");
        assert_eq!(n.controller_ns(2), "weft0-c2");
        assert!(n.owns_ns(&n.controller_ns(3)));
        assert_eq!(LabNames::controller_name(1), "c1");
        let p = n.controller_paths(1);
        assert_eq!(p.config, Path::new("/run/weft-lab/0/ctl1/controller.toml"));
        assert_eq!(p.log, Path::new("/run/weft-lab/0/ctl1/controller.log"));
        assert_eq!(controller_addr(1).ip, Ipv4Addr::new(172, 30, 0, 7));
        assert_eq!(controller_addr(MAX_CONTROLLERS).ip, Ipv4Addr::new(172, 30, 0, 9));
        let etcd: Vec<Ipv4Addr> = (1..=crate::etcd_server::MAX_MEMBERS).map(crate::etcd_server::member_ip).collect();
        for k in 1..=MAX_CONTROLLERS {
            let c = controller_addr(k);
            assert_eq!((c.gateway, c.bridge), (ROUTER_IP, BRIDGE_A));
            assert!(!etcd.contains(&c.ip), "controller {k} on an etcd member's address");
            for topology in [Topology::Flat, Topology::Routed] {
                for i in 1..=MAX_NODES {
                    assert_ne!(node_addr(topology, i).ip, c.ip, "controller {k} and node {i} ({topology})");
                }
            }
        }
    }

    #[test]
    fn ids_are_checked() {
        assert!(LabNames::new("t7").is_ok());
        for bad in ["", "A", "a-b", "a/b", "1234567890123"] {
            assert_eq!(LabNames::new(bad), Err(NameError::BadId(bad.to_string())), "{bad:?}");
        }
    }

    #[test]
    fn targets() {
        let n = LabNames::new("2").expect("id");
        let t: Target = "n1/p2".parse().expect("pod");
        assert_eq!(t, Target::Pod(1, "p2".into()));
        assert_eq!(t.netns(&n), "weft2-n1-p2");
        assert_eq!(t.node(), Some(1));
        assert_eq!("n12".parse::<Target>(), Ok(Target::Node(12)));
        assert_eq!("etcd".parse::<Target>().map(|t| t.netns(&n)), Ok("weft2-etcd".into()));
        assert_eq!("u".parse::<Target>().map(|t| t.netns(&n)), Ok("weft2-u".into()));
        assert_eq!("ext".parse::<Target>().map(|t| t.node()), Ok(None));
        assert_eq!("c2".parse::<Target>().map(|t| t.netns(&n)), Ok("weft2-c2".into()));
        assert_eq!("c1".parse::<Target>().map(|t| t.node()), Ok(None));
        for bad in ["", "n", "n0", "n01", "x1", "n1/", "n1/P", "n1/a/b", "n999", "n-1", "/p1", "c", "c0", "c4", "c1/p1"]
        {
            assert!(bad.parse::<Target>().is_err(), "{bad:?} should be refused");
        }
    }
}
