//! `gossip-bench`: Gossip's benchmark tool. Starts real `gossipd` processes on loopback, drives
//! them with real clients (the client library), prints a table per scenario and writes a JSON
//! report. See `docs/performance.md` for how to run it and the latest figures.
//!
//! By default the servers are pinned to CPU 0 and the load generator to CPU 1, and each side's
//! CPU use is reported, so the figures are the server's own cost.

mod connections;
mod dataset;
mod death;
mod fanout;
mod federation;
mod messaging;
mod mst;
mod report;
mod server;
mod sim;
mod sync;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

/// Scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// C idle clients on one node: logins/s and resident memory per client.
    Connections,
    /// Status changes pushed to contacts at stepped rates: pushes/s and latency.
    Fanout,
    /// Status change across N nodes with emulated link delays: overhead per hop.
    Federation,
    /// Full sync of M records to an empty node, then resync after d changes.
    Sync,
    /// Spanning tree of N servers on a complete graph.
    Mst,
    /// The federation in the cluster simulator at 100-1,000 servers (simulated time).
    Sim,
    /// A server with U users dies (kill -9, then SIGSTOP): time until every watcher elsewhere
    /// sees them offline.
    Death,
    /// Relayed messages across N nodes: messages/s, acknowledgement and delivery latency.
    Messaging,
}

/// Benchmarks Gossip servers on this machine (real processes on loopback).
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  \
    gossip-bench --quick                      every scenario, small (CI smoke run)\n  \
    gossip-bench fanout --out fanout.json     one scenario at its default size\n  \
    gossip-bench sync --sync-records 100000   a smaller sync data set"
)]
pub(crate) struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Scenarios to run (default: all).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// Small sizes for every scenario, for CI: checks the tool and the servers work, and judges
    /// no timing target.
    #[arg(long)]
    quick: bool,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Do not pin servers to CPU 0 and the load generator to CPU 1.
    #[arg(long)]
    no_pin: bool,
    /// Where generated data sets are cached (default: target/bench-cache).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Where the nodes' data directories go during a run (default: target/bench-runs).
    #[arg(long = "work-dir", value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Runs of each scenario; targets are judged on the median (the machines are noisy).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Seed for keys, contact graphs and choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// connections: logged-in clients (below the 20,000 open-file limit of one process).
    #[arg(long, default_value_t = 19_000)]
    clients: usize,
    /// connections: generator processes the clients are spread over.
    #[arg(long, default_value_t = 4)]
    generators: usize,
    /// connections, fanout: logins in flight at a time.
    #[arg(long, default_value_t = 200)]
    login_concurrency: usize,

    /// fanout: users, all logged in to one node.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// connections, fanout: mutual contacts per user.
    #[arg(long, default_value_t = 20)]
    contacts: usize,
    /// fanout: offered push rates (pushes/s), stepped up until p99 passes 10 ms twice.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2000,5000,10000,12500,15000,17500,20000,25000,30000,50000,100000,200000"
    )]
    rates: Vec<u64>,
    /// fanout: seconds per rate step.
    #[arg(long, default_value_t = 3.0)]
    step_secs: f64,
    /// fanout: connections that flood the node with frames nobody asked for throughout the
    /// steps, reconnecting whenever they are cut (the inbound-budget check: honest pushes'
    /// latency under a flood).
    #[arg(long, default_value_t = 0)]
    flooders: usize,

    /// federation: node counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20")]
    fed_nodes: Vec<usize>,
    /// federation: emulated one-way delay per link of the line, in ms.
    #[arg(long, default_value_t = 2)]
    fed_delay_ms: u64,
    /// federation: status changes measured per N.
    #[arg(long, default_value_t = 30)]
    fed_samples: usize,

    /// sync: users (each with a contact list) on the full node.
    #[arg(long, default_value_t = 1_000_000)]
    sync_records: usize,
    /// sync: contacts per user in the sync data set.
    #[arg(long, default_value_t = 10)]
    sync_contacts: usize,
    /// sync: changes made during the partition.
    #[arg(long, default_value_t = 100)]
    sync_changes: usize,
    /// fanout: clients hand over a last will after every change, as real clients do (each
    /// change then also costs the will's replication).
    #[arg(long)]
    fanout_wills: bool,
    /// messaging: nodes on the line (senders on the first, recipients on the last).
    #[arg(long, default_value_t = 5)]
    msg_nodes: usize,
    /// messaging: sender/recipient pairs.
    #[arg(long, default_value_t = 20)]
    msg_pairs: usize,
    /// messaging: messages per sender, one after another (at most 60: the sender's burst).
    #[arg(long, default_value_t = 50)]
    msg_count: usize,
    /// death: users logged in to the server that dies.
    #[arg(long, default_value_t = 1000)]
    death_users: usize,
    /// death: the nodes' dead timeout in seconds (gossipd --dead-after).
    #[arg(long, default_value_t = 5.0)]
    death_dead_after: f64,
    /// sync: the nodes' resync method (gossipd --sync): `range` or `event-counts`.
    #[arg(long, default_value = "range")]
    sync_method: String,

    /// mst: server counts.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    mst_sizes: Vec<usize>,
    /// mst: runs per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    mst_repeats: usize,

    /// sim: simulated server counts (sizes whose matrices do not fit in memory are skipped
    /// and say so).
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
    sim_sizes: Vec<usize>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (internal) A load generator process of the `connections` scenario.
    #[command(hide = true)]
    Generator(GeneratorArgs),
}

/// Arguments of a generator process.
#[derive(Debug, clap::Args)]
pub(crate) struct GeneratorArgs {
    #[arg(long)]
    server: String,
    #[arg(long)]
    users: usize,
    #[arg(long)]
    contacts: usize,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    from: usize,
    #[arg(long)]
    to: usize,
    #[arg(long)]
    concurrency: usize,
    /// Which generator this is (picks its source address).
    #[arg(long)]
    lane: u8,
}

impl Args {
    /// Data set cache directory.
    pub(crate) fn cache(&self) -> &std::path::Path {
        self.cache.as_deref().expect("resolved in main")
    }

    /// Directory for the runs' node data.
    pub(crate) fn work_dir(&self) -> &std::path::Path {
        self.work_dir.as_deref().expect("resolved in main")
    }

    fn pinned(&self) -> bool {
        !self.no_pin
    }

    /// CPU for servers.
    pub(crate) fn server_cpu(&self) -> Option<usize> {
        self.pinned().then_some(0)
    }

    /// CPU for the load side.
    pub(crate) fn load_cpu(&self) -> Option<usize> {
        self.pinned().then_some(1)
    }

    fn apply_quick(&mut self) {
        self.clients = 600;
        self.generators = 2;
        self.users = 300;
        self.rates = vec![1000, 3000];
        self.step_secs = 1.0;
        self.fed_nodes = vec![3, 5];
        self.fed_samples = 5;
        self.sync_records = 2000;
        self.sync_changes = 20;
        self.mst_sizes = vec![100, 1000];
        self.mst_repeats = 3;
        self.sim_sizes = vec![20];
        self.death_users = 50;
        self.death_dead_after = 2.0;
        self.msg_nodes = 3;
        self.msg_pairs = 4;
        self.msg_count = 10;
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(Cmd::Generator(g)) = &args.cmd {
        return connections::generator(g);
    }
    if args.quick {
        args.apply_quick();
    }
    let target = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    args.cache.get_or_insert_with(|| target.join("bench-cache"));
    args.work_dir
        .get_or_insert_with(|| target.join("bench-runs"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.pinned() && cpus < 2 {
        eprintln!("only {cpus} CPU available: not pinning");
        args.no_pin = true;
    }
    if args.pinned() && !server::can_pin() {
        eprintln!("taskset (util-linux) not found: not pinning");
        args.no_pin = true;
    }
    // Read before pinning, which would make this process see one CPU.
    let machine = machine();
    if args.pinned() {
        server::pin_self(1)?;
    }
    let scenarios = if args.scenarios.is_empty() {
        Scenario::value_variants().to_vec()
    } else {
        args.scenarios.clone()
    };
    println!(
        "gossip-bench {} on {} ({} CPUs){}{}",
        env!("CARGO_PKG_VERSION"),
        machine["cpu"].as_str().unwrap_or("?"),
        cpus,
        if args.pinned() {
            "; servers on CPU 0, load on CPU 1"
        } else {
            "; not pinned"
        },
        if args.quick {
            "; --quick: sizes too small to judge targets"
        } else {
            ""
        },
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    let runs = args.runs.max(1);
    for s in scenarios {
        let mut each = Vec::with_capacity(runs);
        for run in 1..=runs {
            if runs > 1 {
                report::phase(&format!("{s:?}: run {run} of {runs}"));
            }
            let r = match s {
                Scenario::Connections => rt.block_on(connections::run(&args)),
                Scenario::Fanout => rt.block_on(fanout::run(&args)),
                Scenario::Federation => rt.block_on(federation::run(&args)),
                Scenario::Sync => rt.block_on(sync::run(&args)),
                Scenario::Mst => mst::run(&args),
                Scenario::Sim => sim::run(&args),
                Scenario::Death => rt.block_on(death::run(&args)),
                Scenario::Messaging => rt.block_on(messaging::run(&args)),
            }
            .with_context(|| format!("scenario {s:?}"))?;
            each.push(r);
        }
        reports.push(if runs == 1 {
            each.pop().expect("one run")
        } else {
            json!({"scenario": each[0]["scenario"], "runs": each.clone(), "targets": median_targets(&each)})
        });
    }
    let targets: Vec<&serde_json::Value> = reports
        .iter()
        .flat_map(|r| r["targets"].as_array().into_iter().flatten())
        .collect();
    let title = if runs > 1 {
        format!("targets (median of {runs} runs)")
    } else {
        "targets".to_owned()
    };
    let mut t = report::Table::new(&title, &["target", "goal", "measured", "met"]);
    for x in &targets {
        t.row(vec![
            x["target"].as_str().unwrap_or("").into(),
            x["goal"].as_str().unwrap_or("").into(),
            x["measured"].as_str().unwrap_or("").into(),
            match x["met"].as_bool() {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "not judged".into(),
            },
        ]);
    }
    t.print();
    let full = json!({
        "tool": "gossip-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "quick": args.quick,
        "pinned": args.pinned(),
        "machine": machine,
        "scenarios": reports,
    });
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&full)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        println!("\nreport written to {}", out.display());
    }
    Ok(())
}

/// Each target of repeated runs of one scenario, judged again on the median value.
fn median_targets(runs: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let first = runs[0]["targets"].as_array().cloned().unwrap_or_default();
    first
        .iter()
        .map(|t| {
            let name = &t["target"];
            let mut values: Vec<f64> = runs
                .iter()
                .flat_map(|r| r["targets"].as_array().into_iter().flatten())
                .filter(|x| &x["target"] == name)
                .filter_map(|x| x["value"].as_f64())
                .collect();
            let all: Vec<f64> = values.clone();
            let median = report::median(&mut values);
            let judged = runs.iter().all(|r| {
                r["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| &x["target"] == name)
                    .all(|x| x["judged"].as_bool() == Some(true))
            });
            let mut m = report::target(
                name.as_str().unwrap_or(""),
                t["goal"].as_str().unwrap_or(""),
                median,
                t["unit"].as_str().unwrap_or(""),
                t["cmp"].as_str().unwrap_or(""),
                t["bound"].as_f64().unwrap_or(0.0),
                judged,
            );
            m["values"] = json!(all);
            m
        })
        .collect()
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "mem_gib": mem_kib / (1024 * 1024),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "open_files_limit": std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| s.lines()
            .find(|l| l.starts_with("Max open files")).map(|l| l.split_whitespace().nth(3).unwrap_or("").to_owned())),
    })
}
