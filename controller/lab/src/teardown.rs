//! What a teardown did: the report `lab down` prints, filled in by [`mod@crate::down`] and by each
//! node's [`crate::node::LabNode::destroy`] (its own module, so neither imports the other).

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DownReport {
    pub signalled: Vec<u32>,
    pub namespaces_removed: Vec<String>,
    /// Things that could not be undone.
    pub errors: Vec<String>,
    /// Things worth knowing that did not stop the teardown.
    pub warnings: Vec<String>,
}

impl DownReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// An error listing every failure, if there was any.
    pub fn into_result(self) -> anyhow::Result<Self> {
        if self.errors.is_empty() {
            Ok(self)
        } else {
            anyhow::bail!("lab down finished with {} error(s): {}", self.errors.len(), self.errors.join("; "))
        }
    }

    /// Removes `dir` and everything in it; a directory already gone is no error, any other
    /// failure goes into `errors`.
    pub fn remove_dir(&mut self, dir: &std::path::Path) {
        if let Err(e) = remove_dir_if_exists(dir) {
            self.errors.push(format!("removing {}: {e}", dir.display()));
        }
    }
}

/// `remove_dir_all`, where a directory already gone is no error.
pub fn remove_dir_if_exists(dir: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
