//! The bench report: machine facts, rows with their figures and ratios, and its renderings
//! (table, targets, Markdown).

use super::parse::*;
use super::rows::*;
use crate::IpFamily;
use serde::{Deserialize, Serialize};
use weft_config::subnet::Family;

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

/// Which end of a row's traffic a watched process serves: host 1 / n1 sends (pod 1 is the
/// iperf3 client), host 2 / n2 receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Sender,
    Receiver,
}

/// One watched process's CPU time (utime + stime, in clock ticks) before and after a run;
/// `None` where it could not be read (the process had exited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickSpan {
    pub side: Side,
    pub before: Option<u64>,
    pub after: Option<u64>,
}

/// The CPU time a row's watched processes spent during its single-stream iperf3 run (the
/// `-P N` run and the pings are not in it), per side, and the bytes that run moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunCpu {
    /// Seconds of CPU of the sender side's processes; `None` without one, or when one of them
    /// could not be read.
    pub sender_s: Option<f64>,
    /// The same for the receiver side.
    pub receiver_s: Option<f64>,
    /// What the receiver got in the run (iperf3's `end.sum_received.bytes`).
    pub bytes: Option<u64>,
}

impl RunCpu {
    /// Each side's CPU over `spans`, whose ticks are `ticks_per_s` a second: the sum of its
    /// processes' after - before. A side with no process, a process not read before or after,
    /// or one whose count went down (another process with the pid) gets `None`.
    pub fn from_ticks(spans: &[TickSpan], ticks_per_s: f64, bytes: Option<u64>) -> RunCpu {
        let side = |side: Side| -> Option<f64> {
            let mine: Vec<&TickSpan> = spans.iter().filter(|s| s.side == side).collect();
            if mine.is_empty() {
                return None;
            }
            let mut ticks: u64 = 0;
            for s in mine {
                ticks = ticks.checked_add(s.after?.checked_sub(s.before?)?)?;
            }
            // Tick counts stay far below 2^52, where f64 is exact.
            #[allow(clippy::cast_precision_loss)]
            Some(ticks as f64 / ticks_per_s)
        };
        RunCpu { sender_s: side(Side::Sender), receiver_s: side(Side::Receiver), bytes }
    }

    pub fn sender_s_per_gb(&self) -> Option<f64> {
        cpu_s_per_gb(self.sender_s, self.bytes)
    }

    pub fn receiver_s_per_gb(&self) -> Option<f64> {
        cpu_s_per_gb(self.receiver_s, self.bytes)
    }
}

/// CPU seconds per gigabyte (10^9 bytes) moved; `None` without either figure or with nothing
/// moved.
pub fn cpu_s_per_gb(cpu_s: Option<f64>, bytes: Option<u64>) -> Option<f64> {
    let bytes = bytes.filter(|b| *b > 0)?;
    // Byte counts of one run stay far below 2^52, where f64 is exact.
    #[allow(clippy::cast_precision_loss)]
    Some(cpu_s? / (bytes as f64 / 1e9))
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
    /// CPU of the watched processes in the single-stream run (rows that watch processes).
    #[serde(default)]
    pub cpu: Option<RunCpu>,
    /// The program a peer row ran and what it says of its version, e.g.
    /// `/usr/bin/wireguard-go (wireguard-go v0.0.20220316)`.
    #[serde(default)]
    pub program: Option<String>,
}

/// One row of the report: figures, or the error that stopped the row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowResult {
    pub row: String,
    /// The address family between the pods: `ipv4` or `ipv6` (reports from before IPv6 rows
    /// have none: IPv4).
    #[serde(default = "ipv4", with = "family_name")]
    pub family: Family,
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
    /// CPU seconds of the sender side's watched processes (agent, tunnel daemon, quinn-raw
    /// sender) per GB moved in the single-stream run.
    #[serde(default)]
    pub sender_cpu_s_per_gb: Option<f64>,
    /// The same for the receiver side.
    #[serde(default)]
    pub receiver_cpu_s_per_gb: Option<f64>,
    /// What those two figures come from.
    #[serde(default)]
    pub cpu: Option<RunCpu>,
    /// The program a peer row ran, with its version (see [`Measurement::program`]).
    #[serde(default)]
    pub program: Option<String>,
    pub error: Option<String>,
}

fn ipv4() -> Family {
    Family::V4
}

/// [`Family`] in the JSON report: `ipv4` or `ipv6`.
mod family_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use weft_config::subnet::Family;

    pub fn serialize<S: Serializer>(f: &Family, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match f {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Family, D::Error> {
        match String::deserialize(d)?.as_str() {
            "ipv4" => Ok(Family::V4),
            "ipv6" => Ok(Family::V6),
            other => Err(serde::de::Error::custom(format!("expected ipv4 or ipv6, found {other:?}"))),
        }
    }
}

impl RowResult {
    /// An IPv4 row (every row before IPv6 rows existed); see [`RowResult::in_family`].
    pub fn new(row: &str, result: anyhow::Result<Measurement>) -> Self {
        Self::in_family(row, Family::V4, result)
    }

    /// A row measured over `family`.
    pub fn in_family(row: &str, family: Family, result: anyhow::Result<Measurement>) -> Self {
        let mut r = RowResult {
            row: row.to_string(),
            family,
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
            sender_cpu_s_per_gb: None,
            receiver_cpu_s_per_gb: None,
            cpu: None,
            program: None,
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
                r.sender_cpu_s_per_gb = m.cpu.as_ref().and_then(RunCpu::sender_s_per_gb);
                r.receiver_cpu_s_per_gb = m.cpu.as_ref().and_then(RunCpu::receiver_s_per_gb);
                r.cpu = m.cpu;
                r.program = m.program;
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

/// Sets every row's ratios against the kernel row of its family (`kernel` for IPv4 rows,
/// `kernel/ipv6` for IPv6 rows; left empty without one).
pub fn fill_ratios(rows: &mut [RowResult]) {
    let base = |family: Family| {
        let name = RowKind::Kernel.name_in(family);
        match rows.iter().find(|r| r.row == name && r.family == family).map(|r| (r.gbps, r.rtt_median_ms)) {
            Some((Some(g), Some(r))) => Some((g, r)),
            _ => None,
        }
    };
    let bases = [(Family::V4, base(Family::V4)), (Family::V6, base(Family::V6))];
    let ratio = |x: Option<f64>, b: f64| x.filter(|_| b > 0.0).map(|x| x / b);
    for r in rows {
        let Some((_, Some((bg, br)))) = bases.iter().find(|(f, _)| *f == r.family) else { continue };
        r.gbps_vs_kernel = ratio(r.gbps, *bg);
        r.rtt_vs_kernel = ratio(r.rtt_median_ms, *br);
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
    /// `--ip-family`: the families between the pods (reports from before it: `v4`).
    #[serde(default)]
    pub ip_family: IpFamily,
    pub rows: Vec<RowResult>,
    /// What the table does not say, such as rows left without an IPv6 twin.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl BenchReport {
    pub fn all_ok(&self) -> bool {
        self.rows.iter().all(|r| r.error.is_none())
    }
}

pub(super) fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.decimals$}"))
}

pub(super) fn fmt_mib(kib: Option<u64>) -> String {
    // KiB counts stay far below 2^52, where f64 is exact.
    #[allow(clippy::cast_precision_loss)]
    kib.map_or_else(|| "-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0))
}

pub(super) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

pub(super) const HEADERS: [&str; 11] = [
    "row",
    "Gbit/s",
    "x kernel",
    "-P N Gbit/s",
    "RTT ms",
    "x kernel",
    "RSS MiB",
    "idle CPU %",
    "snd CPU s/GB",
    "rcv CPU s/GB",
    "error",
];
/// The column of the error in [`HEADERS`]: the last one.
const ERROR: usize = HEADERS.len() - 1;

/// The cells of every row, in [`HEADERS`] order (errors cut to their first line).
pub(super) fn cells(rows: &[RowResult]) -> Vec<[String; HEADERS.len()]> {
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
                fmt_opt(r.sender_cpu_s_per_gb, 2),
                fmt_opt(r.receiver_cpu_s_per_gb, 2),
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
                0 | ERROR => s.push_str(&format!("{c:<w$}  ")),
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
        "{} cores, {}, Linux {}, {} (load {}); iperf3 1 TCP stream {} s, ping median of {} every {} s{}\n\n",
        m.nproc,
        m.cpu_model,
        m.kernel,
        m.date,
        m.loadavg,
        report.seconds,
        report.pings,
        report.ping_interval_s,
        families_text(report.ip_family)
    );
    out.push_str(&render_table(&report.rows));
    out.push_str(&render_programs(&report.rows));
    out.push_str(&render_notes(&report.notes));
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

/// How the first line of a report names the families: nothing for IPv4 alone (as before IPv6
/// rows existed).
fn families_text(ip_family: IpFamily) -> &'static str {
    match ip_family {
        IpFamily::V4 => "",
        IpFamily::V6 => "; pods over IPv6 (rows ROW/ipv6, x kernel against kernel/ipv6)",
        IpFamily::Dual => {
            "; pods over IPv4, then IPv6 in the same topology (rows ROW and ROW/ipv6, \
             x kernel against the kernel row of the same family)"
        }
    }
}

/// The programs the peer rows ran, as lines `program of ROW: ...`, after a blank line; empty
/// when no row says.
fn render_programs(rows: &[RowResult]) -> String {
    let lines: String =
        rows.iter().filter_map(|r| Some(format!("program of {}: {}\n", r.row, r.program.as_deref()?))).collect();
    if lines.is_empty() {
        return lines;
    }
    format!("\n{lines}")
}

/// The notes as lines `note: ...`, after a blank line; empty without notes.
fn render_notes(notes: &[String]) -> String {
    if notes.is_empty() {
        return String::new();
    }
    let lines: String = notes.iter().map(|n| format!("note: {n}\n")).collect();
    format!("\n{lines}")
}

/// One comparison of the quic row with another row of the same run.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub what: String,
    /// The measured ratio or difference.
    pub value: f64,
    pub met: bool,
}

/// The quic row against the others of the same run, as docs/BENCHMARKS.md states the goals
/// (issue 4's, with issue 18's against a current userspace WireGuard): ≥ 2 × quincy, more than
/// the better current WireGuard (wireguard-go with offloads, boringtun) in throughput and less
/// CPU per gigabyte on each side, ≥ 0.8 × quinn-raw, RTT ≤ the best userspace peer's, `-P N` ≥
/// one stream. Comparisons whose rows are missing or failed are left out.
pub fn targets(rows: &[RowResult]) -> Vec<Target> {
    let get = |name: &str| rows.iter().find(|r| r.row == name && r.error.is_none());
    let Some(quic) = get(RowKind::Quic.name()) else { return Vec::new() };
    let Some(q) = quic.gbps else { return Vec::new() };
    // quic over another row's throughput; met from `at_least` (or above 1 when `above`).
    let ratio = |what: &str, other: Option<f64>, at_least: f64, above: bool| {
        other.filter(|o| *o > 0.0).map(|o| Target {
            what: what.into(),
            value: q / o,
            met: if above { q / o > at_least } else { q / o >= at_least },
        })
    };
    let mut out = Vec::new();
    out.extend(ratio("quic / quincy >= 2", get(PeerTunnel::Quincy.name()).and_then(|r| r.gbps), 2.0, false));
    // The current WireGuards; wireguard-go-2022 only keeps older figures comparable.
    let wgs: Vec<&RowResult> =
        [PeerTunnel::WireguardGo, PeerTunnel::Boringtun].iter().filter_map(|p| get(p.name())).collect();
    let wg = wgs.iter().filter_map(|r| r.gbps).max_by(f64::total_cmp);
    out.extend(ratio("quic / best WireGuard > 1", wg, 1.0, true));
    out.extend(ratio("quic / quinn-raw >= 0.8", get(RowKind::QuinnRaw.name()).and_then(|r| r.gbps), 0.8, false));
    type CpuOf = fn(&RowResult) -> Option<f64>;
    let sides: [(&str, CpuOf); 2] = [("sender", |r| r.sender_cpu_s_per_gb), ("receiver", |r| r.receiver_cpu_s_per_gb)];
    for (side, cpu) in sides {
        let best = wgs.iter().filter_map(|r| cpu(r)).filter(|c| *c > 0.0).min_by(f64::total_cmp);
        if let (Some(mine), Some(b)) = (cpu(quic), best) {
            let what = format!("quic {side} CPU/GB / best WireGuard's < 1");
            out.push(Target { what, value: mine / b, met: mine < b });
        }
    }
    if let Some(p) = quic.gbps_parallel.filter(|_| q > 0.0) {
        out.push(Target { what: "quic -P N / quic 1 stream >= 1".into(), value: p / q, met: p >= q });
    }
    if let Some(rtt) = quic.rtt_median_ms {
        let best = PeerTunnel::ALL
            .iter()
            .filter(|p| !p.superseded())
            .filter_map(|p| get(p.name())?.rtt_median_ms)
            .min_by(f64::total_cmp);
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
        "Measured {} on {} cores ({}), Linux {}, {}, load average {} at the start{}, with:\n\n```sh\n{}\n```\n\n",
        m.date,
        m.nproc,
        m.cpu_model,
        m.kernel,
        m.iperf3,
        m.loadavg,
        families_text(report.ip_family).replace(" x kernel", " × kernel"),
        report.command
    );
    out.push_str(&format!(
        "| row | Gbit/s | × kernel | -P {} Gbit/s | RTT median ms | × kernel | RSS peak MiB | idle CPU % \
         | sender CPU s/GB | receiver CPU s/GB |\n",
        report.parallel
    ));
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (r, c) in report.rows.iter().zip(cells(&report.rows)) {
        if r.error.is_some() {
            out.push_str(&format!("| {} | failed: {} | | | | | | | | |\n", c[0], c[ERROR].replace('|', "\\|")));
        } else {
            out.push_str(&format!("| {} |\n", c[..ERROR].join(" | ")));
        }
    }
    out.push_str(&render_programs(&report.rows));
    out.push_str(&render_notes(&report.notes));
    let targets = render_targets(&report.rows);
    if !targets.is_empty() {
        out.push('\n');
        out.push_str(&targets);
    }
    out
}

// ---------------------------------------------------------------------------------------------
