//! The plugin's socket: Docker's plugin client speaks HTTP/1.1 POST with a JSON body over the
//! Unix socket named in the spec file. This server reads one request per connection
//! (answering with `Connection: close`), bounded in size and time, answers the handshake and
//! capabilities itself and hands every other call to the daemon's loop. Every answer is JSON;
//! every failure is `{"Err":"..."}`, logged and counted.

use super::protocol::{self, Method, Route, CONTENT_TYPE};
use super::{Command, Counters, Outcome};
use anyhow::{Context, Result};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, info, warn};
use weft_config::agent::DockerConfig;

/// Bounds for one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub head_bytes: usize,
    pub body_bytes: usize,
    /// Time the client gets to send the whole request.
    pub read_timeout: Duration,
    /// Time the daemon gets to answer (Docker's plugin client gives up after 30 s).
    pub answer_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            head_bytes: 16 * 1024,
            body_bytes: 1024 * 1024,
            read_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(25),
            max_connections: 64,
        }
    }
}

/// Creates the socket (replacing a stale one, mode 0660) and writes the spec file that points
/// Docker at it (its directory made 0755 when missing).
pub fn bind(cfg: &DockerConfig) -> Result<UnixListener> {
    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    remove_if_there(&cfg.socket).with_context(|| format!("removing stale socket {}", cfg.socket.display()))?;
    let listener = UnixListener::bind(&cfg.socket).with_context(|| format!("binding {}", cfg.socket.display()))?;
    std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", cfg.socket.display()))?;
    if let Some(dir) = cfg.spec_file.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("chmod {}", dir.display()))?;
        }
    }
    let spec = format!("unix://{}\n", cfg.socket.display());
    crate::state::write_atomic(&cfg.spec_file, spec.as_bytes(), 0o644)?;
    Ok(listener)
}

fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes the socket and the spec file (the agent is exiting).
pub fn remove_files(cfg: &DockerConfig) {
    for p in [&cfg.spec_file, &cfg.socket] {
        if let Err(e) = remove_if_there(p) {
            warn!(path = %p.display(), error = %e, "removing a Docker plugin file");
        }
    }
}

/// Serves the plugin until the process ends.
pub async fn serve(cfg: DockerConfig, commands: mpsc::Sender<Command>, counters: Counters) -> Result<()> {
    let listener = bind(&cfg)?;
    info!(plugin = %cfg.plugin_name, socket = %cfg.socket.display(), spec = %cfg.spec_file.display(), "serving the Docker plugin");
    serve_listener(listener, Limits::default(), commands, counters).await;
    Ok(())
}

/// Serves an already bound socket forever.
pub async fn serve_listener(
    listener: UnixListener,
    limits: Limits,
    commands: mpsc::Sender<Command>,
    counters: Counters,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "docker plugin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let (commands, counters) = (commands.clone(), counters.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, limits, &commands, &counters).await {
                debug!(error = %e, "docker plugin connection ended");
            }
        });
    }
}

/// One request as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// Why a request could not be read; each is answered with a status and `{"Err":...}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Malformed(String),
    #[error("request larger than {0} bytes")]
    TooLarge(usize),
    #[error("request not received in time")]
    Timeout,
    #[error("connection closed before the request ended")]
    Closed,
}

/// Reads one request (head and body: `Content-Length` or chunked).
pub async fn read_request<S: AsyncRead + Unpin>(s: &mut S, limits: &Limits) -> Result<RawRequest, ReadError> {
    match tokio::time::timeout(limits.read_timeout, read_inner(s, limits)).await {
        Ok(r) => r,
        Err(_) => Err(ReadError::Timeout),
    }
}

async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, cap: usize) -> Result<(), ReadError> {
    if buf.len() > cap {
        return Err(ReadError::TooLarge(cap));
    }
    let mut chunk = [0u8; 4096];
    let n = s.read(&mut chunk).await.map_err(|e| ReadError::Malformed(format!("reading: {e}")))?;
    if n == 0 {
        return Err(ReadError::Closed);
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

async fn read_inner<S: AsyncRead + Unpin>(s: &mut S, limits: &Limits) -> Result<RawRequest, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let (head_len, method, path, length, chunked) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let method = req.method.unwrap_or_default().to_string();
                let path = req.path.unwrap_or_default().split('?').next().unwrap_or_default().to_string();
                let mut length = None;
                let mut chunked = false;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let v = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
                        length = Some(v.ok_or_else(|| ReadError::Malformed("invalid Content-Length".into()))?);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = String::from_utf8_lossy(h.value).to_ascii_lowercase().contains("chunked");
                    }
                }
                break (n, method, path, length, chunked);
            }
            Ok(httparse::Status::Partial) => fill(s, &mut buf, limits.head_bytes).await?,
            Err(e) => return Err(ReadError::Malformed(format!("bad request head: {e}"))),
        }
    };
    if head_len > limits.head_bytes {
        return Err(ReadError::TooLarge(limits.head_bytes));
    }
    let mut rest = buf.split_off(head_len);
    let body = if chunked {
        read_chunked(s, &mut rest, limits.body_bytes).await?
    } else {
        let want = length.unwrap_or(0);
        if want > limits.body_bytes {
            return Err(ReadError::TooLarge(limits.body_bytes));
        }
        while rest.len() < want {
            fill(s, &mut rest, limits.body_bytes).await?;
        }
        rest.truncate(want);
        rest
    };
    Ok(RawRequest { method, path, body })
}

/// Decodes a chunked body (`buf` holds what already arrived after the head).
async fn read_chunked<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, cap: usize) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let line_end = loop {
            if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                break pos + i;
            }
            fill(s, buf, cap + 4096).await?;
        };
        let size_text = std::str::from_utf8(&buf[pos..line_end]).unwrap_or("");
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ReadError::Malformed(format!("bad chunk size {size_text:?}")))?;
        if body.len() + size > cap {
            return Err(ReadError::TooLarge(cap));
        }
        let start = line_end + 2;
        if size == 0 {
            return Ok(body); // trailers, if any, are left unread: the connection closes
        }
        while buf.len() < start + size + 2 {
            fill(s, buf, cap + 4096).await?;
        }
        body.extend_from_slice(&buf[start..start + size]);
        pos = start + size + 2;
    }
}

/// An answer: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }
    fn err(status: u16, message: &str) -> Self {
        Self { status, body: protocol::error_body(message) }
    }
}

/// The bytes of an answer.
pub fn encode(a: &Answer) -> Vec<u8> {
    let reason = match a.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let body = serde_json::to_vec(&a.body).unwrap_or_else(|_| b"{}".to_vec());
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        a.status,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Answers one request: routes it, asks the daemon when needed, counts and logs the outcome.
pub async fn answer(
    req: &RawRequest,
    limits: &Limits,
    commands: &mpsc::Sender<Command>,
    counters: &Counters,
) -> Answer {
    if req.method != "POST" {
        counters.count("unknown", Outcome::Malformed);
        warn!(method = %req.method, path = %req.path, "docker plugin: not a POST");
        return Answer::err(405, &format!("{} {}: the plugin protocol is POST only", req.method, req.path));
    }
    let Some(method) = Method::from_path(&req.path) else {
        counters.count("unknown", Outcome::NotFound);
        warn!(path = %req.path, "docker plugin: unknown method");
        return Answer::err(404, &format!("{}: no such method of the weft plugin", req.path));
    };
    let name = method.name();
    let call = match protocol::route(method, &req.body) {
        Ok(Route::Answer(v)) => {
            counters.count(name, Outcome::Ok);
            debug!(method = name, "docker plugin call");
            return Answer::ok(v);
        }
        Ok(Route::Node(call)) => call,
        Err(e) => {
            counters.count(name, Outcome::Malformed);
            warn!(method = name, error = %e, "docker plugin: malformed request");
            return Answer::err(400, &e.to_string());
        }
    };
    let (tx, rx) = oneshot::channel();
    let asked = async {
        commands.send((call, tx)).await.map_err(|_| "the agent is shutting down".to_string())?;
        rx.await.unwrap_or_else(|_| Err("the agent dropped the request".to_string()))
    };
    let result = match tokio::time::timeout(limits.answer_timeout, asked).await {
        Ok(r) => r,
        Err(_) => Err("the agent is not ready (no subnet or node not set up yet); try again".to_string()),
    };
    match result {
        Ok(v) => {
            counters.count(name, Outcome::Ok);
            info!(method = name, "docker plugin call");
            Answer::ok(v)
        }
        Err(message) => {
            counters.count(name, Outcome::Error);
            warn!(method = name, error = %message, "docker plugin call refused");
            Answer::err(500, &message)
        }
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    limits: Limits,
    commands: &mpsc::Sender<Command>,
    counters: &Counters,
) -> std::io::Result<()> {
    let a = match read_request(&mut stream, &limits).await {
        Ok(req) => answer(&req, &limits, commands, counters).await,
        Err(ReadError::Closed) => return Ok(()),
        Err(e) => {
            counters.count("unknown", Outcome::Malformed);
            warn!(error = %e, "docker plugin: unreadable request");
            let status = match e {
                ReadError::TooLarge(_) => 413,
                ReadError::Timeout => 408,
                _ => 400,
            };
            Answer::err(status, &e.to_string())
        }
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(&encode(&a)).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client too slow to take the answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::net::UnixStream;

    fn config(dir: &Path) -> DockerConfig {
        DockerConfig {
            plugin_name: "weft".into(),
            socket: dir.join("run/plugin.sock"),
            spec_file: dir.join("plugins/weft.spec"),
        }
    }

    async fn ask(sock: &Path, raw: &[u8]) -> (u16, Value) {
        let mut s = UnixStream::connect(sock).await.expect("connect");
        s.write_all(raw).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(head.contains("Content-Type: application/vnd.docker.plugins.v1.2+json"), "{head}");
        let status = head[9..12].parse().expect("status");
        (status, serde_json::from_str(body).expect("json body"))
    }

    fn post(path: &str, body: &str) -> Vec<u8> {
        format!("POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
    }

    #[tokio::test]
    async fn the_socket_answers_the_protocol_and_counts_every_request() {
        let dir = std::env::temp_dir().join(format!("weft-docker-srv-{}", std::process::id()));
        let cfg = config(&dir);
        // A stale socket file from an earlier run is replaced.
        std::fs::create_dir_all(cfg.socket.parent().expect("dir")).expect("mkdir");
        std::fs::write(&cfg.socket, b"stale").expect("stale");
        let listener = bind(&cfg).expect("bind");
        let spec = std::fs::read_to_string(&cfg.spec_file).expect("spec file");
        assert_eq!(spec, format!("unix://{}\n", cfg.socket.display()));
        let mode = std::fs::metadata(&cfg.socket).expect("socket").permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);

        // A daemon that answers every call with what it was.
        let (tx, mut rx) = mpsc::channel::<Command>(4);
        tokio::spawn(async move {
            while let Some((call, reply)) = rx.recv().await {
                let r = match call.method() {
                    Method::Leave => Err("no such thing".to_string()),
                    m => Ok(json!({ "Seen": m.name() })),
                };
                let _ = reply.send(r);
            }
        });
        let counters = Counters::default();
        let limits = Limits { read_timeout: Duration::from_millis(300), ..Limits::default() };
        tokio::spawn(serve_listener(listener, limits, tx, counters.clone()));
        let sock = cfg.socket.clone();

        let (st, v) = ask(&sock, &post("/Plugin.Activate", "")).await;
        assert_eq!((st, v), (200, json!({"Implements": ["NetworkDriver", "IpamDriver"]})));
        let join = r#"{"NetworkID":"n","EndpointID":"e","SandboxKey":"/x","Options":{}}"#;
        assert_eq!(ask(&sock, &post("/NetworkDriver.Join", join)).await, (200, json!({"Seen": "NetworkDriver.Join"})));
        let leave = r#"{"NetworkID":"n","EndpointID":"e"}"#;
        assert_eq!(ask(&sock, &post("/NetworkDriver.Leave", leave)).await, (500, json!({"Err": "no such thing"})));
        let (st, v) = ask(&sock, &post("/NetworkDriver.Join", "{\"NetworkID\":")).await;
        assert_eq!(st, 400);
        assert!(v["Err"].as_str().expect("err").starts_with("malformed NetworkDriver.Join request: "), "{v}");
        let (st, v) = ask(&sock, &post("/NetworkDriver.AllocateNetwork", "{}")).await;
        assert_eq!(st, 404);
        assert!(v["Err"].as_str().expect("err").contains("no such method"), "{v}");
        assert_eq!(ask(&sock, b"GET /Plugin.Activate HTTP/1.1\r\n\r\n").await.0, 405);
        assert_eq!(ask(&sock, b"BLAH\x00\r\n\r\n").await.0, 400);
        // Go's client may send the body chunked.
        let chunked = b"POST /IpamDriver.RequestPool HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"V6\"\r\n7\r\n:false}\r\n0\r\n\r\n";
        assert_eq!(ask(&sock, chunked).await, (200, json!({"Seen": "IpamDriver.RequestPool"})));
        let big = format!("POST /NetworkDriver.Join HTTP/1.1\r\nContent-Length: {}\r\n\r\n", 10 * 1024 * 1024);
        assert_eq!(ask(&sock, big.as_bytes()).await.0, 413);
        // A client that stops halfway gets 408.
        assert_eq!(ask(&sock, b"POST /NetworkDriver.Join HTTP/1.1\r\nContent-Length: 10\r\n\r\n{").await.0, 408);

        let counts = counters.snapshot();
        let get = |m: &str, r: &str| counts.iter().find(|(a, b, _)| *a == m && *b == r).map_or(0, |c| c.2);
        assert_eq!(get("Plugin.Activate", "ok"), 1);
        assert_eq!(get("NetworkDriver.Join", "ok"), 1);
        assert_eq!(get("NetworkDriver.Join", "malformed"), 1);
        assert_eq!(get("NetworkDriver.Leave", "error"), 1);
        assert_eq!(get("IpamDriver.RequestPool", "ok"), 1);
        assert_eq!(get("unknown", "not_found"), 1);
        assert_eq!(get("unknown", "malformed"), 4);

        remove_files(&cfg);
        assert!(!cfg.socket.exists() && !cfg.spec_file.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_daemon_that_never_answers_gives_an_error_in_time() {
        let (tx, _rx) = mpsc::channel::<Command>(1);
        let limits = Limits { answer_timeout: Duration::from_millis(50), ..Limits::default() };
        let req = RawRequest {
            method: "POST".into(),
            path: "/IpamDriver.RequestPool".into(),
            body: br#"{"V6":false}"#.to_vec(),
        };
        let a = answer(&req, &limits, &tx, &Counters::default()).await;
        assert_eq!(a.status, 500);
        assert!(a.body["Err"].as_str().expect("err").contains("not ready"), "{:?}", a.body);
    }
}
