//! Sync batches (`changedEntries`): the records a peer lacks, sent in frames filled to the
//! frame limit as the link's queue takes them, and a peer's batches verified, stored and passed
//! on as one batch.

use std::sync::Arc;

use bytes::Bytes;
use gossip_common::codec::encode_frame as encode;
use gossip_common::message as m;
use gossip_common::{Body, Message, Signed};
use tokio::time::Instant;

use super::Replication;
use crate::federation::LinkTx;
use crate::mst::{id_string, ServerId};
use crate::store::StoreError;

/// Sends the records a peer lacks as `changedEntries` messages, each filled to about 3/4 of
/// the frame limit, built one at a time as the link's queue takes them (a million records are
/// never all encoded at once).
pub(super) async fn send_changed_entries(
    repl: Arc<Replication>,
    users: Vec<gossip_common::UserId>,
    lists: Vec<gossip_common::UserId>,
    tx: LinkTx,
) {
    let budget = repl.max_frame * 3 / 4;
    let mut msg = m::ChangedEntries::default();
    let mut size = 0;
    // A user's record and list go side by side, in one frame (both inputs are sorted by
    // UserID): the receiver verifies a frame as one batch, which decompresses each key once
    // for both, and a list never arrives in a frame verified before its owner's record.
    for (uid, user, list) in by_user(&users, &lists) {
        let user = user.then(|| repl.store.user(uid)).flatten();
        let list = list.then(|| repl.store.contact_list(uid)).flatten();
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
    repl: Arc<Replication>,
    (peer, check): (ServerId, bool),
    frame: Bytes,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let origin = format!("peer:{}", id_string(&peer));
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
    repl.metrics.messages_in.add("changedEntries", 1);
    repl.metrics
        .sync_records_received
        .inc_by((ce.userinfo.len() + ce.contactlists.len()) as u64);
    // New users only as their sponsors' budgets allow (a list whose owner is not admitted
    // is refused by the store for want of its owner).
    let mut ce = ce;
    ce.userinfo.retain(|r| repl.admits(r, &peer));
    let done = repl
        .store
        .apply_replicated(ce.userinfo, ce.contactlists, &origin)
        .await;
    // What was news here is news for the rest of this side of the tree too: it goes
    // on as one batch, with backpressure (a large sync must not overflow the
    // neighbours' queues, which would cut their links).
    let forward = m::ChangedEntries {
        userinfo: news(done.users, &origin, |r| {
            repl.records.user_changed_locally(r)
        }),
        contactlists: news(done.lists, &origin, |r| {
            repl.records.list_changed_locally(r)
        }),
        ..Default::default()
    };
    if check {
        let news = forward.userinfo.len() + forward.contactlists.len();
        repl.federation.note_repaired(&peer, news as u64);
    }
    if !forward.userinfo.is_empty() || !forward.contactlists.is_empty() {
        repl.federation
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
pub(crate) fn is_changed_entries(frame: &[u8]) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use gossip_common::UserId;

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
}
