//! Real processes: `gossipd` started as a binary, the `gossip` CLI as users run it, and
//! `kill -9` of both.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gossip_tests::{bin_path, random_base_port};

/// A gossipd child process; killed on drop.
struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(data: &Path, base_port: u16) -> Daemon {
        Self::start_with(data, base_port, &[])
    }

    fn start_with(data: &Path, base_port: u16, extra: &[String]) -> Daemon {
        let mut child = Command::new(bin_path("gossipd"))
            .args(["--name", "127.0.0.1", "--bind", "127.0.0.1", "--base-port"])
            .arg(base_port.to_string())
            .arg("--data-dir")
            .arg(data)
            .args(["--keepalive", "0.5", "--idle-timeout", "2"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(data.with_extension("log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("spawn gossipd");
        // The one stdout line says which base port was bound (it may have moved).
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .rsplit(' ')
            .next()
            .and_then(|p| p.trim().parse::<u16>().ok())
            .unwrap_or_else(|| panic!("unexpected gossipd output {line:?}"));
        Daemon {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gossip(home: &Path, args: &[&str]) -> String {
    let out = Command::new(bin_path("gossip"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .expect("run gossip");
    assert!(
        out.status.success(),
        "gossip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
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
    let daemon = Daemon::start(&dir.path().join("data"), random_base_port());
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let mut uids = Vec::new();
    for (home, nick) in [(&alice, "alice"), (&bob, "bob")] {
        gossip(home, &["keygen"]);
        let out = gossip(
            home,
            &[
                "--json",
                "register",
                "--server",
                &daemon.addr,
                "--nick",
                nick,
            ],
        );
        uids.push(json(&out)["uid"].as_u64().unwrap());
    }
    let (a, b) = (uids[0].to_string(), uids[1].to_string());
    gossip(&alice, &["contacts", "add", &b]);
    gossip(&bob, &["contacts", "add", &a]);

    let mut alice_watch = Command::new(bin_path("gossip"))
        .arg("--home")
        .arg(&alice)
        .args(["--json", "watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let alice_rx = watch_lines(&mut alice_watch);
    // Alice's watch starts with the snapshot of her contacts: bob, offline.
    wait_event(&alice_rx, "bob offline in snapshot", |v| {
        v["uid"] == uids[1] && v["online"] == false
    });

    let mut bob_watch = Command::new(bin_path("gossip"))
        .arg("--home")
        .arg(&bob)
        .args(["--json", "watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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
    let mut daemon = Daemon::start(&data, random_base_port());
    let home = dir.path().join("u");
    gossip(&home, &["keygen"]);
    let uid = json(&gossip(
        &home,
        &[
            "--json",
            "register",
            "--server",
            &daemon.addr,
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
    let daemon = Daemon::start(&data, random_base_port());
    // The restarted server (maybe on another port) holds everything that was acknowledged.
    let other = dir.path().join("v");
    gossip(&other, &["keygen"]);
    gossip(
        &other,
        &["register", "--server", &daemon.addr, "--nick", "v"],
    );
    gossip(
        &other,
        &[
            "--server",
            &daemon.addr,
            "contacts",
            "add",
            &uid.to_string(),
        ],
    );
    let list = json(&gossip(
        &other,
        &["--server", &daemon.addr, "--json", "contacts", "list"],
    ));
    assert_eq!(list[0]["status"], "busy");
    assert_eq!(list[0]["message"], "acknowledged 4");
    let mine = gossip(
        &home,
        &["--server", &daemon.addr, "--json", "contacts", "list"],
    );
    assert_eq!(json(&mine).as_array().unwrap().len(), 3);
}

/// Polls a `gossip` command until its JSON output satisfies `pred`.
fn wait_json(home: &Path, args: &[&str], what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
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
    // Three consecutive base ports, strict so the peer addresses are known in advance.
    let fast = [
        "--probe-interval-ms",
        "20",
        "--dead-after",
        "2",
        "--reprobe",
        "0.5",
        "--strict-ports",
    ];
    let base = random_base_port();
    let ports = [base, base + 3, base + 6];
    let start = |i: usize| {
        let mut extra: Vec<String> = fast.iter().map(|s| s.to_string()).collect();
        if i > 0 {
            extra.push("--peer".into());
            extra.push(format!("127.0.0.1:{}", ports[i - 1]));
        }
        Daemon::start_with(&dir.path().join(format!("n{i}")), ports[i], &extra)
    };
    let mut nodes: Vec<Daemon> = (0..3).map(start).collect();
    // Wait until every node's log shows the tree spanning all three.
    let logs: Vec<_> = (0..3)
        .map(|i| dir.path().join(format!("n{i}.log")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !logs.iter().all(|l| {
        let text = std::fs::read_to_string(l).unwrap_or_default();
        text.lines()
            .rev()
            .find(|line| line.contains("spanning tree recomputed"))
            .is_some_and(|line| ports.iter().all(|p| line.contains(&format!(":{p}"))))
    }) {
        assert!(
            Instant::now() < deadline,
            "the three nodes never formed a tree"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    gossip(&alice, &["keygen"]);
    gossip(&bob, &["keygen"]);
    let a = json(&gossip(
        &alice,
        &[
            "--json",
            "register",
            "--server",
            &nodes[0].addr,
            "--nick",
            "alice",
        ],
    ))["uid"]
        .as_u64()
        .unwrap();
    let b = json(&gossip(
        &bob,
        &[
            "--json",
            "register",
            "--server",
            &nodes[2].addr,
            "--nick",
            "bob",
        ],
    ))["uid"]
        .as_u64()
        .unwrap();
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
    nodes[2] = start(2);
    wait_json(
        &bob,
        &["--json", "contacts", "list"],
        "alice's new status on the restarted node",
        |v| v[0]["status"] == "busy" && v[0]["message"] == "while node 3 was dead",
    );
}
