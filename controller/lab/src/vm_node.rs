//! A lab node that is a QEMU virtual machine (`weftctl lab up --vms N`).
//!
//! The VM has its own kernel (Debian's, see [`crate::vm`]), boots systemd, and is configured the
//! way the VM guide configures a real one: cloud-init runs the guide's user-data (see
//! [`crate::vm_seed`]), which writes agent.toml, runs `deploy/install.sh` and enables
//! `weft-agent.service`; the agent joins with a token through the lab's controller. The lab
//! does only what a hypervisor does: a disk, an address on the lab's underlay bridge (tap
//! `vm<i>` in the underlay namespace, 172.30.0.(10+i) like a namespace node), the seed.
//!
//! Commands run through the guest's command agent ([`crate::vm::exec`]); the agent itself is
//! systemd's to start and stop, so [`LabNode::agent_command`] and [`LabNode::command`] refuse.

use crate::names::{self, LabNames, BRIDGE_A};
use crate::node::{LabNode, Made};
use crate::teardown::DownReport;
use crate::{vm, Topology};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use weft_controller::agent_client::AgentClient;

/// Size of each VM's disk (sparse: only what the guest writes takes space).
pub const DISK_MB: u32 = 1024;
/// Memory of each VM.
pub const MEMORY_MB: u32 = 512;
/// The agent's metrics and health listener, as the guide's user-data sets it.
pub const AGENT_HTTP_PORT: u16 = 9472;

/// Node `i` of a VM lab.
#[derive(Debug, Clone)]
pub struct VmNode {
    names: LabNames,
    index: usize,
}

impl VmNode {
    pub fn new(names: &LabNames, index: usize) -> Self {
        Self { names: names.clone(), index }
    }

    pub fn dir(&self) -> PathBuf {
        self.names.vm_dir(self.index)
    }

    pub fn disk(&self) -> PathBuf {
        self.dir().join("disk.img")
    }

    pub fn seed_dir(&self) -> PathBuf {
        self.dir().join("seed")
    }

    /// A machine id of its own (systemd's, and weft's default node identity), made from the
    /// lab id and the node so a rebooted VM keeps it (the disk keeps it too).
    pub fn machine_id(&self) -> String {
        machine_id(self.names.id(), self.index)
    }

    /// What [`vm::start`] needs to boot this node.
    pub fn machine_spec(&self, guest_bin: &Path) -> vm::MachineSpec {
        let addr = names::node_addr(Topology::Flat, self.index);
        vm::MachineSpec {
            name: self.name(),
            dir: self.dir(),
            netns: self.names.underlay_ns(),
            bridge: BRIDGE_A.to_string(),
            tap: LabNames::vm_tap(self.index),
            mac: LabNames::vm_mac(self.index),
            ip: addr.ip,
            prefix: names::UNDERLAY_PREFIX,
            gateway: Some(addr.gateway),
            machine_id: self.machine_id(),
            seed_dir: self.seed_dir(),
            memory_mb: MEMORY_MB,
            guest_bin: guest_bin.to_path_buf(),
        }
    }
}

/// 32 hex digits from the lab id and node index (FNV-1a, twice with different seeds): stable,
/// distinct per lab and node, never all zeros.
pub fn machine_id(lab_id: &str, index: usize) -> String {
    let fnv = |seed: u64| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
        for b in format!("weft-lab/{lab_id}/n{index}").bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    };
    format!("{:016x}{:016x}", fnv(1), fnv(2) | 1)
}

impl VmNode {
    /// Runs `argv` in the guest through its command agent and collects its output (stdin
    /// empty), killed after `timeout`.
    pub fn exec(&self, argv: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        use std::os::unix::process::ExitStatusExt;
        let out = vm::exec(&self.dir(), argv, timeout)?;
        // A command killed by the guest agent (timeout) reads as killed by SIGKILL.
        let raw = if out.code < 0 { 9 } else { (out.code & 0xff) << 8 };
        Ok(Output { status: std::process::ExitStatus::from_raw(raw), stdout: out.stdout, stderr: out.stderr })
    }
}

impl LabNode for VmNode {
    fn name(&self) -> String {
        LabNames::node_name(self.index)
    }

    fn location(&self) -> String {
        format!("vm {}", self.dir().display())
    }

    /// The VM's directory and disk; the tap and QEMU come with [`vm::start`], once the seed can
    /// be written (it needs the join token).
    fn create(&self, _record: &dyn Fn(Made) -> anyhow::Result<()>) -> anyhow::Result<()> {
        use anyhow::Context;
        let dir = self.dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        vm::create_disk(&self.disk(), DISK_MB)
    }

    fn command(&self, _program: &OsStr) -> anyhow::Result<Command> {
        anyhow::bail!("{} is a VM: its commands run through the guest agent (Lab::exec, `lab exec`)", self.name())
    }

    fn agent_command(&self, _agent_bin: &Path) -> anyhow::Result<Command> {
        anyhow::bail!(
            "{} is a VM: its agent runs under the guest's systemd (`lab exec {} -- systemctl start weft-agent`)",
            self.name(),
            self.name()
        )
    }

    /// Not reachable from this machine (the socket is inside the guest): the lab asks a VM's
    /// agent through `weftctl agent status` in the guest instead.
    fn agent_client(&self, socket: &Path) -> AgentClient {
        AgentClient::new(socket)
    }

    /// QEMU is stopped by `down` from its pid in state.json; this removes the tap (gone with
    /// the underlay namespace anyway) and the VM's files (disk included).
    fn destroy(&self, report: &mut DownReport) {
        vm::remove_tap(&self.names.underlay_ns(), &LabNames::vm_tap(self.index));
        report.remove_dir(&self.dir());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_stable_distinct_and_well_formed() {
        let a = machine_id("v1", 1);
        assert_eq!(a, machine_id("v1", 1));
        assert_ne!(a, machine_id("v1", 2));
        assert_ne!(a, machine_id("v2", 1));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{a}");
    }

    #[test]
    fn a_vm_node_sits_where_a_namespace_node_would() {
        let names = LabNames::new("v1").expect("id");
        let n = VmNode::new(&names, 2);
        let m = n.machine_spec(Path::new("/bin/weft-lab-guest"));
        assert_eq!((m.name.as_str(), m.tap.as_str(), m.mac.as_str()), ("n2", "vm2", "52:54:00:30:00:0c"));
        assert_eq!(m.ip.to_string(), "172.30.0.12");
        assert_eq!(m.gateway.map(|g| g.to_string()).as_deref(), Some("172.30.0.1"));
        assert_eq!((m.netns.as_str(), m.bridge.as_str()), ("weftv1-u", "br0"));
        assert_eq!(m.dir, PathBuf::from("/var/lib/weft-lab/v1/vm2"));
        assert!(n.command(OsStr::new("true")).expect_err("a VM").to_string().contains("guest agent"));
    }
}
