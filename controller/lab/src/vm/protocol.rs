//! The guest command protocol: one JSON object per line over the virtio-serial port
//! `org.weft.lab.0` (host side: QEMU's `DIR/ctl.sock`). Pure: encoding and decoding only.
//!
//! ```text
//! host  -> guest  {"id":7,"argv":["ip","-4","addr"],"timeout_secs":30}
//! guest -> host   {"id":7,"code":0,"stdout":"<base64>","stderr":"<base64>"}
//!                 {"id":7,"code":-1,"stdout":"","stderr":"","error":"spawning ip: ..."}
//! ```
//!
//! `code` is the exit code, or -1 when the command was killed (timeout or signal) or could not
//! be started (`error` says why). A line the guest cannot parse is answered with `id` 0 (or the
//! id it could still read) and an `error`, and skipped.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// The name of the virtio-serial port (guest: `/dev/virtio-ports/<PORT_NAME>`).
pub const PORT_NAME: &str = "org.weft.lab.0";

/// The longest request line the guest accepts (argv is small; this bounds its buffer).
pub const MAX_REQUEST_LINE: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub id: u64,
    pub argv: Vec<String>,
    /// 0: no limit.
    pub timeout_secs: u64,
}

/// What the guest answers; stdout and stderr are raw bytes (base64 on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u64,
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct WireResponse {
    id: u64,
    code: i32,
    stdout: String,
    stderr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("malformed {what}: {message}")]
    Malformed { what: &'static str, message: String },
}

impl Request {
    /// One line, newline included.
    pub fn encode(&self) -> String {
        // Serialising a struct of strings and integers cannot fail.
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn decode(line: &[u8]) -> Result<Request, ProtocolError> {
        let req: Request = serde_json::from_slice(line)
            .map_err(|e| ProtocolError::Malformed { what: "request", message: e.to_string() })?;
        if req.argv.is_empty() || req.argv[0].is_empty() {
            return Err(ProtocolError::Malformed { what: "request", message: "argv is empty".into() });
        }
        Ok(req)
    }
}

/// The id of a line that is JSON with a numeric `id` but not a valid request (0 otherwise), so
/// the error answer reaches the client that sent it.
pub fn salvage_id(line: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(line).ok().and_then(|v| v.get("id")?.as_u64()).unwrap_or(0)
}

impl Response {
    /// An answer that carries only an error (code -1).
    pub fn error(id: u64, message: impl Into<String>) -> Response {
        Response { id, code: -1, stdout: Vec::new(), stderr: Vec::new(), error: Some(message.into()) }
    }

    /// One line, newline included.
    pub fn encode(&self) -> String {
        let wire = WireResponse {
            id: self.id,
            code: self.code,
            stdout: B64.encode(&self.stdout),
            stderr: B64.encode(&self.stderr),
            error: self.error.clone(),
        };
        let mut s = serde_json::to_string(&wire).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn decode(line: &[u8]) -> Result<Response, ProtocolError> {
        let bad = |message: String| ProtocolError::Malformed { what: "response", message };
        let wire: WireResponse = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
        let stdout = B64.decode(&wire.stdout).map_err(|e| bad(format!("stdout: {e}")))?;
        let stderr = B64.decode(&wire.stderr).map_err(|e| bad(format!("stderr: {e}")))?;
        Ok(Response { id: wire.id, code: wire.code, stdout, stderr, error: wire.error })
    }
}

/// Splits a byte stream into lines: bytes go in as they arrive, complete lines come out. A
/// line longer than `max` is reported once as [`Line::TooLong`] and its bytes dropped up to
/// the next newline. [`LineBuffer::reset`] forgets a partial line (the peer went away).
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Complete(Vec<u8>),
    TooLong,
}

impl LineBuffer {
    pub fn new(max: usize) -> LineBuffer {
        LineBuffer { buf: Vec::new(), max, discarding: false }
    }

    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// Feeds `data`; returns the lines it completed (without their newline, `\r` kept).
    pub fn push(&mut self, data: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        for chunk in data.split_inclusive(|b| *b == b'\n') {
            let ends = chunk.last() == Some(&b'\n');
            let body = if ends { &chunk[..chunk.len() - 1] } else { chunk };
            if !self.discarding {
                if self.buf.len() + body.len() > self.max {
                    self.buf.clear();
                    self.discarding = true;
                    out.push(Line::TooLong);
                } else {
                    self.buf.extend_from_slice(body);
                }
            }
            if ends {
                if !self.discarding {
                    out.push(Line::Complete(std::mem::take(&mut self.buf)));
                }
                self.discarding = false;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_refusals() {
        let r = Request { id: 7, argv: vec!["sh".into(), "-c".into(), "exit 3".into()], timeout_secs: 30 };
        let line = r.encode();
        assert_eq!(line, "{\"id\":7,\"argv\":[\"sh\",\"-c\",\"exit 3\"],\"timeout_secs\":30}\n");
        assert_eq!(Request::decode(line.trim_end().as_bytes()), Ok(r));
        for bad in [
            &b"not json"[..],
            b"{\"id\":1}",
            b"{\"id\":1,\"argv\":[],\"timeout_secs\":1}",
            b"{\"id\":-1,\"argv\":[\"x\"],\"timeout_secs\":1}",
            b"{\"id\":1,\"argv\":[\"x\"],\"timeout_secs\":1,\"extra\":1}",
            b"\xff\xfe",
        ] {
            let e = Request::decode(bad).expect_err("refused");
            assert!(e.to_string().starts_with("malformed request: "), "{e}");
        }
        assert_eq!(salvage_id(b"{\"id\":9,\"argv\":[]}"), 9);
        assert_eq!(salvage_id(b"{\"id\":\"9\"}"), 0);
        assert_eq!(salvage_id(b"garbage"), 0);
    }

    #[test]
    fn response_round_trip() {
        let r = Response { id: 3, code: 0, stdout: b"a\nb\x00\xff".to_vec(), stderr: Vec::new(), error: None };
        let line = r.encode();
        assert!(line.ends_with("}\n") && !line.contains('\r') && !line.contains("error"), "{line}");
        assert_eq!(Response::decode(line.as_bytes()), Ok(r));
        let e = Response::error(4, "spawning nope: No such file or directory");
        assert_eq!(Response::decode(e.encode().as_bytes()), Ok(e));
        assert!(Response::decode(b"{\"id\":1,\"code\":0,\"stdout\":\"!!\",\"stderr\":\"\"}").is_err());
    }

    #[test]
    fn lines_are_split_and_bounded() {
        let mut b = LineBuffer::new(8);
        assert_eq!(b.push(b"ab"), vec![]);
        assert_eq!(
            b.push(b"c\nde\n\nf"),
            vec![Line::Complete(b"abc".to_vec()), Line::Complete(b"de".to_vec()), Line::Complete(Vec::new())]
        );
        b.reset();
        assert_eq!(b.push(b"g\n"), vec![Line::Complete(b"g".to_vec())]);
        assert_eq!(b.push(b"0123456789"), vec![Line::TooLong]);
        assert_eq!(b.push(b"more"), vec![]);
        assert_eq!(b.push(b"x\nok\n"), vec![Line::Complete(b"ok".to_vec())]);
    }
}
