//! Federation with real nodes on loopback: emulated link delays make the expected spanning tree
//! known in advance; every node must compute it and link only along it; changes travel leaf to
//! leaf; a node that was down catches up.

use std::collections::HashMap;
use std::time::Duration;

use gossip_client::{Event, GossipClient};
use gossip_common::rtt::LabDelays;
use gossip_common::Keypair;
use gossip_server::{Config, RunningNode};
use gossip_tests::ports::reserve_base_ports;
use gossip_tests::wait_for;
use gossip_tests::wait_for_or_describe;

const N: usize = 5;
/// One-way delays: 3 ms along the chain n0-n1-n2-n3-n4, 25 ms between all other pairs.
const NEAR_MS: u64 = 3;
const FAR_MS: u64 = 25;

fn key(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn config(dir: &std::path::Path, ports: &[u16], i: usize) -> Config {
    let mut c = Config::for_tests(dir, ports[i]);
    c.strict_ports = true;
    if i != 0 {
        c.peers = vec![("127.0.0.1".into(), ports[0])];
    }
    gossip_tests::fast_probing(&mut c, Duration::from_millis(1000));
    let mut lab = HashMap::new();
    for (j, p) in ports.iter().enumerate() {
        if j != i {
            let ms = if i.abs_diff(j) == 1 { NEAR_MS } else { FAR_MS };
            lab.insert(key(*p), Duration::from_millis(ms));
        }
    }
    c.lab = LabDelays::new(lab);
    c
}

async fn start_all(dirs: &[tempfile::TempDir]) -> (Vec<u16>, Vec<Option<RunningNode>>) {
    // The lab delays name every peer's port, so the ports are reserved in advance (below the
    // ephemeral range); another process may still take one before a node binds it: retry.
    'retry: for _ in 0..10 {
        let ports = reserve_base_ports(N);
        let mut nodes = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            match gossip_server::start(config(dir.path(), &ports, i)).await {
                Ok(n) => nodes.push(Some(n)),
                Err(_) => {
                    for n in nodes.into_iter().flatten() {
                        n.stop().await.unwrap();
                    }
                    continue 'retry;
                }
            }
        }
        return (ports, nodes);
    }
    panic!("could not bind five consecutive base ports");
}

fn chain(ports: &[u16], members: &[usize]) -> Vec<(String, String)> {
    members
        .windows(2)
        .map(|w| (key(ports[w[0]]), key(ports[w[1]])))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_agree_on_the_tree_propagate_and_resync() {
    let dirs: Vec<tempfile::TempDir> = (0..N).map(|_| tempfile::tempdir().unwrap()).collect();
    let (ports, mut nodes) = start_all(&dirs).await;
    let expected = chain(&ports, &[0, 1, 2, 3, 4]);

    // Every node computes the expected tree and links exactly to its tree neighbours.
    wait_for(
        "every node to report the chain tree and its links",
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .enumerate()
                .all(|(i, n)| {
                    let st = n.as_ref().unwrap().node.federation.status();
                    let mut want: Vec<String> = [i.checked_sub(1), (i + 1 < N).then_some(i + 1)]
                        .into_iter()
                        .flatten()
                        .map(|j| key(ports[j]))
                        .collect();
                    want.sort();
                    st.tree == expected && st.links == want
                })
                .then_some(())
        },
    )
    .await;

    // Alice on leaf n0 watches Bob, who is on the far leaf n4.
    let addr = |i: usize| key(ports[i]);
    let (alice, mut alice_events) = GossipClient::connect(&addr(0), Keypair::generate())
        .await
        .unwrap();
    let a = alice
        .register(|u| u.nick_name = "alice".into())
        .await
        .unwrap();
    let bob_key = Keypair::generate();
    let (bob, _bob_events) = GossipClient::connect(&addr(4), bob_key.clone())
        .await
        .unwrap();
    let b = bob.register(|u| u.nick_name = "bob".into()).await.unwrap();
    assert_ne!(a, b);
    alice.add_contacts(&[b]).await.unwrap();
    alice.go_online("online", None).await.unwrap();
    let t0 = std::time::Instant::now();
    bob.set_status("away", Some("across the tree"))
        .await
        .unwrap();
    let seen = loop {
        match tokio::time::timeout(Duration::from_secs(15), alice_events.next())
            .await
            .expect("push in time")
        {
            Some(Event::Presence(r)) if r.user_id == b && r.status == "away" => break t0.elapsed(),
            Some(_) => continue,
            None => panic!("alice's stream ended"),
        }
    };
    // Four hops of 3 ms one-way emulated delay.
    assert!(seen >= Duration::from_millis(4 * NEAR_MS), "{seen:?}");
    eprintln!("leaf-to-leaf presence push over 4 hops took {seen:?} (12 ms of it emulated)");

    // Two registrations racing at the same moment, from the same IP, on different nodes: the
    // network-wide lock gives them different UserIDs.
    for _ in 0..3 {
        let (x, _ex) = GossipClient::connect(&addr(1), Keypair::generate())
            .await
            .unwrap();
        let (y, _ey) = GossipClient::connect(&addr(3), Keypair::generate())
            .await
            .unwrap();
        let (ux, uy) = tokio::join!(
            x.register(|u| u.nick_name = "x".into()),
            y.register(|u| u.nick_name = "y".into())
        );
        let (ux, uy) = (ux.unwrap(), uy.unwrap());
        assert_ne!(ux, uy, "racing registrations got the same UserID");
    }

    // Take the middle node down: the others recompute a tree without it.
    let n2 = nodes[2].take().unwrap();
    n2.stop().await.unwrap();
    let survivors = [0usize, 1, 3, 4];
    wait_for(
        "the four survivors to agree on a tree without n2",
        Duration::from_secs(30),
        || {
            let trees: Vec<_> = survivors
                .iter()
                .map(|i| nodes[*i].as_ref().unwrap().node.federation.status().tree)
                .collect();
            let t = &trees[0];
            (t.len() == 3
                && trees.iter().all(|x| x == t)
                && t.iter()
                    .all(|(x, y)| *x != key(ports[2]) && *y != key(ports[2])))
            .then_some(())
        },
    )
    .await;

    // Changes while it is down.
    bob.set_status("busy", Some("while n2 was down"))
        .await
        .unwrap();
    let (carol, _c) = GossipClient::connect(&addr(0), Keypair::generate())
        .await
        .unwrap();
    let c = carol
        .register(|u| u.nick_name = "carol".into())
        .await
        .unwrap();
    carol.add_contacts(&[a, b]).await.unwrap();

    // n2 comes back on the same data directory and port, and catches up.
    let mut cfg = config(dirs[2].path(), &ports, 2);
    cfg.strict_ports = true;
    nodes[2] = Some(gossip_server::start(cfg).await.expect("n2 restarts"));
    wait_for(
        "the chain tree again on every node",
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .all(|n| n.as_ref().unwrap().node.federation.status().tree == expected)
                .then_some(())
        },
    )
    .await;
    wait_for_or_describe(
        "identical databases on all five nodes",
        Duration::from_secs(30),
        || {
            let digests: Vec<String> = nodes
                .iter()
                .map(|n| n.as_ref().unwrap().node.store.digest())
                .collect();
            digests.iter().all(|d| *d == digests[0]).then_some(())
        },
        || {
            nodes
                .iter()
                .flatten()
                .map(|n| {
                    let n = &n.node;
                    let m = &n.metrics;
                    format!(
                        "{}: {} users, {} lists, digest {}, links {:?}, tree {:?}, sync rounds {}, fallbacks {}, records sent {} received {}",
                        n.identity(),
                        n.store.user_count(),
                        n.store.list_count(),
                        n.store.digest(),
                        n.federation.status().links,
                        n.federation.status().tree,
                        m.sync_rounds.get(),
                        m.sync_fallbacks.get(),
                        m.sync_records_sent.get(),
                        m.sync_records_received.get(),
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    )
    .await;
    let n2 = &nodes[2].as_ref().unwrap().node;
    assert_eq!(n2.store.user(b).unwrap().status, "busy");
    assert!(n2.store.user(c).is_some());
    assert_eq!(n2.store.contact_list(c).unwrap().contacts, vec![a, b]);
    assert!(nodes[0].as_ref().unwrap().node.federation.recomputations() >= 3);
    for n in nodes.into_iter().flatten() {
        n.stop().await.unwrap();
    }
}
