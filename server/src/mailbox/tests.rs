use super::*;

fn msg(id: &str, to: u64, body: usize, sent: u64) -> Relay {
    Relay {
        id: id.into(),
        from: UserId(1),
        to: UserId(to),
        sent,
        body: "A".repeat(body),
        sig: String::new(),
        request: None,
    }
}

#[test]
fn held_until_delivered_and_never_stored_again() {
    let mut t = MailTable::default();
    let now = 1_000_000;
    assert_eq!(t.put(msg("a", 2, 10, now), now), Ok(true));
    assert_eq!(t.put(msg("a", 2, 10, now), now), Ok(false));
    assert_eq!(t.put(msg("b", 2, 10, now), now), Ok(true));
    assert_eq!(
        t.for_recipient(UserId(2))
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(t.delivered("a", None).0);
    assert_eq!(t.delivered("a", None), (false, None), "told twice: no news");
    assert_eq!(t.put(msg("a", 2, 10, now), now), Ok(false), "late copy");
    assert_eq!(t.len(), 1);
}

#[test]
fn the_digest_is_the_mailbox_whatever_the_order() {
    let now = 1_000_000;
    let (mut a, mut b) = (MailTable::default(), MailTable::default());
    assert_eq!(a.digest(), b.digest());
    for id in ["x", "y", "z"] {
        a.put(msg(id, 2, 10, now), now).unwrap();
    }
    for id in ["z", "w", "x", "y"] {
        b.put(msg(id, 3, 10, now), now).unwrap();
    }
    assert_ne!(a.digest(), b.digest());
    b.delivered("w", None);
    assert_eq!(
        a.digest(),
        b.digest(),
        "a delivery without its notice is not counted"
    );
    assert_eq!(a.digest().count, 3);
    let notice = Delivered {
        id: "y".into(),
        from: UserId(1),
        to: UserId(2),
        sig: String::new(),
    };
    a.delivered("y", Some(notice.clone()));
    assert_ne!(a.digest(), b.digest(), "a known notice counts");
    b.delivered("y", Some(notice.clone()));
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.digest().delivered, 1);
    assert_eq!(a.noticed_ids(), ["y"]);
    assert_eq!(a.notices_except(&Default::default()), [notice]);
    a.expire(now + TTL.as_millis() as u64 + 1);
    assert_eq!((a.digest().count, a.digest().sum), (0, 0));
    let seen = ["x"].iter().map(|id| id_hash(id)).collect();
    assert_eq!(b.ids_except(&seen), ["z"]);
}

#[test]
fn receipts_wait_for_their_sender_bounded_and_in_time() {
    let mut t = MailTable::default();
    let d = |i: usize| Delivered {
        id: format!("m{i}"),
        from: UserId(1),
        to: UserId(2),
        sig: String::new(),
    };
    for i in 0..MAX_RECEIPTS_PER_SENDER + 5 {
        t.add_receipt(d(i), 10);
    }
    t.add_receipt(d(MAX_RECEIPTS_PER_SENDER + 4), 10);
    let got = t.take_receipts(UserId(1));
    assert_eq!(got.len(), MAX_RECEIPTS_PER_SENDER, "bounded, no duplicates");
    assert_eq!(got[0].id, "m5", "the oldest dropped");
    assert!(t.take_receipts(UserId(1)).is_empty());
    t.add_receipt(d(0), 10);
    t.expire(10 + TTL.as_millis() as u64 + 1);
    assert!(t.take_receipts(UserId(1)).is_empty(), "expired");
}

#[test]
fn bounded_per_recipient_in_size_and_in_time() {
    let mut t = MailTable::default();
    let now = TTL.as_millis() as u64 * 2;
    assert_eq!(
        t.put(msg("big", 2, MAX_BODY + 1, now), now),
        Err(Refused::TooLarge)
    );
    for i in 0..MAX_PER_RECIPIENT {
        t.put(msg(&format!("m{i}"), 2, 1, now), now).unwrap();
    }
    assert_eq!(
        t.put(msg("one-more", 2, 1, now), now),
        Err(Refused::MailboxFull)
    );
    assert_eq!(t.put(msg("other", 3, 1, now), now), Ok(true));
    let old = now - TTL.as_millis() as u64 - 1;
    assert_eq!(t.put(msg("old", 3, 1, old), now), Err(Refused::Expired));
    // Time passes: everything expires.
    assert_eq!(
        t.expire(now + TTL.as_millis() as u64 + 1).len(),
        MAX_PER_RECIPIENT + 1
    );
    assert!(t.is_empty());
}

#[tokio::test]
async fn a_message_survives_a_restart_until_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, stop) = (
        tokio_util::task::TaskTracker::new(),
        tokio_util::sync::CancellationToken::new(),
    );
    let now = now_ms();
    {
        let m = Mailbox::open(dir.path(), &tasks, &stop).unwrap();
        assert_eq!(m.put(msg("x", 2, 5, now)).await, Ok(true));
        assert_eq!(m.put(msg("y", 2, 5, now)).await, Ok(true));
        let notice = Delivered {
            id: "y".into(),
            from: UserId(1),
            to: UserId(2),
            sig: "s".into(),
        };
        assert!(m.delivered(&notice).1.is_some());
        assert_eq!(m.notice("y"), Some(notice));
    }
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    let (tasks, stop) = (
        tokio_util::task::TaskTracker::new(),
        tokio_util::sync::CancellationToken::new(),
    );
    let m = Mailbox::open(dir.path(), &tasks, &stop).unwrap();
    let ids: Vec<String> = m
        .for_recipient(UserId(2))
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["x"]);
    stop.cancel();
}

/// Strangers share a small part of a recipient's room, each stranger a small part of that;
/// whatever they send, the contacts' room stays free, and every count is given back when a
/// message goes.
#[test]
fn strangers_cannot_fill_a_mailbox_and_contacts_still_get_in() {
    let mut t = MailTable::default();
    let now = 1_000_000;
    let from = |id: &str, sender: u64| Relay {
        from: UserId(sender),
        ..msg(id, 2, 10, now)
    };
    // One stranger: its own share first.
    for i in 0..MAX_PER_STRANGER {
        assert_eq!(
            t.put_as(from(&format!("s{i}"), 100), now, Sender::Stranger),
            Ok(true)
        );
    }
    assert_eq!(
        t.put_as(from("s-more", 100), now, Sender::Stranger),
        Err(Refused::StrangerQuota)
    );
    // Many strangers: the strangers' share of the recipient, then nothing more from anyone
    // not in the contacts.
    let mut taken = MAX_PER_STRANGER;
    'senders: for sender in 101..1_000 {
        for i in 0..MAX_PER_STRANGER {
            match t.put_as(
                from(&format!("x{sender}-{i}"), sender),
                now,
                Sender::Stranger,
            ) {
                Ok(true) => taken += 1,
                Err(Refused::StrangerQuota) => break 'senders,
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(taken, MAX_STRANGERS_PER_RECIPIENT);
    // A contact still gets in, up to the whole rest of the room.
    for i in 0..MAX_PER_RECIPIENT - MAX_STRANGERS_PER_RECIPIENT {
        assert_eq!(
            t.put_as(from(&format!("c{i}"), 7), now, Sender::Contact),
            Ok(true)
        );
    }
    assert_eq!(
        t.put_as(from("c-more", 7), now, Sender::Contact),
        Err(Refused::MailboxFull)
    );
    // A stranger's message delivered gives its place back.
    t.delivered("s0", None);
    assert_eq!(
        t.put_as(from("s-again", 100), now, Sender::Stranger),
        Ok(true)
    );
}

#[test]
fn one_sender_and_the_server_are_bounded_in_bytes() {
    let mut t = MailTable::default();
    let now = 1_000_000;
    let big = |id: &str, to: u64| Relay {
        from: UserId(9),
        ..msg(id, to, MAX_BODY, now)
    };
    let fit = MAX_BYTES_PER_SENDER / MAX_BODY;
    // Spread over many recipients, so no recipient's bound is the one that holds.
    for i in 0..fit {
        assert_eq!(
            t.put(big(&format!("b{i}"), 1_000 + i as u64), now),
            Ok(true)
        );
    }
    assert_eq!(t.put(big("b-more", 5), now), Err(Refused::SenderFull));
    assert_eq!(t.bytes(), fit * MAX_BODY);
    // Someone else still sends; the sender's bytes come back as its messages go.
    assert_eq!(t.put(msg("other", 5, 10, now), now), Ok(true));
    t.delivered("b0", None);
    assert_eq!(t.put(big("b-again", 5), now), Ok(true));
}
