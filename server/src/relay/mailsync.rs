//! The mailbox exchange a link runs when it comes up: the undelivered messages each side holds
//! reach the other, and nothing both already hold crosses again.
//!
//! Both ends offer `mailbox1` in their `serverID`. Each sends its mailbox [`Digest`]
//! (`mailboxDigest`: for the messages held and for the delivery notices known, a count and a
//! sum of id hashes). A side that finds the peer's digest different from its own sends its ids
//! (`mailboxIds`, [`IDS_PER_FRAME`] to a frame): those of the messages it holds, then those of
//! the delivered messages whose notice it knows. A side that has the whole of the peer's list
//! answers with every message it holds and every notice it knows that the list lacks, and with
//! the notice of every listed held message it knows was delivered (the peer drops that one).
//! Notices matter on their own: a server that missed a notice's flood, and never held the
//! message, could not otherwise tell a sender logged in there that it was delivered. Equal
//! digests, the usual case after a cut during which nothing was sent, cost two small frames;
//! before this, every link-up resent the whole mailbox (up to a million messages).
//!
//! Races: a message that arrives during the exchange is flooded over the link like any other, so
//! at worst it crosses twice and the peer drops the copy. Both sides compare at slightly
//! different moments; if one finds the digests equal, the sets were equal at that moment and
//! anything newer is flooded.
//!
//! Bounds (an authenticated peer is still a stranger to our memory): the peer's list is not
//! kept, only which of *our* messages and notices it named, sets no larger than our mailbox. It
//! may name at most [`MAX_LISTED`] ids, [`IDS_PER_FRAME`] per frame, each 32 hex digits; one digest and one
//! list per link are answered (each answer is bounded by our own mailbox and costs what a
//! link-up did before), and anything more is logged and ignored.
//!
//! A peer that does not offer `mailbox1` gets the whole mailbox, as before.

use std::collections::HashSet;
use std::sync::Arc;

use gossip_common::codec::encode_frame as encode;
use gossip_common::message as m;
use tokio::time::Instant;

use super::{valid_id, Relay};
use crate::federation::LinkTx;
use crate::mailbox::{Digest, MAX_GONE, MAX_HELD};

/// The word a `serverID` carries to offer this exchange.
pub(crate) const OFFER: &str = "mailbox1";

/// Ids per `mailboxIds` frame: 33 KB of text.
pub const IDS_PER_FRAME: usize = 1_000;

/// Ids a peer's list may hold: a server holds at most [`MAX_HELD`] messages and [`MAX_GONE`]
/// notices; the slack covers what arrived while the list was being sent.
pub const MAX_LISTED: usize = MAX_HELD + MAX_GONE + 10 * IDS_PER_FRAME;

/// Whether a `serverID`'s `sync` field offers this exchange.
pub(crate) fn offered(sync: Option<&str>) -> bool {
    sync.is_some_and(|s| s.split_whitespace().any(|w| w == OFFER))
}

/// The digest as `mailboxDigest` carries it.
pub(super) fn digest_message(d: Digest) -> m::MailboxDigest {
    m::MailboxDigest {
        count: d.count,
        sum: format!("{:032x}", d.sum),
        delivered: d.delivered,
        dsum: format!("{:032x}", d.delivered_sum),
    }
}

fn parse_digest(d: &m::MailboxDigest) -> Option<Digest> {
    let hex = |s: &str| {
        (s.len() == 32)
            .then(|| u128::from_str_radix(s, 16).ok())
            .flatten()
    };
    Some(Digest {
        count: d.count,
        sum: hex(&d.sum)?,
        delivered: d.delivered,
        delivered_sum: hex(&d.dsum)?,
    })
}

/// Why a peer's `mailboxDigest` or `mailboxIds` was not acted on (for the log line).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    /// A second digest, or a list after the first was complete.
    #[error("already answered on this link")]
    Again,
    /// The digest's sum is not 32 hex digits.
    #[error("malformed digest")]
    BadDigest,
    /// An id that is not 32 lowercase hex digits.
    #[error("malformed id in the list")]
    BadId,
    /// More than [`IDS_PER_FRAME`] ids in one frame, or [`MAX_LISTED`] in all.
    #[error("the list is over its bounds")]
    TooMany,
}

/// One link's exchange, as its reader sees it (pure: the caller looks things up and sends).
#[derive(Debug, Default)]
pub struct MailSync {
    digest_answered: bool,
    /// Hashes of our messages the peer's list named so far (as held or as delivered).
    seen: HashSet<u128>,
    /// Hashes of our notices the peer's list named so far, or that we sent it already.
    seen_notices: HashSet<u128>,
    listed: usize,
    list_done: bool,
}

impl MailSync {
    /// The peer's digest: whether to send it our ids (the digests differ). Answered once.
    pub fn on_digest(&mut self, ours: Digest, theirs: &m::MailboxDigest) -> Result<bool, Ignored> {
        if std::mem::replace(&mut self.digest_answered, true) {
            return Err(Ignored::Again);
        }
        let theirs = parse_digest(theirs).ok_or(Ignored::BadDigest)?;
        Ok(theirs != ours)
    }

    /// A part of the peer's list: its ids, checked against the bounds. The caller reports
    /// which of them it holds with [`Self::saw`], then calls [`Self::finish`] on the last part.
    pub fn on_ids<'a>(&mut self, part: &'a m::MailboxIds) -> Result<Vec<&'a str>, Ignored> {
        if self.list_done {
            return Err(Ignored::Again);
        }
        let ids: Vec<&str> = part.ids.split_ascii_whitespace().collect();
        if ids.len() > IDS_PER_FRAME || self.listed + ids.len() > MAX_LISTED {
            // Given up: no answer to a list this link will not finish.
            self.give_up();
            return Err(Ignored::TooMany);
        }
        if !ids.iter().all(|id| valid_id(id)) {
            self.give_up();
            return Err(Ignored::BadId);
        }
        self.listed += ids.len();
        Ok(ids)
    }

    fn give_up(&mut self) {
        self.list_done = true;
        self.seen = HashSet::new();
        self.seen_notices = HashSet::new();
    }

    /// Of the ids [`Self::on_ids`] returned, these (hashes) are messages held here.
    pub fn saw(&mut self, held: impl IntoIterator<Item = u128>) {
        self.seen.extend(held);
    }

    /// Of the ids [`Self::on_ids`] returned, these (hashes) are notices known here, or notices
    /// already sent to the peer.
    pub fn saw_notices(&mut self, known: impl IntoIterator<Item = u128>) {
        self.seen_notices.extend(known);
    }

    /// The peer's list is complete: the hashes of our messages it named and of our notices it
    /// named (the rest it lacks).
    pub fn finish(&mut self) -> (HashSet<u128>, HashSet<u128>) {
        self.list_done = true;
        (
            std::mem::take(&mut self.seen),
            std::mem::take(&mut self.seen_notices),
        )
    }
}

/// Starts the exchange at link-up: our digest if the peer offers it, else the whole mailbox.
pub(crate) fn start(relay: &Arc<Relay>, peer_offers: bool, bulk: &LinkTx) {
    if peer_offers {
        // Queued behind whatever the resync queued first, never dropped: without it the peer
        // would never answer with what it holds.
        let (relay, bulk) = (Arc::clone(relay), bulk.clone());
        relay.tasks.clone().spawn(async move {
            let frame = encode(digest_message(relay.mailbox.digest()));
            let _ = bulk.send((Instant::now(), frame)).await;
        });
    } else {
        send_messages(relay, bulk, Vec::new(), relay.mailbox.ids());
    }
}

/// The peer's digest: our list goes out if the digests differ.
pub(crate) fn answer_digest(
    relay: &Arc<Relay>,
    mail: &mut MailSync,
    theirs: &m::MailboxDigest,
    bulk: &LinkTx,
) {
    match mail.on_digest(relay.mailbox.digest(), theirs) {
        Ok(true) => {
            relay.metrics.mailbox_lists_sent.inc();
            send_ids(relay, bulk);
        }
        Ok(false) => relay.metrics.mailbox_equal.inc(),
        Err(why) => tracing::info!(%why, "mailboxDigest ignored"),
    }
}

/// A part of the peer's list: notes which of our messages and notices it names, sends the
/// notices of listed held messages known delivered, and on the last part what it lacked.
pub(crate) fn answer_ids(
    relay: &Arc<Relay>,
    mail: &mut MailSync,
    part: &m::MailboxIds,
    bulk: &LinkTx,
) {
    let ids = match mail.on_ids(part) {
        Ok(ids) => ids,
        Err(why) => {
            tracing::info!(%why, "mailboxIds ignored");
            return;
        }
    };
    let (held, mut notices) = relay.mailbox.named(&ids);
    mail.saw(held);
    mail.saw_notices(notices.iter().map(|d| crate::mailbox::id_hash(&d.id)));
    if part.delivered.is_some() {
        // Listed as delivered there: the peer lacks neither the message nor its notice.
        notices.clear();
    }
    let mut lacked = Vec::new();
    if part.last != 0 {
        let (seen, seen_notices) = mail.finish();
        lacked = relay.mailbox.ids_except(&seen);
        notices.extend(relay.mailbox.notices_except(&seen_notices));
    }
    send_messages(relay, bulk, notices, lacked);
}

/// Sends our list: the ids of the messages held, then of the notices known (a task of its own,
/// by the bulk queue).
fn send_ids(relay: &Arc<Relay>, bulk: &LinkTx) {
    let (relay, bulk) = (Arc::clone(relay), bulk.clone());
    relay.tasks.clone().spawn(async move {
        let held = relay.mailbox.ids();
        let noticed = relay.mailbox.noticed_ids();
        let mut parts: Vec<(bool, &[String])> = held
            .chunks(IDS_PER_FRAME)
            .map(|p| (false, p))
            .chain(noticed.chunks(IDS_PER_FRAME).map(|p| (true, p)))
            .collect();
        if parts.is_empty() {
            // An empty mailbox still ends its list.
            parts.push((false, &[]));
        }
        let n = parts.len();
        for (i, (delivered, part)) in parts.into_iter().enumerate() {
            let frame = encode(m::MailboxIds {
                last: u8::from(i + 1 == n),
                delivered: delivered.then_some(1),
                ids: part.join(" "),
            });
            if bulk.send((Instant::now(), frame)).await.is_err() {
                return;
            }
        }
    });
}

/// Sends `notices`, then the messages `ids` that are still held (a task of its own, by the
/// bulk queue, one message at a time: nothing is copied up front).
fn send_messages(relay: &Arc<Relay>, bulk: &LinkTx, notices: Vec<m::Delivered>, ids: Vec<String>) {
    if notices.is_empty() && ids.is_empty() {
        return;
    }
    let (relay, bulk) = (Arc::clone(relay), bulk.clone());
    relay.tasks.clone().spawn(async move {
        for d in notices {
            if bulk.send((Instant::now(), encode(d))).await.is_err() {
                return;
            }
        }
        for id in ids {
            let Some(r) = relay.mailbox.get(&id).await else {
                continue; // delivered or expired meanwhile
            };
            if bulk.send((Instant::now(), encode(r))).await.is_err() {
                return;
            }
            relay.metrics.mailbox_resent.inc();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::id_hash;

    fn id(i: usize) -> String {
        format!("{i:032x}")
    }

    fn part(ids: &[String], last: bool) -> m::MailboxIds {
        m::MailboxIds {
            last: u8::from(last),
            delivered: None,
            ids: ids.join(" "),
        }
    }

    #[test]
    fn a_digest_is_answered_once_and_only_when_it_differs() {
        let d = Digest {
            count: 2,
            sum: 77,
            delivered: 1,
            delivered_sum: 5,
        };
        let mut s = MailSync::default();
        assert_eq!(s.on_digest(d, &digest_message(d)), Ok(false));
        assert_eq!(s.on_digest(d, &digest_message(d)), Err(Ignored::Again));
        let mut s = MailSync::default();
        let other = Digest { sum: 78, ..d };
        assert_eq!(s.on_digest(d, &digest_message(other)), Ok(true));
        let mut s = MailSync::default();
        let other = Digest {
            delivered_sum: 6,
            ..d
        };
        assert_eq!(
            s.on_digest(d, &digest_message(other)),
            Ok(true),
            "notices differ"
        );
        let mut s = MailSync::default();
        let bad = m::MailboxDigest {
            count: 2,
            sum: "zz".into(),
            delivered: 0,
            dsum: format!("{:032x}", 0),
        };
        assert_eq!(s.on_digest(d, &bad), Err(Ignored::BadDigest));
    }

    #[test]
    fn a_list_names_our_messages_and_is_answered_once() {
        let mut s = MailSync::default();
        let first: Vec<String> = (0..3).map(id).collect();
        assert_eq!(s.on_ids(&part(&first, false)).unwrap().len(), 3);
        s.saw([id_hash(&first[1])]);
        let second = [id(9)];
        assert_eq!(s.on_ids(&part(&second, true)).unwrap(), [id(9)]);
        s.saw_notices([id_hash(&second[0])]);
        let (seen, notices) = s.finish();
        assert_eq!(seen, [id_hash(&id(1))].into_iter().collect());
        assert_eq!(notices, [id_hash(&id(9))].into_iter().collect());
        assert_eq!(s.on_ids(&part(&[], true)), Err(Ignored::Again));
        // An empty list is a list: everything we hold is lacked.
        let mut s = MailSync::default();
        assert!(s.on_ids(&part(&[], true)).unwrap().is_empty());
        assert_eq!(s.finish(), Default::default());
    }

    #[test]
    fn a_list_over_its_bounds_or_malformed_is_given_up() {
        let mut s = MailSync::default();
        let big: Vec<String> = (0..=IDS_PER_FRAME).map(id).collect();
        assert_eq!(s.on_ids(&part(&big, false)), Err(Ignored::TooMany));
        assert_eq!(s.on_ids(&part(&[id(1)], true)), Err(Ignored::Again));
        let mut s = MailSync::default();
        let bad = m::MailboxIds {
            last: 1,
            delivered: None,
            ids: "5F0C8E2A9D41B7763E1F20C4A8B9D6E1".into(),
        };
        assert_eq!(s.on_ids(&bad), Err(Ignored::BadId));
        // The total is bounded too, whatever the frames.
        let mut s = MailSync {
            listed: MAX_LISTED - 1,
            ..MailSync::default()
        };
        assert_eq!(
            s.on_ids(&part(&[id(1), id(2)], false)),
            Err(Ignored::TooMany)
        );
        assert!(offered(Some("range1 mailbox1")) && !offered(Some("range1")) && !offered(None));
    }
}
