//! The guest side of the command channel (the `weft-lab-guest` binary runs [`serve`] inside the
//! VM, started by `weft-lab-guest.service`): it opens the virtio-serial port once and keeps it
//! open for the VM's lifetime (closing and reopening it after a client left made QEMU keep a
//! stale connection that never delivered data), and runs the requests it reads one at a time.
//!
//! While no client is connected on the host, a read of the port returns 0 at once (not EOF
//! for good): the loop sleeps briefly and reads again, forgetting any partial line.

use super::protocol::{salvage_id, Line, LineBuffer, Request, Response, MAX_REQUEST_LINE, PORT_NAME};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// PATH for the commands (systemd gives services a minimal one).
pub const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long to wait for a command's output to reach end of file after it exited (a background
/// process it started may hold the pipes); what arrived by then is answered.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// The port's device: `/dev/virtio-ports/<name>` (udev's link) or, before udev runs, the
/// `/dev/vportNpM` whose sysfs `name` is the port's.
pub fn find_port(name: &str) -> Option<PathBuf> {
    let link = Path::new("/dev/virtio-ports").join(name);
    if link.exists() {
        return Some(link);
    }
    for entry in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let n = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if n.trim() == name {
            let dev = Path::new("/dev").join(entry.file_name());
            if dev.exists() {
                return Some(dev);
            }
        }
    }
    None
}

/// Opens the port (waiting for it to appear) and serves requests forever.
pub fn serve() -> anyhow::Result<()> {
    let path = loop {
        match find_port(PORT_NAME) {
            Some(p) => break p,
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let mut port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    eprintln!("weft-lab-guest: serving on {}", path.display());
    let mut lines = LineBuffer::new(MAX_REQUEST_LINE);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match port.read(&mut buf) {
            Ok(0) => {
                // No client on the host side.
                lines.reset();
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("weft-lab-guest: reading {}: {e}", path.display());
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        for line in lines.push(&buf[..n]) {
            let resp = match line {
                Line::TooLong => Response::error(0, format!("request line longer than {MAX_REQUEST_LINE} bytes")),
                Line::Complete(l) if l.iter().all(u8::is_ascii_whitespace) => continue,
                Line::Complete(l) => answer(&l),
            };
            if let Err(e) = port.write_all(resp.encode().as_bytes()).and_then(|()| port.flush()) {
                eprintln!("weft-lab-guest: answering request {}: {e}", resp.id);
            }
        }
    }
}

/// The answer to one request line.
pub fn answer(line: &[u8]) -> Response {
    match Request::decode(line) {
        Ok(req) => run(&req),
        Err(e) => Response::error(salvage_id(line), e.to_string()),
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, std::sync::mpsc::Receiver<()>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let sink = Arc::clone(&out);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = done_tx.send(());
    });
    (out, done_rx)
}

fn take(v: &Arc<Mutex<Vec<u8>>>) -> Vec<u8> {
    std::mem::take(&mut *v.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// Runs `req`: stdin /dev/null, in `/`, [`GUEST_PATH`], its own process group (killed whole,
/// with SIGKILL, after `timeout_secs`; code -1).
pub fn run(req: &Request) -> Response {
    let Some((program, args)) = req.argv.split_first() else {
        return Response::error(req.id, "empty argv");
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir("/")
        .env("PATH", GUEST_PATH)
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Response::error(req.id, format!("spawning {program}: {e}")),
    };
    let (Some(so), Some(se)) = (child.stdout.take(), child.stderr.take()) else {
        return Response::error(req.id, "no pipes to the command");
    };
    let (stdout, so_done) = reader(so);
    let (stderr, se_done) = reader(se);
    let deadline = (req.timeout_secs > 0).then(|| Instant::now() + Duration::from_secs(req.timeout_secs));
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            break child.wait();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let drain = Instant::now() + DRAIN_AFTER_EXIT;
    for done in [&so_done, &se_done] {
        let _ = done.recv_timeout(drain.saturating_duration_since(Instant::now()));
    }
    match status {
        Ok(st) => Response {
            id: req.id,
            // Killed (by the timeout or any signal): -1.
            code: st.code().unwrap_or(-1),
            stdout: take(&stdout),
            stderr: take(&stderr),
            error: None,
        },
        Err(e) => Response { error: Some(format!("waiting for {}: {e}", req.argv[0])), ..Response::error(req.id, "") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(argv: &[&str], timeout_secs: u64) -> Request {
        Request { id: 5, argv: argv.iter().map(|s| s.to_string()).collect(), timeout_secs }
    }

    #[test]
    fn runs_commands_exactly() {
        let r = run(&req(&["sh", "-c", "printf 'a\\nb\\n'; echo err >&2; exit 3"], 10));
        assert_eq!((r.id, r.code, r.error.as_deref()), (5, 3, None));
        assert_eq!(r.stdout, b"a\nb\n");
        assert_eq!(r.stderr, b"err\n");
        let r = run(&req(&["pwd"], 10));
        assert_eq!(r.stdout, b"/\n");
        let r = run(&req(&["/nonexistent/cmd"], 10));
        assert!(r.error.as_deref().is_some_and(|e| e.starts_with("spawning /nonexistent/cmd: ")), "{r:?}");
        assert_eq!(r.code, -1);
    }

    #[test]
    fn timeout_kills_the_group() {
        let t = Instant::now();
        let r = run(&req(&["sh", "-c", "sleep 30 & sleep 30"], 1));
        assert_eq!(r.code, -1, "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }

    #[test]
    fn malformed_lines_are_answered() {
        let r = answer(b"{\"id\":12,\"argv\":[],\"timeout_secs\":1}");
        assert_eq!(r.id, 12);
        assert!(r.error.as_deref().is_some_and(|e| e.contains("argv is empty")), "{r:?}");
        assert_eq!(answer(b"\x00garbage").id, 0);
    }
}
