//! The quic backend's handle on its data path: the tunnel the daemon starts, feeds peer sets
//! and certificates through a command queue, and reads the status of; the tun device it opens.

use super::event_loop::{Io, Loop};
use super::packet::DropReason;
use super::shared::{lock, Cmd, Shared, Wake};
use super::{bind_socket, endpoint_config, tls, transport, PeerSpec};
use anyhow::{anyhow, Context, Result};
use ipnet::IpNet;
use quinn_proto as qp;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};
use weft_config::agent::QuicConfig;
use weft_config::api::{QuicPeerStatus, QuicStatus};
use weft_config::subnet::{Family, PerFamily};

pub struct Settings {
    pub node: String,
    /// The node's pod subnet of each family: packets to them are written to the tun.
    pub local_subnets: PerFamily<IpNet>,
    pub tun_mtu: u32,
    /// UDP payload size the underlay carries (underlay MTU − 28).
    pub udp_payload: u16,
    pub quic: QuicConfig,
    /// The socket bound early by the daemon (see [`bind_socket`]); bound here when `None`.
    pub socket: Option<std::net::UdpSocket>,
}

/// The running backend: the data path thread and the way to talk to it. Dropping it closes
/// the connections (waiting up to `CLOSE_GRACE`, 100 ms, for the close frames) and stops the thread;
/// the tun device persists.
pub struct Tunnel {
    shared: Arc<Shared>,
    cmds: mpsc::Sender<Cmd>,
    wake: Arc<Wake>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Stop);
        self.wake.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// TUNSETPERSIST: keep the device (and the routes through it) when the agent exits, so a
/// restart neither breaks routes nor lets traffic fall through to the underlay.
fn set_persist(fd: i32) -> std::io::Result<()> {
    const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
    // SAFETY: fd is an open tun device; the ioctl takes an int by value.
    if unsafe { libc::ioctl(fd, TUNSETPERSIST, 1 as libc::c_int) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// IPv6 on the tun device: on when the node has an IPv6 subnet (IPv6 packets travel through
/// it), without a link-local address (`addr_gen_mode` 1, so the kernel sends no router or
/// neighbour solicitations into the tunnel, which no peer would take); off otherwise, so the
/// kernel sends nothing there that would be dropped. Best effort (a kernel without IPv6).
fn set_tun_ipv6(name: &str, on: bool) {
    let conf = format!("/proc/sys/net/ipv6/conf/{name}");
    let mode = format!("{conf}/addr_gen_mode");
    if on && std::fs::read_to_string(&mode).is_ok_and(|m| m.trim() != "1") {
        // Once per device: IPv6 off (dropping the link-local address a new device got when it
        // came up), then no address generation, before IPv6 goes on below.
        let _ = std::fs::write(format!("{conf}/disable_ipv6"), "1");
        let _ = std::fs::write(&mode, "1");
    }
    let want = if on { "0" } else { "1" };
    let path = format!("{conf}/disable_ipv6");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() != want) {
        if let Err(e) = std::fs::write(&path, want) {
            warn!(tun = %name, error = %e, "cannot set {path} to {want}");
        }
    }
}

/// Opens the tun device with offload (IFF_VNET_HDR + TSO/GSO), non-blocking: the kernel hands
/// over TCP super-packets of up to 64 KB in one read, and takes coalesced ones in one write. A
/// device left by an older agent without offload is recreated. `ipv6`: the node has an IPv6
/// subnet (see [`set_tun_ipv6`]).
fn open_tun(name: &str, mtu: u32, ipv6: bool) -> Result<tun_rs::SyncDevice> {
    let build = || {
        tun_rs::DeviceBuilder::new()
            .name(name.to_string())
            .mtu(u16::try_from(mtu).unwrap_or(1500))
            .offload(true)
            .build_sync()
    };
    let ipv6_as_wanted = |dev: tun_rs::SyncDevice| {
        set_tun_ipv6(name, ipv6);
        dev
    };
    let dev = match build().map(ipv6_as_wanted) {
        Ok(d) => d,
        Err(first) => {
            warn!(tun = %name, error = %first, "cannot attach to the existing tun device; recreating it");
            let out = std::process::Command::new("ip").args(["link", "del", name]).output();
            if !out.as_ref().is_ok_and(|o| o.status.success()) {
                return Err(first).with_context(|| format!("creating tun device {name}"));
            }
            build().map(ipv6_as_wanted).with_context(|| format!("creating tun device {name}"))?
        }
    };
    dev.set_nonblocking(true).with_context(|| format!("making {name} non-blocking"))?;
    Ok(dev)
}

impl Tunnel {
    /// Creates (or re-attaches to) the tun device and the QUIC endpoint, and starts the data
    /// path thread.
    pub fn start(s: Settings) -> Result<Tunnel> {
        if s.quic.threads > 1 {
            info!(threads = s.quic.threads, "quic.threads is ignored: the data path is one event loop thread");
        }
        let local_subnets = s.local_subnets;
        let id = tls::load(&s.quic, &s.node)?;
        let transport = transport(s.udp_payload)?;
        let server = Arc::new(tls::server_config(&id, transport.clone())?);
        let client = tls::client_config(&id, transport)?;
        let dev = open_tun(&s.quic.tun, s.tun_mtu, local_subnets.get(Family::V6).is_some())?;
        set_persist(dev.as_raw_fd()).with_context(|| format!("making {} persistent", s.quic.tun))?;
        let socket = match s.socket {
            Some(socket) => socket,
            None => bind_socket(s.quic.port, s.quic.endpoint_family)?,
        };
        socket.set_nonblocking(true).context("making the UDP socket non-blocking")?;
        let udp = quinn_udp::UdpSocketState::new((&socket).into()).context("setting up the UDP socket")?;
        let ep_cfg = endpoint_config(s.udp_payload, &id)?;
        let endpoint = qp::Endpoint::new(Arc::new(ep_cfg), Some(server), false, Some(rng_seed()?));
        let wake = Arc::new(Wake::new()?);
        let (cmds, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            node: s.node.clone(),
            tun_name: s.quic.tun.clone(),
            tun_mtu: s.tun_mtu,
            endpoint: socket.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            quic: s.quic.clone(),
            fingerprint: id.fingerprint.clone(),
            udp_payload: s.udp_payload,
            tls_stamp: Mutex::new(id.stamp.clone()),
            cert_not_after: AtomicU64::new(id.not_after.max(0) as u64),
            peers: Mutex::new(Vec::new()),
            drops: Default::default(),
            refused: AtomicU64::new(0),
        });
        let io = Io { endpoint, socket, udp, dev };
        let mut lp = Loop::new(shared.clone(), local_subnets, io, wake.clone(), rx, client);
        let thread = std::thread::Builder::new()
            .name("weft-quic".into())
            .spawn(move || lp.run())
            .context("starting the data path thread")?;
        info!(tun = %shared.tun_name, mtu = shared.tun_mtu, port = shared.quic.port, "quic backend up");
        Ok(Tunnel { shared, cmds, wake, thread: Some(thread) })
    }

    pub fn fingerprint(&self) -> &str {
        &self.shared.fingerprint
    }

    pub fn tun_name(&self) -> &str {
        &self.shared.tun_name
    }

    fn send(&self, cmd: Cmd) {
        if self.cmds.send(cmd).is_ok() {
            self.wake.wake();
        }
    }

    /// Hands over the current peer set: new peers are dialled (by the dialer of the pair),
    /// gone ones disconnected, restarted ones (new epoch or endpoint) redialled.
    pub fn set_peers(&self, peers: &[PeerSpec]) {
        self.send(Cmd::Peers(peers.to_vec()));
    }

    /// Re-reads the certificate files when they changed; new handshakes use the new ones.
    pub fn reload_tls_if_changed(&self) -> Result<bool> {
        let sh = &self.shared;
        let now = tls::stamp(&sh.quic);
        if *lock(&sh.tls_stamp) == now {
            return Ok(false);
        }
        let id = tls::load(&sh.quic, &sh.node)?;
        let t = transport(sh.udp_payload)?;
        let server = Arc::new(tls::server_config(&id, t.clone())?);
        let client = tls::client_config(&id, t)?;
        self.send(Cmd::Tls { server, client });
        sh.cert_not_after.store(id.not_after.max(0) as u64, Relaxed);
        *lock(&sh.tls_stamp) = id.stamp;
        info!(fingerprint = %id.fingerprint, "reloaded the node certificate");
        Ok(true)
    }

    /// A function giving the live status, for the API task.
    pub fn status_fn(&self) -> Box<dyn Fn() -> QuicStatus + Send + Sync> {
        let sh = self.shared.clone();
        Box::new(move || status_of(&sh))
    }
}

fn status_of(sh: &Shared) -> QuicStatus {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let peers = lock(&sh.peers)
        .iter()
        .map(|p| QuicPeerStatus {
            node: p.node.clone(),
            subnet: p.subnets.first().to_string(),
            subnet6: p.subnets.get(Family::V6).map(|s| s.to_string()),
            connected: p.connected,
            dialer: p.dialer,
            rtt_us: p.rtt_us,
            tx_packets: p.counters.tx_packets.load(Relaxed),
            tx_bytes: p.counters.tx_bytes.load(Relaxed),
            rx_packets: p.counters.rx_packets.load(Relaxed),
            rx_bytes: p.counters.rx_bytes.load(Relaxed),
            connects: p.connects,
        })
        .collect();
    QuicStatus {
        tun: sh.tun_name.clone(),
        mtu: sh.tun_mtu,
        endpoint: sh.endpoint.clone(),
        cert_expires_in_secs: sh.cert_not_after.load(Relaxed) as i64 - now,
        peers,
        drops: DropReason::ALL.iter().map(|d| (d.as_str().to_string(), sh.drops[d.index()].load(Relaxed))).collect(),
        refused: sh.refused.load(Relaxed),
    }
}

/// A seed for the endpoint's generator of connection ids and tokens, from the system's
/// generator (quinn-proto would panic if it could not seed itself).
fn rng_seed() -> Result<[u8; 32]> {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut seed).map_err(|_| anyhow!("the system random generator failed"))?;
    Ok(seed)
}
