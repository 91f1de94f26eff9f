//! weft-agent as a library: the daemon and the modules it is made of. The binary in main.rs is
//! a thin CLI over [`daemon`]; tests and benchmarks use the modules directly.

pub mod api;
pub mod daemon;
pub mod etcd;
pub mod firewall;
pub mod firewall_glue;
pub mod lease;
pub mod netlink;
pub mod netns;
pub mod pods;
pub mod quic;
pub mod routes;
pub mod state;
