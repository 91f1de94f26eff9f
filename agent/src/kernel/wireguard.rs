//! Kernel WireGuard settings as weft sees them ([`WgDevice`], [`WgPeer`]), the changes it makes
//! ([`WgChange`], one `WG_CMD_SET_DEVICE` message each), and the pure translation between them
//! and the generic netlink messages of the `wireguard` family (netlink-packet-wireguard), so
//! what is sent to the kernel is a unit test without one.

use anyhow::{bail, Result};
use ipnet::IpNet;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute, WireguardCmd,
    WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// A Curve25519 key (public or private): 32 bytes.
pub type WgKey = [u8; 32];

/// The kernel module (and generic netlink family) that provides WireGuard.
pub const MODULE: &str = "wireguard";

/// What weft says when the kernel has no WireGuard: the module, and what to do about it.
pub fn missing_module_message() -> String {
    format!(
        "this kernel has no WireGuard: the `{MODULE}` kernel module is not loaded and could not be loaded \
         (load it with `modprobe {MODULE}` on the host, or use another backend: vxlan or quic)"
    )
}

/// One peer of a WireGuard device: as weft configures it and as it reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: WgKey,
    /// Where the peer's packets go (its underlay address and port).
    pub endpoint: Option<SocketAddr>,
    /// The addresses the peer may send from and is sent to (its pod subnets).
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive in seconds; 0 = off.
    pub keepalive: u16,
}

/// A WireGuard device's settings as the kernel reports them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WgDevice {
    /// The public key of the device's private key (none before a key is set).
    pub public_key: Option<WgKey>,
    pub listen_port: u16,
    pub peers: Vec<WgPeer>,
}

/// One change to a WireGuard device.
#[derive(Clone, PartialEq, Eq)]
pub enum WgChange {
    /// Sets the private key and the listen port (peers untouched).
    Device { private_key: WgKey, listen_port: u16 },
    /// Adds the peer, or updates it in place: endpoint and keepalive set, allowed IPs replaced.
    SetPeer(WgPeer),
    /// Removes the peer with this public key.
    RemovePeer(WgKey),
}

// Never print a private key (changes end up in logs and test failures).
impl fmt::Debug for WgChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WgChange::Device { listen_port, .. } => {
                f.debug_struct("Device").field("private_key", &"(hidden)").field("listen_port", listen_port).finish()
            }
            WgChange::SetPeer(p) => f.debug_tuple("SetPeer").field(p).finish(),
            WgChange::RemovePeer(k) => f.debug_tuple("RemovePeer").field(&encode_key(k)).finish(),
        }
    }
}

/// A key in WireGuard's text form (standard base64, 44 characters).
pub fn encode_key(k: &WgKey) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// A key from WireGuard's text form; anything but 32 bytes of standard base64 is refused.
pub fn decode_key(s: &str) -> Result<WgKey> {
    use base64::Engine as _;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(s.trim()).map_err(|e| anyhow::anyhow!("not base64: {e}"))?;
    match <WgKey>::try_from(bytes.as_slice()) {
        Ok(k) => Ok(k),
        Err(_) => bail!("expected 32 bytes, found {}", bytes.len()),
    }
}

/// The `WG_CMD_GET_DEVICE` request for device `ifindex` (sent as a dump).
pub fn get_message(ifindex: u32) -> WireguardMessage {
    WireguardMessage { cmd: WireguardCmd::GetDevice, attributes: vec![WireguardAttribute::IfIndex(ifindex)] }
}

/// The `WG_CMD_SET_DEVICE` message making `change` on device `ifindex`.
pub fn set_message(ifindex: u32, change: &WgChange) -> WireguardMessage {
    let mut attributes = vec![WireguardAttribute::IfIndex(ifindex)];
    match change {
        WgChange::Device { private_key, listen_port } => {
            attributes.push(WireguardAttribute::PrivateKey(*private_key));
            attributes.push(WireguardAttribute::ListenPort(*listen_port));
        }
        WgChange::SetPeer(p) => {
            let mut peer = vec![
                WireguardPeerAttribute::PublicKey(p.public_key),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
                WireguardPeerAttribute::PersistentKeepalive(p.keepalive),
            ];
            if let Some(e) = p.endpoint {
                peer.push(WireguardPeerAttribute::Endpoint(e));
            }
            peer.push(WireguardPeerAttribute::AllowedIps(p.allowed_ips.iter().map(|n| allowed_ip(*n)).collect()));
            attributes.push(WireguardAttribute::Peers(vec![WireguardPeer(peer)]));
        }
        WgChange::RemovePeer(key) => {
            attributes.push(WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(*key),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
            ])]));
        }
    }
    WireguardMessage { cmd: WireguardCmd::SetDevice, attributes }
}

fn allowed_ip(n: IpNet) -> WireguardAllowedIp {
    let family = match n.addr() {
        IpAddr::V4(_) => WireguardAddressFamily::Ipv4,
        IpAddr::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(n.network()),
        WireguardAllowedIpAttr::Cidr(n.prefix_len()),
    ])
}

/// The device described by the answers to a `WG_CMD_GET_DEVICE` dump. A device with many
/// peers comes in several messages, and a peer with many allowed IPs may continue in the next
/// message (repeating its public key): such parts are joined.
pub fn parse_device(messages: &[WireguardMessage]) -> Result<WgDevice> {
    let mut dev = WgDevice::default();
    for m in messages {
        for a in &m.attributes {
            match a {
                WireguardAttribute::PublicKey(k) => dev.public_key = Some(*k),
                WireguardAttribute::ListenPort(p) => dev.listen_port = *p,
                WireguardAttribute::Peers(peers) => {
                    for p in peers {
                        let peer = parse_peer(p)?;
                        match dev.peers.last_mut() {
                            Some(last) if last.public_key == peer.public_key => {
                                last.allowed_ips.extend(peer.allowed_ips);
                                last.endpoint = peer.endpoint.or(last.endpoint);
                            }
                            _ => dev.peers.push(peer),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(dev)
}

fn parse_peer(p: &WireguardPeer) -> Result<WgPeer> {
    let mut key = None;
    let mut peer = WgPeer { public_key: [0; 32], endpoint: None, allowed_ips: Vec::new(), keepalive: 0 };
    for a in p.iter() {
        match a {
            WireguardPeerAttribute::PublicKey(k) => key = Some(*k),
            WireguardPeerAttribute::Endpoint(e) => peer.endpoint = Some(*e),
            WireguardPeerAttribute::PersistentKeepalive(s) => peer.keepalive = *s,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    peer.allowed_ips.push(parse_allowed_ip(ip)?);
                }
            }
            _ => {}
        }
    }
    let Some(key) = key else { bail!("a wireguard peer without a public key in the kernel's answer") };
    peer.public_key = key;
    Ok(peer)
}

fn parse_allowed_ip(ip: &WireguardAllowedIp) -> Result<IpNet> {
    let (mut addr, mut len) = (None, None);
    for a in ip.iter() {
        match a {
            WireguardAllowedIpAttr::IpAddr(a) => addr = Some(*a),
            WireguardAllowedIpAttr::Cidr(l) => len = Some(*l),
            _ => {}
        }
    }
    match (addr, len) {
        (Some(a), Some(l)) => IpNet::new(a, l).map_err(|e| anyhow::anyhow!("allowed IP {a}/{l}: {e}")),
        _ => bail!("an allowed IP without address or prefix length in the kernel's answer"),
    }
}

#[cfg(test)]
mod tests;
