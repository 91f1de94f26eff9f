//! The agent's kernel effects behind one trait: links (bridge, veth, vxlan, wireguard),
//! addresses, weft's routes, neighbour and FDB entries, and named namespaces. Every address in
//! it is family-generic (`IpNet`/`IpAddr`): IPv4 and IPv6 go through the same calls. [`Netlink`] is the
//! real implementation; [`fake::FakeKernel`] is an in-memory model that records every change,
//! so "this setup sends these changes" is a unit test without root.
//!
//! Ownership: weft only ever changes what it marked as its own. Routes and neighbour entries
//! carry the route-style protocol number [`WEFT_PROTO`] (`NDA_PROTOCOL` for neighbours). The
//! kernel keeps no protocol for FDB entries, so weft's FDB entries carry `NTF_EXT_LEARNED`
//! (`bridge fdb … extern_learn`: "installed by an external control plane"), which the vxlan
//! driver stores and reports, and which its own learning never sets.

pub mod fake;
pub mod netlink;
pub mod wireguard;

pub use crate::routes::WEFT_PROTO;
pub use fake::FakeKernel;
pub use netlink::{write_sysctl, Netlink};
pub use wireguard::{WgChange, WgDevice, WgKey, WgPeer};

use crate::routes::{Action, Family, Route};
use anyhow::Result;
use ipnet::IpNet;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Six bytes from a netlink attribute; anything else is not an Ethernet address.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(b).ok().map(Mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(|| format!("{s:?} is not a MAC address"))?;
            *b = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a MAC address"));
        }
        Ok(Mac(out))
    }
}

/// A network device as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    pub kind: Option<String>,
    pub controller: Option<u32>,
    pub mac: Option<Mac>,
    /// The VXLAN settings, for a device of kind `vxlan`.
    pub vxlan: Option<Vxlan>,
}

/// A VXLAN device's settings: unicast only (no group), learning off unless asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    /// UDP destination port (4789 is IANA's; Linux defaults to 8472).
    pub port: u16,
    /// Source address of the encapsulated packets.
    pub local: Option<IpAddr>,
    /// The underlay device the packets leave through.
    pub underlay: Option<u32>,
    pub learning: bool,
}

/// Who put a neighbour or FDB entry there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// Marked as weft's: weft may replace or delete it.
    Weft,
    /// A static entry someone else made (an operator, another daemon): never touched.
    Other,
    /// An entry the kernel learned (ARP/NDP, FDB learning): may be overwritten by weft's own.
    Learned,
}

/// A neighbour (ARP/NDP) entry: `ip` on device `ifindex` is at `mac`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: Mac,
}

/// A bridge FDB entry on a vxlan device: frames to `mac` are sent to underlay address `dst`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fdb {
    pub ifindex: u32,
    pub mac: Mac,
    pub dst: IpAddr,
}

/// An entry as listed, with who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<T> {
    pub entry: T,
    pub owner: Owner,
}

/// weft refused to change an entry that is not its own.
#[derive(Debug, thiserror::Error)]
#[error("{what} is not weft's ({owner:?}); leaving it alone")]
pub struct NotOurs {
    pub what: String,
    pub owner: Owner,
}

/// The errno behind a kernel failure (real or fake), wherever it sits in the error's chain.
pub fn errno(e: &anyhow::Error) -> Option<i32> {
    e.chain().find_map(|c| {
        if let Some(n) = c.downcast_ref::<rtnetlink::Error>() {
            netlink::errno(n)
        } else {
            c.downcast_ref::<std::io::Error>().and_then(|io| io.raw_os_error())
        }
    })
}

/// The kernel as the agent uses it: one handle is bound to one network namespace.
///
/// Errors keep the kernel's errno in their chain (see [`errno`]). Where the agent has always
/// treated a failure as success, the contract says so (deleting an absent link, adding an
/// address that is there); everything else fails as the kernel does (`EEXIST`, `ENOENT`,
/// `ENODEV`).
pub trait Kernel: Clone + Send + Sync + 'static {
    /// Creates the named namespace if missing; true if it was created.
    fn ensure_netns(&self, name: &str) -> Result<bool>;
    /// Removes the named namespace (and with it every device inside); absent is fine.
    fn remove_netns(&self, name: &str) -> Result<()>;
    /// A handle on the named namespace (which must exist).
    fn in_netns(&self, name: &str) -> Result<Self>;

    fn link(&self, name: &str) -> impl Future<Output = Result<Option<Link>>> + Send;
    fn link_by_index(&self, index: u32) -> impl Future<Output = Result<Option<Link>>> + Send;
    /// Creates the bridge if missing, sets its MTU and brings it up. Returns its index.
    fn ensure_bridge(&self, name: &str, mtu: u32) -> impl Future<Output = Result<u32>> + Send;
    fn set_link(
        &self,
        index: u32,
        mtu: Option<u32>,
        up: bool,
        controller: Option<u32>,
    ) -> impl Future<Output = Result<()>> + Send;
    fn rename(&self, index: u32, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Sets a link's Ethernet address.
    fn set_mac(&self, index: u32, mac: Mac) -> impl Future<Output = Result<()>> + Send;
    /// Creates a veth pair (both ends down) in this namespace.
    fn add_veth(&self, name: &str, peer: &str, mtu: u32) -> impl Future<Output = Result<()>> + Send;
    /// Moves a link into another (named) namespace; it arrives down, without addresses.
    fn move_to_netns(&self, index: u32, netns: &str) -> impl Future<Output = Result<()>> + Send;
    /// Deletes a link (a veth takes its peer with it); absent is fine.
    fn del_link(&self, index: u32) -> impl Future<Output = Result<()>> + Send;
    /// Creates a VXLAN device (down). Returns its index.
    fn add_vxlan(&self, name: &str, mtu: u32, spec: &Vxlan) -> impl Future<Output = Result<u32>> + Send;
    /// Creates a WireGuard device (down). Returns its index. Fails clearly where the kernel
    /// has no WireGuard.
    fn add_wireguard(&self, name: &str, mtu: u32) -> impl Future<Output = Result<u32>> + Send;
    /// Whether the kernel has WireGuard: its generic netlink family is asked for, which loads
    /// the module where the kernel can. The error names the module ([`wireguard::MODULE`]).
    fn wireguard_available(&self) -> impl Future<Output = Result<()>> + Send;
    /// A WireGuard device's key, port and peers (`WG_CMD_GET_DEVICE`).
    fn wireguard(&self, index: u32) -> impl Future<Output = Result<WgDevice>> + Send;
    /// Makes one change to a WireGuard device (`WG_CMD_SET_DEVICE`).
    fn set_wireguard(&self, index: u32, change: &WgChange) -> impl Future<Output = Result<()>> + Send;

    /// Addresses (with prefix) on a link, both families (IPv6 link-local ones included).
    fn addrs(&self, index: u32) -> impl Future<Output = Result<Vec<IpNet>>> + Send;
    /// Adds an address; one already there is fine. An IPv6 address is added without duplicate
    /// address detection (`nodad`): weft hands out its addresses itself, and a tentative address
    /// could not be a route's source.
    fn add_addr(&self, index: u32, addr: IpNet) -> impl Future<Output = Result<()>> + Send;
    /// Removes an address; an absent one is fine.
    fn del_addr(&self, index: u32, addr: IpNet) -> impl Future<Output = Result<()>> + Send;

    /// The routes weft owns (protocol [`WEFT_PROTO`]) in the main table, both families in one
    /// list (IPv4 and IPv6 are two tables to the kernel; [`crate::routes::plan`] keeps them
    /// apart by destination).
    fn weft_routes(&self) -> impl Future<Output = Result<Vec<Route>>> + Send;
    /// Applies one route action, of either family: an add that finds the route there replaces
    /// it; deleting an absent route is fine. A route whose gateway or source is of another
    /// family than its destination is refused before anything is sent
    /// ([`crate::routes::MixedFamily`]).
    fn apply(&self, action: &Action) -> impl Future<Output = Result<()>> + Send;
    /// Output interface of the default route of `family` in the main table, if any.
    fn default_route_oif(&self, family: Family) -> impl Future<Output = Result<Option<u32>>> + Send;
    /// Adds or replaces the default route (of `via`'s family) via `via` on `oif` (a pod's; not
    /// weft-marked).
    fn replace_default_route(&self, via: IpAddr, oif: u32) -> impl Future<Output = Result<()>> + Send;

    /// Neighbour entries (IPv4 ARP and IPv6 NDP) on a device, with their owners.
    fn neighbours(&self, ifindex: u32) -> impl Future<Output = Result<Vec<Listed<Neighbour>>>> + Send;
    /// Adds a permanent weft-owned neighbour entry; `EEXIST` if any entry for the IP is there.
    fn add_neighbour(&self, n: &Neighbour) -> impl Future<Output = Result<()>> + Send;
    /// Adds or replaces a permanent weft-owned entry; refuses ([`NotOurs`]) to replace
    /// another's static entry.
    fn replace_neighbour(&self, n: &Neighbour) -> impl Future<Output = Result<()>> + Send;
    /// Deletes weft's entry for `ip`; `ENOENT` if absent, [`NotOurs`] if not weft's.
    fn del_neighbour(&self, ifindex: u32, ip: IpAddr) -> impl Future<Output = Result<()>> + Send;
    /// Deletes whatever entry `n.ip` has, whoever made it, and adds weft's: only for a device
    /// weft made itself, where another's entry for an address weft routes is a wrong one.
    fn claim_neighbour(&self, n: &Neighbour) -> impl Future<Output = Result<()>> + Send;

    /// Remote FDB entries (those with an underlay destination) on a device, with their owners.
    fn fdb(&self, ifindex: u32) -> impl Future<Output = Result<Vec<Listed<Fdb>>>> + Send;
    /// Adds a weft-owned FDB entry; `EEXIST` if the MAC already has one.
    fn add_fdb(&self, f: &Fdb) -> impl Future<Output = Result<()>> + Send;
    /// Adds or replaces a weft-owned FDB entry; refuses ([`NotOurs`]) another's static entry.
    fn replace_fdb(&self, f: &Fdb) -> impl Future<Output = Result<()>> + Send;
    /// Deletes weft's FDB entry for `mac`; `ENOENT` if absent, [`NotOurs`] if not weft's.
    fn del_fdb(&self, ifindex: u32, mac: Mac) -> impl Future<Output = Result<()>> + Send;
    /// Deletes whatever entry `f.mac` has, whoever made it, and adds weft's (the kernel keeps
    /// an entry's flags on a replace, so another's entry cannot become weft's in place): only
    /// for a device weft made itself.
    fn claim_fdb(&self, f: &Fdb) -> impl Future<Output = Result<()>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_junk() {
        let m: Mac = "02:0a:ff:00:10:01".parse().expect("valid");
        assert_eq!(m, Mac([2, 0x0a, 0xff, 0, 0x10, 1]));
        assert_eq!(m.to_string(), "02:0a:ff:00:10:01");
        assert!("02:0a:ff:00:10".parse::<Mac>().is_err());
        assert!("02:0a:ff:00:10:01:02".parse::<Mac>().is_err());
        assert!("02:0a:ff:00:10:zz".parse::<Mac>().is_err());
        assert_eq!(Mac::from_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn errno_is_found_through_context() {
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EEXIST)).context("adding x");
        assert_eq!(errno(&e), Some(libc::EEXIST));
        assert_eq!(errno(&anyhow::anyhow!("plain")), None);
    }
}
