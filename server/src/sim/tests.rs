//! The simulator's tests, on simulated time (a few seconds of real time for all of them).

use super::*;
use gossip_common::{EventCount, Keypair, Signed, UserId, UserInfo};
use rand::{Rng, SeedableRng};

fn root() -> tempfile::TempDir {
    // Datafiles on tmpfs when there is one: the simulated nodes' fsyncs cost nothing.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("gossip-sim-")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

fn user(key: &Keypair, uid: u64, count: u32, status: &str) -> Signed<UserInfo> {
    let mut u = UserInfo::new(UserId(uid), key.public());
    u.nick_name = format!("u{uid}");
    u.status = status.into();
    u.event_count = EventCount::new(count, false);
    Signed::sign(u, key).unwrap()
}

/// Starts `n` servers with seeded random RTTs, each joining server 0.
fn cluster(dir: &Path, n: usize, seed: u64) -> Cluster {
    let mut c = Cluster::new(dir, Duration::from_millis(50));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..n {
        for j in i + 1..n {
            let ms = rng.gen_range(1_000..100_000);
            c.net.set_rtt(
                &Cluster::key(i),
                &Cluster::key(j),
                Duration::from_micros(ms),
            );
        }
    }
    for i in 0..n {
        let peers = if i == 0 {
            vec![]
        } else {
            vec![Cluster::key(0)]
        };
        c.add(&Cluster::key(i), &peers).unwrap();
    }
    c
}

/// [`cluster`], once it is one tree (within 300 s).
async fn formed(dir: &Path, n: usize, seed: u64) -> Cluster {
    let c = cluster(dir, n, seed);
    c.wait(Duration::from_secs(300), Cluster::one_tree)
        .await
        .expect("formed");
    c
}

#[tokio::test(start_paused = true)]
async fn fifty_servers_form_the_minimum_spanning_tree_of_their_rtts() {
    let dir = root();
    let c = cluster(dir.path(), 50, 1);
    let want = c.expected_tree();
    // Early trees are built from partial measurements (a star around the server everyone
    // joined); the rows converge to the full matrix, and so the tree to its MST.
    let took = c
        .wait(Duration::from_secs(300), |c| {
            c.one_tree() && c.node(&Cluster::key(7)).unwrap().federation.status().tree == want
        })
        .await
        .unwrap_or_else(|| {
            let tree = c.node(&Cluster::key(7)).unwrap().federation.status().tree;
            panic!("no agreement on the MST within 300 s; server 7 holds {tree:?}")
        });
    eprintln!("50 servers agreed on the tree after {took:?} (simulated)");
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_partition_heals_to_identical_databases_within_ten_seconds() {
    let dir = root();
    let c = formed(dir.path(), 8, 2).await;
    let keys: Vec<Keypair> = (0..8).map(|_| Keypair::generate()).collect();
    for (i, k) in keys.iter().enumerate() {
        c.publish(&Cluster::key(i), user(k, 100 + i as u64, 0, "online"), true)
            .await
            .unwrap();
    }
    c.wait(Duration::from_secs(30), Cluster::same_data)
        .await
        .expect("records everywhere");
    // Server 3 is cut off long enough for every side to mark the other dead; both sides
    // change records meanwhile.
    let cut = Cluster::key(3);
    c.net.cut(&cut);
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.publish(&cut, user(&keys[3], 103, 1, "away"), false)
        .await
        .unwrap();
    c.publish(&Cluster::key(5), user(&keys[5], 105, 1, "busy"), false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(55)).await;
    let marked_dead = c
        .node(&Cluster::key(0))
        .unwrap()
        .federation
        .status()
        .rtts
        .iter()
        .any(|(k, v)| *k == crate::mst::id_string(&cut) && v.is_none());
    assert!(marked_dead, "the cut was never noticed");
    c.net.heal(&cut);
    let took = c
        .wait(Duration::from_secs(10), |c| c.one_tree() && c.same_data())
        .await
        .expect("one tree and identical databases within 10 s of the heal");
    eprintln!("healed after {took:?} (simulated)");
    let n0 = c.node(&Cluster::key(0)).unwrap();
    assert_eq!(n0.store.user(UserId(103)).unwrap().status, "away");
    let n3 = c.node(&cut).unwrap();
    assert_eq!(n3.store.user(UserId(105)).unwrap().status, "busy");
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_server_crashed_in_the_middle_of_a_sync_converges_after_restart() {
    let dir = root();
    let mut c = formed(dir.path(), 4, 3).await;
    let late = Cluster::key(3);
    c.crash(&late).await;
    // Many records while it is down, so its catch-up sync takes a while.
    let key = Keypair::generate();
    for i in 0..3_000u64 {
        c.publish(&Cluster::key(0), user(&key, 1_000 + i, 0, "online"), true)
            .await
            .unwrap();
    }
    c.restart(&late).await.unwrap();
    // Its neighbours see it again, link to it and sync, at 1 MB/s: a few seconds.
    c.net.set_bandwidth(1_000_000);
    let mid = c
        .wait(Duration::from_secs(120), |c| {
            c.node(&late)
                .is_some_and(|n| (1..3_000).contains(&n.store.user_count()))
        })
        .await
        .is_some();
    assert!(
        mid,
        "never caught the sync half-way: {} users, {:?}",
        c.node(&late).unwrap().store.user_count(),
        c.node(&late).unwrap().federation.status()
    );
    c.crash(&late).await;
    c.restart(&late).await.unwrap();
    c.net.set_bandwidth(0);
    let took = c
        .wait(Duration::from_secs(120), |c| c.one_tree() && c.same_data())
        .await
        .expect("converged after the second restart");
    assert_eq!(c.node(&late).unwrap().store.user_count(), 3_000);
    eprintln!("converged {took:?} (simulated) after restarting mid-sync");
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn seeded_chaos_always_heals_within_ten_simulated_seconds() {
    for seed in 1..=5 {
        let dir = root();
        let mut c = formed(dir.path(), 8, seed).await;
        let healed = chaos(&mut c, seed, 12, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let worst = healed
            .iter()
            .filter(|h| h.kind != "rtt")
            .map(|h| h.took)
            .max()
            .unwrap_or_default();
        eprintln!("seed {seed}: 12 faults, worst heal {worst:?} (simulated)");
        assert_eq!(healed.len(), 12);
        c.stop().await;
    }
}

/// A server cut off without a trace (a power cut: connects time out, probes go unanswered, no
/// connection is refused): the others judge it dead by their probes and publish the replicated
/// will of a user who was logged in there; when it comes back, everyone holds the same record.
#[tokio::test(start_paused = true)]
async fn the_wills_of_a_server_cut_off_are_published_by_the_others() {
    let dir = root();
    let c = formed(dir.path(), 4, 3).await;
    let key = Keypair::generate();
    let home = Cluster::key(2);
    c.publish(&home, user(&key, 77, 1, "online"), true)
        .await
        .unwrap();
    let node = c.node(&home).unwrap();
    assert!(node
        .wills
        .hold(home.clone(), user(&key, 77, 2, "offline"), None));
    c.wait(Duration::from_secs(30), |c| {
        c.running()
            .all(|(_, n)| n.wills.peek(UserId(77)) == Some(EventCount::new(2, false)))
    })
    .await
    .expect("the will replicated everywhere");
    c.net.cut(&home);
    let took = c
        .wait(Duration::from_secs(180), |c| {
            c.running().filter(|(k, _)| **k != home).all(|(_, n)| {
                n.store
                    .user(UserId(77))
                    .is_some_and(|u| u.event_count == EventCount::new(2, false) && !u.is_online())
            })
        })
        .await
        .expect("the will published by the others");
    eprintln!("will of a user on a cut-off server published everywhere {took:?} after the cut (simulated)");
    c.net.heal(&home);
    c.wait(Duration::from_secs(60), |c| c.one_tree() && c.same_data())
        .await
        .expect("one tree and the same records after the heal");
    c.stop().await;
}

fn relay(from: &Keypair, uid: u64, to: u64, i: u32) -> gossip_common::message::Relay {
    let mut r = gossip_common::message::Relay {
        id: format!("{:032x}", 0x5EED_0000 + u128::from(i)),
        from: UserId(uid),
        to: UserId(to),
        sent: crate::mailbox::now_ms(),
        body: "AAECAw==".into(),
        sig: String::new(),
        request: None,
    };
    r.sig = from
        .sign(
            gossip_common::Domain::Relay,
            &gossip_common::relay_bytes(&r),
        )
        .to_string();
    r
}

/// Messages held by every running server, or `None` if they differ.
fn held_everywhere(c: &Cluster) -> Option<usize> {
    let mut lens = c.running().map(|(_, n)| n.mailbox.len());
    let first = lens.next()?;
    lens.all(|l| l == first).then_some(first)
}

/// Heals `cut` after long enough for its links to be given up (a short cut only stalls them),
/// then waits (10 s) for every server to hold `n` messages.
async fn heal_until_all_hold(c: &Cluster, cut: &ServerId, n: usize, what: &str) {
    tokio::time::sleep(Duration::from_secs(55)).await;
    c.net.heal(cut);
    c.wait(Duration::from_secs(10), |c| held_everywhere(c) == Some(n))
        .await
        .unwrap_or_else(|| panic!("{what}: not within 10 s of the heal"));
}

fn mail_counters(c: &Cluster) -> (u64, u64, u64) {
    c.running().fold((0, 0, 0), |(e, l, r), (_, n)| {
        let m = &n.metrics;
        (
            e + m.mailbox_equal.get(),
            l + m.mailbox_lists_sent.get(),
            r + m.mailbox_resent.get(),
        )
    })
}

#[tokio::test(start_paused = true)]
async fn a_cut_off_server_gets_the_messages_it_missed_and_learns_of_their_delivery() {
    let dir = root();
    let c = formed(dir.path(), 5, 4).await;
    let (alice, bob) = (Keypair::generate(), Keypair::generate());
    let n0 = Arc::clone(c.node(&Cluster::key(0)).unwrap());
    c.publish(&Cluster::key(0), user(&alice, 200, 0, "online"), true)
        .await
        .unwrap();
    c.publish(&Cluster::key(0), user(&bob, 201, 0, "offline"), true)
        .await
        .unwrap();
    c.wait(Duration::from_secs(30), Cluster::same_data)
        .await
        .expect("records everywhere");
    let cut = Cluster::key(3);
    let holds = |c: &Cluster, k: &ServerId| c.node(k).unwrap().mailbox.len();

    // Alice writes to offline Bob while server 3 is cut off: the others hold the messages.
    c.net.cut(&cut);
    tokio::time::sleep(Duration::from_secs(5)).await;
    for i in 0..5 {
        n0.relay
            .submit(UserId(200), relay(&alice, 200, 201, i))
            .await
            .unwrap();
    }
    let others = |c: &Cluster, n: usize| {
        c.running()
            .filter(|(k, _)| **k != cut)
            .all(|(_, node)| node.mailbox.len() == n)
    };
    // Within the time the others take to mend the tree around the cut server (a server
    // reached only through it gets them when its repair link comes up, by the same exchange).
    c.wait(Duration::from_secs(90), |c| others(c, 5))
        .await
        .expect("the others hold the five");
    assert_eq!(holds(&c, &cut), 0);
    heal_until_all_hold(&c, &cut, 5, "server 3 gets the five at link-up").await;
    let (_, lists, resent) = mail_counters(&c);
    assert!(lists >= 1 && resent >= 5, "lists {lists}, resent {resent}");

    // Bob takes them at server 1 while server 3 is cut off again: server 3 learns of the
    // delivery at link-up and drops them.
    c.net.cut(&cut);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let n1 = Arc::clone(c.node(&Cluster::key(1)).unwrap());
    for i in 0..5 {
        let id = relay(&alice, 200, 201, i).id;
        let sig = bob
            .sign(
                gossip_common::Domain::Relay,
                &gossip_common::delivered_bytes(&id, UserId(200), UserId(201)),
            )
            .to_string();
        let d = gossip_common::message::Delivered {
            id,
            from: UserId(200),
            to: UserId(201),
            sig,
        };
        assert!(n1.relay.delivered(d, None));
    }
    c.wait(Duration::from_secs(90), |c| others(c, 0))
        .await
        .expect("the others drop the delivered five");
    assert_eq!(holds(&c, &cut), 5);
    heal_until_all_hold(
        &c,
        &cut,
        0,
        "server 3 drops the five, told they were delivered",
    )
    .await;

    // Cut and healed with nothing to send: the digests agree, no list, no message.
    let (equal, lists, resent) = mail_counters(&c);
    c.net.cut(&cut);
    tokio::time::sleep(Duration::from_secs(60)).await;
    c.net.heal(&cut);
    c.wait(Duration::from_secs(10), |c| {
        c.one_tree() && mail_counters(c).0 >= equal + 2
    })
    .await
    .expect("server 3 relinked and compared mailboxes");
    let after = mail_counters(&c);
    assert_eq!((after.1, after.2), (lists, resent), "nothing crossed");
    eprintln!(
        "mailbox exchanges: {} equal, {} lists sent, {} messages resent",
        after.0, after.1, after.2
    );
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_leaves_every_tree_within_one_dead_timeout_and_a_few_seconds() {
    let dir = root();
    let c = formed(dir.path(), 20, 4).await;
    let want = c.expected_tree();
    c.wait(Duration::from_secs(300), |c| {
        c.one_tree() && c.running().all(|(_, n)| n.federation.status().tree == want)
    })
    .await
    .expect("the MST first");
    // A server in the middle of the tree goes silent: a frozen process or a pulled cable, so
    // nothing refuses a connection and its links just stall. Its neighbours need the dead
    // timeout (30 s by default) to call it dead; everyone else, once their rows arrive, only
    // confirms it briefly instead of waiting out a timeout of their own.
    let dead_after = Duration::from_secs(30);
    let victim = Cluster::key(10);
    let v = crate::mst::id_string(&victim);
    let t0 = tokio::time::Instant::now();
    c.net.cut(&victim);
    let left = |c: &Cluster| {
        let mut trees = c
            .running()
            .filter(|(k, _)| **k != victim)
            .map(|(_, n)| n.federation.status().tree);
        let first = trees.next().expect("servers");
        first.len() == 18
            && !first.iter().any(|(a, b)| *a == v || *b == v)
            && trees.all(|t| t == first)
    };
    c.wait(Duration::from_secs(300), left)
        .await
        .expect("a tree without the silent server");
    let took = t0.elapsed();
    eprintln!("the silent server left every tree {took:?} after it went silent (simulated)");
    assert!(
        took <= dead_after + Duration::from_secs(5),
        "took {took:?}: more than one dead timeout and 5 s"
    );
    c.stop().await;
}
