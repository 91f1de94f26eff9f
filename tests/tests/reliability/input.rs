//! Section 7: broken agent configs and bad weftctl arguments (no root needed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn bin(name: &str) -> PathBuf {
    let dir = weft_lab::bins::bin_dir().expect("binary directory");
    let p = dir.join(name);
    assert!(p.is_file(), "{} missing: run cargo build --workspace --bins first", p.display());
    p
}

/// Runs `cmd` in a network namespace of its own when possible (nothing it does could reach any
/// real network), with no WEFT_* variables, killing it after 10 s. Returns (exit code, stderr).
fn run_isolated(mut cmd: Command) -> (Option<i32>, String) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WEFT_") || k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "off").stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    cmd.stderr(std::process::Stdio::piped());
    use std::os::unix::process::CommandExt;
    // SAFETY: only the unshare system call runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            use nix::sched::{unshare, CloneFlags};
            if unshare(CloneFlags::CLONE_NEWNET).is_err() {
                let _ = unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const GOOD_TOML: &str = r#"node_name = "node-a"
node_id = "id-a"
[etcd]
endpoints = ["https://10.0.0.5:2379"]
ca_file = "/etc/weft/ca.pem"
[paths]
state_dir = "@DIR@/state"
subnet_env = "@DIR@/subnet.env"
socket = "@DIR@/agent.sock"
pid_file = "@DIR@/agent.pid"
"#;

/// (what is wrong, the file, the exact stderr line after `weft-agent: FILE: `).
fn broken_configs() -> Vec<(&'static str, String, &'static str)> {
    let good = GOOD_TOML.to_string();
    let edit = |from: &str, to: &str| {
        assert!(good.contains(from), "{from}");
        good.replacen(from, to, 1)
    };
    vec![
        ("missing node_name", edit("node_name = \"node-a\"\n", ""), "node_name: required, expected a string"),
        ("node_name of the wrong type", edit("\"node-a\"", "5"), "node_name: expected a string, found an integer"),
        (
            "node_name not a name",
            edit("\"node-a\"", "\"Node A\""),
            "node_name: expected lowercase letters, digits, '-', '_' or '.', 1 to 63 characters, found \"Node A\"",
        ),
        (
            "missing [etcd]",
            edit("[etcd]\nendpoints = [\"https://10.0.0.5:2379\"]\nca_file = \"/etc/weft/ca.pem\"\n", ""),
            "etcd.endpoints: expected at least one URL",
        ),
        (
            "endpoints of the wrong type",
            edit("[\"https://10.0.0.5:2379\"]", "\"https://10.0.0.5:2379\""),
            "etcd.endpoints: expected an array of strings, found a string",
        ),
        (
            "endpoint without a scheme",
            edit("https://10.0.0.5:2379", "10.0.0.5:2379"),
            "etcd.endpoints[0]: expected a URL like http://10.0.0.5:2379, found \"10.0.0.5:2379\"",
        ),
        (
            "plain http with a CA",
            edit("https://10.0.0.5:2379", "http://10.0.0.5:2379"),
            "etcd.endpoints: expected https:// URLs when ca_file is set",
        ),
        (
            "public_ip not an address",
            format!("{good}[underlay]\npublic_ip = \"10.0.0.300\"\n"),
            "underlay.public_ip: expected an IPv4 address like 192.0.2.10, found \"10.0.0.300\"",
        ),
        (
            "public_ip given as a CIDR",
            format!("{good}[underlay]\npublic_ip = \"10.0.0.0/24\"\n"),
            "underlay.public_ip: expected an IPv4 address like 192.0.2.10, found \"10.0.0.0/24\"",
        ),
        (
            "public_ip not unicast",
            format!("{good}[underlay]\npublic_ip = \"224.0.0.1\"\n"),
            "underlay.public_ip: expected a unicast address other nodes can reach, found 224.0.0.1",
        ),
        (
            "bridge MTU too small",
            format!("{good}[bridge]\nmtu = 100\n"),
            "bridge.mtu: expected an integer from 576 to 65535, found 100",
        ),
        (
            "reconcile period zero",
            format!("{good}[timers]\nreconcile_secs = 0\n"),
            "timers.reconcile_secs: expected an integer from 1 to 3600, found 0",
        ),
        (
            "relative path",
            edit("\"@DIR@/state\"", "\"state\""),
            "paths.state_dir: expected an absolute path, found \"state\"",
        ),
        (
            "unknown key with a suggestion",
            format!("node_nme = \"x\"\n{good}"),
            "node_nme: unknown key (did you mean `node_name`?)",
        ),
        (
            "unknown key in a section",
            edit("ca_file =", "ca_fil ="),
            "etcd.ca_fil: unknown key (did you mean `ca_file`?)",
        ),
        ("invalid TOML", format!("{good}[timers\n"), "invalid TOML (line 11, column 8): unclosed table, expected `]`"),
        (
            "duplicate pod",
            format!("{good}[[pods]]\nname = \"web\"\n[[pods]]\nname = \"web\"\nnetns = \"other\"\n"),
            "pods[1].name: duplicate pod name \"web\" (also pods[0])",
        ),
        (
            "quic without its files",
            format!("{good}[quic]\nport = 7946\n"),
            "quic.ca_file: required in [quic], expected an absolute path",
        ),
        (
            "port out of range",
            format!("{good}[quic]\nport = 70000\n"),
            "quic.port: expected an integer from 1 to 65535, found 70000",
        ),
        (
            "data path threads past port 65535",
            format!("{good}[quic]\nca_file = \"/ca.pem\"\ncert_file = \"/n.pem\"\nkey_file = \"/n.key\"\nport = 65535\nthreads = 2\n"),
            "quic.threads: 2 threads listen on UDP ports 65535 to 65536, past 65535 (lower quic.port or quic.threads)",
        ),
    ]
}

#[test]
fn r7_broken_agent_configs_exit_2_with_one_exact_line() {
    let dir = std::env::temp_dir().join(format!("weft-r7-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let agent = bin("weft-agent");
    let mut failures = Vec::new();
    let cases = broken_configs();
    for (what, text, want) in &cases {
        let file = dir.join("agent.toml");
        std::fs::write(&file, text.replace("@DIR@", &dir.to_string_lossy())).expect("write");
        let mut cmd = Command::new(&agent);
        cmd.arg("--config").arg(&file);
        let (code, stderr) = run_isolated(cmd);
        let want = format!("weft-agent: {}: {want}\n", file.display());
        if code != Some(2) || stderr != want {
            failures.push(format!("{what}: exit {code:?}, stderr {stderr:?}, expected exit 2 and {want:?}"));
        }
    }
    // A file that is not there.
    let missing = dir.join("missing.toml");
    let mut cmd = Command::new(&agent);
    cmd.arg("--config").arg(&missing);
    let (code, stderr) = run_isolated(cmd);
    let want = format!("weft-agent: {}: cannot read: No such file or directory (os error 2)\n", missing.display());
    if code != Some(2) || stderr != want {
        failures.push(format!("missing file: exit {code:?}, stderr {stderr:?}"));
    }
    // The good file is accepted (checked with --check so nothing starts).
    let file = dir.join("good.toml");
    std::fs::write(&file, GOOD_TOML.replace("@DIR@", &dir.to_string_lossy())).expect("write");
    let mut cmd = Command::new(&agent);
    cmd.arg("--config").arg(&file).arg("--check");
    let (code, stderr) = run_isolated(cmd);
    assert_eq!((code, stderr.as_str()), (Some(0), ""), "the base config must be valid");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len() + 1, failures.join("\n"));
    eprintln!("measured: r7: {} broken agent.toml files, each exit 2 with its exact one-line message", cases.len() + 1);
}

/// weftctl: bad arguments exit 2 with one line naming the flag (clap's own parse errors add
/// its "For more information, try '--help'." hint after a blank line).
#[test]
fn r7_bad_weftctl_arguments_exit_2_with_one_exact_line() {
    let ctl = bin("weftctl");
    let e = ["--etcd", "https://192.0.2.1:2379"];
    let nb = ["--agent-bin", "/nonexistent/weft-agent"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&e[..], &["network", "init", "--cidr", "10.244.0.1/16", "--subnet-len", "24", "--backend", "host-gw"]].concat(),
            "error: --cidr: 10.244.0.1/16 has host bits set (did you mean 10.244.0.0/16?)",
        ),
        (
            [&e[..], &["network", "init", "--cidr", "10.244.0.0/16", "--subnet-len", "40", "--backend", "host-gw"]].concat(),
            "error: --subnet-len: expected a prefix length from 17 to 30 (longer than the cluster's /16), found 40",
        ),
        (
            [&e[..], &["network", "init", "--cidr", "10.244.0.0/33", "--subnet-len", "24", "--backend", "host-gw"]].concat(),
            "error: --cidr: expected an IPv4 CIDR like 10.244.0.0/16, found \"10.244.0.0/33\"",
        ),
        (
            [&e[..], &["network", "init", "--cidr", "10.244.0.0/16", "--subnet-len", "24", "--backend", "ipip"]].concat(),
            "error: invalid value 'ipip' for '--backend <BACKEND>': expected one of host-gw, quic, vxlan, wireguard, auto, found \"ipip\"",
        ),
        (
            [&e[..], &["network", "init", "--cidr", "10.244.0.0/16", "--subnet-len", "400", "--backend", "quic"]].concat(),
            "error: invalid value '400' for '--subnet-len <SUBNET_LEN>': 400 is not in 0..=255",
        ),
        (vec!["--etcd", "10.0.0.5:2379", "nodes"], "error: --etcd: expected a URL like http://10.0.0.5:2379, found \"10.0.0.5:2379\""),
        (vec!["nodes"], "error: --etcd: required (or set WEFT_ETCD), e.g. --etcd http://10.0.0.5:2379"),
        (
            vec!["--network", "Bad Net", "nodes"],
            "error: --network: expected lowercase letters, digits, '-', '_' or '.', 1 to 63 characters, found \"Bad Net\"",
        ),
        ([&e[..], &["node", "evict", "Bad Name"]].concat(), "error: NAME: expected a node name, found \"Bad Name\""),
        (
            vec!["pod", "add", "Web"],
            "error: NAME: expected lowercase letters, digits, '-', '_' or '.', 1 to 63 characters, found \"Web\"",
        ),
        ([&["lab", "--id", "r7x", "up", "--nodes", "0"][..], &nb[..]].concat(), "error: --nodes: expected 1 to 200, found 0"),
        (
            [&["lab", "--id", "r7x", "up", "--nodes", "2", "--etcd-members", "7"][..], &nb[..]].concat(),
            "error: --etcd-members: expected 1 to 5, found 7",
        ),
        (
            [&["lab", "--id", "r7x", "up", "--nodes", "2", "--cidr", "10.244.0.0/26", "--subnet-len", "24"][..], &nb[..]].concat(),
            "error: --subnet-len: expected a prefix length from 27 to 30 (longer than the cluster's /26), found 24",
        ),
        (
            [&["lab", "--id", "r7x", "up", "--nodes", "2", "--deferred-agents", "3"][..], &nb[..]].concat(),
            "error: --deferred-agents: expected at most --nodes (2), found 3",
        ),
        (
            [&["lab", "--id", "Bad", "up", "--nodes", "1"][..], &nb[..]].concat(),
            "error: --id: expected 1 to 12 lowercase letters or digits, found \"Bad\"",
        ),
        (
            vec!["lab", "--id", "r7x", "exec", "x1", "--", "true"],
            "error: TARGET: expected a target like n1, n1/p2, c1, etcd, u or ext, found \"x1\"",
        ),
        (vec!["lab", "--id", "r7x", "agent", "start", "p1"], "error: NODE: expected a node like n1, found \"p1\""),
    ];
    let mut failures = Vec::new();
    for (args, want) in &cases {
        let mut cmd = Command::new(&ctl);
        cmd.args(args);
        let (code, stderr) = run_isolated(cmd);
        let first = stderr.lines().next().unwrap_or_default();
        let rest = stderr.split_once('\n').map(|(_, r)| r).unwrap_or_default();
        let rest_ok = rest.is_empty() || rest == "\nFor more information, try '--help'.\n";
        if code != Some(2) || first != *want || !rest_ok {
            failures.push(format!(
                "weftctl {}: exit {code:?}, stderr {stderr:?}, expected exit 2 and {want:?}",
                args.join(" ")
            ));
        }
    }
    assert!(!Path::new("/run/weft-lab/r7x").exists(), "a refused lab up made files");
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len(), failures.join("\n"));
    eprintln!("measured: r7: {} bad weftctl invocations, each exit 2 with its exact message", cases.len());
}
