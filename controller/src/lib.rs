//! `weftctl`'s library: the etcd-side operator commands (network config, nodes), certificates
//! (`pki`), and a client for the local agent's Unix socket. The namespace lab is its own crate
//! (`controller/lab`, `weft-lab`), built on this one; the `weftctl` binary (`controller/weftctl`)
//! uses both, and so do the integration tests. `service` is the `weft-controller` daemon
//! (leader election, dead-node eviction, the cluster page).

pub mod agent_client;
pub mod agent_view;
pub mod cluster_status;
pub mod error;
pub mod etcd;
pub mod join;
pub mod network;
pub mod nodes;
pub mod output;
pub mod pki;
pub mod service;

pub use agent_client::{AgentClient, ClientError};
pub use error::UsageError;
