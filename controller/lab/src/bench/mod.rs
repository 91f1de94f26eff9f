//! `weftctl lab bench`: pod-to-pod throughput (one TCP stream of iperf3) and ping RTT between
//! two nodes, for the kernel baseline (plain static routes, no agent anywhere) and for a lab
//! running each backend, one after the other (never two at once).
//!
//! The measurement is split into small reusable parts so that more rows (other tunnels on the
//! same two-host topology) only need to provide [`Endpoints`]:
//! - [`HostPair`]: two hosts and two pods in namespaces, wired like shared/bench/baseline.sh,
//!   removed by its `Drop`;
//! - [`measure`]: reachability check, iperf3 run ([`iperf_tcp`]), ping run ([`ping`]), with the
//!   RSS of the given processes ([`Watched`]) sampled meanwhile ([`with_rss_sampling`]) and their
//!   CPU time per side over the single-stream run ([`RunCpu`]);
//! - [`bench_kernel`], [`bench_lab`]: one row each per address family (`--ip-family`: an
//!   IPv6 twin `ROW/ipv6` measured in the same host pair or dual-stack lab); [`run`]: the
//!   whole table.
//!
//! Every external step is bounded by a timeout ([`run_timeout`]). Everything happens inside
//! namespaces named `weft<id>-...` (so `weftctl lab down --id ID` also removes what a crashed
//! bench left); the root namespace is never touched.

mod args;
mod hosts;
mod measure;
mod parse;
pub mod peers;
pub mod quinn_raw;
mod report;
mod rows;
pub mod scale;

pub use args::*;
pub use hosts::*;
pub use measure::*;
pub use parse::*;
pub use report::*;
pub use rows::*;

use super::names::LabNames;
use super::{netns, IpFamily, LabSpec};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use weft_config::subnet::Family;
use weft_controller::error::UsageError;

/// What [`run`] measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOpts {
    /// Lab id: every namespace is `weft<id>-...`.
    pub id: String,
    pub seconds: u64,
    pub pings: u32,
    pub rows: Vec<RowKind>,
    /// Address families between the pods (see [`plan_rows`]).
    pub ip_family: IpFamily,
    /// Streams of the second iperf3 run (0: none).
    pub parallel: u32,
    pub agent_bin: Option<PathBuf>,
    pub weftctl_bin: Option<PathBuf>,
    pub ready_timeout_secs: u64,
    /// `quic.threads` of the lab agents (`None`: the agent's default).
    pub quic_threads: Option<usize>,
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
    let (planned, notes) = plan_rows(&opts.rows, opts.ip_family);
    let mut rows = Vec::new();
    let mut agent_bin = None;
    for PlannedRow { kind, families } in planned {
        let names_in: Vec<String> = families.iter().map(|&f| kind.name_in(f)).collect();
        let label = names_in.join(" + ");
        progress(&format!("bench: {label}: {} s iperf3 + {} pings", opts.seconds, opts.pings));
        let started = Instant::now();
        let results = match (kind, kind.backend()) {
            (_, Some(backend)) => {
                let spec = LabSpec {
                    id: opts.id.clone(),
                    nodes: 2,
                    pods: 1,
                    backend,
                    agent_bin: opts.agent_bin.clone(),
                    weftctl_bin: opts.weftctl_bin.clone(),
                    ready_timeout_secs: opts.ready_timeout_secs,
                    ip_family: lab_family(&families),
                    quic_threads: opts.quic_threads,
                    ..LabSpec::default()
                };
                if agent_bin.is_none() {
                    agent_bin = super::bins::resolve(super::bins::AGENT, spec.agent_bin.as_deref(), "--agent-bin")
                        .ok()
                        .map(|p| p.display().to_string());
                }
                bench_lab(spec, &families, mo, ready)
            }
            // IPv4 only (plan_rows gives them no other family).
            (RowKind::QuinnRaw, None) => vec![quinn_raw::row(&names, opts.seconds)],
            (RowKind::KernelVxlan, None) => vec![bench_kernel_vxlan(&names, mo)],
            (RowKind::PeerTunnel(p), None) => vec![peers::bench(p, &names, mo)],
            // The kernel row (host-gw and quic always have a backend).
            (_, None) => bench_kernel(&names, &families, mo),
        };
        for ((name, &family), result) in names_in.iter().zip(&families).zip(results) {
            let r = RowResult::in_family(name, family, result);
            progress(&format!(
                "bench: {name}: {} ({:.0} s)",
                r.error.as_deref().map_or_else(|| "done".to_string(), |e| format!("failed: {}", first_line(e))),
                started.elapsed().as_secs_f64()
            ));
            rows.push(r);
        }
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
        ip_family: opts.ip_family,
        rows,
        notes,
    })
}

/// The lab family that holds every one of `families`.
pub fn lab_family(families: &[Family]) -> IpFamily {
    match (families.contains(&Family::V4), families.contains(&Family::V6)) {
        (true, true) => IpFamily::Dual,
        (false, true) => IpFamily::V6,
        _ => IpFamily::V4,
    }
}

/// `weftctl lab --id ID bench ...`: prints the table (or JSON, or Markdown); exits 1 when a row
/// failed.
pub fn cli(id: &str, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(nodes) = args.scale {
        return scale::cli(id, args, nodes);
    }
    let opts = BenchOpts {
        id: id.to_string(),
        seconds: args.seconds,
        pings: args.pings,
        rows: parse_rows(&args.backends, args.with_peers)?,
        ip_family: args.ip_family,
        parallel: args.parallel,
        agent_bin: args.agent_bin.clone(),
        weftctl_bin: std::env::current_exe().ok(),
        ready_timeout_secs: args.ready_timeout,
        quic_threads: args.quic_threads,
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
mod tests;
