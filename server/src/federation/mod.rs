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
pub mod keyring;
mod link;
mod locks;
mod mailsync;
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
    /// Which key each server name is bound to; refused keys; admission policy.
    keys: keyring::Keyring,
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
    /// Where the keyring is saved; its lock serialises the saves.
    keys_file: Mutex<Option<std::path::PathBuf>>,
    /// This server's identity key: signs its RTT rows and its own removal.
    signer: gossip_common::Keypair,
    /// Link-ups per peer key.
    link_rate: Mutex<crate::ratelimit::Limiter<gossip_common::PublicKey>>,
}

/// How long a server named by others (and never heard from itself) is kept.
const UNPROVEN_MAX_AGE: Duration = Duration::from_secs(600);

/// The keyring's file in the data directory.
pub(crate) const KEYRING_FILE: &str = "servers.keys";

impl Federation {
    pub(crate) fn new(
        me: ServerKey,
        peers: &[ServerKey],
        keys: keyring::Keyring,
        keys_file: Option<std::path::PathBuf>,
        signer: gossip_common::Keypair,
    ) -> Federation {
        let state = State {
            keys,
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
            keys_file: Mutex::new(keys_file),
            signer,
            link_rate: Mutex::new(crate::ratelimit::Limiter::new(
                link::LINKS_PER_KEY,
                membership::MAX_SERVERS,
            )),
        }
    }

    /// Signs this server's own row `row` (just made by membership), stores the signature with
    /// it, and returns the `updateRTTs` to flood.
    fn sign_own_row(&self, st: &mut State, mut row: membership::Row) -> m::UpdateRtts {
        let sig = self
            .signer
            .sign(
                gossip_common::Domain::ServerControl,
                &membership::row_bytes(&self.me, &row),
            )
            .to_bytes();
        st.members.set_own_sig(row.seq, sig);
        row.sig = Some(sig);
        membership::row_message(&self.me, &row, Some(&self.signer.public()))
    }

    /// A row from a peer: checked against the key bound to its measurer (bound on first sight
    /// from the key it carries), then stored if newer. Returns whether to forward it. A row
    /// that does not verify is dropped: no server can forge, alter or freeze another's row.
    pub(crate) fn receive_row(&self, u: &m::UpdateRtts) -> Result<bool, &'static str> {
        let measurer: ServerKey = (u.host.clone(), u.port);
        let key = if measurer == self.me {
            self.signer.public()
        } else {
            let carried: gossip_common::PublicKey = u
                .key
                .as_deref()
                .ok_or("row without its measurer's key")?
                .parse()
                .map_err(|_| "row with an invalid key")?;
            if !self.claim_key(&measurer, &carried).accepted() {
                return Err("row signed by a key not bound to its measurer");
            }
            carried
        };
        let sig: gossip_common::Signature = u
            .sig
            .as_deref()
            .ok_or("unsigned row")?
            .parse()
            .map_err(|_| "row with an invalid signature")?;
        let (measurer, mut row) = membership::row_of(u);
        key.verify(
            gossip_common::Domain::ServerControl,
            &membership::row_bytes(&measurer, &row),
            &sig,
        )
        .map_err(|_| "row signature does not verify")?;
        row.sig = Some(sig.to_bytes());
        Ok(self.store_row(measurer, row))
    }

    /// Every row held, as `updateRTTs` frames with their measurers' keys (a link's opening).
    pub(crate) fn row_frames(&self) -> Vec<Bytes> {
        let mine = self.signer.public();
        let st = self.state.lock();
        st.members
            .rows()
            .iter()
            .filter(|(_, r)| r.sig.is_some())
            .map(|(k, r)| {
                let key = if *k == self.me {
                    Some(&mine)
                } else {
                    st.keys.key_of(k)
                };
                encode(membership::row_message(k, r, key))
            })
            .collect()
    }

    /// Loads the keyring saved in `dir` (bindings and refusals) under the configured policy.
    pub(crate) fn load_keyring(config: &crate::config::Config) -> keyring::Keyring {
        let mut ring = keyring::Keyring::new(
            config.federation,
            config.allowed_keys.clone(),
            membership::MAX_SERVERS,
        );
        let path = config.data_dir.join(KEYRING_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => match ring.load_json(&text) {
                Ok(skipped) if skipped.is_empty() => {}
                Ok(skipped) => {
                    tracing::warn!(path = %path.display(), ?skipped, "keyring entries that do not parse were skipped")
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "keyring unreadable; starting with no bindings (names re-bind on first sight)")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(path = %path.display(), error = %e, "keyring unreadable"),
        }
        ring
    }

    /// Checks `name` presenting `key` (a link's handshake, or a key carried by a message),
    /// binding it on first sight; refusals are logged and counted by the caller.
    pub(crate) fn claim_key(
        &self,
        name: &ServerKey,
        key: &gossip_common::PublicKey,
    ) -> keyring::Verdict {
        let (verdict, snapshot) = {
            let mut st = self.state.lock();
            let (v, added) = st.keys.claim(name, key);
            (v, added.then(|| st.keys.to_json()))
        };
        if let Some(json) = snapshot {
            tracing::info!(server = %key_string(name), key = %key, "server key bound on first sight");
            self.save_keys(&json);
        }
        verdict
    }

    /// The key bound to `name`, if any.
    pub(crate) fn key_of(&self, name: &ServerKey) -> Option<gossip_common::PublicKey> {
        self.state.lock().keys.key_of(name).copied()
    }

    /// Runs `f` on the keyring (admin changes) and saves it.
    pub(crate) fn with_keyring<T>(&self, f: impl FnOnce(&mut keyring::Keyring) -> T) -> T {
        let (out, json) = {
            let mut st = self.state.lock();
            let out = f(&mut st.keys);
            (out, st.keys.to_json())
        };
        self.save_keys(&json);
        out
    }

    /// Bindings and refusals, for display.
    pub(crate) fn keyring_view(
        &self,
    ) -> (BTreeMap<String, String>, Vec<String>, keyring::Admission) {
        let st = self.state.lock();
        let bound = st
            .members
            .servers()
            .iter()
            .filter_map(|s| st.keys.key_of(s).map(|k| (key_string(s), k.to_string())))
            .collect();
        let refused = st.keys.refused().map(|k| k.to_string()).collect();
        (bound, refused, st.keys.admission())
    }

    /// Writes the keyring file (temporary file, fsync, rename). Rare (a new server, an admin
    /// change) and small, so done in place.
    fn save_keys(&self, json: &str) {
        let guard = self.keys_file.lock();
        let Some(path) = guard.as_ref() else { return };
        let tmp = path.with_extension("tmp");
        let result = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(json.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            tracing::error!(path = %path.display(), error = %e, "cannot save the keyring; bindings made since the last save are lost at restart");
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
        let added = self.add_servers([key.clone()]);
        self.state.lock().members.prove(&key);
        if !added.is_empty() {
            let bound = self.key_of(&key).map(|k| k.to_string());
            self.flood(
                &encode(m::AddServer {
                    host: key.0,
                    port: key.1,
                    key: bound,
                }),
                None,
            );
        }
        self.probe_now.notify_one();
    }

    /// An admin removed another server: forgotten and refused here only. Only a server itself
    /// can sign its removal for everyone ([`Federation::leave`]); the others get an unsigned
    /// `deleteServer`, which they take as a hint to re-measure it.
    pub(crate) fn admin_delete_server(&self, key: &ServerKey) -> bool {
        self.flood(
            &encode(m::DeleteServer {
                host: key.0.clone(),
                port: key.1,
                key: None,
                seq: None,
                sig: None,
            }),
            None,
        );
        self.remove_server(key)
    }

    /// This server leaves the federation: its signed removal is flooded, and every server that
    /// verifies it forgets this one and refuses its links until an admin adds it again.
    pub(crate) fn leave(&self) -> usize {
        let seq = now_ms().max(self.state.lock().members.my_row().map_or(0, |r| r.seq + 1));
        let sig = self.signer.sign(
            gossip_common::Domain::ServerControl,
            &removal_bytes(&self.me, seq),
        );
        let frame = encode(m::DeleteServer {
            host: self.me.0.clone(),
            port: self.me.1,
            key: Some(self.signer.public().to_string()),
            seq: Some(seq),
            sig: Some(sig.to_string()),
        });
        let links = self.state.lock().links.len();
        self.flood(&frame, None);
        links
    }

    /// A `deleteServer` from a peer. Signed by the removed server's bound key, and newer than
    /// every row it published: the server is forgotten here (returns true: forward it
    /// verbatim). Otherwise it is only a hint: that server is re-measured now.
    pub(crate) fn receive_removal(&self, d: &m::DeleteServer) -> Result<bool, &'static str> {
        let name: ServerKey = (d.host.clone(), d.port);
        if name == self.me {
            return Err("a removal of this server itself");
        }
        let verified = (|| {
            let key = self.key_of(&name)?;
            let sig: gossip_common::Signature = d.sig.as_deref()?.parse().ok()?;
            let seq = d.seq?;
            key.verify(
                gossip_common::Domain::ServerControl,
                &removal_bytes(&name, seq),
                &sig,
            )
            .ok()?;
            let newest_row = self.state.lock().members.row(&name).map_or(0, |r| r.seq);
            (seq > newest_row).then_some(())
        })();
        if verified.is_none() {
            self.probe_now.notify_one();
            self.revive_now.notify_one();
            return Err("not signed by the server removed (a hint to re-measure it)");
        }
        tracing::info!(server = %key_string(&name), "server left the federation (signed removal)");
        Ok(self.remove_server(&name))
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
        self.drop_links_where(|_, link| refused(link.addr.ip()))
    }

    /// Closes the links the keyring no longer accepts (after an admin refused a key or
    /// re-bound a name); returns how many.
    pub(crate) fn drop_links_by_key(&self) -> usize {
        let st = self.state.lock();
        let stale: Vec<ServerKey> = st
            .links
            .iter()
            .filter(|(name, link)| !st.keys.check(name, &link.key).accepted())
            .map(|(name, _)| name.clone())
            .collect();
        drop(st);
        self.drop_links_where(|name, _| stale.contains(name))
    }

    fn drop_links_where(&self, refused: impl Fn(&ServerKey, &Link) -> bool) -> usize {
        let st = self.state.lock();
        let mut n = 0;
        for (key, link) in &st.links {
            if refused(key, link) {
                tracing::warn!(peer = %key_string(key), addr = %link.addr, "closing a link an admin refused");
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

    /// Servers a peer names (`serverlist`, `addServer`): a key it carries is bound on first
    /// sight; a server whose carried key contradicts the one bound here is not learned from
    /// that message. Returns how many were new.
    pub(crate) fn learn_servers(&self, servers: impl IntoIterator<Item = m::ServerAddr>) -> usize {
        let mut names = Vec::new();
        for s in servers {
            let name: ServerKey = (s.host, s.port);
            if let Some(key) = s.key.as_deref().and_then(|k| k.parse().ok()) {
                let v = self.claim_key(&name, &key);
                if !v.accepted() {
                    tracing::debug!(server = %key_string(&name), why = v.why(), "server not learned");
                    continue;
                }
            }
            names.push(name);
        }
        self.add_servers(names).len()
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
                st.members
                    .bump_own_row(now_ms())
                    .map(|row| self.sign_own_row(&mut st, row))
            };
            if let Some(msg) = bumped {
                self.flood(&encode(msg), None);
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

/// The bytes a server signs to remove itself (domain `ServerControl`).
fn removal_bytes(me: &ServerKey, seq: u64) -> Vec<u8> {
    format!("delete\n{}:{}\n{seq}", me.0, me.1).into_bytes()
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
            let row = st
                .members
                .apply_measurements(measured, now_ms())
                .map(|row| self.sign_own_row(&mut st, row));
            (row, redial)
        };
        if redial {
            self.changed.notify_one();
        }
        let Some(row) = row else {
            return false;
        };
        tracing::debug!(seq = row.seq, "publishing RTT row");
        self.flood(&encode(row), None);
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
            let links_now: Vec<ServerKey> = st.links.keys().cloned().collect();
            for k in &links_now {
                st.members.prove(k);
            }
            for gone in st.members.expire_unproven(now, UNPROVEN_MAX_AGE) {
                tracing::info!(server = %key_string(&gone), "forgot a server nobody has heard from itself");
            }
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
