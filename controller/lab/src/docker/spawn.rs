//! Starting a lab node's containerd and dockerd: in the node's network namespace and in a
//! private mount namespace of their own, made for containerd and entered by dockerd.
//!
//! In that mount namespace every mount is private (nothing dockerd mounts, overlays, netns and
//! shm files, propagates to the machine), `/run` is a fresh tmpfs holding only the node's docker
//! directory (bound back at its own path) and `/run/docker/plugins`, and `/etc/docker` is a
//! fresh tmpfs holding only `/etc/docker/plugins`; both plugin directories are the node's
//! `plugins` dir (dockerd finds `.sock` files in the first and `.spec` files only in the
//! second), so the daemon finds exactly the plugin of its own node's agent, and its shims'
//! sockets (`/run/containerd/s/`) stay apart. `/usr/lib/docker`, if the machine has it, is
//! covered by an empty tmpfs. The machine's `/run/docker`, `/etc/docker` and `/var/lib/docker`
//! are never written. (`/etc/docker` must exist as a mount point: Debian's docker.io ships it.)

use super::config::DockerPaths;
use crate::netns::{self, NsId};
use anyhow::Context;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn cstr(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("{} holds a NUL byte", p.display()))
}

/// Everything the child needs, made before fork (the child only makes system calls).
struct MountPlan {
    /// The docker dir: opened in the new namespace before /run is covered, bound back from
    /// `/proc/self/fd/N` (a mount of the old namespace cannot be the source of a bind).
    dir: CString,
    /// Directories to make in the new /run, parents first.
    mkdirs: Vec<CString>,
    plugins_src: CString,
    /// `/run/docker/plugins` (made in the new /run), `/etc/docker`, `/etc/docker/plugins`.
    plugins_run: CString,
    etc_docker: CString,
    plugins_etc: CString,
    /// Existing machine directories to cover with an empty tmpfs.
    cover: Vec<CString>,
}

impl MountPlan {
    fn new(p: &DockerPaths) -> anyhow::Result<Self> {
        let run = Path::new("/run");
        anyhow::ensure!(p.dir.starts_with(run), "{} is not under /run", p.dir.display());
        let mut mkdirs = Vec::new();
        let mut at = PathBuf::from(run);
        for part in p.dir.strip_prefix(run).context("docker dir under /run")?.components() {
            at.push(part);
            mkdirs.push(cstr(&at)?);
        }
        mkdirs.push(cstr(Path::new("/run/docker"))?);
        mkdirs.push(cstr(Path::new("/run/docker/plugins"))?);
        anyhow::ensure!(
            Path::new("/etc/docker").is_dir(),
            "/etc/docker is missing (Debian's docker.io ships it; the lab's dockerd needs it as a mount point)"
        );
        let cover = ["/usr/lib/docker"]
            .into_iter()
            .map(Path::new)
            .filter(|d| d.is_dir())
            .map(cstr)
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            dir: cstr(&p.dir)?,
            mkdirs,
            plugins_src: cstr(&p.plugins)?,
            plugins_run: cstr(Path::new("/run/docker/plugins"))?,
            etc_docker: cstr(Path::new("/etc/docker"))?,
            plugins_etc: cstr(Path::new("/etc/docker/plugins"))?,
            cover,
        })
    }

    /// In the child: a new mount namespace set up as the module doc says. System calls only.
    fn apply(&self) -> nix::Result<()> {
        let none: Option<&str> = None;
        nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
        nix::mount::mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
        // Our copies of the machine's named network namespaces would keep them alive.
        match nix::mount::umount2(netns::NETNS_DIR, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let fd = nix::fcntl::open(
            self.dir.as_c_str(),
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let mut buf = [0u8; 40];
        let fd_path = fd_path(&mut buf, fd.as_raw_fd());
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        nix::mount::mount(Some("tmpfs"), "/run", Some("tmpfs"), flags, Some("mode=755"))?;
        for d in &self.mkdirs {
            match nix::unistd::mkdir(d.as_c_str(), nix::sys::stat::Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(nix::Error::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        nix::mount::mount(Some(fd_path), self.dir.as_c_str(), none, MsFlags::MS_BIND, none)?;
        let bind = |src: &CStr, dst: &CStr| nix::mount::mount(Some(src), dst, none, MsFlags::MS_BIND, none);
        bind(&self.plugins_src, &self.plugins_run)?;
        nix::mount::mount(Some("tmpfs"), self.etc_docker.as_c_str(), Some("tmpfs"), flags, Some("mode=755"))?;
        match nix::unistd::mkdir(self.plugins_etc.as_c_str(), nix::sys::stat::Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(e),
        }
        bind(&self.plugins_src, &self.plugins_etc)?;
        for d in &self.cover {
            nix::mount::mount(Some("tmpfs"), d.as_c_str(), Some("tmpfs"), flags, Some("mode=755"))?;
        }
        Ok(())
    }
}

/// `/proc/self/fd/<fd>` written into `buf`, without allocating (it runs between fork and exec).
fn fd_path(buf: &mut [u8; 40], fd: i32) -> &CStr {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 12];
    let (mut n, mut len) = (fd.unsigned_abs(), 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for k in 0..len {
        buf[PREFIX.len() + k] = digits[len - 1 - k];
    }
    buf[PREFIX.len() + len] = 0;
    CStr::from_bytes_until_nul(&buf[..]).unwrap_or(c"/proc/self/fd/")
}

/// Daemon hygiene in the child: a new session, and none of the parent's descriptors past
/// stdio (a test's flock must not be held by a daemon).
fn daemonize() -> std::io::Result<()> {
    nix::unistd::setsid().map_err(std::io::Error::from)?;
    let flags = libc::CLOSE_RANGE_CLOEXEC as libc::c_long;
    // SAFETY: a plain system call on integers.
    if unsafe { libc::syscall(libc::SYS_close_range, 3 as libc::c_long, libc::c_long::from(u32::MAX), flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn open_netns(ns: &str) -> anyhow::Result<OwnedFd> {
    let path = netns::netns_path(ns);
    Ok(std::fs::File::open(&path).with_context(|| format!("opening network namespace {}", path.display()))?.into())
}

/// Makes `cmd` (containerd) start in network namespace `ns` and in a new private mount
/// namespace for node paths `p`, as a daemon.
pub fn in_new_mount_ns(cmd: &mut Command, ns: &str, p: &DockerPaths) -> anyhow::Result<()> {
    let net = open_netns(ns)?;
    let plan = MountPlan::new(p)?;
    // SAFETY: runs in the forked child before exec; setns, unshare, mount, umount2, mkdir,
    // setsid and close_range are system calls; the plan's strings were made before fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&net, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            plan.apply().map_err(std::io::Error::from)?;
            daemonize()
        });
    }
    Ok(())
}

/// Makes `cmd` (dockerd) start in network namespace `ns` and in the mount namespace
/// `mnt` (containerd's, opened from `/proc/<pid>/ns/mnt` after checking it is ours), with
/// containerd's root directory `root` (from [`open_root`]), as a daemon.
///
/// Joining a mount namespace also moves the process to that namespace's own root; when the
/// lab runs chrooted (as CI's fresh root does), that is not the root containerd sees, and
/// dockerd would miss every path of the lab. So the child chroots to containerd's root.
pub fn in_mount_ns(cmd: &mut Command, ns: &str, mnt: OwnedFd, root: OwnedFd) -> anyhow::Result<()> {
    let net = open_netns(ns)?;
    // SAFETY: runs in the forked child before exec; setns, fchdir, chroot, chdir, setsid and
    // close_range only.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&net, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            nix::sched::setns(&mnt, CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)?;
            nix::unistd::fchdir(&root).map_err(std::io::Error::from)?;
            nix::unistd::chroot(".").map_err(std::io::Error::from)?;
            nix::unistd::chdir("/").map_err(std::io::Error::from)?;
            daemonize()
        });
    }
    Ok(())
}

/// `pid`'s root directory (`/proc/<pid>/root`), to chroot to after joining its mount namespace.
pub fn open_root(pid: u32) -> anyhow::Result<OwnedFd> {
    let path = format!("/proc/{pid}/root");
    let fd = nix::fcntl::open(
        path.as_str(),
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("opening {path}"))?;
    Ok(fd)
}

/// The mount namespace of `pid`, if it is alive and visible.
pub fn mnt_ns_id(pid: u32) -> Option<NsId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok().map(|m| NsId { dev: m.dev(), ino: m.ino() })
}

/// Opens `pid`'s mount namespace and checks it is `want` (no pid reuse in between).
pub fn open_mnt_ns(pid: u32, want: NsId) -> anyhow::Result<OwnedFd> {
    let path = format!("/proc/{pid}/ns/mnt");
    let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata().with_context(|| format!("reading {path}"))?;
    anyhow::ensure!(
        NsId { dev: m.dev(), ino: m.ino() } == want,
        "{path} is not the mount namespace the lab made for this node's Docker"
    );
    Ok(f.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_paths_are_written_without_allocating() {
        let mut buf = [0u8; 40];
        assert_eq!(fd_path(&mut buf, 0), c"/proc/self/fd/0");
        assert_eq!(fd_path(&mut buf, 1023), c"/proc/self/fd/1023");
        assert_eq!(fd_path(&mut buf, i32::MAX), c"/proc/self/fd/2147483647");
    }
}
