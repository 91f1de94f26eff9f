//! The production [`Host`]: etcd over the network, the API socket, `/metrics`, the systemd
//! watchdog and notifications, the forwarding sysctls (`ip_forward`; IPv6 forwarding with
//! `accept_ra` = 2 on the underlay), the probe task and the signals.

use super::Host;
use crate::api::{self, Command};
use crate::docker as plugin;
use crate::kernel::write_sysctl;
use anyhow::{Context, Result};
use futures::future::BoxFuture;
use std::sync::{Arc, RwLock};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::error;
use weft_config::api::Status;
use weft_config::{AgentConfig, Keys};
use weft_store::EtcdStore;

/// The real machine, for the config's etcd, socket, metrics and probes.
pub struct SystemHost {
    cfg: AgentConfig,
}

impl SystemHost {
    pub fn new(cfg: &AgentConfig) -> Self {
        Self { cfg: cfg.clone() }
    }
}

impl Host<EtcdStore> for SystemHost {
    fn connect(&self) -> BoxFuture<'static, Result<EtcdStore>> {
        let etcd = self.cfg.etcd.clone();
        Box::pin(async move { EtcdStore::connect(&etcd).await })
    }

    fn enable_forwarding(&self) -> Result<()> {
        write_sysctl("net/ipv4/ip_forward", "1")
    }

    fn enable_ipv6_forwarding(&self, underlay: &str) -> Result<()> {
        // accept_ra first: with forwarding on, an interface at accept_ra = 1 ignores router
        // advertisements and the node's RA-learned default route would expire.
        write_sysctl(&format!("net/ipv6/conf/{underlay}/accept_ra"), "2")?;
        write_sysctl("net/ipv6/conf/all/forwarding", "1")
    }

    fn spawn_services(
        &self,
        status: &Arc<RwLock<Status>>,
        live: &api::LiveQuic,
        commands: mpsc::Sender<Command>,
        docker: mpsc::Sender<plugin::Command>,
    ) -> Result<()> {
        let sock = self.cfg.paths.socket.clone();
        let st = status.clone();
        let live2 = live.clone();
        let counters = plugin::Counters::default();
        if let Some(d) = &self.cfg.docker {
            plugin::server::start(d, docker, counters.clone())?;
        }
        crate::metrics::spawn(&self.cfg.metrics, status.clone(), live.clone(), counters);
        crate::notify::spawn_watchdog(status.clone(), live.clone());
        tokio::spawn(async move {
            if let Err(e) = api::serve(&sock, st, live2, commands).await {
                error!(error = %format!("{e:#}"), "api server stopped");
            }
        });
        Ok(())
    }

    fn ready(&self, line: &str) {
        crate::notify::ready(line);
    }

    fn stopping(&self) {
        crate::notify::stopping();
    }

    fn spawn_probe(&self, store: EtcdStore, status: Arc<RwLock<Status>>) {
        crate::probe::Probe {
            store,
            etcd: self.cfg.etcd.clone(),
            keys: Keys::new(&self.cfg.network),
            node: self.cfg.node_name.clone(),
            interval: self.cfg.probes.interval,
            status,
        }
        .spawn();
    }
}

/// One message per SIGTERM or SIGINT.
pub(super) fn signals() -> Result<mpsc::Receiver<()>> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if tx.send(()).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
