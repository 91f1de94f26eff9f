//! Headless Chromium (Debian's `chromium` package) inside a lab namespace, for tests of the
//! controller's cluster page: dump the DOM a page has after its scripts ran, or take a
//! screenshot. Every run has a time budget (`--virtual-time-budget`: page timers run that far
//! ahead) and a hard timeout, and ends every Chromium process it started, also on timeout and
//! on panic: the browser runs in a process group of its own, and what leaves that group (the
//! crash handlers daemonize) is found by the run's directory in its command line.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The browser binary (a wrapper script that execs /usr/lib/chromium/chromium).
pub const CHROMIUM: &str = "chromium";

/// One kind of run: where the browser runs and how long it may take.
#[derive(Debug, Clone)]
pub struct Browser {
    /// Network namespace the browser runs in (a lab namespace).
    pub netns: String,
    /// `--user-data-dir`; HOME and the XDG directories go below it too, so nothing is
    /// written outside it and every process of a run names it.
    pub dir: PathBuf,
    /// `--virtual-time-budget`: how far page timers run before the DOM is taken.
    pub budget: Duration,
    /// The whole run is killed after this long.
    pub timeout: Duration,
}

/// What a finished run left: its stdout, the tail of its stderr.
#[derive(Debug)]
pub struct RunOutput {
    pub stdout: String,
    pub stderr_tail: String,
    pub took: Duration,
}

impl Browser {
    /// A browser in `netns` using `<lab_dir>/chromium`, with a 5 s budget and a 60 s timeout.
    pub fn in_lab(lab_dir: &Path, netns: &str) -> Self {
        Self {
            netns: netns.to_string(),
            dir: lab_dir.join("chromium"),
            budget: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
        }
    }

    /// The DOM of `url` after its scripts ran for the budget (`--dump-dom`).
    pub fn dump_dom(&self, url: &str) -> Result<String> {
        let out = self.run(&["--dump-dom".to_string(), url.to_string()])?;
        if !out.stdout.contains("<html") {
            bail!("chromium --dump-dom {url} printed no document ({} bytes)\n{}", out.stdout.len(), out.stderr_tail);
        }
        Ok(out.stdout)
    }

    /// A `width` x `height` PNG of `url` after the budget, written to `path`.
    pub fn screenshot(&self, url: &str, path: &Path, (width, height): (u32, u32)) -> Result<()> {
        let _ = std::fs::remove_file(path);
        let out = self.run(&[
            format!("--screenshot={}", path.display()),
            format!("--window-size={width},{height}"),
            "--hide-scrollbars".to_string(),
            url.to_string(),
        ])?;
        let png = std::fs::read(path)
            .with_context(|| format!("chromium wrote no screenshot at {}\n{}", path.display(), out.stderr_tail))?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
            bail!("{} is not a PNG ({} bytes)", path.display(), png.len());
        }
        Ok(())
    }

    fn command(&self, args: &[String]) -> Result<Command> {
        for sub in ["home", "config", "cache"] {
            let d = self.dir.join("xdg").join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--disable-crash-reporter",
            "--run-all-compositor-stages-before-draw",
        ])
        .arg(format!("--user-data-dir={}", self.dir.display()))
        .arg(format!("--virtual-time-budget={}", self.budget.as_millis()))
        .args(args)
        .env("HOME", self.dir.join("xdg/home"))
        .env("XDG_CONFIG_HOME", self.dir.join("xdg/config"))
        .env("XDG_CACHE_HOME", self.dir.join("xdg/cache"))
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, so the guard can end the browser and its children at once.
        .process_group(0);
        weft_lab::netns::enter_on_exec(&mut cmd, &self.netns, false)?;
        // The browser dies with the thread that waits for it (a test killed with SIGKILL runs
        // no guard).
        weft_lab::netns::die_with_parent(&mut cmd);
        Ok(cmd)
    }

    /// Runs the browser with `args` until it exits or the timeout; every process it started is
    /// ended before this returns (or unwinds).
    pub fn run(&self, args: &[String]) -> Result<RunOutput> {
        let started = Instant::now();
        let mut child = self.command(args)?.spawn().with_context(|| {
            format!("starting {CHROMIUM} (install Debian's chromium package; deploy/install-deps.sh does)")
        })?;
        let guard = Guard { pgid: child.id(), marker: self.dir.clone() };
        let read = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                String::from_utf8_lossy(&buf).into_owned()
            })
        };
        let stdout = read(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
        let stderr = read(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
        let status = loop {
            if let Some(st) = child.try_wait().context("waiting for chromium")? {
                break Some(st);
            }
            if started.elapsed() >= self.timeout {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let took = started.elapsed();
        // Ends what is left (renderers, crash handlers) so the pipes close.
        drop(guard);
        let _ = child.wait();
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains("dbus")).collect();
        let stderr_tail = lines[lines.len().saturating_sub(15)..].join("\n");
        match status {
            None => bail!("chromium {args:?} still running after {} s; killed\n{stderr_tail}", self.timeout.as_secs()),
            Some(st) if !st.success() => bail!("chromium {args:?} failed ({st})\n{stderr_tail}"),
            Some(_) => Ok(RunOutput { stdout, stderr_tail, took }),
        }
    }
}

/// Ends a run's processes when dropped: SIGKILL to its process group, then to every process
/// whose command line names the run's directory (what left the group), until none is left.
struct Guard {
    pgid: u32,
    marker: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let left = end_all(self.pgid, &self.marker, Duration::from_secs(5));
        if !left.is_empty() {
            eprintln!("chromium processes still running after SIGKILL: {left:?}");
        }
    }
}

/// SIGKILLs process group `pgid` and the processes [`processes_of`] `marker` finds, repeating
/// until none is left or `timeout` passes; returns the pids still there.
pub fn end_all(pgid: u32, marker: &Path, timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(g) = i32::try_from(pgid) {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
        }
        let mut left = processes_of(marker);
        left.extend(group_members(pgid));
        left.sort_unstable();
        left.dedup();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        for pid in &left {
            if let Ok(p) = i32::try_from(*pid) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Live (not zombie) processes whose command line mentions `marker`.
pub fn processes_of(marker: &Path) -> Vec<u32> {
    let marker = marker.to_string_lossy().into_owned();
    live_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(&marker))
        })
        .collect()
}

/// Live processes in process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    live_pids().into_iter().filter(|pid| stat_fields(*pid).is_some_and(|(_, g)| g == pgid)).collect()
}

/// State and process group of `pid` from `/proc/<pid>/stat`.
fn stat_fields(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = text[text.rfind(')')? + 1..].split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, pgrp))
}

fn live_pids() -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| stat_fields(*pid).is_some_and(|(s, _)| s != 'Z' && s != 'X'))
        .collect()
}
