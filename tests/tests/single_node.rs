//! One gossipd node end to end: registration, login, presence pushes, last will, and the
//! refusals a misbehaving or malicious client gets — against an in-process node on real
//! loopback sockets, with the same client library users use.

use std::time::Duration;

use gossip_client::{Event, GossipClient};
use gossip_common::message::{self as m};
use gossip_common::{
    Body, Domain, ErrorCode, EventCount, Keypair, Message, Signed, UserId, UserInfo,
};
use gossip_server::{Config, RunningNode};
use gossip_tests::RawConn;

async fn node(dir: &std::path::Path) -> RunningNode {
    gossip_server::start(Config::for_tests(dir, 0))
        .await
        .expect("node starts")
}

async fn new_user(
    node: &RunningNode,
    nick: &str,
) -> (GossipClient, gossip_client::Events, Keypair) {
    let key = Keypair::generate();
    let (client, events) = GossipClient::connect(&node.client_addr().to_string(), key.clone())
        .await
        .unwrap();
    client
        .register(|u| u.nick_name = nick.into())
        .await
        .unwrap();
    (client, events, key)
}

/// Waits for a presence event about `uid` matching `pred`.
async fn expect_presence(
    events: &mut gossip_client::Events,
    uid: UserId,
    pred: impl Fn(&UserInfo) -> bool,
) -> Signed<UserInfo> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("presence event in time")
            .expect("event stream open");
        if let Event::Presence(r) = ev {
            if r.user_id == uid && pred(&r) {
                return r;
            }
        }
    }
}

#[tokio::test]
async fn presence_is_pushed_and_last_will_fires() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let (alice, mut alice_events, _) = new_user(&node, "alice").await;
    let (bob, _bob_events, bob_key) = new_user(&node, "bob").await;
    let bob_uid = bob.uid().unwrap();
    assert_ne!(alice.uid(), Some(bob_uid), "two registrations, two UserIDs");

    alice.add_contacts(&[bob_uid]).await.unwrap();
    alice.go_online("online", None).await.unwrap();

    // Bob's status change reaches Alice without her asking.
    bob.go_online("online", None).await.unwrap();
    expect_presence(&mut alice_events, bob_uid, |u| u.status == "online").await;
    bob.set_status("away", Some("lunch")).await.unwrap();
    let r = expect_presence(&mut alice_events, bob_uid, |u| u.status == "away").await;
    assert_eq!(r.status_message, "lunch");
    assert!(alice.is_contact_online(bob_uid));

    // Clean logout: offline.
    bob.logout().await.unwrap();
    expect_presence(&mut alice_events, bob_uid, |u| !u.is_online()).await;
    assert!(!alice.is_contact_online(bob_uid));

    // Bob again, then his client vanishes without a logout (connection closed): last will.
    let (bob2, _ev) = GossipClient::connect(&node.client_addr().to_string(), bob_key.clone())
        .await
        .unwrap();
    bob2.login(bob_uid).await.unwrap();
    bob2.go_online("online", None).await.unwrap();
    expect_presence(&mut alice_events, bob_uid, |u| u.is_online()).await;
    // A status change makes the old will stale; the client hands over a fresh one.
    bob2.set_status("busy", None).await.unwrap();
    expect_presence(&mut alice_events, bob_uid, |u| u.status == "busy").await;
    let t0 = std::time::Instant::now();
    drop(bob2);
    expect_presence(&mut alice_events, bob_uid, |u| !u.is_online()).await;
    eprintln!("dropped client shown offline after {:?}", t0.elapsed());

    // Bob a third time, and this time the connection goes silent (half-open): the keepalive
    // idle timeout (2 s in tests) fires the last will.
    let mut raw = RawConn::connect(node.client_addr()).await;
    let id = raw.send(m::Authenticate { uid: bob_uid }).await;
    let Body::Challenge(ch) = raw.until_final(id).await.pop().unwrap().body else {
        panic!()
    };
    let sig = bob_key.sign(
        Domain::Login,
        &gossip_common::login_challenge_bytes(&ch.nonce, &ch.server, bob_uid),
    );
    let id = raw
        .send(m::ChallengeResponse {
            uid: bob_uid,
            signature: sig,
        })
        .await;
    let answers = raw.until_final(id).await;
    let Body::UserInfo(me) = &answers[0].body else {
        panic!("UserInfo first")
    };
    let mut info = me.record.value().clone();
    info.status = "online".into();
    info.event_count = info.event_count.next();
    let online = Signed::sign(info.clone(), &bob_key).unwrap();
    let id = raw.send(m::UserInfoMsg { record: online }).await;
    raw.until_final(id).await;
    info.status = "offline".into();
    info.event_count = info.event_count.next();
    let will = Signed::sign(info, &bob_key).unwrap();
    let id = raw.send(m::LastWill { record: will }).await;
    assert!(matches!(
        raw.until_final(id).await.pop().unwrap().body,
        Body::Ok(_)
    ));
    expect_presence(&mut alice_events, bob_uid, |u| u.is_online()).await;
    let t0 = std::time::Instant::now();
    // Stop reading and answering: the socket stays open, the client is silent.
    let _keep_socket_open = raw;
    expect_presence(&mut alice_events, bob_uid, |u| !u.is_online()).await;
    let waited = t0.elapsed();
    eprintln!("silent (half-open) client shown offline after {waited:?}");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "{waited:?}"
    );

    node.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_changes_from_two_sessions_of_one_user_are_both_kept() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let (first, _e1, key) = new_user(&node, "bob").await;
    let uid = first.uid().unwrap();
    // A second session of the same user (a one-shot command beside another). Neither has a
    // last will out, so both number their next record from the one they hold.
    let (second, _e2) = GossipClient::connect(&node.client_addr().to_string(), key)
        .await
        .unwrap();
    second.login(uid).await.unwrap();
    // Each round, both change a different field at once: whichever the server takes second
    // finds its event count stale, and must apply its change to the record the other wrote.
    for round in 0..10 {
        let status = format!("away {round}");
        let note = format!("note {round}");
        let (a, b) = tokio::join!(
            second.set_status(&status, None),
            first.update_info(|u| {
                u.extra.retain(|(n, _)| n != "Note");
                u.extra.push(("Note".into(), note.clone()));
            })
        );
        a.unwrap();
        b.unwrap();
        let stored = node.node.store.user(uid).unwrap();
        assert_eq!(
            stored.status, status,
            "round {round}: the status was undone"
        );
        assert!(
            stored.extra.iter().any(|(n, v)| n == "Note" && *v == note),
            "round {round}: the note was undone"
        );
    }
    node.stop().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let (alice, _ev, alice_key) = new_user(&node, "alice").await;
    let uid = alice.uid().unwrap();
    alice.go_online("online", None).await.unwrap();
    let stored = alice.me().unwrap();

    // Unknown uid.
    let mut raw = RawConn::connect(node.client_addr()).await;
    let id = raw
        .send(m::Authenticate {
            uid: UserId(424242),
        })
        .await;
    let Body::Error(e) = raw.until_final(id).await.pop().unwrap().body else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::UnknownUser);

    // Updates before login.
    let id = raw
        .send(m::UserInfoMsg {
            record: stored.clone(),
        })
        .await;
    let Body::Error(e) = raw.until_final(id).await.pop().unwrap().body else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::NotAuthenticated);

    // A proper login, captured...
    let id = raw.send(m::Authenticate { uid }).await;
    let Body::Challenge(ch) = raw.until_final(id).await.pop().unwrap().body else {
        panic!()
    };
    let sig = alice_key.sign(
        Domain::Login,
        &gossip_common::login_challenge_bytes(&ch.nonce, &ch.server, uid),
    );
    let response = m::ChallengeResponse {
        uid,
        signature: sig,
    };
    let id = raw.send(response.clone()).await;
    assert!(matches!(
        raw.until_final(id).await.pop().unwrap().body,
        Body::Ok(_)
    ));

    // ...and replayed on another connection: refused.
    let mut eve = RawConn::connect(node.client_addr()).await;
    let id = eve.send(m::Authenticate { uid }).await;
    eve.until_final(id).await;
    let id = eve.send(response.clone()).await;
    let Body::Error(e) = eve.until_final(id).await.pop().unwrap().body else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::AuthFailed);
    // Replayed without a fresh challenge: refused too.
    let id = eve.send(response).await;
    let Body::Error(e) = eve.until_final(id).await.pop().unwrap().body else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::AuthFailed);

    // Forged update: Alice's key in the record, someone else's signature.
    let mallory = Keypair::generate();
    let mut forged = stored.value().clone();
    forged.status = "hacked".into();
    forged.event_count = EventCount::new(100, false);
    let id = raw
        .send(m::UserInfoMsg {
            record: Signed::sign(forged, &mallory).unwrap(),
        })
        .await;
    let Body::Error(e) = raw.until_final(id).await.pop().unwrap().body else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::BadSignature);

    // Stale event count: the error names the stored count.
    let mut stale = stored.value().clone();
    stale.status = "away".into();
    let id = raw
        .send(m::UserInfoMsg {
            record: Signed::sign(stale, &alice_key).unwrap(),
        })
        .await;
    let Body::Error(e) = raw.until_final(id).await.pop().unwrap().body else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::StaleEventCount);
    assert_eq!(e.current.map(EventCount::from), Some(stored.event_count));

    // Mismatched tags make the frame boundary unknowable: an error, then a clean close.
    raw.send_raw(b"<UserInfo version=\"1\" ipaddr=\"::1\"><record></UserInfo>\n")
        .await;
    let Body::Error(e) = raw.recv().await.unwrap().body else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::Malformed);
    assert!(
        raw.recv().await.is_none(),
        "connection closed after a framing error"
    );

    // Bad field, unknown message type and an oversized frame: errors, the connection lives.
    let mut raw = RawConn::connect(node.client_addr()).await;
    raw.send_raw(b"<authenticate version=\"1\" ipaddr=\"::1\"><uid>abc</uid></authenticate>")
        .await;
    let Body::Error(e) = raw.recv().await.unwrap().body else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::Malformed);
    raw.send_raw(b"<frobnicate version=\"1\" ipaddr=\"::1\"/>\n")
        .await;
    let Body::Error(e) = raw.recv().await.unwrap().body else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::UnknownMsgtype);
    let big = format!(
        "<servermsg version=\"1\" ipaddr=\"::1\"><text>{}</text></servermsg>\n",
        "x".repeat(100_000)
    );
    raw.send_raw(big.as_bytes()).await;
    let Body::Error(e) = raw.recv().await.unwrap().body else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::TooLarge);
    let id = raw.send(m::Ping {}).await;
    assert!(matches!(
        raw.until_final(id).await.pop().unwrap().body,
        Body::Pong(_)
    ));

    // Nothing of the above changed Alice's record, and others are still served.
    assert_eq!(node.node.store.user(uid).unwrap().status, "online");
    let (carol, _e, _) = new_user(&node, "carol").await;
    assert!(carol.ping().await.is_ok());
    node.stop().await.unwrap();
}

#[tokio::test]
async fn direct_messages_are_signed_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let (alice, mut alice_events, _) = new_user(&node, "alice").await;
    let (bob, _bob_events, bob_key) = new_user(&node, "bob").await;
    let (a, b) = (alice.uid().unwrap(), bob.uid().unwrap());
    alice.add_contacts(&[b]).await.unwrap();
    bob.add_contacts(&[a]).await.unwrap();
    let listener = alice
        .listen_direct("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let listener_addr = listener.local_addr();
    alice
        .go_online("online", Some(listener.local_addr()))
        .await
        .unwrap();
    // Bob learns Alice's address through the push (or fetch), then messages her directly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bob.contacts().iter().all(|c| c.port.is_none()) {
        assert!(
            std::time::Instant::now() < deadline,
            "bob never saw alice's address"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bob.send_message(a, "hi alice <3").await.unwrap();
    let msg = loop {
        match tokio::time::timeout(Duration::from_secs(10), alice_events.next())
            .await
            .unwrap()
        {
            Some(Event::Message(m)) => break m,
            Some(_) => continue,
            None => panic!("stream ended"),
        }
    };
    assert_eq!(msg.from, b);
    assert_eq!(msg.text, "hi alice <3");

    // A captured message replayed to Alice is dropped; a forged one (wrong key) too; a fresh
    // one still arrives.
    let send_raw = |record: Signed<gossip_common::ChatMessage>| async move {
        use futures::SinkExt;
        let stream = tokio::net::TcpStream::connect(listener_addr).await.unwrap();
        let mut framed =
            tokio_util::codec::Framed::new(stream, gossip_common::XmlFrameCodec::default());
        let msg = gossip_common::Message::new(std::net::Ipv6Addr::LOCALHOST, m::Txt { record });
        framed.send(&msg).await.unwrap();
        let _ = futures::StreamExt::next(&mut framed).await;
    };
    let chat = |text: &str, sent_ms: u64, key: &Keypair| {
        Signed::sign(
            gossip_common::ChatMessage {
                from: b,
                to: a,
                sent_ms,
                text: text.into(),
            },
            key,
        )
        .unwrap()
    };
    let captured = chat("replay me", 42, &bob_key);
    send_raw(captured.clone()).await;
    send_raw(captured).await;
    send_raw(chat("forged", 43, &Keypair::generate())).await;
    send_raw(chat("fresh", 44, &bob_key)).await;
    let mut texts = Vec::new();
    while texts.last().map(String::as_str) != Some("fresh") {
        match tokio::time::timeout(Duration::from_secs(10), alice_events.next())
            .await
            .unwrap()
        {
            Some(Event::Message(m)) => texts.push(m.text.clone()),
            Some(_) => continue,
            None => panic!("stream ended"),
        }
    }
    assert_eq!(texts, vec!["replay me", "fresh"]);

    // Alice goes away without a logout: Bob's next message fails and Bob marks her offline.
    drop(listener);
    assert!(bob.send_message(a, "still there?").await.is_err());
    assert!(!bob.is_contact_online(a));
    node.stop().await.unwrap();
}

#[tokio::test]
async fn client_logs_in_to_the_nearest_live_server() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The "far" node delays its echo replies to clients by 40 ms (lab emulation).
    let mut far_cfg = Config::for_tests(d1.path(), 0);
    let mut delays = std::collections::HashMap::new();
    delays.insert("client".to_owned(), Duration::from_millis(40));
    far_cfg.lab = gossip_common::rtt::LabDelays::new(delays);
    let far = gossip_server::start(far_cfg).await.unwrap();
    let near = node(d2.path()).await;
    let probe = gossip_common::rtt::ProbeConfig {
        interval: Duration::from_millis(20),
        replies: 3,
        dead_after: Duration::from_millis(500),
        source: None,
    };
    let list = vec![
        far.client_addr().to_string(),
        near.client_addr().to_string(),
    ];
    let (c, _e) =
        GossipClient::connect_nearest(&list, Keypair::generate(), &probe, &Default::default())
            .await
            .unwrap();
    assert_eq!(c.server(), near.client_addr().to_string());

    // The nearest one goes away: the client falls back to the next.
    let near_addr = near.client_addr().to_string();
    near.stop().await.unwrap();
    let list = vec![near_addr, far.client_addr().to_string()];
    let (c, _e) =
        GossipClient::connect_nearest(&list, Keypair::generate(), &probe, &Default::default())
            .await
            .unwrap();
    assert_eq!(c.server(), far.client_addr().to_string());
    far.stop().await.unwrap();
}

/// A client that sends requests but never reads the replies: once its replies fill the socket
/// and its queue, the session must still end at the idle timeout (2 s in tests) rather than sit
/// blocked forever, and the node must stop promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_and_does_not_hold_up_shutdown() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let mut stream = tokio::net::TcpStream::connect(node.client_addr())
        .await
        .unwrap();
    // Pings, 256 per write, never reading a pong: the pongs fill the socket, then the
    // session's queue, then the server stops reading us.
    let request = Message::new(std::net::Ipv6Addr::LOCALHOST, m::Ping {}).to_xml() + "\n";
    let batch = request.repeat(256);
    let t0 = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Err(e) = stream.write_all(batch.as_bytes()).await {
                return e;
            }
        }
    })
    .await;
    let err = outcome.expect("the server never closed a client that does not read");
    eprintln!("non-reading client cut after {:?}: {err}", t0.elapsed());
    let t1 = std::time::Instant::now();
    node.stop().await.unwrap();
    assert!(
        t1.elapsed() < Duration::from_secs(2),
        "stopping took {:?}",
        t1.elapsed()
    );
}

/// A reservation is released when the connection that asked for it closes (not 15 minutes
/// later), and an admin notice reaches every logged-in client as `servermsg`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_registration_frees_its_user_id_and_notices_reach_clients() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let mut raw = RawConn::connect(node.client_addr()).await;
    let id = raw
        .send(m::Register {
            publickey: Keypair::generate().public(),
        })
        .await;
    let Body::UserIdGrant(grant) = raw.until_final(id).await.pop().unwrap().body else {
        panic!("no grant")
    };
    assert!(node.node.locks.is_locked(grant.uid));
    // A second `register` on the same connection gives up the first reservation.
    let id = raw
        .send(m::Register {
            publickey: Keypair::generate().public(),
        })
        .await;
    let Body::UserIdGrant(second) = raw.until_final(id).await.pop().unwrap().body else {
        panic!("no second grant")
    };
    if second.uid != grant.uid {
        assert!(!node.node.locks.is_locked(grant.uid));
    }
    assert!(node.node.locks.is_locked(second.uid));
    let grant = second;
    drop(raw);
    gossip_tests::wait_for(
        "the reservation to be released",
        Duration::from_secs(5),
        || (!node.node.locks.is_locked(grant.uid)).then_some(()),
    )
    .await;

    let (alice, mut events, alice_key) = new_user(&node, "alice").await;
    let uid = alice.uid().unwrap();
    // A logged-in session that gets a stray challenge response stays logged in (it used to be
    // reset without leaving the presence registry: a leaked session whose will never fired).
    let mut raw = RawConn::connect(node.client_addr()).await;
    let id = raw.send(m::Authenticate { uid }).await;
    let Body::Challenge(ch) = raw.until_final(id).await.pop().unwrap().body else {
        panic!("no challenge")
    };
    let response = m::ChallengeResponse {
        uid,
        signature: alice_key.sign(
            Domain::Login,
            &gossip_common::login_challenge_bytes(&ch.nonce, &ch.server, uid),
        ),
    };
    let id = raw.send(response.clone()).await;
    assert!(matches!(
        raw.until_final(id).await.pop().unwrap().body,
        Body::Ok(_)
    ));
    let id = raw.send(response).await;
    let Body::Error(e) = raw.until_final(id).await.pop().unwrap().body else {
        panic!("no error")
    };
    assert_eq!(e.code, ErrorCode::NotAllowed);
    assert_eq!(node.node.presence.session_count(), 2);
    drop(raw);
    gossip_tests::wait_for("the raw session to leave", Duration::from_secs(5), || {
        (node.node.presence.session_count() == 1).then_some(())
    })
    .await;
    let sent = node.node.presence.notify_all("maintenance at 22:00 UTC");
    assert_eq!(sent, 1);
    let text = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Event::ServerMessage(t)) = events.next().await {
                return t;
            }
        }
    })
    .await
    .expect("the notice");
    assert_eq!(text, "maintenance at 22:00 UTC");
    node.stop().await.unwrap();
}

/// One address cannot hold connections without logging in: past the per-address bound the
/// next is refused with `server-full` (logged-in clients are not counted), and the others
/// still log in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_log_in_are_bounded_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let mut idle = Vec::new();
    for _ in 0..256 {
        let mut raw = RawConn::connect(node.client_addr()).await;
        // A round trip, so the server has counted this connection before the next one.
        let id = raw.send(m::Ping {}).await;
        raw.until_final(id).await;
        idle.push(raw);
    }
    let mut refused = RawConn::connect(node.client_addr()).await;
    let Body::Error(e) = refused.recv().await.unwrap().body else {
        panic!("not refused")
    };
    assert_eq!(e.code, ErrorCode::ServerFull, "{}", e.text);
    // A logged-in client is not anonymous: once one of the idle ones is gone, logins work.
    drop(idle.pop());
    gossip_tests::wait_for("a slot to free", Duration::from_secs(5), || {
        (node.node.anonymous_connections() < 256).then_some(())
    })
    .await;
    let (alice, _e, _) = new_user(&node, "alice").await;
    assert!(alice.uid().is_some());
    node.stop().await.unwrap();
}

/// A connection that pings but never logs in is closed at the login deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_logs_in_is_closed_at_the_deadline_even_if_it_pings() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_tests(dir.path(), 0);
    cfg.login_deadline = Duration::from_millis(1500);
    let node = gossip_server::start(cfg).await.unwrap();
    let mut raw = RawConn::connect(node.client_addr()).await;
    let t0 = std::time::Instant::now();
    let closed_with = 'outer: loop {
        raw.send(m::Ping {}).await;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), raw.recv())
                .await
                .expect("the server answers or closes")
                .expect("closed without saying why");
            match msg.body {
                Body::Error(e) => break 'outer e,
                Body::Pong(_) => break,
                _ => {}
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still open after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(raw.recv().await.is_none(), "not closed after the error");
    assert_eq!(closed_with.code, ErrorCode::NotAuthenticated);
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(node.node.anonymous_connections(), 0);
    node.stop().await.unwrap();
}
