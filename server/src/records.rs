//! Where a stored record goes. A UserInfo or ContactList that was just stored here — from a
//! client of this server, from a peer, from a sync batch, or a published last will — voids the
//! wills it is as new as, reaches this server's sessions by the presence fan-out rule
//! ([`Presence::push_user_info`]) and goes on along the tree ([`Federation::flood`]) to every
//! neighbour but the one it came from. One service, so every path that stores a record sends
//! it on the same way.

use std::sync::Arc;

use bytes::Bytes;
use gossip_common::codec::encode_frame;
use gossip_common::message::{ChangeCl, NewUser, UserInfoMsg};
use gossip_common::{ContactList, Signed, UserInfo};

use crate::federation::Federation;
use crate::metrics::Metrics;
use crate::mst::ServerId;
use crate::presence::{Presence, SessionId};
use crate::wills::held::Wills;

/// Sends stored records on: to the sessions here and along the tree.
pub struct Records {
    presence: Arc<Presence>,
    federation: Arc<Federation>,
    wills: Arc<Wills>,
    metrics: Arc<Metrics>,
}

impl Records {
    /// The service over these handles.
    pub(crate) fn new(
        presence: Arc<Presence>,
        federation: Arc<Federation>,
        wills: Arc<Wills>,
        metrics: Arc<Metrics>,
    ) -> Records {
        Records {
            presence,
            federation,
            wills,
            metrics,
        }
    }

    /// A client of this server changed a UserInfo: push it locally and forward it to every
    /// tree neighbour.
    pub fn user_changed(&self, record: &Signed<UserInfo>, from_session: Option<SessionId>) {
        self.user_changed_from(record, from_session, None, false);
    }

    /// A new user registered here: push and forward as `newuser`.
    pub fn user_created(&self, record: &Signed<UserInfo>, from_session: Option<SessionId>) {
        self.user_changed_from(record, from_session, None, true);
    }

    /// A stored UserInfo changed: push it to every session watching that user (and the user's
    /// other sessions, so all their clients agree) and forward it to every tree neighbour but
    /// the one it came from.
    pub fn user_changed_from(
        &self,
        record: &Signed<UserInfo>,
        from_session: Option<SessionId>,
        from_peer: Option<&ServerId>,
        new_user: bool,
    ) {
        // A stored record makes any will of that user it is as new as void.
        self.wills.superseded(record.user_id, record.event_count);
        // One encoding serves the push and the forward, unless the forward must say "new".
        let push = user_info_frame(record);
        let forward = if new_user {
            encode_frame(NewUser {
                record: record.clone(),
            })
        } else {
            push.clone()
        };
        self.federation.flood(&forward, from_peer);
        self.push_local(record, from_session, &push);
    }

    /// Pushes a changed UserInfo to this node's watchers of it and to the user's other
    /// sessions; encodes the push only if someone here will receive it. For records that are
    /// forwarded to peers some other way (sync batches).
    pub fn user_changed_locally(&self, record: &Signed<UserInfo>) {
        self.wills.superseded(record.user_id, record.event_count);
        if self.presence.has_audience(record.user_id) {
            self.push_local(record, None, &user_info_frame(record));
        }
    }

    fn push_local(&self, record: &Signed<UserInfo>, from_session: Option<SessionId>, push: &Bytes) {
        let n = self.presence.push_user_info(record, from_session, push);
        self.metrics.messages_out.add("UserInfo", n as u64);
    }

    /// A stored ContactList changed: update who watches whom, forward to the neighbours.
    pub fn list_changed_from(&self, record: &Signed<ContactList>, from_peer: Option<&ServerId>) {
        self.presence.set_contacts(record.owner, &record.contacts);
        let frame = encode_frame(ChangeCl {
            record: record.clone(),
        });
        self.federation.flood(&frame, from_peer);
    }

    /// A ContactList arrived in a sync batch: update who watches whom (the batch is forwarded
    /// as a whole by the caller).
    pub fn list_changed_locally(&self, record: &Signed<ContactList>) {
        self.presence.set_contacts(record.owner, &record.contacts);
    }
}

/// A `UserInfo` message carrying `record`, encoded once to be shared by every recipient.
fn user_info_frame(record: &Signed<UserInfo>) -> Bytes {
    encode_frame(UserInfoMsg {
        record: record.clone(),
    })
}
