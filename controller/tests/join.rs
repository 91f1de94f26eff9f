//! The join service end to end, in one process and without root or a lab: `serve` on
//! 127.0.0.1:0 over an in-memory store (`JoinContext` is generic over the store), the agent's
//! own bootstrap code as the client. Join, every bad-token case, the rate limit, renewal over
//! mutual TLS, and a renewal with a foreign certificate.

use prometheus_client::registry::Registry;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_agent::bootstrap::{self, Outcome, Refused, Retry};
use weft_config::AgentConfig;
use weft_controller::join::server::{serve, JoinContext, JoinMetrics, RateLimit};
use weft_controller::join::{sign, token};
use weft_controller::pki;
use weft_store::{MemStore, Store};

const NET: &str = "lab";

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "weft-join-it-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A join service on 127.0.0.1:0 over a `MemStore`, stopped on drop.
struct Service {
    dir: TempDir,
    store: MemStore,
    url: String,
    pin: String,
    metrics: JoinMetrics,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(tag: &str, rate: RateLimit) -> Service {
    let dir = TempDir::new(tag);
    let ca_dir = dir.0.join("ca");
    pki::init_ca(&ca_dir, &pki::CaOptions::default()).expect("CA");
    let store = MemStore::new();
    let mut registry = Registry::default();
    let mut ctx = JoinContext::new(store.clone(), NET, ca_dir.clone(), Duration::from_secs(3600), "c1", &mut registry);
    ctx.rate = rate;
    let metrics = ctx.metrics.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(serve(listener, ctx));
    let pin = sign::ca_pin(&ca_dir).expect("pin");
    Service { dir, store, url: format!("https://127.0.0.1:{port}"), pin, metrics, task }
}

const LOOSE: RateLimit = RateLimit { burst: 1000, refill: Duration::from_millis(1) };

impl Service {
    fn ca_dir(&self) -> PathBuf {
        self.dir.0.join("ca")
    }

    async fn token(&self, uses: Option<u32>, node: Option<&str>) -> String {
        let req = token::CreateRequest { ttl_secs: 3600, uses, node: node.map(str::to_string) };
        token::create(&self.store, NET, &req, now()).await.expect("token").reveal()
    }

    /// An agent config for `node` whose files live in `self.dir/<node>/`: etcd and quic paths
    /// differ, so both sets are written.
    fn agent(&self, node: &str, token: &str, pin: &str) -> AgentConfig {
        let d = self.dir.0.join(node);
        let d = d.display();
        let text = format!(
            "node_name = \"{node}\"\n[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\nca_file = \"{d}/etcd/ca.pem\"\n\
             cert_file = \"{d}/etcd/{node}.pem\"\nkey_file = \"{d}/etcd/{node}.key\"\n\
             [quic]\nca_file = \"{d}/quic/ca.pem\"\ncert_file = \"{d}/quic/{node}.pem\"\nkey_file = \"{d}/quic/{node}.key\"\n\
             [bootstrap]\nurl = \"{}\"\ntoken = \"{token}\"\nca_pin = \"{pin}\"\n",
            self.url
        );
        AgentConfig::parse("agent.toml", &text).expect("agent config")
    }

    async fn join(&self, cfg: &AgentConfig) -> anyhow::Result<Outcome> {
        bootstrap::ensure(
            cfg,
            Retry { first: Duration::from_millis(50), max: Duration::from_millis(50), attempts: Some(1) },
        )
        .await
    }

    /// A raw request trusting the CA, optionally with a client certificate.
    async fn raw(&self, path: &str, body: &str, client: Option<(&Path, &Path)>) -> (u16, serde_json::Value, String) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&pki::ca_files(&self.ca_dir()).cert)).expect("root");
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let tls = match client {
            None => b.with_no_client_auth(),
            Some((c, k)) => b
                .with_client_auth_cert(vec![der(c)], rustls_pki_types::PrivateKeyDer::from_pem_file(k).expect("key"))
                .expect("client auth"),
        };
        let addr = self.url.trim_start_matches("https://").to_string();
        let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.expect("tls");
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
        (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null), head.to_string())
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

fn verifies(ca: &Path, leaf: &Path, node: &str) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca)).expect("root");
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let sv = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .expect("verifier");
    let cv = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider).build().expect("verifier");
    let name = ServerName::try_from(node.to_string()).expect("name");
    sv.verify_server_cert(&der(leaf), &[], &name, &[], UnixTime::now()).is_ok()
        && cv.verify_client_cert(&der(leaf), &[], UnixTime::now()).is_ok()
}

fn refused(r: anyhow::Result<Outcome>) -> Refused {
    let e = r.expect_err("refused");
    e.chain().find_map(|c| c.downcast_ref::<Refused>()).cloned().unwrap_or_else(|| panic!("not a refusal: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_writes_both_file_sets_and_renewal_over_mutual_tls_replaces_them() {
    let svc = start("join", LOOSE).await;
    let t = svc.token(Some(1), None).await;
    let cfg = svc.agent("n1", &t, &svc.pin);
    let ca = pki::ca_files(&svc.ca_dir()).cert;

    let Outcome::Joined { expires } = svc.join(&cfg).await.expect("join") else { panic!("expected a join") };
    assert!((expires - now() - 3600).abs() <= 5, "lifetime from the context: {expires}");
    for (cert, key) in cfg.cert_paths() {
        assert!(verifies(&ca, &cert, "n1"), "{} chains to the CA for n1 (server and client)", cert.display());
        assert_eq!(mode(&key), 0o600, "{}", key.display());
        assert_eq!(mode(&cert), 0o644, "{}", cert.display());
    }
    assert_eq!(cfg.cert_paths().len(), 2, "etcd and quic paths differ in this config");
    for p in cfg.ca_paths() {
        assert_eq!(std::fs::read(&p).expect("ca"), std::fs::read(&ca).expect("ca"), "{}", p.display());
        assert_eq!(mode(&p), 0o644);
    }
    assert!(!verifies(&ca, &cfg.cert_paths()[0].0, "n2"), "the certificate names n1 only");
    assert_eq!(svc.metrics.issued(), 1);
    // The files exist now: a restart does not join again (the token is used up anyway).
    assert_eq!(svc.join(&cfg).await.expect("present"), Outcome::Present);

    // Renewal: a new certificate and key, over mutual TLS with the current ones.
    let (cert0, key0) = cfg.cert_paths()[0].clone();
    let (old_cert, old_key) = (std::fs::read(&cert0).expect("cert"), std::fs::read(&key0).expect("key"));
    bootstrap::renew_once(&cfg).await.expect("renewal");
    assert_eq!(svc.metrics.renewals(), 1);
    for (cert, key) in cfg.cert_paths() {
        assert_ne!(std::fs::read(&cert).expect("cert"), old_cert, "new certificate in {}", cert.display());
        assert_ne!(std::fs::read(&key).expect("key"), old_key, "new key in {}", key.display());
        assert!(verifies(&ca, &cert, "n1"));
        assert_eq!(mode(&key), 0o600);
    }
    let left: Vec<_> = std::fs::read_dir(cert0.parent().expect("dir"))
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");

    // Renewal without a client certificate: refused and counted.
    let (status, body, _) = svc.raw("/v1/renew", "{\"csr_pem\":\"x\"}", None).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("no_client_cert")));
    assert_eq!(svc.metrics.refused("no_client_cert"), 1);
    // With n1's certificate, a CSR that is not one is refused.
    let (status, body, _) = svc.raw("/v1/renew", "{\"csr_pem\":\"x\"}", Some((&cert0, &key0))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_csr")));

    // A certificate for n1 from a foreign CA: the handshake fails, nothing is issued.
    let foreign = TempDir::new("foreign");
    pki::init_ca(&foreign.0, &pki::CaOptions::default()).expect("foreign CA");
    pki::issue(&foreign.0, &foreign.0, &pki::IssueRequest::node("n1")).expect("foreign cert");
    let forged = svc.agent("forged", &t, &svc.pin);
    let mut forged_text = format!(
        "node_name = \"n1\"\n[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\nca_file = \"{}\"\ncert_file = \"{}\"\n\
         key_file = \"{}\"\n",
        ca.display(),
        pki::cert_files(&foreign.0, "n1").cert.display(),
        pki::cert_files(&foreign.0, "n1").key.display()
    );
    let b = forged.bootstrap.expect("bootstrap");
    forged_text
        .push_str(&format!("[bootstrap]\nurl = \"{}\"\ntoken = \"{}\"\nca_pin = \"{}\"\n", b.url, b.token, b.ca_pin));
    let forged = AgentConfig::parse("agent.toml", &forged_text).expect("config");
    let before = std::fs::read(pki::cert_files(&foreign.0, "n1").cert).expect("cert");
    assert!(bootstrap::renew_once(&forged).await.is_err(), "a foreign certificate cannot renew");
    assert_eq!(std::fs::read(pki::cert_files(&foreign.0, "n1").cert).expect("cert"), before, "untouched");
    assert_eq!(svc.metrics.renewals(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(svc.metrics.refused("tls") >= 1, "the failed handshake is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_case_gets_its_error_and_is_counted() {
    let svc = start("bad", LOOSE).await;
    let good = svc.token(Some(1), None).await;
    let (id, _) = good.split_once('.').expect("token");

    // Unknown id.
    let r = refused(svc.join(&svc.agent("n1", "zzzzzz.0123456789abcdef", &svc.pin)).await);
    assert_eq!((r.status, r.code.as_str()), (401, "unknown"));
    // Wrong secret.
    let r = refused(svc.join(&svc.agent("n1", &format!("{id}.0000000000000000"), &svc.pin)).await);
    assert_eq!((r.status, r.code.as_str()), (401, "wrong_secret"));
    // Expired: a record whose time has passed.
    let old = token::Token::generate().expect("token");
    let rec =
        token::TokenRecord::new(&old, &token::CreateRequest { ttl_secs: 60, uses: None, node: None }, now() - 120);
    svc.store
        .put(&weft_config::Keys::new(NET).token(old.id()), serde_json::to_vec(&rec).expect("json"), 0)
        .await
        .expect("put");
    let r = refused(svc.join(&svc.agent("n1", &old.reveal(), &svc.pin)).await);
    assert_eq!((r.status, r.code.as_str()), (401, "expired"));
    // Wrong node.
    let for_n9 = svc.token(None, Some("n9")).await;
    let r = refused(svc.join(&svc.agent("n1", &for_n9, &svc.pin)).await);
    assert_eq!((r.status, r.code.as_str()), (403, "wrong_node"));
    // Used up: the one use goes to n1, n2 is refused.
    svc.join(&svc.agent("n1", &good, &svc.pin)).await.expect("n1 joins");
    let r = refused(svc.join(&svc.agent("n2", &good, &svc.pin)).await);
    assert_eq!((r.status, r.code.as_str()), (403, "used_up"));
    assert!(r.to_string().contains("no uses left"), "{r}");
    // Bad format (agent.toml refuses it already; a raw client can still send it).
    let (status, body, _) = svc.raw("/v1/join", "{\"token\":\"nope\",\"node\":\"n3\",\"csr_pem\":\"x\"}", None).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("bad_format")));
    // Not JSON.
    let (status, body, _) = svc.raw("/v1/join", "token=x", None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    // A good token with a CSR for another node: refused, and the use is not spent.
    let two = svc.token(Some(1), None).await;
    let (status, body, _) = svc
        .raw("/v1/join", &serde_json::json!({"token": two, "node": "n4", "csr_pem": "not a csr"}).to_string(), None)
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_csr")));
    svc.join(&svc.agent("n4", &two, &svc.pin)).await.expect("the use was not spent");

    for (reason, n) in [
        ("unknown", 1),
        ("wrong_secret", 1),
        ("expired", 1),
        ("wrong_node", 1),
        ("used_up", 1),
        ("bad_format", 1),
        ("bad_request", 1),
        ("bad_csr", 1),
        ("rate_limited", 0),
    ] {
        assert_eq!(svc.metrics.refused(reason), n, "refused{{reason={reason}}}");
    }
    assert_eq!(svc.metrics.issued(), 2);
    // The used-up record is kept with 0 uses, for that error.
    let listed = token::list(&svc.store, NET).await.expect("list");
    let (_, rec) = listed.iter().find(|(i, _)| i == id).expect("kept");
    assert_eq!(rec.as_ref().expect("record").uses_left, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_is_never_trusted() {
    let svc = start("pin", LOOSE).await;
    let t = svc.token(None, None).await;
    let cfg = svc.agent("n1", &t, &format!("sha256:{}", "0".repeat(64)));
    let e = svc.join(&cfg).await.expect_err("wrong pin");
    assert!(format!("{e:#}").contains("ca_pin"), "{e:#}");
    assert!(e.chain().all(|c| c.downcast_ref::<Refused>().is_none()), "a network-level failure, retried: {e:#}");
    assert!(cfg.cert_paths().iter().all(|(c, k)| !c.exists() && !k.exists()), "nothing written");
    assert_eq!(svc.metrics.issued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_rate_limited_per_source() {
    let svc = start("rate", RateLimit { burst: 3, refill: Duration::from_secs(60) }).await;
    let bad = "{\"token\":\"zzzzzz.0123456789abcdef\",\"node\":\"n1\",\"csr_pem\":\"x\"}";
    for _ in 0..3 {
        assert_eq!(svc.raw("/v1/join", bad, None).await.0, 401);
    }
    let (status, body, head) = svc.raw("/v1/join", bad, None).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("rate_limited")));
    assert!(head.contains("Retry-After: "), "{head}");
    // While limited even a good token waits (the agent retries 429 like a network error).
    let t = svc.token(None, None).await;
    let e = svc.join(&svc.agent("n1", &t, &svc.pin)).await.expect_err("limited");
    assert!(format!("{e:#}").contains("429"), "{e:#}");
    assert!(e.chain().all(|c| c.downcast_ref::<Refused>().is_none()), "429 is not a refusal for good");
    assert_eq!(svc.metrics.refused("unknown"), 3);
    assert_eq!(svc.metrics.refused("rate_limited"), 2);
    assert_eq!(svc.metrics.issued(), 0);
}

/// A single etcd member on 127.0.0.1 (plain HTTP) in a temporary directory, killed on drop.
struct LocalEtcd {
    child: std::process::Child,
    url: String,
    _dir: TempDir,
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

async fn local_etcd() -> Option<(LocalEtcd, weft_store::EtcdStore)> {
    let dir = TempDir::new("etcd");
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let child = std::process::Command::new("etcd")
        .arg("--name=join-test")
        .arg(format!("--data-dir={}", dir.0.join("data").display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--advertise-client-urls={url}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!("--initial-cluster=join-test=http://127.0.0.1:{peer}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipping: cannot run etcd: {e}");
            return None;
        }
    };
    let etcd = LocalEtcd { child, url: url.clone(), _dir: dir };
    let opts = weft_store::EtcdOpts::parse("--etcd", &url, None, None, None).expect("opts");
    for _ in 0..100 {
        if let Ok(store) = weft_store::EtcdStore::connect_opts(&opts).await {
            return Some((etcd, store));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd at {} did not come up", etcd.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_real_etcd_the_uses_of_a_token_are_never_exceeded() {
    let Some((_etcd, store)) = local_etcd().await else { return };
    let dir = TempDir::new("real");
    let ca_dir = dir.0.join("ca");
    pki::init_ca(&ca_dir, &pki::CaOptions::default()).expect("CA");
    let mut registry = Registry::default();
    // The daemon's type: JoinContext over EtcdStore (the default parameter).
    let ctx: JoinContext =
        JoinContext::new(store.clone(), NET, ca_dir.clone(), Duration::from_secs(3600), "c1", &mut registry);
    let metrics = ctx.metrics.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(serve(listener, ctx));
    let pin = sign::ca_pin(&ca_dir).expect("pin");
    let req = token::CreateRequest { ttl_secs: 600, uses: Some(3), node: None };
    let t = token::create(&store, NET, &req, now()).await.expect("token").reveal();

    // Six nodes race for three uses.
    let joins: Vec<_> = (1..=6)
        .map(|i| {
            let d = dir.0.join(format!("n{i}"));
            let text = format!(
                "node_name = \"n{i}\"\n[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\nca_file = \"{d}/ca.pem\"\n\
                 cert_file = \"{d}/n{i}.pem\"\nkey_file = \"{d}/n{i}.key\"\n[bootstrap]\nurl = \"{url}\"\n\
                 token = \"{t}\"\nca_pin = \"{pin}\"\n",
                d = d.display()
            );
            let cfg = AgentConfig::parse("agent.toml", &text).expect("config");
            tokio::spawn(async move {
                bootstrap::ensure(
                    &cfg,
                    Retry { first: Duration::from_millis(50), max: Duration::from_millis(50), attempts: Some(1) },
                )
                .await
            })
        })
        .collect();
    let (mut ok, mut used_up) = (0, 0);
    for j in joins {
        match j.await.expect("task") {
            Ok(Outcome::Joined { .. }) => ok += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => {
                assert_eq!(refused(Err(e)).code, "used_up");
                used_up += 1;
            }
        }
    }
    assert_eq!((ok, used_up), (3, 3));
    assert_eq!((metrics.issued(), metrics.refused("used_up")), (3, 3));
    let listed = token::list(&store, NET).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1.as_ref().expect("record").uses_left, Some(0));
    task.abort();
}
