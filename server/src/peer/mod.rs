//! The server door: one link to a peer server on P+1, from its opening to its end. A link is
//! [`handshake`] (Noise, `serverID`, admission), then registration in the federation's link
//! table, the link-up exchange (server list and rows, the resync, the mailbox exchange, our
//! sessions' wills), then a thin reader that hands each decoded message to the [`dispatch`]er
//! and a [`writer`] that drains the link's two bounded queues. What a message means is decided
//! by the service that owns it (`federation`, `replication`, `wills`, `registration`, `relay`).

mod dispatch;
mod handshake;
#[cfg(test)]
mod tests;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gossip_common::codec::encode_frame as encode;
use gossip_common::message as m;
use gossip_common::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::budget::{Budgets, Inbound, LINK_INBOUND};
use crate::federation::transport::{BoxFuture, Conn};
use crate::federation::{Federation, Hooks, LinkEnd, NewLink, BULK_QUEUE, LINK_QUEUE};
use crate::lab::LabClock;
use crate::metrics::Metrics;
use crate::mst::{id_string, ServerId};
use crate::registration::Registration;
use crate::relay::{mailsync, Relay};
use crate::replication::{self, resync, Replication, Resync, SyncIn};
use crate::server_keys::ServerKeys;
use crate::tasks::Tasks;
use crate::trace::{Dir, Tap, Trace};
use crate::wills::LastWills;
use dispatch::LinkState;

/// How a link runs, from the configuration.
pub(crate) struct LinkSettings {
    /// The frame limit.
    pub(crate) max_frame: usize,
    /// A link silent this long is closed (pinged at a third of it).
    pub(crate) idle: Duration,
    /// Emulated link delays (lab runs only).
    pub(crate) lab: gossip_common::rtt::LabDelays,
    /// The protocol trace, if one is written.
    pub(crate) trace: Option<Arc<Trace>>,
    /// The precise timer for emulated delays, when any is configured.
    pub(crate) clock: Option<Arc<LabClock>>,
}

/// The server door and the services its messages go to.
pub(crate) struct PeerDoor {
    pub(crate) federation: Arc<Federation>,
    pub(crate) keys: Arc<ServerKeys>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) replication: Arc<Replication>,
    pub(crate) wills: Arc<LastWills>,
    pub(crate) registration: Arc<Registration>,
    pub(crate) relay: Arc<Relay>,
    pub(crate) settings: LinkSettings,
    pub(crate) tasks: Tasks,
    /// Stops every link (after a stop's sessions ended and their wills crossed).
    pub(crate) stop: CancellationToken,
}

/// The federation's way back into the rest of the server: links run through this door, and a
/// server judged gone has its users' held wills published.
impl Hooks for Arc<PeerDoor> {
    fn run_link(
        &self,
        conn: Conn,
        expect: Option<ServerId>,
        addr: SocketAddr,
    ) -> BoxFuture<'static, LinkEnd> {
        Box::pin(run_link(Arc::clone(self), conn, expect, addr))
    }

    fn server_gone(&self, server: ServerId, why: &'static str) {
        self.wills.spawn_publish_of(server, why);
    }
}

/// Runs one server link (`expect` = the peer we dialled, `None` for an accepted link).
pub(crate) async fn run_link(
    door: Arc<PeerDoor>,
    stream: Conn,
    expect: Option<ServerId>,
    addr: SocketAddr,
) -> LinkEnd {
    let shutdown = door.stop.clone();
    let opened = match handshake::open(&door, stream, expect.as_ref(), addr, &shutdown).await {
        Ok(o) => o,
        Err(end) => return end,
    };
    let span = tracing::info_span!("link", peer = %id_string(&opened.peer));
    serve(door, opened, expect.is_some(), addr, shutdown)
        .instrument(span)
        .await
}

/// A link past its opening: registered, its link-up exchange queued, read until it ends.
async fn serve(
    door: Arc<PeerDoor>,
    opened: handshake::Opened,
    dialled: bool,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> LinkEnd {
    let handshake::Opened {
        peer,
        key,
        offers_range,
        offers_mailbox,
        mut frames,
        wr,
    } = opened;
    let fed = &door.federation;
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE);
    let kill = CancellationToken::new();
    let new = NewLink {
        addr,
        key,
        dialled,
        tx: tx.clone(),
        bulk: bulk.clone(),
        kill: kill.clone(),
    };
    let Some(id) = fed.register_link(&peer, new) else {
        // A link to the peer is up: this attempt did its job.
        return LinkEnd::WasUp;
    };
    tracing::info!("server link up");
    let settings = &door.settings;
    let writer = door.tasks.spawn(writer::link_writer(
        wr,
        (rx, bulk_rx),
        writer::WriterParts {
            delay: settings.lab.to(&id_string(&peer)),
            kill: kill.clone(),
            tap: Tap::new(settings.trace.as_ref(), addr, "server"),
            metrics: Arc::clone(&door.metrics),
            clock: settings.clock.clone(),
            stall: settings.idle.max(Duration::from_secs(10)),
        },
    ));
    // Initial exchange: servers, every known row, and the resync.
    let now = Instant::now();
    for frame in fed.opening_frames() {
        if tx.send((now, frame)).await.is_err() {
            break;
        }
    }
    // A range reconciliation (the smaller identity opens it) if both ends offer one, else our
    // event counts. Either goes by the bulk queue.
    let range = (door.replication.offers_range() && offers_range).then(|| *fed.me() < peer);
    let resync = Resync::start(&door.replication, range, bulk.clone());
    // The undelivered messages a peer that was away lacks.
    mailsync::start(&door.relay, offers_mailbox, &bulk);
    // The last wills of this server's sessions, so a peer that was away holds them too.
    door.wills.announce_to(bulk.clone());
    let mut link = LinkState {
        peer: peer.clone(),
        addr,
        tx: tx.clone(),
        bulk,
        sync: SyncIn::new(),
        resync,
        locks: Registration::link_rate(),
        mail: Default::default(),
        budgets: Budgets::default(),
    };
    read_loop(&door, &mut link, &mut frames, &kill, &shutdown).await;
    kill.cancel();
    // The writer delivers a queued goodbye; a stalled peer gets little time at shutdown.
    let linger = if shutdown.is_cancelled() {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(2)
    };
    let mut writer = writer;
    if tokio::time::timeout(linger, &mut writer).await.is_err() {
        // Its socket goes with it: a link's end frees its descriptor, bounded.
        writer.abort();
        let _ = writer.await;
    }
    fed.link_down(&peer, id);
    tracing::info!("server link down");
    door.registration.link_lost(&peer);
    LinkEnd::WasUp
}

/// Reads the link until it ends: pings a silent peer, closes an idle one, and hands every
/// frame on (sync batches undecoded, the rest decoded, to the dispatcher).
async fn read_loop(
    door: &Arc<PeerDoor>,
    link: &mut LinkState,
    frames: &mut handshake::Frames,
    kill: &CancellationToken,
    shutdown: &CancellationToken,
) {
    let idle = door.settings.idle.max(Duration::from_secs(10));
    let mut last_rx = Instant::now();
    let mut pinged = false;
    let mut inbound = Inbound::new(LINK_INBOUND, last_rx);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let bye = m::Disconnect { reason: Some("server shutting down".into()) };
                let _ = link.tx.try_send((Instant::now(), encode(bye)));
                break;
            }
            _ = kill.cancelled() => break,
            _ = tokio::time::sleep_until(last_rx + idle / 3), if !pinged => {
                pinged = true;
                let _ = link.tx.try_send((Instant::now(), encode(m::Ping {})));
            }
            _ = tokio::time::sleep_until(last_rx + idle) => {
                tracing::info!("server link silent too long; closing");
                break;
            }
            item = frames.next() => {
                last_rx = Instant::now();
                pinged = false;
                if let Err(e) = inbound.spend_item(&item, last_rx) {
                    tracing::warn!(over = %e, "peer over its inbound budget; closing the link");
                    door.metrics.inbound_cut.inc();
                    let text = format!("you sent {e}; closing this link");
                    let refusal = m::Error { code: gossip_common::ErrorCode::NotAllowed, text, current: None };
                    let _ = link.tx.try_send((Instant::now(), encode(refusal)));
                    break;
                }
                let frame = match item {
                    None => break,
                    Some(Err(e)) => { tracing::info!(error = %e, "server link framing error"); break; }
                    Some(Ok(Err(e))) => { tracing::info!(error = %e, "frame from peer refused"); continue; }
                    Some(Ok(Ok(f))) => f,
                };
                if on_frame(door, link, frame).await.is_break() {
                    break;
                }
            }
        }
    }
}

/// One frame from the peer: counted, traced, and handed to its owner.
async fn on_frame(
    door: &Arc<PeerDoor>,
    link: &mut LinkState,
    frame: bytes::Bytes,
) -> std::ops::ControlFlow<()> {
    door.metrics.link_bytes_in.add(frame.len() as u64 + 1);
    if resync::is_sync_frame(&frame) {
        door.metrics.sync_bytes_in.add(frame.len() as u64 + 1);
    }
    if let Some(t) = &door.settings.trace {
        t.record(Dir::In, link.addr, "server", &frame);
    }
    if replication::is_changed_entries(&frame) {
        return door
            .replication
            .on_batch(frame, &link.peer, &link.budgets)
            .await;
    }
    match Message::decode(&frame) {
        Ok(msg) => {
            door.metrics.messages_in.add(msg.msgtype(), 1);
            dispatch::dispatch(door, link, msg).await
        }
        Err(e) => {
            tracing::info!(error = %e, "message from peer refused");
            std::ops::ControlFlow::Continue(())
        }
    }
}
