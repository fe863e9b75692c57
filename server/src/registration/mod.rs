//! Registration: a new user's UserID, from the reservation to its release. A `register` from
//! a client reserves the spec's UserID here ([`local`]: the per-server lock table) and on
//! every reachable server ([`network`]: the lock request down the tree, whose bookkeeping is
//! the pure [`lock_table`]); the client's `newuser` is stored under it, and the lock is released
//! everywhere. A peer's `lockUID`, `lockResult` and `unlockUID` are answered here too, under the
//! per-link rate that keeps one peer's flood to its own registrations.

pub mod local;
pub(crate) mod lock_table;
mod network;
pub mod sponsor;

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
pub use sponsor::Sponsors;

/// A link's lock-request budget (one bucket per link).
pub(crate) type LockRate = Limiter<()>;

/// Lock requests one link may bring, whoever signed them: a burst of 1,000, then 200 a second.
/// This only bounds the signature checks a link can cause; a link carries the requests of
/// every server behind it, so it must fit many servers' registrations at once.
const LOCKS_PER_LINK: Rate = Rate {
    burst: 1000.0,
    per_second: 200.0,
};

/// Lock requests one server may make, by the key that signs them, as counted by every server
/// they reach: a burst of 100, then 20 a second (a registration costs one). A flood past it
/// fails only the flooder's registrations, on whatever links it travels.
const LOCKS_PER_KEY: Rate = Rate {
    burst: 100.0,
    per_second: 20.0,
};

/// Requesting servers whose lock rate is tracked at once (the server list's bound).
const RATE_TRACKED_KEYS: usize = crate::federation::MAX_SERVERS;

/// How far ahead of this server's clock a lock request's `issued` may be (clock skew).
const LOCK_CLOCK_SKEW: Duration = Duration::from_secs(300);

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
    /// This server's key, which its own locks are charged to.
    own_key: String,
    /// Registration certificates.
    sponsors: Arc<Sponsors>,
    /// Lock requests per requesting server (its key).
    key_rate: Mutex<Limiter<gossip_common::PublicKey>>,
    tasks: Tasks,
}

impl Registration {
    /// The service over these handles: reservations last `ttl`, and one address may start
    /// `per_minute` registrations a minute.
    pub(crate) fn new(
        store: Arc<Store>,
        locks: Arc<UidLocks>,
        federation: Arc<Federation>,
        sponsors: Arc<Sponsors>,
        ttl: Duration,
        per_minute: f64,
        tasks: Tasks,
    ) -> Registration {
        let own_key = federation.own_key().to_string();
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
            own_key,
            sponsors,
            key_rate: Mutex::new(Limiter::new(LOCKS_PER_KEY, RATE_TRACKED_KEYS)),
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

    /// The certificate of this server's registration of `uid` with key `user` (the `Sponsor`
    /// field the client puts in its first record).
    pub fn certify(&self, uid: UserId, user: &gossip_common::PublicKey) -> String {
        self.sponsors.certify(uid, user)
    }

    /// Whether `record` carries this server's certificate for its UserID and key.
    pub fn is_certified_here(&self, record: &gossip_common::UserInfo) -> bool {
        self.sponsors.is_ours(record)
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
        let mut uid = UserId::allocate(unix_now(), ip);
        // Bounded well inside a client's request timeout: better "try again" than a hang.
        let give_up = std::time::Instant::now() + Duration::from_secs(15);
        for _ in 0..1_000 {
            if std::time::Instant::now() > give_up {
                break;
            }
            let free_here = !self.store.contains_user(uid)
                && self
                    .locks
                    .try_lock(uid, holder, &self.own_key, self.ttl)
                    .is_ok();
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

    /// A peer's `lockUID`: locked here (if signed by the server its holder names, recent, within
    /// the link's and the signer's rates, and neither stored nor locked by another holder) and
    /// asked of the subtree behind this server. Returns the answer to send the peer now, or
    /// `None` when it comes once the subtree has answered.
    pub(crate) fn on_lock_request(
        self: &Arc<Self>,
        l: m::LockUid,
        peer: &ServerId,
        rate: &mut LockRate,
    ) -> Option<Bytes> {
        let ttl = Duration::from_secs(l.expires_s.clamp(1, self.ttl.as_secs().max(1)));
        let local = match self.check_lock_request(&l, rate) {
            Ok(owner) => {
                !self.store.contains_user(l.uid)
                    && self.locks.try_lock(l.uid, &l.holder, &owner, ttl).is_ok()
            }
            Err(why) => {
                tracing::debug!(uid = %l.uid, holder = %l.holder, peer = %peer.0, why, "lock request refused");
                false
            }
        };
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

    /// Whether a peer's `lockUID` may take a lock here, and whom it is charged to (the key of
    /// the server that signed it). Past the link's rate nothing is checked: a flood costs the
    /// flooder's link, not this server's CPU.
    fn check_lock_request(
        &self,
        l: &m::LockUid,
        rate: &mut LockRate,
    ) -> Result<String, &'static str> {
        let now = Instant::now();
        rate.take(&(), now)
            .map_err(|_| "over the link's lock rate")?;
        let origin = holder_origin(&l.holder)?;
        if origin == *self.federation.me() {
            return Err("a request in this server's own name");
        }
        let issued = l.issued.ok_or("without its time")?;
        let age = unix_now().saturating_sub(issued);
        if age > self.ttl.as_secs() || issued > unix_now() + LOCK_CLOCK_SKEW.as_secs() {
            return Err("too old, or from too far in the future");
        }
        let key = self.federation.verify_statement(
            &origin,
            l.key.as_deref(),
            &m::lock_bytes(l.uid, &l.holder, l.expires_s, issued),
            l.sig.as_deref(),
        )?;
        self.key_rate
            .lock()
            .take(&key, now)
            .map_err(|_| "over its server's lock rate")?;
        Ok(key.to_string())
    }

    /// A peer's `lockResult`.
    pub(crate) fn on_lock_result(&self, r: m::LockResult, peer: &ServerId) {
        if let Some(holder) = r.holder {
            self.lock_answer(r.uid, &holder, r.granted != 0, Some(peer));
        }
    }

    /// A peer's `unlockUID`: if signed by the server its holder names, released here and passed
    /// on; otherwise dropped (only the registering server releases its locks).
    pub(crate) fn on_unlock(&self, u: m::UnlockUid, peer: &ServerId) {
        let Some(holder) = &u.holder else { return };
        let verified = holder_origin(holder).and_then(|origin| {
            self.federation.verify_statement(
                &origin,
                None,
                &m::unlock_bytes(u.uid, holder),
                u.sig.as_deref(),
            )
        });
        if let Err(why) = verified {
            tracing::debug!(uid = %u.uid, %holder, peer = %peer.0, why, "unlock refused");
            return;
        }
        self.locks.unlock(u.uid, holder);
        self.federation.flood(&encode_frame(u), Some(peer));
    }
}

/// The server a lock holder names (`host:port/<random>`).
fn holder_origin(holder: &str) -> Result<ServerId, &'static str> {
    let (id, _) = holder
        .split_once('/')
        .ok_or("a holder without its server")?;
    crate::mst::parse_id(id).map_err(|_| "a holder naming no server")
}

/// Seconds since the Unix epoch.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
