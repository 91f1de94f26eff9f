//! Finding the binaries the lab runs: `weft-agent`, `weftctl` and `weft-controller` next to the running executable
//! (or in `WEFT_BIN_DIR`), `etcd` on PATH. A missing binary is an error naming the path; tests
//! fail on it, never skip.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const AGENT: &str = "weft-agent";
pub const WEFTCTL: &str = "weftctl";
/// The controller daemon (a binary of the `weft-controller` package).
pub const CONTROLLER: &str = "weft-controller";
pub const ETCD: &str = "etcd";
/// The VM lab's guest command agent (run inside each VM, from the host's root).
pub const GUEST: &str = "weft-lab-guest";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinError {
    #[error("{name} binary not found at {path}: {why} ({hint})")]
    Missing { name: &'static str, path: PathBuf, why: String, hint: String },
    #[error("cannot tell where the binaries are: {0} (set WEFT_BIN_DIR)")]
    NoExe(String),
    #[error("{name} not found on PATH ({hint})")]
    NotOnPath { name: &'static str, hint: &'static str },
}

/// The directory holding sibling binaries of `exe`: its own directory, or the parent of a
/// `deps` directory (test executables live in target/debug/deps, binaries in target/debug).
pub fn default_bin_dir(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        return dir.parent().map(Path::to_path_buf);
    }
    Some(dir.to_path_buf())
}

/// `WEFT_BIN_DIR`, else the directory of the current executable as [`default_bin_dir`] says.
pub fn bin_dir() -> Result<PathBuf, BinError> {
    if let Some(d) = std::env::var_os("WEFT_BIN_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().map_err(|e| BinError::NoExe(e.to_string()))?;
    default_bin_dir(&exe).ok_or_else(|| BinError::NoExe(format!("{} has no parent directory", exe.display())))
}

fn check_executable(name: &'static str, path: &Path, hint: &str) -> Result<PathBuf, BinError> {
    let missing = |why: String| BinError::Missing { name, path: path.to_path_buf(), why, hint: hint.to_string() };
    let meta = std::fs::metadata(path).map_err(|e| missing(e.to_string()))?;
    if !meta.is_file() {
        return Err(missing("not a file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(missing("not executable".into()));
    }
    Ok(path.to_path_buf())
}

/// `explicit` if given, else `name` in [`bin_dir`]; checked to be an executable file.
pub fn resolve(name: &'static str, explicit: Option<&Path>, flag: &str) -> Result<PathBuf, BinError> {
    let (path, hint) = match explicit {
        Some(p) => (p.to_path_buf(), format!("given by {flag}")),
        None => (
            bin_dir()?.join(name),
            // Every binary the lab runs is built by the package of its own name.
            format!("build it with cargo build -p {name}, or pass {flag} or set WEFT_BIN_DIR"),
        ),
    };
    check_executable(name, &path, &hint)
}

/// `name` in the directories of PATH; an absolute `name` (such as `/usr/bin/wireguard-go`)
/// is that file alone.
pub fn on_path(name: &'static str, hint: &'static str) -> Result<PathBuf, BinError> {
    if Path::new(name).is_absolute() {
        return check_executable(name, Path::new(name), hint);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| check_executable(name, p, hint).is_ok())
        .ok_or(BinError::NotOnPath { name, hint })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_dirs() {
        assert_eq!(default_bin_dir(Path::new("/t/debug/weftctl")), Some(PathBuf::from("/t/debug")));
        assert_eq!(default_bin_dir(Path::new("/t/debug/deps/lab-0123")), Some(PathBuf::from("/t/debug")));
        assert_eq!(default_bin_dir(Path::new("/")), None);
    }

    #[test]
    fn missing_binary_names_the_path() {
        let e = resolve(AGENT, Some(Path::new("/nonexistent/weft-agent")), "--agent-bin").expect_err("missing");
        let m = e.to_string();
        assert!(m.starts_with("weft-agent binary not found at /nonexistent/weft-agent: "), "{m}");
        assert!(m.ends_with("(given by --agent-bin)"), "{m}");
        let plain = std::env::temp_dir().join(format!("weftctl-bins-{}", std::process::id()));
        std::fs::write(&plain, "").expect("write");
        let e = resolve(AGENT, Some(&plain), "--agent-bin").expect_err("not executable");
        let _ = std::fs::remove_file(&plain);
        assert!(e.to_string().contains("not executable"), "{e}");
        assert!(resolve(AGENT, Some(Path::new("/bin/sh")), "--agent-bin").is_ok());
    }

    #[test]
    fn absolute_names_are_not_looked_up_on_path() {
        assert_eq!(on_path("/bin/sh", ""), Ok(PathBuf::from("/bin/sh")));
        let e = on_path("/nonexistent/sh", "hint").expect_err("missing");
        assert!(e.to_string().starts_with("/nonexistent/sh binary not found at /nonexistent/sh: "), "{e}");
        assert!(on_path("sh", "").is_ok_and(|p| p.is_absolute() && p.ends_with("sh")));
    }
}
