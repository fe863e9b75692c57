//! UserID reservation for registrations (the spec's "pessimistic" scheme, local half).
//!
//! A registration computes the spec's UserID (seconds since 2000 | IPv4), skips ids that are
//! stored or locked, and locks the one it picks for a limited time (default 15 minutes, the
//! spec's figure) so a crashed registration cannot hold it forever. Only that one id is locked,
//! never the whole server (the spec: "to prevent DoS we will only lock a particular ID").
//!
//! Federation extends [`crate::Node::reserve_uid`] to take the same lock on every reachable
//! server before granting the id; this module is the per-server lock table both use.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gossip_common::UserId;
use parking_lot::Mutex;

struct Lock {
    holder: String,
    expires: Instant,
}

/// Per-server table of locked UserIDs.
#[derive(Default)]
pub struct UidLocks {
    inner: Mutex<HashMap<UserId, Lock>>,
}

impl UidLocks {
    /// Locks `uid` for `holder` for `ttl`. Re-locking by the same holder extends the lock.
    /// Refused with the current holder's name when someone else holds it.
    pub fn try_lock(&self, uid: UserId, holder: &str, ttl: Duration) -> Result<(), String> {
        let now = Instant::now();
        let mut locks = self.inner.lock();
        if locks.len() > 1024 {
            locks.retain(|_, l| l.expires > now);
        }
        match locks.get(&uid) {
            Some(l) if l.expires > now && l.holder != holder => Err(l.holder.clone()),
            _ => {
                locks.insert(
                    uid,
                    Lock {
                        holder: holder.to_owned(),
                        expires: now + ttl,
                    },
                );
                Ok(())
            }
        }
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

    #[test]
    fn one_holder_at_a_time_and_expiry() {
        let locks = UidLocks::default();
        let uid = UserId(5);
        locks.try_lock(uid, "a", Duration::from_secs(60)).unwrap();
        assert_eq!(
            locks.try_lock(uid, "b", Duration::from_secs(60)),
            Err("a".into())
        );
        locks.unlock(uid, "b");
        assert!(locks.is_locked(uid));
        locks.unlock(uid, "a");
        locks.try_lock(uid, "b", Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!locks.is_locked(uid));
        locks.try_lock(uid, "c", Duration::from_secs(1)).unwrap();
    }
}
