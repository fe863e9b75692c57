//! Federation: server links on P+1, the shared RTT matrix, tree maintenance, propagation of
//! changes along the tree, and event-count sync when a link comes up.
//!
//! Every server measures its RTT to every server it knows and publishes the result as its *row*
//! (`updateRTTs`, numbered by `seq`). Rows, server lists and user changes are flooded along the
//! links: a receiver stores what is new and forwards it to every other link, and drops what it
//! already has, which ends the flood. Since every server ends up with the same rows, every
//! server computes the same spanning tree (`mst.rs`) and keeps links only to its neighbours in
//! it.
//!
//! Link rules:
//! * `serverID` is the first message on every link, both ways;
//! * either end may open a link to a tree neighbour; if both do at once, the link opened by the
//!   smaller key wins on both sides, so they agree without talking;
//! * a link outside the tree is closed only once both ends' rows are known here and neither
//!   marks the other dead, so a joining server is not cut off before the others have measured
//!   it, and a link that contradicts a dead mark stays up until fresh measurements have crossed
//!   it (see "Healing" below);
//! * a lost neighbour is retried with exponential backoff (up to a minute), and so is a server
//!   that refused us before the handshake ended.
//!
//! Healing. A dead mark is only as fresh as the last probe, and rows travel only over links, so
//! after a partition each side may hold the other's rows marking it dead, and no tree link would
//! ever be opened to carry the fresh ones. Three rules break that for good:
//! * servers this node's row marks dead are re-probed every probe interval (one packet each),
//!   and a reply is published at once (`probe::revival_loop`);
//! * a server another row newly marks dead, or a link peer silent for two thirds of the idle
//!   timeout, is probed here at once (`probe::confirm_loop`), until the dead timeout counted
//!   from when it went silent has passed, and for two probe intervals at least: a death
//!   leaves every tree within one timeout and a few seconds, while a server that still
//!   answers here (a partition elsewhere, or a lying measurer) keeps its edges to this node;
//! * a server this node measures alive but that the tree puts outside its component means the
//!   rows disagree: this node dials the nearest such server of each other component (a repair
//!   link), and rows are exchanged on every link-up;
//! * a link is never closed as "not a tree neighbour" while the rows say its edge is dead (the
//!   open link is proof they are stale) until fresh rows have had time to cross it.
//!
//! Where things live. The decisions are pure and unit-tested; sockets live in thin loops:
//! * `membership`: known servers, tombstones, RTT rows and their `seq`, damping, the graph;
//! * `topology`: matrix → tree → which links to open (neighbours, repair links) and close;
//!   `maintain`: the loop that carries the plan out;
//! * `rows`: signing our row, verifying and storing the others';
//! * `keyring` (pure) and `keys`: which key each server name is bound to, and its file;
//! * `links`: the link table, flooding and sending along it;
//! * `control`: server lists, `addServer`, `deleteServer` and rows from peers;
//! * `operator`: what `prodserver` changes (add, delete, leave, recalc, refuse);
//! * `probe`: measurement rounds and revival probes, through the `transport`;
//! * `dial`: dialling tree neighbours with backoff.
//!
//! What runs on a link (the handshake, the reader that routes each message to its owner, the
//! writer) is the server door, `crate::peer`; records, wills, registrations and relayed
//! messages are their own services, which use this one to flood. The federation reaches back
//! to the rest of the server only through [`Hooks`]: to run a link on a connection it opened,
//! and to say a server is gone.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gossip_common::message as m;
use gossip_common::rtt::ProbeConfig;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::mst::{id_string, ServerId, TreeEdge};
use crate::tasks::Tasks;

mod control;
mod dial;
pub mod keyring;
mod keys;
mod links;
mod maintain;
mod map;
mod membership;
mod operator;
mod probe;
mod repair;
mod rows;
#[cfg(test)]
mod tests;
mod topology;
pub mod transport;

pub use map::{FederationMap, MapEdge, MapServer};

/// Servers a server list holds at most.
pub(crate) const MAX_SERVERS: usize = membership::MAX_SERVERS;

pub(crate) use control::Control;
pub(crate) use keys::KEYRING_FILE;
pub(crate) use links::{LinkQueue, LinkTx, NewLink, BULK_QUEUE, LINK_QUEUE};
pub(crate) use repair::{CHECK_MAX, CHECK_QUIET, MAX_CHECKS_IN};
pub use transport::{ConnectError, Tcp, Transport};

use links::Link;
use membership::Membership;

/// What the federation asks of the rest of the server. It opens and accepts connections and
/// judges servers dead; what runs on a link and what a server's death means for its users
/// belong to other services, which the assembly plugs in here.
pub(crate) trait Hooks: Send + Sync + 'static {
    /// Runs a server link on `conn` until it ends (`expect`: the server dialled, `None` for an
    /// accepted connection, whose kind its `serverID` says).
    fn run_link(
        &self,
        conn: transport::Conn,
        expect: Option<ServerId>,
        addr: SocketAddr,
        kind: LinkKind,
    ) -> transport::BoxFuture<'static, LinkEnd>;

    /// This server judged `server` gone (its probes went unanswered, or it refuses
    /// connections): `why`, for the log.
    fn server_gone(&self, server: ServerId, why: &'static str);
}

/// What a connection between two servers is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkKind {
    /// A link of the tree: in the link table, flooded over, kept while the tree wants it.
    Tree,
    /// A repair check ([`repair`]): the link-up exchange, then closed; never in the table.
    Check,
}

/// How a link attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkEnd {
    /// The handshake completed and the link ran (and has ended since).
    WasUp,
    /// The handshake did not complete: why.
    NotUp(&'static str),
}

/// Everything the federation service keeps, behind one lock held only for short, non-async
/// sections: the pure parts (membership, keyring) and the links that carry their messages.
struct State {
    /// Known servers, tombstones, RTT rows.
    members: Membership,
    /// Which key each server name is bound to; refused keys; admission policy.
    keys: keyring::Keyring,
    /// The tree last computed.
    tree: Vec<TreeEdge>,
    /// The membership version `tree` was computed from.
    tree_version: u64,
    links: HashMap<ServerId, Link>,
    connecting: BTreeSet<ServerId>,
    backoff: HashMap<ServerId, (Duration, Instant)>,
}

/// One measurer's row for display: (measured server, RTT in ms or `None` when dead).
pub type RttCells = Vec<(String, Option<f64>)>;

/// What a server reports about the federation (for status queries and tests).
#[derive(Debug, Clone, PartialEq)]
pub struct FederationStatus {
    /// Every known server, `host:port`.
    pub servers: Vec<String>,
    /// The spanning tree this server computed, edges as `host:port` pairs, sorted.
    pub tree: Vec<(String, String)>,
    /// Servers this one has an open link to.
    pub links: Vec<String>,
    /// This server's own published RTTs in milliseconds (`None` = dead).
    pub rtts: Vec<(String, Option<f64>)>,
}

/// How this server measures the others.
#[derive(Debug, Clone)]
pub struct Probing {
    /// One measurement round's settings.
    pub probe: ProbeConfig,
    /// Time between measurement rounds.
    pub reprobe: Duration,
    /// Time between repair checks ([`repair`]); zero: none.
    pub repair: Duration,
}

/// The federation service of one node.
pub struct Federation {
    me: ServerId,
    state: Mutex<State>,
    changed: Notify,
    probe_now: Notify,
    /// Wakes the revival loop (a link came up to a server our row may mark dead).
    revive_now: Notify,
    /// Servers another's row newly marks dead while ours says alive, or whose link has gone
    /// silent, with when they went silent: probed at once by `probe::confirm_loop`.
    suspects: Mutex<std::collections::BTreeMap<ServerId, tokio::time::Instant>>,
    /// Servers a confirmation is probing now (not probed twice at once).
    confirming: Mutex<BTreeSet<ServerId>>,
    /// Wakes the confirmation loop.
    confirm_now: Notify,
    next_link: AtomicU64,
    recomputations: AtomicU64,
    link_drops: AtomicU64,
    refused_introductions: AtomicU64,
    /// Repair checks this server opened.
    repair_checks: AtomicU64,
    /// What repair checks brought that the tree had not.
    repaired: Mutex<repair::Learned>,
    /// Measurement rounds done.
    probe_rounds: AtomicU64,
    /// LAB ONLY: forward nothing (the rogue-member tests' withholding server).
    withhold: std::sync::atomic::AtomicBool,
    /// Repair checks accepted and running now (at most [`MAX_CHECKS_IN`]).
    pub(crate) checks_in: std::sync::atomic::AtomicUsize,
    /// Whether the "server list full" warning was logged.
    warned_full: std::sync::atomic::AtomicBool,
    /// Where the keyring is saved; its lock serialises the saves.
    keys_file: Mutex<Option<std::path::PathBuf>>,
    /// This server's identity key: signs its RTT rows and its own removal.
    signer: gossip_common::Keypair,
    /// Link-ups per peer key.
    link_rate: Mutex<crate::ratelimit::Limiter<gossip_common::PublicKey>>,
    /// How links are opened and RTTs measured (TCP and UDP; in memory in the simulator).
    transport: Arc<dyn Transport>,
    /// Measurement settings.
    probing: Probing,
}

/// How long a server named by others (and never heard from itself) is kept.
const UNPROVEN_MAX_AGE: Duration = Duration::from_secs(600);

impl Federation {
    /// The federation service of server `me`, knowing `peers` from the start.
    pub(crate) fn new(
        me: ServerId,
        peers: &[ServerId],
        keys: keyring::Keyring,
        keys_file: Option<std::path::PathBuf>,
        signer: gossip_common::Keypair,
        transport: Arc<dyn Transport>,
        probing: Probing,
    ) -> Federation {
        let state = State {
            keys,
            members: Membership::new(me.clone(), peers),
            tree: Vec::new(),
            tree_version: 0,
            links: HashMap::new(),
            connecting: BTreeSet::new(),
            backoff: HashMap::new(),
        };
        Federation {
            me,
            state: Mutex::new(state),
            changed: Notify::new(),
            probe_now: Notify::new(),
            revive_now: Notify::new(),
            suspects: Mutex::new(std::collections::BTreeMap::new()),
            confirming: Mutex::new(BTreeSet::new()),
            confirm_now: Notify::new(),
            next_link: AtomicU64::new(1),
            recomputations: AtomicU64::new(0),
            link_drops: AtomicU64::new(0),
            refused_introductions: AtomicU64::new(0),
            repair_checks: AtomicU64::new(0),
            repaired: Mutex::new(repair::Learned::default()),
            probe_rounds: AtomicU64::new(0),
            withhold: std::sync::atomic::AtomicBool::new(false),
            checks_in: std::sync::atomic::AtomicUsize::new(0),
            warned_full: std::sync::atomic::AtomicBool::new(false),
            keys_file: Mutex::new(keys_file),
            signer,
            link_rate: Mutex::new(crate::ratelimit::Limiter::new(
                links::LINKS_PER_KEY,
                membership::MAX_SERVERS,
            )),
            transport,
            probing,
        }
    }

    /// This server's key.
    pub fn me(&self) -> &ServerId {
        &self.me
    }

    /// Current view of the federation.
    pub fn status(&self) -> FederationStatus {
        let st = self.state.lock();
        FederationStatus {
            servers: st.members.servers().iter().map(id_string).collect(),
            tree: st
                .tree
                .iter()
                .map(|(a, b)| (id_string(a), id_string(b)))
                .collect(),
            links: {
                let mut l: Vec<String> = st.links.keys().map(id_string).collect();
                l.sort();
                l
            },
            rtts: st
                .members
                .my_row()
                .map(|r| {
                    r.rtts
                        .iter()
                        .map(|(k, v)| (id_string(k), v.map(|us| us as f64 / 1000.0)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Every row held: measurer → (measured → RTT in ms, `None` = dead), sorted.
    pub fn matrix(&self) -> Vec<(String, RttCells)> {
        let st = self.state.lock();
        let mut rows: Vec<_> = st
            .members
            .rows()
            .iter()
            .map(|(from, row)| {
                let cells = row
                    .rtts
                    .iter()
                    .map(|(to, us)| (id_string(to), us.map(|us| us as f64 / 1000.0)))
                    .collect();
                (id_string(from), cells)
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// RTT rows held and the cells in them (the matrix grows with the square of the servers).
    pub fn matrix_size(&self) -> (usize, usize) {
        let st = self.state.lock();
        let rows = st.members.rows();
        (rows.len(), rows.values().map(|r| r.rtts.len()).sum())
    }

    /// Whether every link's queues are empty (a stop waits for that before closing them).
    pub fn links_idle(&self) -> bool {
        self.state.lock().links.values().all(|l| {
            l.tx.capacity() == l.tx.max_capacity() && l.bulk.capacity() == l.bulk.max_capacity()
        })
    }

    /// Server links dropped because their queue was full.
    pub fn link_drops(&self) -> u64 {
        self.link_drops.load(Ordering::Relaxed)
    }

    /// LAB ONLY, for the rogue-member tests: from now on this server forwards nothing it
    /// receives (records, wills, relayed messages, delivery notices, rows, lock requests) while
    /// still publishing its own, answering its links and taking part in the tree: the member
    /// that withholds. Never reachable from a configuration file or a flag.
    pub fn lab_withhold_forwarding(&self, on: bool) {
        self.withhold.store(on, Ordering::Relaxed);
    }

    /// Whether a flood that passes on what `except` sent is to be withheld (lab rogue).
    fn withheld(&self, except: Option<&ServerId>) -> bool {
        except.is_some() && self.withhold.load(Ordering::Relaxed)
    }

    /// Whether another server can hold a copy of what this one stores: a link is up, or this
    /// server's row measures another server alive (its links may be between two trees).
    pub(crate) fn has_live_peers(&self) -> bool {
        let st = self.state.lock();
        !st.links.is_empty()
            || st
                .members
                .my_row()
                .is_some_and(|r| r.rtts.iter().any(|(s, v)| *s != self.me && v.is_some()))
    }

    /// Measurement rounds this server finished (and published).
    pub fn probe_rounds(&self) -> u64 {
        self.probe_rounds.load(Ordering::Relaxed)
    }

    /// Repair checks this server opened.
    pub fn repair_checks(&self) -> u64 {
        self.repair_checks.load(Ordering::Relaxed)
    }

    /// A repair check with `checked` brought `n` items (records, messages) this server did not
    /// hold: counted, in all and against the tree neighbour toward `checked`, through which
    /// they should have come.
    pub(crate) fn note_repaired(&self, checked: &ServerId, n: u64) {
        if n == 0 {
            return;
        }
        let via = repair::first_hop(&self.me, checked, &self.state.lock().tree);
        if let Some(v) = &via {
            tracing::debug!(via = %id_string(v), checked = %id_string(checked), n, "learned by repair what the tree had not brought");
        }
        self.repaired.lock().note(via, n);
    }

    /// Items learned by repair checks in all, and per tree neighbour they should have come
    /// through.
    pub fn repaired(&self) -> (u64, Vec<(String, u64)>) {
        self.repaired.lock().readings()
    }

    /// How many times the tree was recomputed with a different result.
    pub fn recomputations(&self) -> u64 {
        self.recomputations.load(Ordering::Relaxed)
    }

    /// Servers peer `from` names (`serverlist`, `addServer`): a key it carries is bound on
    /// first sight; a server whose carried key contradicts the one bound here is not learned
    /// from that message; and `from`'s key may have introduced only a handful of servers that
    /// never showed themselves ([`membership::introduced`]). Returns how many were new.
    pub(crate) fn learn_servers(
        &self,
        servers: impl IntoIterator<Item = m::ServerAddr>,
        from: &ServerId,
    ) -> usize {
        let mut names = Vec::new();
        for s in servers {
            let name: ServerId = (s.host, s.port);
            if let Some(key) = s.key.as_deref().and_then(|k| k.parse().ok()) {
                let v = self.claim_key(&name, &key);
                if !v.accepted() {
                    tracing::debug!(server = %id_string(&name), why = v.why(), "server not learned");
                    continue;
                }
            }
            names.push(name);
        }
        let (added, refused, full) = {
            let mut st = self.state.lock();
            let (added, refused) = match st.keys.key_of(from).copied() {
                Some(by) => st.members.add_introduced(names, &by),
                None => (st.members.add_servers(names), 0),
            };
            (added, refused, st.members.is_full())
        };
        if refused > 0 {
            self.refused_introductions
                .fetch_add(refused as u64, Ordering::Relaxed);
            tracing::info!(peer = %id_string(from), refused, "servers a peer named were not learned: its key named too many that never showed themselves");
        }
        self.after_adding(&added, full);
        added.len()
    }

    fn add_servers(&self, servers: impl IntoIterator<Item = ServerId>) -> Vec<ServerId> {
        let (added, full) = {
            let mut st = self.state.lock();
            let added = st.members.add_servers(servers);
            (added, st.members.is_full())
        };
        self.after_adding(&added, full);
        added
    }

    /// Servers were learned (`added`; `full`: the list is at its bound): the tree and the
    /// measurements look again.
    fn after_adding(&self, added: &[ServerId], full: bool) {
        if full && !self.warned_full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max = membership::MAX_SERVERS,
                "server list full: no further servers are learned"
            );
        }
        if !added.is_empty() {
            self.changed.notify_one();
            self.probe_now.notify_one();
        }
    }

    /// Servers a peer named that were not learned: its key had named too many that never
    /// showed themselves.
    pub fn refused_introductions(&self) -> u64 {
        self.refused_introductions.load(Ordering::Relaxed)
    }

    fn remove_server(&self, key: &ServerId) -> bool {
        let mut st = self.state.lock();
        let removed = st.members.remove_server(key);
        if let Some(link) = st.links.remove(key) {
            link.kill.cancel();
        }
        drop(st);
        if removed {
            self.changed.notify_one();
        }
        removed
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts the federation's own loops (probing, revival, topology), stopped by `stop`; the
/// links come through `hooks` (dialled) and the server door (accepted).
pub(crate) fn start_loops(
    fed: &Arc<Federation>,
    hooks: Arc<dyn Hooks>,
    stop: &CancellationToken,
    tasks: &Tasks,
) {
    tasks.spawn(probe::prober_loop(
        Arc::clone(fed),
        Arc::clone(&hooks),
        stop.clone(),
    ));
    tasks.spawn(probe::revival_loop(Arc::clone(fed), stop.clone()));
    tasks.spawn(probe::confirm_loop(
        Arc::clone(fed),
        Arc::clone(&hooks),
        stop.clone(),
        tasks.clone(),
    ));
    tasks.spawn(repair::repair_loop(
        Arc::clone(fed),
        Arc::clone(&hooks),
        stop.clone(),
    ));
    tasks.spawn(maintain::topology_loop(
        Arc::clone(fed),
        hooks,
        stop.clone(),
        tasks.clone(),
    ));
}
