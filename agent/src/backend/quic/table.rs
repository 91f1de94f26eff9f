//! The quic backend's peer table: a pure state machine (no I/O, `now` passed in) deciding who
//! dials whom and when, what a completed handshake or a lost connection changes, and what a new
//! peer set closes; it returns [`Action`]s that the event loop carries out with quinn-proto.
//!
//! Of each pair of nodes the one with the smaller name dials; the other accepts and identifies
//! the peer by its certificate and address ([`PeerTable::identify`]). A failed dial is retried
//! after a backoff doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]; a dial not through its
//! handshake within [`HANDSHAKE_TIMEOUT`] is abandoned. A peer whose epoch or endpoint changed
//! (it restarted) is redialled at once; a newer connection replaces an older one; a tunnel that
//! closes within [`HEALTHY`] of coming up backs off instead of being redialled at once. An
//! accepted connection whose certificate names no peer yet is held for [`IDENTIFY_GRACE`] and
//! identified again with every new peer set before it is refused.

use ipnet::IpNet;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, info};
use weft_config::subnet::PerFamily;

/// A dial that has not completed its handshake by then is abandoned and retried.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A tunnel up at least this long counts as healthy: when it closes, it is redialled at once.
pub const HEALTHY: Duration = Duration::from_secs(1);
/// How long an accepted connection whose certificate names no current peer is held before it
/// is refused: a joining node publishes its record (which makes peers dial) a moment before its
/// own peer set reaches the tunnel, and a peer's record arrives through the watch a moment after
/// the peer could dial. Refusing at once made the dialer back off and redial at every join.
pub const IDENTIFY_GRACE: Duration = Duration::from_secs(2);

/// A peer node as the tunnel needs it: one per node, whatever the families it serves, so a pair
/// of nodes has one connection that carries both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub node: String,
    /// The node's subnet of each family (IPv4 first): a datagram from it may carry a packet
    /// whose source is in its subnet of the packet's family.
    pub subnets: PerFamily<IpNet>,
    pub endpoint: SocketAddr,
    pub epoch: u64,
    /// Data path threads: as the peer advertises them (from the driver), or, in the specs of
    /// one thread ([`super::shard::plan`]), how many of them the pair uses.
    pub threads: usize,
}

/// Why this side closes a connection: the application close code and reason the peer sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// The tunnel is stopping (decided by the loop, not the table).
    AgentStopping,
    HandshakeTimedOut,
    PeerLeft,
    PeerRestarted,
    Replaced,
    /// A handshake completed for a node that is not (or no longer) a peer.
    NotAPeer,
    /// An accepted connection whose certificate or address matches no peer (decided by the loop
    /// from [`PeerTable::identify`]).
    Unidentified,
}

impl Closing {
    pub fn code(self) -> u32 {
        match self {
            Closing::AgentStopping | Closing::HandshakeTimedOut => 0,
            Closing::PeerLeft => 1,
            Closing::PeerRestarted => 2,
            Closing::Replaced => 3,
            Closing::NotAPeer | Closing::Unidentified => 4,
        }
    }

    pub fn reason(self) -> &'static [u8] {
        match self {
            Closing::AgentStopping => b"agent stopping",
            Closing::HandshakeTimedOut => b"handshake timed out",
            Closing::PeerLeft => b"peer left",
            Closing::PeerRestarted => b"peer restarted",
            Closing::Replaced => b"replaced by a newer connection",
            Closing::NotAPeer => b"not a peer",
            Closing::Unidentified => b"unknown node or wrong address",
        }
    }
}

/// What the event loop is to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<C> {
    /// Start a handshake with `node` at `endpoint`, then report [`PeerTable::dial_started`]
    /// or [`PeerTable::dial_not_started`].
    Dial { node: String, endpoint: SocketAddr },
    /// Close the connection; the table has forgotten it (its loss needs no report).
    Close { conn: C, why: Closing },
    /// Refuse the accepted connection: count it, log `why`, close it as
    /// [`Closing::Unidentified`].
    Refuse { conn: C, why: Unidentified },
    /// `conn` is now `node`'s tunnel: its datagrams carry packets from `subnets` (each family's
    /// source checked against that family's subnet).
    Install { node: String, subnets: PerFamily<IpNet>, conn: C },
    /// The installed connections changed: rebuild the route table from
    /// [`PeerTable::installed`] (and show the new state).
    Routes,
    /// `node` left the peer set: drop what the loop keeps about it (counters).
    Forget { node: String },
}

/// Where a peer's connection stands; which of them a peer can be in depends on its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase<C> {
    /// Acceptor without a tunnel: waits for the peer to dial.
    Idle,
    /// Dialer without a tunnel: dials at `at`.
    Waiting { at: Instant },
    /// Dialer: an [`Action::Dial`] is out and its answer not yet reported.
    Starting,
    /// Dialer: a handshake in progress, abandoned at `deadline`.
    Dialing { conn: C, deadline: Instant },
    /// The tunnel is up on `conn` since `since`.
    Up { conn: C, since: Instant },
}

/// One peer as the table tracks it.
#[derive(Debug, Clone)]
pub struct PeerState<C> {
    pub spec: PeerSpec,
    /// This side dials (its name is the smaller of the pair).
    pub dialer: bool,
    pub phase: Phase<C>,
    /// The wait before the next dial after a failure.
    pub backoff: Duration,
    /// How many times a tunnel came up.
    pub connects: u64,
}

impl<C: Copy> PeerState<C> {
    /// The installed connection.
    pub fn installed(&self) -> Option<C> {
        match self.phase {
            Phase::Up { conn, .. } => Some(conn),
            _ => None,
        }
    }
}

/// What comes due at an instant of the table's timer heap.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Due<C> {
    Dial(String),
    Handshake(String, C),
    /// A held accepted connection is refused unless identified by then.
    Identify(C),
}

/// An accepted connection waiting for a peer set that names its certificate.
#[derive(Debug, Clone)]
struct Held {
    names: Vec<String>,
    remote: IpAddr,
    until: Instant,
}

/// An accepted connection that names no peer, or comes from the wrong address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unidentified {
    #[error("certificate names {node}, whose endpoint is {endpoint}, but the connection comes from {remote}")]
    WrongAddress { node: String, endpoint: SocketAddr, remote: IpAddr },
    #[error("certificate names {names:?}, none of them a peer")]
    NoPeer { names: Vec<String> },
}

/// The peers of this node and their connections, keyed by node name; `C` identifies a
/// connection (quinn-proto's `ConnectionHandle` in the loop).
pub struct PeerTable<C> {
    me: String,
    peers: BTreeMap<String, PeerState<C>>,
    /// Dials and handshake deadlines, earliest first. Entries are checked against the peer when
    /// they come due (a later change supersedes them), so a wake-up costs the same with one peer
    /// as with hundreds.
    timers: BinaryHeap<Reverse<(Instant, Due<C>)>>,
    held: BTreeMap<C, Held>,
}

impl<C: Copy + Ord + fmt::Debug> PeerTable<C> {
    /// An empty table for the node named `me`.
    pub fn new(me: &str) -> PeerTable<C> {
        PeerTable { me: me.to_string(), peers: BTreeMap::new(), timers: BinaryHeap::new(), held: BTreeMap::new() }
    }

    /// Whether this node dials `node` (its name is the smaller).
    pub fn dials(&self, node: &str) -> bool {
        self.me.as_str() < node
    }

    pub fn get(&self, node: &str) -> Option<&PeerState<C>> {
        self.peers.get(node)
    }

    #[cfg(test)]
    fn get_mut_for_test(&mut self, node: &str) -> &mut PeerState<C> {
        self.peers.get_mut(node).expect("a peer of the test")
    }

    /// Every peer, by name.
    pub fn peers(&self) -> impl Iterator<Item = &PeerState<C>> {
        self.peers.values()
    }

    /// The installed connections and the subnets they carry (both of a dual-stack peer).
    pub fn installed(&self) -> impl Iterator<Item = (PerFamily<IpNet>, C)> + '_ {
        self.peers.values().filter_map(|p| Some((p.spec.subnets, p.installed()?)))
    }

    /// The earliest instant [`PeerTable::handle_timeout`] has something to do (it may find the
    /// entry superseded and do nothing).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn dial_at(&mut self, node: &str, at: Instant) {
        if let Some(p) = self.peers.get_mut(node) {
            p.phase = Phase::Waiting { at };
            self.timers.push(Reverse((at, Due::Dial(node.to_string()))));
        }
    }

    /// Dial again after the backoff, which doubles (up to [`BACKOFF_MAX`]).
    fn retry(&mut self, node: &str, now: Instant) {
        let Some(p) = self.peers.get_mut(node) else { return };
        let at = now + p.backoff;
        p.backoff = (p.backoff * 2).min(BACKOFF_MAX);
        self.dial_at(node, at);
    }

    /// The new peer set: new peers are dialled (by the dialer of the pair), gone ones
    /// disconnected, restarted ones (new epoch or endpoint) or moved ones (new subnet) redialled.
    pub fn set_peers(&mut self, specs: Vec<PeerSpec>, now: Instant) -> Vec<Action<C>> {
        let mut out = Vec::new();
        let gone: Vec<String> = self.peers.keys().filter(|n| !specs.iter().any(|s| &s.node == *n)).cloned().collect();
        for node in gone {
            if let Some(p) = self.peers.remove(&node) {
                if let Phase::Up { conn, .. } | Phase::Dialing { conn, .. } = p.phase {
                    out.push(Action::Close { conn, why: Closing::PeerLeft });
                }
                info!(peer = %node, "peer gone");
                out.push(Action::Forget { node });
            }
        }
        for spec in specs {
            let dialer = self.dials(&spec.node);
            match self.peers.get_mut(&spec.node) {
                Some(p) if p.spec == spec => {}
                Some(p) => {
                    let restarted = p.spec.epoch != spec.epoch || p.spec.endpoint != spec.endpoint;
                    let moved = p.spec.subnets != spec.subnets;
                    p.spec = spec.clone();
                    if restarted || moved {
                        info!(peer = %spec.node, "peer restarted or changed; reconnecting");
                        let old = std::mem::replace(&mut p.phase, Phase::Idle);
                        p.backoff = BACKOFF_MIN;
                        if dialer {
                            self.dial_at(&spec.node, now);
                        }
                        if let Phase::Up { conn, .. } | Phase::Dialing { conn, .. } = old {
                            out.push(Action::Close { conn, why: Closing::PeerRestarted });
                        }
                    }
                }
                None => {
                    let node = spec.node.clone();
                    let p = PeerState { spec, dialer, phase: Phase::Idle, backoff: BACKOFF_MIN, connects: 0 };
                    self.peers.insert(node.clone(), p);
                    if dialer {
                        self.dial_at(&node, now);
                    }
                }
            }
        }
        out.push(Action::Routes);
        let held: Vec<(C, Held)> = std::mem::take(&mut self.held).into_iter().collect();
        for (conn, h) in held {
            match self.identify(&h.names, h.remote) {
                Ok(node) => {
                    let node = node.to_string();
                    out.extend(self.connected(&node, conn, now));
                }
                Err(why @ Unidentified::WrongAddress { .. }) => out.push(Action::Refuse { conn, why }),
                Err(Unidentified::NoPeer { .. }) => {
                    self.held.insert(conn, h);
                }
            }
        }
        out
    }

    /// Handshake deadlines and dials due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action<C>> {
        let mut out = Vec::new();
        while let Some(Reverse((t, _))) = self.timers.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((t, due))) = self.timers.pop() else { break };
            match due {
                Due::Handshake(node, conn) => {
                    let Some(p) = self.peers.get_mut(&node) else { continue };
                    if p.phase != (Phase::Dialing { conn, deadline: t }) {
                        continue;
                    }
                    debug!(peer = %node, "dial timed out");
                    out.push(Action::Close { conn, why: Closing::HandshakeTimedOut });
                    self.retry(&node, now);
                }
                Due::Dial(node) => {
                    let Some(p) = self.peers.get_mut(&node) else { continue };
                    if p.phase != (Phase::Waiting { at: t }) {
                        continue;
                    }
                    p.phase = Phase::Starting;
                    out.push(Action::Dial { node, endpoint: p.spec.endpoint });
                }
                Due::Identify(conn) => {
                    if self.held.get(&conn).is_none_or(|h| h.until != t) {
                        continue;
                    }
                    if let Some(h) = self.held.remove(&conn) {
                        out.push(Action::Refuse { conn, why: Unidentified::NoPeer { names: h.names } });
                    }
                }
            }
        }
        out
    }

    /// The handshake an [`Action::Dial`] asked for started on `conn`.
    pub fn dial_started(&mut self, node: &str, conn: C, now: Instant) {
        let Some(p) = self.peers.get_mut(node) else { return };
        if p.phase == Phase::Starting {
            let deadline = now + HANDSHAKE_TIMEOUT;
            p.phase = Phase::Dialing { conn, deadline };
            self.timers.push(Reverse((deadline, Due::Handshake(node.to_string(), conn))));
        }
    }

    /// The handshake an [`Action::Dial`] asked for could not start: try again after the backoff.
    pub fn dial_not_started(&mut self, node: &str, now: Instant) {
        if self.peers.get(node).is_some_and(|p| p.phase == Phase::Starting) {
            self.retry(node, now);
        }
    }

    /// Who is on the other end of an accepted connection: the certificate (already verified
    /// against the CA) names `names`, one of which must be a peer, and the connection comes from
    /// `remote`, which must be that peer's advertised address.
    pub fn identify(&self, names: &[String], remote: IpAddr) -> Result<&str, Unidentified> {
        for n in names {
            if let Some(p) = self.peers.get(n) {
                if p.spec.endpoint.ip() != remote {
                    return Err(Unidentified::WrongAddress { node: n.clone(), endpoint: p.spec.endpoint, remote });
                }
                return Ok(&p.spec.node);
            }
        }
        Err(Unidentified::NoPeer { names: names.to_vec() })
    }

    /// The accepted connection `conn` completed its handshake; its certificate (verified against
    /// the CA) names `names` and it comes from `remote`. Identified, it becomes the peer's tunnel;
    /// a peer's name from another address is refused; a certificate naming no peer is held for
    /// [`IDENTIFY_GRACE`] (see [`PeerTable::set_peers`]).
    pub fn accepted(&mut self, conn: C, names: Vec<String>, remote: IpAddr, now: Instant) -> Vec<Action<C>> {
        match self.identify(&names, remote) {
            Ok(node) => {
                let node = node.to_string();
                self.connected(&node, conn, now)
            }
            Err(why @ Unidentified::WrongAddress { .. }) => vec![Action::Refuse { conn, why }],
            Err(Unidentified::NoPeer { .. }) => {
                debug!(?names, %remote, "certificate names no peer yet; holding the connection");
                let until = now + IDENTIFY_GRACE;
                self.held.insert(conn, Held { names, remote, until });
                self.timers.push(Reverse((until, Due::Identify(conn))));
                Vec::new()
            }
        }
    }

    /// The accepted connections held for identification.
    pub fn held(&self) -> impl Iterator<Item = C> + '_ {
        self.held.keys().copied()
    }

    /// A held accepted connection closed before it was identified: forget it. Whether `conn`
    /// was one.
    pub fn held_closed(&mut self, conn: C) -> bool {
        self.held.remove(&conn).is_some()
    }

    /// The connection `conn` to `node` (dialled, or accepted and identified) completed its
    /// handshake: it becomes the tunnel, replacing an older one and a dial in progress.
    pub fn connected(&mut self, node: &str, conn: C, now: Instant) -> Vec<Action<C>> {
        let Some(p) = self.peers.get_mut(node) else {
            return vec![Action::Close { conn, why: Closing::NotAPeer }];
        };
        let subnets = p.spec.subnets;
        let old = std::mem::replace(&mut p.phase, Phase::Up { conn, since: now });
        p.connects += 1;
        let mut out = vec![Action::Install { node: node.to_string(), subnets, conn }];
        if let Phase::Up { conn: o, .. } | Phase::Dialing { conn: o, .. } = old {
            if o != conn {
                out.push(Action::Close { conn: o, why: Closing::Replaced });
            }
        }
        out.push(Action::Routes);
        out
    }

    /// The connection `conn` closed (by the other side, or timed out); `reason` is for the log.
    /// A connection the table asked to close is not reported.
    pub fn lost(&mut self, conn: C, reason: &dyn fmt::Display, now: Instant) -> Vec<Action<C>> {
        let Some((node, p)) = self.peers.iter_mut().find(|(_, p)| match p.phase {
            Phase::Up { conn: c, .. } | Phase::Dialing { conn: c, .. } => c == conn,
            _ => false,
        }) else {
            return Vec::new();
        };
        let node = node.clone();
        match p.phase {
            Phase::Up { since, .. } => {
                info!(peer = %node, reason = %reason, "tunnel down");
                p.phase = Phase::Idle;
                if p.dialer {
                    // A tunnel that had been up for a while is redialled at once; one closed
                    // right after its handshake (the peer does not know us yet) backs off.
                    if now.saturating_duration_since(since) >= HEALTHY {
                        p.backoff = BACKOFF_MIN;
                        self.dial_at(&node, now);
                    } else {
                        self.retry(&node, now);
                    }
                }
                vec![Action::Routes]
            }
            _ => {
                debug!(peer = %node, error = %reason, "dial failed");
                self.retry(&node, now);
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn spec(node: &str, n: u8, epoch: u64) -> PeerSpec {
        PeerSpec {
            node: node.to_string(),
            subnets: PerFamily::V4(format!("10.244.{n}.0/24").parse().expect("a valid subnet")),
            endpoint: SocketAddr::from(([192, 0, 2, n], 4433)),
            epoch,
            threads: 1,
        }
    }

    /// The subnets of `s` as the event loop gets them.
    fn sub4(s: &PeerSpec) -> PerFamily<IpNet> {
        s.subnets
    }

    fn peer<'t>(t: &'t PeerTable<u32>, node: &str) -> &'t PeerState<u32> {
        t.get(node).expect("a peer of the test")
    }

    fn dials(actions: &[Action<u32>]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Dial { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect()
    }

    fn closes(actions: &[Action<u32>]) -> Vec<(u32, u32, &'static [u8])> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Close { conn, why } => Some((*conn, why.code(), why.reason())),
                _ => None,
            })
            .collect()
    }

    /// Node "a" with peer "b" (which "a" dials), dialled and connected on `conn` at `t0`.
    fn up(conn: u32) -> (PeerTable<u32>, Instant) {
        let t0 = Instant::now();
        let mut t = PeerTable::new("a");
        t.set_peers(vec![spec("b", 2, 1)], t0);
        assert_eq!(dials(&t.handle_timeout(t0)), ["b"]);
        t.dial_started("b", conn, t0);
        let acts = t.connected("b", conn, t0);
        assert_eq!(acts[0], Action::Install { node: "b".into(), subnets: sub4(&spec("b", 2, 1)), conn });
        (t, t0)
    }

    /// The instant the next dial of `node` is due, asserting it is waiting for one.
    fn next_dial(t: &PeerTable<u32>, node: &str) -> Instant {
        match t.get(node).map(|p| p.phase) {
            Some(Phase::Waiting { at }) => at,
            other => panic!("{node} is not waiting to dial: {other:?}"),
        }
    }

    #[test]
    fn only_the_smaller_name_dials() {
        let now = Instant::now();
        let mut t: PeerTable<u32> = PeerTable::new("m");
        let acts = t.set_peers(vec![spec("a", 1, 1), spec("z", 26, 1)], now);
        assert_eq!(acts, [Action::Routes]);
        assert_eq!(t.poll_timeout(), Some(now));
        let acts = t.handle_timeout(now);
        assert_eq!(acts, [Action::Dial { node: "z".into(), endpoint: spec("z", 26, 1).endpoint }]);
        assert!(!peer(&t, "a").dialer);
        assert_eq!(peer(&t, "a").phase, Phase::Idle);
        assert_eq!(peer(&t, "z").phase, Phase::Starting);
        // Much later, "a" is still only waited for.
        assert!(t.handle_timeout(now + Duration::from_secs(60)).is_empty());
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn both_sides_of_a_pair_agree_on_the_dialer() {
        let now = Instant::now();
        let mut a: PeerTable<u32> = PeerTable::new("a");
        let mut b: PeerTable<u32> = PeerTable::new("b");
        a.set_peers(vec![spec("b", 2, 1)], now);
        b.set_peers(vec![spec("a", 1, 1)], now);
        assert_eq!(dials(&a.handle_timeout(now)), ["b"]);
        assert!(b.handle_timeout(now).is_empty());
        // "b" accepts the dial and identifies "a" by its certificate and address.
        let who = b.identify(&["a".to_string()], IpAddr::from([192, 0, 2, 1])).expect("identified").to_string();
        assert_eq!(who, "a");
        a.dial_started("b", 7, now);
        let on_a = a.connected("b", 7, now);
        let on_b = b.connected(&who, 9, now);
        assert_eq!(closes(&on_a), []);
        assert_eq!(closes(&on_b), []);
        assert_eq!(a.installed().collect::<Vec<_>>(), [(sub4(&spec("b", 2, 1)), 7)]);
        assert_eq!(b.installed().collect::<Vec<_>>(), [(sub4(&spec("a", 1, 1)), 9)]);
    }

    #[test]
    fn an_accepted_connection_completing_first_replaces_the_dial() {
        let now = Instant::now();
        let mut t: PeerTable<u32> = PeerTable::new("a");
        t.set_peers(vec![spec("b", 2, 1)], now);
        t.handle_timeout(now);
        t.dial_started("b", 1, now);
        let acts = t.connected("b", 2, now + MS);
        assert_eq!(closes(&acts), [(1, 3, &b"replaced by a newer connection"[..])]);
        assert_eq!(acts.last(), Some(&Action::Routes));
        // The abandoned dial's loss and deadline change nothing.
        assert!(t.lost(1, &"closed", now + 2 * MS).is_empty());
        assert!(t.handle_timeout(now + HANDSHAKE_TIMEOUT).is_empty());
        assert_eq!(peer(&t, "b").installed(), Some(2));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut now = Instant::now();
        let mut t: PeerTable<u32> = PeerTable::new("a");
        t.set_peers(vec![spec("b", 2, 1)], now);
        let mut waits = Vec::new();
        for conn in 0..8 {
            assert_eq!(dials(&t.handle_timeout(now)), ["b"], "dial {conn}");
            t.dial_started("b", conn, now);
            assert!(t.lost(conn, &"refused", now + 10 * MS).is_empty());
            let at = next_dial(&t, "b");
            waits.push(at - (now + 10 * MS));
            // Nothing happens before the backoff is over.
            assert!(t.handle_timeout(at - MS).is_empty());
            now = at;
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn a_dial_that_cannot_start_backs_off() {
        let now = Instant::now();
        let mut t: PeerTable<u32> = PeerTable::new("a");
        t.set_peers(vec![spec("b", 2, 1)], now);
        t.handle_timeout(now);
        t.dial_not_started("b", now);
        assert_eq!(next_dial(&t, "b"), now + BACKOFF_MIN);
        assert_eq!(t.poll_timeout(), Some(now + BACKOFF_MIN));
        t.handle_timeout(now + BACKOFF_MIN);
        t.dial_not_started("b", now + BACKOFF_MIN);
        assert_eq!(next_dial(&t, "b"), now + BACKOFF_MIN + 2 * BACKOFF_MIN);
    }

    #[test]
    fn a_handshake_not_done_in_two_seconds_is_abandoned() {
        let now = Instant::now();
        let mut t: PeerTable<u32> = PeerTable::new("a");
        t.set_peers(vec![spec("b", 2, 1)], now);
        t.handle_timeout(now);
        t.dial_started("b", 5, now);
        assert_eq!(t.poll_timeout(), Some(now + HANDSHAKE_TIMEOUT));
        assert!(t.handle_timeout(now + HANDSHAKE_TIMEOUT - MS).is_empty());
        let acts = t.handle_timeout(now + HANDSHAKE_TIMEOUT);
        assert_eq!(closes(&acts), [(5, 0, &b"handshake timed out"[..])]);
        assert_eq!(next_dial(&t, "b"), now + HANDSHAKE_TIMEOUT + BACKOFF_MIN);
        // Its loss, reported later by quinn, is not a second failure.
        assert!(t.lost(5, &"timed out", now + HANDSHAKE_TIMEOUT + MS).is_empty());
        assert_eq!(peer(&t, "b").backoff, 2 * BACKOFF_MIN);
    }

    #[test]
    fn a_completed_handshake_cancels_its_deadline() {
        let (mut t, t0) = up(5);
        assert!(t.handle_timeout(t0 + HANDSHAKE_TIMEOUT).is_empty());
        assert_eq!(peer(&t, "b").installed(), Some(5));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn an_epoch_change_redials_at_once() {
        let (mut t, t0) = up(5);
        // Some failures first, so the backoff is not at its minimum.
        t.get_mut_for_test("b").backoff = BACKOFF_MAX;
        let later = t0 + Duration::from_millis(300);
        let acts = t.set_peers(vec![spec("b", 2, 2)], later);
        assert_eq!(closes(&acts), [(5, 2, &b"peer restarted"[..])]);
        assert_eq!(acts.last(), Some(&Action::Routes));
        assert_eq!(t.installed().count(), 0);
        assert_eq!(t.poll_timeout(), Some(later));
        assert_eq!(dials(&t.handle_timeout(later)), ["b"]);
        assert_eq!(peer(&t, "b").backoff, BACKOFF_MIN);
    }

    #[test]
    fn an_endpoint_change_redials_the_new_endpoint() {
        let (mut t, t0) = up(5);
        let mut moved = spec("b", 2, 1);
        moved.endpoint = SocketAddr::from(([198, 51, 100, 2], 4433));
        let acts = t.set_peers(vec![moved.clone()], t0);
        assert_eq!(closes(&acts), [(5, 2, &b"peer restarted"[..])]);
        assert_eq!(t.handle_timeout(t0), [Action::Dial { node: "b".into(), endpoint: moved.endpoint }]);
        // The acceptor closes too, and waits.
        let mut acc: PeerTable<u32> = PeerTable::new("c");
        acc.set_peers(vec![spec("b", 2, 1)], t0);
        acc.connected("b", 8, t0);
        let acts = acc.set_peers(vec![moved], t0);
        assert_eq!(closes(&acts), [(8, 2, &b"peer restarted"[..])]);
        assert_eq!(peer(&acc, "b").phase, Phase::Idle);
        assert!(acc.handle_timeout(t0 + Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn a_subnet_change_reconnects_and_routes_the_new_subnet() {
        let (mut t, t0) = up(5);
        let moved = spec("b", 9, 1);
        let acts = t.set_peers(vec![PeerSpec { endpoint: spec("b", 2, 1).endpoint, ..moved.clone() }], t0);
        assert_eq!(closes(&acts), [(5, 2, &b"peer restarted"[..])]);
        t.handle_timeout(t0);
        t.dial_started("b", 6, t0);
        t.connected("b", 6, t0);
        assert_eq!(t.installed().collect::<Vec<_>>(), [(sub4(&moved), 6)]);
    }

    #[test]
    fn a_dual_stack_peer_has_one_connection_carrying_both_subnets() {
        let t0 = Instant::now();
        let mut t: PeerTable<u32> = PeerTable::new("a");
        let v6: IpNet = "fd00:10:244:2::/64".parse().expect("literal");
        let dual = |s: PeerSpec| PeerSpec { subnets: PerFamily::Dual(*s.subnets.first(), v6), ..s };
        t.set_peers(vec![dual(spec("b", 2, 1))], t0);
        assert_eq!(dials(&t.handle_timeout(t0)), ["b"], "one dial for both families");
        t.dial_started("b", 5, t0);
        let acts = t.connected("b", 5, t0);
        assert_eq!(acts[0], Action::Install { node: "b".into(), subnets: dual(spec("b", 2, 1)).subnets, conn: 5 });
        assert_eq!(t.installed().collect::<Vec<_>>(), [(dual(spec("b", 2, 1)).subnets, 5)]);
        // Gaining or changing the IPv6 subnet alone is a changed peer: reconnect, new subnets.
        let moved6 = PeerSpec {
            subnets: PerFamily::Dual(*spec("b", 2, 1).subnets.first(), "fd00:10:244:9::/64".parse().expect("literal")),
            ..spec("b", 2, 1)
        };
        let acts = t.set_peers(vec![moved6.clone()], t0);
        assert_eq!(closes(&acts), [(5, 2, &b"peer restarted"[..])]);
        t.handle_timeout(t0);
        t.dial_started("b", 6, t0);
        t.connected("b", 6, t0);
        assert_eq!(t.installed().collect::<Vec<_>>(), [(moved6.subnets, 6)]);
    }

    #[test]
    fn an_unchanged_peer_set_changes_nothing() {
        let (mut t, t0) = up(5);
        let acts = t.set_peers(vec![spec("b", 2, 1)], t0 + Duration::from_secs(3));
        assert_eq!(acts, [Action::Routes]);
        assert_eq!(peer(&t, "b").installed(), Some(5));
        assert!(t.handle_timeout(t0 + Duration::from_secs(10)).is_empty());
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn a_newer_connection_replaces_the_older_one() {
        let (mut t, t0) = up(5);
        let acts = t.connected("b", 6, t0 + Duration::from_secs(5));
        assert_eq!(
            acts,
            [
                Action::Install { node: "b".into(), subnets: sub4(&spec("b", 2, 1)), conn: 6 },
                Action::Close { conn: 5, why: Closing::Replaced },
                Action::Routes,
            ]
        );
        assert_eq!(Closing::Replaced.code(), 3);
        assert_eq!(t.installed().collect::<Vec<_>>(), [(sub4(&spec("b", 2, 1)), 6)]);
        assert_eq!(peer(&t, "b").connects, 2);
        // The replaced one's end is not a tunnel going down.
        assert!(t.lost(5, &"replaced", t0 + Duration::from_secs(6)).is_empty());
        assert_eq!(peer(&t, "b").installed(), Some(6));
    }

    #[test]
    fn a_tunnel_closing_within_a_second_backs_off() {
        let (mut t, t0) = up(5);
        let at = t0 + HEALTHY - MS;
        assert_eq!(t.lost(5, &"closed by peer", at), [Action::Routes]);
        assert_eq!(next_dial(&t, "b"), at + BACKOFF_MIN);
        assert!(t.handle_timeout(at).is_empty());
        // Up and down again quickly: the backoff doubles.
        let redial = at + BACKOFF_MIN;
        assert_eq!(dials(&t.handle_timeout(redial)), ["b"]);
        t.dial_started("b", 6, redial);
        t.connected("b", 6, redial);
        t.lost(6, &"closed by peer", redial + 10 * MS);
        assert_eq!(next_dial(&t, "b"), redial + 10 * MS + 2 * BACKOFF_MIN);
    }

    #[test]
    fn a_tunnel_up_a_second_or_more_is_redialled_at_once() {
        let (mut t, t0) = up(5);
        t.get_mut_for_test("b").backoff = BACKOFF_MAX;
        let at = t0 + HEALTHY;
        assert_eq!(t.lost(5, &"idle timeout", at), [Action::Routes]);
        assert_eq!(next_dial(&t, "b"), at);
        assert_eq!(dials(&t.handle_timeout(at)), ["b"]);
        assert_eq!(peer(&t, "b").backoff, BACKOFF_MIN);
    }

    #[test]
    fn an_acceptor_whose_tunnel_closes_waits_for_the_peer() {
        let now = Instant::now();
        let mut t: PeerTable<u32> = PeerTable::new("z");
        t.set_peers(vec![spec("b", 2, 1)], now);
        t.connected("b", 3, now);
        assert_eq!(t.lost(3, &"gone", now + Duration::from_secs(9)), [Action::Routes]);
        assert_eq!(peer(&t, "b").phase, Phase::Idle);
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn a_removed_peer_is_closed_and_never_dialled() {
        let (mut t, t0) = up(5);
        let acts = t.set_peers(vec![], t0);
        assert_eq!(
            acts,
            [Action::Close { conn: 5, why: Closing::PeerLeft }, Action::Forget { node: "b".into() }, Action::Routes]
        );
        assert_eq!(Closing::PeerLeft.code(), 1);
        assert!(t.get("b").is_none());
        // A peer removed while waiting for its redial: the dial never comes.
        let mut t: PeerTable<u32> = PeerTable::new("a");
        t.set_peers(vec![spec("c", 3, 1)], t0);
        t.set_peers(vec![], t0);
        assert!(t.handle_timeout(t0 + Duration::from_secs(1)).is_empty());
        // One removed while dialling: the dial is closed, its deadline does nothing.
        t.set_peers(vec![spec("c", 3, 1)], t0);
        t.handle_timeout(t0);
        t.dial_started("c", 4, t0);
        let acts = t.set_peers(vec![], t0 + MS);
        assert_eq!(closes(&acts), [(4, 1, &b"peer left"[..])]);
        assert!(t.handle_timeout(t0 + HANDSHAKE_TIMEOUT).is_empty());
        assert!(t.lost(4, &"closed", t0 + HANDSHAKE_TIMEOUT).is_empty());
    }

    #[test]
    fn a_handshake_for_a_node_that_is_not_a_peer_is_closed() {
        let mut t: PeerTable<u32> = PeerTable::new("a");
        let acts = t.connected("x", 1, Instant::now());
        assert_eq!(acts, [Action::Close { conn: 1, why: Closing::NotAPeer }]);
        assert_eq!((Closing::NotAPeer.code(), Closing::NotAPeer.reason()), (4, &b"not a peer"[..]));
    }

    #[test]
    fn identification_needs_a_peer_name_and_its_address() {
        let mut t: PeerTable<u32> = PeerTable::new("a");
        t.set_peers(vec![spec("b", 2, 1)], Instant::now());
        let from_b = IpAddr::from([192, 0, 2, 2]);
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(t.identify(&names(&["x", "b"]), from_b), Ok("b"));
        let wrong = t.identify(&names(&["b"]), IpAddr::from([192, 0, 2, 9])).expect_err("not identified");
        assert_eq!(
            wrong.to_string(),
            "certificate names b, whose endpoint is 192.0.2.2:4433, but the connection comes from 192.0.2.9"
        );
        let none = t.identify(&names(&["x"]), from_b).expect_err("not identified");
        assert_eq!(none.to_string(), r#"certificate names ["x"], none of them a peer"#);
    }

    /// Node "b" (which accepts from "a"), with no peer yet.
    fn acceptor() -> (PeerTable<u32>, Instant, IpAddr) {
        (PeerTable::new("b"), Instant::now(), IpAddr::from([192, 0, 2, 1]))
    }

    #[test]
    fn a_connection_from_a_node_not_yet_a_peer_is_held_until_the_peer_set_names_it() {
        let (mut t, t0, from_a) = acceptor();
        assert!(t.accepted(5, vec!["a".into()], from_a, t0).is_empty(), "neither refused nor installed");
        assert_eq!(t.held().collect::<Vec<_>>(), [5]);
        assert_eq!(t.poll_timeout(), Some(t0 + IDENTIFY_GRACE));
        // The joining node's own peer set arrives 30 ms later: the connection becomes a's tunnel.
        let acts = t.set_peers(vec![spec("a", 1, 1)], t0 + 30 * MS);
        assert!(acts.contains(&Action::Install { node: "a".into(), subnets: sub4(&spec("a", 1, 1)), conn: 5 }));
        assert_eq!(closes(&acts), []);
        assert!(!acts.iter().any(|a| matches!(a, Action::Refuse { .. })));
        assert_eq!(t.installed().collect::<Vec<_>>(), [(sub4(&spec("a", 1, 1)), 5)]);
        assert_eq!(t.held().count(), 0);
        // The grace deadline finds nothing to refuse.
        assert!(t.handle_timeout(t0 + IDENTIFY_GRACE).is_empty());
        assert_eq!(peer(&t, "a").connects, 1);
    }

    #[test]
    fn a_held_connection_is_refused_when_no_peer_set_names_it_within_the_grace() {
        let (mut t, t0, from_a) = acceptor();
        t.accepted(5, vec!["a".into()], from_a, t0);
        // A peer set without "a" keeps it held.
        let acts = t.set_peers(vec![spec("c", 3, 1)], t0 + MS);
        assert!(!acts.iter().any(|a| matches!(a, Action::Refuse { .. } | Action::Install { .. })));
        let early = t.handle_timeout(t0 + IDENTIFY_GRACE - MS);
        assert_eq!(dials(&early), ["c"], "only b's own dial of c");
        assert!(!early.iter().any(|a| matches!(a, Action::Refuse { .. })));
        t.dial_started("c", 7, t0 + IDENTIFY_GRACE - MS);
        let acts = t.handle_timeout(t0 + IDENTIFY_GRACE);
        assert_eq!(acts, [Action::Refuse { conn: 5, why: Unidentified::NoPeer { names: vec!["a".into()] } }]);
        assert_eq!(t.held().count(), 0);
    }

    #[test]
    fn a_held_connection_that_closes_is_forgotten() {
        let (mut t, t0, from_a) = acceptor();
        t.accepted(5, vec!["a".into()], from_a, t0);
        assert!(t.held_closed(5));
        assert!(!t.held_closed(5));
        assert!(t.handle_timeout(t0 + IDENTIFY_GRACE).is_empty(), "nothing refused for a closed connection");
        // And a later peer set naming "a" installs nothing for it.
        let acts = t.set_peers(vec![spec("a", 1, 1)], t0 + 3 * IDENTIFY_GRACE);
        assert!(!acts.iter().any(|a| matches!(a, Action::Install { .. })));
    }

    #[test]
    fn a_peer_name_from_another_address_is_refused_at_once_also_when_held() {
        let (mut t, t0, from_a) = acceptor();
        t.set_peers(vec![spec("a", 1, 1)], t0);
        let elsewhere = IpAddr::from([192, 0, 2, 9]);
        let acts = t.accepted(5, vec!["a".into()], elsewhere, t0);
        assert!(matches!(&acts[..], [Action::Refuse { conn: 5, why: Unidentified::WrongAddress { .. } }]));
        // Held while "x" is unknown, then refused when the peer set says x is somewhere else.
        t.accepted(6, vec!["x".into()], from_a, t0);
        let acts = t.set_peers(vec![spec("a", 1, 1), spec("x", 24, 1)], t0 + MS);
        assert!(acts.iter().any(|a| matches!(a, Action::Refuse { conn: 6, why: Unidentified::WrongAddress { .. } })));
        assert_eq!(t.held().count(), 0);
    }

    #[test]
    fn close_codes_and_reasons_are_the_wire_ones() {
        let all = [
            (Closing::AgentStopping, 0, "agent stopping"),
            (Closing::HandshakeTimedOut, 0, "handshake timed out"),
            (Closing::PeerLeft, 1, "peer left"),
            (Closing::PeerRestarted, 2, "peer restarted"),
            (Closing::Replaced, 3, "replaced by a newer connection"),
            (Closing::NotAPeer, 4, "not a peer"),
            (Closing::Unidentified, 4, "unknown node or wrong address"),
        ];
        for (why, code, reason) in all {
            assert_eq!((why.code(), why.reason()), (code, reason.as_bytes()), "{why:?}");
        }
    }

    #[test]
    fn after_handle_timeout_nothing_is_due_in_the_past() {
        let now = Instant::now();
        let mut t: PeerTable<u32> = PeerTable::new("a");
        t.set_peers(vec![spec("b", 2, 1), spec("c", 3, 1), spec("d", 4, 1)], now);
        let acts = t.handle_timeout(now);
        assert_eq!(dials(&acts), ["b", "c", "d"]);
        t.dial_started("b", 1, now);
        t.dial_not_started("c", now);
        t.dial_started("d", 2, now);
        t.connected("d", 2, now);
        let next = t.poll_timeout().expect("a timer");
        assert_eq!(next, now + BACKOFF_MIN);
        t.handle_timeout(next);
        t.dial_not_started("c", next);
        assert!(t.poll_timeout().expect("a timer") > next);
    }
}
