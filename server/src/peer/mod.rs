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
use crate::federation::{
    Federation, Hooks, LinkEnd, LinkKind, NewLink, BULK_QUEUE, CHECK_MAX, CHECK_QUIET, LINK_QUEUE,
    MAX_CHECKS_IN,
};
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
        kind: LinkKind,
    ) -> BoxFuture<'static, LinkEnd> {
        Box::pin(run_link(Arc::clone(self), conn, expect, addr, kind))
    }

    fn server_gone(&self, server: ServerId, why: &'static str) {
        self.wills.spawn_publish_of(server, why);
    }
}

/// Runs one server link (`expect` = the peer we dialled for `kind`; `None` for an accepted
/// connection, whose `serverID` says what it is for).
pub(crate) async fn run_link(
    door: Arc<PeerDoor>,
    stream: Conn,
    expect: Option<ServerId>,
    addr: SocketAddr,
    kind: LinkKind,
) -> LinkEnd {
    let shutdown = door.stop.clone();
    let opened = match handshake::open(&door, stream, expect.as_ref(), kind, addr, &shutdown).await
    {
        Ok(o) => o,
        Err(end) => return end,
    };
    match opened.kind {
        LinkKind::Tree => {
            let span = tracing::info_span!("link", peer = %id_string(&opened.peer));
            serve(door, opened, expect.is_some(), addr, shutdown)
                .instrument(span)
                .await
        }
        LinkKind::Check => {
            let span = tracing::info_span!("check", peer = %id_string(&opened.peer));
            check(door, opened, expect.is_some(), addr, shutdown)
                .instrument(span)
                .await
        }
    }
}

/// Counts an accepted repair check while it runs.
struct CheckSlot<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> CheckSlot<'a> {
    fn take(count: &'a std::sync::atomic::AtomicUsize) -> Option<CheckSlot<'a>> {
        use std::sync::atomic::Ordering;
        let slot = CheckSlot(count);
        (count.fetch_add(1, Ordering::AcqRel) < MAX_CHECKS_IN).then_some(slot)
    }
}

impl Drop for CheckSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A repair check (`federation/repair.rs`) past its opening: the link-up exchange of a link —
/// server lists with row seqs instead of every row, the resync, the mailbox exchange, each
/// end's own sessions' wills — over a connection that is never entered in the link table, so
/// nothing is flooded over it; it ends once quiet for [`CHECK_QUIET`], or after
/// [`CHECK_MAX`]. What it brings is stored and flooded along the tree as if a link had.
async fn check(
    door: Arc<PeerDoor>,
    opened: handshake::Opened,
    dialled: bool,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> LinkEnd {
    let handshake::Opened {
        peer,
        offers_range,
        offers_mailbox,
        mut frames,
        mut wr,
        ..
    } = opened;
    let Some(_slot) = (if dialled {
        Some(None)
    } else {
        CheckSlot::take(&door.federation.checks_in).map(Some)
    }) else {
        tracing::info!("repair check refused: too many at once");
        writer::refuse_link(&mut wr, "too many repair checks at once; try later").await;
        return LinkEnd::NotUp("too many repair checks at once");
    };
    let fed = &door.federation;
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE);
    let kill = CancellationToken::new();
    let writer = door.tasks.spawn(writer::link_writer(
        wr,
        (rx, bulk_rx),
        writer_parts(&door, &peer, addr, &kill),
    ));
    let now = Instant::now();
    for frame in fed.check_opening_frames() {
        let _ = tx.send((now, frame)).await;
    }
    let link = (offers_range, offers_mailbox, true);
    let mut link = link_up_exchange(&door, &peer, addr, link, tx, bulk);
    let ends = Ends {
        quiet: Some(CHECK_QUIET),
        by: Some(Instant::now() + CHECK_MAX),
    };
    read_loop(&door, &mut link, &mut frames, &kill, &shutdown, ends).await;
    kill.cancel();
    finish_writer(writer, &shutdown).await;
    tracing::debug!("repair check done");
    LinkEnd::WasUp
}

/// How a link's reader ends besides its peer, an idle timeout and the stop.
#[derive(Default)]
struct Ends {
    /// Once nothing has arrived for this long.
    quiet: Option<Duration>,
    /// At this time.
    by: Option<Instant>,
}

/// The writer's settings for a link to `peer`.
fn writer_parts(
    door: &PeerDoor,
    peer: &ServerId,
    addr: SocketAddr,
    kill: &CancellationToken,
) -> writer::WriterParts {
    let settings = &door.settings;
    writer::WriterParts {
        delay: settings.lab.to(&id_string(peer)),
        kill: kill.clone(),
        tap: Tap::new(settings.trace.as_ref(), addr, "server"),
        metrics: Arc::clone(&door.metrics),
        clock: settings.clock.clone(),
        stall: settings.idle.max(Duration::from_secs(10)),
    }
}

/// Starts what every link and check runs after its opening frames — the resync (a range
/// reconciliation, the smaller identity opening it, if both ends offer one, else our event
/// counts), the mailbox exchange, our sessions' wills — and returns the link's state.
fn link_up_exchange(
    door: &Arc<PeerDoor>,
    peer: &ServerId,
    addr: SocketAddr,
    (offers_range, offers_mailbox, check): (bool, bool, bool),
    tx: crate::federation::LinkTx,
    bulk: crate::federation::LinkTx,
) -> LinkState {
    let range =
        (door.replication.offers_range() && offers_range).then(|| door.federation.me() < peer);
    let resync = Resync::start(&door.replication, range, bulk.clone());
    // The undelivered messages a peer that was away lacks.
    mailsync::start(&door.relay, offers_mailbox, &bulk);
    // The last wills of this server's sessions, so a peer that was away holds them too. A
    // check, which comes every few seconds, sends their digest instead: the wills cross only
    // if the peer's copy differs.
    if check {
        let digest = door.wills.digest_frame(door.federation.me(), false);
        let _ = bulk.try_send((Instant::now(), digest));
    } else {
        door.wills.announce_to(bulk.clone());
    }
    LinkState {
        peer: peer.clone(),
        addr,
        tx,
        bulk,
        sync: SyncIn::new(),
        resync,
        locks: Registration::link_rate(),
        mail: Default::default(),
        budgets: Budgets::default(),
        check,
        wills_announced: false,
        will_digests: 0,
        rows_listed: false,
    }
}

/// Lets the writer deliver what is queued (a goodbye), briefly at shutdown; then aborts it, so
/// a link's end frees its socket, bounded.
async fn finish_writer(mut writer: tokio::task::JoinHandle<()>, shutdown: &CancellationToken) {
    let linger = if shutdown.is_cancelled() {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(2)
    };
    if tokio::time::timeout(linger, &mut writer).await.is_err() {
        writer.abort();
        let _ = writer.await;
    }
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
        ..
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
    let writer = door.tasks.spawn(writer::link_writer(
        wr,
        (rx, bulk_rx),
        writer_parts(&door, &peer, addr, &kill),
    ));
    // Initial exchange: servers, every known row, and the resync.
    let now = Instant::now();
    for frame in fed.opening_frames() {
        if tx.send((now, frame)).await.is_err() {
            break;
        }
    }
    let link = (offers_range, offers_mailbox, false);
    let mut link = link_up_exchange(&door, &peer, addr, link, tx, bulk);
    read_loop(
        &door,
        &mut link,
        &mut frames,
        &kill,
        &shutdown,
        Ends::default(),
    )
    .await;
    kill.cancel();
    // The writer delivers a queued goodbye; a stalled peer gets little time at shutdown.
    finish_writer(writer, &shutdown).await;
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
    ends: Ends,
) {
    let idle = door.settings.idle.max(Duration::from_secs(10));
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut last_rx = Instant::now();
    let mut pinged = false;
    let mut suspected = false;
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
            _ = tokio::time::sleep_until(last_rx + idle * 2 / 3), if !suspected => {
                // The ping got no answer: a frozen process or a pulled cable (a killed one
                // would have closed the link). Its probes decide, counted from the silence,
                // so that a death costs one dead timeout here, not an idle timeout and then
                // a whole measurement round.
                suspected = true;
                door.federation.suspect(vec![link.peer.clone()], last_rx);
            }
            _ = tokio::time::sleep_until(last_rx + idle) => {
                tracing::info!("server link silent too long; closing");
                break;
            }
            _ = tokio::time::sleep_until(ends.quiet.map_or(far, |q| last_rx + q)) => {
                let _ = link.tx.try_send((Instant::now(), encode(m::Disconnect { reason: Some("repair check done".into()) })));
                break;
            }
            _ = tokio::time::sleep_until(ends.by.unwrap_or(far)) => {
                tracing::info!("repair check took its longest; closing");
                let _ = link.tx.try_send((Instant::now(), encode(m::Disconnect { reason: Some("repair check took its longest".into()) })));
                break;
            }
            item = frames.next() => {
                last_rx = Instant::now();
                pinged = false;
                suspected = false;
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
    door.metrics.link_bytes_in.inc_by(frame.len() as u64 + 1);
    if resync::is_sync_frame(&frame) {
        door.metrics.sync_bytes_in.inc_by(frame.len() as u64 + 1);
    }
    if let Some(t) = &door.settings.trace {
        t.record(Dir::In, link.addr, "server", &frame);
    }
    if replication::is_changed_entries(&frame) {
        return door
            .replication
            .on_batch(frame, &link.peer, &link.budgets, link.check)
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
