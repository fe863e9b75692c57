//! Scenario `federation`: N nodes on a line of emulated link delays (node i to node j:
//! |i − j| × D one way), so the spanning tree is the path 0 – 1 – … – N−1 and the farthest
//! node is N−1 hops away. A client on node 0 changes status; a client on node N−1 watches.
//! Overhead per hop = (latency − (N−1)·D) / (N−1).
//!
//! The same exchange with both clients on node 0 (no server hop) is measured first, so the
//! clients' own legs can be told apart from the per-hop cost.

use std::time::{Duration, Instant};

use gossip_client::{Event, GossipClient};
use gossip_common::admin::AdminRequest;
use serde_json::json;

use crate::dataset::Dataset;
use crate::report::{self, Table};
use crate::server::{self, Node, NodeSpec};
use crate::Args;

/// RTT probe interval of the nodes. Short enough for the tree to form in seconds, long enough
/// that 20 nodes probing each other (N·(N−1) probes per interval, all on one core) do not load
/// the core the measured hops run on.
const PROBE_MS: u64 = 1000;

/// Runs the scenario for every N in `--fed-nodes`.
pub(crate) async fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let d = args.fed_delay_ms;
    let mut table = Table::new(
        &format!("federation: status change to the farthest node, {d} ms one-way per link"),
        &[
            "nodes",
            "hops",
            "delay sum ms",
            "p50 ms",
            "max ms",
            "local p50 ms",
            "overhead/hop ms",
            "net of client legs",
        ],
    );
    let mut results = Vec::new();
    let mut worst: f64 = 0.0;
    for &n in &args.fed_nodes {
        let r = one(args, n).await?;
        let hops = (n - 1) as f64;
        let sum = hops * d as f64;
        let per_hop = (r.p50_ms - sum) / hops;
        let net = (r.p50_ms - sum - r.local_p50_ms) / hops;
        worst = worst.max(per_hop);
        table.row(vec![
            n.to_string(),
            (n - 1).to_string(),
            format!("{sum:.0}"),
            format!("{:.3}", r.p50_ms),
            format!("{:.3}", r.max_ms),
            format!("{:.3}", r.local_p50_ms),
            format!("{per_hop:.3}"),
            format!("{net:.3}"),
        ]);
        results.push(json!({
            "nodes": n, "hops": n - 1, "delay_sum_ms": sum, "samples": r.samples,
            "p50_ms": r.p50_ms, "max_ms": r.max_ms, "local_p50_ms": r.local_p50_ms,
            "overhead_per_hop_ms": per_hop, "overhead_per_hop_net_of_client_legs_ms": net,
            "converge_s": r.converge_s,
        }));
    }
    table.print();
    let judged = !args.quick;
    Ok(json!({
        "scenario": "federation",
        "params": {"nodes": args.fed_nodes, "one_way_delay_ms_per_link": d, "samples": args.fed_samples},
        "results": results,
        "targets": [report::target("overhead_per_hop", "<= 1 ms (worst N)", worst, "ms", "<=", 1.0, judged)],
    }))
}

struct One {
    samples: usize,
    p50_ms: f64,
    max_ms: f64,
    local_p50_ms: f64,
    converge_s: f64,
}

async fn one(args: &Args, n: usize) -> anyhow::Result<One> {
    let data = Dataset {
        users: 2,
        contacts: 1,
        seed: args.seed,
    };
    let (_dir, nodes, converge_s) = start_line(args, n, &data, "federation").await?;
    let (a, _a_events) = GossipClient::connect(&nodes[0].addr(), data.key(0)).await?;
    a.login(data.uid(0)).await?;
    // Baseline: the watcher on the same node.
    let local = measure(&a, &nodes[0].addr(), &data, args.fed_samples).await?;
    let far = measure(&a, &nodes[n - 1].addr(), &data, args.fed_samples).await?;
    drop(a);
    for node in nodes {
        node.stop();
    }
    let p = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Ok(One {
        samples: far.len(),
        p50_ms: p(&far, 0.5),
        max_ms: p(&far, 1.0),
        local_p50_ms: p(&local, 0.5),
        converge_s,
    })
}

/// Starts `n` nodes on a line of emulated delays (`--fed-delay-ms` per link), each holding
/// `data`, and waits until every node has the path tree and links to its neighbours. Returns
/// the run directory (removed when dropped), the nodes and the seconds it took.
pub(crate) async fn start_line(
    args: &Args,
    n: usize,
    data: &Dataset,
    name: &str,
) -> anyhow::Result<(tempfile::TempDir, Vec<Node>, f64)> {
    report::phase(&format!("{name}: starting {n} nodes"));
    let d = args.fed_delay_ms;
    let dir = server::run_dir(args.work_dir(), &format!("{name}-{n}"))?;
    let mut nodes = Vec::new();
    // The lab delays name every peer's port, so ports are reserved in advance (below the
    // ephemeral range); if another process takes one before its node binds it, start over.
    'ports: for attempt in 1..=5 {
        let ports = gossip_tests::ports::reserve_base_ports(n);
        let port = |i: usize| ports[i];
        nodes.clear();
        for i in 0..n {
            let node_dir = dir.path().join(format!("try{attempt}-node{i}"));
            data.install(args.cache(), &node_dir)?;
            let mut extra = vec!["--probe-interval-ms".to_string(), PROBE_MS.to_string()];
            if i > 0 {
                extra.push("--peer".into());
                extra.push(format!("127.0.0.1:{}", port(0)));
            }
            for j in (0..n).filter(|&j| j != i) {
                extra.push("--lab-link-delay".into());
                extra.push(format!(
                    "127.0.0.1:{}={}",
                    port(j),
                    i.abs_diff(j) as u64 * d
                ));
            }
            match Node::start(&NodeSpec {
                base_port: port(i),
                data_dir: node_dir,
                cpu: args.server_cpu(),
                extra,
            }) {
                Ok(node) => nodes.push(node),
                Err(e) if attempt < 5 && is_port_taken(&e) => continue 'ports,
                Err(e) => return Err(e),
            }
        }
        break;
    }
    // The tree every node must agree on: the path, linked.
    let id = |i: usize| format!("127.0.0.1:{}", nodes[i].base_port);
    let mut want: Vec<(String, String)> = (1..n)
        .map(|i| {
            let (a, b) = (id(i - 1), id(i));
            (a.clone().min(b.clone()), a.max(b))
        })
        .collect();
    want.sort();
    let t0 = Instant::now();
    server::wait_until(
        "every node to agree on the path tree and link it",
        Duration::from_secs(120),
        || {
            for (i, node) in nodes.iter().enumerate() {
                let m = node.admin(&AdminRequest::Mst)?;
                let tree: Vec<(String, String)> =
                    serde_json::from_value(m["mst"].clone()).unwrap_or_default();
                if tree != want {
                    return Ok(None);
                }
                let links: Vec<String> =
                    serde_json::from_value(m["links"].clone()).unwrap_or_default();
                let need = [i.checked_sub(1), (i + 1 < n).then_some(i + 1)];
                if need.iter().flatten().any(|j| !links.contains(&id(*j))) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )?;
    let converge_s = t0.elapsed().as_secs_f64();

    Ok((dir, nodes, converge_s))
}

/// Latencies (ms, sorted) of `samples` status changes by `a`, seen by user 1 on `watch_at`.
async fn measure(
    a: &GossipClient,
    watch_at: &str,
    data: &Dataset,
    samples: usize,
) -> anyhow::Result<Vec<f64>> {
    let (b, mut events) = GossipClient::connect(watch_at, data.key(1)).await?;
    b.trust_server_pushes();
    b.login(data.uid(1)).await?;
    let mut out = Vec::with_capacity(samples);
    for s in 0..samples + 2 {
        let tag = format!("probe {s} {}", std::process::id());
        let start = Instant::now();
        a.set_status(if s % 2 == 0 { "away" } else { "online" }, Some(&tag))
            .await?;
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(ev) = events.next().await {
                if let Event::Presence(r) = ev {
                    if r.status_message == tag {
                        return Some(start.elapsed());
                    }
                }
            }
            None
        })
        .await;
        match got {
            Ok(Some(lat)) if s >= 2 => out.push(lat.as_secs_f64() * 1e3),
            Ok(Some(_)) => {} // warm-up
            _ => anyhow::bail!("status change {s} never reached the watcher at {watch_at}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// Whether a node failed to start only because one of its ports was taken.
fn is_port_taken(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<gossip_tests::gossipd::StartError>(),
        Some(gossip_tests::gossipd::StartError::PortTaken { .. })
    )
}
