//! Scenario `mst`: time to compute the spanning tree for N servers on a complete graph with
//! random RTTs (seeded), in process: building the graph from the RTT matrix, and Prim itself.
//! Medians of repeated runs.

use std::time::Instant;

use gossip_server::mst::{minimum_spanning_tree, ServerGraph, ServerId};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::report::{self, Table};
use crate::Args;

/// Runs the scenario.
pub(crate) fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let mut t = Table::new(
        "mst: spanning tree of a complete graph (median of runs)",
        &[
            "servers", "edges", "build ms", "prim ms", "total ms", "runs",
        ],
    );
    let mut results = Vec::new();
    let mut at_1000 = None;
    for &n in &args.mst_sizes {
        report::phase(&format!("mst: {n} servers"));
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
        let servers: Vec<ServerId> = (0..n)
            .map(|i| (format!("server{i:05}.example.net"), 1024))
            .collect();
        let mut edges = Vec::with_capacity(n * (n - 1) / 2);
        for a in 0..n {
            for b in a + 1..n {
                edges.push((a, b, rng.gen_range(100..200_000u64)));
            }
        }
        let (mut build, mut prim) = (Vec::new(), Vec::new());
        let mut tree_len = 0;
        for _ in 0..args.mst_repeats.max(1) {
            // As the federation builds it: servers in order, edges by index.
            let t0 = Instant::now();
            let g = ServerGraph::from_indexed(servers.clone(), edges.iter().copied());
            let t1 = Instant::now();
            let tree = minimum_spanning_tree(&g);
            let t2 = Instant::now();
            tree_len = tree.len();
            build.push((t1 - t0).as_secs_f64() * 1e3);
            prim.push((t2 - t1).as_secs_f64() * 1e3);
        }
        anyhow::ensure!(
            tree_len == n - 1,
            "tree of {n} servers has {tree_len} edges"
        );
        let (b, p) = (report::median(&mut build), report::median(&mut prim));
        if n == 1000 {
            at_1000 = Some(b + p);
        }
        t.row(vec![
            n.to_string(),
            edges.len().to_string(),
            format!("{b:.2}"),
            format!("{p:.2}"),
            format!("{:.2}", b + p),
            build.len().to_string(),
        ]);
        results.push(json!({"servers": n, "edges": edges.len(), "build_ms": b, "prim_ms": p, "total_ms": b + p, "runs": build.len()}));
    }
    t.print();
    Ok(json!({
        "scenario": "mst",
        "params": {"sizes": args.mst_sizes, "repeats": args.mst_repeats},
        "results": results,
        "targets": at_1000.map(|v| vec![report::target("mst_1000", "< 20 ms for 1,000 servers", v, "ms", "<", 20.0, !args.quick)]).unwrap_or_default(),
    }))
}
