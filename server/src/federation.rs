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
//!   and a reply is published at once ([`revival_loop`]);
//! * a server this node measures alive but that the tree puts outside its component means the
//!   rows disagree: this node dials the nearest such server of each other component (a repair
//!   link), and rows are exchanged on every link-up;
//! * a link is never closed as "not a tree neighbour" while the rows say its edge is dead (the
//!   open link is proof they are stale) until fresh rows have had time to cross it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use gossip_common::message::{self as m, EcEntry};
use gossip_common::rtt::{self, Rtt};
use gossip_common::{Body, ContactList, Message, Signed, UserInfo, XmlFrameCodec};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::mst::{self, key_string, ServerGraph, ServerKey, TreeEdge};
use crate::store::{Mode, StoreError};
use crate::Node;

/// A server republishes its measurement of a peer only when it moved by more than this
/// fraction *and* by more than [`DAMPING_FLOOR_US`] (or the peer died or came back), so jitter
/// never reshapes the tree: the fraction covers WAN links, the floor covers LAN and loopback,
/// where sub-millisecond noise is large relative to the RTT itself.
const DAMPING: f64 = 0.20;
/// Smallest RTT change, in microseconds, worth republishing.
const DAMPING_FLOOR_US: f64 = 1000.0;
/// Event-count entries per `eventCounts` message (about 40 bytes each).
const EC_PER_MESSAGE: usize = 1000;
/// Frames queued to one peer before the link counts as stuck and is dropped.
const LINK_QUEUE: usize = 4096;
/// Longest wait between reconnection attempts to a tree neighbour.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A measurer's published row: RTT in microseconds per server, `None` = dead.
#[derive(Debug, Clone, Default)]
struct Row {
    seq: u64,
    rtts: BTreeMap<ServerKey, Option<u64>>,
}

struct Link {
    id: u64,
    /// The peer's address as seen on this connection (blacklist entries drop matching links).
    addr: SocketAddr,
    /// When the handshake completed: a dead mark older than the link is not trusted.
    up_at: Instant,
    /// Who opened it; decides which of two simultaneous links survives.
    opened_by: ServerKey,
    /// Control and propagation: never waited on (a link whose queue is full is cut).
    tx: mpsc::Sender<(Instant, Bytes)>,
    /// Bulk sync traffic (event-count lists, `changedEntries`): senders wait for room. A queue
    /// of its own, written after the control queue, so a large sync can neither delay nor
    /// overflow the control traffic (which would cut the link and restart the sync).
    bulk: mpsc::Sender<(Instant, Bytes)>,
    kill: CancellationToken,
}

/// The receiving end of a link queue: frames with the time they were queued.
type LinkQueue = mpsc::Receiver<(Instant, Bytes)>;

/// Frames a link's bulk queue holds (each at most one frame limit, 64 KiB by default).
const BULK_QUEUE: usize = 16;

/// A network-wide lock request waiting for the answers of this node's subtree.
struct PendingLock {
    /// Neighbours the request reached and that have not answered yet.
    waiting_on: BTreeSet<ServerKey>,
    granted: bool,
    reply: LockReply,
}

enum LockReply {
    /// Answer the neighbour the request came from.
    Peer(ServerKey),
    /// This node started the request.
    Origin(tokio::sync::oneshot::Sender<bool>),
}

#[derive(Default)]
struct State {
    /// Servers an admin deleted: not re-learned from links, lists or rows, and their links are
    /// refused, until an admin adds them again.
    deleted: BTreeSet<ServerKey>,
    pending_locks: HashMap<(gossip_common::UserId, String), PendingLock>,
    servers: BTreeSet<ServerKey>,
    rows: HashMap<ServerKey, Row>,
    tree: Vec<TreeEdge>,
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
}

impl Federation {
    pub(crate) fn new(me: ServerKey, peers: &[ServerKey]) -> Federation {
        let mut state = State::default();
        state.servers.insert(me.clone());
        state.servers.extend(peers.iter().cloned());
        Federation {
            me,
            state: Mutex::new(state),
            changed: Notify::new(),
            probe_now: Notify::new(),
            revive_now: Notify::new(),
            next_link: AtomicU64::new(1),
            recomputations: AtomicU64::new(0),
            link_drops: AtomicU64::new(0),
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
            servers: st.servers.iter().map(key_string).collect(),
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
                .rows
                .get(&self.me)
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
            .rows
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
        self.state.lock().deleted.remove(&key);
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
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let (deleted, known) = (&st.deleted, &mut st.servers);
        let added: Vec<ServerKey> = servers
            .into_iter()
            .filter(|s| !deleted.contains(s))
            .filter(|s| known.insert(s.clone()))
            .collect();
        drop(guard);
        if !added.is_empty() {
            self.changed.notify_one();
            self.probe_now.notify_one();
        }
        added
    }

    fn remove_server(&self, key: &ServerKey) -> bool {
        let mut st = self.state.lock();
        st.deleted.insert(key.clone());
        let removed = st.servers.remove(key);
        st.rows.remove(key);
        for row in st.rows.values_mut() {
            row.rtts.remove(key);
        }
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
    fn store_row(&self, measurer: ServerKey, row: Row) -> bool {
        let mut st = self.state.lock();
        let newer = !st.deleted.contains(&measurer)
            && st.rows.get(&measurer).is_none_or(|r| row.seq > r.seq);
        if newer {
            let unknown: Vec<ServerKey> = row
                .rtts
                .keys()
                .chain(std::iter::once(&measurer))
                .filter(|k| !st.servers.contains(*k) && !st.deleted.contains(*k))
                .cloned()
                .collect();
            st.servers.extend(unknown);
            st.rows.insert(measurer, row);
        }
        drop(st);
        if newer {
            self.changed.notify_one();
        }
        newer
    }

    fn row_message(&self, measurer: &ServerKey, row: &Row) -> Bytes {
        encode(m::UpdateRtts {
            host: measurer.0.clone(),
            port: measurer.1,
            seq: row.seq,
            rtts: row
                .rtts
                .iter()
                .map(|(k, v)| m::RttEntry {
                    host: k.0.clone(),
                    port: k.1,
                    ms: v.map(|us| us as f64 / 1000.0),
                })
                .collect(),
        })
    }

    /// The graph of the current matrix. The weight of {a, b} is the larger of the two
    /// directions' measurements (a link is as good as its worse direction), or the one present;
    /// a direction reported dead removes the edge.
    fn graph(st: &State) -> ServerGraph {
        // `servers` iterates in order, so positions are the graph's indices: no key is cloned
        // per edge and each row is looked up once per server.
        let servers: Vec<&ServerKey> = st.servers.iter().collect();
        let rows: Vec<Option<&Row>> = servers.iter().map(|s| st.rows.get(*s)).collect();
        let mut edges = Vec::new();
        for (i, a) in servers.iter().enumerate() {
            for (j, b) in servers.iter().enumerate().skip(i + 1) {
                if let Edge::Alive(w) = edge(rows[i], b, rows[j], a) {
                    edges.push((i, j, w));
                }
            }
        }
        ServerGraph::from_indexed(st.servers.iter().cloned().collect(), edges)
    }
}

/// What the rows say of the edge between two servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edge {
    /// Usable, with this weight: the larger of the two directions' measurements (a link is as
    /// good as its worse direction), or the one present.
    Alive(u64),
    /// A direction reported dead: no edge.
    Dead,
    /// Neither direction measured yet.
    Unknown,
}

/// The edge between `a` (row `row_a`) and `b` (row `row_b`).
fn edge(row_a: Option<&Row>, b: &ServerKey, row_b: Option<&Row>, a: &ServerKey) -> Edge {
    let ab = row_a.and_then(|r| r.rtts.get(b)).copied();
    let ba = row_b.and_then(|r| r.rtts.get(a)).copied();
    match (ab, ba) {
        (Some(None), _) | (_, Some(None)) => Edge::Dead,
        (None, None) => Edge::Unknown,
        (Some(Some(x)), Some(Some(y))) => Edge::Alive(x.max(y)),
        (Some(Some(x)), None) | (None, Some(Some(x))) => Edge::Alive(x),
    }
}

/// The servers to open a repair link to: for each component of the tree (a forest when the rows
/// disagree) other than this server's own, the member this server's own row measures alive with
/// the lowest RTT. Rows can only say two components are apart if one side marks the other dead
/// while this server measures it alive, so a repair link is dialled only when rows are stale.
fn repair_targets(
    me: &ServerKey,
    servers: &BTreeSet<ServerKey>,
    tree: &[TreeEdge],
    my_row: Option<&Row>,
) -> Vec<ServerKey> {
    let Some(my_row) = my_row else {
        return Vec::new();
    };
    // Components of the forest by union-find over the tree's edges.
    let index: HashMap<&ServerKey, usize> =
        servers.iter().enumerate().map(|(i, s)| (s, i)).collect();
    let mut parent: Vec<usize> = (0..servers.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (a, b) in tree {
        if let (Some(&i), Some(&j)) = (index.get(a), index.get(b)) {
            let (ri, rj) = (root(&mut parent, i), root(&mut parent, j));
            parent[ri] = rj;
        }
    }
    let Some(&mine) = index.get(me) else {
        return Vec::new();
    };
    let my_root = root(&mut parent, mine);
    let mut nearest: BTreeMap<usize, (u64, &ServerKey)> = BTreeMap::new();
    for (s, rtt) in &my_row.rtts {
        let (Some(rtt), Some(&i)) = (rtt, index.get(s)) else {
            continue;
        };
        let r = root(&mut parent, i);
        if r == my_root {
            continue;
        }
        let best = nearest.entry(r).or_insert((*rtt, s));
        if (*rtt, s) < (best.0, best.1) {
            *best = (*rtt, s);
        }
    }
    nearest.into_values().map(|(_, s)| s.clone()).collect()
}

/// Whether a link outside the tree may be closed. Only once both ends' rows are known here
/// (a joining server is not cut off before it is measured), and, if the rows say the edge is
/// dead, only after `grace`: the open link proves the dead mark stale, and closing it would
/// leave the fresh rows no way across. The grace bounds the one case where a dead mark and a
/// live link truly coexist (RTT probes blocked while TCP works).
fn may_close_non_tree_link(
    edge: Edge,
    both_rows_known: bool,
    link_age: Duration,
    grace: Duration,
) -> bool {
    both_rows_known && (edge != Edge::Dead || link_age >= grace)
}

/// How long a link whose edge the rows call dead is kept outside the tree: long enough for both
/// ends' revival probes to publish fresh rows across it.
fn dead_edge_grace(probe: &gossip_common::rtt::ProbeConfig) -> Duration {
    probe.dead_after.max(probe.interval * 4)
}

/// How long a lock request waits for a subtree's answer before counting it as refused.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

impl Federation {
    /// Locks `uid` for `holder` on every reachable server (the spec's pessimistic scheme),
    /// the caller having locked it locally. The request travels down the tree; each server
    /// locks it (or refuses: stored already, or locked by someone else), asks its own subtree,
    /// and answers once the whole subtree has. Granted only if every server granted.
    pub(crate) async fn lock_network(
        &self,
        uid: gossip_common::UserId,
        holder: &str,
        ttl: Duration,
    ) -> bool {
        // A server that knows others but is not linked (just started, or relinking) waits up to
        // `LOCK_TIMEOUT` for a link; if none comes up it decides alone (availability after a
        // bounded wait; see docs/federation.md).
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            let (known, linked) = {
                let st = self.state.lock();
                (st.servers.len() > 1, !st.links.is_empty())
            };
            if !known || linked || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        let msg = encode(m::LockUid {
            uid,
            holder: holder.to_owned(),
            expires_s: ttl.as_secs().max(1),
        });
        if !self.send_lock_request(&msg, uid, holder, None, LockReply::Origin(done)) {
            return true; // nobody to ask: this server alone decides
        }
        let granted = matches!(
            tokio::time::timeout(LOCK_TIMEOUT + Duration::from_secs(1), rx).await,
            Ok(Ok(true))
        );
        self.state
            .lock()
            .pending_locks
            .remove(&(uid, holder.to_owned()));
        granted
    }

    /// Releases `holder`'s lock on `uid` on every reachable server.
    pub(crate) fn unlock_network(&self, uid: gossip_common::UserId, holder: &str) {
        self.flood(
            &encode(m::UnlockUid {
                uid,
                holder: Some(holder.to_owned()),
            }),
            None,
        );
    }

    /// Sends a lock request to every link but `except`, remembering which ones it reached.
    /// Returns false when it reached nobody (the caller answers by itself).
    fn send_lock_request(
        &self,
        msg: &Bytes,
        uid: gossip_common::UserId,
        holder: &str,
        except: Option<&ServerKey>,
        reply: LockReply,
    ) -> bool {
        let mut st = self.state.lock();
        let now = Instant::now();
        let waiting_on: BTreeSet<ServerKey> = st
            .links
            .iter()
            .filter(|(k, _)| Some(*k) != except)
            .filter(|(_, l)| l.tx.try_send((now, msg.clone())).is_ok())
            .map(|(k, _)| k.clone())
            .collect();
        if waiting_on.is_empty() {
            return false;
        }
        st.pending_locks.insert(
            (uid, holder.to_owned()),
            PendingLock {
                waiting_on,
                granted: true,
                reply,
            },
        );
        true
    }

    /// Records `from`'s answer (`None`: give up on everyone still silent, as a refusal) and,
    /// once the whole subtree has answered or anyone refused, answers upwards.
    fn lock_answer(
        &self,
        uid: gossip_common::UserId,
        holder: &str,
        granted: bool,
        from: Option<&ServerKey>,
    ) {
        let mut st = self.state.lock();
        let key = (uid, holder.to_owned());
        let Some(p) = st.pending_locks.get_mut(&key) else {
            return;
        };
        match from {
            Some(peer) => {
                if !p.waiting_on.remove(peer) {
                    return; // not waiting on that neighbour (late or duplicate answer)
                }
                p.granted &= granted;
            }
            None => {
                p.granted = false;
                p.waiting_on.clear();
            }
        }
        if !p.waiting_on.is_empty() && p.granted {
            return;
        }
        let p = st.pending_locks.remove(&key).expect("present");
        match p.reply {
            LockReply::Origin(done) => {
                let _ = done.send(p.granted);
            }
            LockReply::Peer(parent) => {
                if let Some(link) = st.links.get(&parent) {
                    let result = encode(m::LockResult {
                        uid,
                        granted: u8::from(p.granted),
                        holder: Some(holder.to_owned()),
                    });
                    let _ = link.tx.try_send((Instant::now(), result));
                }
            }
        }
    }

    /// A link went down: every lock request waiting on that neighbour is refused at once
    /// rather than timing out (the subtree behind it cannot be confirmed).
    fn link_lost_for_locks(&self, peer: &ServerKey) {
        let waiting: Vec<(gossip_common::UserId, String)> = self
            .state
            .lock()
            .pending_locks
            .iter()
            .filter(|(_, p)| p.waiting_on.contains(peer))
            .map(|(k, _)| k.clone())
            .collect();
        for (uid, holder) in waiting {
            self.lock_answer(uid, &holder, false, Some(peer));
        }
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
                    run_link(node, stream, None, peer, shutdown).await;
                });
                std::future::ready(())
            },
        ));
    }
    tracker.spawn(prober_loop(Arc::clone(node), shutdown.clone()));
    tracker.spawn(revival_loop(Arc::clone(node), shutdown.clone()));
    tracker.spawn(topology_loop(
        Arc::clone(node),
        shutdown.clone(),
        tracker.clone(),
    ));
}

/// Measures every known server that this node's row does not mark dead, once per `reprobe`
/// (or sooner when asked), publishing the row when a value moved past the damping threshold.
/// Servers marked dead are watched by [`revival_loop`], so a long round waiting out a dead
/// server's timeout never delays noticing that another one came back.
async fn prober_loop(node: Arc<Node>, shutdown: CancellationToken) {
    let fed = &node.federation;
    let me = key_string(&fed.me);
    loop {
        let servers: Vec<ServerKey> = {
            let st = fed.state.lock();
            let mine = st.rows.get(&fed.me);
            st.servers
                .iter()
                .filter(|s| **s != fed.me)
                .filter(|s| !matches!(mine.and_then(|r| r.rtts.get(*s)), Some(None)))
                .cloned()
                .collect()
        };
        let targets = probe_targets(&node, &servers).await;
        let results = if targets.is_empty() {
            Ok(BTreeMap::new())
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rtt::probe(&targets, &me, &node.config.probe, &node.config.lab) => r,
            }
        };
        match results {
            Ok(results) => {
                // Unresolvable and refused (blacklisted) servers count as dead: the tree must
                // not route through a server this node will not talk to.
                let measured: Vec<(ServerKey, Option<u64>)> = servers
                    .iter()
                    .map(|s| (s.clone(), alive_us(results.get(&key_string(s)))))
                    .collect();
                fed.publish_measurements(&measured);
            }
            Err(e) => tracing::warn!(error = %e, "RTT probe failed; keeping the previous row"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(node.config.reprobe) => {}
            _ = fed.probe_now.notified() => {}
        }
    }
}

/// Re-probes, one packet each per probe interval, every server this node's row marks dead, and
/// publishes the ones that answer at once: a server back from a crash or a partition is seen
/// within about one interval, whatever the measurement rounds are doing.
async fn revival_loop(node: Arc<Node>, shutdown: CancellationToken) {
    let fed = &node.federation;
    let me = key_string(&fed.me);
    let interval = node.config.probe.interval;
    let single = rtt::ProbeConfig {
        replies: 1,
        dead_after: interval,
        ..node.config.probe.clone()
    };
    loop {
        let dead: Vec<ServerKey> = {
            let st = fed.state.lock();
            st.rows
                .get(&fed.me)
                .map(|r| {
                    r.rtts
                        .iter()
                        .filter(|(s, rtt)| rtt.is_none() && st.servers.contains(*s))
                        .map(|(s, _)| s.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        let targets = probe_targets(&node, &dead).await;
        if targets.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
                _ = fed.revive_now.notified() => {}
            }
            continue;
        }
        // One packet to each, answers awaited for one interval: the probe paces the loop.
        let results = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rtt::probe(&targets, &me, &single, &node.config.lab) => r,
        };
        let results = match results {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "revival probe failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                continue;
            }
        };
        let revived: Vec<(ServerKey, Option<u64>)> = dead
            .iter()
            .filter_map(|s| alive_us(results.get(&key_string(s))).map(|us| (s.clone(), Some(us))))
            .collect();
        if !revived.is_empty() {
            tracing::info!(
                servers = ?revived.iter().map(|(s, _)| key_string(s)).collect::<Vec<_>>(),
                "servers marked dead answer again"
            );
            fed.publish_measurements(&revived);
        }
    }
}

/// An RTT result in microseconds (at least 1), `None` when dead or not measured.
fn alive_us(r: Option<&Rtt>) -> Option<u64> {
    match r {
        Some(Rtt::Alive(d)) => Some(d.as_micros().max(1) as u64),
        _ => None,
    }
}

/// The RTT addresses (P+2) of `servers`, by identity; servers that do not resolve or that this
/// node refuses (blacklisted) are left out, so they are never probed and count as dead.
async fn probe_targets(node: &Node, servers: &[ServerKey]) -> BTreeMap<String, SocketAddr> {
    let mut targets = BTreeMap::new();
    for s in servers {
        if let Some(addr) = resolve(s, 2).await {
            if !node.blacklist.contains(addr.ip()) {
                targets.insert(key_string(s), addr);
            }
        }
    }
    targets
}

/// Whether a new measurement is within the damping threshold of the published one (so the row
/// keeps the old value): moved by at most [`DAMPING`] of it or by at most
/// [`DAMPING_FLOOR_US`]. Dead stays dead; any change between dead and alive is news.
fn damped(published: Option<&Option<u64>>, measured: Option<u64>) -> bool {
    match (published, measured) {
        (Some(Some(prev)), Some(now)) => {
            let moved = (now as f64 - *prev as f64).abs();
            moved <= DAMPING * *prev as f64 || moved <= DAMPING_FLOOR_US
        }
        (Some(None), None) => true,
        _ => false,
    }
}

impl Federation {
    /// Folds measurements into this node's row (with damping) and, if the row changed,
    /// publishes it with a new `seq` to every link.
    fn publish_measurements(&self, measured: &[(ServerKey, Option<u64>)]) -> bool {
        let published = {
            let mut st = self.state.lock();
            let old = st.rows.get(&self.me).cloned().unwrap_or_default();
            let mut row = old.clone();
            for (s, m) in measured {
                if !damped(old.rtts.get(s), *m) {
                    row.rtts.insert(s.clone(), *m);
                }
            }
            row.rtts.retain(|k, _| st.servers.contains(k));
            let changed = row.rtts != old.rtts || !st.rows.contains_key(&self.me);
            if changed {
                row.seq = now_ms().max(old.seq + 1);
                st.rows.insert(self.me.clone(), row.clone());
                Some(row)
            } else {
                None
            }
        };
        let Some(row) = published else {
            return false;
        };
        tracing::debug!(?row, "publishing RTT row");
        self.flood(&self.row_message(&self.me, &row), None);
        self.changed.notify_one();
        true
    }
}

/// Recomputes the tree when anything changed (and every second), opens links to neighbours
/// (and repair links across a split the rows disagree about) and closes links that left the
/// tree.
async fn topology_loop(node: Arc<Node>, shutdown: CancellationToken, tracker: TaskTracker) {
    let fed = &node.federation;
    let grace = dead_edge_grace(&node.config.probe);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = fed.changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let (to_connect, to_close) = {
            let mut guard = fed.state.lock();
            let st = &mut *guard;
            let tree = mst::minimum_spanning_tree(&Federation::graph(st));
            if tree != st.tree {
                fed.recomputations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    tree = ?tree.iter().map(|(a, b)| format!("{}-{}", key_string(a), key_string(b))).collect::<Vec<_>>(),
                    "spanning tree recomputed"
                );
                st.tree = tree;
            }
            let neighbours = mst::neighbours(&st.tree, &fed.me);
            let my_row = st.rows.get(&fed.me);
            let repairs: Vec<ServerKey> = repair_targets(&fed.me, &st.servers, &st.tree, my_row)
                .into_iter()
                .filter(|r| !neighbours.contains(r))
                .collect();
            let now = Instant::now();
            let to_connect: Vec<ServerKey> = neighbours
                .iter()
                .chain(&repairs)
                .filter(|n| !st.links.contains_key(*n) && !st.connecting.contains(*n))
                .filter(|n| st.backoff.get(*n).is_none_or(|(_, at)| *at <= now))
                .cloned()
                .collect();
            for n in &to_connect {
                if repairs.contains(n) {
                    tracing::info!(peer = %key_string(n), "dialling a server our rows put outside this part of the tree: it answers our probes");
                }
                st.connecting.insert(n.clone());
            }
            let to_close: Vec<ServerKey> = st
                .links
                .iter()
                .filter(|(k, _)| !neighbours.contains(k) && !repairs.contains(k))
                .filter(|(k, l)| {
                    let both_known =
                        st.rows.contains_key(*k) && my_row.is_some_and(|r| r.rtts.contains_key(*k));
                    let e = edge(my_row, k, st.rows.get(*k), &fed.me);
                    may_close_non_tree_link(e, both_known, now - l.up_at, grace)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in &to_close {
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
            (to_connect, to_close)
        };
        for k in to_close {
            tracing::info!(peer = %key_string(&k), "closing link: no longer a tree neighbour");
        }
        for peer in to_connect {
            tracker.spawn(dial(Arc::clone(&node), peer, shutdown.clone()));
        }
    }
}

/// Shortest wait before redialling a server whose link ended or could not be opened.
const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// Opens a link to `peer` and runs it. Backoff doubles on every attempt that does not get
/// through the handshake (refused, timed out, closed before its `serverID`: a server that
/// refuses us, e.g. by blacklist, is not redialled in a tight loop) and restarts from the
/// minimum once a link was up. Shutdown cancels a pending connect or handshake at once.
async fn dial(node: Arc<Node>, peer: ServerKey, shutdown: CancellationToken) {
    let fed = &node.federation;
    let connected = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = connect(&node, &peer) => Some(r),
    };
    let outcome = match connected {
        None => {
            fed.state.lock().connecting.remove(&peer);
            return;
        }
        Some(Ok((stream, addr))) => {
            match run_link(
                Arc::clone(&node),
                stream,
                Some(peer.clone()),
                addr,
                shutdown.clone(),
            )
            .await
            {
                LinkEnd::WasUp => Ok(()),
                LinkEnd::NotUp(why) => Err(why),
            }
        }
        Some(Err(why)) => Err(why),
    };
    let mut st = fed.state.lock();
    st.connecting.remove(&peer);
    let delay = match outcome {
        Ok(()) => MIN_BACKOFF,
        Err(why) => {
            let delay = st
                .backoff
                .get(&peer)
                .map_or(MIN_BACKOFF, |(d, _)| (*d * 2).min(MAX_BACKOFF));
            tracing::info!(peer = %key_string(&peer), why, retry_in = ?delay, "cannot reach tree neighbour");
            delay
        }
    };
    st.backoff.insert(peer, (delay, Instant::now() + delay));
    drop(st);
    fed.changed.notify_one();
}

/// Connects to `peer`'s server port from this node's bound address (so the peer, its
/// blacklist and its logs see the address this node is known by).
async fn connect(node: &Node, peer: &ServerKey) -> Result<(TcpStream, SocketAddr), &'static str> {
    let addr = resolve(peer, 1).await.ok_or("cannot resolve")?;
    if node.blacklist.contains(addr.ip()) {
        return Err("its address is blacklisted here");
    }
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|_| "cannot create a socket")?;
    let bind = node.config.bind;
    if !bind.is_unspecified() && bind.is_ipv4() == addr.is_ipv4() {
        socket
            .bind(SocketAddr::new(bind, 0))
            .map_err(|_| "cannot bind the source address")?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| "connect timed out")?
        .map_err(|_| "connection refused")?;
    let _ = stream.set_nodelay(true);
    Ok((stream, addr))
}

/// How a link attempt ended.
enum LinkEnd {
    /// The handshake completed and the link ran (and has ended since).
    WasUp,
    /// The handshake did not complete: why.
    NotUp(&'static str),
}

/// Per-link sync progress: the peer's event counts, gathered until its last part.
struct SyncIn {
    users: Vec<EcEntry>,
    lists: Vec<EcEntry>,
    /// The link's bulk queue, for the records the peer lacks.
    bulk: mpsc::Sender<(Instant, Bytes)>,
    /// `changedEntries` batches being verified and written at once: verifying the next batch
    /// while the previous one waits for its `fdatasync` keeps both the CPU and the disk busy;
    /// the bound keeps a fast sender from queueing unbounded work.
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// `changedEntries` batches a link applies concurrently.
const SYNC_BATCHES_IN_FLIGHT: usize = 8;

impl SyncIn {
    fn new(bulk: mpsc::Sender<(Instant, Bytes)>) -> Self {
        SyncIn {
            users: Vec::new(),
            lists: Vec::new(),
            bulk,
            in_flight: Arc::new(tokio::sync::Semaphore::new(SYNC_BATCHES_IN_FLIGHT)),
        }
    }
}

/// Runs one server link (`expect` = the peer we dialled, `None` for an accepted link).
async fn run_link(
    node: Arc<Node>,
    stream: TcpStream,
    expect: Option<ServerKey>,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> LinkEnd {
    let (rd, mut wr) = stream.into_split();
    let fed = &node.federation;
    let mut frames = FramedRead::new(rd, XmlFrameCodec::new(node.config.max_frame));
    // Handshake: serverID first, both ways.
    let hello = encode(m::ServerIdMsg {
        host: fed.me.0.clone(),
        port: fed.me.1,
    });
    if wr.write_all(&hello).await.is_err() || wr.write_all(b"\n").await.is_err() {
        return LinkEnd::NotUp("closed before the handshake");
    }
    let first = tokio::select! {
        _ = shutdown.cancelled() => return LinkEnd::NotUp("shutting down"),
        first = tokio::time::timeout(Duration::from_secs(10), frames.next()) => first,
    };
    let peer: ServerKey = match first {
        Ok(Some(Ok(Ok(frame)))) => match Message::decode(&frame) {
            Ok(Message {
                body: Body::ServerId(id),
                ..
            }) => (id.host, id.port),
            _ => {
                tracing::info!(%addr, "server link refused: first message was not serverID");
                let _ = wr
                    .write_all(
                        encode(m::Error {
                            code: gossip_common::ErrorCode::NotAllowed,
                            text: "the first message on a server link must be serverID".into(),
                            current: None,
                        })
                        .as_ref(),
                    )
                    .await;
                return LinkEnd::NotUp("first message was not serverID");
            }
        },
        Err(_) => return LinkEnd::NotUp("no serverID within 10 s"),
        Ok(_) => return LinkEnd::NotUp("closed before its serverID"),
    };
    if fed.state.lock().deleted.contains(&peer) {
        tracing::info!(%addr, peer = %key_string(&peer), "server link refused: deleted by an admin");
        return LinkEnd::NotUp("deleted by an admin");
    }
    if peer == fed.me || expect.as_ref().is_some_and(|e| *e != peer) {
        tracing::warn!(%addr, peer = %key_string(&peer), "server link refused: unexpected identity");
        return LinkEnd::NotUp("unexpected identity");
    }
    let span = tracing::info_span!("link", peer = %key_string(&peer));
    let node = Arc::clone(&node);
    async move {
        let fed = &node.federation;
        let opened_by = if expect.is_some() { fed.me.clone() } else { peer.clone() };
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE);
        let kill = CancellationToken::new();
        let id = fed.next_link.fetch_add(1, Ordering::Relaxed);
        // Register, resolving a simultaneous link from the other side deterministically.
        {
            let mut st = fed.state.lock();
            let winner = fed.me.clone().min(peer.clone());
            if let Some(existing) = st.links.get(&peer) {
                if existing.opened_by == winner || opened_by != winner {
                    tracing::debug!("duplicate link closed");
                    // A link to the peer is up: this attempt did its job.
                    return LinkEnd::WasUp;
                }
                existing.kill.cancel();
            }
            st.links.insert(peer.clone(), Link { id, addr, up_at: Instant::now(), opened_by, tx: tx.clone(), bulk: bulk.clone(), kill: kill.clone() });
            st.connecting.remove(&peer);
            st.backoff.remove(&peer);
        }
        // A live link proves the peer reachable: if our row marks it dead, re-probe it now.
        fed.revive_now.notify_one();
        let learned = fed.add_servers([peer.clone()]);
        if !learned.is_empty() {
            fed.flood(&encode(m::AddServer { host: peer.0.clone(), port: peer.1 }), Some(&peer));
        }
        tracing::info!("server link up");
        let delay = node.config.lab.to(&key_string(&peer));
        let tap = crate::trace::Tap::new(node.trace.as_ref(), addr, "server");
        let writer = tokio::spawn(link_writer(wr, (rx, bulk_rx), delay, kill.clone(), tap, Arc::clone(&node)));
        // Initial exchange: servers, every known row, and our event counts for sync.
        let now = Instant::now();
        let (servers, rows) = {
            let st = fed.state.lock();
            let servers: Vec<m::ServerAddr> = st.servers.iter().map(|(h, p)| m::ServerAddr { host: h.clone(), port: *p }).collect();
            let rows: Vec<Bytes> = st.rows.iter().map(|(k, r)| fed.row_message(k, r)).collect();
            (servers, rows)
        };
        let mut initial = vec![encode(m::ServerList { servers })];
        initial.extend(rows);
        for frame in initial {
            if tx.send((now, frame)).await.is_err() {
                break;
            }
        }
        // Our event counts go by the bulk queue, from a task: they are a million entries for a
        // million users, and this task must start reading the peer's meanwhile.
        {
            let (node, bulk) = (Arc::clone(&node), bulk.clone());
            tokio::spawn(async move {
                for frame in event_count_messages(&node) {
                    if bulk.send((Instant::now(), frame)).await.is_err() {
                        break;
                    }
                }
            });
        }
        let mut sync = SyncIn::new(bulk);
        let idle = node.config.idle_timeout.max(Duration::from_secs(10));
        let mut last_rx = Instant::now();
        let mut pinged = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = tx.try_send((Instant::now(), encode(m::Disconnect { reason: Some("server shutting down".into()) })));
                    break;
                }
                _ = kill.cancelled() => break,
                _ = tokio::time::sleep_until(last_rx + idle / 3), if !pinged => {
                    pinged = true;
                    let _ = tx.try_send((Instant::now(), encode(m::Ping {})));
                }
                _ = tokio::time::sleep_until(last_rx + idle) => {
                    tracing::info!("server link silent too long; closing");
                    break;
                }
                item = frames.next() => {
                    last_rx = Instant::now();
                    pinged = false;
                    let frame = match item {
                        None => break,
                        Some(Err(e)) => { tracing::info!(error = %e, "server link framing error"); break; }
                        Some(Ok(Err(e))) => { tracing::info!(error = %e, "frame from peer refused"); continue; }
                        Some(Ok(Ok(f))) => f,
                    };
                    node.metrics.link_bytes_in.add(frame.len() as u64 + 1);
                    if let Some(t) = &node.trace {
                        t.record(crate::trace::Dir::In, addr, "server", &frame);
                    }
                    if is_changed_entries(&frame) {
                        // Bulk sync data is decoded, verified and stored by a task of its own
                        // (bounded by `in_flight`), so several batches are worked on at once,
                        // on every core the node has, while this reader goes on reading.
                        let Ok(slot) = Arc::clone(&sync.in_flight).acquire_owned().await else { break };
                        tokio::spawn(apply_changed_entries(Arc::clone(&node), peer.clone(), frame, slot));
                        continue;
                    }
                    match Message::decode(&frame) {
                        Ok(msg) => {
                            node.metrics.messages_in.add(msg.msgtype(), 1);
                            if handle_peer(&node, &peer, &tx, &mut sync, msg).await.is_break() {
                                break;
                            }
                        }
                        Err(e) => tracing::info!(error = %e, "message from peer refused"),
                    }
                }
            }
        }
        kill.cancel();
        // The writer delivers a queued goodbye; a stalled peer gets little time at shutdown.
        let linger = if shutdown.is_cancelled() { Duration::from_millis(300) } else { Duration::from_secs(2) };
        let _ = tokio::time::timeout(linger, writer).await;
        {
            let mut st = fed.state.lock();
            if st.links.get(&peer).is_some_and(|l| l.id == id) {
                st.links.remove(&peer);
            }
        }
        tracing::info!("server link down");
        fed.link_lost_for_locks(&peer);
        fed.changed.notify_one();
        fed.probe_now.notify_one();
        LinkEnd::WasUp
    }
    .instrument(span)
    .await
}

/// Writes queued frames, each no earlier than its enqueue time plus the lab delay (a delay
/// line: constant delay, order kept).
async fn link_writer(
    wr: tokio::net::tcp::OwnedWriteHalf,
    (mut rx, mut bulk): (LinkQueue, LinkQueue),
    delay: Duration,
    kill: CancellationToken,
    tap: Option<crate::trace::Tap>,
    node: Arc<Node>,
) {
    let mut wr = tokio::io::BufWriter::with_capacity(64 * 1024, wr);
    let trace = |frame: &Bytes| {
        node.metrics.link_bytes_out.add(frame.len() as u64 + 1);
        if let Some(tap) = &tap {
            tap.record(crate::trace::Dir::Out, frame);
        }
    };
    let mut bulk_open = true;
    loop {
        let (at, frame) = tokio::select! {
            biased;
            _ = kill.cancelled() => break,
            f = rx.recv() => match f { Some(f) => f, None => break },
            f = bulk.recv(), if bulk_open => match f {
                Some(f) => f,
                None => { bulk_open = false; continue }
            },
        };
        if !delay.is_zero() {
            lab_sleep_until(&node, at + delay).await;
        }
        trace(&frame);
        let mut ok = wr.write_all(&frame).await.is_ok() && wr.write_all(b"\n").await.is_ok();
        while ok {
            // Control frames first; bulk frames only when no control frame waits.
            match rx.try_recv().or_else(|_| bulk.try_recv()) {
                Ok((at, more)) => {
                    if !delay.is_zero() && at + delay > Instant::now() {
                        // Not due yet: flush what is, then wait for it.
                        ok = wr.flush().await.is_ok();
                        lab_sleep_until(&node, at + delay).await;
                    }
                    trace(&more);
                    ok = ok
                        && wr.write_all(&more).await.is_ok()
                        && wr.write_all(b"\n").await.is_ok();
                }
                Err(_) => break,
            }
        }
        if !ok || wr.flush().await.is_err() {
            kill.cancel();
            break;
        }
    }
    // Deliver a queued goodbye, if any, before closing.
    while let Ok((_, frame)) = rx.try_recv() {
        if wr.write_all(&frame).await.is_err() || wr.write_all(b"\n").await.is_err() {
            break;
        }
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}

/// Waits out an emulated link delay, precisely when the node has its lab clock.
async fn lab_sleep_until(node: &Node, deadline: Instant) {
    match &node.lab_clock {
        Some(clock) => clock.sleep_until(deadline).await,
        None => tokio::time::sleep_until(deadline).await,
    }
}

/// `eventCounts` messages for everything this node holds (users, then lists; last one marked).
fn event_count_messages(node: &Node) -> Vec<Bytes> {
    let users = node.store.user_event_counts();
    let lists = node.store.list_event_counts();
    let mut out = Vec::new();
    for chunk in users.chunks(EC_PER_MESSAGE) {
        out.push(encode(m::EventCounts {
            last: 0,
            userdb: m::EcList {
                entries: chunk.to_vec(),
            },
            contactlist: m::EcList::default(),
        }));
    }
    for chunk in lists.chunks(EC_PER_MESSAGE) {
        out.push(encode(m::EventCounts {
            last: 0,
            userdb: m::EcList::default(),
            contactlist: m::EcList {
                entries: chunk.to_vec(),
            },
        }));
    }
    out.push(encode(m::EventCounts {
        last: 1,
        ..Default::default()
    }));
    out
}

/// Sends the records a peer lacks as `changedEntries` messages, each filled to about 3/4 of
/// the frame limit, built one at a time as the link's queue takes them (a million records are
/// never all encoded at once).
async fn send_changed_entries(
    node: Arc<Node>,
    users: Vec<gossip_common::UserId>,
    lists: Vec<gossip_common::UserId>,
    tx: mpsc::Sender<(Instant, Bytes)>,
) {
    let budget = node.config.max_frame * 3 / 4;
    let mut msg = m::ChangedEntries::default();
    let mut size = 0;
    let records = users
        .iter()
        .map(|u| (true, *u))
        .chain(lists.iter().map(|u| (false, *u)));
    for (is_user, uid) in records {
        let cost = if is_user {
            match node.store.user(uid) {
                Some(r) => {
                    let cost = escaped_len(r.raw()) + RECORD_OVERHEAD;
                    msg.userinfo.push(r);
                    cost
                }
                None => continue,
            }
        } else {
            match node.store.contact_list(uid) {
                Some(r) => {
                    let cost = escaped_len(r.raw()) + RECORD_OVERHEAD;
                    msg.contactlists.push(r);
                    cost
                }
                None => continue,
            }
        };
        size += cost;
        if size > budget {
            // Over budget: send all but the record just added, which starts the next message.
            let carry = (msg.userinfo.len() + msg.contactlists.len() > 1).then(|| {
                let mut next = m::ChangedEntries::default();
                if is_user {
                    next.userinfo.extend(msg.userinfo.pop());
                } else {
                    next.contactlists.extend(msg.contactlists.pop());
                }
                next
            });
            let full = std::mem::replace(&mut msg, carry.unwrap_or_default());
            size = if msg.userinfo.is_empty() && msg.contactlists.is_empty() {
                0
            } else {
                cost
            };
            if tx.send((Instant::now(), encode(full))).await.is_err() {
                return;
            }
        }
    }
    msg.last = 1;
    let _ = tx.send((Instant::now(), encode(msg))).await;
}

/// Decodes one `changedEntries` frame, stores what is news and passes that on to the other
/// neighbours as one batch. Holds `slot` (a place among the link's batches in flight) until the
/// batch is durable and forwarded.
async fn apply_changed_entries(
    node: Arc<Node>,
    peer: ServerKey,
    frame: Bytes,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let origin = format!("peer:{}", key_string(&peer));
    let ce = match Message::decode(&frame) {
        Ok(Message {
            body: Body::ChangedEntries(ce),
            ..
        }) => ce,
        Ok(other) => {
            tracing::info!(
                msgtype = other.msgtype(),
                "unexpected message in a sync frame"
            );
            return;
        }
        Err(e) => {
            tracing::info!(error = %e, "sync message from peer refused");
            return;
        }
    };
    node.metrics.messages_in.add("changedEntries", 1);
    node.metrics
        .sync_records_received
        .add((ce.userinfo.len() + ce.contactlists.len()) as u64);
    let done = node
        .store
        .apply_replicated(ce.userinfo, ce.contactlists, &origin)
        .await;
    // What was news here is news for the rest of this side of the tree too: it goes
    // on as one batch, with backpressure (a large sync must not overflow the
    // neighbours' queues, which would cut their links).
    let forward = m::ChangedEntries {
        userinfo: news(done.users, &origin, |r| node.user_changed_locally(r)),
        contactlists: news(done.lists, &origin, |r| node.list_changed_locally(r)),
        ..Default::default()
    };
    if !forward.userinfo.is_empty() || !forward.contactlists.is_empty() {
        node.federation
            .flood_wait(|| encode(forward), Some(&peer))
            .await;
    }
    drop(slot);
}

/// The records a batch stored (news), each handed to `local` first; refusals other than stale
/// copies are logged.
fn news<T: gossip_common::Record>(
    results: Vec<Result<crate::store::Applied<T>, StoreError>>,
    origin: &str,
    mut local: impl FnMut(&Signed<T>),
) -> Vec<Signed<T>> {
    results
        .into_iter()
        .filter_map(|r| match r {
            Ok(applied) => {
                local(&applied.record);
                Some(applied.record)
            }
            Err(StoreError::Stale { .. }) => None,
            Err(e) => {
                tracing::warn!(error = %e, %origin, kind = T::KIND, "record from peer refused");
                None
            }
        })
        .collect()
}

/// Whether a frame is a `changedEntries` message (its root tag), without decoding it.
fn is_changed_entries(frame: &[u8]) -> bool {
    const TAG: &[u8] = b"<changedEntries";
    frame.starts_with(TAG)
        && matches!(
            frame.get(TAG.len()),
            Some(b' ' | b'>' | b'/' | b'\t' | b'\r' | b'\n')
        )
}

/// Bytes a record's signature, attributes and tags add inside `changedEntries`.
const RECORD_OVERHEAD: usize = 256;

/// Length of `raw` once XML-escaped as element text (`<` becomes `&lt;`, and so on).
fn escaped_len(raw: &str) -> usize {
    raw.len()
        + raw
            .bytes()
            .map(|b| match b {
                b'<' | b'>' => 3,
                b'&' => 4,
                b'"' | b'\'' => 5,
                _ => 0,
            })
            .sum::<usize>()
}

async fn handle_peer(
    node: &Arc<Node>,
    peer: &ServerKey,
    tx: &mpsc::Sender<(Instant, Bytes)>,
    sync: &mut SyncIn,
    msg: Message,
) -> std::ops::ControlFlow<()> {
    use std::ops::ControlFlow::{Break, Continue};
    let fed = &node.federation;
    let origin = format!("peer:{}", key_string(peer));
    match msg.body {
        Body::Ping(_) => {
            let _ = tx.try_send((Instant::now(), encode(m::Pong {})));
        }
        Body::Pong(_) | Body::Ok(_) => {}
        Body::Disconnect(d) => {
            tracing::info!(reason = ?d.reason, "peer closed the link");
            return Break(());
        }
        Body::ServerList(l) => {
            fed.add_servers(l.servers.into_iter().map(|s| (s.host, s.port)));
        }
        Body::ReqServerList(_) => {
            let servers = fed
                .state
                .lock()
                .servers
                .iter()
                .map(|(h, p)| m::ServerAddr {
                    host: h.clone(),
                    port: *p,
                })
                .collect();
            let _ = tx.try_send((Instant::now(), encode(m::ServerList { servers })));
        }
        Body::AddServer(a) => {
            if !fed.add_servers([(a.host.clone(), a.port)]).is_empty() {
                fed.flood(&encode(a), Some(peer));
            }
        }
        Body::DeleteServer(d) => {
            let key = (d.host.clone(), d.port);
            if key != fed.me && fed.remove_server(&key) {
                fed.flood(&encode(d), Some(peer));
            }
        }
        Body::UpdateRtts(u) => {
            let measurer = (u.host.clone(), u.port);
            let row = Row {
                seq: u.seq,
                rtts: u
                    .rtts
                    .iter()
                    .map(|e| {
                        (
                            (e.host.clone(), e.port),
                            e.ms.map(|ms| (ms * 1000.0).round().max(1.0) as u64),
                        )
                    })
                    .collect(),
            };
            if measurer != fed.me && fed.store_row(measurer, row) {
                fed.flood(&encode(u), Some(peer));
            }
        }
        Body::UserInfo(u) => apply_user(node, u.record, false, Some(peer), &origin).await,
        Body::NewUser(n) => apply_user(node, n.record, true, Some(peer), &origin).await,
        Body::ChangeCl(c) => apply_list(node, c.record, Some(peer), &origin).await,
        Body::EventCounts(ec) => {
            sync.users.extend(ec.userdb.entries);
            sync.lists.extend(ec.contactlist.entries);
            if ec.last != 0 {
                let mut theirs_users = std::mem::take(&mut sync.users);
                let mut theirs_lists = std::mem::take(&mut sync.lists);
                theirs_users.sort_unstable_by_key(|e| e.uid);
                theirs_lists.sort_unstable_by_key(|e| e.uid);
                let users = crate::sync::to_send(&node.store.user_event_counts(), &theirs_users);
                let lists = crate::sync::to_send(&node.store.list_event_counts(), &theirs_lists);
                tracing::info!(
                    users = users.len(),
                    lists = lists.len(),
                    "sync: sending what the peer lacks"
                );
                node.metrics
                    .sync_records_sent
                    .add((users.len() + lists.len()) as u64);
                node.metrics.sync_rounds.inc();
                // Sent by a task of its own: a large sync takes a while, and this link's reader
                // must keep reading meanwhile, or two nodes syncing to each other could each
                // wait for the other to read.
                tokio::spawn(send_changed_entries(
                    Arc::clone(node),
                    users,
                    lists,
                    sync.bulk.clone(),
                ));
            }
        }
        Body::ChangedEntries(_) => {
            // Routed to `apply_changed_entries` before decoding; never reaches here.
        }
        Body::LockUid(l) => {
            let ttl =
                Duration::from_secs(l.expires_s.clamp(1, node.config.uid_lock.as_secs().max(1)));
            let local = !node.store.contains_user(l.uid)
                && node.locks.try_lock(l.uid, &l.holder, ttl).is_ok();
            let forwarded = local
                && fed.send_lock_request(
                    &encode(l.clone()),
                    l.uid,
                    &l.holder,
                    Some(peer),
                    LockReply::Peer(peer.clone()),
                );
            if !forwarded {
                let result = encode(m::LockResult {
                    uid: l.uid,
                    granted: u8::from(local),
                    holder: Some(l.holder),
                });
                let _ = tx.try_send((Instant::now(), result));
            } else {
                // A subtree that never answers counts as a refusal. Weak: a stopped node must
                // not be kept alive (datafiles locked) by this timer.
                let node = Arc::downgrade(node);
                tokio::spawn(async move {
                    tokio::time::sleep(LOCK_TIMEOUT).await;
                    if let Some(node) = node.upgrade() {
                        node.federation.lock_answer(l.uid, &l.holder, false, None);
                    }
                });
            }
        }
        Body::LockResult(r) => {
            if let Some(holder) = r.holder {
                fed.lock_answer(r.uid, &holder, r.granted != 0, Some(peer));
            }
        }
        Body::UnlockUid(u) => {
            if let Some(holder) = &u.holder {
                node.locks.unlock(u.uid, holder);
            }
            fed.flood(&encode(u), Some(peer));
        }
        Body::Error(e) => tracing::info!(code = ?e.code, text = %e.text, "peer reported an error"),
        other => tracing::debug!(msgtype = other.msgtype(), "ignored on a server link"),
    }
    Continue(())
}

/// Stores a UserInfo from a peer; if it is news, pushes it to local watchers and forwards it.
async fn apply_user(
    node: &Arc<Node>,
    record: Signed<UserInfo>,
    new: bool,
    from: Option<&ServerKey>,
    origin: &str,
) {
    // Pushed and forwarded as soon as it is verified, not after this node's disk flush: a
    // flush per hop would add up along the tree (see `Store::apply_user_info_then`).
    match node
        .store
        .apply_user_info_then(record, Mode::Replicate, origin, |r| {
            node.user_changed_from(r, None, from, new)
        })
        .await
    {
        Ok(_) => {}
        Err(StoreError::Stale { .. }) => {}
        Err(e) => tracing::warn!(error = %e, %origin, "record from peer refused"),
    }
}

async fn apply_list(
    node: &Arc<Node>,
    record: Signed<ContactList>,
    from: Option<&ServerKey>,
    origin: &str,
) {
    match node.store.apply_contact_list(record, origin).await {
        Ok(applied) => node.list_changed_from(&applied.record, from),
        Err(StoreError::Stale { .. }) => {}
        Err(e) => tracing::warn!(error = %e, %origin, "contact list from peer refused"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u16) -> ServerKey {
        ("h".into(), n)
    }

    fn row(cells: &[(u16, Option<u64>)]) -> Row {
        Row {
            seq: 1,
            rtts: cells.iter().map(|(n, v)| (k(*n), *v)).collect(),
        }
    }

    #[test]
    fn an_edge_is_dead_if_either_direction_says_so_and_weighs_its_worse_direction() {
        let (a, b) = (row(&[(2, Some(10))]), row(&[(1, Some(30))]));
        assert_eq!(edge(Some(&a), &k(2), Some(&b), &k(1)), Edge::Alive(30));
        assert_eq!(edge(Some(&a), &k(2), None, &k(1)), Edge::Alive(10));
        let b_dead = row(&[(1, None)]);
        assert_eq!(edge(Some(&a), &k(2), Some(&b_dead), &k(1)), Edge::Dead);
        assert_eq!(edge(None, &k(2), None, &k(1)), Edge::Unknown);
    }

    /// The partition deadlock: a node's own row says the others are alive, but the rows it
    /// holds from them (stale, from the partition) mark it dead, so the tree leaves it alone.
    #[test]
    fn a_server_cut_off_by_stale_dead_marks_dials_the_nearest_server_of_the_other_part() {
        let servers: BTreeSet<ServerKey> = (1..=4).map(k).collect();
        let me = k(4);
        // The others form a tree among themselves; 4 is alone in the forest.
        let tree = vec![(k(1), k(2)), (k(2), k(3))];
        let mine = row(&[(1, Some(900)), (2, Some(300)), (3, None)]);
        assert_eq!(
            repair_targets(&me, &servers, &tree, Some(&mine)),
            vec![k(2)]
        );
        // On the other side, server 1 measures 4 alive and sees it in another component.
        let ones = row(&[(2, Some(5)), (3, Some(5)), (4, Some(40))]);
        assert_eq!(
            repair_targets(&k(1), &servers, &tree, Some(&ones)),
            vec![k(4)]
        );
        // Once the tree spans everyone, nobody repairs.
        let whole = vec![(k(1), k(2)), (k(2), k(3)), (k(2), k(4))];
        assert!(repair_targets(&me, &servers, &whole, Some(&mine)).is_empty());
        // Servers measured dead are not dialled, even in another component.
        let all_dead = row(&[(1, None), (2, None), (3, None)]);
        assert!(repair_targets(&me, &servers, &tree, Some(&all_dead)).is_empty());
        assert!(repair_targets(&me, &servers, &tree, None).is_empty());
    }

    #[test]
    fn a_link_the_rows_call_dead_is_kept_until_fresh_rows_can_cross_it() {
        let grace = Duration::from_secs(30);
        let young = Duration::from_secs(1);
        // Normal case: both measured alive, not in the tree: close.
        assert!(may_close_non_tree_link(Edge::Alive(5), true, young, grace));
        // A joining server not measured yet by both: keep.
        assert!(!may_close_non_tree_link(
            Edge::Alive(5),
            false,
            young,
            grace
        ));
        // The rows say dead but the link is up: the mark is stale; keep until the grace ends.
        assert!(!may_close_non_tree_link(Edge::Dead, true, young, grace));
        assert!(may_close_non_tree_link(Edge::Dead, true, grace, grace));
        let probe = gossip_common::rtt::ProbeConfig::default();
        assert!(dead_edge_grace(&probe) >= probe.interval * 4);
    }

    #[test]
    fn damping_keeps_small_moves_and_passes_every_death_and_revival() {
        assert!(damped(Some(&Some(10_000)), Some(11_000)));
        assert!(!damped(Some(&Some(10_000)), Some(13_000)));
        // Sub-millisecond noise on loopback is kept out by the floor.
        assert!(damped(Some(&Some(100)), Some(900)));
        assert!(!damped(Some(&Some(100)), None));
        assert!(!damped(Some(&None), Some(100)));
        assert!(damped(Some(&None), None));
        assert!(!damped(None, None));
    }
}
