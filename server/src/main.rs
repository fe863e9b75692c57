//! `gossipd`: runs one Gossip server node.
//!
//! Only flag parsing, logging and signal handling live here; the server is `gossip_server`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use gossip_server::{Config, FileConfig};
use tracing_subscriber::EnvFilter;

/// Gossip server: federated presence and messaging.
///
/// Listens for clients on the base port P, for other servers on P+1 and for RTT probes (UDP and
/// TCP echo) on P+2. If those ports are taken it moves to another base port (P+3, …) and says
/// so, unless --strict-ports is given; --base-port 0 lets the kernel choose free ports. The
/// bound ports are printed on stdout and written to DATA_DIR/ports.json. Settings come from
/// --config FILE (TOML), overridden by flags. Logs go to stderr; set RUST_LOG (e.g.
/// RUST_LOG=gossip_server=debug) for more detail. Exit status 3: a port could not be bound.
#[derive(Debug, Parser)]
#[command(name = "gossipd", version)]
struct Args {
    /// TOML config file; every option below can also be set there (flags win).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// This server's host name, as clients and other servers reach it [default: host name].
    #[arg(long, value_name = "HOST")]
    name: Option<String>,
    /// Base port P (clients on P, servers on P+1, RTT on P+2) [default: 1024]. 0: any free
    /// ports the kernel picks (the server's identity then changes at every start; for tests and
    /// throwaway nodes).
    #[arg(long, short = 'p', value_name = "P")]
    base_port: Option<u16>,
    /// Exit with an error instead of moving to another base port when P..P+2 are taken.
    #[arg(long)]
    strict_ports: bool,
    /// Address to bind [default: 0.0.0.0].
    #[arg(long, value_name = "IP")]
    bind: Option<String>,
    /// Directory for datafiles and the transaction log [default: ./gossip-data].
    #[arg(long, short = 'd', value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Record every frame sent and received to FILE (JSON lines; summarise with
    /// `prodserver trace summarize FILE`).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Admin socket for prodserver (mode 0600; a read-only status.sock, mode 0660, is created
    /// beside it) [default: DATA_DIR/admin.sock].
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// Largest accepted message frame in bytes [default: 65536].
    #[arg(long, value_name = "BYTES")]
    max_frame: Option<usize>,
    /// Most simultaneous client connections [default: 18000].
    #[arg(long, value_name = "N")]
    max_clients: Option<usize>,
    /// Seconds of client silence before the server pings it [default: 10].
    #[arg(long, value_name = "SECS")]
    keepalive: Option<f64>,
    /// Seconds of client silence before it counts as gone and its last will fires [default: 30].
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<f64>,
    /// A server to join, HOST:PORT (its base port); repeat for several.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    peers: Vec<String>,
    /// Milliseconds between RTT probe packets [default: 2000].
    #[arg(long, value_name = "MS")]
    probe_interval_ms: Option<u64>,
    /// Seconds without an RTT reply before a server counts as dead [default: 30].
    #[arg(long, value_name = "SECS")]
    dead_after: Option<f64>,
    /// Seconds between RTT measurement rounds [default: 60].
    #[arg(long, value_name = "SECS")]
    reprobe: Option<f64>,
    /// LAB ONLY: add a one-way delay to everything sent to a peer, HOST:PORT=MS (repeatable).
    /// Emulates WAN links for tests and demos; never use in production.
    #[arg(long = "lab-link-delay", value_name = "HOST:PORT=MS")]
    lab_link_delay: Vec<String>,
}

impl Args {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut lab = std::collections::HashMap::new();
        for spec in &self.lab_link_delay {
            let (peer, ms) = spec.rsplit_once('=').ok_or_else(|| {
                anyhow::anyhow!("--lab-link-delay {spec:?}: expected HOST:PORT=MS")
            })?;
            let ms: u64 = ms
                .parse()
                .map_err(|_| anyhow::anyhow!("--lab-link-delay {spec:?}: bad milliseconds"))?;
            lab.insert(peer.to_owned(), ms);
        }
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let flags = FileConfig {
            name: self.name,
            base_port: self.base_port,
            strict_ports: self.strict_ports.then_some(true),
            bind: self.bind,
            data_dir: self.data_dir,
            admin_socket: self.admin_socket,
            trace: self.trace,
            max_frame: self.max_frame,
            max_clients: self.max_clients,
            keepalive_s: self.keepalive,
            idle_timeout_s: self.idle_timeout,
            peers: (!self.peers.is_empty()).then_some(self.peers),
            probe_interval_ms: self.probe_interval_ms,
            dead_after_s: self.dead_after,
            reprobe_s: self.reprobe,
            lab_link_delay_ms: (!lab.is_empty()).then_some(lab),
            ..FileConfig::default()
        };
        Ok(Config::from_file_config(file.merge(flags))?)
    }
}

/// Exit status when a port could not be bound (so scripts can pick other ports and retry).
const EXIT_BIND: u8 = 3;

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gossipd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            let bind = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<gossip_server::StartError>(),
                    Some(gossip_server::StartError::Bind(_))
                )
            });
            std::process::ExitCode::from(if bind { EXIT_BIND } else { 1 })
        }
    }
}

async fn run() -> anyhow::Result<()> {
    // Logs go to stderr and, for `prodserver diagnostics`, to an in-memory ring of recent lines.
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(
                    gossip_server::logring::LogRing::writer.with_max_level(tracing::Level::TRACE),
                )
                .with_ansi(false),
        )
        .init();
    let config = Args::parse().into_config()?;
    let node = gossip_server::start(config)
        .await
        .context("gossipd could not start")?;
    // One stable line on stdout for scripts and tests: the base port actually bound.
    println!(
        "gossipd listening: identity {} base port {}",
        node.node.identity(),
        node.base_port()
    );
    let shutdown = node.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; shutting down");
        shutdown.cancel();
    });
    node.wait()
        .await
        .context("flushing datafiles at shutdown")?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
