//! weft-agent as a library: the daemon and the modules it is made of. The binary in main.rs is
//! a thin CLI over [`daemon`]; tests and benchmarks use the modules directly.

pub mod api;
pub mod backend;
pub mod bootstrap;
pub mod cni;
pub mod daemon;
pub mod docker;
pub mod entries;
pub mod firewall;
pub mod firewall_glue;
pub mod http;
pub mod kernel;
pub mod lease;
pub mod metrics;
pub mod netns;
pub mod netns_path;
pub mod notify;
pub mod pods;
pub mod probe;
pub mod routes;
pub mod state;

/// The quic backend, also at its old path (benchmarks, the fuzzer and tests use it).
pub use backend::quic;
