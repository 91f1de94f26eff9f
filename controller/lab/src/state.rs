//! `state.json`: everything a lab made, written as it goes so `lab down` can undo a lab whose
//! `up` crashed half-way. Saved atomically (temp file + rename).

use super::LabSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const STATE_VERSION: u32 = 1;

/// A process the lab started, and what must still hold before it may be signalled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    pub pid: u32,
    /// The lab namespace the process was started in.
    pub netns: String,
    /// Start time from `/proc/<pid>/stat` (clock ticks after boot), to tell a reused pid apart.
    #[serde(default)]
    pub start_ticks: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub version: u32,
    pub id: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub spec: LabSpec,
    pub agent_bin: PathBuf,
    pub weftctl_bin: PathBuf,
    /// Namespaces the lab made (recorded before making each one).
    pub namespaces: Vec<String>,
    pub etcd: Option<ProcRecord>,
    /// Further etcd members of a multi-member lab by name (`etcd2`, `etcd3`); member 1 is `etcd`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub etcd_members: BTreeMap<String, ProcRecord>,
    /// Running agents by node name (`n1`); removed once stopped.
    pub agents: BTreeMap<String, ProcRecord>,
    /// Running `weft-controller` replicas by name (`c1`); removed once stopped.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub controllers: BTreeMap<String, ProcRecord>,
    /// Running QEMU processes of VM nodes by node name (`n1`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vms: BTreeMap<String, ProcRecord>,
    /// The `weft-controller` binary, in labs with controllers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_bin: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: not a lab state file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("writing {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
}

impl LabState {
    pub fn new(spec: LabSpec, agent_bin: PathBuf, weftctl_bin: PathBuf, now: u64) -> Self {
        Self {
            version: STATE_VERSION,
            id: spec.id.clone(),
            created: now,
            spec,
            agent_bin,
            weftctl_bin,
            namespaces: Vec::new(),
            etcd: None,
            etcd_members: BTreeMap::new(),
            agents: BTreeMap::new(),
            controllers: BTreeMap::new(),
            vms: BTreeMap::new(),
            controller_bin: None,
        }
    }

    pub fn add_namespace(&mut self, ns: &str) {
        if !self.namespaces.iter().any(|n| n == ns) {
            self.namespaces.push(ns.to_string());
        }
    }

    /// Every recorded process: controllers first (they resign through etcd and would evict
    /// agents stopped before them), agents and VMs next (they use etcd), then etcd's members.
    pub fn processes(&self) -> Vec<ProcRecord> {
        self.controllers
            .values()
            .cloned()
            .chain(self.agents.values().cloned())
            .chain(self.vms.values().cloned())
            .chain(self.etcd.clone())
            .chain(self.etcd_members.values().cloned())
            .collect()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_json(path: &Path, text: &str) -> Result<Self, StateError> {
        let s: Self = serde_json::from_str(text)
            .map_err(|e| StateError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        if s.version != STATE_VERSION {
            return Err(StateError::Parse {
                path: path.to_path_buf(),
                message: format!("version {} (this weftctl reads {STATE_VERSION})", s.version),
            });
        }
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Self, StateError> {
        let text =
            std::fs::read_to_string(path).map_err(|error| StateError::Read { path: path.to_path_buf(), error })?;
        Self::from_json(path, &text)
    }

    /// Writes `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, self.to_json()).map_err(|error| StateError::Write { path: tmp.clone(), error })?;
        std::fs::rename(&tmp, path).map_err(|error| StateError::Write { path: path.to_path_buf(), error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let spec = LabSpec { id: "t1".into(), nodes: 2, pods: 1, ..LabSpec::default() };
        let mut s = LabState::new(spec, "/b/weft-agent".into(), "/b/weftctl".into(), 1000);
        s.add_namespace("weftt1-u");
        s.add_namespace("weftt1-u");
        s.etcd = Some(ProcRecord { pid: 10, netns: "weftt1-etcd".into(), start_ticks: Some(5) });
        s.agents.insert("n1".into(), ProcRecord { pid: 11, netns: "weftt1-n1".into(), start_ticks: None });
        assert_eq!(s.namespaces, vec!["weftt1-u".to_string()]);
        assert_eq!(s.processes().iter().map(|p| p.pid).collect::<Vec<_>>(), vec![11, 10]);
        s.controllers.insert("c1".into(), ProcRecord { pid: 12, netns: "weftt1-c1".into(), start_ticks: None });
        s.controller_bin = Some("/b/weft-controller".into());
        assert_eq!(s.processes().iter().map(|p| p.pid).collect::<Vec<_>>(), vec![12, 11, 10]);

        let dir = std::env::temp_dir().join(format!("weftctl-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("state.json");
        s.save(&path).expect("save");
        assert_eq!(LabState::load(&path).expect("load"), s);
        assert!(!path.with_extension("json.tmp").exists());

        std::fs::write(&path, "{\"version\": 1}").expect("write");
        let e = LabState::load(&path).expect_err("junk");
        assert!(e.to_string().contains("not a lab state file: missing field"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
        assert!(matches!(LabState::load(Path::new("/nonexistent/state.json")), Err(StateError::Read { .. })));
    }
}
