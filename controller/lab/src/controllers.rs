//! The lab's `weft-controller` replicas: replica `k` runs in `weft<id>-c<k>` at 172.30.0.(6+k)
//! on segment A, with its own certificate from the lab CA (`pki/c<k>.pem`), its config and log
//! in `<lab>/ctl<k>/`. They are started after `network init`, stopped first by `lab down`, and
//! can be stopped and started while the lab runs (takeover scenarios).

use super::config_gen::{self, ControllerConfigSpec};
use super::names::{controller_addr, LabNames, CONTROLLER_BOOTSTRAP_PORT, CONTROLLER_HTTP_PORT};
use super::plumbing::{self, tail};
use super::procs::{self, Ownership};
use super::status::ControllerStatus;
use super::{lock, netns, IpFamily, Lab};
use anyhow::Context;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Time a controller gets to exit after a signal (it resigns first: one etcd round trip).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP answer from a controller: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

/// Parses an HTTP/1.x response (status line, headers, body up to the end of the stream).
pub fn parse_reply(raw: &[u8]) -> Result<HttpReply, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers in the response")?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .filter(|_| status_line.starts_with("HTTP/1."))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("expected a status line like HTTP/1.1 200 OK, found {status_line:?}"))?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked { dechunk(body)? } else { body.to_string() };
    Ok(HttpReply { status, body })
}

/// The body of a `Transfer-Encoding: chunked` response.
fn dechunk(mut rest: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or("chunk size line without its end")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16)
            .map_err(|_| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after.get(..size).ok_or("chunk shorter than its size")?;
        out.push_str(chunk);
        rest = after[size..].strip_prefix("\r\n").ok_or("chunk without its CRLF")?;
    }
}

/// One `GET path` over plain HTTP/1.1 to `addr`, from the calling thread's namespace.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<HttpReply> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout)).context("setting a read timeout")?;
    s.set_write_timeout(Some(timeout)).context("setting a write timeout")?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: weft-lab\r\n\r\n");
    s.write_all(req.as_bytes()).with_context(|| format!("sending GET {path} to {addr}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).with_context(|| format!("reading the answer to GET {path} from {addr}"))?;
    parse_reply(&raw).map_err(|e| anyhow::anyhow!("GET http://{addr}{path}: {e}"))
}

impl Lab {
    /// Number of controller replicas (0: none).
    pub fn controllers(&self) -> usize {
        self.spec.controllers
    }

    fn check_controller(&self, k: usize) -> anyhow::Result<()> {
        if k == 0 || k > self.spec.controllers {
            match self.spec.controllers {
                0 => anyhow::bail!("lab {} runs no controller (lab up --controller)", self.id()),
                n => anyhow::bail!("lab {} has controllers c1 to c{n}, not c{k}", self.id()),
            }
        }
        Ok(())
    }

    /// `weft<id>-c<k>`: controller replica `k`'s namespace.
    pub fn controller_ns(&self, k: usize) -> String {
        self.names.controller_ns(k)
    }

    /// Controller replica `k`'s address on the underlay.
    pub fn controller_ip(&self, k: usize) -> std::net::Ipv4Addr {
        controller_addr(k).ip
    }

    /// `http://172.30.0.(6+k):9650/`: replica `k`'s cluster page, reachable from every lab
    /// namespace on the underlay.
    pub fn controller_page_url(&self, k: usize) -> String {
        format!("http://{}:{CONTROLLER_HTTP_PORT}/", self.controller_ip(k))
    }

    /// Replica `k`'s join service, in labs where nodes join with a token.
    pub fn controller_bootstrap_url(&self, k: usize) -> Option<String> {
        self.spec.join.then(|| format!("https://{}:{CONTROLLER_BOOTSTRAP_PORT}", self.controller_ip(k)))
    }

    /// Replica `k`'s log (`<lab>/ctl<k>/controller.log`).
    pub fn controller_log(&self, k: usize) -> std::path::PathBuf {
        self.names.controller_paths(k).log
    }

    /// Pid of controller replica `k` if it is recorded and still running.
    pub fn controller_pid(&self, k: usize) -> Option<u32> {
        let rec = lock(&self.state).controllers.get(&LabNames::controller_name(k)).cloned()?;
        (!self.gone(rec.pid)).then_some(rec.pid)
    }

    /// Namespaces, underlay ports, configs and their check by `weft-controller --check`.
    pub(super) fn setup_controllers(&self) -> anyhow::Result<()> {
        let Some(bin) = self.controller_bin.as_deref() else { return Ok(()) };
        for k in 1..=self.spec.controllers {
            let ns = self.names.controller_ns(k);
            self.make_ns(&ns)?;
            plumbing::attach(&self.names, &ns, &format!("vc{k}"), controller_addr(k), IpFamily::V4, false)?;
            let p = self.names.controller_paths(k);
            std::fs::create_dir_all(&p.dir).with_context(|| format!("creating {}", p.dir.display()))?;
            let spec = ControllerConfigSpec {
                etcd_endpoints: self.etcd_endpoints(),
                evict_after_secs: self.spec.evict_after.map(|d| d.as_secs()),
                scan_secs: config_gen::CONTROLLER_SCAN_SECS,
                session_ttl_secs: config_gen::CONTROLLER_SESSION_TTL_SECS,
                bootstrap: self.spec.join,
                cert_lifetime_secs: self.spec.join_cert_lifetime.map(|d| d.as_secs()),
            };
            let text = config_gen::controller_toml(&self.names, k, &spec);
            std::fs::write(&p.config, text).with_context(|| format!("writing {}", p.config.display()))?;
            // The controller's own parser must accept what the lab writes.
            let mut check = Command::new(bin);
            check.arg("--config").arg(&p.config).arg("--check");
            plumbing::run(&mut check, "checking the generated controller config")?;
        }
        Ok(())
    }

    /// Starts controller replica `k` in its namespace (a new session), appending to its log, and
    /// records its pid. Does not wait; see [`Lab::wait_controller`].
    pub fn start_controller(&self, k: usize) -> anyhow::Result<u32> {
        self.check_controller(k)?;
        let name = LabNames::controller_name(k);
        if let Some(pid) = self.controller_pid(k) {
            anyhow::bail!("controller {name} is already running (pid {pid})");
        }
        let bin = self.controller_bin.clone().context("lab state names no weft-controller binary")?;
        let p = self.names.controller_paths(k);
        let log =
            super::agents::open_log(&p.log, &format!("starting {} --config {}", bin.display(), p.config.display()))?;
        let log2 = log.try_clone().with_context(|| format!("opening {}", p.log.display()))?;
        let ns = self.names.controller_ns(k);
        let mut cmd = Command::new(&bin);
        cmd.arg("--config").arg(&p.config).stdin(Stdio::null()).stdout(log).stderr(log2);
        cmd.env("RUST_LOG", std::env::var("WEFT_LAB_CONTROLLER_LOG").unwrap_or_else(|_| "info".into()));
        netns::enter_on_exec(&mut cmd, &ns, true)?;
        let child = cmd.spawn().with_context(|| format!("starting {} for {name}", bin.display()))?;
        self.adopt(child, &ns, |s, rec| {
            s.controllers.insert(name.clone(), rec);
        })
    }

    /// Sends `sig` to controller replica `k` (after checking it is still the lab's process) and
    /// waits until it has exited. A replica that had already exited is an error (it crashed).
    pub fn stop_controller(&self, k: usize, sig: Signal) -> anyhow::Result<()> {
        self.check_controller(k)?;
        let name = LabNames::controller_name(k);
        let rec = lock(&self.state)
            .controllers
            .get(&name)
            .cloned()
            .with_context(|| format!("controller {name} is not running (none recorded)"))?;
        let forget = |lab: &Lab| lab.update(|s| drop(s.controllers.remove(&name)));
        if self.gone(rec.pid) {
            forget(self)?;
            anyhow::bail!(
                "controller {name} (pid {}) had already exited\n{}",
                rec.pid,
                tail(&self.controller_log(k), 20)
            );
        }
        match procs::check(&rec) {
            Ownership::Ours => procs::signal(&rec, sig).map_err(anyhow::Error::msg)?,
            Ownership::Gone => {}
            Ownership::NotOurs(why) => {
                forget(self)?;
                anyhow::bail!("not signalling controller {name}: {why}");
            }
        }
        if !procs::wait_gone(&[rec.pid], STOP_TIMEOUT, |p| self.gone(p)).is_empty() {
            anyhow::bail!("controller {name} (pid {}) still running {} s after {sig}", rec.pid, STOP_TIMEOUT.as_secs());
        }
        forget(self)
    }

    /// `GET path` on replica `k`'s HTTP listener, from the underlay namespace (the router, which
    /// reaches every segment).
    pub fn controller_get(&self, k: usize, path: &str) -> anyhow::Result<HttpReply> {
        self.check_controller(k)?;
        let addr = SocketAddr::from((self.controller_ip(k), CONTROLLER_HTTP_PORT));
        let path = path.to_string();
        netns::in_netns(&self.names.underlay_ns(), move || http_get(addr, &path, Duration::from_secs(3)))?
    }

    /// Waits until replica `k` answers `GET /healthz` with any HTTP status (standbys serve too);
    /// fails early if it exits, and on timeout, with the tail of its log.
    pub fn wait_controller(&self, k: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.controller_get(k, "/healthz") {
                Ok(_) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            let name = LabNames::controller_name(k);
            if self.controller_pid(k).is_none() {
                anyhow::bail!(
                    "controller {name} exited or was never started ({last})\n{}",
                    tail(&self.controller_log(k), 20)
                );
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "controller {name} not serving after {} s: {last}\n{}",
                    timeout.as_secs(),
                    tail(&self.controller_log(k), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every replica as `lab status` shows it.
    pub fn controller_statuses(&self) -> Vec<ControllerStatus> {
        (1..=self.spec.controllers)
            .map(|k| {
                let name = LabNames::controller_name(k);
                let recorded = lock(&self.state).controllers.get(&name).map(|r| r.pid);
                ControllerStatus {
                    name,
                    index: k,
                    netns: self.controller_ns(k),
                    ip: self.controller_ip(k),
                    page: self.controller_page_url(k),
                    bootstrap: self.controller_bootstrap_url(k),
                    pid: recorded,
                    running: recorded.is_some_and(|p| !self.gone(p)),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_parsed() {
        let r = parse_reply(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nok\n").expect("reply");
        assert_eq!(r, HttpReply { status: 200, body: "ok\n".into() });
        let r = parse_reply(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").expect("reply");
        assert_eq!((r.status, r.body.as_str()), (503, ""));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(parse_reply(chunked).expect("chunked").body, "{\"a\":1}");
        assert!(parse_reply(b"garbage").is_err());
        assert!(parse_reply(b"SSH-2.0-x\r\n\r\n").expect_err("not http").contains("status line"));
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }

    #[test]
    fn get_talks_http_to_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).expect("read");
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").expect("write");
            req
        });
        let r = http_get(addr, "/healthz", Duration::from_secs(2)).expect("get");
        assert_eq!(r, HttpReply { status: 200, body: "ok".into() });
        assert!(server.join().expect("server").starts_with("GET /healthz HTTP/1.1\r\n"));
    }
}
