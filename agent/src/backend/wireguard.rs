//! wireguard: pod packets encrypted by kernel WireGuard between nodes (flannel's, Calico's and
//! Cilium's `wireguard`), where the kernel has it.
//!
//! One device, [`DEVICE`], in the node's namespace (where the agent runs: the device keeps its
//! UDP socket there), for both families. The node's key pair is made on the node the first
//! time ([`load_or_create_key`]: `[wireguard] key_file`, 0600, written atomically); the record
//! publishes the public key and the listen port under [`NAME`] (`{"public_key": "<base64>",
//! "port": 51820}`). From the peer set, purely ([`plan_peers`]): one WireGuard peer per node
//! (its public key, endpoint `public_ip:port`, allowed IPs = its pod subnets of every family,
//! persistent keepalive from agent.toml) and per peer subnet `peer_subnet dev weft-wg0 src
//! <own gateway>`. The daemon diffs the peers against the device ([`peer_changes`]): a new peer
//! is added, a changed one set again in place (allowed IPs replaced), one no longer wanted
//! removed (a node whose key changed is a new peer, and its old key goes); never a flush.
//!
//! A kernel without WireGuard is refused before the record is published
//! ([`Driver::check`]), with an error naming the module.

use super::{BuildContext, Driver, NodeView, Plan, Refused, Registration, UnderlayInfo, WgPlan};
use crate::firewall::ForwardMode;
use crate::kernel::wireguard::{decode_key, encode_key};
use crate::kernel::{Kernel, WgChange, WgKey, WgPeer};
use crate::routes::{Route, RouteKind};
use anyhow::{bail, Context, Result};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use tracing::{info, warn};
use weft_config::agent::WireGuardConfig;
use weft_config::peers::Peer;
use weft_config::subnet::Family;

pub const NAME: &str = "wireguard";
/// The node's WireGuard device (both families).
pub const DEVICE: &str = "weft-wg0";
/// Outer IPv4 (20) + UDP (8) + WireGuard data header (16) + tag (16): flannel's and wg-quick's 60.
pub const OVERHEAD_V4: u32 = 60;
/// The same over IPv6 (40-byte outer header).
pub const OVERHEAD_V6: u32 = 80;

pub fn registration<K: Kernel>() -> Registration<K> {
    Registration { name: NAME, build: build::<K>, leftover_links: |_| vec![DEVICE.to_string()] }
}

fn build<K: Kernel>(ctx: &BuildContext) -> Result<Box<dyn Driver<K>>> {
    Ok(Box::new(WireGuardDriver::new(ctx.cfg.wireguard.clone())))
}

/// The node's key pair.
#[derive(Clone, PartialEq, Eq)]
struct KeyPair {
    private: WgKey,
    public: WgKey,
}

pub struct WireGuardDriver {
    opts: WireGuardConfig,
    /// Loaded (or made) by `prepare`.
    keys: Option<KeyPair>,
    /// The device, as last seen (read before each plan).
    link: Option<u32>,
    /// What the node looked like at the last full reconcile, so that a device found missing
    /// or down before a plan is made again at once.
    last_node: Option<NodeView>,
    /// Why the device could not be made again before the last plan (its peers are refused).
    broken: Option<String>,
}

/// The MTU of the device over an underlay of `family` with MTU `underlay_mtu`.
pub fn device_mtu(underlay_mtu: u32, family: Family) -> u32 {
    let overhead = match family {
        Family::V4 => OVERHEAD_V4,
        Family::V6 => OVERHEAD_V6,
    };
    underlay_mtu.saturating_sub(overhead).max(576)
}

/// The public key of a private one (Curve25519, as `wg pubkey`).
pub fn public_key(private: &WgKey) -> WgKey {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*private)).to_bytes()
}

/// A new private key, clamped as `wg genkey` does.
fn generate_key() -> Result<WgKey> {
    use ring::rand::SecureRandom as _;
    let mut k = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut k).map_err(|_| anyhow::anyhow!("no randomness for a WireGuard key"))?;
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    Ok(k)
}

/// The node's private key from `path` (base64, as `wg genkey` writes it); made and written
/// there (0600, atomically) when the file does not exist. Returns the key and whether it is new.
pub fn load_or_create_key(path: &Path) -> Result<(WgKey, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = decode_key(&text).with_context(|| {
                format!(
                    "wireguard key file {}: expected a private key in base64 (as `wg genkey` writes it)",
                    path.display()
                )
            })?;
            warn_if_readable(path);
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate_key()?;
            let _ = std::fs::remove_file(path.with_extension("tmp"));
            crate::state::write_atomic(path, format!("{}\n", encode_key(&key)).as_bytes(), 0o600)
                .with_context(|| format!("writing the new wireguard key file {}", path.display()))?;
            Ok((key, true))
        }
        Err(e) => Err(e).with_context(|| format!("reading wireguard key file {}", path.display())),
    }
}

fn warn_if_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            warn!(file = %path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777), "the wireguard private key is readable by others; chmod 600 it");
        }
    }
}

/// A peer's public key and port from its record's `backend_data.wireguard`, or why not.
fn peer_key(peer: &Peer) -> Result<(WgKey, u16), String> {
    let data =
        peer.backend_data.get(NAME).ok_or("its record has no WireGuard key (is it running the wireguard backend?)")?;
    let key = data.get("public_key").and_then(|k| k.as_str()).ok_or("its record's wireguard data has no public_key")?;
    let key = decode_key(key).map_err(|e| format!("its record's WireGuard public key is unusable: {e}"))?;
    let port = data
        .get("port")
        .and_then(|p| p.as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or("its record's wireguard data has no usable port")?;
    Ok((key, port))
}

/// What the device should hold for `peers`: one WireGuard peer per node (keyed by public key,
/// in key order) with all of its subnets as allowed IPs, and the peer subnets refused (with
/// the reason). The endpoint is the peer's underlay address of the family the tunnel runs over
/// (`endpoint_family`), at the port it published. `own` is this node's public key: a record
/// with it is not another node.
pub fn plan_peers(
    peers: &[&Peer],
    own: Option<&WgKey>,
    keepalive: u16,
    endpoint_family: Family,
) -> (Vec<WgPeer>, Vec<Refused>) {
    let mut by_key: BTreeMap<WgKey, (String, WgPeer)> = BTreeMap::new();
    let mut refused = Vec::new();
    for p in peers {
        let refuse = |reason: String| Refused { node: p.node.clone(), subnet: p.subnet, reason };
        let (key, port) = match peer_key(p) {
            Ok(k) => k,
            Err(reason) => {
                refused.push(refuse(reason));
                continue;
            }
        };
        if own == Some(&key) {
            refused.push(refuse("its record publishes this node's own WireGuard public key".into()));
            continue;
        }
        let endpoint = (Family::of(p.public_ip) == endpoint_family).then(|| SocketAddr::new(p.public_ip, port));
        match by_key.get_mut(&key) {
            Some((node, _)) if *node != p.node => {
                refused.push(refuse(format!("its WireGuard public key is also node {node}'s")));
            }
            Some((_, wg)) => {
                wg.allowed_ips.push(p.subnet);
                wg.endpoint = wg.endpoint.or(endpoint);
            }
            None => {
                let wg = WgPeer { public_key: key, endpoint, allowed_ips: vec![p.subnet], keepalive };
                by_key.insert(key, (p.node.clone(), wg));
            }
        }
    }
    let mut out = Vec::new();
    for (_, (node, mut wg)) in by_key {
        if wg.endpoint.is_none() {
            for subnet in wg.allowed_ips {
                refused.push(Refused {
                    node: node.clone(),
                    subnet,
                    reason: format!(
                        "its record has no {endpoint_family} underlay address to send WireGuard packets to"
                    ),
                });
            }
            continue;
        }
        wg.allowed_ips.sort();
        out.push(wg);
    }
    (out, refused)
}

/// The changes that bring a device's peers (`current`) to `desired`: removals first (a peer
/// not wanted, such as a node's old key), then every wanted peer that is missing or differs
/// (set in place, its allowed IPs replaced). Peers as wanted are left alone.
pub fn peer_changes(desired: &[WgPeer], current: &[WgPeer]) -> Vec<WgChange> {
    let mut out: Vec<WgChange> = current
        .iter()
        .filter(|c| !desired.iter().any(|d| d.public_key == c.public_key))
        .map(|c| WgChange::RemovePeer(c.public_key))
        .collect();
    for d in desired {
        let same = current.iter().find(|c| c.public_key == d.public_key).is_some_and(|c| {
            let mut have = c.allowed_ips.clone();
            have.sort();
            let mut want = d.allowed_ips.clone();
            want.sort();
            have == want && c.endpoint == d.endpoint && c.keepalive == d.keepalive
        });
        if !same {
            out.push(WgChange::SetPeer(d.clone()));
        }
    }
    out
}

impl WireGuardDriver {
    pub fn new(opts: WireGuardConfig) -> Self {
        Self { opts, keys: None, link: None, last_node: None, broken: None }
    }

    /// The family of the underlay the tunnel runs over: the node's `public_ip`, which is
    /// IPv4 (records keep IPv6 underlay addresses apart, in `public_ip6`).
    fn endpoint_family(&self) -> Family {
        Family::V4
    }

    /// Makes the device as `node` needs it: created if missing (or made anew if a device of
    /// another kind has the name), MTU, up, key and port. Returns its index.
    async fn ensure_device<K: Kernel>(&self, nl: &K, node: &NodeView) -> Result<u32> {
        let Some(keys) = &self.keys else { bail!("{DEVICE}: no WireGuard key loaded yet") };
        let mtu = device_mtu(node.underlay.mtu, Family::of(node.underlay.public_ip));
        let index = match nl.link(DEVICE).await? {
            Some(l) if l.kind.as_deref() == Some("wireguard") => l.index,
            other => {
                if let Some(l) = other {
                    info!(device = DEVICE, kind = ?l.kind, "replacing a device that is not a WireGuard device");
                    nl.del_link(l.index).await?;
                } else {
                    info!(device = DEVICE, mtu, port = self.opts.port, "creating the wireguard device");
                }
                nl.add_wireguard(DEVICE, mtu).await?
            }
        };
        let link = nl.link_by_index(index).await?.with_context(|| format!("{DEVICE} vanished"))?;
        let dev = nl.wireguard(index).await?;
        if dev.public_key != Some(keys.public) || dev.listen_port != self.opts.port {
            info!(device = DEVICE, public_key = %encode_key(&keys.public), port = self.opts.port, "setting the wireguard key and port");
            nl.set_wireguard(index, &WgChange::Device { private_key: keys.private, listen_port: self.opts.port })
                .await?;
        }
        if link.mtu != mtu || !link.up {
            nl.set_link(index, Some(mtu), true, None).await?;
        }
        Ok(index)
    }
}

impl<K: Kernel> Driver<K> for WireGuardDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The underlay's MTU less WireGuard's overhead over the tunnel's underlay family.
    fn pod_mtu(&self, underlay_mtu: u32, bridge_mtu: Option<u32>) -> u32 {
        let tunnel = device_mtu(underlay_mtu, self.endpoint_family());
        bridge_mtu.map_or(tunnel, |b| b.min(tunnel))
    }

    fn check<'a>(&'a self, nl: &'a K) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { nl.wireguard_available().await.context("the wireguard backend cannot run on this node") })
    }

    fn prepare(&mut self, _underlay: &UnderlayInfo) -> Result<()> {
        if self.keys.is_some() {
            return Ok(());
        }
        let (private, created) = load_or_create_key(&self.opts.key_file)?;
        let public = public_key(&private);
        if created {
            info!(file = %self.opts.key_file.display(), public_key = %encode_key(&public), "made this node's WireGuard key pair");
        }
        self.keys = Some(KeyPair { private, public });
        Ok(())
    }

    fn backend_data(&self, _underlay: &UnderlayInfo) -> Option<serde_json::Value> {
        let keys = self.keys.as_ref()?;
        Some(serde_json::json!({ "public_key": encode_key(&keys.public), "port": self.opts.port }))
    }

    fn ensure<'a>(&'a mut self, nl: &'a K, node: &'a NodeView) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.last_node = Some(node.clone());
            self.link = Some(self.ensure_device(nl, node).await?);
            self.broken = None;
            Ok(())
        })
    }

    fn observe<'a>(&'a mut self, nl: &'a K) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(node) = self.last_node.clone() else { return Ok(()) };
            match nl.link(DEVICE).await? {
                Some(l) if l.up && l.kind.as_deref() == Some("wireguard") => {
                    self.link = Some(l.index);
                    self.broken = None;
                }
                _ => match self.ensure_device(nl, &node).await {
                    Ok(index) => {
                        self.link = Some(index);
                        self.broken = None;
                    }
                    Err(e) => {
                        warn!(device = DEVICE, error = %format!("{e:#}"), "cannot make the wireguard device again; its peers are refused until it can");
                        self.link = None;
                        self.broken = Some(format!("{e:#}"));
                    }
                },
            }
            Ok(())
        })
    }

    fn plan(&self, peers: &[&Peer], node: &NodeView) -> Plan {
        let mut plan = Plan::default();
        let Some(dev) = self.link else {
            let reason = match &self.broken {
                Some(e) => format!("the {DEVICE} device could not be made: {e}"),
                None => format!("the {DEVICE} device is not there yet"),
            };
            plan.refused = peers
                .iter()
                .map(|p| Refused { node: p.node.clone(), subnet: p.subnet, reason: reason.clone() })
                .collect();
            return plan;
        };
        let own = self.keys.as_ref().map(|k| &k.public);
        let (wg_peers, refused) = plan_peers(peers, own, self.opts.persistent_keepalive_secs, self.endpoint_family());
        plan.refused = refused;
        for p in &wg_peers {
            for subnet in &p.allowed_ips {
                let family = Family::of_net(*subnet);
                let Some(src) = node.gateway(family) else {
                    plan.refused.push(Refused {
                        node: peers.iter().find(|q| q.subnet == *subnet).map(|q| q.node.clone()).unwrap_or_default(),
                        subnet: *subnet,
                        reason: format!("this node has no {family} subnet to send from"),
                    });
                    continue;
                };
                plan.routes.push(Route {
                    dst: *subnet,
                    kind: RouteKind::Unicast,
                    via: None,
                    oif: Some(dev),
                    src: Some(src),
                    metric: 0,
                    onlink: false,
                });
            }
        }
        plan.wireguard.push(WgPlan { link: dev, peers: wg_peers });
        plan
    }

    fn forward_mode(&self) -> ForwardMode {
        ForwardMode::Tunnel { tun: DEVICE.to_string() }
    }
}

#[cfg(test)]
mod tests;
