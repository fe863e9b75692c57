//! Registration: a new user's UserID, from the reservation to its release. A `register` from
//! a client reserves the spec's UserID here ([`local`]: the per-server lock table) and on
//! every reachable server ([`network`]: the lock request down the tree, whose bookkeeping is
//! the pure [`lock_table`]); the client's `newuser` is stored under it, and the lock is released
//! everywhere. A peer's `lockUID`, `lockResult` and `unlockUID` are answered here too, under the
//! per-link rate that keeps one peer's flood to its own registrations.

pub mod local;
pub(crate) mod lock_table;
mod network;

use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gossip_common::codec::encode_frame;
use gossip_common::message as m;
use gossip_common::UserId;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::federation::Federation;
use crate::mst::ServerId;
use crate::ratelimit::{Limiter, Rate};
use crate::store::Store;
use crate::tasks::Tasks;

pub use local::{UidLocks, MAX_LOCKS, MAX_LOCKS_PER_ORIGIN};
use lock_table::{LockReply, LockTable};
pub(crate) use network::LOCK_TIMEOUT;

/// A link's lock-request budget (one bucket per link).
pub(crate) type LockRate = Limiter<()>;

/// Lock requests one link may bring: a burst of 100, then 20 a second (a registration costs
/// one per link it crosses).
const LOCKS_PER_LINK: Rate = Rate {
    burst: 100.0,
    per_second: 20.0,
};

/// Addresses whose registration rate is tracked at once (each entry is a few dozen bytes).
const RATE_TRACKED_ADDRESSES: usize = 100_000;

/// The registration service of one server.
pub struct Registration {
    store: Arc<Store>,
    /// UserIDs locked here, by local registrations and by peers' requests.
    locks: Arc<UidLocks>,
    /// Network-wide lock requests waiting for their subtree. Locked before the federation's
    /// state when both are (a request is recorded as it is sent).
    pending: Mutex<LockTable>,
    federation: Arc<Federation>,
    /// How long a reservation holds (the spec's 15 minutes by default).
    ttl: Duration,
    /// Registrations started per address.
    rate: Mutex<Limiter<IpAddr>>,
    tasks: Tasks,
}

impl Registration {
    /// The service over these handles: reservations last `ttl`, and one address may start
    /// `per_minute` registrations a minute.
    pub(crate) fn new(
        store: Arc<Store>,
        locks: Arc<UidLocks>,
        federation: Arc<Federation>,
        ttl: Duration,
        per_minute: f64,
        tasks: Tasks,
    ) -> Registration {
        Registration {
            store,
            locks,
            pending: Mutex::new(LockTable::default()),
            federation,
            ttl,
            rate: Mutex::new(Limiter::new(
                Rate {
                    burst: per_minute,
                    per_second: per_minute / 60.0,
                },
                RATE_TRACKED_ADDRESSES,
            )),
            tasks,
        }
    }

    /// How long a reservation holds.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The UserIDs locked here.
    pub fn locks(&self) -> &UidLocks {
        &self.locks
    }

    /// A new link's lock-request budget.
    pub(crate) fn link_rate() -> LockRate {
        LockRate::new(LOCKS_PER_LINK, 1)
    }

    /// Whether `ip` may start a registration now; else how long until it may.
    pub fn admit(&self, ip: IpAddr) -> Result<(), Duration> {
        self.rate.lock().take(&ip, Instant::now())
    }

    /// Picks and locks a UserID for a registration from `ip`: the spec's id for this second,
    /// or the next second whose id is neither stored nor locked, locked here and on every
    /// reachable server.
    pub async fn reserve(&self, ip: IpAddr, holder: &str) -> Option<UserId> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut uid = UserId::allocate(now, ip);
        // Bounded well inside a client's request timeout: better "try again" than a hang.
        let give_up = std::time::Instant::now() + Duration::from_secs(15);
        for _ in 0..1_000 {
            if std::time::Instant::now() > give_up {
                break;
            }
            let free_here = !self.store.contains_user(uid)
                && self.locks.try_lock(uid, holder, self.ttl).is_ok();
            if free_here {
                if self.lock_network(uid, holder, self.ttl).await {
                    return Some(uid);
                }
                // Stored or being registered elsewhere: release what we took, and jump a random
                // number of seconds so two racing servers do not collide again.
                self.release(uid, holder);
                for _ in 0..rand::random::<u8>() % 16 {
                    uid = uid.next_second();
                }
            }
            uid = uid.next_second();
        }
        None
    }

    /// Releases a registration lock here and on every reachable server.
    pub fn release(&self, uid: UserId, holder: &str) {
        self.locks.unlock(uid, holder);
        self.unlock_network(uid, holder);
    }

    /// A peer's `lockUID`: locked here (within the link's `rate`, if neither stored nor locked
    /// by another holder) and asked of the subtree behind this server. Returns the answer to
    /// send the peer now, or `None` when it comes once the subtree has answered.
    pub(crate) fn on_lock_request(
        self: &Arc<Self>,
        l: m::LockUid,
        peer: &ServerId,
        rate: &mut LockRate,
    ) -> Option<Bytes> {
        let ttl = Duration::from_secs(l.expires_s.clamp(1, self.ttl.as_secs().max(1)));
        // Past its rate, a link's requests are refused: a flood only fails the flooder's own
        // registrations.
        let within_rate = rate.take(&(), Instant::now()).is_ok();
        if !within_rate {
            tracing::debug!(uid = %l.uid, "lock request over the link's rate; refused");
        }
        let local = within_rate
            && !self.store.contains_user(l.uid)
            && self.locks.try_lock(l.uid, &l.holder, ttl).is_ok();
        let forwarded = local
            && self.send_lock_request(
                &encode_frame(l.clone()),
                l.uid,
                &l.holder,
                Some(peer),
                LockReply::Peer(peer.clone()),
            );
        if !forwarded {
            return Some(encode_frame(m::LockResult {
                uid: l.uid,
                granted: u8::from(local),
                holder: Some(l.holder),
            }));
        }
        // A subtree that stays silent counts as granting (availability: a peer that never
        // answers must not stop registrations; see docs/federation.md). Weak: a stopped node
        // must not be kept alive (datafiles locked) by this timer.
        let (weak, stop): (Weak<Registration>, _) =
            (Arc::downgrade(self), self.tasks.shutdown().clone());
        self.tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(LOCK_TIMEOUT) => {
                    if let Some(this) = weak.upgrade() {
                        this.lock_answer(l.uid, &l.holder, true, None);
                    }
                }
            }
        });
        None
    }

    /// A peer's `lockResult`.
    pub(crate) fn on_lock_result(&self, r: m::LockResult, peer: &ServerId) {
        if let Some(holder) = r.holder {
            self.lock_answer(r.uid, &holder, r.granted != 0, Some(peer));
        }
    }

    /// A peer's `unlockUID`: released here and passed on.
    pub(crate) fn on_unlock(&self, u: m::UnlockUid, peer: &ServerId) {
        if let Some(holder) = &u.holder {
            self.locks.unlock(u.uid, holder);
        }
        self.federation.flood(&encode_frame(u), Some(peer));
    }
}
