//! The client door's dispatcher, without sockets: a session of a headless node whose outbound
//! queue the test holds, fed decoded messages.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use gossip_common::message as m;
use gossip_common::{Body, ErrorCode, Message, UserId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Auth, Session};
use crate::sim::{start_node, SimNet};
use crate::RunningNode;

async fn node(dir: &tempfile::TempDir) -> RunningNode {
    let net = SimNet::new(Duration::from_millis(1));
    start_node(&net, &("door.test".into(), 6000), dir.path(), &[]).expect("node starts")
}

fn session(n: &RunningNode, auth: Auth) -> (Session, mpsc::Receiver<crate::presence::Outbound>) {
    let (tx, rx) = mpsc::channel(16);
    let door = Arc::clone(&n.node.clients);
    let s = Session {
        sid: door.presence.new_session_id(),
        door,
        peer: "127.0.0.1:40000".parse().unwrap(),
        local_ip: std::net::Ipv6Addr::UNSPECIFIED,
        tx,
        kill: CancellationToken::new(),
        auth,
        last_will: None,
        anonymous: None,
        holder: "door.test:6000/1".into(),
    };
    (s, rx)
}

fn request(id: u64, body: impl Into<Body>) -> Message {
    Message::new(std::net::Ipv6Addr::UNSPECIFIED, body).with_id(id)
}

async fn reply(rx: &mut mpsc::Receiver<crate::presence::Outbound>) -> Message {
    let frame = tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .expect("a reply in time")
        .expect("queue open");
    Message::decode(&frame.frame).expect("decodes")
}

fn error_code(msg: &Message) -> ErrorCode {
    match &msg.body {
        Body::Error(e) => e.code,
        other => panic!("not an error: {other:?}"),
    }
}

#[tokio::test]
async fn anonymous_sessions_get_pongs_and_are_refused_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(&dir).await;
    let (mut s, mut rx) = session(&n, Auth::Anonymous);
    assert_eq!(
        s.handle(request(7, m::Ping {})).await,
        ControlFlow::Continue(())
    );
    let pong = reply(&mut rx).await;
    assert!(matches!(pong.body, Body::Pong(_)));
    assert_eq!(pong.header.re, Some(7));
    let _ = s.handle(request(8, m::ReqContactList {})).await;
    let refused = reply(&mut rx).await;
    assert_eq!(error_code(&refused), ErrorCode::NotAuthenticated);
    assert_eq!(refused.header.re, Some(8));
    assert_eq!(
        s.handle(request(9, m::Disconnect { reason: None })).await,
        ControlFlow::Break(())
    );
    drop(s);
    n.stop().await.unwrap();
}

#[tokio::test]
async fn a_logged_in_session_may_not_speak_for_others_or_as_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(&dir).await;
    let uid = UserId(42);
    let (mut s, mut rx) = session(&n, Auth::LoggedIn { uid });
    let notice = m::Delivered {
        id: "0".repeat(32),
        from: UserId(1),
        to: UserId(2),
        sig: String::new(),
    };
    let _ = s.handle(request(1, notice)).await;
    assert_eq!(error_code(&reply(&mut rx).await), ErrorCode::NotAllowed);
    let lock = m::LockUid {
        uid,
        holder: "x/1".into(),
        expires_s: 1,
        issued: None,
        key: None,
        sig: None,
    };
    let _ = s.handle(request(2, lock)).await;
    let r = reply(&mut rx).await;
    assert_eq!(error_code(&r), ErrorCode::NotAllowed);
    assert_eq!(r.header.re, Some(2));
    // A second login on a logged-in session is refused and leaves it as it is.
    let _ = s
        .handle(request(3, m::Authenticate { uid: UserId(43) }))
        .await;
    assert_eq!(error_code(&reply(&mut rx).await), ErrorCode::NotAllowed);
    assert_eq!(s.logged_in(), Some(uid));
    // The server list carries this server's own key, for pinning.
    let _ = s.handle(request(4, m::ReqServerList::default())).await;
    match reply(&mut rx).await.body {
        Body::ServerList(l) => {
            let me = l
                .servers
                .iter()
                .find(|x| x.host == "door.test")
                .expect("itself");
            assert_eq!(
                me.key.as_deref(),
                Some(n.node.keys.public().to_string().as_str())
            );
        }
        other => panic!("{other:?}"),
    }
    drop(s);
    n.stop().await.unwrap();
}

#[tokio::test]
async fn directory_searches_are_answered_bounded_and_rate_limited_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(&dir).await;
    // Sixty users called "sam…" on this node.
    for i in 0..60u64 {
        let key = gossip_common::Keypair::generate();
        let mut info = gossip_common::UserInfo::new(UserId(1000 + i), key.public());
        info.nick_name = format!("sam{i:02}");
        let record = gossip_common::Signed::sign(info, &key).unwrap();
        n.node
            .store
            .apply_user_info(record, crate::store::Mode::Create, "test")
            .await
            .unwrap();
    }
    let me = UserId(1000);
    let (mut s, mut rx) = session(&n, Auth::LoggedIn { uid: me });
    let search = |id, text: &str, limit| {
        request(
            id,
            m::SearchUsers {
                text: text.into(),
                limit,
            },
        )
    };
    // Asking for 1,000 gets the server's cap; each answer names the request. (Read while
    // the session answers: 50 answers do not fit the test's queue of 16.)
    let collect = async {
        let mut found = 0;
        loop {
            let msg = reply(&mut rx).await;
            assert_eq!(msg.header.re, Some(1));
            match msg.body {
                Body::UserInfo(u) => {
                    assert!(u.record.nick_name.starts_with("sam"));
                    found += 1;
                }
                Body::Ok(_) => return found,
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    let (flow, found) = tokio::join!(s.handle(search(1, "SAM", Some(1000))), collect);
    assert!(flow.is_continue());
    assert_eq!(found, crate::directory::MAX_RESULTS);
    // Nothing to search for: an error that says so.
    assert!(s.handle(search(2, " .@ ", None)).await.is_continue());
    let e = reply(&mut rx).await;
    assert_eq!(error_code(&e), ErrorCode::Malformed);
    // A burst of searches, then the user is slowed down, whichever session they use.
    let mut refused = None;
    for id in 3..40 {
        assert!(s.handle(search(id, "sam59", None)).await.is_continue());
        let first = reply(&mut rx).await;
        if let Body::Error(e) = &first.body {
            refused = Some((id, e.text.clone()));
            break;
        }
        assert!(matches!(reply(&mut rx).await.body, Body::Ok(_)));
    }
    let (id, text) = refused.expect("searches are rate-limited");
    assert_eq!(
        id,
        3 + super::SEARCH_RATE.burst as u64 - 2,
        "the burst, then refusals"
    );
    assert!(text.contains("try again in"), "{text}");
    let (mut other, mut other_rx) = session(&n, Auth::LoggedIn { uid: me });
    assert!(other.handle(search(1, "sam", None)).await.is_continue());
    assert_eq!(
        error_code(&reply(&mut other_rx).await),
        ErrorCode::NotAllowed
    );
    n.stop().await.unwrap();
}
