//! Scenario `death`: three nodes A – B – C; U users logged in to C (online, their wills
//! handed over), and a watcher on A and one on B each with all U as contacts. C dies, and the
//! scenario reports the time from its death to the last watcher seeing the last of its users
//! offline, two ways:
//!
//! * `kill -9`: the process is gone, its host refuses connections (the fast path: a neighbour's
//!   redial is refused and the wills are published at once);
//! * `SIGSTOP`: the process is frozen, like a machine that lost power or a cut cable: nothing
//!   is refused, probes go unanswered, so the others wait out their dead timeout.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use gossip_client::GossipClient;
use gossip_common::admin::AdminRequest;
use gossip_common::UserId;
use serde_json::json;

use crate::dataset::Dataset;
use crate::report::{self, Table};
use crate::server::{self, Node, NodeSpec};
use crate::Args;

/// Runs the scenario: once with `kill -9`, once with `SIGSTOP`.
pub(crate) async fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let u = args.death_users;
    let mut table = Table::new(
        &format!(
            "death: {u} users on a server that dies; dead timeout {} s",
            args.death_dead_after
        ),
        &[
            "how",
            "last watcher sees all offline",
            "wills published",
            "within dead timeout + 1 s",
        ],
    );
    let mut results = Vec::new();
    let mut judged_ok = true;
    for how in ["kill -9", "SIGSTOP"] {
        let r = one(args, how).await?;
        let ok = r.offline_s <= args.death_dead_after + 1.0;
        judged_ok &= ok;
        table.row(vec![
            how.into(),
            format!("{:.3} s", r.offline_s),
            r.wills.to_string(),
            if ok { "yes" } else { "NO" }.into(),
        ]);
        results.push(
            json!({"how": how, "users": u, "offline_s": r.offline_s, "wills_published": r.wills}),
        );
    }
    table.print();
    let worst = results
        .iter()
        .filter_map(|r| r["offline_s"].as_f64())
        .fold(0.0, f64::max);
    Ok(json!({
        "scenario": "death",
        "params": {"users": u, "dead_after_s": args.death_dead_after},
        "results": results,
        "targets": [report::target("death_offline_s", "<= dead timeout + 1 s", worst, "s", "<=",
            args.death_dead_after + 1.0, !args.quick)],
        "all_within": judged_ok,
    }))
}

/// Users per watcher.
const WATCHED: usize = 500;

struct One {
    offline_s: f64,
    wills: u64,
}

async fn one(args: &Args, how: &str) -> anyhow::Result<One> {
    let u = args.death_users;
    report::phase(&format!("death ({how}): {u} users on the dying node"));
    // U users plus the watchers, pre-signed and installed on every node. A contact list holds
    // at most about 900 contacts (the 32 KB record limit), so each node gets one watcher per
    // group of WATCHED users.
    let groups = u.div_ceil(WATCHED);
    let data = Dataset {
        users: u + 2 * groups,
        contacts: 2,
        seed: args.seed,
    };
    let dir = server::run_dir(args.work_dir(), "death")?;
    let flags = |peer: Option<&Node>| {
        let mut f = vec![
            "--probe-interval-ms".to_string(),
            "100".into(),
            "--dead-after".into(),
            args.death_dead_after.to_string(),
            "--reprobe".into(),
            "1".into(),
        ];
        if let Some(p) = peer {
            f.extend(["--peer".to_string(), format!("127.0.0.1:{}", p.base_port)]);
        }
        f
    };
    let mut nodes: Vec<Node> = Vec::new();
    for name in ["a", "b", "c"] {
        let data_dir = dir.path().join(name);
        data.install(args.cache(), &data_dir)?;
        let node = Node::start(&NodeSpec {
            base_port: 0,
            data_dir,
            cpu: args.server_cpu(),
            extra: flags(nodes.last()),
        })?;
        nodes.push(node);
    }
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.base_port))
        .collect();
    server::wait_until("one tree", Duration::from_secs(60), || {
        let st: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| n.admin(&AdminRequest::Status).unwrap_or_default())
            .collect();
        Ok(gossip_tests::gossipd::one_tree(&st, &ids).then_some(()))
    })?;
    let c_addr = nodes[2].addr();
    let mut clients = Vec::with_capacity(u);
    for i in 0..u {
        let (c, e) = server::connect_client(&c_addr, 0, i, data.key(i)).await?;
        c.login(data.uid(i)).await.context("user login")?;
        c.go_online("online", None).await.context("user online")?;
        clients.push((c, e));
    }
    let users: Vec<UserId> = (0..u).map(|i| data.uid(i)).collect();
    // (watcher, its node, the users it watches)
    let plan: Vec<(usize, usize, &[UserId])> = users
        .chunks(WATCHED)
        .enumerate()
        .flat_map(|(g, chunk)| [(u + 2 * g, 0, chunk), (u + 2 * g + 1, 1, chunk)])
        .collect();
    for (w, node, watched) in &plan {
        let (c, _e) = GossipClient::connect(&nodes[*node].addr(), data.key(*w)).await?;
        c.login(data.uid(*w)).await.context("watcher login")?;
        c.set_contacts(watched.to_vec())
            .await
            .context("watcher contacts")?;
    }
    // Contact lists are read at login: log the watchers in again to get every record.
    let mut watchers = Vec::new();
    for (w, node, watched) in &plan {
        let (c, e) = GossipClient::connect(&nodes[*node].addr(), data.key(*w)).await?;
        c.login(data.uid(*w)).await?;
        watchers.push((c, e, *watched));
    }
    let all = |online: bool| {
        watchers
            .iter()
            .all(|(w, _, watched)| watched.iter().all(|x| w.is_contact_online(*x) == online))
    };
    server::wait_until(
        "the watchers to see every user online",
        Duration::from_secs(60),
        || Ok(all(true).then_some(())),
    )?;
    let wills0 = nodes[0].metric("last_wills_total")? + nodes[1].metric("last_wills_total")?;
    let c_pid = nodes[2].pid();
    let t0 = Instant::now();
    let signal = if how == "kill -9" { "-KILL" } else { "-STOP" };
    std::process::Command::new("kill")
        .args([signal, &c_pid.to_string()])
        .status()?;
    let limit = Duration::from_secs_f64(args.death_dead_after * 4.0 + 60.0);
    loop {
        if all(false) {
            break;
        }
        if t0.elapsed() > limit {
            let online: Vec<usize> = watchers
                .iter()
                .map(|(w, _, watched)| watched.iter().filter(|x| w.is_contact_online(**x)).count())
                .collect();
            let stuck = watchers
                .iter()
                .flat_map(|(w, _, watched)| watched.iter().filter(|x| w.is_contact_online(**x)))
                .next()
                .copied();
            let views: Vec<serde_json::Value> = match stuck {
                Some(x) => nodes[..2]
                    .iter()
                    .map(|n| {
                        n.admin(&AdminRequest::User { uid: x.0 })
                            .unwrap_or_default()
                    })
                    .collect(),
                None => Vec::new(),
            };
            let wills: Vec<u64> = nodes[..2]
                .iter()
                .map(|n| n.metric("last_wills_total").unwrap_or(0))
                .collect();
            anyhow::bail!(
                "users still online {limit:?} after C died: online per watcher {online:?}, \
                 wills published {wills:?}, the first stuck user at A and B: {views:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let offline_s = t0.elapsed().as_secs_f64();
    let wills =
        nodes[0].metric("last_wills_total")? + nodes[1].metric("last_wills_total")? - wills0;
    if how == "SIGSTOP" {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &c_pid.to_string()])
            .status();
    }
    drop(clients);
    for n in nodes {
        n.stop();
    }
    Ok(One { offline_s, wills })
}
