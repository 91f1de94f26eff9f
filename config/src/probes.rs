//! `/weft/v1/<network>/probes/<node>`: what one agent's reachability probes found. Each agent
//! pings every peer's gateway from its own gateway of the same family (through the overlay, both
//! ways) every `[probes] interval_secs` and publishes the results under a lease, so a dead node's
//! record disappears with it. `weftctl status` reads them all into a reachability matrix per
//! family.
//!
//! The IPv4 results are `peers`, as before dual-stack; the IPv6 ones are `peers6`, left out when
//! empty. Readers of either age read records of either age: an older reader ignores `peers6`,
//! a newer one reads an older record as IPv4 results only.
//!
//! Records come from other machines: parsed defensively (size bound, valid names, unknown fields
//! ignored), never trusted for anything but display.

use crate::error::ConfigError;
use crate::subnet::Family;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest probe record accepted (a few dozen bytes per peer and family, so ~1000 dual-stack
/// peers).
pub const MAX_PROBE_RECORD_BYTES: usize = 128 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub schema: u32,
    /// Seconds since the Unix epoch of the round these results come from.
    pub updated: u64,
    /// Seconds between rounds (readers call results older than a few rounds stale).
    pub interval_secs: u64,
    /// IPv4: peer node name -> result of the echo from the own IPv4 gateway to the peer's.
    /// Always written (empty on a node without an IPv4 subnet), as older readers need it.
    pub peers: BTreeMap<String, PeerProbe>,
    /// IPv6: peer node name -> result of the ICMPv6 echo from the own IPv6 gateway to the
    /// peer's. Absent from records of nodes without an IPv6 subnet and of older agents.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peers6: BTreeMap<String, PeerProbe>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProbe {
    /// The peer's gateway answered the echo request.
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    /// Under the `auto` backend: the backend carrying this peer's subnet of the family
    /// (`host-gw`, `vxlan` or `quic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<crate::records::Backend>,
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
        for (field, family) in [("peers", Family::V4), ("peers6", Family::V6)] {
            if let Some(bad) = r.of(family).keys().find(|n| !crate::names::valid_name(n)) {
                return Err(ConfigError::new(key, field, format!("invalid node name {bad:?}")));
            }
        }
        Ok(r)
    }

    /// The results of `family`.
    pub fn of(&self, family: Family) -> &BTreeMap<String, PeerProbe> {
        match family {
            Family::V4 => &self.peers,
            Family::V6 => &self.peers6,
        }
    }

    /// The results of `family`, to fill in.
    pub fn of_mut(&mut self, family: Family) -> &mut BTreeMap<String, PeerProbe> {
        match family {
            Family::V4 => &mut self.peers,
            Family::V6 => &mut self.peers6,
        }
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
        peers.insert("n2".to_string(), PeerProbe { ok: true, rtt_us: Some(120), via: None });
        peers.insert("n3".to_string(), PeerProbe { ok: false, rtt_us: None, via: None });
        let r = ProbeRecord { schema: 1, updated: 5, interval_secs: 10, peers, peers6: BTreeMap::new() };
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

    /// The record as agents wrote it before IPv6 probes: what an older weftctl parses.
    #[derive(Debug, Deserialize)]
    struct OldRecord {
        schema: u32,
        updated: u64,
        interval_secs: u64,
        peers: BTreeMap<String, PeerProbe>,
    }

    #[test]
    fn ipv6_results_beside_the_ipv4_ones_readable_by_old_and_new() {
        let ok = |us| PeerProbe { ok: true, rtt_us: Some(us), via: None };
        let mut r =
            ProbeRecord { schema: 1, updated: 5, interval_secs: 10, peers: BTreeMap::new(), peers6: BTreeMap::new() };
        r.of_mut(Family::V4).insert("n2".into(), ok(100));
        r.of_mut(Family::V6).insert("n2".into(), ok(110));
        r.of_mut(Family::V6).insert("n3".into(), PeerProbe { ok: false, rtt_us: None, via: None });
        let j = r.to_json();
        assert_eq!(
            j,
            r#"{"schema":1,"updated":5,"interval_secs":10,"peers":{"n2":{"ok":true,"rtt_us":100}},"peers6":{"n2":{"ok":true,"rtt_us":110},"n3":{"ok":false}}}"#
        );
        assert_eq!(ProbeRecord::from_json("k", j.as_bytes()).expect("new reads new"), r);
        // An older reader takes the IPv4 results and ignores the IPv6 ones.
        let old: OldRecord = serde_json::from_str(&j).expect("old reads new");
        assert_eq!((old.schema, old.updated, old.interval_secs), (1, 5, 10));
        assert_eq!(old.peers, r.peers);
        // A newer reader takes an older record as IPv4 results alone.
        let older = r#"{"schema":1,"updated":5,"interval_secs":10,"peers":{"n2":{"ok":true,"rtt_us":100}}}"#;
        let read = ProbeRecord::from_json("k", older.as_bytes()).expect("new reads old");
        assert_eq!((read.of(Family::V4), read.of(Family::V6)), (&r.peers, &BTreeMap::new()));
        // An IPv6-only node writes `peers` empty, so older readers still parse it.
        let mut only6 = r.clone();
        only6.peers.clear();
        let j = only6.to_json();
        assert!(j.contains(r#""peers":{},"peers6":{"#), "{j}");
        assert!(serde_json::from_str::<OldRecord>(&j).expect("old reads IPv6-only").peers.is_empty());
        // The IPv6 names are checked like the IPv4 ones.
        let bad = r#"{"schema":1,"updated":1,"interval_secs":1,"peers":{},"peers6":{"N/2":{"ok":true}}}"#;
        let e = ProbeRecord::from_json("k", bad.as_bytes()).expect_err("bad name");
        assert_eq!(e.to_string(), "k: peers6: invalid node name \"N/2\"");
    }
}
