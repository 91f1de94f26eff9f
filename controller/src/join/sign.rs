//! Signing for the join service: checks a node's PKCS#10 CSR and issues its certificate from
//! the cluster CA (the `ca.pem`/`ca.key` layout of [`crate::pki`]), with the same parameters as
//! `weftctl ca issue` (common name and dNSName SAN = the node name, serverAuth and clientAuth),
//! so one certificate serves etcd client auth and QUIC. Also the controller's own HTTPS
//! certificate, and the CA pin (`sha256:<hex of the CA certificate's SubjectPublicKeyInfo>`).
//!
//! A CSR is accepted when its signature verifies, its key is ECDSA P-256 or Ed25519, and every
//! name it asks for (the common name, if any, and each SAN; at least one) is exactly the node
//! name. Requested extensions other than names are ignored: the certificate's usages are ours.

use crate::pki::{self, LoadedCa};
use anyhow::Context;
use rcgen::{CertificateSigningRequestParams, DnType, DnValue, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
use x509_parser::prelude::FromDer;

/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why a CSR was refused (HTTP 400 with the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("csr_pem is not a PEM certificate signing request")]
    NotPem,
    #[error("the CSR does not parse: {0}")]
    Parse(String),
    #[error("the CSR's signature does not verify")]
    Signature,
    #[error("the CSR's key is {0}; expected ECDSA P-256 or Ed25519")]
    KeyType(String),
    #[error("the CSR names no node (no common name and no subject alternative name)")]
    NoName,
    #[error("the CSR asks for {asked}, but the node is {node:?}")]
    WrongName { asked: String, node: String },
    #[error("{0:?} is not a node name (lowercase letters, digits, '-', '_' or '.', not all digits and dots)")]
    BadNode(String),
}

/// A node name the join service signs for: a weft node name that is also a DNS name (so it
/// never reads as an IP address in a certificate).
pub fn valid_node(node: &str) -> bool {
    weft_config::agent::valid_name(node) && pki::valid_dns_name(node) && node != "ca"
}

/// The checked CSR: its public key, ready to be certified.
pub struct CheckedCsr {
    csr: CertificateSigningRequestParams,
}

impl CheckedCsr {
    /// SHA-256 (hex) of the requested public key: which key a token use was spent on.
    pub fn key_sha256(&self) -> String {
        super::token::sha256_hex(rcgen::PublicKeyData::der_bytes(&self.csr.public_key))
    }
}

/// Checks `csr_pem` for `node` (see the module doc).
pub fn check_csr(csr_pem: &str, node: &str) -> Result<CheckedCsr, CsrError> {
    if !valid_node(node) {
        return Err(CsrError::BadNode(node.to_string()));
    }
    if csr_pem.len() > MAX_CSR_BYTES {
        return Err(CsrError::Parse(format!("larger than {MAX_CSR_BYTES} bytes")));
    }
    let (_, block) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).map_err(|_| CsrError::NotPem)?;
    if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::NotPem);
    }
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&block.contents)
        .map_err(|e| CsrError::Parse(e.to_string()))?;
    let spki = &req.certification_request_info.subject_pki;
    let alg = &spki.algorithm.algorithm;
    let key_type = if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        match spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()) {
            Some(curve) if curve == OID_EC_P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Some(curve) => return Err(CsrError::KeyType(format!("ECDSA on curve {curve}"))),
            None => return Err(CsrError::KeyType("ECDSA without a named curve".into())),
        }
    } else if *alg == OID_SIG_ED25519 {
        &rcgen::PKCS_ED25519
    } else {
        return Err(CsrError::KeyType(format!("of algorithm {alg}")));
    };
    let csr = CertificateSigningRequestParams::from_der(&block.contents.clone().into()).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => CsrError::Signature,
        other => CsrError::Parse(other.to_string()),
    })?;
    // rcgen names the key after the CSR's signature algorithm; it must be the key's own.
    if rcgen::PublicKeyData::algorithm(&csr.public_key) != key_type {
        return Err(CsrError::KeyType("signed with a hash its curve does not use".into()));
    }
    let mut names = Vec::new();
    match csr.params.distinguished_name.get(&DnType::CommonName) {
        None => {}
        Some(DnValue::Utf8String(s)) => names.push(s.clone()),
        Some(DnValue::PrintableString(s)) => names.push(s.as_str().to_string()),
        Some(other) => names.push(format!("{other:?}")),
    }
    for san in &csr.params.subject_alt_names {
        names.push(match san {
            SanType::DnsName(d) => d.as_str().to_string(),
            SanType::IpAddress(ip) => ip.to_string(),
            other => format!("{other:?}"),
        });
    }
    if names.is_empty() {
        return Err(CsrError::NoName);
    }
    if let Some(bad) = names.iter().find(|n| n.as_str() != node) {
        return Err(CsrError::WrongName { asked: bad.clone(), node: node.to_string() });
    }
    Ok(CheckedCsr { csr })
}

/// A certificate the signer issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub cert_pem: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// The cluster CA, loaded once, with the lifetime of the certificates it issues.
pub struct Signer {
    ca: LoadedCa,
    ca_pem: String,
    pin: String,
    lifetime: Duration,
}

impl Signer {
    /// Loads `ca_dir/ca.pem` and `ca_dir/ca.key`.
    pub fn load(ca_dir: &Path, lifetime: Duration) -> anyhow::Result<Self> {
        let ca = pki::load_ca(ca_dir).with_context(|| format!("loading the CA of {}", ca_dir.display()))?;
        let path = pki::ca_files(ca_dir).cert;
        let ca_pem = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let pin = pin_of_pem(ca_pem.as_bytes()).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self { ca, ca_pem, pin, lifetime })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// Valid until `now + lifetime`, but never past the CA.
    fn not_after(&self, now: OffsetDateTime) -> OffsetDateTime {
        let want = now + time::Duration::seconds(i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX / 2));
        want.min(self.ca.not_after)
    }

    /// The node certificate for a checked CSR.
    pub fn sign_node(&self, csr: &CheckedCsr, node: &str, now: OffsetDateTime) -> anyhow::Result<Signed> {
        anyhow::ensure!(self.ca.not_after > now, "the cluster CA has expired");
        let not_after = self.not_after(now);
        let p = pki::node_params(node, vec![node.to_string()], now - pki::BACKDATE, not_after);
        let cert = p.signed_by(&csr.csr.public_key, &self.ca.issuer).context("signing the node certificate")?;
        Ok(Signed { cert_pem: cert.pem(), not_after: not_after.unix_timestamp() })
    }

    /// Lifetime of the certificates issued (before the cap at the CA's expiry).
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A fresh key and certificate for the controller's HTTPS listener: common name `name`,
    /// SANs `name` and `extra` (IP addresses or DNS names); the chain is the leaf then the CA
    /// (clients check the CA by its pin).
    pub fn server_identity(
        &self,
        name: &str,
        extra: &[String],
        now: OffsetDateTime,
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        anyhow::ensure!(self.ca.not_after > now, "the cluster CA has expired");
        // A name that is not a DNS name (say, a host name in capitals) stays the common name
        // only: a malformed dNSName could make verifiers reject the whole certificate.
        let mut sans: Vec<String> = Vec::new();
        if pki::valid_dns_name(name) && name.parse::<IpAddr>().is_err() {
            sans.push(name.to_string());
        }
        for s in extra {
            anyhow::ensure!(
                s.parse::<IpAddr>().is_ok() || pki::valid_dns_name(s),
                "{s:?} is neither an IP address nor a DNS name"
            );
            if !sans.contains(s) {
                sans.push(s.clone());
            }
        }
        let p = pki::node_params(name, sans, now - pki::BACKDATE, self.not_after(now));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the server key")?;
        let cert = p.signed_by(&key, &self.ca.issuer).context("signing the server certificate")?;
        let ca_der = pem_to_der(self.ca_pem.as_bytes())?;
        let chain = vec![cert.der().clone(), ca_der];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((chain, key))
    }
}

/// The DER of the first certificate in `pem`.
pub fn pem_to_der(pem: &[u8]) -> anyhow::Result<CertificateDer<'static>> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| anyhow::anyhow!("no PEM certificate: {e}"))?;
    Ok(CertificateDer::from(block.contents))
}

/// `sha256:<hex>` of the SubjectPublicKeyInfo of the first certificate in `pem`.
pub fn pin_of_pem(pem: &[u8]) -> anyhow::Result<String> {
    pin_of_der(&pem_to_der(pem)?)
}

/// `sha256:<hex>` of the SubjectPublicKeyInfo of a DER certificate.
pub fn pin_of_der(der: &[u8]) -> anyhow::Result<String> {
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| anyhow::anyhow!("not a certificate: {e}"))?;
    Ok(format!("sha256:{}", super::token::sha256_hex(x.public_key().raw)))
}

/// `weftctl token create`'s pin: of `ca_dir/ca.pem`.
pub fn ca_pin(ca_dir: &Path) -> anyhow::Result<String> {
    let path = pki::ca_files(ca_dir).cert;
    let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    pin_of_pem(&pem).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::CertificateParams;
    use std::path::PathBuf;

    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "weft-join-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&p);
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn csr(alg: &'static rcgen::SignatureAlgorithm, cn: Option<&str>, sans: &[&str]) -> String {
        let key = KeyPair::generate_for(alg).expect("key");
        let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.serialize_request(&key).expect("csr").pem().expect("pem")
    }

    #[test]
    fn csr_checks() {
        let p256 = &rcgen::PKCS_ECDSA_P256_SHA256;
        assert!(check_csr(&csr(p256, Some("n1"), &["n1"]), "n1").is_ok());
        assert!(check_csr(&csr(p256, Some("n1"), &[]), "n1").is_ok());
        assert!(check_csr(&csr(p256, None, &["n1"]), "n1").is_ok());
        assert!(check_csr(&csr(&rcgen::PKCS_ED25519, Some("n1"), &["n1"]), "n1").is_ok());
        assert_eq!(check_csr(&csr(p256, None, &[]), "n1").err(), Some(CsrError::NoName));
        assert_eq!(
            check_csr(&csr(p256, Some("n2"), &["n1"]), "n1").err(),
            Some(CsrError::WrongName { asked: "n2".into(), node: "n1".into() })
        );
        assert_eq!(
            check_csr(&csr(p256, Some("n1"), &["n1", "etcd"]), "n1").err(),
            Some(CsrError::WrongName { asked: "etcd".into(), node: "n1".into() })
        );
        assert!(matches!(
            check_csr(&csr(p256, Some("n1"), &["n1", "10.0.0.1"]), "n1"),
            Err(CsrError::WrongName { .. })
        ));
        assert!(matches!(
            check_csr(&csr(&rcgen::PKCS_ECDSA_P384_SHA384, Some("n1"), &["n1"]), "n1"),
            Err(CsrError::KeyType(_))
        ));
        assert_eq!(check_csr("hello", "n1").err(), Some(CsrError::NotPem));
        assert_eq!(
            check_csr(&csr(p256, Some("n1"), &["n1"]), "1.2.3.4").err(),
            Some(CsrError::BadNode("1.2.3.4".into()))
        );
        assert_eq!(check_csr(&csr(p256, Some("N1"), &["N1"]), "N1").err(), Some(CsrError::BadNode("N1".into())));
    }

    #[test]
    fn a_tampered_csr_fails_its_signature() {
        let good = csr(&rcgen::PKCS_ECDSA_P256_SHA256, Some("n1"), &["n1"]);
        let (_, block) = x509_parser::pem::parse_x509_pem(good.as_bytes()).expect("pem");
        let mut der = block.contents.clone();
        // Change one byte of the common name "n1" -> "n2" inside the signed part.
        let at = der.windows(2).position(|w| w == b"n1").expect("name in DER");
        der[at + 1] = b'2';
        let pem = pem_encode("CERTIFICATE REQUEST", &der);
        assert_eq!(check_csr(&pem, "n2").err(), Some(CsrError::Signature));
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for chunk in der.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    s.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    s.push('=');
                }
            }
        }
        let body: Vec<String> = s.as_bytes().chunks(64).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", body.join("\n"))
    }

    #[test]
    fn signed_node_certificate_has_the_usual_shape_and_chains() {
        let d = TempDir::new("sign");
        pki::init_ca(&d.0, &pki::CaOptions::default()).expect("ca");
        let signer = Signer::load(&d.0, Duration::from_secs(7200)).expect("signer");
        assert_eq!(signer.pin(), ca_pin(&d.0).expect("pin"));
        assert!(signer.pin().starts_with("sha256:") && signer.pin().len() == 7 + 64);
        let now = OffsetDateTime::now_utc();
        let checked = check_csr(&csr(&rcgen::PKCS_ECDSA_P256_SHA256, Some("n1"), &["n1"]), "n1").expect("csr");
        let signed = signer.sign_node(&checked, "n1", now).expect("sign");
        assert_eq!(signed.not_after, now.unix_timestamp() + 7200);
        let der = pem_to_der(signed.cert_pem.as_bytes()).expect("der");
        let (_, x) = x509_parser::certificate::X509Certificate::from_der(&der).expect("x509");
        let eku = x.extended_key_usage().expect("eku").expect("has eku").value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!x.is_ca());
        let cn: Vec<&str> = x.subject().iter_common_name().filter_map(|a| a.as_str().ok()).collect();
        assert_eq!(cn, vec!["n1"]);
        // Chains to the CA for both roles, with the node name.
        let ca = pem_to_der(signer.ca_pem().as_bytes()).expect("ca der");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("root");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let sv = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone().into(), provider.clone())
            .build()
            .expect("verifier");
        use rustls::client::danger::ServerCertVerifier;
        let name = rustls_pki_types::ServerName::try_from("n1").expect("name");
        sv.verify_server_cert(&der, &[], &name, &[], rustls_pki_types::UnixTime::now()).expect("server role");
        let cv = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .expect("verifier");
        cv.verify_client_cert(&der, &[], rustls_pki_types::UnixTime::now()).expect("client role");
    }

    #[test]
    fn lifetime_is_capped_at_the_ca() {
        let d = TempDir::new("cap");
        pki::init_ca(&d.0, &pki::CaOptions { days: 2, force: false }).expect("ca");
        let signer = Signer::load(&d.0, Duration::from_secs(30 * 86400)).expect("signer");
        let now = OffsetDateTime::now_utc();
        let checked = check_csr(&csr(&rcgen::PKCS_ECDSA_P256_SHA256, Some("n1"), &[]), "n1").expect("csr");
        let signed = signer.sign_node(&checked, "n1", now).expect("sign");
        assert!(signed.not_after <= now.unix_timestamp() + 2 * 86400, "{}", signed.not_after);
    }
}
