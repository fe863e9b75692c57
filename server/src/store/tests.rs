use super::*;
use gossip_common::Keypair;

fn info(key: &Keypair, uid: u64, count: u32, status: &str) -> Signed<UserInfo> {
    let mut u = UserInfo::new(UserId(uid), key.public());
    u.status = status.into();
    u.nick_name = format!("nick{uid}");
    u.event_count = EventCount::new(count, false);
    Signed::sign(u, key).unwrap()
}

fn list(key: &Keypair, uid: u64, count: u32, contacts: &[u64]) -> Signed<ContactList> {
    let cl = ContactList::new(
        UserId(uid),
        EventCount::new(count, false),
        contacts.iter().map(|c| UserId(*c)).collect(),
    );
    Signed::sign(cl, key).unwrap()
}

#[tokio::test]
async fn rules_for_user_info() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let alice = Keypair::generate();
    let mallory = Keypair::generate();

    // Update before registration: unknown user.
    let e = store
        .apply_user_info(info(&alice, 1, 1, "online"), Mode::Update, "t")
        .await;
    assert!(matches!(e, Err(StoreError::UnknownUser(UserId(1)))));

    store
        .apply_user_info(info(&alice, 1, 0, "offline"), Mode::Create, "t")
        .await
        .unwrap();
    let e = store
        .apply_user_info(info(&alice, 1, 5, "online"), Mode::Create, "t")
        .await;
    assert!(matches!(e, Err(StoreError::Exists(_))));

    let applied = store
        .apply_user_info(info(&alice, 1, 1, "online"), Mode::Update, "t")
        .await
        .unwrap();
    assert_eq!(
        applied.previous.unwrap().event_count,
        EventCount::new(0, false)
    );

    // Equal and older event counts are stale, and the error names the stored count.
    for count in [1, 0] {
        match store
            .apply_user_info(info(&alice, 1, count, "away"), Mode::Update, "t")
            .await
        {
            Err(StoreError::Stale { current, .. }) => {
                assert_eq!(current, EventCount::new(1, false))
            }
            other => panic!("expected stale, got {other:?}"),
        }
    }

    // Someone else's key, even with a newer count: key change refused.
    let e = store
        .apply_user_info(info(&mallory, 1, 9, "online"), Mode::Replicate, "t")
        .await;
    assert!(
        matches!(e, Err(StoreError::Record(RecordError::KeyMismatch { .. }))),
        "{e:?}"
    );

    // A record claiming alice's key but signed by mallory: bad signature.
    let mut forged = UserInfo::new(UserId(1), alice.public());
    forged.event_count = EventCount::new(9, false);
    let forged = Signed::sign(forged, &mallory).unwrap();
    let e = store.apply_user_info(forged, Mode::Update, "t").await;
    assert!(
        matches!(e, Err(StoreError::Record(RecordError::BadSignature))),
        "{e:?}"
    );

    assert_eq!(store.user(UserId(1)).unwrap().status, "online");
}

#[tokio::test]
async fn rules_for_contact_lists() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let alice = Keypair::generate();
    let mallory = Keypair::generate();
    let e = store
        .apply_contact_list(list(&alice, 1, 1, &[2]), "t")
        .await;
    assert!(matches!(e, Err(StoreError::UnknownUser(_))));
    store
        .apply_user_info(info(&alice, 1, 0, "offline"), Mode::Create, "t")
        .await
        .unwrap();
    store
        .apply_contact_list(list(&alice, 1, 1, &[2, 3]), "t")
        .await
        .unwrap();
    let e = store
        .apply_contact_list(list(&mallory, 1, 2, &[4]), "t")
        .await;
    assert!(matches!(
        e,
        Err(StoreError::Record(RecordError::BadSignature))
    ));
    let e = store
        .apply_contact_list(list(&alice, 1, 1, &[4]), "t")
        .await;
    assert!(matches!(e, Err(StoreError::Stale { .. })));
    assert_eq!(
        store.contact_list(UserId(1)).unwrap().contacts,
        vec![UserId(2), UserId(3)]
    );
}

#[tokio::test]
async fn everything_acknowledged_survives_reopen_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<Keypair> = (0..20).map(|_| Keypair::generate()).collect();
    let digest = {
        let (store, _) = Store::open(dir.path()).unwrap();
        for (i, k) in keys.iter().enumerate() {
            store
                .apply_user_info(info(k, i as u64, 0, "offline"), Mode::Create, "t")
                .await
                .unwrap();
            for c in 1..5 {
                store
                    .apply_user_info(info(k, i as u64, c, "online"), Mode::Update, "t")
                    .await
                    .unwrap();
            }
            store
                .apply_contact_list(list(k, i as u64, 1, &[1, 2]), "t")
                .await
                .unwrap();
        }
        let d = store.digest();
        store.compact().await.unwrap();
        assert_eq!(store.digest(), d);
        // One more update after compaction goes to the new file.
        store
            .apply_user_info(info(&keys[0], 0, 9, "away"), Mode::Update, "t")
            .await
            .unwrap();
        let d = store.digest();
        store.close().await.unwrap();
        d
    };
    let (store, report) = Store::open(dir.path()).unwrap();
    assert_eq!(report.users, 20);
    assert_eq!(report.lists, 20);
    assert_eq!(report.bad_signatures, 0);
    assert_eq!(store.digest(), digest);
    assert_eq!(store.user(UserId(0)).unwrap().status, "away");
    let log = std::fs::read_to_string(dir.path().join(TXLOG_FILE)).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("store UserInfo")).count(),
        20 * 5 + 1
    );
}

#[tokio::test]
async fn tampered_datafile_entry_is_dropped_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Keypair::generate();
    let bob = Keypair::generate();
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        store
            .apply_user_info(info(&alice, 1, 0, "offline"), Mode::Create, "t")
            .await
            .unwrap();
        store
            .apply_user_info(info(&bob, 2, 0, "offline"), Mode::Create, "t")
            .await
            .unwrap();
        store.close().await.unwrap();
    }
    // The admin edits bob's record and fixes up the checksum: the signature still catches it.
    let path = dir.path().join(USERS_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            if l.contains("nick2") {
                let body = l.split_once(' ').unwrap().1.replace("nick2", "evil2");
                format!("{:08x} {body}", crc32fast::hash(body.as_bytes()))
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&path, edited.join("\n") + "\n").unwrap();
    let (store, report) = Store::open(dir.path()).unwrap();
    assert_eq!(report.bad_signatures, 1);
    assert!(store.user(UserId(1)).is_some());
    assert!(store.user(UserId(2)).is_none());
}

#[tokio::test]
async fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).err().expect("second open refused");
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    first.close().await.unwrap();
    // Released once the first store is gone.
    Store::open(dir.path()).unwrap();
}

#[tokio::test]
async fn a_key_swapped_into_the_datafile_is_refused_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Keypair::generate();
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        store
            .apply_user_info(info(&alice, 1, 0, "offline"), Mode::Create, "t")
            .await
            .unwrap();
        store.close().await.unwrap();
    }
    // The admin appends a newer, validly self-signed record for uid 1 with their own key.
    let mallory = Keypair::generate();
    let line = datafile::encode_line(
        UserId(1),
        EventCount::new(9, false),
        &info(&mallory, 1, 9, "online"),
    );
    let path = dir.path().join(USERS_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend(line);
    std::fs::write(&path, bytes).unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let u = store.user(UserId(1)).unwrap();
    assert_eq!(u.public_key, alice.public());
    assert_eq!(u.status, "offline");
}

#[tokio::test]
async fn replicated_batches_follow_the_same_rules_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let (alice, bob, mallory) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    store
        .apply_user_info(info(&bob, 2, 3, "online"), Mode::Create, "t")
        .await
        .unwrap();
    // A forged copy of alice's record: her key in it, mallory's signature.
    let good = info(&alice, 1, 0, "online");
    let forged = Signed::<UserInfo>::from_parts(
        good.raw().to_owned(),
        *info(&mallory, 1, 0, "online").signature(),
    )
    .unwrap();
    let users = vec![
        good.clone(),
        forged,                         // bad signature
        info(&bob, 2, 2, "away"),       // older than stored: stale
        info(&mallory, 2, 9, "online"), // bob's UserID, another key
        info(&alice, 3, 0, "online"),   // new user, fine
    ];
    let lists = vec![
        list(&alice, 1, 0, &[2]),   // owner arrives in the same batch
        list(&mallory, 3, 0, &[1]), // signed by the wrong key
        list(&bob, 9, 0, &[1]),     // unknown owner
    ];
    let r = store.apply_replicated(users, lists, "peer:test").await;
    let ok: Vec<bool> = r.users.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, false, false, false, true]);
    assert!(matches!(
        r.users[1],
        Err(StoreError::Record(RecordError::BadSignature))
    ));
    assert!(matches!(r.users[2], Err(StoreError::Stale { .. })));
    assert!(matches!(
        r.users[3],
        Err(StoreError::Record(RecordError::KeyMismatch { .. }))
    ));
    let ok: Vec<bool> = r.lists.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, false, false]);
    assert_eq!(store.user(UserId(1)).unwrap(), good);
    assert_eq!(store.user(UserId(2)).unwrap().event_count.count, 3);
    let digest = store.digest();
    store.close().await.unwrap();
    let (store, report) = Store::open(dir.path()).unwrap();
    assert_eq!(
        (report.users, report.lists, report.bad_signatures),
        (3, 1, 0)
    );
    assert_eq!(store.digest(), digest, "the batch was durable");
}
