//! Rows of `weftctl lab bench --with-peers`: other userspace tunnels between the same two
//! namespace hosts as the `kernel` row ([`HostPair`]), so weft's quic backend can be compared
//! with them side by side, on the same machine, topology and measurement ([`measure`]).
//!
//! Each row builds a fresh [`HostPair`] (no routes between the pod subnets), starts the peer's
//! daemons in the host namespaces, routes the other host's pod subnet through the tunnel
//! device, waits until pod 1 reaches pod 2 through it ([`TUNNEL_TIMEOUT`]), checks that host 1
//! really routes pod 2 through the device, and measures with the daemons' RSS sampled:
//!
//! - `wireguard-go`, `wireguard-go-2022` and `boringtun` (userspace WireGuard in Go and in
//!   Rust), set up like shared/bench/baseline.sh: one daemon per host making device
//!   `wg<id><i>` / `wo<id><i>` / `bt<id><i>`, configured with `wg set` (fresh keys, listen port
//!   [`WG_PORT`], the peer's pod subnet as allowed IPs, endpoint the peer's underlay address),
//!   MTU [`WG_MTU`], route `10.244.j.0/24 dev <device>`. `wireguard-go` is the one found first on
//!   PATH (Debian trixie's 0.0.20231211 build once deploy/bench-peers.sh has run),
//!   `wireguard-go-2022` Debian bookworm's `/usr/bin/wireguard-go` (0.0.20220316); the row
//!   records the daemon's path and its `--version` ([`Measurement::program`]). boringtun runs
//!   [`BORINGTUN_THREADS`] threads like baseline.sh.
//! - `quincy` (a QUIC VPN on quinn; packets travel as QUIC DATAGRAM frames like weft's quic
//!   backend): `quincy-server` on host 2, `quincy-client` on host 1, in its default TLS mode
//!   (mutual TLS 1.3 with a throwaway CA made for the row and the client's certificate
//!   fingerprint in the users file; quincy's default key exchange, X25519MLKEM768, and its
//!   cipher suites, AES-256-GCM first) and its default MTU ([`QUINCY_MTU`]: 1400 on the tun,
//!   QUIC packets up to 1450 bytes of UDP payload on the 1500-byte underlay). Quincy is a
//!   client-to-server VPN, not a site-to-site one: the client gets one address from the server's
//!   tunnel network ([`QUINCY_NET`]), the server only sends a client packets addressed to that
//!   address and drops packets from it with any other source. So host 1 routes
//!   `10.244.2.0/24 dev <client tun>` and masquerades what leaves through the tun to its tunnel
//!   address (one iptables rule in host 1's namespace); pod 2 sees connections from that address
//!   and answers over the server tun's own route. Host 2 needs no route to 10.244.1.0/24 (the
//!   server could not deliver it). Connections go from pod 1 to pod 2 only, which is all the
//!   row measures.
//!
//! The daemons on host 1 are the sender side of the row's CPU figure, those on host 2 the
//! receiver side.
//!
//! Files (keys 0600, certificates, configs, daemon logs) live in `<lab dir>/peer-<name>/`;
//! daemons are stopped (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and reaped, their control
//! sockets and files removed, and the namespaces deleted when a row returns, Ok or Err. The
//! root namespace gets no address, route or rule.

use super::hosts::{batch, HostPair};
use super::measure::{measure, route_get, run_timeout, wait_reachable, MeasureOpts, Watched};
use super::parse::udp_bound;
use super::report::{Measurement, Side};
use super::rows::{missing, PeerTunnel};
use crate::names::LabNames;
use crate::{netns, plumbing};
use anyhow::Context;
use std::ffi::OsString;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::net::SocketAddrV4;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weft_controller::pki;

/// How long a daemon gets to make its device, control socket or listening socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the first ping from pod 1 may take to cross a configured tunnel (handshakes).
pub const TUNNEL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// Bound of every short command (`wg`, `ip`, `iptables`, `sha256sum`).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// MTU of the WireGuard devices (as baseline.sh and wg-quick's default on a 1500 underlay).
pub const WG_MTU: u32 = 1420;
/// UDP port of both WireGuard daemons (each on its own host address).
pub const WG_PORT: u16 = 51820;
/// Threads of boringtun-cli (`-t`), as in baseline.sh.
pub const BORINGTUN_THREADS: u32 = 2;
/// quincy's default `connection.mtu` (tun MTU; QUIC packets add up to 50 bytes), written
/// explicitly so the row says what it measured.
pub const QUINCY_MTU: u16 = 1400;
/// quincy's default server port.
pub const QUINCY_PORT: u16 = 55555;
/// The quincy server's tunnel address and network; the client gets the next free address.
pub const QUINCY_NET: &str = "10.245.0.1/24";
/// The one user of the quincy server.
pub const QUINCY_USER: &str = "bench";
pub use crate::names::WG_SOCKET_DIR;

/// One row: a [`HostPair`] whose pod subnets are routed through `peer`'s tunnel, then
/// [`measure`] with the tunnel daemons watched (RSS, CPU). `path` is host 1's
/// `ip -o route get 10.244.2.2`, `program` the WireGuard daemon that ran. Everything
/// (processes, files, namespaces) is gone when it returns, Ok or Err.
pub fn bench(peer: PeerTunnel, names: &LabNames, opts: MeasureOpts) -> anyhow::Result<Measurement> {
    let missing = missing(&[peer]);
    anyhow::ensure!(
        missing.is_empty(),
        "{peer}: {} not found on PATH (install with deploy/bench-peers.sh)",
        missing.join(", ")
    );
    // Declared before the daemons so that it is dropped after them: processes stop before
    // their namespaces go away.
    let pair = HostPair::up(&names.prefix())?;
    let mut run = Run::new(names, peer)?;
    let (watch, program) = match peer {
        PeerTunnel::WireguardGo | PeerTunnel::WireguardGo2022 | PeerTunnel::Boringtun => {
            let daemon = crate::bins::on_path(peer.binaries()[0], "install with deploy/bench-peers.sh")?;
            let program = describe_program(peer, &daemon);
            (wireguard_up(peer, &daemon, names, &pair, &mut run)?, Some(program))
        }
        PeerTunnel::Quincy => (quincy_up(names, &pair, &mut run)?, None),
    };
    let ep = pair.endpoints();
    wait_reachable(&ep.client_ns, ep.server_ip, TUNNEL_TIMEOUT)
        .with_context(|| format!("{peer}: the tunnel passes no ping; {}", run.logs()))?;
    let path = route_get(&pair.host_ns(1), ep.server_ip)?;
    let dev = device_name(peer, names.id(), 1);
    anyhow::ensure!(
        route_dev(&path) == Some(dev.as_str()),
        "{peer}: host 1 routes pod 2 as `{path}`, not through the tunnel device {dev}"
    );
    let m = measure(&ep, opts, &watch).with_context(|| format!("{peer}: {}", run.logs()))?;
    run.check_alive()?;
    Ok(Measurement { path: Some(path), program, ..m })
}

// ---------------------------------------------------------------------------------------------
// Pure parts: names, argument lists, config files.

/// The tunnel device of `peer` on host `i` of lab `id`: `wg<id><i>`, `bt<id><i>` or
/// `qc<id><i>`, at most 15 bytes (IFNAMSIZ - 1) with the longest id (12). The two hosts'
/// names differ because wireguard-go and boringtun name their control socket after the
/// device in [`WG_SOCKET_DIR`], which all namespaces share.
pub fn device_name(peer: PeerTunnel, id: &str, i: usize) -> String {
    crate::names::tunnel_device(peer.tag(), id, i)
}

/// How a row names its daemon: `path`, `-> real` when that is a link to another file, and the
/// first line of `version` (its `--version` output) in parentheses.
pub fn program_text(path: &Path, real: Option<&Path>, version: Option<&str>) -> String {
    let mut out = path.display().to_string();
    if let Some(real) = real.filter(|r| *r != path) {
        out.push_str(&format!(" -> {}", real.display()));
    }
    if let Some(line) = version.and_then(|v| v.lines().map(str::trim).find(|l| !l.is_empty())) {
        out.push_str(&format!(" ({line})"));
    }
    out
}

/// [`program_text`] of the daemon at `daemon`; wireguard-go is asked for its `--version`.
fn describe_program(peer: PeerTunnel, daemon: &Path) -> String {
    let real = std::fs::canonicalize(daemon).ok();
    let version = match peer {
        PeerTunnel::WireguardGo | PeerTunnel::WireguardGo2022 => {
            run_timeout(Command::new(daemon).arg("--version"), None, CMD_TIMEOUT, "wireguard-go --version")
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        }
        PeerTunnel::Boringtun | PeerTunnel::Quincy => None,
    };
    program_text(daemon, real.as_deref(), version.as_deref())
}

/// The `dev` of an `ip -o route get` line.
pub fn route_dev(route: &str) -> Option<&str> {
    let words: Vec<&str> = route.split_whitespace().collect();
    words.windows(2).find(|w| w[0] == "dev").map(|w| w[1])
}

/// `wireguard-go -f DEV`: in the foreground, so it stays our child.
pub fn wireguard_go_args(dev: &str) -> Vec<String> {
    vec!["-f".into(), dev.into()]
}

/// `boringtun-cli -f --disable-drop-privileges -t N DEV` (flags as in baseline.sh; in the
/// foreground it logs to stdout, so no `-l`).
pub fn boringtun_args(dev: &str) -> Vec<String> {
    vec!["-f".into(), "--disable-drop-privileges".into(), "-t".into(), BORINGTUN_THREADS.to_string(), dev.into()]
}

/// `wg set DEV listen-port PORT private-key KEYFILE peer PUB allowed-ips NET endpoint IP:PORT`.
pub fn wg_set_args(
    dev: &str,
    key_file: &Path,
    peer_public: &str,
    allowed: &str,
    endpoint: SocketAddrV4,
) -> Vec<String> {
    [
        "set",
        dev,
        "listen-port",
        &endpoint.port().to_string(),
        "private-key",
        &key_file.display().to_string(),
        "peer",
        peer_public,
        "allowed-ips",
        allowed,
        "endpoint",
        &endpoint.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A WireGuard key as `wg genkey`/`wg pubkey` print it: base64 of 32 bytes (44 characters,
/// the last one `=`).
pub fn valid_wg_key(s: &str) -> bool {
    s.len() == 44 && s.ends_with('=') && s[..43].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.display().to_string())
}

/// What the quincy configs name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuincyFiles {
    /// The throwaway CA the client trusts.
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub users: PathBuf,
}

/// quincy-server 3.1.1's config (`--config-path`): TLS mode, bound to `bind` (host 2's
/// underlay address and [`QUINCY_PORT`]), tunnel device `dev` holding [`QUINCY_NET`].
pub fn quincy_server_toml(files: &QuincyFiles, dev: &str, bind: SocketAddrV4) -> String {
    format!(
        "name = \"weft-bench\"\n\
         interface_name = {dev}\n\
         bind_address = {addr}\n\
         bind_port = {port}\n\
         tunnel_network = {net}\n\
         users_file = {users}\n\
         \n\
         [protocol]\n\
         mode = \"tls\"\n\
         certificate_file = {cert}\n\
         certificate_key_file = {key}\n\
         \n\
         [connection]\n\
         mtu = {QUINCY_MTU}\n\
         \n\
         [log]\n\
         level = \"info\"\n",
        dev = toml_str(dev),
        addr = toml_str(&bind.ip().to_string()),
        port = bind.port(),
        net = toml_str(QUINCY_NET),
        users = toml_path(&files.users),
        cert = toml_path(&files.server_cert),
        key = toml_path(&files.server_key),
    )
}

/// quincy-client 3.1.1's config: connects to `server` (its certificate has that IP as SAN and
/// chains to the row's CA), authenticates with the client certificate, makes tunnel device
/// `dev` and adds no routes (the row adds its own).
pub fn quincy_client_toml(files: &QuincyFiles, dev: &str, server: SocketAddrV4) -> String {
    format!(
        "connection_string = {server}\n\
         \n\
         [protocol]\n\
         mode = \"tls\"\n\
         trusted_certificate_paths = [{ca}]\n\
         client_certificate_file = {cert}\n\
         client_certificate_key_file = {key}\n\
         \n\
         [connection]\n\
         mtu = {QUINCY_MTU}\n\
         \n\
         [network]\n\
         interface_name = {dev}\n\
         routes = []\n\
         \n\
         [log]\n\
         level = \"info\"\n",
        server = toml_str(&server.to_string()),
        ca = toml_path(&files.ca_cert),
        cert = toml_path(&files.client_cert),
        key = toml_path(&files.client_key),
        dev = toml_str(dev),
    )
}

/// quincy-server's users file: user [`QUINCY_USER`] is whoever presents the certificate with
/// SHA-256 `fingerprint` (`sha256:<hex>`).
pub fn quincy_users_toml(fingerprint: &str) -> String {
    format!("[users.{QUINCY_USER}]\nauthorized_certs = [{}]\n", toml_str(fingerprint))
}

/// quincy's certificate fingerprint from `sha256sum` output: `sha256:<64 lowercase hex>`.
pub fn fingerprint_from_sha256sum(out: &str) -> Option<String> {
    let hex = out.split_whitespace().next()?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256:{}", hex.to_lowercase()))
}

// ---------------------------------------------------------------------------------------------
// Effects: the row's files and daemons, and setting up each peer.

/// A daemon of the row.
#[derive(Debug)]
struct Daemon {
    /// `kh1 wireguard-go`: host and program, the name its RSS is reported under.
    label: String,
    child: Child,
    log: PathBuf,
}

/// Everything a row starts or writes outside its namespaces: its directory, its daemons and
/// their control sockets. Dropping it stops and reaps the daemons and removes the rest.
#[derive(Debug)]
struct Run {
    /// `<lab dir>/peer-<name>`, once made by this run.
    dir: Option<PathBuf>,
    /// The lab directory, when this run made it (removed again if empty).
    made_lab_dir: Option<PathBuf>,
    daemons: Vec<Daemon>,
    /// Control sockets the daemons make; they do not remove them when killed.
    sockets: Vec<PathBuf>,
}

impl Run {
    fn new(names: &LabNames, peer: PeerTunnel) -> anyhow::Result<Run> {
        let mut run = Run { dir: None, made_lab_dir: None, daemons: Vec::new(), sockets: Vec::new() };
        let lab_dir = names.dir();
        if !lab_dir.exists() {
            if let Some(root) = lab_dir.parent() {
                std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
            }
            DirBuilder::new().mode(0o700).create(lab_dir).with_context(|| format!("creating {}", lab_dir.display()))?;
            run.made_lab_dir = Some(lab_dir.to_path_buf());
        }
        let dir = lab_dir.join(format!("peer-{}", peer.name()));
        DirBuilder::new().mode(0o700).create(&dir).with_context(|| {
            format!("creating {} (left by a crashed bench? weftctl lab --id {} down)", dir.display(), names.id())
        })?;
        run.dir = Some(dir);
        Ok(run)
    }

    fn dir(&self) -> anyhow::Result<&Path> {
        self.dir.as_deref().context("the row's directory is gone")
    }

    /// Writes a private file (mode 0600, never over an existing one).
    fn write_private(&self, name: &str, content: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir()?.join(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(content.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Starts `program args` in namespace `ns`, output to `<dir>/<label>.log`. Returns its pid.
    fn spawn(&mut self, label: &str, ns: &str, program: &Path, args: &[String]) -> anyhow::Result<u32> {
        let log = self.dir()?.join(format!("{}.log", label.replace(' ', "-")));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = netns::command_in(ns, program)?;
        netns::die_with_parent(&mut cmd);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for key in foreign_env(std::env::vars_os().map(|(k, _)| k)) {
            cmd.env_remove(key);
        }
        let child = cmd.spawn().with_context(|| format!("starting {} in {ns}", program.display()))?;
        let pid = child.id();
        self.daemons.push(Daemon { label: label.to_string(), child, log });
        Ok(pid)
    }

    /// An error naming the first daemon that has exited, with the end of its log.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for d in &mut self.daemons {
            if let Ok(Some(status)) = d.child.try_wait() {
                anyhow::bail!("{} exited ({status}); {}", d.label, plumbing::tail(&d.log, 15));
            }
        }
        Ok(())
    }

    /// Polls `ready` every 50 ms for at most `timeout`, failing early when a daemon exits.
    fn wait_for(&mut self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            self.check_alive().with_context(|| format!("waiting for {what}"))?;
            if Instant::now() >= deadline {
                anyhow::bail!("{what}: not within {} s; {}", timeout.as_secs(), self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of every daemon's log, for errors.
    fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(|d| format!("{}: {}", d.label, plumbing::tail(&d.log, 10)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            if matches!(d.child.try_wait(), Ok(None)) {
                if let Ok(pid) = i32::try_from(d.child.id()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for d in &mut self.daemons {
            while matches!(d.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(d.child.try_wait(), Ok(None)) {
                let _ = d.child.kill();
            }
            if let Err(e) = d.child.wait() {
                eprintln!("bench: waiting for {}: {e}", d.label);
            }
        }
        for s in &self.sockets {
            match std::fs::remove_file(s) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("bench: removing {}: {e}", s.display()),
            }
        }
        if let Some(dir) = &self.dir {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                eprintln!("bench: removing {}: {e}", dir.display());
            }
        }
        if let Some(dir) = &self.made_lab_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Environment variables that would override the daemons' arguments or config files
/// (wireguard-go and boringtun read `WG_*`, quincy merges `QUINCY_*` into its config).
fn foreign_env(keys: impl Iterator<Item = OsString>) -> Vec<OsString> {
    keys.filter(|k| k.to_str().is_some_and(|k| k.starts_with("WG_") || k.starts_with("QUINCY_"))).collect()
}

/// Runs a short command to completion within [`CMD_TIMEOUT`]; a non-zero exit is an error.
fn run_ok(cmd: &mut Command, input: Option<&[u8]>, what: &str) -> anyhow::Result<String> {
    let out = run_timeout(cmd, input, CMD_TIMEOUT, what)?;
    if !out.status.success() {
        anyhow::bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether device `dev` exists in `ns` with an IPv4 address.
fn has_ipv4(ns: &str, dev: &str) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns, "-o", "-4", "addr", "show", "dev", dev]);
    run_timeout(&mut cmd, None, CMD_TIMEOUT, "ip addr show")
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(" inet "))
}

/// A fresh WireGuard key pair: the private key in `<dir>/<name>.key` (0600) and the public key.
fn wg_keypair(run: &Run, name: &str) -> anyhow::Result<(PathBuf, String)> {
    let private = run_ok(Command::new("wg").arg("genkey"), None, "wg genkey")?;
    let private = private.trim();
    anyhow::ensure!(valid_wg_key(private), "wg genkey printed no key");
    let public = run_ok(Command::new("wg").arg("pubkey"), Some(format!("{private}\n").as_bytes()), "wg pubkey")?;
    let public = public.trim().to_string();
    anyhow::ensure!(valid_wg_key(&public), "wg pubkey printed no key");
    let path = run.write_private(&format!("{name}.key"), &format!("{private}\n"))?;
    Ok((path, public))
}

/// The name of a WireGuard row's daemon in labels and logs (the 2022 wireguard-go apart from
/// the current one).
fn daemon_label(peer: PeerTunnel) -> &'static str {
    match peer {
        PeerTunnel::Boringtun => "boringtun-cli",
        PeerTunnel::WireguardGo2022 => "wireguard-go-2022",
        PeerTunnel::WireguardGo | PeerTunnel::Quincy => "wireguard-go",
    }
}

/// A WireGuard daemon (`daemon`: wireguard-go or boringtun-cli) on both hosts; returns the
/// daemons to watch.
fn wireguard_up(
    peer: PeerTunnel,
    daemon: &Path,
    names: &LabNames,
    pair: &HostPair,
    run: &mut Run,
) -> anyhow::Result<Vec<Watched>> {
    let keys = [wg_keypair(run, "h1")?, wg_keypair(run, "h2")?];
    let mut watch = Vec::new();
    for (i, j, side) in [(1, 2, Side::Sender), (2, 1, Side::Receiver)] {
        let (ns, dev) = (pair.host_ns(i), device_name(peer, names.id(), i));
        let socket = Path::new(WG_SOCKET_DIR).join(format!("{dev}.sock"));
        anyhow::ensure!(
            !socket.exists(),
            "{} exists: another {peer} has device {dev} (a crashed bench? stop it and remove the socket)",
            socket.display()
        );
        let args = match peer {
            PeerTunnel::Boringtun => boringtun_args(&dev),
            _ => wireguard_go_args(&dev),
        };
        let label = format!("kh{i} {}", daemon_label(peer));
        let pid = run.spawn(&label, &ns, daemon, &args)?;
        run.sockets.push(socket.clone());
        run.wait_for(&format!("{label}'s control socket {}", socket.display()), START_TIMEOUT, || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        })?;
        let endpoint = SocketAddrV4::new(HostPair::underlay_ip(j), WG_PORT);
        let args = wg_set_args(&dev, &keys[i - 1].0, &keys[j - 1].1, &HostPair::pod_subnet(j), endpoint);
        run_ok(netns::command_in(&ns, "wg")?.args(&args), None, &format!("wg set {dev} in {ns}"))?;
        batch(
            &ns,
            &[format!("link set {dev} mtu {WG_MTU} up"), format!("route add {} dev {dev}", HostPair::pod_subnet(j))],
        )?;
        watch.push(Watched::new(label, pid, side));
    }
    Ok(watch)
}

/// quincy-server on host 2, quincy-client on host 1, host 1 routing pod 2's subnet into the
/// client's tun with masquerading; returns the daemons to watch.
fn quincy_up(names: &LabNames, pair: &HostPair, run: &mut Run) -> anyhow::Result<Vec<Watched>> {
    let dir = run.dir()?.to_path_buf();
    let pki_dir = dir.join("pki");
    let server_ip = HostPair::underlay_ip(2);
    let ca = pki::init_ca(&pki_dir, &pki::CaOptions::default()).context("quincy: making the row's CA")?;
    let server = pki::issue(
        &pki_dir,
        &pki_dir,
        &pki::IssueRequest { ips: vec![server_ip.into()], ..pki::IssueRequest::node("quincy-server") },
    )
    .context("quincy: issuing the server certificate")?;
    let client = pki::issue(&pki_dir, &pki_dir, &pki::IssueRequest::node("quincy-client"))
        .context("quincy: issuing the client certificate")?;
    let fingerprint = cert_fingerprint(&client.files.cert)?;
    let files = QuincyFiles {
        ca_cert: ca.files.cert,
        server_cert: server.files.cert,
        server_key: server.files.key,
        client_cert: client.files.cert,
        client_key: client.files.key,
        users: dir.join("users.toml"),
    };
    std::fs::write(&files.users, quincy_users_toml(&fingerprint))
        .with_context(|| format!("writing {}", files.users.display()))?;
    let bind = SocketAddrV4::new(server_ip, QUINCY_PORT);
    let (server_dev, client_dev) =
        (device_name(PeerTunnel::Quincy, names.id(), 2), device_name(PeerTunnel::Quincy, names.id(), 1));
    let server_toml = dir.join("server.toml");
    std::fs::write(&server_toml, quincy_server_toml(&files, &server_dev, bind))
        .with_context(|| format!("writing {}", server_toml.display()))?;
    let client_toml = dir.join("client.toml");
    std::fs::write(&client_toml, quincy_client_toml(&files, &client_dev, bind))
        .with_context(|| format!("writing {}", client_toml.display()))?;

    let (h1, h2) = (pair.host_ns(1), pair.host_ns(2));
    let config = |p: &Path| vec!["--config-path".to_string(), p.display().to_string()];
    let server_pid = run.spawn("kh2 quincy-server", &h2, Path::new("quincy-server"), &config(&server_toml))?;
    run.wait_for("quincy-server's tun and UDP socket", START_TIMEOUT, || {
        has_ipv4(&h2, &server_dev)
            && std::fs::read_to_string(format!("/proc/{server_pid}/net/udp")).is_ok_and(|t| udp_bound(&t, QUINCY_PORT))
    })?;
    let client_pid = run.spawn("kh1 quincy-client", &h1, Path::new("quincy-client"), &config(&client_toml))?;
    run.wait_for("quincy-client's tun (connected to the server)", TUNNEL_TIMEOUT, || has_ipv4(&h1, &client_dev))?;
    batch(&h1, &[format!("route add {} dev {client_dev}", HostPair::pod_subnet(2))])?;
    let masq = ["-w", "5", "-t", "nat", "-A", "POSTROUTING", "-o", &client_dev, "-j", "MASQUERADE"];
    run_ok(netns::command_in(&h1, "iptables")?.args(masq), None, &format!("iptables MASQUERADE in {h1}"))?;
    Ok(vec![
        Watched::new("kh1 quincy-client", client_pid, Side::Sender),
        Watched::new("kh2 quincy-server", server_pid, Side::Receiver),
    ])
}

/// quincy's fingerprint (`sha256:<hex>` of the DER) of the PEM certificate at `path`.
fn cert_fingerprint(path: &Path) -> anyhow::Result<String> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, parsed) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not a PEM certificate: {e}", path.display()))?;
    let out = run_ok(&mut Command::new("sha256sum"), Some(&parsed.contents), "sha256sum")?;
    fingerprint_from_sha256sum(&out).with_context(|| format!("sha256sum printed {out:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn peers_and_binaries() {
        let names: Vec<&str> = PeerTunnel::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["quincy", "wireguard-go", "wireguard-go-2022", "boringtun"]);
        assert!(PeerTunnel::WireguardGo.binaries().contains(&"wg"));
        assert_eq!(PeerTunnel::WireguardGo.binaries()[0], "wireguard-go", "the one first on PATH");
        assert_eq!(PeerTunnel::WireguardGo2022.binaries(), ["/usr/bin/wireguard-go", "wg"], "Debian bookworm's");
        assert!(PeerTunnel::ALL.iter().all(|p| p.superseded() == (*p == PeerTunnel::WireguardGo2022)));
        assert!(PeerTunnel::Boringtun.binaries().contains(&"wg"));
        assert_eq!(PeerTunnel::Quincy.binaries(), ["quincy-server", "quincy-client"]);
        assert_eq!(PeerTunnel::Boringtun.to_string(), "boringtun");
        assert!(missing(&[]).is_empty());
    }

    #[test]
    fn device_names_fit_and_differ() {
        for p in PeerTunnel::ALL {
            let (a, b) = (device_name(p, "abcdefghijkl", 1), device_name(p, "abcdefghijkl", 2));
            assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
            assert_ne!(a, b);
        }
        assert_eq!(device_name(PeerTunnel::WireguardGo, "pz", 1), "wgpz1");
        assert_eq!(device_name(PeerTunnel::Boringtun, "pz", 2), "btpz2");
        assert_eq!(device_name(PeerTunnel::Quincy, "7", 1), "qc71");
        assert_eq!(device_name(PeerTunnel::WireguardGo2022, "pz", 2), "wopz2");
        let tags: std::collections::HashSet<&str> = PeerTunnel::ALL.iter().map(|p| p.tag()).collect();
        assert_eq!(tags.len(), PeerTunnel::ALL.len(), "every peer's devices have names of their own");
        let daemons = [PeerTunnel::WireguardGo.tag(), PeerTunnel::WireguardGo2022.tag(), PeerTunnel::Boringtun.tag()];
        assert_eq!(crate::names::WG_DAEMON_TAGS, daemons, "lab down removes these daemons' sockets");
    }

    #[test]
    fn programs() {
        let version = "wireguard-go v0.0.20220316\n\nUserspace WireGuard daemon for linux-amd64.\n";
        let old = Path::new("/usr/bin/wireguard-go");
        assert_eq!(program_text(old, Some(old), Some(version)), "/usr/bin/wireguard-go (wireguard-go v0.0.20220316)");
        let real = Path::new("/usr/local/lib/weft-bench/wireguard-go_0.0.20231211-1+b9/wireguard-go");
        assert_eq!(
            program_text(Path::new("/usr/local/bin/wireguard-go"), Some(real), Some("\nwireguard-go v0.0.20230223\n")),
            "/usr/local/bin/wireguard-go -> /usr/local/lib/weft-bench/wireguard-go_0.0.20231211-1+b9/wireguard-go \
             (wireguard-go v0.0.20230223)"
        );
        assert_eq!(program_text(Path::new("/b/boringtun-cli"), None, None), "/b/boringtun-cli");
        assert_eq!(program_text(old, None, Some("")), "/usr/bin/wireguard-go");
        assert_eq!(daemon_label(PeerTunnel::WireguardGo2022), "wireguard-go-2022");
        assert_eq!(daemon_label(PeerTunnel::WireguardGo), "wireguard-go");
    }

    #[test]
    fn routes() {
        assert_eq!(route_dev("10.244.2.2 dev wgpz1 src 10.244.1.1 uid 0 \\    cache"), Some("wgpz1"));
        assert_eq!(route_dev("10.244.2.2 via 192.168.100.2 dev eth0 src 192.168.100.1"), Some("eth0"));
        assert_eq!(route_dev("unreachable"), None);
    }

    #[test]
    fn wireguard_args() {
        assert_eq!(wireguard_go_args("wgpz1"), ["-f", "wgpz1"]);
        assert_eq!(boringtun_args("btpz1"), ["-f", "--disable-drop-privileges", "-t", "2", "btpz1"]);
        let pubkey = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
        let a = wg_set_args(
            "wgpz1",
            Path::new("/run/weft-lab/pz/peer-wireguard-go/h1.key"),
            pubkey,
            "10.244.2.0/24",
            SocketAddrV4::new(Ipv4Addr::new(192, 168, 100, 2), WG_PORT),
        );
        assert_eq!(
            a.join(" "),
            "set wgpz1 listen-port 51820 private-key /run/weft-lab/pz/peer-wireguard-go/h1.key \
             peer xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg= allowed-ips 10.244.2.0/24 endpoint 192.168.100.2:51820"
        );
        assert!(valid_wg_key(pubkey));
        assert!(!valid_wg_key(""));
        assert!(!valid_wg_key("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg"));
        assert!(!valid_wg_key("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZq 8Dg="));
    }

    fn files() -> QuincyFiles {
        let d = Path::new("/run/weft-lab/pz/peer-quincy");
        QuincyFiles {
            ca_cert: d.join("pki/ca.pem"),
            server_cert: d.join("pki/quincy-server.pem"),
            server_key: d.join("pki/quincy-server.key"),
            client_cert: d.join("pki/quincy-client.pem"),
            client_key: d.join("pki/quincy-client.key"),
            users: d.join("users.toml"),
        }
    }

    #[test]
    fn quincy_configs() {
        let bind = SocketAddrV4::new(Ipv4Addr::new(192, 168, 100, 2), QUINCY_PORT);
        let s = quincy_server_toml(&files(), "qcpz2", bind);
        let want = "name = \"weft-bench\"\n\
            interface_name = \"qcpz2\"\n\
            bind_address = \"192.168.100.2\"\n\
            bind_port = 55555\n\
            tunnel_network = \"10.245.0.1/24\"\n\
            users_file = \"/run/weft-lab/pz/peer-quincy/users.toml\"\n\
            \n\
            [protocol]\n\
            mode = \"tls\"\n\
            certificate_file = \"/run/weft-lab/pz/peer-quincy/pki/quincy-server.pem\"\n\
            certificate_key_file = \"/run/weft-lab/pz/peer-quincy/pki/quincy-server.key\"\n\
            \n\
            [connection]\n\
            mtu = 1400\n\
            \n\
            [log]\n\
            level = \"info\"\n";
        assert_eq!(s, want, "\n{s}");
        let c = quincy_client_toml(&files(), "qcpz1", bind);
        let want = "connection_string = \"192.168.100.2:55555\"\n\
            \n\
            [protocol]\n\
            mode = \"tls\"\n\
            trusted_certificate_paths = [\"/run/weft-lab/pz/peer-quincy/pki/ca.pem\"]\n\
            client_certificate_file = \"/run/weft-lab/pz/peer-quincy/pki/quincy-client.pem\"\n\
            client_certificate_key_file = \"/run/weft-lab/pz/peer-quincy/pki/quincy-client.key\"\n\
            \n\
            [connection]\n\
            mtu = 1400\n\
            \n\
            [network]\n\
            interface_name = \"qcpz1\"\n\
            routes = []\n\
            \n\
            [log]\n\
            level = \"info\"\n";
        assert_eq!(c, want, "\n{c}");
        let fp = "sha256:2dba01529210e4e828265d56329df1b85a8f9aedccdd3fef67ab502b57cb0029";
        assert_eq!(quincy_users_toml(fp), format!("[users.bench]\nauthorized_certs = [\"{fp}\"]\n"));
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }

    #[test]
    fn fingerprints() {
        let out = "2DBA01529210e4e828265d56329df1b85a8f9aedccdd3fef67ab502b57cb0029  -\n";
        assert_eq!(
            fingerprint_from_sha256sum(out).as_deref(),
            Some("sha256:2dba01529210e4e828265d56329df1b85a8f9aedccdd3fef67ab502b57cb0029")
        );
        assert_eq!(fingerprint_from_sha256sum(""), None);
        assert_eq!(fingerprint_from_sha256sum("abc  -"), None);
    }

    #[test]
    fn udp_sockets() {
        let udp = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            \x20 123: 0264A8C0:D903 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0 0\n";
        assert!(udp_bound(udp, QUINCY_PORT));
        assert!(!udp_bound(udp, WG_PORT));
        assert!(!udp_bound("header only\n", QUINCY_PORT));
    }

    #[test]
    fn foreign_environment() {
        let keys = ["PATH", "WG_THREADS", "QUINCY_LOG__LEVEL", "HOME"].map(OsString::from);
        assert_eq!(foreign_env(keys.into_iter()), ["WG_THREADS", "QUINCY_LOG__LEVEL"].map(OsString::from));
    }
}
