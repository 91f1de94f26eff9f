//! The quic backend's handle on its data path: the tunnel the daemon starts, feeds peer sets
//! and certificates through a command queue per thread, and reads the status of; the
//! multi-queue tun device it opens (one queue per data path thread).

use super::event_loop::{Io, Loop, Sharding};
use super::packet::DropReason;
use super::shared::{lock, Cmd, PeerCounters, PeerSet, PeerView, Shared, ThreadLink, Wake};
use super::{bind_socket, endpoint_config, shard, tls, transport, PeerSpec};
use anyhow::{anyhow, Context, Result};
use ipnet::IpNet;
use quinn_proto as qp;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};
use weft_config::agent::QuicConfig;
use weft_config::api::{QuicPeerStatus, QuicShardStatus, QuicStatus};
use weft_config::subnet::{Family, PerFamily};

pub struct Settings {
    pub node: String,
    /// The node's pod subnet of each family: packets to them are written to the tun.
    pub local_subnets: PerFamily<IpNet>,
    pub tun_mtu: u32,
    /// UDP payload size the underlay carries (underlay MTU − 28).
    pub udp_payload: u16,
    pub quic: QuicConfig,
    /// Data path threads (see [`super::data_threads`]); thread `i` uses UDP port `quic.port + i`.
    pub threads: usize,
    /// The sockets bound early by the daemon (see [`bind_socket`]), by thread; those missing
    /// are bound here.
    pub sockets: Vec<std::net::UdpSocket>,
}

/// The running backend: the data path threads and the way to talk to them. Dropping it closes
/// the connections (waiting up to `CLOSE_GRACE`, 100 ms, for the close frames) and stops and
/// joins every thread; the tun device persists.
pub struct Tunnel {
    shared: Arc<Shared>,
    workers: Vec<Worker>,
    /// Each peer's traffic counters, one for all its threads (kept while it is a peer).
    counters: Mutex<HashMap<String, Arc<PeerCounters>>>,
}

/// One data path thread as the handle sees it.
struct Worker {
    cmds: mpsc::Sender<Cmd>,
    wake: Arc<Wake>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Drop for Tunnel {
    fn drop(&mut self) {
        for w in &self.workers {
            let _ = w.cmds.send(Cmd::Stop);
            w.wake.wake();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
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

/// Opens the tun device with offload (IFF_VNET_HDR + TSO/GSO), multi-queue (whatever the
/// thread count, so changing it never recreates the device), non-blocking: the kernel hands
/// over TCP super-packets of up to 64 KB in one read, and takes coalesced ones in one write. A
/// device left by an older agent without offload or single-queue (the kernel refuses to attach
/// with other flags) is recreated. `ipv6`: the node has an IPv6 subnet (see [`set_tun_ipv6`]).
/// This is queue 0; [`open_queues`] opens the others.
fn open_tun(name: &str, mtu: u32, ipv6: bool) -> Result<tun_rs::SyncDevice> {
    let build = || {
        tun_rs::DeviceBuilder::new()
            .name(name.to_string())
            .mtu(u16::try_from(mtu).unwrap_or(1500))
            .offload(true)
            .multi_queue(true)
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

/// `threads` queues of the tun device, the first being `first`: the kernel puts each flow on
/// one queue (by its hash, or the queue its packets last came in on).
fn open_queues(first: tun_rs::SyncDevice, name: &str, threads: usize) -> Result<Vec<tun_rs::SyncDevice>> {
    let mut queues = Vec::with_capacity(threads);
    queues.push(first);
    for i in 1..threads {
        let q = queues[0].try_clone().with_context(|| format!("opening queue {i} of tun device {name}"))?;
        q.set_nonblocking(true).with_context(|| format!("making queue {i} of {name} non-blocking"))?;
        queues.push(q);
    }
    Ok(queues)
}

impl Tunnel {
    /// Creates (or re-attaches to) the tun device and a QUIC endpoint per thread, and starts
    /// the data path threads.
    pub fn start(s: Settings) -> Result<Tunnel> {
        let threads = s.threads.max(1);
        let local_subnets = s.local_subnets;
        let id = tls::load(&s.quic, &s.node)?;
        let transport = transport(s.udp_payload)?;
        let server = Arc::new(tls::server_config(&id, transport.clone())?);
        let client = tls::client_config(&id, transport)?;
        let dev = open_tun(&s.quic.tun, s.tun_mtu, local_subnets.get(Family::V6).is_some())?;
        set_persist(dev.as_raw_fd()).with_context(|| format!("making {} persistent", s.quic.tun))?;
        let queues = open_queues(dev, &s.quic.tun, threads)?;
        let mut sockets = s.sockets.into_iter();
        let mut ios = Vec::with_capacity(threads);
        for (i, dev) in queues.into_iter().enumerate() {
            let port = u16::try_from(usize::from(s.quic.port) + i)
                .with_context(|| format!("thread {i}: UDP port {} + {i} is past 65535", s.quic.port))?;
            let socket = match sockets.next() {
                Some(socket) => socket,
                None => bind_socket(port, s.quic.endpoint_family)?,
            };
            socket.set_nonblocking(true).with_context(|| format!("making UDP port {port} non-blocking"))?;
            let udp = quinn_udp::UdpSocketState::new((&socket).into())
                .with_context(|| format!("setting up UDP port {port}"))?;
            let ep_cfg = endpoint_config(s.udp_payload, &id)?;
            let endpoint = qp::Endpoint::new(Arc::new(ep_cfg), Some(server.clone()), false, Some(rng_seed()?));
            ios.push(Io { endpoint, socket, udp, dev });
        }
        let shared = Arc::new(Shared {
            threads,
            node: s.node.clone(),
            tun_name: s.quic.tun.clone(),
            tun_mtu: s.tun_mtu,
            endpoint: ios[0].socket.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            quic: s.quic.clone(),
            fingerprint: id.fingerprint.clone(),
            udp_payload: s.udp_payload,
            tls_stamp: Mutex::new(id.stamp.clone()),
            cert_not_after: AtomicU64::new(id.not_after.max(0) as u64),
            peers: (0..threads).map(|_| Mutex::new(Vec::new())).collect(),
            drops: Default::default(),
            refused: AtomicU64::new(0),
            handed: AtomicU64::new(0),
        });
        let mut links = Vec::with_capacity(threads);
        let mut inboxes = Vec::with_capacity(threads);
        for _ in 0..threads {
            let (tx, rx) = mpsc::sync_channel(HAND_OFF_QUEUE);
            links.push(ThreadLink { handed: tx, wake: Arc::new(Wake::new()?) });
            inboxes.push(rx);
        }
        let mut workers = Vec::with_capacity(threads);
        let tunnel_of = |workers| Tunnel { shared: shared.clone(), workers, counters: Mutex::new(HashMap::new()) };
        for (index, (io, handed)) in ios.into_iter().zip(inboxes).enumerate() {
            let wake = links[index].wake.clone();
            let (cmds, rx) = mpsc::channel();
            let sharding = Sharding { index, links: links.clone(), handed };
            let mut lp = Loop::new(shared.clone(), local_subnets, io, sharding, wake.clone(), rx, client.clone());
            let spawned = std::thread::Builder::new().name(format!("weft-quic-{index}")).spawn(move || {
                let _span = tracing::info_span!("quic", thread = index).entered();
                lp.run()
            });
            match spawned {
                Ok(t) => workers.push(Worker { cmds, wake, thread: Some(t) }),
                // Dropping the tunnel of the threads already running stops them.
                Err(e) => {
                    drop(tunnel_of(workers));
                    return Err(e).with_context(|| format!("starting data path thread {index}"));
                }
            }
        }
        info!(tun = %shared.tun_name, mtu = shared.tun_mtu, port = shared.quic.port, threads, "quic backend up");
        Ok(tunnel_of(workers))
    }

    pub fn fingerprint(&self) -> &str {
        &self.shared.fingerprint
    }

    pub fn tun_name(&self) -> &str {
        &self.shared.tun_name
    }

    fn send(&self, w: &Worker, cmd: Cmd) {
        if w.cmds.send(cmd).is_ok() {
            w.wake.wake();
        }
    }

    /// Hands over the current peer set, each thread its share ([`shard::plan`]): new peers are
    /// dialled (by the dialer of the pair), gone ones disconnected, restarted ones (new epoch
    /// or endpoint) redialled.
    pub fn set_peers(&self, peers: &[PeerSpec]) {
        let counters = {
            let mut all = lock(&self.counters);
            all.retain(|node, _| peers.iter().any(|p| &p.node == node));
            for p in peers {
                all.entry(p.node.clone()).or_default();
            }
            all.clone()
        };
        let plans = shard::plan(self.workers.len(), peers);
        for (w, plan) in self.workers.iter().zip(plans) {
            let set = PeerSet { specs: plan.peers, hand_off: plan.hand_off, counters: counters.clone() };
            self.send(w, Cmd::Peers(set));
        }
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
        for w in &self.workers {
            self.send(w, Cmd::Tls { server: server.clone(), client: client.clone() });
        }
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

/// A peer as the API shows it, one view of all the threads of the pair: thread 0's view (which
/// has every peer) with the others' (`rest`, thread 1 on): connected when every thread the pair
/// uses is, thread 0's RTT, the connects summed.
fn peer_status(p: &PeerView, rest: &[&[PeerView]]) -> QuicPeerStatus {
    let others = rest.iter().take(p.threads.saturating_sub(1));
    let shards: Vec<Option<&PeerView>> = others.map(|v| v.iter().find(|o| o.node == p.node)).collect();
    QuicPeerStatus {
        node: p.node.clone(),
        subnet: p.subnets.first().to_string(),
        subnet6: p.subnets.get(Family::V6).map(|s| s.to_string()),
        connected: p.connected && shards.iter().all(|s| s.is_some_and(|s| s.connected)),
        dialer: p.dialer,
        rtt_us: p.rtt_us,
        tx_packets: p.counters.tx_packets.load(Relaxed),
        tx_bytes: p.counters.tx_bytes.load(Relaxed),
        rx_packets: p.counters.rx_packets.load(Relaxed),
        rx_bytes: p.counters.rx_bytes.load(Relaxed),
        connects: p.connects + shards.iter().flatten().map(|s| s.connects).sum::<u64>(),
        threads: p.threads,
        shards: std::iter::once(Some(p)).chain(shards.iter().copied()).map(shard_status).collect(),
    }
}

/// One thread's connection to a peer (`None`: the thread has no view of the peer yet).
fn shard_status(v: Option<&PeerView>) -> QuicShardStatus {
    v.map_or_else(QuicShardStatus::default, |v| QuicShardStatus {
        connected: v.connected,
        rtt_us: v.rtt_us,
        tx_datagrams: v.tx_datagrams,
        rx_datagrams: v.rx_datagrams,
    })
}

fn status_of(sh: &Shared) -> QuicStatus {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    // Each loop locks only its own view, so holding all of them here cannot deadlock.
    let views: Vec<_> = sh.peers.iter().map(|v| lock(v)).collect();
    let views: Vec<&[PeerView]> = views.iter().map(|v| &v[..]).collect();
    let (first, rest) = views.split_first().map_or((&[][..], &[][..]), |(f, r)| (*f, r));
    let peers = first.iter().map(|p| peer_status(p, rest)).collect();
    QuicStatus {
        tun: sh.tun_name.clone(),
        mtu: sh.tun_mtu,
        endpoint: sh.endpoint.clone(),
        cert_expires_in_secs: sh.cert_not_after.load(Relaxed) as i64 - now,
        peers,
        drops: DropReason::ALL.iter().map(|d| (d.as_str().to_string(), sh.drops[d.index()].load(Relaxed))).collect(),
        refused: sh.refused.load(Relaxed),
        threads: sh.threads,
        handed: sh.handed.load(Relaxed),
    }
}

/// Batches of handed packets a thread's queue holds ([`super::shared::ThreadLink`]).
const HAND_OFF_QUEUE: usize = 256;

/// A seed for the endpoint's generator of connection ids and tokens, from the system's
/// generator (quinn-proto would panic if it could not seed itself).
fn rng_seed() -> Result<[u8; 32]> {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut seed).map_err(|_| anyhow!("the system random generator failed"))?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(node: &str, threads: usize, connected: bool, rtt_us: u64, connects: u64) -> PeerView {
        PeerView {
            node: node.into(),
            subnets: weft_config::subnet::PerFamily::V4("10.244.2.0/24".parse().expect("literal")),
            connected,
            dialer: true,
            rtt_us,
            connects,
            counters: Arc::default(),
            threads,
            tx_datagrams: connects * 10,
            rx_datagrams: connects * 20,
        }
    }

    #[test]
    fn a_peer_is_one_view_of_the_threads_of_its_pair() {
        let (b0, b1) = (view("b", 2, true, 300, 1), view("b", 2, true, 900, 2));
        let s = peer_status(&b0, &[&[b1]]);
        assert_eq!(
            (s.connected, s.rtt_us, s.connects, s.threads),
            (true, 300, 3, 2),
            "thread 0's RTT, connects summed"
        );
        assert_eq!(
            s.shards.iter().map(|s| (s.connected, s.rx_datagrams)).collect::<Vec<_>>(),
            [(true, 20), (true, 40)]
        );
        // Thread 1 down, or without a view of the peer yet: not connected.
        let s = peer_status(&b0, &[&[view("b", 2, false, 0, 0)]]);
        assert!(!s.connected);
        let s = peer_status(&b0, &[&[view("c", 2, true, 1, 1)]]);
        assert!(!s.connected);
        assert_eq!(s.shards[1], QuicShardStatus::default());
        // A pair of one thread: the other threads' views do not count.
        let s = peer_status(&view("c", 1, true, 400, 1), &[&[view("c", 1, false, 0, 5)]]);
        assert_eq!((s.connected, s.connects, s.shards.len()), (true, 1, 1));
    }
}
