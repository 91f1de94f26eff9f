//! The lab's single-member etcd, run in its own namespace on the underlay.

use super::names::{LabNames, ETCD_IP};
use super::netns::{enter_on_exec, in_netns};
use anyhow::Context;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// The etcd command line for the lab (pure, for tests).
pub fn etcd_args(names: &LabNames) -> Vec<String> {
    let client = format!("http://{ETCD_IP}:{CLIENT_PORT}");
    let peer = format!("http://{ETCD_IP}:{PEER_PORT}");
    let name = names.etcd_ns();
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
    ]
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

/// One health probe from inside the etcd namespace: `GET /health` on the client port.
pub fn probe(names: &LabNames) -> Result<(), String> {
    let addr = SocketAddr::from((ETCD_IP, CLIENT_PORT));
    let r = in_netns(&names.etcd_ns(), move || -> std::io::Result<String> {
        let t = Duration::from_secs(1);
        let mut s = TcpStream::connect_timeout(&addr, t)?;
        s.set_read_timeout(Some(t))?;
        s.set_write_timeout(Some(t))?;
        s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        let mut body = String::new();
        s.take(64 * 1024).read_to_string(&mut body)?;
        Ok(body)
    });
    match r {
        Err(e) => Err(e.to_string()),
        Ok(Err(e)) => Err(format!("GET http://{addr}/health: {e}")),
        Ok(Ok(body)) if healthy(&body) => Ok(()),
        Ok(Ok(body)) => Err(format!("GET http://{addr}/health answered {:?}", last_line(&body))),
    }
}

fn last_line(body: &str) -> &str {
    body.lines().last().unwrap_or("").trim()
}

/// Whether an HTTP answer to `/health` says healthy.
pub fn healthy(response: &str) -> bool {
    response.starts_with("HTTP/1.")
        && response.split_once(' ').is_some_and(|(_, r)| r.starts_with("200"))
        && response.replace(' ', "").contains("\"health\":\"true\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let names = LabNames::new("0").expect("id");
        let a = etcd_args(&names);
        assert!(a.contains(&"--listen-client-urls=http://172.30.0.2:2379".to_string()));
        assert!(a.contains(&"--initial-cluster=weft0-etcd=http://172.30.0.2:2380".to_string()));
        assert!(a.contains(&"--data-dir=/run/weft-lab/0/etcd/data".to_string()));
    }

    #[test]
    fn health_answers() {
        assert!(healthy("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{\"health\":\"true\",\"reason\":\"\"}"));
        assert!(!healthy("HTTP/1.0 503 Service Unavailable\r\n\r\n{\"health\":\"false\"}"));
        assert!(!healthy("HTTP/1.0 200 OK\r\n\r\n{\"health\":\"false\"}"));
        assert!(!healthy(""));
    }
}
