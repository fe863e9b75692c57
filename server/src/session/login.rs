//! Logging in and registering: the login challenge, the spec's login snapshot (own record,
//! contact list with the contacts' records, held messages), the UserID reservation and the
//! `newuser` stored under it, and the clean-up when a session ends (its last will).

use gossip_common::message as m;
use gossip_common::{
    login_challenge_bytes, Domain, ErrorCode, PublicKey, Signed, UserId, UserInfo,
};
use tokio::time::Instant;

use super::{Auth, Session};
use crate::presence::SessionHandle;
use crate::store::{Mode, StoreError};

impl Session {
    pub(super) async fn authenticate(&mut self, re: Option<u64>, uid: UserId) {
        if let Some(me) = self.logged_in() {
            let text = format!("already logged in as {me}; open another connection for {uid}");
            return self.error(re, ErrorCode::NotAllowed, text, None).await;
        }
        if !self.door.store.contains_user(uid) {
            self.auth = Auth::Anonymous;
            let text = format!("no user {uid} on this server");
            return self.error(re, ErrorCode::UnknownUser, text, None).await;
        }
        let nonce = hex::encode(rand::random::<[u8; 32]>());
        self.auth = Auth::Challenged {
            uid,
            nonce: nonce.clone(),
            since: std::time::Instant::now(),
        };
        let server = self.door.identity();
        self.reply(re, m::Challenge { nonce, server }).await;
    }

    pub(super) async fn challenge_response(&mut self, re: Option<u64>, r: m::ChallengeResponse) {
        if let Some(me) = self.logged_in() {
            // Leaves the session as it is: resetting it here would leave it registered for
            // presence with no one to unregister it or fire its will.
            let text = format!("already logged in as {me}");
            return self.error(re, ErrorCode::NotAllowed, text, None).await;
        }
        // Taking the challenge out makes the nonce single-use: a replayed response finds none.
        let Auth::Challenged { uid, nonce, since } =
            std::mem::replace(&mut self.auth, Auth::Anonymous)
        else {
            let text = "no login challenge outstanding (replayed or out-of-order response)";
            return self
                .error(re, ErrorCode::AuthFailed, text.into(), None)
                .await;
        };
        let key = self.door.store.public_key(uid);
        let signed = login_challenge_bytes(&nonce, &self.door.identity(), uid);
        let ok = r.uid == uid
            && key.is_some_and(|k| k.verify(Domain::Login, &signed, &r.signature).is_ok());
        if !ok {
            self.door.metrics.auth_failures.inc();
            tracing::info!(%uid, "login refused: bad challenge response");
            let text = format!("challenge response for {uid} does not verify");
            return self.error(re, ErrorCode::AuthFailed, text, None).await;
        }
        self.login(re, uid, Some(since)).await;
    }

    /// Marks the session logged in and sends the spec's handshake: own UserInfo, then the
    /// contact list with every known contact's UserInfo, then `ok`. `since`: when the login
    /// was asked for (a challenge's; the histogram of login durations ends at the `ok`).
    pub(super) async fn login(
        &mut self,
        re: Option<u64>,
        uid: UserId,
        since: Option<std::time::Instant>,
    ) {
        self.anonymous = None;
        // An outstanding will of this user (from a session on a server that died and is not yet
        // judged dead, or another device's) may still be published: the login's `ok` carries
        // its event count, and the client numbers its next records past it, so a will and a
        // new record never share a count (docs/presence.md).
        let will_floor = self.door.wills.peek(uid);
        self.auth = Auth::LoggedIn { uid };
        self.door.metrics.logins.inc();
        tracing::info!(%uid, "logged in");
        let contacts = self
            .door
            .store
            .contact_list(uid)
            .map(|cl| cl.contacts.clone())
            .unwrap_or_default();
        // Register before sending the snapshot so no change slips between the two.
        self.door.presence.register(
            self.sid,
            SessionHandle {
                uid,
                tx: self.tx.clone(),
                kill: self.kill.clone(),
                ip: self.peer.ip(),
            },
            contacts,
        );
        if let Some(record) = self.door.store.user(uid) {
            self.reply(re, m::UserInfoMsg { record }).await;
        }
        self.send_contact_list(re, uid).await;
        self.reply(
            re,
            m::Ok {
                current: will_floor.map(Into::into),
            },
        )
        .await;
        if let Some(since) = since {
            crate::metrics::observe(&self.door.metrics.login_seconds, since);
        }
        // Messages that waited for this user, wherever they were sent.
        // And the deliveries of what this user sent while they were away.
        let (held, receipts) = self.door.relay.held_for(uid);
        for id in held {
            if let Some(r) = self.door.relay.held_message(&id).await {
                self.send(r).await;
            }
        }
        for d in receipts {
            self.send(d).await;
        }
    }

    /// Sends `contactlist`, split over several messages if the records would not fit one frame.
    pub(super) async fn send_contact_list(&self, re: Option<u64>, uid: UserId) {
        let own = self.door.store.contact_list(uid);
        let records: Vec<Signed<UserInfo>> = own
            .as_ref()
            .map(|cl| {
                cl.contacts
                    .iter()
                    .filter_map(|c| self.door.store.user(*c))
                    .collect()
            })
            .unwrap_or_default();
        // Escaping grows a record by up to ~2.7x (many short elements); keep inside the limit.
        let budget = self.door.settings.max_frame * 3 / 4;
        let mut msg = m::ContactListMsg {
            own,
            contacts: Vec::new(),
        };
        let mut size = msg.own.as_ref().map_or(0, |o| o.raw().len() * 3);
        for r in records {
            let cost = r.raw().len() * 3 + 160;
            if size + cost > budget && !msg.contacts.is_empty() {
                self.reply(re, std::mem::take(&mut msg)).await;
                size = 0;
            }
            size += cost;
            msg.contacts.push(r);
        }
        self.reply(re, msg).await;
    }

    pub(super) async fn register(&mut self, re: Option<u64>, key: PublicKey) {
        if self.logged_in().is_some() {
            let text = "already logged in".to_owned();
            return self.error(re, ErrorCode::NotAllowed, text, None).await;
        }
        let wait = self.door.registration.admit(self.peer.ip());
        if let Err(wait) = wait {
            tracing::info!("registration refused: too many from this address");
            let text = format!(
                "too many registrations from your address; try again in {} s",
                wait.as_secs() + 1
            );
            return self.error(re, ErrorCode::NotAllowed, text, None).await;
        }
        let holder = self.holder.clone();
        if let Auth::Registering { uid, .. } = self.auth {
            // One reservation per connection: a second `register` gives up the first.
            self.door.registration.release(uid, &holder);
            self.auth = Auth::Anonymous;
        }
        // The address as the server sees it, never the `ipaddr` the client claims.
        match self
            .door
            .registration
            .reserve(self.peer.ip(), &holder)
            .await
        {
            Some(uid) => {
                tracing::info!(%uid, "UserID reserved for registration");
                self.auth = Auth::Registering {
                    uid,
                    key,
                    expires: Instant::now() + self.door.registration.ttl(),
                };
                let expires_s = self.door.registration.ttl().as_secs();
                let sponsor = Some(self.door.registration.certify(uid, &key));
                self.reply(
                    re,
                    m::UserIdGrant {
                        uid,
                        expires_s,
                        sponsor,
                    },
                )
                .await;
            }
            None => {
                let text = "no free UserID could be reserved; try again".to_owned();
                self.error(re, ErrorCode::UidTaken, text, None).await;
            }
        }
    }

    pub(super) async fn new_user(&mut self, re: Option<u64>, record: Signed<UserInfo>) {
        let Auth::Registering { uid, key, expires } = self.auth else {
            let text = "send <register> first to get a UserID".to_owned();
            return self.error(re, ErrorCode::NotAllowed, text, None).await;
        };
        if Instant::now() > expires {
            self.auth = Auth::Anonymous;
            let text = format!("the reservation of {uid} expired; send <register> again");
            return self.error(re, ErrorCode::UidTaken, text, None).await;
        }
        if record.user_id != uid || record.public_key != key {
            let text =
                format!("newuser must carry the granted UserID {uid} and the registered key");
            return self.error(re, ErrorCode::NotAllowed, text, None).await;
        }
        if !self.door.registration.is_certified_here(&record) {
            let text = format!(
                "newuser must carry the `{}` field of the userID grant, verbatim (a client from before registration certificates: update it)",
                crate::registration::sponsor::FIELD
            );
            return self.error(re, ErrorCode::NotAllowed, text, None).await;
        }
        let holder = self.holder.clone();
        let result = self
            .door
            .store
            .apply_user_info(record, Mode::Create, &self.origin())
            .await;
        self.auth = Auth::Anonymous;
        match result {
            Ok(applied) => {
                self.door.metrics.registrations.inc();
                tracing::info!(%uid, "registered");
                // The `newuser` goes out before the `unlockUID`, over the same links in the
                // same order: no server can grant the UserID again in between.
                self.door
                    .records
                    .user_created(&applied.record, Some(self.sid));
                self.door.registration.release(uid, &holder);
                self.login(re, uid, None).await;
            }
            Err(e) => {
                self.door.registration.release(uid, &holder);
                self.store_error(re, e).await
            }
        }
    }

    /// Cleans up after the connection: leaves the presence registry and publishes the last will
    /// if it is still newer than the stored record (a clean logout that already published an
    /// offline status makes it stale, and it is dropped).
    pub(super) async fn finish(&mut self) {
        if let Auth::Registering { uid, .. } = self.auth {
            // The connection that asked for the reservation is gone: free the UserID now, not
            // when the lock expires.
            let holder = self.holder.clone();
            self.door.registration.release(uid, &holder);
            tracing::info!(%uid, "registration abandoned; UserID released");
            return;
        }
        let Some(uid) = self.logged_in() else { return };
        self.door.presence.unregister(self.sid);
        if let Some(will) = self.last_will.take() {
            match self
                .door
                .store
                .apply_user_info(will, Mode::Update, &format!("lastwill:{uid}/s{}", self.sid))
                .await
            {
                Ok(applied) => {
                    tracing::info!(%uid, status = %applied.record.status, "last will published");
                    self.door.metrics.last_wills.inc();
                    self.door.records.user_changed(&applied.record, None);
                }
                Err(StoreError::Stale { .. }) => {
                    tracing::debug!(%uid, "last will superseded by a newer record; dropped");
                }
                Err(e) => tracing::warn!(%uid, error = %e, "last will refused"),
            }
        }
        tracing::info!(%uid, "logged out");
    }
}
