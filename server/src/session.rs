//! One client connection: login handshake, registration, updates, requests and pushes.
//!
//! Layers: the codec turns bytes into frames, `Message::decode` turns frames into typed
//! messages, and [`Session::handle`] acts on them. Replies and pushes share one bounded queue to
//! a writer task, so a reply is never overtaken by a later push and a client that stops reading
//! is cut off instead of growing memory.
//!
//! Errors inside one message (malformed, bad signature, stale event count…) are answered with an
//! `error` and the session goes on; framing and I/O errors end the session. Whichever way a
//! session ends, its last will (if any, and if still newer than what is stored) is published.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use gossip_common::message as m;
use gossip_common::secure::{self, Purpose, SecureReader, SecureWriter};
use gossip_common::{
    login_challenge_bytes, Body, Domain, ErrorCode, Message, PublicKey, Signed, UserId, UserInfo,
    XmlFrameCodec,
};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::presence::{SessionHandle, SessionId};
use crate::store::{Mode, StoreError};
use crate::Node;

enum Auth {
    Anonymous,
    /// `authenticate` answered with this nonce; single use.
    Challenged {
        uid: UserId,
        nonce: String,
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
    node: Arc<Node>,
    sid: SessionId,
    peer: SocketAddr,
    local_ip: Ipv6Addr,
    tx: mpsc::Sender<Bytes>,
    kill: CancellationToken,
    auth: Auth,
    last_will: Option<Signed<UserInfo>>,
    /// This connection's place among its address's connections that are not logged in;
    /// given up at login.
    anonymous: Option<AnonymousSlot>,
    /// This connection's registration-lock holder: `host:port/<random 128 bits>`.
    holder: String,
}

/// Connections from one address that have not logged in (a NAT's users each take one for the
/// milliseconds a login takes).
pub(crate) const ANONYMOUS_PER_ADDRESS: usize = 256;

/// A counted place among an address's anonymous connections; released when dropped.
struct AnonymousSlot {
    node: Arc<Node>,
    ip: std::net::IpAddr,
}

impl AnonymousSlot {
    fn take(node: &Arc<Node>, ip: std::net::IpAddr) -> Option<AnonymousSlot> {
        let mut map = node.anonymous_map().lock();
        let n = map.entry(ip).or_default();
        if *n >= ANONYMOUS_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AnonymousSlot {
            node: Arc::clone(node),
            ip,
        })
    }
}

impl Drop for AnonymousSlot {
    fn drop(&mut self) {
        let mut map = self.node.anonymous_map().lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Serves one client connection until it closes, fails, idles out or the server shuts down.
pub(crate) async fn serve(
    node: Arc<Node>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let sid = node.presence.new_session_id();
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
        let slot = AnonymousSlot::take(&node, peer.ip());
        let handshake = tokio::select! {
            _ = shutdown.cancelled() => return,
            // Boxed: the handshake's state (a kilobyte and more) would otherwise be part of
            // every session task's size for the connection's whole life.
            h = Box::pin(secure::accept(stream, Purpose::Client, node.keys.noise(), false)) => h,
        };
        let secured = match handshake {
            Ok((secured, _)) => secured,
            Err(e) => {
                node.metrics.handshakes_failed.inc();
                tracing::info!(error = %e, "encryption handshake failed; closed");
                return;
            }
        };
        let (rd, wr) = secured.split_with(TcpStream::into_split);
        let (tx, rx) = mpsc::channel(node.config.outbound_queue);
        let kill = CancellationToken::new();
        let tap = crate::trace::Tap::new(node.trace.as_ref(), peer, "client");
        let writer = node.tasks.spawn(write_loop(
            wr,
            rx,
            kill.clone(),
            tap,
            node.config.idle_timeout,
        ));
        let mut session = Session {
            node: Arc::clone(&node),
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
            holder: format!("{}/{:032x}", node.identity(), rand::random::<u128>()),
        };
        session.anonymous = slot;
        if session.anonymous.is_none() {
            tracing::info!("too many connections from this address without a login; refused");
            let text = format!(
                "more than {ANONYMOUS_PER_ADDRESS} connections from your address have not logged in; log in on those first"
            );
            session.error(None, ErrorCode::ServerFull, text, None).await;
            drop(session);
            let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
            kill.cancel();
            return;
        }
        node.sessions_live
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let reason = session.read_loop(rd, &shutdown).await;
        tracing::debug!(%reason, "session ending");
        Box::pin(session.finish()).await;
        node.sessions_live
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if reason == "server shutting down" {
            session
                .send(m::Disconnect {
                    reason: Some(reason.into()),
                })
                .await;
        }
        drop(session);
        // Let the writer drain what is queued (bounded by the idle timeout), then stop it.
        let _ = tokio::time::timeout(node.config.idle_timeout, writer).await;
        kill.cancel();
    }
    .instrument(span)
    .await
}

/// Drains the outbound queue into the socket: whatever is queued goes out in one vectored
/// write, straight from the shared frames. No write buffer is kept per connection (an idle
/// client costs no buffer memory, and a push encoded once is never copied per recipient).
async fn write_loop(
    mut wr: SecureWriter<OwnedWriteHalf>,
    mut rx: mpsc::Receiver<Bytes>,
    kill: CancellationToken,
    tap: Option<crate::trace::Tap>,
    stall: std::time::Duration,
) {
    /// Frames per write; more stay queued for the next one.
    const BATCH: usize = 32;
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let frame = tokio::select! {
            _ = kill.cancelled() => break,
            f = rx.recv() => match f { Some(f) => f, None => break },
        };
        batch.push(frame);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        if let Some(tap) = &tap {
            for f in &batch {
                tap.record(crate::trace::Dir::Out, f);
            }
        }
        // A write that makes no progress for `stall` (a client that stopped reading) ends the
        // connection; the kill wakes the session's read loop too.
        let written = tokio::select! {
            _ = kill.cancelled() => break,
            w = tokio::time::timeout(stall, write_frames(&mut wr, &batch)) => {
                w.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            }
        };
        // Dropped, not cleared: an idle connection holds no batch memory.
        batch = Vec::new();
        if written.is_err() {
            kill.cancel();
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// Writes `frames`, each followed by a newline, with as few `writev` calls as the socket allows.
pub(crate) async fn write_frames(
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    frames: &[Bytes],
) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(frames.len() * 2);
    for f in frames {
        slices.push(std::io::IoSlice::new(f));
        slices.push(std::io::IoSlice::new(b"\n"));
    }
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let n = wr.write_vectored(bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut bufs, n);
    }
    // An encrypted stream holds what the socket did not take at once until flushed.
    wr.flush().await
}

impl Session {
    async fn read_loop(
        &mut self,
        rd: SecureReader<tokio::net::tcp::OwnedReadHalf>,
        shutdown: &CancellationToken,
    ) -> &'static str {
        let cfg = &self.node.config;
        let (keepalive, idle) = (cfg.keepalive, cfg.idle_timeout);
        let mut frames = FramedRead::with_capacity(rd, XmlFrameCodec::new(cfg.max_frame), 1024);
        let mut last_rx = Instant::now();
        let mut pinged = false;
        let login_deadline = cfg.login_deadline;
        let login_by = Instant::now() + login_deadline;
        loop {
            let ping_at = last_rx + keepalive;
            let anonymous = self.logged_in().is_none();
            tokio::select! {
                _ = shutdown.cancelled() => return "server shutting down",
                _ = tokio::time::sleep_until(login_by), if anonymous => {
                    tracing::info!(?login_deadline, "no login in time; closing");
                    let text = format!("log in within {:.0} s of connecting", login_deadline.as_secs_f64());
                    self.error(None, ErrorCode::NotAuthenticated, text, None).await;
                    return "no login in time";
                }
                _ = self.kill.cancelled() => return "disconnected (slow consumer or write error)",
                _ = tokio::time::sleep_until(ping_at), if !pinged => {
                    pinged = true;
                    self.send(m::Ping {}).await;
                }
                _ = tokio::time::sleep_until(last_rx + idle) => {
                    tracing::info!(idle = ?idle, "client silent too long; treating it as gone");
                    return "idle timeout";
                }
                item = frames.next() => {
                    last_rx = Instant::now();
                    pinged = false;
                    match item {
                        None => return "connection closed by client",
                        Some(Err(e)) => {
                            tracing::info!(error = %e, "fatal protocol error");
                            self.error(None, e.code(), e.to_string(), None).await;
                            return "fatal protocol error";
                        }
                        Some(Ok(Err(e))) => {
                            tracing::info!(error = %e, "frame refused");
                            self.error(None, e.code(), e.to_string(), None).await;
                        }
                        Some(Ok(Ok(frame))) => {
                            if let Some(t) = &self.node.trace {
                                t.record(crate::trace::Dir::In, self.peer, "client", &frame);
                            }
                            match Message::decode(&frame) {
                                Ok(msg) => {
                                    tracing::trace!(msgtype = msg.msgtype(), "received");
                                    self.node.metrics.messages_in.add(msg.msgtype(), 1);
                                    // Boxed: handling a message needs a large future
                                    // (store writes, registration locks); boxing it keeps
                                    // that memory out of every idle connection's task.
                                    if Box::pin(self.handle(msg)).await.is_break() {
                                        return "client disconnected";
                                    }
                                    // Silence is counted while reading: a request that took
                                    // long (a registration waiting on the network lock) is
                                    // not the client's silence.
                                    last_rx = Instant::now();
                                }
                                Err(e) => {
                                    tracing::info!(error = %e, "message refused");
                                    self.error(None, e.code(), e.to_string(), None).await;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn encode(&self, body: impl Into<Body>, re: Option<u64>) -> Bytes {
        let body = body.into();
        self.node.metrics.messages_out.add(body.msgtype(), 1);
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
            _ = self.tx.send(frame) => {}
            _ = self.kill.cancelled() => {}
            _ = tokio::time::sleep(self.node.config.idle_timeout) => {
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
            self.node.metrics.signature_failures.inc();
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
                    if let Some(record) = self.node.store.user(u) {
                        self.reply(re, m::UserInfoMsg { record }).await;
                    }
                }
                self.reply(re, m::Ok { current: None }).await;
            }
            Body::ReqContactList(_) => {
                self.send_contact_list(re, uid).await;
                self.reply(re, m::Ok { current: None }).await;
            }
            Body::Relay(r) => match self.node.relay_from_client(uid, r).await {
                Ok(()) => self.reply(re, m::Ok { current: None }).await,
                Err((code, text)) => self.error(re, code, text, None).await,
            },
            Body::Delivered(d) => {
                if d.to != uid {
                    let text = "only the recipient says a message was delivered".to_owned();
                    return self.error(re, ErrorCode::NotAllowed, text, None).await;
                }
                self.node.relay_delivered(d, None);
                self.reply(re, m::Ok { current: None }).await;
            }
            Body::ReqServerList(_) => {
                // Every server this one knows (host and base port = client port), so a client
                // can fail over to another when this one goes away.
                let servers = self
                    .node
                    .federation
                    .status()
                    .servers
                    .iter()
                    .filter_map(|s| crate::config::parse_server(s).ok())
                    .map(|(host, port)| {
                        // With the key bound here, so a client can pin it before it first
                        // connects there.
                        let key = self.node.federation.key_of(&(host.clone(), port));
                        let key = if (host.clone(), port) == self.node.identity_key() {
                            Some(self.node.keys.public())
                        } else {
                            key
                        };
                        m::ServerAddr {
                            host,
                            port,
                            key: key.map(|k| k.to_string()),
                        }
                    })
                    .collect();
                self.reply(re, m::ServerList { servers }).await;
            }
            other => {
                let text = format!("<{}> is not a client-to-server message", other.msgtype());
                self.error(re, ErrorCode::NotAllowed, text, None).await;
            }
        }
    }

    async fn authenticate(&mut self, re: Option<u64>, uid: UserId) {
        if let Some(me) = self.logged_in() {
            let text = format!("already logged in as {me}; open another connection for {uid}");
            return self.error(re, ErrorCode::NotAllowed, text, None).await;
        }
        if !self.node.store.contains_user(uid) {
            self.auth = Auth::Anonymous;
            let text = format!("no user {uid} on this server");
            return self.error(re, ErrorCode::UnknownUser, text, None).await;
        }
        let nonce = hex::encode(rand::random::<[u8; 32]>());
        self.auth = Auth::Challenged {
            uid,
            nonce: nonce.clone(),
        };
        let server = self.node.identity();
        self.reply(re, m::Challenge { nonce, server }).await;
    }

    async fn challenge_response(&mut self, re: Option<u64>, r: m::ChallengeResponse) {
        if let Some(me) = self.logged_in() {
            // Leaves the session as it is: resetting it here would leave it registered for
            // presence with no one to unregister it or fire its will.
            let text = format!("already logged in as {me}");
            return self.error(re, ErrorCode::NotAllowed, text, None).await;
        }
        // Taking the challenge out makes the nonce single-use: a replayed response finds none.
        let Auth::Challenged { uid, nonce } = std::mem::replace(&mut self.auth, Auth::Anonymous)
        else {
            let text = "no login challenge outstanding (replayed or out-of-order response)";
            return self
                .error(re, ErrorCode::AuthFailed, text.into(), None)
                .await;
        };
        let key = self.node.store.public_key(uid);
        let signed = login_challenge_bytes(&nonce, &self.node.identity(), uid);
        let ok = r.uid == uid
            && key.is_some_and(|k| k.verify(Domain::Login, &signed, &r.signature).is_ok());
        if !ok {
            self.node.metrics.auth_failures.inc();
            tracing::info!(%uid, "login refused: bad challenge response");
            let text = format!("challenge response for {uid} does not verify");
            return self.error(re, ErrorCode::AuthFailed, text, None).await;
        }
        self.login(re, uid).await;
    }

    /// Marks the session logged in and sends the spec's handshake: own UserInfo, then the
    /// contact list with every known contact's UserInfo, then `ok`.
    async fn login(&mut self, re: Option<u64>, uid: UserId) {
        self.anonymous = None;
        // An outstanding will of this user (from a session on a server that died and is not yet
        // judged dead, or another device's) may still be published: the login's `ok` carries
        // its event count, and the client numbers its next records past it, so a will and a
        // new record never share a count (docs/presence.md).
        let will_floor = self.node.wills.peek(uid);
        self.auth = Auth::LoggedIn { uid };
        self.node.metrics.logins.inc();
        tracing::info!(%uid, "logged in");
        let contacts = self
            .node
            .store
            .contact_list(uid)
            .map(|cl| cl.contacts.clone())
            .unwrap_or_default();
        // Register before sending the snapshot so no change slips between the two.
        self.node.presence.register(
            self.sid,
            SessionHandle {
                uid,
                tx: self.tx.clone(),
                kill: self.kill.clone(),
                ip: self.peer.ip(),
            },
            contacts,
        );
        if let Some(record) = self.node.store.user(uid) {
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
        // Messages that waited for this user, wherever they were sent.
        for r in self.node.mailbox.for_recipient(uid) {
            let r = self.node.for_recipient(r);
            self.send(r).await;
        }
        // And the deliveries of what this user sent while they were away.
        for d in self.node.mailbox.take_receipts(uid) {
            self.send(d).await;
        }
    }

    /// Sends `contactlist`, split over several messages if the records would not fit one frame.
    async fn send_contact_list(&self, re: Option<u64>, uid: UserId) {
        let own = self.node.store.contact_list(uid);
        let records: Vec<Signed<UserInfo>> = own
            .as_ref()
            .map(|cl| {
                cl.contacts
                    .iter()
                    .filter_map(|c| self.node.store.user(*c))
                    .collect()
            })
            .unwrap_or_default();
        // Escaping grows a record by up to ~2.7x (many short elements); keep inside the limit.
        let budget = self.node.config.max_frame * 3 / 4;
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

    async fn register(&mut self, re: Option<u64>, key: PublicKey) {
        if self.logged_in().is_some() {
            let text = "already logged in".to_owned();
            return self.error(re, ErrorCode::NotAllowed, text, None).await;
        }
        let wait = self
            .node
            .register_rate
            .lock()
            .take(&self.peer.ip(), tokio::time::Instant::now());
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
            self.node.release_uid(uid, &holder);
            self.auth = Auth::Anonymous;
        }
        // The address as the server sees it, never the `ipaddr` the client claims.
        match self.node.reserve_uid(self.peer.ip(), &holder).await {
            Some(uid) => {
                tracing::info!(%uid, "UserID reserved for registration");
                self.auth = Auth::Registering {
                    uid,
                    key,
                    expires: Instant::now() + self.node.config.uid_lock,
                };
                let expires_s = self.node.config.uid_lock.as_secs();
                self.reply(re, m::UserIdGrant { uid, expires_s }).await;
            }
            None => {
                let text = "no free UserID could be reserved; try again".to_owned();
                self.error(re, ErrorCode::UidTaken, text, None).await;
            }
        }
    }

    async fn new_user(&mut self, re: Option<u64>, record: Signed<UserInfo>) {
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
        let holder = self.holder.clone();
        let result = self
            .node
            .store
            .apply_user_info(record, Mode::Create, &self.origin())
            .await;
        self.auth = Auth::Anonymous;
        match result {
            Ok(applied) => {
                self.node.metrics.registrations.inc();
                tracing::info!(%uid, "registered");
                // The `newuser` goes out before the `unlockUID`, over the same links in the
                // same order: no server can grant the UserID again in between.
                self.node.user_created(&applied.record, Some(self.sid));
                self.node.release_uid(uid, &holder);
                self.login(re, uid).await;
            }
            Err(e) => {
                self.node.release_uid(uid, &holder);
                self.store_error(re, e).await
            }
        }
    }

    async fn update_user_info(&mut self, re: Option<u64>, uid: UserId, record: Signed<UserInfo>) {
        if record.user_id != uid {
            let text = format!(
                "you are logged in as {uid} and cannot update {}",
                record.user_id
            );
            return self.error(re, ErrorCode::NotAllowed, text, None).await;
        }
        // Contacts and peers get the change as soon as it is verified; the client's `ok`
        // waits for the disk (see `Store::apply_user_info_then`).
        let (node, sid) = (&self.node, self.sid);
        match node
            .store
            .apply_user_info_then(record, Mode::Update, &self.origin(), |r| {
                node.user_changed(r, Some(sid))
            })
            .await
        {
            Ok(applied) => self.stored(re, applied.record.event_count).await,
            Err(e) => self.store_error(re, e).await,
        }
    }

    async fn change_contact_list(
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
            .node
            .store
            .apply_contact_list(record, &self.origin())
            .await
        {
            Ok(applied) => {
                let new = &applied.record.contacts;
                self.node.list_changed_from(&applied.record, None);
                // Tell the owner's sessions about contacts they did not have before. This
                // session waits for room in its own queue (hundreds of new contacts at once
                // must not count as a slow consumer); its other sessions get them as pushes.
                let old: std::collections::HashSet<UserId> = applied
                    .previous
                    .map(|p| p.contacts.iter().copied().collect())
                    .unwrap_or_default();
                for c in new.iter().filter(|c| !old.contains(c)) {
                    if let Some(record) = self.node.store.user(*c) {
                        let frame = self.encode(m::UserInfoMsg { record }, None);
                        self.node.presence.send_to_user(uid, Some(self.sid), &frame);
                        if self.tx.send(frame).await.is_err() {
                            return;
                        }
                    }
                }
                self.stored(re, applied.record.event_count).await;
            }
            Err(e) => self.store_error(re, e).await,
        }
    }

    async fn set_last_will(&mut self, re: Option<u64>, uid: UserId, record: Signed<UserInfo>) {
        let key = self.node.store.public_key(uid);
        let valid =
            record.user_id == uid && key == Some(record.public_key) && record.verify_self().is_ok();
        if !valid {
            let text = "last will must be your own UserInfo, signed with your key".to_owned();
            return self.error(re, ErrorCode::BadSignature, text, None).await;
        }
        // Replicated, so that the others publish it if this server dies.
        self.node
            .hold_will(self.node.identity_key(), record.clone(), None);
        self.last_will = Some(record);
        self.reply(re, m::Ok { current: None }).await;
    }

    /// Cleans up after the connection: leaves the presence registry and publishes the last will
    /// if it is still newer than the stored record (a clean logout that already published an
    /// offline status makes it stale, and it is dropped).
    async fn finish(&mut self) {
        if let Auth::Registering { uid, .. } = self.auth {
            // The connection that asked for the reservation is gone: free the UserID now, not
            // when the lock expires.
            let holder = self.holder.clone();
            self.node.release_uid(uid, &holder);
            tracing::info!(%uid, "registration abandoned; UserID released");
            return;
        }
        let Some(uid) = self.logged_in() else { return };
        self.node.presence.unregister(self.sid);
        if let Some(will) = self.last_will.take() {
            match self
                .node
                .store
                .apply_user_info(will, Mode::Update, &format!("lastwill:{uid}/s{}", self.sid))
                .await
            {
                Ok(applied) => {
                    tracing::info!(%uid, status = %applied.record.status, "last will published");
                    self.node.metrics.last_wills.inc();
                    self.node.user_changed(&applied.record, None);
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

/// Refuses a connection when the server is full: one `error`, then close.
pub(crate) async fn refuse(mut stream: TcpStream, code: ErrorCode, text: String) {
    let msg = Message::new(
        Ipv6Addr::UNSPECIFIED,
        m::Error {
            code,
            text,
            current: None,
        },
    );
    let mut bytes = msg.to_xml().into_bytes();
    bytes.push(b'\n');
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&bytes)).await;
    let _ = stream.shutdown().await;
}
