//! `prodserver`: administer a running gossipd through its local admin socket (the spec's
//! "prod": add a server after a netsplit, inspect RTTs and the tree, blacklist an address).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use gossip_common::admin::{AdminRequest, AdminResponse};
use serde_json::Value;

#[macro_use]
mod output;
use output::json_safe;

/// Administer a running gossipd through its local admin socket.
///
/// Talks JSON lines to DATA_DIR/admin.sock (mode 0600, every command) or, for read-only
/// commands, to the status.sock beside it (mode 0660, the server's group may use it).
/// Prints tables by default; --json prints the server's JSON document.
#[derive(Debug, Parser)]
#[command(name = "prodserver", version)]
struct Args {
    /// The server's admin socket.
    #[arg(
        long,
        short = 's',
        value_name = "PATH",
        env = "GOSSIP_ADMIN_SOCKET",
        default_value = "gossip-data/admin.sock"
    )]
    socket: PathBuf,
    /// Print the JSON document instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Overview: name, ports, users, clients, peers, tree, uptime.
    Status,
    /// Known servers with RTT, liveness and whether they are linked.
    Servers,
    /// The RTT matrix: every server's published measurements.
    Rtt,
    /// The minimum spanning tree and this server's neighbours.
    Mst,
    /// Add a server (after a netsplit): resolved, measured, linked if it is a tree neighbour.
    AddServer {
        /// HOST:PORT (base port).
        server: String,
    },
    /// Add every server listed in a gossipd config file (its `peers`), the spec's prodServer.
    Prod {
        /// A gossipd TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Forget and refuse a server here. Naming this server itself makes it leave the
    /// federation: its signed removal makes every server forget it.
    DeleteServer {
        /// HOST:PORT (base port).
        server: String,
    },
    /// Bind a server name to its identity key: pin it before the first link, or accept a key
    /// rotation its admin announced. Compare the key out of band (`prodserver status` on it).
    Trust {
        /// HOST:PORT (base port).
        server: String,
        /// Its key, 64 hex digits.
        key: String,
    },
    /// Re-measure every server and recompute the tree now.
    Recalc,
    /// Send a notice to every client logged in here (e.g. before maintenance).
    Notice {
        /// The text clients show.
        text: String,
    },
    /// Manage refused IPs, CIDR ranges and server keys.
    Blacklist {
        #[command(subcommand)]
        action: BlacklistCmd,
    },
    /// Every stored user.
    Users,
    /// One stored record: event count, signature check, raw XML.
    User {
        /// UserID.
        uid: u64,
    },
    /// Write one archive (.tar.gz) for a bug report: version, config (secrets redacted),
    /// status, RTT matrix, tree, metrics and recent log lines. Contains no keys or secrets.
    Diagnostics {
        /// Where to write the archive.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a backup of the running server to FILE (a tar archive) without stopping it: its
    /// users, contact lists, transaction log, last wills, mailbox, server keyring and
    /// blacklist, cut at one moment. The server writes FILE itself, so its user must be able
    /// to write there. Restore with `gossipd --restore FILE --data-dir NEW_DIR`.
    Backup {
        /// Where to write the archive.
        file: PathBuf,
        /// Also include the server's private key (server.key). Whoever holds the archive can
        /// then act as this server: keep it like the key itself. Without it, restore the key
        /// from where you keep it, or the restored server starts with a new identity.
        #[arg(long)]
        include_key: bool,
    },
    /// Work with a protocol trace written by `gossipd --trace FILE` (offline; no socket needed).
    Trace {
        #[command(subcommand)]
        action: TraceCmd,
    },
    /// Counters and gauges, Prometheus text format (pipe into a file for node_exporter's
    /// textfile collector if you run Prometheus).
    Metrics,
}

#[derive(Debug, Subcommand)]
enum TraceCmd {
    /// Counts per message type and direction, and request → reply latencies (p50, p99, max).
    Summarize {
        /// The trace file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BlacklistCmd {
    /// Refuse an IP or CIDR range.
    Add {
        /// e.g. 192.0.2.7, 198.51.100.0/24, or a server key (64 hex digits): its links are
        /// refused whatever its address.
        net: String,
    },
    /// Allow it again.
    Remove {
        /// As added.
        net: String,
    },
    /// Show the list.
    List,
}

fn call(socket: &PathBuf, req: &AdminRequest) -> anyhow::Result<Value> {
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "no admin socket at {}: is gossipd running with this data directory? (--socket PATH)",
            socket.display()
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied on {}: run as the server's user (or use status.sock for read-only commands)",
            socket.display()
        ),
        std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "{} exists but nobody is listening: gossipd is not running",
            socket.display()
        ),
        _ => anyhow::anyhow!("cannot connect to {}: {e}", socket.display()),
    })?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    (&stream).write_all(&line).context("sending the request")?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("reading the answer")?;
    let resp: AdminResponse =
        serde_json::from_str(&answer).context("gossipd sent an unreadable answer")?;
    if !resp.ok {
        bail!("gossipd refused: {}", resp.error.unwrap_or_default());
    }
    Ok(resp.data)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let req = match &args.command {
        Cmd::Status => AdminRequest::Status,
        Cmd::Servers => AdminRequest::Servers,
        Cmd::Rtt => AdminRequest::Rtt,
        Cmd::Mst => AdminRequest::Mst,
        Cmd::Users => AdminRequest::Users,
        Cmd::User { uid } => AdminRequest::User { uid: *uid },
        Cmd::AddServer { server } => AdminRequest::AddServer {
            server: server.clone(),
        },
        Cmd::DeleteServer { server } => AdminRequest::DeleteServer {
            server: server.clone(),
        },
        Cmd::Trust { server, key } => AdminRequest::Trust {
            server: server.clone(),
            key: key.clone(),
        },
        Cmd::Recalc => AdminRequest::Recalc,
        Cmd::Notice { text } => AdminRequest::Notice { text: text.clone() },
        Cmd::Metrics => AdminRequest::Metrics,
        Cmd::Blacklist {
            action: BlacklistCmd::Add { net },
        } => AdminRequest::BlacklistAdd { net: net.clone() },
        Cmd::Blacklist {
            action: BlacklistCmd::Remove { net },
        } => AdminRequest::BlacklistRemove { net: net.clone() },
        Cmd::Blacklist {
            action: BlacklistCmd::List,
        } => AdminRequest::BlacklistList,
        Cmd::Prod { config } => return prod(&args, config),
        Cmd::Diagnostics { out } => return diagnostics(&args.socket, out),
        Cmd::Backup { file, include_key } => {
            return backup(&args.socket, file, *include_key, args.json)
        }
        Cmd::Trace {
            action: TraceCmd::Summarize { file },
        } => return summarize(file, args.json),
    };
    let data = call(&args.socket, &req)?;
    if args.json {
        println!("{}", json_safe(serde_json::to_string_pretty(&data)?));
        return Ok(());
    }
    if let Cmd::Metrics = args.command {
        out!("{}", data["text"].as_str().unwrap_or(""));
        return Ok(());
    }
    match &args.command {
        Cmd::Status => {
            outln!(
                "server    {} (base port {})",
                data["identity"].as_str().unwrap_or("?"),
                data["base_port"]
            );
            outln!("key       {}", data["key"].as_str().unwrap_or("?"));
            outln!("federation {}", data["federation"].as_str().unwrap_or("?"));
            outln!("uptime    {} s", data["uptime_s"]);
            outln!(
                "users     {} (contact lists {})",
                data["users"],
                data["contact_lists"]
            );
            outln!("clients   {}", data["clients"]);
            outln!("digest    {}", data["digest"].as_str().unwrap_or("?"));
            print_peers(&data["peers"]);
            print_tree(&data["mst"]);
        }
        Cmd::Servers => print_peers(&data),
        Cmd::Rtt => {
            outln!("{:<24} {:<24} {:>10}", "FROM", "TO", "RTT (ms)");
            for row in data["matrix"].as_array().into_iter().flatten() {
                for cell in row["rtts"].as_array().into_iter().flatten() {
                    outln!(
                        "{:<24} {:<24} {:>10}",
                        row["from"].as_str().unwrap_or("?"),
                        cell["to"].as_str().unwrap_or("?"),
                        ms(&cell["rtt_ms"])
                    );
                }
            }
        }
        Cmd::Mst => {
            print_tree(&data["mst"]);
            outln!("neighbours: {}", join(&data["neighbours"]));
            outln!("linked:     {}", join(&data["links"]));
        }
        Cmd::Users => {
            outln!("{:<22} {:<16} {:<10} EVENTS", "UID", "NICK", "STATUS");
            for u in data.as_array().into_iter().flatten() {
                outln!(
                    "{:<22} {:<16} {:<10} {}",
                    u["uid"],
                    u["nick"].as_str().unwrap_or(""),
                    u["status"].as_str().unwrap_or(""),
                    u["event_count"]
                );
            }
        }
        Cmd::User { .. } => {
            outln!("uid              {}", data["uid"]);
            outln!(
                "event count      {} (rollover {})",
                data["event_count"],
                data["rollover"]
            );
            outln!("signature valid  {}", data["signature_valid"]);
            outln!("contact list     {}", data["contact_list"]);
            outln!("record           {}", data["record"].as_str().unwrap_or(""));
        }
        Cmd::Blacklist {
            action: BlacklistCmd::List,
        } => {
            for n in data.as_array().into_iter().flatten() {
                outln!("{}", n.as_str().unwrap_or(""));
            }
        }
        _ => println!("{}", json_safe(serde_json::to_string(&data)?)),
    }
    Ok(())
}

fn prod(args: &Args, config: &PathBuf) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    /// The part of a gossipd config this command reads; other keys are ignored.
    #[derive(serde::Deserialize)]
    struct PeersOnly {
        #[serde(default)]
        peers: Vec<String>,
    }
    let parsed: PeersOnly = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid config file", config.display()))?;
    if parsed.peers.is_empty() {
        bail!("{} lists no `peers`", config.display());
    }
    let mut results = Vec::new();
    for server in parsed.peers {
        let data = call(
            &args.socket,
            &AdminRequest::AddServer {
                server: server.clone(),
            },
        )
        .with_context(|| format!("adding {server}"))?;
        results.push(serde_json::json!({"server": server, "result": data}));
    }
    if args.json {
        println!("{}", json_safe(serde_json::to_string_pretty(&results)?));
    } else {
        for r in results {
            outln!("{}: {}", r["server"].as_str().unwrap_or("?"), r["result"]);
        }
    }
    Ok(())
}

/// Asks the server for a backup at `file` (made absolute: the server's working directory is
/// not ours) and says what it holds.
fn backup(socket: &PathBuf, file: &Path, include_key: bool, json: bool) -> anyhow::Result<()> {
    let path = std::path::absolute(file).with_context(|| format!("{}", file.display()))?;
    if include_key {
        eprintln!("warning: the backup includes the server's private key; whoever holds it can act as this server. Keep it as safely as the key itself.");
    }
    let data = call(
        socket,
        &AdminRequest::Backup {
            path: path.to_string_lossy().into_owned(),
            include_key,
        },
    )?;
    if json {
        println!("{}", json_safe(serde_json::to_string_pretty(&data)?));
        return Ok(());
    }
    let files = data["manifest"]["files"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    outln!(
        "backup of {} written to {} ({} bytes, {} files{})",
        data["manifest"]["server"].as_str().unwrap_or("?"),
        path.display(),
        data["bytes"],
        files.len(),
        if include_key {
            ", private key included"
        } else {
            ", private key not included"
        }
    );
    for f in files {
        outln!("  {:<18} {:>12} bytes", f[0].as_str().unwrap_or("?"), f[1]);
    }
    outln!(
        "restore with: gossipd --restore {} --data-dir NEW_DIR",
        path.display()
    );
    Ok(())
}

/// Writes the diagnostics archive: one file per part, so a reader can open just what they need.
fn diagnostics(socket: &PathBuf, out: &PathBuf) -> anyhow::Result<()> {
    let data = call(socket, &AdminRequest::Diagnostics)?;
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, bytes: Vec<u8>| -> anyhow::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        header.set_cksum();
        tar.append_data(
            &mut header,
            format!("gossip-diagnostics/{name}"),
            bytes.as_slice(),
        )?;
        Ok(())
    };
    let pretty = |v: &Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    add(
        "version.txt",
        format!(
            "gossipd {}\nprodserver {}\n",
            data["version"].as_str().unwrap_or("?"),
            env!("CARGO_PKG_VERSION")
        )
        .into_bytes(),
    )?;
    add("config.json", pretty(&data["config"]))?;
    add("status.json", pretty(&data["status"]))?;
    add("rtt.json", pretty(&data["rtt"]))?;
    add(
        "mst.json",
        pretty(&serde_json::json!({"mst": data["mst"], "links": data["links"]})),
    )?;
    add(
        "metrics.prom",
        data["metrics"].as_str().unwrap_or("").as_bytes().to_vec(),
    )?;
    let log: Vec<&str> = data["recent_log"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str())
        .collect();
    add("recent.log", (log.join("\n") + "\n").into_bytes())?;
    tar.into_inner()?.finish()?;
    outln!("wrote {} ({} log lines)", out.display(), log.len());
    Ok(())
}

/// Summarises a trace: per message type, frames in and out, and the time from each request
/// received (`id`) to the reply that closed it (a final reply with the same `re`, same peer).
fn summarize(file: &PathBuf, json: bool) -> anyhow::Result<()> {
    use gossip_common::Message;
    use std::collections::{BTreeMap, HashMap};
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    #[derive(Default)]
    struct Row {
        frames_in: u64,
        frames_out: u64,
        latencies_ms: Vec<f64>,
    }
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut open: HashMap<(String, u64), (f64, String)> = HashMap::new();
    let (mut lines, mut unreadable, mut dropped) = (0u64, 0u64, 0u64);
    for line in text.lines() {
        lines += 1;
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            unreadable += 1;
            continue;
        };
        if let Some(d) = v["dropped"].as_u64() {
            dropped += d;
            continue;
        }
        let (Some(t), Some(dir), Some(peer), Some(frame)) = (
            v["t"].as_f64(),
            v["dir"].as_str(),
            v["peer"].as_str(),
            v["frame"].as_str(),
        ) else {
            unreadable += 1;
            continue;
        };
        let Ok(msg) = Message::decode(frame.as_bytes()) else {
            unreadable += 1;
            continue;
        };
        let row = rows.entry(msg.msgtype().to_owned()).or_default();
        if dir == "in" {
            row.frames_in += 1;
            if let Some(id) = msg.header.id {
                open.insert((peer.to_owned(), id), (t, msg.msgtype().to_owned()));
            }
        } else {
            row.frames_out += 1;
            let last = msg.body.ends_request();
            if let (Some(re), true) = (msg.header.re, last) {
                if let Some((t0, req)) = open.remove(&(peer.to_owned(), re)) {
                    rows.entry(req)
                        .or_default()
                        .latencies_ms
                        .push((t - t0) * 1000.0);
                }
            }
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| -> Option<f64> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Some(v[((v.len() - 1) as f64 * p).round() as usize])
    };
    let mut out = Vec::new();
    for (t, mut r) in rows {
        let (p50, p99, max) = (
            pct(&mut r.latencies_ms, 0.5),
            pct(&mut r.latencies_ms, 0.99),
            pct(&mut r.latencies_ms, 1.0),
        );
        out.push(serde_json::json!({"msgtype": t, "in": r.frames_in, "out": r.frames_out, "replies": r.latencies_ms.len(), "p50_ms": p50, "p99_ms": p99, "max_ms": max}));
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"lines": lines, "unreadable": unreadable, "dropped_by_server": dropped, "types": out})
            )?
        );
        return Ok(());
    }
    outln!(
        "{:<18} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "MSGTYPE",
        "IN",
        "OUT",
        "REPLIES",
        "P50 ms",
        "P99 ms",
        "MAX ms"
    );
    let f = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
    };
    for r in &out {
        outln!(
            "{:<18} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
            r["msgtype"].as_str().unwrap_or(""),
            r["in"],
            r["out"],
            r["replies"],
            f(&r["p50_ms"]),
            f(&r["p99_ms"]),
            f(&r["max_ms"])
        );
    }
    outln!("{lines} lines, {unreadable} unreadable, {dropped} frames dropped by the server while tracing");
    Ok(())
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "dead".to_owned(), |m| format!("{m:.2}"))
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn print_peers(peers: &Value) {
    outln!(
        "{:<24} {:>10} {:<6} {:<6} KEY",
        "PEER",
        "RTT (ms)",
        "ALIVE",
        "LINKED"
    );
    for p in peers.as_array().into_iter().flatten() {
        outln!(
            "{:<24} {:>10} {:<6} {:<6} {}",
            p["id"].as_str().unwrap_or("?"),
            ms(&p["rtt_ms"]),
            p["alive"],
            p["linked"],
            p["key"].as_str().unwrap_or("(not seen yet)")
        );
    }
}

fn print_tree(mst: &Value) {
    outln!("spanning tree:");
    for e in mst.as_array().into_iter().flatten() {
        outln!(
            "  {} — {}",
            e[0].as_str().unwrap_or("?"),
            e[1].as_str().unwrap_or("?")
        );
    }
}
