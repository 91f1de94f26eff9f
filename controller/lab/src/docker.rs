//! Docker on lab nodes: each node gets its own containerd and dockerd (Debian's `docker.io`),
//! started on first use ([`Lab::ensure_docker`], `weftctl lab docker NODE -- ARGS`) inside the
//! node's network namespace and a private mount namespace (see the `spawn` module), with every file
//! under `<lab>/n<i>/docker/` ([`DockerPaths`]). A started daemon gets the image `weft-busybox`
//! (Debian's busybox-static and its applet links, `docker import`ed) and the network `weft` on
//! the weft driver and IPAM driver that the node's agent serves.
//!
//! The daemons' pids and the mount namespace are recorded in `daemons.json` (not in
//! state.json, which a running `Lab` rewrites from memory). `lab down` ([`teardown_node`]),
//! before it stops the agents (whose plugin Docker calls while it removes containers): removes
//! every container, stops dockerd, then containerd (by recorded pid, checked like every lab
//! process), kills what is left in the mount namespace, unmounts whatever is mounted under the
//! docker directory, removes the containers' cgroup parents, and only then deletes the files.

mod config;
mod spawn;

pub use config::{
    agent_section, cgroup_parent, containerd_toml, daemon_json, dockerd_args, DockerPaths, BUSYBOX, CONTAINERD,
    DOCKERD, DOCKER_CLI, DOCKER_NETWORK, IMAGE, PLUGIN_NAME,
};

use crate::names::LabNames;
use crate::netns::{self, NsId};
use crate::plumbing::tail;
use crate::procs::{self, Ownership};
use crate::state::ProcRecord;
use crate::teardown::DownReport;
use crate::{lock, Lab};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Time containerd gets to open its socket, and dockerd to answer `/_ping`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the agent gets to write its plugin spec file before the network is created.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Time dockerd and containerd get to exit after SIGTERM (dockerd stops its containers first).
const STOP_GRACE: Duration = Duration::from_secs(20);
/// Time one CLI call of the lab's own (inspect, import, rm) may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// `daemons.json`: the node's Docker processes and their mount namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonRecords {
    pub containerd: Option<ProcRecord>,
    pub dockerd: Option<ProcRecord>,
    /// containerd's private mount namespace (device and inode of its nsfs file).
    pub mnt_ns: Option<(u64, u64)>,
}

impl DaemonRecords {
    /// The records, or none if the file does not exist.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("{}: not a daemon record", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `path` atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).context("encoding the daemon records")?;
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    fn mnt(&self) -> Option<NsId> {
        self.mnt_ns.map(|(dev, ino)| NsId { dev, ino })
    }
}

/// An exclusive flock on `path`, held while the value lives.
fn flock(path: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}

/// A `docker` CLI call against node `i`'s daemon, from the node's network namespace, with its
/// own config dir and none of the caller's DOCKER_ variables.
fn cli(names: &LabNames, i: usize) -> anyhow::Result<Command> {
    let p = DockerPaths::new(names, i);
    let mut cmd = netns::command_in(&names.node_ns(i), DOCKER_CLI)?;
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DOCKER_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("DOCKER_CONFIG", &p.cli_config).arg("--host").arg(p.host());
    Ok(cmd)
}

/// Runs `cmd` with its output collected; killed after `timeout`.
fn run_timeout(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(r) => r.with_context(|| format!("waiting for {shown}")),
        Err(_) => {
            // Our own unreaped child: the pid cannot have been reused.
            if let Ok(raw) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = rx.recv();
            Err(anyhow::anyhow!("{shown} took over {} s (killed)", timeout.as_secs()))
        }
    };
    let _ = waiter.join();
    out
}

/// Runs a CLI call that must succeed; its stdout.
fn cli_ok(names: &LabNames, i: usize, args: &[&str], what: &str) -> anyhow::Result<String> {
    let out = run_timeout(cli(names, i)?.args(args), CLI_TIMEOUT).with_context(|| what.to_string())?;
    if !out.status.success() {
        anyhow::bail!(
            "{what}: docker {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `GET /_ping` on dockerd's socket answered 200.
fn ping(socket: &Path) -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n").is_err() {
        return false;
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    crate::controllers::parse_reply(&raw).is_ok_and(|r| r.status == 200)
}

/// Whether `rec` is alive and still the process the lab started.
fn ours(rec: Option<&ProcRecord>) -> bool {
    rec.is_some_and(|r| procs::check(r) == Ownership::Ours)
}

impl Lab {
    /// Node `i`'s Docker files.
    pub fn docker_paths(&self, i: usize) -> DockerPaths {
        DockerPaths::new(&self.names, i)
    }

    /// Pid of node `i`'s dockerd if it is recorded and still the lab's.
    pub fn dockerd_pid(&self, i: usize) -> Option<u32> {
        let rec = DaemonRecords::load(&self.docker_paths(i).records).ok()?.dockerd?;
        ours(Some(&rec)).then_some(rec.pid)
    }

    /// A `/usr/bin/docker --host unix://<node i's socket>` command (add the arguments), after
    /// starting the node's daemons if they do not run.
    pub fn docker_command(&self, i: usize) -> anyhow::Result<Command> {
        self.ensure_docker(i)?;
        cli(&self.names, i)
    }

    /// Runs `docker ARGS` against node `i`'s daemon and collects its output (a call that takes
    /// over two minutes is killed).
    pub fn docker(&self, i: usize, args: &[&str]) -> anyhow::Result<Output> {
        run_timeout(self.docker_command(i)?.args(args), CLI_TIMEOUT)
    }

    /// Starts what is not running of node `i`'s containerd and dockerd; a dockerd it started
    /// gets the image `weft-busybox` and the network `weft` if it lacks them. A daemon that
    /// runs and answers is left as it is.
    pub fn ensure_docker(&self, i: usize) -> anyhow::Result<()> {
        self.check_node(i)?;
        let p = self.docker_paths(i);
        for d in [&p.dir, &p.plugins, &p.cli_config, &p.containerd_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let _held = flock(&p.lock)?;
        let mut rec = DaemonRecords::load(&p.records)?;
        let ctd_ok = ours(rec.containerd.as_ref())
            && rec.containerd.as_ref().and_then(|r| spawn::mnt_ns_id(r.pid)) == rec.mnt()
            && rec.mnt().is_some();
        if !ctd_ok {
            if ours(rec.dockerd.as_ref()) {
                // A dockerd whose containerd is gone is of no use; start both again.
                let (_, errors) =
                    procs::terminate(&rec.dockerd.iter().cloned().collect::<Vec<_>>(), STOP_GRACE, |pid| {
                        self.gone(pid)
                    });
                anyhow::ensure!(errors.is_empty(), "stopping dockerd of n{i}: {}", errors.join("; "));
            }
            rec = DaemonRecords::default();
            self.start_containerd(i, &p, &mut rec)?;
        }
        if ours(rec.dockerd.as_ref()) && ping(&p.socket) {
            // Running: what it has is the user's business now (a removed network stays removed).
            return Ok(());
        }
        if !ours(rec.dockerd.as_ref()) {
            self.start_dockerd(i, &p, &mut rec)?;
        }
        // Started now, or alive but not answering yet (another caller is starting it).
        self.wait_dockerd(i, &p, &rec)?;
        self.ensure_image(i, &p)?;
        self.ensure_network(i, &p)
    }

    fn start_containerd(&self, i: usize, p: &DockerPaths, rec: &mut DaemonRecords) -> anyhow::Result<()> {
        std::fs::write(&p.containerd_config, containerd_toml(p))
            .with_context(|| format!("writing {}", p.containerd_config.display()))?;
        let _ = std::fs::remove_file(&p.containerd_socket);
        let log = crate::agents::open_log(&p.containerd_log, &format!("starting {CONTAINERD}"))?;
        let log2 = log.try_clone().with_context(|| format!("opening {}", p.containerd_log.display()))?;
        let ns = self.names.node_ns(i);
        let mut cmd = Command::new(CONTAINERD);
        cmd.arg("--config").arg(&p.containerd_config).stdin(Stdio::null()).stdout(log).stderr(log2);
        spawn::in_new_mount_ns(&mut cmd, &ns, p)?;
        let child = cmd.spawn().with_context(|| format!("starting {CONTAINERD} for n{i}"))?;
        let pid = child.id();
        lock(&self.children).insert(pid, child);
        rec.containerd = Some(ProcRecord { pid, netns: ns, start_ticks: procs::start_ticks(pid) });
        rec.mnt_ns = spawn::mnt_ns_id(pid).map(|n| (n.dev, n.ino));
        rec.save(&p.records)?;
        anyhow::ensure!(
            rec.mnt_ns.is_some(),
            "containerd of n{i} (pid {pid}) exited at once\n{}",
            tail(&p.containerd_log, 20)
        );
        let who = format!("containerd of n{i}");
        self.wait_started(&who, pid, "opened no socket", (&p.containerd_log, 20), || {
            std::os::unix::net::UnixStream::connect(&p.containerd_socket).is_ok()
        })
    }

    /// Polls `ready` every 100 ms until it holds; fails, with the last lines of the daemon's
    /// log, when `pid` exits or after [`START_TIMEOUT`] (`who` `not_ready` within N s).
    fn wait_started(
        &self,
        who: &str,
        pid: u32,
        not_ready: &str,
        (log, lines): (&Path, usize),
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while !ready() {
            if self.gone(pid) {
                anyhow::bail!("{who} exited\n{}", tail(log, lines));
            }
            if Instant::now() >= deadline {
                anyhow::bail!("{who} {not_ready} within {} s\n{}", START_TIMEOUT.as_secs(), tail(log, lines));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn start_dockerd(&self, i: usize, p: &DockerPaths, rec: &mut DaemonRecords) -> anyhow::Result<()> {
        // The remote driver protocol carries no DNS: the daemon gets the network's resolvers.
        std::fs::write(&p.daemon_json, daemon_json(&p.trust_key, self.spec.dns.as_ref()))
            .with_context(|| format!("writing {}", p.daemon_json.display()))?;
        let ctd = rec.containerd.clone().context("dockerd without a recorded containerd")?;
        let mnt = spawn::open_mnt_ns(ctd.pid, rec.mnt().context("no recorded mount namespace")?)?;
        let root = spawn::open_root(ctd.pid)?;
        let _ = std::fs::remove_file(&p.socket);
        let log = crate::agents::open_log(&p.dockerd_log, &format!("starting {DOCKERD}"))?;
        let log2 = log.try_clone().with_context(|| format!("opening {}", p.dockerd_log.display()))?;
        let ns = self.names.node_ns(i);
        let mut cmd = Command::new(DOCKERD);
        cmd.args(dockerd_args(p, &cgroup_parent(&self.names, i))).stdin(Stdio::null()).stdout(log).stderr(log2);
        // dockerd finds runc, docker-init and docker-proxy on PATH.
        cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        spawn::in_mount_ns(&mut cmd, &ns, mnt, root)?;
        let child = cmd.spawn().with_context(|| format!("starting {DOCKERD} for n{i}"))?;
        let pid = child.id();
        lock(&self.children).insert(pid, child);
        rec.dockerd = Some(ProcRecord { pid, netns: ns, start_ticks: procs::start_ticks(pid) });
        rec.save(&p.records)
    }

    fn wait_dockerd(&self, i: usize, p: &DockerPaths, rec: &DaemonRecords) -> anyhow::Result<()> {
        let pid = rec.dockerd.as_ref().map(|r| r.pid).context("no dockerd recorded")?;
        let who = format!("dockerd of n{i}");
        self.wait_started(&who, pid, "not answering", (&p.dockerd_log, 30), || ping(&p.socket))
    }

    /// Stops node `i`'s dockerd (SIGTERM: it stops its containers first) and starts it again in
    /// the same mount namespace, as a Docker upgrade or crash-restart would; waits until it
    /// answers. Containers with a restart policy come back by themselves.
    pub fn restart_dockerd(&self, i: usize) -> anyhow::Result<()> {
        self.check_node(i)?;
        let p = self.docker_paths(i);
        {
            let _held = flock(&p.lock)?;
            let mut rec = DaemonRecords::load(&p.records)?;
            let d = rec.dockerd.clone().with_context(|| format!("n{i} runs no dockerd"))?;
            let (_, errors) = procs::terminate(&[d], STOP_GRACE, |pid| self.gone(pid));
            anyhow::ensure!(errors.is_empty(), "stopping dockerd of n{i}: {}", errors.join("; "));
            rec.dockerd = None;
            rec.save(&p.records)?;
        }
        self.ensure_docker(i)
    }

    fn ensure_image(&self, i: usize, p: &DockerPaths) -> anyhow::Result<()> {
        let have =
            run_timeout(cli(&self.names, i)?.args(["image", "inspect", "--format", "{{.Id}}", IMAGE]), CLI_TIMEOUT)?;
        if have.status.success() {
            return Ok(());
        }
        let tar = build_image_tar(&p.image_dir)?;
        let tar = tar.to_string_lossy();
        cli_ok(
            &self.names,
            i,
            &["import", "--change", "CMD [\"sh\"]", &tar, IMAGE],
            &format!("importing {IMAGE} on n{i}"),
        )?;
        Ok(())
    }

    fn ensure_network(&self, i: usize, p: &DockerPaths) -> anyhow::Result<()> {
        let have = run_timeout(
            cli(&self.names, i)?.args(["network", "inspect", "--format", "{{.Driver}}", DOCKER_NETWORK]),
            CLI_TIMEOUT,
        )?;
        if have.status.success() {
            return Ok(());
        }
        // The spec file outlives a stopped agent (so dockerd keeps finding the plugin across a
        // restart): the plugin is served once its socket also takes a connection.
        let deadline = Instant::now() + PLUGIN_TIMEOUT;
        while !(p.spec_file.exists() && std::os::unix::net::UnixStream::connect(&p.plugin_socket).is_ok()) {
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the agent of n{i} serves no Docker plugin: {} or a listener on {} missing after {} s (is the agent running with a [docker] section?)",
                    p.spec_file.display(),
                    p.plugin_socket.display(),
                    PLUGIN_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut args = vec!["network", "create", "--driver", PLUGIN_NAME, "--ipam-driver", PLUGIN_NAME];
        if self.spec.ip_family.has_v6() {
            args.push("--ipv6");
        }
        args.push(DOCKER_NETWORK);
        cli_ok(&self.names, i, &args, &format!("creating Docker network {DOCKER_NETWORK} on n{i}")).map(drop)
    }
}

/// The `weft-busybox` root file system under `dir/rootfs` (busybox-static, a link per applet in
/// /bin, /etc/passwd and /etc/group for root, /tmp) and its tarball `dir/weft-busybox.tar`.
pub fn build_image_tar(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).with_context(|| format!("creating {}", root.join(d).display()))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).context("chmod tmp")?;
    let bb = root.join("bin/busybox");
    std::fs::copy(BUSYBOX, &bb).with_context(|| format!("copying {BUSYBOX} (install Debian's busybox-static)"))?;
    std::fs::set_permissions(&bb, std::fs::Permissions::from_mode(0o755)).context("chmod busybox")?;
    let list = Command::new(BUSYBOX).arg("--list").output().with_context(|| format!("running {BUSYBOX} --list"))?;
    anyhow::ensure!(list.status.success(), "{BUSYBOX} --list failed ({})", list.status);
    let applets = String::from_utf8_lossy(&list.stdout);
    for a in applets.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/')) {
        let link = root.join("bin").join(a);
        std::os::unix::fs::symlink("busybox", &link).with_context(|| format!("linking {}", link.display()))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").context("writing etc/passwd")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n").context("writing etc/group")?;
    let tar = dir.join(format!("{IMAGE}.tar"));
    crate::plumbing::run(
        Command::new("tar")
            .arg("--numeric-owner")
            .arg("--owner=0")
            .arg("--group=0")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        "packing the weft-busybox image",
    )?;
    Ok(tar)
}

/// Mount points at or under `dir` in mountinfo text (field 5, octal escapes undone), deepest
/// first.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .map(std::path::PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut k = 0;
    while k < b.len() {
        let oct = b.get(k + 1..k + 4).filter(|d| b[k] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                k += 4;
            }
            None => {
                out.push(b[k]);
                k += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `lab down` for node `i`'s Docker, as the module doc says; every failure goes into `report`
/// and the teardown goes on. A node that never ran Docker has no docker directory: nothing
/// to do.
pub fn teardown_node(names: &LabNames, i: usize, mut gone: impl FnMut(u32) -> bool, report: &mut DownReport) {
    let p = DockerPaths::new(names, i);
    if !p.dir.exists() {
        return;
    }
    let rec = match DaemonRecords::load(&p.records) {
        Ok(r) => r,
        Err(e) => {
            report.errors.push(format!("{e:#}; the Docker daemons of n{i} were not stopped"));
            DaemonRecords::default()
        }
    };
    if ours(rec.dockerd.as_ref()) {
        if let Err(e) = remove_containers(names, i) {
            report.errors.push(format!("removing the containers of n{i}: {e:#}"));
        }
    }
    for r in [&rec.dockerd, &rec.containerd].into_iter().flatten() {
        let (signalled, errors) = procs::terminate(std::slice::from_ref(r), STOP_GRACE, &mut gone);
        report.signalled.extend(signalled);
        report.errors.extend(errors);
    }
    if let Some(mnt) = rec.mnt() {
        kill_mount_ns(mnt, i, &mut gone, report);
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in mounts_under(&info, &p.dir) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            report.errors.push(format!("unmounting {}: {e}", m.display()));
        }
    }
    remove_cgroup_parent(&cgroup_parent(names, i), report);
    if let Err(e) = std::fs::remove_dir_all(&p.dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            report.errors.push(format!("removing {}: {e}", p.dir.display()));
        }
    }
}

/// `docker rm -f` of every container, then `docker network rm weft` (the plugin gives the
/// endpoints and the pool back while the agent still runs).
fn remove_containers(names: &LabNames, i: usize) -> anyhow::Result<()> {
    let ids = cli_ok(names, i, &["ps", "-aq"], "listing containers")?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        cli_ok(names, i, &args, "removing containers")?;
    }
    let nets = cli_ok(names, i, &["network", "ls", "--format", "{{.Name}}"], "listing networks")?;
    if nets.lines().any(|n| n.trim() == DOCKER_NETWORK) {
        cli_ok(names, i, &["network", "rm", DOCKER_NETWORK], "removing the weft network")?;
    }
    Ok(())
}

/// SIGKILLs whatever still runs in the node's Docker mount namespace (shims, container
/// processes): only the lab's daemons made it and entered it.
fn kill_mount_ns(mnt: NsId, i: usize, gone: &mut impl FnMut(u32) -> bool, report: &mut DownReport) {
    let in_ns = || -> Vec<u32> {
        let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
            .filter(|pid| spawn::mnt_ns_id(*pid) == Some(mnt) && procs::observe(*pid).alive)
            .collect()
    };
    let left = in_ns();
    if left.is_empty() {
        return;
    }
    report
        .warnings
        .push(format!("killing {} process(es) left in the Docker mount namespace of n{i}: {left:?}", left.len()));
    for pid in &left {
        if let Ok(raw) = i32::try_from(*pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let still = procs::wait_gone(&left, Duration::from_secs(5), |pid| gone(pid) || spawn::mnt_ns_id(pid) != Some(mnt));
    if !still.is_empty() {
        report.errors.push(format!("processes {still:?} still in the Docker mount namespace of n{i} after SIGKILL"));
    }
}

/// Removes the (empty, once the containers are gone) cgroup `parent` from every hierarchy.
fn remove_cgroup_parent(parent: &str, report: &mut DownReport) {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    let rel = parent.trim_start_matches('/');
    let mut dirs: Vec<std::path::PathBuf> = vec![Path::new("/sys/fs/cgroup").join(rel)];
    dirs.extend(rd.flatten().map(|e| e.path().join(rel)));
    for d in dirs.into_iter().filter(|d| d.is_dir()) {
        if let Err(e) = std::fs::remove_dir(&d) {
            report.warnings.push(format!("removing cgroup {}: {e}", d.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_the_docker_dir_are_found_deepest_first() {
        let info = "\
27 1 254:0 / / rw - ext4 /dev/vda rw
90 27 0:50 / /run/weft-lab/3/n1/docker/data/overlay2/abc/merged rw - overlay overlay rw
91 27 0:4 net:[4026532] /run/weft-lab/3/n1/docker/exec/netns/1f2e rw - nsfs nsfs rw
92 27 0:51 / /run/weft-lab/3/n1/docker/data/containers/x/mounts/shm rw - tmpfs shm rw
93 27 0:52 / /run/weft-lab/3/n1/docker2 rw - tmpfs t rw
94 27 0:53 / /run/weft-lab/3/n1/docker/with\\040space rw - tmpfs t rw
";
        let m = mounts_under(info, Path::new("/run/weft-lab/3/n1/docker"));
        let s: Vec<String> = m.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            s,
            vec![
                "/run/weft-lab/3/n1/docker/data/containers/x/mounts/shm",
                "/run/weft-lab/3/n1/docker/data/overlay2/abc/merged",
                "/run/weft-lab/3/n1/docker/exec/netns/1f2e",
                "/run/weft-lab/3/n1/docker/with space",
            ]
        );
    }

    #[test]
    fn records_round_trip_and_default_when_missing() {
        let dir = std::env::temp_dir().join(format!("weft-lab-docker-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("daemons.json");
        assert_eq!(DaemonRecords::load(&path).expect("missing"), DaemonRecords::default());
        let r = DaemonRecords {
            containerd: Some(ProcRecord { pid: 7, netns: "weft3-n1".into(), start_ticks: Some(9) }),
            dockerd: None,
            mnt_ns: Some((4, 4026532001)),
        };
        r.save(&path).expect("save");
        assert_eq!(DaemonRecords::load(&path).expect("load"), r);
        std::fs::write(&path, "{").expect("write");
        assert!(DaemonRecords::load(&path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_image_is_busybox_with_its_applets() {
        let dir = std::env::temp_dir().join(format!("weft-lab-docker-img-{}", std::process::id()));
        let tar = build_image_tar(&dir).expect("image");
        let list = Command::new("tar").arg("-tvf").arg(&tar).output().expect("tar -t");
        let text = String::from_utf8_lossy(&list.stdout);
        for want in [
            "./bin/busybox",
            "./bin/sh -> busybox",
            "./bin/ping -> busybox",
            "./bin/nc -> busybox",
            "./bin/nslookup -> busybox",
            "./bin/wget -> busybox",
            "./etc/passwd",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
