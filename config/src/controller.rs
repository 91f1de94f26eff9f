//! The controller's configuration file (`controller.toml`), read once at start and validated
//! into types like agent.toml: its `[etcd]` section is agent.toml's (same parser), unknown keys
//! are refused with a suggestion, and every error names the file and the field.

use crate::agent::{read_etcd, valid_name, EtcdConfig, NAME_RULE};
use crate::error::ConfigError;
use crate::reader::Reader;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default address of the controller's plain-HTTP listener (page, JSON, metrics, health).
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:9650";
/// Default address of the HTTPS join service.
pub const DEFAULT_BOOTSTRAP_LISTEN: &str = "0.0.0.0:9651";
/// Default CA directory of the join service (`ca.pem` + `ca.key`).
pub const DEFAULT_CA_DIR: &str = "/etc/weft/pki";

#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    /// Candidate name in the election; `None` = the host name (resolved by the daemon).
    pub name: Option<String>,
    /// The weft network (etcd namespace) this controller looks after.
    pub network: String,
    pub etcd: EtcdConfig,
    pub http: HttpConfig,
    pub election: ElectionConfig,
    pub evict: EvictConfig,
    /// `[bootstrap]`: the join service; `None` without the section.
    pub bootstrap: Option<BootstrapConfig>,
}

/// `[http]`: the plain-HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

/// `[election]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionConfig {
    /// TTL of the session lease that keeps the candidacy (and leadership) alive.
    pub session_ttl: Duration,
}

/// `[evict]`: dead-node cleanup.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictConfig {
    /// How long the leader must have seen a node's heartbeat absent before evicting it.
    pub after: Duration,
    /// No eviction while more than this share of all nodes looks dead at once.
    pub max_dead_share: f64,
    /// Time between two scans.
    pub scan: Duration,
}

/// `[bootstrap]`: the HTTPS join service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapConfig {
    pub listen: SocketAddr,
    /// `ca.pem` + `ca.key` (the layout of weftctl's pki).
    pub ca_dir: PathBuf,
    /// Lifetime of the node certificates it signs.
    pub cert_lifetime: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([0, 0, 0, 0], 9650)) }
    }
}

impl Default for ElectionConfig {
    fn default() -> Self {
        Self { session_ttl: Duration::from_secs(5) }
    }
}

impl Default for EvictConfig {
    fn default() -> Self {
        Self { after: Duration::from_secs(3600), max_dead_share: 0.5, scan: Duration::from_secs(5) }
    }
}

impl ControllerConfig {
    /// Reads and validates `path`. Errors name the file, the field and the expectation.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (source, text) = crate::reader::read_file(path)?;
        Self::parse(&source, &text)
    }

    /// Validates the TOML text; `source` names it in errors.
    pub fn parse(source: &str, text: &str) -> Result<Self, ConfigError> {
        let table = crate::reader::parse_table(source, text)?;
        let mut r = Reader::new(source, "", &table);
        let name = match r.opt_str("name")? {
            Some(n) if !valid_name(n) => return Err(r.err("name", format!("expected {NAME_RULE}, found {n:?}"))),
            other => other.map(str::to_string),
        };
        let network = r.opt_str("network")?.unwrap_or("default");
        if !valid_name(network) {
            return Err(r.err("network", format!("expected {NAME_RULE}, found {network:?}")));
        }
        let etcd = read_etcd(r.table("etcd")?)?;
        let http = read_http(r.table("http")?)?;
        let election = read_election(r.table("election")?)?;
        let evict = read_evict(r.table("evict")?)?;
        let bootstrap =
            if table.contains_key("bootstrap") { Some(read_bootstrap(r.table("bootstrap")?)?) } else { None };
        r.finish()?;
        Ok(Self { name, network: network.to_string(), etcd, http, election, evict, bootstrap })
    }
}

fn listen_addr(r: &mut Reader<'_>, key: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
    let s = r.opt_str(key)?.unwrap_or(default);
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(a),
        _ => Err(r.err(key, format!("expected an address and port like {default} or [::]:9650, found {s:?}"))),
    }
}

fn read_http(mut r: Reader<'_>) -> Result<HttpConfig, ConfigError> {
    let listen = listen_addr(&mut r, "listen", DEFAULT_HTTP_LISTEN)?;
    r.finish()?;
    Ok(HttpConfig { listen })
}

fn read_election(mut r: Reader<'_>) -> Result<ElectionConfig, ConfigError> {
    let d = ElectionConfig::default();
    let session_ttl = r.opt_int("session_ttl_secs", 2, 60)?.map_or(d.session_ttl, |s| Duration::from_secs(s as u64));
    r.finish()?;
    Ok(ElectionConfig { session_ttl })
}

fn read_evict(mut r: Reader<'_>) -> Result<EvictConfig, ConfigError> {
    let d = EvictConfig::default();
    let secs = |v: Option<i64>, default: Duration| v.map_or(default, |s| Duration::from_secs(s as u64));
    let after = secs(r.opt_int("after_secs", 1, 365 * 24 * 3600)?, d.after);
    let max_dead_share = r.opt_f64("max_dead_share", 0.0, 1.0)?.unwrap_or(d.max_dead_share);
    let scan = secs(r.opt_int("scan_secs", 1, 3600)?, d.scan);
    r.finish()?;
    Ok(EvictConfig { after, max_dead_share, scan })
}

fn read_bootstrap(mut r: Reader<'_>) -> Result<BootstrapConfig, ConfigError> {
    let listen = listen_addr(&mut r, "listen", DEFAULT_BOOTSTRAP_LISTEN)?;
    let ca_dir = match r.opt_str("ca_dir")? {
        None => PathBuf::from(DEFAULT_CA_DIR),
        Some(p) if p.starts_with('/') => PathBuf::from(p),
        Some(p) => return Err(r.err("ca_dir", format!("expected an absolute path, found {p:?}"))),
    };
    let cert_lifetime =
        Duration::from_secs(r.opt_int("cert_lifetime_secs", 3600, 10 * 365 * 24 * 3600)?.unwrap_or(2_592_000) as u64);
    r.finish()?;
    Ok(BootstrapConfig { listen, ca_dir, cert_lifetime })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[etcd]\nendpoints = [\"http://10.0.0.5:2379\"]\n";

    fn err(text: &str) -> String {
        match ControllerConfig::parse("controller.toml", text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_gets_defaults() {
        let c = ControllerConfig::parse("controller.toml", MINIMAL).expect("valid");
        assert_eq!(c.name, None);
        assert_eq!(c.network, "default");
        assert_eq!(c.etcd.endpoints, ["http://10.0.0.5:2379"]);
        assert_eq!(c.http, HttpConfig::default());
        assert_eq!(c.http.listen.to_string(), DEFAULT_HTTP_LISTEN);
        assert_eq!(c.election.session_ttl, Duration::from_secs(5));
        assert_eq!(c.evict, EvictConfig::default());
        assert_eq!(c.evict.after, Duration::from_secs(3600));
        assert_eq!(c.evict.max_dead_share, 0.5);
        assert_eq!(c.evict.scan, Duration::from_secs(5));
        assert_eq!(c.bootstrap, None);
    }

    #[test]
    fn full_file() {
        let text = r#"
name = "c1"
network = "blue"
[etcd]
endpoints = ["https://172.30.0.2:2379"]
ca_file = "/etc/weft/pki/ca.pem"
cert_file = "/etc/weft/pki/c1.pem"
key_file = "/etc/weft/pki/c1.key"
[http]
listen = "[::]:9660"
[election]
session_ttl_secs = 7
[evict]
after_secs = 30
max_dead_share = 1
scan_secs = 2
[bootstrap]
ca_dir = "/var/lib/weft/pki"
"#;
        let c = ControllerConfig::parse("controller.toml", text).expect("valid");
        assert_eq!(c.name.as_deref(), Some("c1"));
        assert_eq!(c.network, "blue");
        assert!(c.etcd.tls.as_ref().is_some_and(|t| t.identity.is_some()));
        assert_eq!(c.http.listen.to_string(), "[::]:9660");
        assert_eq!(c.election.session_ttl, Duration::from_secs(7));
        assert_eq!(
            c.evict,
            EvictConfig { after: Duration::from_secs(30), max_dead_share: 1.0, scan: Duration::from_secs(2) }
        );
        let b = c.bootstrap.expect("bootstrap");
        assert_eq!(b.listen.to_string(), DEFAULT_BOOTSTRAP_LISTEN);
        assert_eq!(b.ca_dir, PathBuf::from("/var/lib/weft/pki"));
        assert_eq!(b.cert_lifetime, Duration::from_secs(2_592_000));
        let empty = ControllerConfig::parse("c", &format!("{MINIMAL}[bootstrap]\n")).expect("valid");
        assert!(empty.bootstrap.is_some(), "an empty [bootstrap] means the defaults");
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: &[(&str, &str)] = &[
            ("", "controller.toml: etcd.endpoints: expected at least one URL"),
            ("name = \"C 1\"\n[etcd]\nendpoints = [\"http://a:1\"]", "controller.toml: name: expected lowercase"),
            ("network = \"\"\n[etcd]\nendpoints = [\"http://a:1\"]", "controller.toml: network: expected lowercase"),
            ("[etcd]\nendpoints = [\"a:1\"]", "controller.toml: etcd.endpoints[0]: expected a URL like"),
            (
                "[etcd]\nendpoints = [\"http://a:1\"]\ncert_file = \"/c\"",
                "controller.toml: etcd.key_file: required when cert_file is set",
            ),
            (
                &format!("{MINIMAL}[http]\nlisten = \"9650\""),
                "controller.toml: http.listen: expected an address and port like 0.0.0.0:9650",
            ),
            (
                &format!("{MINIMAL}[http]\nlisten = \"0.0.0.0:0\""),
                "controller.toml: http.listen: expected an address and port",
            ),
            (
                &format!("{MINIMAL}[http]\nlistn = \"0.0.0.0:1\""),
                "controller.toml: http.listn: unknown key (did you mean `listen`?)",
            ),
            (
                &format!("{MINIMAL}[election]\nsession_ttl_secs = 1"),
                "controller.toml: election.session_ttl_secs: expected an integer from 2 to 60, found 1",
            ),
            (
                &format!("{MINIMAL}[evict]\nafter_secs = 0"),
                "controller.toml: evict.after_secs: expected an integer from 1 to 31536000, found 0",
            ),
            (
                &format!("{MINIMAL}[evict]\nafter_secs = \"1h\""),
                "controller.toml: evict.after_secs: expected an integer from 1 to 31536000, found a string",
            ),
            (
                &format!("{MINIMAL}[evict]\nmax_dead_share = 1.5"),
                "controller.toml: evict.max_dead_share: expected a number from 0 to 1, found 1.5",
            ),
            (
                &format!("{MINIMAL}[evict]\nmax_dead_share = \"half\""),
                "controller.toml: evict.max_dead_share: expected a number from 0 to 1, found a string",
            ),
            (
                &format!("{MINIMAL}[evict]\nscan_secs = 0"),
                "controller.toml: evict.scan_secs: expected an integer from 1 to 3600, found 0",
            ),
            (
                &format!("{MINIMAL}[bootstrap]\nca_dir = \"pki\""),
                "controller.toml: bootstrap.ca_dir: expected an absolute path, found \"pki\"",
            ),
            (
                &format!("{MINIMAL}[bootstrap]\ncert_lifetime_secs = 60"),
                "controller.toml: bootstrap.cert_lifetime_secs: expected an integer from 3600 to 315360000, found 60",
            ),
            (
                &format!("{MINIMAL}[bootstrap]\nlisten = \"x\""),
                "controller.toml: bootstrap.listen: expected an address and port like 0.0.0.0:9651",
            ),
            (
                &format!("{MINIMAL}[evict]\nafter_sec = 3"),
                "controller.toml: evict.after_sec: unknown key (did you mean `after_secs`?)",
            ),
            (&format!("nmae = \"c1\"\n{MINIMAL}"), "controller.toml: nmae: unknown key (did you mean `name`?)"),
            ("[etcd", "controller.toml: invalid TOML (line 1, column"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.starts_with(want), "{text:?}:\n got  {got}\n want {want}...");
            assert!(!got.contains('\n'), "one line: {got}");
        }
    }
}
