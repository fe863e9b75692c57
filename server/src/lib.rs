//! gossipd: the Gossip server.
//!
//! The library is the whole server, so tests can run nodes in-process on real loopback sockets;
//! `main.rs` only parses flags, sets up logging and waits for signals. [`start`] binds the
//! node's three ports and spawns its services; [`RunningNode::stop`] shuts everything down and
//! flushes the datafiles.

mod admin;
mod applog;
pub mod blacklist;
pub mod config;
pub mod federation;
mod lab;
pub mod logring;
pub mod mailbox;
pub mod metrics;
pub mod mst;
mod net;
pub mod presence;
pub mod ratelimit;
pub mod reconcile;
pub mod registration;
pub(crate) mod relay;
pub mod server_keys;
mod session;
pub mod sim;
pub mod store;
pub mod sync;
pub mod trace;
pub mod wills;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gossip_common::message::UserInfoMsg;
use gossip_common::{ErrorCode, Message, Signed, UserId, UserInfo};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, ConfigError, FileConfig};
pub use net::{BindError, PORTS_FILE};

use presence::{Presence, SessionId};
use registration::UidLocks;
use store::Store;

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

/// Shared state of one running server.
pub struct Node {
    /// Validated configuration.
    pub config: Config,
    /// The user database.
    pub store: Arc<Store>,
    /// Logged-in sessions and who watches whom.
    pub presence: Presence,
    /// Counters.
    pub metrics: metrics::Metrics,
    /// Registration locks.
    pub locks: UidLocks,
    /// Server links, RTT matrix and spanning tree.
    pub federation: federation::Federation,
    /// Refused IPs.
    pub blacklist: blacklist::Blacklist,
    /// Protocol trace, when enabled.
    pub trace: Option<Arc<trace::Trace>>,
    /// Precise timer for emulated link delays, when any is configured.
    lab_clock: Option<lab::LabClock>,
    base_port: u16,
    started: Instant,
    /// How links are opened and RTTs measured (TCP and UDP; in memory in the simulator).
    pub(crate) transport: Arc<dyn federation::Transport>,
    /// Every task the node spawns, so a stop can wait for all of them.
    pub(crate) tasks: TaskTracker,
    /// Replicated last wills of the users logged in anywhere.
    pub wills: wills::Wills,
    /// Stops the federation. Cancelled after a stop's client sessions have ended and their last
    /// wills have crossed the links, so a graceful stop shows its users offline everywhere.
    pub(crate) links_stop: CancellationToken,
    /// Client connections being served.
    pub(crate) sessions_live: std::sync::atomic::AtomicUsize,
    /// Connections not logged in (yet), per address: bounded, so one address cannot hold the
    /// server's connections without ever authenticating.
    anonymous: parking_lot::Mutex<std::collections::HashMap<IpAddr, usize>>,
    /// Cancelled when the node stops; timers that outlive a request select on it.
    pub(crate) shutdown: CancellationToken,
    /// This server's identity key (and the handshake identity made from it).
    pub keys: server_keys::ServerKeys,
    /// Registrations started per address.
    pub(crate) register_rate: parking_lot::Mutex<ratelimit::Limiter<IpAddr>>,
    /// Relayed messages waiting for their recipients.
    pub mailbox: mailbox::Mailbox,
    /// Relayed messages sent per user.
    pub(crate) relay_rate: parking_lot::Mutex<ratelimit::Limiter<UserId>>,
}

/// Relayed messages one user may send: a burst of 60, then one a second.
const RELAY_RATE: ratelimit::Rate = ratelimit::Rate {
    burst: 60.0,
    per_second: 1.0,
};

/// Addresses whose registration rate is tracked at once (each entry is a few dozen bytes).
const RATE_TRACKED_ADDRESSES: usize = 100_000;

impl Node {
    /// Canonical identity `name:base_port`, as the spec defines it.
    pub fn identity(&self) -> String {
        format!("{}:{}", self.config.name, self.base_port)
    }

    /// The base port actually bound (may differ from the configured one after fallback).
    pub fn base_port(&self) -> u16 {
        self.base_port
    }

    /// Whether a connection from `peer` may be served on the `what` port ("client",
    /// "server"). Blacklisted addresses are refused, counted and logged here, once for both.
    pub(crate) fn admit(&self, peer: std::net::SocketAddr, what: &str) -> bool {
        if self.blacklist.contains(peer.ip()) {
            self.metrics.refused_blacklisted.inc();
            tracing::warn!(%peer, port = what, "connection from a blacklisted address dropped");
            return false;
        }
        true
    }

    /// Seconds since start.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Picks and locks a UserID for a registration from `ip`: the spec's id for this second,
    /// or the next second whose id is neither stored nor locked.
    ///
    /// This is the seam for the network-wide lock: federation takes the same lock on every
    /// reachable server here before the id is granted.
    pub async fn reserve_uid(&self, ip: IpAddr, holder: &str) -> Option<UserId> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut uid = UserId::allocate(now, ip);
        // Bounded well inside a client's request timeout: better "try again" than a hang.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(15);
        for _ in 0..1_000 {
            if std::time::Instant::now() > give_up {
                break;
            }
            let free_here = !self.store.contains_user(uid)
                && self
                    .locks
                    .try_lock(uid, holder, self.config.uid_lock)
                    .is_ok();
            if free_here {
                let ttl = self.config.uid_lock;
                if self.federation.lock_network(uid, holder, ttl).await {
                    return Some(uid);
                }
                // Stored or being registered elsewhere: release what we took, and jump a random
                // number of seconds so two racing servers do not collide again.
                self.release_uid(uid, holder);
                for _ in 0..rand::random::<u8>() % 16 {
                    uid = uid.next_second();
                }
            }
            uid = uid.next_second();
        }
        None
    }

    /// Releases a registration lock here and on every reachable server.
    pub fn release_uid(&self, uid: UserId, holder: &str) {
        self.locks.unlock(uid, holder);
        self.federation.unlock_network(uid, holder);
    }

    /// Client connections that have not logged in (yet), from every address.
    pub fn anonymous_connections(&self) -> usize {
        self.anonymous.lock().values().sum()
    }

    pub(crate) fn anonymous_map(
        &self,
    ) -> &parking_lot::Mutex<std::collections::HashMap<IpAddr, usize>> {
        &self.anonymous
    }

    /// This server's identity as a key.
    pub fn identity_key(&self) -> mst::ServerKey {
        (self.config.name.clone(), self.base_port)
    }

    /// Holds `will` for the sessions of `home` (verified by the caller: signed by the bound
    /// key) and floods it as `heldWill` to every link but `from_peer` if it is news here.
    pub fn hold_will(
        &self,
        home: mst::ServerKey,
        will: Signed<UserInfo>,
        from_peer: Option<&mst::ServerKey>,
    ) -> bool {
        if !self.wills.hold(&self.store, &home, will.clone()) {
            return false;
        }
        let frame = Bytes::from(
            Message::new(
                std::net::Ipv6Addr::UNSPECIFIED,
                gossip_common::message::HeldWill {
                    host: home.0,
                    port: home.1,
                    record: will,
                },
            )
            .to_xml(),
        );
        self.federation.flood(&frame, from_peer);
        true
    }

    /// Publishes every will held for `home` (a server judged dead, or this one after a crash).
    /// Returns how many were news.
    pub async fn publish_wills_of(&self, home: &mst::ServerKey, why: &str) -> usize {
        let wills = self.wills.take_home(home);
        if wills.is_empty() {
            return 0;
        }
        let n = self.publish_wills(wills, why).await;
        tracing::info!(home = %mst::key_string(home), published = n, why, "held last wills published");
        n
    }

    /// Stores and announces wills, all at once (their writes share `fdatasync`s). The same will
    /// published by several servers is one change: every copy after the first is stale.
    async fn publish_wills(&self, wills: Vec<Signed<UserInfo>>, why: &str) -> usize {
        let origin = format!("will:{why}");
        let results = futures::future::join_all(wills.into_iter().map(|w| {
            self.store
                .apply_user_info_then(w, store::Mode::Update, &origin, |r| {
                    self.user_changed(r, None)
                })
        }))
        .await;
        let mut news = 0;
        for r in results {
            match r {
                Ok(_) => news += 1,
                Err(store::StoreError::Stale { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "held last will refused"),
            }
        }
        self.metrics.last_wills.add(news as u64);
        news
    }

    /// A client of this server changed a UserInfo: push it locally and forward it to every
    /// tree neighbour.
    pub fn user_changed(&self, record: &Signed<UserInfo>, from_session: Option<SessionId>) {
        self.user_changed_from(record, from_session, None, false);
    }

    /// A new user registered here: push and forward as `newuser`.
    pub fn user_created(&self, record: &Signed<UserInfo>, from_session: Option<SessionId>) {
        self.user_changed_from(record, from_session, None, true);
    }

    /// A stored ContactList changed: update who watches whom, forward to the neighbours.
    pub fn list_changed_from(
        &self,
        record: &Signed<gossip_common::ContactList>,
        from_peer: Option<&mst::ServerKey>,
    ) {
        self.presence.set_contacts(record.owner, &record.contacts);
        let frame = Bytes::from(
            Message::new(
                std::net::Ipv6Addr::UNSPECIFIED,
                gossip_common::message::ChangeCl {
                    record: record.clone(),
                },
            )
            .to_xml(),
        );
        self.federation.flood(&frame, from_peer);
    }

    /// A ContactList arrived in a sync batch: update who watches whom (the batch is forwarded
    /// as a whole by the caller).
    pub fn list_changed_locally(&self, record: &Signed<gossip_common::ContactList>) {
        self.presence.set_contacts(record.owner, &record.contacts);
    }

    /// A stored UserInfo changed: push it to every session watching that user (and the user's
    /// other sessions, so all their clients agree) and forward it to every tree neighbour but
    /// the one it came from.
    pub fn user_changed_from(
        &self,
        record: &Signed<UserInfo>,
        from_session: Option<SessionId>,
        from_peer: Option<&mst::ServerKey>,
        new_user: bool,
    ) {
        // A stored record makes any will of that user it is as new as void.
        self.wills.superseded(record.user_id, record.event_count);
        // One encoding serves the push and the forward, unless the forward must say "new".
        let push = user_info_frame(record);
        let forward = if new_user {
            Bytes::from(
                Message::new(
                    std::net::Ipv6Addr::UNSPECIFIED,
                    gossip_common::message::NewUser {
                        record: record.clone(),
                    },
                )
                .to_xml(),
            )
        } else {
            push.clone()
        };
        self.federation.flood(&forward, from_peer);
        self.push_local(record, from_session, &push);
    }

    /// Pushes a changed UserInfo to this node's watchers of it and to the user's other
    /// sessions; encodes the push only if someone here will receive it. For records that are
    /// forwarded to peers some other way (sync batches).
    pub fn user_changed_locally(&self, record: &Signed<UserInfo>) {
        self.wills.superseded(record.user_id, record.event_count);
        if self.presence.has_audience(record.user_id) {
            self.push_local(record, None, &user_info_frame(record));
        }
    }

    fn push_local(&self, record: &Signed<UserInfo>, from_session: Option<SessionId>, push: &Bytes) {
        let n = self.presence.publish(record.user_id, push);
        self.metrics.messages_out.add("UserInfo", n as u64);
        self.presence
            .send_to_user(record.user_id, from_session, push);
        tracing::debug!(uid = %record.user_id, status = %record.status, watchers = n, "presence pushed");
    }
}

/// A `UserInfo` message carrying `record`, encoded once to be shared by every recipient.
fn user_info_frame(record: &Signed<UserInfo>) -> Bytes {
    Bytes::from(
        Message::new(
            std::net::Ipv6Addr::UNSPECIFIED,
            UserInfoMsg {
                record: record.clone(),
            },
        )
        .to_xml(),
    )
}

/// Longest wait for the node's tasks at shutdown before the datafiles are flushed regardless.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// A node started by [`start`].
pub struct RunningNode {
    /// Its shared state.
    pub node: Arc<Node>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl RunningNode {
    /// The base port bound.
    pub fn base_port(&self) -> u16 {
        self.node.base_port
    }

    /// The client address to connect to.
    pub fn client_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.node.config.bind, self.node.base_port)
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

/// What a node is made of besides its sockets and tasks.
struct NodeParts {
    config: Config,
    base_port: u16,
    store: Arc<Store>,
    blacklist: blacklist::Blacklist,
    trace: Option<Arc<trace::Trace>>,
    lab_clock: Option<lab::LabClock>,
    transport: Arc<dyn federation::Transport>,
    wills: wills::Wills,
    keys: server_keys::ServerKeys,
    mailbox: mailbox::Mailbox,
}

impl Node {
    /// The node of `parts`, its identity `config.name:base_port`, spawning into `tasks`.
    fn assemble(parts: NodeParts, tasks: &TaskTracker, shutdown: &CancellationToken) -> Arc<Node> {
        let me: mst::ServerKey = (parts.config.name.clone(), parts.base_port);
        let per_minute = parts.config.registrations_per_minute;
        Arc::new(Node {
            federation: federation::Federation::new(
                me,
                &parts.config.peers,
                federation::Federation::load_keyring(&parts.config),
                Some(parts.config.data_dir.join(federation::KEYRING_FILE)),
                parts.keys.signing().clone(),
            ),
            lab_clock: parts.lab_clock,
            blacklist: parts.blacklist,
            trace: parts.trace,
            base_port: parts.base_port,
            config: parts.config,
            store: parts.store,
            presence: Presence::default(),
            metrics: metrics::Metrics::default(),
            locks: UidLocks::default(),
            started: Instant::now(),
            transport: parts.transport,
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
            wills: parts.wills,
            links_stop: CancellationToken::new(),
            sessions_live: std::sync::atomic::AtomicUsize::new(0),
            anonymous: parking_lot::Mutex::new(std::collections::HashMap::new()),
            register_rate: parking_lot::Mutex::new(ratelimit::Limiter::new(
                ratelimit::Rate {
                    burst: per_minute,
                    per_second: per_minute / 60.0,
                },
                RATE_TRACKED_ADDRESSES,
            )),
            keys: parts.keys,
            mailbox: parts.mailbox,
            relay_rate: parking_lot::Mutex::new(ratelimit::Limiter::new(
                RELAY_RATE,
                RATE_TRACKED_ADDRESSES,
            )),
        })
    }

    /// What a node does as it starts and stops, whatever its transport: publishes the wills
    /// of its own sessions that a crash left outstanding, and at a stop lets the sessions end
    /// and their wills cross the links before the federation stops.
    fn spawn_lifecycle(self: &Arc<Self>, shutdown: &CancellationToken) {
        let node = Arc::clone(self);
        self.tasks.spawn(async move {
            node.publish_wills_of(&node.identity_key(), "restart").await;
        });
        let (node, shutdown) = (Arc::clone(self), shutdown.clone());
        self.tasks.spawn(async move {
            shutdown.cancelled().await;
            let deadline = tokio::time::Instant::now() + SESSION_DRAIN;
            while node
                .sessions_live
                .load(std::sync::atomic::Ordering::Acquire)
                > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let deadline = tokio::time::Instant::now() + LINK_DRAIN;
            while !node.federation.links_idle() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            node.links_stop.cancel();
        });
    }
}

/// How long a stop waits for its client sessions to end (and publish their wills).
const SESSION_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a stop then waits for the links' queues to empty.
const LINK_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);

/// Starts a node with no sockets of its own: its datafiles and its federation, over
/// `transport`, taking the links that transport hands over on `incoming`. For the simulator
/// (`sim`), which runs many nodes in one process on an in-memory network.
pub(crate) fn start_headless(
    config: Config,
    transport: Arc<dyn federation::Transport>,
    incoming: tokio::sync::mpsc::Receiver<(federation::transport::Conn, std::net::SocketAddr)>,
) -> Result<RunningNode, StartError> {
    let (store, _report) = Store::open(&config.data_dir).map_err(|source| StartError::Store {
        dir: config.data_dir.display().to_string(),
        source,
    })?;
    store.on_paused_clock();
    let blacklist =
        blacklist::Blacklist::load(&config.data_dir.join("blacklist.txt"), &config.blacklist)
            .map_err(StartError::Admin)?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let wills = open_wills(&config, &store, &tracker, &shutdown)?;
    let keys = open_keys(&config)?;
    let mailbox = open_mailbox(&config, &tracker, &shutdown)?;
    let node = Node::assemble(
        NodeParts {
            base_port: config.base_port,
            config,
            store,
            blacklist,
            trace: None,
            lab_clock: None,
            transport,
            wills,
            keys,
            mailbox,
        },
        &tracker,
        &shutdown,
    );
    node.spawn_lifecycle(&shutdown);
    federation::accept_from(&node, incoming, &node.links_stop, &tracker);
    federation::start_loops(&node, &node.links_stop, &tracker);
    Ok(RunningNode {
        node,
        shutdown,
        tracker,
    })
}

fn open_mailbox(
    config: &Config,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<mailbox::Mailbox, StartError> {
    mailbox::Mailbox::open(&config.data_dir, tracker, shutdown).map_err(|source| {
        StartError::Store {
            dir: config.data_dir.display().to_string(),
            source,
        }
    })
}

fn open_keys(config: &Config) -> Result<server_keys::ServerKeys, StartError> {
    server_keys::ServerKeys::load_or_create(&config.data_dir).map_err(|source| StartError::Store {
        dir: config.data_dir.display().to_string(),
        source,
    })
}

fn open_wills(
    config: &Config,
    store: &Store,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<wills::Wills, StartError> {
    wills::Wills::open(&config.data_dir, store, tracker, shutdown).map_err(|source| {
        StartError::Store {
            dir: config.data_dir.display().to_string(),
            source,
        }
    })
}

/// File descriptors kept back from clients: links, datafiles, the wills log, the admin and echo
/// sockets, the trace, name resolution.
const RESERVED_FDS: u64 = 256;

/// Raises the open-file soft limit to the hard limit, and lowers `max_clients` to what the
/// limit leaves room for (after [`RESERVED_FDS`]), so a full server refuses with `server-full`
/// instead of its accept loop running out of descriptors.
fn fit_open_files(mut config: Config) -> Config {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            let room = soft.saturating_sub(RESERVED_FDS).max(1);
            if config.max_clients as u64 > room {
                tracing::warn!(
                    open_files = soft,
                    max_clients = config.max_clients,
                    serving = room,
                    "the open-file limit leaves room for fewer clients than max_clients; raise it (ulimit -n, or LimitNOFILE= in a systemd unit) to serve more"
                );
                config.max_clients = room as usize;
            } else {
                tracing::debug!(open_files = soft, "open-file limit");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    config
}

/// Binds the node's ports, opens its datafiles and starts its services.
pub async fn start(config: Config) -> Result<RunningNode, StartError> {
    let config = fit_open_files(config);
    let (store, report) = Store::open(&config.data_dir).map_err(|source| StartError::Store {
        dir: config.data_dir.display().to_string(),
        source,
    })?;
    tracing::info!(
        users = report.users,
        contact_lists = report.lists,
        torn_bytes = report.torn_bytes,
        corrupt_lines = report.corrupt_lines,
        bad_signatures = report.bad_signatures,
        "datafiles loaded"
    );
    let listeners = net::bind(config.bind, config.base_port, config.strict_ports).await?;
    let blacklist =
        blacklist::Blacklist::load(&config.data_dir.join("blacklist.txt"), &config.blacklist)
            .map_err(StartError::Admin)?;
    let admin_path = config.admin_socket.clone();
    let admin_listener = admin::bind(&admin_path, 0o600)
        .map_err(|e| StartError::Admin(format!("admin socket {}: {e}", admin_path.display())))?;
    let status_listener = admin::bind(&admin::status_path(&admin_path), 0o660)
        .map_err(|e| StartError::Admin(format!("status socket: {e}")))?;
    let trace = match &config.trace {
        Some(path) => Some(Arc::new(trace::Trace::open(path).map_err(|e| {
            StartError::Admin(format!("trace file {}: {e}", path.display()))
        })?)),
        None => None,
    };
    let me: mst::ServerKey = (config.name.clone(), listeners.base_port);
    net::write_ports_file(
        &config.data_dir,
        &mst::key_string(&me),
        config.bind,
        listeners.base_port,
    )
    .map_err(|source| StartError::Store {
        dir: config.data_dir.display().to_string(),
        source,
    })?;
    let lab_clock = if config.lab.is_empty() {
        None
    } else {
        Some(lab::LabClock::start().map_err(StartError::Thread)?)
    };
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let wills = open_wills(&config, &store, &tracker, &shutdown)?;
    let keys = open_keys(&config)?;
    let mailbox = open_mailbox(&config, &tracker, &shutdown)?;
    let node = Node::assemble(
        NodeParts {
            base_port: listeners.base_port,
            config,
            store,
            blacklist,
            trace,
            lab_clock,
            transport: Arc::new(federation::Tcp),
            wills,
            keys,
            mailbox,
        },
        &tracker,
        &shutdown,
    );
    node.spawn_lifecycle(&shutdown);
    tracing::info!(
        identity = %node.identity(),
        key = %server_keys::fingerprint(&node.keys.public()),
        client_port = node.base_port,
        server_port = node.base_port + 1,
        rtt_port = node.base_port + 2,
        "listening"
    );

    // Clients on P.
    let limit = Arc::new(Semaphore::new(node.config.max_clients));
    {
        let (node, shutdown, t) = (Arc::clone(&node), shutdown.clone(), tracker.clone());
        tracker.spawn(net::accept_loop(
            listeners.client,
            shutdown.clone(),
            "client",
            move |stream, peer| {
                if !node.admit(peer, "client") {
                    return std::future::ready(());
                }
                node.metrics.connections.inc();
                match Arc::clone(&limit).try_acquire_owned() {
                    Ok(permit) => {
                        let (node, shutdown) = (Arc::clone(&node), shutdown.clone());
                        t.spawn(async move {
                            session::serve(node, stream, peer, shutdown).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        node.metrics.refused_full.inc();
                        tracing::warn!(%peer, "client limit reached; connection refused");
                        t.spawn(session::refuse(
                            stream,
                            ErrorCode::ServerFull,
                            "server is at its client limit; try another server".into(),
                        ));
                    }
                }
                std::future::ready(())
            },
        ));
    }
    // Server links on P+1, RTT probing, tree maintenance.
    federation::start(&node, listeners.server, &node.links_stop, &tracker);
    // Local administration.
    admin::serve(&node, admin_listener, false, &shutdown, &tracker);
    admin::serve(&node, status_listener, true, &shutdown, &tracker);
    tracing::info!(admin = %admin_path.display(), "admin socket ready");
    // RTT echo on P+2, UDP and TCP.
    {
        let stop = shutdown.clone();
        let n = Arc::clone(&node);
        tracker.spawn(gossip_common::rtt::udp_echo(
            Arc::new(listeners.echo_udp),
            node.config.lab.clone(),
            move |ip| n.blacklist.contains(ip),
            async move { stop.cancelled().await },
        ));
    }
    {
        let t = tracker.clone();
        // Each echo connection lives up to 10 s: bounded, so a stranger cannot hold thousands.
        let slots = Arc::new(Semaphore::new(net::ECHO_CONNECTIONS));
        let node_echo = Arc::clone(&node);
        tracker.spawn(net::accept_loop(
            listeners.echo_tcp,
            shutdown.clone(),
            "echo",
            move |stream, peer| {
                if !node_echo.admit(peer, "echo") {
                    return std::future::ready(());
                }
                match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        t.spawn(async move {
                            net::tcp_echo(stream).await;
                            drop(slot);
                        });
                    }
                    Err(_) => tracing::debug!(%peer, "TCP echo busy; connection closed"),
                }
                std::future::ready(())
            },
        ));
    }
    Ok(RunningNode {
        node,
        shutdown,
        tracker,
    })
}
