//! The quic backend: a tun device whose IP packets travel as QUIC DATAGRAM frames (unreliable,
//! so no TCP-over-TCP) over one mutually authenticated connection per pair of nodes.
//!
//! - Data path: one task reads the tun and sends each packet on the connection of the peer
//!   owning the destination (a lock-free snapshot lookup, no per-packet allocation: packets are
//!   split off a large receive buffer); one task per connection receives datagrams, checks
//!   source and destination, and writes them to the tun.
//! - Control: the daemon hands over the peer set on every reconcile; of each pair the node with
//!   the smaller name dials (reconnecting with backoff), the other accepts. A peer whose epoch
//!   changed (it restarted) is redialled at once.

pub mod packet;
pub mod tls;

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use bytes::BytesMut;
use ipnet::Ipv4Net;
use packet::{Drop, Prefix};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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

struct Link {
    conn: quinn::Connection,
    counters: Arc<PeerCounters>,
    max_datagram: usize,
}

/// What the data path reads per packet: peer connections by subnet.
type Snapshot = packet::SubnetTable<Arc<Link>>;

struct PeerState {
    spec: PeerSpec,
    conn: Option<quinn::Connection>,
    dialing: bool,
    /// Wakes the dial loop: the peer restarted, so a pending attempt (or backoff) is stale.
    kick: Arc<tokio::sync::Notify>,
    connects: u64,
    counters: Arc<PeerCounters>,
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

struct Inner {
    node: String,
    local: Prefix,
    mask: u32,
    tun_name: String,
    tun_mtu: u32,
    quic: QuicConfig,
    dev: tun_rs::AsyncDevice,
    endpoint: quinn::Endpoint,
    transport: Arc<quinn::TransportConfig>,
    client: Mutex<quinn::ClientConfig>,
    tls_stamp: Mutex<Vec<Option<std::time::SystemTime>>>,
    cert_not_after: AtomicU64,
    snapshot: ArcSwap<Snapshot>,
    peers: Mutex<BTreeMap<String, PeerState>>,
    drops: [AtomicU64; Drop::ALL.len()],
    refused: AtomicU64,
    fingerprint: String,
    /// The data path's runtime: every task of the tunnel runs there.
    rt: tokio::runtime::Handle,
}

/// The running backend. Its tasks run on a runtime of their own, on `quic.threads` dedicated
/// threads (1 by default), apart from the agent's control plane. Dropping it
/// closes the connections and stops that runtime (the tun device persists).
pub struct Tunnel {
    inner: Arc<Inner>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Drop for Tunnel {
    fn drop(&mut self) {
        self.inner.endpoint.close(0u32.into(), b"agent stopping");
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long a stopping tunnel waits for its close frames to go out.
const CLOSE_GRACE: Duration = Duration::from_millis(100);

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

/// Opens the tun device with offload (IFF_VNET_HDR + TSO/GSO): the kernel hands over TCP
/// super-packets of up to 64 KB in one read, and takes coalesced ones in one write. A device
/// left by an older agent without offload is recreated.
fn open_tun(name: &str, mtu: u32) -> Result<tun_rs::AsyncDevice> {
    let build = || {
        tun_rs::DeviceBuilder::new()
            .name(name.to_string())
            .mtu(u16::try_from(mtu).unwrap_or(1500))
            .offload(true)
            .build_async()
    };
    // The tunnel carries IPv4 only: no IPv6 on the tun, so the kernel sends nothing there that
    // would be dropped as malformed.
    let no_v6 = |dev: tun_rs::AsyncDevice| {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        dev
    };
    match build().map(no_v6) {
        Ok(d) => Ok(d),
        Err(first) => {
            warn!(tun = %name, error = %first, "cannot attach to the existing tun device; recreating it");
            let out = std::process::Command::new("ip").args(["link", "del", name]).output();
            if !out.as_ref().is_ok_and(|o| o.status.success()) {
                return Err(first).with_context(|| format!("creating tun device {name}"));
            }
            build().map(no_v6).with_context(|| format!("creating tun device {name}"))
        }
    }
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

/// The QUIC endpoint on `socket` (from [`bind_socket`]), with the stateless-reset key derived
/// from the node key. Shared by the agent and the transport benchmark (`weft-quic-raw`), so both
/// measure the same socket and endpoint setup.
pub fn endpoint_on(
    socket: std::net::UdpSocket,
    udp_payload: u16,
    id: &tls::Identity,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint> {
    let mut ep_cfg = quinn::EndpointConfig::new(tls::reset_key(id));
    ep_cfg.max_udp_payload_size(udp_payload.max(1200)).context("max UDP payload")?;
    quinn::Endpoint::new(ep_cfg, server, socket, Arc::new(quinn::TokioRuntime)).context("starting the QUIC endpoint")
}

/// [`bind_socket`] and [`endpoint_on`] in one.
pub fn bind_endpoint(
    port: u16,
    udp_payload: u16,
    id: &tls::Identity,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint> {
    endpoint_on(bind_socket(port)?, udp_payload, id, server)
}

impl Tunnel {
    /// Creates (or re-attaches to) the tun device and the QUIC endpoint, and starts the tasks
    /// on the data path's own runtime.
    pub fn start(s: Settings) -> Result<Tunnel> {
        let threads = s.quic.threads.max(1);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Arc<Inner>>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("weft-quic".into())
            .spawn(move || {
                // Only the io and time drivers: the data path spawns no processes and handles no
                // signals, and the process driver would check for orphans on every park.
                let rt = if threads == 1 {
                    tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()
                } else {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(threads)
                        .thread_name("weft-quic")
                        .enable_io()
                        .enable_time()
                        .build()
                };
                let rt = match rt {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::new(e).context("starting the data path runtime")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let inner = match Self::build(s) {
                        Ok(inner) => inner,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    inner.rt.spawn(tun_reader(inner.clone()));
                    inner.rt.spawn(acceptor(inner.clone()));
                    info!(tun = %inner.tun_name, mtu = inner.tun_mtu, port = inner.quic.port, threads, "quic backend up");
                    let endpoint = inner.endpoint.clone();
                    if ready_tx.send(Ok(inner)).is_err() {
                        return;
                    }
                    let _ = stop_rx.await;
                    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
                });
                // Dropping the runtime here cancels every task still running on it.
            })
            .context("starting the data path thread")?;
        let inner = match ready_rx.recv() {
            Ok(r) => r?,
            Err(_) => bail!("the data path thread exited while starting"),
        };
        Ok(Tunnel { inner, stop: Some(stop_tx), thread: Some(thread) })
    }

    /// Everything of [`Tunnel::start`] that must happen inside the data path's runtime (the tun
    /// device and the endpoint register with its reactor).
    fn build(s: Settings) -> Result<Arc<Inner>> {
        let id = tls::load(&s.quic, &s.node)?;
        let transport = transport(s.udp_payload)?;
        let server = tls::server_config(&id, transport.clone())?;
        let client = tls::client_config(&id, transport.clone())?;
        let dev = open_tun(&s.quic.tun, s.tun_mtu)?;
        set_persist(dev.as_raw_fd()).with_context(|| format!("making {} persistent", s.quic.tun))?;
        let socket = match s.socket {
            Some(socket) => socket,
            None => bind_socket(s.quic.port)?,
        };
        let endpoint = endpoint_on(socket, s.udp_payload, &id, Some(server))?;
        let mask = u32::from(s.local_subnet.netmask());
        let inner = Arc::new(Inner {
            node: s.node,
            local: Prefix::new(s.local_subnet),
            mask,
            tun_name: s.quic.tun.clone(),
            tun_mtu: s.tun_mtu,
            quic: s.quic,
            dev,
            endpoint,
            transport,
            client: Mutex::new(client),
            tls_stamp: Mutex::new(id.stamp.clone()),
            cert_not_after: AtomicU64::new(id.not_after.max(0) as u64),
            snapshot: ArcSwap::from_pointee(Snapshot::new(mask)),
            peers: Mutex::new(BTreeMap::new()),
            drops: Default::default(),
            refused: AtomicU64::new(0),
            fingerprint: id.fingerprint,
            rt: tokio::runtime::Handle::current(),
        });
        Ok(inner)
    }

    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    pub fn tun_name(&self) -> &str {
        &self.inner.tun_name
    }

    /// Hands over the current peer set: new peers are dialled (by the dialer of the pair),
    /// gone ones disconnected, restarted ones (new epoch or endpoint) redialled.
    pub fn set_peers(&self, peers: &[PeerSpec]) {
        let inner = &self.inner;
        let mut to_dial = Vec::new();
        {
            let mut st = lock(&inner.peers);
            st.retain(|node, p| {
                let keep = peers.iter().any(|s| &s.node == node);
                if !keep {
                    if let Some(c) = p.conn.take() {
                        c.close(1u32.into(), b"peer left");
                    }
                    info!(peer = %node, "peer gone");
                }
                keep
            });
            for spec in peers {
                match st.get_mut(&spec.node) {
                    Some(p) if p.spec == *spec => {}
                    Some(p) => {
                        let restarted = p.spec.epoch != spec.epoch || p.spec.endpoint != spec.endpoint;
                        let moved = p.spec.subnet != spec.subnet;
                        p.spec = spec.clone();
                        if restarted || moved {
                            info!(peer = %spec.node, "peer restarted or changed; reconnecting");
                            if let Some(c) = p.conn.take() {
                                c.close(2u32.into(), b"peer restarted");
                            }
                            p.kick.notify_one();
                        }
                    }
                    None => {
                        st.insert(
                            spec.node.clone(),
                            PeerState {
                                spec: spec.clone(),
                                conn: None,
                                dialing: false,
                                kick: Arc::default(),
                                connects: 0,
                                counters: Arc::default(),
                            },
                        );
                    }
                }
                if let Some(p) = st.get_mut(&spec.node) {
                    if inner.node < spec.node && p.conn.is_none() && !p.dialing {
                        p.dialing = true;
                        to_dial.push(spec.node.clone());
                    }
                }
            }
        }
        publish(inner);
        for node in to_dial {
            inner.rt.spawn(dial(inner.clone(), node));
        }
    }

    /// Re-reads the certificate files when they changed; new handshakes use the new ones.
    pub fn reload_tls_if_changed(&self) -> Result<bool> {
        let inner = &self.inner;
        let now = tls::stamp(&inner.quic);
        if *lock(&inner.tls_stamp) == now {
            return Ok(false);
        }
        let id = tls::load(&inner.quic, &inner.node)?;
        inner.endpoint.set_server_config(Some(tls::server_config(&id, inner.transport.clone())?));
        *lock(&inner.client) = tls::client_config(&id, inner.transport.clone())?;
        inner.cert_not_after.store(id.not_after.max(0) as u64, Relaxed);
        *lock(&inner.tls_stamp) = id.stamp;
        info!(fingerprint = %id.fingerprint, "reloaded the node certificate");
        Ok(true)
    }

    /// A function giving the live status, for the API task.
    pub fn status_fn(&self) -> Box<dyn Fn() -> QuicStatus + Send + Sync> {
        let inner = self.inner.clone();
        Box::new(move || status_of(&inner))
    }
}

fn status_of(inner: &Inner) -> QuicStatus {
    {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let peers = lock(&inner.peers)
            .values()
            .map(|p| QuicPeerStatus {
                node: p.spec.node.clone(),
                subnet: p.spec.subnet.to_string(),
                connected: p.conn.as_ref().is_some_and(|c| c.close_reason().is_none()),
                dialer: inner.node < p.spec.node,
                rtt_us: p.conn.as_ref().map_or(0, |c| c.rtt().as_micros() as u64),
                tx_packets: p.counters.tx_packets.load(Relaxed),
                tx_bytes: p.counters.tx_bytes.load(Relaxed),
                rx_packets: p.counters.rx_packets.load(Relaxed),
                rx_bytes: p.counters.rx_bytes.load(Relaxed),
                connects: p.connects,
            })
            .collect();
        QuicStatus {
            tun: inner.tun_name.clone(),
            mtu: inner.tun_mtu,
            endpoint: inner.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            cert_expires_in_secs: inner.cert_not_after.load(Relaxed) as i64 - now,
            peers,
            drops: Drop::ALL.iter().map(|d| (d.as_str().to_string(), inner.drops[d.index()].load(Relaxed))).collect(),
            refused: inner.refused.load(Relaxed),
        }
    }
}

#[inline]
fn count(inner: &Inner, d: Drop) {
    inner.drops[d.index()].fetch_add(1, Relaxed);
}

/// Rebuilds the data path's snapshot from the peer table.
fn publish(inner: &Inner) {
    let st = lock(&inner.peers);
    let mut links = Snapshot::new(inner.mask);
    for p in st.values() {
        if let Some(c) = &p.conn {
            let max_datagram = c.max_datagram_size().unwrap_or(0);
            links.insert(
                u32::from(p.spec.subnet.network()),
                Arc::new(Link { conn: c.clone(), counters: p.counters.clone(), max_datagram }),
            );
        }
    }
    inner.snapshot.store(Arc::new(links));
}

/// UDP socket buffer size (each way).
const SOCKET_BUFFER: usize = 8 << 20;

/// Packet arena the outgoing datagrams are copied into and split off (one allocation per
/// ~1400 full-size packets; quinn keeps each `Bytes` until it is sent).
const ARENA: usize = 2 << 20;
/// Datagrams drained from one connection before they are written to the tun together.
const RX_BATCH: usize = 64;

async fn tun_reader(inner: Arc<Inner>) {
    use tun_rs::{IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65535];
    let mut bufs = vec![vec![0u8; inner.tun_mtu as usize + 64]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut arena = BytesMut::with_capacity(ARENA);
    loop {
        let n = match inner.dev.recv_multiple(&mut original, &mut bufs, &mut sizes, 0).await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "reading the tun device");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let snap = inner.snapshot.load();
        for (buf, &size) in bufs.iter().zip(&sizes).take(n) {
            let pkt = &buf[..size];
            let dst = match packet::outbound_dst(pkt) {
                Ok(d) => d,
                Err(d) => {
                    count(&inner, d);
                    continue;
                }
            };
            let Some(link) = snap.lookup(dst) else {
                count(&inner, Drop::NoPeer);
                continue;
            };
            if size > link.max_datagram {
                count(&inner, Drop::TooBig);
                continue;
            }
            if arena.capacity() < size {
                arena = BytesMut::with_capacity(ARENA);
            }
            arena.extend_from_slice(pkt);
            match link.conn.send_datagram(arena.split().freeze()) {
                Ok(()) => {
                    link.counters.tx_packets.fetch_add(1, Relaxed);
                    link.counters.tx_bytes.fetch_add(size as u64, Relaxed);
                }
                Err(_) => count(&inner, Drop::SendFailed),
            }
        }
    }
}

/// Receives one connection's datagrams into the tun: checks each, then writes a batch at a
/// time through GRO (consecutive TCP segments of one flow become one write).
async fn receiver(inner: Arc<Inner>, conn: quinn::Connection, peer: Prefix, counters: Arc<PeerCounters>) {
    use futures::FutureExt;
    use tun_rs::VIRTIO_NET_HDR_LEN;
    let mut gro = tun_rs::GROTable::default();
    let mut bufs: Vec<BytesMut> = Vec::with_capacity(RX_BATCH);
    let mut spare: Vec<BytesMut> = Vec::with_capacity(RX_BATCH);
    'outer: loop {
        let Ok(first) = conn.read_datagram().await else { break };
        let mut next = Some(first);
        while let Some(d) = next.take() {
            match packet::check_inbound(&d, peer, inner.local) {
                Err(reason) => count(&inner, reason),
                Ok(()) => {
                    counters.rx_packets.fetch_add(1, Relaxed);
                    counters.rx_bytes.fetch_add(d.len() as u64, Relaxed);
                    let mut b = spare.pop().unwrap_or_else(|| BytesMut::with_capacity(VIRTIO_NET_HDR_LEN + 65536));
                    b.clear();
                    b.resize(VIRTIO_NET_HDR_LEN, 0);
                    b.extend_from_slice(&d);
                    bufs.push(b);
                }
            }
            if bufs.len() >= RX_BATCH {
                break;
            }
            next = match conn.read_datagram().now_or_never() {
                Some(Ok(d)) => Some(d),
                Some(Err(_)) => {
                    flush(&inner, &mut gro, &mut bufs, &mut spare).await;
                    break 'outer;
                }
                None => None,
            };
        }
        flush(&inner, &mut gro, &mut bufs, &mut spare).await;
    }
}

async fn flush(inner: &Inner, gro: &mut tun_rs::GROTable, bufs: &mut Vec<BytesMut>, spare: &mut Vec<BytesMut>) {
    if bufs.is_empty() {
        return;
    }
    if inner.dev.send_multiple(gro, bufs, tun_rs::VIRTIO_NET_HDR_LEN).await.is_err() {
        count(inner, Drop::TunWrite);
    }
    spare.append(bufs);
}

/// Makes `conn` the connection of `node`, replacing any older one, and starts its receiver and
/// a watcher that cleans up (and redials, for the dialer) when it closes.
fn install(inner: &Arc<Inner>, node: &str, conn: quinn::Connection) -> Result<()> {
    let (prefix, counters) = {
        let mut st = lock(&inner.peers);
        let Some(p) = st.get_mut(node) else { bail!("{node} is not a peer (any more)") };
        if let Some(old) = p.conn.replace(conn.clone()) {
            if old.stable_id() != conn.stable_id() {
                old.close(3u32.into(), b"replaced by a newer connection");
            }
        }
        p.dialing = false;
        p.connects += 1;
        (Prefix::new(p.spec.subnet), p.counters.clone())
    };
    publish(inner);
    info!(peer = %node, remote = %conn.remote_address(), max_datagram = ?conn.max_datagram_size(), "tunnel up");
    if conn.max_datagram_size().is_some_and(|m| m < inner.tun_mtu as usize) {
        warn!(peer = %node, max_datagram = ?conn.max_datagram_size(), tun_mtu = inner.tun_mtu, "datagrams smaller than the tun MTU: large packets will be dropped");
    }
    inner.rt.spawn(receiver(inner.clone(), conn.clone(), prefix, counters));
    let inner2 = inner.clone();
    let node = node.to_string();
    inner.rt.spawn(async move {
        let reason = conn.closed().await;
        let redial = {
            let mut st = lock(&inner2.peers);
            match st.get_mut(&node) {
                Some(p) if p.conn.as_ref().is_some_and(|c| c.stable_id() == conn.stable_id()) => {
                    p.conn = None;
                    let redial = inner2.node < node && !p.dialing;
                    if redial {
                        p.dialing = true;
                    }
                    redial
                }
                Some(p) if p.conn.is_none() && inner2.node < node && !p.dialing => {
                    p.dialing = true;
                    true
                }
                _ => false,
            }
        };
        publish(&inner2);
        info!(peer = %node, reason = %reason, "tunnel down");
        if redial {
            dial(inner2, node).await;
        }
    });
    Ok(())
}

/// Dials `node` until connected or no longer wanted, backing off from 50 ms to 1 s. A kick (the
/// peer restarted) abandons the pending attempt and starts over at once.
async fn dial(inner: Arc<Inner>, node: String) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let target = {
            let st = lock(&inner.peers);
            match st.get(&node) {
                Some(p) if p.conn.is_none() => Some((p.spec.endpoint, p.kick.clone())),
                _ => None,
            }
        };
        let Some((addr, kick)) = target else {
            if let Some(p) = lock(&inner.peers).get_mut(&node) {
                p.dialing = false;
            }
            return;
        };
        let client = lock(&inner.client).clone();
        let attempt = async {
            let connecting = inner.endpoint.connect_with(client, addr, &node).context("starting the handshake")?;
            tokio::time::timeout(Duration::from_secs(2), connecting)
                .await
                .context("handshake timed out")?
                .context("handshake")
        };
        let kicked = tokio::select! {
            r = attempt => {
                match r {
                    Ok(conn) => match install(&inner, &node, conn) {
                        Ok(()) => return,
                        Err(e) => debug!(peer = %node, error = %format!("{e:#}"), "dropping a fresh connection"),
                    },
                    Err(e) => debug!(peer = %node, %addr, error = %format!("{e:#}"), "dial failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => false,
                    _ = kick.notified() => true,
                }
            }
            _ = kick.notified() => true,
        };
        backoff = if kicked { Duration::from_millis(50) } else { (backoff * 2).min(Duration::from_secs(1)) };
    }
}

async fn acceptor(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let inner = inner.clone();
        inner.rt.clone().spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    inner.refused.fetch_add(1, Relaxed);
                    warn!(%remote, error = %e, "refused a QUIC handshake");
                    return;
                }
            };
            match identify(&inner, &conn) {
                Ok(node) => {
                    if let Err(e) = install(&inner, &node, conn.clone()) {
                        conn.close(4u32.into(), b"not a peer");
                        warn!(%remote, error = %format!("{e:#}"), "refused a connection");
                        inner.refused.fetch_add(1, Relaxed);
                    }
                }
                Err(e) => {
                    inner.refused.fetch_add(1, Relaxed);
                    warn!(%remote, error = %format!("{e:#}"), "refused a connection");
                    conn.close(4u32.into(), b"unknown node or wrong address");
                }
            }
        });
    }
}

/// Who is on the other end: the certificate (already verified against the CA) must name a
/// peer of the current set, and the connection must come from that peer's advertised address.
fn identify(inner: &Inner, conn: &quinn::Connection) -> Result<String> {
    let names = tls::peer_names(conn)?;
    let remote: IpAddr = conn.remote_address().ip();
    let st = lock(&inner.peers);
    for n in &names {
        if let Some(p) = st.get(n) {
            if p.spec.endpoint.ip() != remote {
                bail!(
                    "certificate names {n}, whose endpoint is {}, but the connection comes from {remote}",
                    p.spec.endpoint
                );
            }
            return Ok(n.clone());
        }
    }
    bail!("certificate names {names:?}, none of them a peer")
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
