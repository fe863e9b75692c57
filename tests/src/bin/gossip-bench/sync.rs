//! Scenario `sync`: node A holds M users and M contact lists (pre-signed, cached on disk); an
//! empty node B links to it. Measures full-sync time, records/s and bytes on the wire. Then the
//! link is cut (`delete-server`, as an operator would during a netsplit), d users change status
//! at A, and the link is restored (`add-server`): resync time, records moved and bytes, once
//! with no change (the cost of the event-count lists alone) and once with d changes, so the
//! bytes that depend on d are separated from those that depend on M.

use std::time::{Duration, Instant};

use gossip_client::GossipClient;
use gossip_common::admin::AdminRequest;
use serde_json::json;

use crate::dataset::Dataset;
use crate::report::{self, Table};
use crate::server::{self, Node, NodeSpec};
use crate::Args;

/// Runs the scenario.
pub(crate) async fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let m = args.sync_records;
    let d = args.sync_changes.min(m);
    let data = Dataset {
        users: m,
        contacts: args.sync_contacts,
        seed: args.seed,
    };
    report::phase(&format!(
        "sync: {m} users + {m} contact lists, then {d} changes (resync by {})",
        args.sync_method
    ));
    let dir = server::run_dir(args.work_dir(), "sync")?;
    let a_dir = dir.path().join("a");
    data.install(args.cache(), &a_dir)?;
    let probe = [
        "--probe-interval-ms".to_string(),
        "100".into(),
        "--sync".into(),
        args.sync_method.clone(),
    ];
    let load_start = Instant::now();
    let a = Node::start(&NodeSpec {
        base_port: 0,
        data_dir: a_dir,
        // The sending side is the load here; the receiving node gets the server CPU.
        cpu: args.load_cpu(),
        extra: probe.to_vec(),
    })?;
    let a_load_s = load_start.elapsed().as_secs_f64();
    report::phase(&format!(
        "sync: node A loaded and verified {m} users in {a_load_s:.1} s"
    ));

    let bar = report::bar(2 * m as u64, "full sync to an empty node");
    let start = Instant::now();
    let b = Node::start(&NodeSpec {
        base_port: 0,
        data_dir: dir.path().join("b"),
        cpu: args.server_cpu(),
        extra: [probe.to_vec(), vec!["--peer".into(), a.addr()]].concat(),
    })?;
    let b_cpu0 = b.cpu_s();
    let a_cpu0 = a.cpu_s();
    // Records/s is measured from the first record stored at B to the last; the time to full
    // sync also includes B's start, probing and the link coming up.
    let mut first: Option<(Instant, u64)> = None;
    server::wait_until("B to hold every record", Duration::from_secs(3600), || {
        let n = b.metric("users")? + b.metric("contact_lists")?;
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        bar.set_position(n);
        Ok((n >= 2 * m as u64).then_some(()))
    })?;
    let full_s = start.elapsed().as_secs_f64();
    let (t_first, n_first) = first.unwrap_or((start, 0));
    let transfer_s = t_first.elapsed().as_secs_f64().max(1e-6);
    let setup_s = full_s - transfer_s;
    bar.finish_and_clear();
    let full_bytes = a.metric("link_bytes_out_total")? + a.metric("link_bytes_in_total")?;
    let full_sync_bytes = a.metric("sync_bytes_out_total")? + a.metric("sync_bytes_in_total")?;
    let (b_cpu, a_cpu) = (b.cpu_s() - b_cpu0, a.cpu_s() - a_cpu0);
    let same =
        a.admin(&AdminRequest::Status)?["digest"] == b.admin(&AdminRequest::Status)?["digest"];
    anyhow::ensure!(same, "after the full sync A and B hold different records");
    let rate = (2 * m as u64 - n_first) as f64 / transfer_s;

    let quiet = resync(&a, &b, &data, 0).await?;
    let changed = resync(&a, &b, &data, d).await?;
    let same =
        a.admin(&AdminRequest::Status)?["digest"] == b.admin(&AdminRequest::Status)?["digest"];
    anyhow::ensure!(same, "after the resync A and B hold different records");
    a.stop();
    b.stop();

    let per_change = (changed.bytes as f64 - quiet.bytes as f64) / d.max(1) as f64;
    let mut t = Table::new(
        &format!("sync: {m} users + {m} contact lists"),
        &[
            "phase",
            "records moved",
            "time s",
            "link-up s",
            "records/s",
            "round trips",
            "sync bytes",
            "link bytes",
            "B CPU",
            "A CPU",
        ],
    );
    t.row(vec![
        "full sync".into(),
        (2 * m).to_string(),
        format!("{full_s:.2}"),
        format!("{setup_s:.2}"),
        report::rate(rate),
        "-".into(),
        full_sync_bytes.to_string(),
        full_bytes.to_string(),
        format!("{b_cpu:.1} s"),
        format!("{a_cpu:.1} s"),
    ]);
    for (name, r) in [
        ("resync, no change", &quiet),
        ("resync, d changes", &changed),
    ] {
        t.row(vec![
            name.into(),
            r.records.to_string(),
            format!("{:.3}", r.seconds),
            "-".into(),
            "-".into(),
            r.round_trips.to_string(),
            r.bytes.to_string(),
            r.link_bytes.to_string(),
            "-".into(),
            "-".into(),
        ]);
    }
    t.print();
    println!(
        "  resync with no change: {} bytes of sync frames for {m} users (≈{:.2} B/user, both \
         directions) in {} round trips; each changed record adds ≈{per_change:.0} bytes",
        quiet.bytes,
        quiet.bytes as f64 / m as f64,
        quiet.round_trips
    );
    let judged = !args.quick;
    let range = args.sync_method == "range";
    let resync_json = |r: &Resync| {
        json!({"seconds": r.seconds, "records": r.records, "bytes": r.bytes,
               "round_trips": r.round_trips, "link_bytes": r.link_bytes})
    };
    Ok(json!({
        "scenario": "sync",
        "params": {"users": m, "contacts_per_user": args.sync_contacts, "changes": d,
                   "sync_method": args.sync_method},
        "results": {
            "a_load_s": a_load_s, "full_sync_s": full_s, "start_and_link_up_s": setup_s,
            "transfer_s": transfer_s, "records": 2 * m, "records_per_s": rate,
            "full_sync_bytes": full_sync_bytes, "full_sync_link_bytes": full_bytes,
            "receiver_cpu_s": b_cpu, "sender_cpu_s": a_cpu,
            "resync_no_change": resync_json(&quiet),
            "resync_changes": resync_json(&changed),
            "bytes_per_changed_record": per_change,
        },
        "targets": [
            report::target("full_sync_records_per_s", ">= 40,000 records/s", rate, "/s", ">=", 40_000.0, judged),
            report::target("resync_records_moved", "== d (O(d), not O(M))", changed.records as f64,
                "records", "==", d as f64, true),
            report::target("resync_no_change_bytes", "<= 512 bytes (range)", quiet.bytes as f64,
                "bytes", "<=", 512.0, range),
            report::target("resync_no_change_round_trips", "<= 1 (range)", quiet.round_trips as f64,
                "round trips", "<=", 1.0, range),
            report::target("resync_bytes_per_change", "<= 4 KB incl. the record (range)", per_change,
                "bytes", "<=", 4096.0, range),
            report::target("resync_changes_seconds", "< 1 s (range)", changed.seconds,
                "s", "<", 1.0, range && judged),
        ],
    }))
}

/// One resync: `bytes` counts the resync frames (`eventCounts`, `reconcile`,
/// `changedEntries`) both ways; `link_bytes` everything the link carried meanwhile (the
/// handshake, server list, RTT rows and pings too).
struct Resync {
    seconds: f64,
    records: u64,
    bytes: u64,
    link_bytes: u64,
    round_trips: u64,
}

/// Cuts the A–B link, makes `changes` status changes at A, restores the link and waits until B
/// has them all.
async fn resync(a: &Node, b: &Node, data: &Dataset, changes: usize) -> anyhow::Result<Resync> {
    let b_id = format!("127.0.0.1:{}", b.base_port);
    a.admin(&AdminRequest::DeleteServer {
        server: b_id.clone(),
    })?;
    server::wait_until("the A–B link to go down", Duration::from_secs(30), || {
        let links = a.admin(&AdminRequest::Mst)?["links"].clone();
        let links: Vec<String> = serde_json::from_value(links).unwrap_or_default();
        Ok((!links.contains(&b_id)).then_some(()))
    })?;
    let mut expect = Vec::new();
    for i in 0..changes {
        let (c, _events) = GossipClient::connect(&a.addr(), data.key(i)).await?;
        c.login(data.uid(i)).await?;
        c.set_status("online", Some("changed during the partition"))
            .await?;
        expect.push((data.uid(i), c.me().expect("own record").event_count.count));
    }
    let bytes0 = a.metric("link_bytes_out_total")? + a.metric("link_bytes_in_total")?;
    let sync0 = a.metric("sync_bytes_out_total")? + a.metric("sync_bytes_in_total")?;
    let trips0 = a.metric("sync_round_trips_total")? + b.metric("sync_round_trips_total")?;
    let got0 = b.metric("sync_records_received_total")?;
    let rounds0 = (
        a.metric("sync_rounds_total")?,
        b.metric("sync_rounds_total")?,
    );
    let start = Instant::now();
    a.admin(&AdminRequest::AddServer { server: b_id })?;
    let a_id = format!("127.0.0.1:{}", a.base_port);
    server::wait_until("B to catch up", Duration::from_secs(600), || {
        let links: Vec<String> =
            serde_json::from_value(b.admin(&AdminRequest::Mst)?["links"].clone())
                .unwrap_or_default();
        // Both sides have diffed the other's complete event-count list (so both lists have
        // crossed the link) and B has the changed records.
        if !links.contains(&a_id)
            || a.metric("sync_rounds_total")? <= rounds0.0
            || b.metric("sync_rounds_total")? <= rounds0.1
            || b.metric("sync_records_received_total")? < got0 + changes as u64
        {
            return Ok(None);
        }
        for (uid, ec) in &expect {
            let u = b.admin(&AdminRequest::User { uid: uid.0 })?;
            if u["event_count"].as_u64() != Some(u64::from(*ec)) {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })?;
    let seconds = start.elapsed().as_secs_f64();
    // Only the closing (small) changedEntries may still be in flight: let them land.
    let mut last = 0;
    server::wait_until("the link to go quiet", Duration::from_secs(120), || {
        let now = a.metric("link_bytes_out_total")? + a.metric("link_bytes_in_total")?;
        let quiet = now == last;
        last = now;
        std::thread::sleep(Duration::from_millis(300));
        Ok(quiet.then_some(()))
    })?;
    Ok(Resync {
        seconds,
        records: b.metric("sync_records_received_total")? - got0,
        bytes: a.metric("sync_bytes_out_total")? + a.metric("sync_bytes_in_total")? - sync0,
        link_bytes: last - bytes0,
        round_trips: a.metric("sync_round_trips_total")? + b.metric("sync_round_trips_total")?
            - trips0,
    })
}
