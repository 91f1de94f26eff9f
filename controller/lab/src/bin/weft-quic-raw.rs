//! weft-quic-raw: the transport's ceiling, without a tun. A client sends QUIC DATAGRAM frames as
//! fast as congestion control lets it over one or more connections; the server counts what
//! arrives and prints it as JSON. Both ends use the agent's own TLS, transport and endpoint
//! settings (`weft_agent::quic`), so the figure is what weft's tunnel could carry at most on the
//! machine. `weftctl lab bench` runs it as the `quinn-raw` row.
//!
//! ```text
//! weft-quic-raw server --port 7946 --ca ca.pem --cert n2.pem --key n2.key --name n2 [--connections 1]
//! weft-quic-raw client --connect 192.168.100.2:7946 --server-name n2 --ca ca.pem --cert n1.pem \
//!     --key n1.key --name n1 [--seconds 10] [--connections 1]
//! ```

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use weft_agent::quic::{self, tls};
use weft_config::agent::QuicConfig;

#[derive(Parser, Debug)]
#[command(name = "weft-quic-raw", version, about = "QUIC datagram throughput with weft's transport settings, no tun")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Accept connections and count the datagrams that arrive; print JSON when all have closed.
    Server {
        #[arg(long)]
        port: u16,
        /// Connections to wait for before reporting.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Send datagrams as fast as the connection allows for `--seconds`; print JSON.
    Client {
        #[arg(long)]
        connect: SocketAddr,
        /// The server's node name (its certificate must carry it).
        #[arg(long)]
        server_name: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

#[derive(Args, Debug)]
struct TlsArgs {
    #[arg(long)]
    ca: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// This end's node name (its certificate must carry it).
    #[arg(long)]
    name: String,
    /// UDP payload the underlay carries (underlay MTU - 28), as the agent derives it.
    #[arg(long, default_value_t = 1472)]
    udp_payload: u16,
}

impl TlsArgs {
    fn identity(&self) -> Result<tls::Identity> {
        let q = QuicConfig {
            port: 0,
            ca_file: self.ca.clone(),
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
            tun: String::new(),
            mtu: None,
            threads: Some(1),
            endpoint_family: weft_config::subnet::Family::V4,
        };
        tls::load(&q, &self.name)
    }
}

/// What the server prints.
#[derive(Debug, Serialize)]
struct Received {
    connections: usize,
    datagrams: u64,
    bytes: u64,
    /// From the first datagram to the last, over all connections.
    seconds: f64,
    gbps: f64,
    /// Largest datagram the connections allowed.
    max_datagram: usize,
}

/// What the client prints.
#[derive(Debug, Serialize)]
struct Sent {
    connections: usize,
    datagrams: u64,
    bytes: u64,
    seconds: f64,
    datagram_size: usize,
    /// Smoothed RTT of the first connection at the end, in microseconds.
    rtt_us: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-quic-raw: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = match cli.cmd {
        Cmd::Server { port, connections, timeout, tls } => {
            rt.block_on(server(port, connections, Duration::from_secs(timeout), tls)).and_then(|r| json(&r))
        }
        Cmd::Client { connect, server_name, seconds, connections, tls } => rt
            .block_on(client(connect, &server_name, Duration::from_secs(seconds), connections, tls))
            .and_then(|s| json(&s)),
    };
    match out {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-quic-raw: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).context("encoding JSON")
}

async fn server(port: u16, connections: usize, timeout: Duration, args: TlsArgs) -> Result<Received> {
    let id = args.identity()?;
    let transport = quic::transport(args.udp_payload)?;
    let sc = tls::server_config(&id, transport)?;
    let ep = quic::bind_endpoint(port, args.udp_payload, &id, Some(sc))?;
    let work = async {
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let incoming = ep.accept().await.ok_or_else(|| anyhow!("endpoint closed"))?;
            let conn = incoming.await.context("handshake")?;
            tasks.push(tokio::spawn(count(conn)));
        }
        let mut total = Tally::default();
        for t in tasks {
            total.merge(t.await.context("counting task")?);
        }
        Ok::<_, anyhow::Error>(total)
    };
    let total = tokio::time::timeout(timeout, work).await.map_err(|_| anyhow!("no result within {timeout:?}"))??;
    let seconds = match (total.first, total.last) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let gbps = if seconds > 0.0 { total.bytes as f64 * 8.0 / seconds / 1e9 } else { 0.0 };
    ep.close(0u32.into(), b"done");
    Ok(Received {
        connections,
        datagrams: total.datagrams,
        bytes: total.bytes,
        seconds,
        gbps,
        max_datagram: total.max_datagram,
    })
}

/// What arrived over one connection, or over several merged.
#[derive(Debug, Default)]
struct Tally {
    datagrams: u64,
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    max_datagram: usize,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.datagrams += o.datagrams;
        self.bytes += o.bytes;
        self.first = match (self.first, o.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = self.last.max(o.last);
        self.max_datagram = self.max_datagram.max(o.max_datagram);
    }
}

/// Counts one connection's datagrams until it closes.
async fn count(conn: quinn::Connection) -> Tally {
    let mut t = Tally { max_datagram: conn.max_datagram_size().unwrap_or(0), ..Tally::default() };
    while let Ok(d) = conn.read_datagram().await {
        let now = Instant::now();
        t.first.get_or_insert(now);
        t.last = Some(now);
        t.datagrams += 1;
        t.bytes += d.len() as u64;
    }
    t
}

async fn client(
    server: SocketAddr,
    server_name: &str,
    duration: Duration,
    connections: usize,
    args: TlsArgs,
) -> Result<Sent> {
    let id = args.identity()?;
    let transport = quic::transport(args.udp_payload)?;
    let cc = tls::client_config(&id, transport)?;
    let mut ep = quic::bind_endpoint(0, args.udp_payload, &id, None)?;
    ep.set_default_client_config(cc);
    let mut conns = Vec::new();
    for _ in 0..connections {
        let connecting = ep.connect(server, server_name).context("connect")?;
        let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| anyhow!("handshake with {server} timed out"))?
            .context("handshake")?;
        conns.push(conn);
    }
    let size = conns.first().and_then(|c| c.max_datagram_size()).ok_or_else(|| anyhow!("peer takes no datagrams"))?;
    let payload = Bytes::from(vec![0x45u8; size]);
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let tasks: Vec<_> = conns
        .iter()
        .cloned()
        .map(|c| {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while tokio::time::Instant::now() < deadline {
                    if c.send_datagram_wait(payload.clone()).await.is_err() {
                        break;
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut datagrams = 0;
    for t in tasks {
        datagrams += t.await.context("sending task")?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let rtt_us = conns.first().map_or(0, |c| c.rtt().as_micros() as u64);
    // Let the queued datagrams drain before closing (closing drops what is still queued).
    tokio::time::sleep(Duration::from_millis(200)).await;
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    ep.wait_idle().await;
    Ok(Sent { connections, datagrams, bytes: datagrams * size as u64, seconds, datagram_size: size, rtt_us })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
