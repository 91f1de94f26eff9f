//! The lab's single-member etcd, run in its own namespace on the underlay. Clients talk to it
//! over TLS only (`https://172.30.0.2:2379`) and must present a certificate signed by the lab's
//! CA (`--client-cert-auth`); the peer URL stays plain HTTP inside the etcd namespace.

use super::names::{LabNames, ETCD_CERT, ETCD_ENDPOINT, ETCD_IP, WEFTCTL_CERT};
use super::netns::{enter_on_exec, in_netns};
use crate::etcd::EtcdOpts;
use anyhow::Context;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// The etcd command line for the lab (pure, for tests).
pub fn etcd_args(names: &LabNames) -> Vec<String> {
    let client = format!("https://{ETCD_IP}:{CLIENT_PORT}");
    let peer = format!("http://{ETCD_IP}:{PEER_PORT}");
    let name = names.etcd_ns();
    let tls = names.cert_files(ETCD_CERT);
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", names.etcd_data_dir().display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster={name}={peer}"),
        "--initial-cluster-state=new".to_string(),
        format!("--initial-cluster-token={name}"),
        format!("--cert-file={}", tls.cert.display()),
        format!("--key-file={}", tls.key.display()),
        "--client-cert-auth".to_string(),
        format!("--trusted-ca-file={}", names.ca_files().cert.display()),
    ]
}

/// How weftctl reaches the lab's etcd: its endpoint, the lab CA and weftctl's client certificate.
pub fn client_opts(names: &LabNames) -> EtcdOpts {
    let me = names.cert_files(WEFTCTL_CERT);
    EtcdOpts {
        endpoints: vec![ETCD_ENDPOINT.to_string()],
        ca: Some(names.ca_files().cert),
        cert: Some(me.cert),
        key: Some(me.key),
        timeout: crate::etcd::DEFAULT_TIMEOUT,
    }
}

/// Starts etcd in the lab's etcd namespace (its own session), logging to the lab's etcd log.
pub fn spawn(names: &LabNames, etcd_bin: &Path) -> anyhow::Result<Child> {
    let log_path = names.etcd_log();
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let log2 = log.try_clone().with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(etcd_bin);
    cmd.args(etcd_args(names)).stdin(Stdio::null()).stdout(log).stderr(log2);
    // Configuration comes from the flags only, never from the caller's ETCD_* variables.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD_") {
            cmd.env_remove(k);
        }
    }
    enter_on_exec(&mut cmd, &names.etcd_ns(), true)?;
    cmd.spawn().with_context(|| format!("starting {}", etcd_bin.display()))
}

/// One health probe from inside the etcd namespace: connect over TLS with weftctl's client
/// certificate and read one key, exactly as weftctl and the agents do.
pub fn probe(names: &LabNames) -> Result<(), String> {
    let opts = EtcdOpts { timeout: Duration::from_secs(1), ..client_opts(names) };
    let r = in_netns(&names.etcd_ns(), move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?;
        rt.block_on(async { crate::etcd::connect(&opts).await.map(drop) })
    });
    match r {
        Err(e) => Err(e.to_string()),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Ok(Ok(())) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let names = LabNames::new("0").expect("id");
        let a = etcd_args(&names);
        for want in [
            "--listen-client-urls=https://172.30.0.2:2379",
            "--advertise-client-urls=https://172.30.0.2:2379",
            "--initial-cluster=weft0-etcd=http://172.30.0.2:2380",
            "--data-dir=/run/weft-lab/0/etcd/data",
            "--cert-file=/run/weft-lab/0/pki/etcd.pem",
            "--key-file=/run/weft-lab/0/pki/etcd.key",
            "--client-cert-auth",
            "--trusted-ca-file=/run/weft-lab/0/pki/ca.pem",
        ] {
            assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
        }
        let o = client_opts(&names);
        assert_eq!(o.endpoints, vec!["https://172.30.0.2:2379".to_string()]);
        assert_eq!(o.cert.as_deref(), Some(Path::new("/run/weft-lab/0/pki/weftctl.pem")));
    }
}
