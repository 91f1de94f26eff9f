//! Joining with a token (`[bootstrap]` in agent.toml) and renewing the node certificate.
//!
//! At start, before the daemon, [`ensure`] looks at the certificate files `[etcd]` and `[quic]`
//! name. When any is missing or unusable (unparsable, expired, or a key that is not the
//! certificate's: `unusable`) and `[bootstrap]` is set, the agent makes an ECDSA P-256 key (it
//! never leaves the node), sends a CSR for its node name with the token to the controller's
//! `POST /v1/join`, and writes what comes back: the key (0600) and the certificate (0644) to
//! every configured pair of paths, the CA (0644) to every configured CA path, each through a
//! temporary file and a rename. The controller is trusted through the pin only: its chain must
//! carry a certificate whose SubjectPublicKeyInfo hashes to `ca_pin`, and the leaf must verify
//! against that certificate for the URL's host ([`PinVerifier`]). The CA that comes back must
//! have the pin too, and the certificate must chain to it, name the node and hold our key.
//!
//! Network errors, 429 and 5xx answers are retried with backoff (1 s doubling to 30 s); any
//! other refusal (bad, unknown, expired, used-up or wrong-node token, a refused CSR) is a
//! [`Refused`] error, which `weft-agent` reports on one line and exits 2 on.
//!
//! [`renew_loop`] then renews `renew_before` before expiry (default: a third of the lifetime)
//! over mutual TLS with the current certificate (`POST /v1/renew`, the server checked against
//! the CA file), with a new key, written the same way. The running agent picks it up without a
//! restart: the QUIC backend re-reads its files when their modification time changes (at the
//! next reconcile); etcd connections made from then on (every reconnect reads the files) use
//! it, while the open one goes on (etcd checks client certificates at the handshake only).

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};
use weft_config::agent::BootstrapConfig;
use weft_config::AgentConfig;

/// Time for one request (connect, handshake, answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer read.
const MAX_ANSWER: usize = 256 * 1024;

/// The controller refused for good (the token or the request is wrong; retrying cannot help).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the controller at {url} refused to {what} (HTTP {status}, {code}): {message}")]
pub struct Refused {
    pub url: String,
    pub what: &'static str,
    pub status: u16,
    /// The JSON `error` code: `unknown`, `wrong_secret`, `expired`, `used_up`, `wrong_node`, ...
    pub code: String,
    pub message: String,
}

/// How [`ensure`] and [`renew_loop`] retry.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub first: Duration,
    pub max: Duration,
    /// `None`: for ever.
    pub attempts: Option<u32>,
}

impl Default for Retry {
    fn default() -> Self {
        Self { first: Duration::from_secs(1), max: Duration::from_secs(30), attempts: None }
    }
}

/// What [`ensure`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No `[bootstrap]`: nothing to do.
    NotConfigured,
    /// Every certificate file exists.
    Present,
    /// Joined: certificate valid until this Unix time.
    Joined { expires: i64 },
}

/// The join and renew answer.
#[derive(Debug, Clone, Deserialize)]
struct CertResponse {
    cert_pem: String,
    ca_pem: String,
    expires: i64,
}

#[derive(Debug, Clone, Deserialize)]
struct ErrorResponse {
    error: String,
    message: String,
}

#[derive(Serialize)]
struct JoinRequest<'a> {
    token: &'a str,
    node: &'a str,
    csr_pem: &'a str,
}

#[derive(Serialize)]
struct RenewRequest<'a> {
    csr_pem: &'a str,
}

/// Warns when `config` (which holds a join token) can be read by group or others.
pub fn warn_if_readable(config: &Path) {
    if let Ok(m) = std::fs::metadata(config) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(
                file = %config.display(),
                mode = %format!("{mode:o}"),
                "the config holds a join token but others can read it; chmod 600"
            );
        }
    }
}

/// Joins when `[bootstrap]` is set and a certificate file is missing (see the module doc).
pub async fn ensure(cfg: &AgentConfig, retry: Retry) -> Result<Outcome> {
    let Some(b) = &cfg.bootstrap else { return Ok(Outcome::NotConfigured) };
    let pairs = cfg.cert_paths();
    let unusable: Vec<String> = pairs.iter().filter_map(|(c, k)| unusable(c, k, unix_now())).collect();
    if unusable.is_empty() {
        return Ok(Outcome::Present);
    }
    let why = unusable.join("; ");
    info!(url = %b.url, node = %cfg.node_name, why = %why, "no usable certificate: joining with the token");
    join(cfg, b, retry).await.with_context(|| format!("joining because {why}"))
}

/// Why the certificate and key at `cert`, `key` cannot serve as they are, or `None` when they
/// can: a file missing, unreadable or unparsable, a certificate expired at `now` (a node that
/// was off longer than its lifetime), or a key that is not the certificate's (a write
/// interrupted between the two renames). Each of these is mended by joining again.
fn unusable(cert: &Path, key: &Path, now: i64) -> Option<String> {
    let Ok(pem) = std::fs::read(cert) else { return Some(format!("{} is missing or unreadable", cert.display())) };
    let der = match first_cert(&pem) {
        Ok(d) => d,
        Err(e) => return Some(format!("{}: {e:#}", cert.display())),
    };
    let x = match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok((_, x)) => x,
        Err(e) => return Some(format!("{}: {e}", cert.display())),
    };
    let not_after = x.validity().not_after.timestamp();
    if not_after <= now {
        return Some(format!("{} expired {} s ago", cert.display(), now - not_after));
    }
    let Ok(key_pem) = std::fs::read_to_string(key) else {
        return Some(format!("{} is missing or unreadable", key.display()));
    };
    let pair = match KeyPair::from_pem(&key_pem) {
        Ok(k) => k,
        Err(e) => return Some(format!("{}: {e}", key.display())),
    };
    if x.public_key().subject_public_key.data.as_ref() != pair.public_key_raw() {
        return Some(format!("{} is not the key of {}", key.display(), cert.display()));
    }
    None
}

/// The join itself: a new key and CSR, the token, the answer checked and written.
async fn join(cfg: &AgentConfig, b: &BootstrapConfig, retry: Retry) -> Result<Outcome> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the node key")?;
    let csr = csr_pem(&key, &cfg.node_name)?;
    let tls = pinned_client(&b.ca_pin)?;
    let body = serde_json::to_vec(&JoinRequest { token: &b.token, node: &cfg.node_name, csr_pem: &csr })
        .context("encoding the join request")?;
    let got = with_retry(retry, "join", || post(&b.url, "/v1/join", &body, tls.clone(), "join")).await?;
    check_answer(&got, &b.ca_pin, &cfg.node_name, &key)?;
    write_all(cfg, &got, &key)?;
    info!(node = %cfg.node_name, expires = got.expires, "joined: certificate written");
    Ok(Outcome::Joined { expires: got.expires })
}

/// Renews the certificate before it expires, for ever (run it as a task). Does nothing without
/// `[bootstrap]`.
pub async fn renew_loop(cfg: AgentConfig) {
    let Some(b) = cfg.bootstrap.clone() else { return };
    let mut backoff = Duration::from_secs(30);
    loop {
        let wait = match next_renewal(&cfg, &b) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot read the node certificate to plan its renewal");
                Duration::from_secs(300)
            }
        };
        if !wait.is_zero() {
            info!(in_secs = wait.as_secs(), "next certificate renewal");
            tokio::time::sleep(wait).await;
        }
        match renew_once(&cfg).await {
            Ok(expires) => {
                info!(expires, "node certificate renewed");
                backoff = Duration::from_secs(30);
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), retry_in_secs = backoff.as_secs(), "certificate renewal failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
        }
    }
}

/// How long until the certificate in the first configured pair is due for renewal.
fn next_renewal(cfg: &AgentConfig, b: &BootstrapConfig) -> Result<Duration> {
    let (cert, _) = cfg.cert_paths().into_iter().next().context("no certificate path configured")?;
    let der = first_cert(&std::fs::read(&cert).with_context(|| format!("reading {}", cert.display()))?)?;
    let (_, x) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| anyhow!("parsing {}: {e}", cert.display()))?;
    let (from, to) = (x.validity().not_before.timestamp(), x.validity().not_after.timestamp());
    let lifetime = (to - from).max(0);
    let before = match b.renew_before.map(|d| d.as_secs() as i64) {
        Some(before) if before < lifetime => before,
        Some(before) => {
            // Every fresh certificate would be due at once: renewals back to back, for ever.
            warn!(
                renew_before_secs = before,
                lifetime_secs = lifetime,
                "bootstrap.renew_before_secs is not shorter than the certificate's lifetime; renewing a third of the lifetime before expiry instead"
            );
            lifetime / 3
        }
        None => lifetime / 3,
    };
    let now = unix_now();
    Ok(Duration::from_secs((to - before - now).max(0) as u64))
}

/// One renewal: a new key and CSR, sent over mutual TLS with the current certificate; the
/// answer written like a join's. Returns the new expiry.
pub async fn renew_once(cfg: &AgentConfig) -> Result<i64> {
    let b = cfg.bootstrap.as_ref().context("no [bootstrap] in the config")?;
    let (cert, key_path) = cfg.cert_paths().into_iter().next().context("no certificate path configured")?;
    let ca = cfg.ca_paths().into_iter().next().context("no CA path configured")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let current_key =
        PrivateKeyDer::from_pem_file(&key_path).with_context(|| format!("reading key {}", key_path.display()))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca).with_context(|| format!("reading {}", ca.display()))? {
        roots.add(c.with_context(|| format!("parsing {}", ca.display()))?).context("the CA as a trust root")?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, current_key)
        .context("loading the current certificate and key")?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the node key")?;
    let csr = csr_pem(&key, &cfg.node_name)?;
    let body = serde_json::to_vec(&RenewRequest { csr_pem: &csr }).context("encoding the renewal request")?;
    let got = post(&b.url, "/v1/renew", &body, Arc::new(tls), "renew").await.map_err(|e| match e {
        Attempt::Refused(r) => anyhow::Error::new(r),
        Attempt::Transient(e) => e,
    })?;
    check_answer(&got, &b.ca_pin, &cfg.node_name, &key)?;
    write_all(cfg, &got, &key)?;
    Ok(got.expires)
}

fn csr_pem(key: &KeyPair, node: &str) -> Result<String> {
    let mut p = CertificateParams::new(vec![node.to_string()]).context("the node name as a SAN")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    p.distinguished_name = dn;
    p.serialize_request(key).context("making the CSR")?.pem().context("encoding the CSR")
}

/// The answer must carry the pinned CA, and a certificate that chains to it, names the node
/// and holds our key.
fn check_answer(got: &CertResponse, pin: &str, node: &str, key: &KeyPair) -> Result<()> {
    let ca = first_cert(got.ca_pem.as_bytes()).context("the CA in the answer")?;
    let ca_pin = pin_of_der(&ca)?;
    if ca_pin != pin {
        bail!("the controller sent a CA whose pin is {ca_pin}, not ca_pin {pin}");
    }
    let leaf = first_cert(got.cert_pem.as_bytes()).context("the certificate in the answer")?;
    let mut roots = RootCertStore::empty();
    roots.add(ca).context("the CA in the answer")?;
    let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .context("building a verifier")?;
    let name = ServerName::try_from(node.to_string()).context("the node name as a server name")?;
    v.verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
        .with_context(|| format!("the certificate in the answer is not valid for {node} under the CA"))?;
    let (_, x) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| anyhow!("parsing the answer: {e}"))?;
    if x.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        bail!("the certificate in the answer is not for the key this node made");
    }
    Ok(())
}

/// Key first (0600), then the certificates (0644), then the CA files (0644).
fn write_all(cfg: &AgentConfig, got: &CertResponse, key: &KeyPair) -> Result<()> {
    let key_pem = key.serialize_pem();
    let pairs = cfg.cert_paths();
    for (_, k) in &pairs {
        write_atomic(k, key_pem.as_bytes(), 0o600)?;
    }
    for (c, _) in &pairs {
        write_atomic(c, got.cert_pem.as_bytes(), 0o644)?;
    }
    for ca in cfg.ca_paths() {
        write_atomic(&ca, got.ca_pem.as_bytes(), 0o644)?;
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp: PathBuf = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

fn first_cert(pem: &[u8]) -> Result<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .next()
        .context("no PEM certificate")?
        .map_err(|e| anyhow!("bad PEM certificate: {e}"))
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo.
pub fn pin_of_der(der: &[u8]) -> Result<String> {
    let (_, x) = x509_parser::parse_x509_certificate(der).map_err(|e| anyhow!("parsing a certificate: {e}"))?;
    let digest = Sha256::digest(x.public_key().raw);
    Ok(format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trusts a server whose chain carries a certificate with the pinned SubjectPublicKeyInfo and
/// whose leaf verifies against that certificate for the server name (the URL's host).
#[derive(Debug)]
pub struct PinVerifier {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinVerifier {
    pub fn new(pin: &str) -> Self {
        Self { pin: pin.to_string(), provider: provider() }
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca =
            intermediates.iter().find(|c| pin_of_der(c.as_ref()).is_ok_and(|p| p == self.pin)).ok_or_else(|| {
                rustls::Error::General(format!(
                    "no certificate in the server's chain matches ca_pin {} (is this the cluster's controller?)",
                    self.pin
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("building the verifier: {e}")))?;
        v.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration that trusts the controller through the pin only.
pub fn pinned_client(pin: &str) -> Result<Arc<rustls::ClientConfig>> {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier::new(pin)))
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

/// One request's failure: for good, or worth another try.
#[derive(Debug)]
enum Attempt {
    Refused(Refused),
    Transient(anyhow::Error),
}

async fn with_retry<F, Fut>(retry: Retry, what: &str, mut f: F) -> Result<CertResponse>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<CertResponse, Attempt>>,
{
    let mut wait = retry.first;
    let mut n = 0u32;
    loop {
        n += 1;
        match f().await {
            Ok(r) => return Ok(r),
            Err(Attempt::Refused(r)) => return Err(r.into()),
            Err(Attempt::Transient(e)) => {
                if retry.attempts.is_some_and(|max| n >= max) {
                    return Err(e.context(format!("{what}: giving up after {n} attempts")));
                }
                warn!(error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "{what} failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(retry.max);
            }
        }
    }
}

/// `https://HOST[:PORT]` → host and port.
fn host_port(url: &str) -> Result<(String, u16)> {
    let rest = url.strip_prefix("https://").context("expected an https:// URL")?.trim_end_matches('/');
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').context("unclosed '[' in the URL")?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    let port = match port {
        None => 443,
        Some(p) => p.parse().with_context(|| format!("bad port {p:?} in {url}"))?,
    };
    Ok((host, port))
}

/// One POST over TLS; the JSON answer or why not.
async fn post(
    url: &str,
    path: &str,
    body: &[u8],
    tls: Arc<rustls::ClientConfig>,
    what: &'static str,
) -> Result<CertResponse, Attempt> {
    let transient = Attempt::Transient;
    let (host, port) = host_port(url).map_err(transient)?;
    let name = ServerName::try_from(host.clone())
        .map_err(|e| Attempt::Transient(anyhow!("{host:?} is not a host name or address: {e}")))?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        let mut s = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with {url}"))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        // A server may answer (say 429) and close before taking the whole request: a failed
        // write is reported only when no answer comes either.
        let sent = async {
            s.write_all(head.as_bytes()).await?;
            s.write_all(body).await?;
            s.flush().await
        }
        .await;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > MAX_ANSWER {
                        bail!("answer larger than {MAX_ANSWER} bytes");
                    }
                }
                // A server that closes without close_notify: keep what came.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) if buf.is_empty() => {
                    let e = match sent {
                        Err(w) => anyhow::Error::new(w).context("sending the request"),
                        Ok(()) => anyhow::Error::new(e).context("reading the answer"),
                    };
                    return Err(e);
                }
                Err(_) => break,
            }
        }
        if buf.is_empty() {
            if let Err(w) = sent {
                return Err(anyhow::Error::new(w).context("sending the request"));
            }
        }
        Ok::<_, anyhow::Error>(buf)
    };
    let raw = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(r) => r.map_err(transient)?,
        Err(_) => return Err(Attempt::Transient(anyhow!("{url}: no answer within {} s", REQUEST_TIMEOUT.as_secs()))),
    };
    let (status, body) = parse_response(&raw).map_err(transient)?;
    if status == 200 {
        return serde_json::from_slice(body)
            .map_err(|e| Attempt::Transient(anyhow!("{url}: the answer is not a certificate: {e}")));
    }
    let err: Option<ErrorResponse> = serde_json::from_slice(body).ok();
    let (code, message) = err.map_or_else(
        || ("-".to_string(), String::from_utf8_lossy(body).chars().take(200).collect()),
        |e| (e.error, e.message),
    );
    if status == 429 || status >= 500 {
        return Err(Attempt::Transient(anyhow!("{url} answered HTTP {status} ({code}): {message}")));
    }
    Err(Attempt::Refused(Refused { url: url.to_string(), what, status, code, message }))
}

fn parse_response(raw: &[u8]) -> Result<(u16, &[u8])> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => bail!("the answer ended inside its head"),
        Err(e) => bail!("the answer is not HTTP: {e}"),
    };
    let status = resp.code.context("no status in the answer")?;
    let len = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
    let body = &raw[head..];
    Ok((status, len.map_or(body, |l| &body[..l.min(body.len())])))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a server certificate it signed (chain leaf, CA) for `name`.
    fn ca_and_server(name: &str) -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca = p.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(p, ca_key);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut lp = CertificateParams::new(vec![name.to_string()]).expect("params");
        lp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = lp.signed_by(&key, &issuer).expect("leaf");
        (ca.der().clone(), leaf.der().clone())
    }

    #[test]
    fn pin_verifier_accepts_only_the_pinned_ca_and_the_right_name() {
        let (ca, leaf) = ca_and_server("172.30.0.41");
        let pin = pin_of_der(&ca).expect("pin");
        let name = ServerName::try_from("172.30.0.41").expect("name");
        let v = PinVerifier::new(&pin);
        v.verify_server_cert(&leaf, std::slice::from_ref(&ca), &name, &[], UnixTime::now())
            .expect("pinned CA accepted");

        // The CA not in the chain: refused even though the leaf is good.
        let e = v.verify_server_cert(&leaf, &[], &name, &[], UnixTime::now()).expect_err("no CA sent");
        assert!(e.to_string().contains("matches ca_pin"), "{e}");
        // Another pin.
        let (other_ca, other_leaf) = ca_and_server("172.30.0.41");
        let e = PinVerifier::new(&pin_of_der(&other_ca).expect("pin"))
            .verify_server_cert(&leaf, std::slice::from_ref(&ca), &name, &[], UnixTime::now())
            .expect_err("wrong pin");
        assert!(e.to_string().contains("matches ca_pin"), "{e}");
        // The pinned CA sent along with a leaf it did not sign.
        assert!(v.verify_server_cert(&other_leaf, &[ca.clone(), other_ca], &name, &[], UnixTime::now()).is_err());
        // The right chain for another host.
        let wrong = ServerName::try_from("172.30.0.42").expect("name");
        assert!(v.verify_server_cert(&leaf, std::slice::from_ref(&ca), &wrong, &[], UnixTime::now()).is_err());
    }

    #[test]
    fn renewal_is_planned_before_expiry() {
        let dir = std::env::temp_dir().join(format!("weft-bootstrap-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = CertificateParams::new(vec!["n1".to_string()]).expect("params");
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::seconds(100);
        p.not_after = now + time::Duration::seconds(2900);
        std::fs::write(dir.join("n1.pem"), p.self_signed(&key).expect("cert").pem()).expect("write");
        let pin = format!("sha256:{}", "ab".repeat(32));
        let text = |extra: &str| {
            format!(
                "node_name = \"n1\"\n[etcd]\nendpoints = [\"https://a:1\"]\nca_file = \"{d}/ca.pem\"\n\
                 cert_file = \"{d}/n1.pem\"\nkey_file = \"{d}/n1.key\"\n[bootstrap]\nurl = \"https://a:1\"\n\
                 token = \"abc123.0123456789abcdef\"\nca_pin = \"{pin}\"\n{extra}",
                d = dir.display()
            )
        };
        let cfg = AgentConfig::parse("agent.toml", &text("")).expect("config");
        // Lifetime 3000 s: renew a third (1000 s) before expiry, 1900 s from now.
        let wait = next_renewal(&cfg, cfg.bootstrap.as_ref().expect("b")).expect("plan").as_secs();
        assert!((1895..=1900).contains(&wait), "{wait}");
        let cfg = AgentConfig::parse("agent.toml", &text("renew_before_secs = 2950\n")).expect("config");
        let wait = next_renewal(&cfg, cfg.bootstrap.as_ref().expect("b")).expect("plan");
        assert!(wait.is_zero(), "already due: {wait:?}");
        // Not shorter than the lifetime: every new certificate would be due at once, so the
        // default (a third) is used instead of renewing back to back.
        let cfg = AgentConfig::parse("agent.toml", &text("renew_before_secs = 3600\n")).expect("config");
        let wait = next_renewal(&cfg, cfg.bootstrap.as_ref().expect("b")).expect("plan").as_secs();
        assert!((1895..=1900).contains(&wait), "{wait}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_certificate_pair_is_usable_only_when_present_valid_and_matching() {
        let dir = std::env::temp_dir().join(format!("weft-bootstrap-usable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key, other) = (dir.join("n1.pem"), dir.join("n1.key"), dir.join("other.key"));
        let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = CertificateParams::new(vec!["n1".to_string()]).expect("params");
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::seconds(100);
        p.not_after = now + time::Duration::seconds(3600);
        std::fs::write(&cert, p.self_signed(&pair).expect("cert").pem()).expect("write");
        std::fs::write(&key, pair.serialize_pem()).expect("write");
        let stranger = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        std::fs::write(&other, stranger.serialize_pem()).expect("write");
        let t = now.unix_timestamp();
        assert_eq!(unusable(&cert, &key, t), None);
        let expired = unusable(&cert, &key, t + 3700).expect("expired");
        assert!(expired.ends_with("expired 100 s ago"), "{expired}");
        let foreign = unusable(&cert, &other, t).expect("another key");
        assert!(foreign.contains("is not the key of"), "{foreign}");
        let missing = unusable(&cert, &dir.join("none.key"), t).expect("missing key");
        assert!(missing.contains("missing or unreadable"), "{missing}");
        std::fs::write(&cert, "not a certificate").expect("write");
        assert!(unusable(&cert, &key, t).is_some(), "garbage is not a certificate");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn urls_and_answers() {
        assert_eq!(host_port("https://172.30.0.41:9651").expect("url"), ("172.30.0.41".into(), 9651));
        assert_eq!(host_port("https://[fd00::1]:9651/").expect("url"), ("fd00::1".into(), 9651));
        assert_eq!(host_port("https://ctl.example").expect("url"), ("ctl.example".into(), 443));
        assert!(host_port("http://a:1").is_err());
        let raw = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\n{}trailing";
        assert_eq!(parse_response(raw).expect("parses"), (403, &b"{}"[..]));
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }

    #[test]
    fn answers_are_checked_against_the_pin_the_name_and_the_key() {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let ca = p.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(p, ca_key);
        let node_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut lp = CertificateParams::new(vec!["n1".to_string()]).expect("params");
        lp.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = lp.signed_by(&node_key, &issuer).expect("leaf");
        let got = CertResponse { cert_pem: leaf.pem(), ca_pem: ca.pem(), expires: 0 };
        let pin = pin_of_der(ca.der()).expect("pin");
        check_answer(&got, &pin, "n1", &node_key).expect("good answer");
        let e = check_answer(&got, &format!("sha256:{}", "0".repeat(64)), "n1", &node_key).expect_err("pin");
        assert!(e.to_string().contains("not ca_pin"), "{e}");
        assert!(check_answer(&got, &pin, "n2", &node_key).is_err(), "another node's name");
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let e = check_answer(&got, &pin, "n1", &other).expect_err("key");
        assert!(e.to_string().contains("not for the key"), "{e}");
    }
}
