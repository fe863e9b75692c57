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
    /// TOML config file; every option below can also be set there (flags win). An annotated
    /// example with every option is dist/gossipd.toml.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check config FILE (with any flags laid over it), print the settings gossipd would run
    /// with, and exit: 0 if it is valid, 2 with the reason if not. Nothing is started.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// Restore the backup FILE (written by `prodserver backup`) into the data directory
    /// (--data-dir, or the config's; it must be new or empty), check every record in it, say
    /// what it holds, and exit. Then start gossipd on that directory as usual.
    #[arg(long, value_name = "FILE")]
    restore: Option<PathBuf>,
    #[command(flatten)]
    settings: FileConfig,
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
        let file = match self.config.as_ref().or(self.check_config.as_ref()) {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let flags = FileConfig {
            lab_link_delay_ms: (!lab.is_empty()).then_some(lab),
            ..self.settings
        };
        Ok(Config::from_file_config(file.merge(flags))?)
    }
}

/// Exit status when a port could not be bound (so scripts can pick other ports and retry).
const EXIT_BIND: u8 = 3;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(path) = args.check_config.clone() {
        return match args.into_config() {
            Ok(config) => {
                use std::io::Write;
                // A closed pipe (`| head`) is not an error worth a panic.
                let _ = writeln!(
                    std::io::stdout(),
                    "{}: valid; gossipd would run with:\n{config:#?}",
                    path.display()
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gossipd: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    if let Some(archive) = args.restore.clone() {
        return restore(args, &archive);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gossipd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
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

/// `--restore FILE`: unpacks a backup into the configured data directory and exits.
fn restore(args: Args, archive: &std::path::Path) -> std::process::ExitCode {
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gossipd: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    match gossip_server::backup::restore(archive, &config.data_dir) {
        Ok(r) => {
            let key = if r.manifest.key_included {
                "its private key restored".to_owned()
            } else {
                format!(
                    "no private key in the backup: copy the server's server.key into {} before starting it, or it starts with a new identity its peers do not know",
                    config.data_dir.display()
                )
            };
            println!(
                "restored the backup of {} (taken by gossipd {}) into {}: {} users, {} contact lists, every signature verified{}; {key}",
                r.manifest.server,
                r.manifest.version,
                config.data_dir.display(),
                r.users,
                r.lists,
                if r.torn_bytes > 0 {
                    format!(" ({} bytes of a record being written during the backup left out)", r.torn_bytes)
                } else {
                    String::new()
                },
            );
            println!(
                "start it with: gossipd --data-dir {}",
                config.data_dir.display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gossipd: cannot restore {}: {e}", archive.display());
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
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
    let config = args.into_config()?;
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
