//! One error type for everything the config crate validates. Every message names where the
//! bad value came from (a file or an etcd key), the field, and what was expected, on one line.

use std::fmt;

/// A validation failure: `source: field: expectation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the value came from: a file path, an etcd key, or a command-line flag.
    pub source: String,
    /// Dotted path of the field, e.g. `etcd.endpoints` or `pods[1].name`. Empty for the whole input.
    pub field: String,
    /// What was expected (or what is wrong), lowercase, no trailing period.
    pub message: String,
}

impl ConfigError {
    pub fn new(source: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { source: source.into(), field: field.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: {}: {}", self.source, self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}
