//! The network-wide UserID lock (the spec's pessimistic registration): a request travels down
//! the tree, each server locks the UserID locally (or refuses), asks its own subtree, and
//! answers upwards once the whole subtree has answered or anyone refused. This is the
//! bookkeeping of requests waiting for their subtree; pure, so the caller sends the messages and
//! delivers the answers it returns.

use std::collections::{BTreeSet, HashMap};

use gossip_common::UserId;

use crate::mst::ServerId;

/// Where the answer to a request goes once its subtree has answered.
#[derive(Debug)]
pub(crate) enum LockReply {
    /// Answer the neighbour the request came from.
    Peer(ServerId),
    /// This node started the request.
    Origin(tokio::sync::oneshot::Sender<bool>),
}

/// A request whose subtree has answered: deliver `granted` to `reply`.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The UserID.
    pub(crate) uid: UserId,
    /// The request's holder.
    pub(crate) holder: String,
    /// Granted by the whole subtree.
    pub(crate) granted: bool,
    /// Where it goes.
    pub(crate) reply: LockReply,
}

#[derive(Debug)]
struct Pending {
    /// Neighbours the request reached and that have not answered yet.
    waiting_on: BTreeSet<ServerId>,
    granted: bool,
    reply: LockReply,
}

/// Requests waiting for their subtree, by (UserID, holder).
#[derive(Debug, Default)]
pub(crate) struct LockTable {
    pending: HashMap<(UserId, String), Pending>,
}

impl LockTable {
    /// Records a request that reached the neighbours `reached`. Returns false (and records
    /// nothing) when it reached nobody: the caller answers by itself.
    pub(crate) fn start(
        &mut self,
        uid: UserId,
        holder: &str,
        reached: BTreeSet<ServerId>,
        reply: LockReply,
    ) -> bool {
        if reached.is_empty() {
            return false;
        }
        self.pending.insert(
            (uid, holder.to_owned()),
            Pending {
                waiting_on: reached,
                granted: true,
                reply,
            },
        );
        true
    }

    /// Records `from`'s answer (`None`: stop waiting for everyone still silent, counting them
    /// as answering `granted`). Once
    /// the whole subtree has answered, or anyone refused, the request is done: its answer is
    /// returned for the caller to deliver.
    pub(crate) fn answer(
        &mut self,
        uid: UserId,
        holder: &str,
        granted: bool,
        from: Option<&ServerId>,
    ) -> Option<Answer> {
        let key = (uid, holder.to_owned());
        let p = self.pending.get_mut(&key)?;
        match from {
            Some(peer) => {
                if !p.waiting_on.remove(peer) {
                    return None; // not waiting on that neighbour (late or duplicate answer)
                }
                p.granted &= granted;
            }
            None => {
                p.granted &= granted;
                p.waiting_on.clear();
            }
        }
        if !p.waiting_on.is_empty() && p.granted {
            return None;
        }
        let p = self.pending.remove(&key).expect("present");
        Some(Answer {
            uid,
            holder: holder.to_owned(),
            granted: p.granted,
            reply: p.reply,
        })
    }

    /// A link went down: every request waiting on that neighbour is refused at once rather than
    /// timing out (the subtree behind it cannot be confirmed).
    pub(crate) fn link_lost(&mut self, peer: &ServerId) -> Vec<Answer> {
        let waiting: Vec<(UserId, String)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.waiting_on.contains(peer))
            .map(|(k, _)| k.clone())
            .collect();
        waiting
            .into_iter()
            .filter_map(|(uid, holder)| self.answer(uid, &holder, false, Some(peer)))
            .collect()
    }

    /// Forgets a request (its originator stopped waiting).
    pub(crate) fn forget(&mut self, uid: UserId, holder: &str) {
        self.pending.remove(&(uid, holder.to_owned()));
    }

    /// Requests waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u16) -> ServerId {
        ("h".into(), n)
    }

    fn peer_of(a: &Answer) -> Option<&ServerId> {
        match &a.reply {
            LockReply::Peer(p) => Some(p),
            LockReply::Origin(_) => None,
        }
    }

    #[test]
    fn a_request_is_granted_once_every_neighbour_granted() {
        let mut t = LockTable::default();
        assert!(!t.start(UserId(1), "h", BTreeSet::new(), LockReply::Peer(k(9))));
        assert_eq!(t.len(), 0, "reached nobody: nothing recorded");
        assert!(t.start(UserId(1), "h", [k(2), k(3)].into(), LockReply::Peer(k(9))));
        assert!(t.answer(UserId(1), "h", true, Some(&k(2))).is_none());
        assert!(
            t.answer(UserId(1), "h", true, Some(&k(2))).is_none(),
            "duplicate ignored"
        );
        assert!(
            t.answer(UserId(1), "other", true, Some(&k(3))).is_none(),
            "other holder"
        );
        let a = t.answer(UserId(1), "h", true, Some(&k(3))).expect("done");
        assert!(a.granted);
        assert_eq!(peer_of(&a), Some(&k(9)));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn one_refusal_or_a_lost_link_refuses_at_once_and_silence_grants() {
        let mut t = LockTable::default();
        t.start(UserId(1), "h", [k(2), k(3)].into(), LockReply::Peer(k(9)));
        let a = t
            .answer(UserId(1), "h", false, Some(&k(2)))
            .expect("refused");
        assert!(!a.granted);

        // Silence (the timeout) counts as granting: a silent peer cannot stop registrations.
        t.start(UserId(2), "h", [k(2), k(3)].into(), LockReply::Peer(k(9)));
        assert!(t.answer(UserId(2), "h", true, Some(&k(2))).is_none());
        let a = t.answer(UserId(2), "h", true, None).expect("timed out");
        assert!(a.granted);
        // ...but not over an answer that refused.
        t.start(UserId(5), "h", [k(2), k(3)].into(), LockReply::Peer(k(9)));
        let a = t
            .answer(UserId(5), "h", false, Some(&k(3)))
            .expect("refused");
        assert!(!a.granted);

        let (tx, rx) = tokio::sync::oneshot::channel();
        t.start(UserId(3), "h", [k(2), k(3)].into(), LockReply::Origin(tx));
        t.start(UserId(4), "h", [k(3)].into(), LockReply::Peer(k(9)));
        let lost = t.link_lost(&k(2));
        assert_eq!(lost.len(), 1, "only the request waiting on 2");
        assert!(!lost[0].granted);
        let LockReply::Origin(tx) = lost.into_iter().next().unwrap().reply else {
            panic!("origin expected");
        };
        tx.send(false).unwrap();
        assert_eq!(rx.blocking_recv(), Ok(false));
        assert_eq!(t.len(), 1);
        t.forget(UserId(4), "h");
        assert_eq!(t.len(), 0);
    }
}
