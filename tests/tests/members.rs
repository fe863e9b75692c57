//! A rogue *member*: a server with a valid key of its own, admitted to the federation, that
//! turns hostile. Each test puts real nodes on loopback (emulated geography makes the rogue the
//! tree's hub), turns one of them rogue, and asserts that the honest users are unaffected, with
//! the figures in the output.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gossip_client::{Event, Events, GossipClient};
use gossip_common::rtt::{LabDelays, ProbeConfig};
use gossip_common::{Keypair, UserId};
use gossip_server::{Config, RunningNode};
use gossip_tests::ports::reserve_base_ports;
use gossip_tests::wait_for_or_describe;

/// One-way delays: 3 ms to the hub n1, 25 ms between the others, so the tree is a star on n1.
const NEAR_MS: u64 = 3;
const FAR_MS: u64 = 25;
/// The repair interval the tests run with (the default is 10 s).
const REPAIR: Duration = Duration::from_secs(1);

fn key(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn config(dir: &std::path::Path, ports: &[u16], i: usize) -> Config {
    let mut c = Config::for_tests(dir, ports[i]);
    c.strict_ports = true;
    if i != 1 {
        c.peers = vec![("127.0.0.1".into(), ports[1])];
    }
    c.probe = ProbeConfig {
        interval: Duration::from_millis(20),
        replies: 3,
        dead_after: Duration::from_millis(1000),
        source: None,
    };
    c.reprobe = Duration::from_millis(250);
    c.repair = REPAIR;
    let mut lab = HashMap::new();
    for (j, p) in ports.iter().enumerate() {
        if j != i {
            let ms = if i == 1 || j == 1 { NEAR_MS } else { FAR_MS };
            lab.insert(key(*p), Duration::from_millis(ms));
        }
    }
    c.lab = LabDelays::new(lab);
    c
}

/// `n` nodes whose tree is the star on n1, up and agreed.
async fn star(dirs: &[tempfile::TempDir]) -> (Vec<u16>, Vec<RunningNode>) {
    let n = dirs.len();
    'retry: for _ in 0..10 {
        let ports = reserve_base_ports(n);
        let mut nodes = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            match gossip_server::start(config(dir.path(), &ports, i)).await {
                Ok(node) => nodes.push(node),
                Err(_) => {
                    for node in nodes {
                        node.stop().await.unwrap();
                    }
                    continue 'retry;
                }
            }
        }
        let hub = key(ports[1]);
        wait_for_or_describe(
            "every node to compute the star on n1",
            Duration::from_secs(30),
            || {
                nodes
                    .iter()
                    .all(|node| {
                        let st = node.node.federation.status();
                        st.tree.len() == n - 1
                            && st.tree.iter().all(|(a, b)| *a == hub || *b == hub)
                    })
                    .then_some(())
            },
            || {
                nodes
                    .iter()
                    .map(|node| format!("{:?}", node.node.federation.status().tree))
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        )
        .await;
        return (ports, nodes);
    }
    panic!("could not bind {n} base ports");
}

async fn user(node: &RunningNode, nick: &str) -> (GossipClient, Events, UserId) {
    let (c, e) = GossipClient::connect(&node.client_addr().to_string(), Keypair::generate())
        .await
        .unwrap();
    let uid = c.register(|u| u.nick_name = nick.into()).await.unwrap();
    (c, e, uid)
}

/// The time until `events` yields what `pick` accepts, failing after `within`.
async fn seen<T>(
    what: &str,
    events: &mut Events,
    within: Duration,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> (T, Duration) {
    let t0 = Instant::now();
    let got = tokio::time::timeout(within, async {
        loop {
            let ev = events.next().await.expect("connection open");
            if let Some(t) = pick(ev) {
                return t;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {within:?}"));
    (got, t0.elapsed())
}

/// The hub of the tree forwards nothing. Before repair checks, a status change and a relayed
/// message from one side never reached the other (120 s and counting; only killing the rogue
/// healed it). Now each arrives by the next check that crosses the gap: within a few repair
/// intervals, while the rogue is still the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_forwards_nothing_delays_updates_but_cannot_cut_the_federation() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (ports, nodes) = star(&dirs).await;
    let (alice, _alice_events, a) = user(&nodes[0], "alice").await;
    let (bob, mut bob_events, b) = user(&nodes[2], "bob").await;
    bob.add_contacts(&[a]).await.unwrap();
    alice.add_contacts(&[b]).await.unwrap();
    bob.go_online("online", None).await.unwrap();
    alice.set_status("online", None).await.unwrap();
    // Baseline, everyone honest: along the tree.
    let (_, baseline) = seen(
        "baseline push",
        &mut bob_events,
        Duration::from_secs(10),
        |ev| {
            matches!(ev, Event::Presence(r) if r.user_id == a && r.status == "online").then_some(())
        },
    )
    .await;

    // The hub turns rogue: it stays in the tree and forwards nothing.
    nodes[1].node.federation.lab_withhold_forwarding(true);
    let checks_before =
        nodes[0].node.federation.repair_checks() + nodes[2].node.federation.repair_checks();
    alice
        .set_status("away", Some("behind a rogue hub"))
        .await
        .unwrap();
    let bound = 5 * REPAIR;
    let (_, withheld) = seen(
        "status change past a withholding hub",
        &mut bob_events,
        bound,
        |ev| matches!(ev, Event::Presence(r) if r.user_id == a && r.status == "away").then_some(()),
    )
    .await;
    let id = alice.send_relayed(b, b"past the rogue").await.unwrap();
    let (got, relayed) = seen(
        "relayed message past a withholding hub",
        &mut bob_events,
        bound,
        |ev| match ev {
            Event::Relayed { message, .. } => Some(message),
            _ => None,
        },
    )
    .await;
    assert_eq!(got.id, id);
    assert_eq!(got.from, a);
    // The rogue is still the hub: it was routed around by the checks, not out of the tree.
    let hub = key(ports[1]);
    for n in &nodes {
        assert!(n
            .node
            .federation
            .status()
            .tree
            .iter()
            .all(|(x, y)| *x == hub || *y == hub));
    }
    let checks = nodes[0].node.federation.repair_checks()
        + nodes[2].node.federation.repair_checks()
        - checks_before;
    assert!(checks > 0, "no repair check ran");
    println!(
        "withholding hub: status push {withheld:?} (baseline {baseline:?}), relayed message {relayed:?}, \
         {checks} repair checks meanwhile, repair interval {REPAIR:?}"
    );
    for n in nodes {
        n.stop().await.unwrap();
    }
}
