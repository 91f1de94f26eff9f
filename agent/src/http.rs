//! A deliberately small HTTP/1.1 server for /metrics, /healthz and /readyz: GET and HEAD only,
//! one request per connection (`Connection: close`), no request bodies. Requests are parsed
//! defensively: the head is bounded (8 KiB), must arrive within a deadline, connections are
//! capped, and anything odd gets a 4xx and a closed connection. It is not a general web server
//! and never needs to be: Prometheus and kubelet-style probes speak exactly this much HTTP.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Bounds for one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line and headers) accepted.
    pub head_bytes: usize,
    /// Time the client gets to send the whole head.
    pub read_timeout: Duration,
    /// Time the client gets to take the whole response.
    pub write_timeout: Duration,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            head_bytes: 8 * 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_connections: 32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path without the query string.
    pub path: String,
}

/// A response: status code, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: body.into().into_bytes() }
    }
}

/// Why a head was refused; each maps to a status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x, or malformed (400).
    Malformed(&'static str),
    /// A method other than GET or HEAD (405).
    Method,
    /// The head is larger than the limit (431).
    TooLarge,
}

impl HeadError {
    fn reply(&self) -> Reply {
        match self {
            HeadError::Malformed(why) => Reply::text(400, format!("bad request: {why}\n")),
            HeadError::Method => Reply::text(405, "only GET and HEAD\n"),
            HeadError::TooLarge => Reply::text(431, "request head too large\n"),
        }
    }
}

/// The end of the head (`\r\n\r\n`, or a bare `\n\n`) in `buf`: the index just past it.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    for i in 0..buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1..].starts_with(b"\r\n") {
                return Some(i + 3);
            }
            if buf[i + 1..].starts_with(b"\n") {
                return Some(i + 2);
            }
        }
    }
    None
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a complete request head.
pub fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed("head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(HeadError::Malformed("empty request"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed("request line is not METHOD TARGET VERSION"));
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(HeadError::Malformed("only HTTP/1.0 and HTTP/1.1"));
    }
    if !is_token(method) {
        return Err(HeadError::Malformed("invalid method"));
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return Err(HeadError::Method),
    };
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HeadError::Malformed("target must be an absolute path"));
    }
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((name, _value)) = line.split_once(':') else {
            return Err(HeadError::Malformed("header line without ':'"));
        };
        if !is_token(name) {
            return Err(HeadError::Malformed("invalid header name"));
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p).to_string();
    Ok(Request { method, path })
}

/// The bytes of a response; HEAD gets the headers only.
pub fn encode(reply: &Reply, method: Method) -> Vec<u8> {
    let reason = match reply.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    if reply.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if method == Method::Get {
        bytes.extend_from_slice(&reply.body);
    }
    bytes
}

/// The route table: path -> reply. Called once per request.
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Serves `listener` forever.
pub async fn serve(listener: TcpListener, limits: Limits, handler: Handler) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream); // over the limit: close at once rather than queue
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, limits, handler).await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

async fn connection(mut stream: TcpStream, limits: Limits, handler: Handler) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(limits.read_timeout, async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = head_end(&buf) {
                return Ok(Some(end));
            }
            if buf.len() > limits.head_bytes {
                return Ok(None);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the head ended"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let (reply, method) = match read {
        Err(_) => (Reply::text(408, "request head not received in time\n"), Method::Get),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => (HeadError::TooLarge.reply(), Method::Get),
        Ok(Ok(Some(end))) if end > limits.head_bytes => (HeadError::TooLarge.reply(), Method::Get),
        Ok(Ok(Some(end))) => match parse_head(&buf[..end]) {
            Ok(req) => (handler(&req), req.method),
            Err(e) => (e.reply(), Method::Get),
        },
    };
    let bytes = encode(&reply, method);
    tokio::time::timeout(limits.write_timeout, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client too slow to take the response"))??;
    // Lingering close: closing with unread input would send a reset that can destroy the
    // response in flight, so read (and drop) what the client still sends, within bounds.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_strictly() {
        let ok = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n").expect("valid");
        assert_eq!(ok, Request { method: Method::Get, path: "/metrics".into() });
        assert_eq!(parse_head(b"HEAD /healthz HTTP/1.0\n\n").expect("valid").method, Method::Head);
        assert_eq!(parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"), Err(HeadError::Method));
        let bad: &[&[u8]] = &[
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /a\x01b HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nbad name: x\r\n\r\n",
            b"G\xffT /metrics HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
        ];
        for b in bad {
            assert!(matches!(parse_head(b), Err(HeadError::Malformed(_))), "{:?}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn head_end_finds_both_line_endings() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn responses() {
        let r = Reply::text(200, "ok\n");
        let get = String::from_utf8(encode(&r, Method::Get)).expect("utf8");
        assert_eq!(
            get,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
        );
        let head = String::from_utf8(encode(&r, Method::Head)).expect("utf8");
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 3"));
        let e = String::from_utf8(encode(&HeadError::Method.reply(), Method::Get)).expect("utf8");
        assert!(e.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && e.contains("Allow: GET, HEAD\r\n"));
    }

    #[tokio::test]
    async fn server_answers_and_bounds_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = Limits { read_timeout: Duration::from_millis(300), ..Limits::default() };
        let handler: Handler = Arc::new(|r: &Request| match r.path.as_str() {
            "/x" => Reply::text(200, "yes\n"),
            _ => Reply::text(404, "no\n"),
        });
        tokio::spawn(serve(listener, limits, handler));
        async fn ask(addr: std::net::SocketAddr, req: &[u8]) -> String {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(req).await.expect("write");
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.expect("read");
            String::from_utf8_lossy(&out).into_owned()
        }
        assert!(ask(addr, b"GET /x HTTP/1.1\r\n\r\n").await.ends_with("\r\n\r\nyes\n"));
        assert!(ask(addr, b"GET /y HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404 "));
        assert!(ask(addr, b"DELETE /x HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405 "));
        let mut big = b"GET /x HTTP/1.1\r\nX-Pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 20_000));
        assert!(ask(addr, &big).await.starts_with("HTTP/1.1 431 "));
        // A client that never finishes its head gets 408 after the read timeout.
        assert!(ask(addr, b"GET /x HTTP/1.1\r\n").await.starts_with("HTTP/1.1 408 "));
    }
}
