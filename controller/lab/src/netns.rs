//! Entering named network namespaces (`/run/netns/<name>`) safely.
//!
//! Only the network namespace is ever entered, and only by a thread made for the purpose
//! ([`in_netns`]) or by a child between fork and exec ([`enter_on_exec`]): never the calling
//! thread, never a tokio worker, and never the mount namespace (`ip netns exec` would add a
//! private one, hiding the pod namespaces the agents bind-mount under /run/netns).

use nix::mount::MntFlags;
use nix::sched::CloneFlags;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}: {error}")]
    Open { path: PathBuf, error: std::io::Error },
    #[error("entering network namespace {name}: {error}")]
    Setns { name: String, error: nix::Error },
    #[error("thread for namespace {name} did not start: {error}")]
    Thread { name: String, error: std::io::Error },
    #[error("thread entered a namespace other than {name} (inode check failed)")]
    Mismatch { name: String },
    #[error("listing {NETNS_DIR}: {0}")]
    List(std::io::Error),
    #[error("removing network namespace {name}: {message}")]
    Remove { name: String, message: String },
}

/// Identity of a namespace: device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// The namespace behind `/run/netns/<name>`, if it exists.
pub fn ns_id(name: &str) -> Option<NsId> {
    std::fs::metadata(netns_path(name)).ok().map(|m| NsId { dev: m.dev(), ino: m.ino() })
}

/// The network namespace of process `pid`, if it is alive and visible.
pub fn pid_ns_id(pid: u32) -> Option<NsId> {
    std::fs::metadata(format!("/proc/{pid}/ns/net")).ok().map(|m| NsId { dev: m.dev(), ino: m.ino() })
}

fn thread_ns_id() -> Option<NsId> {
    std::fs::metadata("/proc/thread-self/ns/net").ok().map(|m| NsId { dev: m.dev(), ino: m.ino() })
}

fn open(name: &str) -> Result<File, NetnsError> {
    let path = netns_path(name);
    File::open(&path).map_err(|error| NetnsError::Open { path, error })
}

/// Runs `f` on a new OS thread that first enters network namespace `name`; the calling thread
/// never changes namespace. Sockets opened inside `f` stay bound to that namespace. A panic in
/// `f` is resumed in the caller (so test assertions inside `f` fail the test normally).
pub fn in_netns<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let file = open(name)?;
    let want = ns_id(name);
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn_scoped(s, move || -> Result<T, NetnsError> {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|error| NetnsError::Setns { name: name.to_string(), error })?;
                if want.is_none() || thread_ns_id() != want {
                    return Err(NetnsError::Mismatch { name: name.to_string() });
                }
                Ok(f())
            })
            .map_err(|error| NetnsError::Thread { name: name.to_string(), error })?;
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Makes `cmd` enter network namespace `name` in the child, after fork and before exec, and
/// optionally start a daemon: a new session (so it outlives the terminal that started it) and
/// none of the caller's inherited descriptors. Without the last, an agent started by a test
/// run under `flock` would hold the lock for as long as a kept lab lives.
pub fn enter_on_exec(cmd: &mut Command, name: &str, daemon: bool) -> Result<(), NetnsError> {
    let file = open(name)?;
    // SAFETY: the closure runs in the forked child before exec; it only makes the setns,
    // setsid and close_range system calls (async-signal-safe) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            if daemon {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                // Close-on-exec, not closed: std's own exec-error pipe must stay open until exec.
                // Descriptors 0 to 2 are the daemon's stdio, set up before this runs.
                let flags = libc::CLOSE_RANGE_CLOEXEC as libc::c_long;
                if libc::syscall(libc::SYS_close_range, 3 as libc::c_long, libc::c_long::from(u32::MAX), flags) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

/// Makes the child of `cmd` receive SIGKILL when the thread that spawned it exits, so a bench
/// killed with SIGKILL (no guard runs) leaves no tunnel daemon behind. Only for children of
/// the thread that also waits for them: the signal follows the spawning thread, not the process.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: runs in the forked child before exec; prctl is async-signal-safe and allocates
    // nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A `Command` for `program` that runs in network namespace `name`, seeing the files of
/// `/etc/netns/<name>/` over those of `/etc` as `ip netns exec` does (a pod's resolv.conf).
pub fn command_in(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command, NetnsError> {
    let mut cmd = Command::new(program);
    enter_on_exec(&mut cmd, name, false)?;
    etc_overlay_on_exec(&mut cmd, name);
    Ok(cmd)
}

/// Where `ip netns exec` looks for a namespace's own `/etc` files.
pub const NETNS_ETC: &str = "/etc/netns";

/// When `/etc/netns/<name>/` has files, the child gets a mount namespace of its own (mounts
/// not propagated back) with each of them bound over `/etc/<file>` (one that cannot be bound,
/// e.g. without a counterpart in /etc, is skipped); nothing else changes and no mount outlives
/// the child.
fn etc_overlay_on_exec(cmd: &mut Command, name: &str) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let dir = std::path::Path::new(NETNS_ETC).join(name);
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    // Every path is made before fork: the child only makes system calls.
    let mut binds: Vec<(CString, CString)> = Vec::new();
    for e in entries.flatten() {
        let target = std::path::Path::new("/etc").join(e.file_name());
        if let (Ok(src), Ok(dst)) =
            (CString::new(e.path().as_os_str().as_bytes()), CString::new(target.as_os_str().as_bytes()))
        {
            binds.push((src, dst));
        }
    }
    if binds.is_empty() {
        return;
    }
    let root = c"/";
    // SAFETY: runs in the forked child before exec; unshare and mount are async-signal-safe and
    // the closure only reads the strings made above.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = (libc::MS_REC | libc::MS_SLAVE) as libc::c_ulong;
            if libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), flags, std::ptr::null()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (src, dst) in &binds {
                // Like `ip netns exec`: a file with nothing of its name in /etc is skipped.
                let bind = libc::MS_BIND as libc::c_ulong;
                libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), bind, std::ptr::null());
            }
            Ok(())
        });
    }
}

/// Names under /run/netns (none if the directory does not exist).
pub fn list() -> Result<Vec<String>, NetnsError> {
    let rd = match std::fs::read_dir(NETNS_DIR) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NetnsError::List(e)),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(NetnsError::List)?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Removes a named namespace: detach its bind mount, then the file (what `ip netns del` does,
/// without giving up on a half-made one). Processes still inside keep the namespace alive.
pub fn remove(name: &str) -> Result<(), NetnsError> {
    let path = netns_path(name);
    let err = |message: String| NetnsError::Remove { name: name.to_string(), message };
    match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a half-made namespace); ENOENT: already gone.
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(err(format!("unmounting {}: {e}", path.display()))),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(format!("removing {}: {e}", path.display()))),
    }
}

/// Writes a sysctl under /proc/sys inside namespace `name` (from a thread that entered it, after
/// checking it did), e.g. `write_sysctl(ns, "net/ipv4/ip_forward", "1")`.
pub fn write_sysctl(name: &str, key: &str, value: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        key.starts_with("net/") && !key.contains(".."),
        "refusing sysctl {key}: only per-namespace net/ keys are written by the lab"
    );
    let path = Path::new("/proc/sys").join(key);
    in_netns(name, || std::fs::write(&path, value))?
        .map_err(|e| anyhow::anyhow!("writing {} in namespace {name}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_an_error_naming_it() {
        let e = in_netns("weft-no-such-namespace", || ()).expect_err("missing");
        assert!(e.to_string().starts_with("opening network namespace /run/netns/weft-no-such-namespace: "), "{e}");
        let e = command_in("weft-no-such-namespace", "true").expect_err("missing");
        assert!(matches!(e, NetnsError::Open { .. }));
        assert!(remove("weft-no-such-namespace").is_ok(), "removing a missing namespace is a no-op");
    }

    #[test]
    fn sysctls_outside_net_are_refused() {
        let e = write_sysctl("weft-no-such-namespace", "kernel/hostname", "x").expect_err("refused");
        assert!(e.to_string().starts_with("refusing sysctl kernel/hostname"), "{e}");
    }
}
