//! The quic backend's peer table: a pure state machine (no I/O, `now` passed in) deciding who
//! dials whom and when, what a completed handshake or a lost connection changes, and what a new
//! peer set closes; it returns [`Action`]s that the event loop carries out with quinn-proto.
//!
//! Of each pair of nodes the one with the smaller name dials; the other accepts and identifies
//! the peer by its certificate and address ([`PeerTable::identify`]). A failed dial is retried
//! after a backoff doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]; a dial not through its
//! handshake within [`HANDSHAKE_TIMEOUT`] is abandoned. A peer whose epoch or endpoint changed
//! (it restarted) is redialled at once; a newer connection replaces an older one; a tunnel that
//! closes within [`HEALTHY`] of coming up backs off instead of being redialled at once.

use ipnet::Ipv4Net;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, info};

/// A dial that has not completed its handshake by then is abandoned and retried.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A tunnel up at least this long counts as healthy: when it closes, it is redialled at once.
pub const HEALTHY: Duration = Duration::from_secs(1);

/// A peer as the tunnel needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub node: String,
    pub subnet: Ipv4Net,
    pub endpoint: SocketAddr,
    pub epoch: u64,
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
    /// `conn` is now `node`'s tunnel: its datagrams carry `subnet`.
    Install { node: String, subnet: Ipv4Net, conn: C },
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
}

impl<C: Copy + Ord + fmt::Debug> PeerTable<C> {
    /// An empty table for the node named `me`.
    pub fn new(me: &str) -> PeerTable<C> {
        PeerTable { me: me.to_string(), peers: BTreeMap::new(), timers: BinaryHeap::new() }
    }

    /// Whether this node dials `node` (its name is the smaller).
    pub fn dials(&self, node: &str) -> bool {
        self.me.as_str() < node
    }

    pub fn get(&self, node: &str) -> Option<&PeerState<C>> {
        self.peers.get(node)
    }

    /// Every peer, by name.
    pub fn peers(&self) -> impl Iterator<Item = &PeerState<C>> {
        self.peers.values()
    }

    /// The installed connections and the subnets they carry.
    pub fn installed(&self) -> impl Iterator<Item = (Ipv4Net, C)> + '_ {
        self.peers.values().filter_map(|p| Some((p.spec.subnet, p.installed()?)))
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
                    let moved = p.spec.subnet != spec.subnet;
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

    /// The connection `conn` to `node` (dialled, or accepted and identified) completed its
    /// handshake: it becomes the tunnel, replacing an older one and a dial in progress.
    pub fn connected(&mut self, node: &str, conn: C, now: Instant) -> Vec<Action<C>> {
        let Some(p) = self.peers.get_mut(node) else {
            return vec![Action::Close { conn, why: Closing::NotAPeer }];
        };
        let old = std::mem::replace(&mut p.phase, Phase::Up { conn, since: now });
        p.connects += 1;
        let mut out = vec![Action::Install { node: node.to_string(), subnet: p.spec.subnet, conn }];
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
