//! Joining with a token instead of copied keys: join tokens kept (hashed) in etcd
//! ([`token`]), CSR checks and signing by the cluster CA ([`sign`]), and the HTTPS service a
//! new node calls ([`server::serve`], started by the controller daemon when `[bootstrap]` is
//! set in controller.toml). The agent's side is `weft_agent::bootstrap`.

pub mod server;
pub mod sign;
pub mod token;
