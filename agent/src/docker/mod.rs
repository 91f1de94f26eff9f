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
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

pub use book::Book;
pub use protocol::{Call, Method};

/// A call's answer: the JSON body, or the message of an `{"Err":...}`.
pub type Answer = Result<Value, String>;

/// Neither side has decided yet.
const WAITING: u8 = 0;
/// The daemon took the call: it runs, and its answer is the one Docker hears.
const TAKEN: u8 = 1;
/// The caller gave up (Docker heard an error): the call must never run.
const ABANDONED: u8 = 2;

/// A call for the daemon's loop. The loop runs it only through [`Command::take`], which fails
/// once the caller was answered with an error, so no call takes effect after Docker heard it
/// failed (a late RequestAddress would reserve an address Docker never releases).
#[derive(Debug)]
pub struct Command {
    call: Call,
    reply: oneshot::Sender<Answer>,
    state: Arc<AtomicU8>,
}

/// The caller's side of a [`Command`].
#[derive(Debug)]
pub struct Pending {
    answer: oneshot::Receiver<Answer>,
    state: Arc<AtomicU8>,
}

/// Where a taken call's answer goes.
#[derive(Debug)]
pub struct Reply(oneshot::Sender<Answer>);

impl Reply {
    pub fn send(self, answer: Answer) {
        let _ = self.0.send(answer);
    }
}

impl Command {
    pub fn new(call: Call) -> (Command, Pending) {
        let (tx, rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(WAITING));
        (Command { call, reply: tx, state: state.clone() }, Pending { answer: rx, state })
    }

    pub fn method(&self) -> Method {
        self.call.method()
    }

    /// The call to run and where its answer goes; `None` when the caller already gave up
    /// (the call is dropped unrun).
    pub fn take(self) -> Option<(Call, Reply)> {
        let won = self.state.compare_exchange(WAITING, TAKEN, Ordering::SeqCst, Ordering::SeqCst).is_ok();
        won.then_some((self.call, Reply(self.reply)))
    }
}

impl Pending {
    /// Waits for the answer. A call not taken within `wait` is given up (and then never runs):
    /// `None`. A call taken in time is waited for to its end, however long it runs, since it
    /// may already have changed the node.
    pub async fn answer(mut self, wait: Duration) -> Option<Answer> {
        let dropped = || Err("the agent dropped the request".to_string());
        match tokio::time::timeout(wait, &mut self.answer).await {
            Ok(r) => Some(r.unwrap_or_else(|_| dropped())),
            Err(_) => {
                if self.give_up() {
                    return None;
                }
                Some((&mut self.answer).await.unwrap_or_else(|_| dropped()))
            }
        }
    }

    /// Marks the call given up; false when the daemon took it first.
    fn give_up(&self) -> bool {
        self.state.compare_exchange(WAITING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // A caller gone without an answer (its connection closed, its wait cancelled) gives
        // up too.
        self.give_up();
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call() -> Call {
        match protocol::route(Method::RequestPool, br#"{"V6":false}"#) {
            Ok(protocol::Route::Node(c)) => c,
            _ => panic!("a node call"),
        }
    }

    #[tokio::test]
    async fn a_call_given_up_on_never_runs_and_a_taken_one_is_waited_for() {
        // Not taken in time: the caller hears nothing (it answers Docker with an error), and
        // the daemon may no longer take it.
        let (cmd, pending) = Command::new(call());
        assert!(pending.answer(Duration::from_millis(20)).await.is_none());
        assert!(cmd.take().is_none(), "given up: never runs");

        // A caller that went away gives up too.
        let (cmd, pending) = Command::new(call());
        drop(pending);
        assert!(cmd.take().is_none());

        // Taken in time: waited for past the wait, since it may have changed the node.
        let (cmd, pending) = Command::new(call());
        let waiting = tokio::spawn(pending.answer(Duration::from_millis(20)));
        let (c, reply) = cmd.take().expect("taken");
        assert_eq!(c.method(), Method::RequestPool);
        tokio::time::sleep(Duration::from_millis(100)).await;
        reply.send(Ok(json!({"late": true})));
        assert_eq!(waiting.await.expect("join"), Some(Ok(json!({"late": true}))));

        // Taken and dropped unanswered: an error, not a hang.
        let (cmd, pending) = Command::new(call());
        drop(cmd.take());
        let r = pending.answer(Duration::from_secs(5)).await;
        assert_eq!(r, Some(Err("the agent dropped the request".to_string())));
    }
}
