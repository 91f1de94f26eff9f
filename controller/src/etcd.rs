//! Connecting to etcd with a deadline, so a wrong address fails in seconds with the address in
//! the message instead of hanging.

use crate::error::UsageError;
use anyhow::Context;
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Time allowed to connect and for each request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

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
    ) -> Result<Self, UsageError> {
        let endpoints: Vec<String> =
            urls.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        if endpoints.is_empty() {
            return Err(UsageError::new(format!("{flag}: expected one or more URLs like http://10.0.0.5:2379")));
        }
        for e in &endpoints {
            let rest = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://"));
            if !rest.is_some_and(|h| !h.is_empty() && !h.contains('/') && !h.contains(char::is_whitespace)) {
                return Err(UsageError::new(format!("{flag}: expected a URL like http://10.0.0.5:2379, found {e:?}")));
            }
        }
        match (&cert, &key) {
            (Some(_), None) => return Err(UsageError::new("--etcd-key: required when --etcd-cert is set")),
            (None, Some(_)) => return Err(UsageError::new("--etcd-cert: required when --etcd-key is set")),
            _ => {}
        }
        if cert.is_some() && ca.is_none() {
            return Err(UsageError::new("--etcd-ca: required when a client certificate is set"));
        }
        if ca.is_some() && endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(UsageError::new(format!("{flag}: expected https:// URLs when --etcd-ca is set")));
        }
        Ok(Self { endpoints, ca, cert, key, timeout: DEFAULT_TIMEOUT })
    }

    /// The endpoints as one string, for messages.
    pub fn display(&self) -> String {
        self.endpoints.join(",")
    }
}

/// Connects and proves the connection with one cheap (linearizable) read, all within the
/// timeout. Endpoints are tried one at a time and the first that answers is kept: etcd-client's
/// balanced channel over several endpoints fails requests routed to a dead member
/// (etcdv3/etcd-client#39), so a cluster with one member down would be unusable through it.
pub async fn connect(opts: &EtcdOpts) -> anyhow::Result<Client> {
    let what = || format!("connecting to etcd at {}", opts.display());
    let mut co = ConnectOptions::new().with_connect_timeout(opts.timeout).with_timeout(opts.timeout);
    if let Some(ca) = &opts.ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading --etcd-ca {}", ca.display()))?;
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(pem));
        if let (Some(cert), Some(key)) = (&opts.cert, &opts.key) {
            let c = std::fs::read(cert).with_context(|| format!("reading --etcd-cert {}", cert.display()))?;
            let k = std::fs::read(key).with_context(|| format!("reading --etcd-key {}", key.display()))?;
            tls = tls.identity(Identity::from_pem(c, k));
        }
        co = co.with_tls(tls);
    }
    let mut errors = Vec::new();
    for ep in &opts.endpoints {
        let attempt = async {
            let mut client = deadline(opts.timeout, Client::connect([ep], Some(co.clone()))).await?;
            deadline(opts.timeout, client.get(weft_config::keys::ROOT, Some(GetOptions::new().with_count_only())))
                .await?;
            anyhow::Ok(client)
        };
        match attempt.await {
            Ok(c) => return Ok(c),
            Err(e) if opts.endpoints.len() == 1 => return Err(e.context(what())),
            Err(e) => errors.push(format!("{ep}: {e:#}")),
        }
    }
    Err(anyhow::anyhow!("{}", errors.join("; ")).context(what()))
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
