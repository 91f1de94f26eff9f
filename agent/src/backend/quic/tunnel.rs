//! The quic backend's handle on its data path: the tunnel the daemon starts, feeds peer sets
//! and certificates through a command queue, and reads the status of; the tun device it opens.

use super::event_loop::{Io, Loop};
use super::packet::DropReason;
use super::{bind_socket, endpoint_config, tls, transport, PeerSpec};
use anyhow::{anyhow, Context, Result};
use ipnet::IpNet;
use quinn_proto as qp;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};
use weft_config::agent::QuicConfig;
use weft_config::api::{QuicPeerStatus, QuicStatus};

#[derive(Default)]
pub(super) struct PeerCounters {
    pub(super) tx_packets: AtomicU64,
    pub(super) tx_bytes: AtomicU64,
    pub(super) rx_packets: AtomicU64,
    pub(super) rx_bytes: AtomicU64,
}

pub struct Settings {
    pub node: String,
    pub local_subnet: IpNet,
    pub tun_mtu: u32,
    /// UDP payload size the underlay carries (underlay MTU − 28).
    pub udp_payload: u16,
    pub quic: QuicConfig,
    /// The socket bound early by the daemon (see [`bind_socket`]); bound here when `None`.
    pub socket: Option<std::net::UdpSocket>,
}

/// What the control plane and the API read; the loop writes it.
pub(super) struct Shared {
    pub(super) node: String,
    pub(super) tun_name: String,
    pub(super) tun_mtu: u32,
    pub(super) quic: QuicConfig,
    pub(super) endpoint: String,
    pub(super) fingerprint: String,
    /// UDP payload of the underlay, for the transport config of renewed TLS configs.
    pub(super) udp_payload: u16,
    pub(super) tls_stamp: Mutex<Vec<Option<std::time::SystemTime>>>,
    pub(super) cert_not_after: AtomicU64,
    /// The peers as the loop last saw them (rebuilt on every change and every second).
    pub(super) peers: Mutex<Vec<PeerView>>,
    pub(super) drops: [AtomicU64; DropReason::ALL.len()],
    pub(super) refused: AtomicU64,
}

pub(super) struct PeerView {
    pub(super) node: String,
    pub(super) subnet: IpNet,
    pub(super) connected: bool,
    pub(super) dialer: bool,
    pub(super) rtt_us: u64,
    pub(super) connects: u64,
    pub(super) counters: Arc<PeerCounters>,
}

pub(super) enum Cmd {
    Peers(Vec<PeerSpec>),
    Tls { server: Arc<qp::ServerConfig>, client: qp::ClientConfig },
    Stop,
}

/// Wakes the loop from another thread (an eventfd it polls).
pub(super) struct Wake(pub(super) OwnedFd);

impl Wake {
    fn new() -> Result<Wake> {
        // SAFETY: eventfd takes two integers and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("creating the data path's eventfd");
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(Wake(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd; a full counter is harmless.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    pub(super) fn reset(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer from our non-blocking eventfd.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }
}

/// The running backend: the data path thread and the way to talk to it. Dropping it closes
/// the connections (waiting up to [`CLOSE_GRACE`] for the close frames) and stops the thread;
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

/// How long a stopping tunnel waits for its close frames to go out.
pub(super) const CLOSE_GRACE: Duration = Duration::from_millis(100);
/// How often the loop refreshes what the API shows (RTTs); changes are shown at once.
pub(super) const STATUS_EVERY: Duration = Duration::from_secs(1);

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

/// Opens the tun device with offload (IFF_VNET_HDR + TSO/GSO), non-blocking: the kernel hands
/// over TCP super-packets of up to 64 KB in one read, and takes coalesced ones in one write. A
/// device left by an older agent without offload is recreated.
fn open_tun(name: &str, mtu: u32) -> Result<tun_rs::SyncDevice> {
    let build = || {
        tun_rs::DeviceBuilder::new()
            .name(name.to_string())
            .mtu(u16::try_from(mtu).unwrap_or(1500))
            .offload(true)
            .build_sync()
    };
    // The tunnel carries IPv4 only so far: no IPv6 on the tun, so the kernel sends nothing there
    // that would be dropped (the packet checks parse IPv6, but no peer has an IPv6 subnet yet).
    let no_v6 = |dev: tun_rs::SyncDevice| {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        dev
    };
    let dev = match build().map(no_v6) {
        Ok(d) => d,
        Err(first) => {
            warn!(tun = %name, error = %first, "cannot attach to the existing tun device; recreating it");
            let out = std::process::Command::new("ip").args(["link", "del", name]).output();
            if !out.as_ref().is_ok_and(|o| o.status.success()) {
                return Err(first).with_context(|| format!("creating tun device {name}"));
            }
            build().map(no_v6).with_context(|| format!("creating tun device {name}"))?
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
        let local_subnet = s.local_subnet;
        let id = tls::load(&s.quic, &s.node)?;
        let transport = transport(s.udp_payload)?;
        let server = Arc::new(tls::server_config(&id, transport.clone())?);
        let client = tls::client_config(&id, transport)?;
        let dev = open_tun(&s.quic.tun, s.tun_mtu)?;
        set_persist(dev.as_raw_fd()).with_context(|| format!("making {} persistent", s.quic.tun))?;
        let socket = match s.socket {
            Some(socket) => socket,
            None => bind_socket(s.quic.port)?,
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
        let mut lp = Loop::new(shared.clone(), local_subnet, io, wake.clone(), rx, client);
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
            subnet: p.subnet.to_string(),
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
