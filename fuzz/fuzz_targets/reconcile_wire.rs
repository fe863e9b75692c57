//! Fuzzes range reconciliation from the peer's side: the input is the text of a `reconcile`
//! frame (base64 of the binary entries), decoded as a peer's round and handed to a reconciler
//! over a small database. Invariants: no panic; entries that decode re-encode to bytes that
//! decode to the same entries; the reconciler either takes the round or aborts it, and never
//! runs past its round bound.
#![no_main]

use std::collections::BTreeMap;

use gossip_common::message::EcEntry;
use gossip_common::{EventCount, UserId};
use gossip_server::reconcile::wire::{decode_entries, encode_chunks, from_text};
use gossip_server::reconcile::{
    item_hash, key, Fingerprint, ItemSource, Items, Node, Reconciler, FANOUT, MAX_ROUNDS,
};
use libfuzzer_sys::fuzz_target;

/// A few hundred users, keyed as the protocol keys them.
struct Db(BTreeMap<u64, (UserId, EventCount)>);

impl Db {
    fn new() -> Db {
        Db((1..300u64)
            .map(|u| {
                (
                    key(UserId(u * 7919)),
                    (UserId(u * 7919), EventCount::new(u as u32, false)),
                )
            })
            .collect())
    }
}

impl ItemSource for Db {
    fn fingerprint(&self, node: Node) -> Fingerprint {
        let (lo, hi) = node.bounds();
        let mut f = Fingerprint::default();
        for (u, ec) in self.0.range(lo..=hi).map(|(_, v)| v) {
            f.add(item_hash(b'u', *u, *ec, &[]));
        }
        f
    }

    fn children(&self, node: Node) -> [Fingerprint; FANOUT] {
        std::array::from_fn(|i| self.fingerprint(node.child(i)))
    }

    fn items(&self, node: Node) -> Items {
        let (lo, hi) = node.bounds();
        // Sorted by UserID, as the store hands them out.
        let mut users: Vec<EcEntry> = self
            .0
            .range(lo..=hi)
            .map(|(_, (u, ec))| EcEntry::new(*u, *ec))
            .collect();
        users.sort_unstable_by_key(|e| e.uid);
        Items {
            users,
            lists: Vec::new(),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let db = Db::new();
    // Several rounds from one input, as a peer sends them: split on '|'.
    let mut responder = Reconciler::respond();
    let (mut initiator, _) = Reconciler::initiate(&db);
    for (i, part) in text.split('|').enumerate() {
        let Ok(bytes) = from_text(part) else { continue };
        let Ok(entries) = decode_entries(&bytes) else {
            continue;
        };
        let mut again = Vec::new();
        for chunk in encode_chunks(&entries, 1 << 16) {
            again.extend(decode_entries(&chunk).expect("re-encoded entries decode"));
        }
        assert_eq!(again, entries, "entries changed in a round trip");
        let r = if i % 2 == 0 {
            &mut responder
        } else {
            &mut initiator
        };
        let _ = r.receive(&db, entries);
        assert!(r.rounds_sent() <= MAX_ROUNDS + 1, "past the round bound");
    }
});
