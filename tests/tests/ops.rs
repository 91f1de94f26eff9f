//! Operating the agent (issue 6) on the lab: /metrics scraped and parsed from inside a node
//! namespace, /healthz and /readyz, the HTTP server's bounds, `weftctl status` with its
//! reachability matrix, and the systemd readiness protocol against a NOTIFY_SOCKET the test
//! owns. Run one at a time (`--test-threads=1`).

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use weft_lab::{netns, Lab, Topology};
use weft_tests::ops::*;
use weft_tests::*;

/// The lab's agents listen on the default `[metrics] listen`, 127.0.0.1:9472, in their node's
/// namespace.
const METRICS: &str = "127.0.0.1:9472";

fn metrics_addr() -> SocketAddr {
    METRICS.parse().expect("lit")
}

fn scrape(lab: &Lab, i: usize) -> Scrape {
    let (status, body) = http_get(&lab.node_ns(i), metrics_addr(), "/metrics").expect("scrape");
    assert_eq!(status, 200, "{body}");
    parse_metrics(&body).unwrap_or_else(|e| panic!("unparsable exposition ({e:#}):\n{body}"))
}

#[test]
fn metrics_health_and_status_on_a_routed_host_gw_lab() {
    // Routed: n1 and n3 share a segment, n2 is behind the router, where host-gw cannot go.
    let lab = lab("op1", 3, 1, |s| s.topology = Topology::Routed);
    for i in 1..=3 {
        lab.wait_ready(i, Duration::from_secs(30)).expect("ready");
    }
    let ns = lab.node_ns(1);

    let (code, body) = http_get(&ns, metrics_addr(), "/healthz").expect("healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = http_get(&ns, metrics_addr(), "/readyz").expect("readyz");
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    // Probes run every 10 s by default; wait for a round that saw every peer.
    let m = {
        let mut last = Scrape::default();
        let seen = wait_for(Duration::from_secs(30), || {
            last = scrape(&lab, 1);
            last.get("weft_probe_reachable{peer=\"n3\",family=\"ipv4\"}") == Some(1.0)
                && last.get("weft_probe_reachable{peer=\"n2\",family=\"ipv4\"}") == Some(0.0)
        });
        assert!(seen.is_some(), "probes never showed n3 reachable and n2 not: {:?}", last.series);
        last
    };
    let st = lab.wait_ready(1, Duration::from_secs(5)).expect("status");
    let info = format!(
        "weft_agent_info{{node=\"n1\",network=\"default\",backend=\"host-gw\",subnet=\"{}\",version=\"{}\"}}",
        st.subnet.as_deref().expect("subnet"),
        env!("CARGO_PKG_VERSION")
    );
    for (series, want) in [
        (info.as_str(), 1.0),
        ("weft_ready", 1.0),
        ("weft_healthy", 1.0),
        ("weft_subnet_held", 1.0),
        ("weft_etcd_connected", 1.0),
        ("weft_peers", 2.0),
        ("weft_peers_unroutable", 1.0),
        ("weft_routes_installed", 1.0),
        ("weft_pods", 1.0),
        ("weft_skipped_records_total", 0.0),
    ] {
        assert_eq!(m.get(series), Some(want), "{series}: {:?}", m.series);
    }
    assert_eq!(m.types.get("weft_reconciles").map(String::as_str), Some("counter"));
    assert!(m.get("weft_reconciles_total").is_some_and(|v| v >= 1.0));
    assert!(m.get("weft_reconcile_errors_total").is_some());
    for age in ["weft_etcd_last_ok_age_seconds", "weft_heartbeat_age_seconds", "weft_loop_tick_age_seconds"] {
        let v = m.get(age).unwrap_or_else(|| panic!("{age} missing"));
        assert!((0.0..=30.0).contains(&v), "{age} = {v}");
    }
    assert!(m.get("weft_subnet_record_age_seconds").is_some_and(|v| v >= 0.0));
    assert!(m.get("weft_probe_rtt_seconds{peer=\"n3\",family=\"ipv4\"}").is_some_and(|v| v > 0.0 && v < 1.0));
    assert!(!m.series.keys().any(|k| k.starts_with("weft_quic")), "no quic metrics on host-gw");
    // Counters move between scrapes (derived from the same snapshot the API serves).
    let before = m.get("weft_reconciles_total").expect("reconciles");
    assert!(
        wait_for(Duration::from_secs(10), || scrape(&lab, 1).get("weft_reconciles_total").is_some_and(|v| v > before))
            .is_some(),
        "reconciles never increased"
    );

    // The server's bounds: methods, malformed and oversized heads, HEAD, unknown paths.
    let raw = |req: &[u8]| http_raw(&ns, metrics_addr(), req).expect("http");
    assert_eq!(raw(b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(raw(b"GET /metrics\r\n\r\n").0, 400);
    assert_eq!(raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").0, 400, "a TLS hello is refused");
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 16 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw(&big).0, 431);
    let (code, head, body) = raw(b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((code, body.as_str()), (200, ""));
    assert!(head.contains("Content-Type: application/openmetrics-text"), "{head}");
    assert_eq!(raw(b"GET /nope HTTP/1.1\r\n\r\n").0, 404);
    // Still serving after all that.
    assert_eq!(http_get(&ns, metrics_addr(), "/healthz").expect("healthz").0, 200);

    // weftctl status: every node, and a matrix where host-gw cannot cross the router. A probe
    // round that ran before a peer's route was in place says "fail" until the next round, so
    // wait for the matrix to settle on what the topology allows (and show it if it never does).
    let expected = [
        ("n1", "n3", "ok"),
        ("n3", "n1", "ok"),
        ("n1", "n2", "fail"),
        ("n2", "n1", "fail"),
        ("n2", "n3", "fail"),
        ("n3", "n2", "fail"),
    ];
    let state = |v: &Value, from: &str, to: &str| -> Option<String> {
        v["reachability"]
            .as_array()?
            .iter()
            .find(|p| p["from"] == from && p["to"] == to)
            .and_then(|p| p["state"].as_str().map(str::to_string))
    };
    let mut v = Value::Null;
    let settled = wait_for(Duration::from_secs(30), || {
        let out = lab.exec("n1", &["weftctl", "status", "--json"]).expect("weftctl status");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        v = serde_json::from_slice(&out.stdout).expect("status --json");
        v["summary"]["unknown"] == 0 && expected.iter().all(|(a, b, want)| state(&v, a, b).as_deref() == Some(*want))
    });
    assert!(settled.is_some(), "the probe matrix never showed n1<->n3 ok and every pair with n2 failing: {v:#}");
    assert_eq!(v["summary"]["nodes"], 3);
    assert_eq!(v["summary"]["alive"], 3);
    assert_eq!(v["config"]["backend"], "host-gw");
    let table = run_ok(&lab, "n2", &["weftctl", "status"]);
    assert!(table.contains("FROM\\TO") && table.contains("FAIL"), "{table}");
    assert!(table.contains("3 node(s), 3 alive; 2 of 6 pair(s) reachable, 4 failing"), "{table}");
}

#[test]
fn quic_metrics_per_peer() {
    let lab = lab("op2", 2, 1, |s| s.backend = weft_config::Backend::Quic);
    let far = pod_ip(&lab, 2, "p1");
    assert!(wait_for(Duration::from_secs(20), || ping(&lab, "n1/p1", far)).is_some(), "no quic path");
    for _ in 0..5 {
        assert!(ping(&lab, "n1/p1", far));
    }
    let m = scrape(&lab, 1);
    assert_eq!(m.get("weft_quic_peer_connected{peer=\"n2\"}"), Some(1.0), "{:?}", m.series);
    for c in ["tx_packets", "rx_packets"] {
        let v = m.get(&format!("weft_quic_peer_{c}_total{{peer=\"n2\"}}")).unwrap_or(0.0);
        assert!(v >= 5.0, "{c} = {v}");
    }
    for c in ["tx_bytes", "rx_bytes"] {
        let v = m.get(&format!("weft_quic_peer_{c}_total{{peer=\"n2\"}}")).unwrap_or(0.0);
        assert!(v >= 5.0 * 84.0, "{c} = {v}: five pings are at least 84 bytes each");
    }
    assert!(m.get("weft_quic_peer_connects_total{peer=\"n2\"}").is_some_and(|v| v >= 1.0));
    assert!(m.get("weft_quic_peer_rtt_seconds{peer=\"n2\"}").is_some_and(|v| (0.0..1.0).contains(&v)));
    // The lab's node certificates are valid for 365 days.
    let expiry = m.get("weft_quic_cert_expiry_seconds").expect("expiry");
    assert!(expiry > 300.0 * 86_400.0 && expiry <= 366.0 * 86_400.0, "{expiry}");
    assert!(m.get("weft_quic_mtu").is_some_and(|v| v >= 1280.0));
    assert_eq!(m.types.get("weft_quic_drops").map(String::as_str), Some("counter"));
    assert_eq!(m.get("weft_quic_refused_total"), Some(0.0));
    // The probes run through the tunnel too.
    assert!(
        wait_for(Duration::from_secs(25), || scrape(&lab, 1).get("weft_probe_reachable{peer=\"n2\",family=\"ipv4\"}")
            == Some(1.0))
        .is_some(),
        "probe through the tunnel never answered"
    );
}

/// Kills (SIGKILL) and reaps an agent the test started itself, unless it already exited.
struct AgentGuard(Option<Child>);

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Datagrams on the test's notify socket until `pred` holds for one of them or `timeout` passes.
fn await_message(sock: &UnixDatagram, timeout: Duration, seen: &mut Vec<String>, pred: impl Fn(&str) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10))))
            .expect("timeout");
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = pred(&msg);
                seen.push(msg);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn systemd_notify_ready_watchdog_and_stopping() {
    let lab = lab("op3", 1, 1, |_| {});
    lab.wait_ready(1, Duration::from_secs(20)).expect("ready");
    // Replace the lab's agent with one the test starts, with the test's NOTIFY_SOCKET.
    lab.stop_agent(1, Signal::SIGTERM).expect("stop the lab's agent");
    let sock_path = lab.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    let cfg = lab.node_paths(1).config;
    let log_path = lab.dir().join("notify-agent.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut cmd = netns::command_in(&lab.node_ns(1), lab.agent_bin()).expect("command");
    // Also the logging contract: JSON lines with --log-format json, levels from RUST_LOG.
    cmd.arg("--config")
        .arg(&cfg)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "debug")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let started = Instant::now();
    let mut agent = AgentGuard(Some(cmd.spawn().expect("start weft-agent")));
    let pid = agent.0.as_ref().expect("child").id();

    let mut seen = Vec::new();
    let client = lab.client(1).expect("client");
    let ready = await_message(&sock, Duration::from_secs(30), &mut seen, |m| m.lines().any(|l| l == "READY=1"));
    assert!(ready, "no READY=1 within 30 s; got {seen:?}");
    // READY=1 comes only once the agent is ready: its status already says so.
    let st = client.status().expect("status right after READY=1");
    assert!(st.ready && st.subnet.is_some(), "READY=1 before the agent was ready: {st:?}");
    let ready_msg = seen.last().expect("msg").clone();
    assert!(ready_msg.contains("STATUS=ready: subnet "), "{ready_msg}");
    let (code, _) = http_get(&lab.node_ns(1), metrics_addr(), "/readyz").expect("readyz");
    assert_eq!(code, 200);
    eprintln!("READY=1 after {:?}", started.elapsed());

    // WATCHDOG_USEC=1 s: pings every half second while the loop makes progress.
    let mut pings = 0;
    let t = Instant::now();
    while pings < 3 && t.elapsed() < Duration::from_secs(5) {
        if await_message(&sock, Duration::from_secs(2), &mut seen, |m| m.lines().any(|l| l == "WATCHDOG=1")) {
            pings += 1;
        }
    }
    assert_eq!(pings, 3, "watchdog pings: {seen:?}");

    // SIGTERM: STOPPING=1, then a clean exit.
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM");
    let stopping = await_message(&sock, Duration::from_secs(10), &mut seen, |m| m.lines().any(|l| l == "STOPPING=1"));
    assert!(stopping, "no STOPPING=1: {seen:?}");
    let mut child = agent.0.take().expect("child");
    let status = (0..100)
        .find_map(|_| {
            let s = child.try_wait().expect("wait");
            if s.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            s
        })
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("agent did not exit after SIGTERM")
        });
    assert!(status.success(), "agent exit status {status}");

    let log = std::fs::read_to_string(&log_path).expect("log");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["target"].is_string() && l["fields"]["message"].is_string()));
    assert!(lines.iter().any(|l| l["level"] == "DEBUG"), "RUST_LOG=debug shows debug lines");
    assert!(
        lines.iter().any(|l| l["level"] == "INFO" && l["fields"]["message"] == "ready" && l["fields"]["node"] == "n1"),
        "no structured 'ready' line"
    );
}
