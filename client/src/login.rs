//! Registration and login: getting a UserID for this client's key, answering the server's
//! challenge, and taking in what a login returns (the own record and contact list, the contacts'
//! records) — never on the server's word: every record must verify.

use gossip_common::message::{self as m};
use gossip_common::{
    login_challenge_bytes, Body, Domain, EventCount, Message, Signed, UserId, UserInfo,
};

use crate::{ClientError, GossipClient};

impl GossipClient {
    /// Registers a new user with this client's key: gets a UserID from the server, signs the
    /// first UserInfo (`fill` sets nick, name…) and sends it. Logged in on success.
    pub async fn register(&self, fill: impl FnOnce(&mut UserInfo)) -> Result<UserId, ClientError> {
        let answers = self
            .request(m::Register {
                publickey: self.key.public(),
            })
            .await?;
        let Some(Body::UserIdGrant(grant)) = answers.last().map(|m| &m.body) else {
            return Err(ClientError::Unexpected("register"));
        };
        let mut info = UserInfo::new(grant.uid, self.key.public());
        fill(&mut info);
        // The registering server's certificate: other servers admit a new user only with it.
        if let Some(cert) = &grant.sponsor {
            info.extra.retain(|(name, _)| name != "Sponsor");
            info.extra.push(("Sponsor".into(), cert.clone()));
        }
        info.user_id = grant.uid;
        info.public_key = self.key.public();
        info.event_count = EventCount::ZERO;
        let record = Signed::sign(info, &self.key)?;
        let answers = self.request(m::NewUser { record }).await?;
        self.absorb_login(answers);
        Ok(grant.uid)
    }

    /// [`Self::register`] with the encryption keys of `e2e` in the first record, so the new
    /// user can be sent end-to-end encrypted messages from the moment they exist (before any
    /// login of theirs). What `gossip register` does.
    pub fn register_with_keys<'a>(
        &'a self,
        e2e: &crate::e2e::E2e,
        fill: impl FnOnce(&mut UserInfo) + Send + 'a,
    ) -> impl std::future::Future<Output = Result<UserId, ClientError>> + Send + 'a {
        // Taken out before any await: the state is not `Sync`.
        let keys = e2e.published();
        self.register(move |u| {
            fill(u);
            crate::e2e::publish_into(u, &keys);
        })
    }

    /// Logs in as `uid` by answering the server's challenge with this client's key. On success
    /// the client holds its own record, contact list and the contacts' records.
    pub async fn login(&self, uid: UserId) -> Result<(), ClientError> {
        let answers = self.request(m::Authenticate { uid }).await?;
        let Some(Body::Challenge(ch)) = answers.last().map(|m| &m.body) else {
            return Err(ClientError::Unexpected("authenticate"));
        };
        let signature = self.key.sign(
            Domain::Login,
            &login_challenge_bytes(&ch.nonce, &ch.server, uid),
        );
        let answers = self
            .request(m::ChallengeResponse { uid, signature })
            .await?;
        self.absorb_login(answers);
        if self.uid() != Some(uid) {
            return Err(ClientError::Unexpected("challengeResponse"));
        }
        Ok(())
    }

    /// Takes in what a login returned: the own record and contact list, which must be signed
    /// by this client's key, and the contacts' records, which must verify against their own
    /// keys (and a key already known for that contact). Like pushes, nothing the server sends
    /// is taken on its word; a record that fails is dropped and logged.
    fn absorb_login(&self, answers: Vec<Message>) {
        let mut me = None;
        let mut own_list = None;
        let mut contacts = Vec::new();
        for msg in answers {
            match msg.body {
                // The login's `ok` names the count of a last will of ours the federation may
                // still publish: our records are numbered past it.
                Body::Ok(m::Ok {
                    current: Some(c), ..
                }) => self.number_past(c.into()),
                Body::UserInfo(u) => me = Some(u.record),
                Body::ContactList(cl) => {
                    if cl.own.is_some() {
                        own_list = cl.own;
                    }
                    contacts.extend(cl.contacts);
                }
                _ => {}
            }
        }
        let mine = self.key.public();
        let trust = self.state.lock().expect("lock").trust_pushes;
        let me = me.filter(|r| r.public_key == mine && (trust || r.verify(&mine).is_ok()));
        let own_list = own_list.filter(|l| trust || l.verify(&mine).is_ok());
        let contacts = if trust {
            contacts
        } else {
            verified_records(contacts)
        };
        let mut state = self.state.lock().expect("lock");
        if me.is_some() {
            state.me = me;
        }
        if own_list.is_some() {
            state.list = own_list;
        }
        for c in contacts {
            let known = state.contacts.get(&c.user_id);
            if known.is_none_or(|k| k.public_key == c.public_key) {
                state.contacts.insert(c.user_id, c);
            } else {
                tracing::warn!(uid = %c.user_id, "contact's record carries another key than before; ignored");
            }
        }
    }
}

/// The records whose signatures verify against their own keys: one batch verification, one
/// by one only if the batch fails.
fn verified_records(records: Vec<Signed<UserInfo>>) -> Vec<Signed<UserInfo>> {
    let batch: Vec<_> = records
        .iter()
        .map(|r| (&r.public_key, r.raw().as_bytes(), r.signature()))
        .collect();
    if records.is_empty() || gossip_common::PublicKey::verify_batch(&batch).is_ok() {
        return records;
    }
    records
        .into_iter()
        .filter(|r| {
            let ok = r.verify_self().is_ok();
            if !ok {
                tracing::warn!(uid = %r.user_id, "contact's record fails verification; ignored");
            }
            ok
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use futures::{SinkExt, StreamExt};
    use gossip_common::secure::{self, Identity, Purpose};
    use gossip_common::{Keypair, XmlFrameCodec};
    use tokio::net::TcpListener;

    use super::*;

    /// A scripted server answering one login with the given contacts' records.
    async fn fake_server(
        listener: TcpListener,
        me: Signed<UserInfo>,
        contacts: Vec<Signed<UserInfo>>,
    ) {
        let (stream, _) = listener.accept().await.unwrap();
        let server_id = Identity::new(&Keypair::generate());
        let (stream, _) = secure::accept(stream, Purpose::Client, &server_id, false)
            .await
            .unwrap();
        let mut framed = tokio_util::codec::Framed::new(stream, XmlFrameCodec::default());
        let reply =
            |re: Option<u64>, body: Body| Message::new(Ipv6Addr::LOCALHOST, body).in_reply_to(re);
        while let Some(Ok(Ok(frame))) = framed.next().await {
            let msg = Message::decode(&frame).unwrap();
            let re = msg.header.id;
            match msg.body {
                Body::Authenticate(_) => {
                    let ch = m::Challenge {
                        nonce: "00".repeat(32),
                        server: "fake:1".into(),
                    };
                    framed.send(&reply(re, ch.into())).await.unwrap();
                }
                Body::ChallengeResponse(_) => {
                    let (me, contacts) = (me.clone(), contacts.clone());
                    framed
                        .send(&reply(re, m::UserInfoMsg { record: me }.into()))
                        .await
                        .unwrap();
                    let cl = m::ContactListMsg {
                        own: None,
                        contacts,
                    };
                    framed.send(&reply(re, cl.into())).await.unwrap();
                    framed
                        .send(&reply(re, m::Ok { current: None }.into()))
                        .await
                        .unwrap();
                }
                _ => {}
            }
        }
    }

    fn record(key: &Keypair, uid: u64, nick: &str) -> Signed<UserInfo> {
        let mut u = UserInfo::new(UserId(uid), key.public());
        u.nick_name = nick.into();
        Signed::sign(u, key).unwrap()
    }

    #[tokio::test]
    async fn login_drops_contact_records_that_do_not_verify_unless_told_to_trust() {
        let (me_key, bob, mallory) = (
            Keypair::generate(),
            Keypair::generate(),
            Keypair::generate(),
        );
        let me = record(&me_key, 1, "me");
        let good = record(&bob, 2, "bob");
        // Carol's record as a rogue server would forge it: her claimed key, someone else's
        // signature.
        let carol = Keypair::generate();
        let forged = Signed::<UserInfo>::from_parts(
            record(&carol, 3, "carol").raw().to_owned(),
            *record(&mallory, 3, "carol").signature(),
        )
        .unwrap();
        for trust in [false, true] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            tokio::spawn(fake_server(
                listener,
                me.clone(),
                vec![good.clone(), forged.clone()],
            ));
            let (client, _events) = GossipClient::connect(&addr, me_key.clone()).await.unwrap();
            if trust {
                client.trust_server_pushes();
            }
            client.login(UserId(1)).await.unwrap();
            let mut got: Vec<u64> = client
                .state
                .lock()
                .unwrap()
                .contacts
                .keys()
                .map(|u| u.0)
                .collect();
            got.sort();
            let want: &[u64] = if trust { &[2, 3] } else { &[2] };
            assert_eq!(got, want, "trust = {trust}");
        }
    }
}
