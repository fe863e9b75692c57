//! Fuzzes the link-up mailbox exchange from the peer's side: a `mailboxDigest` then parts of a
//! `mailboxIds` list, their contents taken from the input (split on '|'). Invariants: no
//! panic; an id accepted is 32 lowercase hex digits; the list is held to its bounds (never more
//! ids accepted than allowed, nothing accepted after it was given up or finished).
#![no_main]

use gossip_common::message::{MailboxDigest, MailboxIds};
use gossip_server::mailbox::Digest;
use gossip_server::relay::mailsync::{MailSync, IDS_PER_FRAME, MAX_LISTED};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('|');
    let mut sync = MailSync::default();
    let digest = parts.next().unwrap_or_default();
    let mut fields = digest.splitn(4, ',');
    let theirs = MailboxDigest {
        count: fields.next().and_then(|c| c.parse().ok()).unwrap_or(0),
        sum: fields.next().unwrap_or_default().to_owned(),
        delivered: fields.next().and_then(|c| c.parse().ok()).unwrap_or(0),
        dsum: fields.next().unwrap_or_default().to_owned(),
    };
    let _ = sync.on_digest(Digest::default(), &theirs);
    assert!(
        sync.on_digest(Digest::default(), &theirs).is_err(),
        "a second digest was answered"
    );
    let mut accepted = 0usize;
    let mut ended = false;
    for part in parts {
        let ids = MailboxIds {
            ids: part.to_owned(),
            last: 0,
            delivered: None,
        };
        match sync.on_ids(&ids) {
            Ok(got) => {
                assert!(!ended, "a list part was taken after the list ended");
                assert!(got.len() <= IDS_PER_FRAME);
                for id in &got {
                    assert!(
                        id.len() == 32
                            && id
                                .bytes()
                                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                    );
                }
                accepted += got.len();
                assert!(accepted <= MAX_LISTED);
            }
            Err(_) => ended = true,
        }
    }
    let _ = sync.finish();
});
