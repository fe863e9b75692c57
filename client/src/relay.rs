//! Messages relayed through the servers: sending (signed envelope, opaque body), and end-to-end
//! encryption over it ([`crate::e2e`]): publishing the keys in the own record, encrypting for a
//! recipient, and opening what arrives ([`crate::Event::Relayed`]).

use std::time::Duration;

use gossip_common::message::{self as m};
use gossip_common::{Domain, ErrorCode, Signed, UserId, UserInfo};

use crate::{e2e, ClientError, GossipClient};

impl GossipClient {
    /// Publishes this user's end-to-end encryption keys (`e2e`) in their UserInfo, if it does
    /// not already carry them.
    pub fn publish_keys(
        &self,
        e2e: &e2e::E2e,
    ) -> impl std::future::Future<Output = Result<(), ClientError>> + Send + '_ {
        // Taken out before any await: the state is not `Sync`, so no shared reference to it
        // may live in the future.
        let keys = e2e.published();
        self.publish(keys)
    }

    /// Publishes `keys` (from [`e2e::E2e::published`], taken when the state was at hand) in
    /// the own UserInfo unless it carries them already.
    pub async fn publish_published(&self, keys: &[(String, String)]) -> Result<(), ClientError> {
        self.publish(keys.to_vec()).await
    }

    async fn publish(&self, keys: Vec<(String, String)>) -> Result<(), ClientError> {
        let me = self.me().ok_or(ClientError::NotLoggedIn)?;
        if !e2e::publishes(me.value(), &keys) {
            self.update_info(|u| e2e::publish_into(u, &keys)).await?;
        }
        Ok(())
    }

    /// A user's record: the contact's as held (its key checked at every push), else fetched.
    async fn record_of(&self, uid: UserId) -> Result<Signed<UserInfo>, ClientError> {
        let held = self.state.lock().expect("lock").contacts.get(&uid).cloned();
        match held {
            Some(r) => Ok(r),
            None => self
                .fetch_users(&[uid])
                .await?
                .into_iter()
                .find(|r| r.user_id == uid)
                .ok_or(ClientError::Refused {
                    code: ErrorCode::UnknownUser,
                    text: format!("no user {uid}"),
                    current: None,
                }),
        }
    }

    /// Encrypts `plaintext` end to end for `to` (Olm, [`e2e`]) and sends it through the
    /// servers ([`Self::send_relayed`]); returns the message id.
    pub async fn send_encrypted(
        &self,
        e2e: &mut e2e::E2e,
        to: UserId,
        plaintext: &[u8],
    ) -> Result<String, ClientError> {
        self.publish(e2e.published()).await?;
        let theirs = self.record_of(to).await?;
        let body = e2e.encrypt(to, theirs.value(), plaintext)?;
        self.send_relayed(to, &body).await
    }

    /// Leaves relayed messages with the servers for this connection: they are not passed on
    /// as [`Event::Relayed`] and not acknowledged, so they wait for a client that shows them
    /// (the servers deliver held messages at every login). For short-lived sessions that do
    /// not read messages, such as `gossip contacts add`: without it the login's held messages
    /// would be acknowledged and dropped by a program that never shows them. Call it before
    /// [`Self::login`].
    ///
    /// [`Event::Relayed`]: crate::Event::Relayed
    pub fn leave_relayed_messages(&self) {
        self.state.lock().expect("lock").leave_relayed = true;
    }

    /// Decrypts a relayed message ([`Event::Relayed`]) end to end. If that made the fallback
    /// key due for rotation ([`e2e::FALLBACK_ROTATION`]), the new one is published.
    ///
    /// [`Event::Relayed`]: crate::Event::Relayed
    pub async fn open_relayed(
        &self,
        e2e: &mut e2e::E2e,
        message: &m::Relay,
    ) -> Result<Vec<u8>, ClientError> {
        let plain = self.decrypt_relayed(e2e, message).await?;
        if let Err(e) = self.publish(e2e.published()).await {
            // Kept for the next login or send, which publish again.
            tracing::warn!(error = %e, "could not publish a rotated encryption key");
        }
        Ok(plain)
    }

    async fn decrypt_relayed(
        &self,
        e2e: &mut e2e::E2e,
        message: &m::Relay,
    ) -> Result<Vec<u8>, ClientError> {
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD
            .decode(&message.body)
            .map_err(|_| e2e::E2eError::Malformed)?;
        let theirs = self.record_of(message.from).await?;
        match e2e.decrypt(message.from, theirs.value(), &body) {
            Ok(plain) => Ok(plain),
            // The sender published (new) keys just before sending, and the message overtook
            // that record on its way here: fetch it, once right away and once a moment later.
            Err(e2e::E2eError::NoKeys(_) | e2e::E2eError::WrongSender(_)) => {
                let mut last = None;
                // A contact's key is known: a fetched record must carry the same one.
                let known = theirs.public_key;
                for wait in [Duration::ZERO, Duration::from_millis(500)] {
                    tokio::time::sleep(wait).await;
                    let fresh = self.fetch_users(&[message.from]).await?;
                    let Some(r) = fresh
                        .into_iter()
                        .find(|r| r.user_id == message.from && r.public_key == known)
                    else {
                        continue;
                    };
                    match e2e.decrypt(message.from, r.value(), &body) {
                        Ok(plain) => return Ok(plain),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or(e2e::E2eError::NoKeys(message.from)).into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sends `body` to `to` through the servers: it reaches them wherever they log in, now or
    /// later (up to 30 days). Returns the message id once the server has it on disk (and, when
    /// it is linked, on a second server's); [`Event::Delivered`] follows when the recipient's
    /// client has it. The body is opaque to the servers: encrypt it end to end before.
    ///
    /// [`Event::Delivered`]: crate::Event::Delivered
    pub async fn send_relayed(&self, to: UserId, body: &[u8]) -> Result<String, ClientError> {
        use base64::Engine as _;
        let from = self.uid().ok_or(ClientError::NotLoggedIn)?;
        let sent = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut r = m::Relay {
            id: format!("{:032x}", rand::random::<u128>()),
            from,
            to,
            sent,
            body: base64::engine::general_purpose::STANDARD.encode(body),
            sig: String::new(),
            request: None,
        };
        r.sig = self
            .key
            .sign(Domain::Relay, &gossip_common::relay_bytes(&r))
            .to_string();
        let id = r.id.clone();
        self.request(r).await?;
        Ok(id)
    }
}
