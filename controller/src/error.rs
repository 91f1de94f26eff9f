//! Error kinds the binary maps to exit codes.

/// Bad arguments or input: `weftctl` exits with status 2 and prints this one line, which names
/// the flag (or argument) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

impl From<weft_store::opts::OptsError> for UsageError {
    fn from(e: weft_store::opts::OptsError) -> Self {
        Self(e.0)
    }
}

impl From<weft_config::ConfigError> for UsageError {
    fn from(e: weft_config::ConfigError) -> Self {
        Self(e.to_string())
    }
}

/// True when `err` (or anything in its chain) is a [`UsageError`].
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<UsageError>().is_some())
}
