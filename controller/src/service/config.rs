//! `controller.toml`: the parser lives with agent.toml's in the config crate
//! ([`weft_config::controller`], pure and shared with the tests); this module adds what needs
//! the machine: the default name (the host name) and the summary `--check` prints.

use weft_config::agent::valid_name;
pub use weft_config::controller::{BootstrapConfig, ControllerConfig, ElectionConfig, EvictConfig, HttpConfig};
use weft_config::ConfigError;

/// The candidate name: `name` from the file, else the host name (lowercased).
pub fn resolve_name(cfg: &ControllerConfig, source: &str) -> Result<String, ConfigError> {
    if let Some(n) = &cfg.name {
        return Ok(n.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    name_from_host(host.trim()).ok_or_else(|| {
        ConfigError::new(
            source,
            "name",
            format!("not set, and the host name {:?} is not a valid name; set name", host.trim()),
        )
    })
}

/// The host name as a candidate name, if it makes one.
pub fn name_from_host(host: &str) -> Option<String> {
    let n = host.to_ascii_lowercase();
    valid_name(&n).then_some(n)
}

/// What `weft-controller --check` prints.
pub fn summary(cfg: &ControllerConfig, name: &str) -> String {
    let tls = match &cfg.etcd.tls {
        None => "no TLS",
        Some(t) if t.identity.is_some() => "TLS with a client certificate",
        Some(_) => "TLS",
    };
    let mut out = format!(
        "controller {name} of network {}\netcd: {} ({tls})\nhttp: {} (/, /api/cluster, /metrics, /healthz)\nelection: session TTL {} s\neviction: after {} s absent, held while more than {} of the nodes look dead, scan every {} s\n",
        cfg.network,
        cfg.etcd.endpoints.join(", "),
        cfg.http.listen,
        cfg.election.session_ttl.as_secs(),
        cfg.evict.after.as_secs(),
        cfg.evict.max_dead_share,
        cfg.evict.scan.as_secs(),
    );
    match &cfg.bootstrap {
        Some(b) => out.push_str(&format!(
            "bootstrap: {} (CA in {}, certificates for {} s)\n",
            b.listen,
            b.ca_dir.display(),
            b.cert_lifetime.as_secs()
        )),
        None => out.push_str("bootstrap: off (no [bootstrap] section)\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_summary() {
        assert_eq!(name_from_host("Ctl-1"), Some("ctl-1".into()));
        assert_eq!(name_from_host("a b"), None);
        assert_eq!(name_from_host(""), None);
        let cfg = ControllerConfig::parse("c.toml", "name = \"c1\"\n[etcd]\nendpoints = [\"http://a:2379\"]\n")
            .expect("valid");
        assert_eq!(resolve_name(&cfg, "c.toml"), Ok("c1".into()));
        let s = summary(&cfg, "c1");
        assert!(
            s.starts_with("controller c1 of network default\netcd: http://a:2379 (no TLS)\nhttp: 0.0.0.0:9650"),
            "{s}"
        );
        assert!(
            s.contains(
                "eviction: after 3600 s absent, held while more than 0.5 of the nodes look dead, scan every 5 s"
            ),
            "{s}"
        );
        assert!(s.ends_with("bootstrap: off (no [bootstrap] section)\n"), "{s}");
    }
}
