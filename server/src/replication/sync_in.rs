//! The event-count sync (the spec's link-up sync): our `eventCounts` list, and the per-link
//! state that gathers the peer's list until its last part. Pure: the caller sends what the
//! complete list says the peer lacks.

use bytes::Bytes;
use gossip_common::codec::encode_frame as encode;
use gossip_common::message::{self as m, EcEntry};

use crate::store::Store;

/// Event-count entries per `eventCounts` message (about 40 bytes each).
const EC_PER_MESSAGE: usize = 1000;
/// Per-link sync progress: the peer's event counts, gathered until its last part.
pub(crate) struct SyncIn {
    users: Vec<EcEntry>,
    lists: Vec<EcEntry>,
    /// Whether the peer's list was complete once: a link carries one sync, at link-up.
    done: bool,
}

/// Most event-count entries one peer's list may hold (users and lists together): sixteen
/// million is 16 times the largest database measured, and 256 MB of entries held here.
pub(super) const MAX_SYNC_ENTRIES: usize = 16_000_000;

/// What a part of the peer's event-count list leads to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SyncStep {
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
    pub(crate) fn new() -> Self {
        SyncIn {
            users: Vec::new(),
            lists: Vec::new(),
            done: false,
        }
    }

    /// Takes one `eventCounts` part. A peer gets one sync per link (the one at link-up: each
    /// round costs a sort and a send of everything it lacks, so repeated rounds are refused),
    /// and its list is bounded by [`MAX_SYNC_ENTRIES`].
    pub(crate) fn on_event_counts(&mut self, ec: m::EventCounts) -> SyncStep {
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
pub(super) fn event_count_messages(store: &Store) -> Vec<Bytes> {
    let users = store.user_event_counts();
    let lists = store.list_event_counts();
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
    fn a_link_gets_one_sync_from_its_parts_sorted() {
        let mut s = SyncIn::new();
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
        let mut s = SyncIn::new();
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
