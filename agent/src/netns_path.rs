//! Namespaces given as a path, as CNI runtimes do (`CNI_NETNS=/proc/PID/ns/net` or
//! `/var/run/netns/NAME`): the agent bind-mounts the namespace at `/run/netns/<name>`, so every
//! other part of the agent (pods, restarts, `--leave`) keeps working with names, and the pod
//! keeps a stable handle that cannot be confused with a recycled PID. Removing the pod unmounts
//! that bind mount only; the runtime's namespace lives on as long as the runtime holds it.

use crate::netns::{is_nsfs, path_of, prepare_dir};
use nix::mount::{mount, MsFlags};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Checks a caller-supplied path before anything is done with it.
pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.len() > 4096 || path.contains('\0') {
        return Err(format!("namespace path must be an absolute path, found {path:?}"));
    }
    Ok(())
}

/// Opens `path` and makes sure it is a network namespace.
fn open_netns(path: &Path) -> io::Result<File> {
    let f = File::open(path)?;
    let st = nix::sys::statfs::fstatfs(&f)?;
    if st.filesystem_type().0 != 0x6e73_6673 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a namespace file", path.display())));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor.
    let kind = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind < 0 {
        return Err(io::Error::last_os_error());
    }
    if kind != libc::CLONE_NEWNET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is a namespace, but not a network namespace", path.display()),
        ));
    }
    Ok(f)
}

fn same_file(a: &File, b: &Path) -> io::Result<bool> {
    let (ma, mb) = (a.metadata()?, std::fs::metadata(b)?);
    Ok(ma.dev() == mb.dev() && ma.ino() == mb.ino())
}

/// Whether `/run/netns/<name>` is the namespace behind `path`.
pub fn is_attached(name: &str, path: &Path) -> io::Result<bool> {
    let target = path_of(name);
    if !is_nsfs(&target) {
        return Ok(false);
    }
    same_file(&open_netns(path)?, &target)
}

/// Makes `/run/netns/<name>` the namespace at `path`. Returns true if it mounted it now, false
/// if it was already there; an error if the name holds another namespace.
pub fn attach(name: &str, path: &Path) -> io::Result<bool> {
    let ns = open_netns(path)?;
    let target = path_of(name);
    if is_nsfs(&target) {
        if same_file(&ns, &target)? {
            return Ok(false);
        }
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already holds another network namespace", target.display()),
        ));
    }
    prepare_dir()?;
    OpenOptions::new().write(true).create(true).truncate(false).mode(0o444).open(&target)?;
    let source = format!("/proc/self/fd/{}", ns.as_raw_fd());
    if let Err(e) = mount(Some(source.as_str()), &target, Some("none"), MsFlags::MS_BIND, None::<&str>) {
        let _ = std::fs::remove_file(&target);
        return Err(e.into());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert!(check_path("/proc/123/ns/net").is_ok());
        assert!(check_path("/var/run/netns/x").is_ok());
        assert!(check_path("relative/ns").is_err());
        assert!(check_path("/a\0b").is_err());
        assert!(check_path(&format!("/{}", "a".repeat(5000))).is_err());
    }
}
