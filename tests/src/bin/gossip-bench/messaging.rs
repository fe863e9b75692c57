//! Scenario `messaging`: relayed messages across N nodes on the line of the `federation`
//! scenario (the tree is the path; `--fed-delay-ms` per link). P senders on node 0 each send M
//! messages, one after another (each waits for its acknowledgement: stored on two servers), to
//! P recipients on node N−1. Reported: messages/s over the whole run, the acknowledgement
//! latency, and the delivery latency (send started → recipient's client has it), p50/p99.
//!
//! Bodies are 256 random bytes, the size of a short Olm message: encryption is client-side and
//! costs the servers nothing, so it is left out of the servers' measurement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gossip_client::{Event, GossipClient};
use serde_json::json;

use crate::dataset::Dataset;
use crate::report::{self, Table};
use crate::Args;

/// Runs the scenario.
pub(crate) async fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let (n, pairs, per_sender) = (args.msg_nodes, args.msg_pairs, args.msg_count);
    let data = Dataset {
        users: 2 * pairs,
        contacts: 1,
        seed: args.seed,
    };
    let (_dir, nodes, _) = crate::federation::start_line(args, n, &data, "messaging").await?;
    let (first, last) = (nodes[0].addr(), nodes[n - 1].addr());
    report::phase(&format!(
        "messaging: {pairs} senders on node 0 → {pairs} recipients on node {}, {per_sender} messages each",
        n - 1
    ));
    // Recipients (users pairs..2·pairs) log in on the far node and record when each arrives.
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let delivery: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut recipients = Vec::new();
    for p in 0..pairs {
        let (c, mut events) = GossipClient::connect(&last, data.key(pairs + p)).await?;
        c.login(data.uid(pairs + p)).await?;
        let (sent_at, delivery) = (Arc::clone(&sent_at), Arc::clone(&delivery));
        recipients.push(c);
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                if let Event::Relayed { message, .. } = ev {
                    let at = sent_at.lock().unwrap().get(&message.body).copied();
                    if let Some(at) = at {
                        delivery
                            .lock()
                            .unwrap()
                            .push(at.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
        });
    }
    let mut senders = Vec::new();
    for p in 0..pairs {
        let (c, _events) = GossipClient::connect(&first, data.key(p)).await?;
        c.login(data.uid(p)).await?;
        senders.push(c);
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (p, sender) in senders.into_iter().enumerate() {
        let (to, sent_at) = (data.uid(pairs + p), Arc::clone(&sent_at));
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::with_capacity(per_sender);
            for _ in 0..per_sender {
                let body: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect();
                use base64::Engine as _;
                let key = base64::engine::general_purpose::STANDARD.encode(&body);
                let start = Instant::now();
                sent_at.lock().unwrap().insert(key, start);
                sender.send_relayed(to, &body).await?;
                acks.push(start.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(acks)
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await??);
    }
    let total = pairs * per_sender;
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivery.lock().unwrap().len() < total {
        if Instant::now() > deadline {
            anyhow::bail!(
                "only {} of {total} messages reached their recipients in 60 s",
                delivery.lock().unwrap().len()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    drop(recipients);
    for node in nodes {
        node.stop();
    }
    let mut lat = delivery.lock().unwrap().clone();
    lat.sort_by(f64::total_cmp);
    acks.sort_by(f64::total_cmp);
    let p = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let rate = total as f64 / wall;
    let mut table = Table::new(
        &format!(
            "messaging: relayed across {n} nodes ({} hops, {} ms one way per link)",
            n - 1,
            args.fed_delay_ms
        ),
        &[
            "messages",
            "msgs/s",
            "ack p50 ms",
            "ack p99 ms",
            "delivery p50 ms",
            "delivery p99 ms",
            "max ms",
        ],
    );
    table.row(vec![
        total.to_string(),
        format!("{rate:.0}"),
        format!("{:.2}", p(&acks, 0.5)),
        format!("{:.2}", p(&acks, 0.99)),
        format!("{:.2}", p(&lat, 0.5)),
        format!("{:.2}", p(&lat, 0.99)),
        format!("{:.2}", p(&lat, 1.0)),
    ]);
    table.print();
    Ok(json!({
        "scenario": "messaging",
        "params": {"nodes": n, "pairs": pairs, "messages_per_sender": per_sender, "one_way_delay_ms_per_link": args.fed_delay_ms, "body_bytes": 256},
        "results": {
            "messages": total, "seconds": wall, "messages_per_s": rate,
            "ack_p50_ms": p(&acks, 0.5), "ack_p99_ms": p(&acks, 0.99),
            "delivery_p50_ms": p(&lat, 0.5), "delivery_p99_ms": p(&lat, 0.99), "delivery_max_ms": p(&lat, 1.0),
        },
        "targets": [],
    }))
}
