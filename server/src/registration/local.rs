//! UserID reservation for registrations (the spec's "pessimistic" scheme, local half).
//!
//! A registration computes the spec's UserID (seconds since 2000 | IPv4), skips ids that are
//! stored or locked, and locks the one it picks for a limited time (default 15 minutes, the
//! spec's figure) so a crashed registration cannot hold it forever. Only that one id is locked,
//! never the whole server (the spec: "to prevent DoS we will only lock a particular ID").
//!
//! [`Registration::reserve`](super::Registration::reserve) takes the same lock on every
//! reachable server before granting the id; this module is the per-server lock table both the
//! local reservation and a peer's `lockUID` use.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gossip_common::UserId;
use parking_lot::Mutex;

struct Lock {
    holder: String,
    /// Who the lock is charged to: the key of the server that signed the request.
    owner: String,
    expires: Instant,
}

/// Locks one server (by the key that signed its requests) may hold here at once: a server
/// that floods lock requests fills its own share, never the table nor anyone else's.
pub const MAX_LOCKS_PER_ORIGIN: usize = 256;
/// Locks held here at once, all servers together.
pub const MAX_LOCKS: usize = 10_000;

/// Per-server table of locked UserIDs.
#[derive(Default)]
pub struct UidLocks {
    inner: Mutex<HashMap<UserId, Lock>>,
}

impl UidLocks {
    /// Locks `uid` for `holder` for `ttl`, charged to `owner` (the requesting server's key).
    /// Re-locking by the same holder extends the lock. Refused with the current holder's name
    /// when someone else holds it.
    pub fn try_lock(
        &self,
        uid: UserId,
        holder: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<(), String> {
        let now = Instant::now();
        let mut locks = self.inner.lock();
        if locks.len() > 1024 {
            locks.retain(|_, l| l.expires > now);
        }
        let held = locks.get(&uid).filter(|l| l.expires > now);
        if let Some(l) = held.filter(|l| l.holder != holder) {
            return Err(l.holder.clone());
        }
        if held.is_none() {
            // A new lock (not an extension): within its owner's share and the table's bound.
            let (mut all, mut mine) = (0, 0);
            for l in locks.values().filter(|l| l.expires > now) {
                all += 1;
                mine += usize::from(l.owner == owner);
            }
            if all >= MAX_LOCKS || mine >= MAX_LOCKS_PER_ORIGIN {
                return Err(format!("{owner} holds too many UserID locks here"));
            }
        }
        locks.insert(
            uid,
            Lock {
                holder: holder.to_owned(),
                owner: owner.to_owned(),
                expires: now + ttl,
            },
        );
        Ok(())
    }

    /// Releases `uid` if `holder` holds it.
    pub fn unlock(&self, uid: UserId, holder: &str) {
        let mut locks = self.inner.lock();
        if locks.get(&uid).is_some_and(|l| l.holder == holder) {
            locks.remove(&uid);
        }
    }

    /// Whether `uid` is locked by anyone (expired locks do not count).
    pub fn is_locked(&self, uid: UserId) -> bool {
        self.inner
            .lock()
            .get(&uid)
            .is_some_and(|l| l.expires > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The share goes by who signed, not by the name a holder carries: a rogue that names an
    /// honest server in its holders fills its own share.
    #[test]
    fn one_owner_cannot_hold_more_than_its_share() {
        let locks = UidLocks::default();
        let ttl = Duration::from_secs(60);
        for i in 0..MAX_LOCKS_PER_ORIGIN as u64 {
            locks
                .try_lock(UserId(i), &format!("honest:2/{i}"), "rogue-key", ttl)
                .unwrap();
        }
        let err = locks
            .try_lock(UserId(99_999), "honest:2/more", "rogue-key", ttl)
            .unwrap_err();
        assert!(err.contains("too many"), "{err}");
        // Extending a held lock is not a new one; other owners still lock.
        locks
            .try_lock(UserId(0), "honest:2/0", "rogue-key", ttl)
            .unwrap();
        locks
            .try_lock(UserId(99_999), "honest:2/x", "honest-key", ttl)
            .unwrap();
    }

    #[test]
    fn one_holder_at_a_time_and_expiry() {
        let locks = UidLocks::default();
        let uid = UserId(5);
        locks
            .try_lock(uid, "a", "k", Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            locks.try_lock(uid, "b", "k", Duration::from_secs(60)),
            Err("a".into())
        );
        locks.unlock(uid, "b");
        assert!(locks.is_locked(uid));
        locks.unlock(uid, "a");
        locks
            .try_lock(uid, "b", "k", Duration::from_millis(1))
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!locks.is_locked(uid));
        locks
            .try_lock(uid, "c", "k", Duration::from_secs(1))
            .unwrap();
    }
}
