//! The quic data path's event loop: `ppoll` over the UDP socket (quinn-udp), the tun and a
//! wake-up eventfd, driving quinn-proto's endpoint and connections, and carrying out the
//! actions of the peer table ([`super::table`]), which decides the peer lifecycle. This file is
//! the I/O and the packet path; `control` the commands and the table's actions; `hand_off` the
//! packets passed between threads. Each data path thread runs one loop with its own tun queue,
//! socket, endpoint and connections ([`super::shard`]).

mod bufs;
mod control;
mod hand_off;

use super::packet::{self, DropReason, Prefix};
use super::shard::HandOff;
use super::shared::{Cmd, Handed, PeerCounters, Shared, ThreadLink, Wake};
use super::table::PeerTable;
use bufs::ReadBuf;
use bytes::{Bytes, BytesMut};
use ipnet::IpNet;
use quinn_proto as qp;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{ErrorKind, IoSliceMut};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};
use weft_config::subnet::PerFamily;

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
    /// Closed by this side (left, replaced, refused, timed out): its end needs no handling.
    closing: bool,
    /// quinn-proto's next timeout as last registered in the loop's timer heap.
    timeout: Option<Instant>,
    max_datagram: usize,
    dirty: bool,
}

impl Conn {
    /// A connection in its handshake: dialled to `dialed_to`, or accepted (`None`).
    fn new(conn: qp::Connection, dialed_to: Option<&str>) -> Conn {
        Conn {
            conn,
            node: dialed_to.map(str::to_string),
            peer: None,
            closing: false,
            timeout: None,
            max_datagram: 0,
            dirty: false,
        }
    }
}

/// Where the route table sends a packet read from the tun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// This thread's connection to the peer.
    Conn(qp::ConnectionHandle),
    /// Thread `k` carries the peer's packets (the pair uses fewer threads than this one's index).
    Thread(usize),
}

/// This loop among the data path threads: its index, the way to every thread (itself
/// included, unused), and its own queue of packets handed to it.
pub(super) struct Sharding {
    pub(super) index: usize,
    pub(super) links: Vec<ThreadLink>,
    pub(super) handed: mpsc::Receiver<Handed>,
}

/// What the loop does its I/O with: the QUIC endpoint, the UDP socket and the tun device (its
/// thread's queue).
pub(super) struct Io {
    pub(super) endpoint: qp::Endpoint,
    pub(super) socket: std::net::UdpSocket,
    pub(super) udp: quinn_udp::UdpSocketState,
    pub(super) dev: tun_rs::SyncDevice,
}

pub(super) struct Loop {
    sh: Arc<Shared>,
    /// This thread's index: the peers' threads of the same index are its peers.
    index: usize,
    links: Vec<ThreadLink>,
    handed: mpsc::Receiver<Handed>,
    /// Packets read for each other thread, not yet handed over.
    outbox: Vec<Handed>,
    /// The peers whose packets other threads carry, from the last peer set.
    hand_off: Vec<HandOff>,
    local: Prefix,
    endpoint: qp::Endpoint,
    socket: std::net::UdpSocket,
    udp: quinn_udp::UdpSocketState,
    dev: tun_rs::SyncDevice,
    wake: Arc<Wake>,
    cmds: mpsc::Receiver<Cmd>,
    client: qp::ClientConfig,
    conns: HashMap<qp::ConnectionHandle, Conn>,
    /// The peers and the lifecycle of their connections.
    table: PeerTable<qp::ConnectionHandle>,
    /// Each peer's traffic counters, one per peer for all the threads (the tunnel keeps them
    /// across connections and hands them over with each peer set).
    counters: HashMap<String, Arc<PeerCounters>>,
    /// Peer subnet → installed connection, or the thread carrying the peer.
    routes: packet::SubnetTable<Via>,
    /// Connections with something to do (events, datagrams, packets to send).
    dirty: Vec<qp::ConnectionHandle>,
    /// Connection timeouts, earliest first. Entries are checked against the connection when
    /// they come due (a newer entry supersedes an older one), so a wake-up costs the same with
    /// one peer as with hundreds.
    timer_heap: BinaryHeap<Reverse<(Instant, qp::ConnectionHandle)>>,
    tx: Vec<u8>,
    rx_batch: Vec<BytesMut>,
    rx_spare: Vec<BytesMut>,
    gro: tun_rs::GROTable,
    /// Set when stopping: exit once every connection is drained, or at this instant.
    stopping: Option<Instant>,
    status_due: Instant,
}

fn close_code(code: u32) -> qp::VarInt {
    qp::VarInt::from_u32(code)
}

impl Loop {
    pub(super) fn new(
        sh: Arc<Shared>,
        local_subnets: PerFamily<IpNet>,
        io: Io,
        sharding: Sharding,
        wake: Arc<Wake>,
        cmds: mpsc::Receiver<Cmd>,
        client: qp::ClientConfig,
    ) -> Loop {
        // Every family the node has a subnet of: a packet of a family it lacks is a bad destination.
        let local = Prefix::of(local_subnets.values().copied());
        Loop {
            table: PeerTable::new(&sh.node),
            sh,
            index: sharding.index,
            outbox: vec![Vec::new(); sharding.links.len()],
            links: sharding.links,
            handed: sharding.handed,
            hand_off: Vec::new(),
            local,
            endpoint: io.endpoint,
            socket: io.socket,
            udp: io.udp,
            dev: io.dev,
            wake,
            cmds,
            client,
            conns: HashMap::new(),
            counters: HashMap::new(),
            routes: packet::SubnetTable::new(local),
            dirty: Vec::new(),
            timer_heap: BinaryHeap::new(),
            tx: Vec::with_capacity(64 * 1500),
            rx_batch: Vec::with_capacity(RX_BATCH),
            rx_spare: Vec::with_capacity(RX_BATCH),
            gro: tun_rs::GROTable::default(),
            stopping: None,
            status_due: Instant::now(),
        }
    }

    pub(super) fn run(&mut self) {
        let gro_segments = self.udp.gro_segments().max(1);
        let chunk = usize::from(u16::MAX).max(1500 * gro_segments);
        // UDP reads (each up to a GRO batch of datagrams) and tun reads (each one segment of a
        // split super-packet) land in buffers that then carry the packets (`bufs`).
        let mut udp_bufs: Vec<ReadBuf> = (0..quinn_udp::BATCH_SIZE).map(|_| ReadBuf::new(chunk)).collect();
        let mut metas = vec![quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE];
        let mut original = vec![0u8; tun_rs::VIRTIO_NET_HDR_LEN + 65535];
        let segment = self.sh.tun_mtu as usize + 64;
        let mut bufs: Vec<ReadBuf> = (0..tun_rs::IDEAL_BATCH_SIZE).map(|_| ReadBuf::new(segment)).collect();
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
                self.take_handed();
            }
            if fds[0].revents != 0 {
                self.read_udp(&mut udp_bufs, &mut metas);
            }
            if fds[1].revents != 0 {
                self.read_tun(&mut original, &mut bufs, &mut sizes);
                self.flush_hand_offs();
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
        // A stopping loop dials no more and has closed every connection.
        if self.stopping.is_none() {
            if let Some(t) = self.table.poll_timeout() {
                next = next.min(t);
            }
        }
        next
    }

    /// Connection timers, then the table's handshake deadlines and due dials.
    fn timers(&mut self, now: Instant) {
        let mut expired = Vec::new();
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
        }
        for ch in expired {
            self.mark(ch);
        }
        if self.stopping.is_some() {
            return;
        }
        let actions = self.table.handle_timeout(now);
        self.execute(actions, now);
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
                None => self.connected(ch, now),
                Some(reason) => self.lost(ch, &reason, now),
            }
        }
        let Some(c) = self.conns.get_mut(&ch) else { return };
        while let Some(d) = c.conn.datagrams().recv() {
            let Some((prefix, counters)) = &c.peer else { continue };
            match packet::check_inbound(&d, prefix, &self.local) {
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
        let segments = gso_segments(self.udp.max_gso_segments(), self.sh.udp_payload);
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

    fn read_udp(&mut self, bufs: &mut [ReadBuf], metas: &mut [quinn_udp::RecvMeta]) {
        loop {
            bufs.iter_mut().for_each(ReadBuf::ready);
            let mut iovs: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b.as_mut())).collect();
            let n = match self.udp.recv((&self.socket).into(), &mut iovs, metas) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(error = %e, "receiving UDP");
                    return;
                }
            };
            drop(iovs);
            let now = Instant::now();
            for (meta, buf) in metas.iter().zip(bufs.iter_mut()).take(n) {
                // quinn decrypts in place and hands the datagrams over as slices of this memory.
                let mut data = buf.take(meta.len);
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

    /// Queues `pkt` as a datagram on connection `ch` (a peer's tunnel) and counts it, or counts
    /// why it was dropped.
    fn send_datagram(&mut self, ch: qp::ConnectionHandle, pkt: Bytes) {
        let Some(c) = self.conns.get_mut(&ch) else {
            self.sh.drops[DropReason::NoPeer.index()].fetch_add(1, Relaxed);
            return;
        };
        let size = pkt.len();
        if size > c.max_datagram {
            self.sh.drops[DropReason::TooBig.index()].fetch_add(1, Relaxed);
            return;
        }
        match c.conn.datagrams().send(pkt, true) {
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

    fn read_tun(&mut self, original: &mut [u8], bufs: &mut [ReadBuf], sizes: &mut [usize]) {
        for _ in 0..TUN_READS_PER_TURN {
            bufs.iter_mut().for_each(ReadBuf::ready);
            let n = match self.dev.recv_multiple(original, bufs, sizes, 0) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!(error = %e, "reading the tun device");
                    return;
                }
            };
            for (buf, &size) in bufs.iter_mut().zip(sizes.iter()).take(n) {
                // The segment becomes the datagram as it is: no copy out of the read buffer.
                let pkt = buf.take(size);
                let dst = match packet::outbound_dst(&pkt) {
                    Ok(d) => d,
                    Err(d) => {
                        self.sh.drops[d.index()].fetch_add(1, Relaxed);
                        continue;
                    }
                };
                let Some(&via) = self.routes.lookup(dst) else {
                    self.sh.drops[DropReason::NoPeer.index()].fetch_add(1, Relaxed);
                    continue;
                };
                match via {
                    Via::Conn(ch) => self.send_datagram(ch, pkt.freeze()),
                    Via::Thread(k) => self.hand_off(k, pkt.freeze()),
                }
            }
            self.drive_dirty();
        }
    }
}

/// UDP GSO segments per send at most. quinn's own driver sends 10; 32 cost both nodes less CPU
/// per gigabyte on the bench (docs/BENCHMARKS.md, issue 18): a third of the sends, each a larger
/// batch through the kernel's UDP path.
const MAX_GSO_SEGMENTS: usize = 32;
/// What one UDP send may carry in all (an IPv4 datagram's 65535 bytes less its IP and UDP
/// headers): a send of more segments than fit fails with EMSGSIZE, and the packets are lost.
const GSO_MAX_BYTES: usize = 65_507;

/// Segments per UDP send: as many as the socket takes, up to [`MAX_GSO_SEGMENTS`], and no more
/// than fit in one send at `udp_payload` bytes each.
fn gso_segments(socket_max: usize, udp_payload: u16) -> usize {
    let fit = GSO_MAX_BYTES / usize::from(udp_payload.max(1));
    socket_max.min(fit).clamp(1, MAX_GSO_SEGMENTS)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_segments_fit_one_send_and_the_socket() {
        assert_eq!(gso_segments(64, 1472), 32, "a 1500-byte underlay: the cap");
        assert_eq!(gso_segments(64, 8972), 7, "jumbo frames: what fits in 64 KB");
        assert!(gso_segments(64, 8972) * 8972 <= GSO_MAX_BYTES);
        assert_eq!(gso_segments(1, 1472), 1, "a socket without GSO");
        assert_eq!(gso_segments(0, 1472), 1);
        assert_eq!(gso_segments(64, 65535), 1);
    }
}
