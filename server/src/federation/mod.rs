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
//! * a server this node measures alive but that the tree puts outside its component means the
//!   rows disagree: this node dials the nearest such server of each other component (a repair
//!   link), and rows are exchanged on every link-up;
//! * a link is never closed as "not a tree neighbour" while the rows say its edge is dead (the
//!   open link is proof they are stale) until fresh rows have had time to cross it.
//!
//! Where things live. The decisions are pure and unit-tested; sockets live in thin loops:
//! * `membership`: known servers, tombstones, RTT rows and their `seq`, damping, the graph;
//! * `topology`: matrix → tree → which links to open (neighbours, repair links) and close;
//! * `uid_lock`: the network-wide UserID lock's requests waiting for their subtree;
//! * `probe`: measurement rounds and revival probes (UDP);
//! * `dial` and `link`: dialling with backoff, the handshake, one link's reader (which
//!   dispatches each message to its owner) and writer;
//! * `replication`: records from peers (propagation and sync batches) and the event-count
//!   sync on link-up;
//! * `resync`: which resync a link runs at link-up, and the driver of a range reconciliation
//!   (`crate::reconcile`) with its fallback to event counts;
//! * this module: the service's state behind one short-held lock, its public API (status,
//!   admin actions, flooding, the lock protocol's driver) and the topology loop.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gossip_common::message::{self as m};
use gossip_common::{Body, Message};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::mst::{key_string, ServerKey, TreeEdge};
use crate::Node;

mod dial;
mod link;
mod locks;
mod membership;
mod probe;
mod replication;
mod resync;
mod topology;
pub mod transport;
mod uid_lock;

pub use dial::REFUSED;
use link::{run_link, Link};
use locks::LOCK_TIMEOUT;
use membership::Membership;
pub use transport::{Tcp, Transport};
use uid_lock::LockTable;

/// Everything the federation service keeps, behind one lock held only for short, non-async
/// sections: the pure parts (membership, locks) and the links that carry their messages.
struct State {
    /// Known servers, tombstones, RTT rows.
    members: Membership,
    /// Network-wide lock requests waiting for their subtree.
    locks: LockTable,
    /// The tree last computed.
    tree: Vec<TreeEdge>,
    /// The membership version `tree` was computed from.
    tree_version: u64,
    links: HashMap<ServerKey, Link>,
    connecting: BTreeSet<ServerKey>,
    backoff: HashMap<ServerKey, (Duration, Instant)>,
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

/// The federation service of one node.
pub struct Federation {
    me: ServerKey,
    state: Mutex<State>,
    changed: Notify,
    probe_now: Notify,
    /// Wakes [`revival_loop`] (a link came up to a server our row may mark dead).
    revive_now: Notify,
    next_link: AtomicU64,
    recomputations: AtomicU64,
    link_drops: AtomicU64,
    /// Whether the "server list full" warning was logged.
    warned_full: std::sync::atomic::AtomicBool,
}

impl Federation {
    pub(crate) fn new(me: ServerKey, peers: &[ServerKey]) -> Federation {
        let state = State {
            members: Membership::new(me.clone(), peers),
            locks: LockTable::default(),
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
            next_link: AtomicU64::new(1),
            recomputations: AtomicU64::new(0),
            link_drops: AtomicU64::new(0),
            warned_full: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// This server's key.
    pub fn me(&self) -> &ServerKey {
        &self.me
    }

    /// Current view of the federation.
    pub fn status(&self) -> FederationStatus {
        let st = self.state.lock();
        FederationStatus {
            servers: st.members.servers().iter().map(key_string).collect(),
            tree: st
                .tree
                .iter()
                .map(|(a, b)| (key_string(a), key_string(b)))
                .collect(),
            links: {
                let mut l: Vec<String> = st.links.keys().map(key_string).collect();
                l.sort();
                l
            },
            rtts: st
                .members
                .my_row()
                .map(|r| {
                    r.rtts
                        .iter()
                        .map(|(k, v)| (key_string(k), v.map(|us| us as f64 / 1000.0)))
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
                    .map(|(to, us)| (key_string(to), us.map(|us| us as f64 / 1000.0)))
                    .collect();
                (key_string(from), cells)
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// An admin added a server: measure it, tell the others, recompute.
    pub(crate) fn admin_add_server(&self, key: ServerKey) {
        self.state.lock().members.undelete(&key);
        if !self.add_servers([key.clone()]).is_empty() {
            self.flood(
                &encode(m::AddServer {
                    host: key.0,
                    port: key.1,
                }),
                None,
            );
        }
        self.probe_now.notify_one();
    }

    /// An admin removed a server: forget it here and everywhere.
    pub(crate) fn admin_delete_server(&self, key: &ServerKey) -> bool {
        // Tell everyone (the deleted server included, while its link is still up) first.
        self.flood(
            &encode(m::DeleteServer {
                host: key.0.clone(),
                port: key.1,
            }),
            None,
        );
        self.remove_server(key)
    }

    /// Re-measure now and recompute the tree.
    pub(crate) fn recalc(&self) {
        self.probe_now.notify_one();
        self.revive_now.notify_one();
        self.changed.notify_one();
    }

    /// Closes every server link whose peer address `refused` matches (a blacklist entry was
    /// added); returns how many.
    pub(crate) fn drop_links_from(&self, refused: impl Fn(std::net::IpAddr) -> bool) -> usize {
        let st = self.state.lock();
        let mut n = 0;
        for (key, link) in &st.links {
            if refused(link.addr.ip()) {
                tracing::warn!(peer = %key_string(key), addr = %link.addr, "closing a link to a blacklisted address");
                link.kill.cancel();
                n += 1;
            }
        }
        drop(st);
        if n > 0 {
            self.probe_now.notify_one();
        }
        n
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

    /// How many times the tree was recomputed with a different result.
    pub fn recomputations(&self) -> u64 {
        self.recomputations.load(Ordering::Relaxed)
    }

    /// Queues `frame` to every link except `except`. Never waits: a peer that cannot keep up
    /// is disconnected (and re-linked later) rather than holding up the others.
    pub(crate) fn flood(&self, frame: &Bytes, except: Option<&ServerKey>) {
        let st = self.state.lock();
        for (key, link) in &st.links {
            if Some(key) == except {
                continue;
            }
            match link.tx.try_send((Instant::now(), frame.clone())) {
                Ok(()) => {}
                // The link is already ending; its end is reported where it ends.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.link_drops.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %key_string(key), "server link queue full; dropping the link");
                    link.kill.cancel();
                }
            }
        }
    }

    /// Like [`Self::flood`], but waits for room in each link's queue instead of dropping a
    /// link whose queue is full: for bulk transfers, which a slow link should slow down, not
    /// lose.
    pub(crate) async fn flood_wait(
        &self,
        frame: impl FnOnce() -> Bytes,
        except: Option<&ServerKey>,
    ) {
        let targets: Vec<mpsc::Sender<(Instant, Bytes)>> = {
            let st = self.state.lock();
            st.links
                .iter()
                .filter(|(k, _)| Some(*k) != except)
                .map(|(_, l)| l.bulk.clone())
                .collect()
        };
        if targets.is_empty() {
            return;
        }
        let frame = frame();
        for tx in targets {
            let _ = tx.send((Instant::now(), frame.clone())).await;
        }
    }

    fn add_servers(&self, servers: impl IntoIterator<Item = ServerKey>) -> Vec<ServerKey> {
        let (added, full) = {
            let mut st = self.state.lock();
            let added = st.members.add_servers(servers);
            (added, st.members.is_full())
        };
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
        added
    }

    fn remove_server(&self, key: &ServerKey) -> bool {
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

    /// Stores a row if it is newer than the one held; returns whether it was.
    fn store_row(&self, measurer: ServerKey, row: membership::Row) -> bool {
        if measurer == self.me {
            // A row of ours from before a restart: republish past it at once, or the others
            // would keep the old one (our clock may even have gone back since).
            let bumped = {
                let mut st = self.state.lock();
                st.members.store_row(measurer, row);
                st.members.bump_own_row(now_ms())
            };
            if let Some(row) = bumped {
                self.flood(&encode(membership::row_message(&self.me, &row)), None);
                self.changed.notify_one();
            }
            return false;
        }
        let (newer, hint) = {
            let mut st = self.state.lock();
            // A server someone else now finds dead while our row says alive: a hint to measure
            // it ourselves now (never taken on their word: our own measurement decides), so a
            // death leaves every edge, and the tree, within one dead timeout rather than after
            // everyone's next round.
            let hint = st.members.my_row().is_some_and(|mine| {
                row.rtts
                    .iter()
                    .any(|(s, v)| v.is_none() && matches!(mine.rtts.get(s), Some(Some(_))))
            });
            (st.members.store_row(measurer, row), hint)
        };
        if newer {
            self.changed.notify_one();
            if hint {
                self.probe_now.notify_one();
            }
        }
        newer
    }
}

fn encode(body: impl Into<Body>) -> Bytes {
    Bytes::from(Message::new(std::net::Ipv6Addr::UNSPECIFIED, body).to_xml())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn resolve(key: &ServerKey, offset: u16) -> Option<SocketAddr> {
    tokio::net::lookup_host((key.0.as_str(), key.1.checked_add(offset)?))
        .await
        .ok()?
        .next()
}

/// Starts the federation tasks of `node`.
pub(crate) fn start(
    node: &Arc<Node>,
    server_listener: tokio::net::TcpListener,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    {
        let (node, shutdown, t) = (Arc::clone(node), shutdown.clone(), tracker.clone());
        tracker.spawn(crate::net::accept_loop(
            server_listener,
            shutdown.clone(),
            "server",
            move |stream, peer| {
                if !node.admit(peer, "server") {
                    return std::future::ready(());
                }
                let (node, shutdown) = (Arc::clone(&node), shutdown.clone());
                t.spawn(async move {
                    run_link(node, Box::new(stream), None, peer, shutdown).await;
                });
                std::future::ready(())
            },
        ));
    }
    start_loops(node, shutdown, tracker);
}

/// Starts the federation's own loops (probing, revival, topology); links come from elsewhere.
pub(crate) fn start_loops(node: &Arc<Node>, shutdown: &CancellationToken, tracker: &TaskTracker) {
    tracker.spawn(probe::prober_loop(Arc::clone(node), shutdown.clone()));
    tracker.spawn(probe::revival_loop(Arc::clone(node), shutdown.clone()));
    tracker.spawn(topology_loop(
        Arc::clone(node),
        shutdown.clone(),
        tracker.clone(),
    ));
}

/// Serves links that a transport other than TCP hands over (the simulator's network).
pub(crate) fn accept_from(
    node: &Arc<Node>,
    mut incoming: tokio::sync::mpsc::Receiver<(transport::Conn, SocketAddr)>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let (node, shutdown, t) = (Arc::clone(node), shutdown.clone(), tracker.clone());
    tracker.spawn(async move {
        loop {
            let (conn, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = incoming.recv() => match c { Some(c) => c, None => return },
            };
            let (node, shutdown) = (Arc::clone(&node), shutdown.clone());
            t.spawn(async move {
                run_link(node, conn, None, peer, shutdown).await;
            });
        }
    });
}

impl Federation {
    /// Folds measurements into this node's row (with damping) and, if the row changed,
    /// publishes it with a new `seq` to every link.
    fn publish_measurements(&self, measured: &[(ServerKey, Option<u64>)]) -> bool {
        let (row, redial) = {
            let mut st = self.state.lock();
            // A server that answers probes again is dialled again at once: a restarted
            // neighbour must not wait out the backoff its downtime built up (up to a minute).
            let before = st.backoff.len();
            st.backoff
                .retain(|k, _| !measured.iter().any(|(s, m)| s == k && m.is_some()));
            let redial = st.backoff.len() != before;
            (st.members.apply_measurements(measured, now_ms()), redial)
        };
        if redial {
            self.changed.notify_one();
        }
        let Some(row) = row else {
            return false;
        };
        tracing::debug!(?row, "publishing RTT row");
        self.flood(&encode(membership::row_message(&self.me, &row)), None);
        self.changed.notify_one();
        true
    }
}

/// Recomputes the tree when anything changed (and every second), opens links to neighbours
/// (and repair links across a split the rows disagree about) and closes links that left the
/// tree.
async fn topology_loop(node: Arc<Node>, shutdown: CancellationToken, tracker: TaskTracker) {
    let fed = &node.federation;
    let grace = topology::dead_edge_grace(&node.config.probe);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = fed.changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let (to_connect, to_close) = {
            let mut guard = fed.state.lock();
            let st = &mut *guard;
            let now = Instant::now();
            let links: BTreeMap<ServerKey, Duration> = st
                .links
                .iter()
                .map(|(k, l)| (k.clone(), now - l.up_at))
                .collect();
            let busy: BTreeSet<ServerKey> = st
                .connecting
                .iter()
                .cloned()
                .chain(
                    st.backoff
                        .iter()
                        .filter(|(_, (_, at))| *at > now)
                        .map(|(k, _)| k.clone()),
                )
                .collect();
            // The MST (O(V²) on a complete graph) is recomputed only when the matrix moved;
            // the loop's one-second tick only retries dials whose backoff ran out.
            let tree = if st.tree_version == st.members.version() {
                st.tree.clone()
            } else {
                st.tree_version = st.members.version();
                crate::mst::minimum_spanning_tree(&st.members.graph())
            };
            let plan = topology::plan_with_tree(&st.members, tree, &links, &busy, grace);
            if plan.tree != st.tree {
                fed.recomputations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    tree = ?plan.tree.iter().map(|(a, b)| format!("{}-{}", key_string(a), key_string(b))).collect::<Vec<_>>(),
                    "spanning tree recomputed"
                );
                st.tree = plan.tree;
            }
            for n in &plan.connect {
                if plan.repairs.contains(n) {
                    tracing::info!(peer = %key_string(n), "dialling a server our rows put outside this part of the tree: it answers our probes");
                }
                st.connecting.insert(n.clone());
            }
            for k in &plan.close {
                if let Some(link) = st.links.get(k) {
                    let _ = link.tx.try_send((
                        now,
                        encode(m::Disconnect {
                            reason: Some("not a tree neighbour".into()),
                        }),
                    ));
                    link.kill.cancel();
                }
            }
            (plan.connect, plan.close)
        };
        for k in to_close {
            tracing::info!(peer = %key_string(&k), "closing link: no longer a tree neighbour");
        }
        for peer in to_connect {
            tracker.spawn(dial::dial(Arc::clone(&node), peer, shutdown.clone()));
        }
    }
}
