//! `lab down`: undo everything a lab made, also after a crash, carrying on past every failure
//! and reporting all of them at the end.

use super::docker;
use super::names::{tunnel_device, LabNames, WG_DAEMON_TAGS, WG_SOCKET_DIR};
use super::netns::{self, ns_id};
use super::node;
use super::procs;
use super::state::{LabState, ProcRecord, StateError};
pub use super::teardown::DownReport;
use std::time::Duration;

/// Time a controller, an agent or etcd gets to exit after SIGTERM before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// Tears down lab `names`: its processes, then its nodes (each by its kind, from state.json),
/// then whatever namespace of the lab is left. `gone(pid)` tells whether a pid has exited (a caller that is the
/// parent reaps it there; others pass a /proc check).
pub fn teardown(names: &LabNames, mut gone: impl FnMut(u32) -> bool) -> DownReport {
    let mut report = DownReport::default();
    let state = match LabState::load(&names.state_file()) {
        Ok(s) => Some(s),
        Err(StateError::Read { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            report.errors.push(format!("{e}; no process recorded in it was stopped"));
            None
        }
    };
    // Docker first: removing its containers calls the plugin of the agents, still running.
    for i in docker_nodes(names) {
        docker::teardown_node(names, i, &mut gone, &mut report);
    }
    if let Some(state) = &state {
        stop_processes(names, state, gone, &mut report);
    }
    warn_leftovers(names, &mut report);
    for path in remove_stale_sockets(names.id()) {
        report.warnings.push(format!("removed {path}, left by a killed bench"));
    }
    if let Some(state) = &state {
        for i in 1..=state.spec.nodes {
            node::node(&state.spec, names, i).destroy(&mut report);
        }
    }
    remove_namespaces(names, &mut report);
    remove_netns_etc(names, std::path::Path::new(NETNS_ETC), &mut report);
    report.remove_dir(&names.vm_files_dir());
    report.remove_dir(names.dir());
    report
}

/// Nodes of the lab that have a docker directory (found on disk: state.json may be gone).
fn docker_nodes(names: &LabNames) -> Vec<usize> {
    let Ok(rd) = std::fs::read_dir(names.dir()) else { return Vec::new() };
    let mut found: Vec<usize> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix('n')).and_then(|k| k.parse::<usize>().ok()))
        .filter(|i| *i >= 1 && docker::DockerPaths::new(names, *i).dir.is_dir())
        .collect();
    found.sort_unstable();
    found
}

/// Removes the WireGuard control sockets a killed bench of lab `id` left behind (a SIGKILLed
/// weftctl runs no guard; its daemons die with it but their sockets stay). Returns what was
/// removed. Only names this lab's bench rows use are touched.
fn remove_stale_sockets(id: &str) -> Vec<String> {
    let mut removed = Vec::new();
    for tag in WG_DAEMON_TAGS {
        for i in 1..=2 {
            let path = std::path::Path::new(WG_SOCKET_DIR).join(format!("{}.sock", tunnel_device(tag, id, i)));
            if std::fs::remove_file(&path).is_ok() {
                removed.push(path.display().to_string());
            }
        }
    }
    removed
}

fn stop_processes(names: &LabNames, state: &LabState, mut gone: impl FnMut(u32) -> bool, report: &mut DownReport) {
    let (outside, inside): (Vec<ProcRecord>, Vec<ProcRecord>) =
        state.processes().into_iter().partition(|p| !names.owns_ns(&p.netns));
    for p in outside {
        report.errors.push(format!("not signalling pid {}: its namespace {} is not one of this lab's", p.pid, p.netns));
    }
    // Controllers first (they resign through etcd, and must not see the agents go), then
    // agents and VMs (QEMU; their agents would only retry against a vanished etcd), then etcd.
    let (controllers, rest): (Vec<ProcRecord>, Vec<ProcRecord>) =
        inside.into_iter().partition(|p| state.controllers.values().any(|c| c == p));
    let (agents, etcd): (Vec<ProcRecord>, Vec<ProcRecord>) =
        rest.into_iter().partition(|p| state.agents.values().chain(state.vms.values()).any(|a| a == p));
    for group in [controllers, agents, etcd] {
        let (signalled, errors) = procs::terminate(&group, GRACE, &mut gone);
        report.signalled.extend(signalled);
        report.errors.extend(errors);
    }
}

/// Processes still inside a lab namespace that state.json does not record: not killed (they
/// are not known to be ours) but named, since they keep the namespace alive.
fn warn_leftovers(names: &LabNames, report: &mut DownReport) {
    let Ok(all) = netns::list() else { return };
    let ids: Vec<_> = all.iter().filter(|n| names.owns_ns(n)).filter_map(|n| ns_id(n)).collect();
    if ids.is_empty() {
        return;
    }
    for (pid, comm) in procs::find_in_namespaces(&ids) {
        report.warnings.push(format!(
            "pid {pid} ({comm}) still runs in a namespace of lab {}; not recorded, not killed",
            names.id()
        ));
    }
}

fn remove_namespaces(names: &LabNames, report: &mut DownReport) {
    let all = match netns::list() {
        Ok(all) => all,
        Err(e) => {
            report.errors.push(e.to_string());
            return;
        }
    };
    // Pods first, nodes and the rest after (order does not matter to the kernel; it reads well).
    let mut mine: Vec<String> = all.into_iter().filter(|n| names.owns_ns(n)).collect();
    mine.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for ns in mine {
        match netns::remove(&ns) {
            Ok(()) => report.namespaces_removed.push(ns),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
}

/// Where the lab's agents write their pods' resolv.conf (their default `paths.netns_etc`).
pub const NETNS_ETC: &str = "/etc/netns";

/// Removes the per-namespace directories of the lab's namespaces under `etc` (an agent killed
/// with SIGKILL, or stopped with SIGTERM, leaves its pods' resolv.conf behind). Only
/// directories named like this lab's namespaces, holding nothing but files.
fn remove_netns_etc(names: &LabNames, etc: &std::path::Path, report: &mut DownReport) {
    let Ok(entries) = std::fs::read_dir(etc) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !names.owns_ns(&name) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        let files: Vec<_> =
            std::fs::read_dir(&path).map(|d| d.flatten().map(|f| f.path()).collect()).unwrap_or_default();
        for f in files {
            if let Err(err) = std::fs::remove_file(&f) {
                report.errors.push(format!("removing {}: {err}", f.display()));
            }
        }
        if let Err(err) = std::fs::remove_dir(&path) {
            report.errors.push(format!("removing {}: {err}", path.display()));
        }
    }
    // The agents made the directory itself when it was missing; an empty one goes (it fails,
    // harmlessly, when anything else is in it).
    let _ = std::fs::remove_dir(etc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_labs_netns_dirs_are_removed() {
        let etc = std::env::temp_dir().join(format!("weft-lab-netns-etc-{}", std::process::id()));
        for d in ["weft77-n1-p1", "weft7-n1-p1", "other"] {
            std::fs::create_dir_all(etc.join(d)).expect("mkdir");
            std::fs::write(etc.join(d).join("resolv.conf"), "x").expect("write");
        }
        let names = LabNames::new("77").expect("id");
        let mut report = DownReport::default();
        remove_netns_etc(&names, &etc, &mut report);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(!etc.join("weft77-n1-p1").exists());
        assert!(etc.join("weft7-n1-p1/resolv.conf").exists() && etc.join("other/resolv.conf").exists());
        std::fs::remove_dir_all(&etc).expect("cleanup");
        std::fs::create_dir_all(&etc).expect("mkdir");
        remove_netns_etc(&names, &etc, &mut report);
        assert!(!etc.exists(), "an empty directory goes");
    }

    #[test]
    fn report_result() {
        assert!(DownReport::default().into_result().is_ok());
        let r = DownReport { errors: vec!["a".into(), "b".into()], ..DownReport::default() };
        assert_eq!(r.into_result().expect_err("errors").to_string(), "lab down finished with 2 error(s): a; b");
    }

    #[test]
    fn down_of_a_lab_that_never_existed_is_a_no_op() {
        let root = std::env::temp_dir().join(format!("weftctl-down-{}", std::process::id()));
        let names = LabNames::with_root("zz9", &root).expect("id");
        let r = teardown(&names, |_| true);
        assert!(r.is_ok(), "{r:?}");
        assert!(r.namespaces_removed.is_empty());
    }

    #[test]
    fn unreadable_state_is_reported_and_the_rest_goes_on() {
        let root = std::env::temp_dir().join(format!("weftctl-down-bad-{}", std::process::id()));
        let names = LabNames::with_root("zz8", &root).expect("id");
        std::fs::create_dir_all(names.dir()).expect("dir");
        std::fs::write(names.state_file(), "{").expect("write");
        let r = teardown(&names, |_| true);
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(r.errors[0].contains("not a lab state file"), "{r:?}");
        assert!(!names.dir().exists(), "the directory is removed anyway");
        let _ = std::fs::remove_dir_all(root);
    }
}
