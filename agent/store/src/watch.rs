//! A watch on a key prefix, the same type for etcd and the fake: batches of events in revision
//! order, or an explicit signal that the watch is over and the caller must re-list.

use crate::RawRecord;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change. For a delete, `kv` has the key, an empty value, create revision 0 and the
/// revision of the delete as `mod_revision` (what etcd sends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: RawRecord,
}

/// What a watch delivers next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMsg {
    /// Changes, in revision order (may be empty: etcd's progress and creation notices).
    Events(Vec<WatchEvent>),
    /// etcd ended the watch: its start revision is compacted (`compact_revision` > 0: the
    /// oldest revision still kept), or it was cancelled for `reason`. Re-list, then watch again.
    Compacted { compact_revision: i64, reason: String },
    /// The stream broke (etcd unreachable or the stream ended), with the error if there was
    /// one. Re-list when etcd answers again.
    Broken(Option<String>),
}

enum Inner {
    Etcd(Box<etcd_client::WatchStream>),
    Mem(mpsc::UnboundedReceiver<WatchMsg>),
    Done,
}

/// A watch from [`crate::Store::watch`]. After a `Compacted` or `Broken` message it stays
/// broken: every further call returns `Broken(None)`.
pub struct Watch(Inner);

impl Watch {
    pub(crate) fn etcd(stream: etcd_client::WatchStream) -> Self {
        Self(Inner::Etcd(Box::new(stream)))
    }

    pub(crate) fn mem(rx: mpsc::UnboundedReceiver<WatchMsg>) -> Self {
        Self(Inner::Mem(rx))
    }

    /// The next message; waits for one.
    pub async fn next(&mut self) -> WatchMsg {
        let msg = match &mut self.0 {
            Inner::Etcd(s) => from_etcd(s.message().await),
            Inner::Mem(rx) => rx.recv().await.unwrap_or(WatchMsg::Broken(None)),
            Inner::Done => WatchMsg::Broken(None),
        };
        if !matches!(msg, WatchMsg::Events(_)) {
            self.0 = Inner::Done;
        }
        msg
    }
}

fn from_etcd(msg: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>) -> WatchMsg {
    let resp = match msg {
        Ok(Some(r)) => r,
        Ok(None) => return WatchMsg::Broken(None),
        Err(e) => return WatchMsg::Broken(Some(e.to_string())),
    };
    if resp.canceled() || resp.compact_revision() > 0 {
        return WatchMsg::Compacted {
            compact_revision: resp.compact_revision(),
            reason: resp.cancel_reason().to_string(),
        };
    }
    let events = resp
        .events()
        .iter()
        .filter_map(|ev| {
            let kv = ev.kv()?;
            let kind = match ev.event_type() {
                etcd_client::EventType::Put => EventKind::Put,
                etcd_client::EventType::Delete => EventKind::Delete,
            };
            Some(WatchEvent { kind, kv: crate::etcd::record(kv) })
        })
        .collect();
    WatchMsg::Events(events)
}
