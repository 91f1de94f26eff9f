//! The quic peer table over random event sequences: peer sets, time passing, dials starting or
//! not, handshakes completing, connections lost, accepted connections identified or not. Each
//! byte picks an event and its argument; a model of the event loop carries out the actions and
//! checks the invariants after every step: at most one installed connection per peer and per
//! connection, the acceptor never dials, nobody dials a removed peer, the connections the table
//! holds (for peers, or held for identification) are exactly those the loop has open, and nothing
//! is due in the past after `handle_timeout`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use weft_agent::quic::table::{Action, PeerSpec, PeerTable, Phase};
use weft_config::subnet::PerFamily;

const ME: &str = "m";
/// Three peers this node accepts from, three it dials.
const NODES: [&str; 6] = ["a", "b", "c", "x", "y", "z"];

fn spec(i: usize, variant: u8) -> PeerSpec {
    let n = i as u8 + 1;
    PeerSpec {
        node: NODES[i].to_string(),
        subnets: {
            let v4 = format!("10.244.{}.0/24", n + 10 * (variant >> 2 & 1)).parse().expect("a valid subnet");
            // Some variants are dual-stack peers: one spec, one connection, both subnets.
            let v6 = format!("fd00:10:244:{n}::/64").parse().expect("a valid subnet");
            if variant >> 3 & 1 == 1 {
                PerFamily::Dual(v4, v6)
            } else {
                PerFamily::V4(v4)
            }
        },
        endpoint: SocketAddr::from(([192, 0, 2, n + 10 * (variant >> 1 & 1)], 4433)),
        epoch: u64::from(variant & 1),
        threads: 1,
    }
}

/// The event loop as the table sees it: the connections it has open and what it has closed.
struct Model {
    table: PeerTable<u32>,
    now: Instant,
    next_conn: u32,
    /// Open connections and, for dials still in their handshake, the node dialled.
    open: BTreeMap<u32, Option<String>>,
    closed: BTreeSet<u32>,
}

impl Model {
    fn conn(&mut self) -> u32 {
        self.next_conn += 1;
        self.next_conn
    }

    /// Carries out `actions`, answering dials from `answers`, checking each against the rules.
    fn execute(&mut self, actions: Vec<Action<u32>>, answers: &mut impl Iterator<Item = u8>) {
        let mut installed_now = BTreeSet::new();
        for a in actions {
            match a {
                Action::Dial { node, endpoint } => {
                    assert!(ME < node.as_str(), "the acceptor of {node} dialled it");
                    let p = self.table.get(&node).unwrap_or_else(|| panic!("dialled {node}, not a peer"));
                    assert_eq!(p.spec.endpoint, endpoint, "dialled {node} at a stale endpoint");
                    assert!(matches!(p.phase, Phase::Starting));
                    if answers.next().unwrap_or(0) % 4 == 0 {
                        self.table.dial_not_started(&node, self.now);
                    } else {
                        let c = self.conn();
                        self.open.insert(c, Some(node.clone()));
                        self.table.dial_started(&node, c, self.now);
                    }
                }
                Action::Close { conn, .. } | Action::Refuse { conn, .. } => {
                    assert!(self.open.remove(&conn).is_some(), "closed {conn}, which is not open");
                    assert!(self.closed.insert(conn), "closed {conn} twice");
                }
                Action::Install { node, conn, subnets } => {
                    let p = self.table.get(&node).unwrap_or_else(|| panic!("installed {conn} for {node}, not a peer"));
                    assert_eq!(p.spec.subnets, subnets);
                    assert!(self.open.contains_key(&conn), "installed {conn}, which is not open");
                    assert!(installed_now.insert(node), "two connections installed for one peer at once");
                }
                Action::Routes | Action::Forget { .. } => {}
            }
        }
    }

    fn check(&self) {
        let mut held = BTreeSet::new();
        let mut installed_peers = BTreeSet::new();
        for p in self.table.peers() {
            assert_eq!(p.dialer, ME < p.spec.node.as_str());
            match p.phase {
                Phase::Idle => {}
                Phase::Starting => panic!("{} waits for the answer to a dial", p.spec.node),
                Phase::Waiting { .. } | Phase::Dialing { .. } => {
                    assert!(p.dialer, "the acceptor of {} dials it", p.spec.node)
                }
                Phase::Up { .. } => {}
            }
            if let Phase::Dialing { conn, .. } | Phase::Up { conn, .. } = p.phase {
                assert!(held.insert(conn), "connection {conn} held twice");
            }
            if let Some(c) = p.installed() {
                assert!(installed_peers.insert((p.spec.node.clone(), c)));
            }
        }
        for c in self.table.held() {
            assert!(held.insert(c), "connection {c} held for identification and by a peer");
        }
        let open: BTreeSet<u32> = self.open.keys().copied().collect();
        assert_eq!(held, open, "the table and the loop disagree on the open connections");
        let installed: Vec<u32> = self.table.installed().map(|(_, c)| c).collect();
        let unique: BTreeSet<u32> = installed.iter().copied().collect();
        assert_eq!(installed.len(), unique.len());
    }

    fn timeout(&mut self, answers: &mut impl Iterator<Item = u8>) {
        let actions = self.table.handle_timeout(self.now);
        self.execute(actions, answers);
        if let Some(t) = self.table.poll_timeout() {
            assert!(t > self.now, "something is due in the past after handle_timeout");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut m = Model {
        table: PeerTable::new(ME),
        now: Instant::now(),
        next_conn: 0,
        open: BTreeMap::new(),
        closed: BTreeSet::new(),
    };
    let mut bytes = data.iter().copied().take(4096);
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        match op % 8 {
            0 => {
                let variant = bytes.next().unwrap_or(0);
                let specs: Vec<PeerSpec> = (0..NODES.len())
                    .filter(|i| arg >> i & 1 == 1)
                    .map(|i| spec(i, if arg >> 6 & 1 == 1 { variant >> i } else { 0 }))
                    .collect();
                let actions = m.table.set_peers(specs, m.now);
                m.execute(actions, &mut bytes);
            }
            1 => {
                m.now += Duration::from_millis(u64::from(arg) * 10);
                m.timeout(&mut bytes);
            }
            2 => {
                if let Some(t) = m.table.poll_timeout() {
                    m.now = m.now.max(t);
                }
                m.timeout(&mut bytes);
            }
            3 => {
                // A dial's handshake completes.
                let dials: Vec<(u32, String)> = m.open.iter().filter_map(|(c, n)| Some((*c, n.clone()?))).collect();
                if let Some((c, node)) = dials.get(usize::from(arg) % dials.len().max(1)).cloned() {
                    m.open.insert(c, None);
                    let actions = m.table.connected(&node, c, m.now);
                    m.execute(actions, &mut bytes);
                }
            }
            4 => {
                // An open connection is lost.
                let open: Vec<u32> = m.open.keys().copied().collect();
                if let Some(&c) = open.get(usize::from(arg) % open.len().max(1)) {
                    m.open.remove(&c);
                    if !m.table.held_closed(c) {
                        let actions = m.table.lost(c, &"lost", m.now);
                        m.execute(actions, &mut bytes);
                    }
                }
            }
            5 | 6 => {
                // A connection is accepted from a node (or one that is no node of the set), from its
                // address or another one: identified, refused, or held for the next peer set.
                let i = usize::from(arg) % (NODES.len() + 1);
                let name = NODES.get(i).copied().unwrap_or("q").to_string();
                let ip = IpAddr::from([192, 0, 2, i as u8 + 1 + 10 * (arg >> 7)]);
                let c = m.conn();
                m.open.insert(c, None);
                let actions = m.table.accepted(c, vec![name], ip, m.now);
                m.execute(actions, &mut bytes);
            }
            _ => {
                // A handshake completes for a node that is not a peer.
                let c = m.conn();
                m.open.insert(c, None);
                let actions = m.table.connected("q", c, m.now);
                m.execute(actions, &mut bytes);
            }
        }
        m.check();
    }
});
