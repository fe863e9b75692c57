//! Presence fan-out: which logged-in sessions watch which users, and delivery of changes.
//!
//! A session *watches* every user on its owner's contact list. When a stored UserInfo changes,
//! the change is encoded once and the same bytes are queued to every watching session. Queues
//! are bounded; a session whose queue is full is a slow consumer and is disconnected rather than
//! allowed to grow memory or delay everyone else (publishing never waits).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use gossip_common::UserId;
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Identifies one client connection.
pub type SessionId = u64;

/// One frame queued to a client connection's writer.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The encoded frame (shared by every recipient of the same push).
    pub frame: Bytes,
    /// For a presence push to a watcher: when its record was accepted here. The writer
    /// observes the push latency when the frame is written (`gossip_push_seconds`).
    pub accepted: Option<std::time::Instant>,
}

impl From<Bytes> for Outbound {
    fn from(frame: Bytes) -> Outbound {
        Outbound {
            frame,
            accepted: None,
        }
    }
}

/// What the fan-out needs to reach a session.
#[derive(Clone)]
pub struct SessionHandle {
    /// The logged-in user.
    pub uid: UserId,
    /// Bounded queue of encoded frames to the connection's writer.
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled to disconnect the session (slow consumer, admin kick).
    pub kill: CancellationToken,
    /// The client's address (a blacklist entry added later closes the session).
    pub ip: std::net::IpAddr,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<SessionId, (SessionHandle, Vec<UserId>)>,
    /// Watched user → sessions watching them.
    watchers: HashMap<UserId, HashSet<SessionId>>,
    /// User → their own sessions (a user may log in from several clients).
    by_user: HashMap<UserId, HashSet<SessionId>>,
}

/// The registry of logged-in sessions.
#[derive(Default)]
pub struct Presence {
    inner: RwLock<Inner>,
    next_id: AtomicU64,
    dropped_slow: AtomicU64,
    pushes: AtomicU64,
}

impl Presence {
    /// A fresh session id.
    pub fn new_session_id(&self) -> SessionId {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a logged-in session watching `contacts`.
    pub fn register(&self, sid: SessionId, handle: SessionHandle, contacts: Vec<UserId>) {
        let mut inner = self.inner.write();
        for c in &contacts {
            inner.watchers.entry(*c).or_default().insert(sid);
        }
        inner.by_user.entry(handle.uid).or_default().insert(sid);
        inner.sessions.insert(sid, (handle, contacts));
    }

    /// Forgets a session (connection closed).
    pub fn unregister(&self, sid: SessionId) {
        let mut inner = self.inner.write();
        if let Some((handle, contacts)) = inner.sessions.remove(&sid) {
            for c in contacts {
                remove_from(&mut inner.watchers, c, sid);
            }
            remove_from(&mut inner.by_user, handle.uid, sid);
        }
    }

    /// The owner of `uid` changed their contact list: every session of theirs now watches
    /// `contacts`.
    pub fn set_contacts(&self, uid: UserId, contacts: &[UserId]) {
        let mut inner = self.inner.write();
        let sids: Vec<SessionId> = inner
            .by_user
            .get(&uid)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for sid in sids {
            let old = match inner.sessions.get_mut(&sid) {
                Some((_, list)) => std::mem::replace(list, contacts.to_vec()),
                None => continue,
            };
            for c in old {
                remove_from(&mut inner.watchers, c, sid);
            }
            for c in contacts {
                inner.watchers.entry(*c).or_default().insert(sid);
            }
        }
    }

    /// Queues `frame` (an encoded UserInfo push about `about`, whose record was accepted at
    /// `accepted`) to every session watching `about`. Never blocks; slow consumers are
    /// disconnected. Returns how many were queued.
    pub fn publish(&self, about: UserId, frame: &Bytes, accepted: std::time::Instant) -> usize {
        let inner = self.inner.read();
        let Some(watchers) = inner.watchers.get(&about) else {
            return 0;
        };
        let mut sent = 0;
        for sid in watchers {
            if let Some((handle, _)) = inner.sessions.get(sid) {
                let out = Outbound {
                    frame: frame.clone(),
                    accepted: Some(accepted),
                };
                if self.try_queue(handle, out) {
                    sent += 1;
                }
            }
        }
        self.pushes.fetch_add(sent as u64, Ordering::Relaxed);
        sent
    }

    /// The presence fan-out rule: a changed UserInfo (`push`, encoded once) goes to every
    /// session watching its user and to the user's own sessions but `from_session` (the one
    /// that made the change), so all their clients agree. Returns how many watchers got it.
    pub fn push_user_info(
        &self,
        record: &gossip_common::Signed<gossip_common::UserInfo>,
        from_session: Option<SessionId>,
        push: &Bytes,
    ) -> usize {
        let n = self.publish(record.user_id, push, std::time::Instant::now());
        self.send_to_user(record.user_id, from_session, push);
        tracing::debug!(uid = %record.user_id, status = %record.status, watchers = n, "presence pushed");
        n
    }

    /// Queues a `servermsg` with `text` to every logged-in session; returns how many.
    pub fn notify_all(&self, text: &str) -> usize {
        let frame = gossip_common::codec::encode_frame(gossip_common::message::ServerMsg {
            text: text.to_owned(),
        });
        let inner = self.inner.read();
        inner
            .sessions
            .values()
            .filter(|(handle, _)| self.try_queue(handle, frame.clone().into()))
            .count()
    }

    /// Queues `frame` to every session of user `uid` except `except`.
    pub fn send_to_user(&self, uid: UserId, except: Option<SessionId>, frame: &Bytes) {
        let inner = self.inner.read();
        for sid in inner.by_user.get(&uid).into_iter().flatten() {
            if Some(*sid) != except {
                if let Some((handle, _)) = inner.sessions.get(sid) {
                    self.try_queue(handle, frame.clone().into());
                }
            }
        }
    }

    fn try_queue(&self, handle: &SessionHandle, frame: Outbound) -> bool {
        match handle.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped_slow.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(uid = %handle.uid, "slow consumer: outbound queue full, disconnecting");
                handle.kill.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Whether a change of `uid` would be pushed to anyone here (a watcher, or a session of
    /// `uid` itself), so callers can skip encoding a push nobody receives.
    pub fn has_audience(&self, uid: UserId) -> bool {
        let inner = self.inner.read();
        inner.watchers.get(&uid).is_some_and(|w| !w.is_empty()) || inner.by_user.contains_key(&uid)
    }

    /// Whether `uid` has at least one session here.
    pub fn is_logged_in(&self, uid: UserId) -> bool {
        self.inner.read().by_user.contains_key(&uid)
    }

    /// Number of logged-in sessions.
    /// Disconnects every session whose address `refused` says yes to (a blacklist entry was
    /// added); returns how many.
    pub fn kill_where(&self, refused: impl Fn(std::net::IpAddr) -> bool) -> usize {
        let inner = self.inner.read();
        let mut n = 0;
        for (handle, _) in inner.sessions.values() {
            if refused(handle.ip) {
                handle.kill.cancel();
                n += 1;
            }
        }
        n
    }

    /// Logged-in sessions.
    pub fn session_count(&self) -> usize {
        self.inner.read().sessions.len()
    }

    /// Users with at least one logged-in session here.
    pub fn user_count(&self) -> usize {
        self.inner.read().by_user.len()
    }

    /// Presence pushes queued so far.
    pub fn pushes(&self) -> u64 {
        self.pushes.load(Ordering::Relaxed)
    }

    /// Sessions dropped as slow consumers so far.
    pub fn slow_consumers_dropped(&self) -> u64 {
        self.dropped_slow.load(Ordering::Relaxed)
    }
}

fn remove_from(map: &mut HashMap<UserId, HashSet<SessionId>>, key: UserId, sid: SessionId) {
    if let Some(set) = map.get_mut(&key) {
        set.remove(&sid);
        if set.is_empty() {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(uid: u64, cap: usize) -> (SessionHandle, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            SessionHandle {
                uid: UserId(uid),
                tx,
                kill: CancellationToken::new(),
                ip: std::net::Ipv4Addr::new(192, 0, 2, uid as u8).into(),
            },
            rx,
        )
    }

    #[test]
    fn a_blacklisted_address_loses_its_sessions() {
        let p = Presence::default();
        let (a, _ra) = handle(1, 8);
        let (b, _rb) = handle(2, 8);
        let (ka, kb) = (a.kill.clone(), b.kill.clone());
        p.register(1, a, vec![]);
        p.register(2, b, vec![]);
        let bad: std::net::IpAddr = std::net::Ipv4Addr::new(192, 0, 2, 2).into();
        assert_eq!(p.kill_where(|ip| ip == bad), 1);
        assert!(!ka.is_cancelled() && kb.is_cancelled());
    }

    #[test]
    fn fan_out_follows_contact_lists() {
        let p = Presence::default();
        let (a, mut rx_a) = handle(1, 8);
        let (b, mut rx_b) = handle(2, 8);
        p.register(10, a, vec![UserId(3)]);
        p.register(11, b, vec![UserId(4)]);
        assert_eq!(
            p.publish(
                UserId(3),
                &Bytes::from_static(b"x"),
                std::time::Instant::now()
            ),
            1
        );
        assert_eq!(rx_a.try_recv().unwrap().frame, Bytes::from_static(b"x"));
        assert!(rx_b.try_recv().is_err());
        p.set_contacts(UserId(2), &[UserId(3)]);
        assert_eq!(
            p.publish(
                UserId(3),
                &Bytes::from_static(b"y"),
                std::time::Instant::now()
            ),
            2
        );
        assert_eq!(
            p.publish(
                UserId(4),
                &Bytes::from_static(b"z"),
                std::time::Instant::now()
            ),
            0
        );
        p.unregister(10);
        assert_eq!(
            p.publish(
                UserId(3),
                &Bytes::from_static(b"w"),
                std::time::Instant::now()
            ),
            1
        );
        assert_eq!(rx_b.try_recv().unwrap().frame, Bytes::from_static(b"y"));
    }

    #[test]
    fn slow_consumer_is_cut_off() {
        let p = Presence::default();
        let (a, _rx) = handle(1, 2);
        let kill = a.kill.clone();
        p.register(1, a, vec![UserId(9)]);
        for _ in 0..3 {
            p.publish(
                UserId(9),
                &Bytes::from_static(b"x"),
                std::time::Instant::now(),
            );
        }
        assert!(kill.is_cancelled());
        assert_eq!(p.slow_consumers_dropped(), 1);
    }
}
