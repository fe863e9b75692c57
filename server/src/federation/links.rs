//! The link table: the open links to peers with their two bounded queues, and everything
//! that goes out over them — flooding a frame to every link but one, sending to one peer,
//! registering a link that finished its handshake (resolving two simultaneous links the same
//! way on both ends) and removing it when it ends.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use gossip_common::codec::encode_frame as encode;
use gossip_common::message as m;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Federation;
use crate::mst::{id_string, ServerId};

/// Link-ups one server key may make: a burst of 60, then two a second. Every link-up costs a
/// resync, the rows and the server list, so a peer that reconnects in a loop is held to this;
/// honest links flap far less (a refused one backs off), and the simulator's chaos runs, which
/// cut, heal, crash and restart every few seconds, stay well inside it.
pub(super) const LINKS_PER_KEY: crate::ratelimit::Rate = crate::ratelimit::Rate {
    burst: 60.0,
    per_second: 2.0,
};

/// Frames queued to one peer before the link counts as stuck and is dropped.
pub(crate) const LINK_QUEUE: usize = 4096;

/// Frames a link's bulk queue holds (each at most one frame limit, 64 KiB by default).
pub(crate) const BULK_QUEUE: usize = 16;

/// A frame on a link queue, with the time it was queued (the lab delay line counts from it).
pub(crate) type Queued = (Instant, Bytes);

/// The sending end of a link's queue.
pub(crate) type LinkTx = mpsc::Sender<Queued>;

/// The receiving end of a link queue.
pub(crate) type LinkQueue = mpsc::Receiver<Queued>;

/// One open link, as the federation keeps it.
pub(crate) struct Link {
    pub(super) id: u64,
    /// The peer's address as seen on this connection (blacklist entries drop matching links).
    pub(super) addr: SocketAddr,
    /// When the handshake completed: a dead mark older than the link is not trusted.
    pub(super) up_at: Instant,
    /// The identity key the peer proved in the handshake.
    pub(super) key: gossip_common::PublicKey,
    /// Who opened it; decides which of two simultaneous links survives.
    pub(super) opened_by: ServerId,
    /// Control and propagation: never waited on (a link whose queue is full is cut).
    pub(super) tx: LinkTx,
    /// Bulk sync traffic (event-count lists, `changedEntries`): senders wait for room. A queue
    /// of its own, written after the control queue, so a large sync can neither delay nor
    /// overflow the control traffic (which would cut the link and restart the sync).
    pub(super) bulk: LinkTx,
    pub(super) kill: CancellationToken,
}

/// A link that finished its handshake, to be registered.
pub(crate) struct NewLink {
    /// The peer's address on this connection.
    pub(crate) addr: SocketAddr,
    /// The key it proved.
    pub(crate) key: gossip_common::PublicKey,
    /// Whether this server dialled it.
    pub(crate) dialled: bool,
    /// Its control queue.
    pub(crate) tx: LinkTx,
    /// Its bulk queue.
    pub(crate) bulk: LinkTx,
    /// Ends it.
    pub(crate) kill: CancellationToken,
}

impl Federation {
    /// Registers a link to `peer` that finished its handshake, resolving a simultaneous link
    /// from the other side deterministically (the link opened by the smaller identity wins on
    /// both ends). Returns the link's id, or `None` when a link to the peer is up already and
    /// this one is to close (the attempt did its job).
    pub(crate) fn register_link(&self, peer: &ServerId, new: NewLink) -> Option<u64> {
        let opened_by = if new.dialled {
            self.me.clone()
        } else {
            peer.clone()
        };
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = self.state.lock();
            let winner = self.me.clone().min(peer.clone());
            if let Some(existing) = st.links.get(peer) {
                if existing.opened_by == winner || opened_by != winner {
                    tracing::debug!("duplicate link closed");
                    return None;
                }
                existing.kill.cancel();
            }
            let link = Link {
                id,
                addr: new.addr,
                key: new.key,
                up_at: Instant::now(),
                opened_by,
                tx: new.tx,
                bulk: new.bulk,
                kill: new.kill,
            };
            st.links.insert(peer.clone(), link);
            st.connecting.remove(peer);
            st.backoff.remove(peer);
        }
        // A live link proves the peer reachable: if our row marks it dead, re-probe it now.
        self.revive_now.notify_one();
        let learned = self.add_servers([peer.clone()]);
        if !learned.is_empty() {
            let add = m::AddServer {
                host: peer.0.clone(),
                port: peer.1,
                key: Some(new.key.to_string()),
            };
            self.flood(&encode(add), Some(peer));
        }
        Some(id)
    }

    /// Link `id` to `peer` ended: it leaves the table (unless a newer link replaced it), and
    /// the tree and the measurements are looked at again.
    pub(crate) fn link_down(&self, peer: &ServerId, id: u64) {
        {
            let mut st = self.state.lock();
            if st.links.get(peer).is_some_and(|l| l.id == id) {
                st.links.remove(peer);
            }
        }
        self.changed.notify_one();
        self.probe_now.notify_one();
    }

    /// What a new link is sent first: the server list with the keys bound here, then every
    /// row held.
    pub(crate) fn opening_frames(&self) -> Vec<Bytes> {
        let mut frames = vec![encode(m::ServerList {
            servers: self.server_list(),
        })];
        frames.extend(self.row_frames());
        frames
    }

    /// What a repair check is sent first: the server list with the `seq` of every row held,
    /// so each end sends the other only the rows it lacks (not every row, as a link's opening
    /// does).
    pub(crate) fn check_opening_frames(&self) -> Vec<Bytes> {
        let (rows, sum) = self.rows_digest();
        vec![encode(m::ReqServerList {
            rows: Some(rows),
            rsum: Some(format!("{sum:032x}")),
        })]
    }

    /// The signed rows held, in brief: how many, and the wrapping sum of the 128-bit xxh3
    /// hashes of `host:port#seq` over them. Two servers holding the same rows have the same
    /// digest, so a repair check that finds nothing to repair costs a few dozen bytes of rows,
    /// not a list of every server.
    pub(crate) fn rows_digest(&self) -> (u64, u128) {
        let st = self.state.lock();
        st.members
            .rows()
            .iter()
            .filter(|(_, r)| r.sig.is_some())
            .fold((0, 0u128), |(n, sum), (k, r)| {
                let h =
                    xxhash_rust::xxh3::xxh3_128(format!("{}:{}#{}", k.0, k.1, r.seq).as_bytes());
                (n + 1, sum.wrapping_add(h))
            })
    }

    /// The server list with each row's `seq`: what a repair check compares rows by.
    pub(crate) fn check_server_list(&self) -> Bytes {
        encode(m::ServerList {
            servers: self.list_servers(true),
        })
    }

    /// Every server known here with the key bound to it (ours for ourselves): what a peer's
    /// `reqServerList` and a client's get, so either can pin keys before first contact.
    pub(crate) fn server_list(&self) -> Vec<m::ServerAddr> {
        self.list_servers(false)
    }

    /// The server list, with the `seq` of the row held from each server if `seqs`.
    fn list_servers(&self, seqs: bool) -> Vec<m::ServerAddr> {
        let me = self.signer.public();
        let st = self.state.lock();
        st.members
            .servers()
            .iter()
            .map(|s| m::ServerAddr {
                host: s.0.clone(),
                port: s.1,
                key: if *s == self.me {
                    Some(&me)
                } else {
                    st.keys.key_of(s)
                }
                .map(|k| k.to_string()),
                seq: seqs.then(|| st.members.row(s).map_or(0, |r| r.seq)),
            })
            .collect()
    }

    /// Queues `frame` on `peer`'s control queue, if linked; whether it was queued.
    pub(crate) fn send_to(&self, peer: &ServerId, frame: Bytes) -> bool {
        let st = self.state.lock();
        st.links
            .get(peer)
            .is_some_and(|l| l.tx.try_send((Instant::now(), frame)).is_ok())
    }

    /// Queues `frame` on every link but `except` whose queue has room, and returns the peers
    /// it reached, all under one look at the table (the registration lock protocol waits for
    /// exactly those). `then` runs with that set before any of them can be unlinked.
    pub(crate) fn send_reached<T>(
        &self,
        frame: &Bytes,
        except: Option<&ServerId>,
        then: impl FnOnce(BTreeSet<ServerId>) -> T,
    ) -> T {
        let st = self.state.lock();
        let now = Instant::now();
        let reached = st
            .links
            .iter()
            .filter(|(k, _)| Some(*k) != except)
            .filter(|(_, l)| l.tx.try_send((now, frame.clone())).is_ok())
            .map(|(k, _)| k.clone())
            .collect();
        then(reached)
    }

    /// Whether this server has any link and knows any other server.
    pub(crate) fn linked_and_known(&self) -> (bool, bool) {
        let st = self.state.lock();
        (!st.links.is_empty(), st.members.servers().len() > 1)
    }

    /// Whether a link-up from `key` is within its rate ([`LINKS_PER_KEY`]).
    pub(crate) fn take_link_up(&self, key: &gossip_common::PublicKey) -> bool {
        self.link_rate.lock().take(key, Instant::now()).is_ok()
    }

    /// Whether an admin deleted `peer` (its links are refused until it is added again).
    pub(crate) fn is_deleted(&self, peer: &ServerId) -> bool {
        self.state.lock().members.is_deleted(peer)
    }

    /// Queues `frame` to every link except `except`. Never waits: a peer that cannot keep up
    /// is disconnected (and re-linked later) rather than holding up the others.
    pub(crate) fn flood(&self, frame: &Bytes, except: Option<&ServerId>) {
        if self.withheld(except) {
            return;
        }
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
                    tracing::warn!(peer = %id_string(key), "server link queue full; dropping the link");
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
        except: Option<&ServerId>,
    ) {
        if self.withheld(except) {
            return;
        }
        let targets: Vec<mpsc::Sender<Queued>> = {
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
}
