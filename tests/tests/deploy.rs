//! The deploy/ files: the systemd unit verified by `systemd-analyze verify` (with ExecStart
//! pointing at the built binary, since these machines run no systemd as PID 1), install.sh
//! staging into a DESTDIR, and the example agent.toml as the agent reads it. The readiness
//! notification itself is tested against a live agent in tests/ops.rs.

use std::path::{Path, PathBuf};
use std::process::Command;
use weft_config::AgentConfig;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = weft_lab::bins::default_bin_dir(&exe).expect("bin dir");
    for b in ["weft-agent", "weftctl", "weft-cni"] {
        assert!(dir.join(b).exists(), "{} missing: run cargo build --workspace --bins first", dir.join(b).display());
    }
    dir
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("weft-deploy-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `systemd-analyze verify` on `unit`: exit 0 and not a single warning.
fn verify(unit: &Path) {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(analyze.exists(), "systemd-analyze missing: apt-get install systemd (deploy/install-deps.sh does)");
    let out = Command::new(analyze).arg("verify").arg(unit).output().expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {}: {}\n{stderr}",
        unit.display(),
        out.status
    );
}

#[test]
fn the_unit_verifies_with_the_built_binary() {
    let text = std::fs::read_to_string(repo().join("deploy/systemd/weft-agent.service")).expect("unit");
    let agent = bin_dir().join("weft-agent");
    let scratch = Scratch::new("unit");
    let unit = scratch.0.join("weft-agent.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/weft-agent", &agent.display().to_string())).expect("write");
    verify(&unit);

    // What the unit promises, line by line.
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    for want in [
        "Type=notify",
        "NotifyAccess=main",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "WatchdogSec=60s",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_ADMIN",
        "NoNewPrivileges=yes",
        "RestrictNamespaces=net",
        "ExecStart=/usr/local/bin/weft-agent --config /etc/weft/agent.toml",
    ] {
        assert!(lines.contains(&want), "unit lacks {want:?}");
    }
    // Options that would give the agent a private mount namespace hide the pod namespaces it
    // bind-mounts under /run/netns from everyone else.
    for banned in
        ["ProtectSystem=", "PrivateTmp=", "PrivateMounts=", "ProtectHome=", "PrivateDevices=", "ReadWritePaths="]
    {
        assert!(!lines.iter().any(|l| l.starts_with(banned)), "unit must not set {banned}");
    }
    // And a broken copy is caught (so the check above means something).
    let broken = scratch.0.join("broken.service");
    std::fs::write(&broken, text.replace("/usr/local/bin/weft-agent", "/nonexistent/weft-agent")).expect("write");
    let out = Command::new("systemd-analyze").arg("verify").arg(&broken).output().expect("systemd-analyze");
    assert!(!out.status.success(), "verify accepted a unit whose binary does not exist");
}

#[test]
fn install_stages_everything_into_destdir() {
    let bins = bin_dir();
    let scratch = Scratch::new("install");
    let dest = &scratch.0;
    let out = Command::new(repo().join("deploy/install.sh"))
        .arg("--bin-dir")
        .arg(&bins)
        .env("DESTDIR", dest)
        .output()
        .expect("install.sh");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &str| std::fs::metadata(dest.join(p)).unwrap_or_else(|e| panic!("{p}: {e}")).permissions().mode() & 0o7777;
    for (p, m) in [
        ("usr/local/bin/weft-agent", 0o755),
        ("usr/local/bin/weftctl", 0o755),
        ("opt/cni/bin/weft-cni", 0o755),
        ("etc/systemd/system/weft-agent.service", 0o644),
        ("etc/weft/agent.toml", 0o644),
        ("etc/weft/agent.toml.example", 0o644),
        ("etc/weft/pki", 0o700),
        ("etc/cni/net.d/10-weft.conflist", 0o644),
    ] {
        assert_eq!(mode(p), m, "mode of {p}");
    }
    // The staged unit verifies once ExecStart points into the stage.
    let unit = dest.join("etc/systemd/system/weft-agent.service");
    let staged = std::fs::read_to_string(&unit).expect("unit");
    let agent = dest.join("usr/local/bin/weft-agent");
    std::fs::write(&unit, staged.replace("/usr/local/bin/weft-agent", &agent.display().to_string())).expect("write");
    verify(&unit);
    // A second run keeps an edited agent.toml.
    std::fs::write(dest.join("etc/weft/agent.toml"), "node_name = \"edited\"\n").expect("edit");
    let again = Command::new(repo().join("deploy/install.sh"))
        .arg("--bin-dir")
        .arg(&bins)
        .env("DESTDIR", dest)
        .output()
        .expect("run");
    assert!(again.status.success());
    assert_eq!(std::fs::read_to_string(dest.join("etc/weft/agent.toml")).expect("read"), "node_name = \"edited\"\n");
}

#[test]
fn the_example_config_is_what_a_node_runs() {
    let path = repo().join("deploy/agent.toml.example");
    let c = AgentConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.node_name, "node-a");
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9472".parse().expect("lit")));
    assert!(c.probes.enabled);
    assert!(c.etcd.tls.is_some() && c.quic.is_some());
    // The binary agrees (what ExecStartPre runs).
    let out =
        Command::new(bin_dir().join("weft-agent")).arg("--config").arg(&path).arg("--check").output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // And the conflist names weft-cni first, with the default agent socket.
    let list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/cni/10-weft.conflist")).expect("conflist"))
            .expect("json");
    assert_eq!(list["plugins"][0]["type"], "weft-cni");
    assert_eq!(list["plugins"][0]["socket"], c.paths.socket.display().to_string());
}

#[test]
fn the_vm_guide_config_is_an_agent_toml() {
    // The agent.toml that deploy/vm/user-data-node.yaml writes, as the agent parses it: the
    // same format the lab generates for its nodes.
    let text = user_data_file("user-data-node.yaml", "/etc/weft/agent.toml");
    let c = AgentConfig::parse("user-data-node.yaml agent.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(c.node_name, "node-a");
    assert_eq!(c.etcd.endpoints, vec!["https://10.0.0.5:2379".to_string()]);
    assert_eq!(c.metrics.listen, Some("0.0.0.0:9472".parse().expect("lit")));
    assert!(c.quic.is_some());
    assert!(c.bootstrap.is_some(), "the guide's nodes join with a token");
}

/// The content of the file at `path` that the cloud-init user-data `name` (in deploy/vm/)
/// writes.
fn user_data_file(name: &str, path: &str) -> String {
    let yaml = std::fs::read_to_string(repo().join("deploy/vm").join(name)).expect("user-data");
    assert!(yaml.starts_with("#cloud-config\n"));
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("- path: {path}"));
    assert!(lines.next().is_some(), "no {path} in {name}");
    let body: Vec<&str> = lines
        .skip_while(|l| l.trim() != "content: |")
        .skip(1)
        .take_while(|l| l.starts_with("      "))
        .map(|l| &l[6..])
        .collect();
    body.join("\n")
}

#[test]
fn the_vm_guide_controller_config_is_a_controller_toml() {
    let text = user_data_file("user-data-etcd.yaml", "/etc/weft/controller.toml");
    let c = weft_config::controller::ControllerConfig::parse("user-data-etcd.yaml controller.toml", &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(c.etcd.endpoints, vec!["https://10.0.0.5:2379".to_string()]);
    let b = c.bootstrap.expect("the guide's controller serves joins");
    assert_eq!(b.listen, "10.0.0.5:9651".parse().expect("lit"));
    assert_eq!(b.ca_dir, Path::new("/etc/weft/pki"));
}
