//! `prodserver` against real gossipd processes: status fields, joining two nodes that started
//! without knowing each other, blacklists, and the read-only privilege level.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gossip_tests::bin_path;
use gossip_tests::gossipd::{Gossipd, Spec};

/// A node on kernel-chosen ports with fast RTT probing, ready once its admin socket answers.
fn daemon(data: &Path) -> Gossipd {
    daemon_with(data, &[])
}

fn daemon_with(data: &Path, extra: &[&str]) -> Gossipd {
    let spec = Spec::new(data).fast_probes().args(extra.iter().copied());
    let node = Gossipd::start(&spec).unwrap_or_else(|e| panic!("{e}"));
    // The admin socket is bound before the port line is printed, so it answers now.
    node.status().expect("admin socket answers");
    node
}

/// Runs prodserver against `data`'s admin socket; (success, stdout, stderr).
fn prod_on(socket: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin_path("prodserver"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn prod(data: &Path, args: &[&str]) -> (bool, String, String) {
    prod_on(&data.join("admin.sock"), args)
}

fn status(data: &Path) -> serde_json::Value {
    let (ok, out, err) = prod(data, &["--json", "status"]);
    assert!(ok, "status failed: {err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn prodserver_joins_two_nodes_and_reports_the_same_tree() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let (a, b) = (daemon(&da), daemon(&db));
    let s = status(&da);
    for field in [
        "name",
        "base_port",
        "users",
        "clients",
        "peers",
        "mst",
        "uptime_s",
    ] {
        assert!(!s[field].is_null(), "status lacks {field}: {s}");
    }
    assert_eq!(s["base_port"], a.base_port);
    assert_eq!(s["peers"].as_array().unwrap().len(), 0, "started alone");

    let (ok, _, err) = prod(&da, &["add-server", &format!("127.0.0.1:{}", b.base_port)]);
    assert!(ok, "{err}");
    // Adding it again under another name for the same address is a no-op.
    let (ok, out, _) = prod(
        &da,
        &[
            "--json",
            "add-server",
            &format!("localhost:{}", b.base_port),
        ],
    );
    assert!(ok);
    assert!(out.contains("already_known_as"), "{out}");

    let want = serde_json::json!([[
        format!("127.0.0.1:{}", a.base_port.min(b.base_port)),
        format!("127.0.0.1:{}", a.base_port.max(b.base_port))
    ]]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (sa, sb) = (status(&da), status(&db));
        if sa["mst"] == want
            && sb["mst"] == want
            && sa["peers"][0]["linked"] == true
            && sb["peers"][0]["linked"] == true
        {
            let peer = &sa["peers"][0];
            assert_eq!(peer["id"], format!("127.0.0.1:{}", b.base_port));
            assert!(
                peer["rtt_ms"].is_number() && peer["alive"] == true,
                "{peer}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "nodes never agreed: {sa}\n{sb}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, out, _) = prod(&da, &["mst"]);
    assert!(ok && out.contains("neighbours:"), "{out}");
    let (ok, out, _) = prod(&da, &["rtt"]);
    assert!(
        ok && out.contains(&format!("127.0.0.1:{}", b.base_port)),
        "{out}"
    );
    let (ok, metrics, _) = prod(&da, &["metrics"]);
    let rtt_gauge = format!(
        "gossip_peer_rtt_seconds{{peer=\"127.0.0.1:{}\"}}",
        b.base_port
    );
    assert!(ok && metrics.contains(&rtt_gauge), "{metrics}");
    let link = format!(
        "gossip_peer_link_up{{peer=\"127.0.0.1:{}\"}} 1",
        b.base_port
    );
    assert!(metrics.contains(&link), "{metrics}");
    assert!(metrics.contains("gossip_build_info{version="), "{metrics}");
    assert!(
        metrics.contains("gossip_mst_recomputations_total"),
        "{metrics}"
    );

    // delete-server forgets B (here and, flooded, on B itself); prod --config adds it back.
    let b_id = format!("127.0.0.1:{}", b.base_port);
    let (ok, _, err) = prod(&da, &["delete-server", &b_id]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&da)["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == b_id.as_str())
    {
        assert!(
            Instant::now() < deadline,
            "B still listed after delete-server"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let config = dir.path().join("prod.toml");
    std::fs::write(
        &config,
        format!("name = \"ignored\"\npeers = [\"{b_id}\"]\n"),
    )
    .unwrap();
    let (ok, out, err) = prod(&da, &["prod", "--config", config.to_str().unwrap()]);
    assert!(ok && out.contains(&b_id), "{out}{err}");
    assert!(prod(&da, &["recalc"]).0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&da)["mst"] != want {
        assert!(
            Instant::now() < deadline,
            "tree not rebuilt after prod --config"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Users: none yet; asking for an unknown one is a clear error.
    let (ok, out, _) = prod(&da, &["--json", "users"]);
    assert!(ok && out.trim() == "[]", "{out}");
    let (ok, _, err) = prod(&da, &["user", "42"]);
    assert!(!ok && err.contains("no user 42"), "{err}");
}

#[test]
fn blacklist_refuses_and_allows_again_and_read_only_cannot_change_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n");
    let node = daemon(&data);
    let home = dir.path().join("u");
    let gossip = |args: &[&str]| {
        Command::new(bin_path("gossip"))
            .arg("--home")
            .arg(&home)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(gossip(&["keygen"]).status.success());
    let server = format!("127.0.0.1:{}", node.base_port);
    assert!(gossip(&["register", "--server", &server, "--nick", "u"])
        .status
        .success());

    // Read-only socket: status works, changes are refused.
    let status_sock = data.join("status.sock");
    assert!(prod_on(&status_sock, &["status"]).0);
    let (ok, _, err) = prod_on(&status_sock, &["blacklist", "add", "127.0.0.1"]);
    assert!(!ok && err.contains("permission denied"), "{err}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("admin.sock"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Blacklisted: clients and server links are refused at accept.
    assert!(prod(&data, &["blacklist", "add", "127.0.0.0/8"]).0);
    let out = gossip(&["contacts", "list"]);
    assert!(!out.status.success(), "a blacklisted client was served");
    let mut link = std::net::TcpStream::connect(("127.0.0.1", node.base_port + 1)).unwrap();
    link.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    // Closed means end of stream or a reset; a read that times out is a server that kept the
    // connection open, which is a failure, not a close.
    match std::io::Read::read(&mut link, &mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("a blacklisted server link was served {n} bytes"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("a blacklisted server link was not closed at once: {e}"),
    }
    let (_, listed, _) = prod(&data, &["blacklist", "list"]);
    assert!(listed.contains("127.0.0.0/8"));
    // Metrics (read-only socket) count the refusals and the registration.
    let (ok, metrics, _) = prod_on(&status_sock, &["metrics"]);
    assert!(ok);
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
    };
    assert!(value("gossip_refused_blacklisted_total") >= 2);
    assert_eq!(value("gossip_registrations_total"), 1);
    assert_eq!(value("gossip_users"), 1);
    assert!(
        metrics.contains("gossip_messages_in_total{msgtype=\"register\"} 1"),
        "{metrics}"
    );

    // Removed: served again.
    assert!(prod(&data, &["blacklist", "remove", "127.0.0.0/8"]).0);
    assert!(gossip(&["contacts", "list"]).status.success());
    let log = std::fs::read_to_string(data.join("transactions.log")).unwrap();
    assert!(
        log.contains("admin blacklist add 127.0.0.0/8") && log.contains("admin blacklist remove"),
        "{log}"
    );

    // Diagnostics: one archive with the expected parts and no secret in it.
    let archive = dir.path().join("diag.tar.gz");
    let (ok, _, err) = prod_on(
        &status_sock,
        &["diagnostics", "--out", archive.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    let unpacked = dir.path().join("diag");
    std::fs::create_dir_all(&unpacked).unwrap();
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(st.success());
    let root = unpacked.join("gossip-diagnostics");
    let mut everything = String::new();
    for part in [
        "version.txt",
        "config.json",
        "status.json",
        "rtt.json",
        "mst.json",
        "metrics.prom",
        "recent.log",
    ] {
        let text =
            std::fs::read_to_string(root.join(part)).unwrap_or_else(|e| panic!("{part}: {e}"));
        everything.push_str(&text);
    }
    assert!(std::fs::read_to_string(root.join("recent.log"))
        .unwrap()
        .contains("admin socket ready"));
    let secret = std::fs::read_to_string(home.join("key")).unwrap();
    assert!(
        !everything.contains(secret.trim()),
        "the archive contains a private key"
    );
}

#[test]
fn clear_errors_when_the_server_is_not_there() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = prod(dir.path(), &["status"]);
    assert!(!ok && err.contains("no admin socket"), "{err}");
    // A stale socket file with nobody listening.
    let sock = dir.path().join("admin.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let (ok, _, err) = prod(dir.path(), &["status"]);
    assert!(!ok && err.contains("not running"), "{err}");
}

#[test]
fn protocol_trace_records_frames_and_summarizes_latencies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n");
    let trace = dir.path().join("trace.jsonl");
    let node = daemon_with(&data, &["--trace", trace.to_str().unwrap()]);
    let home = dir.path().join("u");
    let gossip = |args: &[&str]| {
        let out = Command::new(bin_path("gossip"))
            .arg("--home")
            .arg(&home)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    gossip(&["keygen"]);
    gossip(&[
        "register",
        "--server",
        &format!("127.0.0.1:{}", node.base_port),
        "--nick",
        "t",
    ]);
    gossip(&["set-status", "away"]);
    // The trace is written by a background thread: wait for the last reply to land.
    let deadline = Instant::now() + Duration::from_secs(10);
    let summary = loop {
        let out = Command::new(bin_path("prodserver"))
            .args(["--json", "trace", "summarize"])
            .arg(&trace)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let types = v["types"].as_array().cloned().unwrap_or_default();
        let find = |t: &str| types.iter().find(|r| r["msgtype"] == t).cloned();
        if let (Some(reg), Some(ui)) = (find("register"), find("UserInfo")) {
            if reg["replies"] == 1 && ui["replies"].as_u64() >= Some(1) {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "trace never showed the exchange: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(summary["unreadable"], 0);
    let types = summary["types"].as_array().unwrap();
    let newuser = types.iter().find(|r| r["msgtype"] == "newuser").unwrap();
    assert_eq!(newuser["in"], 1);
    assert!(newuser["p50_ms"].as_f64().unwrap() >= 0.0);
}

/// `dist/gossipd.service` is linted here (systemd is not on the test machines): it has the
/// settings the install section relies on, and its `ExecStartPre` check passes on the example
/// config with a real gossipd, which exits 2 on a broken one.
#[test]
fn the_service_unit_and_example_config_check_out() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("dist/gossipd.service")).unwrap();
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |key: &str| settings.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(unit.contains(section), "no {section}");
    }
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "gossip gossip-backups"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(get(key), Some(want), "{key}");
    }
    let nofile: u64 = get("LimitNOFILE").unwrap().parse().unwrap();
    assert!(
        nofile > 18_000 + 256,
        "LimitNOFILE {nofile} below max_clients + 256"
    );
    // The unit's own check, run on the example config (paths made local).
    let pre = get("ExecStartPre").unwrap();
    let args: Vec<&str> = pre.split_whitespace().skip(1).collect();
    assert_eq!(args[0], "--check-config");
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(bin_path("gossipd"))
        .arg("--check-config")
        .arg(root.join("dist/gossipd.toml"))
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("valid; gossipd would run with"), "{stdout}");
    assert!(stdout.contains("base_port: 1024"), "{stdout}");
    let start = get("ExecStart").unwrap();
    assert!(
        start.contains("--config /etc/gossip/gossipd.toml"),
        "{start}"
    );
    // A broken file: status 2 and the reason.
    let bad = data.path().join("bad.toml");
    std::fs::write(&bad, "base_port = \"high\"\n").unwrap();
    let out = Command::new(bin_path("gossipd"))
        .arg("--check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("base_port"));

    // systemd's own check, where systemd is installed: the unit with its binary at the path
    // this build has (verify insists that ExecStart's program exists).
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let local = data.path().join("gossipd.service");
        let gossipd = bin_path("gossipd");
        std::fs::write(
            &local,
            unit.replace("/usr/local/bin/gossipd", &gossipd.to_string_lossy()),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&local)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "systemd-analyze verify: {said}"
        );
    }
}
