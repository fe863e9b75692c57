use std::collections::BTreeMap;

use proptest::prelude::*;

use super::wire::{decode_entries, encode_chunks, to_text};
use super::*;

/// A database as the protocol sees it: per UserID, the event counts of its UserInfo and its
/// ContactList. Ranges are answered from a map ordered by key.
#[derive(Default, Clone)]
struct Mem {
    by_key: BTreeMap<u64, (UserId, Option<EventCount>, Option<EventCount>)>,
}

impl Mem {
    fn from(users: &BTreeMap<u64, u32>, lists: &BTreeMap<u64, u32>) -> Mem {
        let mut m = Mem::default();
        for (u, c) in users {
            m.by_key
                .entry(key(UserId(*u)))
                .or_insert((UserId(*u), None, None))
                .1 = Some(EventCount::new(*c, false));
        }
        for (u, c) in lists {
            m.by_key
                .entry(key(UserId(*u)))
                .or_insert((UserId(*u), None, None))
                .2 = Some(EventCount::new(*c, false));
        }
        m
    }

    fn range(
        &self,
        node: Node,
    ) -> impl Iterator<Item = &(UserId, Option<EventCount>, Option<EventCount>)> {
        let (lo, hi) = node.bounds();
        self.by_key.range(lo..=hi).map(|(_, v)| v)
    }

    fn entries(&self, users: bool) -> Vec<EcEntry> {
        let mut v: Vec<EcEntry> = self
            .by_key
            .values()
            .filter_map(|(u, a, b)| if users { *a } else { *b }.map(|ec| EcEntry::new(*u, ec)))
            .collect();
        v.sort_unstable_by_key(|e| e.uid);
        v
    }
}

fn fp_of<'a>(
    it: impl Iterator<Item = &'a (UserId, Option<EventCount>, Option<EventCount>)>,
) -> Fingerprint {
    let mut f = Fingerprint::default();
    for (u, a, b) in it {
        if let Some(ec) = a {
            f.add(item_hash(b'u', *u, *ec, &[]));
        }
        if let Some(ec) = b {
            f.add(item_hash(b'c', *u, *ec, &[]));
        }
    }
    f
}

impl ItemSource for Mem {
    fn fingerprint(&self, node: Node) -> Fingerprint {
        fp_of(self.range(node))
    }
    fn children(&self, node: Node) -> [Fingerprint; FANOUT] {
        std::array::from_fn(|i| self.fingerprint(node.child(i)))
    }
    fn items(&self, node: Node) -> Items {
        let mut it = Items::default();
        for (u, a, b) in self.range(node) {
            it.users.extend(a.map(|ec| EcEntry::new(*u, ec)));
            it.lists.extend(b.map(|ec| EcEntry::new(*u, ec)));
        }
        it.users.sort_unstable_by_key(|e| e.uid);
        it.lists.sort_unstable_by_key(|e| e.uid);
        it
    }
}

#[derive(Debug, Default)]
struct Outcome {
    /// What A sends B, and B sends A: (users, lists).
    a_sends: Sends,
    b_sends: Sends,
    /// Rounds the initiator sent (round trips).
    round_trips: u32,
    /// Base64 text of every round, both ways, plus 40 bytes of XML per frame.
    bytes: usize,
}

/// Runs a whole reconciliation through the wire encoding, A initiating.
fn reconcile(a: &Mem, b: &Mem) -> Outcome {
    let mut out = Outcome::default();
    let (mut ra, opening) = Reconciler::initiate(a);
    let mut rb = Reconciler::respond();
    let mut round = (opening, false);
    let mut a_turn = false; // whose round is being received
    loop {
        let (receiver, src, sends) = if a_turn {
            (&mut ra, a, &mut out.a_sends)
        } else {
            (&mut rb, b, &mut out.b_sends)
        };
        let chunks = encode_chunks(&round.0, 48 * 1024);
        for c in &chunks {
            out.bytes += to_text(c).len() + 40;
            receiver.receive(src, decode_entries(c).unwrap()).unwrap();
        }
        if chunks.is_empty() {
            out.bytes += 40;
        }
        let r = receiver.end_round(round.1).unwrap();
        sends.0.extend(r.users);
        sends.1.extend(r.lists);
        match r.entries {
            None => break,
            Some(entries) => round = (entries, r.done),
        }
        a_turn = !a_turn;
    }
    assert!(ra.is_done() && rb.is_done());
    out.round_trips = ra.rounds_sent();
    for v in [
        &mut out.a_sends.0,
        &mut out.a_sends.1,
        &mut out.b_sends.0,
        &mut out.b_sends.1,
    ] {
        v.sort_unstable();
        let before = v.len();
        v.dedup();
        assert_eq!(before, v.len(), "a record was sent twice");
    }
    out
}

/// What one side sends: (UserInfo, ContactList) UserIDs.
type Sends = (Vec<UserId>, Vec<UserId>);

fn expected(a: &Mem, b: &Mem) -> (Sends, Sends) {
    (
        (
            to_send(&a.entries(true), &b.entries(true)),
            to_send(&a.entries(false), &b.entries(false)),
        ),
        (
            to_send(&b.entries(true), &a.entries(true)),
            to_send(&b.entries(false), &a.entries(false)),
        ),
    )
}

fn sets(n: u64, seed: u64) -> BTreeMap<u64, u32> {
    (0..n).map(|i| (i.wrapping_mul(seed | 1), 1)).collect()
}

#[test]
fn node_arithmetic() {
    let k = key(UserId(42));
    for level in 0..=MAX_LEVEL {
        let n = Node::of(k, level);
        assert!(n.contains(k));
        assert_eq!(Node::new(n.level, n.prefix), Some(n));
        let (lo, hi) = n.bounds();
        assert!(lo <= k && k <= hi);
        if level < MAX_LEVEL {
            assert_eq!(n.child(n.child_index(k)), Node::of(k, level + 1));
        }
    }
    assert_eq!(Node::new(1, 16), None);
    assert_eq!(Node::new(0, 1), None);
    assert_eq!(Node::new(17, 0), None);
    // The mix is a bijection on what matters here: no two of a million UserIDs share a key.
    let mut keys: Vec<u64> = (0..1_000_000u64).map(|u| key(UserId(u))).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 1_000_000);
}

#[test]
fn identical_sets_take_one_round_trip_and_a_few_bytes() {
    let users = sets(100_000, 7);
    let a = Mem::from(&users, &users);
    let o = reconcile(&a, &a.clone());
    assert_eq!(o.round_trips, 1);
    assert!(o.bytes <= 200, "{} bytes", o.bytes);
    assert_eq!(o.a_sends, (vec![], vec![]));
    assert_eq!(o.b_sends, (vec![], vec![]));
}

#[test]
fn one_change_in_a_hundred_thousand_costs_a_few_round_trips() {
    let users = sets(100_000, 7);
    let a = Mem::from(&users, &users);
    let mut changed = users.clone();
    let uid = *changed.keys().nth(12_345).unwrap();
    *changed.get_mut(&uid).unwrap() += 1;
    let b = Mem::from(&changed, &users);
    let o = reconcile(&a, &b);
    assert_eq!(o.b_sends, (vec![UserId(uid)], vec![]));
    assert_eq!(o.a_sends, (vec![], vec![]));
    assert!(o.round_trips <= 4, "{} round trips", o.round_trips);
    assert!(o.bytes <= 2048, "{} bytes", o.bytes);
}

#[test]
fn an_empty_side_gets_everything_in_one_round_trip() {
    let users = sets(5_000, 3);
    let full = Mem::from(&users, &users);
    let empty = Mem::default();
    for (a, b) in [(&full, &empty), (&empty, &full)] {
        let o = reconcile(a, b);
        assert_eq!((o.a_sends, o.b_sends), expected(a, b));
        assert_eq!(o.round_trips, 1);
        assert!(o.bytes <= 200);
    }
}

#[test]
fn answers_to_unasked_ranges_abort() {
    let users = sets(1_000, 3);
    let a = Mem::from(&users, &users);
    let (mut r, _) = Reconciler::initiate(&a);
    let stray = Entry::WantAll {
        node: Node::ROOT.child(3),
    };
    assert_eq!(
        r.receive(&a, vec![stray]),
        Err(Abort::Unasked(Node::ROOT.child(3)))
    );
    // A responder takes one root fingerprint to open, and nothing else.
    let mut r = Reconciler::respond();
    assert_eq!(
        r.receive(&a, vec![Entry::WantAll { node: Node::ROOT }]),
        Err(Abort::Unasked(Node::ROOT))
    );
    let mut r = Reconciler::respond();
    assert_eq!(r.end_round(false), Err(Abort::BadOpening));
    // The same question answered twice.
    let (mut r, _) = Reconciler::initiate(&a);
    let twice = vec![
        Entry::WantAll { node: Node::ROOT },
        Entry::WantAll { node: Node::ROOT },
    ];
    assert_eq!(r.receive(&a, twice), Err(Abort::Unasked(Node::ROOT)));
}

#[test]
fn a_peer_that_never_stops_splitting_is_cut_off() {
    // A lying peer answers every range with a fresh split: the rounds run out.
    let users = sets(100_000, 5);
    let a = Mem::from(&users, &users);
    let (mut r, _) = Reconciler::initiate(&a);
    let mut asked = vec![Node::ROOT];
    let mut result = Ok(());
    for _ in 0..MAX_ROUNDS {
        let lies: Vec<Entry> = asked
            .iter()
            .filter(|n| n.level < MAX_LEVEL)
            .take(1)
            .map(|n| Entry::Children {
                node: *n,
                children: Box::new([(1, 1_000_000); FANOUT]),
            })
            .collect();
        if let Err(e) = r.receive(&a, lies.clone()) {
            result = Err(e);
            break;
        }
        match r.end_round(false) {
            Ok(out) => {
                asked = out
                    .entries
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| match e {
                        Entry::Children { node, .. } => Some(node.child(0)),
                        _ => None,
                    })
                    .collect();
                if asked.is_empty() {
                    result = Ok(());
                    break;
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // Either the lie bottoms out at small ranges (listed, finite) or the round cap hits.
    assert!(
        matches!(result, Ok(()) | Err(Abort::TooManyRounds)),
        "{result:?}"
    );
}

#[test]
fn garbage_bytes_are_refused_without_allocating() {
    assert!(decode_entries(&[2, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    assert!(decode_entries(&[9, 0, 0]).is_err());
    assert!(decode_entries(&[0, 17, 0]).is_err());
    assert!(decode_entries(&[0, 1, 16]).is_err());
    assert!(decode_entries(&[0, 0]).is_err());
}

proptest! {
    /// On random pairs of sets (empty, disjoint, identical, overlapping, one-sided, sparse or
    /// dense in UserIDs), reconciliation sends exactly what the event-count merge join sends.
    #[test]
    fn same_transfers_as_the_merge_join(
        a_users in prop::collection::btree_map(0u64..3000, 0u32..4, 0..400),
        b_users in prop::collection::btree_map(0u64..3000, 0u32..4, 0..400),
        a_lists in prop::collection::btree_map(0u64..3000, 0u32..4, 0..200),
        b_lists in prop::collection::btree_map(0u64..3000, 0u32..4, 0..200),
        shared in prop::collection::btree_map(any::<u64>(), 0u32..3, 0..300),
        identical in any::<bool>(),
    ) {
        let mut au = a_users.clone();
        au.extend(shared.clone());
        let mut bu = if identical { au.clone() } else { b_users.clone() };
        bu.extend(shared.clone());
        let a = Mem::from(&au, &a_lists);
        let b = Mem::from(&bu, if identical { &a_lists } else { &b_lists });
        let o = reconcile(&a, &b);
        prop_assert_eq!((o.a_sends, o.b_sends), expected(&a, &b));
        prop_assert!(o.round_trips <= MAX_ROUNDS / 2);
    }

    /// Every entry survives the wire.
    #[test]
    fn entries_round_trip(level in 0u8..=16, raw in any::<u64>(), fp in any::<u64>(), count in any::<u64>(),
                          items in prop::collection::vec((any::<u64>(), any::<u32>(), any::<bool>()), 0..40)) {
        let node = Node::of(raw, level);
        let ec: Vec<EcEntry> = items.iter().map(|(u, c, r)| EcEntry::new(UserId(*u), EventCount::new(*c, *r))).collect();
        let uids: Vec<UserId> = items.iter().map(|(u, _, _)| UserId(*u)).collect();
        let entries = vec![
            Entry::Fingerprint { node, fp, count },
            Entry::Children { node, children: Box::new([(fp, count); FANOUT]) },
            Entry::Items { node, users: ec.clone(), lists: ec },
            Entry::Want { node, users: uids.clone(), lists: uids },
            Entry::WantAll { node },
        ];
        let chunks = encode_chunks(&entries, 1 << 20);
        prop_assert_eq!(chunks.len(), 1);
        prop_assert_eq!(decode_entries(&chunks[0]).unwrap(), entries);
    }
}
