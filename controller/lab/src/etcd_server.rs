//! The lab's etcd, run in its own namespace on the underlay. Clients talk to it over TLS only
//! (`https://172.30.0.2:2379`) and must present a certificate signed by the lab's CA
//! (`--client-cert-auth`). A single member keeps its peer URL plain HTTP inside the etcd
//! namespace; with `LabSpec::etcd_members` > 1, member `k` runs in namespace `weft<id>-etcd<k>`
//! (member 1 in `weft<id>-etcd`) at 172.30.0.(1+k), and members talk to each other over TLS
//! with the same certificate (SAN IPs of every member) and client-certificate auth.

use super::names::{LabNames, ETCD_CERT, ETCD_IP, WEFTCTL_CERT};
use super::netns::{enter_on_exec, in_netns};
use anyhow::Context;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use weft_controller::etcd::EtcdOpts;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
/// Most etcd members a lab runs (at 172.30.0.2 to .6, below the first node at .11).
pub const MAX_MEMBERS: usize = 5;

/// Member `k`'s address (1-based): 172.30.0.(1+k); member 1 is [`ETCD_IP`].
pub fn member_ip(k: usize) -> Ipv4Addr {
    let o = ETCD_IP.octets();
    Ipv4Addr::new(o[0], o[1], o[2], o[3] + u8::try_from(k.clamp(1, MAX_MEMBERS) - 1).unwrap_or(0))
}

/// Member `k`'s namespace: `weft<id>-etcd` for the first, `weft<id>-etcd<k>` for the others.
pub fn member_ns(names: &LabNames, k: usize) -> String {
    if k <= 1 {
        names.etcd_ns()
    } else {
        format!("{}{k}", names.etcd_ns())
    }
}

/// Member `k`'s directory (data dir and log inside): `<lab>/etcd` for the first, `<lab>/etcd<k>`.
fn member_dir(names: &LabNames, k: usize) -> PathBuf {
    match names.etcd_data_dir().parent() {
        Some(d) if k > 1 => d.with_file_name(format!("etcd{k}")),
        Some(d) => d.to_path_buf(),
        None => names.dir().join("etcd"),
    }
}

pub fn member_log(names: &LabNames, k: usize) -> PathBuf {
    member_dir(names, k).join("etcd.log")
}

/// Client URLs of a cluster of `members`, member 1 first.
pub fn endpoints(members: usize) -> Vec<String> {
    (1..=members.max(1)).map(|k| format!("https://{}:{CLIENT_PORT}", member_ip(k))).collect()
}

/// The etcd command line of member `k` of `members` (pure, for tests).
pub fn member_args(names: &LabNames, k: usize, members: usize) -> Vec<String> {
    let ip = member_ip(k);
    let client = format!("https://{ip}:{CLIENT_PORT}");
    let scheme = if members > 1 { "https" } else { "http" };
    let peer = |ip: Ipv4Addr| format!("{scheme}://{ip}:{PEER_PORT}");
    let name = member_ns(names, k);
    let cluster: Vec<String> =
        (1..=members.max(1)).map(|j| format!("{}={}", member_ns(names, j), peer(member_ip(j)))).collect();
    let tls = names.cert_files(ETCD_CERT);
    let ca = names.ca_files().cert;
    let mut args = vec![
        format!("--name={name}"),
        format!("--data-dir={}", member_dir(names, k).join("data").display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={}", peer(ip)),
        format!("--initial-advertise-peer-urls={}", peer(ip)),
        format!("--initial-cluster={}", cluster.join(",")),
        "--initial-cluster-state=new".to_string(),
        format!("--initial-cluster-token={}", names.etcd_ns()),
        format!("--cert-file={}", tls.cert.display()),
        format!("--key-file={}", tls.key.display()),
        "--client-cert-auth".to_string(),
        format!("--trusted-ca-file={}", ca.display()),
    ];
    if members > 1 {
        args.extend([
            format!("--peer-cert-file={}", tls.cert.display()),
            format!("--peer-key-file={}", tls.key.display()),
            "--peer-client-cert-auth".to_string(),
            format!("--peer-trusted-ca-file={}", ca.display()),
        ]);
    }
    args
}

/// The command line of a single-member lab etcd.
pub fn etcd_args(names: &LabNames) -> Vec<String> {
    member_args(names, 1, 1)
}

/// How weftctl reaches the lab's etcd: its endpoint, the lab CA and weftctl's client certificate.
pub fn client_opts(names: &LabNames) -> EtcdOpts {
    client_opts_for(names, 1)
}

/// [`client_opts`] for a cluster of `members`: every member's endpoint.
pub fn client_opts_for(names: &LabNames, members: usize) -> EtcdOpts {
    let me = names.cert_files(WEFTCTL_CERT);
    EtcdOpts {
        endpoints: endpoints(members),
        ca: Some(names.ca_files().cert),
        cert: Some(me.cert),
        key: Some(me.key),
        timeout: weft_controller::etcd::DEFAULT_TIMEOUT,
    }
}

/// Starts etcd in the lab's etcd namespace (its own session), logging to the lab's etcd log.
pub fn spawn(names: &LabNames, etcd_bin: &Path) -> anyhow::Result<Child> {
    spawn_member(names, etcd_bin, 1, 1)
}

/// Starts member `k` of `members` in its namespace, appending to its log. Restarting a member
/// reuses its data dir, so it rejoins with the data it had (the `--initial-*` flags are ignored
/// once the data dir exists).
pub fn spawn_member(names: &LabNames, etcd_bin: &Path, k: usize, members: usize) -> anyhow::Result<Child> {
    let log_path = member_log(names, k);
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log2 = log.try_clone().with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(etcd_bin);
    cmd.args(member_args(names, k, members)).stdin(Stdio::null()).stdout(log).stderr(log2);
    // Configuration comes from the flags only, never from the caller's ETCD_* variables.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD_") {
            cmd.env_remove(k);
        }
    }
    enter_on_exec(&mut cmd, &member_ns(names, k), true)?;
    cmd.spawn().with_context(|| format!("starting {}", etcd_bin.display()))
}

/// One health probe from inside the etcd namespace: connect over TLS with weftctl's client
/// certificate and read one key, exactly as weftctl and the agents do.
pub fn probe(names: &LabNames) -> Result<(), String> {
    probe_member(names, 1)
}

/// [`probe`] of member `k` alone, from its namespace. The read is linearizable, so it succeeds
/// only once the cluster has a leader.
pub fn probe_member(names: &LabNames, k: usize) -> Result<(), String> {
    let opts = EtcdOpts {
        timeout: Duration::from_secs(1),
        endpoints: vec![format!("https://{}:{CLIENT_PORT}", member_ip(k))],
        ..client_opts(names)
    };
    let r = in_netns(&member_ns(names, k), move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?;
        rt.block_on(async { weft_store::EtcdStore::connect_opts(&opts).await.map(drop) })
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
        assert!(!a.iter().any(|x| x.starts_with("--peer-")), "one member: no peer TLS: {a:?}");
    }

    #[test]
    fn three_members() {
        let names = LabNames::new("0").expect("id");
        let a = member_args(&names, 3, 3);
        for want in [
            "--name=weft0-etcd3",
            "--data-dir=/run/weft-lab/0/etcd3/data",
            "--listen-client-urls=https://172.30.0.4:2379",
            "--listen-peer-urls=https://172.30.0.4:2380",
            "--initial-cluster=weft0-etcd=https://172.30.0.2:2380,weft0-etcd2=https://172.30.0.3:2380,weft0-etcd3=https://172.30.0.4:2380",
            "--initial-cluster-token=weft0-etcd",
            "--peer-client-cert-auth",
            "--peer-cert-file=/run/weft-lab/0/pki/etcd.pem",
        ] {
            assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
        }
        assert_eq!(member_args(&names, 1, 3)[1], "--data-dir=/run/weft-lab/0/etcd/data");
        assert_eq!(member_log(&names, 2), Path::new("/run/weft-lab/0/etcd2/etcd.log"));
        assert_eq!(member_log(&names, 1), names.etcd_log());
        assert_eq!(
            client_opts_for(&names, 3).endpoints,
            ["https://172.30.0.2:2379", "https://172.30.0.3:2379", "https://172.30.0.4:2379"]
        );
        // Members sit below the first node's address in every topology.
        for k in 1..=MAX_MEMBERS {
            assert!(
                member_ip(k).octets()[3]
                    < super::super::names::node_addr(super::super::Topology::Flat, 1).ip.octets()[3]
            );
            assert!(names.owns_ns(&member_ns(&names, k)));
        }
    }
}
