//! Signalling the lab's processes, and only those: a pid from state.json is signalled only while
//! it still lives in the lab namespace it was started in and (when recorded) still has the same
//! start time, so a reused pid is never hit.

use super::netns::{ns_id, pid_ns_id, NsId};
use super::state::ProcRecord;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// What /proc says about a pid now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcObservation {
    /// Exists and is not a zombie.
    pub alive: bool,
    pub start_ticks: Option<u64>,
    pub netns: Option<NsId>,
}

/// Whether a recorded process may be signalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Gone (or a zombie): nothing to do.
    Gone,
    /// Still the process the lab started, in the lab's namespace.
    Ours,
    /// The pid now belongs to something else (the reason says what differs).
    NotOurs(String),
}

/// Pure decision: is the process behind `rec` still ours? `lab_ns` is the namespace recorded in
/// `rec` as it exists now (`None` if it was removed).
pub fn ownership(rec: &ProcRecord, obs: &ProcObservation, lab_ns: Option<NsId>) -> Ownership {
    if !obs.alive {
        return Ownership::Gone;
    }
    if let (Some(want), Some(got)) = (rec.start_ticks, obs.start_ticks) {
        if want != got {
            return Ownership::NotOurs(format!("pid {} was reused (start time {got}, recorded {want})", rec.pid));
        }
    }
    match (lab_ns, obs.netns) {
        (Some(want), Some(got)) if want == got => Ownership::Ours,
        (None, _) => Ownership::NotOurs(format!("namespace {} no longer exists", rec.netns)),
        (Some(_), _) => Ownership::NotOurs(format!("pid {} is not in namespace {}", rec.pid, rec.netns)),
    }
}

/// Parses the state and start time (field 22) out of `/proc/<pid>/stat` text.
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields after the name start at 3 (state); starttime is field 22.
    let start = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start))
}

pub fn observe(pid: u32) -> ProcObservation {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|t| parse_stat(&t));
    match stat {
        None => ProcObservation { alive: false, start_ticks: None, netns: None },
        Some((state, start)) => {
            ProcObservation { alive: state != 'Z' && state != 'X', start_ticks: Some(start), netns: pid_ns_id(pid) }
        }
    }
}

/// Start time of a process, to record right after spawning it.
pub fn start_ticks(pid: u32) -> Option<u64> {
    observe(pid).start_ticks
}

pub fn check(rec: &ProcRecord) -> Ownership {
    ownership(rec, &observe(rec.pid), ns_id(&rec.netns))
}

pub fn signal(rec: &ProcRecord, sig: Signal) -> Result<(), String> {
    let pid = i32::try_from(rec.pid).map_err(|_| format!("pid {} out of range", rec.pid))?;
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(e) => Err(format!("sending {sig} to pid {}: {e}", rec.pid)),
    }
}

/// Polls until `gone(pid)` holds for every pid or `timeout` passes; returns those still there.
pub fn wait_gone(pids: &[u32], timeout: Duration, mut gone: impl FnMut(u32) -> bool) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| !gone(*p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM every process in `recs` that is still ours, wait up to `grace`, SIGKILL the rest
/// (checking ownership again first), wait a little more. `gone` says whether a pid has exited
/// (callers that are the parent reap it there). Returns the pids signalled and every error.
pub fn terminate(recs: &[ProcRecord], grace: Duration, mut gone: impl FnMut(u32) -> bool) -> (Vec<u32>, Vec<String>) {
    let mut errors = Vec::new();
    let mut signalled = Vec::new();
    for rec in recs {
        match check(rec) {
            Ownership::Gone => {}
            Ownership::NotOurs(why) => errors.push(format!("not signalling pid {}: {why}", rec.pid)),
            Ownership::Ours => match signal(rec, Signal::SIGTERM) {
                Ok(()) => signalled.push(rec.pid),
                Err(e) => errors.push(e),
            },
        }
    }
    let left = wait_gone(&signalled, grace, &mut gone);
    if left.is_empty() {
        return (signalled, errors);
    }
    for rec in recs.iter().filter(|r| left.contains(&r.pid)) {
        if check(rec) == Ownership::Ours {
            if let Err(e) = signal(rec, Signal::SIGKILL) {
                errors.push(e);
            }
        }
    }
    for pid in wait_gone(&left, Duration::from_secs(3), &mut gone) {
        errors.push(format!("pid {pid} still running after SIGKILL"));
    }
    (signalled, errors)
}

/// Processes (pid, command name) whose network namespace is one of `ids`.
pub fn find_in_namespaces(ids: &[NsId]) -> Vec<(u32, String)> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in rd.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid_ns_id(pid).is_some_and(|id| ids.contains(&id)) && observe(pid).alive {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_string()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: NsId = NsId { dev: 4, ino: 4026532000 };

    fn rec(start: Option<u64>) -> ProcRecord {
        ProcRecord { pid: 42, netns: "weft0-n1".into(), start_ticks: start }
    }

    fn obs(alive: bool, start: Option<u64>, ns: Option<NsId>) -> ProcObservation {
        ProcObservation { alive, start_ticks: start, netns: ns }
    }

    #[test]
    fn ownership_rules() {
        assert_eq!(ownership(&rec(Some(7)), &obs(true, Some(7), Some(NS)), Some(NS)), Ownership::Ours);
        assert_eq!(ownership(&rec(None), &obs(true, Some(9), Some(NS)), Some(NS)), Ownership::Ours);
        assert_eq!(ownership(&rec(Some(7)), &obs(false, None, None), Some(NS)), Ownership::Gone);
        let other = NsId { dev: 4, ino: 4026531840 };
        assert!(
            matches!(ownership(&rec(None), &obs(true, Some(7), Some(other)), Some(NS)), Ownership::NotOurs(m) if m.contains("not in namespace weft0-n1"))
        );
        assert!(
            matches!(ownership(&rec(Some(7)), &obs(true, Some(8), Some(NS)), Some(NS)), Ownership::NotOurs(m) if m.contains("reused"))
        );
        assert!(
            matches!(ownership(&rec(None), &obs(true, Some(7), Some(NS)), None), Ownership::NotOurs(m) if m.contains("no longer exists"))
        );
        assert!(matches!(ownership(&rec(None), &obs(true, Some(7), None), Some(NS)), Ownership::NotOurs(_)));
    }

    #[test]
    fn stat_parsing() {
        let text = "1234 (weft agent) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 98765 1000 200 ...";
        assert_eq!(parse_stat(text), Some(('S', 98765)));
        assert_eq!(parse_stat("garbage"), None);
        let own = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        assert!(parse_stat(&own).is_some_and(|(s, _)| s == 'R'), "{own}");
        assert!(observe(std::process::id()).alive);
    }

    #[test]
    fn waiting() {
        assert_eq!(wait_gone(&[1, 2], Duration::from_millis(10), |p| p == 1), vec![2]);
        assert!(wait_gone(&[1], Duration::ZERO, |_| true).is_empty());
    }
}
