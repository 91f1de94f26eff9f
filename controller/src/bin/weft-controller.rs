//! `weft-controller --config PATH [--check]`: the cluster's control service (see
//! `weft_controller::service`). A bad config prints one line naming the file, the field and the
//! expectation, and exits 2, like the agent.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use weft_controller::service::{self, config};

#[derive(Parser)]
#[command(
    name = "weft-controller",
    version,
    about = "weft's control service: leader election, dead-node eviction, the cluster page"
)]
struct Args {
    /// controller.toml
    #[arg(long, default_value = "/etc/weft/controller.toml")]
    config: PathBuf,
    /// Parse the config, print a summary and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let source = args.config.display().to_string();
    let loaded = config::ControllerConfig::load(&args.config).and_then(|c| {
        let name = config::resolve_name(&c, &source)?;
        Ok((c, name))
    });
    let (cfg, name) = match loaded {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        print!("{}", config::summary(&cfg, &name));
        return ExitCode::SUCCESS;
    }
    // The join service signs with the CA: one that cannot be read is a configuration error,
    // found now rather than once etcd answers.
    if let Some(b) = &cfg.bootstrap {
        if let Err(e) = weft_controller::join::sign::Signer::load(&b.ca_dir, b.cert_lifetime) {
            eprintln!("{source}: bootstrap.ca_dir: {e:#}");
            return ExitCode::from(2);
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-controller: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(service::run(cfg, name)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}
