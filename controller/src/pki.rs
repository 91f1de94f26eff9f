//! The cluster's certificates: one CA (`weftctl ca init`) and certificates it signs
//! (`weftctl ca issue`), all ECDSA P-256 made with rcgen on ring.
//!
//! One certificate per node serves both as its QUIC certificate (`[quic]` in agent.toml) and as
//! its etcd client certificate (`[etcd]`): the subject alternative name is the node name (a
//! dNSName, plus any `--ip`/`--dns` extras), the extended key usages are serverAuth and
//! clientAuth, and the common name is the node name too.
//!
//! Files, all PEM, in one directory:
//!
//! | file | what | mode |
//! |---|---|---|
//! | `ca.pem` | the CA certificate (self-signed, path length 0) | 0644 |
//! | `ca.key` | the CA's private key (PKCS#8) | 0600 |
//! | `NAME.pem` | the leaf certificate only (no chain: peers hold `ca.pem`) | 0644 |
//! | `NAME.key` | its private key (PKCS#8) | 0600 |
//!
//! A directory that does not exist is created with mode 0700. Existing files are replaced only
//! with `force` (written to a temporary file and renamed, so a reader never sees half a key).
//! Bad input is a [`UsageError`] naming the flag (`weftctl` exits 2 on it).

use crate::error::UsageError;
use anyhow::Context;
use rcgen::string::{BmpString, UniversalString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

/// File names of the CA in its directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
/// Validity of a new CA, in days.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Validity of a new node certificate, in days.
pub const DEFAULT_CERT_DAYS: u32 = 365;
/// Longest validity accepted for `--days`.
pub const MAX_DAYS: u32 = 36500;
/// Certificates are valid from this long before they are made, so a node whose clock is a
/// little behind accepts them at once.
pub const BACKDATE: Duration = Duration::hours(1);
/// Subject of the CAs `init_ca` makes.
pub const CA_COMMON_NAME: &str = "weft cluster CA";
pub const ORGANIZATION: &str = "weft";

/// A certificate and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `dir/ca.pem` and `dir/ca.key`.
pub fn ca_files(dir: &Path) -> CertFiles {
    CertFiles { cert: dir.join(CA_CERT), key: dir.join(CA_KEY) }
}

/// `dir/NAME.pem` and `dir/NAME.key`.
pub fn cert_files(dir: &Path, name: &str) -> CertFiles {
    CertFiles { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
}

/// What `init_ca`, `issue` and `self_signed` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub files: CertFiles,
    pub not_after: OffsetDateTime,
}

impl Issued {
    /// `2026-05-01 12:00 UTC`.
    pub fn expires(&self) -> String {
        format_time(self.not_after)
    }
}

/// Options of `weftctl ca init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    pub days: u32,
    /// Replace an existing CA (every certificate it signed stops being trusted).
    pub force: bool,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self { days: DEFAULT_CA_DAYS, force: false }
    }
}

/// What `weftctl ca issue` is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    /// Node name: the first dNSName SAN, the common name and the file name.
    pub name: String,
    pub days: u32,
    /// Extra iPAddress SANs.
    pub ips: Vec<IpAddr>,
    /// Extra dNSName SANs.
    pub dns: Vec<String>,
    /// Replace existing `NAME.pem`/`NAME.key`.
    pub force: bool,
}

impl IssueRequest {
    /// A node certificate with the defaults: SAN = `name` only, [`DEFAULT_CERT_DAYS`].
    pub fn node(name: &str) -> Self {
        Self { name: name.to_string(), days: DEFAULT_CERT_DAYS, ips: Vec::new(), dns: Vec::new(), force: false }
    }

    /// Checks the request; errors name the flag.
    pub fn validate(&self) -> Result<(), UsageError> {
        if !weft_config::agent::valid_name(&self.name) {
            return Err(UsageError::new(format!(
                "--node: expected a node name (lowercase letters, digits, '-', '_' or '.', 1 to 63 characters), \
                 found {:?}",
                self.name
            )));
        }
        if self.name == "ca" {
            return Err(UsageError::new("--node: \"ca\" is reserved for the CA's own files (ca.pem, ca.key)"));
        }
        check_days(self.days)?;
        for d in &self.dns {
            if !valid_dns_name(d) {
                return Err(UsageError::new(format!(
                    "--dns: expected a DNS name (labels of letters, digits, '-' or '_', separated by dots), found {d:?}"
                )));
            }
        }
        Ok(())
    }

    /// The SANs in certificate order: the name, the extra DNS names, then the IPs (no duplicates).
    pub fn sans(&self) -> Vec<String> {
        let mut out: Vec<String> = vec![self.name.clone()];
        for d in &self.dns {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(d)) {
                out.push(d.clone());
            }
        }
        for ip in &self.ips {
            let s = ip.to_string();
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

fn check_days(days: u32) -> Result<(), UsageError> {
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(UsageError::new(format!("--days: expected 1 to {MAX_DAYS}, found {days}")));
    }
    Ok(())
}

/// A DNS name as a certificate SAN: dot-separated labels of 1 to 63 letters, digits, `-` or `_`
/// (not starting or ending with `-`), at most 253 characters, not all digits and dots.
pub fn valid_dns_name(s: &str) -> bool {
    s.len() <= 253
        && !s.is_empty()
        && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `weftctl ca init`: a new CA in `dir` (`ca.pem`, `ca.key`). Refuses to replace an existing one
/// without `force`.
pub fn init_ca(dir: &Path, opts: &CaOptions) -> anyhow::Result<Issued> {
    check_days(opts.days)?;
    let files = ca_files(dir);
    if !opts.force {
        refuse_existing(&files, "--dir", "a CA", "replace it (every certificate it signed stops being trusted)")?;
    }
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(CA_COMMON_NAME);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = now - BACKDATE;
    p.not_after = now + Duration::days(i64::from(opts.days));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the CA key")?;
    let cert = p.self_signed(&key).context("signing the CA certificate")?;
    make_dir(dir)?;
    write_files(&files, &cert.pem(), &key.serialize_pem())?;
    Ok(Issued { files, not_after: p.not_after })
}

/// `weftctl ca issue`: a certificate for `req.name` signed by the CA in `ca_dir`, written to
/// `out_dir/NAME.pem` and `out_dir/NAME.key` (usually `out_dir == ca_dir`).
pub fn issue(ca_dir: &Path, out_dir: &Path, req: &IssueRequest) -> anyhow::Result<Issued> {
    req.validate()?;
    let files = cert_files(out_dir, &req.name);
    if !req.force {
        refuse_existing(&files, "--node", &format!("a certificate for {}", req.name), "replace it")?;
    }
    let ca = load_ca(ca_dir)?;
    let now = OffsetDateTime::now_utc();
    if ca.not_after <= now {
        return Err(UsageError::new(format!(
            "--dir: the CA in {} expired on {}; make a new one with weftctl ca init --force",
            ca_dir.display(),
            format_time(ca.not_after)
        ))
        .into());
    }
    let p = leaf_params(req, now);
    if p.not_after > ca.not_after {
        let left = (ca.not_after - now).whole_days();
        return Err(UsageError::new(format!(
            "--days: the CA in {} expires on {}, {left} day(s) from now; expected at most {left}",
            ca_dir.display(),
            format_time(ca.not_after)
        ))
        .into());
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the key")?;
    let cert = p.signed_by(&key, &ca.issuer).context("signing the certificate")?;
    // The issuer field must be the CA's subject byte for byte, or nothing will chain to it.
    let (_, leaf) = X509Certificate::from_der(cert.der()).context("parsing the new certificate")?;
    anyhow::ensure!(
        leaf.issuer().as_raw() == ca.subject_raw.as_slice(),
        "the new certificate's issuer does not match the subject of {}",
        ca_files(ca_dir).cert.display()
    );
    make_dir(out_dir)?;
    write_files(&files, &cert.pem(), &key.serialize_pem())?;
    Ok(Issued { files, not_after: p.not_after })
}

/// A self-signed certificate for `req.name` with the same names and usages as [`issue`] makes,
/// but signed by no CA: what an impostor could make (for tests of peer verification).
pub fn self_signed(out_dir: &Path, req: &IssueRequest) -> anyhow::Result<Issued> {
    req.validate()?;
    let files = cert_files(out_dir, &req.name);
    if !req.force {
        refuse_existing(&files, "--node", &format!("a certificate for {}", req.name), "replace it")?;
    }
    let p = leaf_params(req, OffsetDateTime::now_utc());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the key")?;
    let cert = p.self_signed(&key).context("signing the certificate")?;
    make_dir(out_dir)?;
    write_files(&files, &cert.pem(), &key.serialize_pem())?;
    Ok(Issued { files, not_after: p.not_after })
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

fn leaf_params(req: &IssueRequest, now: OffsetDateTime) -> CertificateParams {
    node_params(&req.name, req.sans(), now - BACKDATE, now + Duration::days(i64::from(req.days)))
}

/// The parameters of every node certificate (`weftctl ca issue` and the join service's): common
/// name `name`, the SANs given (IP addresses as iPAddress, the rest as dNSName; the caller
/// checked them), serverAuth and clientAuth, not a CA.
pub(crate) fn node_params(
    name: &str,
    sans_in: Vec<String>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(name);
    let mut sans = Vec::new();
    for s in sans_in {
        match s.parse::<IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            // Validated as ASCII DNS names above, so the conversion cannot fail.
            Err(_) => sans.extend(rcgen::string::Ia5String::try_from(s).ok().map(SanType::DnsName)),
        }
    }
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = not_before;
    p.not_after = not_after;
    p
}

/// The CA of a directory, ready to sign.
pub(crate) struct LoadedCa {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    pub(crate) subject_raw: Vec<u8>,
    pub(crate) not_after: OffsetDateTime,
}

pub(crate) fn load_ca(dir: &Path) -> anyhow::Result<LoadedCa> {
    let files = ca_files(dir);
    let missing = |path: &Path| {
        UsageError::new(format!(
            "--dir: {} not found; make the CA first with weftctl ca init --dir {}",
            path.display(),
            dir.display()
        ))
    };
    let pem = match std::fs::read(&files.cert) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing(&files.cert).into()),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", files.cert.display()))),
    };
    let key_pem = match std::fs::read_to_string(&files.key) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing(&files.key).into()),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", files.key.display()))),
    };
    let not_a_ca = |why: &str| UsageError::new(format!("--dir: {} is not a usable CA: {why}", files.cert.display()));
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).map_err(|_| not_a_ca("no PEM certificate in it"))?;
    let (_, x509) = X509Certificate::from_der(&block.contents).map_err(|e| not_a_ca(&format!("{e}")))?;
    if !x509.is_ca() {
        return Err(not_a_ca("its basic constraints say it is not a CA").into());
    }
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| UsageError::new(format!("--dir: {} is not a usable private key: {e}", files.key.display())))?;
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(UsageError::new(format!(
            "--dir: {} is not the key of {}",
            files.key.display(),
            files.cert.display()
        ))
        .into());
    }
    let mut params = CertificateParams::default();
    params.distinguished_name =
        distinguished_name(x509.subject()).map_err(|why| not_a_ca(&format!("its subject {why}")))?;
    if let Some(ski) = x509.iter_extensions().find_map(|e| match e.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
        _ => None,
    }) {
        params.key_identifier_method = KeyIdMethod::PreSpecified(ski);
    }
    Ok(LoadedCa {
        subject_raw: x509.subject().as_raw().to_vec(),
        not_after: x509.validity().not_after.to_datetime(),
        issuer: Issuer::new(params, key),
    })
}

/// An X.509 name as rcgen's [`DistinguishedName`], keeping each value's string type, so a
/// certificate rcgen signs names its issuer exactly as the CA names itself.
fn distinguished_name(name: &x509_parser::x509::X509Name<'_>) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err("has a multi-valued or empty RDN".into());
        };
        let oid: Vec<u64> = attr.attr_type().iter().ok_or("has an attribute type that is too long")?.collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err("repeats an attribute type".into());
        }
        let data = attr.attr_value().data;
        let text = || std::str::from_utf8(data).map_err(|_| "holds a string that is not UTF-8".to_string());
        let bad = |e: rcgen::Error| format!("holds an invalid string: {e}");
        let value = match attr.attr_value().header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_string()),
            Tag::PrintableString => DnValue::PrintableString(text()?.try_into().map_err(bad)?),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(bad)?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into().map_err(bad)?),
            Tag::BmpString => DnValue::BmpString(BmpString::from_utf16be(data.to_vec()).map_err(bad)?),
            Tag::UniversalString => {
                DnValue::UniversalString(UniversalString::from_utf32be(data.to_vec()).map_err(bad)?)
            }
            other => return Err(format!("holds a value of unsupported type {other}")),
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

fn refuse_existing(files: &CertFiles, flag: &str, what: &str, action: &str) -> Result<(), UsageError> {
    for p in [&files.cert, &files.key] {
        if p.exists() {
            return Err(UsageError::new(format!(
                "{flag}: {} already exists ({what}); pass --force to {action}",
                p.display()
            )));
        }
    }
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700; an existing one is left as it is.
fn make_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes the key (0600) first, then the certificate (0644), each through a temporary file.
fn write_files(files: &CertFiles, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
    write_atomic(&files.key, key_pem.as_bytes(), 0o600)?;
    write_atomic(&files.cert, cert_pem.as_bytes(), 0o644)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may have taken bits away; set exactly what is meant.
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

fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::RootCertStore;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;
    use x509_parser::extensions::GeneralName;

    /// A fresh directory under the temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "weftctl-pki-{tag}-{}-{}",
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

    fn der(path: &Path) -> CertificateDer<'static> {
        let pem = std::fs::read(path).expect("read cert");
        let (rest, block) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
        assert!(
            x509_parser::pem::parse_x509_pem(rest).is_err(),
            "{} must hold exactly one certificate",
            path.display()
        );
        CertificateDer::from(block.contents)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(ca: &Path) -> Arc<RootCertStore> {
        let mut store = RootCertStore::empty();
        store.add(der(ca)).expect("CA accepted as a trust anchor");
        Arc::new(store)
    }

    /// What the QUIC client side and etcd clients do: verify the server's chain and name.
    fn verify_as_server(ca: &Path, leaf: &Path, name: &str) -> Result<(), rustls::Error> {
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .expect("verifier");
        let sn = ServerName::try_from(name.to_string()).expect("server name");
        v.verify_server_cert(&der(leaf), &[], &sn, &[], UnixTime::now()).map(drop)
    }

    /// What the QUIC server side and etcd (client-cert-auth) do: verify the client's chain.
    fn verify_as_client(ca: &Path, leaf: &Path) -> Result<(), rustls::Error> {
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .expect("verifier");
        v.verify_client_cert(&der(leaf), &[], UnixTime::now()).map(drop)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn issued_certificate_chains_to_the_ca_for_both_roles() {
        let d = TempDir::new("chain");
        let ca = init_ca(&d.0, &CaOptions::default()).expect("ca");
        assert_eq!(ca.files, ca_files(&d.0));
        assert_eq!(mode(&d.0), 0o700, "a new directory is private");
        assert_eq!(mode(&ca.files.key), 0o600);
        assert_eq!(mode(&ca.files.cert), 0o644);

        let mut req = IssueRequest::node("n1");
        req.ips = vec!["172.30.0.11".parse().expect("ip")];
        req.dns = vec!["n1.lab".into(), "n1".into()];
        let leaf = issue(&d.0, &d.0, &req).expect("issue");
        assert_eq!(leaf.files, cert_files(&d.0, "n1"));
        assert_eq!(mode(&leaf.files.key), 0o600);
        assert_eq!(mode(&leaf.files.cert), 0o644);

        verify_as_server(&ca.files.cert, &leaf.files.cert, "n1").expect("valid for n1 as a server");
        verify_as_server(&ca.files.cert, &leaf.files.cert, "n1.lab").expect("valid for the extra DNS name");
        verify_as_server(&ca.files.cert, &leaf.files.cert, "172.30.0.11").expect("valid for the extra IP");
        verify_as_client(&ca.files.cert, &leaf.files.cert).expect("valid as a client");
        let e = verify_as_server(&ca.files.cert, &leaf.files.cert, "n2").expect_err("n2 is another node");
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");

        // What the certificate says, read back.
        let d1 = der(&leaf.files.cert);
        let (_, x) = X509Certificate::from_der(&d1).expect("parses");
        assert!(!x.is_ca());
        let sans: Vec<String> = x
            .subject_alternative_name()
            .expect("san ext")
            .expect("has SANs")
            .value
            .general_names
            .iter()
            .map(|g| match g {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::IPAddress(b) => format!("ip:{b:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(sans, vec!["dns:n1", "dns:n1.lab", "ip:[172, 30, 0, 11]"]);
        let eku = x.extended_key_usage().expect("eku ext").expect("has EKU").value;
        assert!(eku.server_auth && eku.client_auth, "{eku:?}");
        let cn: Vec<&str> = x.subject().iter_common_name().filter_map(|a| a.as_str().ok()).collect();
        assert_eq!(cn, vec!["n1"]);
        let days = (x.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days();
        assert!((364..=365).contains(&days), "default validity is a year, found {days} days");
        assert_eq!(leaf.not_after.unix_timestamp(), x.validity().not_after.timestamp());
        // The key file is the certificate's key.
        let key = KeyPair::from_pem(&std::fs::read_to_string(&leaf.files.key).expect("key")).expect("key parses");
        assert_eq!(x.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
    }

    #[test]
    fn foreign_and_self_signed_certificates_do_not_chain() {
        let (a, b) = (TempDir::new("a"), TempDir::new("b"));
        let ca = init_ca(&a.0, &CaOptions::default()).expect("ca a");
        init_ca(&b.0, &CaOptions::default()).expect("ca b");
        // Same subject as CA a, other key: must still be refused.
        let other = issue(&b.0, &b.0, &IssueRequest::node("n1")).expect("issue from b");
        assert!(verify_as_server(&ca.files.cert, &other.files.cert, "n1").is_err());
        assert!(verify_as_client(&ca.files.cert, &other.files.cert).is_err());
        let out = TempDir::new("self");
        let selfie = self_signed(&out.0, &IssueRequest::node("n1")).expect("self-signed");
        assert!(verify_as_server(&ca.files.cert, &selfie.files.cert, "n1").is_err());
        assert!(verify_as_client(&ca.files.cert, &selfie.files.cert).is_err());
        assert_eq!(mode(&selfie.files.key), 0o600);
    }

    #[test]
    fn issuing_into_another_directory_leaves_the_ca_directory_alone() {
        let (d, out) = (TempDir::new("ca"), TempDir::new("out"));
        let ca = init_ca(&d.0, &CaOptions::default()).expect("ca");
        let leaf = issue(&d.0, &out.0.join("sub"), &IssueRequest::node("n2")).expect("issue");
        assert_eq!(leaf.files.cert, out.0.join("sub/n2.pem"));
        assert!(!cert_files(&d.0, "n2").cert.exists());
        verify_as_client(&ca.files.cert, &leaf.files.cert).expect("chains");
    }

    #[test]
    fn existing_files_are_replaced_only_with_force() {
        let d = TempDir::new("force");
        let first = init_ca(&d.0, &CaOptions::default()).expect("ca");
        let before = std::fs::read(&first.files.cert).expect("read");
        let e = init_ca(&d.0, &CaOptions::default()).expect_err("exists");
        assert!(crate::error::is_usage(&e), "{e:#}");
        assert_eq!(
            e.to_string(),
            format!(
                "--dir: {} already exists (a CA); pass --force to replace it (every certificate it signed stops \
                 being trusted)",
                first.files.cert.display()
            )
        );
        assert_eq!(std::fs::read(&first.files.cert).expect("read"), before, "untouched");
        init_ca(&d.0, &CaOptions { force: true, ..CaOptions::default() }).expect("forced");
        assert_ne!(std::fs::read(&first.files.cert).expect("read"), before, "replaced");
        assert_eq!(mode(&first.files.key), 0o600);

        issue(&d.0, &d.0, &IssueRequest::node("n1")).expect("issue");
        let e = issue(&d.0, &d.0, &IssueRequest::node("n1")).expect_err("exists");
        assert!(e.to_string().starts_with("--node: ") && e.to_string().contains("--force"), "{e}");
        issue(&d.0, &d.0, &IssueRequest { force: true, ..IssueRequest::node("n1") }).expect("forced");
        let left: Vec<String> = std::fs::read_dir(&d.0)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    #[test]
    fn bad_input_names_the_flag() {
        let d = TempDir::new("bad");
        let usage = |r: anyhow::Result<Issued>| {
            let e = r.expect_err("refused");
            assert!(crate::error::is_usage(&e), "not a usage error: {e:#}");
            e.to_string()
        };
        let e = usage(issue(&d.0, &d.0, &IssueRequest::node("n1")));
        assert!(e.starts_with("--dir: ") && e.contains("weftctl ca init --dir"), "{e}");
        let e = usage(init_ca(&d.0, &CaOptions { days: 0, force: false }));
        assert_eq!(e, "--days: expected 1 to 36500, found 0");
        assert!(!d.0.exists(), "nothing made on bad input");
        init_ca(&d.0, &CaOptions { days: 30, force: false }).expect("ca");
        let e = usage(issue(&d.0, &d.0, &IssueRequest::node("N1")));
        assert!(e.starts_with("--node: expected a node name"), "{e}");
        let e = usage(issue(&d.0, &d.0, &IssueRequest::node("ca")));
        assert!(e.starts_with("--node: \"ca\" is reserved"), "{e}");
        let e = usage(issue(&d.0, &d.0, &IssueRequest { dns: vec!["a..b".into()], ..IssueRequest::node("n1") }));
        assert!(e.starts_with("--dns: expected a DNS name"), "{e}");
        let e = usage(issue(&d.0, &d.0, &IssueRequest { days: 31, ..IssueRequest::node("n1") }));
        assert!(e.starts_with("--days: the CA in ") && e.ends_with("expected at most 29"), "{e}");
        assert!(issue(&d.0, &d.0, &IssueRequest { days: 29, ..IssueRequest::node("n1") }).is_ok());

        // A key that is not the CA's.
        let other = TempDir::new("other");
        init_ca(&other.0, &CaOptions::default()).expect("ca");
        std::fs::copy(ca_files(&other.0).key, ca_files(&d.0).key).expect("copy");
        let e = usage(issue(&d.0, &d.0, &IssueRequest::node("n2")));
        assert!(e.ends_with(&format!("is not the key of {}", ca_files(&d.0).cert.display())), "{e}");
        // A leaf is not a CA.
        std::fs::copy(cert_files(&d.0, "n1").cert, ca_files(&d.0).cert).expect("copy");
        let e = usage(issue(&d.0, &d.0, &IssueRequest::node("n2")));
        assert!(e.contains("is not a usable CA: its basic constraints"), "{e}");
    }

    #[test]
    fn dns_names() {
        for ok in ["etcd", "n1", "a.b-c.d", "x_y", "weft0-n1"] {
            assert!(valid_dns_name(ok), "{ok}");
        }
        for bad in ["", "a..b", "-a", "a-", "a b", "1.2.3.4", &"a".repeat(64), "é"] {
            assert!(!valid_dns_name(bad), "{bad:?}");
        }
        let r = IssueRequest {
            dns: vec!["etcd".into(), "ETCD".into(), "x".into()],
            ips: vec!["172.30.0.2".parse().expect("ip")],
            ..IssueRequest::node("etcd")
        };
        assert_eq!(r.sans(), vec!["etcd", "x", "172.30.0.2"]);
    }
}
