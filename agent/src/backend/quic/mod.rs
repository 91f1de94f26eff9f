//! The quic backend: a tun device whose IP packets travel as QUIC DATAGRAM frames (unreliable,
//! so no TCP-over-TCP) over one mutually authenticated connection per pair of nodes.
//!
//! - Data path: one thread runs an event loop over `quinn-proto` (no async runtime): `ppoll` on
//!   the UDP socket, the tun and a wake-up eventfd; the tun's packets go to the connection of
//!   the peer owning the destination (a `SubnetTable` lookup); received datagrams are checked
//!   (source in the peer's subnet, destination in ours) and written to the tun through GRO.
//!   Compared with the same path on tokio + quinn (tasks, drivers, channels, the runtime's
//!   self-wakes) it takes a quarter off the round trip: docs/BENCHMARKS.md.
//! - Threads: `quic.threads` such loops, each with its own tun queue, UDP port (`quic.port + i`)
//!   and connections; thread `i` talks only to thread `i` of a peer, a pair uses the smaller
//!   count, and a thread past it hands its packets to one below ([`shard`]).
//! - Control: the daemon hands over the peer set on every reconcile, through a command queue
//!   and the eventfd. Of each pair the node with the smaller name dials (reconnecting with
//!   backoff), the other accepts and identifies the peer by its certificate and address. A peer
//!   whose epoch changed (it restarted) is redialled at once. These decisions are the peer
//!   table's ([`table`]: a pure state machine on a `now` passed in, returning actions); the
//!   event loop carries them out.
//!
//! Files: `tunnel` (the handle the daemon holds, settings, status); `shared` (what the handle
//! and the loops share: state, commands, the wake-up eventfd, the hand-off queues); `shard`
//! (which thread does what with each peer); `event_loop` (ppoll, quinn-udp, the tun,
//! quinn-proto), `event_loop/control.rs` (commands, the table's actions) and
//! `event_loop/hand_off.rs` (packets between threads);
//! [`table`] (the peer lifecycle); [`packet`] (checks, the subnet table); [`tls`]; `driver` (the
//! backend behind the seam).

mod driver;
mod event_loop;
pub mod packet;
pub mod shard;
mod shared;
pub mod table;
pub mod tls;
mod tunnel;

pub use driver::{registration, specs, QuicDriver, BLACKHOLE_METRIC, NAME};
pub use table::PeerSpec;
pub use tunnel::{Settings, Tunnel};

use anyhow::{Context, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;
use weft_config::agent::QuicConfig;
use weft_config::subnet::Family;

/// The data path threads of `q`: `quic.threads`, or unset ("auto") the machine's core count
/// (at most 8, see [`shard::auto_threads`]).
pub fn data_threads(q: &QuicConfig) -> usize {
    q.threads.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        shard::auto_threads(cores, q.port)
    })
}

/// IPv4 + UDP headers.
pub const UDP_IP_OVERHEAD: u32 = 28;
/// IPv6 + UDP headers (an underlay of `quic.endpoint_family = "ipv6"`).
pub const UDP_IP6_OVERHEAD: u32 = 48;

/// The IP and UDP headers of the underlay family the tunnel runs over.
pub fn udp_ip_overhead(endpoint_family: Family) -> u32 {
    match endpoint_family {
        Family::V4 => UDP_IP_OVERHEAD,
        Family::V6 => UDP_IP6_OVERHEAD,
    }
}
/// What a QUIC short-header packet carrying one DATAGRAM frame adds, as quinn computes it: flags
/// (1), destination connection id (quinn's 8 bytes... with margin for its 20-byte maximum
/// accounted by quinn itself), packet number (up to 4), AEAD tag (16), frame type and length
/// (up to 3); quinn reports 1434 usable bytes for a 1472-byte UDP payload, so 38 in all.
pub const QUIC_DATAGRAM_OVERHEAD: u32 = 38;

/// Tun (and pod) MTU for an IPv4 underlay's MTU: what fits in one datagram.
pub fn tun_mtu_for(underlay_mtu: u32) -> u32 {
    tun_mtu_over(underlay_mtu, Family::V4)
}

/// Tun (and pod) MTU for an underlay MTU when the tunnel runs over `endpoint_family`.
pub fn tun_mtu_over(underlay_mtu: u32, endpoint_family: Family) -> u32 {
    underlay_mtu.saturating_sub(udp_ip_overhead(endpoint_family) + QUIC_DATAGRAM_OVERHEAD).max(576)
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

/// The node's UDP socket on `port` of every address of `family` (IPv6: `[::]`, which the kernel
/// also lets IPv4 reach unless `bindv6only` is set), with enlarged buffers. The agent binds it
/// before it publishes its record (which tells peers to dial): a peer's first handshake packet
/// then waits in the socket buffer instead of being lost while the endpoint starts.
pub fn bind_socket(port: u16, family: Family) -> Result<std::net::UdpSocket> {
    let any: IpAddr = match family {
        Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
        Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = std::net::UdpSocket::bind(SocketAddr::from((any, port)))
        .with_context(|| format!("binding UDP port {port} ({family})"))?;
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
    quinn::Endpoint::new(
        endpoint_config(udp_payload, id)?,
        server,
        bind_socket(port, Family::V4)?,
        Arc::new(quinn::TokioRuntime),
    )
    .context("starting the QUIC endpoint")
}

/// UDP socket buffer size (each way).
const SOCKET_BUFFER: usize = 8 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_arithmetic() {
        assert_eq!(tun_mtu_for(1500), 1434);
        assert_eq!(tun_mtu_for(9000), 8934);
        assert_eq!(tun_mtu_for(600), 576);
        assert_eq!(tun_mtu_over(1500, Family::V4), 1434);
        assert_eq!(tun_mtu_over(1500, Family::V6), 1414, "an IPv6 header is 20 bytes longer");
    }
}
