//! The controller's plain-HTTP listener: `/` (the cluster page), `/api/cluster` (its JSON),
//! `/metrics` and `/healthz`. The same deliberately small HTTP/1.1 server as the agent's
//! (agent/src/http.rs): GET and HEAD only, one request per connection, a bounded head that must
//! arrive within a deadline, a cap on connections, 4xx for anything odd. The page polls the
//! JSON endpoint with plain requests, so nothing here needs streaming or keep-alive, and no web
//! framework is needed.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const HEAD_BYTES: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

/// A response: status, content type and body.
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

/// The route table: path -> reply.
pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Parses a request head: `(method, path without the query)`, or the reply refusing it.
pub fn parse_head(head: &[u8]) -> Result<(Method, String), Reply> {
    let bad = |why: &str| Reply::text(400, format!("bad request: {why}\n"));
    let text = std::str::from_utf8(head).map_err(|_| bad("head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("request line is not METHOD TARGET VERSION"));
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(bad("only HTTP/1.0 and HTTP/1.1"));
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        m if m.bytes().all(|b| b.is_ascii_uppercase()) && !m.is_empty() => {
            return Err(Reply::text(405, "only GET and HEAD\n"))
        }
        _ => return Err(bad("invalid method")),
    };
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("target must be an absolute path"));
    }
    for l in lines.take_while(|l| !l.is_empty()) {
        if !l.split_once(':').is_some_and(|(n, _)| !n.is_empty() && !n.contains(' ')) {
            return Err(bad("malformed header line"));
        }
    }
    Ok((method, target.split_once('?').map_or(target, |(p, _)| p).to_string()))
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
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
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

fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        (buf[i] == b'\n').then_some(())?;
        if buf[i + 1..].starts_with(b"\r\n") {
            Some(i + 3)
        } else if buf[i + 1..].starts_with(b"\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, handler: Handler) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, handler).await {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
}

async fn connection(mut stream: TcpStream, handler: Handler) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = head_end(&buf) {
                return Ok(Some(end));
            }
            if buf.len() > HEAD_BYTES {
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
    let too_large = || Reply::text(431, "request head too large\n");
    let (reply, method) = match read {
        Err(_) => (Reply::text(408, "request head not received in time\n"), Method::Get),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => (too_large(), Method::Get),
        Ok(Ok(Some(end))) if end > HEAD_BYTES => (too_large(), Method::Get),
        Ok(Ok(Some(end))) => match parse_head(&buf[..end]) {
            Ok((method, path)) => (handler(&path), method),
            Err(r) => (r, Method::Get),
        },
    };
    let bytes = encode(&reply, method);
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client too slow to take the response"))??;
    // Lingering close, as the agent's: unread input would make the close a reset.
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
    fn heads() {
        assert_eq!(
            parse_head(b"GET /api/cluster?t=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok((Method::Get, "/api/cluster".into()))
        );
        assert_eq!(parse_head(b"HEAD / HTTP/1.0\n\n"), Ok((Method::Head, "/".into())));
        assert_eq!(parse_head(b"POST / HTTP/1.1\r\n\r\n").map_err(|r| r.status), Err(405));
        for bad in [
            &b"GET /\r\n\r\n"[..],
            b"GET / HTTP/2\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nnocolon\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad).map_err(|r| r.status), Err(400), "{:?}", String::from_utf8_lossy(bad));
        }
        let r = String::from_utf8(encode(&Reply::text(200, "ok\n"), Method::Get)).expect("utf8");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nok\n"), "{r}");
        let h = String::from_utf8(encode(&Reply::text(200, "ok\n"), Method::Head)).expect("utf8");
        assert!(h.ends_with("\r\n\r\n") && h.contains("Content-Length: 3"));
    }

    #[tokio::test]
    async fn serves_and_refuses() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handler: Handler = Arc::new(|p: &str| match p {
            "/x" => Reply::text(200, "yes\n"),
            _ => Reply::text(404, "no\n"),
        });
        let task = tokio::spawn(serve(listener, handler));
        async fn ask(addr: std::net::SocketAddr, req: &[u8]) -> String {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(req).await.expect("write");
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.expect("read");
            String::from_utf8_lossy(&out).into_owned()
        }
        assert!(ask(addr, b"GET /x HTTP/1.1\r\n\r\n").await.ends_with("\r\n\r\nyes\n"));
        assert!(ask(addr, b"GET /y HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404 "));
        let mut big = b"GET /x HTTP/1.1\r\nX-Pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 20_000));
        assert!(ask(addr, &big).await.starts_with("HTTP/1.1 431 "));
        task.abort();
    }
}
