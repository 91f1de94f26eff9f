//! weft's shared, pure definitions: the agent's config file, the records kept in etcd and their
//! key layout, subnet math, the peer set built from untrusted records, and the local API.
//! Nothing here does network or etcd I/O.

pub mod agent;
pub mod api;
pub mod controller;
pub mod dns;
pub mod error;
pub mod keys;
pub mod names;
pub mod peers;
pub mod probes;
mod reader;
pub mod records;
pub mod subnet;

pub use agent::AgentConfig;
pub use error::ConfigError;
pub use keys::Keys;
pub use records::{Backend, Heartbeat, NetworkConfig, SubnetRecord};
