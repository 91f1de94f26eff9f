//! A real resolver inside a lab: dnsmasq (Debian's `dnsmasq-base`) in the lab's external
//! namespace at 203.0.113.2, answering only for names it is given, forwarding nothing. Its
//! guard ends it, also when a test fails.

use anyhow::{Context, Result};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use weft_lab::Lab;

/// The address dnsmasq listens on: the external namespace's.
pub const RESOLVER: &str = "203.0.113.2";

/// A running dnsmasq; dropping it kills it.
pub struct Dnsmasq {
    child: Child,
}

impl Dnsmasq {
    /// Starts dnsmasq in `lab`'s external namespace answering each `(name, address)`, and waits
    /// until it answers on port 53.
    pub fn start(lab: &Lab, records: &[(&str, &str)]) -> Result<Dnsmasq> {
        let ns = lab.names().ext_ns();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts"])
            .args(["--conf-file=/dev/null", "--bind-interfaces", "--user=root", "--pid-file", "--log-facility=-"])
            .arg(format!("--listen-address={RESOLVER}"));
        for (name, addr) in records {
            cmd.arg(format!("--host-record={name},{addr}"));
            // Authoritative for the name's domain: a query of a type it has no record of (AAAA)
            // gets an empty answer instead of REFUSED (there is no upstream to forward it to).
            if let Some((_, domain)) = name.split_once('.') {
                cmd.arg(format!("--local=/{domain}/"));
            }
        }
        let child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("starting dnsmasq")?;
        let guard = Dnsmasq { child };
        let listening = crate::wait_for(Duration::from_secs(10), || {
            lab.exec("ext", &["ss", "-Hlun", "sport", "=", ":53"])
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(RESOLVER))
        });
        listening.context("dnsmasq did not listen on 203.0.113.2:53 within 10 s")?;
        Ok(guard)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `args` in the named namespace through `ip netns exec`, which puts the files of
/// `/etc/netns/<ns>/` over `/etc` (as a user of the pod would); returns (success, stdout).
pub fn ip_netns_exec(ns: &str, args: &[&str]) -> (bool, String) {
    match Command::new("ip").args(["netns", "exec", ns]).args(args).stdin(Stdio::null()).output() {
        Ok(o) => (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()),
        Err(e) => (false, format!("running ip netns exec {ns}: {e}")),
    }
}
