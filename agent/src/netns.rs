//! Named network namespaces (`/run/netns/NAME`, the iproute2 convention) and running code inside
//! one. A namespace is entered only on a dedicated OS thread, never on a tokio worker or the
//! caller's thread, so an early return can never leave a thread in the wrong namespace.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const NETNS_DIR: &str = "/run/netns";
/// `NSFS_MAGIC` from linux/magic.h: the filesystem of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub(crate) fn is_nsfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type().0 == NSFS_MAGIC).unwrap_or(false)
}

/// Makes /run/netns a shared mount point as iproute2 does, so namespaces mounted there are
/// visible in every mount namespace that shares it.
pub(crate) fn prepare_dir() -> io::Result<()> {
    fs::create_dir_all(NETNS_DIR)?;
    let dir = Path::new(NETNS_DIR);
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, Some("none"), shared, None::<&str>) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            mount(Some(dir), dir, Some("none"), MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)?;
            mount(None::<&str>, dir, Some("none"), shared, None::<&str>)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates the named namespace if it does not exist (idempotent). Returns true if created.
pub fn ensure(name: &str) -> io::Result<bool> {
    let path = path_of(name);
    if is_nsfs(&path) {
        return Ok(false);
    }
    prepare_dir()?;
    // A leftover plain file from an interrupted create is reused.
    OpenOptions::new().write(true).create(true).truncate(false).mode(0o444).open(&path)?;
    let target = path.clone();
    let result = std::thread::spawn(move || -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(Some("/proc/thread-self/ns/net"), &target, Some("none"), MsFlags::MS_BIND, None::<&str>)?;
        Ok(())
    })
    .join()
    .map_err(|_| io::Error::other("namespace creation thread panicked"))?;
    if let Err(e) = result {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    // Bring loopback up inside: a pod without lo surprises every program that uses 127.0.0.1.
    run_in(name, set_lo_up)??;
    Ok(true)
}

/// A throwaway socket and an `ifreq` naming `ifname` (cut to 15 bytes), for the `SIOC*IF*`
/// interface ioctls in the calling thread's namespace: cheaper than a netlink round trip.
pub fn ifreq(ifname: &str) -> io::Result<(std::os::fd::OwnedFd, libc::ifreq)> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: a zeroed ifreq is a valid value; at most 15 name bytes keep it NUL-terminated.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    Ok((sock, req))
}

fn set_lo_up() -> io::Result<()> {
    let (sock, mut req) = ifreq("lo")?;
    use std::os::fd::AsRawFd;
    // SAFETY: valid socket fd and a properly initialised ifreq for both ioctls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Unmounts and removes a named namespace; absent is fine.
pub fn remove(name: &str) -> io::Result<()> {
    let path = path_of(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens the namespace file (for `setns` or moving a link into it).
pub fn open(name: &str) -> io::Result<File> {
    let path = path_of(name);
    if !is_nsfs(&path) {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("network namespace {name} does not exist")));
    }
    File::open(path)
}

/// Runs `f` on a fresh OS thread that has entered the named namespace, and waits for it.
pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    run_in_file(open(name)?, f)
}

/// Runs `f` on a fresh OS thread that has entered the namespace `ns` (an open namespace file,
/// e.g. a runtime's `/proc/PID/ns/net`), and waits for it.
pub fn run_in_file<T: Send + 'static>(ns: File, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    std::thread::spawn(move || -> io::Result<T> {
        setns(&ns, CloneFlags::CLONE_NEWNET)?;
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}
