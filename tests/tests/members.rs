//! A rogue *member*: a server with a valid key of its own, admitted to the federation, that
//! turns hostile. Each test puts real nodes on loopback (emulated geography makes the rogue the
//! tree's hub), turns one of them rogue, and asserts that the honest users are unaffected, with
//! the figures in the output.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gossip_client::{Event, Events, GossipClient};
use gossip_common::rtt::LabDelays;
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
    gossip_tests::fast_probing(&mut c, Duration::from_millis(1000));
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
    // A new session's last will, flooded at login and withheld by the hub: the next check
    // compares the wills' digests and brings it across, so Bob's server would publish it.
    let (carol, _carol_events, c) = user(&nodes[0], "carol").await;
    carol.go_online("online", None).await.unwrap();
    let t0 = Instant::now();
    wait_for_or_describe(
        "Carol's will to reach Bob's server past the hub",
        bound,
        || nodes[2].node.wills.peek(c).map(|_| ()),
        || format!("{} wills held there", nodes[2].node.wills.held().len()),
    )
    .await;
    let will = t0.elapsed();
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
    // Bob's server counts what it learned by repair against the hub, the neighbour it should
    // have come through.
    let fed = &nodes[2].node.federation;
    let against_hub = || {
        let (total, via) = fed.repaired();
        let hub_n = via.iter().find(|(s, _)| *s == hub).map_or(0, |(_, n)| *n);
        (total, hub_n)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while against_hub().1 < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Bob's server did not count the repaired items against the hub: {:?}",
            fed.repaired()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (learned, via_hub) = against_hub();
    println!(
        "withholding hub: status push {withheld:?} (baseline {baseline:?}), relayed message {relayed:?}, \
         last will {will:?}, {checks} repair checks meanwhile, repair interval {REPAIR:?}; Bob's server learned \
         {learned} items by repair, {via_hub} counted against the hub"
    );
    for n in nodes {
        n.stop().await.unwrap();
    }
}

/// A fresh user with its own key, as a rogue member makes them: its `newuser` record and key.
fn sybil(uid: u64) -> (gossip_common::message::NewUser, Keypair) {
    let key = Keypair::generate();
    let mut info = gossip_common::UserInfo::new(UserId(uid), key.public());
    info.nick_name = format!("sybil{uid}");
    let record = gossip_common::Signed::sign(info, &key).unwrap();
    (gossip_common::message::NewUser { record }, key)
}

/// A fresh user `uid` with its own key, as a rogue member makes them, certified by the member
/// (`sponsor`: its key, its identity, when issued) or not at all: its `newuser` message.
fn members_user(
    uid: UserId,
    sponsor: Option<(&Keypair, &(String, u16), u64)>,
) -> gossip_common::message::NewUser {
    use gossip_server::registration::sponsor::{certificate_bytes, Certificate, FIELD};
    let key = Keypair::generate();
    let mut info = gossip_common::UserInfo::new(uid, key.public());
    if let Some((server_key, me, issued)) = sponsor {
        let server = format!("{}:{}", me.0, me.1);
        let sig = server_key.sign(
            gossip_common::Domain::ServerControl,
            &certificate_bytes(uid, &key.public(), &server, issued),
        );
        let cert = Certificate {
            server: me.clone(),
            issued,
            key: server_key.public().to_string(),
            sig: sig.to_string(),
        };
        info.extra.push((FIELD.into(), cert.to_text()));
    }
    let record = gossip_common::Signed::sign(info, &key).unwrap();
    gossip_common::message::NewUser { record }
}

/// A relayed message from `from` (signed by `key`) to `to`, with `body` bytes of body.
fn relay(from: u64, key: &Keypair, to: UserId, body: usize) -> gossip_common::message::Relay {
    let mut r = gossip_common::message::Relay {
        id: format!("{:032x}", rand::random::<u128>()),
        from: UserId(from),
        to,
        sent: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        body: "A".repeat(body),
        sig: String::new(),
        request: None,
    };
    r.sig = key
        .sign(
            gossip_common::Domain::Relay,
            &gossip_common::relay_bytes(&r),
        )
        .to_string();
    r
}

/// A member sends, over its link, what once locked a victim's mailbox and filled every
/// server's disk and memory: 1,200 messages from 20 fresh non-contacts to the victim, and 60 KB
/// messages to UserIDs that do not exist. The victim's contact still gets through, the junk
/// to nobody is not kept, and the strangers hold only their share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_fill_a_mailbox_or_store_mail_for_nobody() {
    use gossip_tests::scripted::{attach, frame, read_frames};
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::for_tests(dir.path(), 0);
    c.repair = Duration::ZERO;
    let node = gossip_server::start(c).await.unwrap();
    let (alice, _alice_events, a) = user(&node, "alice").await;
    let bob_key = Keypair::generate();
    let (bob, _e) = GossipClient::connect(&node.client_addr().to_string(), bob_key.clone())
        .await
        .unwrap();
    let b = bob.register(|u| u.nick_name = "bob".into()).await.unwrap();
    bob.add_contacts(&[a]).await.unwrap();
    bob.logout().await.unwrap();

    let rogue = Keypair::generate();
    let (mut lines, mut wr) = attach(node.base_port() + 1, &rogue, ("192.0.2.80", 4000)).await;
    // Twenty-one fresh users, valid and correctly signed.
    let mut sybils: Vec<(u64, Keypair)> = Vec::new();
    for i in 0..21u64 {
        let uid = 0x7000_0000_0000 + i;
        let (newuser, key) = sybil(uid);
        wr.write_all(&frame(newuser)).await.unwrap();
        sybils.push((uid, key));
    }
    let mut burst = Vec::new();
    for (uid, key) in &sybils[..20] {
        for _ in 0..60 {
            burst.extend(frame(relay(*uid, key, b, 200)));
        }
    }
    // 60 KB bodies to 38 UserIDs nobody has.
    let (junk_from, junk_key) = &sybils[20];
    for i in 0..200u64 {
        burst.extend(frame(relay(
            *junk_from,
            junk_key,
            UserId(0x5000_0000 + i % 38),
            60_000,
        )));
    }
    wr.write_all(&burst).await.unwrap();
    wr.flush().await.unwrap();
    let mut answers = 0;
    read_frames(&mut lines, |l| {
        answers += usize::from(l.contains("<stored"));
        answers >= 100
    })
    .await;
    // Settle: the node has taken (or refused) everything the rogue sent.
    let held_by_strangers = wait_for_or_describe(
        "the node to have taken the strangers' share",
        Duration::from_secs(20),
        || {
            let n = node.node.mailbox.for_recipient(b).len();
            (n >= gossip_server::mailbox::MAX_STRANGERS_PER_RECIPIENT).then_some(n)
        },
        || {
            format!(
                "held for the victim: {}",
                node.node.mailbox.for_recipient(b).len()
            )
        },
    )
    .await;
    // The contact's message is taken and delivered.
    let id = alice.send_relayed(b, b"from a real contact").await.unwrap();
    let bytes = node.node.mailbox.bytes();
    let (bob, mut bob_events) = GossipClient::connect(&node.client_addr().to_string(), bob_key)
        .await
        .unwrap();
    bob.login(b).await.unwrap();
    let (got, _) = seen(
        "the contact's message at login",
        &mut bob_events,
        Duration::from_secs(10),
        |ev| match ev {
            Event::Relayed { message, .. } if message.from == a => Some(message),
            _ => None,
        },
    )
    .await;
    assert_eq!(got.id, id);
    println!(
        "mailbox spam: {held_by_strangers} of 1,200 strangers' messages held for the victim; \
         the contact's message delivered; with 200 × 60 KB sent to nobody, {} bytes held in all",
        bytes
    );
    assert_eq!(
        held_by_strangers,
        gossip_server::mailbox::MAX_STRANGERS_PER_RECIPIENT
    );
    assert!(
        bytes < 1 << 20,
        "{bytes} bytes held: the junk to nobody was kept"
    );
    node.stop().await.unwrap();
}

/// A member creates users as fast as it can. Before certificates, 260,319 valid users in a
/// minute were stored by every honest server. Now a new UserID needs its registering server's
/// certificate, and each sponsor gets a budget: the member's certified users are held to it,
/// and users it did not certify (registered after certificates began) are not stored at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_new_users_are_held_to_its_sponsor_budget() {
    use gossip_server::registration::sponsor::CUTOFF;
    use gossip_tests::scripted::{attach, frame};
    use tokio::io::AsyncWriteExt;
    const PER_MINUTE: f64 = 6.0; // a burst of 60
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::for_tests(dir.path(), 0);
    c.repair = Duration::ZERO;
    c.sponsored_users_per_minute = PER_MINUTE;
    let node = gossip_server::start(c).await.unwrap();
    let before = node.node.store.user_count();
    let rogue = Keypair::generate();
    let me = ("192.0.2.81".to_string(), 4000u16);
    let (_lines, mut wr) = attach(node.base_port() + 1, &rogue, (&me.0, me.1)).await;
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let made = |i: u64, certified: bool| {
        // Registered now: after certificates began.
        let uid = UserId(((CUTOFF + 1_000 + i) << 32) | 0xc000_0251);
        frame(members_user(
            uid,
            certified.then_some((&rogue, &me, issued)),
        ))
    };
    let mut burst = Vec::new();
    for i in 0..300 {
        burst.extend(made(i, true));
        burst.extend(made(10_000 + i, false));
    }
    wr.write_all(&burst).await.unwrap();
    wr.flush().await.unwrap();
    let refused = wait_for_or_describe(
        "every new user to be admitted or refused",
        Duration::from_secs(20),
        || {
            let r = node.node.metrics.refused_new_users.get();
            let stored = node.node.store.user_count() - before;
            (r as usize + stored >= 600).then_some(r)
        },
        || {
            format!(
                "stored {}, refused {}",
                node.node.store.user_count() - before,
                node.node.metrics.refused_new_users.get()
            )
        },
    )
    .await;
    let stored = node.node.store.user_count() - before;
    println!("sybil flood: 600 new users sent (300 certified by the member), {stored} stored, {refused} refused; sponsor budget {PER_MINUTE}/min, burst {}", PER_MINUTE * 10.0);
    assert!((60..=62).contains(&stored), "{stored} stored");
    // Honest registrations go on.
    let (_c, _e, _uid) = user(&node, "honest").await;
    node.stop().await.unwrap();
}

/// A member 40 ms away that answers each next probe before it is due (the reply it predicts:
/// the next sequence number and the prober's name, sprayed every millisecond at the prober's
/// socket) was measured at 0.02–0.62 ms by real nodes and became the hub. A probe now carries
/// 64 random bits its reply must echo: a real node measures the rogue at its real distance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_answers_probes_early_is_measured_at_its_real_distance() {
    const DISTANCE: Duration = Duration::from_millis(40);
    let dir = tempfile::tempdir().unwrap();
    let (honest, rogue, sock, node) = 'bound: {
        for _ in 0..10 {
            let ports = reserve_base_ports(2);
            let (h, r) = (ports[0], ports[1]);
            let Ok(sock) = tokio::net::UdpSocket::bind(("127.0.0.1", r + 2)).await else {
                continue;
            };
            // Its server port takes connections and never answers (a refused connection
            // would mark it dead at once, and nothing would be measured).
            let Ok(links) = tokio::net::TcpListener::bind(("127.0.0.1", r + 1)).await else {
                continue;
            };
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((conn, _)) = links.accept().await {
                    held.push(conn);
                }
            });
            let mut c = Config::for_tests(dir.path(), h);
            c.strict_ports = true;
            c.peers = vec![("127.0.0.1".into(), r)];
            gossip_tests::fast_probing(&mut c, Duration::from_millis(1000));
            c.repair = Duration::ZERO;
            c.lab = LabDelays::new(HashMap::from([(key(r), DISTANCE)]));
            match gossip_server::start(c).await {
                Ok(node) => break 'bound (h, r, sock, node),
                Err(_) => continue,
            }
        }
        panic!("could not bind two base ports");
    };
    // The rogue's echo port: it answers each probe at once, as an echo must, and sprays what
    // the next probes' replies would be, if they could be guessed.
    let sock = std::sync::Arc::new(sock);
    let sprayed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (sock2, sprayed2) = (
        std::sync::Arc::clone(&sock),
        std::sync::Arc::clone(&sprayed),
    );
    let rogue_task = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        let mut target: Option<(std::net::SocketAddr, Vec<u8>)> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        loop {
            tokio::select! {
                r = sock2.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { return };
                    let probe = buf[..n].to_vec();
                    let mut reply = probe.clone();
                    reply.push(0);
                    let _ = sock2.send_to(&reply, from).await;
                    target = Some((from, probe));
                }
                _ = tick.tick() => {
                    let Some((to, probe)) = &target else { continue };
                    // The next three sequence numbers, each with the old reply (sequence and
                    // name), and with a made-up nonce in the new format.
                    let name_end = probe.iter().position(|b| *b == b'#').unwrap_or(probe.len());
                    for k in 1..=3u8 {
                        let mut seq = probe[0].wrapping_add(k);
                        if seq == 0 {
                            seq = 1;
                        }
                        let mut old = vec![seq];
                        old.extend_from_slice(&probe[1..name_end]);
                        let mut new = old.clone();
                        new.extend_from_slice(format!("#{:016x}", rand::random::<u64>()).as_bytes());
                        for mut guess in [old, new] {
                            guess.push(0);
                            let _ = sock2.send_to(&guess, to).await;
                            sprayed2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    });
    // Three measurement rounds, so the published figure is settled.
    let measured = wait_for_or_describe(
        "the honest node to measure the rogue three times",
        Duration::from_secs(20),
        || {
            let fed = &node.node.federation;
            let rtt = fed
                .status()
                .rtts
                .into_iter()
                .find(|(s, _)| *s == key(rogue))
                .and_then(|(_, ms)| ms)?;
            (fed.probe_rounds() >= 3).then_some(rtt)
        },
        || format!("{:?}", node.node.federation.status().rtts),
    )
    .await;
    let guesses = sprayed.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "rogue {}ms away answering early ({guesses} guessed replies sprayed): measured at {measured:.2} ms by {}",
        DISTANCE.as_millis(),
        key(honest)
    );
    assert!(guesses > 100, "the rogue did not spray: {guesses}");
    assert!(
        measured >= DISTANCE.as_secs_f64() * 1000.0 * 0.9,
        "the rogue looked nearer than it is: {measured} ms"
    );
    rogue_task.abort();
    node.stop().await.unwrap();
}

/// `n` status changes of `alice` (UserID `a`), one after another, each timed until `events`
/// (a contact's) shows it.
async fn pushes(
    alice: &GossipClient,
    events: &mut Events,
    a: UserId,
    (label, n): (&str, usize),
) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!("{label} change {i}");
        let t0 = Instant::now();
        alice.set_status("away", Some(&text)).await.unwrap();
        seen("honest push", events, Duration::from_secs(10), |ev| {
            matches!(&ev, Event::Presence(p) if p.user_id == a && p.status_message == text)
                .then_some(())
        })
        .await;
        took.push(t0.elapsed());
    }
    took
}

/// The p-th percentile (0–100) of `samples`.
fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 * p / 100.0).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}

/// Before sponsors, a member's flood of 260,319 valid users a minute took an honest status
/// push's p99 from 54 ms to 618 ms. Now the flood is refused past the sponsor's budget,
/// before any signature check, and honest pushes stay on time; the figures are printed
/// (`cargo test -p gossip-tests --test integration members::a_sybil -- --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sybil_flood_leaves_honest_pushes_on_time() {
    use gossip_server::registration::sponsor::CUTOFF;
    use gossip_tests::scripted::{attach, frame};
    use tokio::io::AsyncWriteExt;
    const SAMPLES: usize = 100;
    const SYBILS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::for_tests(dir.path(), 0);
    c.repair = Duration::ZERO;
    let node = gossip_server::start(c).await.unwrap();
    let (alice, _alice_events, a) = user(&node, "alice").await;
    let (bob, mut bob_events, b) = user(&node, "bob").await;
    bob.add_contacts(&[a]).await.unwrap();
    alice.add_contacts(&[b]).await.unwrap();
    bob.go_online("online", None).await.unwrap();
    alice.set_status("online", None).await.unwrap();
    let mut baseline = pushes(&alice, &mut bob_events, a, ("baseline", SAMPLES)).await;

    // The member's users, each certified by the member's own key.
    let rogue = Keypair::generate();
    let me = ("192.0.2.82".to_string(), 4000u16);
    let (_lines, mut wr) = attach(node.base_port() + 1, &rogue, (&me.0, me.1)).await;
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let rogue2 = rogue.clone();
    let me2 = me.clone();
    let flood: Vec<u8> = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for i in 0..SYBILS {
            let uid = UserId(((CUTOFF + 5_000 + i) << 32) | 0xc000_0252);
            out.extend(frame(members_user(uid, Some((&rogue2, &me2, issued)))));
        }
        out
    })
    .await
    .unwrap();
    let before = node.node.store.user_count();
    let refused_before = node.node.metrics.refused_new_users.get();
    let stop = tokio_util::sync::CancellationToken::new();
    let stop2 = stop.clone();
    let flooder = tokio::spawn(async move {
        // Round and round: a refused user is offered again, as a member that keeps trying.
        while !stop2.is_cancelled() {
            for chunk in flood.chunks(64 * 1024) {
                if wr.write_all(chunk).await.is_err() {
                    return;
                }
            }
        }
    });
    // Let the flood get going before measuring.
    wait_for_or_describe(
        "the flood to start being refused",
        Duration::from_secs(30),
        || (node.node.metrics.refused_new_users.get() > refused_before + 1_000).then_some(()),
        || format!("refused {}", node.node.metrics.refused_new_users.get()),
    )
    .await;
    let t0 = Instant::now();
    let r0 = node.node.metrics.refused_new_users.get();
    let mut flooded = pushes(&alice, &mut bob_events, a, ("flood", SAMPLES)).await;
    let during = t0.elapsed();
    let refused = node.node.metrics.refused_new_users.get() - r0;
    stop.cancel();
    flooder.abort();
    let stored = node.node.store.user_count() - before;
    let (base99, flood99) = (
        percentile(&mut baseline, 99.0),
        percentile(&mut flooded, 99.0),
    );
    let (base50, flood50) = (
        percentile(&mut baseline, 50.0),
        percentile(&mut flooded, 50.0),
    );
    let rate = refused as f64 / during.as_secs_f64();
    println!(
        "sybil flood: {rate:.0} new users/s refused while measuring ({:.0}/min), {stored} stored; \
         honest push p50 {base50:?} -> {flood50:?}, p99 {base99:?} -> {flood99:?}",
        rate * 60.0
    );
    assert!(
        rate > 500.0,
        "the flood was too slow to show anything: {rate:.0}/s"
    );
    assert!(stored <= 610, "{stored} stored past the burst of 600");
    // The ratio is a measurement, printed above (on this machine, run alone: p99 1.0-1.3 ms
    // -> 1.5-6.1 ms); a timed assertion would fail whenever CI runs tests side by side. What
    // is asserted is what broke before: pushes ten times their baseline and more.
    assert!(
        flood99 < Duration::from_millis(100),
        "honest push p99 {flood99:?} under the flood, baseline {base99:?}"
    );
    node.stop().await.unwrap();
}
