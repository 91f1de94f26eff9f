//! `/metrics` (Prometheus/OpenMetrics text), `/healthz` and `/readyz` on `[metrics] listen`.
//!
//! Nothing here counts anything on the packet path: every scrape takes the same status snapshot
//! the API serves (plus the quic backend's live counters) and turns it into metrics with
//! prometheus-client, in a registry made for that scrape. The decisions (healthy? ready? which
//! metrics with which values?) are plain functions over a [`Status`] and the time.

use crate::api::LiveQuic;
use crate::docker::Counters;
use crate::http::{self, Reply};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use weft_config::agent::{AgentConfig, MetricsConfig};
use weft_config::api::{Health, Status};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The health marks an agent with this config starts with: the thresholds derived from its
/// timers, and "now" as start and first loop tick.
pub fn initial_health(cfg: &AgentConfig, now: u64) -> Health {
    let t = &cfg.timers;
    // The loop ticks at least every reconcile period and every third of the heartbeat TTL.
    let period = t.reconcile.min(t.heartbeat_ttl / 3).as_secs().max(1);
    Health {
        started: now,
        loop_tick: now,
        stuck_after_secs: (3 * period).max(60),
        etcd_ok: 0,
        etcd_grace_secs: (2 * t.heartbeat_ttl.as_secs()).max(30),
        record_renewed: 0,
        heartbeat: 0,
    }
}

/// `/healthz`: the process answers and its loop is not stuck.
pub fn healthz(st: &Status, now: u64) -> Result<(), String> {
    let idle = now.saturating_sub(st.health.loop_tick);
    if st.health.stuck_after_secs > 0 && idle > st.health.stuck_after_secs {
        return Err(format!("daemon loop stuck: no progress for {idle} s (limit {} s)", st.health.stuck_after_secs));
    }
    Ok(())
}

/// `/readyz`: healthy, holding a subnet with the node plumbed, and etcd answered recently.
/// Every reason that applies is returned.
pub fn readyz(st: &Status, now: u64) -> Result<(), Vec<String>> {
    let mut why = Vec::new();
    if let Err(e) = healthz(st, now) {
        why.push(e);
    }
    if !st.holds_subnet() {
        // Why not, when the last attempt said (a backend this node cannot run, for one).
        match &st.last_error {
            Some(e) => why.push(format!("no subnet held yet: {e}")),
            None => why.push("no subnet held yet".to_string()),
        }
    }
    if !st.ready {
        why.push("node setup (bridge, firewall, pods, first reconcile) not done".to_string());
    }
    if st.health.etcd_ok == 0 {
        why.push("etcd has not answered yet".to_string());
    } else {
        let quiet = now.saturating_sub(st.health.etcd_ok);
        if quiet > st.health.etcd_grace_secs {
            why.push(format!("etcd not reachable for {quiet} s (limit {} s)", st.health.etcd_grace_secs));
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

type Labels = Vec<(String, String)>;

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

fn fgauge(reg: &mut Registry, name: &str, help: &str, v: f64) {
    let g: Gauge<f64, AtomicU64> = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// Seconds since `t`, or -1 for "never".
fn age(now: u64, t: u64) -> i64 {
    if t == 0 {
        -1
    } else {
        i64::try_from(now.saturating_sub(t)).unwrap_or(i64::MAX)
    }
}

/// Peer subnets by family: known, routed and unroutable, for each family the node holds a
/// subnet of or a peer has one of.
fn per_family_peers(reg: &mut Registry, st: &Status) {
    let mut families: std::collections::BTreeSet<weft_config::subnet::Family> = st.families().into_iter().collect();
    families.extend(st.peers.iter().filter_map(|p| p.family()));
    let subnets: Family<Labels, Gauge> = Family::default();
    let routed: Family<Labels, Gauge> = Family::default();
    let unroutable: Family<Labels, Gauge> = Family::default();
    for f in families {
        let of_family: Vec<_> = st.peers.iter().filter(|p| p.family() == Some(f)).collect();
        let l = label("family", f.label());
        subnets.get_or_create(&l).set(of_family.len() as i64);
        routed.get_or_create(&l).set(of_family.iter().filter(|p| p.route_ok).count() as i64);
        unroutable.get_or_create(&l).set(of_family.iter().filter(|p| p.problem.is_some()).count() as i64);
    }
    reg.register("peer_subnets", "Peer subnets known from valid subnet records, by family", subnets);
    reg.register("peer_subnets_routed", "Peer subnets whose route is installed and matching, by family", routed);
    reg.register(
        "peer_subnets_unroutable",
        "Peer subnets that cannot be routed (e.g. not on-link for host-gw), by family",
        unroutable,
    );
}

/// The OpenMetrics text for one status snapshot (with `quic` filled in from the live counters).
pub fn render(st: &Status, now: u64) -> String {
    render_with(st, now, &[])
}

/// [`render`] plus the Docker plugin's requests: (method, result, count).
pub fn render_with(st: &Status, now: u64, docker: &[(&str, &str, u64)]) -> String {
    let mut reg = Registry::with_prefix("weft");
    let info: Family<Labels, Gauge> = Family::default();
    let mut info_labels = vec![
        ("node".to_string(), st.node.clone()),
        ("network".to_string(), st.network.clone()),
        ("backend".to_string(), st.backend.clone().unwrap_or_default()),
        ("subnet".to_string(), st.subnet.clone().unwrap_or_default()),
    ];
    if let Some(s6) = &st.subnet6 {
        info_labels.push(("subnet6".to_string(), s6.clone()));
    }
    info_labels.push(("version".to_string(), env!("CARGO_PKG_VERSION").to_string()));
    info.get_or_create(&info_labels).set(1);
    reg.register(
        "agent_info",
        "The agent: node, network, backend, subnet (IPv4), subnet6 (when held) and version (always 1)",
        info,
    );
    gauge(
        &mut reg,
        "healthy",
        "1 while the daemon loop makes progress (what /healthz says)",
        i64::from(healthz(st, now).is_ok()),
    );
    gauge(
        &mut reg,
        "ready",
        "1 while /readyz says ready: subnet held, node plumbed, etcd answered recently",
        i64::from(readyz(st, now).is_ok()),
    );
    gauge(&mut reg, "subnet_held", "1 while the agent holds a subnet (of either family)", i64::from(st.holds_subnet()));
    gauge(&mut reg, "etcd_connected", "1 while the etcd connection and watch are up", i64::from(st.etcd_connected));
    gauge(
        &mut reg,
        "etcd_last_ok_age_seconds",
        "Seconds since etcd last answered (-1: never)",
        age(now, st.health.etcd_ok),
    );
    gauge(
        &mut reg,
        "subnet_record_age_seconds",
        "Seconds since the own subnet record was written or its lease renewed (-1: never)",
        age(now, st.health.record_renewed),
    );
    gauge(
        &mut reg,
        "heartbeat_age_seconds",
        "Seconds since the heartbeat was refreshed (-1: never)",
        age(now, st.health.heartbeat),
    );
    gauge(
        &mut reg,
        "loop_tick_age_seconds",
        "Seconds since the daemon loop last went round",
        age(now, st.health.loop_tick),
    );
    gauge(&mut reg, "start_time_seconds", "When the agent started (Unix time)", st.health.started as i64);
    gauge(&mut reg, "peers", "Peer nodes known from valid subnet records", st.peer_nodes().len() as i64);
    let unroutable: std::collections::BTreeSet<&str> =
        st.peers.iter().filter(|p| p.problem.is_some()).map(|p| p.node.as_str()).collect();
    gauge(
        &mut reg,
        "peers_unroutable",
        "Peer nodes with a subnet that cannot be routed (e.g. not on-link for host-gw)",
        unroutable.len() as i64,
    );
    gauge(
        &mut reg,
        "routes_installed",
        "Peer routes installed and matching the desired ones (one per peer subnet)",
        st.peers.iter().filter(|p| p.route_ok).count() as i64,
    );
    per_family_peers(&mut reg, st);
    gauge(&mut reg, "pods", "Pods attached to the bridge", st.pods.len() as i64);
    counter(&mut reg, "reconciles", "Reconcile runs", st.reconciles);
    counter(&mut reg, "reconcile_errors", "Reconcile runs that ended with an error", st.reconcile_errors);
    counter(&mut reg, "skipped_records", "Subnet records skipped as malformed or conflicting", st.skipped_records);

    let reachable: Family<Labels, Gauge> = Family::default();
    let rtt: Family<Labels, Gauge<f64, AtomicU64>> = Family::default();
    for p in &st.probes {
        let l = vec![("peer".to_string(), p.node.clone()), ("family".to_string(), p.family().label().to_string())];
        reachable.get_or_create(&l).set(i64::from(p.ok));
        if let Some(us) = p.rtt_us.filter(|_| p.ok) {
            rtt.get_or_create(&l).set(us as f64 / 1e6);
        }
    }
    reg.register(
        "probe_reachable",
        "1 if the peer's gateway of the family answered the latest probe from this node's gateway of it",
        reachable,
    );
    reg.register("probe_rtt_seconds", "Round trip of the latest successful probe", rtt);

    if let Some(q) = &st.quic {
        let mut quic = reg.sub_registry_with_prefix("quic");
        fgauge(
            quic,
            "cert_expiry_seconds",
            "Seconds until this node's certificate expires (negative once expired)",
            q.cert_expires_in_secs as f64,
        );
        gauge(quic, "mtu", "Tun device MTU", i64::from(q.mtu));
        counter(quic, "refused", "Connections refused (bad certificate, unknown node, wrong address)", q.refused);
        let drops: Family<Labels, Counter> = Family::default();
        for (reason, n) in &q.drops {
            drops.get_or_create(&label("reason", reason)).inc_by(*n);
        }
        quic.register("drops", "Packets dropped, by reason", drops);
        let connected: Family<Labels, Gauge> = Family::default();
        let prtt: Family<Labels, Gauge<f64, AtomicU64>> = Family::default();
        let tx_bytes: Family<Labels, Counter> = Family::default();
        let tx_packets: Family<Labels, Counter> = Family::default();
        let rx_bytes: Family<Labels, Counter> = Family::default();
        let rx_packets: Family<Labels, Counter> = Family::default();
        let connects: Family<Labels, Counter> = Family::default();
        for p in &q.peers {
            let l = label("peer", &p.node);
            connected.get_or_create(&l).set(i64::from(p.connected));
            prtt.get_or_create(&l).set(p.rtt_us as f64 / 1e6);
            tx_bytes.get_or_create(&l).inc_by(p.tx_bytes);
            tx_packets.get_or_create(&l).inc_by(p.tx_packets);
            rx_bytes.get_or_create(&l).inc_by(p.rx_bytes);
            rx_packets.get_or_create(&l).inc_by(p.rx_packets);
            connects.get_or_create(&l).inc_by(p.connects);
        }
        quic = quic.sub_registry_with_prefix("peer");
        quic.register("connected", "1 while the QUIC connection to the peer is up", connected);
        quic.register("rtt_seconds", "QUIC's smoothed round trip to the peer", prtt);
        quic.register("tx_bytes", "Bytes of IP packets sent to the peer", tx_bytes);
        quic.register("tx_packets", "IP packets sent to the peer", tx_packets);
        quic.register("rx_bytes", "Bytes of IP packets received from the peer", rx_bytes);
        quic.register("rx_packets", "IP packets received from the peer", rx_packets);
        quic.register("connects", "Connections made to the peer (1 + reconnects)", connects);
    }
    let requests: Family<Labels, Counter> = Family::default();
    for (method, result, n) in docker {
        let l = vec![("method".to_string(), method.to_string()), ("result".to_string(), result.to_string())];
        requests.get_or_create(&l).inc_by(*n);
    }
    reg.register(
        "docker_requests",
        "Docker plugin requests, by method and result (ok, error, malformed, not_found)",
        requests,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// The snapshot every endpoint works from: the daemon's status plus the live quic counters.
pub fn snapshot(status: &RwLock<Status>, live: &LiveQuic) -> Status {
    let mut st = status.read().map(|s| s.clone()).unwrap_or_else(|p| p.into_inner().clone());
    if let Some(f) = live.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        st.quic = Some(f());
    }
    st
}

/// Routes a request to the three endpoints.
pub fn respond(path: &str, st: &Status, now: u64) -> Reply {
    respond_with(path, st, now, &Counters::default())
}

/// [`respond`] with the Docker plugin's request counters.
pub fn respond_with(path: &str, st: &Status, now: u64, docker: &Counters) -> Reply {
    match path {
        "/metrics" => Reply {
            status: 200,
            content_type: CONTENT_TYPE,
            body: render_with(st, now, &docker.snapshot()).into_bytes(),
        },
        "/healthz" => match healthz(st, now) {
            Ok(()) => Reply::text(200, "ok\n"),
            Err(e) => Reply::text(503, format!("{e}\n")),
        },
        "/readyz" => match readyz(st, now) {
            Ok(()) => Reply::text(200, "ready\n"),
            Err(why) => Reply::text(503, format!("not ready: {}\n", why.join("; "))),
        },
        "/" => Reply::text(200, "weft-agent: /metrics /healthz /readyz\n"),
        _ => Reply::text(404, "not found; try /metrics, /healthz or /readyz\n"),
    }
}

/// Starts the endpoint in the background (a no-op when disabled). A bind failure is logged and
/// retried, never fatal: the data plane matters more than its metrics.
pub fn spawn(cfg: &MetricsConfig, status: Arc<RwLock<Status>>, live: LiveQuic, docker: Counters) {
    let Some(addr) = cfg.listen else {
        tracing::info!("metrics endpoint disabled ([metrics] enabled = false)");
        return;
    };
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(500);
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot listen for /metrics yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        };
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        let handler: http::Handler = Arc::new(move |req: &http::Request| {
            respond_with(&req.path, &snapshot(&status, &live), now_secs(), &docker)
        });
        http::serve(listener, http::Limits::default(), handler).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_config::api::{PeerStatus, ProbeResult, QuicPeerStatus, QuicStatus};

    fn status(now: u64) -> Status {
        Status {
            node: "n1".into(),
            node_id: "id1".into(),
            network: "default".into(),
            pid: 1,
            ready: true,
            etcd_connected: true,
            subnet: Some("10.244.1.0/24".into()),
            subnet6: None,
            public_ip: Some("172.30.0.11".parse().expect("lit")),
            public_ip6: None,
            backend: Some("host-gw".into()),
            peers: vec![
                PeerStatus {
                    node: "n2".into(),
                    subnet: "10.244.2.0/24".into(),
                    public_ip: "172.30.0.12".parse().expect("lit"),
                    route_ok: true,
                    problem: None,
                    route_since_unix_ms: 0,
                    via: None,
                },
                PeerStatus {
                    node: "n3".into(),
                    subnet: "10.244.3.0/24".into(),
                    public_ip: "172.30.1.13".parse().expect("lit"),
                    route_ok: false,
                    problem: Some("not on-link".into()),
                    route_since_unix_ms: 0,
                    via: None,
                },
            ],
            pods: vec![],
            reconciles: 7,
            reconcile_errors: 1,
            skipped_records: 2,
            last_error: None,
            quic: None,
            health: Health {
                started: now - 100,
                loop_tick: now - 1,
                stuck_after_secs: 60,
                etcd_ok: now - 2,
                etcd_grace_secs: 30,
                record_renewed: now - 50,
                heartbeat: now - 3,
            },
            probes: vec![
                ProbeResult {
                    node: "n2".into(),
                    target: "10.244.2.1".parse().expect("lit"),
                    ok: true,
                    rtt_us: Some(250),
                    at: now,
                },
                ProbeResult {
                    node: "n3".into(),
                    target: "10.244.3.1".parse().expect("lit"),
                    ok: false,
                    rtt_us: None,
                    at: now,
                },
            ],
            last_route_removed: None,
        }
    }

    #[test]
    fn health_and_readiness() {
        let now = 1_000_000;
        let st = status(now);
        assert_eq!(healthz(&st, now), Ok(()));
        assert_eq!(readyz(&st, now), Ok(()));
        let mut stuck = st.clone();
        stuck.health.loop_tick = now - 61;
        assert!(healthz(&stuck, now).expect_err("stuck").contains("no progress for 61 s"));
        assert!(readyz(&stuck, now).is_err(), "a stuck agent is not ready either");
        let mut starting = st.clone();
        starting.ready = false;
        starting.subnet = None;
        starting.health.etcd_ok = 0;
        assert_eq!(readyz(&starting, now).expect_err("starting").len(), 3);
        starting.last_error = Some("the wireguard backend cannot run on this node: no WireGuard".into());
        assert_eq!(
            readyz(&starting, now).expect_err("refused")[0],
            "no subnet held yet: the wireguard backend cannot run on this node: no WireGuard",
            "the reason a subnet is not held is said"
        );
        assert_eq!(healthz(&starting, now), Ok(()), "starting is healthy");
        let mut cut_off = st.clone();
        cut_off.health.etcd_ok = now - 31;
        let why = readyz(&cut_off, now).expect_err("etcd away");
        assert_eq!(why, vec!["etcd not reachable for 31 s (limit 30 s)".to_string()]);
    }

    #[test]
    fn thresholds_follow_the_timers() {
        let cfg = AgentConfig::parse("a", "node_name = \"n\"\n[etcd]\nendpoints = [\"http://e:1\"]\n").expect("cfg");
        let h = initial_health(&cfg, 5);
        assert_eq!((h.started, h.loop_tick, h.stuck_after_secs, h.etcd_grace_secs), (5, 5, 60, 30));
        let slow = "node_name = \"n\"\n[etcd]\nendpoints = [\"http://e:1\"]\n[timers]\nreconcile_secs = 600\nheartbeat_ttl_secs = 300\n";
        let h = initial_health(&AgentConfig::parse("a", slow).expect("cfg"), 5);
        assert_eq!((h.stuck_after_secs, h.etcd_grace_secs), (300, 600));
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn metrics_come_from_the_snapshot() {
        let now = 1_000_000;
        let mut st = status(now);
        let text = render(&st, now);
        assert!(text.ends_with("# EOF\n"), "{text}");
        let series = text.lines().filter(|l| !l.starts_with('#'));
        assert!(
            !series.clone().any(|l| l.contains("ipv6") || l.contains("subnet6")),
            "no IPv6 series on an IPv4 node: {text}"
        );
        for (series, want) in [
            ("weft_ready", 1.0),
            ("weft_healthy", 1.0),
            ("weft_etcd_connected", 1.0),
            ("weft_peers", 2.0),
            ("weft_peers_unroutable", 1.0),
            ("weft_routes_installed", 1.0),
            ("weft_reconciles_total", 7.0),
            ("weft_reconcile_errors_total", 1.0),
            ("weft_skipped_records_total", 2.0),
            ("weft_subnet_record_age_seconds", 50.0),
            ("weft_etcd_last_ok_age_seconds", 2.0),
            ("weft_heartbeat_age_seconds", 3.0),
            ("weft_peer_subnets{family=\"ipv4\"}", 2.0),
            ("weft_peer_subnets_routed{family=\"ipv4\"}", 1.0),
            ("weft_peer_subnets_unroutable{family=\"ipv4\"}", 1.0),
            ("weft_probe_reachable{peer=\"n2\",family=\"ipv4\"}", 1.0),
            ("weft_probe_reachable{peer=\"n3\",family=\"ipv4\"}", 0.0),
            ("weft_probe_rtt_seconds{peer=\"n2\",family=\"ipv4\"}", 0.00025),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
        }
        assert!(text.contains("# TYPE weft_reconciles counter"), "{text}");
        assert!(!text.contains("weft_quic"), "no quic metrics for host-gw");

        let mut drops = std::collections::BTreeMap::new();
        drops.insert("bad_source".to_string(), 3);
        st.quic = Some(QuicStatus {
            tun: "weft-tun0".into(),
            mtu: 1434,
            endpoint: "172.30.0.11:7946".into(),
            cert_expires_in_secs: 86_400,
            peers: vec![QuicPeerStatus {
                node: "n2".into(),
                subnet: "10.244.2.0/24".into(),
                subnet6: None,
                connected: true,
                dialer: true,
                rtt_us: 500,
                tx_packets: 10,
                tx_bytes: 1000,
                rx_packets: 9,
                rx_bytes: 900,
                connects: 1,
                threads: 1,
                shards: Vec::new(),
            }],
            drops,
            refused: 4,
            threads: 1,
            handed: 0,
        });
        let text = render(&st, now);
        for (series, want) in [
            ("weft_quic_cert_expiry_seconds", 86_400.0),
            ("weft_quic_mtu", 1434.0),
            ("weft_quic_refused_total", 4.0),
            ("weft_quic_drops_total{reason=\"bad_source\"}", 3.0),
            ("weft_quic_peer_connected{peer=\"n2\"}", 1.0),
            ("weft_quic_peer_tx_bytes_total{peer=\"n2\"}", 1000.0),
            ("weft_quic_peer_tx_packets_total{peer=\"n2\"}", 10.0),
            ("weft_quic_peer_rx_bytes_total{peer=\"n2\"}", 900.0),
            ("weft_quic_peer_rx_packets_total{peer=\"n2\"}", 9.0),
            ("weft_quic_peer_connects_total{peer=\"n2\"}", 1.0),
            ("weft_quic_peer_rtt_seconds{peer=\"n2\"}", 0.0005),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
        }
    }

    #[test]
    fn a_dual_stack_peer_counts_once_with_detail_per_family() {
        let now = 1_000_000;
        let mut st = status(now);
        st.subnet6 = Some("fd00:10:244:1::/64".into());
        let mut n2v6 = st.peers[0].clone();
        n2v6.subnet = "fd00:10:244:2::/64".into();
        let mut n3v6 = st.peers[1].clone();
        (n3v6.subnet, n3v6.route_ok, n3v6.problem) = ("fd00:10:244:3::/64".into(), true, None);
        st.peers.extend([n2v6, n3v6]);
        st.probes.extend([
            ProbeResult {
                node: "n2".into(),
                target: "fd00:10:244:2::1".parse().expect("lit"),
                ok: true,
                rtt_us: Some(300),
                at: now,
            },
            ProbeResult {
                node: "n3".into(),
                target: "fd00:10:244:3::1".parse().expect("lit"),
                ok: true,
                rtt_us: Some(90),
                at: now,
            },
        ]);
        let text = render(&st, now);
        assert!(text.ends_with("# EOF\n"), "{text}");
        for (series, want) in [
            ("weft_peers", 2.0),
            ("weft_peers_unroutable", 1.0),
            ("weft_routes_installed", 3.0),
            ("weft_peer_subnets{family=\"ipv4\"}", 2.0),
            ("weft_peer_subnets{family=\"ipv6\"}", 2.0),
            ("weft_peer_subnets_routed{family=\"ipv4\"}", 1.0),
            ("weft_peer_subnets_routed{family=\"ipv6\"}", 2.0),
            ("weft_peer_subnets_unroutable{family=\"ipv4\"}", 1.0),
            ("weft_peer_subnets_unroutable{family=\"ipv6\"}", 0.0),
            ("weft_probe_reachable{peer=\"n2\",family=\"ipv4\"}", 1.0),
            ("weft_probe_reachable{peer=\"n3\",family=\"ipv4\"}", 0.0),
            ("weft_probe_reachable{peer=\"n2\",family=\"ipv6\"}", 1.0),
            ("weft_probe_reachable{peer=\"n3\",family=\"ipv6\"}", 1.0),
            ("weft_probe_rtt_seconds{peer=\"n3\",family=\"ipv6\"}", 0.00009),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
        }
        // One HELP and TYPE per metric, each series once: valid exposition.
        for name in ["weft_peer_subnets", "weft_probe_reachable", "weft_probe_rtt_seconds"] {
            assert_eq!(text.matches(&format!("# TYPE {name} gauge\n")).count(), 1, "{name} in\n{text}");
        }
        let series: Vec<&str> =
            text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.rsplit_once(' ')).map(|(s, _)| s).collect();
        let unique: std::collections::BTreeSet<&&str> = series.iter().collect();
        assert_eq!(unique.len(), series.len(), "a series twice in\n{text}");
        let info = text.lines().find(|l| l.starts_with("weft_agent_info{")).expect("info");
        assert!(info.contains(r#"subnet="10.244.1.0/24",subnet6="fd00:10:244:1::/64",version="#), "{info}");

        // IPv6 only: the subnet is held and the node ready though `subnet` (IPv4) is empty.
        st.subnet = None;
        st.peers.retain(|p| p.subnet.contains(':'));
        assert_eq!(readyz(&st, now), Ok(()));
        let text = render(&st, now);
        assert_eq!(value(&text, "weft_subnet_held"), Some(1.0), "{text}");
        assert_eq!(value(&text, "weft_peers"), Some(2.0), "{text}");
        assert_eq!(value(&text, "weft_peer_subnets{family=\"ipv4\"}"), None, "no IPv4 anywhere: {text}");
    }

    #[test]
    fn routes() {
        let now = 1_000_000;
        let st = status(now);
        assert_eq!(respond("/healthz", &st, now).status, 200);
        assert_eq!(respond("/readyz", &st, now).status, 200);
        assert_eq!(respond("/metrics", &st, now).content_type, CONTENT_TYPE);
        assert_eq!(respond("/nope", &st, now).status, 404);
        let mut not = st.clone();
        not.subnet = None;
        let r = respond("/readyz", &not, now);
        assert_eq!(
            (r.status, String::from_utf8_lossy(&r.body).into_owned()),
            (503, "not ready: no subnet held yet\n".into())
        );
    }
}
