//! weft-agent: the node agent. See docs/ARCHITECTURE.md for the lifecycle.

use anyhow::{Context, Result};
use clap::Parser;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use weft_agent::{bootstrap, daemon};
use weft_config::api::{Request, Response};
use weft_config::AgentConfig;

#[derive(Parser, Debug)]
#[command(
    name = "weft-agent",
    version,
    about = "weft node agent: pod subnet lease, bridge and pods, routes to every peer"
)]
struct Cli {
    /// Path of agent.toml.
    #[arg(long, short, default_value = "/etc/weft/agent.toml")]
    config: PathBuf,
    /// Release this node's subnet and remove everything the agent made, then exit. Asks the
    /// running agent to do it; without one, does it itself.
    #[arg(long)]
    leave: bool,
    /// Validate the config and exit.
    #[arg(long)]
    check: bool,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let cfg = match AgentConfig::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    if cfg.bootstrap.is_some() {
        bootstrap::warn_if_readable(&cli.config);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if cli.leave { rt.block_on(leave(cfg)) } else { rt.block_on(run(cfg)) };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            eprintln!("weft-agent: {e:#}");
            // A join the controller refused for good (bad, expired, used-up or wrong-node
            // token): a config problem, like a bad agent.toml.
            if e.chain().any(|c| c.downcast_ref::<bootstrap::Refused>().is_some()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cfg: AgentConfig) -> Result<()> {
    // [bootstrap]: join with the token when the certificate files are missing, and keep them
    // renewed while the agent runs.
    bootstrap::ensure(&cfg, bootstrap::Retry::default()).await?;
    if cfg.bootstrap.is_some() {
        tokio::spawn(bootstrap::renew_loop(cfg.clone()));
    }
    let d = daemon::Daemon::new(cfg)?;
    match d.run().await? {
        daemon::Exit::Signal => tracing::info!("stopping; routes, bridge and pods stay in place"),
        daemon::Exit::Left => {}
    }
    Ok(())
}

/// `--leave`: through the running agent if there is one, else offline.
async fn leave(cfg: AgentConfig) -> Result<()> {
    let state = weft_agent::state::StateDir::new(&cfg.paths.state_dir);
    if let Some(w) = weft_agent::docker::Book::load(&state).ok().and_then(|b| b.leave_warning()) {
        eprintln!("weft-agent: warning: {w}");
    }
    let sock = cfg.paths.socket.clone();
    let asked = tokio::task::spawn_blocking(move || ask(&sock, &Request::Leave)).await.context("leave task")?;
    match asked {
        Ok(Response::Done) => {
            // Wait for the agent to exit so the caller can rely on it being gone.
            let pid_file = cfg.paths.pid_file.clone();
            for _ in 0..100 {
                if !pid_file.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!("left the network");
            Ok(())
        }
        Ok(Response::Error { message }) => anyhow::bail!("the running agent could not leave: {message}"),
        Ok(other) => anyhow::bail!("unexpected answer from the agent: {other:?}"),
        Err(e) => {
            tracing::info!(reason = %format!("{e:#}"), "no running agent answered; leaving offline");
            daemon::leave_offline(cfg).await
        }
    }
}

fn ask(sock: &std::path::Path, req: &Request) -> Result<Response> {
    let mut s = UnixStream::connect(sock).with_context(|| format!("connecting to {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut reader = BufReader::new(s);
    let mut out = String::new();
    reader.read_line(&mut out)?;
    serde_json::from_str(&out).context("decoding the agent's answer")
}
