//! What the quic backend's handle ([`super::tunnel`]) and its event loops
//! ([`super::event_loop`], one per data path thread) share: the state the loops write and the
//! API reads, the command queue's commands, the eventfd that wakes a loop, the hand-off queues
//! between threads, and two timings. Neither side imports the other for these.

use super::packet::DropReason;
use super::shard::HandOff;
use super::PeerSpec;
use anyhow::{Context, Result};
use bytes::Bytes;
use ipnet::IpNet;
use quinn_proto as qp;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use weft_config::agent::QuicConfig;
use weft_config::subnet::PerFamily;

/// A peer's traffic, one for all the threads of the pair (held by the tunnel, handed to each).
#[derive(Default)]
pub(super) struct PeerCounters {
    pub(super) tx_packets: AtomicU64,
    pub(super) tx_bytes: AtomicU64,
    pub(super) rx_packets: AtomicU64,
    pub(super) rx_bytes: AtomicU64,
}

/// What the control plane and the API read; the loops write it.
pub(super) struct Shared {
    /// Data path threads.
    pub(super) threads: usize,
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
    /// The peers as each thread's loop last saw them (rebuilt on every change and every
    /// second), by thread: thread `i` has the peers whose pair uses more than `i` threads.
    pub(super) peers: Vec<Mutex<Vec<PeerView>>>,
    pub(super) drops: [AtomicU64; DropReason::ALL.len()],
    pub(super) refused: AtomicU64,
    /// Packets handed to another thread.
    pub(super) handed: AtomicU64,
}

pub(super) struct PeerView {
    pub(super) node: String,
    pub(super) subnets: PerFamily<IpNet>,
    pub(super) connected: bool,
    pub(super) dialer: bool,
    pub(super) rtt_us: u64,
    pub(super) connects: u64,
    pub(super) counters: Arc<PeerCounters>,
    /// Threads the pair uses.
    pub(super) threads: usize,
    /// DATAGRAM frames sent and received on this thread's connection.
    pub(super) tx_datagrams: u64,
    pub(super) rx_datagrams: u64,
}

/// One thread's share of a peer set ([`super::shard::ThreadPlan`]) and the counters of every peer.
pub(super) struct PeerSet {
    pub(super) specs: Vec<PeerSpec>,
    pub(super) hand_off: Vec<HandOff>,
    pub(super) counters: HashMap<String, Arc<PeerCounters>>,
}

pub(super) enum Cmd {
    Peers(PeerSet),
    Tls { server: Arc<qp::ServerConfig>, client: qp::ClientConfig },
    Stop,
}

/// Wakes the loop from another thread (an eventfd it polls).
pub(super) struct Wake(pub(super) OwnedFd);

impl Wake {
    pub(super) fn new() -> Result<Wake> {
        // SAFETY: eventfd takes two integers and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("creating the data path's eventfd");
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(Wake(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(super) fn wake(&self) {
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

/// Packets one data path thread read from its tun queue for a peer whose connection another
/// thread holds.
pub(super) type Handed = Vec<Bytes>;

/// The way to a data path thread from the others: its queue of handed packets (bounded: a
/// batch that does not fit is dropped and counted) and its wake-up.
#[derive(Clone)]
pub(super) struct ThreadLink {
    pub(super) handed: mpsc::SyncSender<Handed>,
    pub(super) wake: Arc<Wake>,
}

/// How long a stopping tunnel waits for its close frames to go out.
pub(super) const CLOSE_GRACE: Duration = Duration::from_millis(100);
/// How often the loop refreshes what the API shows (RTTs); changes are shown at once.
pub(super) const STATUS_EVERY: Duration = Duration::from_secs(1);

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
