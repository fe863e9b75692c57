//! Start and stop: opening a node's datafiles and keys, binding its ports, [`assemble`]-ing its
//! services — each handed the narrow handles it needs, nothing reaching through a hub — and
//! starting its loops; and the graceful stop that lets client sessions end and their wills
//! cross the links before the federation stops, waits for every task and flushes the
//! datafiles.

mod assemble;
mod listen;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::blacklist::Blacklist;
use crate::config::Config;
use crate::federation::{self, Hooks};
use crate::lab::LabClock;
use crate::mailbox::Mailbox;
use crate::net::{self, BindError};
use crate::peer;
use crate::server_keys::{self, ServerKeys};
use crate::store::Store;
use crate::tasks::Tasks;
use crate::trace::Trace;
use crate::wills::Wills;

pub use assemble::Node;
use assemble::{assemble, NodeParts};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A port could not be bound (and fallback was off or exhausted).
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The blacklist file or the admin sockets could not be set up.
    #[error("{0}")]
    Admin(String),
    /// A helper thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The datafiles could not be opened.
    #[error("cannot open datafiles in {dir}: {source}")]
    Store {
        /// Data directory.
        dir: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How long a stop waits for its client sessions to end (and publish their wills).
const SESSION_DRAIN: Duration = Duration::from_secs(2);
/// How long a stop then waits for the links' queues to empty.
const LINK_DRAIN: Duration = Duration::from_millis(500);
/// Longest wait for the node's tasks at shutdown before the datafiles are flushed regardless.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// What a node does as it starts and stops, whatever its transport: publishes the wills of its
/// own sessions that a crash left outstanding, and at a stop lets the sessions end and their
/// wills cross the links before the federation stops; and starts the federation's loops.
fn start_services(node: &Arc<Node>) {
    let tasks = &node.tasks;
    let (wills, me) = (Arc::clone(&node.wills), node.federation.me().clone());
    tasks.spawn(async move {
        wills.publish_of(&me, "restart").await;
    });
    let node2 = Arc::clone(node);
    let shutdown = tasks.shutdown().clone();
    tasks.spawn(async move {
        shutdown.cancelled().await;
        let node = node2;
        let deadline = tokio::time::Instant::now() + SESSION_DRAIN;
        while node.clients.admission.sessions_live() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let deadline = tokio::time::Instant::now() + LINK_DRAIN;
        while !node.federation.links_idle() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        node.links_stop.cancel();
    });
    let hooks: Arc<dyn Hooks> = Arc::new(Arc::clone(&node.peers));
    federation::start_loops(&node.federation, hooks, &node.links_stop, tasks);
}

/// A node started by [`start`].
pub struct RunningNode {
    /// Its services.
    pub node: Arc<Node>,
    /// The HTTP listener's bound address, if it has one.
    http: Option<SocketAddr>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl RunningNode {
    /// The base port bound.
    pub fn base_port(&self) -> u16 {
        self.node.base_port()
    }

    /// The HTTP listener's address (`--http`), if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// The client address to connect to.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.node.config.bind, self.node.base_port())
    }

    /// A token that stops the node when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the node has been asked to stop, then for every task, then flushes and
    /// closes the datafiles.
    pub async fn wait(self) -> std::io::Result<()> {
        self.shutdown.cancelled().await;
        self.tracker.close();
        // Every loop selects on the shutdown token, so this is quick; a task stuck anyway (a
        // peer that stopped reading) must not keep the datafiles from being flushed.
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.tracker.len(),
                "tasks still running {SHUTDOWN_GRACE:?} after shutdown; flushing anyway"
            );
        }
        let store = Arc::clone(&self.node.store);
        store.flush().await?;
        tracing::info!("stopped; datafiles flushed");
        Ok(())
    }

    /// Stops the node and waits for it (graceful shutdown).
    pub async fn stop(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

fn store_error(config: &Config) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |source| StartError::Store {
        dir: config.data_dir.display().to_string(),
        source,
    }
}

/// What a node runs with besides its data directory: how it is reached and watched.
struct Surroundings {
    base_port: u16,
    blacklist: Arc<Blacklist>,
    trace: Option<Arc<Trace>>,
    lab_clock: Option<Arc<LabClock>>,
    transport: Arc<dyn federation::Transport>,
}

/// Opens what every node keeps in its data directory besides the store (the wills, the keys,
/// the mailbox), assembles the node and starts its services, spawning into `tasks`.
fn open_node(
    config: Config,
    store: Arc<Store>,
    around: Surroundings,
    tasks: &Tasks,
) -> Result<Arc<Node>, StartError> {
    let (tracker, shutdown) = (tasks.tracker(), tasks.shutdown());
    let dir = &config.data_dir;
    let wills = Wills::open(dir, &store, tracker, shutdown).map_err(store_error(&config))?;
    let keys = ServerKeys::load_or_create(dir).map_err(store_error(&config))?;
    let mailbox = Mailbox::open(dir, tracker, shutdown).map_err(store_error(&config))?;
    let node = assemble(
        NodeParts {
            base_port: around.base_port,
            config,
            store,
            blacklist: around.blacklist,
            trace: around.trace,
            lab_clock: around.lab_clock,
            transport: around.transport,
            wills,
            keys,
            mailbox,
        },
        tasks,
    );
    start_services(&node);
    Ok(node)
}

fn load_blacklist(config: &Config) -> Result<Arc<Blacklist>, StartError> {
    Blacklist::load(&config.data_dir.join("blacklist.txt"), &config.blacklist)
        .map(Arc::new)
        .map_err(StartError::Admin)
}

/// Starts a node with no sockets of its own: its datafiles and its federation, over
/// `transport`, taking the links that transport hands over on `incoming`. For the simulator
/// (`sim`), which runs many nodes in one process on an in-memory network.
pub(crate) fn start_headless(
    config: Config,
    transport: Arc<dyn federation::Transport>,
    mut incoming: tokio::sync::mpsc::Receiver<(federation::transport::Conn, SocketAddr)>,
) -> Result<RunningNode, StartError> {
    let (store, _report) = Store::open(&config.data_dir).map_err(store_error(&config))?;
    store.on_paused_clock();
    let blacklist = load_blacklist(&config)?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let tasks = Tasks::new(tracker.clone(), shutdown.clone());
    let around = Surroundings {
        base_port: config.base_port,
        blacklist,
        trace: None,
        lab_clock: None,
        transport,
    };
    let node = open_node(config, store, around, &tasks)?;
    // Links the transport hands over.
    let (door, stop, t) = (
        Arc::clone(&node.peers),
        node.links_stop.clone(),
        tasks.clone(),
    );
    tasks.spawn(async move {
        loop {
            let (conn, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                c = incoming.recv() => match c { Some(c) => c, None => return },
            };
            t.spawn(peer::run_link(
                Arc::clone(&door),
                conn,
                None,
                peer,
                crate::federation::LinkKind::Tree,
            ));
        }
    });
    Ok(RunningNode {
        node,
        http: None,
        shutdown,
        tracker,
    })
}

/// Binds the node's ports, opens its datafiles and starts its services.
pub async fn start(config: Config) -> Result<RunningNode, StartError> {
    let config = listen::fit_open_files(config);
    let (store, report) = Store::open(&config.data_dir).map_err(store_error(&config))?;
    tracing::info!(
        users = report.users,
        contact_lists = report.lists,
        torn_bytes = report.torn_bytes,
        corrupt_lines = report.corrupt_lines,
        bad_signatures = report.bad_signatures,
        "datafiles loaded"
    );
    let listeners = net::bind(config.bind, config.base_port, config.strict_ports).await?;
    let blacklist = load_blacklist(&config)?;
    let admin_path = config.admin_socket.clone();
    let admin_listener = admin::bind(&admin_path, 0o600)
        .map_err(|e| StartError::Admin(format!("admin socket {}: {e}", admin_path.display())))?;
    let status_listener = admin::bind(&admin::status_path(&admin_path), 0o660)
        .map_err(|e| StartError::Admin(format!("status socket: {e}")))?;
    let http_listener = match config.http {
        Some(addr) => Some(crate::http::bind(addr).await.map_err(|e| {
            StartError::Admin(format!(
                "HTTP listener {addr}: {e} (choose another address with --http, or leave it off)"
            ))
        })?),
        None => None,
    };
    let trace = match &config.trace {
        Some(path) => Some(Arc::new(Trace::open(path).map_err(|e| {
            StartError::Admin(format!("trace file {}: {e}", path.display()))
        })?)),
        None => None,
    };
    let me = (config.name.clone(), listeners.base_port);
    net::write_ports_file(
        &config.data_dir,
        &crate::mst::id_string(&me),
        config.bind,
        listeners.base_port,
    )
    .map_err(store_error(&config))?;
    let lab_clock = if config.lab.is_empty() {
        None
    } else {
        Some(Arc::new(LabClock::start().map_err(StartError::Thread)?))
    };
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let tasks = Tasks::new(tracker.clone(), shutdown.clone());
    let transport = Arc::new(federation::Tcp {
        bind: config.bind,
        blacklist: Arc::clone(&blacklist),
        lab: config.lab.clone(),
    });
    let around = Surroundings {
        base_port: listeners.base_port,
        blacklist,
        trace,
        lab_clock,
        transport,
    };
    let node = open_node(config, store, around, &tasks)?;
    tracing::info!(
        identity = %node.identity(),
        key = %server_keys::fingerprint(&node.keys.public()),
        client_port = node.base_port(),
        server_port = node.base_port() + 1,
        rtt_port = node.base_port() + 2,
        "listening"
    );
    listen::serve_clients(&node, listeners.client);
    listen::serve_servers(&node, listeners.server);
    // Local administration.
    admin::serve(&node.admin, admin_listener, false, &shutdown, &tracker);
    admin::serve(&node.admin, status_listener, true, &shutdown, &tracker);
    tracing::info!(admin = %admin_path.display(), "admin socket ready");
    listen::serve_echo(&node, listeners.echo_udp, listeners.echo_tcp);
    let http = match http_listener {
        Some(l) => {
            let addr = l
                .local_addr()
                .map_err(|e| StartError::Admin(format!("HTTP listener: {e}")))?;
            crate::http::serve(&node.admin, l, &shutdown, &tracker);
            tracing::info!(%addr, "HTTP listener ready: /metrics, /healthz, /readyz");
            Some(addr)
        }
        None => None,
    };
    Ok(RunningNode {
        node,
        http,
        shutdown,
        tracker,
    })
}
