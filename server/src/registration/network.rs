//! Driving the network-wide UserID lock over the links: sending requests down the tree,
//! collecting answers (the bookkeeping is the pure [`LockTable`](super::lock_table::LockTable)),
//! answering upwards, and the origin's bounded wait.

use std::time::Duration;

use bytes::Bytes;
use gossip_common::codec::encode_frame as encode;
use gossip_common::message as m;
use tokio::time::Instant;

use super::lock_table::{self, LockReply};
use super::Registration;
use crate::mst::ServerId;

/// How long a lock request waits for a subtree's answer before counting it as refused.
pub(crate) const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

impl Registration {
    /// Locks `uid` for `holder` on every reachable server (the spec's pessimistic scheme),
    /// the caller having locked it locally. The request travels down the tree; each server
    /// locks it (or refuses: stored already, or locked by someone else), asks its own subtree,
    /// and answers once the whole subtree has. Granted only if every server granted.
    pub(super) async fn lock_network(
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
            let (linked, known) = self.federation.linked_and_known();
            if !known || linked || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        let (expires_s, issued) = (ttl.as_secs().max(1), super::unix_now());
        let (key, sig) = self
            .federation
            .sign_statement(&m::lock_bytes(uid, holder, expires_s, issued));
        let msg = encode(m::LockUid {
            uid,
            holder: holder.to_owned(),
            expires_s,
            issued: Some(issued),
            key: Some(key),
            sig: Some(sig),
        });
        if !self.send_lock_request(&msg, uid, holder, None, LockReply::Origin(done)) {
            return true; // nobody to ask: this server alone decides
        }
        // No answer in time (a neighbour that stays silent): granted, with a warning. A silent
        // peer must not stop registrations network-wide; the price is that a partitioned or
        // silent subtree may grant the same UserID, which the spec's UserID layout (the
        // registering client's address and the second) makes a near-impossible collision.
        let granted = match tokio::time::timeout(LOCK_TIMEOUT + Duration::from_secs(1), rx).await {
            Ok(Ok(granted)) => granted,
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(%uid, "network lock not answered in time; granted without it");
                true
            }
        };
        self.pending.lock().forget(uid, holder);
        granted
    }

    /// Releases `holder`'s lock on `uid` on every reachable server.
    pub(super) fn unlock_network(&self, uid: gossip_common::UserId, holder: &str) {
        self.federation.flood(
            &encode(m::UnlockUid {
                uid,
                holder: Some(holder.to_owned()),
                sig: Some(
                    self.federation
                        .sign_statement(&m::unlock_bytes(uid, holder))
                        .1,
                ),
            }),
            None,
        );
    }

    /// Sends a lock request to every link but `except`, remembering which ones it reached.
    /// Returns false when it reached nobody (the caller answers by itself).
    pub(super) fn send_lock_request(
        &self,
        msg: &Bytes,
        uid: gossip_common::UserId,
        holder: &str,
        except: Option<&ServerId>,
        reply: LockReply,
    ) -> bool {
        // Recorded while the links are looked at, so no answer can come before its request.
        let mut pending = self.pending.lock();
        self.federation.send_reached(msg, except, |reached| {
            pending.start(uid, holder, reached, reply)
        })
    }

    /// Records `from`'s answer (`None`: give up on everyone still silent, as a refusal) and,
    /// once the whole subtree has answered or anyone refused, answers upwards.
    pub(super) fn lock_answer(
        &self,
        uid: gossip_common::UserId,
        holder: &str,
        granted: bool,
        from: Option<&ServerId>,
    ) {
        let mut pending = self.pending.lock();
        if let Some(answer) = pending.answer(uid, holder, granted, from) {
            self.deliver_lock_answer(answer);
        }
    }

    /// Sends a finished request's answer where it goes.
    fn deliver_lock_answer(&self, answer: lock_table::Answer) {
        match answer.reply {
            LockReply::Origin(done) => {
                let _ = done.send(answer.granted);
            }
            LockReply::Peer(parent) => {
                let result = encode(m::LockResult {
                    uid: answer.uid,
                    granted: u8::from(answer.granted),
                    holder: Some(answer.holder),
                });
                self.federation.send_to(&parent, result);
            }
        }
    }

    /// A link went down: every lock request waiting on that neighbour is refused at once
    /// rather than timing out (the subtree behind it cannot be confirmed).
    pub(crate) fn link_lost(&self, peer: &ServerId) {
        let mut pending = self.pending.lock();
        for answer in pending.link_lost(peer) {
            self.deliver_lock_answer(answer);
        }
    }
}
