//! `gossip-chaos`: long seeded chaos runs against real gossipd processes for release testing
//! (kill -9 and restart, graceful restarts, nodes cut off and mended; convergence checked after
//! every heal). See docs/operations.md, "Release testing".

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use gossip_tests::chaos::{self, ChaosConfig};

/// Runs the chaos scenario for each seed and reports the worst time to convergence after a heal.
///
/// Exits non-zero if any run failed to converge within --heal-deadline (the failing run's node
/// logs stay in --work-dir).
#[derive(Debug, Parser)]
#[command(name = "gossip-chaos", version)]
struct Args {
    /// Nodes in the federation.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Seconds of faults per seed.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Seeds to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5,6,7,8,9,10")]
    seeds: Vec<u64>,
    /// Users per node, each updating its status continuously.
    #[arg(long, default_value_t = 2)]
    users_per_node: usize,
    /// Shortest cut, seconds.
    #[arg(long, default_value_t = 2.0)]
    cut_min: f64,
    /// Longest cut, seconds.
    #[arg(long, default_value_t = 10.0)]
    cut_max: f64,
    /// Run the nodes with gossipd's default probe and timeout settings (cuts must then be longer
    /// than the 30 s dead timeout to produce dead marks).
    #[arg(long)]
    default_timers: bool,
    /// Seconds allowed from a heal to a converged federation.
    #[arg(long, default_value_t = 10.0)]
    heal_deadline: f64,
    /// Where the nodes' data and logs go (default: target/chaos).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep every run's node logs and data, not only a failed run's.
    #[arg(long)]
    keep: bool,
    /// Write the reports as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = args
        .work_dir
        .clone()
        .unwrap_or_else(|| gossip_tests::target_dir().join("chaos"));
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    for &seed in &args.seeds {
        let work_dir = base.join(format!("seed-{seed}"));
        let _ = std::fs::remove_dir_all(&work_dir);
        let cfg = ChaosConfig {
            nodes: args.nodes,
            seconds: args.seconds,
            seed,
            users_per_node: args.users_per_node,
            cut_ms: (
                (args.cut_min * 1000.0) as u64,
                (args.cut_max * 1000.0) as u64,
            ),
            default_timers: args.default_timers,
            heal_deadline: Duration::from_secs_f64(args.heal_deadline),
            work_dir: work_dir.clone(),
        };
        eprintln!("== seed {seed}: {} nodes, {} s", args.nodes, args.seconds);
        match chaos::run(&cfg).await {
            Ok(r) => {
                println!(
                    "seed {seed}: {} faults, {} acknowledged updates, worst convergence after a heal {} ms",
                    r.faults.len(),
                    r.acknowledged_updates,
                    r.worst_converged_ms
                );
                if !args.keep {
                    let _ = std::fs::remove_dir_all(&work_dir);
                }
                reports.push(serde_json::to_value(&r)?);
            }
            Err(e) => {
                println!(
                    "seed {seed}: FAILED: {e:#}\n(logs in {})",
                    work_dir.display()
                );
                failed.push(seed);
            }
        }
    }
    let worst = reports
        .iter()
        .filter_map(|r| r["worst_converged_ms"].as_u64())
        .max();
    println!(
        "{} of {} seeds converged after every heal; worst {} ms",
        reports.len(),
        args.seeds.len(),
        worst.map_or("-".into(), |w| w.to_string())
    );
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&reports)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    anyhow::ensure!(failed.is_empty(), "seeds that failed: {failed:?}");
    Ok(())
}
