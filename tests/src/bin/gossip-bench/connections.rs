//! Scenario `connections`: C clients log in to one node and stay idle. Measures the login rate
//! and the node's resident memory per logged-in client.
//!
//! One process may hold at most 20,000 open files here, so the clients are spread over several
//! generator processes (`gossip-bench generator`, this same binary). Each derives its users'
//! keys first, then waits for `go` on stdin, so every generator starts logging in at the same
//! moment and key derivation is not counted.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::StreamExt;
use gossip_client::{ClientError, GossipClient};
use gossip_common::admin::AdminRequest;
use serde_json::json;

use crate::dataset::Dataset;
use crate::report::{self, Table};
use crate::server::{self, Node, NodeSpec};
use crate::{Args, GeneratorArgs};

/// Runs the scenario.
pub(crate) async fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let clients = args.clients;
    let gens = args.generators.max(1);
    let data = Dataset {
        users: clients,
        contacts: args.contacts,
        seed: args.seed,
    };
    report::phase(&format!(
        "connections: {clients} clients over {gens} generator processes"
    ));
    let dir = server::run_dir(args.work_dir(), "connections")?;
    let node_dir = dir.path().join("node");
    data.install(args.cache(), &node_dir)?;
    let node = Node::start(&NodeSpec {
        base_port: 0,
        data_dir: node_dir,
        cpu: args.server_cpu(),
        // Exactly the clients measured: the next one must be refused with server-full.
        extra: vec!["--max-clients".into(), clients.to_string()],
    })?;
    let rss_empty = node.rss_kib();
    let cpu_before = node.cpu_s();

    // Start the generators; each reports "ready" once its keys are derived.
    let exe = std::env::current_exe()?;
    let per = clients.div_ceil(gens);
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut children = Vec::new();
    for g in 0..gens {
        let (from, to) = (g * per, ((g + 1) * per).min(clients));
        if from >= to {
            continue;
        }
        let mut child = Command::new(&exe)
            .arg("generator")
            .args(["--server", &node.addr()])
            .args(["--users", &clients.to_string()])
            .args(["--contacts", &args.contacts.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .args(["--from", &from.to_string(), "--to", &to.to_string()])
            .args(["--lane", &g.to_string()])
            .args([
                "--concurrency",
                &(args.login_concurrency.div_ceil(gens)).max(1).to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a generator process")?;
        let out = child.stdout.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((g, line)).is_err() {
                    break;
                }
            }
            let _ = tx.send((g, "exit".into()));
        });
        children.push(child);
    }
    drop(tx);
    let n_gens = children.len();
    let mut ready = 0;
    while ready < n_gens {
        let (g, line) = rx.recv_timeout(Duration::from_secs(120))?;
        match line.as_str() {
            "ready" => ready += 1,
            "exit" => bail!("generator {g} exited before it was ready"),
            _ => {}
        }
    }
    let bar = report::bar(clients as u64, "logging in");
    let start = Instant::now();
    for c in &mut children {
        c.stdin.as_mut().expect("piped").write_all(b"go\n")?;
        c.stdin.as_mut().expect("piped").flush()?;
    }
    let mut done = 0;
    let mut ok = 0u64;
    let mut failed = 0u64;
    let mut progress = vec![0u64; gens];
    let mut first_error = None;
    while done < n_gens {
        let (g, line) = rx
            .recv_timeout(Duration::from_secs(300))
            .context("generators stalled")?;
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("progress") => {
                progress[g] = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                bar.set_position(progress.iter().sum());
            }
            Some("done") => {
                done += 1;
                ok += parts
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                failed += parts
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            Some("error") => {
                first_error.get_or_insert_with(|| line.clone());
            }
            Some("exit") => bail!("generator {g} died during the login phase"),
            _ => {}
        }
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let login_cpu = node.cpu_s() - cpu_before;
    let gen_cpu: f64 = children.iter().map(|c| server::cpu_seconds(c.id())).sum();
    let status = node.admin(&AdminRequest::Status)?;
    let connected = status["clients"].as_u64().unwrap_or(0);
    let rss_full = node.rss_kib();
    let per_client_kib = (rss_full.saturating_sub(rss_empty)) as f64 / connected.max(1) as f64;
    let rate = ok as f64 / elapsed.as_secs_f64();

    // One more client than the limit: must be refused, and the others kept.
    let refusal = over_limit(&node.addr(), &data).await;
    let still = node.admin(&AdminRequest::Status)?["clients"]
        .as_u64()
        .unwrap_or(0);

    for c in &mut children {
        drop(c.stdin.take());
    }
    for mut c in children {
        let _ = c.wait();
    }
    node.stop();

    let mut t = Table::new(
        "connections: idle logged-in clients on one node",
        &[
            "clients",
            "logins/s",
            "login time",
            "failed",
            "RSS empty",
            "RSS full",
            "KiB/client",
            "server CPU",
            "server µs/login",
            "generator CPU",
        ],
    );
    t.row(vec![
        connected.to_string(),
        report::rate(rate),
        format!("{:.2} s", elapsed.as_secs_f64()),
        failed.to_string(),
        format!("{} MiB", rss_empty / 1024),
        format!("{} MiB", rss_full / 1024),
        format!("{per_client_kib:.2}"),
        format!("{login_cpu:.2} s"),
        format!("{:.0}", 1e6 * login_cpu / ok.max(1) as f64),
        format!("{gen_cpu:.2} s"),
    ]);
    t.print();
    println!(
        "  client {} over the limit: {refusal}; {still} clients still connected",
        clients + 1
    );
    if let Some(e) = &first_error {
        println!("  first login error: {e}");
    }
    let judged = !args.quick;
    Ok(json!({
        "scenario": "connections",
        "params": {"clients": clients, "generators": n_gens, "contacts_per_user": args.contacts,
                    "login_concurrency": args.login_concurrency},
        "results": {
            "logged_in": connected, "failed": failed, "login_s": elapsed.as_secs_f64(),
            "logins_per_s": rate, "rss_empty_kib": rss_empty, "rss_full_kib": rss_full,
            "kib_per_client": per_client_kib, "server_cpu_s": login_cpu,
            "server_cpu_us_per_login": 1e6 * login_cpu / ok.max(1) as f64,
            "generators_cpu_s": gen_cpu, "over_limit": refusal, "clients_after_refusal": still,
            "first_error": first_error,
        },
        "targets": [
            report::target("kib_per_idle_client", "<= 8 KiB", per_client_kib, "KiB", "<=", 8.0, judged),
            report::target("logins_per_s", ">= 10,000/s", rate, "/s", ">=", 10_000.0, judged),
        ],
    }))
}

/// Connects one client more than the node admits; describes what happened.
async fn over_limit(addr: &str, data: &Dataset) -> String {
    let (c, mut events) = match GossipClient::connect(addr, data.key(0)).await {
        Ok(c) => c,
        // A full server refuses before the encryption handshake.
        Err(ClientError::Refused { code, text, .. }) => {
            return format!("refused with {code:?} ({text})")
        }
        Err(e) => return format!("connection failed: {e}"),
    };
    match tokio::time::timeout(Duration::from_secs(10), c.login(data.uid(0))).await {
        Ok(Err(ClientError::Refused { code, .. })) => format!("refused with {code:?}"),
        Ok(Err(e)) => {
            // The refusal comes unsolicited, right after accept, before the connection closes.
            while let Ok(Some(ev)) =
                tokio::time::timeout(Duration::from_secs(1), events.next()).await
            {
                if let gossip_client::Event::Error { code, text } = ev {
                    return format!("refused with {code:?} ({text})");
                }
            }
            format!("failed: {e}")
        }
        Ok(Ok(())) => "ADMITTED (limit not enforced)".into(),
        Err(_) => "no answer in 10 s".into(),
    }
}

/// A generator process: logs in users `from..to` and holds the connections until stdin closes.
pub(crate) fn generator(g: &GeneratorArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let data = Dataset {
            users: g.users,
            contacts: g.contacts,
            seed: g.seed,
        };
        let keys: Vec<_> = (g.from..g.to).map(|i| (i, data.key(i))).collect();
        let mut stdout = std::io::stdout();
        writeln!(stdout, "ready")?;
        stdout.flush()?;
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let start = Instant::now();
        let server = g.server.clone();
        let lane = g.lane;
        let mut logins = futures::stream::iter(keys)
            .map(|(i, key)| {
                let server = server.clone();
                async move {
                    let (client, events) =
                        crate::server::connect_client(&server, lane, i, key).await?;
                    client.trust_server_pushes();
                    client.login(data.uid(i)).await?;
                    Ok::<_, ClientError>((client, events))
                }
            })
            .buffer_unordered(g.concurrency.max(1));
        let mut held = Vec::with_capacity(g.to - g.from);
        let (mut ok, mut failed) = (0u64, 0u64);
        while let Some(r) = logins.next().await {
            match r {
                Ok(c) => {
                    ok += 1;
                    held.push(c);
                }
                Err(e) => {
                    if failed == 0 {
                        writeln!(stdout, "error {e}")?;
                    }
                    failed += 1;
                }
            }
            if (ok + failed) % 250 == 0 {
                writeln!(stdout, "progress {}", ok + failed)?;
                stdout.flush()?;
            }
        }
        writeln!(stdout, "done {ok} {failed} {}", start.elapsed().as_millis())?;
        stdout.flush()?;
        // Hold the connections (idle; the client library answers keepalive pings) until the
        // benchmark closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .read_line(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
        })
        .await?;
        drop(held);
        Ok(())
    })
}
