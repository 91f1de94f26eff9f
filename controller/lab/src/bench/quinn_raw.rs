//! The `quinn-raw` row of `weftctl lab bench`: QUIC datagrams alone, no tun, between the two
//! hosts of a [`HostPair`] — the transport's ceiling on this machine. `weft-quic-raw` (a binary
//! of the agent crate, built with the agent's own TLS, transport and socket settings) sends
//! full-size DATAGRAM frames as fast as congestion control allows from host 1 to host 2 for
//! the row's seconds; the receiver's count over the time between its first and last datagram
//! is the figure. Certificates come from a throwaway CA in a directory removed afterwards.
//! The row's CPU figure is each process's whole CPU time (they live for the run only), which
//! the kernel reports once the bench has reaped it (`getrusage(RUSAGE_CHILDREN)`).

use super::hosts::HostPair;
use super::measure::{collect_timeout, with_rss_sampling, LISTEN_TIMEOUT, RSS_EVERY};
use super::parse::{IperfResult, PingSummary};
use super::report::{Measurement, RssPeak, RunCpu};
use crate::names::LabNames;
use crate::netns;
use anyhow::Context;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Binary name, found next to weftctl like weft-agent.
pub const BIN: &str = "weft-quic-raw";
/// UDP port of the receiver (the agent's default QUIC port; nothing else runs in the pair).
pub const PORT: u16 = weft_config::agent::DEFAULT_QUIC_PORT;

/// What the receiver reports (the JSON line `weft-quic-raw server` prints).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Received {
    pub connections: usize,
    pub datagrams: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub gbps: f64,
    pub max_datagram: usize,
}

/// One quinn-raw run.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRun {
    pub received: Received,
    /// Peak RSS of the sender and the receiver.
    pub rss: Vec<RssPeak>,
    /// The sender's and the receiver's CPU time, and the bytes that arrived.
    pub cpu: RunCpu,
}

/// User + system CPU seconds of every child of this process reaped so far, their own reaped
/// children included (`getrusage(RUSAGE_CHILDREN)`); `None` if the call fails.
fn reaped_children_cpu_s() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the rusage the pointer points to; on failure it is left zeroed,
    // which is a valid rusage too.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: zero-initialised and filled in by getrusage above.
    let usage = unsafe { usage.assume_init() };
    // Seconds and microseconds of CPU time are far below 2^52, where f64 is exact.
    #[allow(clippy::cast_precision_loss)]
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// The CPU time between two [`reaped_children_cpu_s`] readings.
fn cpu_between(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?).filter(|s| *s >= 0.0)
}

/// Parses the receiver's output (its last non-empty line).
pub fn parse_received(stdout: &str) -> Result<Received, String> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).ok_or("weft-quic-raw printed nothing")?;
    let r: Received = serde_json::from_str(line).map_err(|e| format!("weft-quic-raw output {line:?}: {e}"))?;
    if r.datagrams == 0 || r.seconds <= 0.0 || !r.gbps.is_finite() {
        return Err(format!("no datagrams arrived ({line})"));
    }
    Ok(r)
}

/// A directory removed with everything in it when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("bench: removing {}: {e}", self.0.display());
            }
        }
    }
}

/// A child killed (if still running) and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// UDP port `port` bound in the namespace of `pid` (`/proc/<pid>/net/udp`, IPv4).
fn udp_bound(pid: u32, port: u16) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/net/udp")).is_ok_and(|t| super::parse::udp_bound(&t, port))
}

fn tls_args(pki: &Path, name: &str) -> Vec<String> {
    let ca = weft_controller::pki::ca_files(pki);
    let c = weft_controller::pki::cert_files(pki, name);
    vec![
        "--ca".into(),
        ca.cert.display().to_string(),
        "--cert".into(),
        c.cert.display().to_string(),
        "--key".into(),
        c.key.display().to_string(),
        "--name".into(),
        name.into(),
    ]
}

/// Runs the row: a fresh [`HostPair`], `connections` QUIC connections from host 1 to host 2 for
/// `seconds`. Everything (namespaces, processes, certificate files) is gone when it returns.
pub fn bench(names: &LabNames, bin: &Path, seconds: u64, connections: usize) -> anyhow::Result<RawRun> {
    let pair = HostPair::up(&names.prefix())?;
    let dir = TempDir(std::env::temp_dir().join(format!("weft-{}-quinn-raw-{}", names.id(), std::process::id())));
    std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
    weft_controller::pki::init_ca(&dir.0, &weft_controller::pki::CaOptions::default()).context("making a CA")?;
    for n in ["n1", "n2"] {
        weft_controller::pki::issue(&dir.0, &dir.0, &weft_controller::pki::IssueRequest::node(n))
            .with_context(|| format!("issuing the certificate of {n}"))?;
    }
    let mut server_cmd = netns::command_in(&pair.host_ns(2), bin)?;
    netns::die_with_parent(&mut server_cmd);
    server_cmd
        .args(["server", "--port", &PORT.to_string(), "--connections", &connections.to_string()])
        .args(["--timeout", &(seconds + 60).to_string()])
        .args(tls_args(&dir.0, "n2"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = Reaped(server_cmd.spawn().with_context(|| format!("starting {}", bin.display()))?);
    let spid = server.0.id();
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    while !udp_bound(spid, PORT) {
        if let Ok(Some(st)) = server.0.try_wait() {
            anyhow::bail!("{BIN} server exited ({st}) before binding UDP {PORT}");
        }
        anyhow::ensure!(Instant::now() < deadline, "{BIN} server did not bind UDP {PORT}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut client_cmd = netns::command_in(&pair.host_ns(1), bin)?;
    netns::die_with_parent(&mut client_cmd);
    client_cmd
        .args(["client", "--connect", &format!("{}:{PORT}", HostPair::underlay_ip(2)), "--server-name", "n2"])
        .args(["--seconds", &seconds.to_string(), "--connections", &connections.to_string()])
        .args(tls_args(&dir.0, "n1"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Nothing else this process started is reaped from here to the receiver's end, so each
    // difference of the reaped children's CPU time is one process's.
    let cpu_start = reaped_children_cpu_s();
    let client = Reaped(client_cmd.spawn().with_context(|| format!("starting {}", bin.display()))?);
    let watch = vec![("sender".to_string(), client.0.id()), ("receiver".to_string(), spid)];
    let mut client = client;
    let (client_out, rss) = with_rss_sampling(&watch, RSS_EVERY, || {
        collect_timeout(&mut client.0, Duration::from_secs(seconds + 30), "weft-quic-raw sender")
    });
    let cpu_sent = reaped_children_cpu_s();
    let client_out = client_out?;
    anyhow::ensure!(
        client_out.status.success(),
        "{BIN} client failed ({}): {}",
        client_out.status,
        last_line(&client_out.stderr)
    );
    let server_out = collect_timeout(&mut server.0, Duration::from_secs(30), "weft-quic-raw receiver")?;
    let cpu_received = reaped_children_cpu_s();
    anyhow::ensure!(
        server_out.status.success(),
        "{BIN} server failed ({}): {}",
        server_out.status,
        last_line(&server_out.stderr)
    );
    let received = parse_received(&String::from_utf8_lossy(&server_out.stdout)).map_err(anyhow::Error::msg)?;
    let cpu = RunCpu {
        sender_s: cpu_between(cpu_start, cpu_sent),
        receiver_s: cpu_between(cpu_sent, cpu_received),
        bytes: Some(received.bytes),
    };
    Ok(RawRun { received, rss, cpu })
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string()
}

/// The quinn-raw row: one QUIC connection's datagram throughput between the two hosts. It has
/// no TCP and no ping: the RTT column stays empty; RSS is the sender's and receiver's.
pub fn row(names: &LabNames, seconds: u64) -> anyhow::Result<Measurement> {
    let bin = crate::bins::resolve(BIN, None, "WEFT_BIN_DIR")?;
    let run = bench(names, &bin, seconds, 1)?;
    Ok(Measurement {
        iperf: IperfResult {
            bits_per_second: run.received.gbps * 1e9,
            retransmits: None,
            bytes: Some(run.received.bytes),
        },
        iperf_parallel: None,
        idle_cpu_pct: None,
        ping: PingSummary { transmitted: 0, received: 0, times_ms: Vec::new() },
        rss: run.rss,
        path: Some(format!(
            "{} datagrams of {} bytes in {:.2} s over {} connection(s)",
            run.received.datagrams, run.received.max_datagram, run.received.seconds, run.received.connections
        )),
        cpu: Some(run.cpu),
        program: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_output() {
        let ok = "log line\n{\"connections\":1,\"datagrams\":10,\"bytes\":14340,\"seconds\":0.5,\"gbps\":0.23,\"max_datagram\":1434}\n";
        let r = parse_received(ok).expect("parses");
        assert_eq!((r.datagrams, r.max_datagram), (10, 1434));
        let none = "{\"connections\":1,\"datagrams\":0,\"bytes\":0,\"seconds\":0.0,\"gbps\":0.0,\"max_datagram\":1434}";
        assert!(parse_received(none).expect_err("nothing arrived").contains("no datagrams"));
        assert!(parse_received("").is_err());
        assert!(parse_received("not json").is_err());
    }

    #[test]
    fn reaped_children_cpu() {
        let before = reaped_children_cpu_s();
        assert!(before.is_some_and(|s| s >= 0.0), "{before:?}");
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh runs");
        assert!(status.success());
        let after = reaped_children_cpu_s();
        assert!(cpu_between(before, after).is_some_and(|s| s >= 0.0), "{before:?} {after:?}");
        assert_eq!(cpu_between(Some(2.0), Some(1.0)), None);
        assert_eq!(cpu_between(None, Some(1.0)), None);
        assert_eq!(cpu_between(Some(1.0), Some(1.5)), Some(0.5));
    }
}
