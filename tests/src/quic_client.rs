//! A QUIC client that speaks weft's tunnel protocol from inside a lab namespace, holding any
//! certificate the test chooses: to check who the agents let in, and to inject packets through
//! an authenticated tunnel.

use anyhow::{anyhow, Context, Result};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use weft_agent::quic::tls;
use weft_config::agent::QuicConfig;

/// TLS files the client presents (any node name may be claimed; `ca` verifies the server).
pub struct ClientFiles<'a> {
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
    /// The name in `cert` (checked by the loader so a test cannot mix files up).
    pub name: &'a str,
}

/// Connects from namespace `ns` to `server` (expected to be node `server_name`) and runs `f`
/// on the connection. The connection error, if any, comes back as the error's text.
pub fn with_connection<T, F, Fut>(
    ns: &str,
    files: &ClientFiles<'_>,
    server: SocketAddr,
    server_name: &str,
    f: F,
) -> Result<T>
where
    T: Send,
    F: FnOnce(quinn::Connection) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    let q = QuicConfig {
        port: 0,
        ca_file: files.ca.to_path_buf(),
        cert_file: files.cert.to_path_buf(),
        key_file: files.key.to_path_buf(),
        tun: "unused".into(),
        mtu: None,
        threads: Some(1),
        endpoint_family: weft_config::subnet::Family::V4,
    };
    let id = tls::load(&q, files.name)?;
    let client = tls::client_config(&id, weft_agent::quic::transport(1472)?)?;
    let server_name = server_name.to_string();
    weft_lab::in_netns(ns, move || -> Result<T> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("runtime")?;
        rt.block_on(async move {
            let mut ep = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0))).context("client endpoint")?;
            ep.set_default_client_config(client);
            let connecting = ep.connect(server, &server_name).context("connect")?;
            let conn = tokio::time::timeout(std::time::Duration::from_secs(5), connecting)
                .await
                .map_err(|_| anyhow!("handshake timed out"))?
                .map_err(|e| anyhow!("handshake failed: {e}"))?;
            let out = f(conn.clone()).await;
            conn.close(0u32.into(), b"test done");
            ep.wait_idle().await;
            out
        })
    })?
}
