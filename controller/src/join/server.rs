//! The join service: HTTPS (rustls through tokio-rustls) with two endpoints.
//!
//! - `POST /v1/join` `{"token","node","csr_pem"}` → `{"cert_pem","ca_pem","expires"}`: a node
//!   without a certificate trades a join token and a CSR for a node certificate.
//! - `POST /v1/renew` `{"csr_pem"}` over mutual TLS (a client certificate from the cluster CA;
//!   its common name is the node) → the same answer: a new certificate for the same node.
//!
//! Errors are JSON `{"error": <code>, "message": <text>}`: 401 for a token that is malformed,
//! unknown, has a wrong secret or has expired; 403 for a used-up or wrong-node token; 400 for a
//! bad body or CSR; 401 `no_client_cert` for a renewal without a certificate; 429
//! `rate_limited`; 503 when etcd fails. Each refusal is counted in
//! `weft_controller_join_refused_total{reason}`.
//!
//! Rate limit: per source IP a token bucket of [`RateLimit::burst`] refused requests (and
//! failed TLS handshakes) refilled at one per [`RateLimit::refill`]; a successful join or
//! renewal costs nothing. An IP with an empty bucket is answered 429 with `Retry-After`.
//!
//! The server certificate is made at start (and again at half its lifetime) from the cluster
//! CA: common name and SAN the controller's name, plus the listen IP (every local address when
//! listening on 0.0.0.0 or ::) and [`JoinContext::extra_sans`]. The chain sent is the leaf and
//! the CA, so a new node can check the CA against its pin. Secrets are never logged.

use super::sign::{self, CsrError, Signer};
use super::token::{self, Refusal, Token};
use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{info, warn};
use weft_store::{EtcdStore, Store};

/// Largest request head.
const MAX_HEAD: usize = 8 * 1024;
/// Largest request body.
const MAX_BODY: usize = 64 * 1024;
/// Time a client gets for the handshake, the request and the answer.
const CONN_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 64;
/// Source IPs remembered by the rate limiter before full buckets are forgotten.
const MAX_TRACKED_IPS: usize = 4096;
/// Connections served at once from one source (an IPv4 address or an IPv6 /64), so that a few
/// idle connections from one place cannot hold every slot.
const MAX_PER_SOURCE: usize = 8;

/// The unit the rate limit and the connection cap count by: an IPv4 address, or the /64 of an
/// IPv6 one (one host usually holds a whole /64).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & !((1u128 << 64) - 1))),
    }
}

/// Per source IP token bucket for refused requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Refused requests an IP may make in a row.
    pub burst: u32,
    /// Time to earn one more.
    pub refill: Duration,
}

impl Default for RateLimit {
    /// 10 in a burst, then one every 6 s (10 a minute).
    fn default() -> Self {
        Self { burst: 10, refill: Duration::from_secs(6) }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// The join service's counters, registered in the daemon's registry.
#[derive(Clone, Default)]
pub struct JoinMetrics {
    issued: Counter,
    renewals: Counter,
    refused: Family<ReasonLabel, Counter>,
}

/// Reasons counted besides the token [`Refusal`]s.
pub const OTHER_REASONS: [&str; 5] = ["bad_request", "bad_csr", "no_client_cert", "tls", "rate_limited"];

impl JoinMetrics {
    /// Registers `join_issued_total`, `join_refused_total{reason}` (every reason present from the
    /// start, at 0) and `renewals_total` in `registry`, which carries the daemon's
    /// `weft_controller` prefix (so `weft_controller_join_issued_total`, ...).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("join_issued", "Node certificates issued for join tokens", m.issued.clone());
        registry.register("join_refused", "Join and renewal requests refused, by reason", m.refused.clone());
        registry.register("renewals", "Node certificates renewed over mutual TLS", m.renewals.clone());
        for r in Refusal::REASONS.iter().chain(OTHER_REASONS.iter()) {
            drop(m.refused.get_or_create(&ReasonLabel { reason: (*r).to_string() }));
        }
        m
    }

    pub fn issued(&self) -> u64 {
        self.issued.get()
    }

    pub fn renewals(&self) -> u64 {
        self.renewals.get()
    }

    pub fn refused(&self, reason: &str) -> u64 {
        self.refused.get_or_create(&ReasonLabel { reason: reason.to_string() }).get()
    }

    fn refuse(&self, reason: &str) {
        self.refused.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
    }
}

/// Everything [`serve`] needs. Generic over the store so tests can use `MemStore`; the daemon
/// uses the default, [`EtcdStore`].
#[derive(Clone)]
pub struct JoinContext<S: Store = EtcdStore> {
    pub store: S,
    /// The weft network (etcd key space) whose tokens are accepted.
    pub network: String,
    /// `ca.pem` and `ca.key` (the layout of [`crate::pki`]).
    pub ca_dir: PathBuf,
    /// Lifetime of the node certificates issued (capped at the CA's expiry).
    pub cert_lifetime: Duration,
    /// The controller's name: common name and DNS SAN of its HTTPS certificate.
    pub name: String,
    /// More SANs for the HTTPS certificate (IPs or DNS names, e.g. a VIP the nodes use).
    pub extra_sans: Vec<String>,
    pub rate: RateLimit,
    pub metrics: JoinMetrics,
}

impl<S: Store> JoinContext<S> {
    /// A context with the default rate limit, registering the join counters in `registry`.
    pub fn new(
        store: S,
        network: &str,
        ca_dir: PathBuf,
        cert_lifetime: Duration,
        name: &str,
        registry: &mut Registry,
    ) -> Self {
        Self {
            store,
            network: network.to_string(),
            ca_dir,
            cert_lifetime,
            name: name.to_string(),
            extra_sans: Vec::new(),
            rate: RateLimit::default(),
            metrics: JoinMetrics::register(registry),
        }
    }
}

/// `POST /v1/join` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    pub node: String,
    pub csr_pem: String,
}

/// `POST /v1/renew` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
}

/// The answer to both.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertResponse {
    pub cert_pem: String,
    pub ca_pem: String,
    /// Unix seconds.
    pub expires: i64,
}

/// Every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
    pub message: String,
}

/// Serves the join service on `listener` until the task is dropped or the CA cannot be loaded.
pub async fn serve<S: Store>(listener: TcpListener, ctx: JoinContext<S>) -> anyhow::Result<()> {
    let signer = Arc::new(Signer::load(&ctx.ca_dir, ctx.cert_lifetime)?);
    let local = listener.local_addr().context("reading the join listener's address")?;
    let sans = server_sans(&ctx, local);
    let resolver = Arc::new(Rotating::new(signer.clone(), ctx.name.clone(), sans)?);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(sign::pem_to_der(signer.ca_pem().as_bytes())?).context("the cluster CA as a trust root")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .context("building the client certificate verifier")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver.clone());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let shared = Arc::new(Shared { ctx, signer, limiter: Mutex::new(Limiter::default()) });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_source: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    info!(listen = %local, pin = %shared.signer.pin(), "join service listening");
    loop {
        let permit = slots.clone().acquire_owned().await.context("connection slots closed")?;
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accepting a join connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = resolver.refresh_if_due() {
            warn!(error = %format!("{e:#}"), "renewing the join service's certificate; keeping the old one");
        }
        let src = source(peer.ip());
        {
            let mut open = lock(&per_source);
            let n = open.entry(src).or_insert(0);
            if *n >= MAX_PER_SOURCE {
                drop(open);
                tracing::debug!(peer = %peer, "too many join connections from one source; closed");
                shared.ctx.metrics.refuse("rate_limited");
                lock(&shared.limiter).debit(src, shared.ctx.rate, Instant::now());
                continue;
            }
            *n += 1;
        }
        let (acceptor, shared, per_source) = (acceptor.clone(), shared.clone(), per_source.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if tokio::time::timeout(CONN_DEADLINE, connection(tcp, peer, acceptor, &shared)).await.is_err() {
                tracing::debug!(peer = %peer, "join connection timed out");
                // A connection that never finished costs like a refusal.
                lock(&shared.limiter).debit(src, shared.ctx.rate, Instant::now());
            }
            let mut open = lock(&per_source);
            if let Some(n) = open.get_mut(&src) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&src);
                }
            }
        });
    }
}

struct Shared<S: Store> {
    ctx: JoinContext<S>,
    signer: Arc<Signer>,
    limiter: Mutex<Limiter>,
}

/// The SANs of the server certificate besides the name.
fn server_sans<S: Store>(ctx: &JoinContext<S>, local: SocketAddr) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if local.ip().is_unspecified() {
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for a in addrs {
                let ip = a.address.as_ref().and_then(|s| {
                    s.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                });
                if let Some(ip) = ip {
                    let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
                    if !link_local && (local.is_ipv6() || ip.is_ipv4()) {
                        out.push(ip.to_string());
                    }
                }
            }
        }
    } else {
        out.push(local.ip().to_string());
    }
    out.extend(ctx.extra_sans.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|s| seen.insert(s.clone()));
    out
}

/// The server certificate, re-issued at half its lifetime.
#[derive(Debug)]
struct Rotating {
    signer: Arc<SignerRef>,
    name: String,
    sans: Vec<String>,
    current: RwLock<(Arc<CertifiedKey>, Instant)>,
}

/// `Signer` is not `Debug` (it holds the CA key); this wrapper says nothing about it.
struct SignerRef(Arc<Signer>);

impl std::fmt::Debug for SignerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer")
    }
}

impl Rotating {
    fn new(signer: Arc<Signer>, name: String, sans: Vec<String>) -> anyhow::Result<Self> {
        let signer = Arc::new(SignerRef(signer));
        let key = issue_server(&signer.0, &name, &sans)?;
        Ok(Self { signer, name, sans, current: RwLock::new((key, Instant::now())) })
    }

    fn refresh_if_due(&self) -> anyhow::Result<()> {
        let since = self.current.read().unwrap_or_else(|p| p.into_inner()).1.elapsed();
        if since < self.signer.0.lifetime() / 2 {
            return Ok(());
        }
        let key = issue_server(&self.signer.0, &self.name, &self.sans)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (key, Instant::now());
        info!("renewed the join service's certificate");
        Ok(())
    }
}

impl ResolvesServerCert for Rotating {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).0.clone())
    }
}

fn issue_server(signer: &Signer, name: &str, sans: &[String]) -> anyhow::Result<Arc<CertifiedKey>> {
    let (chain, key) = signer.server_identity(name, sans, time::OffsetDateTime::now_utc())?;
    let provider = rustls::crypto::ring::default_provider();
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider).context("loading the server certificate")?))
}

/// Per-IP buckets of refused requests.
#[derive(Default)]
struct Limiter {
    buckets: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn level(&self, rate: RateLimit, now: Instant) -> f64 {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() / rate.refill.as_secs_f64().max(1e-3);
        (self.tokens + earned).min(f64::from(rate.burst))
    }
}

impl Limiter {
    /// Whether `ip` may be heard now; if not, the seconds until it may.
    fn check(&self, ip: IpAddr, rate: RateLimit, now: Instant) -> Result<(), u64> {
        match self.buckets.get(&ip) {
            Some(b) => {
                let level = b.level(rate, now);
                if level >= 1.0 {
                    Ok(())
                } else {
                    Err(((1.0 - level) * rate.refill.as_secs_f64()).ceil().max(1.0) as u64)
                }
            }
            None => Ok(()),
        }
    }

    /// Takes a token for a request about to be served: [`Self::check`] and [`Self::debit`] under
    /// one lock, so requests made in parallel cannot all pass before any is debited. A request
    /// that turns out not to be refused gets its token back ([`Self::refund`]).
    fn take(&mut self, ip: IpAddr, rate: RateLimit, now: Instant) -> Result<(), u64> {
        self.check(ip, rate, now)?;
        self.debit(ip, rate, now);
        Ok(())
    }

    /// Gives back the token [`Self::take`] took (the request was not refused).
    fn refund(&mut self, ip: IpAddr, rate: RateLimit, now: Instant) {
        if let Some(b) = self.buckets.get_mut(&ip) {
            let level = b.level(rate, now);
            *b = Bucket { tokens: (level + 1.0).min(f64::from(rate.burst)), at: now };
        }
    }

    /// Takes one token from `ip`'s bucket (a refused request).
    fn debit(&mut self, ip: IpAddr, rate: RateLimit, now: Instant) {
        if self.buckets.len() >= MAX_TRACKED_IPS {
            self.buckets.retain(|_, b| b.level(rate, now) < f64::from(rate.burst));
        }
        if self.buckets.len() >= MAX_TRACKED_IPS {
            // Still full (many sources refused at once): the older half is forgotten, so the
            // map stays bounded.
            let mut ats: Vec<Instant> = self.buckets.values().map(|b| b.at).collect();
            ats.sort_unstable();
            let cut = ats[ats.len() / 2];
            self.buckets.retain(|_, b| b.at > cut);
        }
        let level = self.buckets.get(&ip).map_or(f64::from(rate.burst), |b| b.level(rate, now));
        self.buckets.insert(ip, Bucket { tokens: (level - 1.0).max(0.0), at: now });
    }
}

/// An answer: status, JSON body, and for 429 the seconds to wait.
struct Answer {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<u64>,
}

impl Answer {
    fn json<T: Serialize>(status: u16, v: &T) -> Self {
        Self { status, body: serde_json::to_vec(v).unwrap_or_default(), retry_after: None }
    }

    fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self::json(status, &ErrorResponse { error: code.to_string(), message: message.into() })
    }
}

fn reason_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    }
}

async fn connection<S: Store>(tcp: TcpStream, peer: SocketAddr, acceptor: tokio_rustls::TlsAcceptor, sh: &Shared<S>) {
    let ip = source(peer.ip());
    let rate = sh.ctx.rate;
    let mut tls = match acceptor.accept(tcp).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(peer = %peer, error = %e, "join TLS handshake failed");
            sh.ctx.metrics.refuse("tls");
            lock(&sh.limiter).debit(ip, rate, Instant::now());
            return;
        }
    };
    // The request is read (bounded) even from a limited source, so the client gets its 429
    // rather than a broken pipe.
    let request = read_request(&mut tls).await;
    let limited = lock(&sh.limiter).take(ip, rate, Instant::now());
    let answer = match limited {
        Err(wait) => {
            sh.ctx.metrics.refuse("rate_limited");
            let mut a =
                Answer::error(429, "rate_limited", format!("too many refused requests from {ip}; wait {wait} s"));
            a.retry_after = Some(wait);
            a
        }
        Ok(()) => {
            let client = tls.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
            let a = match request {
                Ok(req) => route(sh, req, client, peer).await,
                Err(a) => {
                    sh.ctx.metrics.refuse("bad_request");
                    a
                }
            };
            if !(400..500).contains(&a.status) {
                lock(&sh.limiter).refund(ip, rate, Instant::now());
            }
            a
        }
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        reason_text(answer.status),
        answer.body.len()
    );
    if let Some(s) = answer.retry_after {
        head.push_str(&format!("Retry-After: {s}\r\n"));
    }
    head.push_str("\r\n");
    let _ = tls.write_all(head.as_bytes()).await;
    let _ = tls.write_all(&answer.body).await;
    let _ = tls.shutdown().await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// Reads one request: a bounded head, then `Content-Length` bytes of body (bounded).
async fn read_request<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<Request, Answer> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(Answer::error(400, "bad_request", format!("request head larger than {MAX_HEAD} bytes")));
        }
        let n = r.read(&mut chunk).await.map_err(|_| Answer::error(400, "bad_request", "connection broke"))?;
        if n == 0 {
            return Err(Answer::error(400, "bad_request", "request ended early"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..head_end]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Answer::error(400, "bad_request", "malformed HTTP request")),
    }
    let method = req.method.unwrap_or_default().to_string();
    let path = req.path.unwrap_or_default().split('?').next().unwrap_or_default().to_string();
    let mut len = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| Answer::error(400, "bad_request", "bad Content-Length"))?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Answer::error(400, "bad_request", "Transfer-Encoding is not supported; send Content-Length"));
        }
    }
    if len > MAX_BODY {
        return Err(Answer::error(413, "bad_request", format!("body larger than {MAX_BODY} bytes")));
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = r.read(&mut chunk).await.map_err(|_| Answer::error(400, "bad_request", "connection broke"))?;
        if n == 0 {
            return Err(Answer::error(400, "bad_request", "body shorter than Content-Length"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok(Request { method, path, body })
}

async fn route<S: Store>(
    sh: &Shared<S>,
    req: Request,
    client: Option<rustls_pki_types::CertificateDer<'static>>,
    peer: SocketAddr,
) -> Answer {
    let m = &sh.ctx.metrics;
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/v1/join") => join(sh, &req.body, peer).await,
        ("POST", "/v1/renew") => renew(sh, &req.body, client, peer),
        ("GET", "/healthz") => Answer { status: 200, body: b"{\"ok\":true}".to_vec(), retry_after: None },
        (_, "/v1/join" | "/v1/renew") => {
            m.refuse("bad_request");
            Answer::error(405, "bad_request", "use POST")
        }
        _ => {
            m.refuse("bad_request");
            Answer::error(404, "bad_request", format!("no such endpoint {}", req.path))
        }
    }
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn refusal_status(r: Refusal) -> u16 {
    match r {
        Refusal::UsedUp | Refusal::WrongNode => 403,
        _ => 401,
    }
}

fn refused<S: Store>(sh: &Shared<S>, r: Refusal, node: &str, token_id: Option<&str>, peer: SocketAddr) -> Answer {
    sh.ctx.metrics.refuse(r.reason());
    warn!(peer = %peer, node, token = token_id.unwrap_or("-"), reason = r.reason(), "join refused");
    Answer::error(refusal_status(r), r.reason(), r.to_string())
}

fn bad_csr<S: Store>(sh: &Shared<S>, e: &CsrError, node: &str, peer: SocketAddr) -> Answer {
    sh.ctx.metrics.refuse("bad_csr");
    // Debug-formatted: the error may quote what the client sent (newlines stay escaped).
    warn!(peer = %peer, node, error = ?e.to_string(), "certificate request refused");
    Answer::error(400, "bad_csr", e.to_string())
}

fn store_failed(e: &dyn std::fmt::Display) -> Answer {
    warn!(error = %e, "join: etcd failed");
    Answer::error(503, "unavailable", format!("the controller could not read its store: {e}"))
}

async fn join<S: Store>(sh: &Shared<S>, body: &[u8], peer: SocketAddr) -> Answer {
    let req: JoinRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            sh.ctx.metrics.refuse("bad_request");
            return Answer::error(400, "bad_request", format!("expected JSON {{token, node, csr_pem}}: {e}"));
        }
    };
    let node = req.node.as_str();
    if !sign::valid_node(node) {
        return bad_csr(sh, &CsrError::BadNode(node.to_string()), node, peer);
    }
    let token = match Token::parse(&req.token) {
        Ok(t) => t,
        Err(e) => return refused(sh, Refusal::BadFormat(e), node, None, peer),
    };
    let (store, net) = (&sh.ctx.store, sh.ctx.network.as_str());
    // The token before anything of the request is parsed further; then the CSR, so a bad one
    // never spends a use; then the use, taken for this key (the same node and key asking again
    // after a lost answer spend nothing more).
    match token::lookup(store, net, &token, node, now_unix()).await {
        Err(e) => return store_failed(&e),
        Ok(Err(r)) => return refused(sh, r, node, Some(token.id()), peer),
        Ok(Ok(())) => {}
    }
    let checked = match sign::check_csr(&req.csr_pem, node) {
        Ok(c) => c,
        Err(e) => return bad_csr(sh, &e, node, peer),
    };
    match token::consume(store, net, &token, node, &checked.key_sha256(), now_unix()).await {
        Err(e) => return store_failed(&e),
        Ok(Err(r)) => return refused(sh, r, node, Some(token.id()), peer),
        Ok(Ok(())) => {}
    }
    let signed = match sh.signer.sign_node(&checked, node, time::OffsetDateTime::now_utc()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %format!("{e:#}"), node, "signing failed");
            return Answer::error(500, "internal", format!("signing failed: {e:#}"));
        }
    };
    sh.ctx.metrics.issued.inc();
    info!(peer = %peer, node, token = token.id(), expires = signed.not_after, "node joined: certificate issued");
    Answer::json(
        200,
        &CertResponse { cert_pem: signed.cert_pem, ca_pem: sh.signer.ca_pem().to_string(), expires: signed.not_after },
    )
}

fn renew<S: Store>(
    sh: &Shared<S>,
    body: &[u8],
    client: Option<rustls_pki_types::CertificateDer<'static>>,
    peer: SocketAddr,
) -> Answer {
    let Some(cert) = client else {
        sh.ctx.metrics.refuse("no_client_cert");
        return Answer::error(401, "no_client_cert", "renewal needs the node's current certificate (mutual TLS)");
    };
    // rustls verified the chain to the cluster CA; the node is its common name, which must
    // also be a DNS SAN (as in every node certificate).
    let node = match node_of(&cert) {
        Some(n) => n,
        None => {
            sh.ctx.metrics.refuse("no_client_cert");
            return Answer::error(
                401,
                "no_client_cert",
                "the client certificate does not name a node (common name = DNS SAN)",
            );
        }
    };
    let req: RenewRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            sh.ctx.metrics.refuse("bad_request");
            return Answer::error(400, "bad_request", format!("expected JSON {{csr_pem}}: {e}"));
        }
    };
    let checked = match sign::check_csr(&req.csr_pem, &node) {
        Ok(c) => c,
        Err(e) => return bad_csr(sh, &e, &node, peer),
    };
    match sh.signer.sign_node(&checked, &node, time::OffsetDateTime::now_utc()) {
        Ok(signed) => {
            sh.ctx.metrics.renewals.inc();
            info!(peer = %peer, node = %node, expires = signed.not_after, "node certificate renewed");
            Answer::json(
                200,
                &CertResponse {
                    cert_pem: signed.cert_pem,
                    ca_pem: sh.signer.ca_pem().to_string(),
                    expires: signed.not_after,
                },
            )
        }
        Err(e) => Answer::error(500, "internal", format!("signing failed: {e:#}")),
    }
}

/// The node a client certificate names: its common name, if that is also a DNS SAN and a
/// node name.
fn node_of(cert: &rustls_pki_types::CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref()).ok()?;
    let cn = x.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    let sans = x.subject_alternative_name().ok()??;
    let named = sans
        .value
        .general_names
        .iter()
        .any(|g| matches!(g, x509_parser::extensions::GeneralName::DNSName(d) if *d == cn));
    (named && sign::valid_node(&cn)).then_some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_64s() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(source(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(source(ip("2001:db8:1:2:ffff::9")), source(ip("2001:db8:1:2::1")));
        assert_ne!(source(ip("2001:db8:1:3::1")), source(ip("2001:db8:1:2::1")));
    }

    #[test]
    fn the_limiter_forgets_the_older_half_when_every_source_is_refused_at_once() {
        let rate = RateLimit { burst: 3, refill: Duration::from_secs(10) };
        let t0 = Instant::now();
        let mut l = Limiter::default();
        for n in 0..(MAX_TRACKED_IPS as u32 + 10) {
            l.debit(IpAddr::V4(std::net::Ipv4Addr::from(n)), rate, t0 + Duration::from_millis(u64::from(n)));
        }
        assert!(l.buckets.len() <= MAX_TRACKED_IPS, "{}", l.buckets.len());
        let newest = IpAddr::V4(std::net::Ipv4Addr::from(MAX_TRACKED_IPS as u32 + 9));
        assert!(l.buckets.contains_key(&newest), "the newest refusal is remembered");
    }

    #[test]
    fn requests_in_flight_hold_their_token_until_they_turn_out_not_refused() {
        let rate = RateLimit { burst: 3, refill: Duration::from_secs(10) };
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let t0 = Instant::now();
        let mut l = Limiter::default();
        // Three requests at once, none answered yet: the fourth waits.
        for _ in 0..3 {
            assert_eq!(l.take(ip, rate, t0), Ok(()));
        }
        assert_eq!(l.take(ip, rate, t0), Err(10));
        // Two of them succeed: their tokens come back, never above the burst.
        l.refund(ip, rate, t0);
        l.refund(ip, rate, t0);
        assert_eq!(l.take(ip, rate, t0), Ok(()));
        assert_eq!(l.take(ip, rate, t0), Ok(()));
        assert_eq!(l.take(ip, rate, t0), Err(10));
        for _ in 0..5 {
            l.refund(ip, rate, t0);
        }
        for _ in 0..3 {
            assert_eq!(l.take(ip, rate, t0), Ok(()));
        }
        assert!(l.take(ip, rate, t0).is_err(), "refunds fill up to the burst only");
    }

    #[test]
    fn bucket_allows_a_burst_then_refills() {
        let rate = RateLimit { burst: 3, refill: Duration::from_secs(10) };
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let t0 = Instant::now();
        let mut l = Limiter::default();
        for _ in 0..3 {
            assert_eq!(l.check(ip, rate, t0), Ok(()));
            l.debit(ip, rate, t0);
        }
        assert_eq!(l.check(ip, rate, t0), Err(10));
        assert_eq!(l.check(other, rate, t0), Ok(()), "buckets are per IP");
        assert_eq!(l.check(ip, rate, t0 + Duration::from_secs(4)), Err(6));
        assert_eq!(l.check(ip, rate, t0 + Duration::from_secs(10)), Ok(()));
        l.debit(ip, rate, t0 + Duration::from_secs(10));
        assert!(l.check(ip, rate, t0 + Duration::from_secs(10)).is_err());
        // A long pause fills the bucket to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.check(ip, rate, later), Ok(()));
            l.debit(ip, rate, later);
        }
        assert!(l.check(ip, rate, later).is_err());
    }

    #[test]
    fn refusal_statuses() {
        assert_eq!(refusal_status(Refusal::Unknown), 401);
        assert_eq!(refusal_status(Refusal::WrongSecret), 401);
        assert_eq!(refusal_status(Refusal::Expired), 401);
        assert_eq!(refusal_status(Refusal::BadFormat(token::FormatError::NoDot)), 401);
        assert_eq!(refusal_status(Refusal::UsedUp), 403);
        assert_eq!(refusal_status(Refusal::WrongNode), 403);
    }

    #[tokio::test]
    async fn request_parsing_is_bounded() {
        let ok = b"POST /v1/join?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n{}  extra";
        let r = read_request(&mut &ok[..]).await.ok().expect("parses");
        assert_eq!((r.method.as_str(), r.path.as_str(), r.body.as_slice()), ("POST", "/v1/join", &b"{}  "[..]));
        let big = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(read_request(&mut big.as_bytes()).await.err().map(|a| a.status), Some(413));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(read_request(&mut &chunked[..]).await.err().map(|a| a.status), Some(400));
        let short = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}";
        assert_eq!(read_request(&mut &short[..]).await.err().map(|a| a.status), Some(400));
        let huge = vec![b'a'; MAX_HEAD + 10];
        assert_eq!(read_request(&mut huge.as_slice()).await.err().map(|a| a.status), Some(400));
    }
}
