//! weft-quic-loop: an experiment of issue 4, not part of the agent. The quic data path as one
//! event loop over `quinn-proto`, without tokio: one tun device and one UDP socket, point to
//! point between two hosts. Packets read from the tun go out as DATAGRAM frames; datagrams that
//! arrive are written to the tun. It uses the agent's TLS, transport and socket settings and the
//! same tun offload, so set side by side with the agent's tunnel it shows how much of a
//! traversal the async machinery costs (tokio tasks and wakers, quinn's connection and endpoint
//! drivers and the channel between them, the runtime waking itself when a timer moves earlier)
//! rather than QUIC itself. docs/BENCHMARKS.md has the figures and the commands.
//!
//! ```text
//! weft-quic-loop --tun wl0 --addr 10.99.0.2/24 --port 7960 --ca ca.pem --cert n2.pem --key n2.key --name n2
//! weft-quic-loop --tun wl0 --addr 10.99.0.1/24 --port 7960 --peer 172.30.0.12:7960 --server-name n2 \
//!     --ca ca.pem --cert n1.pem --key n1.key --name n1
//! ```

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use clap::Parser;
use ipnet::Ipv4Net;
use quinn_proto as qp;
use std::io::{ErrorKind, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};
use weft_agent::quic::{self, tls};
use weft_config::agent::QuicConfig;

#[derive(Parser, Debug)]
#[command(
    name = "weft-quic-loop",
    version,
    about = "Experiment: the quic data path as one event loop over quinn-proto"
)]
struct Cli {
    /// Tun device to create.
    #[arg(long)]
    tun: String,
    /// Address and prefix of the tun (the peer's tun address is in the same prefix).
    #[arg(long)]
    addr: Ipv4Net,
    /// UDP port to bind.
    #[arg(long)]
    port: u16,
    /// Dial this peer (the other end runs without `--peer` and accepts).
    #[arg(long, requires = "server_name")]
    peer: Option<SocketAddr>,
    /// The peer's node name, when dialling.
    #[arg(long)]
    server_name: Option<String>,
    #[arg(long)]
    ca: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// This end's node name (its certificate must carry it).
    #[arg(long)]
    name: String,
    /// UDP payload the underlay carries (underlay MTU - 28).
    #[arg(long, default_value_t = 1472)]
    udp_payload: u16,
    /// Exit after this many seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-quic-loop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The loop's state: one endpoint, at most one connection.
struct Loop {
    endpoint: qp::Endpoint,
    conn: Option<(qp::ConnectionHandle, qp::Connection)>,
    socket: std::net::UdpSocket,
    udp: quinn_udp::UdpSocketState,
    dev: tun_rs::SyncDevice,
    /// Scratch buffer of `poll_transmit` and of endpoint responses.
    tx: Vec<u8>,
    /// Datagrams received, with room for the virtio header, waiting for one tun write.
    rx_batch: Vec<BytesMut>,
    rx_spare: Vec<BytesMut>,
    gro: GROTable,
    arena: BytesMut,
    dropped: u64,
}

const ARENA: usize = 2 << 20;
const RX_BATCH: usize = 64;

fn run(cli: &Cli) -> Result<()> {
    let q = QuicConfig {
        port: cli.port,
        ca_file: cli.ca.clone(),
        cert_file: cli.cert.clone(),
        key_file: cli.key.clone(),
        tun: cli.tun.clone(),
        mtu: None,
        threads: 1,
    };
    let id = tls::load(&q, &cli.name)?;
    let transport = quic::transport(cli.udp_payload)?;
    let server = Arc::new(tls::server_config(&id, transport.clone())?);
    let client = tls::client_config(&id, transport)?;
    let mut ep_cfg = quinn::EndpointConfig::new(tls::reset_key(&id));
    ep_cfg.max_udp_payload_size(cli.udp_payload.max(1200)).context("max UDP payload")?;
    let endpoint = qp::Endpoint::new(Arc::new(ep_cfg), Some(server), false, Some(quic::rng_seed()?));
    let socket = quic::bind_socket(cli.port)?;
    socket.set_nonblocking(true).context("non-blocking socket")?;
    let udp = quinn_udp::UdpSocketState::new((&socket).into()).context("UDP socket state")?;
    let mtu = quic::tun_mtu_for(u32::from(cli.udp_payload) + quic::UDP_IP_OVERHEAD);
    let dev = tun_rs::DeviceBuilder::new()
        .name(cli.tun.clone())
        .mtu(u16::try_from(mtu).unwrap_or(1400))
        .offload(true)
        .ipv4(cli.addr.addr(), cli.addr.prefix_len(), None)
        .build_sync()
        .with_context(|| format!("creating tun {}", cli.tun))?;
    dev.set_nonblocking(true).context("non-blocking tun")?;
    let mut lp = Loop {
        endpoint,
        conn: None,
        socket,
        udp,
        dev,
        tx: Vec::with_capacity(64 * 1500),
        rx_batch: Vec::with_capacity(RX_BATCH),
        rx_spare: Vec::with_capacity(RX_BATCH),
        gro: GROTable::default(),
        arena: BytesMut::with_capacity(ARENA),
        dropped: 0,
    };
    if let (Some(peer), Some(name)) = (cli.peer, cli.server_name.as_deref()) {
        let c = lp.endpoint.connect(Instant::now(), client, peer, name).context("connect")?;
        lp.conn = Some(c);
    }
    lp.run(Instant::now() + Duration::from_secs(cli.seconds), mtu as usize)
}

impl Loop {
    fn run(&mut self, until: Instant, mtu: usize) -> Result<()> {
        let gro_segments = self.udp.gro_segments().max(1);
        let chunk = usize::from(u16::MAX).max(1500 * gro_segments);
        let mut storage = vec![0u8; chunk * quinn_udp::BATCH_SIZE];
        let mut metas = vec![quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE];
        let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65535];
        let mut bufs = vec![vec![0u8; mtu + 64]; IDEAL_BATCH_SIZE];
        let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
        let mut fds = [
            libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.dev.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        let mut connected = false;
        while Instant::now() < until {
            self.drive(&mut connected)?;
            let now = Instant::now();
            let wait = self.conn.as_mut().and_then(|(_, c)| c.poll_timeout()).map(|t| t.saturating_duration_since(now));
            let wait = wait.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1));
            let ts = libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos().into() };
            fds[0].revents = 0;
            fds[1].revents = 0;
            // SAFETY: fds is a valid array of two pollfd; no signal mask is passed.
            let r = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e).context("ppoll");
                }
                continue;
            }
            let now = Instant::now();
            if let Some((_, c)) = self.conn.as_mut() {
                if c.poll_timeout().is_some_and(|t| t <= now) {
                    c.handle_timeout(now);
                }
            }
            if fds[0].revents & libc::POLLIN != 0 {
                self.read_udp(&mut storage, chunk, &mut metas)?;
            }
            if fds[1].revents & libc::POLLIN != 0 {
                self.read_tun(&mut original, &mut bufs, &mut sizes)?;
            }
        }
        eprintln!("weft-quic-loop: done; {} datagrams dropped", self.dropped);
        Ok(())
    }

    /// Everything the connection has to say: endpoint events, application events, received
    /// datagrams (to the tun) and packets to send.
    fn drive(&mut self, connected: &mut bool) -> Result<()> {
        let now = Instant::now();
        let Some((ch, c)) = self.conn.as_mut() else { return Ok(()) };
        while let Some(ev) = c.poll_endpoint_events() {
            if let Some(cev) = self.endpoint.handle_event(*ch, ev) {
                c.handle_event(cev);
            }
        }
        while let Some(ev) = c.poll() {
            match ev {
                qp::Event::Connected => {
                    *connected = true;
                    eprintln!("weft-quic-loop: connected, max datagram {:?}", c.datagrams().max_size());
                }
                qp::Event::ConnectionLost { reason } => bail!("connection lost: {reason}"),
                _ => {}
            }
        }
        while let Some(d) = c.datagrams().recv() {
            let mut b = self.rx_spare.pop().unwrap_or_else(|| BytesMut::with_capacity(VIRTIO_NET_HDR_LEN + 65536));
            b.clear();
            b.resize(VIRTIO_NET_HDR_LEN, 0);
            b.extend_from_slice(&d);
            self.rx_batch.push(b);
            if self.rx_batch.len() >= RX_BATCH {
                flush_tun(&self.dev, &mut self.gro, &mut self.rx_batch, &mut self.rx_spare);
            }
        }
        flush_tun(&self.dev, &mut self.gro, &mut self.rx_batch, &mut self.rx_spare);
        let segments = self.udp.max_gso_segments().clamp(1, 10);
        loop {
            self.tx.clear();
            let Some(t) = c.poll_transmit(now, segments, &mut self.tx) else { break };
            send(&self.udp, &self.socket, &t, &self.tx[..t.size]);
        }
        Ok(())
    }

    fn read_udp(&mut self, storage: &mut [u8], chunk: usize, metas: &mut [quinn_udp::RecvMeta]) -> Result<()> {
        loop {
            let mut iovs: Vec<IoSliceMut<'_>> = storage.chunks_mut(chunk).map(IoSliceMut::new).collect();
            let n = match self.udp.recv((&self.socket).into(), &mut iovs, metas) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e).context("receiving UDP"),
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
                            if let Some((mine, c)) = self.conn.as_mut() {
                                if *mine == ch {
                                    c.handle_event(ev);
                                }
                            }
                        }
                        Some(qp::DatagramEvent::NewConnection(incoming)) => {
                            if self.conn.is_some() {
                                self.endpoint.ignore(incoming);
                                continue;
                            }
                            match self.endpoint.accept(incoming, now, &mut self.tx, None) {
                                Ok(c) => self.conn = Some(c),
                                Err(e) => {
                                    eprintln!("weft-quic-loop: refused a connection: {}", e.cause);
                                    if let Some(t) = e.response {
                                        send(&self.udp, &self.socket, &t, &self.tx[..t.size]);
                                    }
                                }
                            }
                        }
                        Some(qp::DatagramEvent::Response(t)) => send(&self.udp, &self.socket, &t, &self.tx[..t.size]),
                        None => {}
                    }
                }
            }
            let mut ignored = false;
            self.drive(&mut ignored)?;
        }
    }

    fn read_tun(&mut self, original: &mut [u8], bufs: &mut [Vec<u8>], sizes: &mut [usize]) -> Result<()> {
        loop {
            let n = match self.dev.recv_multiple(original, bufs, sizes, 0) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e).context("reading the tun"),
            };
            let Some((_, c)) = self.conn.as_mut() else { continue };
            for (buf, &size) in bufs.iter().zip(sizes.iter()).take(n) {
                if self.arena.capacity() < size {
                    self.arena = BytesMut::with_capacity(ARENA);
                }
                self.arena.extend_from_slice(&buf[..size]);
                if c.datagrams().send(self.arena.split().freeze(), true).is_err() {
                    self.dropped += 1;
                }
            }
            let mut ignored = false;
            self.drive(&mut ignored)?;
        }
    }
}

fn flush_tun(dev: &tun_rs::SyncDevice, gro: &mut GROTable, batch: &mut Vec<BytesMut>, spare: &mut Vec<BytesMut>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = dev.send_multiple(gro, batch, VIRTIO_NET_HDR_LEN) {
        eprintln!("weft-quic-loop: writing the tun: {e}");
    }
    spare.append(batch);
}

fn send(state: &quinn_udp::UdpSocketState, socket: &std::net::UdpSocket, t: &qp::Transmit, contents: &[u8]) {
    let transmit = quinn_udp::Transmit {
        destination: t.destination,
        ecn: t.ecn.and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
        contents,
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    };
    // A full socket buffer drops the packet; QUIC's loss recovery and the inner TCP see a loss.
    let _ = state.send(socket.into(), &transmit);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn peer_needs_a_server_name() {
        let base = ["weft-quic-loop", "--tun", "wl0", "--addr", "10.99.0.1/24", "--port", "7960"];
        let tls = ["--ca", "ca.pem", "--cert", "n1.pem", "--key", "n1.key", "--name", "n1"];
        fn args<'a>(base: &[&'a str], extra: &[&'a str], tls: &[&'a str]) -> Vec<&'a str> {
            base.iter().chain(extra).chain(tls).copied().collect()
        }
        assert!(Cli::try_parse_from(args(&base, &["--peer", "172.30.0.12:7960"], &tls)).is_err());
        let ok = Cli::try_parse_from(args(&base, &["--peer", "172.30.0.12:7960", "--server-name", "n2"], &tls))
            .expect("parses");
        assert_eq!(ok.addr.prefix_len(), 24);
        assert!(Cli::try_parse_from(args(&base, &[], &tls)).expect("acceptor").peer.is_none());
    }
}
