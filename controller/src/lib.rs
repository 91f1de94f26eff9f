//! `weftctl`'s library: the etcd-side operator commands (network config, nodes), a client for
//! the local agent's Unix socket, and the namespace lab that simulates a whole cluster on one
//! machine. The integration tests drive the lab through this crate's API, the CLI through
//! `main.rs`; both run the same code.

pub mod agent_client;
pub mod agent_view;
pub mod cluster_status;
pub mod error;
pub mod etcd;
pub mod lab;
pub mod network;
pub mod nodes;
pub mod output;
pub mod pki;

pub use agent_client::{AgentClient, ClientError};
pub use error::UsageError;
