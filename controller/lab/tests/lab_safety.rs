//! Root tests of the lab's safety rules that need no agent: a thread that enters a lab
//! namespace changes that namespace only, and `lab down` signals a recorded pid only while it
//! lives in the lab's namespace. They build their own namespaces and remove them with a guard.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Child, Command, Stdio};
use weft_lab::names::LabNames;
use weft_lab::netns;
use weft_lab::state::{LabState, ProcRecord};
use weft_lab::{self as lab, plumbing, procs, LabSpec};

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "these tests need root: they build network namespaces");
}

/// Removes lab `id` and kills the given children, also when an assertion failed.
struct Guard {
    id: &'static str,
    children: Vec<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = lab::down(self.id);
    }
}

fn ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default().trim().to_string()
}

#[test]
fn sysctls_written_in_a_lab_namespace_stay_there() {
    require_root();
    let _guard = Guard { id: "cs1", children: vec![] };
    let names = LabNames::new("cs1").expect("id");
    let ns = names.underlay_ns();
    let root_before = ip_forward();
    plumbing::add_netns(&ns).expect("namespace");
    netns::write_sysctl(&ns, "net/ipv4/ip_forward", "1").expect("sysctl");
    let inside = netns::in_netns(&ns, ip_forward).expect("enter");
    assert_eq!(inside, "1");
    assert_eq!(ip_forward(), root_before, "the root namespace's ip_forward must not change");
    // The calling thread never moved.
    let links = netns::in_netns(&ns, || std::fs::read_to_string("/proc/thread-self/net/dev")).expect("enter");
    assert_eq!(links.expect("read").lines().count(), 3, "a new namespace has only lo");
    let report = lab::down("cs1").expect("down");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.namespaces_removed, vec![ns.clone()]);
    assert!(netns::ns_id(&ns).is_none());
}

#[test]
fn down_signals_only_processes_inside_the_lab() {
    require_root();
    let mut guard = Guard { id: "cs2", children: vec![] };
    let names = LabNames::new("cs2").expect("id");
    let ns = names.node_ns(1);
    plumbing::add_netns(&ns).expect("namespace");

    let inside = netns::command_in(&ns, "sleep").expect("cmd").arg("60").stdin(Stdio::null()).spawn().expect("sleep");
    let decoy = Command::new("sleep").arg("60").stdin(Stdio::null()).spawn().expect("decoy");
    let (inside_pid, decoy_pid) = (inside.id(), decoy.id());
    guard.children.push(inside);
    guard.children.push(decoy);

    std::fs::create_dir_all(names.dir()).expect("dir");
    let spec = LabSpec { id: "cs2".into(), nodes: 2, ..LabSpec::default() };
    let mut state = LabState::new(spec, "/bin/false".into(), "/bin/false".into(), 0);
    state.add_namespace(&ns);
    let rec = |pid| ProcRecord { pid, netns: ns.clone(), start_ticks: procs::start_ticks(pid) };
    state.agents.insert("n1".into(), rec(inside_pid));
    // Recorded as if it were n2's agent, but it lives in the root namespace.
    state.agents.insert("n2".into(), rec(decoy_pid));
    state.save(&names.state_file()).expect("save");

    let report = lab::down("cs2").expect("down");
    assert_eq!(report.signalled, vec![inside_pid]);
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(report.errors[0].contains(&format!("pid {decoy_pid} is not in namespace {ns}")), "{report:?}");
    assert!(!procs::observe(inside_pid).alive, "the lab's process is stopped");
    let decoy_pid = i32::try_from(decoy_pid).expect("pid");
    assert!(kill(Pid::from_raw(decoy_pid), None::<Signal>).is_ok(), "the decoy outside the lab must live");
    assert!(procs::observe(decoy_pid as u32).alive, "the decoy outside the lab must live");
    assert!(netns::ns_id(&ns).is_none(), "namespace removed");
    assert!(!names.dir().exists(), "lab directory removed");
}

/// A daemon the lab starts (an agent, etcd) keeps none of the starter's descriptors: a test
/// run under `flock` must not leave its lock held by a kept lab's agents.
#[test]
fn daemons_inherit_no_descriptors() {
    require_root();
    let mut guard = Guard { id: "cs3", children: vec![] };
    let names = LabNames::new("cs3").expect("id");
    let ns = names.node_ns(1);
    plumbing::add_netns(&ns).expect("namespace");
    // Opened without O_CLOEXEC, as `flock FILE cmd` hands its lock down.
    let held = nix::fcntl::open("/proc/self/stat", nix::fcntl::OFlag::O_RDONLY, nix::sys::stat::Mode::empty())
        .expect("opening a file to inherit");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&held);
    let spawn = |daemon: bool| {
        let mut cmd = Command::new("sleep");
        cmd.arg("60").stdin(Stdio::null());
        netns::enter_on_exec(&mut cmd, &ns, daemon).expect("namespace");
        cmd.spawn().expect("sleep")
    };
    let (plain, daemon) = (spawn(false), spawn(true));
    let has_fd = |pid: u32| std::path::Path::new(&format!("/proc/{pid}/fd/{fd}")).exists();
    let (plain_has, daemon_has) = (has_fd(plain.id()), has_fd(daemon.id()));
    guard.children.extend([plain, daemon]);
    assert!(plain_has, "a plain command inherits descriptor {fd} (the check itself works)");
    assert!(!daemon_has, "a daemon must not inherit descriptor {fd}");
}
