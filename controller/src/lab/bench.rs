//! `weftctl lab bench`: pod-to-pod throughput (one TCP stream of iperf3) and ping RTT between
//! two nodes, for the kernel baseline (plain static routes, no agent anywhere) and for a lab
//! running each backend, one after the other (never two at once).
//!
//! The measurement is split into small reusable parts so that more rows (other tunnels on the
//! same two-host topology) only need to provide [`Endpoints`]:
//! - [`HostPair`]: two hosts and two pods in namespaces, wired like shared/bench/baseline.sh,
//!   removed by its `Drop`;
//! - [`measure`]: reachability check, iperf3 run ([`iperf_tcp`]), ping run ([`ping`]), with the
//!   RSS of the given processes sampled meanwhile ([`with_rss_sampling`]);
//! - [`bench_kernel`], [`bench_lab`]: one row each; [`run`]: the whole table.
//!
//! Every external step is bounded by a timeout ([`run_timeout`]). Everything happens inside
//! namespaces named `weft<id>-...` (so `weftctl lab down --id ID` also removes what a crashed
//! bench left); the root namespace is never touched.

use super::names::LabNames;
use super::peers::Peer;
use super::{netns, plumbing, Lab, LabSpec};
use crate::error::UsageError;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use weft_config::Backend;

/// Port of the iperf3 server in the receiving pod.
pub const IPERF_PORT: u16 = 5201;
/// Seconds between pings.
pub const PING_INTERVAL_S: f64 = 0.05;
/// How long the first packet may take to get through (routes appear, a tunnel connects).
pub const REACH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an iperf3 server gets to listen.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often agent RSS is sampled during a run.
pub const RSS_EVERY: Duration = Duration::from_millis(100);

/// One row of the bench table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowKind {
    /// Static routes between two hosts, no agent: the ceiling for any backend.
    Kernel,
    /// A 2-node lab on the host-gw backend.
    HostGw,
    /// A 2-node lab on the quic backend.
    Quic,
    /// QUIC datagrams alone between the two hosts, no tun (`weft-quic-raw`): the transport's
    /// ceiling, with the agent's TLS and transport settings.
    QuinnRaw,
    /// Another userspace tunnel between the same two hosts (`--with-peers`).
    Peer(Peer),
}

impl RowKind {
    pub const ALL: [RowKind; 7] = [
        RowKind::Kernel,
        RowKind::HostGw,
        RowKind::Quic,
        RowKind::QuinnRaw,
        RowKind::Peer(Peer::Quincy),
        RowKind::Peer(Peer::WireguardGo),
        RowKind::Peer(Peer::Boringtun),
    ];

    pub fn name(self) -> &'static str {
        match self {
            RowKind::Kernel => "kernel",
            RowKind::HostGw => "host-gw",
            RowKind::Quic => "quic",
            RowKind::QuinnRaw => "quinn-raw",
            RowKind::Peer(p) => p.name(),
        }
    }

    /// The lab backend this row runs, if it is a lab row.
    pub fn backend(self) -> Option<Backend> {
        match self {
            RowKind::HostGw => Some(Backend::HostGw),
            RowKind::Quic => Some(Backend::Quic),
            RowKind::Kernel | RowKind::QuinnRaw | RowKind::Peer(_) => None,
        }
    }
}

impl std::fmt::Display for RowKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for RowKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RowKind::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| {
            let all: Vec<&str> = RowKind::ALL.iter().map(|r| r.name()).collect();
            format!("expected one of {}, found {s:?}", all.join(", "))
        })
    }
}

/// Parses `--backends` (comma-separated rows); `with_peers` appends the other userspace
/// tunnels. The kernel row always comes first: it is the reference the ratios are taken
/// against. Duplicates are dropped.
pub fn parse_rows(list: &str, with_peers: bool) -> Result<Vec<RowKind>, UsageError> {
    let named = list
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| part.parse::<RowKind>().map_err(|e| UsageError::new(format!("--backends: {e}"))));
    let peers = Peer::ALL.into_iter().filter(|_| with_peers).map(|p| Ok(RowKind::Peer(p)));
    let mut rows = vec![RowKind::Kernel];
    for r in named.chain(peers) {
        let r = r?;
        if !rows.contains(&r) {
            rows.push(r);
        }
    }
    Ok(rows)
}

/// Refuses to start when a peer row's tunnel is not installed, naming what is missing.
pub fn check_peers_installed(rows: &[RowKind]) -> Result<(), UsageError> {
    let peers: Vec<Peer> = rows.iter().filter_map(|r| if let RowKind::Peer(p) = r { Some(*p) } else { None }).collect();
    let missing = super::peers::missing(&peers);
    if missing.is_empty() {
        return Ok(());
    }
    Err(UsageError::new(format!(
        "--with-peers: not found on PATH: {}; install them with deploy/bench-peers.sh (or leave out --with-peers)",
        missing.join(", ")
    )))
}

/// `weftctl lab bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Seconds of the iperf3 run per row.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Pings per row (0.05 s apart); the table shows their median RTT.
    #[arg(long, default_value_t = 50)]
    pub pings: u32,
    /// Print the report (machine facts and every figure) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Rows besides the kernel baseline (always measured first): host-gw, quic, quinn-raw,
    /// quincy, wireguard-go, boringtun.
    #[arg(long, default_value = "host-gw,quic,quinn-raw", value_name = "ROW[,ROW...]")]
    pub backends: String,
    /// Also measure the other userspace tunnels between the same two hosts: quincy,
    /// wireguard-go and boringtun (installed by deploy/bench-peers.sh; missing ones are an error).
    #[arg(long)]
    pub with_peers: bool,
    /// Streams of the second iperf3 run of each row (`-P N`); 0 skips it.
    #[arg(long, default_value_t = 4)]
    pub parallel: u32,
    /// Print a Markdown section (machine, command, table) for docs/BENCHMARKS.md or a release note.
    #[arg(long, conflicts_with = "json")]
    pub release_note: bool,
    /// weft-agent binary (default: next to weftctl, or in WEFT_BIN_DIR).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Seconds each lab gets for every agent to be ready.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout: u64,
    /// Instead of the data-path rows: an N-node host-gw lab, measuring lab up, join and leave
    /// convergence, agent RSS and idle CPU, and etcd load (see docs/BENCHMARKS.md).
    #[arg(long, value_name = "N")]
    pub scale: Option<usize>,
    /// With --scale: leave + re-join cycles (each on another node).
    #[arg(long, default_value_t = 3, requires = "scale")]
    pub cycles: usize,
    /// With --scale: seconds of the idle window (agent CPU, etcd revisions).
    #[arg(long, default_value_t = 60, requires = "scale")]
    pub idle_secs: u64,
}

/// What [`run`] measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOpts {
    /// Lab id: every namespace is `weft<id>-...`.
    pub id: String,
    pub seconds: u64,
    pub pings: u32,
    pub rows: Vec<RowKind>,
    /// Streams of the second iperf3 run (0: none).
    pub parallel: u32,
    pub agent_bin: Option<PathBuf>,
    pub weftctl_bin: Option<PathBuf>,
    pub ready_timeout_secs: u64,
}

impl BenchOpts {
    pub fn validate(&self) -> Result<(), UsageError> {
        super::names::validate_id(&self.id).map_err(|e| UsageError::new(e.to_string()))?;
        if !(1..=600).contains(&self.seconds) {
            return Err(UsageError::new(format!("--seconds: expected 1 to 600, found {}", self.seconds)));
        }
        if self.parallel > 128 {
            return Err(UsageError::new(format!("--parallel: expected 0 to 128, found {}", self.parallel)));
        }
        if !(1..=10_000).contains(&self.pings) {
            return Err(UsageError::new(format!("--pings: expected 1 to 10000, found {}", self.pings)));
        }
        if !(1..=3600).contains(&self.ready_timeout_secs) {
            return Err(UsageError::new(format!(
                "--ready-timeout: expected 1 to 3600, found {}",
                self.ready_timeout_secs
            )));
        }
        Ok(())
    }

    pub fn measure_opts(&self) -> MeasureOpts {
        MeasureOpts { seconds: self.seconds, pings: self.pings, parallel: self.parallel }
    }
}

// ---------------------------------------------------------------------------------------------
// Pure parts: iperf3 JSON, ping output, /proc files, statistics, rendering.

/// What one iperf3 TCP run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IperfResult {
    /// `end.sum_received.bits_per_second`: what reached the receiver.
    pub bits_per_second: f64,
    /// `end.sum_sent.retransmits` (TCP retransmissions seen by the sender), when reported.
    pub retransmits: Option<u64>,
}

impl IperfResult {
    pub fn gbps(&self) -> f64 {
        self.bits_per_second / 1e9
    }
}

/// Parses `iperf3 -J` output. iperf3 reports its own failures as `{"error": ...}` (sometimes
/// with exit status 0), which becomes the error here.
pub fn parse_iperf_json(text: &str) -> Result<IperfResult, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("iperf3 output is not JSON: {e}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .ok_or("iperf3 output has no end.sum_received.bits_per_second")?;
    if !bps.is_finite() || bps < 0.0 {
        return Err(format!("iperf3 reported {bps} bits per second"));
    }
    let retransmits = v.pointer("/end/sum_sent/retransmits").and_then(serde_json::Value::as_u64);
    Ok(IperfResult { bits_per_second: bps, retransmits })
}

/// What one ping run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingSummary {
    pub transmitted: u32,
    pub received: u32,
    /// RTT of every reply, in the order they came.
    pub times_ms: Vec<f64>,
}

impl PingSummary {
    pub fn median_ms(&self) -> Option<f64> {
        median(&self.times_ms)
    }
}

/// Parses iputils `ping` output: the `time=X ms` of every reply and the
/// `N packets transmitted, M received` summary line.
pub fn parse_ping(text: &str) -> Result<PingSummary, String> {
    let mut times_ms = Vec::new();
    let mut counts = None;
    for line in text.lines() {
        if let Some(rest) = line.split_once(" time=").map(|(_, r)| r) {
            let num = rest.split_whitespace().next().unwrap_or("");
            if let Ok(t) = num.trim_end_matches("ms").parse::<f64>() {
                times_ms.push(t);
            }
        } else if line.contains(" packets transmitted, ") {
            let mut it = line.split(',').map(str::trim);
            let tx = it.next().and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse().ok());
            let rx = it.next().and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse().ok());
            if let (Some(tx), Some(rx)) = (tx, rx) {
                counts = Some((tx, rx));
            }
        }
    }
    let (transmitted, received) = counts.ok_or("ping printed no \"packets transmitted\" summary")?;
    Ok(PingSummary { transmitted, received, times_ms })
}

/// The median (mean of the two middle values for an even count); `None` when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// `VmRSS` in KiB from /proc/<pid>/status text.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The resident set size of `pid` now, in KiB (`None` once it has exited).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    parse_vm_rss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Whether /proc/net/tcp or tcp6 text shows a socket listening on `port`.
pub fn tcp_listening(proc_net_tcp: &str, port: u16) -> bool {
    proc_net_sockets(proc_net_tcp).any(|(p, state)| state == "0A" && p == Some(port))
}

/// Whether a UDP socket is bound to local `port` in `/proc/<pid>/net/udp` text.
pub fn udp_bound(proc_net_udp: &str, port: u16) -> bool {
    proc_net_sockets(proc_net_udp).any(|(p, _)| p == Some(port))
}

/// (local port, state) of every socket in a `/proc/net/{tcp,udp}` table.
fn proc_net_sockets(text: &str) -> impl Iterator<Item = (Option<u16>, &str)> {
    text.lines().skip(1).map(|l| {
        let mut f = l.split_whitespace();
        let local = f.nth(1).unwrap_or("");
        let state = f.nth(1).unwrap_or("");
        (local.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok()), state)
    })
}

/// The CPU model from /proc/cpuinfo text (`model name`, or `Hardware`/`cpu model` elsewhere).
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "cpu model", "Hardware"].iter().find_map(|key| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_string())
        })
    })
}

/// `2026-11-22T20:11:58Z` for a unix time (proleptic Gregorian calendar, UTC).
pub fn rfc3339_utc(unix_secs: u64) -> String {
    let days = i64::try_from(unix_secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Checks that `route` (`ip -o route get` on the sending node, toward the receiving pod) goes
/// the way `backend` sends pod traffic: host-gw via the peer's underlay address, quic through a
/// tun (neither via the peer nor out of the underlay interface `eth0`).
pub fn check_path(backend: Backend, route: &str, peer_underlay: Ipv4Addr) -> Result<(), String> {
    let words: Vec<&str> = route.split_whitespace().collect();
    let after = |key: &str| words.windows(2).find(|w| w[0] == key).map(|w| w[1]);
    let via_peer = after("via") == Some(peer_underlay.to_string().as_str());
    match backend {
        Backend::HostGw if via_peer => Ok(()),
        Backend::HostGw => {
            Err(format!("the sending node routes the pod as `{}`, not via {peer_underlay}", route.trim()))
        }
        Backend::Quic if !via_peer && after("dev").is_some_and(|d| d != "eth0") => Ok(()),
        Backend::Quic => Err(format!(
            "the sending node routes the pod as `{}`, over the underlay instead of through the quic tun \
             (the agent does not run the quic backend)",
            route.trim()
        )),
    }
}

/// The machine a report was measured on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu_model: String,
    /// When the bench started (UTC).
    pub date: String,
    /// `iperf3 --version`, first line.
    pub iperf3: String,
    /// /proc/loadavg's 1, 5 and 15 minute figures when the bench started: on a small machine
    /// a busy neighbour (a build) moves the figures.
    pub loadavg: String,
}

/// Reads the machine facts (never fails: unknowns read "unknown").
pub fn machine_facts() -> Machine {
    let unknown = || "unknown".to_string();
    let iperf3 = run_timeout(Command::new("iperf3").arg("--version"), None, Duration::from_secs(5), "iperf3 --version")
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
        .unwrap_or_else(unknown);
    Machine {
        nproc: std::thread::available_parallelism().map(usize::from).unwrap_or(0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| unknown()),
        cpu_model: std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| parse_cpu_model(&t))
            .unwrap_or_else(unknown),
        date: rfc3339_utc(crate::output::unix_now()),
        iperf3,
        loadavg: std::fs::read_to_string("/proc/loadavg")
            .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| unknown()),
    }
}

/// Peak RSS of one watched process over a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RssPeak {
    /// What the process is (`n1`, `n2`, ...).
    pub name: String,
    pub pid: u32,
    /// At the start of the run.
    pub start_kib: Option<u64>,
    /// Highest sample during the run.
    pub peak_kib: Option<u64>,
}

/// One measured row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub iperf: IperfResult,
    /// The `-P N` run, when asked for.
    pub iperf_parallel: Option<IperfResult>,
    /// CPU of the busiest watched process over an idle window after the runs, in percent of
    /// one core (lab rows).
    pub idle_cpu_pct: Option<f64>,
    pub ping: PingSummary,
    pub rss: Vec<RssPeak>,
    /// How the sending node routes to the receiving pod (`ip -o route get`), when checked.
    pub path: Option<String>,
}

/// One row of the report: figures, or the error that stopped the row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowResult {
    pub row: String,
    pub gbps: Option<f64>,
    pub rtt_median_ms: Option<f64>,
    /// `gbps` divided by the kernel row's.
    pub gbps_vs_kernel: Option<f64>,
    /// Gbit/s of the `-P N` run.
    pub gbps_parallel: Option<f64>,
    /// Busiest agent's CPU while idle, percent of one core.
    pub idle_cpu_pct: Option<f64>,
    /// `rtt_median_ms` divided by the kernel row's.
    pub rtt_vs_kernel: Option<f64>,
    pub retransmits: Option<u64>,
    pub pings_sent: Option<u32>,
    pub pings_received: Option<u32>,
    /// Peak RSS of every agent during the row (empty for rows without an agent).
    pub agent_rss: Vec<RssPeak>,
    /// How the sending node routed to the receiving pod, for rows that check it.
    pub path: Option<String>,
    pub error: Option<String>,
}

impl RowResult {
    pub fn new(row: &str, result: anyhow::Result<Measurement>) -> Self {
        let mut r = RowResult {
            row: row.to_string(),
            gbps: None,
            rtt_median_ms: None,
            gbps_vs_kernel: None,
            gbps_parallel: None,
            idle_cpu_pct: None,
            rtt_vs_kernel: None,
            retransmits: None,
            pings_sent: None,
            pings_received: None,
            agent_rss: Vec::new(),
            path: None,
            error: None,
        };
        match result {
            Ok(m) => {
                r.gbps = Some(m.iperf.gbps());
                r.gbps_parallel = m.iperf_parallel.as_ref().map(IperfResult::gbps);
                r.idle_cpu_pct = m.idle_cpu_pct;
                r.rtt_median_ms = m.ping.median_ms();
                r.retransmits = m.iperf.retransmits;
                r.pings_sent = Some(m.ping.transmitted);
                r.pings_received = Some(m.ping.received);
                r.agent_rss = m.rss;
                r.path = m.path;
            }
            Err(e) => r.error = Some(format!("{e:#}")),
        }
        r
    }

    /// Highest peak RSS over the row's agents, in KiB.
    pub fn max_rss_kib(&self) -> Option<u64> {
        self.agent_rss.iter().filter_map(|p| p.peak_kib).max()
    }
}

/// Sets every row's ratios against the row named `kernel` (left empty without one).
pub fn fill_ratios(rows: &mut [RowResult]) {
    let base = rows.iter().find(|r| r.row == RowKind::Kernel.name()).map(|r| (r.gbps, r.rtt_median_ms));
    let Some((Some(bg), Some(br))) = base else { return };
    let ratio = |x: Option<f64>, b: f64| x.filter(|_| b > 0.0).map(|x| x / b);
    for r in rows {
        r.gbps_vs_kernel = ratio(r.gbps, bg);
        r.rtt_vs_kernel = ratio(r.rtt_median_ms, br);
    }
}

/// A bench run: where, how, and every row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub machine: Machine,
    /// The command line that produced this report.
    pub command: String,
    /// The weft-agent binary the lab rows ran.
    pub agent_bin: Option<String>,
    pub seconds: u64,
    pub pings: u32,
    pub ping_interval_s: f64,
    /// Streams of each row's second iperf3 run (0: none).
    pub parallel: u32,
    pub rows: Vec<RowResult>,
}

impl BenchReport {
    pub fn all_ok(&self) -> bool {
        self.rows.iter().all(|r| r.error.is_none())
    }
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.decimals$}"))
}

fn fmt_mib(kib: Option<u64>) -> String {
    // KiB counts stay far below 2^52, where f64 is exact.
    #[allow(clippy::cast_precision_loss)]
    kib.map_or_else(|| "-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

const HEADERS: [&str; 9] =
    ["row", "Gbit/s", "x kernel", "-P N Gbit/s", "RTT ms", "x kernel", "RSS MiB", "idle CPU %", "error"];

/// The cells of every row, in [`HEADERS`] order (errors cut to their first line).
fn cells(rows: &[RowResult]) -> Vec<[String; 9]> {
    rows.iter()
        .map(|r| {
            [
                r.row.clone(),
                fmt_opt(r.gbps, 2),
                fmt_opt(r.gbps_vs_kernel, 2),
                fmt_opt(r.gbps_parallel, 2),
                fmt_opt(r.rtt_median_ms, 3),
                fmt_opt(r.rtt_vs_kernel, 2),
                fmt_mib(r.max_rss_kib()),
                fmt_opt(r.idle_cpu_pct, 1),
                r.error.as_deref().map(first_line).unwrap_or("").to_string(),
            ]
        })
        .collect()
}

/// The human table: the row name left-aligned, figures right-aligned, a failed row's error
/// (first line) in the last column.
pub fn render_table(rows: &[RowResult]) -> String {
    let cells = cells(rows);
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            match i {
                0 | 8 => s.push_str(&format!("{c:<w$}  ")),
                _ => s.push_str(&format!("{c:>w$}  ")),
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let head: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
    let mut out = line(&head);
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

/// The full human report: the table, then every failed row's whole error.
pub fn render(report: &BenchReport) -> String {
    let m = &report.machine;
    let mut out = format!(
        "{} cores, {}, Linux {}, {} (load {}); iperf3 1 TCP stream {} s, ping median of {} every {} s\n\n",
        m.nproc, m.cpu_model, m.kernel, m.date, m.loadavg, report.seconds, report.pings, report.ping_interval_s
    );
    out.push_str(&render_table(&report.rows));
    let targets = render_targets(&report.rows);
    if !targets.is_empty() {
        out.push('\n');
        out.push_str(&targets);
    }
    for r in report.rows.iter().filter(|r| r.error.is_some()) {
        out.push_str(&format!("\n{} failed: {}\n", r.row, r.error.as_deref().unwrap_or("")));
    }
    out
}

/// One comparison of the quic row with another row of the same run.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub what: String,
    /// The measured ratio or difference.
    pub value: f64,
    pub met: bool,
}

/// The quic row against the others of the same run, as docs/BENCHMARKS.md states the goals:
/// ≥ 2 × quincy, ≥ 5 × the better WireGuard, ≥ 0.6 × quinn-raw, RTT ≤ the best userspace
/// peer's, `-P N` ≥ one stream. Comparisons whose rows are missing or failed are left out.
pub fn targets(rows: &[RowResult]) -> Vec<Target> {
    let get = |name: &str| rows.iter().find(|r| r.row == name && r.error.is_none());
    let Some(quic) = get(RowKind::Quic.name()) else { return Vec::new() };
    let Some(q) = quic.gbps else { return Vec::new() };
    let mut out = Vec::new();
    let mut ratio = |what: String, other: Option<f64>, at_least: f64| {
        if let Some(o) = other.filter(|o| *o > 0.0) {
            out.push(Target { what, value: q / o, met: q / o >= at_least });
        }
    };
    ratio("quic / quincy >= 2".into(), get(Peer::Quincy.name()).and_then(|r| r.gbps), 2.0);
    let wg = [Peer::WireguardGo, Peer::Boringtun].iter().filter_map(|p| get(p.name())?.gbps).max_by(f64::total_cmp);
    ratio("quic / best WireGuard >= 5".into(), wg, 5.0);
    ratio("quic / quinn-raw >= 0.6".into(), get(RowKind::QuinnRaw.name()).and_then(|r| r.gbps), 0.6);
    if let Some(p) = quic.gbps_parallel.filter(|_| q > 0.0) {
        out.push(Target { what: "quic -P N / quic 1 stream >= 1".into(), value: p / q, met: p >= q });
    }
    if let Some(rtt) = quic.rtt_median_ms {
        let best = Peer::ALL.iter().filter_map(|p| get(p.name())?.rtt_median_ms).min_by(f64::total_cmp);
        if let Some(b) = best {
            out.push(Target { what: "quic RTT - best peer RTT <= 0 ms".into(), value: rtt - b, met: rtt <= b });
        }
    }
    out
}

/// The targets as lines (`met`/`NOT met`), empty without a quic row.
pub fn render_targets(rows: &[RowResult]) -> String {
    targets(rows)
        .iter()
        .map(|t| format!("target {}: {:.2} {}\n", t.what, t.value, if t.met { "met" } else { "NOT met" }))
        .collect()
}

/// A Markdown section for docs/BENCHMARKS.md or a release note.
pub fn render_markdown(report: &BenchReport) -> String {
    let m = &report.machine;
    let mut out = format!(
        "Measured {} on {} cores ({}), Linux {}, {}, load average {} at the start, with:\n\n```sh\n{}\n```\n\n",
        m.date, m.nproc, m.cpu_model, m.kernel, m.iperf3, m.loadavg, report.command
    );
    out.push_str(&format!(
        "| row | Gbit/s | × kernel | -P {} Gbit/s | RTT median ms | × kernel | RSS peak MiB | idle CPU % |\n",
        report.parallel
    ));
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (r, c) in report.rows.iter().zip(cells(&report.rows)) {
        if r.error.is_some() {
            out.push_str(&format!("| {} | failed: {} | | | | | | |\n", c[0], c[8].replace('|', "\\|")));
        } else {
            out.push_str(&format!("| {} |\n", c[..8].join(" | ")));
        }
    }
    let targets = render_targets(&report.rows);
    if !targets.is_empty() {
        out.push('\n');
        out.push_str(&targets);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Effects: processes with timeouts, iperf3, ping, RSS sampling.

/// Runs `cmd` (stdin from `input`, or none), collecting stdout and stderr, and kills it when it
/// takes longer than `timeout`. A non-zero exit is not an error here; the caller decides.
pub fn run_timeout(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration, what: &str) -> anyhow::Result<Output> {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("{what}: starting {cmd:?}"))?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(data).with_context(|| format!("{what}: writing its input"))?;
    }
    collect_timeout(&mut child, timeout, what)
}

/// Waits for `child` (spawned with piped stdout and stderr) to exit, reading both pipes
/// meanwhile so a chatty child cannot block on them; kills it after `timeout`.
pub fn collect_timeout(child: &mut Child, timeout: Duration, what: &str) -> anyhow::Result<Output> {
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    std::thread::scope(|s| {
        let o = s.spawn(move || read_all(out.as_mut()));
        let e = s.spawn(move || read_all(err.as_mut()));
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Ok(st),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(anyhow::anyhow!("{what}: no result within {} s, killed", timeout.as_secs_f64()));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => break Err(anyhow::anyhow!("{what}: waiting: {e}")),
            }
        };
        let stdout = o.join().unwrap_or_default();
        let stderr = e.join().unwrap_or_default();
        Ok(Output { status: status?, stdout, stderr })
    })
}

fn read_all(r: Option<&mut impl Read>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(r) = r {
        let _ = r.read_to_end(&mut buf);
    }
    buf
}

fn one_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An `iperf3 -s -1` in a namespace, killed (if still there) when dropped.
#[derive(Debug)]
pub struct IperfServer {
    child: Child,
    ns: String,
}

impl IperfServer {
    /// Starts the server in `ns` and waits until it listens on `port`.
    pub fn start(ns: &str, port: u16, timeout: Duration) -> anyhow::Result<IperfServer> {
        let mut cmd = netns::command_in(ns, "iperf3")?;
        netns::die_with_parent(&mut cmd);
        cmd.args(["-s", "-1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().with_context(|| format!("starting iperf3 -s in {ns}"))?;
        let mut server = IperfServer { child, ns: ns.to_string() };
        let pid = server.child.id();
        let deadline = Instant::now() + timeout;
        loop {
            // /proc/<pid>/net shows the namespace of that process: the pod's.
            let listening = ["tcp", "tcp6"].iter().any(|f| {
                std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).is_ok_and(|t| tcp_listening(&t, port))
            });
            if listening {
                return Ok(server);
            }
            if let Ok(Some(st)) = server.child.try_wait() {
                let err = read_all(server.child.stderr.as_mut());
                anyhow::bail!("iperf3 -s in {ns} exited ({st}) before listening: {}", one_line(&err));
            }
            if Instant::now() >= deadline {
                anyhow::bail!("iperf3 -s in {ns} not listening on port {port} after {} s", timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        if let Err(e) = self.child.wait() {
            eprintln!("bench: waiting for iperf3 -s in {}: {e}", self.ns);
        }
    }
}

/// One single-stream TCP iperf3 run of `seconds` from `client_ns` to a server started in
/// `server_ns` for it, reaching it at `server_ip`.
pub fn iperf_tcp(client_ns: &str, server_ns: &str, server_ip: Ipv4Addr, seconds: u64) -> anyhow::Result<IperfResult> {
    iperf_tcp_streams(client_ns, server_ns, server_ip, seconds, 1)
}

/// Like [`iperf_tcp`] with `streams` parallel TCP streams (`-P`).
pub fn iperf_tcp_streams(
    client_ns: &str,
    server_ns: &str,
    server_ip: Ipv4Addr,
    seconds: u64,
    streams: u32,
) -> anyhow::Result<IperfResult> {
    let _server = IperfServer::start(server_ns, IPERF_PORT, LISTEN_TIMEOUT)?;
    let mut cmd = netns::command_in(client_ns, "iperf3")?;
    netns::die_with_parent(&mut cmd);
    cmd.args(["-c", &server_ip.to_string(), "-p", &IPERF_PORT.to_string(), "-t", &seconds.to_string()]);
    if streams > 1 {
        cmd.args(["-P", &streams.to_string()]);
    }
    cmd.args(["--connect-timeout", "5000", "-J"]);
    let what = format!("iperf3 -c {server_ip} in {client_ns}");
    let out = run_timeout(&mut cmd, None, Duration::from_secs(seconds + 30), &what)?;
    let text = String::from_utf8_lossy(&out.stdout);
    match parse_iperf_json(&text) {
        Ok(r) if out.status.success() => Ok(r),
        Ok(_) => anyhow::bail!("{what} failed ({}): {}", out.status, one_line(&out.stderr)),
        Err(e) => anyhow::bail!("{what} ({}): {e} {}", out.status, one_line(&out.stderr)),
    }
}

/// `count` pings from `ns` to `ip`, [`PING_INTERVAL_S`] apart. An error when none came back.
pub fn ping(ns: &str, ip: Ipv4Addr, count: u32) -> anyhow::Result<PingSummary> {
    let deadline_s = (f64::from(count) * PING_INTERVAL_S).ceil() + 5.0;
    let mut cmd = netns::command_in(ns, "ping")?;
    netns::die_with_parent(&mut cmd);
    cmd.args(["-n", "-c", &count.to_string(), "-i", &PING_INTERVAL_S.to_string(), "-W", "1"]).args([
        "-w",
        &format!("{deadline_s}"),
        &ip.to_string(),
    ]);
    let what = format!("ping {ip} in {ns}");
    let out = run_timeout(&mut cmd, None, Duration::from_secs_f64(deadline_s + 10.0), &what)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let s = parse_ping(&text).map_err(|e| anyhow::anyhow!("{what} ({}): {e} {}", out.status, one_line(&out.stderr)))?;
    if s.received == 0 || s.times_ms.is_empty() {
        anyhow::bail!("{what}: no replies ({} sent) {}", s.transmitted, one_line(&out.stderr));
    }
    Ok(s)
}

/// `ip -o route get IP` in namespace `ns` (one line).
pub fn route_get(ns: &str, ip: Ipv4Addr) -> anyhow::Result<String> {
    let what = format!("ip -n {ns} route get {ip}");
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns, "-o", "route", "get", &ip.to_string()]);
    let out = run_timeout(&mut cmd, None, Duration::from_secs(10), &what)?;
    if !out.status.success() {
        anyhow::bail!("{what} failed ({}): {}", out.status, one_line(&out.stderr));
    }
    Ok(one_line(&out.stdout))
}

/// Pings `ip` from `ns` once a second until a reply comes, for at most `timeout`.
pub fn wait_reachable(ns: &str, ip: Ipv4Addr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut cmd = netns::command_in(ns, "ping")?;
        netns::die_with_parent(&mut cmd);
        cmd.args(["-n", "-c", "1", "-W", "1", &ip.to_string()]);
        let out = run_timeout(&mut cmd, None, Duration::from_secs(5), &format!("ping {ip} in {ns}"))?;
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "{ip} not reachable from {ns} within {} s: {}",
                timeout.as_secs(),
                one_line(&[out.stdout, out.stderr].concat())
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `f` while sampling the RSS of `procs` (name, pid) every `every`; returns `f`'s result
/// and each process's start and peak RSS.
pub fn with_rss_sampling<T>(procs: &[(String, u32)], every: Duration, f: impl FnOnce() -> T) -> (T, Vec<RssPeak>) {
    let mut peaks: Vec<RssPeak> = procs
        .iter()
        .map(|(name, pid)| {
            let now = vm_rss_kib(*pid);
            RssPeak { name: name.clone(), pid: *pid, start_kib: now, peak_kib: now }
        })
        .collect();
    if procs.is_empty() {
        return (f(), peaks);
    }
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        let (stop, mut local) = (&stop, peaks.clone());
        let sampler = s.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for p in &mut local {
                    if let Some(k) = vm_rss_kib(p.pid) {
                        p.peak_kib = Some(p.peak_kib.map_or(k, |m| m.max(k)));
                    }
                }
                std::thread::sleep(every);
            }
            local
        });
        let r = f();
        stop.store(true, Ordering::Relaxed);
        if let Ok(local) = sampler.join() {
            peaks = local;
        }
        r
    });
    (result, peaks)
}

/// Where a row's traffic goes: from a pod to another pod's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub client_ns: String,
    pub server_ns: String,
    pub server_ip: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasureOpts {
    pub seconds: u64,
    pub pings: u32,
    /// Streams of a second iperf3 run (`-P N`); 0 or 1: none.
    pub parallel: u32,
}

/// One row's measurement: wait until the server pod answers, then the iperf3 run and the pings,
/// while sampling the RSS of `watch` (name, pid).
pub fn measure(ep: &Endpoints, opts: MeasureOpts, watch: &[(String, u32)]) -> anyhow::Result<Measurement> {
    wait_reachable(&ep.client_ns, ep.server_ip, REACH_TIMEOUT)?;
    let (res, rss) = with_rss_sampling(watch, RSS_EVERY, || -> anyhow::Result<_> {
        let iperf = iperf_tcp(&ep.client_ns, &ep.server_ns, ep.server_ip, opts.seconds)?;
        let parallel = match opts.parallel {
            0 | 1 => None,
            n => Some(iperf_tcp_streams(&ep.client_ns, &ep.server_ns, ep.server_ip, opts.seconds, n)?),
        };
        let ping = ping(&ep.client_ns, ep.server_ip, opts.pings)?;
        Ok((iperf, parallel, ping))
    });
    let (iperf, iperf_parallel, ping) = res?;
    Ok(Measurement { iperf, iperf_parallel, idle_cpu_pct: None, ping, rss, path: None })
}

/// How long watched processes are left idle to measure their CPU.
pub const IDLE_WINDOW: Duration = Duration::from_secs(5);

/// CPU of the busiest of `pids` over `window` with no traffic, in percent of one core.
pub fn idle_cpu_pct(pids: &[u32], window: Duration) -> Option<f64> {
    super::scale::cpu_pct_over(pids, window).into_iter().max_by(f64::total_cmp)
}

// ---------------------------------------------------------------------------------------------
// The kernel baseline: two hosts and two pods like shared/bench/baseline.sh.

/// Two hosts on one underlay bridge, each with a pod behind a bridge, as in
/// shared/bench/baseline.sh: namespaces `<prefix>ku` (bridge `br-u`), `<prefix>kh1`/`kh2`
/// (hosts, `eth0` 192.168.100.i/24, forwarding, bridge `cni0` 10.244.i.1/24) and
/// `<prefix>kc1`/`kc2` (pods, `eth0` 10.244.i.2/24, default via 10.244.i.1). No routes between
/// the pod subnets until [`HostPair::route_via_underlay`] (other rows add a tunnel instead).
/// Every namespace is removed when this is dropped, also after a failed `up`.
#[derive(Debug)]
pub struct HostPair {
    prefix: String,
    made: Vec<String>,
}

impl HostPair {
    pub const UNDERLAY_NET: [u8; 3] = [192, 168, 100];

    /// Builds the pair in namespaces named `<prefix>k...`; refuses if any already exists.
    pub fn up(prefix: &str) -> anyhow::Result<HostPair> {
        let mut pair = HostPair { prefix: prefix.to_string(), made: Vec::new() };
        let all = [pair.underlay_ns(), pair.host_ns(1), pair.host_ns(2), pair.pod_ns(1), pair.pod_ns(2)];
        let existing = netns::list()?;
        if let Some(ns) = all.iter().find(|n| existing.contains(n)) {
            anyhow::bail!("namespace {ns} already exists (another bench running, or a crashed one: weftctl lab down)");
        }
        for ns in &all {
            // Recorded once made: a name that turned out to be taken is never removed.
            plumbing::add_netns(ns)?;
            pair.made.push(ns.clone());
        }
        let u = pair.underlay_ns();
        batch(&u, &["link set lo up".into(), "link add br-u type bridge".into(), "link set br-u up".into()])?;
        for i in 1..=2 {
            let (h, c) = (pair.host_ns(i), pair.pod_ns(i));
            batch(
                &u,
                &[format!("link add p{i} type veth peer name eth0 netns {h}"), format!("link set p{i} master br-u up")],
            )?;
            batch(
                &h,
                &[
                    format!("addr add {}/24 dev eth0", Self::underlay_ip(i)),
                    "link set eth0 up".into(),
                    "link set lo up".into(),
                    "link add cni0 type bridge".into(),
                    format!("addr add {}/24 dev cni0", Self::gateway(i)),
                    "link set cni0 up".into(),
                    format!("link add vc type veth peer name eth0 netns {c}"),
                    "link set vc master cni0 up".into(),
                ],
            )?;
            netns::write_sysctl(&h, "net/ipv4/ip_forward", "1")?;
            batch(
                &c,
                &[
                    format!("addr add {}/24 dev eth0", Self::pod_ip(i)),
                    "link set eth0 up".into(),
                    "link set lo up".into(),
                    format!("route add default via {}", Self::gateway(i)),
                ],
            )?;
        }
        Ok(pair)
    }

    /// Plain routes: each host reaches the other's pod subnet via the other's underlay address.
    pub fn route_via_underlay(&self) -> anyhow::Result<()> {
        for (i, j) in [(1, 2), (2, 1)] {
            batch(&self.host_ns(i), &[format!("route add {} via {}", Self::pod_subnet(j), Self::underlay_ip(j))])?;
        }
        Ok(())
    }

    pub fn underlay_ns(&self) -> String {
        format!("{}ku", self.prefix)
    }

    pub fn host_ns(&self, i: usize) -> String {
        format!("{}kh{i}", self.prefix)
    }

    pub fn pod_ns(&self, i: usize) -> String {
        format!("{}kc{i}", self.prefix)
    }

    /// 192.168.100.i
    pub fn underlay_ip(i: usize) -> Ipv4Addr {
        let [a, b, c] = Self::UNDERLAY_NET;
        Ipv4Addr::new(a, b, c, octet(i))
    }

    /// 10.244.i.1
    pub fn gateway(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, octet(i), 1)
    }

    /// 10.244.i.2
    pub fn pod_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, octet(i), 2)
    }

    /// 10.244.i.0/24
    pub fn pod_subnet(i: usize) -> String {
        format!("10.244.{}.0/24", octet(i))
    }

    /// From pod 1 to pod 2.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints { client_ns: self.pod_ns(1), server_ns: self.pod_ns(2), server_ip: Self::pod_ip(2) }
    }
}

fn octet(i: usize) -> u8 {
    u8::try_from(i).unwrap_or(u8::MAX)
}

impl Drop for HostPair {
    fn drop(&mut self) {
        // Pods first, then hosts, then the underlay (the kernel does not mind; it reads well).
        for ns in self.made.iter().rev() {
            if let Err(e) = netns::remove(ns) {
                eprintln!("bench: {e}");
            }
        }
    }
}

/// `ip -n NS -batch -` bounded by a timeout; the first failing line is reported.
pub(crate) fn batch(ns: &str, lines: &[String]) -> anyhow::Result<()> {
    let input = lines.join("\n") + "\n";
    let what = format!("ip -n {ns} -batch ({})", lines.first().map_or("", String::as_str));
    let out = run_timeout(
        Command::new("ip").args(["-n", ns, "-batch", "-"]),
        Some(input.as_bytes()),
        Duration::from_secs(20),
        &what,
    )?;
    if !out.status.success() {
        anyhow::bail!("{what} failed ({}): {}", out.status, one_line(&out.stderr));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rows and the whole bench.

/// The kernel row: a [`HostPair`] with plain routes, no agent.
pub fn bench_kernel(names: &LabNames, opts: MeasureOpts) -> anyhow::Result<Measurement> {
    let pair = HostPair::up(&names.prefix())?;
    pair.route_via_underlay()?;
    measure(&pair.endpoints(), opts, &[])
}

/// A lab row: brings up `spec` (2 nodes with at least 1 pod each), measures n1/p1 -> n2/p1 with
/// both agents' RSS sampled, and tears the lab down (also on failure).
pub fn bench_lab(spec: LabSpec, opts: MeasureOpts, ready_timeout: Duration) -> anyhow::Result<Measurement> {
    anyhow::ensure!(spec.nodes >= 2 && spec.pods >= 1, "a bench lab needs 2 nodes with a pod each");
    let backend = spec.backend;
    let lab = Lab::up(spec)?;
    let status = lab.wait_ready(2, ready_timeout)?;
    let pod = LabNames::pod_name(1);
    let ip = status
        .pods
        .iter()
        .find(|p| p.name == pod)
        .map(|p| p.ip)
        .with_context(|| format!("agent of n2 reports no pod {pod}"))?;
    let watch: Vec<(String, u32)> =
        (1..=2).filter_map(|i| lab.agent_pid(i).map(|pid| (LabNames::node_name(i), pid))).collect();
    anyhow::ensure!(watch.len() == 2, "an agent of the lab is not running");
    let ep = Endpoints { client_ns: lab.pod_ns(1, 1), server_ns: lab.pod_ns(2, 1), server_ip: ip };
    // The pods must talk over the backend under test, not whatever an agent that does not know
    // it yet falls back to: check n1's route to the pod once it answers.
    let checked = wait_reachable(&ep.client_ns, ip, REACH_TIMEOUT)
        .and_then(|()| route_get(&lab.node_ns(1), ip))
        .and_then(|path| check_path(backend, &path, lab.node_ip(2)).map_err(anyhow::Error::msg).map(|()| path));
    let m = checked.and_then(|path| {
        let m = measure(&ep, opts, &watch)?;
        let pids: Vec<u32> = watch.iter().map(|w| w.1).collect();
        Ok(Measurement { path: Some(path), idle_cpu_pct: idle_cpu_pct(&pids, IDLE_WINDOW), ..m })
    });
    let report = lab.down();
    for e in report.errors.iter().chain(&report.warnings) {
        eprintln!("bench: lab down: {e}");
    }
    m
}

/// The quinn-raw row: one QUIC connection's datagram throughput between the two hosts. It has
/// no TCP and no ping: the RTT column stays empty; RSS is the sender's and receiver's.
pub fn bench_quinn_raw(names: &LabNames, seconds: u64) -> anyhow::Result<Measurement> {
    let bin = super::bins::resolve(super::quinn_raw::BIN, None, "WEFT_BIN_DIR")?;
    let run = super::quinn_raw::bench(names, &bin, seconds, 1)?;
    Ok(Measurement {
        iperf: IperfResult { bits_per_second: run.received.gbps * 1e9, retransmits: None },
        iperf_parallel: None,
        idle_cpu_pct: None,
        ping: PingSummary { transmitted: 0, received: 0, times_ms: Vec::new() },
        rss: run.rss,
        path: Some(format!(
            "{} datagrams of {} bytes in {:.2} s over {} connection(s)",
            run.received.datagrams, run.received.max_datagram, run.received.seconds, run.received.connections
        )),
    })
}

/// Runs every row of `opts` in order, one at a time; a failed row carries its error and the
/// next row still runs. `progress` gets a line before each row.
pub fn run(opts: &BenchOpts, command: String, mut progress: impl FnMut(&str)) -> anyhow::Result<BenchReport> {
    opts.validate()?;
    let names = LabNames::new(&opts.id)?;
    let taken: Vec<String> = netns::list()?.into_iter().filter(|n| names.owns_ns(n)).collect();
    if !taken.is_empty() || names.dir().exists() {
        anyhow::bail!(
            "lab {id} exists ({} namespace(s) named {}*); pick another --id or remove it with: weftctl lab --id {id} down",
            taken.len(),
            names.prefix(),
            id = opts.id
        );
    }
    let machine = machine_facts();
    let mo = opts.measure_opts();
    let ready = Duration::from_secs(opts.ready_timeout_secs);
    let mut rows = Vec::new();
    let mut agent_bin = None;
    for &kind in &opts.rows {
        progress(&format!("bench: {kind}: {} s iperf3 + {} pings", opts.seconds, opts.pings));
        let started = Instant::now();
        let result = match (kind, kind.backend()) {
            (_, Some(backend)) => {
                let spec = LabSpec {
                    id: opts.id.clone(),
                    nodes: 2,
                    pods: 1,
                    backend,
                    agent_bin: opts.agent_bin.clone(),
                    weftctl_bin: opts.weftctl_bin.clone(),
                    ready_timeout_secs: opts.ready_timeout_secs,
                    ..LabSpec::default()
                };
                if agent_bin.is_none() {
                    agent_bin = super::bins::resolve(super::bins::AGENT, spec.agent_bin.as_deref(), "--agent-bin")
                        .ok()
                        .map(|p| p.display().to_string());
                }
                bench_lab(spec, mo, ready)
            }
            (RowKind::QuinnRaw, None) => bench_quinn_raw(&names, opts.seconds),
            (RowKind::Peer(p), None) => super::peers::bench(p, &names, mo),
            // The kernel row (host-gw and quic always have a backend).
            (_, None) => bench_kernel(&names, mo),
        };
        let r = RowResult::new(kind.name(), result);
        progress(&format!(
            "bench: {kind}: {} ({:.0} s)",
            r.error.as_deref().map_or_else(|| "done".to_string(), |e| format!("failed: {}", first_line(e))),
            started.elapsed().as_secs_f64()
        ));
        rows.push(r);
    }
    fill_ratios(&mut rows);
    Ok(BenchReport {
        machine,
        command,
        agent_bin,
        seconds: opts.seconds,
        pings: opts.pings,
        ping_interval_s: PING_INTERVAL_S,
        parallel: opts.parallel,
        rows,
    })
}

/// `weftctl lab --id ID bench ...`: prints the table (or JSON, or Markdown); exits 1 when a row
/// failed.
pub fn cli(id: &str, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(nodes) = args.scale {
        return super::scale::cli(id, args, nodes);
    }
    let opts = BenchOpts {
        id: id.to_string(),
        seconds: args.seconds,
        pings: args.pings,
        rows: parse_rows(&args.backends, args.with_peers)?,
        parallel: args.parallel,
        agent_bin: args.agent_bin.clone(),
        weftctl_bin: std::env::current_exe().ok(),
        ready_timeout_secs: args.ready_timeout,
    };
    check_peers_installed(&opts.rows)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let report = run(&opts, command, |line| eprintln!("{line}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("encoding JSON")?);
    } else if args.release_note {
        print!("{}", render_markdown(&report));
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.all_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `iperf3 -c 127.0.0.1 -t 2 -i 1 -J` (iperf 3.12) in a namespace of its own; only the
    /// indentation (tabs) was changed.
    const IPERF_SAMPLE: &str = r#"{
  "start": {
    "connected": [{
        "socket": 5,
        "local_host": "127.0.0.1",
        "local_port": 52230,
        "remote_host": "127.0.0.1",
        "remote_port": 5201
      }],
    "version": "iperf 3.12",
    "system_info": "Linux vm 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0 x86_64",
    "timestamp": {
      "time": "Sun, 22 Nov 2026 20:11:58 GMT",
      "timesecs": 1795378318
    },
    "connecting_to": {
      "host": "127.0.0.1",
      "port": 5201
    },
    "cookie": "t3qlc62bhecba4soqalqietm7wvvcmxw3ueb",
    "tcp_mss_default": 32768,
    "target_bitrate": 0,
    "sock_bufsize": 0,
    "sndbuf_actual": 16384,
    "rcvbuf_actual": 131072,
    "test_start": {
      "protocol": "TCP",
      "num_streams": 1,
      "blksize": 131072,
      "omit": 0,
      "duration": 2,
      "bytes": 0,
      "blocks": 0,
      "reverse": 0,
      "tos": 0,
      "target_bitrate": 0
    }
  },
  "intervals": [{
      "streams": [{
          "socket": 5,
          "start": 0,
          "end": 1.02344,
          "seconds": 1.0234400033950806,
          "bytes": 1276641280,
          "bits_per_second": 9979217351.40287,
          "retransmits": 31,
          "snd_cwnd": 785796,
          "snd_wnd": 24953856,
          "rtt": 1753,
          "rttvar": 1301,
          "pmtu": 65535,
          "omitted": false,
          "sender": true
        }],
      "sum": {
        "start": 0,
        "end": 1.02344,
        "seconds": 1.0234400033950806,
        "bytes": 1276641280,
        "bits_per_second": 9979217351.40287,
        "retransmits": 31,
        "omitted": false,
        "sender": true
      }
    }, {
      "streams": [{
          "socket": 5,
          "start": 1.02344,
          "end": 2.00018,
          "seconds": 0.976740002632141,
          "bytes": 1867776000,
          "bits_per_second": 15298040378.947723,
          "retransmits": 27,
          "snd_cwnd": 1178694,
          "snd_wnd": 24953856,
          "rtt": 116,
          "rttvar": 95,
          "pmtu": 65535,
          "omitted": false,
          "sender": true
        }],
      "sum": {
        "start": 1.02344,
        "end": 2.00018,
        "seconds": 0.976740002632141,
        "bytes": 1867776000,
        "bits_per_second": 15298040378.947723,
        "retransmits": 27,
        "omitted": false,
        "sender": true
      }
    }],
  "end": {
    "streams": [{
        "sender": {
          "socket": 5,
          "start": 0,
          "end": 2.00018,
          "seconds": 2.00018,
          "bytes": 3144417280,
          "bits_per_second": 12576537231.649153,
          "retransmits": 58,
          "max_snd_cwnd": 1178694,
          "max_snd_wnd": 24953856,
          "max_rtt": 1753,
          "min_rtt": 116,
          "mean_rtt": 934,
          "sender": true
        },
        "receiver": {
          "socket": 5,
          "start": 0,
          "end": 2.000202,
          "seconds": 2.00018,
          "bytes": 3144417280,
          "bits_per_second": 12576398903.710726,
          "sender": true
        }
      }],
    "sum_sent": {
      "start": 0,
      "end": 2.00018,
      "seconds": 2.00018,
      "bytes": 3144417280,
      "bits_per_second": 12576537231.649153,
      "retransmits": 58,
      "sender": true
    },
    "sum_received": {
      "start": 0,
      "end": 2.000202,
      "seconds": 2.000202,
      "bytes": 3144417280,
      "bits_per_second": 12576398903.710726,
      "sender": true
    },
    "cpu_utilization_percent": {
      "host_total": 63.74483902967264,
      "host_user": 0.057341339809375,
      "host_system": 63.687447740961,
      "remote_total": 50.8486557992063,
      "remote_user": 0.644728435143699,
      "remote_system": 50.203927364062586
    },
    "sender_tcp_congestion": "bbr",
    "receiver_tcp_congestion": "bbr"
  }
}"#;

    #[test]
    fn iperf_json() {
        let r = parse_iperf_json(IPERF_SAMPLE).expect("parse");
        assert_eq!(r.bits_per_second, 12576398903.710726);
        assert_eq!(r.retransmits, Some(58));
        assert!((r.gbps() - 12.5764).abs() < 1e-3);
        let e = parse_iperf_json(
            r#"{"start":{"connected":[]},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#,
        )
        .expect_err("error");
        assert_eq!(e, "iperf3: unable to connect to server: Connection refused");
        assert!(parse_iperf_json("").expect_err("empty").starts_with("iperf3 output is not JSON"));
        assert_eq!(
            parse_iperf_json(r#"{"end":{"sum_sent":{}}}"#).expect_err("missing"),
            "iperf3 output has no end.sum_received.bits_per_second"
        );
        let r = parse_iperf_json(r#"{"end":{"sum_received":{"bits_per_second":5e9}}}"#).expect("udp-like");
        assert_eq!(r, IperfResult { bits_per_second: 5e9, retransmits: None });
    }

    #[test]
    fn ping_output() {
        let text = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n\
            64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.240 ms\n\
            64 bytes from 10.244.2.2: icmp_seq=2 ttl=62 time=0.031 ms\n\
            64 bytes from 10.244.2.2: icmp_seq=3 ttl=62 time=0.040 ms\n\
            64 bytes from 10.244.2.2: icmp_seq=4 ttl=62 time=1.05 ms\n\
            \n--- 10.244.2.2 ping statistics ---\n\
            5 packets transmitted, 4 received, 20% packet loss, time 211ms\n\
            rtt min/avg/max/mdev = 0.031/0.340/1.050/0.412 ms\n";
        let s = parse_ping(text).expect("parse");
        assert_eq!((s.transmitted, s.received), (5, 4));
        assert_eq!(s.times_ms, vec![0.240, 0.031, 0.040, 1.05]);
        assert_eq!(s.median_ms(), Some((0.040 + 0.240) / 2.0));
        let lost = "PING 10.9.9.9 (10.9.9.9) 56(84) bytes of data.\n\n--- 10.9.9.9 ping statistics ---\n\
            3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2046ms\n";
        let s = parse_ping(lost).expect("parse");
        assert_eq!((s.transmitted, s.received, s.median_ms()), (3, 0, None));
        assert!(parse_ping("ping: connect: Network is unreachable\n").is_err());
    }

    #[test]
    fn paths() {
        let peer = Ipv4Addr::new(172, 30, 0, 12);
        let gw = "10.244.2.2 via 172.30.0.12 dev eth0 src 172.30.0.11 uid 0 \\    cache";
        assert_eq!(check_path(Backend::HostGw, gw, peer), Ok(()));
        let e = check_path(Backend::Quic, gw, peer).expect_err("not quic");
        assert!(e.contains("over the underlay instead of through the quic tun"), "{e}");
        let tun = "10.244.2.2 dev weft-tun0 src 10.244.1.1 uid 0 \\    cache";
        assert_eq!(check_path(Backend::Quic, tun, peer), Ok(()));
        assert!(check_path(Backend::HostGw, tun, peer).expect_err("not host-gw").contains("not via 172.30.0.12"));
        let default = "10.244.2.2 via 172.30.0.1 dev eth0 src 172.30.0.11 uid 0";
        assert!(check_path(Backend::Quic, default, peer).is_err());
        assert!(check_path(Backend::HostGw, default, peer).is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn proc_files() {
        let status = "Name:\tweft-agent\nVmPeak:\t  900000 kB\nVmRSS:\t   12345 kB\nRssAnon:\t 8000 kB\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
        assert!(vm_rss_kib(std::process::id()).is_some_and(|k| k > 0));
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            \x20  0: 00000000:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
            \x20  1: 0100007F:CB46 0100007F:1451 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
        assert!(tcp_listening(tcp, 5201));
        assert!(!tcp_listening(tcp, 52038), "an established socket is not listening");
        let tcp6 = "  sl  local_address                         remote_address                        st\n\
            \x20  0: 00000000000000000000000000000000:1451 00000000000000000000000000000000:0000 0A 0\n";
        assert!(tcp_listening(tcp6, 5201));
        assert!(!tcp_listening(tcp6, 5202));
        let cpu = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor @ 2.80GHz\n";
        assert_eq!(parse_cpu_model(cpu).as_deref(), Some("Intel(R) Xeon(R) Processor @ 2.80GHz"));
        assert_eq!(parse_cpu_model("processor\t: 0\n"), None);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_795_378_318), "2026-11-22T20:11:58Z");
        assert_eq!(rfc3339_utc(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn rows_flag() {
        let k = RowKind::Kernel;
        assert_eq!(parse_rows("host-gw,quic", false).expect("ok"), vec![k, RowKind::HostGw, RowKind::Quic]);
        assert_eq!(parse_rows("quic, kernel,quic", false).expect("ok"), vec![k, RowKind::Quic]);
        assert_eq!(parse_rows("", false).expect("ok"), vec![k]);
        assert_eq!(
            parse_rows("quinn-raw,boringtun", false).expect("ok"),
            vec![k, RowKind::QuinnRaw, RowKind::Peer(Peer::Boringtun)]
        );
        let all = parse_rows("quic,boringtun", true).expect("ok");
        assert_eq!(
            all,
            vec![
                k,
                RowKind::Quic,
                RowKind::Peer(Peer::Boringtun),
                RowKind::Peer(Peer::Quincy),
                RowKind::Peer(Peer::WireguardGo)
            ]
        );
        let e = parse_rows("host-gw,vxlan", false).expect_err("bad");
        assert_eq!(
            e.to_string(),
            "--backends: expected one of kernel, host-gw, quic, quinn-raw, quincy, wireguard-go, boringtun, found \"vxlan\""
        );
    }

    #[test]
    fn options_are_checked() {
        let ok = BenchOpts {
            id: "b1".into(),
            seconds: 10,
            pings: 50,
            rows: vec![RowKind::Kernel],
            parallel: 4,
            agent_bin: None,
            weftctl_bin: None,
            ready_timeout_secs: 60,
        };
        assert!(ok.validate().is_ok());
        let e = BenchOpts { seconds: 0, ..ok.clone() }.validate().expect_err("bad");
        assert_eq!(e.to_string(), "--seconds: expected 1 to 600, found 0");
        let e = BenchOpts { pings: 0, ..ok.clone() }.validate().expect_err("bad");
        assert_eq!(e.to_string(), "--pings: expected 1 to 10000, found 0");
        let e = BenchOpts { id: "B".into(), ..ok }.validate().expect_err("bad");
        assert!(e.to_string().starts_with("--id: "), "{e}");
    }

    fn measured(gbps: f64, rtt: f64, rss: &[u64]) -> anyhow::Result<Measurement> {
        Ok(Measurement {
            iperf: IperfResult { bits_per_second: gbps * 1e9, retransmits: Some(3) },
            iperf_parallel: Some(IperfResult { bits_per_second: gbps * 1.1e9, retransmits: Some(4) }),
            idle_cpu_pct: Some(0.2),
            ping: PingSummary { transmitted: 3, received: 3, times_ms: vec![rtt, rtt, rtt * 2.0] },
            rss: rss
                .iter()
                .enumerate()
                .map(|(i, &k)| RssPeak {
                    name: format!("n{}", i + 1),
                    pid: 100,
                    start_kib: Some(k / 2),
                    peak_kib: Some(k),
                })
                .collect(),
            path: None,
        })
    }

    fn sample_rows() -> Vec<RowResult> {
        let mut rows = vec![
            RowResult::new("kernel", measured(20.0, 0.040, &[])),
            RowResult::new("host-gw", measured(19.0, 0.050, &[10_240, 12_800])),
            RowResult::new("quic", Err(anyhow::anyhow!("building lab b1: agent of n1 exited\nlast lines of log"))),
        ];
        fill_ratios(&mut rows);
        rows
    }

    #[test]
    fn ratios() {
        let rows = sample_rows();
        assert_eq!(rows[0].gbps_vs_kernel, Some(1.0));
        assert_eq!(rows[1].gbps_vs_kernel, Some(0.95));
        assert!((rows[1].rtt_vs_kernel.expect("ratio") - 1.25).abs() < 1e-9);
        assert_eq!((rows[2].gbps_vs_kernel, rows[2].rtt_vs_kernel), (None, None));
        assert_eq!(rows[1].max_rss_kib(), Some(12_800));
        let mut no_kernel = vec![RowResult::new("host-gw", measured(19.0, 0.05, &[]))];
        fill_ratios(&mut no_kernel);
        assert_eq!(no_kernel[0].gbps_vs_kernel, None);
    }

    #[test]
    fn table() {
        let t = render_table(&sample_rows());
        let want = "\
row      Gbit/s  x kernel  -P N Gbit/s  RTT ms  x kernel  RSS MiB  idle CPU %  error
kernel    20.00      1.00        22.00   0.040      1.00        -         0.2
host-gw   19.00      0.95        20.90   0.050      1.25     12.5         0.2
quic          -         -            -       -         -        -           -  building lab b1: agent of n1 exited
";
        assert_eq!(t, want, "\n{t}");
        let report = BenchReport {
            machine: Machine {
                nproc: 2,
                kernel: "6.18.44".into(),
                cpu_model: "Xeon".into(),
                date: "2026-11-22T20:11:58Z".into(),
                iperf3: "iperf 3.12".into(),
                loadavg: "0.10 0.20 0.30".into(),
            },
            command: "weftctl lab bench --backends host-gw,quic".into(),
            agent_bin: None,
            seconds: 10,
            pings: 50,
            ping_interval_s: PING_INTERVAL_S,
            parallel: 4,
            rows: sample_rows(),
        };
        assert!(!report.all_ok());
        let full = render(&report);
        assert!(
            full.starts_with("2 cores, Xeon, Linux 6.18.44, 2026-11-22T20:11:58Z (load 0.10 0.20 0.30); iperf3 1 TCP"),
            "{full}"
        );
        assert!(full.ends_with("\nquic failed: building lab b1: agent of n1 exited\nlast lines of log\n"), "{full}");
        let md = render_markdown(&report);
        assert!(md.contains("| host-gw | 19.00 | 0.95 | 20.90 | 0.050 | 1.25 | 12.5 | 0.2 |\n"), "{md}");
        assert!(md.contains("| quic | failed: building lab b1: agent of n1 exited | | | | | | |\n"), "{md}");
        let json: serde_json::Value = serde_json::to_value(&report).expect("json");
        assert_eq!(json["rows"][1]["gbps"], 19.0);
        assert_eq!(json["rows"][1]["agent_rss"][1]["peak_kib"], 12_800);
        assert_eq!(json["machine"]["nproc"], 2);
    }

    #[test]
    fn targets_compare_quic_with_the_other_rows_of_the_run() {
        let mut rows = vec![
            RowResult::new("kernel", measured(10.0, 0.1, &[])),
            RowResult::new("quic", measured(2.0, 0.4, &[])),
            RowResult::new("quinn-raw", measured(2.5, 0.1, &[])),
            RowResult::new("quincy", measured(0.8, 0.9, &[])),
            RowResult::new("wireguard-go", measured(0.25, 0.3, &[])),
            RowResult::new("boringtun", Err(anyhow::anyhow!("down"))),
        ];
        rows[1].gbps_parallel = Some(1.9);
        let t = targets(&rows);
        let got: Vec<(&str, String, bool)> =
            t.iter().map(|t| (t.what.as_str(), format!("{:.2}", t.value), t.met)).collect();
        assert_eq!(
            got,
            vec![
                ("quic / quincy >= 2", "2.50".to_string(), true),
                ("quic / best WireGuard >= 5", "8.00".to_string(), true),
                ("quic / quinn-raw >= 0.6", "0.80".to_string(), true),
                ("quic -P N / quic 1 stream >= 1", "0.95".to_string(), false),
                ("quic RTT - best peer RTT <= 0 ms", "0.10".to_string(), false),
            ]
        );
        assert!(render_targets(&rows).contains("target quic RTT - best peer RTT <= 0 ms: 0.10 NOT met\n"));
        // Without a quic row (or with a failed one) there is nothing to compare.
        assert!(targets(&rows[2..]).is_empty());
    }

    #[test]
    fn commands_time_out_and_collect_output() {
        let out = run_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            None,
            Duration::from_secs(5),
            "sh",
        )
        .expect("ran");
        assert_eq!(
            (out.status.code(), out.stdout.as_slice(), out.stderr.as_slice()),
            (Some(3), &b"out\n"[..], &b"err\n"[..])
        );
        let out = run_timeout(&mut Command::new("cat"), Some(b"fed"), Duration::from_secs(5), "cat").expect("ran");
        assert_eq!(out.stdout, b"fed");
        let started = Instant::now();
        let e =
            run_timeout(Command::new("sleep").arg("10"), None, Duration::from_millis(200), "sleep").expect_err("slow");
        assert_eq!(e.to_string(), "sleep: no result within 0.2 s, killed");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn rss_sampling_sees_this_process() {
        let me = std::process::id();
        let (v, peaks) = with_rss_sampling(&[("self".into(), me)], Duration::from_millis(5), || {
            std::thread::sleep(Duration::from_millis(30));
            7
        });
        assert_eq!(v, 7);
        assert_eq!(peaks.len(), 1);
        assert!(peaks[0].peak_kib >= peaks[0].start_kib && peaks[0].peak_kib.is_some(), "{peaks:?}");
        let (_, none) = with_rss_sampling(&[], RSS_EVERY, || ());
        assert!(none.is_empty());
    }

    #[test]
    fn host_pair_addresses() {
        assert_eq!(HostPair::underlay_ip(2), Ipv4Addr::new(192, 168, 100, 2));
        assert_eq!(HostPair::pod_ip(1), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(HostPair::gateway(2), Ipv4Addr::new(10, 244, 2, 1));
        assert_eq!(HostPair::pod_subnet(2), "10.244.2.0/24");
        let names = LabNames::new("b7").expect("id");
        let pair = HostPair { prefix: names.prefix(), made: Vec::new() };
        assert_eq!(pair.endpoints().client_ns, "weftb7-kc1");
        assert_eq!(pair.host_ns(2), "weftb7-kh2");
        assert!(names.owns_ns(&pair.underlay_ns()), "lab down removes what a crashed bench left");
    }
}
