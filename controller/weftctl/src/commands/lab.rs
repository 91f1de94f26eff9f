//! `weftctl lab`: a whole cluster in network namespaces on this machine.

use super::{print_out, UsageError};
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use weft_config::Backend;
use weft_lab::{self as lab, IpFamily, Lab, LabSpec, Target, Topology};

#[derive(Args, Debug)]
pub struct LabArgs {
    /// Lab id: namespaces are weft{id}-*, files in /run/weft-lab/{id}.
    #[arg(long, global = true, env = "WEFT_LAB_ID", default_value = "0")]
    id: String,
    #[command(subcommand)]
    cmd: LabCmd,
}

#[derive(Subcommand, Debug)]
pub enum LabCmd {
    /// Build the lab and wait until every agent is ready.
    Up(UpArgs),
    /// Remove everything the lab made (idempotent; works after a crash).
    Down,
    /// Nodes, subnets, pods and agent health.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a lab namespace: NODE, NODE/POD, c1..c3 (controllers), etcd, u or ext.
    Exec {
        target: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Run Debian's docker CLI (/usr/bin/docker) against NODE's own dockerd, started on first
    /// use in the node's namespace with the image weft-busybox and the network weft (driver
    /// weft); its output and exit status pass through.
    Docker {
        node: String,
        /// The docker arguments, after `--`.
        #[arg(last = true, required = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Restart NODE's dockerd (containers with a restart policy come back by themselves).
    DockerdRestart { node: String },
    /// Stop or start one node's agent.
    #[command(subcommand)]
    Agent(LabAgentCmd),
    /// Stop or start one weft-controller replica (c1..c3).
    #[command(subcommand)]
    Controller(LabControllerCmd),
    /// Pod-to-pod iperf3 and ping across two nodes: kernel baseline, then a lab per backend.
    Bench(lab::bench::BenchArgs),
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Namespace nodes (one of --nodes and --vms).
    #[arg(long, required_unless_present = "vms", conflicts_with = "vms")]
    nodes: Option<usize>,
    /// N QEMU virtual machines as nodes (1 to 8): each boots Debian's kernel and systemd and is
    /// configured by the VM guide's cloud-init file (deploy/vm/user-data-node.yaml); they join
    /// through a controller the lab runs. Needs deploy/vm-assets.sh once.
    #[arg(long, value_name = "N")]
    vms: Option<usize>,
    /// Pods per node.
    #[arg(long, default_value_t = 0)]
    pods: usize,
    #[arg(long, value_parser = super::parse_backend, default_value = "host-gw")]
    backend: Backend,
    #[arg(long, value_parser = parse_topology, default_value = "flat")]
    topology: Topology,
    /// Agents masquerade pod traffic leaving the cluster CIDR.
    #[arg(long)]
    ip_masq: bool,
    #[arg(long, default_value_t = 10)]
    reconcile_secs: u64,
    /// weft-agent binary (default: next to weftctl, or in WEFT_BIN_DIR).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Seconds to wait for every agent to be ready (default 60; 900 with --vms).
    #[arg(long)]
    ready_timeout: Option<u64>,
    /// etcd members (1 to 5), at 172.30.0.2 upward; agents get every endpoint.
    #[arg(long, default_value_t = 1)]
    etcd_members: usize,
    /// Do not start the agents of the last N nodes (start them with `lab agent start`).
    #[arg(long, default_value_t = 0, value_name = "N")]
    deferred_agents: usize,
    /// quic: every agent's data path threads (`quic.threads`); default: the agent's (the core count, at most 8).
    #[arg(long, value_name = "N")]
    quic_threads: Option<usize>,
    /// Cluster CIDR written by network init.
    #[arg(long, default_value = "10.244.0.0/16")]
    cidr: String,
    /// Subnet length written by network init.
    #[arg(long, default_value_t = 24)]
    subnet_len: u8,
    /// Address families of the pod network: v4, v6 or dual. With IPv6 the underlay gets ULA
    /// addresses beside its IPv4 ones (etcd stays on IPv4).
    #[arg(long, value_parser = parse_ip_family, default_value = "v4")]
    ip_family: IpFamily,
    /// With --backend auto: how peers that are not on-link are reached (vxlan, quic or wireguard).
    #[arg(long, value_parser = super::parse_backend, default_value = "vxlan")]
    encap: Backend,
    /// IPv6 cluster CIDR written by network init (with --ip-family v6 or dual).
    #[arg(long, default_value = "fd00:10:244::/56")]
    cidr6: String,
    /// IPv6 subnet length written by network init.
    #[arg(long, default_value_t = 64)]
    subnet_len6: u8,
    /// Run weft-controller (one replica, in namespace weft{id}-c1 at 172.30.0.7; cluster page on
    /// port 9650).
    #[arg(long)]
    controller: bool,
    /// Run N weft-controller replicas (1 to 3, at 172.30.0.7 upward): one leads, the others
    /// stand by. Implies --controller.
    #[arg(long, value_name = "N")]
    controllers: Option<usize>,
    /// The controllers' evict_after: how long a node's heartbeat must be gone before its
    /// subnet is freed (like 30s, 5m or 1h; default 1h).
    #[arg(long, value_parser = lab::spec::parse_duration, value_name = "DURATION")]
    evict_after: Option<std::time::Duration>,
    /// How nodes get their certificates: `token` makes them join through the controller's join
    /// service with a token the lab creates (the lab issues no node certificates). Needs
    /// --controller.
    #[arg(long, value_enum, value_name = "MODE")]
    join: Option<JoinMode>,
    /// weft-controller binary (default: next to weftctl, or in WEFT_BIN_DIR).
    #[arg(long)]
    controller_bin: Option<PathBuf>,
    /// The network's resolvers, written by network init: every pod's resolv.conf (and the lab's
    /// Docker daemons') gets them.
    #[command(flatten)]
    dns: super::DnsFlags,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinMode {
    /// Nodes join with one token the lab creates for all of them.
    Token,
}

impl UpArgs {
    /// How many controller replicas the flags ask for (0: none).
    fn controller_count(&self) -> Result<usize, UsageError> {
        match self.controllers {
            Some(n) if !(1..=lab::names::MAX_CONTROLLERS).contains(&n) => {
                Err(UsageError::new(format!("--controllers: expected 1 to {}, found {n}", lab::names::MAX_CONTROLLERS)))
            }
            Some(n) => Ok(n),
            None => Ok(usize::from(self.controller)),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum LabAgentCmd {
    /// Stop a node's agent (SIGTERM by default), or make it leave the network.
    Stop {
        node: String,
        #[arg(long, value_enum, default_value = "term", conflicts_with = "leave")]
        signal: SignalArg,
        /// Run weft-agent --leave: the agent releases its subnet and exits.
        #[arg(long)]
        leave: bool,
    },
    /// Start a node's agent again and wait until it is ready.
    Start {
        node: String,
        #[arg(long, default_value_t = 60)]
        ready_timeout: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum LabControllerCmd {
    /// Stop a controller replica (SIGTERM by default: it resigns; KILL: a standby takes over
    /// when its session lease expires).
    Stop {
        controller: String,
        #[arg(long, value_enum, default_value = "term")]
        signal: SignalArg,
    },
    /// Start a controller replica again and wait until it serves.
    Start {
        controller: String,
        #[arg(long, default_value_t = 30)]
        ready_timeout: u64,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum SignalArg {
    #[value(name = "TERM", alias = "term")]
    Term,
    #[value(name = "KILL", alias = "kill")]
    Kill,
}

impl SignalArg {
    fn signal(self) -> nix::sys::signal::Signal {
        match self {
            SignalArg::Term => nix::sys::signal::Signal::SIGTERM,
            SignalArg::Kill => nix::sys::signal::Signal::SIGKILL,
        }
    }
}

fn parse_topology(s: &str) -> Result<Topology, String> {
    s.parse()
}

fn parse_ip_family(s: &str) -> Result<IpFamily, String> {
    s.parse()
}

fn controller_index(arg: &str) -> Result<usize, UsageError> {
    match arg.parse::<Target>() {
        Ok(Target::Controller(k)) => Ok(k),
        _ => Err(UsageError::new(format!("CONTROLLER: expected a controller like c1, found {arg:?}"))),
    }
}

fn node_index(arg: &str) -> Result<usize, UsageError> {
    match arg.parse::<Target>() {
        Ok(Target::Node(i)) => Ok(i),
        _ => Err(UsageError::new(format!("NODE: expected a node like n1, found {arg:?}"))),
    }
}

/// A child's exit status as weftctl's own (128 + N for a signal, as shells do).
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

pub fn run(args: &LabArgs) -> anyhow::Result<ExitCode> {
    let id = args.id.as_str();
    match &args.cmd {
        LabCmd::Up(up) => {
            let vms = up.vms.is_some();
            let spec = LabSpec {
                id: id.to_string(),
                nodes: up.vms.or(up.nodes).unwrap_or(0),
                pods: up.pods,
                backend: up.backend,
                topology: up.topology,
                ip_masq: up.ip_masq,
                reconcile_secs: up.reconcile_secs,
                agent_bin: up.agent_bin.clone(),
                weftctl_bin: std::env::current_exe().ok(),
                ready_timeout_secs: up.ready_timeout.unwrap_or(if vms { 900 } else { 60 }),
                etcd_members: up.etcd_members,
                deferred_agents: up.deferred_agents,
                cidr: up.cidr.clone(),
                subnet_len: up.subnet_len,
                node_kind: if vms { lab::NodeKind::Vm } else { lab::NodeKind::Netns },
                ip_family: up.ip_family,
                cidr6: up.cidr6.clone(),
                subnet_len6: up.subnet_len6,
                encap: up.encap,
                controllers: if vms { up.controller_count()?.max(1) } else { up.controller_count()? },
                evict_after: up.evict_after,
                join: vms || up.join == Some(JoinMode::Token),
                join_cert_lifetime: None,
                join_renew_before: None,
                controller_bin: up.controller_bin.clone(),
                dns: Some(up.dns.network_settings()?).filter(|d| !d.is_empty()),
                quic_threads: up.quic_threads,
            };
            let lab = Lab::up(spec)?;
            lab.detach();
            out!("{}", lab::status::render(&lab.lab_status()));
            outln!("run commands with: weftctl lab --id {id} exec n1 -- CMD; remove with: weftctl lab --id {id} down");
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Down => {
            let report = lab::down(id)?;
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            outln!(
                "lab {id}: signalled {} process(es), removed {} namespace(s)",
                report.signalled.len(),
                report.namespaces_removed.len()
            );
            report.into_result()?;
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Status { json } => {
            let s = Lab::attach(id)?.lab_status();
            print_out(*json, &s, || lab::status::render(&s))
        }
        LabCmd::Exec { target, cmd } => {
            let t: Target = target.parse().map_err(|e| UsageError::new(format!("TARGET: {e}")))?;
            let lab = Lab::attach(id)?;
            let (program, rest) =
                cmd.split_first().ok_or_else(|| UsageError::new("CMD: expected a command after --"))?;
            if lab.is_vm() {
                // Through the guest agent: output collected, then passed on as it came.
                use std::io::Write;
                let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
                let out = lab.exec(target, &argv)?;
                std::io::stdout().write_all(&out.stdout).context("writing stdout")?;
                std::io::stderr().write_all(&out.stderr).context("writing stderr")?;
                return Ok(exit_code(out.status));
            }
            let status = lab
                .command(&t, program)?
                .args(rest)
                .status()
                .with_context(|| format!("running {program} in {target}"))?;
            Ok(exit_code(status))
        }
        LabCmd::Docker { node, args } => {
            let i = node_index(node)?;
            let lab = Lab::attach(id)?;
            let status = lab
                .docker_command(i)?
                .args(args)
                .status()
                .with_context(|| format!("running {} on {node}", lab::docker::DOCKER_CLI))?;
            Ok(exit_code(status))
        }
        LabCmd::DockerdRestart { node } => {
            let i = node_index(node)?;
            let lab = Lab::attach(id)?;
            lab.restart_dockerd(i)?;
            outln!("dockerd of {node} restarted (pid {})", lab.dockerd_pid(i).map_or("-".into(), |p| p.to_string()));
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Agent(LabAgentCmd::Stop { node, signal, leave }) => {
            let i = node_index(node)?;
            let lab = Lab::attach(id)?;
            if *leave {
                lab.leave(i)?;
                outln!("{node} left the network");
            } else {
                let sig = signal.signal();
                lab.stop_agent(i, sig)?;
                outln!("agent of {node} stopped ({sig})");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Agent(LabAgentCmd::Start { node, ready_timeout }) => {
            let i = node_index(node)?;
            let lab = Lab::attach(id)?;
            let pid = lab.start_agent(i)?;
            let s = lab.wait_ready(i, std::time::Duration::from_secs(*ready_timeout))?;
            outln!("agent of {node} started (pid {pid}), ready with subnet {}", s.subnet.as_deref().unwrap_or("-"));
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Controller(LabControllerCmd::Stop { controller, signal }) => {
            let k = controller_index(controller)?;
            let sig = signal.signal();
            Lab::attach(id)?.stop_controller(k, sig)?;
            outln!("controller {controller} stopped ({sig})");
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Controller(LabControllerCmd::Start { controller, ready_timeout }) => {
            let k = controller_index(controller)?;
            let lab = Lab::attach(id)?;
            let pid = lab.start_controller(k)?;
            lab.wait_controller(k, std::time::Duration::from_secs(*ready_timeout))?;
            outln!("controller {controller} started (pid {pid}), serving {}", lab.controller_page_url(k));
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Bench(b) => lab::bench::cli(id, b),
    }
}
