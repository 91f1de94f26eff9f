//! The quic backend: a tun device whose IP packets travel as QUIC DATAGRAM frames (unreliable,
//! so no TCP-over-TCP) over one mutually authenticated connection per pair of nodes.
//!
//! - Data path: one thread runs an event loop over `quinn-proto` (no async runtime): `ppoll` on
//!   the UDP socket, the tun and a wake-up eventfd; the tun's packets go to the connection of
//!   the peer owning the destination (a `SubnetTable` lookup); received datagrams are checked
//!   (source in the peer's subnet, destination in ours) and written to the tun through GRO.
//!   Compared with the same path on tokio + quinn (tasks, drivers, channels, the runtime's
//!   self-wakes) it takes a quarter off the round trip: docs/BENCHMARKS.md.
//! - Control: the daemon hands over the peer set on every reconcile, through a command queue
//!   and the eventfd. Of each pair the node with the smaller name dials (reconnecting with
//!   backoff), the other accepts and identifies the peer by its certificate and address. A peer
//!   whose epoch changed (it restarted) is redialled at once.

mod driver;
pub mod packet;
pub mod tls;

pub use driver::{registration, specs, QuicDriver, BLACKHOLE_METRIC, NAME};

use anyhow::{anyhow, Context, Result};
use bytes::{Bytes, BytesMut};
use ipnet::Ipv4Net;
use packet::{DropReason, Prefix};
use quinn_proto as qp;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io::{ErrorKind, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use weft_config::agent::QuicConfig;
use weft_config::api::{QuicPeerStatus, QuicStatus};

/// IPv4 + UDP headers.
pub const UDP_IP_OVERHEAD: u32 = 28;
/// What a QUIC short-header packet carrying one DATAGRAM frame adds, as quinn computes it: flags
/// (1), destination connection id (quinn's 8 bytes... with margin for its 20-byte maximum
/// accounted by quinn itself), packet number (up to 4), AEAD tag (16), frame type and length
/// (up to 3); quinn reports 1434 usable bytes for a 1472-byte UDP payload, so 38 in all.
pub const QUIC_DATAGRAM_OVERHEAD: u32 = 38;

/// Tun (and pod) MTU for an underlay MTU: what fits in one datagram.
pub fn tun_mtu_for(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(UDP_IP_OVERHEAD + QUIC_DATAGRAM_OVERHEAD).max(576)
}

/// A peer as the tunnel needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub node: String,
    pub subnet: Ipv4Net,
    pub endpoint: SocketAddr,
    pub epoch: u64,
}

#[derive(Default)]
struct PeerCounters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
}

pub struct Settings {
    pub node: String,
    pub local_subnet: Ipv4Net,
    pub tun_mtu: u32,
    /// UDP payload size the underlay carries (underlay MTU − 28).
    pub udp_payload: u16,
    pub quic: QuicConfig,
    /// The socket bound early by the daemon (see [`bind_socket`]); bound here when `None`.
    pub socket: Option<std::net::UdpSocket>,
}

/// What the control plane and the API read; the loop writes it.
struct Shared {
    node: String,
    tun_name: String,
    tun_mtu: u32,
    quic: QuicConfig,
    endpoint: String,
    fingerprint: String,
    /// UDP payload of the underlay, for the transport config of renewed TLS configs.
    udp_payload: u16,
    tls_stamp: Mutex<Vec<Option<std::time::SystemTime>>>,
    cert_not_after: AtomicU64,
    /// The peers as the loop last saw them (rebuilt on every change and every second).
    peers: Mutex<Vec<PeerView>>,
    drops: [AtomicU64; DropReason::ALL.len()],
    refused: AtomicU64,
}

struct PeerView {
    node: String,
    subnet: Ipv4Net,
    connected: bool,
    dialer: bool,
    rtt_us: u64,
    connects: u64,
    counters: Arc<PeerCounters>,
}

enum Cmd {
    Peers(Vec<PeerSpec>),
    Tls { server: Arc<qp::ServerConfig>, client: qp::ClientConfig },
    Stop,
}

/// Wakes the loop from another thread (an eventfd it polls).
struct Wake(OwnedFd);

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

    fn reset(&self) {
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
const CLOSE_GRACE: Duration = Duration::from_millis(100);
/// A dial that has not completed its handshake by then is abandoned and retried.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long an accepted connection whose certificate names no current peer is held before it
/// is refused: a node that just joined publishes its record (which makes peers dial) a moment
/// before its own peer set reaches the tunnel, and a peer's record reaches us through the watch
/// a moment after the peer can dial. Refusing at once made the dialer back off and redial.
const IDENTIFY_GRACE: Duration = Duration::from_secs(2);
/// A tunnel up at least this long counts as healthy: when it closes, it is redialled at once.
const HEALTHY: Duration = Duration::from_secs(1);
/// How often the loop refreshes what the API shows (RTTs); changes are shown at once.
const STATUS_EVERY: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    // The tunnel carries IPv4 only: no IPv6 on the tun, so the kernel sends nothing there that
    // would be dropped as malformed.
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

pub fn transport(udp_payload: u16) -> Result<Arc<quinn::TransportConfig>> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(Duration::from_secs(5).try_into().context("idle timeout")?));
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    // Nodes of one cluster are close: a 100 ms first RTT guess makes a lost handshake packet
    // (the peer not listening yet after a restart) be resent within ~300 ms, not ~1 s.
    t.initial_rtt(Duration::from_millis(100));
    t.initial_mtu(udp_payload);
    t.min_mtu(udp_payload.min(udp_payload.max(1200)));
    t.mtu_discovery_config(None);
    t.datagram_receive_buffer_size(Some(16 << 20));
    t.datagram_send_buffer_size(16 << 20);
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    Ok(Arc::new(t))
}

/// The node's UDP socket on `port` of every address, with enlarged buffers. The agent binds it
/// before it publishes its record (which tells peers to dial): a peer's first handshake packet
/// then waits in the socket buffer instead of being lost while the endpoint starts.
pub fn bind_socket(port: u16) -> Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .with_context(|| format!("binding UDP port {port}"))?;
    // Bursts of a fast TCP flow overrun the default socket buffers (UdpRcvbufErrors); the
    // FORCE variants (CAP_NET_ADMIN) are not capped by net.core.[rw]mem_max.
    use nix::sys::socket::{setsockopt, sockopt};
    for (what, r) in [
        ("receive", setsockopt(&socket, sockopt::RcvBufForce, &SOCKET_BUFFER)),
        ("send", setsockopt(&socket, sockopt::SndBufForce, &SOCKET_BUFFER)),
    ] {
        if let Err(e) = r {
            warn!(error = %e, "cannot enlarge the UDP {what} buffer");
        }
    }
    Ok(socket)
}

/// The endpoint settings: the largest UDP payload, and the stateless-reset key derived from the
/// node key (so a restarted node's resets close stale connections at once).
fn endpoint_config(udp_payload: u16, id: &tls::Identity) -> Result<quinn::EndpointConfig> {
    let mut cfg = quinn::EndpointConfig::new(tls::reset_key(id));
    cfg.max_udp_payload_size(udp_payload.max(1200)).context("max UDP payload")?;
    Ok(cfg)
}

/// A quinn (async) endpoint on UDP `port` with the agent's socket and endpoint settings, for the
/// transport benchmark `weft-quic-raw`, so it measures what the tunnel's endpoint would carry.
pub fn bind_endpoint(
    port: u16,
    udp_payload: u16,
    id: &tls::Identity,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint> {
    quinn::Endpoint::new(endpoint_config(udp_payload, id)?, server, bind_socket(port)?, Arc::new(quinn::TokioRuntime))
        .context("starting the QUIC endpoint")
}

impl Tunnel {
    /// Creates (or re-attaches to) the tun device and the QUIC endpoint, and starts the data
    /// path thread.
    pub fn start(s: Settings) -> Result<Tunnel> {
        if s.quic.threads > 1 {
            info!(threads = s.quic.threads, "quic.threads is ignored: the data path is one event loop thread");
        }
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
        let mut lp = Loop {
            sh: shared.clone(),
            local: Prefix::new(s.local_subnet),
            endpoint,
            socket,
            udp,
            dev,
            wake: wake.clone(),
            cmds: rx,
            client,
            conns: HashMap::new(),
            peers: BTreeMap::new(),
            routes: packet::SubnetTable::new(u32::from(s.local_subnet.netmask())),
            dirty: Vec::new(),
            timer_heap: BinaryHeap::new(),
            dial_heap: BinaryHeap::new(),
            tx: Vec::with_capacity(64 * 1500),
            rx_batch: Vec::with_capacity(RX_BATCH),
            rx_spare: Vec::with_capacity(RX_BATCH),
            gro: tun_rs::GROTable::default(),
            arena: BytesMut::with_capacity(ARENA),
            stopping: None,
            status_due: Instant::now(),
        };
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

/// UDP socket buffer size (each way).
const SOCKET_BUFFER: usize = 8 << 20;

/// Packet arena the outgoing datagrams are copied into and split off (one allocation per
/// ~1400 full-size packets; quinn keeps each `Bytes` until it is sent).
const ARENA: usize = 2 << 20;
/// Datagrams gathered before they are written to the tun together (GRO).
const RX_BATCH: usize = 64;
/// Tun reads (each up to 64 KB) before the loop looks at the socket again.
const TUN_READS_PER_TURN: usize = 16;

/// One connection, dialled or accepted.
struct Conn {
    conn: qp::Connection,
    /// The peer: known from the start when dialled, after identification when accepted.
    node: Option<String>,
    /// Installed as its peer's tunnel (datagrams flow).
    peer: Option<(Prefix, Arc<PeerCounters>)>,
    /// Dials not connected by then are abandoned.
    deadline: Option<Instant>,
    /// An accepted connection whose certificate names no current peer (yet): refused at this
    /// instant unless a peer set naming it arrives before.
    identify_by: Option<Instant>,
    /// When it was installed as its peer's tunnel.
    up_since: Option<Instant>,
    /// Closed by this side (left, replaced, refused, timed out): its end needs no handling.
    closing: bool,
    /// quinn-proto's next timeout as last registered in the loop's timer heap.
    timeout: Option<Instant>,
    max_datagram: usize,
    dirty: bool,
}

impl Conn {
    /// A connection in its handshake: dialled to `dialed_to` (the peer, and when to give up),
    /// or accepted (`None`).
    fn new(conn: qp::Connection, dialed_to: Option<(&str, Instant)>) -> Conn {
        Conn {
            conn,
            node: dialed_to.map(|(n, _)| n.to_string()),
            peer: None,
            deadline: dialed_to.map(|(_, t)| t),
            identify_by: None,
            up_since: None,
            closing: false,
            timeout: None,
            max_datagram: 0,
            dirty: false,
        }
    }
}

struct Peer {
    spec: PeerSpec,
    /// The installed connection.
    conn: Option<qp::ConnectionHandle>,
    /// A dial in progress.
    dialing: Option<qp::ConnectionHandle>,
    /// When to dial next (dialer side, no connection, no dial in progress).
    next_dial: Option<Instant>,
    backoff: Duration,
    connects: u64,
    counters: Arc<PeerCounters>,
}

impl Peer {
    /// Dial at `at`: noted here, and queued in the loop's `dial_heap`.
    fn dial_at(&mut self, at: Instant, heap: &mut BinaryHeap<Reverse<(Instant, String)>>) {
        self.next_dial = Some(at);
        heap.push(Reverse((at, self.spec.node.clone())));
    }

    /// Dial again after the backoff, which doubles (up to [`BACKOFF_MAX`]).
    fn retry(&mut self, now: Instant, heap: &mut BinaryHeap<Reverse<(Instant, String)>>) {
        self.dial_at(now + self.backoff, heap);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

struct Loop {
    sh: Arc<Shared>,
    local: Prefix,
    endpoint: qp::Endpoint,
    socket: std::net::UdpSocket,
    udp: quinn_udp::UdpSocketState,
    dev: tun_rs::SyncDevice,
    wake: Arc<Wake>,
    cmds: mpsc::Receiver<Cmd>,
    client: qp::ClientConfig,
    conns: HashMap<qp::ConnectionHandle, Conn>,
    peers: BTreeMap<String, Peer>,
    /// Peer subnet → installed connection.
    routes: packet::SubnetTable<qp::ConnectionHandle>,
    /// Connections with something to do (events, datagrams, packets to send).
    dirty: Vec<qp::ConnectionHandle>,
    /// Connection timeouts and handshake deadlines, earliest first. Entries are checked against
    /// the connection when they come due (a newer entry supersedes an older one), so a wake-up
    /// costs the same with one peer as with hundreds.
    timer_heap: BinaryHeap<Reverse<(Instant, qp::ConnectionHandle)>>,
    /// When each peer is to be dialled, checked against `Peer::next_dial` the same way.
    dial_heap: BinaryHeap<Reverse<(Instant, String)>>,
    tx: Vec<u8>,
    rx_batch: Vec<BytesMut>,
    rx_spare: Vec<BytesMut>,
    gro: tun_rs::GROTable,
    arena: BytesMut,
    /// Set when stopping: exit once every connection is drained, or at this instant.
    stopping: Option<Instant>,
    status_due: Instant,
}

fn close_code(code: u32) -> qp::VarInt {
    qp::VarInt::from_u32(code)
}

impl Loop {
    fn run(&mut self) {
        let gro_segments = self.udp.gro_segments().max(1);
        let chunk = usize::from(u16::MAX).max(1500 * gro_segments);
        let mut storage = vec![0u8; chunk * quinn_udp::BATCH_SIZE];
        let mut metas = vec![quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE];
        let mut original = vec![0u8; tun_rs::VIRTIO_NET_HDR_LEN + 65535];
        let mut bufs = vec![vec![0u8; self.sh.tun_mtu as usize + 64]; tun_rs::IDEAL_BATCH_SIZE];
        let mut sizes = vec![0usize; tun_rs::IDEAL_BATCH_SIZE];
        let mut fds = [
            libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.dev.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.wake.0.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        loop {
            let now = Instant::now();
            self.timers(now);
            self.drive_dirty();
            if now >= self.status_due {
                self.publish_status();
            }
            if let Some(until) = self.stopping {
                if self.conns.is_empty() || now >= until {
                    return;
                }
            }
            let wait = self.next_deadline().saturating_duration_since(Instant::now());
            let ts = libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos().into() };
            for f in &mut fds {
                f.revents = 0;
            }
            // SAFETY: fds is a live array of three pollfd; no signal mask is passed.
            let r = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    warn!(error = %e, "ppoll failed in the data path");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            if fds[2].revents != 0 {
                self.wake.reset();
                self.commands();
            }
            if fds[0].revents != 0 {
                self.read_udp(&mut storage, chunk, &mut metas);
            }
            if fds[1].revents != 0 {
                self.read_tun(&mut original, &mut bufs, &mut sizes);
            }
        }
    }

    fn mark(&mut self, ch: qp::ConnectionHandle) {
        if let Some(c) = self.conns.get_mut(&ch) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(ch);
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut next = self.stopping.map_or(self.status_due, |s| s.min(self.status_due));
        if let Some(Reverse((t, _))) = self.timer_heap.peek() {
            next = next.min(*t);
        }
        if let Some(Reverse((t, _))) = self.dial_heap.peek() {
            next = next.min(*t);
        }
        next
    }

    /// Connection timers, handshake deadlines and due dials.
    fn timers(&mut self, now: Instant) {
        let mut expired = Vec::new();
        let mut abandoned = Vec::new();
        let mut unidentified = Vec::new();
        while let Some(&Reverse((t, ch))) = self.timer_heap.peek() {
            if t > now {
                break;
            }
            self.timer_heap.pop();
            let Some(c) = self.conns.get_mut(&ch) else { continue };
            if c.timeout == Some(t) {
                c.timeout = None;
                c.conn.handle_timeout(now);
                expired.push(ch);
            }
            if c.deadline == Some(t) {
                c.deadline = None;
                c.closing = true;
                c.conn.close(now, close_code(0), Bytes::from_static(b"handshake timed out"));
                abandoned.push(ch);
                expired.push(ch);
            }
            if c.identify_by == Some(t) && !c.closing {
                c.identify_by = None;
                unidentified.push(ch);
            }
        }
        for ch in unidentified {
            let names = self.conns.get(&ch).map(|c| tls::peer_names(c.conn.crypto_session().peer_identity()));
            let why = match names {
                Some(Ok(names)) => anyhow!("certificate names {names:?}, none of them a peer after {IDENTIFY_GRACE:?}"),
                _ => anyhow!("no peer identity after {IDENTIFY_GRACE:?}"),
            };
            self.refuse(ch, &why);
        }
        for ch in expired {
            self.mark(ch);
        }
        for ch in abandoned {
            let node = self.conns.get_mut(&ch).and_then(|c| c.node.take());
            if let Some(node) = node {
                debug!(peer = %node, "dial timed out");
                self.dial_failed(&node, ch, now);
            }
        }
        if self.stopping.is_some() {
            return;
        }
        while let Some(Reverse((t, _))) = self.dial_heap.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((t, node))) = self.dial_heap.pop() else { break };
            if self.peers.get(&node).is_some_and(|p| p.next_dial == Some(t)) {
                self.dial(&node, now);
            }
        }
    }

    fn dial(&mut self, node: &str, now: Instant) {
        let Some(p) = self.peers.get_mut(node) else { return };
        p.next_dial = None;
        if p.conn.is_some() || p.dialing.is_some() {
            return;
        }
        match self.endpoint.connect(now, self.client.clone(), p.spec.endpoint, node) {
            Ok((ch, conn)) => {
                p.dialing = Some(ch);
                let deadline = now + HANDSHAKE_TIMEOUT;
                self.timer_heap.push(Reverse((deadline, ch)));
                self.conns.insert(ch, Conn::new(conn, Some((node, deadline))));
                self.mark(ch);
            }
            Err(e) => {
                debug!(peer = %node, error = %e, "cannot start a handshake");
                p.retry(now, &mut self.dial_heap);
            }
        }
    }

    /// A dial of `node` (connection `ch`) failed: try again after the backoff.
    fn dial_failed(&mut self, node: &str, ch: qp::ConnectionHandle, now: Instant) {
        if let Some(p) = self.peers.get_mut(node) {
            if p.dialing == Some(ch) {
                p.dialing = None;
                if p.conn.is_none() {
                    p.retry(now, &mut self.dial_heap);
                }
            }
        }
    }

    fn commands(&mut self) {
        while let Ok(cmd) = self.cmds.try_recv() {
            match cmd {
                Cmd::Peers(specs) => self.set_peers(specs),
                Cmd::Tls { server, client } => {
                    self.endpoint.set_server_config(Some(server));
                    self.client = client;
                }
                Cmd::Stop => {
                    let now = Instant::now();
                    self.stopping = Some(now + CLOSE_GRACE);
                    let handles: Vec<_> = self.conns.keys().copied().collect();
                    for ch in handles {
                        if let Some(c) = self.conns.get_mut(&ch) {
                            c.conn.close(now, close_code(0), Bytes::from_static(b"agent stopping"));
                            c.closing = true;
                        }
                        self.mark(ch);
                    }
                }
            }
        }
    }

    fn close(&mut self, ch: qp::ConnectionHandle, code: u32, reason: &'static [u8]) {
        if let Some(c) = self.conns.get_mut(&ch) {
            c.conn.close(Instant::now(), close_code(code), Bytes::from_static(reason));
            c.node = None;
            c.peer = None;
            c.closing = true;
            self.mark(ch);
        }
    }

    /// Refuses the accepted connection `ch` (counted, logged, closed with code 4).
    fn refuse(&mut self, ch: qp::ConnectionHandle, why: &anyhow::Error) {
        if let Some(c) = self.conns.get(&ch) {
            self.sh.refused.fetch_add(1, Relaxed);
            warn!(remote = %c.conn.remote_address(), error = %format!("{why:#}"), "refused a connection");
        }
        self.close(ch, 4, b"unknown node or wrong address");
    }

    /// Accepted connections held for their peer's record: identified against the new peer set.
    fn identify_held(&mut self) {
        let held: Vec<_> =
            self.conns.iter().filter(|(_, c)| c.identify_by.is_some() && !c.closing).map(|(ch, _)| *ch).collect();
        for ch in held {
            self.connected(ch);
        }
    }

    fn set_peers(&mut self, specs: Vec<PeerSpec>) {
        let now = Instant::now();
        let gone: Vec<String> = self.peers.keys().filter(|n| !specs.iter().any(|s| &s.node == *n)).cloned().collect();
        for node in gone {
            if let Some(p) = self.peers.remove(&node) {
                for ch in [p.conn, p.dialing].into_iter().flatten() {
                    self.close(ch, 1, b"peer left");
                }
                info!(peer = %node, "peer gone");
            }
        }
        for spec in specs {
            let dialer = self.sh.node < spec.node;
            match self.peers.get_mut(&spec.node) {
                Some(p) if p.spec == spec => {}
                Some(p) => {
                    let restarted = p.spec.epoch != spec.epoch || p.spec.endpoint != spec.endpoint;
                    let moved = p.spec.subnet != spec.subnet;
                    p.spec = spec.clone();
                    if restarted || moved {
                        info!(peer = %spec.node, "peer restarted or changed; reconnecting");
                        let old = [p.conn.take(), p.dialing.take()];
                        p.backoff = BACKOFF_MIN;
                        if dialer {
                            p.dial_at(now, &mut self.dial_heap);
                        }
                        for ch in old.into_iter().flatten() {
                            self.close(ch, 2, b"peer restarted");
                        }
                    }
                }
                None => {
                    let mut p = Peer {
                        spec: spec.clone(),
                        conn: None,
                        dialing: None,
                        next_dial: None,
                        backoff: BACKOFF_MIN,
                        connects: 0,
                        counters: Arc::default(),
                    };
                    if dialer {
                        p.dial_at(now, &mut self.dial_heap);
                    }
                    self.peers.insert(spec.node.clone(), p);
                }
            }
        }
        self.rebuild_routes();
        self.identify_held();
    }

    fn rebuild_routes(&mut self) {
        let mut routes = packet::SubnetTable::new(self.local.mask);
        for p in self.peers.values() {
            if let Some(ch) = p.conn {
                routes.insert(u32::from(p.spec.subnet.network()), ch);
            }
        }
        self.routes = routes;
        self.publish_status();
    }

    fn publish_status(&mut self) {
        let view = self
            .peers
            .values()
            .map(|p| {
                let conn = p.conn.and_then(|ch| self.conns.get(&ch));
                PeerView {
                    node: p.spec.node.clone(),
                    subnet: p.spec.subnet,
                    connected: conn.is_some(),
                    dialer: self.sh.node < p.spec.node,
                    rtt_us: conn.map_or(0, |c| c.conn.rtt().as_micros() as u64),
                    connects: p.connects,
                    counters: p.counters.clone(),
                }
            })
            .collect();
        *lock(&self.sh.peers) = view;
        self.status_due = Instant::now() + STATUS_EVERY;
    }

    /// The connection `ch` completed its handshake.
    fn connected(&mut self, ch: qp::ConnectionHandle) {
        let Some(c) = self.conns.get_mut(&ch) else { return };
        if c.closing {
            return;
        }
        // A dialled connection knows its peer; an accepted one is identified now.
        let node = match c.node.clone() {
            Some(n) => n,
            None => match identify(&self.peers, &c.conn) {
                Ok(n) => n,
                Err(Unidentified::NotYetAPeer(names)) => {
                    if c.identify_by.is_none() {
                        let by = Instant::now() + IDENTIFY_GRACE;
                        c.identify_by = Some(by);
                        self.timer_heap.push(Reverse((by, ch)));
                        debug!(remote = %c.conn.remote_address(), ?names, "certificate names no peer yet; holding the connection");
                    }
                    return;
                }
                Err(Unidentified::Refused(e)) => {
                    self.refuse(ch, &e);
                    return;
                }
            },
        };
        let Some(c) = self.conns.get_mut(&ch) else { return };
        c.deadline = None;
        c.identify_by = None;
        let Some(p) = self.peers.get_mut(&node) else {
            self.close(ch, 4, b"not a peer");
            return;
        };
        let old = p.conn.replace(ch).filter(|&o| o != ch);
        let pending = p.dialing.take().filter(|&d| d != ch);
        p.next_dial = None;
        p.connects += 1;
        let prefix = Prefix::new(p.spec.subnet);
        let counters = p.counters.clone();
        let max = c.conn.datagrams().max_size().unwrap_or(0);
        c.node = Some(node.clone());
        c.peer = Some((prefix, counters));
        c.up_since = Some(Instant::now());
        c.max_datagram = max;
        info!(peer = %node, remote = %c.conn.remote_address(), max_datagram = max, "tunnel up");
        if max < self.sh.tun_mtu as usize {
            warn!(peer = %node, max_datagram = max, tun_mtu = self.sh.tun_mtu, "datagrams smaller than the tun MTU: large packets will be dropped");
        }
        if let Some(o) = old {
            self.close(o, 3, b"replaced by a newer connection");
        }
        if let Some(d) = pending {
            self.close(d, 3, b"replaced by a newer connection");
        }
        self.rebuild_routes();
    }

    /// The connection `ch` is closed (by either side, or timed out).
    fn lost(&mut self, ch: qp::ConnectionHandle, reason: &qp::ConnectionError) {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(&ch) else { return };
        if c.closing {
            return;
        }
        c.closing = true;
        c.peer = None;
        let lived = c.up_since.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        // Only an accepted connection not yet identified has no node and is not closing: its
        // handshake failed (bad certificate, wrong CA).
        let Some(node) = c.node.take() else {
            if c.identify_by.take().is_some() {
                debug!(remote = %c.conn.remote_address(), error = %reason, "a connection held for identification closed");
                return;
            }
            self.sh.refused.fetch_add(1, Relaxed);
            warn!(remote = %c.conn.remote_address(), error = %reason, "refused a QUIC handshake");
            return;
        };
        let dialer = self.sh.node < node;
        if let Some(p) = self.peers.get_mut(&node) {
            if p.conn == Some(ch) {
                p.conn = None;
                info!(peer = %node, reason = %reason, "tunnel down");
                if dialer && p.dialing.is_none() {
                    // A tunnel that had been up for a while is redialled at once; one closed
                    // right after its handshake (the peer does not know us yet) backs off.
                    if lived >= HEALTHY {
                        p.backoff = BACKOFF_MIN;
                        p.dial_at(now, &mut self.dial_heap);
                    } else {
                        p.retry(now, &mut self.dial_heap);
                    }
                }
                self.rebuild_routes();
            } else if p.dialing == Some(ch) {
                debug!(peer = %node, error = %reason, "dial failed");
                self.dial_failed(&node, ch, now);
            }
        }
    }

    /// Runs every dirty connection: endpoint events, application events, datagrams to the tun,
    /// packets to the socket.
    fn drive_dirty(&mut self) {
        while let Some(ch) = self.dirty.pop() {
            self.drive(ch);
        }
    }

    fn drive(&mut self, ch: qp::ConnectionHandle) {
        let now = Instant::now();
        let mut events = Vec::new();
        {
            let Some(c) = self.conns.get_mut(&ch) else { return };
            c.dirty = false;
            while let Some(ev) = c.conn.poll_endpoint_events() {
                if let Some(cev) = self.endpoint.handle_event(ch, ev) {
                    c.conn.handle_event(cev);
                }
            }
            while let Some(ev) = c.conn.poll() {
                match ev {
                    qp::Event::Connected => events.push(None),
                    qp::Event::ConnectionLost { reason } => events.push(Some(reason)),
                    _ => {}
                }
            }
        }
        for ev in events {
            match ev {
                None => self.connected(ch),
                Some(reason) => self.lost(ch, &reason),
            }
        }
        let Some(c) = self.conns.get_mut(&ch) else { return };
        while let Some(d) = c.conn.datagrams().recv() {
            let Some((prefix, counters)) = &c.peer else { continue };
            match packet::check_inbound(&d, *prefix, self.local) {
                Err(reason) => {
                    self.sh.drops[reason.index()].fetch_add(1, Relaxed);
                }
                Ok(()) => {
                    counters.rx_packets.fetch_add(1, Relaxed);
                    counters.rx_bytes.fetch_add(d.len() as u64, Relaxed);
                    let mut b = self
                        .rx_spare
                        .pop()
                        .unwrap_or_else(|| BytesMut::with_capacity(tun_rs::VIRTIO_NET_HDR_LEN + 65536));
                    b.clear();
                    b.resize(tun_rs::VIRTIO_NET_HDR_LEN, 0);
                    b.extend_from_slice(&d);
                    self.rx_batch.push(b);
                    if self.rx_batch.len() >= RX_BATCH {
                        flush_tun(&self.dev, &self.sh, &mut self.gro, &mut self.rx_batch, &mut self.rx_spare);
                    }
                }
            }
        }
        flush_tun(&self.dev, &self.sh, &mut self.gro, &mut self.rx_batch, &mut self.rx_spare);
        let segments = self.udp.max_gso_segments().clamp(1, MAX_GSO_SEGMENTS);
        loop {
            self.tx.clear();
            let Some(t) = c.conn.poll_transmit(now, segments, &mut self.tx) else { break };
            send_udp(&self.udp, &self.socket, &t, &self.tx[..t.size]);
        }
        if c.conn.is_drained() {
            // The endpoint released the handle with the drained event above.
            self.conns.remove(&ch);
            return;
        }
        // Register the timeout only when it comes before the registered wake: a later one is
        // picked up at that wake (an early `handle_timeout` does nothing), so the heap holds
        // about one entry per connection however often quinn moves its timers.
        if let Some(t) = c.conn.poll_timeout() {
            if c.timeout.is_none_or(|cur| t < cur) {
                c.timeout = Some(t);
                self.timer_heap.push(Reverse((t, ch)));
            }
        }
    }

    fn read_udp(&mut self, storage: &mut [u8], chunk: usize, metas: &mut [quinn_udp::RecvMeta]) {
        loop {
            let mut iovs: Vec<IoSliceMut<'_>> = storage.chunks_mut(chunk).map(IoSliceMut::new).collect();
            let n = match self.udp.recv((&self.socket).into(), &mut iovs, metas) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(error = %e, "receiving UDP");
                    return;
                }
            };
            let now = Instant::now();
            for (meta, iov) in metas.iter().zip(iovs.iter()).take(n) {
                let mut data = BytesMut::from(&iov[..meta.len]);
                while !data.is_empty() {
                    let piece = data.split_to(meta.stride.min(data.len()));
                    let ecn = meta.ecn.and_then(|e| qp::EcnCodepoint::from_bits(e as u8));
                    self.tx.clear();
                    match self.endpoint.handle(now, meta.addr, meta.dst_ip, ecn, piece, &mut self.tx) {
                        Some(qp::DatagramEvent::ConnectionEvent(ch, ev)) => {
                            if let Some(c) = self.conns.get_mut(&ch) {
                                c.conn.handle_event(ev);
                                self.mark(ch);
                            }
                        }
                        Some(qp::DatagramEvent::NewConnection(incoming)) => {
                            if self.stopping.is_some() {
                                self.endpoint.ignore(incoming);
                                continue;
                            }
                            match self.endpoint.accept(incoming, now, &mut self.tx, None) {
                                Ok((ch, conn)) => {
                                    self.conns.insert(ch, Conn::new(conn, None));
                                    self.mark(ch);
                                }
                                Err(e) => {
                                    self.sh.refused.fetch_add(1, Relaxed);
                                    warn!(remote = %meta.addr, error = %e.cause, "refused a QUIC handshake");
                                    if let Some(t) = e.response {
                                        send_udp(&self.udp, &self.socket, &t, &self.tx[..t.size]);
                                    }
                                }
                            }
                        }
                        Some(qp::DatagramEvent::Response(t)) => {
                            send_udp(&self.udp, &self.socket, &t, &self.tx[..t.size]);
                        }
                        None => {}
                    }
                }
            }
            self.drive_dirty();
        }
    }

    fn read_tun(&mut self, original: &mut [u8], bufs: &mut [Vec<u8>], sizes: &mut [usize]) {
        for _ in 0..TUN_READS_PER_TURN {
            let n = match self.dev.recv_multiple(original, bufs, sizes, 0) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!(error = %e, "reading the tun device");
                    return;
                }
            };
            for (buf, &size) in bufs.iter().zip(sizes.iter()).take(n) {
                let pkt = &buf[..size];
                let dst = match packet::outbound_dst(pkt) {
                    Ok(d) => d,
                    Err(d) => {
                        self.sh.drops[d.index()].fetch_add(1, Relaxed);
                        continue;
                    }
                };
                let Some(&ch) = self.routes.lookup(dst) else {
                    self.sh.drops[DropReason::NoPeer.index()].fetch_add(1, Relaxed);
                    continue;
                };
                let Some(c) = self.conns.get_mut(&ch) else {
                    self.sh.drops[DropReason::NoPeer.index()].fetch_add(1, Relaxed);
                    continue;
                };
                if size > c.max_datagram {
                    self.sh.drops[DropReason::TooBig.index()].fetch_add(1, Relaxed);
                    continue;
                }
                if self.arena.capacity() < size {
                    self.arena = BytesMut::with_capacity(ARENA);
                }
                self.arena.extend_from_slice(pkt);
                match c.conn.datagrams().send(self.arena.split().freeze(), true) {
                    Ok(()) => {
                        if let Some((_, counters)) = &c.peer {
                            counters.tx_packets.fetch_add(1, Relaxed);
                            counters.tx_bytes.fetch_add(size as u64, Relaxed);
                        }
                    }
                    Err(_) => {
                        self.sh.drops[DropReason::SendFailed.index()].fetch_add(1, Relaxed);
                    }
                }
                self.mark(ch);
            }
            self.drive_dirty();
        }
    }
}

/// UDP GSO segments per send, as quinn's own driver uses.
const MAX_GSO_SEGMENTS: usize = 10;

fn flush_tun(
    dev: &tun_rs::SyncDevice,
    sh: &Shared,
    gro: &mut tun_rs::GROTable,
    batch: &mut Vec<BytesMut>,
    spare: &mut Vec<BytesMut>,
) {
    if batch.is_empty() {
        return;
    }
    if dev.send_multiple(gro, batch, tun_rs::VIRTIO_NET_HDR_LEN).is_err() {
        sh.drops[DropReason::TunWrite.index()].fetch_add(1, Relaxed);
    }
    spare.append(batch);
}

fn send_udp(state: &quinn_udp::UdpSocketState, socket: &std::net::UdpSocket, t: &qp::Transmit, contents: &[u8]) {
    let transmit = quinn_udp::Transmit {
        destination: t.destination,
        ecn: t.ecn.and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
        contents,
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    };
    // A full socket buffer drops the packet: QUIC sees a loss, and so does the TCP inside.
    if let Err(e) = state.send(socket.into(), &transmit) {
        if e.kind() != ErrorKind::WouldBlock {
            debug!(error = %e, destination = %t.destination, "sending UDP");
        }
    }
}

/// Why an accepted connection is not (yet) installed as a peer's tunnel.
enum Unidentified {
    /// The certificate names no node of the current peer set: held for [`IDENTIFY_GRACE`].
    NotYetAPeer(Vec<String>),
    /// Refused now: no usable name, or a peer's name from another address.
    Refused(anyhow::Error),
}

/// Who is on the other end: the certificate (already verified against the CA) must name a
/// peer of the current set, and the connection must come from that peer's advertised address.
fn identify(peers: &BTreeMap<String, Peer>, conn: &qp::Connection) -> Result<String, Unidentified> {
    let names = tls::peer_names(conn.crypto_session().peer_identity()).map_err(Unidentified::Refused)?;
    let remote: IpAddr = conn.remote_address().ip();
    for n in &names {
        if let Some(p) = peers.get(n) {
            if p.spec.endpoint.ip() != remote {
                return Err(Unidentified::Refused(anyhow!(
                    "certificate names {n}, whose endpoint is {}, but the connection comes from {remote}",
                    p.spec.endpoint
                )));
            }
            return Ok(n.clone());
        }
    }
    Err(Unidentified::NotYetAPeer(names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_arithmetic() {
        assert_eq!(tun_mtu_for(1500), 1434);
        assert_eq!(tun_mtu_for(9000), 8934);
        assert_eq!(tun_mtu_for(600), 576);
    }
}
