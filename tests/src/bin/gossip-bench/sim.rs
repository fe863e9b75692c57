//! Scenario `sim`: the federation at sizes no machine here could run as processes, in the
//! cluster simulator (`gossip_server::sim`): real nodes on an in-memory network, on simulated
//! time, gossipd's default timers. Per size: simulated time until every server holds the
//! minimum spanning tree of the true RTTs after start, after one RTT change and after one
//! server dies; control-plane bytes per server per minute in steady state; the RTT matrix each
//! server holds; and the wall and CPU time the simulation took. Then seeded chaos on the
//! smallest size, reporting the worst heal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gossip_server::mst::ServerId;
use gossip_server::sim::{self, Cluster};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::report::{self, Table};
use crate::Args;

/// Bytes one RTT row cell takes in memory, roughly: the measured server's key (a `String` of
/// about 12 bytes plus its 24-byte header and the port), the `Option<u64>`, and the B-tree's
/// share of node overhead.
const CELL_BYTES: usize = 96;

/// Runs the scenario.
pub(crate) fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let mut t = Table::new(
        "sim: simulated federation, default timers (times are simulated)",
        &[
            "servers",
            "tree after start s",
            "after RTT change s",
            "after a death s",
            "after a silence s",
            "control B/server/min",
            "matrix cells/server",
            "matrix MB/server",
            "wall s",
            "CPU s",
        ],
    );
    let _ = OUT.set(args.out.clone());
    // Chaos on the smallest size: the worst heal after a cut, a crash or an RTT change.
    let chaos_n = args.sim_sizes.iter().copied().min().unwrap_or(20).min(50);
    report::phase(&format!("sim: seeded chaos on {chaos_n} servers"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    let healed = rt.block_on(chaos(args, chaos_n))?;
    let worst = healed
        .iter()
        .filter(|h| h.kind != "rtt")
        .map(|h| h.took.as_secs_f64())
        .fold(0.0, f64::max);
    println!(
        "sim chaos: {} faults on {chaos_n} servers; worst heal {worst:.1} s (simulated)",
        healed.len()
    );
    if let Ok(mut p) = PARTIAL.lock() {
        p.push(
            json!({"chaos": {"servers": chaos_n, "faults": healed.len(), "worst_heal_s": worst}}),
        );
    }
    let mut results = Vec::new();
    let avail_kib = mem_available_kib();
    for &n in &args.sim_sizes {
        // Every simulated server holds the whole matrix: n² cells each, n servers.
        let need_mb = (n * n * n * CELL_BYTES) as f64 / 1e6;
        if need_mb > avail_kib as f64 / 1024.0 * 0.7 {
            report::phase(&format!(
                "sim: {n} servers skipped: their matrices alone need about {:.0} GB here",
                need_mb / 1000.0
            ));
            results.push(json!({"servers": n, "skipped": format!("needs about {:.0} GB for {n} copies of the {n}x{n} matrix", need_mb / 1000.0)}));
            continue;
        }
        report::phase(&format!("sim: {n} servers"));
        let (wall0, cpu0) = (Instant::now(), process_cpu_s());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()?;
        // A watchdog: the simulation stops (and says so) before it can exhaust the machine.
        let limit_kib = avail_kib * 6 / 10;
        let guard = MemoryGuard::start(limit_kib);
        let outcome = rt.block_on(one(args, n, &guard.tripped));
        let peak_kib = guard.stop();
        drop(rt);
        let (wall, cpu) = (wall0.elapsed().as_secs_f64(), process_cpu_s() - cpu0);
        let r = match outcome {
            Ok(r) => r,
            Err(e) => {
                let why = format!(
                    "stopped after {wall:.0} s wall, {cpu:.0} s CPU, {:.1} GB resident: {e:#}",
                    peak_kib as f64 / 1e6
                );
                println!("sim: {n} servers {why}");
                results.push(json!({"servers": n, "stopped": why, "peak_rss_kib": peak_kib, "wall_s": wall, "cpu_s": cpu}));
                continue;
            }
        };
        println!(
            "sim: {n} servers: tree after start {:.1} s, after an RTT change {:.1} s, after a death {:.1} s, after a silence {:.1} s (simulated); {:.0} control bytes/server/min; {} matrix cells/server; {wall:.1} s wall, {cpu:.1} s CPU, peak {:.2} GB resident",
            r.start_s, r.rtt_change_s, r.death_s, r.silence_s, r.control_bytes_per_server_min, r.cells_per_server, peak_kib as f64 / 1e6
        );
        t.row(vec![
            n.to_string(),
            format!("{:.1}", r.start_s),
            format!("{:.1}", r.rtt_change_s),
            format!("{:.1}", r.death_s),
            format!("{:.1}", r.silence_s),
            format!("{:.0}", r.control_bytes_per_server_min),
            r.cells_per_server.to_string(),
            format!("{:.2}", r.cells_per_server as f64 * CELL_BYTES as f64 / 1e6),
            format!("{wall:.1}"),
            format!("{cpu:.1}"),
        ]);
        results.push(json!({
            "servers": n,
            "tree_after_start_s": r.start_s,
            "tree_after_rtt_change_s": r.rtt_change_s,
            "tree_after_death_s": r.death_s,
            "tree_after_silence_s": r.silence_s,
            "control_bytes_per_server_per_min": r.control_bytes_per_server_min,
            "matrix_cells_per_server": r.cells_per_server,
            "matrix_bytes_per_server_est": r.cells_per_server * CELL_BYTES,
            "wall_s": wall,
            "cpu_s": cpu,
            "peak_rss_kib": peak_kib,
        }));
        if let Ok(mut p) = PARTIAL.lock() {
            p.push(results.last().cloned().unwrap_or_default());
        }
    }
    t.print();
    Ok(json!({
        "scenario": "sim",
        "sizes": results,
        "chaos": {"servers": chaos_n, "faults": healed.len(), "worst_heal_s": worst},
        "targets": [report::target("sim_worst_heal", "<= 10 s simulated after every heal", worst, "s", "<=", 10.0, true)],
    }))
}

struct One {
    start_s: f64,
    rtt_change_s: f64,
    death_s: f64,
    silence_s: f64,
    control_bytes_per_server_min: f64,
    cells_per_server: usize,
}

/// A cluster of `n` with seeded random RTTs of 1–100 ms, everyone joining server 0.
fn cluster(dir: &std::path::Path, n: usize, seed: u64) -> anyhow::Result<Cluster> {
    let mut c = Cluster::new(dir, Duration::from_millis(50));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..n {
        for j in i + 1..n {
            c.net.set_rtt(
                &Cluster::key(i),
                &Cluster::key(j),
                Duration::from_micros(rng.gen_range(1_000..100_000)),
            );
        }
    }
    for i in 0..n {
        let peers: Vec<ServerId> = if i == 0 {
            vec![]
        } else {
            vec![Cluster::key(0)]
        };
        c.add(&Cluster::key(i), &peers)?;
    }
    Ok(c)
}

/// Waits until every server holds the MST of the true RTTs; simulated seconds.
async fn settle(c: &Cluster, what: &str, stop: &AtomicBool) -> anyhow::Result<f64> {
    let took = c
        .wait(Duration::from_secs(3600), |c| {
            if stop.load(Ordering::Relaxed) {
                return true;
            }
            let want = c.expected_tree();
            c.one_tree()
                && c.running()
                    .next()
                    .is_some_and(|(_, n)| n.federation.status().tree == want)
        })
        .await
        .map(|d| d.as_secs_f64())
        .ok_or_else(|| anyhow::anyhow!("no agreement on the tree within an hour {what}"))?;
    anyhow::ensure!(
        !stop.load(Ordering::Relaxed),
        "resident memory passed the limit {what}"
    );
    Ok(took)
}

/// Where the report goes, for the memory guard.
static OUT: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// Results of the sizes done so far, for a report when the memory guard stops the run.
static PARTIAL: std::sync::Mutex<Vec<serde_json::Value>> = std::sync::Mutex::new(Vec::new());

/// Watches this process's resident memory from a thread of its own (the simulation's clock is
/// not wall time) and trips when it passes a limit.
struct MemoryGuard {
    tripped: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemoryGuard {
    fn start(limit_kib: u64) -> MemoryGuard {
        let (tripped, done, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (t, d, p) = (tripped.clone(), done.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                let rss = gossip_tests::gossipd::rss_kib(std::process::id());
                p.fetch_max(rss, Ordering::Relaxed);
                if rss > limit_kib {
                    t.store(true, Ordering::Relaxed);
                    // A simulation this large keeps its one thread busy, so nothing would look
                    // at the flag in time: report here and stop the process before the machine
                    // runs out of memory.
                    let why = format!(
                        "stopped: resident memory reached {:.1} GB (limit {:.1} GB)",
                        rss as f64 / 1e6,
                        limit_kib as f64 / 1e6
                    );
                    let done = PARTIAL.lock().map(|p| p.clone()).unwrap_or_default();
                    let report = json!({"scenario": "sim", "results": done, "stopped": why});
                    println!("sim: {why}; results so far: {report}");
                    if let Some(out) = OUT.get().cloned().flatten() {
                        let _ = std::fs::write(&out, format!("{report:#}"));
                        println!("report written to {}", out.display());
                    }
                    // The stop is the result for this size (it does not fit this machine).
                    std::process::exit(0);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        MemoryGuard {
            tripped,
            done,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops watching; the peak resident memory seen, KiB.
    fn stop(mut self) -> u64 {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

async fn one(args: &Args, n: usize, stop: &AtomicBool) -> anyhow::Result<One> {
    let dir = data_dir()?;
    let mut c = cluster(dir.path(), n, args.seed)?;
    let start_s = settle(&c, "after start", stop).await?;
    // Steady state: a minute of whatever keeps flowing (pings, rows of unchanged RTTs: none).
    let b0 = c.net.link_bytes();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let control = (c.net.link_bytes() - b0) as f64 / n as f64;
    let cells = c
        .running()
        .next()
        .map(|(_, node)| node.federation.matrix_size().1)
        .unwrap_or(0);
    // One RTT change: a tree edge becomes ten times slower.
    let tree = c.expected_tree();
    let (a, b) = tree.first().cloned().expect("a tree");
    let key = |s: &str| -> ServerId {
        let (h, p) = s.rsplit_once(':').expect("host:port");
        (h.to_owned(), p.parse().expect("port"))
    };
    let (ka, kb) = (key(&a), key(&b));
    let slower = c.net.rtt(&ka, &kb) * 10;
    c.net.set_rtt(&ka, &kb, slower);
    let rtt_change_s = settle(&c, "after an RTT change", stop).await?;
    // One server dies (not server 0, which everyone joined through).
    let victim = Cluster::key(n / 2);
    let died = tokio::time::Instant::now();
    c.crash(&victim).await;
    settle(&c, "after a server died", stop).await?;
    let death_s = died.elapsed().as_secs_f64();
    // Another one goes silent (a frozen process, a pulled cable: nothing refuses, links stall):
    // the time until every other server's tree leaves it out, and they agree.
    let silent = Cluster::key(n / 3);
    let gone = gossip_server::mst::id_string(&silent);
    let quiet = tokio::time::Instant::now();
    c.net.cut(&silent);
    c.wait(Duration::from_secs(3600), |c| {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        let mut trees = c
            .running()
            .filter(|(k, _)| **k != silent)
            .map(|(_, n)| n.federation.status().tree);
        let Some(first) = trees.next() else {
            return true;
        };
        first.len() + 2 == c.running().count()
            && !first.iter().any(|(a, b)| *a == gone || *b == gone)
            && trees.all(|t| t == first)
    })
    .await
    .ok_or_else(|| anyhow::anyhow!("the silent server never left the tree"))?;
    anyhow::ensure!(
        !stop.load(Ordering::Relaxed),
        "resident memory passed the limit after a silence"
    );
    let silence_s = quiet.elapsed().as_secs_f64();
    c.stop().await;
    Ok(One {
        start_s,
        rtt_change_s,
        death_s,
        silence_s,
        control_bytes_per_server_min: control,
        cells_per_server: cells,
    })
}

async fn chaos(args: &Args, n: usize) -> anyhow::Result<Vec<sim::Healed>> {
    let dir = data_dir()?;
    let mut c = cluster(dir.path(), n, args.seed)?;
    settle(&c, "before chaos", &AtomicBool::new(false)).await?;
    let faults = if args.quick { 6 } else { 20 };
    let healed = sim::chaos(&mut c, args.seed, faults, Duration::from_secs(10))
        .await
        .map_err(anyhow::Error::msg)?;
    c.stop().await;
    Ok(healed)
}

/// The simulated servers' datafiles: on tmpfs when there is one.
fn data_dir() -> anyhow::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("gossip-sim-")
            .tempdir_in(shm)
        {
            return Ok(d);
        }
    }
    Ok(tempfile::tempdir()?)
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn process_cpu_s() -> f64 {
    gossip_tests::gossipd::cpu_seconds(std::process::id())
}
