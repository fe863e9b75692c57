//! Async client library for Gossip, used by the `gossip` CLI, the integration tests and the
//! benchmark.
//!
//! A [`GossipClient`] owns one server connection. A reader task routes every incoming message:
//! replies (they carry `re`, the id of our request) go to the request waiting for them;
//! everything else — presence pushes, server notices, chat messages — goes to the [`Events`]
//! stream. That is the spec's "message buffer", as an async stream: unsolicited messages may
//! arrive between a request and its answer and nothing is lost or misrouted.
//!
//! The client keeps its own signed records: every update increments the event count, is signed
//! locally, and is followed by a fresh *last will* (the same record, offline, next event count)
//! that the server publishes if this connection dies.

mod direct;
pub mod e2e;
pub mod failover;
pub mod history;
pub mod profile;

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gossip_common::message::{self as m};
use gossip_common::record::STATUS_OFFLINE;
use gossip_common::secure::{self, Identity, Purpose};
use gossip_common::{
    login_challenge_bytes, Body, ChatMessage, ContactList, Domain, ErrorCode, EventCount, Keypair,
    Message, ProtocolError, PublicKey, Signed, UserId, UserInfo, XmlFrameCodec,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

pub use direct::DirectListener;

// `std::sync::Mutex` is enough: it is only ever held for a few map operations, never across an
// `.await`.
use std::sync::Mutex;

/// Errors from client operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Could not connect, or the connection failed.
    #[error("connection to {addr} failed: {source}")]
    Connect {
        /// Server address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The encrypted channel could not be set up (a server from before encryption, or not a
    /// Gossip server at all).
    #[error("cannot open an encrypted connection to {addr}: {source}")]
    Handshake {
        /// Server address.
        addr: String,
        /// Why.
        #[source]
        source: gossip_common::secure::SecureError,
    },
    /// The server proved a different identity key from the one pinned for it.
    #[error(
        "{addr} presented server key {presented}, but {pinned} was pinned for it at first \
         contact: it may be an impostor. If its admin rotated the key (they can confirm it with \
         `prodserver status`), accept the new one with `gossip trust-server {addr} {presented}`"
    )]
    ServerKeyChanged {
        /// Server address.
        addr: String,
        /// The key pinned.
        pinned: PublicKey,
        /// The key it presented.
        presented: PublicKey,
    },
    /// End-to-end encryption failed (no published keys, altered or replayed message…).
    #[error(transparent)]
    E2e(#[from] e2e::E2eError),
    /// The connection closed while a request was waiting.
    #[error("the server closed the connection")]
    Closed,
    /// The server refused the request.
    #[error("server refused: {code:?}: {text}")]
    Refused {
        /// Error code.
        code: ErrorCode,
        /// Server's explanation.
        text: String,
        /// For stale event counts: what the server holds.
        current: Option<EventCount>,
    },
    /// The server sent something this client did not expect.
    #[error("unexpected reply <{0}>")]
    Unexpected(&'static str),
    /// A request got no answer in time.
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    /// The operation needs a login first.
    #[error("not logged in")]
    NotLoggedIn,
    /// Building or checking a record failed.
    #[error(transparent)]
    Record(#[from] gossip_common::RecordError),
    /// Direct client-to-client delivery failed.
    #[error("cannot reach {uid} directly: {reason}")]
    Unreachable {
        /// Recipient.
        uid: UserId,
        /// Why.
        reason: String,
    },
    /// Protocol error.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Something that happened without being asked for.
#[derive(Debug, Clone)]
pub enum Event {
    /// A contact's UserInfo changed (status, message, address…).
    Presence(Signed<UserInfo>),
    /// A direct chat message whose signature verified against the sender's key.
    Message(Signed<ChatMessage>),
    /// A contact could not be reached directly; the client now shows them offline
    /// (the spec's client-side detection of users who dropped without logging out).
    Unreachable(UserId),
    /// A notice from the server.
    ServerMessage(String),
    /// A message relayed through the servers (already acknowledged to them as delivered).
    /// `request`: the sender is not in your contact list.
    Relayed {
        /// The message (its body is what the sender's client put in it).
        message: m::Relay,
        /// Whether the sender is not among your contacts (a message request).
        request: bool,
    },
    /// The recipient's client has a message you sent through the servers.
    Delivered {
        /// The message id (as [`GossipClient::send_relayed`] returned it).
        id: String,
        /// The recipient.
        to: UserId,
    },
    /// An `error` not tied to a request.
    Error {
        /// Code.
        code: ErrorCode,
        /// Explanation.
        text: String,
    },
    /// The connection ended.
    Disconnected(String),
}

/// The stream of [`Event`]s of one client.
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client and its connection are gone.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures::Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

type Pending = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

/// What the client knows about its own user and contacts.
#[derive(Default)]
struct State {
    me: Option<Signed<UserInfo>>,
    list: Option<Signed<ContactList>>,
    contacts: HashMap<UserId, Signed<UserInfo>>,
    /// Contacts found unreachable since their last record (spec: client-side detection).
    unreachable: std::collections::HashSet<UserId>,
    /// Skip signature checks on pushed records (load generators only, see
    /// [`GossipClient::trust_server_pushes`]).
    trust_pushes: bool,
    /// Records are numbered past this: the event count of the last will handed out (by this
    /// connection or, after a failover, the previous one), which may still be published.
    floor: Option<EventCount>,
    /// Ids of relayed messages already passed on (a message can arrive twice: pushed live and
    /// again at a login before the servers dropped it), most recent last.
    seen_relays: std::collections::VecDeque<String>,
}

/// Relayed message ids remembered for de-duplication.
const SEEN_RELAYS: usize = 4096;

/// Server identity keys pinned per server address (`host:port`, base port).
pub type Pins = std::collections::BTreeMap<String, PublicKey>;

/// One connection to a Gossip server.
pub struct GossipClient {
    key: Keypair,
    server: String,
    out: mpsc::Sender<Message>,
    pending: Pending,
    next_id: AtomicU64,
    state: Arc<Mutex<State>>,
    events_tx: mpsc::Sender<Event>,
    /// Where this client accepts direct messages, advertised in its UserInfo.
    direct_addr: Mutex<Option<SocketAddr>>,
    /// Whether the server holds a last will for this connection, which every update makes
    /// stale and so must be followed by a fresh one.
    will_active: std::sync::atomic::AtomicBool,
    /// Cancelled by the reader task when the connection ends, so a request made after that
    /// fails at once instead of waiting out its timeout.
    closed: tokio_util::sync::CancellationToken,
    request_timeout: Duration,
    /// The identity key the server proved.
    server_key: PublicKey,
}

impl GossipClient {
    /// Connects to `addr` (`host:port`, the server's base port) with the user's key,
    /// accepting whatever identity key the server proves (first contact: the caller pins
    /// [`Self::server_key`]).
    pub async fn connect(addr: &str, key: Keypair) -> Result<(GossipClient, Events), ClientError> {
        GossipClient::connect_pinned(addr, key, None).await
    }

    /// Connects to `addr`, refusing it unless it proves `pinned` (when given).
    pub async fn connect_pinned(
        addr: &str,
        key: Keypair,
        pinned: Option<PublicKey>,
    ) -> Result<(GossipClient, Events), ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        GossipClient::with_stream(stream, addr, key, pinned).await
    }

    /// Runs the protocol over a connection the caller opened (to bind a source address, or
    /// set socket options first): the encryption handshake (refusing a server that does not
    /// prove `pinned`, when given), then the client. `addr` names the server in errors and
    /// [`Self::server`].
    pub async fn with_stream(
        stream: TcpStream,
        addr: &str,
        key: Keypair,
        pinned: Option<PublicKey>,
    ) -> Result<(GossipClient, Events), ClientError> {
        let _ = stream.set_nodelay(true);
        // A fresh anonymous Noise key per connection: nothing links two connections of one
        // client before it logs in.
        let (secured, server_key) = Box::pin(secure::connect(
            stream,
            Purpose::Client,
            &Identity::anonymous(),
        ))
        .await
        .map_err(|source| ClientError::Handshake {
            addr: addr.to_owned(),
            source,
        })?;
        if let Some(pinned) = pinned.filter(|p| *p != server_key) {
            return Err(ClientError::ServerKeyChanged {
                addr: addr.to_owned(),
                pinned,
                presented: server_key,
            });
        }
        let (rd, wr) = secured.split_with(TcpStream::into_split);
        let (out, mut out_rx) = mpsc::channel::<Message>(64);
        let (events_tx, events_rx) = mpsc::channel(1024);
        let pending: Pending = Arc::default();
        let state: Arc<Mutex<State>> = Arc::default();
        let closed = tokio_util::sync::CancellationToken::new();

        // Writer task.
        tokio::spawn(async move {
            let mut sink = FramedWrite::new(wr, XmlFrameCodec::default());
            while let Some(msg) = out_rx.recv().await {
                if sink.send(&msg).await.is_err() {
                    break;
                }
            }
        });
        // Reader task: routes replies and events.
        {
            // A weak sender, so dropping the client closes the connection (which makes the
            // server publish the last will) even while this task still runs.
            let (pending, state, events, out, closed, me_key) = (
                Arc::clone(&pending),
                Arc::clone(&state),
                events_tx.clone(),
                out.downgrade(),
                closed.clone(),
                key.clone(),
            );
            tokio::spawn(async move {
                let mut frames = FramedRead::new(rd, XmlFrameCodec::default());
                let reason = loop {
                    let frame = match frames.next().await {
                        None => break "connection closed by server".to_owned(),
                        Some(Err(e)) => break format!("protocol error: {e}"),
                        Some(Ok(Err(e))) => {
                            tracing::warn!(error = %e, "frame from server refused");
                            continue;
                        }
                        Some(Ok(Ok(frame))) => frame,
                    };
                    let msg = match Message::decode(&frame) {
                        Ok(msg) => msg,
                        Err(e) => {
                            tracing::warn!(error = %e, "message from server refused");
                            continue;
                        }
                    };
                    route(msg, &pending, &state, &events, &out, &me_key).await;
                };
                closed.cancel();
                pending.lock().expect("lock").clear();
                let _ = events.send(Event::Disconnected(reason)).await;
            });
        }
        let client = GossipClient {
            key,
            server: addr.to_owned(),
            out,
            pending,
            next_id: AtomicU64::new(1),
            state,
            events_tx,
            direct_addr: Mutex::new(None),
            will_active: std::sync::atomic::AtomicBool::new(false),
            closed,
            request_timeout: Duration::from_secs(30),
            server_key,
        };
        Ok((client, Events { rx: events_rx }))
    }

    /// The identity key the server proved in the handshake (pin it on first contact).
    pub fn server_key(&self) -> PublicKey {
        self.server_key
    }

    /// Measures the RTT to every server in `servers` (`host:port`, base ports) at once with the
    /// spec's prober, then connects to the nearest live one, falling back to the next if it
    /// refuses. Servers that did not answer probes are still tried, last (UDP may be filtered).
    /// `pins` holds the keys pinned per server (`host:port`); a server that proves another key
    /// is skipped, and if no server could be reached that error is returned.
    pub async fn connect_nearest(
        servers: &[String],
        key: Keypair,
        probe: &gossip_common::rtt::ProbeConfig,
        pins: &Pins,
    ) -> Result<(GossipClient, Events), ClientError> {
        let mut targets = std::collections::BTreeMap::new();
        for s in servers {
            let Some((host, port)) = s.rsplit_once(':') else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            let Some(rtt_port) = port.checked_add(2) else {
                continue;
            };
            if let Ok(mut addrs) = tokio::net::lookup_host((host, rtt_port)).await {
                if let Some(addr) = addrs.next() {
                    targets.insert(s.clone(), addr);
                }
            }
        }
        let rtts = gossip_common::rtt::probe(&targets, "client", probe, &Default::default())
            .await
            .unwrap_or_default();
        let mut order: Vec<(Option<Duration>, &String)> = servers
            .iter()
            .map(|s| match rtts.get(s) {
                Some(gossip_common::rtt::Rtt::Alive(d)) => (Some(*d), s),
                _ => (None, s),
            })
            .collect();
        // Alive by RTT first, then the silent ones in the order given.
        order.sort_by_key(|(d, _)| (d.is_none(), *d));
        let mut last_err = None;
        for (rtt, server) in order {
            match GossipClient::connect_pinned(server, key.clone(), pins.get(server).copied()).await
            {
                Ok(c) => {
                    tracing::info!(%server, ?rtt, "connected to the nearest reachable server");
                    return Ok(c);
                }
                Err(e) => {
                    tracing::info!(%server, error = %e, "server unreachable; trying the next");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(ClientError::Connect {
            addr: servers.join(","),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no server given"),
        }))
    }

    /// The server address this client is connected to.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// This client's key.
    pub fn key(&self) -> &Keypair {
        &self.key
    }

    /// The logged-in user's id.
    pub fn uid(&self) -> Option<UserId> {
        self.state
            .lock()
            .expect("lock")
            .me
            .as_ref()
            .map(|m| m.user_id)
    }

    /// The logged-in user's current record.
    pub fn me(&self) -> Option<Signed<UserInfo>> {
        self.state.lock().expect("lock").me.clone()
    }

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

    /// Sends a request and collects every message answering it, up to the final one.
    async fn request(&self, body: impl Into<Body>) -> Result<Vec<Message>, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending.lock().expect("lock").insert(id, tx);
        let msg = Message::new(Ipv6Addr::UNSPECIFIED, body).with_id(id);
        if self.out.send(msg).await.is_err() {
            self.pending.lock().expect("lock").remove(&id);
            return Err(ClientError::Closed);
        }
        let collect = async {
            let mut answers = Vec::new();
            while let Some(msg) = rx.recv().await {
                let done = msg.body.ends_request();
                answers.push(msg);
                if done {
                    return Ok(answers);
                }
            }
            Err(ClientError::Closed)
        };
        let closed = self.closed.clone();
        let collect = async move {
            tokio::select! {
                biased;
                r = collect => r,
                _ = closed.cancelled() => Err(ClientError::Closed),
            }
        };
        let result = tokio::time::timeout(self.request_timeout, collect).await;
        self.pending.lock().expect("lock").remove(&id);
        let answers = result.map_err(|_| ClientError::Timeout(self.request_timeout))??;
        if let Some(Message {
            body: Body::Error(e),
            ..
        }) = answers.last()
        {
            return Err(ClientError::Refused {
                code: e.code,
                text: e.text.clone(),
                current: e.current.map(Into::into),
            });
        }
        Ok(answers)
    }

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
        info.user_id = grant.uid;
        info.public_key = self.key.public();
        info.event_count = EventCount::ZERO;
        let record = Signed::sign(info, &self.key)?;
        let answers = self.request(m::NewUser { record }).await?;
        self.absorb_login(answers);
        Ok(grant.uid)
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

    /// Changes the own UserInfo: `change` edits a copy, which gets the next event count, is
    /// signed and stored on the server. If another client of the same user got there first
    /// (stale event count), retries once above the server's count.
    pub async fn update_info(
        &self,
        change: impl Fn(&mut UserInfo),
    ) -> Result<Signed<UserInfo>, ClientError> {
        let me = self.me().ok_or(ClientError::NotLoggedIn)?;
        // Past any will still out there: a will and a new record must never share a count
        // (docs/presence.md).
        let floor = self.state.lock().expect("lock").floor;
        let base = match floor {
            Some(f) if f.is_newer_than(me.event_count) => f,
            _ => me.event_count,
        };
        let mut next_ec = base.next();
        let mut onto = me.value().clone();
        for attempt in 0..2 {
            let mut info = onto.clone();
            change(&mut info);
            info.event_count = next_ec;
            let record = Signed::sign(info, &self.key)?;
            match self
                .request(m::UserInfoMsg {
                    record: record.clone(),
                })
                .await
            {
                Ok(_) => {
                    self.state.lock().expect("lock").me = Some(record.clone());
                    if self.will_active.load(Ordering::Relaxed) && record.is_online() {
                        self.send_last_will(&record).await?;
                    }
                    return Ok(record);
                }
                Err(ClientError::Refused {
                    code: ErrorCode::StaleEventCount,
                    current: Some(current),
                    ..
                }) if attempt == 0 => {
                    // Another session of this user changed the record meanwhile (a one-shot
                    // `gossip set-status` beside a running `gossip watch`): the change goes
                    // onto that record, not onto ours, or it would undo theirs.
                    next_ec = current.next();
                    let fresh = self
                        .fetch_users(&[me.user_id])
                        .await?
                        .into_iter()
                        .find(|r| r.user_id == me.user_id && r.public_key == me.public_key);
                    if let Some(fresh) = fresh {
                        if fresh.event_count.is_newer_than(current) {
                            next_ec = fresh.event_count.next();
                        }
                        let mut theirs = fresh.value().clone();
                        if !theirs.is_online() && me.is_online() {
                            // A will of another session: this one is still here.
                            theirs.status = me.status.clone();
                            theirs.status_message = me.status_message.clone();
                        }
                        onto = theirs;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Unexpected("UserInfo"))
    }

    /// Sets status and status message.
    pub async fn set_status(&self, status: &str, message: Option<&str>) -> Result<(), ClientError> {
        self.update_info(|u| {
            u.status = status.to_owned();
            if let Some(msg) = message {
                u.status_message = msg.to_owned();
            }
        })
        .await?;
        Ok(())
    }

    /// Goes online: status `online` (or `status`), advertising `direct` as the address for
    /// direct messages, and hands the server a last will (offline, next event count) to publish
    /// if this connection dies.
    pub async fn go_online(
        &self,
        status: &str,
        direct: Option<SocketAddr>,
    ) -> Result<(), ClientError> {
        self.go_online_publishing(status, direct, &[]).await
    }

    /// [`Self::go_online`], with extra UserInfo fields set in the same record (the encryption
    /// keys, [`e2e::E2e::published`]).
    pub async fn go_online_publishing(
        &self,
        status: &str,
        direct: Option<SocketAddr>,
        extra: &[(String, String)],
    ) -> Result<(), ClientError> {
        *self.direct_addr.lock().expect("lock") = direct;
        self.will_active.store(true, Ordering::Relaxed);
        self.update_info(|u| {
            u.status = status.to_owned();
            u.ip_addr = direct.map(|a| gossip_common::user_id::to_ipv6(a.ip()));
            u.port = direct.map(|a| a.port());
            e2e::publish_into(u, extra);
        })
        .await?;
        Ok(())
    }

    /// Re-sends the last will for the current record. Needed when another client of the same
    /// user published a newer record, which made the previous will stale.
    pub async fn refresh_last_will(&self) -> Result<(), ClientError> {
        let me = self.me().ok_or(ClientError::NotLoggedIn)?;
        self.send_last_will(&me).await
    }

    async fn send_last_will(&self, current: &Signed<UserInfo>) -> Result<(), ClientError> {
        let record = Signed::sign(offline_version(current), &self.key)?;
        let ec = record.event_count;
        self.request(m::LastWill { record }).await?;
        self.number_past(ec);
        Ok(())
    }

    /// Numbers this client's next records past `ec` (the last will of an earlier connection,
    /// which its server or the federation may still publish).
    pub fn number_past(&self, ec: EventCount) {
        let mut st = self.state.lock().expect("lock");
        if st.floor.is_none_or(|f| ec.is_newer_than(f)) {
            st.floor = Some(ec);
        }
    }

    /// The event count of the last will this client handed out (or was told to number past).
    pub fn will_floor(&self) -> Option<EventCount> {
        self.state.lock().expect("lock").floor
    }

    /// The servers this client's server knows, as client addresses (`host:port`).
    pub async fn server_list(&self) -> Result<Vec<String>, ClientError> {
        Ok(self
            .server_keys()
            .await?
            .into_iter()
            .map(|(s, _)| s)
            .collect())
    }

    /// Every server the connected one knows, with the identity key bound to it there (if
    /// any): the server is authenticated, so a key it vouches for may be pinned before the
    /// first connection to that server.
    pub async fn server_keys(&self) -> Result<Vec<(String, Option<PublicKey>)>, ClientError> {
        let answers = self.request(m::ReqServerList {}).await?;
        Ok(answers
            .into_iter()
            .filter_map(|a| match a.body {
                Body::ServerList(l) => Some(l.servers),
                _ => None,
            })
            .flatten()
            .map(|s| {
                let key = s.key.as_deref().and_then(|k| k.parse().ok());
                (format!("{}:{}", s.host, s.port), key)
            })
            .collect())
    }

    /// Clean logout: publishes the offline record itself (which makes the last will stale) and
    /// closes the connection.
    pub async fn logout(self) -> Result<(), ClientError> {
        self.will_active.store(false, Ordering::Relaxed);
        if let Some(me) = self.me() {
            if me.is_online() {
                let offline = offline_version(&me);
                self.update_info(|u| {
                    *u = offline.clone();
                })
                .await?;
            }
        }
        let _ = self
            .out
            .send(Message::new(
                Ipv6Addr::UNSPECIFIED,
                m::Disconnect {
                    reason: Some("logout".into()),
                },
            ))
            .await;
        Ok(())
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
        Ok(answers
            .into_iter()
            .filter_map(|m| match m.body {
                Body::UserInfo(u) => u.record.verify_self().is_ok().then_some(u.record),
                _ => None,
            })
            .collect())
    }

    /// Round trip to the server (keepalive or latency probe).
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = std::time::Instant::now();
        self.request(m::Ping {}).await?;
        Ok(start.elapsed())
    }

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

    /// Decrypts a relayed message ([`Event::Relayed`]) end to end. If that made the fallback
    /// key due for rotation ([`e2e::FALLBACK_ROTATION`]), the new one is published.
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

    /// Sends a signed chat message directly to a contact, at the address in their UserInfo.
    /// If they cannot be reached they are marked offline locally and an
    /// [`Event::Unreachable`] is emitted.
    pub async fn send_message(&self, to: UserId, text: &str) -> Result<(), ClientError> {
        let from = self.uid().ok_or(ClientError::NotLoggedIn)?;
        let target = {
            let state = self.state.lock().expect("lock");
            state.contacts.get(&to).cloned()
        };
        let target = match target {
            Some(t) => t,
            None => self
                .fetch_users(&[to])
                .await?
                .pop()
                .ok_or(ClientError::Unreachable {
                    uid: to,
                    reason: "unknown user".into(),
                })?,
        };
        let (Some(ip), Some(port)) = (target.ip_addr, target.port) else {
            return Err(ClientError::Unreachable {
                uid: to,
                reason: "no direct address (offline)".into(),
            });
        };
        let sent_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let record = Signed::sign(
            ChatMessage {
                from,
                to,
                sent_ms,
                text: text.to_owned(),
            },
            &self.key,
        )?;
        let addr = SocketAddr::new(gossip_common::user_id::to_canonical(ip), port);
        if let Err(reason) = direct::deliver(addr, record).await {
            self.state.lock().expect("lock").unreachable.insert(to);
            let _ = self.events_tx.send(Event::Unreachable(to)).await;
            return Err(ClientError::Unreachable { uid: to, reason });
        }
        Ok(())
    }

    /// Starts accepting direct messages on `bind` (port 0 picks one). Incoming messages are
    /// verified against the sender's key and appear as [`Event::Message`].
    pub async fn listen_direct(&self, bind: SocketAddr) -> Result<DirectListener, ClientError> {
        let uid = self.uid().ok_or(ClientError::NotLoggedIn)?;
        direct::listen(bind, uid, self.state_handle(), self.events_tx.clone())
            .await
            .map_err(|source| ClientError::Connect {
                addr: bind.to_string(),
                source,
            })
    }

    fn state_handle(&self) -> Arc<dyn direct::KeyLookup> {
        Arc::new(StateKeys(Arc::clone(&self.state)))
    }
}

struct StateKeys(Arc<Mutex<State>>);

impl direct::KeyLookup for StateKeys {
    fn key_of(&self, uid: UserId) -> Option<gossip_common::PublicKey> {
        self.0
            .lock()
            .expect("lock")
            .contacts
            .get(&uid)
            .map(|u| u.public_key)
    }
}

/// The offline twin of a record: same fields, status offline, no address, next event count.
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

fn offline_version(current: &UserInfo) -> UserInfo {
    let mut info = current.clone();
    info.status = STATUS_OFFLINE.to_owned();
    info.ip_addr = None;
    info.port = None;
    info.event_count = current.event_count.next();
    info
}

/// Takes in a pushed UserInfo. Never trusts the server's word: the record must verify, and
/// against the key already known for that user if there is one. Returns the record if it is
/// news (newer than what the client holds); own records, changed by another client of the
/// same user, are news too.
fn absorb_push(state: &Mutex<State>, record: Signed<UserInfo>) -> Option<Signed<UserInfo>> {
    let mut st = state.lock().expect("lock");
    let uid = record.user_id;
    if let Some(me) = st.me.as_ref().filter(|m| m.user_id == uid) {
        let news = me.public_key == record.public_key
            && record.event_count.is_newer_than(me.event_count)
            && (st.trust_pushes || record.verify_self().is_ok());
        if news {
            st.me = Some(record.clone());
        }
        return news.then_some(record);
    }
    let known = st.contacts.get(&uid);
    let key_ok = known.is_none_or(|c| c.public_key == record.public_key);
    let newer = known.is_none_or(|c| record.event_count.is_newer_than(c.event_count));
    if !key_ok || (!st.trust_pushes && record.verify_self().is_err()) {
        tracing::warn!(%uid, "pushed record fails verification; ignored");
        return None;
    }
    if !newer {
        return None;
    }
    st.unreachable.remove(&uid);
    st.contacts.insert(uid, record.clone());
    Some(record)
}

async fn route(
    msg: Message,
    pending: &Pending,
    state: &Mutex<State>,
    events: &mpsc::Sender<Event>,
    out: &mpsc::WeakSender<Message>,
    me_key: &Keypair,
) {
    if let Some(re) = msg.header.re {
        let waiter = pending.lock().expect("lock").get(&re).cloned();
        if let Some(waiter) = waiter {
            let _ = waiter.send(msg);
            return;
        }
    }
    match msg.body {
        Body::Ping(_) => {
            let pong = Message::new(Ipv6Addr::UNSPECIFIED, m::Pong {}).in_reply_to(msg.header.id);
            if let Some(out) = out.upgrade() {
                let _ = out.send(pong).await;
            }
        }
        Body::UserInfo(u) => {
            if let Some(record) = absorb_push(state, u.record) {
                let _ = events.send(Event::Presence(record)).await;
            }
        }
        Body::ServerMsg(s) => {
            let _ = events.send(Event::ServerMessage(s.text)).await;
        }
        Body::Error(e) => {
            let _ = events
                .send(Event::Error {
                    code: e.code,
                    text: e.text,
                })
                .await;
        }
        Body::Disconnect(d) => {
            let _ = events
                .send(Event::Disconnected(d.reason.unwrap_or_default()))
                .await;
        }
        Body::Relay(r) => {
            let fresh = {
                let mut st = state.lock().expect("lock");
                // Checked against the sender's key when it is a contact (the server checked
                // it against the bound key either way).
                let forged = st.contacts.get(&r.from).is_some_and(|c| {
                    r.sig.parse().map_or(true, |sig| {
                        c.public_key
                            .verify(Domain::Relay, &gossip_common::relay_bytes(&r), &sig)
                            .is_err()
                    })
                });
                let me = st.me.as_ref().map(|u| u.user_id);
                if forged || me.is_some_and(|me| me != r.to) {
                    tracing::warn!(id = %r.id, "relayed message refused: not for us or forged");
                    return;
                }
                let seen = st.seen_relays.contains(&r.id);
                if !seen {
                    st.seen_relays.push_back(r.id.clone());
                    if st.seen_relays.len() > SEEN_RELAYS {
                        st.seen_relays.pop_front();
                    }
                }
                !seen
            };
            let (id, from, to) = (r.id.clone(), r.from, r.to);
            if fresh {
                let request = r.request == Some(1);
                let _ = events
                    .send(Event::Relayed {
                        message: r,
                        request,
                    })
                    .await;
            }
            // Passed on (or a duplicate of one that was): the servers may drop it.
            let sig = me_key
                .sign(
                    Domain::Relay,
                    &gossip_common::delivered_bytes(&id, from, to),
                )
                .to_string();
            let ack = Message::new(Ipv6Addr::UNSPECIFIED, m::Delivered { id, from, to, sig });
            if let Some(out) = out.upgrade() {
                let _ = out.send(ack).await;
            }
        }
        Body::Delivered(d) => {
            let _ = events.send(Event::Delivered { id: d.id, to: d.to }).await;
        }
        other => tracing::debug!(msgtype = other.msgtype(), "unsolicited message ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

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
