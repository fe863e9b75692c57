//! Replication: records from peers (one at a time as they propagate, or in sync batches)
//! verified, stored, pushed to local watchers and forwarded; and the event-count sync a link
//! starts when it comes up.

use std::sync::Arc;

use bytes::Bytes;
use gossip_common::message::{self as m, EcEntry};
use gossip_common::{Body, ContactList, Message, Signed, UserInfo};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::encode;
use crate::mst::{key_string, ServerKey};
use crate::store::{Mode, StoreError};
use crate::Node;

/// Event-count entries per `eventCounts` message (about 40 bytes each).
const EC_PER_MESSAGE: usize = 1000;
/// Per-link sync progress: the peer's event counts, gathered until its last part.
pub(super) struct SyncIn {
    users: Vec<EcEntry>,
    lists: Vec<EcEntry>,
    /// Whether the peer's list was complete once: a link carries one sync, at link-up.
    done: bool,
    /// The link's bulk queue, for the records the peer lacks.
    pub(super) bulk: mpsc::Sender<(Instant, Bytes)>,
    /// `changedEntries` batches being verified and written at once: verifying the next batch
    /// while the previous one waits for its `fdatasync` keeps both the CPU and the disk busy;
    /// the bound keeps a fast sender from queueing unbounded work.
    pub(super) in_flight: Arc<tokio::sync::Semaphore>,
    /// Propagated records (`UserInfo`, `newuser`, `ChangeCL`) being applied at once.
    pub(super) records_in_flight: Arc<tokio::sync::Semaphore>,
    /// Relayed messages waiting for their sender's record, in KiB of body ([`PARKED_KIB`]).
    pub(super) parked: Arc<tokio::sync::Semaphore>,
}

/// KiB of relayed messages a link holds while their senders' records are on their way (16 MiB):
/// past it a message is refused, and stays with the peer for the next link-up's exchange.
pub(super) const PARKED_KIB: usize = 16 * 1024;

/// Propagated records a link applies concurrently (each waits for its own fdatasync).
pub(super) const RECORDS_IN_FLIGHT: usize = 256;

/// `changedEntries` batches a link applies concurrently.
pub(super) const SYNC_BATCHES_IN_FLIGHT: usize = 8;

/// Most event-count entries one peer's list may hold (users and lists together): sixteen
/// million is 16 times the largest database measured, and 256 MB of entries held here.
pub(super) const MAX_SYNC_ENTRIES: usize = 16_000_000;

/// What a part of the peer's event-count list leads to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SyncStep {
    /// More parts to come.
    Pending,
    /// The list is complete: the peer's entries, each sorted by UserID.
    Complete {
        /// UserInfo event counts.
        users: Vec<EcEntry>,
        /// ContactList event counts.
        lists: Vec<EcEntry>,
    },
    /// Not served (why); the link should be closed for `close`.
    Refused {
        /// What the log and the peer are told.
        why: &'static str,
        /// Whether the link must close (a peer that floods us), or the request is just ignored.
        close: bool,
    },
}

impl SyncIn {
    pub(super) fn new(bulk: mpsc::Sender<(Instant, Bytes)>) -> Self {
        SyncIn {
            users: Vec::new(),
            lists: Vec::new(),
            done: false,
            bulk,
            in_flight: Arc::new(tokio::sync::Semaphore::new(SYNC_BATCHES_IN_FLIGHT)),
            records_in_flight: Arc::new(tokio::sync::Semaphore::new(RECORDS_IN_FLIGHT)),
            parked: Arc::new(tokio::sync::Semaphore::new(PARKED_KIB)),
        }
    }

    /// Takes one `eventCounts` part. A peer gets one sync per link (the one at link-up: each
    /// round costs a sort and a send of everything it lacks, so repeated rounds are refused),
    /// and its list is bounded by [`MAX_SYNC_ENTRIES`].
    pub(super) fn on_event_counts(&mut self, ec: m::EventCounts) -> SyncStep {
        if self.done {
            return SyncStep::Refused {
                why: "a link carries one sync, at link-up",
                close: false,
            };
        }
        let total = self.users.len()
            + self.lists.len()
            + ec.userdb.entries.len()
            + ec.contactlist.entries.len();
        if total > MAX_SYNC_ENTRIES {
            self.users = Vec::new();
            self.lists = Vec::new();
            return SyncStep::Refused {
                why: "event-count list over the limit",
                close: true,
            };
        }
        self.users.extend(ec.userdb.entries);
        self.lists.extend(ec.contactlist.entries);
        if ec.last == 0 {
            return SyncStep::Pending;
        }
        self.done = true;
        let mut users = std::mem::take(&mut self.users);
        let mut lists = std::mem::take(&mut self.lists);
        users.sort_unstable_by_key(|e| e.uid);
        lists.sort_unstable_by_key(|e| e.uid);
        SyncStep::Complete { users, lists }
    }
}

/// `eventCounts` messages for everything this node holds (users, then lists; last one marked).
pub(super) fn event_count_messages(node: &Node) -> Vec<Bytes> {
    let users = node.store.user_event_counts();
    let lists = node.store.list_event_counts();
    let mut out = Vec::new();
    for chunk in users.chunks(EC_PER_MESSAGE) {
        out.push(encode(m::EventCounts {
            last: 0,
            userdb: m::EcList {
                entries: chunk.to_vec(),
            },
            contactlist: m::EcList::default(),
        }));
    }
    for chunk in lists.chunks(EC_PER_MESSAGE) {
        out.push(encode(m::EventCounts {
            last: 0,
            userdb: m::EcList::default(),
            contactlist: m::EcList {
                entries: chunk.to_vec(),
            },
        }));
    }
    out.push(encode(m::EventCounts {
        last: 1,
        ..Default::default()
    }));
    out
}

/// Sends the records a peer lacks as `changedEntries` messages, each filled to about 3/4 of
/// the frame limit, built one at a time as the link's queue takes them (a million records are
/// never all encoded at once).
pub(super) async fn send_changed_entries(
    node: Arc<Node>,
    users: Vec<gossip_common::UserId>,
    lists: Vec<gossip_common::UserId>,
    tx: mpsc::Sender<(Instant, Bytes)>,
) {
    let budget = node.config.max_frame * 3 / 4;
    let mut msg = m::ChangedEntries::default();
    let mut size = 0;
    // A user's record and list go side by side, in one frame (both inputs are sorted by
    // UserID): the receiver verifies a frame as one batch, which decompresses each key once
    // for both, and a list never arrives in a frame verified before its owner's record.
    for (uid, user, list) in by_user(&users, &lists) {
        let user = user.then(|| node.store.user(uid)).flatten();
        let list = list.then(|| node.store.contact_list(uid)).flatten();
        let cost = user
            .as_ref()
            .map_or(0, |r| escaped_len(r.raw()) + RECORD_OVERHEAD)
            + list
                .as_ref()
                .map_or(0, |r| escaped_len(r.raw()) + RECORD_OVERHEAD);
        if cost == 0 {
            continue;
        }
        if size + cost > budget && size > 0 {
            let full = std::mem::take(&mut msg);
            size = 0;
            if tx.send((Instant::now(), encode(full))).await.is_err() {
                return;
            }
        }
        msg.userinfo.extend(user);
        msg.contactlists.extend(list);
        size += cost;
    }
    msg.last = 1;
    let _ = tx.send((Instant::now(), encode(msg))).await;
}

/// `(uid, has user record, has list)` for the UserIDs of two sorted lists, merged.
fn by_user<'a>(
    users: &'a [gossip_common::UserId],
    lists: &'a [gossip_common::UserId],
) -> impl Iterator<Item = (gossip_common::UserId, bool, bool)> + 'a {
    let (mut u, mut l) = (users.iter().peekable(), lists.iter().peekable());
    std::iter::from_fn(move || match (u.peek().copied(), l.peek().copied()) {
        (Some(a), Some(b)) if a == b => {
            u.next();
            l.next();
            Some((*a, true, true))
        }
        (Some(a), Some(b)) if a < b => u.next().map(|x| (*x, true, false)),
        (_, Some(_)) => l.next().map(|x| (*x, false, true)),
        (Some(_), None) => u.next().map(|x| (*x, true, false)),
        (None, None) => None,
    })
}

/// Decodes one `changedEntries` frame, stores what is news and passes that on to the other
/// neighbours as one batch. Holds `slot` (a place among the link's batches in flight) until the
/// batch is durable and forwarded.
pub(super) async fn apply_changed_entries(
    node: Arc<Node>,
    peer: ServerKey,
    frame: Bytes,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let origin = format!("peer:{}", key_string(&peer));
    let ce = match Message::decode(&frame) {
        Ok(Message {
            body: Body::ChangedEntries(ce),
            ..
        }) => ce,
        Ok(other) => {
            tracing::info!(
                msgtype = other.msgtype(),
                "unexpected message in a sync frame"
            );
            return;
        }
        Err(e) => {
            tracing::info!(error = %e, "sync message from peer refused");
            return;
        }
    };
    node.metrics.messages_in.add("changedEntries", 1);
    node.metrics
        .sync_records_received
        .add((ce.userinfo.len() + ce.contactlists.len()) as u64);
    let done = node
        .store
        .apply_replicated(ce.userinfo, ce.contactlists, &origin)
        .await;
    // What was news here is news for the rest of this side of the tree too: it goes
    // on as one batch, with backpressure (a large sync must not overflow the
    // neighbours' queues, which would cut their links).
    let forward = m::ChangedEntries {
        userinfo: news(done.users, &origin, |r| node.user_changed_locally(r)),
        contactlists: news(done.lists, &origin, |r| node.list_changed_locally(r)),
        ..Default::default()
    };
    if !forward.userinfo.is_empty() || !forward.contactlists.is_empty() {
        node.federation
            .flood_wait(|| encode(forward), Some(&peer))
            .await;
    }
    drop(slot);
}

/// The records a batch stored (news), each handed to `local` first; refusals other than stale
/// copies are logged.
pub(super) fn news<T: gossip_common::Record>(
    results: Vec<Result<crate::store::Applied<T>, StoreError>>,
    origin: &str,
    mut local: impl FnMut(&Signed<T>),
) -> Vec<Signed<T>> {
    results
        .into_iter()
        .filter_map(|r| match r {
            Ok(applied) => {
                local(&applied.record);
                Some(applied.record)
            }
            Err(StoreError::Stale { .. }) => None,
            Err(e) => {
                tracing::warn!(error = %e, %origin, kind = T::KIND, "record from peer refused");
                None
            }
        })
        .collect()
}

/// Whether a frame is a `changedEntries` message (its root tag), without decoding it.
pub(super) fn is_changed_entries(frame: &[u8]) -> bool {
    has_root(frame, b"<changedEntries")
}

/// Whether a frame's root element opens with `tag` (`<name`), without decoding it.
pub(super) fn has_root(frame: &[u8], tag: &[u8]) -> bool {
    frame.starts_with(tag)
        && matches!(
            frame.get(tag.len()),
            Some(b' ' | b'>' | b'/' | b'\t' | b'\r' | b'\n')
        )
}

/// Bytes a record's signature, attributes and tags add inside `changedEntries`.
pub(super) const RECORD_OVERHEAD: usize = 256;

/// Length of `raw` once XML-escaped as element text (`<` becomes `&lt;`, and so on).
pub(super) fn escaped_len(raw: &str) -> usize {
    raw.len()
        + raw
            .bytes()
            .map(|b| match b {
                b'<' | b'>' => 3,
                b'&' => 4,
                b'"' | b'\'' => 5,
                _ => 0,
            })
            .sum::<usize>()
}

/// Stores a UserInfo from a peer; if it is news, pushes it to local watchers and forwards it.
/// A record propagated by a peer (`UserInfo`, `newuser`, `ChangeCL`): stored if it is news,
/// pushed to local watchers and forwarded.
pub(super) async fn apply_from_peer(node: &Arc<Node>, peer: &ServerKey, body: Body, origin: &str) {
    match body {
        Body::UserInfo(u) => apply_user(node, u.record, false, Some(peer), origin).await,
        Body::NewUser(n) => apply_user(node, n.record, true, Some(peer), origin).await,
        Body::ChangeCl(c) => apply_list(node, c.record, Some(peer), origin).await,
        other => tracing::debug!(msgtype = other.msgtype(), "not a record"),
    }
}

pub(super) async fn apply_user(
    node: &Arc<Node>,
    record: Signed<UserInfo>,
    new: bool,
    from: Option<&ServerKey>,
    origin: &str,
) {
    // Pushed and forwarded as soon as it is verified, not after this node's disk flush: a
    // flush per hop would add up along the tree (see `Store::apply_user_info_then`).
    match node
        .store
        .apply_user_info_then(record, Mode::Replicate, origin, |r| {
            node.user_changed_from(r, None, from, new)
        })
        .await
    {
        Ok(_) => {}
        Err(StoreError::Stale { .. }) => {}
        Err(e) => tracing::warn!(error = %e, %origin, "record from peer refused"),
    }
}

pub(super) async fn apply_list(
    node: &Arc<Node>,
    record: Signed<ContactList>,
    from: Option<&ServerKey>,
    origin: &str,
) {
    match node.store.apply_contact_list(record, origin).await {
        Ok(applied) => node.list_changed_from(&applied.record, from),
        Err(StoreError::Stale { .. }) => {}
        Err(e) => tracing::warn!(error = %e, %origin, "contact list from peer refused"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossip_common::UserId;

    fn part(uids: &[u64], last: bool) -> m::EventCounts {
        m::EventCounts {
            last: u8::from(last),
            userdb: m::EcList {
                entries: uids
                    .iter()
                    .map(|u| EcEntry {
                        uid: UserId(*u),
                        count: 1,
                        rollover: 0,
                    })
                    .collect(),
            },
            contactlist: m::EcList::default(),
        }
    }

    #[test]
    fn records_go_side_by_side_by_user_id() {
        let u = |v: &[u64]| v.iter().map(|x| UserId(*x)).collect::<Vec<_>>();
        let got: Vec<(u64, bool, bool)> = by_user(&u(&[1, 3, 4]), &u(&[1, 2, 4, 9]))
            .map(|(x, a, b)| (x.0, a, b))
            .collect();
        assert_eq!(
            got,
            [
                (1, true, true),
                (2, false, true),
                (3, true, false),
                (4, true, true),
                (9, false, true)
            ]
        );
    }

    #[test]
    fn a_link_gets_one_sync_from_its_parts_sorted() {
        let (tx, _rx) = mpsc::channel(1);
        let mut s = SyncIn::new(tx);
        assert_eq!(s.on_event_counts(part(&[5, 1], false)), SyncStep::Pending);
        match s.on_event_counts(part(&[3], true)) {
            SyncStep::Complete { users, lists } => {
                let uids: Vec<u64> = users.iter().map(|e| e.uid.0).collect();
                assert_eq!(uids, [1, 3, 5]);
                assert!(lists.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // A second round on the same link (each would cost a full comparison and send).
        assert!(matches!(
            s.on_event_counts(part(&[], true)),
            SyncStep::Refused { close: false, .. }
        ));
    }

    #[test]
    fn an_endless_list_is_refused_and_closes_the_link() {
        let (tx, _rx) = mpsc::channel(1);
        let mut s = SyncIn::new(tx);
        let big: Vec<u64> = (0..1000).collect();
        let mut parts = 0;
        let step = loop {
            parts += 1;
            match s.on_event_counts(part(&big, false)) {
                SyncStep::Pending => continue,
                other => break other,
            }
        };
        assert_eq!(parts, MAX_SYNC_ENTRIES / 1000 + 1);
        assert!(matches!(step, SyncStep::Refused { close: true, .. }));
    }
}
