//! weftctl's etcd options and connect, re-exported from weft-store (the etcd layer shared with
//! the agent) under the names the lab and the integration tests use.

pub use weft_store::connect_client as connect;
pub use weft_store::opts::{deadline, Detailed, EtcdOpts, OptsError, DEFAULT_TIMEOUT};
