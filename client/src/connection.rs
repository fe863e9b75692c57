//! Connecting: TCP, the Noise handshake (refusing a server that does not prove its pinned key),
//! picking the nearest of several servers, and the two tasks of a connection — the writer, and
//! the reader that routes every incoming message ([`route`]): replies to the request waiting for
//! them, everything else to the [`Events`] stream. Requests ([`GossipClient::request`]) and the
//! server queries that need no login live here too.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gossip_common::message::{self as m};
use gossip_common::secure::{self, Identity, Purpose};
use gossip_common::{Body, Domain, Keypair, Message, PublicKey, Signed, UserInfo, XmlFrameCodec};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::state::{State, SEEN_RELAYS};
use crate::{ClientError, Event, Events, GossipClient, Pins};

pub(crate) type Pending = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

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

    /// Sends a request and collects every message answering it, up to the final one.
    pub(crate) async fn request(&self, body: impl Into<Body>) -> Result<Vec<Message>, ClientError> {
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
        let answers = self.request(m::ReqServerList::default()).await?;
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

    /// Round trip to the server (keepalive or latency probe).
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = std::time::Instant::now();
        self.request(m::Ping {}).await?;
        Ok(start.elapsed())
    }
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
                if st.leave_relayed {
                    return; // not acknowledged: the servers keep it for a client that reads it
                }
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
