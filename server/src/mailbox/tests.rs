use super::*;

/// The message id a test names `label`.
fn h(label: &str) -> String {
    id_text(id_hash(label))
}

fn msg(id: &str, to: u64, body: usize, sent: u64) -> Relay {
    Relay {
        id: h(id),
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
            .into_iter()
            .map(id_text)
            .collect::<Vec<_>>(),
        [h("a"), h("b")]
    );
    assert!(t.delivered(&h("a"), None).0);
    let (news, held) = t.delivered(&h("a"), None);
    assert!(!news && held.is_none(), "told twice: no news");
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
    b.delivered(&h("w"), None);
    assert_eq!(
        a.digest(),
        b.digest(),
        "a delivery without its notice is not counted"
    );
    assert_eq!(a.digest().count, 3);
    let notice = Delivered {
        id: h("y"),
        from: UserId(1),
        to: UserId(2),
        sig: String::new(),
    };
    a.delivered(&h("y"), Some(notice.clone()));
    assert_ne!(a.digest(), b.digest(), "a known notice counts");
    b.delivered(&h("y"), Some(notice.clone()));
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.digest().delivered, 1);
    assert_eq!(a.noticed_ids(), [h("y")]);
    assert_eq!(a.notices_except(&Default::default()), [notice]);
    a.expire(now + TTL.as_millis() as u64 + 1);
    assert_eq!((a.digest().count, a.digest().sum), (0, 0));
    let seen = [h("x")].iter().map(|id| id_hash(id)).collect();
    assert_eq!(b.ids_except(&seen), [h("z")]);
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
            id: h("y"),
            from: UserId(1),
            to: UserId(2),
            sig: "s".into(),
        };
        assert!(m.delivered(&notice).1.is_some());
        assert_eq!(m.notice(&h("y")), Some(notice));
    }
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    let (tasks, stop) = (
        tokio_util::task::TaskTracker::new(),
        tokio_util::sync::CancellationToken::new(),
    );
    let m = Mailbox::open(dir.path(), &tasks, &stop).unwrap();
    assert_eq!(m.for_recipient(UserId(2)), [h("x")]);
    assert_eq!(
        m.get(&h("x")).await,
        Some(msg("x", 2, 5, now)),
        "read back from the file"
    );
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
            t.put_as(
                from(&format!("s{i}"), 100),
                now,
                Sender::Stranger,
                UNCERTIFIED
            ),
            Ok(true)
        );
    }
    assert_eq!(
        t.put_as(from("s-more", 100), now, Sender::Stranger, UNCERTIFIED),
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
                UNCERTIFIED,
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
            t.put_as(from(&format!("c{i}"), 7), now, Sender::Contact, UNCERTIFIED),
            Ok(true)
        );
    }
    assert_eq!(
        t.put_as(from("c-more", 7), now, Sender::Contact, UNCERTIFIED),
        Err(Refused::MailboxFull)
    );
    // A stranger's message delivered gives its place back.
    t.delivered(&h("s0"), None);
    assert_eq!(
        t.put_as(from("s-again", 100), now, Sender::Stranger, UNCERTIFIED),
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
    t.delivered(&h("b0"), None);
    assert_eq!(t.put(big("b-again", 5), now), Ok(true));
}

/// The users of one origin (the server that sponsored them: a member's sybils, say) share
/// [`MAX_BYTES_PER_ORIGIN`]; another origin's users still get in.
#[test]
fn one_origin_is_bounded_in_bytes() {
    let mut t = MailTable::default();
    let now = 1_000_000;
    let (sybils, honest): (Origin, Origin) = (7, 9);
    let place = Place::Disk { offset: 0, len: 1 };
    let mut i = 0u64;
    let refused = loop {
        // A fresh sender and recipient every 64 messages: no sender's or recipient's bound
        // is the one that holds.
        let r = Relay {
            from: UserId(10_000 + i / 64),
            ..msg(&format!("o{i}"), 100_000 + i / 64, MAX_BODY, now)
        };
        match t.restore(&r, now, (Sender::Contact, sybils), place.clone()) {
            Ok(true) => i += 1,
            other => break other,
        }
    };
    assert_eq!(refused, Err(Refused::OriginFull));
    assert_eq!(i as usize, MAX_BYTES_PER_ORIGIN / MAX_BODY);
    let r = Relay {
        from: UserId(5),
        ..msg("honest", 6, MAX_BODY, now)
    };
    assert_eq!(
        t.restore(&r, now, (Sender::Contact, honest), place.clone()),
        Ok(true)
    );
    // A delivered message gives its bytes back to its origin.
    t.delivered(&h("o0"), None);
    let r = Relay {
        from: UserId(99),
        ..msg("again", 100_000, MAX_BODY, now)
    };
    assert_eq!(
        t.restore(&r, now, (Sender::Contact, sybils), place),
        Ok(true)
    );
}

#[test]
fn only_hex_ids_are_held() {
    let mut t = MailTable::default();
    let now = 1_000_000;
    let bad = Relay {
        id: "not-an-id".into(),
        ..msg("x", 2, 1, now)
    };
    assert_eq!(t.put(bad, now), Err(Refused::BadId));
    let upper = Relay {
        id: h("x").to_uppercase(),
        ..msg("x", 2, 1, now)
    };
    assert_eq!(t.put(upper, now), Err(Refused::BadId));
    let (news, held) = t.delivered("not-an-id", None);
    assert!(!news && held.is_none());
}

/// Bodies leave memory once on disk, are read back from the file, and stay readable through a
/// rewrite of the file and a restart.
#[tokio::test]
async fn bodies_live_on_disk_through_rewrites_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, stop) = (
        tokio_util::task::TaskTracker::new(),
        tokio_util::sync::CancellationToken::new(),
    );
    let now = now_ms();
    let body = |i: usize| Relay {
        body: format!("{i:0>40}"),
        ..msg(&format!("k{i}"), 2, 0, now)
    };
    {
        let m = Mailbox::open(dir.path(), &tasks, &stop).unwrap();
        assert_eq!(m.put(body(0)).await, Ok(true));
        let place = m.state.lock().table.get(&h("k0")).unwrap().place.clone();
        assert!(
            matches!(place, Place::Disk { .. }),
            "in memory after its write: {place:?}"
        );
        assert_eq!(m.get(&h("k0")).await, Some(body(0)));
        // Enough dead lines that the writer rewrites the file.
        let size = || std::fs::metadata(dir.path().join(FILE)).unwrap().len();
        let mut biggest = 0;
        for i in 1..=6_000 {
            assert_eq!(m.put(body(i)).await, Ok(true));
            let d = Delivered {
                id: h(&format!("k{i}")),
                from: UserId(1),
                to: UserId(2),
                sig: "s".into(),
            };
            m.delivered(&d);
            biggest = biggest.max(size());
        }
        assert_eq!(m.put(body(9_999)).await, Ok(true));
        assert!(
            size() < biggest,
            "rewritten: {} bytes, {biggest} at most before",
            size()
        );
        assert_eq!(m.get(&h("k0")).await, Some(body(0)), "after the rewrite");
        assert_eq!(m.get(&h("k9999")).await, Some(body(9_999)));
        assert_eq!(m.get(&h("k5")).await, None, "delivered");
    }
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    let (tasks, stop) = (
        tokio_util::task::TaskTracker::new(),
        tokio_util::sync::CancellationToken::new(),
    );
    let m = Mailbox::open(dir.path(), &tasks, &stop).unwrap();
    assert_eq!(m.for_recipient(UserId(2)), [h("k0"), h("k9999")]);
    assert_eq!(m.get(&h("k0")).await, Some(body(0)));
    assert_eq!(m.get(&h("k9999")).await, Some(body(9_999)));
    assert!(m.knows(&h("k5")), "still known delivered");
    stop.cancel();
}

/// A crash mid-append leaves a torn last line: it is cut off, and what comes after it is read.
#[tokio::test]
async fn a_torn_last_line_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, stop) = (
        tokio_util::task::TaskTracker::new(),
        tokio_util::sync::CancellationToken::new(),
    );
    let now = now_ms();
    {
        let m = Mailbox::open(dir.path(), &tasks, &stop).unwrap();
        assert_eq!(m.put(msg("a", 2, 5, now)).await, Ok(true));
    }
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(FILE))
        .unwrap()
        .write_all(b"{\"keep\":{\"relay\":{\"id\":\"00")
        .unwrap();
    for round in 0..2 {
        let (tasks, stop) = (
            tokio_util::task::TaskTracker::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        let m = Mailbox::open(dir.path(), &tasks, &stop).unwrap();
        if round == 0 {
            assert_eq!(m.put(msg("b", 2, 5, now)).await, Ok(true));
        }
        assert_eq!(
            m.for_recipient(UserId(2)),
            [h("a"), h("b")],
            "round {round}"
        );
        assert_eq!(m.get(&h("b")).await, Some(msg("b", 2, 5, now)));
        stop.cancel();
        tasks.close();
        tasks.wait().await;
    }
}

/// What memory holds per message, the indexes aside: its id and envelope, not its body.
#[test]
fn a_held_message_costs_memory_a_few_dozen_bytes() {
    let entry = std::mem::size_of::<(Id, Held)>();
    assert!(entry <= 80, "{entry} bytes");
    println!(
        "per held message: {entry} bytes in the id map, {} in the recipient's list",
        std::mem::size_of::<Id>()
    );
}
