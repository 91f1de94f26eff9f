//! The wireguard backend on the namespace lab (real etcd, real agents, the machine's kernel).
//! Which of two outcomes is right is decided up front from the kernel, never skipped:
//! - a kernel without WireGuard (no `/sys/module/wireguard`, and `modprobe wireguard` fails):
//!   every agent refuses the backend with an error naming the module and what to do, in its
//!   log, its status and /readyz, keeps running, claims no subnet and makes no device;
//! - a kernel with WireGuard: pods ping across nodes through `weft-wg0`.
//!
//! The lab's Drop removes everything.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use weft_lab::Lab;
use weft_tests::ops::http_get;
use weft_tests::*;

/// What the agent says when the kernel has no WireGuard (agent/src/kernel/wireguard.rs).
const REFUSAL: &str = "the wireguard backend cannot run on this node: this kernel has no WireGuard: the `wireguard` \
                       kernel module is not loaded and could not be loaded (load it with `modprobe wireguard` on the \
                       host, or use another backend: vxlan or quic)";

/// Whether this kernel has WireGuard: loaded (or built in), or loadable.
fn kernel_has_wireguard() -> bool {
    Path::new("/sys/module/wireguard").exists()
        || Command::new("modprobe")
            .arg("wireguard")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

fn links(lab: &Lab, i: usize) -> Vec<String> {
    let out = run_ok(lab, &format!("n{i}"), &["ip", "-j", "link", "show"]);
    let v: Value = serde_json::from_str(&out).expect("ip -j link is JSON");
    v.as_array()
        .expect("array")
        .iter()
        .filter_map(|l| l.get("ifname").and_then(Value::as_str).map(str::to_string))
        .collect()
}

#[test]
fn the_wireguard_backend_runs_where_the_kernel_has_it_and_is_refused_naming_the_module_where_not() {
    require_root();
    if kernel_has_wireguard() {
        works(&lab("wg1", 2, 1, |s| s.backend = weft_config::Backend::WireGuard));
    } else {
        // The agents are started by hand: they never become ready, which `up` would wait for.
        let lab = lab("wg1", 2, 1, |s| {
            s.backend = weft_config::Backend::WireGuard;
            s.deferred_agents = 2;
        });
        refused(&lab);
    }
}

fn works(lab: &Lab) {
    let failures = cross_node_ping_failures_all(lab, 2, &["p1"]);
    assert!(failures.is_empty(), "pods cannot reach each other over wireguard: {failures:?}");
    for i in 1..=2 {
        let routes = weft_owned(route_table(lab, i));
        assert!(
            !routes.is_empty() && routes.iter().all(|r| r.contains("dev weft-wg0")),
            "n{i}'s routes to its peer do not go through weft-wg0: {routes:?}"
        );
        let out = run_ok(lab, &format!("n{i}"), &["ip", "-d", "-j", "link", "show", "weft-wg0"]);
        assert!(out.contains("\"info_kind\":\"wireguard\""), "n{i}: weft-wg0 is not a WireGuard device: {out}");
    }
}

fn refused(lab: &Lab) {
    for i in 1..=2 {
        lab.start_agent(i).expect("agent starts");
    }
    let readyz: SocketAddr = "127.0.0.1:9472".parse().expect("literal");
    for i in 1..=2 {
        let mut last = None;
        let seen = wait_for(Duration::from_secs(30), || {
            last = lab.node_status(i).agent;
            last.as_ref().and_then(|s| s.last_error.as_deref()).is_some_and(|e| e.contains("`wireguard` kernel module"))
        });
        assert!(seen.is_some(), "n{i} never said the wireguard module is missing: {last:?}");
        let st = last.expect("status");
        assert_eq!(st.last_error.as_deref(), Some(REFUSAL), "n{i}'s status");
        assert!(!st.ready && st.subnet.is_none() && st.subnet6.is_none(), "n{i} claimed a subnet: {st:?}");
        assert!(lab.node_status(i).running, "n{i}'s agent must keep running (no panic, no exit)");
        let (code, body) = http_get(&lab.node_ns(i), readyz, "/readyz").expect("readyz");
        assert_eq!(code, 503, "n{i}: {body}");
        assert!(body.contains(&format!("no subnet held yet: {REFUSAL}")), "n{i}'s /readyz: {body}");
        let log = std::fs::read_to_string(lab.node_paths(i).log).expect("agent log");
        assert!(log.contains(REFUSAL), "n{i}'s log does not say it:\n{log}");
        assert!(!log.contains("panicked"), "n{i}'s agent panicked:\n{log}");
        assert!(!links(lab, i).iter().any(|l| l == "weft-wg0"), "n{i} made a device anyway");
    }
}
