//! The server door's dispatcher, without sockets: a headless node (its real services, on a
//! simulated network where no other server exists) and one link's state whose queues the
//! test holds, so each routed message's effect is seen on the queues and in the services.

use std::ops::ControlFlow;
use std::time::Duration;

use gossip_common::message as m;
use gossip_common::{Body, Message, UserId};
use tokio::sync::mpsc;

use super::dispatch::{dispatch, LinkState};
use crate::budget::Budgets;
use crate::federation::LinkQueue;
use crate::registration::Registration;
use crate::replication::{Resync, SyncIn};
use crate::sim::{start_node, SimNet};
use crate::RunningNode;

const PEER: (&str, u16) = ("peer.test", 7000);

async fn node(dir: &tempfile::TempDir) -> RunningNode {
    let net = SimNet::new(Duration::from_millis(1));
    start_node(&net, &("door.test".into(), 6000), dir.path(), &[]).expect("node starts")
}

/// One link's state from `PEER`, with its control and bulk queues' receiving ends.
fn link(node: &RunningNode) -> (LinkState, LinkQueue, LinkQueue) {
    let (tx, rx) = mpsc::channel(64);
    let (bulk, bulk_rx) = mpsc::channel(64);
    let door = &node.node.peers;
    let state = LinkState {
        peer: (PEER.0.into(), PEER.1),
        addr: "127.0.0.9:7001".parse().unwrap(),
        tx,
        bulk: bulk.clone(),
        sync: SyncIn::new(),
        resync: Resync::start(&door.replication, Some(false), bulk),
        locks: Registration::link_rate(),
        mail: Default::default(),
        budgets: Budgets::default(),
        check: false,
        wills_announced: false,
        will_digests: 0,
        rows_listed: false,
    };
    (state, rx, bulk_rx)
}

fn msg(body: impl Into<Body>) -> Message {
    Message::new(std::net::Ipv6Addr::UNSPECIFIED, body)
}

/// The next frame on `q`, decoded (within a second).
async fn next(q: &mut LinkQueue) -> Body {
    let (_, frame) = tokio::time::timeout(Duration::from_secs(1), q.recv())
        .await
        .expect("a frame in time")
        .expect("queue open");
    Message::decode(&frame).expect("decodes").body
}

#[tokio::test]
async fn ping_is_answered_and_disconnect_ends_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(&dir).await;
    let (mut link, mut rx, _bulk) = link(&n);
    let door = &n.node.peers;
    assert_eq!(
        dispatch(door, &mut link, msg(m::Ping {})).await,
        ControlFlow::Continue(())
    );
    assert!(matches!(next(&mut rx).await, Body::Pong(_)));
    let bye = m::Disconnect {
        reason: Some("bye".into()),
    };
    assert_eq!(
        dispatch(door, &mut link, msg(bye)).await,
        ControlFlow::Break(())
    );
    n.stop().await.unwrap();
}

/// A `lockUID` from `holder` (`host:port/<random>`), signed by `key` now.
fn lock(uid: UserId, holder: &str, key: &gossip_common::Keypair) -> m::LockUid {
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sig = key.sign(
        gossip_common::Domain::ServerControl,
        &m::lock_bytes(uid, holder, 60, issued),
    );
    m::LockUid {
        uid,
        holder: holder.to_owned(),
        expires_s: 60,
        issued: Some(issued),
        key: Some(key.public().to_string()),
        sig: Some(sig.to_string()),
    }
}

/// An `unlockUID` of `holder`'s lock, signed by `key`.
fn unlock(uid: UserId, holder: &str, key: &gossip_common::Keypair) -> m::UnlockUid {
    let sig = key.sign(
        gossip_common::Domain::ServerControl,
        &m::unlock_bytes(uid, holder),
    );
    m::UnlockUid {
        uid,
        holder: Some(holder.to_owned()),
        sig: Some(sig.to_string()),
    }
}

/// The answer on the link to the last lock request: granted or not.
async fn granted(rx: &mut LinkQueue, uid: UserId) -> bool {
    match next(rx).await {
        Body::LockResult(r) => {
            assert_eq!(r.uid, uid);
            r.granted == 1
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_lock_request_is_granted_once_and_released_by_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(&dir).await;
    let (mut link, mut rx, _bulk) = link(&n);
    let door = &n.node.peers;
    let key = gossip_common::Keypair::generate();
    let uid = UserId(0x1234_5678_9abc);
    let holder = |h: &str| format!("{}:{}/{h}", PEER.0, PEER.1);
    // No other link: this server is the whole subtree, and answers at once.
    let _ = dispatch(door, &mut link, msg(lock(uid, &holder("a"), &key))).await;
    assert!(granted(&mut rx, uid).await);
    assert!(n.node.locks.is_locked(uid));
    // Another holder is refused while the first holds it.
    let _ = dispatch(door, &mut link, msg(lock(uid, &holder("b"), &key))).await;
    assert!(!granted(&mut rx, uid).await);
    // An unlock not signed by the server the holder names (anyone on the path saw the holder)
    // releases nothing; the signed one does.
    let forger = gossip_common::Keypair::generate();
    for forged in [
        unlock(uid, &holder("a"), &forger),
        m::UnlockUid {
            sig: None,
            ..unlock(uid, &holder("a"), &key)
        },
    ] {
        let _ = dispatch(door, &mut link, msg(forged)).await;
        assert!(
            n.node.locks.is_locked(uid),
            "a forged unlock released the lock"
        );
    }
    let _ = dispatch(door, &mut link, msg(unlock(uid, &holder("a"), &key))).await;
    assert!(!n.node.locks.is_locked(uid));
    n.stop().await.unwrap();
}

/// A lock request counts only when signed, fresh, and by the key of the server its holder
/// names: naming another server, unsigned, altered or stale requests lock nothing.
#[tokio::test]
async fn a_lock_request_in_another_servers_name_locks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(&dir).await;
    let (mut link, mut rx, _bulk) = link(&n);
    let door = &n.node.peers;
    let honest = gossip_common::Keypair::generate();
    let rogue = gossip_common::Keypair::generate();
    let holder = format!("{}:{}/x", PEER.0, PEER.1);
    // The honest server's key is bound to its name (by its first request).
    let _ = dispatch(door, &mut link, msg(lock(UserId(1), &holder, &honest))).await;
    assert!(granted(&mut rx, UserId(1)).await);
    let uid = UserId(2);
    let stale = {
        let mut l = lock(uid, &holder, &honest);
        l.issued = Some(l.issued.unwrap() - 100_000);
        l
    };
    let cases = [
        ("another key", lock(uid, &holder, &rogue)),
        (
            "unsigned",
            m::LockUid {
                sig: None,
                ..lock(uid, &holder, &honest)
            },
        ),
        (
            "altered",
            m::LockUid {
                expires_s: 61,
                ..lock(uid, &holder, &honest)
            },
        ),
        ("stale", stale),
        (
            "this server's own name",
            lock(uid, "door.test:6000/x", &rogue),
        ),
    ];
    for (what, l) in cases {
        let _ = dispatch(door, &mut link, msg(l)).await;
        assert!(!granted(&mut rx, uid).await, "{what} was granted");
        assert!(!n.node.locks.is_locked(uid), "{what} took a lock");
    }
    n.stop().await.unwrap();
}

/// The lock rate is the requesting server's, counted by its key: a flood spends its own
/// budget, not the link's, so another server's requests on the same link still pass.
#[tokio::test]
async fn a_server_past_its_lock_rate_is_refused_and_others_on_the_link_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(&dir).await;
    let (mut link, mut rx, _bulk) = link(&n);
    let door = &n.node.peers;
    let flooder = gossip_common::Keypair::generate();
    let mut count = 0;
    for i in 0..150u64 {
        let uid = UserId(1_000 + i);
        let ask = lock(uid, &format!("{}:{}/{i}", PEER.0, PEER.1), &flooder);
        let _ = dispatch(door, &mut link, msg(ask)).await;
        count += usize::from(granted(&mut rx, uid).await);
    }
    // A burst of 100, then 20 a second: a loop this fast gets about the burst.
    assert!((100..110).contains(&count), "granted {count} of 150");
    let other = gossip_common::Keypair::generate();
    let uid = UserId(5_000);
    let _ = dispatch(
        door,
        &mut link,
        msg(lock(uid, "behind.test:7100/y", &other)),
    )
    .await;
    assert!(
        granted(&mut rx, uid).await,
        "another server's request on the same link was refused"
    );
    n.stop().await.unwrap();
}

#[tokio::test]
async fn an_unsigned_row_is_counted_and_dropped_and_the_server_list_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(&dir).await;
    let (mut link, mut rx, _bulk) = link(&n);
    let door = &n.node.peers;
    let before = n.node.metrics.refused_rows.get();
    let row = m::UpdateRtts {
        host: PEER.0.into(),
        port: PEER.1,
        seq: 1,
        rtts: Vec::new(),
        key: None,
        sig: None,
    };
    assert_eq!(
        dispatch(door, &mut link, msg(row)).await,
        ControlFlow::Continue(())
    );
    assert_eq!(n.node.metrics.refused_rows.get(), before + 1);
    assert_eq!(n.node.federation.matrix_size().0, 0, "no row stored");
    let _ = dispatch(door, &mut link, msg(m::ReqServerList::default())).await;
    match next(&mut rx).await {
        Body::ServerList(l) => {
            let me = l
                .servers
                .iter()
                .find(|s| s.host == "door.test")
                .expect("itself");
            assert_eq!(
                me.key.as_deref(),
                Some(n.node.keys.public().to_string().as_str())
            );
        }
        other => panic!("{other:?}"),
    }
    n.stop().await.unwrap();
}

#[tokio::test]
async fn a_complete_event_count_list_is_answered_once_on_the_bulk_queue() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(&dir).await;
    let (mut link, mut rx, mut bulk) = link(&n);
    let door = &n.node.peers;
    let rounds = n.node.metrics.sync_rounds.get();
    let ec = m::EventCounts {
        last: 1,
        ..Default::default()
    };
    assert_eq!(
        dispatch(door, &mut link, msg(ec.clone())).await,
        ControlFlow::Continue(())
    );
    assert_eq!(n.node.metrics.sync_rounds.get(), rounds + 1);
    // On the bulk queue: our own (empty) list, then the records the peer lacks (none: the
    // last, empty batch). Their order is the tasks'.
    let mut seen = (false, false);
    for _ in 0..2 {
        match next(&mut bulk).await {
            Body::EventCounts(e) => seen.0 |= e.last == 1,
            Body::ChangedEntries(c) => seen.1 |= c.last == 1 && c.userinfo.is_empty(),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, (true, true));
    // A second list on the same link is refused with an error, and the link goes on.
    assert_eq!(
        dispatch(door, &mut link, msg(ec)).await,
        ControlFlow::Continue(())
    );
    assert!(matches!(next(&mut rx).await, Body::Error(_)));
    n.stop().await.unwrap();
}

/// A check's `willDigest`: a peer whose digest for a home matches is sent nothing; one that
/// differs is answered with this server's digest and `want`; a `want` about this server's own
/// sessions sends their wills once; a link that sends more digests than a check needs is not
/// answered.
#[tokio::test]
async fn will_digests_cross_only_what_differs_and_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(&dir).await;
    let (mut link, _rx, mut bulk) = link(&n);
    let door = &n.node.peers;
    let digest = |count: u64, sum: u128, want: Option<u8>| m::WillDigest {
        host: PEER.0.into(),
        port: PEER.1,
        count,
        sum: format!("{sum:032x}"),
        want,
    };
    // This node holds no will of the peer's: a digest of none matches; one of a will differs.
    let _ = dispatch(door, &mut link, msg(digest(0, 0, None))).await;
    assert!(bulk.try_recv().is_err(), "equal digests: nothing crosses");
    let _ = dispatch(door, &mut link, msg(digest(1, 42, None))).await;
    match next(&mut bulk).await {
        Body::WillDigest(d) => {
            assert_eq!((d.count, d.want), (0, Some(1)));
            assert_eq!((d.host.as_str(), d.port), PEER);
        }
        other => panic!("expected a willDigest, got {}", other.msgtype()),
    }
    // Asked for this node's own wills: they go (there are none here) and the link remembers.
    let mine = m::WillDigest {
        host: "door.test".into(),
        port: 6000,
        want: Some(1),
        ..digest(0, 0, None)
    };
    let _ = dispatch(door, &mut link, msg(mine)).await;
    assert!(link.wills_announced);
    // The fourth is still answered; past that bound, a differing digest is not.
    let _ = dispatch(door, &mut link, msg(digest(2, 7, None))).await;
    assert!(matches!(next(&mut bulk).await, Body::WillDigest(_)));
    let _ = dispatch(door, &mut link, msg(digest(3, 7, None))).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), bulk.recv())
            .await
            .is_err(),
        "the fifth digest on one link is not answered"
    );
    n.stop().await.unwrap();
}

/// A check's `reqServerlist` carries the rows digest: the same digest is not answered; a
/// different one gets the list with each row's `seq`, once per check.
#[tokio::test]
async fn a_rows_digest_is_answered_only_when_it_differs() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(&dir).await;
    let (mut link, mut rx, _bulk) = link(&n);
    link.check = true;
    let door = &n.node.peers;
    let (rows, sum) = door.federation.rows_digest();
    let req = |rows: u64, sum: u128| m::ReqServerList {
        rows: Some(rows),
        rsum: Some(format!("{sum:032x}")),
    };
    let _ = dispatch(door, &mut link, msg(req(rows, sum))).await;
    assert!(rx.try_recv().is_err(), "same rows: no answer");
    let _ = dispatch(door, &mut link, msg(req(rows + 1, sum ^ 1))).await;
    match next(&mut rx).await {
        Body::ServerList(l) => assert!(l.servers.iter().all(|s| s.seq.is_some())),
        other => panic!("expected a serverlist, got {}", other.msgtype()),
    }
    let _ = dispatch(door, &mut link, msg(req(rows + 2, sum ^ 2))).await;
    assert!(rx.try_recv().is_err(), "answered once per check");
    n.stop().await.unwrap();
}
