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

/// A record `key` signs by hand with a nonce point carrying a torsion component: `R = rB + T`
/// (`T` of order 2), `s = r + H(R, A, M)·a`. The cofactorless equation rejects it, the
/// cofactored one accepts it, and dalek's cofactorless *batch* accepted it about half the time:
/// exactly the kind of signature on which two verification paths could disagree.
fn torsioned(key: &Keypair, uid: u64, count: u32) -> Signed<UserInfo> {
    use curve25519_dalek::traits::IsIdentity;
    use curve25519_dalek::{constants, EdwardsPoint, Scalar};
    use sha2::{Digest, Sha512};
    let mut u = UserInfo::new(UserId(uid), key.public());
    u.nick_name = "torsion".into();
    u.event_count = EventCount::new(count, false);
    let raw = {
        use gossip_common::Record;
        u.to_xml()
    };
    let a = ed25519_dalek::SigningKey::from_bytes(&key.secret_bytes()).to_scalar();
    let r = Scalar::from_bytes_mod_order([7u8; 32]);
    let torsion: EdwardsPoint = constants::EIGHT_TORSION[4];
    assert!(torsion.is_small_order() && !torsion.is_identity());
    let big_r = (EdwardsPoint::mul_base(&r) + torsion).compress();
    let mut message = b"gossip-record-v1\0".to_vec();
    message.extend_from_slice(raw.as_bytes());
    let k = Scalar::from_hash(
        Sha512::new()
            .chain_update(big_r.as_bytes())
            .chain_update(key.public().as_bytes())
            .chain_update(&message),
    );
    let s = r + k * a;
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(big_r.as_bytes());
    sig[32..].copy_from_slice(s.as_bytes());
    Signed::from_parts(raw, gossip_common::Signature::from_bytes(&sig)).unwrap()
}

/// Whether each entry point stores `records` (one verdict per record): a client creating it, a
/// neighbour propagating it, a sync batch carrying it, and a datafile holding it at start-up.
async fn verdicts(records: &[Signed<UserInfo>]) -> [Vec<bool>; 4] {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (client, _) = Store::open(dirs[0].path()).unwrap();
    let (peer, _) = Store::open(dirs[1].path()).unwrap();
    let (sync, _) = Store::open(dirs[2].path()).unwrap();
    let mut by_client = Vec::new();
    let mut by_peer = Vec::new();
    for r in records {
        by_client.push(
            client
                .apply_user_info(r.clone(), Mode::Create, "t")
                .await
                .is_ok(),
        );
        by_peer.push(
            peer.apply_user_info(r.clone(), Mode::Replicate, "t")
                .await
                .is_ok(),
        );
    }
    let by_sync = sync
        .apply_replicated(records.to_vec(), Vec::new(), "t")
        .await
        .users
        .iter()
        .map(Result::is_ok)
        .collect();
    write_datafiles(dirs[3].path(), records, []).unwrap();
    let (loaded, _) = Store::open(dirs[3].path()).unwrap();
    let by_load = records
        .iter()
        .map(|r| loaded.user(r.user_id).is_some())
        .collect();
    [by_client, by_peer, by_sync, by_load]
}

#[tokio::test]
async fn every_entry_point_gives_a_signature_the_same_verdict() {
    let keys: Vec<Keypair> = (0..24).map(|_| Keypair::generate()).collect();
    let mut records = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let uid = 100 + i as u64;
        records.push(match i % 3 {
            0 => info(key, uid, 0, "offline"),
            1 => torsioned(key, uid, 0),
            _ => {
                // Signed by someone else: bad everywhere.
                let good = info(key, uid, 0, "offline");
                let forged =
                    Keypair::generate().sign(gossip_common::Domain::Record, good.raw().as_bytes());
                Signed::from_parts(good.raw(), forged).unwrap()
            }
        });
    }
    // Several runs: a disagreement between the batch and single rules used to show up in about
    // half of the batches.
    for _ in 0..4 {
        let [client, peer, sync, load] = verdicts(&records).await;
        assert_eq!(client, peer, "client vs propagation");
        assert_eq!(client, sync, "client vs sync batch");
        assert_eq!(client, load, "client vs start-up load");
        for (i, ok) in client.iter().enumerate() {
            assert_eq!(*ok, i % 3 != 2, "record {i}");
        }
    }
}

#[test]
fn a_weak_key_is_refused_wherever_a_record_is_parsed() {
    // The identity point: every signature "verifies" for it under a cofactored rule.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(gossip_common::PublicKey::from_bytes(&identity).is_err());
    let key = Keypair::generate();
    let good = info(&key, 7, 0, "offline");
    let weak = good
        .raw()
        .replace(&key.public().to_string(), &hex_of(&identity));
    assert_ne!(weak, good.raw());
    assert!(Signed::<UserInfo>::from_parts(weak, *good.signature()).is_err());
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The incrementally kept range fingerprints always equal a sum computed from scratch over the
/// records stored, for ranges above, at and below the cached levels, through updates and a
/// reopen; and the digest is the root.
#[tokio::test]
async fn range_fingerprints_follow_every_write_and_a_reopen() {
    use crate::reconcile::{item_hash, key, Fingerprint, ItemSource, Node};
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let keys: Vec<Keypair> = (0..300).map(|_| Keypair::generate()).collect();
    for (i, k) in keys.iter().enumerate() {
        store
            .apply_user_info(info(k, i as u64, 0, "offline"), Mode::Create, "t")
            .await
            .unwrap();
        if i % 3 == 0 {
            store
                .apply_contact_list(list(k, i as u64, 1, &[1, 2]), "t")
                .await
                .unwrap();
        }
    }
    for (i, k) in keys.iter().enumerate().step_by(7) {
        store
            .apply_user_info(info(k, i as u64, 2, "online"), Mode::Update, "t")
            .await
            .unwrap();
    }
    let naive = |store: &Store, node: Node| {
        let mut f = Fingerprint::default();
        for u in store.all_users() {
            if node.contains(key(u.user_id)) {
                f.add(item_hash(
                    b'u',
                    u.user_id,
                    u.event_count,
                    &u.signature().to_bytes(),
                ));
                if let Some(l) = store.contact_list(u.user_id) {
                    f.add(item_hash(
                        b'c',
                        u.user_id,
                        l.event_count,
                        &l.signature().to_bytes(),
                    ));
                }
            }
        }
        f
    };
    let check = |store: &Store| {
        for uid in [0u64, 7, 150, 299] {
            for level in [0, 1, 2, 3, 4, 5, 16] {
                let node = Node::of(key(UserId(uid)), level);
                assert_eq!(store.fingerprint(node), naive(store, node), "level {level}");
                if level < 16 {
                    let children = store.children(node);
                    let sum: u64 = children.iter().map(|c| c.count).sum();
                    assert_eq!(sum, naive(store, node).count);
                    assert_eq!(children[3], naive(store, node.child(3)));
                }
                let items = store.items(node);
                assert_eq!(
                    (items.users.len() + items.lists.len()) as u64,
                    naive(store, node).count
                );
                assert!(items.users.iter().any(|e| e.uid == UserId(uid)));
            }
        }
        let root = naive(store, Node::ROOT);
        assert_eq!(root.count, 400);
        assert!(store
            .digest()
            .starts_with(&format!("{:032x}-300-100", root.sum)));
    };
    check(&store);
    let digest = store.digest();
    store.close().await.unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    check(&store);
    assert_eq!(store.digest(), digest);
}

#[tokio::test]
async fn a_wait_for_a_user_ends_when_the_user_is_stored_or_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let key = Keypair::generate();
    let waiter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let found = store
                .await_user(UserId(7), std::time::Duration::from_secs(20))
                .await;
            (found, started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    store
        .apply_user_info(info(&key, 7, 1, "online"), Mode::Create, "test")
        .await
        .unwrap();
    let (found, waited) = waiter.await.unwrap();
    assert!(found);
    assert!(
        waited < std::time::Duration::from_secs(5),
        "woken, not timed out: {waited:?}"
    );
    // Stored already: at once. Never stored: false at the deadline.
    assert!(store.await_user(UserId(7), std::time::Duration::ZERO).await);
    let started = std::time::Instant::now();
    assert!(
        !store
            .await_user(UserId(8), std::time::Duration::from_millis(100))
            .await
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(100));
}
