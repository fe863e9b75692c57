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

#[tokio::test]
async fn a_lock_request_is_granted_once_and_released_by_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(&dir).await;
    let (mut link, mut rx, _bulk) = link(&n);
    let door = &n.node.peers;
    let uid = UserId(0x1234_5678_9abc);
    let holder = |h: &str| format!("{}:{}/{h}", PEER.0, PEER.1);
    let ask = |h: &str| m::LockUid {
        uid,
        holder: holder(h),
        expires_s: 60,
    };
    // No other link: this server is the whole subtree, and answers at once.
    let _ = dispatch(door, &mut link, msg(ask("a"))).await;
    match next(&mut rx).await {
        Body::LockResult(r) => assert_eq!((r.uid, r.granted), (uid, 1)),
        other => panic!("{other:?}"),
    }
    assert!(n.node.locks.is_locked(uid));
    // Another holder is refused while the first holds it.
    let _ = dispatch(door, &mut link, msg(ask("b"))).await;
    match next(&mut rx).await {
        Body::LockResult(r) => assert_eq!((r.uid, r.granted), (uid, 0)),
        other => panic!("{other:?}"),
    }
    let unlock = m::UnlockUid {
        uid,
        holder: Some(holder("a")),
    };
    let _ = dispatch(door, &mut link, msg(unlock)).await;
    assert!(!n.node.locks.is_locked(uid));
    n.stop().await.unwrap();
}

#[tokio::test]
async fn a_link_past_its_lock_rate_is_refused_without_locking() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(&dir).await;
    let (mut link, mut rx, _bulk) = link(&n);
    let door = &n.node.peers;
    let mut granted = 0;
    for i in 0..150u64 {
        let ask = m::LockUid {
            uid: UserId(1_000 + i),
            holder: format!("{}:{}/{i}", PEER.0, PEER.1),
            expires_s: 60,
        };
        let _ = dispatch(door, &mut link, msg(ask)).await;
        if let Body::LockResult(r) = next(&mut rx).await {
            granted += usize::from(r.granted);
        }
    }
    // A burst of 100, then 20 a second: a loop this fast gets about the burst.
    assert!((100..110).contains(&granted), "granted {granted} of 150");
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
    let _ = dispatch(door, &mut link, msg(m::ReqServerList {})).await;
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
