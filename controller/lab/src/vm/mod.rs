//! VM nodes for the lab: one QEMU (TCG; this machine's /dev/kvm cannot run a stock kernel) per
//! machine, booting Debian's kernel with the machine's own root shared read only, systemd as
//! init and cloud-init from a NoCloud seed. This module starts one machine, runs commands in
//! it and waits for it; the lab decides names, addresses and seeds.
//!
//! What a machine is made of (`deploy/vm-assets.sh` builds the shared parts into
//! `/var/cache/weft-lab/vm/current/`, see [`assets`]):
//! - the kernel (`vmlinux`, booted through QEMU's PVH entry: no in-guest decompression) and an
//!   initramfs whose `/init` is `deploy/vm/initramfs-init.sh`;
//! - 9p shares, all read only: `hostroot` (the machine's `/`), `layer` (the kernel's modules,
//!   cloud-init and the Python modules it needs, above hostroot) and `seed` (the NoCloud seed);
//! - `DIR/disk.img` (ext4, [`create_disk`]): the upper layer of the guest's overlay root, so
//!   `/etc` and `/var/lib` persist across reboots (cloud-init's per-instance modules run once,
//!   the agent keeps its lease) while the machine's root stays untouched;
//! - a tap in the lab's namespace on its bridge ([`start`] makes it; QEMU runs in that namespace
//!   too, nothing is made in the root namespace); the initramfs sets `weft.ip`/`weft.gw` on eth0
//!   as a DHCP server would (cloud-init's network config is disabled);
//! - `DIR/ctl.sock`: QEMU's end of the virtio-serial port `org.weft.lab.0`, where the guest's
//!   `weft-lab-guest` answers [`exec`] requests ([`protocol`]); `DIR/console.log`: the serial
//!   console (kernel, initramfs, cloud-init output); `DIR/qemu.log`: QEMU's own messages.
//!
//! Traps of a shared root, and what the initramfs does about them:
//! - systemd would start everything the machine has enabled (etcd, docker, a host weft-agent,
//!   timers, sockets): the guest boots `weft-lab-vm.target` (`systemd.unit=`), which pulls only
//!   sysinit.target, cloud-init's units, `weft-lab-guest.service` and `weft-agent.service`
//!   (ignored until the guest's install.sh writes it); the machine's enabled units are also
//!   masked at runtime in `/run/systemd/system`, which ranks below `/etc/systemd/system`, so
//!   install.sh's `/etc/systemd/system/weft-agent.service` is a real file, never a write
//!   through a mask symlink into /dev/null;
//! - `/.dockerenv` on the machine makes systemd think it runs in a container and ignore the
//!   kernel command line (so `systemd.unit=`): hidden by an overlay whiteout, as are the
//!   machine's weft unit, `/etc/weft`, `/var/lib/weft` and `/var/lib/cloud`;
//! - the machine's `/etc/fstab`: the guest gets an empty one; its `/etc/machine-id`: the guest
//!   gets `weft.mid` (weft's default node identity) unless its disk already has one;
//! - systemd-tmpfiles would empty the machine's `/tmp` as seen through the overlay (a whiteout
//!   per file): the guest's `/tmp` is a tmpfs.
//!
//! QEMU reboots the guest in place on `systemctl reboot` (same pid, same disk): there is no
//! `-no-reboot`. A fatal initramfs error powers the VM off (QEMU exits; console.log says why).

pub mod guest;
pub mod protocol;
pub mod qemu;

pub use protocol::{Request, Response};

use crate::netns;
use crate::plumbing::{ip_batch, run};
use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where deploy/vm-assets.sh keeps what VMs boot.
pub const ASSETS_DIR: &str = "/var/cache/weft-lab/vm";

/// The QEMU binary (Debian's qemu-system-x86).
pub const QEMU: &str = "qemu-system-x86_64";

/// The cached kernel, initramfs and layer (one kernel release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assets {
    pub dir: PathBuf,
    pub kver: String,
}

impl Assets {
    /// `vmlinux` (PVH entry) if present, else the compressed `vmlinuz`.
    pub fn kernel(&self) -> PathBuf {
        let vmlinux = self.dir.join("vmlinux");
        if vmlinux.exists() {
            return vmlinux;
        }
        let vmlinuz = self.dir.join("vmlinuz");
        if vmlinuz.exists() {
            vmlinuz
        } else {
            vmlinux
        }
    }

    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }

    pub fn layer(&self) -> PathBuf {
        self.dir.join("layer")
    }
}

/// The assets under `/var/cache/weft-lab/vm/current`; an error names deploy/vm-assets.sh.
pub fn assets() -> anyhow::Result<Assets> {
    assets_in(Path::new(ASSETS_DIR))
}

/// The assets under `<root>/current`.
pub fn assets_in(root: &Path) -> anyhow::Result<Assets> {
    let hint = "run deploy/vm-assets.sh as root (deploy/install-deps.sh runs it)";
    let current = root.join("current");
    let dir =
        std::fs::canonicalize(&current).with_context(|| format!("VM assets {} missing: {hint}", current.display()))?;
    let kver = std::fs::read_to_string(dir.join("kver"))
        .with_context(|| format!("VM assets {} incomplete (no kver): {hint}", dir.display()))?
        .trim()
        .to_string();
    let a = Assets { dir, kver };
    for p in [a.kernel(), a.initrd(), a.layer()] {
        anyhow::ensure!(p.exists(), "VM assets incomplete: {} missing: {hint}", p.display());
    }
    Ok(a)
}

/// One machine, as the lab describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// "n1": the guest's hostname (the initramfs writes /etc/hostname from it on a new disk;
    /// cloud-init's set_hostname is left out, since hostnamectl needs dbus), console log name.
    pub name: String,
    /// The machine's own directory (the lab makes it): ctl.sock, ctl.lock, console.log,
    /// qemu.log and disk.img live here.
    pub dir: PathBuf,
    /// The namespace QEMU and the tap live in (the lab's underlay namespace).
    pub netns: String,
    /// The bridge in `netns` the tap joins ("br0").
    pub bridge: String,
    /// The tap [`start`] makes in `netns` ("vm1").
    pub tap: String,
    /// "52:54:00:30:00:0b".
    pub mac: String,
    /// Set on eth0 by the initramfs.
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    /// 32 lowercase hex digits; the guest's /etc/machine-id unless its disk has one.
    pub machine_id: String,
    /// The NoCloud seed (meta-data, user-data [, vendor-data]); the lab writes it.
    pub seed_dir: PathBuf,
    /// 512 is enough for cloud-init and the agent.
    pub memory_mb: u32,
    /// Absolute host path of `weft-lab-guest` (the guest sees the host's root).
    pub guest_bin: PathBuf,
}

/// What a command in the guest did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestOutput {
    /// Exit code; -1: killed (timeout or signal).
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl GuestOutput {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A sparse file of `size_mb` MiB made an ext4 file system (`mkfs.ext4 -F -q`). Refuses a path
/// that exists: a machine's disk is made once, before its first start.
pub fn create_disk(path: &Path, size_mb: u32) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating disk {}", path.display()))?;
    file.set_len(u64::from(size_mb) << 20).with_context(|| format!("sizing disk {}", path.display()))?;
    drop(file);
    let made = run(
        Command::new("mkfs.ext4").args(["-F", "-q", "-L", "weft-vm"]).arg(path),
        &format!("making ext4 on {}", path.display()),
    );
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made.map(drop)
}

/// Makes the tap (`ip tuntap`, in `spec.netns`, master `spec.bridge`, up; a leftover one of
/// that name is replaced) and starts QEMU in that namespace: a child (the lab records its pid)
/// in a session of its own with no inherited descriptors beyond stdio (stdout and stderr go to
/// `DIR/qemu.log`). Needs `DIR/disk.img` ([`create_disk`]) and the seed directory.
pub fn start(spec: &MachineSpec, assets: &Assets) -> anyhow::Result<Child> {
    qemu::validate(spec)?;
    let disk = spec.dir.join("disk.img");
    anyhow::ensure!(disk.exists(), "machine {}: {} missing (make it with create_disk)", spec.name, disk.display());
    anyhow::ensure!(
        spec.seed_dir.join("meta-data").exists(),
        "machine {}: no meta-data in seed directory {}",
        spec.name,
        spec.seed_dir.display()
    );
    remove_tap(&spec.netns, &spec.tap);
    ip_batch(
        &spec.netns,
        &[format!("tuntap add dev {} mode tap", spec.tap), format!("link set {} master {} up", spec.tap, spec.bridge)],
        &format!("machine {}: making tap {} in {}", spec.name, spec.tap, spec.netns),
    )?;
    let log_path = spec.dir.join("qemu.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let log2 = log.try_clone().with_context(|| format!("duplicating {}", log_path.display()))?;
    // A stale socket of a previous QEMU would make this one fail to listen.
    let _ = std::fs::remove_file(spec.dir.join("ctl.sock"));
    let mut cmd = Command::new(QEMU);
    cmd.args(qemu::qemu_args(spec, assets)).stdin(Stdio::null()).stdout(log).stderr(log2);
    netns::enter_on_exec(&mut cmd, &spec.netns, true)?;
    let child = cmd.spawn();
    match child {
        Ok(c) => Ok(c),
        Err(e) => {
            remove_tap(&spec.netns, &spec.tap);
            Err(anyhow::anyhow!(
                "machine {}: starting {QEMU} in {}: {e} (run deploy/vm-assets.sh)",
                spec.name,
                spec.netns
            ))
        }
    }
}

/// Removes the tap (best effort: for `lab down`, after QEMU ended).
pub fn remove_tap(netns: &str, tap: &str) {
    let _ = Command::new("ip")
        .args(["-n", netns, "link", "del", tap])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// How much longer than the command's own timeout the host waits for the answer (TCG is slow,
/// and the command only starts once the guest reads the request).
const ANSWER_SLACK: Duration = Duration::from_secs(15);

fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    // Unique across processes and calls, so a late answer to an abandoned request (a client
    // that timed out) is never taken for the answer to a new one. Never 0 (malformed lines).
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 40) ^ COUNTER.fetch_add(1, Ordering::Relaxed);
    (mixed & ((1 << 53) - 1)).max(1)
}

/// Runs `argv` in the guest of the machine in `dir` (through `DIR/ctl.sock`) and returns its
/// exit code and exact output. `timeout` bounds the command in the guest (killed: code -1);
/// the host waits that long plus a margin for the answer. Callers are serialised with
/// `flock(DIR/ctl.lock)`: QEMU's socket takes one client at a time.
pub fn exec(dir: &Path, argv: &[&str], timeout: Duration) -> anyhow::Result<GuestOutput> {
    exec_waiting(dir, argv, timeout, timeout + ANSWER_SLACK)
}

fn exec_waiting(dir: &Path, argv: &[&str], timeout: Duration, wait: Duration) -> anyhow::Result<GuestOutput> {
    anyhow::ensure!(!argv.is_empty(), "exec in {}: empty command", dir.display());
    let lock_path = dir.join("ctl.lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", lock_path.display()))?;
    let sock = dir.join("ctl.sock");
    let mut stream = UnixStream::connect(&sock).with_context(|| format!("connecting to {}", sock.display()))?;
    let req = Request {
        id: next_id(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        timeout_secs: timeout.as_secs().max(u64::from(timeout.subsec_nanos() > 0)),
    };
    stream.write_all(req.encode().as_bytes()).with_context(|| format!("sending to {}", sock.display()))?;
    let deadline = Instant::now() + wait;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(!left.is_zero(), "no answer from the guest in {} within {wait:?} to {argv:?}", dir.display());
        reader.get_ref().set_read_timeout(Some(left)).with_context(|| format!("timing {}", sock.display()))?;
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => anyhow::bail!("guest in {} closed the connection before answering {argv:?}", dir.display()),
            Ok(_) if line.last() != Some(&b'\n') => {
                anyhow::bail!("guest in {} closed the connection in the middle of an answer to {argv:?}", dir.display())
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                anyhow::bail!("no answer from the guest in {} within {wait:?} to {argv:?}", dir.display())
            }
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", sock.display())),
        }
        // Answers to earlier, abandoned requests (and garbage) are skipped.
        let Ok(resp) = Response::decode(&line) else { continue };
        if resp.id != req.id {
            continue;
        }
        if let Some(err) = resp.error {
            anyhow::bail!("guest in {} could not run {argv:?}: {err}", dir.display());
        }
        return Ok(GuestOutput { code: resp.code, stdout: resp.stdout, stderr: resp.stderr });
    }
}

/// Waits until the guest agent in `dir` answers (`true` exits 0), polling until `timeout`.
/// The error carries the last failure, QEMU's own messages and the console log's tail. (This
/// does not wait for cloud-init: `exec(dir, &["cloud-init", "status", "--wait"], ..)` does.)
pub fn wait_booted(dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("not tried");
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match exec_waiting(dir, &["true"], Duration::from_secs(5), left.min(Duration::from_secs(5))) {
            Ok(out) if out.success() => return Ok(()),
            Ok(out) => last = format!("`true` exited {}", out.code),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let qemu_log = std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
    anyhow::bail!(
        "the guest in {} did not answer within {timeout:?} (last: {last}); qemu.log: {:?}; console:\n{}",
        dir.display(),
        qemu_log.trim(),
        console_tail(dir, 30)
    )
}

/// Whether the guest's kernel has panicked since QEMU started (`DIR/console.log` says so).
pub fn kernel_panicked(dir: &Path) -> bool {
    let text = std::fs::read(dir.join("console.log")).unwrap_or_default();
    text.windows(PANIC.len()).any(|w| w == PANIC)
}

const PANIC: &[u8] = b"Kernel panic - not syncing";

/// The last `lines` lines of `DIR/console.log` (ANSI colours and carriage returns removed).
pub fn console_tail(dir: &Path, lines: usize) -> String {
    let text = std::fs::read(dir.join("console.log")).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let clean: Vec<String> = text.split(['\n', '\r']).map(strip_ansi).filter(|l| !l.trim().is_empty()).collect();
    clean[clean.len().saturating_sub(lines)..].join("\n")
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn spec() -> MachineSpec {
        MachineSpec {
            name: "n1".into(),
            dir: PathBuf::from("/run/weft-lab/t1/vm1"),
            netns: "weftt1-u".into(),
            bridge: "br0".into(),
            tap: "vm1".into(),
            mac: "52:54:00:30:00:0b".into(),
            ip: Ipv4Addr::new(172, 30, 0, 11),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(172, 30, 0, 1)),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            seed_dir: PathBuf::from("/run/weft-lab/t1/vm1/seed"),
            memory_mb: 512,
            guest_bin: PathBuf::from("/opt/weft/weft-lab-guest"),
        }
    }

    #[test]
    fn assets_error_names_the_script() {
        let e = assets_in(Path::new("/nonexistent-weft-assets")).expect_err("missing");
        assert!(format!("{e:#}").contains("deploy/vm-assets.sh"), "{e:#}");
    }

    #[test]
    fn ids_are_distinct_and_nonzero() {
        let a: Vec<u64> = (0..100).map(|_| next_id()).collect();
        let mut b = a.clone();
        b.sort_unstable();
        b.dedup();
        assert_eq!(b.len(), 100);
        assert!(a.iter().all(|i| *i > 0 && *i < (1 << 53)));
    }

    #[test]
    fn console_is_cleaned() {
        assert_eq!(strip_ansi("\u{1b}[0;32m  OK  \u{1b}[0m] Started"), "  OK  ] Started");
    }

    #[test]
    fn exec_without_a_machine_names_the_socket() {
        let dir = std::env::temp_dir().join(format!("weft-vm-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let e = exec(&dir, &["true"], Duration::from_secs(1)).expect_err("no socket");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(format!("{e:#}").contains("ctl.sock"), "{e:#}");
    }
}
