//! `weftctl`: the operator's tool. Network config and nodes in etcd, pods and status through the
//! local agent's socket, and the namespace lab. Exit status: 0 ok, 1 runtime failure, 2 bad
//! arguments or input (one line naming the flag and the expectation).

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use weft_config::{Backend, NetworkConfig};
use weft_controller::error::is_usage;
use weft_controller::etcd::EtcdOpts;
use weft_controller::lab::{self, Lab, LabSpec, Target, Topology};
use weft_controller::network::InitPlan;
use weft_controller::{agent_view, network, nodes, output, AgentClient, UsageError};

#[derive(Parser, Debug)]
#[command(name = "weftctl", version, about = "Operate a weft overlay network")]
struct Cli {
    /// etcd endpoints, comma-separated (e.g. http://10.0.0.5:2379).
    #[arg(long, global = true, env = "WEFT_ETCD", value_name = "URL[,URL...]")]
    etcd: Option<String>,
    /// CA certificate (PEM) to verify etcd's TLS certificate.
    #[arg(long, global = true, env = "WEFT_ETCD_CA", value_name = "PATH")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, global = true, env = "WEFT_ETCD_CERT", value_name = "PATH")]
    etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, global = true, env = "WEFT_ETCD_KEY", value_name = "PATH")]
    etcd_key: Option<PathBuf>,
    /// Network name (the etcd key space /weft/v1/<network>/).
    #[arg(long, global = true, env = "WEFT_NETWORK", default_value = "default")]
    network: String,
    /// The local agent's API socket.
    #[arg(long, global = true, env = "WEFT_SOCKET", default_value = "/run/weft/agent.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The network config agents read at start.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// The cluster at a glance: nodes, subnets, liveness, backend and a reachability matrix
    /// from the probes agents publish.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List nodes: subnet records joined with heartbeats.
    Nodes {
        #[arg(long)]
        json: bool,
    },
    /// Act on one node's records.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Pods of the local agent.
    #[command(subcommand)]
    Pod(PodCmd),
    /// The local agent.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// A whole cluster in network namespaces on this machine.
    Lab(LabArgs),
    /// The cluster CA and node certificates (QUIC and etcd client certificates).
    #[command(subcommand)]
    Ca(CaCmd),
}

#[derive(Subcommand, Debug)]
enum CaCmd {
    /// Make a cluster CA: DIR/ca.pem and DIR/ca.key (0600); DIR is made 0700 if missing.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = weft_controller::pki::DEFAULT_CA_DAYS)]
        days: u32,
        /// Replace an existing CA (certificates it signed stop being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate signed by DIR's CA: DIR/NAME.pem (leaf only) and DIR/NAME.key.
    Issue {
        /// Node name: the certificate's DNS SAN and common name.
        #[arg(long, value_name = "NAME")]
        node: String,
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Validity in days (at most until the CA expires).
        #[arg(long, default_value_t = weft_controller::pki::DEFAULT_CERT_DAYS)]
        days: u32,
        /// Extra IP address SAN (repeatable).
        #[arg(long, value_name = "IP")]
        ip: Vec<std::net::IpAddr>,
        /// Extra DNS name SAN (repeatable).
        #[arg(long, value_name = "NAME")]
        dns: Vec<String>,
        /// Replace an existing certificate and key for NAME.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum NetworkCmd {
    /// Write the network config (idempotent; refuses to change a different one without --force).
    Init {
        /// Cluster CIDR all node subnets are carved from.
        #[arg(long)]
        cidr: String,
        /// Prefix length of each node's subnet.
        #[arg(long)]
        subnet_len: u8,
        #[arg(long, value_parser = parse_backend)]
        backend: Backend,
        /// Replace a different config (never the CIDR or subnet length while subnets exist).
        #[arg(long)]
        force: bool,
    },
    /// Print the network config.
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// Delete a node's subnet record(s) and heartbeat.
    Evict { name: String },
}

#[derive(Subcommand, Debug)]
enum PodCmd {
    /// Create a pod (named network namespace with an address from the node's subnet).
    Add {
        name: String,
        /// Namespace name under /run/netns (default: the pod name).
        #[arg(long)]
        netns: Option<String>,
        /// Interface name inside the pod (default: eth0).
        #[arg(long)]
        ifname: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a pod.
    Del { name: String },
    /// List pods.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AgentCmd {
    /// What the agent reports about itself.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct LabArgs {
    /// Lab id: namespaces are weft<id>-*, files in /run/weft-lab/<id>.
    #[arg(long, global = true, env = "WEFT_LAB_ID", default_value = "0")]
    id: String,
    #[command(subcommand)]
    cmd: LabCmd,
}

#[derive(Subcommand, Debug)]
enum LabCmd {
    /// Build the lab and wait until every agent is ready.
    Up(UpArgs),
    /// Remove everything the lab made (idempotent; works after a crash).
    Down,
    /// Nodes, subnets, pods and agent health.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a lab namespace: NODE, NODE/POD, etcd, u or ext.
    Exec {
        target: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Stop or start one node's agent.
    #[command(subcommand)]
    Agent(LabAgentCmd),
    /// Pod-to-pod iperf3 and ping across two nodes: kernel baseline, then a lab per backend.
    Bench(lab::bench::BenchArgs),
}

#[derive(Args, Debug)]
struct UpArgs {
    #[arg(long)]
    nodes: usize,
    /// Pods per node.
    #[arg(long, default_value_t = 0)]
    pods: usize,
    #[arg(long, value_parser = parse_backend, default_value = "host-gw")]
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
    /// Seconds to wait for every agent to be ready.
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,
    /// etcd members (1 to 5), at 172.30.0.2 upward; agents get every endpoint.
    #[arg(long, default_value_t = 1)]
    etcd_members: usize,
    /// Do not start the agents of the last N nodes (start them with `lab agent start`).
    #[arg(long, default_value_t = 0, value_name = "N")]
    deferred_agents: usize,
    /// Cluster CIDR written by network init.
    #[arg(long, default_value = "10.244.0.0/16")]
    cidr: String,
    /// Subnet length written by network init.
    #[arg(long, default_value_t = 24)]
    subnet_len: u8,
}

#[derive(Subcommand, Debug)]
enum LabAgentCmd {
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

#[derive(ValueEnum, Clone, Copy, Debug)]
enum SignalArg {
    #[value(name = "TERM", alias = "term")]
    Term,
    #[value(name = "KILL", alias = "kill")]
    Kill,
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    s.parse()
}

fn parse_topology(s: &str) -> Result<Topology, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(if is_usage(&e) { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if !weft_config::agent::valid_name(&cli.network) {
        return Err(UsageError::new(format!(
            "--network: expected lowercase letters, digits, '-', '_' or '.', 1 to 63 characters, found {:?}",
            cli.network
        ))
        .into());
    }
    match &cli.cmd {
        Cmd::Network(_) | Cmd::Nodes { .. } | Cmd::Node(_) | Cmd::Status { .. } => etcd_command(&cli),
        Cmd::Pod(p) => pod_command(&cli, p),
        Cmd::Agent(AgentCmd::Status { json }) => {
            let s = AgentClient::new(&cli.socket).status()?;
            print_out(*json, &s, || agent_view::render_status(&s))
        }
        Cmd::Lab(l) => lab_command(l),
        Cmd::Ca(c) => ca_command(c),
    }
}

fn print_out<T: serde::Serialize>(json: bool, v: &T, human: impl FnOnce() -> String) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(v).context("encoding JSON")?);
    } else {
        print!("{}", human());
    }
    Ok(ExitCode::SUCCESS)
}

fn etcd_opts(cli: &Cli) -> Result<EtcdOpts, UsageError> {
    let url = cli
        .etcd
        .as_deref()
        .ok_or_else(|| UsageError::new("--etcd: required (or set WEFT_ETCD), e.g. --etcd http://10.0.0.5:2379"))?;
    EtcdOpts::parse("--etcd", url, cli.etcd_ca.clone(), cli.etcd_cert.clone(), cli.etcd_key.clone())
        .map_err(UsageError::from)
}

/// `NetworkConfig::new` errors rendered against the flag that holds the bad value.
fn network_config(cidr: &str, subnet_len: u8, backend: Backend) -> Result<NetworkConfig, UsageError> {
    NetworkConfig::new("--cidr", cidr, subnet_len, backend).map_err(|e| {
        let flag = if e.field == "subnet_len" { "--subnet-len" } else { "--cidr" };
        UsageError::new(format!("{flag}: {}", e.message))
    })
}

fn etcd_command(cli: &Cli) -> anyhow::Result<ExitCode> {
    // Check input before connecting, so bad flags exit 2 without touching etcd.
    let opts = etcd_opts(cli)?;
    let wanted = match &cli.cmd {
        Cmd::Network(NetworkCmd::Init { cidr, subnet_len, backend, .. }) => {
            Some(network_config(cidr, *subnet_len, *backend)?)
        }
        Cmd::Node(NodeCmd::Evict { name }) if !weft_config::agent::valid_name(name) => {
            return Err(UsageError::new(format!("NAME: expected a node name, found {name:?}")).into());
        }
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let store = weft_store::EtcdStore::connect_opts(&opts).await?;
        let net = cli.network.as_str();
        match &cli.cmd {
            Cmd::Network(NetworkCmd::Init { force, .. }) => {
                let wanted = wanted.context("network config missing")?;
                let plan = network::init(&store, net, &wanted, *force).await.map_err(|e| {
                    match e.downcast::<network::InitError>() {
                        Ok(refusal) => UsageError::new(refusal.to_string()).into(),
                        Err(e) => e,
                    }
                })?;
                match plan {
                    InitPlan::Unchanged => {}
                    InitPlan::Create => println!("network {net} created: {}", network::describe(&wanted)),
                    InitPlan::Replace { .. } => println!("network {net} replaced: {}", network::describe(&wanted)),
                }
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Network(NetworkCmd::Show { json }) => {
                let c = network::show(&store, net).await?;
                print_out(*json, &c, || network::render(net, &c))
            }
            Cmd::Status { json } => {
                let s = weft_controller::cluster_status::fetch(&store, net, output::unix_now()).await?;
                print_out(*json, &s, || weft_controller::cluster_status::render(&s))
            }
            Cmd::Nodes { json } => {
                let rows = nodes::list(&store, net, output::unix_now()).await?;
                print_out(*json, &rows, || nodes::render(&rows))
            }
            Cmd::Node(NodeCmd::Evict { name }) => {
                for key in nodes::evict(&store, net, name).await? {
                    println!("evicted {name}: deleted {key}");
                }
                Ok(ExitCode::SUCCESS)
            }
            _ => anyhow::bail!("not an etcd command"),
        }
    })
}

fn pod_command(cli: &Cli, cmd: &PodCmd) -> anyhow::Result<ExitCode> {
    let client = AgentClient::new(&cli.socket);
    let check = |what: &str, name: &str| -> Result<(), UsageError> {
        if weft_config::agent::valid_name(name) {
            Ok(())
        } else {
            Err(UsageError::new(format!(
                "{what}: expected lowercase letters, digits, '-', '_' or '.', 1 to 63 characters, found {name:?}"
            )))
        }
    };
    match cmd {
        PodCmd::Add { name, netns, ifname, json } => {
            check("NAME", name)?;
            if let Some(n) = netns.as_deref().filter(|n| !weft_config::agent::valid_netns(n)) {
                return Err(UsageError::new(format!(
                    "--netns: expected a namespace name without '/' or spaces, found {n:?}"
                ))
                .into());
            }
            if let Some(i) = ifname.as_deref().filter(|i| !weft_config::agent::valid_ifname(i)) {
                return Err(UsageError::new(format!(
                    "--ifname: expected an interface name of 1 to 15 characters, found {i:?}"
                ))
                .into());
            }
            let p = client.pod_add(name, netns.as_deref(), ifname.as_deref())?;
            print_out(*json, &p, || agent_view::render_pod(&p))
        }
        PodCmd::Del { name } => {
            check("NAME", name)?;
            client.pod_del(name)?;
            println!("pod {name} deleted");
            Ok(ExitCode::SUCCESS)
        }
        PodCmd::List { json } => {
            let pods = client.pod_list()?;
            print_out(*json, &pods, || agent_view::render_pods(&pods))
        }
    }
}

fn ca_command(cmd: &CaCmd) -> anyhow::Result<ExitCode> {
    use weft_controller::pki;
    match cmd {
        CaCmd::Init { dir, days, force } => {
            let ca = pki::init_ca(dir, &pki::CaOptions { days: *days, force: *force })?;
            println!(
                "CA created: {} and {} (expires {})",
                ca.files.cert.display(),
                ca.files.key.display(),
                ca.expires()
            );
        }
        CaCmd::Issue { node, dir, days, ip, dns, force } => {
            let req =
                pki::IssueRequest { name: node.clone(), days: *days, ips: ip.clone(), dns: dns.clone(), force: *force };
            let c = pki::issue(dir, dir, &req)?;
            println!(
                "issued {node} [{}]: {} and {} (expires {})",
                req.sans().join(", "),
                c.files.cert.display(),
                c.files.key.display(),
                c.expires()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn node_index(arg: &str) -> Result<usize, UsageError> {
    match arg.parse::<Target>() {
        Ok(Target::Node(i)) => Ok(i),
        _ => Err(UsageError::new(format!("NODE: expected a node like n1, found {arg:?}"))),
    }
}

fn lab_command(args: &LabArgs) -> anyhow::Result<ExitCode> {
    let id = args.id.as_str();
    match &args.cmd {
        LabCmd::Up(up) => {
            let spec = LabSpec {
                id: id.to_string(),
                nodes: up.nodes,
                pods: up.pods,
                backend: up.backend,
                topology: up.topology,
                ip_masq: up.ip_masq,
                reconcile_secs: up.reconcile_secs,
                agent_bin: up.agent_bin.clone(),
                weftctl_bin: std::env::current_exe().ok(),
                ready_timeout_secs: up.ready_timeout,
                etcd_members: up.etcd_members,
                deferred_agents: up.deferred_agents,
                cidr: up.cidr.clone(),
                subnet_len: up.subnet_len,
            };
            let lab = Lab::up(spec)?;
            lab.detach();
            print!("{}", lab::status::render(&lab.lab_status()));
            println!(
                "run commands with: weftctl lab --id {id} exec n1 -- CMD; remove with: weftctl lab --id {id} down"
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Down => {
            let report = lab::down(id)?;
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            println!(
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
            let status = lab
                .command(&t, program)?
                .args(rest)
                .status()
                .with_context(|| format!("running {program} in {target}"))?;
            use std::os::unix::process::ExitStatusExt;
            let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        LabCmd::Agent(LabAgentCmd::Stop { node, signal, leave }) => {
            let i = node_index(node)?;
            let lab = Lab::attach(id)?;
            if *leave {
                lab.leave(i)?;
                println!("{node} left the network");
            } else {
                let sig = match signal {
                    SignalArg::Term => nix::sys::signal::Signal::SIGTERM,
                    SignalArg::Kill => nix::sys::signal::Signal::SIGKILL,
                };
                lab.stop_agent(i, sig)?;
                println!("agent of {node} stopped ({sig})");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Agent(LabAgentCmd::Start { node, ready_timeout }) => {
            let i = node_index(node)?;
            let lab = Lab::attach(id)?;
            let pid = lab.start_agent(i)?;
            let s = lab.wait_ready(i, std::time::Duration::from_secs(*ready_timeout))?;
            println!("agent of {node} started (pid {pid}), ready with subnet {}", s.subnet.as_deref().unwrap_or("-"));
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Bench(b) => lab::bench::cli(id, b),
    }
}
