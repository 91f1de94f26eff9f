//! Effects of one measurement: processes with timeouts, iperf3, ping, reachability, RSS
//! sampling, and CPU time (over the single-stream run, and idle).

use super::super::netns;
use super::parse::*;
use super::report::*;
use anyhow::Context;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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

pub(super) fn read_all(r: Option<&mut impl Read>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(r) = r {
        let _ = r.read_to_end(&mut buf);
    }
    buf
}

pub(super) fn one_line(bytes: &[u8]) -> String {
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
pub fn iperf_tcp(client_ns: &str, server_ns: &str, server_ip: IpAddr, seconds: u64) -> anyhow::Result<IperfResult> {
    iperf_tcp_streams(client_ns, server_ns, server_ip, seconds, 1)
}

/// Like [`iperf_tcp`] with `streams` parallel TCP streams (`-P`).
pub fn iperf_tcp_streams(
    client_ns: &str,
    server_ns: &str,
    server_ip: IpAddr,
    seconds: u64,
    streams: u32,
) -> anyhow::Result<IperfResult> {
    let _server = IperfServer::start(server_ns, IPERF_PORT, LISTEN_TIMEOUT)?;
    let mut cmd = netns::command_in(client_ns, "iperf3")?;
    netns::die_with_parent(&mut cmd);
    cmd.args(family_args(server_ip)).args([
        "-c",
        &server_ip.to_string(),
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &seconds.to_string(),
    ]);
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
pub fn ping(ns: &str, ip: IpAddr, count: u32) -> anyhow::Result<PingSummary> {
    let deadline_s = (f64::from(count) * PING_INTERVAL_S).ceil() + 5.0;
    let mut cmd = netns::command_in(ns, "ping")?;
    netns::die_with_parent(&mut cmd);
    cmd.args(family_args(ip))
        .args(["-n", "-c", &count.to_string(), "-i", &PING_INTERVAL_S.to_string(), "-W", "1"])
        .args(["-w", &format!("{deadline_s}"), &ip.to_string()]);
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
pub fn route_get(ns: &str, ip: IpAddr) -> anyhow::Result<String> {
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
pub fn wait_reachable(ns: &str, ip: IpAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut cmd = netns::command_in(ns, "ping")?;
        netns::die_with_parent(&mut cmd);
        cmd.args(family_args(ip)).args(["-n", "-c", "1", "-W", "1", &ip.to_string()]);
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

/// A process a row watches: its RSS through the runs, its CPU time over the single-stream run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// What the process is (`n1`, `kh2 wireguard-go`, ...).
    pub name: String,
    pub pid: u32,
    pub side: Side,
}

impl Watched {
    pub fn new(name: impl Into<String>, pid: u32, side: Side) -> Watched {
        Watched { name: name.into(), pid, side }
    }
}

/// The CPU ticks of every one of `watch` now.
fn ticks_now(watch: &[Watched]) -> Vec<Option<u64>> {
    watch.iter().map(|w| cpu_ticks(w.pid)).collect()
}

/// Where a row's traffic goes: from a pod to another pod's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub client_ns: String,
    pub server_ns: String,
    pub server_ip: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasureOpts {
    pub seconds: u64,
    pub pings: u32,
    /// Streams of a second iperf3 run (`-P N`); 0 or 1: none.
    pub parallel: u32,
}

/// One row's measurement: wait until the server pod answers, then the iperf3 run and the pings,
/// while sampling the RSS of `watch`; their CPU time is read right before and after the
/// single-stream iperf3 run (not around the `-P N` run or the pings).
pub fn measure(ep: &Endpoints, opts: MeasureOpts, watch: &[Watched]) -> anyhow::Result<Measurement> {
    wait_reachable(&ep.client_ns, ep.server_ip, REACH_TIMEOUT)?;
    let procs: Vec<(String, u32)> = watch.iter().map(|w| (w.name.clone(), w.pid)).collect();
    let (res, rss) = with_rss_sampling(&procs, RSS_EVERY, || -> anyhow::Result<_> {
        let before = ticks_now(watch);
        let iperf = iperf_tcp(&ep.client_ns, &ep.server_ns, ep.server_ip, opts.seconds)?;
        let after = ticks_now(watch);
        let spans: Vec<TickSpan> = watch
            .iter()
            .zip(before.into_iter().zip(after))
            .map(|(w, (before, after))| TickSpan { side: w.side, before, after })
            .collect();
        let cpu = (!watch.is_empty()).then(|| RunCpu::from_ticks(&spans, CLK_TCK, iperf.bytes));
        let parallel = match opts.parallel {
            0 | 1 => None,
            n => Some(iperf_tcp_streams(&ep.client_ns, &ep.server_ns, ep.server_ip, opts.seconds, n)?),
        };
        let ping = ping(&ep.client_ns, ep.server_ip, opts.pings)?;
        Ok((iperf, cpu, parallel, ping))
    });
    let (iperf, cpu, iperf_parallel, ping) = res?;
    Ok(Measurement { iperf, iperf_parallel, idle_cpu_pct: None, ping, rss, path: None, cpu, program: None })
}

/// How long watched processes are left idle to measure their CPU.
pub const IDLE_WINDOW: Duration = Duration::from_secs(5);

/// CPU of the busiest of `pids` over `window` with no traffic, in percent of one core.
pub fn idle_cpu_pct(pids: &[u32], window: Duration) -> Option<f64> {
    cpu_pct_over(pids, window).into_iter().max_by(f64::total_cmp)
}

// ---------------------------------------------------------------------------------------------
// The kernel baseline: two hosts and two pods like shared/bench/baseline.sh.

/// Linux's USER_HZ (the unit of utime/stime in /proc/<pid>/stat) on every architecture weft
/// runs on.
const CLK_TCK: f64 = 100.0;

fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU of each of `pids` over the next `window` (sleeping meanwhile), in percent of one core;
/// processes that vanished are left out.
pub fn cpu_pct_over(pids: &[u32], window: Duration) -> Vec<f64> {
    let t0: Vec<Option<u64>> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let start = Instant::now();
    std::thread::sleep(window);
    let secs = start.elapsed().as_secs_f64();
    pids.iter()
        .zip(t0)
        .filter_map(|(&p, a)| Some(cpu_ticks(p)?.saturating_sub(a?) as f64 / CLK_TCK / secs * 100.0))
        .collect()
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
        date: rfc3339_utc(weft_controller::output::unix_now()),
        iperf3,
        loadavg: std::fs::read_to_string("/proc/loadavg")
            .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| unknown()),
    }
}
