//! Mutual TLS for the tunnel: the cluster CA is the only trust root; a node is who its
//! certificate's DNS SAN says. Certificates are re-read when their files change.

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;
use weft_config::agent::QuicConfig;

/// ALPN of weft's tunnel protocol; a peer speaking anything else is refused.
pub const ALPN: &[u8] = b"weft/1";

/// The node's TLS material as loaded from disk.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Arc<RootCertStore>,
    /// SHA-256 of the leaf certificate, hex.
    pub fingerprint: String,
    /// Expiry of the leaf (seconds since the epoch).
    pub not_after: i64,
    /// Modification times of the three files when loaded, to notice renewals.
    pub stamp: Vec<Option<SystemTime>>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Stamps of the files, to compare with `Identity::stamp`.
pub fn stamp(cfg: &QuicConfig) -> Vec<Option<SystemTime>> {
    [&cfg.ca_file, &cfg.cert_file, &cfg.key_file].iter().map(|p| mtime(p)).collect()
}

pub fn load(cfg: &QuicConfig, node_name: &str) -> Result<Identity> {
    let stamp = stamp(cfg);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert_file)
        .with_context(|| format!("reading {}", cfg.cert_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cfg.cert_file.display()))?;
    let leaf = chain.first().with_context(|| format!("{}: no certificate in the file", cfg.cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file)
        .with_context(|| format!("reading key {}", cfg.key_file.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in
        CertificateDer::pem_file_iter(&cfg.ca_file).with_context(|| format!("reading {}", cfg.ca_file.display()))?
    {
        let ca = ca.with_context(|| format!("parsing {}", cfg.ca_file.display()))?;
        roots.add(ca).with_context(|| format!("{}: not a usable CA certificate", cfg.ca_file.display()))?;
    }
    if roots.is_empty() {
        bail!("{}: no CA certificate in the file", cfg.ca_file.display());
    }
    let names = dns_names(leaf)?;
    if !names.iter().any(|n| n == node_name) {
        bail!("{}: certificate names {:?}, not this node ({node_name})", cfg.cert_file.display(), names);
    }
    let not_after = not_after(leaf)?;
    let fingerprint = hex(&Sha256::digest(leaf.as_ref()));
    Ok(Identity { chain, key, roots: Arc::new(roots), fingerprint, not_after, stamp })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// DNS names in the certificate's subjectAltName.
pub fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| anyhow!("parsing certificate: {e}"))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                out.push(d.to_string());
            }
        }
    }
    Ok(out)
}

fn not_after(cert: &CertificateDer<'_>) -> Result<i64> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| anyhow!("parsing certificate: {e}"))?;
    Ok(x.validity().not_after.timestamp())
}

/// ring's provider with AES-128-GCM preferred over rustls's default AES-256-GCM: the tunnel's
/// packets are sealed and opened with the suite the handshake picks, and AES-128 runs 10 rounds
/// per block against AES-256's 14 (docs/BENCHMARKS.md has what it saves). Both suites are offered and accepted, so an agent that prefers
/// AES-256 still connects; the server's order decides.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// Server side: requires a client certificate from the cluster CA.
pub fn server_config(id: &Identity, transport: Arc<quinn::TransportConfig>) -> Result<quinn::ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(id.roots.clone(), provider())
        .build()
        .context("building the client certificate verifier")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .context("loading the node certificate and key")?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.ignore_client_order = true;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("QUIC server TLS")?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    sc.transport_config(transport);
    Ok(sc)
}

/// Client side: presents the node certificate; verifies the server against the cluster CA and
/// the expected node name (the server name of the connection).
pub fn client_config(id: &Identity, transport: Arc<quinn::TransportConfig>) -> Result<quinn::ClientConfig> {
    let verifier = WebPkiServerVerifier::builder_with_provider(id.roots.clone(), provider())
        .build()
        .context("building the server certificate verifier")?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
        .context("loading the node certificate and key")?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("QUIC client TLS")?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    cc.transport_config(transport);
    Ok(cc)
}

/// Stateless-reset key derived from the node key, so a restarted node's resets are honoured by
/// peers still holding connections to its previous run.
pub fn reset_key(id: &Identity) -> Arc<dyn quinn::crypto::HmacKey> {
    let seed = Sha256::digest([b"weft stateless reset\0".as_slice(), id.key.secret_der()].concat());
    Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seed))
}

/// The DNS names of the leaf certificate of a peer identity as quinn hands it over
/// (`crypto_session().peer_identity()`).
pub fn peer_names(identity: Option<Box<dyn std::any::Any>>) -> Result<Vec<String>> {
    let any = identity.context("peer presented no certificate")?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| anyhow!("unexpected peer identity type"))?;
    let leaf = certs.first().context("peer presented an empty chain")?;
    dns_names(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_is_preferred_and_the_other_suites_stay_offered() {
        let p = provider();
        let suites: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
        assert!(suites.contains(&rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
    }
}
