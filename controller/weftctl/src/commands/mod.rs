//! One module per `weftctl` verb: its clap arguments and what it does. `main.rs` only parses
//! the command line and dispatches here.

pub mod ca;
pub mod lab;
pub mod network;
pub mod nodes;
pub mod pod;
pub mod token;

use anyhow::Context;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use weft_config::Backend;
use weft_controller::etcd::EtcdOpts;
pub use weft_controller::UsageError;

/// The global flags every verb may use.
pub struct Global {
    pub etcd: Option<String>,
    pub etcd_ca: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    pub network: String,
    pub socket: PathBuf,
}

pub fn parse_backend(s: &str) -> Result<Backend, String> {
    s.parse()
}

/// Resolver flags (`network init` for the network, `pod add` for one pod).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct DnsFlags {
    /// A DNS server the pods use (repeat for more, at most 3).
    #[arg(long = "dns-server", value_name = "IP")]
    pub servers: Vec<std::net::IpAddr>,
    /// A search domain (repeat for more, at most 6).
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub search: Vec<String>,
    /// A resolver option such as ndots:2 or edns0 (repeat for more).
    #[arg(long = "dns-option", value_name = "OPTION")]
    pub options: Vec<String>,
}

impl DnsFlags {
    /// The settings, checked; an error names the flag.
    pub fn settings(&self) -> Result<weft_config::dns::DnsSettings, UsageError> {
        let dns = weft_config::dns::DnsSettings {
            servers: self.servers.clone(),
            search: self.search.clone(),
            options: self.options.clone(),
        };
        dns.check("flags", "dns").map_err(|e| {
            let flag = match e.field.split('.').nth(1).unwrap_or("") {
                f if f.starts_with("servers") => "--dns-server",
                f if f.starts_with("search") => "--dns-search",
                _ => "--dns-option",
            };
            UsageError::new(format!("{flag}: {}", e.message))
        })?;
        Ok(dns)
    }

    /// [`DnsFlags::settings`] for a whole network: search domains and options need a server
    /// (without one a pod's resolver would ask 127.0.0.1).
    pub fn network_settings(&self) -> Result<weft_config::dns::DnsSettings, UsageError> {
        let dns = self.settings()?;
        if dns.servers.is_empty() && !dns.is_empty() {
            return Err(UsageError::new("--dns-server: required with --dns-search or --dns-option"));
        }
        Ok(dns)
    }
}

/// Prints `v` as pretty JSON, or the human rendering.
pub fn print_out<T: serde::Serialize>(json: bool, v: &T, human: impl FnOnce() -> String) -> anyhow::Result<ExitCode> {
    if json {
        outln!("{}", serde_json::to_string_pretty(v).context("encoding JSON")?);
    } else {
        out!("{}", human());
    }
    Ok(ExitCode::SUCCESS)
}

/// The etcd flags, checked before anything else an etcd verb checks.
pub fn etcd_opts(g: &Global) -> Result<EtcdOpts, UsageError> {
    let url = g
        .etcd
        .as_deref()
        .ok_or_else(|| UsageError::new("--etcd: required (or set WEFT_ETCD), e.g. --etcd http://10.0.0.5:2379"))?;
    EtcdOpts::parse("--etcd", url, g.etcd_ca.clone(), g.etcd_cert.clone(), g.etcd_key.clone()).map_err(UsageError::from)
}

/// Connects with checked etcd flags and runs `f` with the store on a single-threaded runtime.
pub fn with_store<F, Fut>(opts: EtcdOpts, f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(weft_store::EtcdStore) -> Fut,
    Fut: Future<Output = anyhow::Result<ExitCode>>,
{
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let store = weft_store::EtcdStore::connect_opts(&opts).await?;
        f(store).await
    })
}
