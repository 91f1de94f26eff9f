//! `weftctl ca`: the cluster CA and node certificates (QUIC and etcd client certificates).

use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use weft_controller::pki;

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Make a cluster CA: DIR/ca.pem and DIR/ca.key (0600); DIR is made 0700 if missing.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = pki::DEFAULT_CA_DAYS)]
        days: u32,
        /// Replace an existing CA (certificates it signed stop being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate signed by DIR's CA: DIR/NAME.pem (leaf only) and DIR/NAME.key.
    Issue {
        /// Node name: the certificate's DNS SAN and common name.
        #[arg(long, value_name = "NAME")]
        node: String,
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Validity in days (at most until the CA expires).
        #[arg(long, default_value_t = pki::DEFAULT_CERT_DAYS)]
        days: u32,
        /// Extra IP address SAN (repeatable).
        #[arg(long, value_name = "IP")]
        ip: Vec<std::net::IpAddr>,
        /// Extra DNS name SAN (repeatable).
        #[arg(long, value_name = "NAME")]
        dns: Vec<String>,
        /// Replace an existing certificate and key for NAME.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: &CaCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCmd::Init { dir, days, force } => {
            let ca = pki::init_ca(dir, &pki::CaOptions { days: *days, force: *force })?;
            outln!("CA created: {} and {} (expires {})", ca.files.cert.display(), ca.files.key.display(), ca.expires());
        }
        CaCmd::Issue { node, dir, days, ip, dns, force } => {
            let req =
                pki::IssueRequest { name: node.clone(), days: *days, ips: ip.clone(), dns: dns.clone(), force: *force };
            let c = pki::issue(dir, dir, &req)?;
            outln!(
                "issued {node} [{}]: {} and {} (expires {})",
                req.sans().join(", "),
                c.files.cert.display(),
                c.files.key.display(),
                c.expires()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
