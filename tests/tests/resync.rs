//! Link-up resync between real in-process nodes on loopback: range reconciliation moves what
//! changed and little else, interoperates with a node that only speaks `eventCounts`, and a
//! peer that breaks the reconciliation protocol gets the `eventCounts` fallback while the node
//! keeps serving. The mailbox exchange at link-up sends only the undelivered messages a peer
//! lacks, and the delivery notices of those it holds needlessly.

use std::path::Path;
use std::time::Duration;

use std::net::Ipv6Addr;

use gossip_common::message as m;
use gossip_common::Message;
use gossip_common::{Keypair, Signed, UserId, UserInfo};
use gossip_server::config::SyncMethod;
use gossip_server::store::Mode;
use gossip_server::{Config, RunningNode};
use gossip_tests::wait_for;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn config(dir: &Path, peer: Option<u16>, sync: SyncMethod) -> Config {
    let mut c = Config::for_tests(dir, 0);
    c.peers = peer
        .map(|p| ("127.0.0.1".to_owned(), p))
        .into_iter()
        .collect();
    c.sync = sync;
    gossip_tests::fast_probing(&mut c, Duration::from_millis(2000));
    c
}

fn info(key: &Keypair, uid: u64, count: u32, status: &str) -> Signed<UserInfo> {
    let mut u = UserInfo::new(UserId(uid), key.public());
    u.status = status.into();
    u.event_count = gossip_common::EventCount::new(count, false);
    Signed::sign(u, key).unwrap()
}

struct Counters {
    round_trips: u64,
    fallbacks: u64,
    bytes: u64,
    received: u64,
    rounds: u64,
}

fn counters(a: &RunningNode, b: &RunningNode) -> Counters {
    let (ma, mb) = (&a.node.metrics, &b.node.metrics);
    Counters {
        round_trips: ma.sync_round_trips.get() + mb.sync_round_trips.get(),
        fallbacks: ma.sync_fallbacks.get() + mb.sync_fallbacks.get(),
        bytes: ma.sync_bytes_out.get() + mb.sync_bytes_out.get(),
        received: ma.sync_records_received.get() + mb.sync_records_received.get(),
        rounds: ma.sync_rounds.get() + mb.sync_rounds.get(),
    }
}

async fn synced(a: &RunningNode, b: &RunningNode, before: &Counters) {
    wait_for(
        "both ends to finish the resync with equal digests",
        Duration::from_secs(30),
        || {
            let now = counters(a, b);
            (now.rounds >= before.rounds + 2 && a.node.store.digest() == b.node.store.digest())
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reconciliation_moves_what_changed_and_interoperates_with_event_counts() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = gossip_server::start(config(da.path(), None, SyncMethod::Range))
        .await
        .unwrap();
    // A holds 400 users the other node has never seen.
    let keys: Vec<Keypair> = (0..400).map(|_| Keypair::generate()).collect();
    for (i, k) in keys.iter().enumerate() {
        a.node
            .store
            .apply_user_info(info(k, 1000 + i as u64, 0, "offline"), Mode::Create, "test")
            .await
            .unwrap();
    }
    let port = a.base_port();

    // An empty node joins: everything crosses, by reconciliation.
    let zero = counters(&a, &a);
    let b = gossip_server::start(config(db.path(), Some(port), SyncMethod::Range))
        .await
        .unwrap();
    let before = Counters { rounds: 0, ..zero };
    synced(&a, &b, &before).await;
    let c = counters(&a, &b);
    assert_eq!(c.fallbacks, 0);
    assert!(c.round_trips >= 1);
    assert_eq!(b.node.store.user_count(), 400);
    b.stop().await.unwrap();

    // One change while B is away: B's resync moves that one record, in a few round trips and
    // a few hundred bytes.
    a.node
        .store
        .apply_user_info(info(&keys[17], 1017, 1, "away"), Mode::Update, "test")
        .await
        .unwrap();
    let b = gossip_server::start(config(db.path(), Some(port), SyncMethod::Range))
        .await
        .unwrap();
    let before = counters(&a, &b);
    synced(&a, &b, &before).await;
    let after = counters(&a, &b);
    assert_eq!(b.node.store.user(UserId(1017)).unwrap().status, "away");
    assert_eq!(
        after.received - before.received,
        1,
        "only the changed record crosses"
    );
    assert_eq!(after.fallbacks, before.fallbacks);
    let trips = after.round_trips - before.round_trips;
    assert!((1..=8).contains(&trips), "{trips} round trips");
    assert!(
        after.bytes - before.bytes <= 4096,
        "{} bytes",
        after.bytes - before.bytes
    );
    eprintln!(
        "resync after 1 change in 400: {trips} round trips, {} bytes of sync frames",
        after.bytes - before.bytes
    );
    b.stop().await.unwrap();

    // A node configured for the spec's eventCounts only: both fall back to it, no reconciliation.
    a.node
        .store
        .apply_user_info(info(&keys[18], 1018, 1, "busy"), Mode::Update, "test")
        .await
        .unwrap();
    let b = gossip_server::start(config(db.path(), Some(port), SyncMethod::EventCounts))
        .await
        .unwrap();
    let before = counters(&a, &b);
    synced(&a, &b, &before).await;
    let after = counters(&a, &b);
    assert_eq!(b.node.store.user(UserId(1018)).unwrap().status, "busy");
    assert_eq!(after.round_trips, before.round_trips);
    assert_eq!(after.fallbacks, before.fallbacks);
    assert!(
        after.bytes - before.bytes > 400 * 20,
        "the full event-count lists crossed"
    );
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

/// Reads the node's frames until one starts with `tag`, or fails after the deadline.
async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<impl tokio::io::AsyncRead + Unpin>>,
    tag: &str,
) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with(tag) {
                return;
            }
        }
        panic!("link closed before {tag}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {tag} within 10 s"));
}

/// A scripted peer that offers reconciliation and then breaks it, three ways: an opening that
/// is not a root fingerprint, undecodable entries, and a flood of frames nobody asked for.
/// Each time the node falls back to `eventCounts` (a bounded, known cost), logs it, and goes on
/// serving clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_breaks_the_reconciliation_gets_event_counts_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let a = gossip_server::start(config(dir.path(), None, SyncMethod::Range))
        .await
        .unwrap();
    let server_port = a.base_port() + 1;
    // Ports 1-3 sort before any real base port, so the scripted peer is the one that opens.
    let frame = |body: m::Body| Message::new(Ipv6Addr::LOCALHOST, body).to_xml() + "\n";
    // A fresh identity per attempt (a second link from one identity is a duplicate).
    let hello = |port: u16| {
        frame(
            m::ServerIdMsg {
                host: "127.0.0.1".into(),
                port,
                sync: Some("range1".into()),
            }
            .into(),
        )
    };
    let round = |round: u32, last: u8, data: &str| {
        frame(
            m::Reconcile {
                round,
                last,
                done: 0,
                data: data.into(),
            }
            .into(),
        )
    };
    let bad_rounds: [String; 3] = [
        // WantAll(root) as an opening.
        round(1, 1, "BAAA"),
        round(1, 1, "not base64!"),
        round(7, 0, "BAAA").repeat(200),
    ];
    for (i, bad) in bad_rounds.iter().enumerate() {
        let (stream, _) = gossip_tests::server_link(server_port, &Keypair::generate())
            .await
            .unwrap();
        let (rd, mut wr) = tokio::io::split(stream);
        let mut lines = BufReader::new(rd).lines();
        wr.write_all(hello(i as u16 + 1).as_bytes()).await.unwrap();
        wr.flush().await.unwrap();
        read_until(&mut lines, "<serverID").await;
        wr.write_all(bad.as_bytes()).await.unwrap();
        wr.flush().await.unwrap();
        read_until(&mut lines, "<eventCounts").await;
        let m = &a.node.metrics;
        wait_for(
            &format!("fallback {} to be counted", i + 1),
            Duration::from_secs(5),
            || (m.sync_fallbacks.get() == i as u64 + 1).then_some(()),
        )
        .await;
        drop((wr, lines));
    }
    // The node goes on serving its honest peers: a real node joins and gets A's records by a
    // reconciliation, with no further fallback.
    let key = Keypair::generate();
    a.node
        .store
        .apply_user_info(info(&key, 77, 0, "offline"), Mode::Create, "test")
        .await
        .unwrap();
    let db = tempfile::tempdir().unwrap();
    let b = gossip_server::start(config(db.path(), Some(a.base_port()), SyncMethod::Range))
        .await
        .unwrap();
    wait_for("the honest node to sync", Duration::from_secs(30), || {
        (b.node.store.digest() == a.node.store.digest() && b.node.metrics.sync_rounds.get() == 1)
            .then_some(())
    })
    .await;
    assert_eq!(a.node.metrics.sync_fallbacks.get(), 3);
    assert_eq!(b.node.metrics.sync_fallbacks.get(), 0);
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

struct Mail {
    equal: u64,
    lists: u64,
    resent: u64,
}

fn mail(n: &RunningNode) -> Mail {
    let m = &n.node.metrics;
    Mail {
        equal: m.mailbox_equal.get(),
        lists: m.mailbox_lists_sent.get(),
        resent: m.mailbox_resent.get(),
    }
}

/// Waits until both ends have answered one more link-up mailbox digest than in `before`.
async fn mail_exchanged(a: &RunningNode, b: &RunningNode, before: (&Mail, &Mail)) {
    wait_for(
        "both ends to answer the other's mailbox digest",
        Duration::from_secs(30),
        || {
            let (ma, mb) = (mail(a), mail(b));
            (ma.equal + ma.lists > before.0.equal + before.0.lists
                && mb.equal + mb.lists > before.1.equal + before.1.lists)
                .then_some(())
        },
    )
    .await;
}

/// Starts B again on its data, linked to `a`, and waits for their mailbox exchange (`before`:
/// A's counters before).
async fn returns(db: &Path, a: &RunningNode, before: &Mail) -> RunningNode {
    let b = gossip_server::start(config(db, Some(a.base_port()), SyncMethod::Range))
        .await
        .unwrap();
    let fresh = Mail {
        equal: 0,
        lists: 0,
        resent: 0,
    };
    mail_exchanged(a, &b, (before, &fresh)).await;
    b
}

/// The user logs in at `a` and takes every message it holds (their client acknowledges them).
async fn takes_everything(a: &RunningNode, key: &Keypair, uid: UserId) {
    let addr = a.client_addr().to_string();
    let (c, _e) = gossip_client::GossipClient::connect(&addr, key.clone())
        .await
        .unwrap();
    c.login(uid).await.unwrap();
    wait_for(
        "the user to take every message",
        Duration::from_secs(30),
        || a.node.mailbox.is_empty().then_some(()),
    )
    .await;
    c.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_up_sends_only_the_undelivered_messages_the_peer_lacks() {
    use gossip_client::GossipClient;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = gossip_server::start(config(da.path(), None, SyncMethod::Range))
        .await
        .unwrap();
    let port = a.base_port();
    let addr = a.client_addr().to_string();
    let alice_key = Keypair::generate();
    let (alice, _ae) = GossipClient::connect(&addr, alice_key.clone())
        .await
        .unwrap();
    let alice_uid = alice
        .register(|u| u.nick_name = "alice".into())
        .await
        .unwrap();
    let bob_key = Keypair::generate();
    let bob = {
        let (c, _e) = GossipClient::connect(&addr, bob_key.clone()).await.unwrap();
        let uid = c.register(|u| u.nick_name = "bob".into()).await.unwrap();
        // A contact: more than a stranger's ten messages may wait for him.
        c.add_contacts(&[alice_uid]).await.unwrap();
        c.logout().await.unwrap();
        uid
    };
    // Thirty messages for Bob, who is offline, while A is alone.
    for i in 0..30u32 {
        alice.send_relayed(bob, &i.to_be_bytes()).await.unwrap();
    }
    assert_eq!(a.node.mailbox.len(), 30);

    // An empty node joins: the digests differ, and exactly A's thirty cross.
    let b = gossip_server::start(config(db.path(), Some(port), SyncMethod::Range))
        .await
        .unwrap();
    let zero = mail(&a);
    mail_exchanged(&a, &b, (&zero, &mail(&b))).await;
    wait_for("B to hold the thirty", Duration::from_secs(30), || {
        (b.node.mailbox.len() == 30).then_some(())
    })
    .await;
    wait_for("A to have sent them", Duration::from_secs(30), || {
        (mail(&a).resent == 30).then_some(())
    })
    .await;
    assert_eq!(mail(&b).resent, 0, "B held nothing A lacked");
    assert_eq!(a.node.mailbox.digest(), b.node.mailbox.digest());
    b.stop().await.unwrap();

    // B comes back holding the same thirty: equal digests, no list, no message crosses.
    let ma = mail(&a);
    let b = returns(db.path(), &a, &ma).await;
    let (ma2, mb2) = (mail(&a), mail(&b));
    assert_eq!(
        (ma2.equal - ma.equal, mb2.equal),
        (1, 1),
        "both found them equal"
    );
    assert_eq!((ma2.lists, ma2.resent), (ma.lists, ma.resent));
    assert_eq!((mb2.lists, mb2.resent), (0, 0));
    b.stop().await.unwrap();

    // While B is away, Bob logs in at A and takes all thirty (A drops them and keeps the signed
    // notices), and Alice sends two more.
    takes_everything(&a, &bob_key, bob).await;
    for i in 30..32u32 {
        alice.send_relayed(bob, &i.to_be_bytes()).await.unwrap();
    }
    // B comes back with the thirty delivered ones: it learns they were delivered (and drops
    // them), and gets the two new ones.
    let ma = mail(&a);
    let b = returns(db.path(), &a, &ma).await;
    wait_for(
        "B to hold exactly the two undelivered messages",
        Duration::from_secs(30),
        || {
            (b.node.mailbox.digest() == a.node.mailbox.digest() && b.node.mailbox.len() == 2)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        mail(&a).resent - ma.resent,
        2,
        "A sent only the two B lacked"
    );
    let mb = mail(&b);
    assert_eq!(mb.lists, 1);
    // A's list named B's thirty as delivered: B sent none of them back.
    assert_eq!(mb.resent, 0, "B resent messages A listed as delivered");
    b.stop().await.unwrap();

    // A message sent and delivered while B was away, which B never held, to a sender who is
    // not on A when it is delivered: B learns of the delivery at link-up and tells Alice when
    // she logs in there.
    let late = alice.send_relayed(bob, b"while B was away").await.unwrap();
    alice.logout().await.unwrap();
    takes_everything(&a, &bob_key, bob).await;
    let ma = mail(&a);
    let b = returns(db.path(), &a, &ma).await;
    wait_for(
        "B to know every notice A knows",
        Duration::from_secs(30),
        || (b.node.mailbox.digest() == a.node.mailbox.digest()).then_some(()),
    )
    .await;
    assert!(b.node.mailbox.is_empty());
    let (alice_at_b, mut events) =
        GossipClient::connect(&b.client_addr().to_string(), alice_key.clone())
            .await
            .unwrap();
    alice_at_b.login(alice_uid).await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.next().await {
                Some(gossip_client::Event::Delivered { id, to }) if id == late => {
                    assert_eq!(to, bob);
                    return;
                }
                Some(_) => {}
                None => panic!("the connection to B closed"),
            }
        }
    })
    .await
    .expect("Alice, logging in at B, is told her message was delivered");
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}
