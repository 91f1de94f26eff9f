//! The parts of [`Lab`] that differ for VM nodes (`lab up --vms N`): booting them with the
//! guide's seed, waiting for their agents under systemd, their status, and running commands in
//! them and their pods. See [`crate::vm_node`] for what a VM node is.

use crate::names::LabNames;
use crate::node::NodeKind;
use crate::vm_node::{VmNode, AGENT_HTTP_PORT};
use crate::{bins, config_gen, controllers, lock, netns, vm, vm_seed, Lab, Target};
use anyhow::Context;
use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};
use weft_config::api::Status;

/// How long one command in a VM may run before the guest agent kills it (`Lab::exec`).
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(120);
/// The guest command agent's binary, next to the other binaries.
pub const GUEST_BIN: &str = bins::GUEST;

impl Lab {
    /// Whether this lab's nodes are VMs.
    pub fn is_vm(&self) -> bool {
        self.spec.node_kind == NodeKind::Vm
    }

    pub(crate) fn vm_node(&self, i: usize) -> VmNode {
        VmNode::new(&self.names, i)
    }

    /// Writes the guide's seed for every VM and starts them all (QEMU recorded in state.json
    /// as it starts).
    pub(crate) fn start_vms(&self, bootstrap: &config_gen::NodeBootstrap) -> anyhow::Result<()> {
        let bin_dir = self.agent_bin.parent().context("the agent binary has no directory")?.to_path_buf();
        // The VMs' directories (made with their disks by the nodes' setup) are beside it.
        let files = self.names.src_dir();
        crate::teardown::remove_dir_if_exists(&files)
            .with_context(|| format!("removing the old {}", files.display()))?;
        vm_seed::write_src_dir(&self.names.src_dir(), &bin_dir)?;
        let guest = bins::resolve(GUEST_BIN, None, "WEFT_BIN_DIR")?;
        let assets = vm::assets()?;
        for i in 1..=self.spec.nodes {
            let node = self.vm_node(i);
            let values = vm_seed::SeedValues {
                node_name: LabNames::node_name(i),
                etcd_endpoint: self.etcd_endpoints().join("\", \""),
                bootstrap_url: bootstrap.url.clone(),
                token: bootstrap.token.clone(),
                ca_pin: bootstrap.ca_pin.clone(),
                src_dir: self.names.src_dir().display().to_string(),
            };
            vm_seed::write_seed(&node.seed_dir(), self.names.id(), &values)?;
            self.start_vm(i, &assets, &guest)?;
        }
        Ok(())
    }

    fn start_vm(&self, i: usize, assets: &vm::Assets, guest: &std::path::Path) -> anyhow::Result<u32> {
        let spec = self.vm_node(i).machine_spec(guest);
        let child = vm::start(&spec, assets).with_context(|| format!("starting VM {}", spec.name))?;
        let node = LabNames::node_name(i);
        self.adopt(child, &spec.netns, |s, rec| drop(s.vms.insert(node, rec)))
    }

    /// QEMU's pid of VM `i`, if it runs.
    pub fn vm_pid(&self, i: usize) -> Option<u32> {
        let pid = lock(&self.state).vms.get(&LabNames::node_name(i)).map(|r| r.pid)?;
        (!self.gone(pid)).then_some(pid)
    }

    /// Waits until every VM has booted and its agent answers `/readyz` with 200, within
    /// `timeout` in all (TCG boots take tens of seconds each; cloud-init and the join more).
    pub(crate) fn wait_vms_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let errors: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> =
                (1..=self.spec.nodes).map(|i| (i, s.spawn(move || self.wait_vm_ready(i, deadline)))).collect();
            hs.into_iter()
                .filter_map(|(i, h)| match h.join() {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(_) => Some(format!("n{i}: wait thread panicked")),
                })
                .collect()
        });
        anyhow::ensure!(errors.is_empty(), "{}", errors.join("\n"));
        Ok(())
    }

    /// Waits until VM `i` boots and its agent is ready; fails early if QEMU exits, and on
    /// timeout with what the guest says (cloud-init, the unit) and the console's tail.
    pub fn wait_vm_ready(&self, i: usize, deadline: Instant) -> anyhow::Result<()> {
        let node = self.vm_node(i);
        let name = LabNames::node_name(i);
        let console = || vm::console_tail(&node.dir(), 30);
        loop {
            if self.vm_pid(i).is_none() {
                anyhow::bail!("VM {name}: QEMU exited\n{}", console());
            }
            // QEMU reboots a panicked kernel (panic=-1), over and over: no reason to wait.
            if vm::kernel_panicked(&node.dir()) {
                anyhow::bail!("VM {name}: the kernel panicked (its /init ended?)\n{}", console());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if vm::wait_booted(&node.dir(), left.min(Duration::from_secs(5))).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                anyhow::bail!("VM {name} did not boot in time (its guest agent never answered)\n{}", console());
            }
        }
        loop {
            match self.vm_readyz(i) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline || self.vm_pid(i).is_none() => {
                    let why = self
                        .exec_vm(
                            i,
                            &[
                                "sh",
                                "-c",
                                "cloud-init status --long 2>&1 | tail -n 5; \
                                 systemctl status --no-pager -n 15 weft-agent 2>&1 | tail -n 25",
                            ],
                            Duration::from_secs(30),
                        )
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_else(|e| format!("(could not ask the guest: {e:#})"));
                    anyhow::bail!("VM {name}: agent not ready ({e:#})\n{why}\n{}", console());
                }
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }

    /// `GET /readyz` on VM `i`'s agent (the guide's `[metrics] listen` is 0.0.0.0:9472), from
    /// the underlay namespace.
    pub fn vm_readyz(&self, i: usize) -> anyhow::Result<()> {
        let addr = SocketAddr::from((self.node_ip(i), AGENT_HTTP_PORT));
        let reply = netns::in_netns(&self.names.underlay_ns(), move || {
            controllers::http_get(addr, "/readyz", Duration::from_secs(3))
        })??;
        anyhow::ensure!(reply.status == 200, "/readyz answered {}: {}", reply.status, reply.body.trim());
        Ok(())
    }

    /// Runs `argv` in VM `i` (through its guest agent) and collects the output.
    pub fn exec_vm(&self, i: usize, argv: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        self.check_node(i)?;
        self.vm_node(i).exec(argv, timeout)
    }

    /// `target`'s command when it runs in a guest: a node's there, a pod's in its namespace
    /// there (`ip netns exec`; pods the guide adds are named after their namespace). `None`
    /// for the lab's own namespaces (etcd, underlay, ext), which are on this machine.
    pub(crate) fn exec_vm_target(&self, target: &Target, argv: &[&str]) -> Option<anyhow::Result<Output>> {
        match target {
            Target::Node(i) => Some(self.exec_vm(*i, argv, EXEC_TIMEOUT)),
            Target::Pod(i, pod) => {
                let mut full = vec!["ip", "netns", "exec", pod.as_str()];
                full.extend_from_slice(argv);
                Some(self.exec_vm(*i, &full, EXEC_TIMEOUT))
            }
            _ => None,
        }
    }

    /// Adds pods `p1`..`p<pods>` on every VM the way the guide does (`weftctl pod add` on the
    /// node, talking to its agent).
    pub(crate) fn add_vm_pods(&self) -> anyhow::Result<()> {
        for i in 1..=self.spec.nodes {
            for j in 1..=self.spec.pods {
                let pod = format!("p{j}");
                let out = self.exec_vm(i, &["weftctl", "pod", "add", &pod], EXEC_TIMEOUT)?;
                anyhow::ensure!(
                    out.status.success(),
                    "n{i}: weftctl pod add {pod}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// VM `i`'s agent's own answer, through `weftctl agent status` in the guest (its socket is
    /// not reachable from this machine), or why there is none.
    pub(crate) fn vm_agent_status(&self, i: usize, running: bool) -> (Option<Status>, Option<String>) {
        let asked = if running {
            self.exec_vm(i, &["weftctl", "agent", "status", "--json"], Duration::from_secs(20))
        } else {
            Err(anyhow::anyhow!("QEMU is not running"))
        };
        match asked {
            Ok(out) if out.status.success() => match serde_json::from_slice(&out.stdout) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(format!("weftctl agent status --json: {e}"))),
            },
            Ok(out) => (None, Some(String::from_utf8_lossy(&out.stderr).trim().to_string())),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    }
}
