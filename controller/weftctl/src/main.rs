//! `weftctl`: the operator's tool. Network config and nodes in etcd, pods and status through the
//! local agent's socket, and the namespace lab. Exit status: 0 ok, 1 runtime failure, 2 bad
//! arguments or input (one line naming the flag and the expectation). This file parses the
//! command line and dispatches; each verb lives in `commands/`.

// Output goes through `out!`/`outln!`, which survive a closed pipe (`weftctl status | head`).
#![deny(clippy::print_stdout)]

/// `print!` that ends weftctl quietly when stdout's reader has gone (see
/// [`weft_controller::output::write_stdout`]); `outln!` adds the newline.
macro_rules! out {
    ($($t:tt)*) => { weft_controller::output::write_stdout(&format!($($t)*)) };
}
macro_rules! outln {
    ($($t:tt)*) => { weft_controller::output::write_stdout(&format!("{}\n", format_args!($($t)*))) };
}

mod commands;

use clap::{Parser, Subcommand};
use commands::{ca, lab, network, nodes, pod, token, Global};
use std::path::PathBuf;
use std::process::ExitCode;
use weft_controller::error::is_usage;
use weft_controller::UsageError;

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
    /// Network name (the etcd key space /weft/v1/{network}/).
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
    Network(network::NetworkCmd),
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
    Node(nodes::NodeCmd),
    /// Pods of the local agent.
    #[command(subcommand)]
    Pod(pod::PodCmd),
    /// The local agent.
    #[command(subcommand)]
    Agent(pod::AgentCmd),
    /// A whole cluster in network namespaces on this machine.
    Lab(lab::LabArgs),
    /// The cluster CA and node certificates (QUIC and etcd client certificates).
    #[command(subcommand)]
    Ca(ca::CaCmd),
    /// Join tokens: a new node trades one for its certificate at the controller.
    #[command(subcommand)]
    Token(token::TokenCmd),
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
    let g = Global {
        etcd: cli.etcd,
        etcd_ca: cli.etcd_ca,
        etcd_cert: cli.etcd_cert,
        etcd_key: cli.etcd_key,
        network: cli.network,
        socket: cli.socket,
    };
    match &cli.cmd {
        Cmd::Network(c) => network::run(&g, c),
        Cmd::Status { json } => nodes::status(&g, *json),
        Cmd::Nodes { json } => nodes::list(&g, *json),
        Cmd::Node(c) => nodes::run(&g, c),
        Cmd::Pod(c) => pod::run(&g, c),
        Cmd::Agent(c) => pod::agent(&g, c),
        Cmd::Lab(l) => lab::run(l),
        Cmd::Ca(c) => ca::run(c),
        Cmd::Token(c) => token::run(&g, c),
    }
}
