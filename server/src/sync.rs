//! Event-count diffing: which records one server must send another (the spec's second method).
//!
//! On link-up each side sends its `eventCounts` — (UserID, event count, rollover) for every
//! UserInfo and every ContactList it holds — and each side answers with `changedEntries`: the
//! records the other side lacks, or holds an older copy of. Only O(changes) records cross the
//! link; the event-count lists themselves are the only part that grows with the database.
//!
//! Both lists are sorted by UserID, so the diff is one merge pass, O(n + m).

use gossip_common::message::EcEntry;
use gossip_common::UserId;

/// UserIDs whose record `mine` should send to a peer whose event counts are `theirs`: the peer
/// lacks them, or its copy is older. Both inputs must be sorted by UserID (as
/// `Store::user_event_counts` returns them); the output is sorted too.
pub fn to_send(mine: &[EcEntry], theirs: &[EcEntry]) -> Vec<UserId> {
    debug_assert!(mine.windows(2).all(|w| w[0].uid < w[1].uid));
    debug_assert!(theirs.windows(2).all(|w| w[0].uid <= w[1].uid));
    let mut out = Vec::new();
    let mut j = 0;
    for m in mine {
        while j < theirs.len() && theirs[j].uid < m.uid {
            j += 1;
        }
        match theirs.get(j) {
            Some(t) if t.uid == m.uid => {
                if m.event_count().is_newer_than(t.event_count()) {
                    out.push(m.uid);
                }
            }
            _ => out.push(m.uid),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossip_common::EventCount;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn e(uid: u64, count: u32) -> EcEntry {
        EcEntry::new(UserId(uid), EventCount::new(count, false))
    }

    #[test]
    fn sends_missing_and_newer_only() {
        let mine = [e(1, 5), e(2, 5), e(3, 5), e(5, 1)];
        let theirs = [e(1, 5), e(2, 9), e(3, 4), e(4, 1)];
        assert_eq!(to_send(&mine, &theirs), vec![UserId(3), UserId(5)]);
        assert_eq!(to_send(&theirs, &mine), vec![UserId(2), UserId(4)]);
    }

    #[test]
    fn newer_across_the_wrap() {
        let mine = [EcEntry::new(UserId(1), EventCount::new(2, true))];
        let theirs = [EcEntry::new(UserId(1), EventCount::new(u32::MAX, false))];
        assert_eq!(to_send(&mine, &theirs), vec![UserId(1)]);
        assert!(to_send(&theirs, &mine).is_empty());
    }

    proptest! {
        /// After both sides send what `to_send` says, both hold the newest copy of everything.
        #[test]
        fn one_exchange_converges(
            a in prop::collection::btree_map(0u64..200, 0u32..10, 0..100),
            b in prop::collection::btree_map(0u64..200, 0u32..10, 0..100),
        ) {
            let list = |m: &BTreeMap<u64, u32>| m.iter().map(|(u, c)| e(*u, *c)).collect::<Vec<_>>();
            let (la, lb) = (list(&a), list(&b));
            let (mut a2, mut b2) = (a.clone(), b.clone());
            for uid in to_send(&la, &lb) { b2.insert(uid.0, a[&uid.0]); }
            for uid in to_send(&lb, &la) { a2.insert(uid.0, b[&uid.0]); }
            prop_assert_eq!(&a2, &b2);
            for (u, c) in &a2 {
                prop_assert_eq!(*c, (*a.get(u).unwrap_or(&0)).max(*b.get(u).unwrap_or(&0)));
            }
            // Only what differed crossed.
            let differing = a.iter().filter(|(u, c)| b.get(*u) != Some(*c)).count()
                + b.keys().filter(|u| !a.contains_key(*u)).count();
            prop_assert!(to_send(&la, &lb).len() + to_send(&lb, &la) .len() <= differing);
        }
    }
}
