//! Chaos with real processes: kills, restarts and cut cables, healing every time (see
//! `gossip_tests::chaos`). Seeded; `GOSSIP_CHAOS_SEED` and `GOSSIP_CHAOS_SECONDS` override the
//! CI size, and `gossip-chaos` runs long ones.

use std::time::{Duration, Instant};

use gossip_tests::gossipd::{Gossipd, Spec};

use gossip_tests::chaos::{self, ChaosConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_heal_after_every_kill_restart_and_cut() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = ChaosConfig {
        nodes: 5,
        seconds: env("GOSSIP_CHAOS_SECONDS", 30),
        seed: env("GOSSIP_CHAOS_SEED", 1),
        users_per_node: 2,
        cut_ms: (2_000, 6_000),
        default_timers: false,
        heal_deadline: Duration::from_secs(10),
        work_dir: dir.path().to_owned(),
    };
    let report = chaos::run(&cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(!report.faults.is_empty(), "no fault was injected");
    assert!(
        report.acknowledged_updates > 0,
        "no update was acknowledged"
    );
    assert!(report.worst_converged_ms <= 10_000, "{report:?}");
}

/// The first node of a network has no `--peer`: nothing but the others' probes and its own can
/// bring it back after a cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_node_cut_off_for_six_seconds_rejoins_without_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ChaosConfig {
        nodes: 3,
        seconds: 0,
        seed: 0,
        users_per_node: 0,
        cut_ms: (0, 0),
        default_timers: false,
        heal_deadline: Duration::from_secs(10),
        work_dir: dir.path().to_owned(),
    };
    let addrs = chaos::loopback_addrs(3, rand::random::<u8>().max(1));
    let (_port, relay, nodes) = chaos::start_federation(&cfg, &addrs).await.unwrap();
    let ids: Vec<String> = nodes.iter().map(|n| n.identity()).collect();
    chaos::converge(&nodes, &ids, None, Duration::from_secs(30))
        .await
        .expect("the federation forms");
    relay.cut(0);
    // Long enough for every side to mark the other dead (dead timeout 1 s with these timers).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let cut_view = nodes[1].status().unwrap();
    assert!(
        cut_view["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == ids[0].as_str() && p["alive"] == false),
        "the cut was not noticed: {cut_view}"
    );
    relay.heal(0);
    let healed = std::time::Instant::now();
    chaos::converge(&nodes, &ids, None, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "first node back in the tree {:?} after the heal",
        healed.elapsed()
    );
}

/// A peer that answers RTT probes but, once a link is opened to it, never says a word: the
/// dialler's handshake stays pending (as with a peer behind a cut cable).
struct SilentPeer {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _held: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

fn silent_peer() -> SilentPeer {
    use std::sync::atomic::Ordering;
    for _ in 0..10 {
        let port = gossip_tests::ports::reserve_base_ports(1)[0];
        let (Ok(tcp), Ok(udp)) = (
            std::net::TcpListener::bind(("127.0.0.1", port + 1)),
            std::net::UdpSocket::bind(("127.0.0.1", port + 2)),
        ) else {
            continue;
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        });
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a, h) = (accepted.clone(), held.clone());
        std::thread::spawn(move || {
            for s in tcp.incoming().flatten() {
                h.lock().unwrap().push(s);
                a.fetch_add(1, Ordering::SeqCst);
            }
        });
        return SilentPeer {
            port,
            accepted,
            _held: held,
        };
    }
    panic!("no free port for the silent peer");
}

#[test]
fn sigterm_with_a_handshake_pending_stops_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let peer = silent_peer();
    let spec = Spec::new(dir.path().join("n")).args([
        "--probe-interval-ms".to_string(),
        "20".into(),
        "--peer".into(),
        format!("127.0.0.1:{}", peer.port),
    ]);
    let mut node = Gossipd::start(&spec).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while peer.accepted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the node never dialled its tree neighbour"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = node
        .terminate(Duration::from_secs(15))
        .expect("gossipd stopped on SIGTERM");
    eprintln!("stopped {took:?} after SIGTERM with a handshake pending");
    assert!(took < Duration::from_secs(1), "stopping took {took:?}");
}

#[test]
fn two_nodes_that_blacklist_each_other_do_not_redial() {
    let dir = tempfile::tempdir().unwrap();
    let net = rand::random::<u8>().max(1);
    let ip = |i: u8| std::net::Ipv4Addr::new(127, 78, net, i);
    let port = gossip_tests::ports::reserve_base_ports_on(ip(1), 1)[0];
    let start = |i: u8, other: u8| {
        let config = dir.path().join(format!("n{i}.toml"));
        std::fs::write(&config, format!("blacklist = [\"{}\"]\n", ip(other))).unwrap();
        let mut spec = Spec::new(dir.path().join(format!("n{i}"))).args([
            "--config".to_string(),
            config.display().to_string(),
            "--probe-interval-ms".into(),
            "20".into(),
            "--dead-after".into(),
            "1".into(),
            "--reprobe".into(),
            "0.5".into(),
            "--peer".into(),
            format!("{}:{port}", ip(other)),
        ]);
        spec.name = ip(i).to_string();
        spec.bind = ip(i).to_string();
        spec.base_port = port;
        Gossipd::start(&spec).unwrap_or_else(|e| panic!("{e}"))
    };
    let (a, b) = (start(1, 2), start(2, 1));
    // Let them try whatever they would try.
    std::thread::sleep(Duration::from_secs(2));
    let lines = |n: &Gossipd| {
        std::fs::read_to_string(n.spec().log_path())
            .unwrap()
            .lines()
            .count()
    };
    let (lines0, cpu0) = (lines(&a) + lines(&b), a.cpu_seconds() + b.cpu_seconds());
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    let (log_lines, cpu) = (
        lines(&a) + lines(&b) - lines0,
        a.cpu_seconds() + b.cpu_seconds() - cpu0,
    );
    eprintln!(
        "two mutually blacklisted nodes over {window:?}: {log_lines} log lines, {cpu:.2} CPU s"
    );
    assert!(
        log_lines <= 10,
        "{log_lines} log lines:\n{}",
        a.log_tail(20)
    );
    assert!(cpu < 0.3, "{cpu} CPU seconds in {window:?}");
    for (n, other) in [(&a, &b), (&b, &a)] {
        let s = n.status().unwrap();
        let peer = s["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == other.identity().as_str())
            .cloned()
            .unwrap_or_default();
        assert_eq!(peer["linked"], false, "{s}");
        assert_eq!(peer["alive"], false, "a refused server counts as dead: {s}");
    }
}
