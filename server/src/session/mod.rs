//! The client door: one client connection on P — its Noise handshake and admission
//! ([`admission`]), the reader and writer ([`io`]), the login and registration ([`login`]), and
//! the requests of a logged-in session ([`requests`]), each handed to the service that owns it.
//!
//! Layers: the codec turns bytes into frames, `Message::decode` turns frames into typed
//! messages, and [`Session::handle`] routes them. Replies and pushes share one bounded queue to
//! a writer task, so a reply is never overtaken by a later push and a client that stops reading
//! is cut off instead of growing memory.
//!
//! Errors inside one message (malformed, bad signature, stale event count…) are answered with an
//! `error` and the session goes on; framing and I/O errors end the session. Whichever way a
//! session ends, its last will (if any, and if still newer than what is stored) is published.

mod admission;
mod io;
mod login;
mod requests;
#[cfg(test)]
mod tests;

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gossip_common::message as m;
use gossip_common::secure::{self, Purpose};
use gossip_common::{Body, ErrorCode, Message, PublicKey, Signed, UserId, UserInfo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::federation::Federation;
use crate::metrics::Metrics;
use crate::presence::{Outbound, Presence, SessionId};
use crate::records::Records;
use crate::registration::Registration;
use crate::relay::Relay;
use crate::server_keys::ServerKeys;
use crate::store::{Store, StoreError};
use crate::tasks::Tasks;
use crate::trace::Trace;
use crate::wills::LastWills;

pub(crate) use admission::Admission;
pub(crate) use requests::{SEARCH_RATE, SEARCH_TRACKED_USERS};

/// How client sessions run, from the configuration.
pub(crate) struct SessionSettings {
    /// The frame limit.
    pub(crate) max_frame: usize,
    /// A session silent this long is pinged.
    pub(crate) keepalive: Duration,
    /// A session silent this long (or not reading this long) is closed.
    pub(crate) idle_timeout: Duration,
    /// A connection must log in within this.
    pub(crate) login_deadline: Duration,
    /// Frames queued to one client before it counts as a slow consumer.
    pub(crate) outbound_queue: usize,
    /// What one client may send a second.
    pub(crate) inbound: crate::budget::InboundRate,
}

/// The client door and the services a client's requests go to.
pub(crate) struct ClientDoor {
    pub(crate) store: Arc<Store>,
    pub(crate) presence: Arc<Presence>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) records: Arc<Records>,
    pub(crate) wills: Arc<LastWills>,
    pub(crate) registration: Arc<Registration>,
    pub(crate) relay: Arc<Relay>,
    pub(crate) federation: Arc<Federation>,
    pub(crate) keys: Arc<ServerKeys>,
    pub(crate) trace: Option<Arc<Trace>>,
    pub(crate) settings: SessionSettings,
    pub(crate) admission: Admission,
    /// Directory searches per user (see [`requests::SEARCH_RATE`]).
    pub(crate) search_rate: parking_lot::Mutex<crate::ratelimit::Limiter<UserId>>,
    pub(crate) tasks: Tasks,
}

impl ClientDoor {
    /// This server's identity `host:port`, as logins sign it.
    fn identity(&self) -> String {
        crate::mst::id_string(self.federation.me())
    }
}

enum Auth {
    Anonymous,
    /// `authenticate` answered with this nonce; single use.
    Challenged {
        uid: UserId,
        nonce: String,
        /// When the login was asked for (for the login-duration histogram).
        since: std::time::Instant,
    },
    /// `register` granted this UserID to this key until `expires`.
    Registering {
        uid: UserId,
        key: PublicKey,
        expires: Instant,
    },
    LoggedIn {
        uid: UserId,
    },
}

struct Session {
    door: Arc<ClientDoor>,
    sid: SessionId,
    peer: SocketAddr,
    local_ip: Ipv6Addr,
    tx: mpsc::Sender<Outbound>,
    kill: CancellationToken,
    auth: Auth,
    last_will: Option<Signed<UserInfo>>,
    /// This connection's place among its address's connections that are not logged in;
    /// given up at login.
    anonymous: Option<admission::AnonymousSlot>,
    /// This connection's registration-lock holder: `host:port/<random 128 bits>`.
    holder: String,
}

/// Serves one client connection until it closes, fails, idles out or the server shuts down.
pub(crate) async fn serve(
    door: Arc<ClientDoor>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let sid = door.presence.new_session_id();
    let span = tracing::info_span!("client", %peer, sid);
    async move {
        tracing::debug!("connected");
        let local_ip = stream
            .local_addr()
            .map(|a| gossip_common::user_id::to_ipv6(a.ip()))
            .unwrap_or(Ipv6Addr::UNSPECIFIED);
        // The connection counts as anonymous from its first byte. Over the limit, the
        // handshake still runs (bounded by its timeout and `max_clients`) so that the refusal
        // is one the client can read.
        let slot = door.admission.take(peer.ip());
        let started = std::time::Instant::now();
        let handshake = tokio::select! {
            _ = shutdown.cancelled() => return,
            // Boxed: the handshake's state (a kilobyte and more) would otherwise be part of
            // every session task's size for the connection's whole life.
            h = Box::pin(secure::accept(stream, Purpose::Client, door.keys.noise(), false)) => h,
        };
        let secured = match handshake {
            Ok((secured, _)) => {
                crate::metrics::observe(&door.metrics.handshake_seconds.client, started);
                secured
            }
            Err(e) => {
                door.metrics.handshakes_failed.inc();
                tracing::info!(error = %e, "encryption handshake failed; closed");
                return;
            }
        };
        let (rd, wr) = secured.split_with(TcpStream::into_split);
        let (tx, rx) = mpsc::channel(door.settings.outbound_queue);
        let kill = CancellationToken::new();
        let tap = crate::trace::Tap::new(door.trace.as_ref(), peer, "client");
        let writer = door.tasks.spawn(io::write_loop(
            wr,
            rx,
            kill.clone(),
            tap,
            door.settings.idle_timeout,
            door.metrics.push_seconds.clone(),
        ));
        let mut session = Session {
            door: Arc::clone(&door),
            sid,
            peer,
            local_ip,
            tx,
            kill: kill.clone(),
            auth: Auth::Anonymous,
            last_will: None,
            anonymous: None,
            // Unguessable: lock answers and releases name their holder, and no peer may
            // release or answer for a registration it cannot name.
            holder: format!("{}/{:032x}", door.identity(), rand::random::<u128>()),
        };
        session.anonymous = slot;
        if session.anonymous.is_none() {
            tracing::info!("too many connections from this address without a login; refused");
            let text = format!(
                "more than {} connections from your address have not logged in; log in on those first",
                admission::ANONYMOUS_PER_ADDRESS
            );
            session.error(None, ErrorCode::ServerFull, text, None).await;
            drop(session);
            close(writer, io::CLOSE_DRAIN, &kill).await;
            return;
        }
        let live = door.admission.live();
        let reason = session.read_loop(rd, &shutdown).await;
        tracing::debug!(%reason, "session ending");
        Box::pin(session.finish()).await;
        drop(live);
        if reason == "server shutting down" {
            session
                .send(m::Disconnect {
                    reason: Some(reason.into()),
                })
                .await;
        }
        drop(session);
        // Let the writer drain what is queued (bounded by the idle timeout), then stop it.
        close(writer, door.settings.idle_timeout, &kill).await;
    }
    .instrument(span)
    .await
}

impl Session {
    fn encode(&self, body: impl Into<Body>, re: Option<u64>) -> Bytes {
        let body = body.into();
        self.door.metrics.messages_out.add(body.msgtype(), 1);
        Bytes::from(Message::new(self.local_ip, body).in_reply_to(re).to_xml())
    }

    async fn send(&self, body: impl Into<Body>) {
        self.reply(None, body).await;
    }

    async fn reply(&self, re: Option<u64>, body: impl Into<Body>) {
        // Waiting here applies back-pressure to this client's own requests only, and only for
        // as long as the idle timeout: a client that sends requests but never reads the
        // replies would otherwise hold this session (its read loop, its idle timer, a shutdown)
        // forever.
        let frame = self.encode(body, re);
        tokio::select! {
            _ = self.tx.send(frame.into()) => {}
            _ = self.kill.cancelled() => {}
            _ = tokio::time::sleep(self.door.settings.idle_timeout) => {
                tracing::info!("client does not read its replies; disconnecting");
                self.kill.cancel();
            }
        }
    }

    async fn error(
        &self,
        re: Option<u64>,
        code: ErrorCode,
        text: String,
        current: Option<gossip_common::EventCount>,
    ) {
        self.reply(
            re,
            m::Error {
                code,
                text,
                current: current.map(Into::into),
            },
        )
        .await;
    }

    /// Acknowledges a durable update, naming the event count now stored.
    async fn stored(&self, re: Option<u64>, current: gossip_common::EventCount) {
        let current = Some(current.into());
        self.reply(re, m::Ok { current }).await;
    }

    async fn store_error(&self, re: Option<u64>, e: StoreError) {
        let current = match &e {
            StoreError::Stale { current, .. } => Some(*current),
            _ => None,
        };
        tracing::info!(error = %e, "update refused");
        if matches!(e.code(), ErrorCode::BadSignature | ErrorCode::KeyMismatch) {
            self.door.metrics.signature_failures.inc();
        }
        self.error(re, e.code(), e.to_string(), current).await;
    }

    fn logged_in(&self) -> Option<UserId> {
        match self.auth {
            Auth::LoggedIn { uid } => Some(uid),
            _ => None,
        }
    }

    fn origin(&self) -> String {
        match self.logged_in() {
            Some(uid) => format!("client:{uid}/s{}", self.sid),
            None => format!("client:s{}", self.sid),
        }
    }

    async fn handle(&mut self, msg: Message) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow::{Break, Continue};
        let re = msg.header.id;
        match msg.body {
            Body::Ping(_) => self.reply(re, m::Pong {}).await,
            Body::Pong(_) => {}
            Body::Disconnect(_) => return Break(()),
            Body::Authenticate(a) => self.authenticate(re, a.uid).await,
            Body::ChallengeResponse(r) => self.challenge_response(re, r).await,
            Body::Register(r) => self.register(re, r.publickey).await,
            Body::NewUser(n) => self.new_user(re, n.record).await,
            other => {
                let Some(uid) = self.logged_in() else {
                    let text = format!("<{}> needs a logged-in session", other.msgtype());
                    self.error(re, ErrorCode::NotAuthenticated, text, None)
                        .await;
                    return Continue(());
                };
                self.handle_logged_in(re, uid, other).await;
            }
        }
        Continue(())
    }

    async fn handle_logged_in(&mut self, re: Option<u64>, uid: UserId, body: Body) {
        match body {
            Body::UserInfo(u) => self.update_user_info(re, uid, u.record).await,
            Body::ChangeCl(c) => self.change_contact_list(re, uid, c.record).await,
            Body::LastWill(w) => self.set_last_will(re, uid, w.record).await,
            Body::ReqUserInfo(r) => {
                for u in r.uids {
                    if let Some(record) = self.door.store.user(u) {
                        self.reply(re, m::UserInfoMsg { record }).await;
                    }
                }
                self.reply(re, m::Ok { current: None }).await;
            }
            Body::SearchUsers(q) => self.search_users(re, uid, q).await,
            Body::ReqContactList(_) => {
                self.send_contact_list(re, uid).await;
                self.reply(re, m::Ok { current: None }).await;
            }
            Body::Relay(r) => match self.door.relay.submit(uid, r).await {
                Ok(()) => self.reply(re, m::Ok { current: None }).await,
                Err((code, text)) => self.error(re, code, text, None).await,
            },
            Body::Delivered(d) => {
                if d.to != uid {
                    let text = "only the recipient says a message was delivered".to_owned();
                    return self.error(re, ErrorCode::NotAllowed, text, None).await;
                }
                self.door.relay.delivered(d, None);
                self.reply(re, m::Ok { current: None }).await;
            }
            Body::ReqServerList(_) => {
                // Every server this one knows (host and base port = client port), so a client
                // can fail over to another when this one goes away.
                // With the keys bound here, so a client can pin a key before it first connects
                // there (the same list a peer gets).
                let servers = self.door.federation.server_list();
                self.reply(re, m::ServerList { servers }).await;
            }
            other => {
                let text = format!("<{}> is not a client-to-server message", other.msgtype());
                self.error(re, ErrorCode::NotAllowed, text, None).await;
            }
        }
    }
}

/// Lets a session's writer drain for at most `drain`, then ends it, and returns only once it
/// has ended: its socket is closed when this returns, so the connection's place among
/// `max_clients` (held by the caller) counts a socket, not a session.
async fn close(mut writer: tokio::task::JoinHandle<()>, drain: Duration, kill: &CancellationToken) {
    if tokio::time::timeout(drain, &mut writer).await.is_err() {
        kill.cancel();
        // Stuck in a write the client never reads: abandoned with its socket.
        writer.abort();
        let _ = writer.await;
    }
    kill.cancel();
}

/// Refuses a connection when the server is full: one `error`, then close.
pub(crate) async fn refuse(mut stream: TcpStream, code: ErrorCode, text: String) {
    let frame = gossip_common::codec::encode_frame(m::Error {
        code,
        text,
        current: None,
    });
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        gossip_common::codec::write_frames(&mut stream, &[frame]),
    )
    .await;
    let _ = stream.shutdown().await;
}
