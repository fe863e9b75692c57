//! Presence across server death, with real gossipd processes: the users of a killed server go
//! offline everywhere within the dead timeout (their replicated wills), a gracefully stopped
//! server's users at once, a client fails over to another server within seconds without its
//! contacts ever seeing it offline, and the will/login races converge.

use std::time::{Duration, Instant};

use gossip_client::failover::{Config as FailoverConfig, Failover, Update};
use gossip_client::{Event, Events, GossipClient};
use gossip_common::{Keypair, UserId};
use gossip_tests::gossipd::{Gossipd, Spec};

/// Dead timeout for these tests (the 5 s case).
const DEAD_AFTER_S: u64 = 5;

fn node(dir: &std::path::Path, name: &str, peer: Option<&Gossipd>) -> Gossipd {
    let mut s = Spec::new(dir.join(name)).args([
        "--probe-interval-ms".to_string(),
        "20".into(),
        "--dead-after".into(),
        DEAD_AFTER_S.to_string(),
        "--reprobe".into(),
        "0.5".into(),
    ]);
    if let Some(p) = peer {
        s = s.args(["--peer".to_string(), p.identity()]);
    }
    Gossipd::start(&s).expect("gossipd starts")
}

async fn user(node: &Gossipd, nick: &str) -> (GossipClient, Events, UserId, Keypair) {
    let key = Keypair::generate();
    let (c, e) = GossipClient::connect(&node.addr(), key.clone())
        .await
        .unwrap();
    let uid = c.register(|u| u.nick_name = nick.into()).await.unwrap();
    (c, e, uid, key)
}

async fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t0.elapsed()
}

fn one_tree(nodes: &[&Gossipd]) -> bool {
    let ids: Vec<String> = nodes.iter().map(|n| n.identity()).collect();
    let st: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| n.status().unwrap_or_default())
        .collect();
    gossip_tests::gossipd::one_tree(&st, &ids)
}

/// When `watch` was seen online or offline.
type Timeline = std::sync::Arc<std::sync::Mutex<Vec<(Instant, bool)>>>;

/// Drains a client's events in the background (its records are kept up to date by the
/// library), recording every presence of `watch` it sees.
fn drain(mut events: Events, watch: UserId) -> Timeline {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            if let Event::Presence(r) = ev {
                if r.user_id == watch {
                    s.lock().unwrap().push((Instant::now(), r.is_online()));
                }
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_servers_users_go_offline_everywhere_and_its_clients_fail_over() {
    let dir = tempfile::tempdir().unwrap();
    let n0 = node(dir.path(), "n0", None);
    let n1 = node(dir.path(), "n1", Some(&n0));
    let mut n2 = node(dir.path(), "n2", Some(&n1));
    wait_until("one tree", Duration::from_secs(30), || {
        one_tree(&[&n0, &n1, &n2])
    })
    .await;

    // Three users on n2, online with their wills handed over.
    let mut on_n2 = Vec::new();
    for i in 0..3 {
        let (c, e, uid, key) = user(&n2, &format!("u{i}")).await;
        c.go_online("online", None).await.unwrap();
        on_n2.push((c, e, uid, key));
    }
    let uids: Vec<UserId> = on_n2.iter().map(|u| u.2).collect();
    // Fay, on n2 too, through the failover session, knowing only n2 at first.
    let (fay_c, _fay_e, fay, fay_key) = user(&n2, "fay").await;
    drop(fay_c);
    // Watchers on n0 and n1.
    let (w0, w0_events, w0_uid, _) = user(&n0, "w0").await;
    let (w1, w1_events, _, _) = user(&n1, "w1").await;
    let mut watched = uids.clone();
    watched.push(fay);
    w0.add_contacts(&watched).await.unwrap();
    w1.add_contacts(&uids).await.unwrap();
    let fay_seen_by_w0 = drain(w0_events, fay);
    let _w1_seen = drain(w1_events, fay);
    let mut cfg = FailoverConfig::new(vec![n2.addr()], fay_key, fay, "online");
    cfg.max_backoff = Duration::from_millis(500);
    let (session, mut updates) = Failover::start(cfg).await.unwrap();
    session
        .client()
        .unwrap()
        .add_contacts(&[w0_uid])
        .await
        .unwrap();
    // Fay learns the other servers from n2.
    let learned = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match updates.recv().await {
                Some(Update::Servers(list)) => return list,
                Some(_) => continue,
                None => panic!("session ended"),
            }
        }
    })
    .await
    .expect("server list learned");
    assert!(
        learned.contains(&n0.addr()) && learned.contains(&n1.addr()),
        "{learned:?}"
    );
    wait_until(
        "the watchers to see everyone online",
        Duration::from_secs(10),
        || {
            watched.iter().all(|u| w0.is_contact_online(*u))
                && uids.iter().all(|u| w1.is_contact_online(*u))
        },
    )
    .await;
    fay_seen_by_w0.lock().unwrap().clear();

    // kill -9 n2.
    let t0 = Instant::now();
    n2.kill9();
    let relogin = |i: usize| {
        let key = on_n2[i].3.clone();
        let (uid, addr) = (on_n2[i].2, n0.addr());
        async move {
            let (c, e) = GossipClient::connect(&addr, key).await.unwrap();
            c.login(uid).await.unwrap();
            c.go_online("online", None).await.unwrap();
            (c, e)
        }
    };
    let u1_again = tokio::spawn(relogin(1));

    // Fay is logged in elsewhere and receiving pushes again within 3 s.
    let server = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match updates.recv().await {
                Some(Update::Reconnected { server }) => return server,
                Some(_) => continue,
                None => panic!("session ended"),
            }
        }
    })
    .await
    .expect("reconnected");
    let reconnected = t0.elapsed();
    assert!(server == n0.addr() || server == n1.addr(), "{server}");
    w0.set_status("away", Some("push after failover"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match updates.recv().await {
                Some(Update::Event(Event::Presence(r)))
                    if r.user_id == w0_uid && r.status == "away" =>
                {
                    return
                }
                Some(_) => continue,
                None => panic!("session ended"),
            }
        }
    })
    .await
    .expect("a push after the failover");
    let pushes_again = t0.elapsed();
    eprintln!("failover: reconnected to {server} after {reconnected:?}, receiving pushes after {pushes_again:?}");
    assert!(pushes_again < Duration::from_secs(3), "{pushes_again:?}");

    // u0 and u2 go offline for both watchers within the dead timeout + 1 s.
    wait_until(
        "u0 and u2 offline everywhere",
        Duration::from_secs(DEAD_AFTER_S + 10),
        || {
            !w0.is_contact_online(uids[0])
                && !w1.is_contact_online(uids[0])
                && !w0.is_contact_online(uids[2])
                && !w1.is_contact_online(uids[2])
        },
    )
    .await;
    let offline = t0.elapsed();
    eprintln!("users of the killed server offline at both watchers {offline:?} after the kill (dead timeout {DEAD_AFTER_S} s)");
    assert!(
        offline <= Duration::from_secs(DEAD_AFTER_S + 1),
        "{offline:?}"
    );
    // "Will first": u2 logs in again at n0 after its will was published; u1 did at once
    // after the kill ("both at once" with the will, started below before anything waited).
    let u2_again = relogin(2).await;
    let u1_again = u1_again.await.unwrap();
    wait_until(
        "u1 and u2 online again everywhere",
        Duration::from_secs(10),
        || {
            [1, 2]
                .iter()
                .all(|i| w0.is_contact_online(uids[*i]) && w1.is_contact_online(uids[*i]))
        },
    )
    .await;
    // Fay's will and her reconnection race: w0 may see her offline, but never for longer than
    // the failover took, and she is online in the end.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(w0.is_contact_online(fay));
    let timeline = fay_seen_by_w0.lock().unwrap().clone();
    let mut longest = Duration::ZERO;
    let mut since = None;
    for (at, online) in &timeline {
        match (online, since) {
            (false, None) => since = Some(*at),
            (true, Some(from)) => {
                longest = longest.max(*at - from);
                since = None;
            }
            _ => {}
        }
    }
    assert!(since.is_none(), "fay left offline: {timeline:?}");
    eprintln!("fay shown offline at w0 for at most {longest:?} during her failover");
    assert!(longest < Duration::from_secs(3), "{longest:?}");
    // The survivors hold the same records (the races converged).
    wait_until(
        "identical databases on n0 and n1",
        Duration::from_secs(10),
        || n0.status().unwrap()["digest"] == n1.status().unwrap()["digest"],
    )
    .await;
    drop((u1_again, u2_again));
    session.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gracefully_stopped_servers_users_go_offline_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let n0 = node(dir.path(), "n0", None);
    let mut n1 = node(dir.path(), "n1", Some(&n0));
    wait_until("one tree", Duration::from_secs(30), || {
        one_tree(&[&n0, &n1])
    })
    .await;

    let (u, _ue, uid, _) = user(&n1, "u").await;
    u.go_online("online", None).await.unwrap();
    let (w, _we, _, _) = user(&n0, "w").await;
    w.add_contacts(&[uid]).await.unwrap();
    wait_until("u online at the watcher", Duration::from_secs(10), || {
        w.is_contact_online(uid)
    })
    .await;
    // SIGTERM from another thread; the watcher is polled from the moment it is sent.
    let stopping = std::thread::spawn(move || n1.terminate(Duration::from_secs(10)));
    let took = wait_until("u offline at the watcher", Duration::from_secs(5), || {
        !w.is_contact_online(uid)
    })
    .await;
    assert!(stopping.join().unwrap().is_some(), "a graceful stop");
    eprintln!("users of a gracefully stopped server offline after {took:?}");
    assert!(took <= Duration::from_secs(1), "{took:?}");
}
