//! The lab: a whole weft cluster in network namespaces on one machine, with real etcd and real
//! `weft-agent` processes. `weftctl lab ...` and the integration tests both drive it through
//! [`Lab`]:
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use weft_lab::{Lab, LabSpec};
//! let lab = Lab::up(LabSpec { id: "t1".into(), nodes: 2, pods: 1, ..LabSpec::default() })?;
//! let out = lab.exec("n1/p1", &["ping", "-c1", "10.244.2.2"])?;
//! assert!(out.status.success());
//! # Ok(()) }   // dropping `lab` tears everything down (unless WEFT_LAB_KEEP=1)
//! ```
//!
//! Safety: everything happens inside namespaces named `weft<id>-...` that the lab makes; the
//! root namespace gets no address, route, rule or sysctl. `state.json` records every namespace
//! and process as they are made, so [`down()`] can undo a lab whose `up` crashed.

mod agents;
pub mod bench;
pub mod bins;
pub mod config_gen;
pub mod controllers;
pub mod docker;
pub mod down;
mod etcd_members;
pub mod etcd_server;
pub mod names;
pub mod netns;
pub mod node;
pub mod plumbing;
pub mod procs;

pub mod spec;
pub mod state;
pub mod status;
pub mod teardown;
pub mod vm;

pub use controllers::HttpReply;
pub use down::DownReport;
pub use names::{LabNames, Target};
pub use netns::in_netns;
pub use node::{LabNode, NodeKind};
pub use spec::{IpFamily, LabSpec, Topology};
pub use status::{ControllerStatus, LabStatus, NodeStatus};

use anyhow::Context;
use names::{ETCD_CERT, ETCD_ENDPOINT, WEFTCTL_CERT};
use state::{LabState, ProcRecord};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use weft_controller::error::UsageError;
use weft_controller::output::unix_now;

/// A running lab. Made by [`Lab::up`] (torn down when dropped) or [`Lab::attach`] (left alone).
pub struct Lab {
    names: LabNames,
    spec: LabSpec,
    agent_bin: PathBuf,
    weftctl_bin: PathBuf,
    /// In labs with controllers.
    controller_bin: Option<PathBuf>,
    state: Mutex<LabState>,
    /// Processes this process started: reaped when they exit.
    children: Mutex<HashMap<u32, Child>>,
    teardown_on_drop: AtomicBool,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("id", &self.names.id()).field("nodes", &self.spec.nodes).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Lab {
    /// Builds the lab and waits until every agent is ready. On failure everything made so far
    /// is torn down (unless WEFT_LAB_KEEP=1) and the error carries the relevant log tail.
    pub fn up(spec: LabSpec) -> anyhow::Result<Lab> {
        spec.validate()?;
        let names = LabNames::new(&spec.id)?;
        let agent_bin = bins::resolve(bins::AGENT, spec.agent_bin.as_deref(), "--agent-bin")?;
        let weftctl_bin = bins::resolve(bins::WEFTCTL, spec.weftctl_bin.as_deref(), "LabSpec::weftctl_bin")?;
        let etcd_bin = bins::on_path(bins::ETCD, "install Debian's etcd-server package")?;
        let controller_bin = match spec.controllers {
            0 => None,
            _ => Some(bins::resolve(bins::CONTROLLER, spec.controller_bin.as_deref(), "LabSpec::controller_bin")?),
        };
        let leftovers: Vec<String> = netns::list()?.into_iter().filter(|n| names.owns_ns(n)).collect();
        if names.dir().exists() || !leftovers.is_empty() {
            anyhow::bail!(
                "lab {id} already exists (directory {}: {}, {} namespace(s) named {}*); remove it with: \
                 weftctl lab --id {id} down",
                names.dir().display(),
                if names.dir().exists() { "present" } else { "absent" },
                leftovers.len(),
                names.prefix(),
                id = spec.id
            );
        }
        std::fs::create_dir_all(names.dir()).with_context(|| format!("creating {}", names.dir().display()))?;
        let mut state = LabState::new(spec.clone(), agent_bin.clone(), weftctl_bin.clone(), unix_now());
        state.controller_bin.clone_from(&controller_bin);
        let lab = Lab {
            names,
            spec,
            agent_bin,
            weftctl_bin,
            controller_bin,
            state: Mutex::new(state),
            children: Mutex::new(HashMap::new()),
            teardown_on_drop: AtomicBool::new(true),
        };
        lab.save()?;
        lab.build(&etcd_bin).with_context(|| format!("building lab {}", lab.names.id()))?;
        Ok(lab)
    }

    /// Opens an existing lab from its state.json; dropping it changes nothing.
    pub fn attach(id: &str) -> anyhow::Result<Lab> {
        let names = LabNames::new(id).map_err(|e| UsageError::new(e.to_string()))?;
        let state = LabState::load(&names.state_file())
            .with_context(|| format!("lab {id} is not running (or was made by another version)"))?;
        Ok(Lab {
            names,
            spec: state.spec.clone(),
            agent_bin: state.agent_bin.clone(),
            weftctl_bin: state.weftctl_bin.clone(),
            controller_bin: state.controller_bin.clone(),
            state: Mutex::new(state),
            children: Mutex::new(HashMap::new()),
            teardown_on_drop: AtomicBool::new(false),
        })
    }

    /// Leaves the lab running when this handle is dropped (what `weftctl lab up` does).
    pub fn detach(&self) {
        self.teardown_on_drop.store(false, Ordering::SeqCst);
    }

    /// Tears the lab down now; see [`down()`].
    pub fn down(self) -> DownReport {
        self.teardown_on_drop.store(false, Ordering::SeqCst);
        self.teardown()
    }

    fn teardown(&self) -> DownReport {
        let report = down::teardown(&self.names, |pid| self.gone(pid));
        // Reap whatever this process started and that has exited by now.
        lock(&self.children).retain(|_, c| matches!(c.try_wait(), Ok(None)));
        report
    }

    fn build(&self, etcd_bin: &Path) -> anyhow::Result<()> {
        let n = &self.names;
        for ns in [n.underlay_ns(), n.etcd_ns(), n.ext_ns()] {
            self.make_ns(&ns)?;
        }
        self.make_pki()?;
        plumbing::setup_underlay(n, self.spec.topology, self.spec.ip_family)?;
        plumbing::attach(n, &n.etcd_ns(), "vetcd", plumbing::etcd_addr(), IpFamily::V4, false)?;
        self.setup_etcd_members()?;
        for k in 1..=self.spec.etcd_members {
            self.spawn_etcd_member(etcd_bin, k)?;
        }
        // Nodes and controllers are wired while etcd starts.
        self.setup_nodes()?;
        self.setup_controllers()?;
        self.wait_etcd(Duration::from_secs(30))?;
        self.network_init()?;
        for k in 1..=self.spec.controllers {
            self.start_controller(k)?;
        }
        if self.spec.join {
            let bootstrap = self.create_join_token()?;
            for i in 1..=self.spec.nodes {
                self.write_node_config(i, Some(&bootstrap))?;
            }
        }
        for i in 1..=self.spec.nodes - self.spec.deferred_agents {
            self.start_agent(i)?;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(self.spec.ready_timeout_secs);
        self.wait_all_ready(deadline.saturating_duration_since(std::time::Instant::now()))?;
        for k in 1..=self.spec.controllers {
            self.wait_controller(k, deadline.saturating_duration_since(std::time::Instant::now()))?;
        }
        Ok(())
    }

    /// The lab's CA and every certificate: etcd's server certificate, weftctl's client
    /// certificate, one per node (etcd client and QUIC certificate alike; none when nodes join
    /// with a token) and one per controller replica (`c1`..).
    fn make_pki(&self) -> anyhow::Result<()> {
        let dir = self.names.pki_dir();
        weft_controller::pki::init_ca(&dir, &weft_controller::pki::CaOptions::default())
            .context("making the lab CA")?;
        let etcd = weft_controller::pki::IssueRequest {
            ips: (1..=self.spec.etcd_members).map(|k| etcd_server::member_ip(k).into()).collect(),
            dns: vec!["etcd".into()],
            ..weft_controller::pki::IssueRequest::node(ETCD_CERT)
        };
        let mut wanted = vec![etcd, weft_controller::pki::IssueRequest::node(WEFTCTL_CERT)];
        // Nodes that join with a token get their certificate from the controller instead.
        if !self.spec.join {
            wanted.extend(
                (1..=self.spec.nodes).map(|i| weft_controller::pki::IssueRequest::node(&LabNames::node_name(i))),
            );
        }
        wanted.extend(
            (1..=self.spec.controllers)
                .map(|k| weft_controller::pki::IssueRequest::node(&LabNames::controller_name(k))),
        );
        for req in &wanted {
            weft_controller::pki::issue(&dir, &dir, req)
                .with_context(|| format!("issuing the certificate of {}", req.name))?;
        }
        Ok(())
    }

    /// Records a namespace, then makes it (so a crash in between still gets it removed).
    fn make_ns(&self, ns: &str) -> anyhow::Result<()> {
        self.update(|s| s.add_namespace(ns))?;
        plumbing::add_netns(ns)
    }

    fn setup_nodes(&self) -> anyhow::Result<()> {
        const PARALLEL: usize = 8;
        let all: Vec<usize> = (1..=self.spec.nodes).collect();
        let mut errors = Vec::new();
        for chunk in all.chunks(PARALLEL) {
            std::thread::scope(|s| {
                let handles: Vec<_> = chunk.iter().map(|&i| (i, s.spawn(move || self.setup_node(i)))).collect();
                for (i, h) in handles {
                    match h.join() {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => errors.push(format!("node n{i}: {e:#}")),
                        Err(_) => errors.push(format!("node n{i}: setup thread panicked")),
                    }
                }
            });
            if !errors.is_empty() {
                anyhow::bail!("{}", errors.join("; "));
            }
        }
        Ok(())
    }

    fn setup_node(&self, i: usize) -> anyhow::Result<()> {
        self.node(i).create(&|made| match made {
            node::Made::Namespace(ns) => self.update(|s| s.add_namespace(&ns)),
        })?;
        let p = self.names.node_paths(i);
        std::fs::create_dir_all(&p.state_dir).with_context(|| format!("creating {}", p.state_dir.display()))?;
        self.write_node_config(i, None)
    }

    /// Writes node `i`'s agent.toml (with a `[bootstrap]` section when it joins with a token)
    /// and checks that the agent's own parser accepts it.
    fn write_node_config(&self, i: usize, bootstrap: Option<&config_gen::NodeBootstrap>) -> anyhow::Result<()> {
        let p = self.names.node_paths(i);
        let spec = config_gen::NodeConfigSpec {
            pods: self.spec.pods,
            ip_masq: self.spec.ip_masq,
            reconcile_secs: self.spec.reconcile_secs,
            backend: self.spec.backend,
            encap: self.spec.encap,
            etcd_endpoints: self.etcd_endpoints(),
            bootstrap: bootstrap.cloned(),
            quic_threads: self.spec.quic_threads,
        };
        let text = config_gen::agent_toml(&self.names, i, &spec);
        std::fs::write(&p.config, text).with_context(|| format!("writing {}", p.config.display()))?;
        if spec.bootstrap.is_some() {
            // It holds the join token (the agent warns about a token others can read).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p.config, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} 0600", p.config.display()))?;
        }
        // The agent's own parser must accept what the lab writes.
        let c = weft_config::AgentConfig::load(&p.config).context("generated agent config was refused")?;
        anyhow::ensure!(c.paths.socket == p.socket, "{}: socket path drifted", p.config.display());
        Ok(())
    }

    fn wait_etcd(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let err = match etcd_server::probe(&self.names) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let pid = lock(&self.state).etcd.as_ref().map(|r| r.pid);
            let dead = pid.is_none_or(|p| self.gone(p));
            if dead || std::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "etcd {} ({err})\n{}",
                    if dead { "exited before it was healthy" } else { "not healthy within the timeout" },
                    plumbing::tail(&self.names.etcd_log(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `weftctl --etcd .. --network default` in the etcd namespace with weftctl's certificate and
    /// none of the caller's WEFT_ variables.
    fn weftctl_in_etcd_ns(&self) -> anyhow::Result<std::process::Command> {
        let mut cmd = netns::command_in(&self.names.etcd_ns(), &self.weftctl_bin)?;
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("WEFT_") {
                cmd.env_remove(k);
            }
        }
        let tls = etcd_server::client_opts(&self.names);
        for (k, v) in [("WEFT_ETCD_CA", &tls.ca), ("WEFT_ETCD_CERT", &tls.cert), ("WEFT_ETCD_KEY", &tls.key)] {
            cmd.env(k, v.as_deref().context("lab etcd client options without TLS")?);
        }
        cmd.args(["--etcd", &self.etcd_endpoints().join(","), "--network", names::NETWORK]);
        Ok(cmd)
    }

    fn network_init(&self) -> anyhow::Result<()> {
        let mut cmd = self.weftctl_in_etcd_ns()?;
        cmd.args(["network", "init"]);
        cmd.args(network_init_args(&self.spec));
        plumbing::run(&mut cmd, "writing the network config").map(drop)
    }

    /// A join token for every node (`weftctl token create`, valid 1 h, one use per node) and
    /// the CA pin, as the nodes' `[bootstrap]` section takes them, with replica 1's join URL.
    fn create_join_token(&self) -> anyhow::Result<config_gen::NodeBootstrap> {
        let mut cmd = self.weftctl_in_etcd_ns()?;
        cmd.args(["token", "create", "--json", "--ttl", "1h", "--uses", &self.spec.nodes.to_string(), "--dir"]);
        cmd.arg(self.names.pki_dir());
        let out = plumbing::run(&mut cmd, "creating the nodes' join token")?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("weftctl token create --json printed no JSON")?;
        let field = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("weftctl token create --json: no {k:?}"))
        };
        let url = self.controller_bootstrap_url(1).context("a join token without a controller")?;
        Ok(config_gen::NodeBootstrap {
            url,
            token: field("token")?,
            ca_pin: field("ca_pin")?,
            renew_before_secs: self.spec.join_renew_before.map(|d| d.as_secs()),
        })
    }

    /// Registers a process this process spawned: recorded in state.json, reaped later.
    fn adopt(&self, child: Child, ns: &str, record: impl FnOnce(&mut LabState, ProcRecord)) -> anyhow::Result<u32> {
        let pid = child.id();
        let rec = ProcRecord { pid, netns: ns.to_string(), start_ticks: procs::start_ticks(pid) };
        lock(&self.children).insert(pid, child);
        self.update(|s| record(s, rec))?;
        Ok(pid)
    }

    /// Whether `pid` has exited (reaping it if this process is its parent).
    fn gone(&self, pid: u32) -> bool {
        let mut children = lock(&self.children);
        if let Some(c) = children.get_mut(&pid) {
            return match c.try_wait() {
                Ok(None) => false,
                Ok(Some(_)) | Err(_) => {
                    children.remove(&pid);
                    true
                }
            };
        }
        !procs::observe(pid).alive
    }

    fn update(&self, f: impl FnOnce(&mut LabState)) -> anyhow::Result<()> {
        let mut s = lock(&self.state);
        f(&mut s);
        s.save(&self.names.state_file())?;
        Ok(())
    }

    fn save(&self) -> anyhow::Result<()> {
        self.update(|_| ())
    }

    pub fn id(&self) -> &str {
        self.names.id()
    }

    pub fn names(&self) -> &LabNames {
        &self.names
    }

    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    pub fn dir(&self) -> &Path {
        self.names.dir()
    }

    pub fn node_count(&self) -> usize {
        self.spec.nodes
    }

    /// `weft<id>-n<i>` (nodes are 1-based).
    /// Node `i` behind the interface every node kind has (see [`node`]).
    pub fn node(&self, i: usize) -> Box<dyn LabNode> {
        node::node(&self.spec, &self.names, i)
    }

    /// Node `i`'s network namespace (namespace nodes, which are all there are so far).
    pub fn node_ns(&self, i: usize) -> String {
        self.names.node_ns(i)
    }

    /// `weft<id>-n<i>-p<j>`: pod `j` (1-based) of node `i`, as configured by the lab.
    pub fn pod_ns(&self, i: usize, j: usize) -> String {
        self.names.pod_ns(i, &LabNames::pod_name(j))
    }

    /// Node `i`'s underlay address, by the lab's topology.
    pub fn node_ip(&self, i: usize) -> std::net::Ipv4Addr {
        self.node_addr(i).ip
    }

    /// Node `i`'s IPv6 underlay address, in labs with IPv6.
    pub fn node_ip6(&self, i: usize) -> Option<std::net::Ipv6Addr> {
        self.spec.ip_family.has_v6().then(|| self.node_addr(i).ip6())
    }

    /// Node `i`'s underlay address, gateway and segment bridge, by the lab's topology.
    pub fn node_addr(&self, i: usize) -> names::NodeAddr {
        names::node_addr(self.spec.topology, i)
    }

    pub fn topology(&self) -> Topology {
        self.spec.topology
    }

    /// `<labdir>/pki`: the lab's CA and certificates (layout in [`weft_controller::pki`]).
    pub fn pki_dir(&self) -> PathBuf {
        self.names.pki_dir()
    }

    /// The lab CA's certificate and key (to issue extra certificates with [`weft_controller::pki::issue`]).
    pub fn ca_files(&self) -> weft_controller::pki::CertFiles {
        self.names.ca_files()
    }

    /// Certificate and key `name` in the pki dir: `n1`.., `c1`.., `etcd`, `weftctl`.
    pub fn cert_files(&self, name: &str) -> weft_controller::pki::CertFiles {
        self.names.cert_files(name)
    }

    /// How to reach the lab's etcd as weftctl does (TLS with weftctl's certificate); connect
    /// from inside a lab namespace (e.g. [`in_netns`] on a node).
    pub fn etcd_opts(&self) -> weft_controller::etcd::EtcdOpts {
        etcd_server::client_opts_for(&self.names, self.spec.etcd_members)
    }

    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.names.node_paths(i).dir
    }

    pub fn node_paths(&self, i: usize) -> names::NodePaths {
        self.names.node_paths(i)
    }

    pub fn etcd_endpoint(&self) -> &'static str {
        ETCD_ENDPOINT
    }

    /// Every etcd member's client URL (member 1 first, which is [`Lab::etcd_endpoint`]).
    pub fn etcd_endpoints(&self) -> Vec<String> {
        etcd_server::endpoints(self.spec.etcd_members)
    }

    pub fn agent_bin(&self) -> &Path {
        &self.agent_bin
    }

    pub fn weftctl_bin(&self) -> &Path {
        &self.weftctl_bin
    }

    fn check_node(&self, i: usize) -> anyhow::Result<()> {
        if i == 0 || i > self.spec.nodes {
            anyhow::bail!("lab {} has nodes n1 to n{}, not n{i}", self.id(), self.spec.nodes);
        }
        Ok(())
    }
}

/// The pools and backend `weftctl network init` gets: the IPv4 pool, the IPv6 pool, or both,
/// as the lab's family says.
fn network_init_args(spec: &LabSpec) -> Vec<String> {
    let mut args = Vec::new();
    if spec.ip_family.has_v4() {
        args.extend(["--cidr".to_string(), spec.cidr.clone(), "--subnet-len".into(), spec.subnet_len.to_string()]);
    }
    if spec.ip_family.has_v6() {
        args.extend(["--cidr6".to_string(), spec.cidr6.clone(), "--subnet-len6".into(), spec.subnet_len6.to_string()]);
    }
    args.extend(["--backend".to_string(), spec.backend.to_string()]);
    if spec.backend == weft_config::Backend::Auto {
        args.extend(["--encap".to_string(), spec.encap.to_string()]);
    }
    if let Some(dns) = &spec.dns {
        args.extend(dns.servers.iter().flat_map(|s| ["--dns-server".to_string(), s.to_string()]));
        args.extend(dns.search.iter().flat_map(|s| ["--dns-search".to_string(), s.clone()]));
        args.extend(dns.options.iter().flat_map(|s| ["--dns-option".to_string(), s.clone()]));
    }
    args
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.teardown_on_drop.load(Ordering::SeqCst) {
            return;
        }
        if std::env::var_os("WEFT_LAB_KEEP").is_some_and(|v| v == "1") {
            eprintln!(
                "keeping lab {} (WEFT_LAB_KEEP=1); remove it with: weftctl lab down --id {}",
                self.id(),
                self.id()
            );
            return;
        }
        let report = self.teardown();
        for e in &report.errors {
            eprintln!("lab {} down: error: {e}", self.id());
        }
        for w in &report.warnings {
            eprintln!("lab {} down: warning: {w}", self.id());
        }
    }
}

/// Tears down lab `id` whether or not it is running, complete, or recorded: stops the processes
/// recorded in its state.json (only those still in the lab's namespaces), removes every
/// namespace named `weft<id>-*` and the lab directory. Idempotent.
pub fn down(id: &str) -> anyhow::Result<DownReport> {
    let names = LabNames::new(id).map_err(|e| UsageError::new(e.to_string()))?;
    Ok(down::teardown(&names, |pid| !procs::observe(pid).alive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_init_gets_the_pools_of_the_family() {
        let spec = |ip_family| LabSpec { ip_family, ..LabSpec::default() };
        let v4 = network_init_args(&spec(IpFamily::V4));
        assert_eq!(v4, ["--cidr", "10.244.0.0/16", "--subnet-len", "24", "--backend", "host-gw"]);
        let v6 = network_init_args(&spec(IpFamily::V6));
        assert_eq!(v6, ["--cidr6", "fd00:10:244::/56", "--subnet-len6", "64", "--backend", "host-gw"]);
        assert_eq!(network_init_args(&spec(IpFamily::Dual)).len(), 10);
    }

    #[test]
    fn ipv6_pools_are_checked_when_the_family_has_ipv6() {
        let bad = |spec: LabSpec| spec.validate().expect_err("refused").to_string();
        let dual = |cidr6: &str, subnet_len6| LabSpec {
            ip_family: IpFamily::Dual,
            cidr6: cidr6.into(),
            subnet_len6,
            ..LabSpec::default()
        };
        assert!(bad(dual("10.0.0.0/8", 64)).starts_with("--cidr6: "));
        assert_eq!(
            bad(dual("fd00::/56", 56)),
            "--subnet-len6: expected a prefix length from 57 to 126 (longer than the cluster's /56), found 56"
        );
        assert!(dual("fd00::/56", 64).validate().is_ok());
        assert!(LabSpec { cidr6: "junk".into(), ..LabSpec::default() }.validate().is_ok(), "v4 labs ignore cidr6");
        let v6 = LabSpec { ip_family: IpFamily::V6, cidr: "junk".into(), ..LabSpec::default() };
        assert!(v6.validate().is_ok(), "v6 labs ignore the IPv4 pool: {:?}", v6.validate());
    }

    #[test]
    fn up_checks_its_input_before_making_anything() {
        let bad = |spec: LabSpec| Lab::up(spec).expect_err("refused").to_string();
        let e = bad(LabSpec { nodes: 0, ..LabSpec::default() });
        assert_eq!(e, "--nodes: expected 1 to 200, found 0");
        let e = bad(LabSpec { id: "Bad".into(), ..LabSpec::default() });
        assert!(e.starts_with("--id: "), "{e}");
        let e =
            bad(LabSpec { id: "zz7".into(), agent_bin: Some("/nonexistent/weft-agent".into()), ..LabSpec::default() });
        assert!(e.starts_with("weft-agent binary not found at /nonexistent/weft-agent"), "{e}");
        assert!(!Path::new("/run/weft-lab/zz7").exists());
    }
}
