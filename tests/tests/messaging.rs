//! Relayed messages with real gossipd processes: a message to a user who is offline is kept by
//! the federation, survives the `kill -9` of the sender's server right after it was
//! acknowledged, reaches the recipient when they log in at another server, and the sender learns
//! it was delivered. A message from a non-contact arrives marked as a request; a forged or
//! replayed one does not arrive twice.

use std::time::Duration;

use gossip_client::{Event, Events, GossipClient};
use gossip_common::{Keypair, UserId};
use gossip_tests::gossipd::{Gossipd, Spec};

fn node(dir: &std::path::Path, name: &str, peer: Option<&Gossipd>) -> Gossipd {
    let mut s = Spec::new(dir.join(name)).fast_probes();
    if let Some(p) = peer {
        s = s.args(["--peer".to_string(), p.identity()]);
    }
    Gossipd::start(&s).expect("gossipd starts")
}

/// Waits (30 s at most) until `nodes` agree on one tree and link it.
async fn wait_one_tree(nodes: &[&Gossipd]) {
    let ids: Vec<String> = nodes.iter().map(|n| n.identity()).collect();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let st: Vec<serde_json::Value> = nodes
                .iter()
                .map(|n| n.status().unwrap_or_default())
                .collect();
            if gossip_tests::gossipd::one_tree(&st, &ids) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("one tree");
}

async fn registered(node: &Gossipd, nick: &str) -> (Keypair, UserId) {
    let key = Keypair::generate();
    let (c, _e) = GossipClient::connect(&node.addr(), key.clone())
        .await
        .unwrap();
    let uid = c.register(|u| u.nick_name = nick.into()).await.unwrap();
    c.logout().await.unwrap();
    (key, uid)
}

async fn login(node: &Gossipd, key: &Keypair, uid: UserId) -> (GossipClient, Events) {
    let (c, e) = GossipClient::connect(&node.addr(), key.clone())
        .await
        .unwrap();
    c.login(uid).await.unwrap();
    (c, e)
}

/// Two linked nodes, Alice registered on the first and Bob on the second.
async fn two_nodes_alice_and_bob(
    dir: &std::path::Path,
) -> (Gossipd, Gossipd, (Keypair, UserId), (Keypair, UserId)) {
    let n1 = node(dir, "n1", None);
    let n2 = node(dir, "n2", Some(&n1));
    wait_one_tree(&[&n1, &n2]).await;
    let alice = registered(&n1, "alice").await;
    let bob = registered(&n2, "bob").await;
    (n1, n2, alice, bob)
}

/// The next event `pick` accepts, within 15 s (`what` names it in the failure).
async fn next<T>(what: &str, events: &mut Events, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let ev = events.next().await.expect("connection open");
            if let Some(t) = pick(ev) {
                return t;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within 15 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_message_survives_its_servers_death_and_reaches_an_offline_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let mut n1 = node(dir.path(), "n1", None);
    let n2 = node(dir.path(), "n2", Some(&n1));
    let n3 = node(dir.path(), "n3", Some(&n2));
    wait_one_tree(&[&n1, &n2, &n3]).await;
    let (alice_key, alice) = registered(&n1, "alice").await;
    let (bob_key, bob) = registered(&n3, "bob").await;
    // Bob has Alice as a contact; Carol is a stranger to him.
    {
        let (b, _e) = login(&n3, &bob_key, bob).await;
        b.add_contacts(&[alice]).await.unwrap();
        b.logout().await.unwrap();
    }
    let (carol_key, carol) = registered(&n2, "carol").await;

    // Bob is offline. Alice sends through n1; the ack means n1 and one other server have it.
    let (a, _a_events) = login(&n1, &alice_key, alice).await;
    let body: Vec<u8> = (0..200u32).map(|i| (i * 7 % 256) as u8).collect();
    let t0 = std::time::Instant::now();
    let id = a.send_relayed(bob, &body).await.unwrap();
    let ack = t0.elapsed();
    // n1 dies at once, before anything else can happen.
    n1.kill9();
    drop(a);
    // Carol writes to Bob too, through n2.
    let (c, _c_events) = login(&n2, &carol_key, carol).await;
    let carol_id = c.send_relayed(bob, b"hello from a stranger").await.unwrap();

    // Alice comes back on n3 to hear about delivery.
    let (a, mut a_events) = login(&n3, &alice_key, alice).await;
    // Bob logs in at n2, which never spoke to Alice's server after the kill.
    let (b, mut b_events) = login(&n2, &bob_key, bob).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(
            next("event 1", &mut b_events, |ev| match ev {
                Event::Relayed { message, request } => Some((message, request)),
                _ => None,
            })
            .await,
        );
    }
    got.sort_by_key(|(m, _)| m.from != alice);
    let (from_alice, request) = &got[0];
    assert_eq!(
        (from_alice.id.as_str(), from_alice.from, *request),
        (id.as_str(), alice, false)
    );
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&from_alice.body)
        .unwrap();
    assert_eq!(decoded, body, "the body arrives unaltered");
    let (from_carol, request) = &got[1];
    assert_eq!(
        (from_carol.id.as_str(), from_carol.from),
        (carol_id.as_str(), carol)
    );
    assert!(*request, "a stranger's message is marked as a request");
    // Alice, logged in elsewhere, learns it was delivered.
    let delivered = next("event 2", &mut a_events, |ev| match ev {
        Event::Delivered { id, to } => Some((id, to)),
        _ => None,
    })
    .await;
    assert_eq!(delivered, (id.clone(), bob));
    // Delivered means gone: a new login does not get it again.
    drop(b);
    let (_b2, mut b2_events) = login(&n3, &bob_key, bob).await;
    let again = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Some(Event::Relayed { message, .. }) = b2_events.next().await {
                return message.id;
            }
        }
    })
    .await;
    assert!(again.is_err(), "delivered message came again: {again:?}");
    eprintln!("relayed message acknowledged in {ack:?}");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_recipient_gets_the_message_across_the_federation_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2, (alice_key, alice), (bob_key, bob)) = two_nodes_alice_and_bob(dir.path()).await;
    let (a, mut a_events) = login(&n1, &alice_key, alice).await;
    let (_b, mut b_events) = login(&n2, &bob_key, bob).await;
    let mut latencies = Vec::new();
    for i in 0..20u32 {
        let t0 = std::time::Instant::now();
        let id = a.send_relayed(bob, &i.to_be_bytes()).await.unwrap();
        let got = next("event 3", &mut b_events, |ev| match ev {
            Event::Relayed { message, .. } => Some(message.id),
            _ => None,
        })
        .await;
        latencies.push(t0.elapsed());
        assert_eq!(got, id);
        let (d, to) = next("event 4", &mut a_events, |ev| match ev {
            Event::Delivered { id, to } => Some((id, to)),
            _ => None,
        })
        .await;
        assert_eq!((d, to), (id, bob));
    }
    // A message whose signature is not the sender's is refused by the server.
    let mut forged = gossip_common::message::Relay {
        id: format!("{:032x}", 7u128),
        from: alice,
        to: bob,
        sent: 1,
        body: "AAAA".into(),
        sig: Keypair::generate()
            .sign(gossip_common::Domain::Relay, b"x")
            .to_string(),
        request: None,
    };
    forged.sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Sent by Alice's own logged-in session, so only the signature is wrong.
    use gossip_common::message as m;
    let mut raw = gossip_tests::RawConn::connect(n1.addr().parse().unwrap()).await;
    let id = raw.send(m::Authenticate { uid: alice }).await;
    let gossip_common::Body::Challenge(ch) = raw.until_final(id).await.pop().unwrap().body else {
        panic!("no challenge")
    };
    let signature = alice_key.sign(
        gossip_common::Domain::Login,
        &gossip_common::login_challenge_bytes(&ch.nonce, &ch.server, alice),
    );
    let id = raw
        .send(m::ChallengeResponse {
            uid: alice,
            signature,
        })
        .await;
    raw.until_final(id).await;
    let id = raw.send(forged.clone()).await;
    let gossip_common::Body::Error(e) = raw.until_final(id).await.pop().unwrap().body else {
        panic!("a forged message was accepted")
    };
    assert_eq!(e.code, gossip_common::ErrorCode::BadSignature, "{}", e.text);
    // Signed properly, the same envelope is taken.
    forged.sig = alice_key
        .sign(
            gossip_common::Domain::Relay,
            &gossip_common::relay_bytes(&forged),
        )
        .to_string();
    let id = raw.send(forged).await;
    let last = raw.until_final(id).await.pop().unwrap().body;
    assert!(matches!(last, gossip_common::Body::Ok(_)), "{last:?}");
    latencies.sort();
    eprintln!(
        "relayed across 2 nodes: p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_message_reaches_an_offline_user_and_no_server_holds_its_text() {
    use gossip_client::e2e::E2e;
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2, (alice_key, alice), (bob_key, bob)) = two_nodes_alice_and_bob(dir.path()).await;
    let mut alice_e2e = E2e::open(&dir.path().join("alice-e2e.json")).unwrap();
    let mut bob_e2e = E2e::open(&dir.path().join("bob-e2e.json")).unwrap();
    // Bob publishes his keys once, then goes offline. Neither client accepts connections.
    {
        let (b, _e) = login(&n2, &bob_key, bob).await;
        b.publish_keys(&bob_e2e).await.unwrap();
        b.logout().await.unwrap();
    }
    let secret = format!("the eagle lands at midnight {:x}", rand::random::<u64>());
    let (a, _ae) = login(&n1, &alice_key, alice).await;
    // Bob's keys reach n1 by replication.
    let bob_record = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let r = a.fetch_users(&[bob]).await.unwrap();
            if r.first()
                .is_some_and(|r| gossip_client::e2e::published_keys(r.value()).is_some())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(bob_record.is_ok(), "Bob's keys never reached n1");
    let id = a
        .send_encrypted(&mut alice_e2e, bob, secret.as_bytes())
        .await
        .unwrap();
    // Bob logs in at the other node than the one he published from... any node works.
    let (b, mut be) = login(&n1, &bob_key, bob).await;
    let message = next("event 5", &mut be, |ev| match ev {
        Event::Relayed { message, .. } => Some(message),
        _ => None,
    })
    .await;
    assert_eq!(message.id, id);
    let plain = b.open_relayed(&mut bob_e2e, &message).await.unwrap();
    assert_eq!(plain, secret.as_bytes());
    // A replayed ciphertext is refused by the recipient.
    assert!(b.open_relayed(&mut bob_e2e, &message).await.is_err());
    // An altered one too.
    let (a2, _) = (
        a.send_encrypted(&mut alice_e2e, bob, b"second")
            .await
            .unwrap(),
        (),
    );
    let mut second = next("event 6", &mut be, |ev| match ev {
        Event::Relayed { message, .. } => Some(message),
        _ => None,
    })
    .await;
    assert_eq!(second.id, a2);
    use base64::Engine as _;
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(&second.body)
        .unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    second.body = base64::engine::general_purpose::STANDARD.encode(&raw);
    assert!(b.open_relayed(&mut bob_e2e, &second).await.is_err());
    // No server's data files or logs hold the text.
    let mut searched = 0;
    for n in [&n1, &n2] {
        let mut paths = files(n.data_dir());
        paths.push(n.spec().log_path());
        for p in paths {
            if let Ok(bytes) = std::fs::read(&p) {
                searched += 1;
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds the plaintext",
                    p.display()
                );
            }
        }
    }
    assert!(searched >= 6, "searched {searched} files");
    // But the ciphertext is there: the mailbox did hold the message.
    let mailbox = std::fs::read_to_string(n1.data_dir().join("mailbox.log")).unwrap();
    assert!(mailbox.contains(&id));
}
