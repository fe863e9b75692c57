//! Real `gossipd` processes for the benchmark: start (optionally pinned to a CPU), talk to
//! through the admin socket, read resident memory and CPU time from `/proc`, stop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use gossip_common::admin::AdminRequest;
pub(crate) use gossip_tests::gossipd::cpu_seconds;
use gossip_tests::gossipd::{rss_kib, Gossipd, Spec};

/// How to start one node.
#[derive(Debug, Clone)]
pub(crate) struct NodeSpec {
    /// Base port: 0 (kernel-chosen, never collides) unless the scenario must name it in
    /// advance (then from `gossip_tests::ports`, and strict).
    pub(crate) base_port: u16,
    /// Data directory (datafiles, admin socket); the log goes beside it.
    pub(crate) data_dir: PathBuf,
    /// CPU to pin the process to.
    pub(crate) cpu: Option<usize>,
    /// Further gossipd flags.
    pub(crate) extra: Vec<String>,
}

/// A running gossipd process (the tests' [`Gossipd`]); killed when dropped.
pub(crate) struct Node {
    inner: Gossipd,
    /// Base port it bound.
    pub(crate) base_port: u16,
}

impl Node {
    /// Starts gossipd and waits until it has loaded its datafiles and bound its ports.
    pub(crate) fn start(spec: &NodeSpec) -> anyhow::Result<Node> {
        // Under `cargo run` the workspace's binaries are (re)built first by `bin_path`, so a
        // stale `gossipd` is never measured.
        let mut s = Spec::new(&spec.data_dir)
            .port(spec.base_port)
            .args(spec.extra.iter().cloned());
        s.cpu = spec.cpu;
        s.log_level = std::env::var("GOSSIP_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into());
        // A million users take over a minute to load on one core.
        s.start_timeout = Duration::from_secs(1800);
        let inner = Gossipd::start(&s)?;
        Ok(Node {
            base_port: inner.base_port,
            inner,
        })
    }

    /// `127.0.0.1:P`, the client address.
    pub(crate) fn addr(&self) -> String {
        self.inner.addr()
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// One admin request; the response's `data`.
    pub(crate) fn admin(&self, req: &AdminRequest) -> anyhow::Result<serde_json::Value> {
        self.inner.admin(req)
    }

    /// A counter or gauge from the node's metrics (`gossip_<name>`).
    pub(crate) fn metric(&self, name: &str) -> anyhow::Result<u64> {
        self.inner.metric(name)
    }

    /// Resident memory in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// CPU seconds used so far (user + system).
    pub(crate) fn cpu_s(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// Graceful stop (SIGTERM), then wait; killed if it takes over 30 s.
    pub(crate) fn stop(mut self) {
        self.inner.terminate(Duration::from_secs(30));
    }
}

/// Whether `taskset` (util-linux) is there to pin processes with.
pub(crate) fn can_pin() -> bool {
    Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pins every thread of this process (and so everything it starts later) to `cpu`.
pub(crate) fn pin_self(cpu: usize) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux) to pin the load generator")?;
    if !status.success() {
        bail!("taskset could not pin the benchmark to CPU {cpu}");
    }
    Ok(())
}

/// Polls `check` every 20 ms until it yields `Some`, or fails after `timeout`.
pub(crate) fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh directory for one run's nodes, removed afterwards unless `--keep`.
pub(crate) fn run_dir(base: &Path, name: &str) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(base)?;
    Ok(tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(base)?)
}

/// Connects client number `i` of a load generator, from its own source address.
///
/// One process opening ten thousand connections to one server port makes the kernel search
/// the ephemeral port range for a free 4-tuple on every `connect`, which grows with the number
/// already open (`__inet_hash_connect`: at 19,000 connections it cost the generators more than
/// the logins themselves). Real clients come from many addresses; here each generator `lane`
/// gets its own loopback source address and every client an explicit port, so nothing is
/// searched. Falls back to an ordinary connect if that address is unusable.
pub(crate) async fn connect_client(
    server: &str,
    lane: u8,
    i: usize,
    key: gossip_common::Keypair,
) -> Result<(gossip_client::GossipClient, gossip_client::Events), gossip_client::ClientError> {
    let Ok(dst) = server.parse::<std::net::SocketAddr>() else {
        return gossip_client::GossipClient::connect(server, key).await;
    };
    let src = std::net::SocketAddr::from((
        [127, 1 + lane, (i / 40_000) as u8, 1],
        20_000 + (i % 40_000) as u16,
    ));
    let explicit = async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.set_reuseaddr(true)?;
        sock.bind(src)?;
        sock.connect(dst).await
    };
    match explicit.await {
        Ok(stream) => gossip_client::GossipClient::with_stream(stream, server, key, None).await,
        Err(_) => gossip_client::GossipClient::connect(server, key).await,
    }
}
