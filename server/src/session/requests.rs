//! What a logged-in session asks: updates of its own UserInfo, contact list and last will,
//! each stored and sent on by the records and wills services; and directory searches,
//! answered from the store's index.

use gossip_common::message as m;
use gossip_common::{ErrorCode, Signed, UserId, UserInfo};

use super::Session;
use crate::directory::{Query, MAX_RESULTS};
use crate::ratelimit::Rate;
use crate::store::Mode;

/// Directory searches one user may make: 10 at once, then one every 2 s. Enough for a person
/// typing a few searches; a crawler listing every user by every prefix is slowed to a
/// crawl (and every session of the user shares the bucket).
pub(crate) const SEARCH_RATE: Rate = Rate {
    burst: 10.0,
    per_second: 0.5,
};
/// Users whose search rate is tracked at once.
pub(crate) const SEARCH_TRACKED_USERS: usize = 100_000;
/// Matches a search returns when it does not say.
const DEFAULT_RESULTS: usize = 20;

impl Session {
    pub(super) async fn update_user_info(
        &mut self,
        re: Option<u64>,
        uid: UserId,
        record: Signed<UserInfo>,
    ) {
        if record.user_id != uid {
            let text = format!(
                "you are logged in as {uid} and cannot update {}",
                record.user_id
            );
            return self.error(re, ErrorCode::NotAllowed, text, None).await;
        }
        // Contacts and peers get the change as soon as it is verified; the client's `ok`
        // waits for the disk (see `Store::apply_user_info_then`).
        let (door, sid) = (&self.door, self.sid);
        match door
            .store
            .apply_user_info_then(record, Mode::Update, &self.origin(), |r| {
                door.records.user_changed(r, Some(sid))
            })
            .await
        {
            Ok(applied) => self.stored(re, applied.record.event_count).await,
            Err(e) => self.store_error(re, e).await,
        }
    }

    pub(super) async fn change_contact_list(
        &mut self,
        re: Option<u64>,
        uid: UserId,
        record: Signed<gossip_common::ContactList>,
    ) {
        if record.owner != uid {
            let text = format!(
                "you are logged in as {uid} and cannot change {}'s list",
                record.owner
            );
            return self.error(re, ErrorCode::NotAllowed, text, None).await;
        }
        match self
            .door
            .store
            .apply_contact_list(record, &self.origin())
            .await
        {
            Ok(applied) => {
                let new = &applied.record.contacts;
                self.door.records.list_changed_from(&applied.record, None);
                // Tell the owner's sessions about contacts they did not have before. This
                // session waits for room in its own queue (hundreds of new contacts at once
                // must not count as a slow consumer); its other sessions get them as pushes.
                let old: std::collections::HashSet<UserId> = applied
                    .previous
                    .map(|p| p.contacts.iter().copied().collect())
                    .unwrap_or_default();
                for c in new.iter().filter(|c| !old.contains(c)) {
                    if let Some(record) = self.door.store.user(*c) {
                        let frame = self.encode(m::UserInfoMsg { record }, None);
                        self.door.presence.send_to_user(uid, Some(self.sid), &frame);
                        if self.tx.send(frame.into()).await.is_err() {
                            return;
                        }
                    }
                }
                self.stored(re, applied.record.event_count).await;
            }
            Err(e) => self.store_error(re, e).await,
        }
    }

    pub(super) async fn search_users(&mut self, re: Option<u64>, uid: UserId, q: m::SearchUsers) {
        let now = tokio::time::Instant::now();
        let allowed = self.door.search_rate.lock().take(&uid, now);
        if let Err(wait) = allowed {
            let text = format!("too many searches; try again in {} s", wait.as_secs() + 1);
            return self.error(re, ErrorCode::NotAllowed, text, None).await;
        }
        let query = match Query::parse(&q.text) {
            Ok(query) => query,
            Err(e) => {
                return self
                    .error(re, ErrorCode::Malformed, e.to_string(), None)
                    .await
            }
        };
        let limit = q
            .limit
            .map_or(DEFAULT_RESULTS, |l| l as usize)
            .clamp(1, MAX_RESULTS);
        let found = self.door.store.search(&query, limit);
        tracing::debug!(
            words = q.text.len(),
            found = found.len(),
            "directory search"
        );
        for record in found {
            self.reply(re, m::UserInfoMsg { record }).await;
        }
        self.reply(re, m::Ok { current: None }).await;
    }

    pub(super) async fn set_last_will(
        &mut self,
        re: Option<u64>,
        uid: UserId,
        record: Signed<UserInfo>,
    ) {
        let key = self.door.store.public_key(uid);
        let valid =
            record.user_id == uid && key == Some(record.public_key) && record.verify_self().is_ok();
        if !valid {
            let text = "last will must be your own UserInfo, signed with your key".to_owned();
            return self.error(re, ErrorCode::BadSignature, text, None).await;
        }
        // Replicated, so that the others publish it if this server dies.
        self.door.wills.hold_own(record.clone());
        self.last_will = Some(record);
        self.reply(re, m::Ok { current: None }).await;
    }
}
