//! The local API on a Unix socket (mode 0600; callers checked with SO_PEERCRED): one JSON
//! request per line, one JSON response per line. Status is answered from a snapshot; everything
//! that changes state goes to the daemon's single loop, so API calls and reconciles never race.

use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use weft_config::api::{Request, Response, Status, MAX_REQUEST_BYTES};

/// A request for the daemon loop, with the channel its answer goes back on.
pub type Command = (Request, oneshot::Sender<Response>);

/// Live parts of the status that change per packet (the quic backend's counters).
pub type LiveQuic = Arc<RwLock<Option<Box<dyn Fn() -> weft_config::api::QuicStatus + Send + Sync>>>>;

pub async fn serve(
    path: &Path,
    status: Arc<RwLock<Status>>,
    live: LiveQuic,
    commands: mpsc::Sender<Command>,
) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale socket {}", path.display())),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    let my_uid = nix::unistd::geteuid().as_raw();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "api accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let allowed = stream.peer_cred().map(|c| c.uid() == 0 || c.uid() == my_uid).unwrap_or(false);
        let status = status.clone();
        let commands = commands.clone();
        let live = live.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, allowed, status, live, commands).await {
                tracing::debug!(error = %format!("{e:#}"), "api connection ended");
            }
        });
    }
}

async fn handle(
    stream: UnixStream,
    allowed: bool,
    status: Arc<RwLock<Status>>,
    live: LiveQuic,
    commands: mpsc::Sender<Command>,
) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = AsyncReadExt::take(&mut reader, MAX_REQUEST_BYTES as u64 + 1).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(());
        }
        let response = if !allowed {
            Response::Error { message: "permission denied: the agent API is for root and the agent's own user".into() }
        } else if line.len() > MAX_REQUEST_BYTES {
            Response::Error { message: format!("request longer than {MAX_REQUEST_BYTES} bytes") }
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Err(e) => Response::Error { message: format!("invalid request: {e}") },
                Ok(Request::Status) => {
                    let mut st = status.read().map(|s| s.clone()).unwrap_or_else(|p| p.into_inner().clone());
                    if let Some(f) = live.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
                        st.quic = Some(f());
                    }
                    Response::Status(Box::new(st))
                }
                Ok(req) => {
                    let (tx, rx) = oneshot::channel();
                    if commands.send((req, tx)).await.is_err() {
                        Response::Error { message: "agent is shutting down".into() }
                    } else {
                        rx.await.unwrap_or(Response::Error { message: "agent dropped the request".into() })
                    }
                }
            }
        };
        let mut out = serde_json::to_vec(&response).context("encoding response")?;
        out.push(b'\n');
        write.write_all(&out).await?;
        if !allowed || line.len() > MAX_REQUEST_BYTES {
            return Ok(());
        }
    }
}
