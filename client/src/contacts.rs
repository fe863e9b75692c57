//! The contact list (replaced, extended, trimmed; signed like every record) and the other users'
//! records the client holds or fetches.

use gossip_common::message::{self as m};
use gossip_common::{Body, ContactList, ErrorCode, EventCount, Signed, UserId, UserInfo};

use crate::{ClientError, GossipClient};

impl GossipClient {
    /// The contact list's UserIDs, in order.
    pub fn contact_ids(&self) -> Vec<UserId> {
        self.state
            .lock()
            .expect("lock")
            .list
            .as_ref()
            .map(|l| l.contacts.clone())
            .unwrap_or_default()
    }

    /// The latest known record of each contact (those the server knows about).
    pub fn contacts(&self) -> Vec<Signed<UserInfo>> {
        let state = self.state.lock().expect("lock");
        let ids = state
            .list
            .as_ref()
            .map(|l| l.contacts.clone())
            .unwrap_or_default();
        ids.iter()
            .filter_map(|u| state.contacts.get(u).cloned())
            .collect()
    }

    /// Whether a contact currently presents as online (their record says so and they were not
    /// found unreachable since).
    pub fn is_contact_online(&self, uid: UserId) -> bool {
        let state = self.state.lock().expect("lock");
        !state.unreachable.contains(&uid) && state.contacts.get(&uid).is_some_and(|u| u.is_online())
    }

    /// Stops verifying the signatures of pushed records, and trusts the server for them.
    ///
    /// Covers the contacts' records received at login too (call it before [`Self::login`]).
    /// Only for load generators such as `gossip-bench`, where one process plays thousands of
    /// clients and could not afford an ed25519 check per push (the server verified every record
    /// before storing it; real clients keep verifying so a rogue server cannot forge presence).
    /// The key binding and event-count ordering are still enforced.
    pub fn trust_server_pushes(&self) {
        self.state.lock().expect("lock").trust_pushes = true;
    }

    /// Replaces the contact list.
    pub async fn set_contacts(&self, contacts: Vec<UserId>) -> Result<(), ClientError> {
        let uid = self.uid().ok_or(ClientError::NotLoggedIn)?;
        let mut next = self
            .state
            .lock()
            .expect("lock")
            .list
            .as_ref()
            .map_or(EventCount::ZERO, |l| l.event_count)
            .next();
        for attempt in 0..2 {
            let record = Signed::sign(ContactList::new(uid, next, contacts.clone()), &self.key)?;
            match self
                .request(m::ChangeCl {
                    record: record.clone(),
                })
                .await
            {
                Ok(_) => {
                    self.state.lock().expect("lock").list = Some(record);
                    return Ok(());
                }
                Err(ClientError::Refused {
                    code: ErrorCode::StaleEventCount,
                    current: Some(current),
                    ..
                }) if attempt == 0 => next = current.next(),
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Unexpected("ChangeCL"))
    }

    /// Adds contacts (keeping the existing ones).
    pub async fn add_contacts(&self, add: &[UserId]) -> Result<(), ClientError> {
        let mut list = self.contact_ids();
        list.extend_from_slice(add);
        self.set_contacts(list).await
    }

    /// Removes contacts.
    pub async fn remove_contacts(&self, remove: &[UserId]) -> Result<(), ClientError> {
        let list = self
            .contact_ids()
            .into_iter()
            .filter(|u| !remove.contains(u))
            .collect();
        self.set_contacts(list).await
    }

    /// Fetches users' records from the server.
    pub async fn fetch_users(&self, uids: &[UserId]) -> Result<Vec<Signed<UserInfo>>, ClientError> {
        let answers = self
            .request(m::ReqUserInfo {
                uids: uids.to_vec(),
            })
            .await?;
        Ok(verified_users(answers))
    }
}

/// The `UserInfo` records among a request's answers whose signatures verify (the others are
/// dropped: a server cannot hand a client a record its user did not sign).
pub(crate) fn verified_users(answers: Vec<gossip_common::Message>) -> Vec<Signed<UserInfo>> {
    answers
        .into_iter()
        .filter_map(|m| match m.body {
            Body::UserInfo(u) => u.record.verify_self().is_ok().then_some(u.record),
            _ => None,
        })
        .collect()
}
