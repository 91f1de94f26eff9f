//! The event loop's control side: the daemon's commands, and the peer table's actions carried
//! out on quinn-proto (dial, close, install), the route table and the status the API reads.

use super::{close_code, Conn, Loop, Via};
use crate::backend::quic::packet::{self, Prefix};
use crate::backend::quic::shared::{lock, Cmd, PeerView, CLOSE_GRACE, STATUS_EVERY};
use crate::backend::quic::table::{Action, Closing};
use crate::backend::quic::tls;
use bytes::Bytes;
use ipnet::IpNet;
use quinn_proto as qp;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tracing::{debug, info, warn};
use weft_config::subnet::PerFamily;

impl Loop {
    /// Carries out what the peer table decided.
    pub(super) fn execute(&mut self, actions: Vec<Action<qp::ConnectionHandle>>, now: Instant) {
        for action in actions {
            match action {
                Action::Dial { node, endpoint } => self.dial(&node, endpoint, now),
                Action::Close { conn, why } => self.close(conn, why, now),
                Action::Refuse { conn, why } => self.refuse(conn, &why, now),
                Action::Install { node, subnets, conn } => self.install(node, subnets, conn),
                Action::Routes => self.rebuild_routes(),
                Action::Forget { node } => {
                    self.counters.remove(&node);
                }
            }
        }
    }

    fn dial(&mut self, node: &str, endpoint: std::net::SocketAddr, now: Instant) {
        match self.endpoint.connect(now, self.client.clone(), endpoint, node) {
            Ok((ch, conn)) => {
                self.table.dial_started(node, ch, now);
                self.conns.insert(ch, Conn::new(conn, Some(node)));
                self.mark(ch);
            }
            Err(e) => {
                debug!(peer = %node, error = %e, "cannot start a handshake");
                self.table.dial_not_started(node, now);
            }
        }
    }

    pub(super) fn commands(&mut self) {
        while let Ok(cmd) = self.cmds.try_recv() {
            match cmd {
                Cmd::Peers(set) => {
                    let now = Instant::now();
                    self.counters = set.counters;
                    self.hand_off = set.hand_off;
                    let actions = self.table.set_peers(set.specs, now);
                    self.execute(actions, now);
                }
                Cmd::Tls { server, client } => {
                    self.endpoint.set_server_config(Some(server));
                    self.client = client;
                }
                Cmd::Stop => {
                    let now = Instant::now();
                    self.stopping = Some(now + CLOSE_GRACE);
                    let handles: Vec<_> = self.conns.keys().copied().collect();
                    for ch in handles {
                        if let Some(c) = self.conns.get_mut(&ch) {
                            let why = Closing::AgentStopping;
                            c.conn.close(now, close_code(why.code()), Bytes::from_static(why.reason()));
                            c.closing = true;
                        }
                        self.mark(ch);
                    }
                }
            }
        }
    }

    pub(super) fn close(&mut self, ch: qp::ConnectionHandle, why: Closing, now: Instant) {
        if let Some(c) = self.conns.get_mut(&ch) {
            c.conn.close(now, close_code(why.code()), Bytes::from_static(why.reason()));
            c.node = None;
            c.peer = None;
            c.closing = true;
            self.mark(ch);
        }
    }

    /// Refuses the accepted connection `ch`: counted, logged, closed.
    fn refuse(&mut self, ch: qp::ConnectionHandle, why: &dyn std::fmt::Display, now: Instant) {
        if let Some(c) = self.conns.get(&ch) {
            self.sh.refused.fetch_add(1, Relaxed);
            warn!(remote = %c.conn.remote_address(), error = %why, "refused a connection");
        }
        self.close(ch, Closing::Unidentified, now);
    }

    /// `ch` becomes `node`'s tunnel: its datagrams flow (each packet's source checked against
    /// the peer's subnet of its family), counted on the peer's counters.
    fn install(&mut self, node: String, subnets: PerFamily<IpNet>, ch: qp::ConnectionHandle) {
        let counters = self.counters.entry(node.clone()).or_default().clone();
        let Some(c) = self.conns.get_mut(&ch) else { return };
        let max = c.conn.datagrams().max_size().unwrap_or(0);
        c.peer = Some((Prefix::of(subnets.values().copied()), counters));
        c.max_datagram = max;
        info!(peer = %node, remote = %c.conn.remote_address(), max_datagram = max, "tunnel up");
        if max < self.sh.tun_mtu as usize {
            warn!(peer = %node, max_datagram = max, tun_mtu = self.sh.tun_mtu, "datagrams smaller than the tun MTU: large packets will be dropped");
        }
        c.node = Some(node);
    }

    fn rebuild_routes(&mut self) {
        let mut routes = packet::SubnetTable::new(self.local);
        let installed = self.table.installed().map(|(subnets, ch)| (subnets, Via::Conn(ch)));
        let handed = self.hand_off.iter().map(|h| (h.subnets, Via::Thread(h.to)));
        for (subnets, via) in installed.chain(handed) {
            for (_, subnet) in subnets.iter() {
                if !routes.insert(*subnet, via) {
                    warn!(%subnet, "a peer subnet of another length or family than this node's: no route to it");
                }
            }
        }
        self.routes = routes;
        self.publish_status();
    }

    pub(super) fn publish_status(&mut self) {
        let view = self
            .table
            .peers()
            .map(|p| {
                let conn = p.installed().and_then(|ch| self.conns.get(&ch));
                let frames =
                    conn.map(|c| c.conn.stats()).map_or((0, 0), |s| (s.frame_tx.datagram, s.frame_rx.datagram));
                PeerView {
                    node: p.spec.node.clone(),
                    subnets: p.spec.subnets,
                    connected: conn.is_some(),
                    dialer: p.dialer,
                    rtt_us: conn.map_or(0, |c| c.conn.rtt().as_micros() as u64),
                    connects: p.connects,
                    counters: self.counters.entry(p.spec.node.clone()).or_default().clone(),
                    threads: p.spec.threads,
                    tx_datagrams: frames.0,
                    rx_datagrams: frames.1,
                }
            })
            .collect();
        if let Some(mine) = self.sh.peers.get(self.index) {
            *lock(mine) = view;
        }
        self.status_due = Instant::now() + STATUS_EVERY;
    }

    /// The connection `ch` completed its handshake.
    pub(super) fn connected(&mut self, ch: qp::ConnectionHandle, now: Instant) {
        let Some(c) = self.conns.get_mut(&ch) else { return };
        if c.closing {
            return;
        }
        // A dialled connection knows its peer; an accepted one is identified by the table.
        let actions = match c.node.clone() {
            Some(node) => self.table.connected(&node, ch, now),
            None => {
                let remote = c.conn.remote_address();
                match tls::peer_names(c.conn.crypto_session().peer_identity()) {
                    // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
                    Ok(names) => self.table.accepted(ch, names, remote.ip().to_canonical(), now),
                    Err(e) => {
                        self.refuse(ch, &format!("{e:#}"), now);
                        return;
                    }
                }
            }
        };
        self.execute(actions, now);
    }

    /// The connection `ch` is closed (by either side, or timed out).
    pub(super) fn lost(&mut self, ch: qp::ConnectionHandle, reason: &qp::ConnectionError, now: Instant) {
        let Some(c) = self.conns.get_mut(&ch) else { return };
        if c.closing {
            return;
        }
        c.closing = true;
        c.peer = None;
        // Only an accepted connection not yet identified has no node and is not closing: held
        // for its peer's record, or its handshake failed (bad certificate, wrong CA).
        if c.node.take().is_none() {
            if self.table.held_closed(ch) {
                debug!(remote = %c.conn.remote_address(), error = %reason, "a connection held for identification closed");
                return;
            }
            self.sh.refused.fetch_add(1, Relaxed);
            warn!(remote = %c.conn.remote_address(), error = %reason, "refused a QUIC handshake");
            return;
        }
        let actions = self.table.lost(ch, reason, now);
        self.execute(actions, now);
    }
}
