//! Real processes: `gossipd` started as a binary, the `gossip` CLI as users run it, and
//! `kill -9` of both.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gossip_tests::bin_path;
use gossip_tests::gossipd::{one_tree, Gossipd, Spec};

/// A node for these tests: short client timers, kernel-chosen ports unless `spec` says.
pub(crate) fn spec(data: &Path) -> Spec {
    Spec::new(data).args(["--keepalive", "0.5", "--idle-timeout", "2"])
}

pub(crate) fn start(spec: &Spec) -> Gossipd {
    Gossipd::start(spec).unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn gossip(home: &Path, args: &[&str]) -> String {
    gossip_tests::gossip_cli(home, args)
}

pub(crate) fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A new profile at `home`: a key, registered as `nick` on `node`; returns the UserID.
pub(crate) fn keygen_and_register(home: &Path, nick: &str, node: &Gossipd) -> u64 {
    keygen_and_register_with(home, nick, node, &[])
}

/// [`keygen_and_register`], with more `register` arguments (`--name`, `--email`, …).
pub(crate) fn keygen_and_register_with(
    home: &Path,
    nick: &str,
    node: &Gossipd,
    more: &[&str],
) -> u64 {
    gossip(home, &["keygen"]);
    let server = node.addr();
    let mut args = vec!["--json", "register", "--server", &server, "--nick", nick];
    args.extend_from_slice(more);
    json(&gossip(home, &args))["uid"].as_u64().unwrap()
}

/// Starts `gossip --json watch` for the profile at `home`, its output piped.
fn watch(home: &Path) -> Child {
    Command::new(bin_path("gossip"))
        .arg("--home")
        .arg(home)
        .args(["--json", "watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Reads lines from a `gossip watch --json` child on a thread, so tests can wait on them with a
/// deadline.
fn watch_lines(child: &mut Child) -> mpsc::Receiver<serde_json::Value> {
    let (tx, rx) = mpsc::channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

fn wait_event(
    rx: &mpsc::Receiver<serde_json::Value>,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if pred(&v) => return,
            Ok(_) => continue,
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

#[test]
fn cli_users_see_each_other_and_a_killed_client_goes_offline() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(&spec(&dir.path().join("data")));
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let mut uids = Vec::new();
    for (home, nick) in [(&alice, "alice"), (&bob, "bob")] {
        uids.push(keygen_and_register(home, nick, &daemon));
    }
    let (a, b) = (uids[0].to_string(), uids[1].to_string());
    gossip(&alice, &["contacts", "add", &b]);
    gossip(&bob, &["contacts", "add", &a]);

    let mut alice_watch = watch(&alice);
    let alice_rx = watch_lines(&mut alice_watch);
    // Alice's watch starts with the snapshot of her contacts: bob, offline.
    wait_event(&alice_rx, "bob offline in snapshot", |v| {
        v["uid"] == uids[1] && v["online"] == false
    });

    let mut bob_watch = watch(&bob);
    let _bob_rx = watch_lines(&mut bob_watch);
    wait_event(&alice_rx, "bob online", |v| {
        v["uid"] == uids[1] && v["status"] == "online"
    });

    // A one-shot CLI command for bob changes his status while his watch runs.
    gossip(&bob, &["set-status", "away", "--message", "lunch"]);
    wait_event(&alice_rx, "bob away", |v| {
        v["uid"] == uids[1] && v["status"] == "away" && v["message"] == "lunch"
    });
    let list = json(&gossip(&alice, &["--json", "contacts", "list"]));
    assert_eq!(list[0]["status"], "away");

    // Bob's client process is killed: his contacts see him offline (last will).
    let t0 = Instant::now();
    bob_watch.kill().unwrap();
    bob_watch.wait().unwrap();
    wait_event(&alice_rx, "bob offline after kill -9", |v| {
        v["uid"] == uids[1] && v["online"] == false
    });
    eprintln!("killed client shown offline after {:?}", t0.elapsed());
    let list = json(&gossip(&alice, &["--json", "contacts", "list"]));
    assert_eq!(list[0]["online"], false);
    let _ = alice_watch.kill();
    let _ = alice_watch.wait();
    drop(daemon);
}

#[test]
fn server_kill_9_keeps_every_acknowledged_update() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut daemon = start(&spec(&data));
    let home = dir.path().join("u");
    gossip(&home, &["keygen"]);
    let uid = json(&gossip(
        &home,
        &[
            "--json",
            "register",
            "--server",
            &daemon.addr(),
            "--nick",
            "u",
        ],
    ))["uid"]
        .as_u64()
        .unwrap();
    for i in 0..5 {
        gossip(
            &home,
            &[
                "set-status",
                "busy",
                "--message",
                &format!("acknowledged {i}"),
            ],
        );
    }
    gossip(&home, &["contacts", "add", "1", "2", "3"]);
    daemon.kill9();
    let daemon = start(&spec(&data));
    // The restarted server (maybe on another port) holds everything that was acknowledged.
    let other = dir.path().join("v");
    gossip(&other, &["keygen"]);
    gossip(
        &other,
        &["register", "--server", &daemon.addr(), "--nick", "v"],
    );
    gossip(
        &other,
        &[
            "--server",
            &daemon.addr(),
            "contacts",
            "add",
            &uid.to_string(),
        ],
    );
    let list = json(&gossip(
        &other,
        &["--server", &daemon.addr(), "--json", "contacts", "list"],
    ));
    assert_eq!(list[0]["status"], "busy");
    assert_eq!(list[0]["message"], "acknowledged 4");
    let mine = gossip(
        &home,
        &["--server", &daemon.addr(), "--json", "contacts", "list"],
    );
    assert_eq!(json(&mine).as_array().unwrap().len(), 3);
}

/// Polls a `gossip` command until its JSON output satisfies `pred`.
pub(crate) fn wait_json(
    home: &Path,
    args: &[&str],
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(bin_path("gossip"))
            .arg("--home")
            .arg(home)
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                if pred(&v) {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_killed_with_sigkill_catches_up_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Node i joins node i-1, so each is started once its predecessor's (kernel-chosen) port is
    // known; node 3 keeps its port across the restart, since the port is part of its identity.
    let mut nodes: Vec<Gossipd> = Vec::new();
    for i in 0..3 {
        let mut s = spec(&dir.path().join(format!("n{i}"))).fast_probes();
        if let Some(prev) = nodes.last() {
            s = s.args(["--peer".to_string(), prev.identity()]);
        }
        nodes.push(start(&s));
    }
    let ids: Vec<String> = nodes.iter().map(Gossipd::identity).collect();
    wait_tree(&nodes, &ids, "the three nodes to form one tree");
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let a = keygen_and_register(&alice, "alice", &nodes[0]);
    let b = keygen_and_register(&bob, "bob", &nodes[2]);
    assert_ne!(a, b);
    gossip(&bob, &["contacts", "add", &a.to_string()]);
    // Alice's record reaches bob's node across the federation.
    wait_json(
        &bob,
        &["--json", "contacts", "list"],
        "alice's record on node 3",
        |v| v[0]["nick"] == "alice",
    );

    // Bob's node dies hard; Alice changes her status meanwhile.
    nodes[2].kill9();
    gossip(
        &alice,
        &["set-status", "busy", "--message", "while node 3 was dead"],
    );

    // Node 3 restarts on its data directory and catches up from its neighbour.
    let again = nodes[2].spec().clone().port(nodes[2].base_port);
    nodes[2] = restart(&again);
    wait_tree(&nodes, &ids, "the restarted node back in the tree");
    wait_json(
        &bob,
        &["--json", "contacts", "list"],
        "alice's new status on the restarted node",
        |v| v[0]["status"] == "busy" && v[0]["message"] == "while node 3 was dead",
    );
}

/// Restarts a node on its own port (its identity). Nothing else should hold that port, but a
/// bind failure is retried for a few seconds rather than failing the test on chance.
fn restart(spec: &Spec) -> Gossipd {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Gossipd::start(spec) {
            Ok(node) => return node,
            Err(e @ gossip_tests::gossipd::StartError::PortTaken { .. }) => {
                assert!(Instant::now() < deadline, "{e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Waits until every node reports (through its admin socket) one tree spanning all of `ids`
/// and a link to each of its tree neighbours.
pub(crate) fn wait_tree(nodes: &[Gossipd], ids: &[String], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let statuses: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| n.status().unwrap_or_default())
            .collect();
        if one_tree(&statuses, ids) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {statuses:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_failing_test_keeps_the_logs_of_its_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&spec(&dir.path().join("evidence-node")));
    let identity = node.identity();
    // A test that fails while its node runs: the node is dropped during the unwind.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _node = node;
        panic!("deliberate failure");
    }));
    assert!(outcome.is_err());
    let kept = gossip_tests::target_dir()
        .join("test-logs")
        .join("processes-a_failing_test_keeps_the_logs_of_its_nodes")
        .join("evidence-node.log");
    let log = std::fs::read_to_string(&kept)
        .unwrap_or_else(|e| panic!("no evidence at {}: {e}", kept.display()));
    assert!(log.contains("listening"), "{log}");
    assert!(log.contains(&identity), "{log}");
    let _ = std::fs::remove_file(kept);
}

#[test]
fn base_port_zero_reports_its_ports_on_stdout_and_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n");
    let node = start(&spec(&data));
    let ports: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("ports.json")).unwrap()).unwrap();
    assert_eq!(ports["client"], node.base_port);
    assert_eq!(ports["server"], node.base_port + 1);
    assert_eq!(ports["rtt"], node.base_port + 2);
    assert_eq!(ports["identity"], node.identity());
    assert_eq!(ports["pid"], node.pid());
    // And the node really serves there.
    assert_eq!(node.status().unwrap()["base_port"], node.base_port);
    std::net::TcpStream::connect(("127.0.0.1", node.base_port + 1)).expect("server port");
    // A second node asking for the first one's port strictly is told the port is taken.
    let taken = Gossipd::start(&spec(&dir.path().join("m")).port(node.base_port));
    assert!(
        matches!(
            taken,
            Err(gossip_tests::gossipd::StartError::PortTaken { .. })
        ),
        "{:?}",
        taken.err().map(|e| e.to_string())
    );
}

/// `gossip watch` outlives its server: given only node 0, it learns node 1 from it, keeps it in
/// the profile, and when node 0 is killed it logs in to node 1 and says so; pushes reach it
/// there. Prodserver's notice reaches it too.
#[test]
fn gossip_watch_fails_over_when_its_server_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut n0 = start(&spec(&dir.path().join("n0")).fast_probes());
    let n1 = start(
        &spec(&dir.path().join("n1"))
            .fast_probes()
            .args(["--peer".to_string(), n0.identity()]),
    );
    let ids = [n0.identity(), n1.identity()];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !one_tree(
        &[
            n0.status().unwrap_or_default(),
            n1.status().unwrap_or_default(),
        ],
        &ids,
    ) {
        assert!(Instant::now() < deadline, "no tree");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let mut uids = Vec::new();
    for (home, nick, node) in [(&alice, "alice", &n0), (&bob, "bob", &n1)] {
        uids.push(keygen_and_register(home, nick, node));
    }
    gossip(&alice, &["contacts", "add", &uids[1].to_string()]);
    let mut child = watch(&alice);
    let rx = watch_lines(&mut child);
    wait_event(&rx, "connected to n0", |v| {
        v["event"] == "connected" && v["server"] == n0.addr()
    });
    // The learned servers are saved in the profile.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(alice.join("profile.toml"))
        .unwrap_or_default()
        .contains(&n1.addr())
    {
        assert!(
            Instant::now() < deadline,
            "node 1 never saved in the profile"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    n0.admin(&gossip_common::admin::AdminRequest::Notice {
        text: "going down for maintenance".into(),
    })
    .unwrap();
    wait_event(&rx, "the notice", |v| {
        v["event"] == "servermsg" && v["text"] == "going down for maintenance"
    });

    let t0 = Instant::now();
    n0.kill9();
    wait_event(&rx, "reconnected to n1", |v| {
        v["event"] == "reconnected" && v["server"] == n1.addr()
    });
    let reconnected = t0.elapsed();
    gossip(
        &bob,
        &["set-status", "away", "--message", "after the failover"],
    );
    wait_event(&rx, "bob's change pushed after the failover", |v| {
        v["uid"] == uids[1] && v["message"] == "after the failover"
    });
    eprintln!(
        "gossip watch reconnected {reconnected:?} after its server was killed; pushes again after {:?}",
        t0.elapsed()
    );
    assert!(reconnected < Duration::from_secs(3), "{reconnected:?}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn cli_messages_reach_a_user_who_only_registered_encrypted_and_kept_in_history() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(&spec(&dir.path().join("data")));
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let a = keygen_and_register(&alice, "alice", &daemon).to_string();
    let b = keygen_and_register(&bob, "bob", &daemon).to_string();
    // Bob has only registered: his encryption keys went out with his first record, so Alice
    // can write to him before he ever logs in. The servers keep it for him.
    let sent = json(&gossip(
        &alice,
        &["--json", "send", &b, "meet at the fountain"],
    ));
    let id = sent["sent"].as_str().unwrap().to_owned();
    gossip(&bob, &["contacts", "add", &a]);
    // Bob comes back: the message is decrypted and shown.
    let mut bob_watch = watch(&bob);
    let bob_rx = watch_lines(&mut bob_watch);
    wait_event(&bob_rx, "the message at bob", |v| {
        v["event"] == "message" && v["text"] == "meet at the fountain" && v["encrypted"] == true
    });
    // Alice was offline when it was delivered: she is told at her next login.
    let mut alice_watch = watch(&alice);
    let alice_rx = watch_lines(&mut alice_watch);
    wait_event(&alice_rx, "delivered at alice", |v| {
        v["event"] == "delivered" && v["id"] == id.as_str()
    });
    for c in [&mut alice_watch, &mut bob_watch] {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Both histories hold the conversation, Alice's with the delivery.
    let line = |home: &Path, peer: &str| json(&gossip(home, &["--json", "history", peer]));
    let mine = line(&alice, &b);
    assert_eq!(
        (mine["outgoing"].as_bool(), mine["state"].as_str()),
        (Some(true), Some("delivered"))
    );
    let theirs = line(&bob, &a);
    assert_eq!(theirs["text"], "meet at the fountain");
    assert_eq!(theirs["state"], "received");
    // The server's files hold no plaintext.
    for entry in std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .flatten()
    {
        if entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                !bytes.windows(8).any(|w| w == b"fountain"),
                "{} holds the plaintext",
                entry.path().display()
            );
        }
    }
    drop(daemon);
}
