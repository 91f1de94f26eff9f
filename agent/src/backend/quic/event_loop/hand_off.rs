//! Packets passed between the data path threads: a thread that reads a packet from its tun
//! queue for a peer whose pair uses fewer threads than its index hands it to the thread that
//! holds the connection ([`super::Via::Thread`]), always the same one, so a flow keeps its order.
//! Handed packets travel in batches through that thread's bounded queue, then its eventfd.

use super::{Loop, Via};
use crate::backend::quic::packet::{self, DropReason};
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::TrySendError;

/// Packets gathered for one thread before they are handed over (also at the end of each tun read turn).
const HAND_OFF_BATCH: usize = 64;

impl Loop {
    /// Queues `pkt`, read from this thread's tun queue, for thread `k`.
    pub(super) fn hand_off(&mut self, k: usize, pkt: Bytes) {
        let Some(out) = self.outbox.get_mut(k) else {
            self.sh.drops[DropReason::NoPeer.index()].fetch_add(1, Relaxed);
            return;
        };
        out.push(pkt);
        if out.len() >= HAND_OFF_BATCH {
            self.flush_hand_off(k);
        }
    }

    /// Hands every queued packet over and wakes the threads that got some.
    pub(super) fn flush_hand_offs(&mut self) {
        for k in 0..self.outbox.len() {
            self.flush_hand_off(k);
        }
    }

    fn flush_hand_off(&mut self, k: usize) {
        let (Some(out), Some(link)) = (self.outbox.get_mut(k), self.links.get(k)) else { return };
        if out.is_empty() {
            return;
        }
        let batch = std::mem::replace(out, Vec::with_capacity(HAND_OFF_BATCH));
        let n = batch.len() as u64;
        match link.handed.try_send(batch) {
            Ok(()) => {
                link.wake.wake();
                self.sh.handed.fetch_add(n, Relaxed);
            }
            // The thread is behind (or stopped): the packets are lost, as on a full socket.
            Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => {
                self.sh.drops[DropReason::SendFailed.index()].fetch_add(b.len() as u64, Relaxed);
            }
        }
    }

    /// Sends the packets other threads handed to this one on this thread's connections.
    pub(super) fn take_handed(&mut self) {
        let mut any = false;
        while let Ok(batch) = self.handed.try_recv() {
            for pkt in batch {
                self.send_handed(pkt);
            }
            any = true;
        }
        if any {
            self.drive_dirty();
        }
    }

    /// One handed packet: its route here is a connection (this thread is below the pair's
    /// count); a peer set changing under it can make it another hand-off, which is not
    /// followed (no loops): the packet is dropped as having no peer.
    fn send_handed(&mut self, pkt: Bytes) {
        let dst = match packet::outbound_dst(&pkt) {
            Ok(d) => d,
            Err(d) => {
                self.sh.drops[d.index()].fetch_add(1, Relaxed);
                return;
            }
        };
        let Some(&Via::Conn(ch)) = self.routes.lookup(dst) else {
            self.sh.drops[DropReason::NoPeer.index()].fetch_add(1, Relaxed);
            return;
        };
        self.send_datagram(ch, pkt);
    }
}
