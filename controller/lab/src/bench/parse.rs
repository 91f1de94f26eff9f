//! Pure parsers of what the bench reads: iperf3 JSON, ping output, /proc files, and the route
//! check of a row's path.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use weft_config::Backend;

/// What one iperf3 TCP run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IperfResult {
    /// `end.sum_received.bits_per_second`: what reached the receiver.
    pub bits_per_second: f64,
    /// `end.sum_sent.retransmits` (TCP retransmissions seen by the sender), when reported.
    pub retransmits: Option<u64>,
    /// `end.sum_received.bytes`: what the run moved (reports from before it have none).
    #[serde(default)]
    pub bytes: Option<u64>,
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
    let bytes = v.pointer("/end/sum_received/bytes").and_then(serde_json::Value::as_u64);
    Ok(IperfResult { bits_per_second: bps, retransmits, bytes })
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

/// `VmRSS` in KiB from `/proc/<pid>/status` text.
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
pub(super) fn proc_net_sockets(text: &str) -> impl Iterator<Item = (Option<u16>, &str)> {
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
/// the way `backend` sends pod traffic: host-gw via the peer's underlay address (of the pod
/// address's family), quic through a tun (neither via the peer nor out of the underlay
/// interface `eth0`).
pub fn check_path(backend: Backend, route: &str, peer_underlay: IpAddr) -> Result<(), String> {
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
        Backend::Vxlan if after("dev").is_some_and(|d| d.starts_with("weft-vxlan")) => Ok(()),
        Backend::WireGuard if after("dev") == Some("weft-wg0") => Ok(()),
        Backend::WireGuard => Err(format!(
            "the sending node routes the pod as `{}`, not through the weft-wg0 device (the agent does not run \
             the wireguard backend)",
            route.trim()
        )),
        // auto: a direct route to an on-link peer, an encapsulating device for the others.
        Backend::Auto if via_peer || after("dev").is_some_and(|d| d != "eth0") => Ok(()),
        Backend::Auto => Err(format!(
            "the sending node routes the pod as `{}`: neither via {peer_underlay} nor through an encapsulating device",
            route.trim()
        )),
        Backend::Vxlan => Err(format!(
            "the sending node routes the pod as `{}`, not through a weft-vxlan device (the agent does not run \
             the vxlan backend)",
            route.trim()
        )),
    }
}

/// utime + stime (clock ticks) from the text of `/proc/<pid>/stat`: of every thread of the
/// process, the exited ones included (the kernel sums the thread group), not of its children.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The options that pin `ping` and `iperf3 -c` to the family of `ip`: `-6` for IPv6, none for
/// IPv4 (the command lines of IPv4 rows stay what they were).
pub fn family_args(ip: IpAddr) -> &'static [&'static str] {
    match ip {
        IpAddr::V4(_) => &[],
        IpAddr::V6(_) => &["-6"],
    }
}
