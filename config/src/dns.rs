//! Resolver settings for pods: the servers, search domains and options of a `resolv.conf`.
//! A network carries a default set (in its etcd config); a pod may bring its own, which replaces
//! the network's field by field (a pod that names only servers keeps the network's search list).
//! The CNI result's `dns` object and Docker's daemon settings carry the same three lists.

use crate::error::ConfigError;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::IpAddr;

/// glibc reads at most three `nameserver` lines.
pub const MAX_SERVERS: usize = 3;
/// glibc reads at most six search domains.
pub const MAX_SEARCH: usize = 6;

/// One set of resolver settings. Empty lists mean "not set" (see [`DnsSettings::over`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSettings {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl DnsSettings {
    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.search.is_empty() && self.options.is_empty()
    }

    /// These settings over `base`: each list of `self` that is set replaces `base`'s.
    pub fn over(&self, base: &DnsSettings) -> DnsSettings {
        let pick =
            |mine: &Vec<String>, theirs: &Vec<String>| if mine.is_empty() { theirs.clone() } else { mine.clone() };
        DnsSettings {
            servers: if self.servers.is_empty() { base.servers.clone() } else { self.servers.clone() },
            search: pick(&self.search, &base.search),
            options: pick(&self.options, &base.options),
        }
    }

    /// Checks every entry; errors name `field` (e.g. `dns` or `pods[0].dns`) and the entry.
    pub fn check(&self, source: &str, field: &str) -> Result<(), ConfigError> {
        let err = |sub: &str, msg: String| ConfigError::new(source, format!("{field}.{sub}"), msg);
        if self.servers.len() > MAX_SERVERS {
            return Err(err(
                "servers",
                format!(
                    "expected at most {MAX_SERVERS} servers (the resolver reads no more), found {}",
                    self.servers.len()
                ),
            ));
        }
        if self.search.len() > MAX_SEARCH {
            return Err(err("search", format!("expected at most {MAX_SEARCH} domains, found {}", self.search.len())));
        }
        for (i, d) in self.search.iter().enumerate() {
            if !valid_domain(d) {
                return Err(err(
                    &format!("search[{i}]"),
                    format!("expected a domain name (letters, digits, '-', '.', 1 to 253 characters), found {d:?}"),
                ));
            }
        }
        for (i, o) in self.options.iter().enumerate() {
            if !valid_option(o) {
                return Err(err(
                    &format!("options[{i}]"),
                    format!("expected a resolver option such as ndots:2 or edns0, found {o:?}"),
                ));
            }
        }
        Ok(())
    }

    /// These settings with every entry [`DnsSettings::check`] would refuse dropped and the lists
    /// cut to what the resolver reads: for settings weft passes on or reads back rather than
    /// takes from an operator (a runtime's, a stored config's), where refusing all of it would
    /// cost more than the bad entry.
    pub fn sanitized(&self) -> DnsSettings {
        DnsSettings {
            servers: self.servers.iter().copied().take(MAX_SERVERS).collect(),
            search: self.search.iter().filter(|d| valid_domain(d)).take(MAX_SEARCH).cloned().collect(),
            options: self.options.iter().filter(|o| valid_option(o)).cloned().collect(),
        }
    }

    /// The text of a `resolv.conf` holding these settings.
    pub fn resolv_conf(&self) -> String {
        let mut t = String::from("# written by weft-agent\n");
        for s in &self.servers {
            let _ = writeln!(t, "nameserver {s}");
        }
        if !self.search.is_empty() {
            let _ = writeln!(t, "search {}", self.search.join(" "));
        }
        if !self.options.is_empty() {
            let _ = writeln!(t, "options {}", self.options.join(" "));
        }
        t
    }
}

fn valid_domain(d: &str) -> bool {
    let d = d.strip_suffix('.').unwrap_or(d);
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `name` or `name:value`, the shapes resolv.conf(5) options take; nothing that could break the line.
fn valid_option(o: &str) -> bool {
    !o.is_empty()
        && o.len() <= 64
        && o.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(servers: &[&str], search: &[&str], options: &[&str]) -> DnsSettings {
        DnsSettings {
            servers: servers.iter().map(|s| s.parse().expect("literal")).collect(),
            search: search.iter().map(|s| s.to_string()).collect(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_pod_replaces_the_networks_lists_it_sets_and_keeps_the_others() {
        let net = settings(&["10.96.0.10"], &["svc.cluster.local"], &["ndots:5"]);
        let pod = settings(&["203.0.113.2", "2001:db8::2"], &[], &[]);
        assert_eq!(pod.over(&net), settings(&["203.0.113.2", "2001:db8::2"], &["svc.cluster.local"], &["ndots:5"]));
        assert_eq!(DnsSettings::default().over(&net), net);
        assert!(DnsSettings::default().over(&DnsSettings::default()).is_empty());
    }

    #[test]
    fn resolv_conf_has_one_line_per_kind() {
        let s = settings(&["203.0.113.2", "2001:db8::2"], &["lab.weft", "weft"], &["ndots:2", "edns0"]);
        assert_eq!(
            s.resolv_conf(),
            "# written by weft-agent\nnameserver 203.0.113.2\nnameserver 2001:db8::2\nsearch lab.weft weft\noptions ndots:2 edns0\n"
        );
        assert_eq!(DnsSettings::default().resolv_conf(), "# written by weft-agent\n");
    }

    #[test]
    fn sanitized_drops_what_check_refuses() {
        let s = settings(
            &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"],
            &["ok.example", "bad domain", "a", "b", "c", "d", "e", "f"],
            &["ndots:2", "x y"],
        );
        let clean = s.sanitized();
        assert!(clean.check("f", "dns").is_ok(), "{clean:?}");
        assert_eq!(clean.servers.len(), 3);
        assert_eq!(clean.search, ["ok.example", "a", "b", "c", "d", "e"]);
        assert_eq!(clean.options, ["ndots:2"]);
    }

    #[test]
    fn check_names_the_bad_entry() {
        assert!(settings(&["10.0.0.1"], &["a.example", "b-c.example."], &["ndots:2", "rotate"])
            .check("f", "dns")
            .is_ok());
        let e = settings(&[], &["ok.example", "bad domain"], &[]).check("f", "pods[1].dns").expect_err("space");
        assert_eq!(e.field, "pods[1].dns.search[1]");
        let e = settings(&[], &[], &["ndots:2\nnameserver 1.2.3.4"]).check("f", "dns").expect_err("newline");
        assert_eq!(e.field, "dns.options[0]");
        let e = settings(&["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"], &[], &[]).check("f", "dns").expect_err("four");
        assert_eq!(e.field, "dns.servers");
        assert!(settings(&[], &["-x.example"], &[]).check("f", "dns").is_err());
    }
}
