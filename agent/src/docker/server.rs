//! The plugin's socket: Docker's plugin client speaks HTTP/1.1 POST with a JSON body over the
//! Unix socket named in the spec file. This server reads one request per connection
//! (answering with `Connection: close`), bounded in size and time, answers the handshake and
//! capabilities itself and hands every other call to the daemon's loop. Every answer is JSON;
//! every failure is `{"Err":"..."}`, logged and counted.

use super::protocol::Call;
use super::protocol::{self, Method, Route, CONTENT_TYPE};
use super::{Answer as CallAnswer, Command, Counters, Outcome};
use anyhow::{Context, Result};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};
use weft_config::agent::DockerConfig;

/// Bounds for one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub head_bytes: usize,
    pub body_bytes: usize,
    /// Time the client gets to send the whole request.
    pub read_timeout: Duration,
    /// Time the daemon gets to take a call (dockerd's plugin client itself waits without a
    /// limit: this bound makes a call during a long start-up fail instead of hanging Docker).
    /// A call taken in time is waited for to its end; one not taken never runs.
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
/// Docker at it (its directory made 0755 when missing). On a failure nothing is left behind
/// (no socket without its spec file).
pub fn bind(cfg: &DockerConfig) -> Result<UnixListener> {
    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    remove_if_there(&cfg.socket).with_context(|| format!("removing stale socket {}", cfg.socket.display()))?;
    let listener = UnixListener::bind(&cfg.socket).with_context(|| format!("binding {}", cfg.socket.display()))?;
    if let Err(e) = finish_bind(cfg) {
        let _ = remove_if_there(&cfg.socket);
        return Err(e);
    }
    Ok(listener)
}

/// The bound socket's mode and the spec file.
fn finish_bind(cfg: &DockerConfig) -> Result<()> {
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
    crate::state::write_atomic(&cfg.spec_file, spec.as_bytes(), 0o644)
        .with_context(|| format!("writing the Docker plugin spec file {}", cfg.spec_file.display()))
}

fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes the socket (the agent is exiting); the spec file too when `spec_file` (the node
/// leaves). On a plain stop the spec file stays: dockerd's boot-time restore gives up at once
/// on a plugin whose spec file is missing, but retries one whose socket does not answer yet.
pub fn remove_files(cfg: &DockerConfig, spec_file: bool) {
    let spec = spec_file.then_some(&cfg.spec_file);
    for p in spec.into_iter().chain([&cfg.socket]) {
        if let Err(e) = remove_if_there(p) {
            warn!(path = %p.display(), error = %e, "removing a Docker plugin file");
        }
    }
}

/// Binds the socket and writes the spec file now (an error fails the agent's start-up:
/// Docker must not find a plugin nobody serves), then serves it on a task until the process
/// ends.
pub fn start(cfg: &DockerConfig, commands: mpsc::Sender<Command>, counters: Counters) -> Result<()> {
    let listener = bind(cfg).context("starting the Docker plugin ([docker] of agent.toml)")?;
    info!(plugin = %cfg.plugin_name, socket = %cfg.socket.display(), spec = %cfg.spec_file.display(), "serving the Docker plugin");
    tokio::spawn(serve_listener(listener, Limits::default(), commands, counters));
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
        // A slot first, then the connection: connections over the cap wait in the socket's
        // backlog (their read timeout starts once accepted). Dropping one unanswered would make
        // Go's client retry the call with an already drained, empty body.
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "docker plugin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
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
        // Checked without overflow: the size is the client's (`ffffffffffffffff` is valid hex).
        if size > cap.saturating_sub(body.len()) {
            return Err(ReadError::TooLarge(cap));
        }
        let start = line_end + 2;
        if size == 0 {
            return Ok(body); // trailers, if any, are left unread: the connection closes
        }
        let end = start.checked_add(size).ok_or(ReadError::TooLarge(cap))?;
        while buf.len() < end + 2 {
            fill(s, buf, cap + 4096).await?;
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ReadError::Malformed(format!("chunk of {size} bytes not followed by CRLF")));
        }
        body.extend_from_slice(&buf[start..end]);
        pos = end + 2;
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
    let result = ask_daemon(call, limits.answer_timeout, commands).await;
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

/// Hands a call to the daemon and waits for its answer. A call the daemon has not taken
/// within `wait` (it has no running node yet, or is busy) is given up and answered with an
/// error; given up, it never runs. A call taken in time is waited for to its end.
async fn ask_daemon(call: Call, wait: Duration, commands: &mpsc::Sender<Command>) -> CallAnswer {
    let not_ready = || Err("the agent is not ready (no subnet or node not set up yet); try again".to_string());
    let start = tokio::time::Instant::now();
    let (cmd, pending) = Command::new(call);
    match tokio::time::timeout(wait, commands.send(cmd)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err("the agent is shutting down".to_string()),
        Err(_) => return not_ready(),
    }
    pending.answer(wait.saturating_sub(start.elapsed())).await.unwrap_or_else(not_ready)
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
            while let Some(cmd) = rx.recv().await {
                let Some((call, reply)) = cmd.take() else { continue };
                let r = match call.method() {
                    Method::Leave => Err("no such thing".to_string()),
                    m => Ok(json!({ "Seen": m.name() })),
                };
                reply.send(r);
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

        remove_files(&cfg, false);
        assert!(!cfg.socket.exists() && cfg.spec_file.exists(), "a plain stop keeps the spec file");
        remove_files(&cfg, true);
        assert!(!cfg.socket.exists() && !cfg.spec_file.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A served socket in a fresh directory, with a daemon that answers every call with its
    /// method's name.
    async fn served(tag: &str, limits: Limits) -> (std::path::PathBuf, DockerConfig) {
        let dir = std::env::temp_dir().join(format!("weft-docker-{tag}-{}", std::process::id()));
        let cfg = config(&dir);
        let listener = bind(&cfg).expect("bind");
        let (tx, mut rx) = mpsc::channel::<Command>(4);
        tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                if let Some((call, reply)) = cmd.take() {
                    reply.send(Ok(json!({ "Seen": call.method().name() })));
                }
            }
        });
        tokio::spawn(serve_listener(listener, limits, tx, Counters::default()));
        (dir, cfg)
    }

    #[tokio::test]
    async fn hostile_chunk_sizes_are_refused_without_a_panic() {
        let (dir, cfg) =
            served("chunks", Limits { read_timeout: Duration::from_millis(500), ..Limits::default() }).await;
        let head = "POST /IpamDriver.RequestPool HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        // A size near usize::MAX after a first chunk: no overflow, a 413.
        let huge = format!("{head}1\r\nA\r\nffffffffffffffff\r\nAAAA\r\n0\r\n\r\n");
        assert_eq!(ask(&cfg.socket, huge.as_bytes()).await.0, 413);
        let huge = format!("{head}fffffffffffffff0\r\nAAAA\r\n0\r\n\r\n");
        assert_eq!(ask(&cfg.socket, huge.as_bytes()).await.0, 413);
        // A chunk longer than its size says: not silently cut, a 400.
        let long = format!("{head}1\r\nAB\r\n0\r\n\r\n");
        let (st, v) = ask(&cfg.socket, long.as_bytes()).await;
        assert_eq!(st, 400, "{v}");
        // The server still serves.
        assert_eq!(ask(&cfg.socket, &post("/IpamDriver.RequestPool", "{}")).await.0, 200);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_for_a_slot_instead_of_being_dropped() {
        let limits = Limits { max_connections: 1, read_timeout: Duration::from_secs(5), ..Limits::default() };
        let (dir, cfg) = served("cap", limits).await;
        // The one slot is held by a client that sends nothing yet.
        let holder = UnixStream::connect(&cfg.socket).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = {
            let sock = cfg.socket.clone();
            tokio::spawn(async move { ask(&sock, &post("/IpamDriver.RequestPool", "{}")).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(holder);
        let answered = tokio::time::timeout(Duration::from_secs(5), second).await.expect("in time").expect("join");
        assert_eq!(answered, (200, json!({"Seen": "IpamDriver.RequestPool"})));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_plugin_that_cannot_be_set_up_fails_start_up_and_leaves_no_socket() {
        let dir = std::env::temp_dir().join(format!("weft-docker-bindfail-{}", std::process::id()));
        let cfg = config(&dir);
        // The spec file's place is taken by a directory: it cannot be written.
        std::fs::create_dir_all(cfg.spec_file.join("x")).expect("mkdir");
        let (tx, _rx) = mpsc::channel::<Command>(1);
        let e = start(&cfg, tx, Counters::default()).expect_err("no spec file, no plugin");
        let text = format!("{e:#}");
        assert!(
            text.starts_with(
                "starting the Docker plugin ([docker] of agent.toml): writing the Docker plugin spec file"
            ),
            "{text}"
        );
        assert!(!cfg.socket.exists(), "no socket left without its spec file");
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
