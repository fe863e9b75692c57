//! A real `gossipd` process for tests and the benchmark: started on ports that cannot collide
//! (base port 0, or ports reserved by [`crate::ports`] with a clear "port taken" error to retry
//! on), asked about its state through its admin socket (tests wait on state, never on log
//! text), stopped with SIGTERM or SIGKILL.
//!
//! Its log is kept in a file that survives restarts (appended, one header per start). If a test
//! panics while a node is alive, dropping the node copies that log to
//! `target/test-logs/<test>/<node>.log` and prints its tail, so a failure keeps its evidence.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use gossip_common::admin::{AdminRequest, AdminResponse};

/// gossipd's exit status when a port could not be bound.
const EXIT_BIND: i32 = 3;
/// Log lines quoted in error messages and printed on failure.
const TAIL_LINES: usize = 40;

/// How to start one node.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Data directory (datafiles, admin socket, `ports.json`).
    pub data_dir: PathBuf,
    /// A short name for logs and evidence files (default: the data directory's name).
    pub label: String,
    /// `--name`: the host part of the server's identity.
    pub name: String,
    /// `--bind`: the address its ports are bound on.
    pub bind: String,
    /// Base port; 0 lets the kernel choose (never collides). A non-zero port is strict: the node
    /// fails with [`StartError::PortTaken`] rather than moving.
    pub base_port: u16,
    /// CPU to pin the process to (`taskset`), for the benchmark.
    pub cpu: Option<usize>,
    /// Further flags.
    pub extra: Vec<String>,
    /// `RUST_LOG` for the node (default `info`).
    pub log_level: String,
    /// How long loading the datafiles and binding may take.
    pub start_timeout: Duration,
}

impl Spec {
    /// A loopback node on kernel-chosen ports, keeping its data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Spec {
        let data_dir = data_dir.into();
        let label = data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "gossipd".into());
        Spec {
            data_dir,
            label,
            name: "127.0.0.1".into(),
            bind: "127.0.0.1".into(),
            base_port: 0,
            cpu: None,
            extra: Vec::new(),
            log_level: std::env::var("GOSSIP_TEST_SERVER_LOG").unwrap_or_else(|_| "info".into()),
            start_timeout: Duration::from_secs(60),
        }
    }

    /// Uses this base port (strictly).
    pub fn port(mut self, base_port: u16) -> Spec {
        self.base_port = base_port;
        self
    }

    /// Fast RTT probing for tests: a packet every 20 ms, dead after 2 s, a round every 0.5 s,
    /// so trees form and change in well under a second.
    pub fn fast_probes(self) -> Spec {
        self.args([
            "--probe-interval-ms",
            "20",
            "--dead-after",
            "2",
            "--reprobe",
            "0.5",
        ])
    }

    /// Adds flags.
    pub fn args<I, S>(mut self, args: I) -> Spec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// Where the node's log goes: beside its data directory, so it outlives a wiped data dir.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A port was taken: pick other ports and retry.
    #[error("gossipd {label}: port taken (exit status 3); log tail:\n{tail}")]
    PortTaken {
        /// The node.
        label: String,
        /// The end of its log.
        tail: String,
    },
    /// Anything else: the message carries the log's tail.
    #[error("gossipd {label} did not start: {why}; log {log}, tail:\n{tail}")]
    Failed {
        /// The node.
        label: String,
        /// What went wrong.
        why: String,
        /// Its log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
}

/// A running gossipd process; killed when dropped.
pub struct Gossipd {
    child: Child,
    spec: Spec,
    /// The base port it bound.
    pub base_port: u16,
}

impl Gossipd {
    /// Starts gossipd and waits until it has loaded its datafiles and bound its ports.
    pub fn start(spec: &Spec) -> Result<Gossipd, StartError> {
        let fail = |why: String| StartError::Failed {
            label: spec.label.clone(),
            why,
            log: spec.log_path().display().to_string(),
            tail: tail(&spec.log_path(), TAIL_LINES),
        };
        std::fs::create_dir_all(&spec.data_dir).map_err(|e| fail(format!("data dir: {e}")))?;
        let gossipd = crate::bin_path("gossipd");
        let mut cmd = match spec.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&gossipd);
                c
            }
            None => Command::new(&gossipd),
        };
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.log_path())
            .map_err(|e| fail(format!("log file: {e}")))?;
        let _ = writeln!(log, "=== gossipd start, base port {} ===", spec.base_port);
        cmd.args(["--name", &spec.name, "--bind", &spec.bind, "--base-port"])
            .arg(spec.base_port.to_string())
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(&spec.extra)
            .env("RUST_LOG", &spec.log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if spec.base_port != 0 {
            cmd.arg("--strict-ports");
        }
        let mut child = cmd.spawn().map_err(|e| fail(format!("spawn: {e}")))?;
        // Its one stdout line names the bound base port; it comes after the datafiles loaded.
        // Read on a thread so a hung start is a timeout, not a hung test.
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(spec.start_timeout) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("not ready within {:?}", spec.start_timeout)));
            }
        };
        let port = line.rsplit(' ').next().and_then(|p| p.trim().parse().ok());
        match port {
            Some(port) => Ok(Gossipd {
                child,
                spec: spec.clone(),
                base_port: port,
            }),
            None => {
                let status = child.wait().ok();
                if status.and_then(|s| s.code()) == Some(EXIT_BIND) {
                    return Err(StartError::PortTaken {
                        label: spec.label.clone(),
                        tail: tail(&spec.log_path(), TAIL_LINES),
                    });
                }
                Err(fail(format!("exited ({status:?}) with stdout {line:?}")))
            }
        }
    }

    /// The spec it was started from (restart it with the same ports: `spec().port(base_port)`).
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// `BIND:P`, the client address.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.spec.bind, self.base_port)
    }

    /// `NAME:P`, the server's identity.
    pub fn identity(&self) -> String {
        format!("{}:{}", self.spec.name, self.base_port)
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.spec.data_dir
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One admin request; the response's `data`. A slow answer is an error, never mistaken for
    /// an empty one.
    pub fn admin(&self, req: &AdminRequest) -> anyhow::Result<serde_json::Value> {
        let path = self.spec.data_dir.join("admin.sock");
        let mut s = std::os::unix::net::UnixStream::connect(&path)
            .with_context(|| format!("admin socket {}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut line = serde_json::to_string(req)?;
        line.push('\n');
        s.write_all(line.as_bytes())?;
        let mut answer = String::new();
        BufReader::new(s)
            .read_line(&mut answer)
            .with_context(|| format!("no answer to {req:?}"))?;
        let resp: AdminResponse =
            serde_json::from_str(&answer).with_context(|| format!("answer {answer:?}"))?;
        if !resp.ok {
            bail!("admin {req:?} refused: {:?}", resp.error);
        }
        Ok(resp.data)
    }

    /// The `status` document (identity, peers, tree, digest, …).
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        self.admin(&AdminRequest::Status)
    }

    /// A counter or gauge from the node's metrics (`gossip_<name>`).
    pub fn metric(&self, name: &str) -> anyhow::Result<u64> {
        let text = self.admin(&AdminRequest::Metrics)?;
        let text = text["text"].as_str().unwrap_or_default();
        let want = format!("gossip_{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&want))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("metric gossip_{name} missing"))
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `limit` for a graceful exit (killed after that). Returns how
    /// long it took, or `None` if it had to be killed.
    pub fn terminate(&mut self, limit: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        // The `kill` command rather than libc keeps this crate free of unsafe code.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        while t0.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill9();
        None
    }

    /// User + system CPU seconds it has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.spec.log_path(), n)
    }
}

impl Drop for Gossipd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            keep_evidence(&self.spec);
        }
    }
}

/// Copies a node's log to `target/test-logs/<test>/<label>.log` and prints its tail.
fn keep_evidence(spec: &Spec) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .replace("::", "-");
    let dir = crate::target_dir().join("test-logs").join(test);
    let kept = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::copy(spec.log_path(), dir.join(format!("{}.log", spec.label))));
    eprintln!(
        "---- gossipd {} log (kept: {}), last {TAIL_LINES} lines ----\n{}",
        spec.label,
        match kept {
            Ok(_) => dir.display().to_string(),
            Err(e) => format!("not copied: {e}"),
        },
        tail(&spec.log_path(), TAIL_LINES)
    );
}

/// The last `n` lines of a file (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether every `status` document shows the same tree, spanning exactly `ids` (identities),
/// and every node linked to exactly its tree neighbours among the servers it lists.
pub fn one_tree(statuses: &[serde_json::Value], ids: &[String]) -> bool {
    let tree = &statuses[0]["mst"];
    let Some(edges) = tree.as_array() else {
        return false;
    };
    let mut members: Vec<&str> = edges
        .iter()
        .flat_map(|e| {
            e.as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
        })
        .collect();
    members.sort();
    members.dedup();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort();
    members == want
        && edges.len() + 1 == ids.len()
        && statuses.iter().all(|s| {
            let me = s["identity"].as_str().unwrap_or_default();
            let linked_ok = s["peers"].as_array().is_some_and(|peers| {
                peers.iter().all(|p| {
                    let id = p["id"].as_str().unwrap_or_default();
                    let neighbour = edges
                        .iter()
                        .any(|e| e[0] == me && e[1] == id || e[1] == me && e[0] == id);
                    p["linked"] == neighbour
                })
            });
            s["mst"] == *tree && linked_ok
        })
}

/// Resident set size of `pid` in KiB (0 if gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of `pid` (0 if gone); `/proc/PID/stat` fields 14 and 15.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may contain spaces; fields are counted after its ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
