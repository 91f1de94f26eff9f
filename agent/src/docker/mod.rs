//! The Docker network plugin: libnetwork's remote network driver and remote IPAM driver,
//! served over HTTP/1.1 on a Unix socket that Docker finds through a spec file
//! (`[docker]` of agent.toml). `docker network create --driver weft --ipam-driver weft weft`
//! gives containers addresses of the node's subnet from the same allocator as weft's pods,
//! and a veth on the node's bridge.
//!
//! Layout: `protocol` (methods, request types, the answers that need no node), `book` (what
//! Docker holds on this node, the pure decisions, `docker.json`), `server` (the socket, the
//! spec file, HTTP, counters). Calls that change the node go to the daemon's loop as a
//! [`Command`], like the local API's, so every change is serialized with pods and reconciles.

pub mod book;
pub mod protocol;
pub mod server;

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

pub use book::Book;
pub use protocol::{Call, Method};

/// A call for the daemon's loop, with the channel its answer (the JSON body, or the message
/// of an `{"Err":...}`) goes back on.
pub type Command = (Call, oneshot::Sender<Result<Value, String>>);

/// How a request ended (the `result` label of `weft_docker_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    /// The node refused or failed it (`{"Err":...}`).
    Error,
    /// Not a request of its method (bad HTTP, bad JSON, missing fields).
    Malformed,
    /// A path that is no method of the protocol.
    NotFound,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Malformed => "malformed",
            Outcome::NotFound => "not_found",
        }
    }
}

/// Requests served, by method and outcome; shared by the plugin server and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Counters(Arc<Mutex<BTreeMap<(&'static str, Outcome), u64>>>);

impl Counters {
    pub fn count(&self, method: &'static str, outcome: Outcome) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((method, outcome)).or_default() += 1;
    }

    /// (method, result, count), sorted.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|((method, outcome), n)| (*method, outcome.label(), *n)).collect()
    }
}
