//! The lab's etcd members: wiring the extra members of a multi-member lab, and stopping and
//! starting members while the lab runs (outage and member-failure scenarios). A restarted
//! member keeps its data dir, certificate and address, so it comes back with what it held.

use super::etcd_server::{self, member_ip, member_ns};
use super::names::{BRIDGE_A, ROUTER_IP};
use super::procs::{self, Ownership};
use super::state::{LabState, ProcRecord};
use super::{bins, lock, plumbing, IpFamily, Lab};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};

/// Time a member gets to exit after a signal.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

fn member_key(k: usize) -> String {
    format!("etcd{k}")
}

fn record(s: &LabState, k: usize) -> Option<ProcRecord> {
    if k <= 1 {
        s.etcd.clone()
    } else {
        s.etcd_members.get(&member_key(k)).cloned()
    }
}

fn set_record(s: &mut LabState, k: usize, rec: Option<ProcRecord>) {
    if k <= 1 {
        s.etcd = rec;
    } else if let Some(rec) = rec {
        s.etcd_members.insert(member_key(k), rec);
    } else {
        s.etcd_members.remove(&member_key(k));
    }
}

impl Lab {
    /// Number of etcd members.
    pub fn etcd_members(&self) -> usize {
        self.spec.etcd_members
    }

    /// Namespaces and underlay ports of members 2.. (member 1 is wired with the underlay).
    pub(super) fn setup_etcd_members(&self) -> anyhow::Result<()> {
        for k in 2..=self.spec.etcd_members {
            let ns = member_ns(&self.names, k);
            self.make_ns(&ns)?;
            let addr = super::names::NodeAddr { ip: member_ip(k), gateway: ROUTER_IP, bridge: BRIDGE_A };
            plumbing::attach(&self.names, &ns, &format!("vetcd{k}"), addr, IpFamily::V4, false)?;
        }
        Ok(())
    }

    pub(super) fn spawn_etcd_member(&self, etcd_bin: &Path, k: usize) -> anyhow::Result<u32> {
        let child = etcd_server::spawn_member(&self.names, etcd_bin, k, self.spec.etcd_members)?;
        self.adopt(child, &member_ns(&self.names, k), |s, rec| set_record(s, k, Some(rec)))
    }

    fn check_member(&self, k: usize) -> anyhow::Result<()> {
        if k == 0 || k > self.spec.etcd_members {
            anyhow::bail!("lab {} has etcd members 1 to {}, not {k}", self.id(), self.spec.etcd_members);
        }
        Ok(())
    }

    /// Pid of etcd member `k` (1-based) if it runs.
    pub fn etcd_member_pid(&self, k: usize) -> Option<u32> {
        let rec = record(&lock(&self.state), k)?;
        (!self.gone(rec.pid)).then_some(rec.pid)
    }

    /// Sends `sig` to etcd member `k` (after checking it is still the lab's process) and waits
    /// until it has exited. A member that is not running is left as it is.
    pub fn stop_etcd_member(&self, k: usize, sig: Signal) -> anyhow::Result<()> {
        self.check_member(k)?;
        let Some(rec) = record(&lock(&self.state), k) else { return Ok(()) };
        match procs::check(&rec) {
            Ownership::Ours => procs::signal(&rec, sig).map_err(anyhow::Error::msg)?,
            Ownership::Gone => {}
            Ownership::NotOurs(why) => anyhow::bail!("not signalling etcd member {k}: {why}"),
        }
        if !procs::wait_gone(&[rec.pid], STOP_TIMEOUT, |p| self.gone(p)).is_empty() {
            anyhow::bail!("etcd member {k} (pid {}) still running {} s after {sig}", rec.pid, STOP_TIMEOUT.as_secs());
        }
        self.update(|s| set_record(s, k, None))
    }

    /// Starts etcd member `k` again (same data dir, address and certificate). Does not wait;
    /// see [`Lab::wait_etcd_healthy`].
    pub fn start_etcd_member(&self, k: usize) -> anyhow::Result<u32> {
        self.check_member(k)?;
        if let Some(pid) = self.etcd_member_pid(k) {
            anyhow::bail!("etcd member {k} is already running (pid {pid})");
        }
        let etcd_bin = bins::on_path(bins::ETCD, "install Debian's etcd-server package")?;
        self.spawn_etcd_member(&etcd_bin, k)
    }

    /// Stops every etcd member (SIGTERM): an etcd outage. Agents keep running.
    pub fn stop_etcd(&self) -> anyhow::Result<()> {
        for k in 1..=self.spec.etcd_members {
            self.stop_etcd_member(k, Signal::SIGTERM)?;
        }
        Ok(())
    }

    /// Starts every stopped member and waits until the cluster answers a linearizable read.
    pub fn start_etcd(&self) -> anyhow::Result<()> {
        for k in 1..=self.spec.etcd_members {
            if self.etcd_member_pid(k).is_none() {
                self.start_etcd_member(k)?;
            }
        }
        self.wait_etcd_healthy(Duration::from_secs(30))
    }

    /// Waits until some running member answers a linearizable read (the cluster has a leader).
    pub fn wait_etcd_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<usize> =
                (1..=self.spec.etcd_members).filter(|k| self.etcd_member_pid(*k).is_some()).collect();
            let mut last = String::from("no member runs");
            for &k in &running {
                match etcd_server::probe_member(&self.names, k) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = format!("member {k}: {e}"),
                }
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = (1..=self.spec.etcd_members)
                    .map(|k| plumbing::tail(&etcd_server::member_log(&self.names, k), 10))
                    .collect();
                anyhow::bail!(
                    "etcd of lab {} not healthy within {} s ({last})\n{}",
                    self.id(),
                    timeout.as_secs(),
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Member `k`'s namespace (`weft<id>-etcd`, `weft<id>-etcd2`, ...).
    pub fn etcd_member_ns(&self, k: usize) -> String {
        member_ns(&self.names, k)
    }
}
