//! The book of what Docker holds on this node: the addresses its IPAM asked for and the
//! endpoints its network driver created, kept in the state dir (`docker.json`) so an agent
//! restart keeps running containers' addresses and veths. Every decision here is pure: the
//! node's subnets and the addresses of weft's own pods come in, an answer or a [`Refusal`]
//! comes out, and the kernel work is left to the daemon.
//!
//! Docker's pool ids are the node's subnets themselves (`10.244.1.0/24`), so a pool needs no
//! record and an id from before a subnet change is recognised as stale.
//!
//! An IPv4 pool asked for without `--subnet` is answered as `0.0.0.0/0` (with the subnet as its
//! id): libnetwork checks a local network's automatic IPv4 pool against the host's routes and
//! asks again, for ever, while it overlaps one, and the node's subnet always overlaps the
//! bridge's own route. `0.0.0.0/0` is the one pool it does not check (Calico's plugin answers
//! the same). The addresses, gateway and prefix length still come from the subnet.

use crate::state::{PodRecord, PodSource, StateDir};
use anyhow::Result;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use weft_config::subnet::{self, Family, PerFamily};

use super::protocol::{CreateEndpoint, RequestAddress, RequestPool};

/// The state file.
pub const FILE: &str = "docker.json";

/// Why a request is refused (the message goes back to Docker as `Err`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this node holds no {0} subnet (the weft network has no {0} pool)")]
    NoSubnet(Family),
    #[error("pool {asked} asked for, but this node's {family} subnet is {have}; leave out --subnet/--ip-range")]
    OtherPool { asked: String, family: Family, have: IpNet },
    #[error("pool {0:?} is not one of this node's subnets (was the node's subnet replaced?)")]
    UnknownPool(String),
    #[error("{what} {value:?} is not an IP address")]
    BadAddress { what: &'static str, value: String },
    #[error("{addr} is not a container address of {pool}")]
    NotInPool { addr: IpAddr, pool: IpNet },
    #[error("{addr} is the gateway of {pool}, not a container address")]
    Gateway { addr: IpAddr, pool: IpNet },
    #[error("{addr} belongs to weft pod {pod}")]
    PodAddress { addr: IpAddr, pod: String },
    #[error("{addr} belongs to Docker endpoint {endpoint}")]
    EndpointAddress { addr: IpAddr, endpoint: String },
    #[error("no free address left in {0}")]
    Full(IpNet),
    #[error("endpoint id {0:?} is not 12 to 128 letters or digits")]
    BadId(String),
    #[error("endpoint {0} has no address from weft: create the network with --ipam-driver weft")]
    NoAddress(String),
    #[error("endpoint {0} exists with other addresses")]
    EndpointExists(String),
    #[error("unknown endpoint {0}")]
    UnknownEndpoint(String),
    #[error("network pool {pool:?} is not one of this node's subnets: create the network with --ipam-driver weft")]
    NetworkPool { pool: String },
    #[error("this node already has a weft network ({have}, with containers): Docker networks on weft share the node's subnet and bridge, so there is one; use it")]
    SecondNetwork { have: String },
    #[error("network {asked} is not this node's weft network ({have}); use that one")]
    OtherNetwork { asked: String, have: String },
    #[error("endpoint id {id} shares its first 12 characters with endpoint {other}")]
    IdCollision { id: String, other: String },
}

/// Where an endpoint is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Attachment {
    /// Created, not in a sandbox (before Join, after Leave).
    Detached,
    /// In Docker's sandbox `sandbox`; the veth's host end `host_veth` is on the bridge.
    Joined { sandbox: String, host_veth: String },
}

/// One endpoint of a Docker network on the weft driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub network: String,
    /// Its addresses, at most one per family, IPv4 first.
    pub addrs: Vec<IpAddr>,
    pub attachment: Attachment,
}

/// Docker's addresses and endpoints on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Book {
    /// Addresses Docker's IPAM holds: handed out (or confirmed) and not released yet.
    #[serde(default)]
    pub reserved: BTreeSet<IpAddr>,
    /// Endpoints by Docker's endpoint id.
    #[serde(default)]
    pub endpoints: BTreeMap<String, Endpoint>,
    /// The id of the Docker network on the weft driver (there is one per node: every network
    /// on weft would share the node's subnet and bridge). Learned from CreateNetwork, or from
    /// an endpoint for a book written before this was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// The node as the book sees it: its subnets, and the addresses of weft's own pods (with the
/// pod's name).
pub struct View<'a> {
    pub subnets: PerFamily<IpNet>,
    pub pods: &'a BTreeMap<IpAddr, String>,
}

/// The IPv4 pool that libnetwork does not check against the host's routes.
pub const ANY_V4: &str = "0.0.0.0/0";

/// A RequestPool's answer: the pool id (the node's subnet of the asked family) and the pool
/// Docker records (the subnet, or [`ANY_V4`] for an IPv4 pool asked for without a subnet).
pub fn request_pool(subnets: &PerFamily<IpNet>, req: &RequestPool) -> Result<(IpNet, String), Refusal> {
    let family = if req.v6 { Family::V6 } else { Family::V4 };
    let have = *subnets.get(family).ok_or(Refusal::NoSubnet(family))?;
    let any = family == Family::V4 && (req.pool.is_empty() || req.pool == ANY_V4);
    for asked in [&req.pool, &req.sub_pool].into_iter().filter(|p| !p.is_empty() && (!any || **p != ANY_V4)) {
        if asked.parse::<IpNet>().map(|n| n.trunc()) != Ok(have) {
            return Err(Refusal::OtherPool { asked: asked.clone(), family, have });
        }
    }
    Ok((have, if any { ANY_V4.to_string() } else { have.to_string() }))
}

/// The node's subnet a pool id names.
pub fn pool_of(subnets: &PerFamily<IpNet>, pool_id: &str) -> Result<IpNet, Refusal> {
    let net: IpNet = pool_id.parse().map_err(|_| Refusal::UnknownPool(pool_id.to_string()))?;
    match subnets.get(Family::of_net(net)) {
        Some(s) if *s == net => Ok(net),
        _ => Err(Refusal::UnknownPool(pool_id.to_string())),
    }
}

/// Checks a CreateNetwork's pools (pool, gateway): each is one of the node's subnets, or
/// [`ANY_V4`] with the node's IPv4 gateway (weft's IPAM answered both).
pub fn check_network_pools<'a>(
    subnets: &PerFamily<IpNet>,
    pools: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), Refusal> {
    for (pool, gateway) in pools {
        let ours = |n: IpNet| subnets.get(Family::of_net(n)) == Some(&n);
        let ok = match pool.parse::<IpNet>() {
            Ok(n) if ours(n) => true,
            Ok(_) if pool == ANY_V4 => {
                let gw = parse_addr("Gateway", gateway).ok();
                subnets.get(Family::V4).is_some_and(|s| gw == Some(subnet::gateway(*s)))
            }
            _ => false,
        };
        if !ok {
            return Err(Refusal::NetworkPool { pool: pool.to_string() });
        }
    }
    Ok(())
}

/// An address as Docker writes it: `10.244.1.5` or `10.244.1.5/24`.
fn parse_addr(what: &'static str, s: &str) -> Result<IpAddr, Refusal> {
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<IpNet>().map(|n| n.addr()))
        .map_err(|_| Refusal::BadAddress { what, value: s.to_string() })
}

fn with_prefix(addr: IpAddr, pool: IpNet) -> IpNet {
    // Same family as the pool, and a pool's prefix length is valid for it.
    IpNet::new(addr, pool.prefix_len()).unwrap_or(pool)
}

/// Host and container names of an endpoint's veth (both within the 15-byte limit, stable for
/// the endpoint, so a repeated Join finds what an earlier one made). They come from a hash of
/// the whole id: two ids alike in their first characters get different veths.
pub fn veth_names(endpoint_id: &str) -> (String, String) {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(endpoint_id.as_bytes());
    let short: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    (format!("wd{short}"), format!("wc{short}"))
}

/// The pod name an endpoint is listed under.
pub fn pod_name(endpoint_id: &str) -> String {
    let short: String = endpoint_id.chars().take(12).collect();
    format!("{}{short}", weft_config::agent::DOCKER_POD_PREFIX)
}

pub fn check_id(id: &str) -> Result<(), Refusal> {
    if (12..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(Refusal::BadId(id.to_string()))
    }
}

impl Book {
    /// Reads `docker.json` (missing: an empty book).
    pub fn load(state: &StateDir) -> Result<Self> {
        Ok(state.load_file(FILE)?.unwrap_or_default())
    }

    pub fn save(&self, state: &StateDir) -> Result<()> {
        state.save_file(FILE, self)
    }

    pub fn is_empty(&self) -> bool {
        self.reserved.is_empty() && self.endpoints.is_empty()
    }

    /// Addresses Docker holds outside the node's subnets: left from before a subnet change,
    /// when Docker's weft network (pool, gateway, containers) still has the old subnet.
    pub fn stale(&self, subnets: &PerFamily<IpNet>) -> Vec<IpAddr> {
        self.used().into_iter().filter(|a| !subnets.iter().any(|(_, s)| s.contains(a))).collect()
    }

    /// What leaving the network does to Docker's containers, when it has any here (for the
    /// log and `--leave`'s output).
    pub fn leave_warning(&self) -> Option<String> {
        let n = self.endpoints.len();
        (n > 0).then(|| {
            format!(
                "{n} Docker endpoint(s) on the weft network lose their veth and are cut off; \
                 remove those containers (and the weft Docker network) with docker"
            )
        })
    }

    /// The node's weft network: the one CreateNetwork recorded, else an endpoint's.
    pub fn network(&self) -> Option<&str> {
        self.network.as_deref().or_else(|| self.endpoints.values().next().map(|e| e.network.as_str()))
    }

    /// CreateNetwork: records the node's one weft network. A second one is refused while the
    /// first has containers; an empty one is replaced (Docker removes a network even when the
    /// plugin cannot hear of it), and its later endpoints are refused. True when something
    /// changed.
    pub fn create_network(&mut self, id: &str) -> Result<bool, Refusal> {
        match self.network().map(str::to_string) {
            Some(have) if have == id => {
                let changed = self.network.is_none();
                self.network = Some(have);
                Ok(changed)
            }
            Some(have) if self.endpoints.values().any(|e| e.network == have) => Err(Refusal::SecondNetwork { have }),
            _ => {
                self.network = Some(id.to_string());
                Ok(true)
            }
        }
    }

    /// DeleteNetwork: forgets the network if it is the node's. True when something changed.
    pub fn delete_network(&mut self, id: &str) -> bool {
        if self.network.as_deref() == Some(id) {
            self.network = None;
            return true;
        }
        false
    }

    /// Every address Docker holds: reservations and endpoints' addresses.
    pub fn used(&self) -> BTreeSet<IpAddr> {
        let mut used = self.reserved.clone();
        used.extend(self.endpoints.values().flat_map(|e| e.addrs.iter().copied()));
        used
    }

    /// The endpoint holding `addr`, if any.
    fn endpoint_of(&self, addr: IpAddr) -> Option<&str> {
        self.endpoints.iter().find(|(_, e)| e.addrs.contains(&addr)).map(|(id, _)| id.as_str())
    }

    /// RequestAddress: the gateway; a specific address if free or already Docker's; else the
    /// lowest address no pod and no Docker endpoint holds. Returns it with the pool's prefix.
    pub fn request_address(&mut self, view: &View<'_>, req: &RequestAddress) -> Result<IpNet, Refusal> {
        let pool = pool_of(&view.subnets, &req.pool_id)?;
        let gw = subnet::gateway(pool);
        if req.is_gateway() {
            if !req.address.is_empty() {
                let asked = parse_addr("Address", &req.address)?;
                if asked != gw {
                    return Err(Refusal::NotInPool { addr: asked, pool });
                }
            }
            return Ok(with_prefix(gw, pool));
        }
        let addr = if req.address.is_empty() {
            let mut used: BTreeSet<IpAddr> = view.pods.keys().copied().collect();
            used.extend(self.used());
            subnet::first_free_addr(pool, &used).ok_or(Refusal::Full(pool))?
        } else {
            let asked = parse_addr("Address", &req.address)?;
            // Already Docker's in this pool (its restart replays the addresses of the endpoints
            // it keeps): the same answer. Otherwise (another pool's or family's) it must be
            // free here.
            if !(pool.contains(&asked) && self.used().contains(&asked)) {
                self.check_free(view, pool, asked, None)?;
            }
            asked
        };
        self.reserved.insert(addr);
        Ok(with_prefix(addr, pool))
    }

    /// `addr` may be Docker's in `pool`: a container address of it, no pod's, and no other
    /// endpoint's than `endpoint`.
    fn check_free(&self, view: &View<'_>, pool: IpNet, addr: IpAddr, endpoint: Option<&str>) -> Result<(), Refusal> {
        if addr == subnet::gateway(pool) {
            return Err(Refusal::Gateway { addr, pool });
        }
        if !subnet::is_pod_addr(pool, addr) {
            return Err(Refusal::NotInPool { addr, pool });
        }
        if let Some(pod) = view.pods.get(&addr) {
            return Err(Refusal::PodAddress { addr, pod: pod.clone() });
        }
        match self.endpoint_of(addr) {
            Some(other) if Some(other) != endpoint => {
                Err(Refusal::EndpointAddress { addr, endpoint: other.to_string() })
            }
            _ => Ok(()),
        }
    }

    /// ReleaseAddress: forgets a reservation; an unknown one (or the gateway) is fine. True
    /// when something changed.
    pub fn release_address(&mut self, address: &str) -> Result<bool, Refusal> {
        let addr = parse_addr("Address", address)?;
        Ok(self.reserved.remove(&addr))
    }

    /// CreateEndpoint: records the endpoint with the addresses Docker's IPAM (weft) gave it.
    /// Idempotent for the same addresses. True when something changed.
    pub fn create_endpoint(&mut self, view: &View<'_>, req: &CreateEndpoint) -> Result<bool, Refusal> {
        check_id(&req.endpoint_id)?;
        if let Some(have) = self.network().filter(|have| *have != req.network_id) {
            return Err(Refusal::OtherNetwork { asked: req.network_id.clone(), have: have.to_string() });
        }
        let name = pod_name(&req.endpoint_id);
        if let Some(other) = self.endpoints.keys().find(|o| **o != req.endpoint_id && pod_name(o) == name) {
            return Err(Refusal::IdCollision { id: req.endpoint_id.clone(), other: other.clone() });
        }
        let iface = req.interface.clone().unwrap_or_default();
        let mut addrs = Vec::new();
        for (what, family, text) in
            [("Address", Family::V4, &iface.address), ("AddressIPv6", Family::V6, &iface.address_ipv6)]
        {
            if text.is_empty() {
                continue;
            }
            let addr = parse_addr(what, text)?;
            let pool = *view.subnets.get(family).ok_or(Refusal::NoSubnet(family))?;
            if Family::of(addr) != family {
                return Err(Refusal::NotInPool { addr, pool });
            }
            self.check_free(view, pool, addr, Some(&req.endpoint_id))?;
            addrs.push(addr);
        }
        if addrs.is_empty() {
            return Err(Refusal::NoAddress(req.endpoint_id.clone()));
        }
        if let Some(e) = self.endpoints.get(&req.endpoint_id) {
            return if e.addrs == addrs { Ok(false) } else { Err(Refusal::EndpointExists(req.endpoint_id.clone())) };
        }
        self.reserved.extend(addrs.iter().copied());
        self.network.get_or_insert_with(|| req.network_id.clone());
        let ep = Endpoint { network: req.network_id.clone(), addrs, attachment: Attachment::Detached };
        self.endpoints.insert(req.endpoint_id.clone(), ep);
        Ok(true)
    }

    /// The endpoint to join, or why not.
    pub fn endpoint(&self, id: &str) -> Result<&Endpoint, Refusal> {
        self.endpoints.get(id).ok_or_else(|| Refusal::UnknownEndpoint(id.to_string()))
    }

    /// Sets an endpoint's attachment; false for an unknown endpoint.
    pub fn attach(&mut self, id: &str, attachment: Attachment) -> bool {
        match self.endpoints.get_mut(id) {
            Some(e) if e.attachment != attachment => {
                e.attachment = attachment;
                true
            }
            _ => false,
        }
    }

    /// The Join answer's gateways: the node's gateway of each family the endpoint has an
    /// address of.
    pub fn gateways(&self, id: &str, subnets: &PerFamily<IpNet>) -> Result<(Option<IpAddr>, Option<IpAddr>), Refusal> {
        let e = self.endpoint(id)?;
        let gw = |family: Family| {
            e.addrs
                .iter()
                .any(|a| Family::of(*a) == family)
                .then(|| subnets.get(family).map(|s| subnet::gateway(*s)))
                .flatten()
        };
        Ok((gw(Family::V4), gw(Family::V6)))
    }

    /// DeleteEndpoint: forgets the endpoint (its addresses stay reserved until Docker releases
    /// them). Returns it, if it was known.
    pub fn delete_endpoint(&mut self, id: &str) -> Option<Endpoint> {
        self.endpoints.remove(id)
    }

    /// The endpoints as pods (`weftctl pod list`): `docker-<12>`, the sandbox or `-`, `eth0`.
    pub fn pod_records(&self) -> Vec<PodRecord> {
        let mut out = Vec::new();
        for (id, e) in &self.endpoints {
            let v4 = e.addrs.iter().copied().find(|a| a.is_ipv4());
            let v6 = e.addrs.iter().copied().find(|a| a.is_ipv6());
            let Some(addrs) = PerFamily::from_options(v4, v6) else { continue };
            let (netns, host_veth) = match &e.attachment {
                Attachment::Joined { sandbox, host_veth } => (sandbox.clone(), host_veth.clone()),
                Attachment::Detached => ("-".to_string(), "-".to_string()),
            };
            out.push(PodRecord {
                name: pod_name(id),
                netns,
                ifname: "eth0".into(),
                addrs,
                host_veth,
                source: PodSource::Docker,
                owns_netns: false,
                dns: None,
            });
        }
        out
    }
}

/// A locally administered MAC derived from an endpoint's address (its IPv4 one, else the last
/// four bytes of its IPv6 one): `02:42:` and those four bytes, as Docker's bridge driver makes
/// them.
pub fn mac_for(addrs: &[IpAddr]) -> Option<String> {
    let tail: [u8; 4] = match addrs.iter().find(|a| a.is_ipv4()).or_else(|| addrs.first())? {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    Some(format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", tail[0], tail[1], tail[2], tail[3]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::protocol::EndpointInterface;
    use serde_json::json;

    const EP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const EP2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("literal")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("literal")
    }

    fn subnets() -> PerFamily<IpNet> {
        PerFamily::Dual(net("10.244.1.0/24"), net("fd00:10:244:1::/64"))
    }

    fn addr_req(pool: &str, address: &str, gateway: bool) -> RequestAddress {
        let mut options = BTreeMap::new();
        if gateway {
            options.insert("RequestAddressType".to_string(), json!(crate::docker::protocol::GATEWAY_REQUEST));
        }
        RequestAddress { pool_id: pool.into(), address: address.into(), options }
    }

    #[test]
    fn a_mac_follows_the_address() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("literal");
        assert_eq!(mac_for(&[ip("10.244.1.3")]).as_deref(), Some("02:42:0a:f4:01:03"));
        assert_eq!(mac_for(&[ip("fd00:10:244:1::3"), ip("10.244.1.3")]).as_deref(), Some("02:42:0a:f4:01:03"));
        assert_eq!(mac_for(&[ip("fd00:10:244:1::a:3")]).as_deref(), Some("02:42:00:0a:00:03"));
        assert_eq!(mac_for(&[]), None);
    }

    fn endpoint_req(id: &str, v4: &str, v6: &str) -> CreateEndpoint {
        CreateEndpoint {
            network_id: "net1".into(),
            endpoint_id: id.into(),
            interface: Some(EndpointInterface {
                address: v4.into(),
                address_ipv6: v6.into(),
                mac_address: String::new(),
            }),
        }
    }

    #[test]
    fn pools_are_the_nodes_subnets() {
        let v4 = RequestPool { address_space: "weft-local".into(), ..RequestPool::default() };
        let any = (net("10.244.1.0/24"), ANY_V4.to_string());
        assert_eq!(request_pool(&subnets(), &v4), Ok(any.clone()), "IPv4 without --subnet: the unchecked pool");
        let v6 = RequestPool { v6: true, ..RequestPool::default() };
        let six = (net("fd00:10:244:1::/64"), "fd00:10:244:1::/64".to_string());
        assert_eq!(request_pool(&subnets(), &v6), Ok(six));
        assert_eq!(request_pool(&PerFamily::V4(net("10.244.1.0/24")), &v6), Err(Refusal::NoSubnet(Family::V6)));
        // Docker's restart asks again for the pool it has: the same answer.
        let again = RequestPool { pool: ANY_V4.into(), ..RequestPool::default() };
        assert_eq!(request_pool(&subnets(), &again), Ok(any));
        // --subnet with the node's own subnet: that pool, as asked.
        let asked = RequestPool { pool: "10.244.1.0/24".into(), ..RequestPool::default() };
        assert_eq!(request_pool(&subnets(), &asked), Ok((net("10.244.1.0/24"), "10.244.1.0/24".to_string())));
        let other = RequestPool { pool: "172.18.0.0/16".into(), ..RequestPool::default() };
        let e = request_pool(&subnets(), &other).expect_err("not ours");
        assert_eq!(
            e.to_string(),
            "pool 172.18.0.0/16 asked for, but this node's IPv4 subnet is 10.244.1.0/24; leave out --subnet/--ip-range"
        );
        assert_eq!(pool_of(&subnets(), "10.244.1.0/24"), Ok(net("10.244.1.0/24")));
        assert!(matches!(pool_of(&subnets(), "10.244.2.0/24"), Err(Refusal::UnknownPool(_))));
        assert!(matches!(pool_of(&subnets(), "garbage"), Err(Refusal::UnknownPool(_))));
        let ok = [("0.0.0.0/0", "10.244.1.1/24"), ("10.244.1.0/24", ""), ("fd00:10:244:1::/64", "fd00:10:244:1::1/64")];
        assert_eq!(check_network_pools(&subnets(), ok), Ok(()));
        assert!(check_network_pools(&subnets(), [("172.17.0.0/16", "172.17.0.1/16")]).is_err());
        assert!(check_network_pools(&subnets(), [("0.0.0.0/0", "172.17.0.1/16")]).is_err(), "another IPAM's");
    }

    #[test]
    fn addresses_never_collide_with_pods_and_requests_are_idempotent() {
        let mut pods = BTreeMap::new();
        pods.insert(ip("10.244.1.2"), "p1".to_string());
        pods.insert(ip("10.244.1.4"), "p2".to_string());
        let view = View { subnets: subnets(), pods: &pods };
        let mut b = Book::default();
        let gw = b.request_address(&view, &addr_req("10.244.1.0/24", "", true)).expect("gateway");
        assert_eq!(gw, net("10.244.1.1/24"));
        assert!(b.reserved.is_empty(), "the gateway is the bridge's, never reserved");
        assert_eq!(b.request_address(&view, &addr_req("10.244.1.0/24", "10.244.1.1", true)), Ok(gw));
        let a = b.request_address(&view, &addr_req("10.244.1.0/24", "", false)).expect("first");
        assert_eq!(a, net("10.244.1.3/24"), "skips the pod at .2");
        let c = b.request_address(&view, &addr_req("10.244.1.0/24", "", false)).expect("second");
        assert_eq!(c, net("10.244.1.5/24"), "skips Docker's .3 and the pod at .4");
        let e = b.request_address(&view, &addr_req("10.244.1.0/24", "10.244.1.4", false)).expect_err("pod's");
        assert_eq!(e.to_string(), "10.244.1.4 belongs to weft pod p2");
        // Docker asks again for an address it holds (its restart replays): the same answer,
        // also once an endpoint has it.
        assert_eq!(b.request_address(&view, &addr_req("10.244.1.0/24", "10.244.1.3/24", false)), Ok(a));
        b.create_endpoint(&view, &endpoint_req(EP, "10.244.1.3/24", "")).expect("endpoint");
        assert_eq!(b.request_address(&view, &addr_req("10.244.1.0/24", "10.244.1.3", false)), Ok(a));
        b.delete_endpoint(EP);
        assert_eq!(b.reserved, [ip("10.244.1.3"), ip("10.244.1.5")].into());
        for (asked, want) in [
            ("10.244.1.1", "10.244.1.1 is the gateway of 10.244.1.0/24, not a container address"),
            ("10.244.2.9", "10.244.2.9 is not a container address of 10.244.1.0/24"),
            ("10.244.1.255", "10.244.1.255 is not a container address of 10.244.1.0/24"),
            ("nonsense", "Address \"nonsense\" is not an IP address"),
        ] {
            let e = b.request_address(&view, &addr_req("10.244.1.0/24", asked, false)).expect_err(asked);
            assert_eq!(e.to_string(), want);
        }
        let v6 = b.request_address(&view, &addr_req("fd00:10:244:1::/64", "", false)).expect("v6");
        assert_eq!(v6, net("fd00:10:244:1::2/64"));
        assert!(matches!(
            b.request_address(&view, &addr_req("10.244.9.0/24", "", false)),
            Err(Refusal::UnknownPool(_))
        ));
        assert_eq!(b.release_address("10.244.1.5"), Ok(true));
        assert_eq!(b.release_address("10.244.1.5"), Ok(false), "releasing twice is fine");
        assert_eq!(b.release_address("10.244.1.1/24"), Ok(false), "the gateway was never reserved");
        assert!(b.release_address("x").is_err());
        let again = b.request_address(&view, &addr_req("10.244.1.0/24", "", false)).expect("reuse");
        assert_eq!(again, net("10.244.1.5/24"), "a released address is free again");
    }

    #[test]
    fn a_full_subnet_is_refused() {
        let pods = BTreeMap::new();
        let view = View { subnets: PerFamily::V4(net("10.244.1.0/30")), pods: &pods };
        let mut b = Book::default();
        assert_eq!(b.request_address(&view, &addr_req("10.244.1.0/30", "", false)), Ok(net("10.244.1.2/30")));
        assert_eq!(
            b.request_address(&view, &addr_req("10.244.1.0/30", "", false)),
            Err(Refusal::Full(net("10.244.1.0/30")))
        );
    }

    #[test]
    fn endpoints_keep_their_addresses_and_attachment() {
        let mut pods = BTreeMap::new();
        pods.insert(ip("10.244.1.2"), "p1".to_string());
        let view = View { subnets: subnets(), pods: &pods };
        let mut b = Book::default();
        let req = endpoint_req(EP, "10.244.1.3/24", "fd00:10:244:1::3/64");
        assert_eq!(b.create_endpoint(&view, &req), Ok(true));
        assert_eq!(b.create_endpoint(&view, &req), Ok(false), "idempotent");
        assert_eq!(
            b.create_endpoint(&view, &endpoint_req(EP, "10.244.1.9/24", "")),
            Err(Refusal::EndpointExists(EP.into()))
        );
        let e = b.create_endpoint(&view, &endpoint_req(EP2, "10.244.1.3/24", "")).expect_err("taken");
        assert_eq!(e.to_string(), format!("10.244.1.3 belongs to Docker endpoint {EP}"));
        let e = b.create_endpoint(&view, &endpoint_req(EP2, "10.244.1.2/24", "")).expect_err("pod's");
        assert_eq!(e.to_string(), "10.244.1.2 belongs to weft pod p1");
        let e = b.create_endpoint(&view, &endpoint_req(EP2, "172.17.0.2/16", "")).expect_err("docker's ipam");
        assert_eq!(e.to_string(), "172.17.0.2 is not a container address of 10.244.1.0/24");
        assert_eq!(b.create_endpoint(&view, &endpoint_req(EP2, "", "")), Err(Refusal::NoAddress(EP2.into())));
        assert_eq!(
            b.create_endpoint(&view, &endpoint_req("short", "10.244.1.7/24", "")),
            Err(Refusal::BadId("short".into()))
        );
        assert_eq!(
            b.create_endpoint(&view, &endpoint_req("../../etc/passwd0000", "10.244.1.7/24", "")),
            Err(Refusal::BadId("../../etc/passwd0000".into()))
        );
        assert!(b.used().contains(&ip("10.244.1.3")) && b.used().contains(&ip("fd00:10:244:1::3")));
        assert_eq!(b.gateways(EP, &subnets()), Ok((Some(ip("10.244.1.1")), Some(ip("fd00:10:244:1::1")))));

        let list = b.pod_records();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].name.as_str(), list[0].netns.as_str()), ("docker-0123456789ab", "-"));
        assert_eq!(list[0].source, PodSource::Docker);
        let (host, peer) = veth_names(EP);
        assert_eq!((host.as_str(), peer.as_str()), ("wda8ae6e6ee929", "wca8ae6e6ee929"));
        let joined = Attachment::Joined { sandbox: "/var/run/docker/netns/abc".into(), host_veth: host.clone() };
        assert!(b.attach(EP, joined.clone()));
        assert!(!b.attach(EP, joined), "already so");
        assert!(!b.attach(EP2, Attachment::Detached), "unknown");
        assert_eq!(b.pod_records()[0].netns, "/var/run/docker/netns/abc");

        let gone = b.delete_endpoint(EP).expect("known");
        assert_eq!(gone.addrs.len(), 2);
        assert_eq!(b.delete_endpoint(EP), None, "deleting twice is fine");
        assert!(b.used().contains(&ip("10.244.1.3")), "still reserved until Docker releases it");
        b.release_address("10.244.1.3/24").expect("release");
        b.release_address("fd00:10:244:1::3/64").expect("release");
        assert!(b.is_empty());
    }

    #[test]
    fn one_weft_network_per_node() {
        let pods = BTreeMap::new();
        let view = View { subnets: subnets(), pods: &pods };
        let mut b = Book::default();
        assert_eq!(b.create_network("net1"), Ok(true));
        assert_eq!(b.create_network("net1"), Ok(false), "idempotent");
        b.create_endpoint(&view, &endpoint_req(EP, "10.244.1.3/24", "")).expect("endpoint");
        // A second network on weft would share the subnet and bridge: refused while the first
        // has containers.
        let e = b.create_network("net2").expect_err("second network");
        assert!(e.to_string().starts_with("this node already has a weft network (net1, with containers)"), "{e}");
        let other = CreateEndpoint { network_id: "net2".into(), ..endpoint_req(EP2, "10.244.1.4/24", "") };
        assert_eq!(
            b.create_endpoint(&view, &other),
            Err(Refusal::OtherNetwork { asked: "net2".into(), have: "net1".into() })
        );
        // Without containers the old one is replaced (Docker may have removed it unheard); its
        // endpoints are then refused.
        b.delete_endpoint(EP);
        assert_eq!(b.create_network("net2"), Ok(true));
        assert!(matches!(
            b.create_endpoint(&view, &endpoint_req(EP2, "10.244.1.4/24", "")),
            Err(Refusal::OtherNetwork { .. })
        ));
        assert!(b.delete_network("net2"));
        assert!(!b.delete_network("net2"), "deleting twice is fine");
        assert_eq!(b.network(), None);
        // A book from before the network was kept learns it from its endpoints.
        let mut old = Book::default();
        old.create_endpoint(&view, &endpoint_req(EP, "10.244.1.3/24", "")).expect("endpoint");
        old.network = None;
        assert_eq!(old.network(), Some("net1"));
        assert!(matches!(old.create_network("net2"), Err(Refusal::SecondNetwork { .. })));
    }

    #[test]
    fn ids_alike_in_their_first_characters_neither_share_a_veth_nor_a_pod_name() {
        let pods = BTreeMap::new();
        let view = View { subnets: subnets(), pods: &pods };
        let (a, b_id) = ("0123456789ab", "0123456789abX");
        assert_ne!(veth_names(a), veth_names(b_id), "the whole id names the veth");
        assert_ne!(veth_names(a).0, veth_names(EP).0);
        let (host, peer) = veth_names(EP);
        assert!(host.len() <= 15 && peer.len() <= 15 && host.starts_with("wd") && peer.starts_with("wc"));
        let mut b = Book::default();
        b.create_endpoint(&view, &endpoint_req(a, "10.244.1.3/24", "")).expect("endpoint");
        assert_eq!(
            b.create_endpoint(&view, &endpoint_req(b_id, "10.244.1.4/24", "")),
            Err(Refusal::IdCollision { id: b_id.into(), other: a.into() })
        );
        assert_eq!(pod_name(EP), "docker-0123456789ab");
    }

    #[test]
    fn an_address_docker_holds_elsewhere_is_not_answered_for_this_pool() {
        let pods = BTreeMap::new();
        let view = View { subnets: subnets(), pods: &pods };
        let mut b = Book::default();
        b.request_address(&view, &addr_req("fd00:10:244:1::/64", "fd00:10:244:1::5", false)).expect("v6");
        b.reserved.insert(ip("10.244.7.5")); // from before a subnet change
        for asked in ["fd00:10:244:1::5", "10.244.7.5"] {
            let e = b.request_address(&view, &addr_req("10.244.1.0/24", asked, false)).expect_err(asked);
            assert!(matches!(e, Refusal::NotInPool { .. }), "{asked}: {e}");
        }
        assert_eq!(b.stale(&subnets()), vec![ip("10.244.7.5")]);
        assert_eq!(b.leave_warning(), None, "no endpoints, nothing cut off");
        b.create_endpoint(&view, &endpoint_req(EP, "10.244.1.3/24", "")).expect("endpoint");
        let w = b.leave_warning().expect("a container is cut off");
        assert!(w.starts_with("1 Docker endpoint(s) on the weft network lose their veth"), "{w}");
    }

    #[test]
    fn the_book_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("weft-docker-book-{}", std::process::id()));
        let state = StateDir::new(&dir);
        assert_eq!(Book::load(&state).expect("missing is empty"), Book::default());
        let pods = BTreeMap::new();
        let view = View { subnets: subnets(), pods: &pods };
        let mut b = Book::default();
        b.create_endpoint(&view, &endpoint_req(EP, "10.244.1.3/24", "")).expect("create");
        b.attach(EP, Attachment::Joined { sandbox: "/run/docker/netns/x".into(), host_veth: "wda8ae6e6ee929".into() });
        b.save(&state).expect("save");
        assert_eq!(Book::load(&state).expect("load"), b);
        std::fs::write(dir.join(FILE), b"{oops").expect("write");
        let e = Book::load(&state).expect_err("corrupt");
        assert!(format!("{e:#}").contains("docker.json: invalid state file"), "{e:#}");
        state.remove_all().expect("cleanup");
    }
}
