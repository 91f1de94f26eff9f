//! systemd's notification protocol (sd_notify) for `Type=notify` units: `READY=1` once the
//! agent is ready (subnet held, node plumbed, first reconcile done), `STOPPING=1` when it stops,
//! `STATUS=` lines for `systemctl status`, and `WATCHDOG=1` pings while the daemon loop makes
//! progress if the unit sets `WatchdogSec=`. Without `NOTIFY_SOCKET` every call is a no-op.

use crate::api::LiveQuic;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use weft_config::api::Status;

fn send(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// The agent is ready: tells the service manager, with a one-line status.
pub fn ready(status_line: &str) {
    send(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status_line)]);
}

/// A status line for `systemctl status` (no state change).
pub fn status(line: &str) {
    send(&[sd_notify::NotifyState::Status(line)]);
}

/// The agent is stopping.
pub fn stopping() {
    send(&[sd_notify::NotifyState::Stopping, sd_notify::NotifyState::Status("stopping")]);
}

/// With `WATCHDOG_USEC` set (systemd's `WatchdogSec=`), pings the watchdog at half the interval
/// while [`crate::metrics::healthz`] says the loop makes progress; a stuck loop stops the pings
/// and systemd restarts the agent.
pub fn spawn_watchdog(status: Arc<RwLock<Status>>, live: LiveQuic) {
    let Some(interval) = sd_notify::watchdog_enabled() else { return };
    let every = (interval / 2).max(Duration::from_millis(100));
    tracing::info!(interval_ms = interval.as_millis() as u64, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut was_stuck = false;
        loop {
            tick.tick().await;
            let st = crate::metrics::snapshot(&status, &live);
            match crate::metrics::healthz(&st, crate::metrics::now_secs()) {
                Ok(()) => {
                    was_stuck = false;
                    send(&[sd_notify::NotifyState::Watchdog]);
                }
                Err(e) => {
                    if !was_stuck {
                        tracing::error!(reason = %e, "not pinging the systemd watchdog");
                    }
                    was_stuck = true;
                }
            }
        }
    });
}
