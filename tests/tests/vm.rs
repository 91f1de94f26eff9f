//! One VM of the VM lab, booted for real (QEMU under TCG: minutes): the initramfs, systemd's
//! dedicated target, cloud-init from a NoCloud seed, the guest command agent, and a reboot
//! that keeps the disk. The test makes its own namespace `weftvmt-u` (a name no lab uses) with
//! a bridge; QEMU and its tap live there, nothing in the root namespace, and a guard kills
//! QEMU and removes the tap, the namespace and every file, also when an assertion fails.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};
use weft_lab::vm::{self, GuestOutput, MachineSpec};
use weft_lab::{bins, netns, plumbing};
use weft_tests::require_root;

const NS: &str = "weftvmt-u";
const BRIDGE: &str = "br0";
const TAP: &str = "vmt1";
const MACHINE_ID: &str = "5eed0123456789abcdef0123456789ab";
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Kills QEMU (by its pid, through the Child) and removes the tap, the namespace and `dir`.
struct Guard {
    qemu: Option<Child>,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.qemu.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        vm::remove_tap(NS, TAP);
        if let Err(e) = netns::remove(NS) {
            eprintln!("cleanup: {e}");
        }
        if std::env::var_os("WEFT_VM_TEST_KEEP_DIR").is_none() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                eprintln!("cleanup: removing {}: {e}", self.dir.display());
            }
        }
    }
}

fn exec(dir: &Path, argv: &[&str]) -> GuestOutput {
    match vm::exec(dir, argv, Duration::from_secs(120)) {
        Ok(o) => o,
        Err(e) => panic!("exec {argv:?}: {e:#}\nconsole:\n{}", vm::console_tail(dir, 40)),
    }
}

/// Stdout of a command that must succeed.
fn out(dir: &Path, argv: &[&str]) -> String {
    let o = exec(dir, argv);
    assert_eq!(o.code, 0, "{argv:?}: stdout {:?} stderr {:?}", o.stdout_str(), o.stderr_str());
    o.stdout_str()
}

fn write_seed(seed: &Path) {
    std::fs::create_dir_all(seed).expect("seed dir");
    std::fs::write(seed.join("meta-data"), "instance-id: weftvmt-1\nlocal-hostname: vmt1\n").expect("meta-data");
    // write_files makes the file, runcmd appends to it: after a reboot, a rerun of either would
    // show (write_files would drop runcmd's line; runcmd would add another).
    let user_data = r#"#cloud-config
write_files:
  - path: /var/lib/weftvmt/first-boot
    content: "written\n"
runcmd:
  - [sh, -c, "echo runcmd >> /var/lib/weftvmt/first-boot"]
"#;
    std::fs::write(seed.join("user-data"), user_data).expect("user-data");
}

fn boot_id(dir: &Path) -> String {
    out(dir, &["cat", "/proc/sys/kernel/random/boot_id"])
}

#[test]
fn one_vm_boots_runs_cloud_init_answers_exactly_and_keeps_its_disk_across_a_reboot() {
    require_root();
    let assets = vm::assets().unwrap_or_else(|e| panic!("{e:#}"));
    let guest_bin = bins::resolve(bins::GUEST, None, "WEFT_BIN_DIR").unwrap_or_else(|e| panic!("{e}"));
    assert!(netns::ns_id(NS).is_none(), "namespace {NS} exists: a previous run left it (ip netns del {NS})");
    let dir = std::env::temp_dir().join(format!("weftvmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("vm dir");
    let mut guard = Guard { qemu: None, dir: dir.clone() };
    plumbing::add_netns(NS).expect("namespace");
    plumbing::ip_batch(
        NS,
        &[
            "link set lo up".into(),
            format!("link add {BRIDGE} type bridge"),
            format!("addr add 172.31.250.1/24 dev {BRIDGE}"),
            format!("link set {BRIDGE} up"),
        ],
        "test bridge",
    )
    .expect("bridge");
    let seed = dir.join("seed");
    write_seed(&seed);
    vm::create_disk(&dir.join("disk.img"), 1024).expect("disk");
    let spec = MachineSpec {
        name: "vmt1".into(),
        dir: dir.clone(),
        netns: NS.into(),
        bridge: BRIDGE.into(),
        tap: TAP.into(),
        mac: "52:54:00:31:fa:0b".into(),
        ip: Ipv4Addr::new(172, 31, 250, 11),
        prefix: 24,
        gateway: Some(Ipv4Addr::new(172, 31, 250, 1)),
        machine_id: MACHINE_ID.into(),
        seed_dir: seed,
        memory_mb: 512,
        guest_bin,
    };

    let t0 = Instant::now();
    guard.qemu = Some(vm::start(&spec, &assets).unwrap_or_else(|e| panic!("{e:#}")));
    vm::wait_booted(&dir, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e:#}"));
    let booted = t0.elapsed();
    let ci = exec(&dir, &["cloud-init", "status", "--wait"]);
    let ci_done = t0.elapsed();
    assert_eq!(
        ci.code,
        0,
        "cloud-init status: {:?} {:?}\n{}",
        ci.stdout_str(),
        ci.stderr_str(),
        vm::console_tail(&dir, 40)
    );
    assert!(ci.stdout_str().contains("status: done"), "{:?}", ci.stdout_str());
    eprintln!("first boot: guest agent answered {booted:.1?} after QEMU started; cloud-init done at {ci_done:.1?}");

    // Exact output and exit codes, no carriage returns.
    assert_eq!(exec(&dir, &["printf", "a\\nb\\n"]).stdout, b"a\nb\n");
    let e = exec(&dir, &["sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!((e.code, e.stdout.as_slice(), e.stderr.as_slice()), (3, &b""[..], &b"oops\n"[..]));
    let missing = vm::exec(&dir, &["/nonexistent/cmd"], Duration::from_secs(10)).expect_err("no such program");
    assert!(format!("{missing:#}").contains("spawning /nonexistent/cmd"), "{missing:#}");
    let t = vm::exec(&dir, &["sleep", "30"], Duration::from_secs(2)).expect("timed exec");
    assert_eq!(t.code, -1, "a command past its timeout is killed");

    // The guest is itself: machine id, address, and none of the machine's services.
    assert_eq!(out(&dir, &["cat", "/etc/machine-id"]), format!("{MACHINE_ID}\n"));
    let addr = out(&dir, &["ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(addr.contains("inet 172.31.250.11/24"), "{addr}");
    assert!(out(&dir, &["ip", "route", "show", "default"]).starts_with("default via 172.31.250.1 dev eth0"));
    assert_eq!(out(&dir, &["hostname"]), "vmt1\n");
    let state = exec(&dir, &["systemctl", "is-system-running"]).stdout_str();
    let failed = exec(&dir, &["systemctl", "--failed", "--no-legend", "--plain"]).stdout_str();
    eprintln!("systemctl is-system-running: {}; failed units: {failed:?}", state.trim());
    for unit in [
        "docker.service",
        "docker.socket",
        "containerd.service",
        "etcd.service",
        "dnsmasq.service",
        "postgresql.service",
        "weft-agent.service",
        "multi-user.target",
        "timers.target",
    ] {
        let active = exec(&dir, &["systemctl", "is-active", unit]).stdout_str();
        assert_ne!(active.trim(), "active", "{unit} runs in the guest");
    }
    assert_eq!(out(&dir, &["cat", "/var/lib/weftvmt/first-boot"]), "written\nruncmd\n");
    assert_eq!(out(&dir, &["cat", "/etc/fstab"]).lines().filter(|l| !l.starts_with('#')).count(), 0);

    // Reboot: QEMU restarts the guest in place; the disk keeps /etc and /var/lib.
    let before = boot_id(&dir);
    let t1 = Instant::now();
    // The connection may drop before the answer arrives: either outcome is fine.
    let _ = vm::exec(&dir, &["systemctl", "reboot"], Duration::from_secs(20));
    loop {
        assert!(t1.elapsed() < BOOT_TIMEOUT, "no new boot within {BOOT_TIMEOUT:?}\n{}", vm::console_tail(&dir, 40));
        let left = BOOT_TIMEOUT.saturating_sub(t1.elapsed());
        vm::wait_booted(&dir, left).unwrap_or_else(|e| panic!("{e:#}"));
        match vm::exec(&dir, &["cat", "/proc/sys/kernel/random/boot_id"], Duration::from_secs(30)) {
            Ok(o) if o.code == 0 && o.stdout_str() != before => break,
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
    let rebooted = t1.elapsed();
    let ci = exec(&dir, &["cloud-init", "status", "--wait"]);
    eprintln!(
        "reboot: guest agent answered {rebooted:.1?} after `systemctl reboot`; cloud-init done at {:.1?}",
        t1.elapsed()
    );
    assert!(ci.stdout_str().contains("status: done"), "{:?}", ci.stdout_str());
    assert_eq!(
        out(&dir, &["cat", "/var/lib/weftvmt/first-boot"]),
        "written\nruncmd\n",
        "write_files or runcmd ran again"
    );
    assert_eq!(out(&dir, &["cat", "/etc/machine-id"]), format!("{MACHINE_ID}\n"));
    let qemu_pid = guard.qemu.as_ref().map(Child::id);
    assert!(
        guard.qemu.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None))),
        "QEMU (pid {qemu_pid:?}) must survive the guest's reboot"
    );
}
