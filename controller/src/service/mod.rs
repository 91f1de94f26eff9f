//! `weft-controller`, the cluster's control service: one to three replicas elect a leader
//! through etcd (`leader`); the leader evicts dead nodes (`evict`, a pure state machine it
//! feeds); every replica serves the cluster page, its JSON and the metrics on one plain-HTTP
//! listener (`http`, `view`, `metrics`). The join service (`[bootstrap]`) is wired here too.

pub mod config;
pub mod evict;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod view;

use anyhow::Context;
use config::ControllerConfig;
use evict::{Evictor, Policy, Scan};
use metrics::Metrics;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use view::{GuardState, Local, Raw};
use weft_config::Keys;
use weft_store::EtcdStore;

/// The cluster page: one self-contained HTML file, no assets from outside the binary.
pub const PAGE: &str = include_str!("page.html");

/// How often every replica re-reads the cluster for the page and the metrics.
const VIEW_REFRESH: Duration = Duration::from_secs(2);

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn now_secs() -> u64 {
    now_ms() / 1000
}

#[derive(Default)]
struct Live {
    is_leader: bool,
    guard: GuardState,
    view: Vec<u8>,
}

/// What the tasks of the daemon share.
pub struct Shared {
    pub name: String,
    pub cfg: ControllerConfig,
    pub keys: Keys,
    /// This replica's page, as published in the election value.
    pub page: String,
    pub metrics: Metrics,
    live: RwLock<Live>,
}

impl Shared {
    pub fn new(name: String, cfg: ControllerConfig) -> Self {
        let page = page_url(&cfg, &name);
        Self { keys: Keys::new(&cfg.network), name, cfg, page, metrics: Metrics::new(), live: RwLock::default() }
    }

    /// The value of this candidate's election key.
    pub fn election_value(&self) -> String {
        serde_json::json!({ "name": self.name, "page": self.page }).to_string()
    }

    pub fn is_leader(&self) -> bool {
        self.live.read().is_ok_and(|l| l.is_leader)
    }

    pub fn set_leader(&self, leading: bool) {
        self.metrics.leader.set(i64::from(leading));
        if !leading {
            self.metrics.eviction_held.set(0);
        }
        if let Ok(mut l) = self.live.write() {
            l.is_leader = leading;
            if !leading {
                l.guard = GuardState::default();
            }
        }
    }

    /// Records the guard's state after a leader scan.
    pub fn note_scan(&self, scan: &Scan) {
        self.metrics.eviction_held.set(i64::from(scan.held.is_some()));
        if let Ok(mut l) = self.live.write() {
            let since = match (&scan.held, l.guard.since) {
                (None, _) => None,
                (Some(_), Some(t)) if !scan.held_started => Some(t),
                (Some(_), _) => Some(now_secs()),
            };
            l.guard = GuardState { held: scan.held.is_some(), dead: scan.dead, total: scan.nodes, since };
        }
    }

    fn local(&self) -> Local {
        let (is_leader, guard) = self.live.read().map(|l| (l.is_leader, l.guard.clone())).unwrap_or_default();
        Local {
            controller: self.name.clone(),
            network: self.cfg.network.clone(),
            is_leader,
            guard: is_leader.then_some(guard),
            evict_after_secs: self.cfg.evict.after.as_secs(),
            max_dead_share: self.cfg.evict.max_dead_share,
        }
    }

    /// The JSON of `/api/cluster`.
    pub fn view_json(&self) -> Vec<u8> {
        self.live.read().map(|l| l.view.clone()).unwrap_or_default()
    }

    fn set_view(&self, json: Vec<u8>) {
        if let Ok(mut l) = self.live.write() {
            l.view = json;
        }
    }
}

/// `http://<listen>/`, with the candidate name for a wildcard listen address.
fn page_url(cfg: &ControllerConfig, name: &str) -> String {
    let a = cfg.http.listen;
    match a.ip() {
        ip if ip.is_unspecified() => format!("http://{name}:{}/", a.port()),
        std::net::IpAddr::V6(ip) => format!("http://[{ip}]:{}/", a.port()),
        ip => format!("http://{ip}:{}/", a.port()),
    }
}

/// The route table of the HTTP listener.
pub fn respond(shared: &Shared, path: &str) -> http::Reply {
    match path {
        "/" | "/index.html" => {
            http::Reply { status: 200, content_type: "text/html; charset=utf-8", body: PAGE.as_bytes().to_vec() }
        }
        "/api/cluster" => http::Reply { status: 200, content_type: "application/json", body: shared.view_json() },
        "/metrics" => {
            http::Reply { status: 200, content_type: metrics::CONTENT_TYPE, body: shared.metrics.render().into_bytes() }
        }
        "/healthz" => http::Reply::text(200, "ok\n"),
        _ => http::Reply::text(404, "not found: try /, /api/cluster, /metrics or /healthz\n"),
    }
}

/// Re-reads the cluster for the page and the metrics, forever.
async fn refresh_view(shared: Arc<Shared>, store: watch::Receiver<Option<EtcdStore>>) {
    let mut tick = tokio::time::interval(VIEW_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<view::ClusterView> = None;
    loop {
        tick.tick().await;
        let current = store.borrow().clone();
        let read = match current {
            None => Err(anyhow::anyhow!("not connected to etcd yet")),
            Some(s) => match tokio::time::timeout(Duration::from_secs(5), view::read(&s, &shared.cfg.network)).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("etcd did not answer within 5 s")),
            },
        };
        let local = shared.local();
        let now = now_secs();
        let v = match read {
            Ok(raw) => {
                let v = view::build(&local, &raw, now);
                let (nodes, alive) = view::node_counts(&v);
                shared.metrics.nodes.set(nodes as i64);
                shared.metrics.nodes_alive.set(alive as i64);
                for f in &v.free {
                    shared.metrics.set_free(f.family, f.free);
                }
                last = Some(v.clone());
                v
            }
            Err(e) => {
                let mut v = last.clone().unwrap_or_else(|| view::build(&local, &Raw::default(), now));
                v.is_leader = local.is_leader;
                v.guard = local.guard.clone();
                v.error = Some(format!("{e:#}"));
                v
            }
        };
        shared.set_view(serde_json::to_vec(&v).unwrap_or_default());
    }
}

/// The join service on `listener`, from the first etcd connection on. Ends only on an error
/// (the CA cannot be read), which is logged: the rest of the controller keeps running.
async fn serve_join(
    shared: Arc<Shared>,
    b: config::BootstrapConfig,
    listener: tokio::net::TcpListener,
    mut store: watch::Receiver<Option<EtcdStore>>,
) {
    let first = match store.wait_for(Option::is_some).await {
        Ok(s) => s.clone(),
        Err(_) => return,
    };
    let Some(s) = first else { return };
    let ctx = {
        let registry = shared.metrics.registry();
        let mut reg = registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::join::server::JoinContext::new(
            s,
            &shared.cfg.network,
            b.ca_dir.clone(),
            b.cert_lifetime,
            &shared.name,
            &mut reg,
        )
    };
    tracing::info!(listen = %b.listen, ca_dir = %b.ca_dir.display(), "serving the join service (HTTPS: /v1/join, /v1/renew)");
    if let Err(e) = crate::join::server::serve(listener, ctx).await {
        tracing::error!(error = %format!("{e:#}"), "the join service stopped");
    }
}

/// Terms of the election, one after the other, until shutdown.
async fn elections(
    shared: Arc<Shared>,
    store_tx: watch::Sender<Option<EtcdStore>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let policy = Policy { after: shared.cfg.evict.after, max_dead_share: shared.cfg.evict.max_dead_share };
    let mut evictor = Evictor::new(policy);
    let mut backoff = Duration::from_secs(1);
    loop {
        let connected = tokio::select! {
            r = EtcdStore::connect(&shared.cfg.etcd) => r,
            _ = leader::stopped(&mut shutdown) => return,
        };
        let store = match connected {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "etcd not reachable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = leader::stopped(&mut shutdown) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        store_tx.send_replace(Some(store.clone()));
        match leader::term(&store, &shared, &mut evictor, &mut shutdown).await {
            leader::Ended::Shutdown => return,
            leader::Ended::Lost(why) => {
                tracing::warn!(reason = %why, "out of the election; campaigning again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = leader::stopped(&mut shutdown) => return,
                }
            }
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT; then resigns, revokes and returns.
pub async fn run(cfg: ControllerConfig, name: String) -> anyhow::Result<()> {
    let shared = Arc::new(Shared::new(name, cfg));
    let cfg = &shared.cfg;
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("listening on {} ([http] listen)", cfg.http.listen))?;
    tracing::info!(controller = %shared.name, network = %cfg.network, listen = %cfg.http.listen, "serving /, /api/cluster, /metrics and /healthz");
    shared.set_view(serde_json::to_vec(&view::build(&shared.local(), &Raw::default(), now_secs())).unwrap_or_default());
    let s = shared.clone();
    let handler: http::Handler = Arc::new(move |path: &str| respond(&s, path));
    let http_task = tokio::spawn(http::serve(listener, handler));

    let (store_tx, store_rx) = watch::channel(None);
    // The join service runs on every replica (tokens are taken with a compare in etcd, so it
    // needs no leader); it is bound now, so a bad address fails the start, and serves once
    // etcd is connected.
    let join_task = match &cfg.bootstrap {
        None => None,
        Some(b) => {
            let listener = tokio::net::TcpListener::bind(b.listen)
                .await
                .with_context(|| format!("listening on {} ([bootstrap] listen)", b.listen))?;
            Some(tokio::spawn(serve_join(shared.clone(), b.clone(), listener, store_rx.clone())))
        }
    };
    let view_task = tokio::spawn(refresh_view(shared.clone(), store_rx));
    let (stop_tx, stop_rx) = watch::channel(false);
    let election = tokio::spawn(elections(shared.clone(), store_tx, stop_rx));

    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: resigning and exiting"),
        _ = int.recv() => tracing::info!("SIGINT: resigning and exiting"),
    }
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(10), election).await.is_err() {
        tracing::warn!("the election task did not end within 10 s");
    }
    view_task.abort();
    http_task.abort();
    if let Some(t) = join_task {
        t.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        let cfg = ControllerConfig::parse("c.toml", "name = \"c1\"\n[etcd]\nendpoints = [\"http://a:2379\"]\n")
            .expect("valid");
        Shared::new("c1".into(), cfg)
    }

    #[test]
    fn routes() {
        let s = shared();
        s.set_view(b"{}".to_vec());
        let page = respond(&s, "/");
        assert_eq!((page.status, page.content_type), (200, "text/html; charset=utf-8"));
        let html = String::from_utf8(page.body).expect("utf8");
        assert!(html.contains("fetch(\"/api/cluster\""), "the page polls the JSON");
        for external in ["src=\"http", "href=\"http", "@import", "<link", "<canvas", "EventSource", "WebSocket"] {
            assert!(!html.contains(external), "self-contained, no canvas or streams: {external}");
        }
        assert_eq!(respond(&s, "/api/cluster").body, b"{}");
        assert_eq!(respond(&s, "/healthz").body, b"ok\n");
        assert!(String::from_utf8(respond(&s, "/metrics").body).expect("utf8").contains("weft_controller_leader 0"));
        assert_eq!(respond(&s, "/nope").status, 404);
        assert_eq!(s.election_value(), r#"{"name":"c1","page":"http://c1:9650/"}"#);
    }

    #[test]
    fn leadership_and_guard_show_in_state_and_metrics() {
        let s = shared();
        s.set_leader(true);
        assert!(s.is_leader());
        let scan = Scan {
            nodes: 4,
            dead: 3,
            evict: vec![],
            held: Some(evict::Guard { dead: 3, total: 4 }),
            held_started: true,
            held_ended: false,
        };
        s.note_scan(&scan);
        let l = s.local();
        let g = l.guard.expect("leader shows its guard");
        assert!(g.held && g.since.is_some() && (g.dead, g.total) == (3, 4));
        assert!(s.metrics.render().contains("weft_controller_eviction_held 1"));
        s.set_leader(false);
        assert!(s.local().guard.is_none(), "a standby shows no guard");
        assert!(s.metrics.render().contains("weft_controller_eviction_held 0"));
    }
}
