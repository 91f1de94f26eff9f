//! weftctl's etcd options (`--etcd`, `--etcd-ca`, `--etcd-cert`, `--etcd-key`) and its deadline
//! on every call, so a wrong address fails in seconds with the address in the message instead
//! of hanging.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Time allowed to connect and for each request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A flag that does not parse: one line naming the flag and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptsError(pub String);

/// Where etcd is and how to authenticate to it (from `--etcd`, `--etcd-ca`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOpts {
    pub endpoints: Vec<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub timeout: Duration,
}

impl EtcdOpts {
    /// Splits a comma-separated `--etcd` value and checks every part, naming `flag` in errors.
    pub fn parse(
        flag: &str,
        urls: &str,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Self, OptsError> {
        let err = |m: String| OptsError(m);
        let endpoints: Vec<String> =
            urls.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        if endpoints.is_empty() {
            return Err(err(format!("{flag}: expected one or more URLs like http://10.0.0.5:2379")));
        }
        for e in &endpoints {
            let rest = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://"));
            if !rest.is_some_and(|h| !h.is_empty() && !h.contains('/') && !h.contains(char::is_whitespace)) {
                return Err(err(format!("{flag}: expected a URL like http://10.0.0.5:2379, found {e:?}")));
            }
        }
        match (&cert, &key) {
            (Some(_), None) => return Err(err("--etcd-key: required when --etcd-cert is set".into())),
            (None, Some(_)) => return Err(err("--etcd-cert: required when --etcd-key is set".into())),
            _ => {}
        }
        if cert.is_some() && ca.is_none() {
            return Err(err("--etcd-ca: required when a client certificate is set".into()));
        }
        if ca.is_some() && endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(err(format!("{flag}: expected https:// URLs when --etcd-ca is set")));
        }
        Ok(Self { endpoints, ca, cert, key, timeout: DEFAULT_TIMEOUT })
    }

    /// The endpoints as one string, for messages.
    pub fn display(&self) -> String {
        self.endpoints.join(",")
    }
}

/// An etcd-client error with the cause it hides: its transport errors print only "transport
/// error" and drop their source (a TLS or connect failure), so the whole chain is spelled out.
#[derive(Debug)]
pub struct Detailed(pub etcd_client::Error);

impl std::fmt::Display for Detailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        if let etcd_client::Error::TransportError(t) = &self.0 {
            let mut cause = std::error::Error::source(t);
            while let Some(c) = cause {
                write!(f, ": {c}")?;
                cause = c.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for Detailed {}

/// Runs an etcd call with a deadline on top of the client's own timeouts.
pub async fn deadline<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(timeout + Duration::from_secs(1), fut).await {
        Ok(r) => Ok(r.map_err(Detailed)?),
        Err(_) => anyhow::bail!("no answer within {} s", timeout.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_other_than_transport_print_as_they_are() {
        let e = Detailed(etcd_client::Error::InvalidArgs("empty endpoints".into()));
        assert_eq!(e.to_string(), etcd_client::Error::InvalidArgs("empty endpoints".into()).to_string());
    }

    #[test]
    fn endpoint_parsing() {
        let o = EtcdOpts::parse("--etcd", "http://a:1, http://b:2", None, None, None).expect("ok");
        assert_eq!(o.endpoints, vec!["http://a:1", "http://b:2"]);
        assert_eq!(o.display(), "http://a:1,http://b:2");
        let e = EtcdOpts::parse("--etcd", "a:1", None, None, None).expect_err("no scheme");
        assert_eq!(e.to_string(), "--etcd: expected a URL like http://10.0.0.5:2379, found \"a:1\"");
        assert!(EtcdOpts::parse("--etcd", " , ", None, None, None).is_err());
        let e = EtcdOpts::parse("--etcd", "http://a:1", Some("/ca".into()), None, None).expect_err("tls");
        assert_eq!(e.to_string(), "--etcd: expected https:// URLs when --etcd-ca is set");
        let e = EtcdOpts::parse("--etcd", "https://a:1", None, Some("/c".into()), None).expect_err("key");
        assert_eq!(e.to_string(), "--etcd-key: required when --etcd-cert is set");
        assert!(
            EtcdOpts::parse("--etcd", "https://a:1", Some("/ca".into()), Some("/c".into()), Some("/k".into())).is_ok()
        );
    }
}
