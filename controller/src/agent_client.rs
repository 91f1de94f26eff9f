//! Client for the local agent API: one JSON [`Request`] line to the agent's Unix socket, one
//! JSON [`Response`] line back, then the connection closes. Blocking on purpose: the CLI makes
//! one call, and the lab and the tests call it from plain threads.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weft_config::api::{PodInfo, Request, Response, Status};

/// Largest response line accepted (a status with hundreds of pods and peers fits easily).
pub const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;

/// Default time allowed for one call (pod creation can take a moment).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to agent socket {path}: {error}")]
    Connect { path: PathBuf, error: std::io::Error },
    #[error("talking to agent at {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("agent at {path} closed the connection without answering")]
    NoAnswer { path: PathBuf },
    #[error("agent at {path} sent an unreadable answer: {message}")]
    BadAnswer { path: PathBuf, message: String },
    /// The agent understood the request and refused it.
    #[error("agent refused: {0}")]
    Refused(String),
    #[error("agent at {path} answered {got} to a {asked} request")]
    Unexpected { path: PathBuf, asked: &'static str, got: &'static str },
}

impl ClientError {
    /// True when no agent is listening (socket missing or refusing): the agent is down.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Connect { .. })
    }
}

/// A handle on one agent's socket. Cheap to clone; each call opens a new connection.
#[derive(Debug, Clone)]
pub struct AgentClient {
    path: PathBuf,
    timeout: Duration,
}

impl AgentClient {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), timeout: DEFAULT_TIMEOUT }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request and reads one response. A `Response::Error` is returned as is.
    pub fn call(&self, req: &Request) -> Result<Response, ClientError> {
        let io = |error| ClientError::Io { path: self.path.clone(), error };
        let mut stream =
            UnixStream::connect(&self.path).map_err(|error| ClientError::Connect { path: self.path.clone(), error })?;
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::BadAnswer {
            path: self.path.clone(),
            message: format!("encoding request: {e}"),
        })?;
        line.push(b'\n');
        stream.write_all(&line).map_err(io)?;
        stream.flush().map_err(io)?;
        let mut reader = BufReader::new(stream.take(MAX_RESPONSE_BYTES));
        let mut buf = Vec::new();
        reader.read_until(b'\n', &mut buf).map_err(io)?;
        decode_response(&self.path, &buf)
    }

    pub fn status(&self) -> Result<Status, ClientError> {
        match self.call_ok(&Request::Status)? {
            Response::Status(s) => Ok(*s),
            other => Err(self.unexpected("status", &other)),
        }
    }

    pub fn pod_add(&self, name: &str, netns: Option<&str>, ifname: Option<&str>) -> Result<PodInfo, ClientError> {
        self.pod_add_with(name, netns, ifname, None)
    }

    /// [`AgentClient::pod_add`] with the pod's own resolver settings.
    pub fn pod_add_with(
        &self,
        name: &str,
        netns: Option<&str>,
        ifname: Option<&str>,
        dns: Option<weft_config::dns::DnsSettings>,
    ) -> Result<PodInfo, ClientError> {
        let req = Request::PodAdd {
            name: name.to_string(),
            netns: netns.map(str::to_string),
            ifname: ifname.map(str::to_string),
            netns_path: None,
            dns,
        };
        match self.call_ok(&req)? {
            Response::Pod(p) => Ok(*p),
            other => Err(self.unexpected("pod_add", &other)),
        }
    }

    pub fn pod_del(&self, name: &str) -> Result<(), ClientError> {
        match self.call_ok(&Request::PodDel { name: name.to_string() })? {
            Response::Done | Response::Pod(_) => Ok(()),
            other => Err(self.unexpected("pod_del", &other)),
        }
    }

    pub fn pod_list(&self) -> Result<Vec<PodInfo>, ClientError> {
        match self.call_ok(&Request::PodList)? {
            Response::Pods { pods } => Ok(pods),
            other => Err(self.unexpected("pod_list", &other)),
        }
    }

    /// Asks the agent to release its subnet and exit.
    pub fn leave(&self) -> Result<(), ClientError> {
        match self.call_ok(&Request::Leave)? {
            Response::Done => Ok(()),
            other => Err(self.unexpected("leave", &other)),
        }
    }

    fn call_ok(&self, req: &Request) -> Result<Response, ClientError> {
        match self.call(req)? {
            Response::Error { message } => Err(ClientError::Refused(message)),
            r => Ok(r),
        }
    }

    fn unexpected(&self, asked: &'static str, got: &Response) -> ClientError {
        ClientError::Unexpected { path: self.path.clone(), asked, got: response_kind(got) }
    }
}

fn decode_response(path: &Path, line: &[u8]) -> Result<Response, ClientError> {
    if line.is_empty() {
        return Err(ClientError::NoAnswer { path: path.to_path_buf() });
    }
    if !line.ends_with(b"\n") && line.len() as u64 >= MAX_RESPONSE_BYTES {
        return Err(ClientError::BadAnswer {
            path: path.to_path_buf(),
            message: format!("longer than {MAX_RESPONSE_BYTES} bytes"),
        });
    }
    serde_json::from_slice(line)
        .map_err(|e| ClientError::BadAnswer { path: path.to_path_buf(), message: e.to_string() })
}

fn response_kind(r: &Response) -> &'static str {
    match r {
        Response::Status(_) => "status",
        Response::Pod(_) => "pod",
        Response::Pods { .. } => "pods",
        Response::Done => "done",
        Response::Error { .. } => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// Serves one connection with `answer`, returning the request line it received.
    fn serve_once(answer: &'static [u8]) -> (AgentClient, std::thread::JoinHandle<String>, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "weftctl-client-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("a.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let h = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            r.read_line(&mut line).expect("read");
            let mut s = s;
            s.write_all(answer).expect("write");
            line
        });
        (AgentClient::new(&path).with_timeout(Duration::from_secs(5)), h, dir)
    }

    #[test]
    fn pod_list_round_trip() {
        let (c, h, dir) = serve_once(b"{\"result\":\"pods\",\"pods\":[]}\n");
        assert_eq!(c.pod_list().expect("list"), vec![]);
        assert_eq!(h.join().expect("join"), "{\"op\":\"pod_list\"}\n");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn refusal_and_garbage() {
        let (c, h, dir) = serve_once(b"{\"result\":\"error\",\"message\":\"no such pod\"}\n");
        let e = c.pod_del("x").expect_err("refused");
        assert_eq!(e.to_string(), "agent refused: no such pod");
        h.join().expect("join");
        let _ = std::fs::remove_dir_all(dir);

        let (c, h, dir) = serve_once(b"hello\n");
        let e = c.status().expect_err("garbage");
        assert!(matches!(e, ClientError::BadAnswer { .. }), "{e}");
        h.join().expect("join");
        let _ = std::fs::remove_dir_all(dir);

        let (c, h, dir) = serve_once(b"{\"result\":\"done\"}\n");
        let e = c.status().expect_err("unexpected");
        assert!(e.to_string().ends_with("answered done to a status request"), "{e}");
        h.join().expect("join");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn missing_socket_is_unreachable() {
        let e = AgentClient::new("/nonexistent/weft.sock").status().expect_err("missing");
        assert!(e.is_unreachable());
        assert!(e.to_string().starts_with("connecting to agent socket /nonexistent/weft.sock: "), "{e}");
    }
}
