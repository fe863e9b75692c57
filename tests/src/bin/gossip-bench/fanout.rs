//! Scenario `fanout`: U users with K mutual contacts each, all logged in to one node; a driver
//! changes statuses at stepped rates. Measures presence pushes delivered per second and push
//! latency (status change sent → the contact's client has it), and finds the highest rate at
//! which p99 stays under 10 ms.
//!
//! The send time travels inside the signed record (`statusmsg` = `t=<ns since the run
//! started>`), so the receiver computes the latency from the record itself; sender and
//! receivers live in this process and share one clock. Each user changes at most once per
//! round (users are taken in a shuffled cycle), so updates never race their own previous one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use gossip_client::{Event, GossipClient};
use parking_lot::Mutex;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;

use crate::dataset::Dataset;
use crate::report::{self, Latency, Table};
use crate::server::{self, Node, NodeSpec};
use crate::Args;

/// p99 bound that defines the sustainable rate.
const P99_BOUND: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Samples {
    /// Latencies of pushes received in the current step.
    lat: Vec<Duration>,
}

/// Runs the scenario.
pub(crate) async fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let data = Dataset {
        users: args.users,
        contacts: args.contacts,
        seed: args.seed,
    };
    let k = data.contact_graph().first().map_or(0, Vec::len).max(1);
    report::phase(&format!(
        "fanout: {} users × {k} mutual contacts, {} concurrent logins",
        data.users, args.login_concurrency
    ));
    let dir = server::run_dir(args.work_dir(), "fanout")?;
    let node_dir = dir.path().join("node");
    data.install(args.cache(), &node_dir)?;
    let node = Node::start(&NodeSpec {
        base_port: 0,
        data_dir: node_dir,
        cpu: args.server_cpu(),
        extra: vec!["--max-clients".into(), (data.users + 100).to_string()],
    })?;

    // Log everyone in, 200 at a time.
    let epoch = Instant::now();
    let samples = Arc::new(Mutex::new(Samples::default()));
    let bar = report::bar(data.users as u64, "logging in");
    let login_start = Instant::now();
    let addr = node.addr();
    let mut logins = futures::stream::iter(0..data.users)
        .map(|i| {
            let addr = addr.clone();
            let wills = args.fanout_wills;
            async move {
                let (c, events) = server::connect_client(&addr, 10, i, data.key(i)).await?;
                c.trust_server_pushes();
                c.login(data.uid(i)).await?;
                if wills {
                    // As real clients do: every status change then hands over a fresh will.
                    c.go_online("online", None).await?;
                }
                Ok::<_, gossip_client::ClientError>((i, c, events))
            }
        })
        .buffer_unordered(args.login_concurrency.max(1));
    let mut clients: Vec<Option<Arc<GossipClient>>> = (0..data.users).map(|_| None).collect();
    while let Some(r) = logins.next().await {
        let (i, c, mut events) = r?;
        clients[i] = Some(Arc::new(c));
        let samples = Arc::clone(&samples);
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                if let Event::Presence(rec) = ev {
                    let now = epoch.elapsed();
                    if let Some(sent) = rec
                        .status_message
                        .strip_prefix("t=")
                        .and_then(|t| t.parse::<u64>().ok())
                    {
                        let lat = now.saturating_sub(Duration::from_nanos(sent));
                        samples.lock().lat.push(lat);
                    }
                }
            }
        });
        bar.inc(1);
    }
    drop(logins);
    let login_rate = data.users as f64 / login_start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let clients: Vec<Arc<GossipClient>> =
        clients.into_iter().map(|c| c.expect("logged in")).collect();

    let flood = Flood::start(&addr, args.flooders);
    let mut order: Vec<usize> = (0..data.users).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(args.seed ^ 0xfa));
    let mut next = 0usize;
    let mut table = Table::new(
        &format!("fanout: {} users × {k} contacts, one node", data.users),
        &[
            "offered/s",
            "changes/s",
            "pushed/s",
            "delivered",
            "p50 ms",
            "p99 ms",
            "max ms",
            "server CPU",
            "server µs/push",
            "load CPU",
        ],
    );
    let mut steps = Vec::new();
    let mut best: Option<f64> = None;
    let mut over = 0;
    for &offered in &args.rates {
        let changes_per_s = offered as f64 / k as f64;
        let total = (changes_per_s * args.step_secs).round().max(1.0) as usize;
        samples.lock().lat.clear();
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (srv0, me0) = (node.cpu_s(), server::cpu_seconds(std::process::id()));
        let start = Instant::now();
        let mut sent = 0usize;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while sent < total {
            tick.tick().await;
            let due = ((start.elapsed().as_secs_f64() * changes_per_s) as usize + 1).min(total);
            while sent < due {
                let c = Arc::clone(&clients[order[next % order.len()]]);
                next += 1;
                sent += 1;
                let errors = Arc::clone(&errors);
                let status = if next.is_multiple_of(2) {
                    "online"
                } else {
                    "away"
                };
                tokio::spawn(async move {
                    let t = format!("t={}", epoch.elapsed().as_nanos());
                    if c.set_status(status, Some(&t)).await.is_err() {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        }
        let send_time = start.elapsed();
        // Wait for the pushes to drain: every change reaches its k contacts, or 3 s pass.
        let expected = sent * k;
        let deadline = Instant::now() + Duration::from_secs(3);
        while samples.lock().lat.len() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut lat = std::mem::take(&mut samples.lock().lat);
        let delivered = lat.len();
        let l = Latency::of(&mut lat);
        let span = (send_time + l.max.min(Duration::from_secs(3))).as_secs_f64();
        let pushed_per_s = delivered as f64 / span;
        let (srv, me) = (
            node.cpu_s() - srv0,
            server::cpu_seconds(std::process::id()) - me0,
        );
        let complete = delivered >= expected * 99 / 100;
        let ok = complete && l.p99 < P99_BOUND;
        if ok {
            best = Some(best.map_or(pushed_per_s, |b: f64| b.max(pushed_per_s)));
            over = 0;
        } else {
            over += 1;
        }
        let errs = errors.load(std::sync::atomic::Ordering::Relaxed);
        table.row(vec![
            report::rate(offered as f64),
            report::rate(changes_per_s),
            report::rate(pushed_per_s),
            format!("{delivered}/{expected}"),
            format!("{:.2}", report::ms(l.p50)),
            format!("{:.2}", report::ms(l.p99)),
            format!("{:.2}", report::ms(l.max)),
            format!("{:.0}%", 100.0 * srv / span),
            format!("{:.1}", 1e6 * srv / delivered.max(1) as f64),
            format!("{:.0}%", 100.0 * me / span),
        ]);
        steps.push(json!({
            "offered_pushes_per_s": offered, "changes_per_s": changes_per_s,
            "changes": sent, "update_errors": errs, "expected": expected, "delivered": delivered,
            "pushes_per_s": pushed_per_s, "latency": l.json(), "p99_under_10ms": ok,
            "server_cpu_s": srv, "load_cpu_s": me, "span_s": span,
            "server_cpu_us_per_push": 1e6 * srv / delivered.max(1) as f64,
        }));
        eprintln!(
            "  … {} pushes/s offered: {} delivered/s, p99 {:.2} ms",
            report::rate(offered as f64),
            report::rate(pushed_per_s),
            report::ms(l.p99)
        );
        // Two failing steps in a row: saturated, higher rates only queue more.
        if over >= 2 {
            break;
        }
    }
    table.print();
    let best_rate = best.unwrap_or(0.0);
    println!(
        "  highest rate with p99 < 10 ms: {} pushes/s (logins during setup: {}/s)",
        report::rate(best_rate),
        report::rate(login_rate)
    );
    let (flood_frames, flood_cuts) = flood.stop();
    if args.flooders > 0 {
        println!(
            "  flood: {} connections sent {} frames nobody asked for and were cut {} times",
            args.flooders,
            report::rate(flood_frames as f64),
            flood_cuts
        );
    }
    drop(clients);
    node.stop();
    let judged = !args.quick;
    Ok(json!({
        "scenario": "fanout",
        "params": {"users": data.users, "contacts_per_user": k, "login_concurrency": args.login_concurrency,
                    "step_s": args.step_secs, "rates": args.rates, "flooders": args.flooders},
        "flood": {"frames": flood_frames, "cuts": flood_cuts},
        "results": {"steps": steps, "best_pushes_per_s_p99_under_10ms": best_rate, "setup_logins_per_s": login_rate},
        "targets": [report::target("pushes_per_s_p99_under_10ms", ">= 200,000/s with p99 < 10 ms",
            best_rate, "/s", ">=", 200_000.0, judged)],
    }))
}

/// Connections that flood the node with `pong`s nobody asked for, reconnecting whenever the
/// node cuts them, until stopped.
struct Flood {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    frames: Arc<std::sync::atomic::AtomicU64>,
    cuts: Arc<std::sync::atomic::AtomicU64>,
}

impl Flood {
    fn start(addr: &str, n: usize) -> Flood {
        use std::sync::atomic::Ordering::Relaxed;
        let frames = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let cuts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let pong = gossip_common::codec::encode_frame(gossip_common::message::Pong {});
        let batch = vec![pong; 1024];
        let tasks = (0..n)
            .map(|_| {
                let (addr, frames, cuts, batch) = (
                    addr.to_owned(),
                    Arc::clone(&frames),
                    Arc::clone(&cuts),
                    batch.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        let Ok(stream) = tokio::net::TcpStream::connect(&addr).await else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let secured = gossip_common::secure::connect(
                            stream,
                            gossip_common::secure::Purpose::Client,
                            &gossip_common::secure::Identity::anonymous(),
                        )
                        .await;
                        let Ok((mut s, _)) = secured else { continue };
                        while gossip_common::codec::write_frames(&mut s, &batch)
                            .await
                            .is_ok()
                        {
                            frames.fetch_add(batch.len() as u64, Relaxed);
                        }
                        cuts.fetch_add(1, Relaxed);
                    }
                })
            })
            .collect();
        Flood {
            tasks,
            frames,
            cuts,
        }
    }

    /// Stops the flood; the frames sent and the times the node cut a flooder.
    fn stop(self) -> (u64, u64) {
        for t in &self.tasks {
            t.abort();
        }
        use std::sync::atomic::Ordering::Relaxed;
        (self.frames.load(Relaxed), self.cuts.load(Relaxed))
    }
}
