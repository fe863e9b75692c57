//! The one assembly of a node: every service built once, each over the narrow handles it
//! needs, and [`Node`], what the assembly hands to start, stop, the simulator and tests.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::admin::AdminServices;
use crate::blacklist::Blacklist;
use crate::config::{Config, SyncMethod};
use crate::federation::{self, Federation};
use crate::lab::LabClock;
use crate::mailbox::Mailbox;
use crate::metrics::Metrics;
use crate::peer::{LinkSettings, PeerDoor};
use crate::presence::Presence;
use crate::records::Records;
use crate::registration::{Registration, Sponsors, UidLocks};
use crate::relay::Relay;
use crate::replication::Replication;
use crate::server_keys::ServerKeys;
use crate::session::{ClientDoor, SessionSettings};
use crate::store::Store;
use crate::tasks::Tasks;
use crate::trace::Trace;
use crate::wills::{LastWills, Wills};

/// A running node's services, as its assembly made them: what tests, the simulator and a stop
/// look at. No service holds this; each holds the few handles it was given.
pub struct Node {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// The user database.
    pub store: Arc<Store>,
    /// Logged-in sessions and who watches whom.
    pub presence: Arc<Presence>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Server links, RTT matrix and spanning tree.
    pub federation: Arc<Federation>,
    /// Relayed messages waiting for their recipients.
    pub mailbox: Arc<Mailbox>,
    /// This server's identity key (and the handshake identity made from it).
    pub keys: Arc<ServerKeys>,
    /// UserIDs locked for registrations.
    pub locks: Arc<UidLocks>,
    /// Where stored records go (local pushes, the tree).
    pub records: Arc<Records>,
    /// Replicated last wills.
    pub wills: Arc<LastWills>,
    /// Refused IPs.
    pub blacklist: Arc<Blacklist>,
    /// Relayed messages.
    pub relay: Arc<Relay>,
    pub(crate) clients: Arc<ClientDoor>,
    pub(crate) peers: Arc<PeerDoor>,
    pub(crate) admin: Arc<AdminServices>,
    pub(crate) tasks: Tasks,
    /// Stops the federation. Cancelled after a stop's client sessions have ended and their last
    /// wills have crossed the links, so a graceful stop shows its users offline everywhere.
    pub(crate) links_stop: CancellationToken,
}

impl Node {
    /// Canonical identity `name:base_port`, as the spec defines it.
    pub fn identity(&self) -> String {
        crate::mst::id_string(self.federation.me())
    }

    /// The base port actually bound (may differ from the configured one after fallback).
    pub fn base_port(&self) -> u16 {
        self.federation.me().1
    }

    /// The metrics exposition, as the admin socket's `metrics` and `/metrics` serve it.
    pub fn admin_metrics(&self) -> String {
        self.admin.render_metrics()
    }

    /// Client connections that have not logged in (yet), from every address.
    pub fn anonymous_connections(&self) -> usize {
        self.clients.admission.anonymous_connections()
    }
}

/// What a node is made of besides its sockets and tasks.
pub(super) struct NodeParts {
    pub(super) config: Config,
    pub(super) base_port: u16,
    pub(super) store: Arc<Store>,
    pub(super) blacklist: Arc<Blacklist>,
    pub(super) trace: Option<Arc<Trace>>,
    pub(super) lab_clock: Option<Arc<LabClock>>,
    pub(super) transport: Arc<dyn federation::Transport>,
    pub(super) wills: Wills,
    pub(super) keys: ServerKeys,
    pub(super) mailbox: Mailbox,
}

/// The node of `parts`, its identity `config.name:base_port`, spawning into `tasks`: every
/// service built once, over the handles it needs.
pub(super) fn assemble(parts: NodeParts, tasks: &Tasks) -> Arc<Node> {
    let config = Arc::new(parts.config);
    let me = (config.name.clone(), parts.base_port);
    let keys = Arc::new(parts.keys);
    let store = parts.store;
    let metrics = Arc::new(Metrics::default());
    for h in store.fsync_histograms() {
        metrics.register(h);
    }
    metrics.register(parts.wills.fsync_histogram());
    metrics.register(parts.mailbox.fsync_histogram());
    let presence = Arc::new(Presence::default());
    let federation = Arc::new(Federation::new(
        me,
        &config.peers,
        Federation::load_keyring(&config),
        Some(config.data_dir.join(federation::KEYRING_FILE)),
        keys.signing().clone(),
        parts.transport,
        federation::Probing {
            probe: config.probe.clone(),
            reprobe: config.reprobe,
            repair: config.repair,
        },
    ));
    let held = Arc::new(parts.wills);
    let mailbox = Arc::new(parts.mailbox);
    let records = Arc::new(Records::new(
        Arc::clone(&presence),
        Arc::clone(&federation),
        Arc::clone(&held),
        Arc::clone(&metrics),
    ));
    let wills = Arc::new(LastWills::new(
        held,
        Arc::clone(&store),
        Arc::clone(&records),
        Arc::clone(&federation),
        Arc::clone(&metrics),
        tasks.clone(),
    ));
    let locks = Arc::new(UidLocks::default());
    let sponsors = Arc::new(Sponsors::new(
        Arc::clone(&federation),
        config.sponsored_users_per_minute,
    ));
    let registration = Arc::new(Registration::new(
        Arc::clone(&store),
        Arc::clone(&locks),
        Arc::clone(&federation),
        Arc::clone(&sponsors),
        config.uid_lock,
        config.registrations_per_minute,
        tasks.clone(),
    ));
    let relay = Arc::new(Relay::new(
        Arc::clone(&store),
        Arc::clone(&presence),
        Arc::clone(&mailbox),
        (Arc::clone(&federation), Arc::clone(&sponsors)),
        Arc::clone(&metrics),
        tasks.clone(),
    ));
    let replication = Arc::new(Replication::new(
        Arc::clone(&store),
        Arc::clone(&records),
        Arc::clone(&federation),
        sponsors,
        Arc::clone(&metrics),
        (config.max_frame, config.sync == SyncMethod::Range),
        tasks.clone(),
    ));
    let links_stop = CancellationToken::new();
    let peers = Arc::new(PeerDoor {
        federation: Arc::clone(&federation),
        keys: Arc::clone(&keys),
        metrics: Arc::clone(&metrics),
        replication,
        wills: Arc::clone(&wills),
        registration: Arc::clone(&registration),
        relay: Arc::clone(&relay),
        settings: LinkSettings {
            max_frame: config.max_frame,
            idle: config.idle_timeout,
            lab: config.lab.clone(),
            trace: parts.trace.clone(),
            clock: parts.lab_clock,
        },
        tasks: tasks.clone(),
        stop: links_stop.clone(),
    });
    let clients = Arc::new(ClientDoor {
        store: Arc::clone(&store),
        presence: Arc::clone(&presence),
        metrics: Arc::clone(&metrics),
        records: Arc::clone(&records),
        wills: Arc::clone(&wills),
        registration,
        relay: Arc::clone(&relay),
        federation: Arc::clone(&federation),
        keys: Arc::clone(&keys),
        trace: parts.trace,
        settings: SessionSettings {
            max_frame: config.max_frame,
            keepalive: config.keepalive,
            idle_timeout: config.idle_timeout,
            login_deadline: config.login_deadline,
            outbound_queue: config.outbound_queue,
            inbound: config.client_inbound,
        },
        admission: Default::default(),
        search_rate: parking_lot::Mutex::new(crate::ratelimit::Limiter::new(
            crate::session::SEARCH_RATE,
            crate::session::SEARCH_TRACKED_USERS,
        )),
        tasks: tasks.clone(),
    });
    let blacklist = parts.blacklist;
    let admin = Arc::new(AdminServices {
        config: Arc::clone(&config),
        store: Arc::clone(&store),
        federation: Arc::clone(&federation),
        presence: Arc::clone(&presence),
        blacklist: Arc::clone(&blacklist),
        metrics: Arc::clone(&metrics),
        keys: Arc::clone(&keys),
        started: Instant::now(),
    });
    Arc::new(Node {
        config,
        store,
        presence,
        metrics,
        federation,
        mailbox,
        keys,
        locks,
        records,
        wills,
        blacklist,
        relay,
        clients,
        peers,
        admin,
        tasks: tasks.clone(),
        links_stop,
    })
}
