//! weft-agent as a library: the daemon and the modules it is made of. The binary in main.rs is
//! a thin CLI over [`daemon`]; tests and benchmarks use the modules directly.

pub mod api;
pub mod cni;
pub mod daemon;
pub mod etcd;
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
pub mod quic;
pub mod routes;
pub mod state;
