//! A seeded chaos run against real `gossipd` processes: nodes on distinct loopback addresses
//! behind a [`Relay`], users on every node updating their status all the time, and faults one
//! after another (kill -9 and restart, graceful restart, a node cut off from all the others and
//! mended). After every fault heals, the run pauses the users and asserts that within the heal
//! deadline every node reports one tree spanning all nodes, identical database digests, and
//! every acknowledged update.
//!
//! `tests/tests/chaos.rs` runs a small one in CI; `gossip-chaos` runs long ones for release
//! testing (docs/operations.md).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use gossip_client::GossipClient;
use gossip_common::admin::AdminRequest;
use gossip_common::{Keypair, UserId};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::gossipd::{one_tree, Gossipd, Spec, StartError};
use crate::relay::{Addrs, Relay};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Nodes in the federation.
    pub nodes: usize,
    /// How long faults keep coming.
    pub seconds: u64,
    /// Seed for every choice (fault, node, durations).
    pub seed: u64,
    /// Users per node, each updating its status continuously.
    pub users_per_node: usize,
    /// Shortest and longest cut, in milliseconds.
    pub cut_ms: (u64, u64),
    /// gossipd's defaults for probing and timeouts instead of fast test timers.
    pub default_timers: bool,
    /// Longest time allowed from a heal to a converged federation.
    pub heal_deadline: Duration,
    /// Where the nodes' data directories and logs go.
    pub work_dir: PathBuf,
}

/// One fault and how long the federation took to converge after it healed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fault {
    /// `cut`, `kill9` or `restart`.
    pub kind: &'static str,
    /// The node it hit.
    pub node: usize,
    /// How long the node was cut off or down, ms.
    pub length_ms: u64,
    /// For a graceful restart, how long SIGTERM took to stop the node, ms.
    pub stop_ms: Option<u64>,
    /// From the heal to one tree, identical digests and every acknowledged update, ms.
    pub converged_ms: u64,
}

/// What a run saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChaosReport {
    /// The seed.
    pub seed: u64,
    /// Every fault, in order.
    pub faults: Vec<Fault>,
    /// The longest convergence after a heal, ms.
    pub worst_converged_ms: u64,
    /// Status updates acknowledged to the users.
    pub acknowledged_updates: u64,
}

/// Fast timers for test runs: a cut of a few seconds is long enough for dead marks.
const FAST: [&str; 6] = [
    "--probe-interval-ms",
    "100",
    "--dead-after",
    "1",
    "--reprobe",
    "1",
];

/// Users updating their status through their own node, and what was acknowledged to them.
pub struct Users {
    paused: AtomicBool,
    in_flight: AtomicUsize,
    stop: AtomicBool,
    /// Highest event count acknowledged per user.
    acked: Mutex<HashMap<UserId, u32>>,
    acked_total: AtomicU64,
}

/// Runs the chaos scenario; an error says which check failed and what the nodes reported.
pub async fn run(cfg: &ChaosConfig) -> anyhow::Result<ChaosReport> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let addrs = loopback_addrs(cfg.nodes, rng.gen_range(1..=250));
    std::fs::create_dir_all(&cfg.work_dir)?;
    let (port, relay, mut nodes) = start_federation(cfg, &addrs).await?;
    let ids: Vec<String> = nodes.iter().map(Gossipd::identity).collect();
    converge(&nodes, &ids, None, Duration::from_secs(60))
        .await
        .context("the federation never formed")?;

    let users = Arc::new(Users {
        paused: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        acked: Mutex::new(HashMap::new()),
        acked_total: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..cfg.users_per_node {
            let key = Keypair::generate();
            let (client, _events) = GossipClient::connect(&node.addr(), key.clone()).await?;
            let uid = client.register(|u| u.nick_name = "chaos".into()).await?;
            users.acked.lock().insert(uid, 0);
            tasks.push(tokio::spawn(update_forever(
                node.addr(),
                key,
                uid,
                client,
                Arc::clone(&users),
            )));
        }
    }

    let mut faults = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(cfg.seconds) {
        let i = rng.gen_range(0..cfg.nodes);
        let kind = match rng.gen_range(0..10) {
            0..=3 => "cut",
            4..=6 => "kill9",
            _ => "restart",
        };
        let (length_ms, mut stop_ms) = (rng.gen_range(cfg.cut_ms.0..=cfg.cut_ms.1), None);
        let down_ms = rng.gen_range(300..=3000);
        eprintln!(
            "chaos: {:>5.1} s: {kind} node {i}",
            t0.elapsed().as_secs_f64()
        );
        let length_ms = match kind {
            "cut" => {
                relay.cut(i);
                tokio::time::sleep(Duration::from_millis(length_ms)).await;
                relay.heal(i);
                length_ms
            }
            _ => {
                let spec = nodes[i].spec().clone().port(port);
                if kind == "kill9" {
                    nodes[i].kill9();
                } else {
                    let took =
                        tokio::task::block_in_place(|| nodes[i].terminate(Duration::from_secs(30)))
                            .with_context(|| {
                                format!("node {i} did not stop within 30 s of SIGTERM")
                            })?;
                    stop_ms = Some(took.as_millis() as u64);
                }
                tokio::time::sleep(Duration::from_millis(down_ms)).await;
                nodes[i] = restart(&spec).await?;
                down_ms
            }
        };
        let healed = Instant::now();
        users.pause().await;
        let converged = converge(&nodes, &ids, Some(&users), cfg.heal_deadline)
            .await
            .with_context(|| {
                format!(
                    "after {kind} of node {i} ({length_ms} ms), seed {}",
                    cfg.seed
                )
            })?;
        let converged_ms = converged.duration_since(healed).as_millis() as u64;
        faults.push(Fault {
            kind,
            node: i,
            length_ms,
            stop_ms,
            converged_ms,
        });
        eprintln!("chaos: converged {converged_ms} ms after the heal");
        users.paused.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..=2000))).await;
    }
    users.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    converge(&nodes, &ids, Some(&users), cfg.heal_deadline)
        .await
        .context("at the end of the run")?;
    for mut n in nodes {
        n.terminate(Duration::from_secs(10));
    }
    drop(relay);
    Ok(ChaosReport {
        seed: cfg.seed,
        worst_converged_ms: faults.iter().map(|f| f.converged_ms).max().unwrap_or(0),
        faults,
        acknowledged_updates: users.acked_total.load(Ordering::SeqCst),
    })
}

/// Public and private addresses for `n` relayed nodes in subnet 127.77.`net`.0/24 (all of
/// 127.0.0.0/8 is loopback on Linux): each run gets addresses of its own.
pub fn loopback_addrs(n: usize, net: u8) -> Vec<Addrs> {
    (0..n)
        .map(|i| Addrs {
            public: Ipv4Addr::new(127, 77, net, 10 + i as u8),
            private: Ipv4Addr::new(127, 77, net, 100 + i as u8),
        })
        .collect()
}

/// Starts the relay and the nodes on one base port reserved on every address (retried on a
/// clash). Node 0 knows nobody; the others join it. Returns the base port.
pub async fn start_federation(
    cfg: &ChaosConfig,
    addrs: &[Addrs],
) -> anyhow::Result<(u16, Relay, Vec<Gossipd>)> {
    'retry: for attempt in 1..=5 {
        let port = crate::ports::reserve_base_ports_on(addrs[0].private, 1)[0];
        let relay = match Relay::start(addrs, port).await {
            Ok(r) => r,
            Err(_) if attempt < 5 => continue,
            Err(e) => return Err(e).context("relay"),
        };
        let mut nodes: Vec<Gossipd> = Vec::new();
        for (i, a) in addrs.iter().enumerate() {
            let mut spec = Spec::new(cfg.work_dir.join(format!("node{i}")));
            spec.name = a.public.to_string();
            spec.bind = a.private.to_string();
            spec.base_port = port;
            spec.label = format!("node{i}");
            if !cfg.default_timers {
                spec.extra.extend(FAST.iter().map(|s| s.to_string()));
            }
            if i > 0 {
                spec.extra
                    .extend(["--peer".to_string(), format!("{}:{port}", addrs[0].public)]);
            }
            match Gossipd::start(&spec) {
                Ok(n) => nodes.push(n),
                Err(StartError::PortTaken { .. }) if attempt < 5 => continue 'retry,
                Err(e) => return Err(e.into()),
            }
        }
        return Ok((port, relay, nodes));
    }
    bail!("no free base port for the chaos federation")
}

/// Restarts a node on its own port (its identity), retrying a bind clash for a few seconds.
async fn restart(spec: &Spec) -> anyhow::Result<Gossipd> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::task::block_in_place(|| Gossipd::start(spec)) {
            Ok(n) => return Ok(n),
            Err(StartError::PortTaken { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until every node reports one tree over all `ids` with its links, identical digests,
/// and (when `users` is given) every acknowledged update; returns when it first held.
pub async fn converge(
    nodes: &[Gossipd],
    ids: &[String],
    users: Option<&Users>,
    deadline: Duration,
) -> anyhow::Result<Instant> {
    let give_up = Instant::now() + deadline;
    let mut last;
    loop {
        let statuses: Vec<serde_json::Value> = tokio::task::block_in_place(|| {
            nodes
                .iter()
                .map(|n| n.status().unwrap_or_default())
                .collect()
        });
        let digests: Vec<&serde_json::Value> = statuses.iter().map(|s| &s["digest"]).collect();
        let same_data = digests.iter().all(|d| !d.is_null() && *d == digests[0]);
        if one_tree(&statuses, ids) && same_data {
            match users {
                None => return Ok(Instant::now()),
                Some(users) => match missing_update(nodes, users) {
                    None => return Ok(Instant::now()),
                    Some(m) => last = m,
                },
            }
        } else {
            last = format!("{:#}", serde_json::Value::from(statuses));
        }
        if Instant::now() > give_up {
            bail!("not converged within {deadline:?}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first acknowledged update some node lacks, described; `None` if every node has all.
fn missing_update(nodes: &[Gossipd], users: &Users) -> Option<String> {
    let acked = users.acked.lock().clone();
    tokio::task::block_in_place(|| {
        for (i, n) in nodes.iter().enumerate() {
            for (uid, ec) in &acked {
                let held = n
                    .admin(&AdminRequest::User { uid: uid.0 })
                    .ok()
                    .and_then(|u| u["event_count"].as_u64());
                if held.is_none_or(|h| h < u64::from(*ec)) {
                    return Some(format!(
                        "node {i} holds event count {held:?} of user {uid}, {ec} was acknowledged"
                    ));
                }
            }
        }
        None
    })
}

impl Users {
    /// Stops new updates and waits for the ones in flight.
    async fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Sets a new status message every ~50 ms through `addr`, logging in again whenever the node
/// went away, and records every acknowledged event count.
async fn update_forever(
    addr: String,
    key: Keypair,
    uid: UserId,
    mut client: GossipClient,
    users: Arc<Users>,
) {
    let mut n = 0u64;
    while !users.stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        users.in_flight.fetch_add(1, Ordering::SeqCst);
        if users.paused.load(Ordering::SeqCst) {
            users.in_flight.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        n += 1;
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            client.set_status("online", Some(&format!("update {n}"))),
        )
        .await;
        match r {
            Ok(Ok(())) => {
                if let Some(me) = client.me() {
                    let mut acked = users.acked.lock();
                    let e = acked.entry(uid).or_insert(0);
                    *e = (*e).max(me.event_count.count);
                    users.acked_total.fetch_add(1, Ordering::SeqCst);
                }
                users.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            _ => {
                users.in_flight.fetch_sub(1, Ordering::SeqCst);
                // The node is down or restarting: log in again once it is back.
                loop {
                    if users.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok((c, _events)) = GossipClient::connect(&addr, key.clone()).await {
                        if c.login(uid).await.is_ok() {
                            client = c;
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
