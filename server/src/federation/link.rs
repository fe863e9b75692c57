//! One server link: the `serverID` handshake, duplicate-link resolution, registration in the
//! federation's link table, the reader that dispatches each message to its owner (membership,
//! locks, replication), and the writer with its two bounded queues and the lab delay line.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use gossip_common::message as m;
use gossip_common::secure::{self, Purpose};
use gossip_common::{Body, Message, XmlFrameCodec};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::dial::LinkEnd;
use super::mailsync;
use super::replication::{self, SyncIn, SyncStep};
use super::resync::{self, Resync};
use super::uid_lock::LockReply;
use super::{encode, LOCK_TIMEOUT};
use crate::mst::{key_string, ServerKey};
use crate::Node;

/// A link's lock-request budget (one bucket per link).
pub(super) type LockRate = crate::ratelimit::Limiter<()>;

/// Lock requests one link may bring: a burst of 100, then 20 a second (a registration costs
/// one per link it crosses).
const LOCKS_PER_LINK: crate::ratelimit::Rate = crate::ratelimit::Rate {
    burst: 100.0,
    per_second: 20.0,
};

/// Link-ups one server key may make: a burst of 60, then two a second. Every link-up costs a
/// resync, the rows and the server list, so a peer that reconnects in a loop is held to this;
/// honest links flap far less (a refused one backs off), and the simulator's chaos runs, which
/// cut, heal, crash and restart every few seconds, stay well inside it.
pub(super) const LINKS_PER_KEY: crate::ratelimit::Rate = crate::ratelimit::Rate {
    burst: 60.0,
    per_second: 2.0,
};

/// Frames queued to one peer before the link counts as stuck and is dropped.
const LINK_QUEUE: usize = 4096;
pub(super) struct Link {
    pub(super) id: u64,
    /// The peer's address as seen on this connection (blacklist entries drop matching links).
    pub(super) addr: SocketAddr,
    /// When the handshake completed: a dead mark older than the link is not trusted.
    pub(super) up_at: Instant,
    /// The identity key the peer proved in the handshake.
    pub(super) key: gossip_common::PublicKey,
    /// Who opened it; decides which of two simultaneous links survives.
    pub(super) opened_by: ServerKey,
    /// Control and propagation: never waited on (a link whose queue is full is cut).
    pub(super) tx: mpsc::Sender<(Instant, Bytes)>,
    /// Bulk sync traffic (event-count lists, `changedEntries`): senders wait for room. A queue
    /// of its own, written after the control queue, so a large sync can neither delay nor
    /// overflow the control traffic (which would cut the link and restart the sync).
    pub(super) bulk: mpsc::Sender<(Instant, Bytes)>,
    pub(super) kill: CancellationToken,
}

/// The receiving end of a link queue: frames with the time they were queued.
pub(super) type LinkQueue = mpsc::Receiver<(Instant, Bytes)>;

/// Frames a link's bulk queue holds (each at most one frame limit, 64 KiB by default).
const BULK_QUEUE: usize = 16;

/// The server list with the keys bound here, as sent to peers.
fn server_list(fed: &super::Federation) -> Vec<m::ServerAddr> {
    let me = fed.signer.public();
    let st = fed.state.lock();
    st.members
        .servers()
        .iter()
        .map(|s| m::ServerAddr {
            host: s.0.clone(),
            port: s.1,
            key: if *s == fed.me {
                Some(&me)
            } else {
                st.keys.key_of(s)
            }
            .map(|k| k.to_string()),
        })
        .collect()
}

/// Tells a peer why its link is refused (one `error`, flushed) before the link closes.
async fn refuse_link(wr: &mut (impl tokio::io::AsyncWrite + Unpin), text: &str) {
    let mut frame = encode(m::Error {
        code: gossip_common::ErrorCode::NotAllowed,
        text: text.to_owned(),
        current: None,
    })
    .to_vec();
    frame.push(b'\n');
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        wr.write_all(&frame).await?;
        wr.shutdown().await
    })
    .await;
}

/// Runs one server link (`expect` = the peer we dialled, `None` for an accepted link).
pub(super) async fn run_link(
    node: Arc<Node>,
    stream: super::transport::Conn,
    expect: Option<ServerKey>,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> LinkEnd {
    // The encrypted channel first: whoever dialled initiates, and both ends must prove an
    // identity key.
    let noise = node.keys.noise();
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return LinkEnd::NotUp("shutting down"),
        h = async {
            if expect.is_some() {
                Box::pin(secure::connect(stream, Purpose::Federation, noise)).await.map(|(s, k)| (s, Some(k)))
            } else {
                Box::pin(secure::accept(stream, Purpose::Federation, noise, true)).await
            }
        } => h,
    };
    let (stream, peer_key) = match handshake {
        Ok((s, Some(k))) => (s, k),
        Ok((_, None)) => return LinkEnd::NotUp("no identity shown"),
        Err(e) => {
            node.metrics.handshakes_failed.inc();
            tracing::info!(%addr, error = %e, "server link refused: encryption handshake failed");
            return LinkEnd::NotUp("encryption handshake failed");
        }
    };
    let (rd, mut wr) = stream.split_with(tokio::io::split);
    let fed = &node.federation;
    let mut frames = FramedRead::new(rd, XmlFrameCodec::new(node.config.max_frame));
    // Handshake: serverID first, both ways.
    let hello = encode(m::ServerIdMsg {
        host: fed.me.0.clone(),
        port: fed.me.1,
        sync: Some(
            [
                (node.config.sync == crate::config::SyncMethod::Range).then_some(resync::OFFER),
                Some(mailsync::OFFER),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" "),
        ),
    });
    let mut hello = hello.to_vec();
    hello.push(b'\n');
    if wr.write_all(&hello).await.is_err() || wr.flush().await.is_err() {
        return LinkEnd::NotUp("closed before the handshake");
    }
    let first = tokio::select! {
        _ = shutdown.cancelled() => return LinkEnd::NotUp("shutting down"),
        first = tokio::time::timeout(Duration::from_secs(10), frames.next()) => first,
    };
    let (peer, peer_offers_range, peer_offers_mailbox): (ServerKey, bool, bool) = match first {
        Ok(Some(Ok(Ok(frame)))) => match Message::decode(&frame) {
            Ok(Message {
                body: Body::ServerId(id),
                ..
            }) => (
                (id.host, id.port),
                resync::offers_range(id.sync.as_deref()),
                mailsync::offered(id.sync.as_deref()),
            ),
            _ => {
                tracing::info!(%addr, "server link refused: first message was not serverID");
                refuse_link(
                    &mut wr,
                    "the first message on a server link must be serverID",
                )
                .await;
                return LinkEnd::NotUp("first message was not serverID");
            }
        },
        Err(_) => return LinkEnd::NotUp("no serverID within 10 s"),
        Ok(_) => return LinkEnd::NotUp("closed before its serverID"),
    };
    if fed.state.lock().members.is_deleted(&peer) {
        tracing::info!(%addr, peer = %key_string(&peer), "server link refused: deleted by an admin");
        return LinkEnd::NotUp("deleted by an admin");
    }
    if peer == fed.me || expect.as_ref().is_some_and(|e| *e != peer) {
        tracing::warn!(%addr, peer = %key_string(&peer), "server link refused: unexpected identity");
        return LinkEnd::NotUp("unexpected identity");
    }
    if fed
        .link_rate
        .lock()
        .take(&peer_key, Instant::now())
        .is_err()
    {
        tracing::warn!(%addr, peer = %key_string(&peer), "server link refused: too many links from this key");
        refuse_link(&mut wr, "too many links from your key; wait a few seconds").await;
        return LinkEnd::NotUp("too many links from its key");
    }
    let verdict = fed.claim_key(&peer, &peer_key);
    if !verdict.accepted() {
        node.metrics.refused_keys.inc();
        tracing::warn!(%addr, peer = %key_string(&peer), key = %peer_key, why = verdict.why(), "server link refused for its key");
        refuse_link(
            &mut wr,
            &format!(
                "{} refuses this link: {}",
                key_string(&fed.me),
                verdict.why()
            ),
        )
        .await;
        return LinkEnd::NotUp("its key is refused");
    }
    let span = tracing::info_span!("link", peer = %key_string(&peer));
    let node = Arc::clone(&node);
    async move {
        let fed = &node.federation;
        let opened_by = if expect.is_some() { fed.me.clone() } else { peer.clone() };
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE);
        let kill = CancellationToken::new();
        let id = fed.next_link.fetch_add(1, Ordering::Relaxed);
        // Register, resolving a simultaneous link from the other side deterministically.
        {
            let mut st = fed.state.lock();
            let winner = fed.me.clone().min(peer.clone());
            if let Some(existing) = st.links.get(&peer) {
                if existing.opened_by == winner || opened_by != winner {
                    tracing::debug!("duplicate link closed");
                    // A link to the peer is up: this attempt did its job.
                    return LinkEnd::WasUp;
                }
                existing.kill.cancel();
            }
            st.links.insert(peer.clone(), Link { id, addr, key: peer_key, up_at: Instant::now(), opened_by, tx: tx.clone(), bulk: bulk.clone(), kill: kill.clone() });
            st.connecting.remove(&peer);
            st.backoff.remove(&peer);
        }
        // A live link proves the peer reachable: if our row marks it dead, re-probe it now.
        fed.revive_now.notify_one();
        let learned = fed.add_servers([peer.clone()]);
        if !learned.is_empty() {
            fed.flood(&encode(m::AddServer { host: peer.0.clone(), port: peer.1, key: Some(peer_key.to_string()) }), Some(&peer));
        }
        tracing::info!("server link up");
        let delay = node.config.lab.to(&key_string(&peer));
        let tap = crate::trace::Tap::new(node.trace.as_ref(), addr, "server");
        let writer = node.tasks.spawn(link_writer(wr, (rx, bulk_rx), delay, kill.clone(), tap, Arc::clone(&node)));
        // Initial exchange: servers, every known row, and our event counts for sync.
        let now = Instant::now();
        let servers = server_list(fed);
        let mut initial = vec![encode(m::ServerList { servers })];
        initial.extend(fed.row_frames());
        for frame in initial {
            if tx.send((now, frame)).await.is_err() {
                break;
            }
        }
        // The resync: a range reconciliation (the smaller identity opens it) if both ends offer
        // one, else our event counts. Either goes by the bulk queue.
        let range = (node.config.sync == crate::config::SyncMethod::Range && peer_offers_range)
            .then(|| fed.me < peer);
        let mut resync = Resync::start(&node, range, bulk.clone());
        // The undelivered messages a peer that was away lacks (`mailsync`).
        mailsync::start(&node, peer_offers_mailbox, &bulk);
        let mut mail = mailsync::MailSync::default();
        // The last wills of this server's sessions, so a peer that was away holds them too.
        {
            let (tasks, node, bulk) = (node.tasks.clone(), Arc::clone(&node), bulk.clone());
            tasks.spawn(async move {
                let me = node.identity_key();
                for record in node.wills.of_home(&me) {
                    let frame = encode(m::HeldWill { host: me.0.clone(), port: me.1, record });
                    if bulk.send((Instant::now(), frame)).await.is_err() {
                        break;
                    }
                }
            });
        }
        let mut sync = SyncIn::new(bulk);
        let mut lock_rate = LockRate::new(LOCKS_PER_LINK, 1);
        let idle = node.config.idle_timeout.max(Duration::from_secs(10));
        let mut last_rx = Instant::now();
        let mut pinged = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = tx.try_send((Instant::now(), encode(m::Disconnect { reason: Some("server shutting down".into()) })));
                    break;
                }
                _ = kill.cancelled() => break,
                _ = tokio::time::sleep_until(last_rx + idle / 3), if !pinged => {
                    pinged = true;
                    let _ = tx.try_send((Instant::now(), encode(m::Ping {})));
                }
                _ = tokio::time::sleep_until(last_rx + idle) => {
                    tracing::info!("server link silent too long; closing");
                    break;
                }
                item = frames.next() => {
                    last_rx = Instant::now();
                    pinged = false;
                    let frame = match item {
                        None => break,
                        Some(Err(e)) => { tracing::info!(error = %e, "server link framing error"); break; }
                        Some(Ok(Err(e))) => { tracing::info!(error = %e, "frame from peer refused"); continue; }
                        Some(Ok(Ok(f))) => f,
                    };
                    node.metrics.link_bytes_in.add(frame.len() as u64 + 1);
                    if resync::is_sync_frame(&frame) {
                        node.metrics.sync_bytes_in.add(frame.len() as u64 + 1);
                    }
                    if let Some(t) = &node.trace {
                        t.record(crate::trace::Dir::In, addr, "server", &frame);
                    }
                    if replication::is_changed_entries(&frame) {
                        // Bulk sync data is decoded, verified and stored by a task of its own
                        // (bounded by `in_flight`), so several batches are worked on at once,
                        // on every core the node has, while this reader goes on reading.
                        let Ok(slot) = Arc::clone(&sync.in_flight).acquire_owned().await else { break };
                        node.tasks.spawn(replication::apply_changed_entries(Arc::clone(&node), peer.clone(), frame, slot));
                        continue;
                    }
                    match Message::decode(&frame) {
                        Ok(msg) => {
                            node.metrics.messages_in.add(msg.msgtype(), 1);
                            if handle_peer(&node, &peer, &tx, (&mut sync, &mut resync, &mut lock_rate, &mut mail), msg).await.is_break() {
                                break;
                            }
                        }
                        Err(e) => tracing::info!(error = %e, "message from peer refused"),
                    }
                }
            }
        }
        kill.cancel();
        // The writer delivers a queued goodbye; a stalled peer gets little time at shutdown.
        let linger = if shutdown.is_cancelled() { Duration::from_millis(300) } else { Duration::from_secs(2) };
        let _ = tokio::time::timeout(linger, writer).await;
        {
            let mut st = fed.state.lock();
            if st.links.get(&peer).is_some_and(|l| l.id == id) {
                st.links.remove(&peer);
            }
        }
        tracing::info!("server link down");
        fed.link_lost_for_locks(&peer);
        fed.changed.notify_one();
        fed.probe_now.notify_one();
        LinkEnd::WasUp
    }
    .instrument(span)
    .await
}

/// Writes queued frames, each no earlier than its enqueue time plus the lab delay (a delay
/// line: constant delay, order kept).
pub(super) async fn link_writer(
    wr: secure::SecureWriter<tokio::io::WriteHalf<super::transport::Conn>>,
    (mut rx, mut bulk): (LinkQueue, LinkQueue),
    delay: Duration,
    kill: CancellationToken,
    tap: Option<crate::trace::Tap>,
    node: Arc<Node>,
) {
    let mut wr = tokio::io::BufWriter::with_capacity(64 * 1024, wr);
    let stall = node.config.idle_timeout.max(Duration::from_secs(10));
    let trace = |frame: &Bytes| {
        node.metrics.link_bytes_out.add(frame.len() as u64 + 1);
        if resync::is_sync_frame(frame) {
            node.metrics.sync_bytes_out.add(frame.len() as u64 + 1);
        }
        if let Some(tap) = &tap {
            tap.record(crate::trace::Dir::Out, frame);
        }
    };
    let mut bulk_open = true;
    loop {
        let (at, frame) = tokio::select! {
            biased;
            _ = kill.cancelled() => break,
            f = rx.recv() => match f { Some(f) => f, None => break },
            f = bulk.recv(), if bulk_open => match f {
                Some(f) => f,
                None => { bulk_open = false; continue }
            },
        };
        if !delay.is_zero() {
            lab_sleep_until(&node, at + delay).await;
        }
        trace(&frame);
        let batch = async {
            let mut ok = wr.write_all(&frame).await.is_ok() && wr.write_all(b"\n").await.is_ok();
            while ok {
                // Control frames first; bulk frames only when no control frame waits.
                match rx.try_recv().or_else(|_| bulk.try_recv()) {
                    Ok((at, more)) => {
                        if !delay.is_zero() && at + delay > Instant::now() {
                            // Not due yet: flush what is, then wait for it.
                            ok = wr.flush().await.is_ok();
                            lab_sleep_until(&node, at + delay).await;
                        }
                        trace(&more);
                        ok = ok
                            && wr.write_all(&more).await.is_ok()
                            && wr.write_all(b"\n").await.is_ok();
                    }
                    Err(_) => break,
                }
            }
            ok && wr.flush().await.is_ok()
        };
        // A peer that stops reading would hold this write (and the task) forever: the write
        // gives up after the link's idle timeout, and a kill interrupts it.
        let ok = tokio::select! {
            _ = kill.cancelled() => false,
            r = tokio::time::timeout(stall, batch) => r.unwrap_or(false),
        };
        if !ok {
            kill.cancel();
            break;
        }
    }
    // Deliver a queued goodbye, if any, before closing (briefly: the peer may be gone).
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok((_, frame)) = rx.try_recv() {
            if wr.write_all(&frame).await.is_err() || wr.write_all(b"\n").await.is_err() {
                break;
            }
        }
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    })
    .await;
}

/// Waits out an emulated link delay, precisely when the node has its lab clock.
pub(super) async fn lab_sleep_until(node: &Node, deadline: Instant) {
    match &node.lab_clock {
        Some(clock) => clock.sleep_until(deadline).await,
        None => tokio::time::sleep_until(deadline).await,
    }
}

pub(super) async fn handle_peer(
    node: &Arc<Node>,
    peer: &ServerKey,
    tx: &mpsc::Sender<(Instant, Bytes)>,
    (sync, resync, locks_in, mail): (
        &mut SyncIn,
        &mut Resync,
        &mut LockRate,
        &mut mailsync::MailSync,
    ),
    msg: Message,
) -> std::ops::ControlFlow<()> {
    use std::ops::ControlFlow::{Break, Continue};
    let fed = &node.federation;
    let origin = format!("peer:{}", key_string(peer));
    match msg.body {
        Body::Ping(_) => {
            let _ = tx.try_send((Instant::now(), encode(m::Pong {})));
        }
        Body::Pong(_) | Body::Ok(_) => {}
        Body::Disconnect(d) => {
            tracing::info!(reason = ?d.reason, "peer closed the link");
            return Break(());
        }
        Body::ServerList(l) => {
            fed.learn_servers(l.servers);
        }
        Body::ReqServerList(_) => {
            let servers = server_list(fed);
            let _ = tx.try_send((Instant::now(), encode(m::ServerList { servers })));
        }
        Body::AddServer(a) => {
            if fed.learn_servers([m::ServerAddr {
                host: a.host.clone(),
                port: a.port,
                key: a.key.clone(),
            }]) > 0
            {
                fed.flood(&encode(a), Some(peer));
            }
        }
        Body::DeleteServer(d) => match fed.receive_removal(&d) {
            Ok(true) => fed.flood(&encode(d), Some(peer)),
            Ok(false) => {}
            Err(why) => {
                tracing::info!(server = %format!("{}:{}", d.host, d.port), why, "deleteServer not applied")
            }
        },
        Body::UpdateRtts(u) => match fed.receive_row(&u) {
            Ok(true) => fed.flood(&encode(u), Some(peer)),
            Ok(false) => {}
            Err(why) => {
                node.metrics.refused_rows.inc();
                tracing::debug!(measurer = %format!("{}:{}", u.host, u.port), why, "RTT row dropped");
            }
        },
        body @ (Body::UserInfo(_) | Body::NewUser(_) | Body::ChangeCl(_)) => {
            // Applied by a task of its own: this reader must not wait for each record's
            // fdatasync (it would carry one record per flush); the bound keeps a fast peer from
            // queueing unbounded work. Two changes of one record racing is harmless: the newer
            // event count wins wherever they meet.
            let Ok(slot) = Arc::clone(&sync.records_in_flight).acquire_owned().await else {
                return Break(());
            };
            let (tasks, node, peer) = (node.tasks.clone(), Arc::clone(node), peer.clone());
            tasks.spawn(async move {
                replication::apply_from_peer(&node, &peer, body, &origin).await;
                drop(slot);
            });
        }
        Body::Reconcile(r) => resync.on_frame(node, r),
        Body::HeldWill(h) => {
            if node.store.contains_user(h.record.user_id) {
                hold_peer_will(node, h, peer);
            } else {
                // A new user's will can overtake their first record, which is being applied by
                // a task of its own: it waits for it (briefly, and a bounded number at a time).
                let Ok(slot) = Arc::clone(&sync.records_in_flight).try_acquire_owned() else {
                    tracing::info!("held will for an unknown user dropped: too many waiting");
                    return Continue(());
                };
                let (tasks, node, peer) = (node.tasks.clone(), Arc::clone(node), peer.clone());
                tasks.spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while !node.store.contains_user(h.record.user_id) && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    hold_peer_will(&node, h, &peer);
                    drop(slot);
                });
            }
        }
        Body::EventCounts(ec) => {
            resync.on_event_counts(node);
            match sync.on_event_counts(ec) {
                SyncStep::Pending => {}
                SyncStep::Refused { why, close } => {
                    tracing::warn!(why, "sync request refused");
                    let _ = tx.try_send((
                        Instant::now(),
                        encode(m::Error {
                            code: gossip_common::ErrorCode::NotAllowed,
                            text: why.into(),
                            current: None,
                        }),
                    ));
                    if close {
                        return Break(());
                    }
                }
                SyncStep::Complete {
                    users: theirs_users,
                    lists: theirs_lists,
                } => {
                    let users =
                        crate::sync::to_send(&node.store.user_event_counts(), &theirs_users);
                    let lists =
                        crate::sync::to_send(&node.store.list_event_counts(), &theirs_lists);
                    tracing::info!(
                        users = users.len(),
                        lists = lists.len(),
                        "sync: sending what the peer lacks"
                    );
                    node.metrics
                        .sync_records_sent
                        .add((users.len() + lists.len()) as u64);
                    node.metrics.sync_rounds.inc();
                    // Sent by a task of its own: a large sync takes a while, and this link's reader
                    // must keep reading meanwhile, or two nodes syncing to each other could each
                    // wait for the other to read.
                    node.tasks.spawn(replication::send_changed_entries(
                        Arc::clone(node),
                        users,
                        lists,
                        sync.bulk.clone(),
                    ));
                }
            }
        }
        Body::ChangedEntries(_) => {
            // Routed to `apply_changed_entries` before decoding; never reaches here.
        }
        Body::LockUid(l) => {
            let ttl =
                Duration::from_secs(l.expires_s.clamp(1, node.config.uid_lock.as_secs().max(1)));
            // Past its rate, a link's requests are refused: a flood only fails the flooder's
            // own registrations.
            let within_rate = locks_in.take(&(), Instant::now()).is_ok();
            if !within_rate {
                tracing::debug!(uid = %l.uid, "lock request over the link's rate; refused");
            }
            let local = within_rate
                && !node.store.contains_user(l.uid)
                && node.locks.try_lock(l.uid, &l.holder, ttl).is_ok();
            let forwarded = local
                && fed.send_lock_request(
                    &encode(l.clone()),
                    l.uid,
                    &l.holder,
                    Some(peer),
                    LockReply::Peer(peer.clone()),
                );
            if !forwarded {
                let result = encode(m::LockResult {
                    uid: l.uid,
                    granted: u8::from(local),
                    holder: Some(l.holder),
                });
                let _ = tx.try_send((Instant::now(), result));
            } else {
                // A subtree that stays silent counts as granting (availability: a peer that
                // never answers must not stop registrations; see docs/federation.md). Weak: a
                // stopped node must not be kept alive (datafiles locked) by this timer.
                let (weak, stop) = (Arc::downgrade(node), node.shutdown.clone());
                node.tasks.spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(LOCK_TIMEOUT) => {
                            if let Some(node) = weak.upgrade() {
                                node.federation.lock_answer(l.uid, &l.holder, true, None);
                            }
                        }
                    }
                });
            }
        }
        Body::LockResult(r) => {
            if let Some(holder) = r.holder {
                fed.lock_answer(r.uid, &holder, r.granted != 0, Some(peer));
            }
        }
        Body::UnlockUid(u) => {
            if let Some(holder) = &u.holder {
                node.locks.unlock(u.uid, holder);
            }
            fed.flood(&encode(u), Some(peer));
        }
        Body::Relay(r) => {
            // A sender this server does not know yet: its record is on its way (the link-up
            // resync, or its `newuser` handled beside this frame). The message waits for it,
            // off the reader and bounded in bytes, so the records can still arrive.
            let slot = if node.store.public_key(r.from).is_some() {
                // Stored by a task of its own (each waits for its fdatasync), bounded like
                // records.
                let Ok(slot) = Arc::clone(&sync.records_in_flight).acquire_owned().await else {
                    return Break(());
                };
                slot
            } else {
                let kib = (r.body.len() / 1024).max(1) as u32;
                let Ok(slot) = Arc::clone(&sync.parked).try_acquire_many_owned(kib) else {
                    tracing::info!(id = %r.id, "relayed message refused: too many wait for their sender's record");
                    return Continue(());
                };
                slot
            };
            let (tasks, node, peer, tx) = (
                node.tasks.clone(),
                Arc::clone(node),
                peer.clone(),
                tx.clone(),
            );
            tasks.spawn(async move {
                let id = r.id.clone();
                let answer = match node.relay_from_peer(r, &peer).await {
                    crate::relay::PeerAnswer::Stored => Some(encode(m::Stored { id })),
                    crate::relay::PeerAnswer::Delivered(d) => Some(encode(d)),
                    crate::relay::PeerAnswer::Nothing => None,
                };
                if let Some(frame) = answer {
                    let _ = tx.try_send((Instant::now(), frame));
                }
                drop(slot);
            });
        }
        Body::Stored(s) => node.mailbox.stored(&s.id),
        Body::MailboxDigest(d) => mailsync::answer_digest(node, mail, &d, &sync.bulk),
        Body::MailboxIds(part) => mailsync::answer_ids(node, mail, &part, &sync.bulk),
        Body::Delivered(d) => {
            node.relay_delivered(d, Some(peer));
        }
        Body::Error(e) => tracing::info!(code = ?e.code, text = %e.text, "peer reported an error"),
        other => tracing::debug!(msgtype = other.msgtype(), "ignored on a server link"),
    }
    Continue(())
}

/// Holds a will a peer sent if it is the user's offline record signed by their bound key.
fn hold_peer_will(node: &Arc<Node>, h: m::HeldWill, peer: &ServerKey) {
    let record = h.record;
    let bound = node.store.public_key(record.user_id) == Some(record.public_key);
    if bound && !record.is_online() && record.verify_self().is_ok() {
        node.hold_will((h.host, h.port), record, Some(peer));
    } else {
        tracing::info!(uid = %record.user_id, "held will refused: not an offline record signed by the bound key");
    }
}
