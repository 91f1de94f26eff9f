//! The lab's agents and commands: start, stop, leave, wait until ready, status, exec.

use super::names::{LabNames, Target, WEFTCTL_CERT};
use super::netns;
use super::plumbing::tail;
use super::procs::{self, Ownership};
use super::status::{self, LabStatus, NodeStatus};
use super::{bins, lock, Lab};
use anyhow::Context;
use nix::sys::signal::Signal;
use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use weft_config::api::Status;
use weft_config::AgentConfig;
use weft_controller::agent_client::AgentClient;

/// Time an agent gets to exit after a signal or `--leave` before it counts as stuck.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Time a `weft-agent --leave` run gets.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(60);

impl Lab {
    /// The node's agent config as the agent will read it.
    pub fn node_config(&self, i: usize) -> anyhow::Result<AgentConfig> {
        self.check_node(i)?;
        Ok(AgentConfig::load(&self.names.node_paths(i).config)?)
    }

    /// A client for node `i`'s agent socket (path from the node's config).
    pub fn client(&self, i: usize) -> anyhow::Result<AgentClient> {
        Ok(self.node(i).agent_client(&self.node_config(i)?.paths.socket))
    }

    /// Pid of node `i`'s agent if one is recorded and still running.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        let rec = lock(&self.state).agents.get(&LabNames::node_name(i)).cloned()?;
        (!self.gone(rec.pid)).then_some(rec.pid)
    }

    pub fn etcd_pid(&self) -> Option<u32> {
        let rec = lock(&self.state).etcd.clone()?;
        (!self.gone(rec.pid)).then_some(rec.pid)
    }

    /// Starts node `i`'s agent on the node (a namespace node: in its network namespace only, in
    /// a new session) and records its pid. Does not wait; see [`Lab::wait_ready`].
    pub fn start_agent(&self, i: usize) -> anyhow::Result<u32> {
        self.check_node(i)?;
        let node = LabNames::node_name(i);
        if let Some(pid) = self.agent_pid(i) {
            anyhow::bail!("agent of {node} is already running (pid {pid})");
        }
        let p = self.names.node_paths(i);
        let log = open_log(&p.log, &format!("starting {} --config {}", self.agent_bin.display(), p.config.display()))?;
        let log2 = log.try_clone().with_context(|| format!("opening {}", p.log.display()))?;
        let host = self.node(i);
        let mut cmd = host.agent_command(&self.agent_bin)?;
        cmd.arg("--config").arg(&p.config).stdin(Stdio::null()).stdout(log).stderr(log2);
        let ns = host.location();
        let child = cmd.spawn().with_context(|| format!("starting {} for {node}", self.agent_bin.display()))?;
        self.adopt(child, &ns, |s, rec| {
            s.agents.insert(node.clone(), rec);
        })
    }

    /// Sends `sig` to node `i`'s agent (after checking it is still the lab's process) and waits
    /// until it has exited. An agent that had already exited is an error (it crashed).
    pub fn stop_agent(&self, i: usize, sig: Signal) -> anyhow::Result<()> {
        self.check_node(i)?;
        let node = LabNames::node_name(i);
        let rec = lock(&self.state)
            .agents
            .get(&node)
            .cloned()
            .with_context(|| format!("agent of {node} is not running (none recorded)"))?;
        let forget = |lab: &Lab| lab.update(|s| drop(s.agents.remove(&node)));
        if self.gone(rec.pid) {
            forget(self)?;
            anyhow::bail!(
                "agent of {node} (pid {}) had already exited\n{}",
                rec.pid,
                tail(&self.names.node_paths(i).log, 20)
            );
        }
        match procs::check(&rec) {
            Ownership::Ours => procs::signal(&rec, sig).map_err(anyhow::Error::msg)?,
            Ownership::Gone => {}
            Ownership::NotOurs(why) => {
                forget(self)?;
                anyhow::bail!("not signalling the agent of {node}: {why}");
            }
        }
        if !procs::wait_gone(&[rec.pid], STOP_TIMEOUT, |p| self.gone(p)).is_empty() {
            anyhow::bail!("agent of {node} (pid {}) still running {} s after {sig}", rec.pid, STOP_TIMEOUT.as_secs());
        }
        forget(self)
    }

    /// Runs `weft-agent --config X --leave` in node `i`'s namespace (the agent releases its
    /// subnet and exits), then waits for the running agent, if any, to exit.
    pub fn leave(&self, i: usize) -> anyhow::Result<()> {
        self.check_node(i)?;
        let node = LabNames::node_name(i);
        let running = lock(&self.state).agents.get(&node).cloned();
        let p = self.names.node_paths(i);
        let log =
            open_log(&p.log, &format!("running {} --config {} --leave", self.agent_bin.display(), p.config.display()))?;
        let log2 = log.try_clone().with_context(|| format!("opening {}", p.log.display()))?;
        let mut cmd = self.node(i).command(self.agent_bin.as_os_str())?;
        cmd.arg("--config").arg(&p.config).arg("--leave").stdin(Stdio::null()).stdout(log).stderr(log2);
        let mut child = cmd.spawn().with_context(|| format!("starting {} --leave", self.agent_bin.display()))?;
        let deadline = Instant::now() + LEAVE_TIMEOUT;
        let status = loop {
            if let Some(st) = child.try_wait().context("waiting for weft-agent --leave")? {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!(
                    "weft-agent --leave on {node} took over {} s\n{}",
                    LEAVE_TIMEOUT.as_secs(),
                    tail(&p.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            anyhow::bail!("weft-agent --leave on {node} failed ({status})\n{}", tail(&p.log, 20));
        }
        if let Some(rec) = running {
            if !procs::wait_gone(&[rec.pid], STOP_TIMEOUT, |p| self.gone(p)).is_empty() {
                anyhow::bail!(
                    "agent of {node} (pid {}) still running {} s after --leave",
                    rec.pid,
                    STOP_TIMEOUT.as_secs()
                );
            }
            self.update(|s| drop(s.agents.remove(&node)))?;
        }
        Ok(())
    }

    /// Waits until node `i`'s agent says `ready` and has every pod of its config; fails early if
    /// the agent exits, and on timeout, naming the node with the tail of its log.
    pub fn wait_ready(&self, i: usize, timeout: Duration) -> anyhow::Result<Status> {
        let config = self.node_config(i)?;
        let node = LabNames::node_name(i);
        let client = self.node(i).agent_client(&config.paths.socket).with_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + timeout;
        let log = self.names.node_paths(i).log;
        loop {
            let last = match client.status() {
                Ok(s) => {
                    let missing: Vec<&str> = config
                        .pods
                        .iter()
                        .filter(|p| !s.pods.iter().any(|q| q.name == p.name))
                        .map(|p| p.name.as_str())
                        .collect();
                    if s.ready && missing.is_empty() {
                        return Ok(s);
                    }
                    format!(
                        "ready={}, etcd_connected={}, pods missing: [{}], last error: {}",
                        s.ready,
                        s.etcd_connected,
                        missing.join(", "),
                        s.last_error.as_deref().unwrap_or("none")
                    )
                }
                Err(e) => e.to_string(),
            };
            if self.agent_pid(i).is_none() {
                anyhow::bail!("agent of {node} exited or was never started ({last})\n{}", tail(&log, 20));
            }
            if Instant::now() >= deadline {
                anyhow::bail!("node {node} not ready after {} s: {last}\n{}", timeout.as_secs(), tail(&log, 20));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// [`Lab::wait_ready`] for every node whose agent was started (all but the deferred ones
    /// after `up`), within one overall timeout.
    pub fn wait_all_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let started: Vec<usize> =
            (1..=self.spec.nodes).filter(|i| lock(&self.state).agents.contains_key(&LabNames::node_name(*i))).collect();
        for i in started {
            self.wait_ready(i, deadline.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }

    /// One node's view: recorded pid, whether it runs, and the agent's own status.
    pub fn node_status(&self, i: usize) -> NodeStatus {
        let node = LabNames::node_name(i);
        // The recorded process: a namespace node's agent, or a VM node's QEMU (its agent is the
        // guest's systemd's).
        let recorded = {
            let state = lock(&self.state);
            if self.is_vm() {
                state.vms.get(&node).map(|r| r.pid)
            } else {
                state.agents.get(&node).map(|r| r.pid)
            }
        };
        let running = recorded.is_some_and(|p| !self.gone(p));
        let (agent, error) = if self.is_vm() {
            self.vm_agent_status(i, running)
        } else {
            match self.client(i).map(|c| c.with_timeout(Duration::from_secs(2))) {
                Err(e) => (None, Some(format!("{e:#}"))),
                Ok(c) => match c.status() {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e.to_string())),
                },
            }
        };
        NodeStatus {
            node,
            index: i,
            netns: self.node(i).location(),
            underlay_ip: self.node_ip(i),
            underlay_ip6: self.node_ip6(i),
            pid: recorded,
            running,
            agent,
            error,
        }
    }

    /// Every node's status (asked in parallel; a dead agent shows as such, never an error).
    pub fn status(&self) -> Vec<NodeStatus> {
        std::thread::scope(|s| {
            let hs: Vec<_> = (1..=self.spec.nodes).map(|i| s.spawn(move || self.node_status(i))).collect();
            hs.into_iter()
                .enumerate()
                .map(|(k, h)| {
                    h.join().unwrap_or_else(|_| {
                        NodeStatus::failed(&self.names, k + 1, self.node_ip(k + 1), "status thread panicked")
                    })
                })
                .collect()
        })
    }

    pub fn lab_status(&self) -> LabStatus {
        // Separate statements: a guard in a struct literal would live to its end.
        let etcd_pid = lock(&self.state).etcd.as_ref().map(|r| r.pid);
        let etcd_running = self.etcd_pid().is_some();
        let nodes = self.status();
        let controllers = self.controller_statuses();
        LabStatus {
            id: self.id().to_string(),
            backend: self.spec.backend.to_string(),
            topology: self.spec.topology,
            ip_family: self.spec.ip_family,
            etcd_endpoint: self.etcd_endpoints().join(","),
            etcd_pid,
            etcd_running,
            controller: controllers.first().map(status::ControllerSummary::of),
            controllers,
            nodes,
        }
    }

    /// The namespace of `target`: by the naming rule, or for a pod added through the API (not
    /// named by the rule) as its node's agent reports it.
    pub fn target_ns(&self, target: &Target) -> anyhow::Result<String> {
        if let Some(i) = target.node() {
            self.check_node(i)?;
        }
        let ns = target.netns(&self.names);
        if netns::ns_id(&ns).is_some() {
            return Ok(ns);
        }
        if let Target::Pod(i, pod) = target {
            if let Ok(pods) = self.client(*i).and_then(|c| Ok(c.with_timeout(Duration::from_secs(5)).pod_list()?)) {
                if let Some(p) = pods.into_iter().find(|p| &p.name == pod) {
                    return Ok(p.netns);
                }
            }
        }
        anyhow::bail!("namespace {ns} does not exist")
    }

    /// A command that runs `program` in `target`'s namespace with WEFT_ETCD and the TLS files
    /// of weftctl's certificate (WEFT_ETCD_CA, WEFT_ETCD_CERT, WEFT_ETCD_KEY), WEFT_SOCKET (node
    /// and pod targets) and the binaries' directory first on PATH.
    pub fn command(&self, target: &Target, program: impl AsRef<OsStr>) -> anyhow::Result<Command> {
        let mut cmd = match target {
            Target::Node(i) => {
                self.check_node(*i)?;
                self.node(*i).command(program.as_ref())?
            }
            _ => netns::command_in(&self.target_ns(target)?, program)?,
        };
        cmd.env("WEFT_ETCD", self.etcd_endpoints().join(",")).env("WEFT_NETWORK", super::names::NETWORK);
        cmd.env_remove("WEFT_SOCKET");
        let ca = self.names.ca_files().cert;
        let me = self.names.cert_files(WEFTCTL_CERT);
        cmd.env("WEFT_ETCD_CA", ca).env("WEFT_ETCD_CERT", me.cert).env("WEFT_ETCD_KEY", me.key);
        if let Some(i) = target.node() {
            cmd.env("WEFT_SOCKET", self.node_config(i)?.paths.socket);
        }
        let mut dirs: Vec<std::path::PathBuf> = Vec::new();
        for b in [&self.weftctl_bin, &self.agent_bin] {
            if let Some(d) = b.parent().filter(|d| !dirs.iter().any(|x| x == d)) {
                dirs.push(d.to_path_buf());
            }
        }
        if dirs.is_empty() {
            dirs.push(bins::bin_dir()?);
        }
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs).context("building PATH")?);
        Ok(cmd)
    }

    /// Runs `args` in `target` (`n1`, `n1/p2`, `etcd`, `u`, `ext`) and collects its output.
    pub fn exec(&self, target: &str, args: &[&str]) -> anyhow::Result<Output> {
        let t: Target = target.parse()?;
        if let Some(out) = self.is_vm().then(|| self.exec_vm_target(&t, args)).flatten() {
            return out;
        }
        let (program, rest) = args.split_first().context("exec: expected a command to run")?;
        let mut cmd = self.command(&t, program)?;
        cmd.args(rest).stdin(Stdio::null());
        cmd.output().with_context(|| format!("running {program} in {target}"))
    }
}

/// Opens a log for appending and marks what starts writing to it.
pub(super) fn open_log(path: &std::path::Path, what: &str) -> anyhow::Result<std::fs::File> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "--- weftctl lab, {} (unix time): {what}", weft_controller::output::unix_now())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(f)
}
