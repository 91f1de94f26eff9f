//! `/weft/v1/<network>/probes/<node>`: what one agent's reachability probes found. Each agent
//! pings every peer's gateway from its own gateway (through the overlay, both ways) every
//! `[probes] interval_secs` and publishes the results under a lease, so a dead node's record
//! disappears with it. `weftctl status` reads them all into a reachability matrix.
//!
//! Records come from other machines: parsed defensively (size bound, valid names, unknown fields
//! ignored), never trusted for anything but display.

use crate::error::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest probe record accepted (a few dozen bytes per peer, so ~1000 peers).
pub const MAX_PROBE_RECORD_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub schema: u32,
    /// Seconds since the Unix epoch of the round these results come from.
    pub updated: u64,
    /// Seconds between rounds (readers call results older than a few rounds stale).
    pub interval_secs: u64,
    /// Peer node name -> result.
    pub peers: BTreeMap<String, PeerProbe>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProbe {
    /// The peer's gateway answered the echo request.
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
}

impl ProbeRecord {
    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.len() > MAX_PROBE_RECORD_BYTES {
            return Err(ConfigError::new(
                key,
                "",
                format!("record of {} bytes is over the {MAX_PROBE_RECORD_BYTES}-byte limit", bytes.len()),
            ));
        }
        let r: Self = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError::new(key, "", format!("invalid probe record JSON: {e}")))?;
        if let Some(bad) = r.peers.keys().find(|n| !crate::names::valid_name(n)) {
            return Err(ConfigError::new(key, "peers", format!("invalid node name {bad:?}")));
        }
        Ok(r)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_defensive_parsing() {
        let mut peers = BTreeMap::new();
        peers.insert("n2".to_string(), PeerProbe { ok: true, rtt_us: Some(120) });
        peers.insert("n3".to_string(), PeerProbe { ok: false, rtt_us: None });
        let r = ProbeRecord { schema: 1, updated: 5, interval_secs: 10, peers };
        let j = r.to_json();
        assert_eq!(
            j,
            r#"{"schema":1,"updated":5,"interval_secs":10,"peers":{"n2":{"ok":true,"rtt_us":120},"n3":{"ok":false}}}"#
        );
        assert_eq!(ProbeRecord::from_json("k", j.as_bytes()).expect("parse"), r);
        // unknown fields are tolerated (newer agents)
        let newer = r#"{"schema":2,"updated":1,"interval_secs":1,"peers":{},"extra":[1]}"#;
        assert!(ProbeRecord::from_json("k", newer.as_bytes()).is_ok());
        let bad = r#"{"schema":1,"updated":1,"interval_secs":1,"peers":{"N/2":{"ok":true}}}"#;
        let e = ProbeRecord::from_json("k", bad.as_bytes()).expect_err("bad name");
        assert_eq!(e.to_string(), "k: peers: invalid node name \"N/2\"");
        assert!(ProbeRecord::from_json("k", b"nope").is_err());
        let huge = vec![b' '; MAX_PROBE_RECORD_BYTES + 1];
        assert!(ProbeRecord::from_json("k", &huge).expect_err("size").to_string().contains("limit"));
    }
}
