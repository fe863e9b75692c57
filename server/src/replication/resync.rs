//! The resync a link runs when it comes up: which method it uses, and the driver of a
//! range-based reconciliation over the link's bulk queue.
//!
//! Both ends offer `range1` in their `serverID` (unless configured `sync = "event-counts"`);
//! when both do, the end with the smaller identity starts a reconciliation ([`crate::reconcile`])
//! and neither sends its event-count list. Otherwise both send `eventCounts`, as the spec says.
//! A reconciliation that breaks a bound (rounds, listed items, an answer to nothing asked), stalls
//! for [`ROUND_TIMEOUT`] or cannot queue a frame falls back: the failing side sends its
//! `eventCounts`, and a side that receives `eventCounts` while reconciling stops and sends its
//! own, so both end in the spec's exchange with one clear log line.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gossip_common::codec::encode_frame as encode;
use gossip_common::message as m;
use gossip_common::UserId;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{batches, sync_in, Replication};
use crate::federation::LinkTx;
use crate::reconcile::{wire, Abort, Reconciler};

/// The word a `serverID` carries to offer range reconciliation.
pub(crate) const OFFER: &str = "range1";

/// How long a reconciliation waits for the peer's next frame before falling back.
pub(super) const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// `reconcile` frames from the peer held for the driver: one round is rarely more than a
/// few frames; a peer that sends many more than it was asked for is cut off (the frames are
/// bounded by the frame limit, so this holds at most 4 MB at 64 KiB frames).
const FRAMES_QUEUED: usize = 64;

/// Whether a `serverID`'s `sync` field offers range reconciliation.
pub(crate) fn offers_range(sync: Option<&str>) -> bool {
    sync.is_some_and(|s| s.split_whitespace().any(|w| w == OFFER))
}

/// Whether a frame is a resync message (counted in the `sync_bytes` metrics), by its root tag.
pub(crate) fn is_sync_frame(frame: &[u8]) -> bool {
    batches::has_root(frame, b"<changedEntries")
        || batches::has_root(frame, b"<reconcile")
        || batches::has_root(frame, b"<eventCounts")
}

/// One link's resync, as its reader sees it.
pub(crate) struct Resync {
    /// Frames for the reconciliation driver; `None` when the link uses (or fell back to)
    /// `eventCounts`.
    frames: Option<mpsc::Sender<m::Reconcile>>,
    /// Whether this side's `eventCounts` went out (they go at most once per link).
    ec_sent: Arc<AtomicBool>,
    bulk: LinkTx,
}

impl Resync {
    /// Starts the link's resync: a reconciliation if both ends offer it (`initiator`: this end
    /// opens), else this side's `eventCounts`.
    pub(crate) fn start(repl: &Arc<Replication>, range: Option<bool>, bulk: LinkTx) -> Resync {
        let ec_sent = Arc::new(AtomicBool::new(false));
        let mut r = Resync {
            frames: None,
            ec_sent,
            bulk,
        };
        match range {
            None => r.send_event_counts(repl),
            Some(initiator) => {
                let (tx, rx) = mpsc::channel(FRAMES_QUEUED);
                r.frames = Some(tx);
                let (repl2, bulk, ec_sent) =
                    (Arc::clone(repl), r.bulk.clone(), Arc::clone(&r.ec_sent));
                repl.tasks.spawn(run(repl2, initiator, rx, bulk, ec_sent));
            }
        }
        r
    }

    /// Queues this side's event-count list, unless it went out already.
    fn send_event_counts(&self, repl: &Arc<Replication>) {
        if self.ec_sent.swap(true, Ordering::AcqRel) {
            return;
        }
        send_event_counts(repl, self.bulk.clone());
    }

    /// A `reconcile` frame from the peer.
    pub(crate) fn on_frame(&mut self, repl: &Arc<Replication>, frame: m::Reconcile) {
        let Some(tx) = &self.frames else {
            // After a fallback the peer may still have frames in flight.
            tracing::debug!("reconcile frame outside a reconciliation ignored");
            return;
        };
        match tx.try_send(frame) {
            Ok(()) => {}
            // The driver ended (done, or failed and fell back itself).
            Err(mpsc::error::TrySendError::Closed(_)) => self.frames = None,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    "peer sent more reconcile frames than it was asked for; falling back to eventCounts"
                );
                self.frames = None;
                if !self.ec_sent.load(Ordering::Acquire) {
                    repl.metrics.sync_fallbacks.inc();
                }
                self.send_event_counts(repl);
            }
        }
    }

    /// The peer sent `eventCounts`: it does not reconcile (or gave up), so this side answers in
    /// kind.
    pub(crate) fn on_event_counts(&mut self, repl: &Arc<Replication>) {
        if self.frames.take().is_some() {
            tracing::info!("peer fell back to eventCounts; stopping the reconciliation");
        }
        self.send_event_counts(repl);
    }
}

/// Queues this node's event-count list on `bulk`, from a task: a million users make a million
/// entries, and the link's reader must keep reading meanwhile.
fn send_event_counts(repl: &Arc<Replication>, bulk: LinkTx) {
    let store = Arc::clone(&repl.store);
    repl.tasks.spawn(async move {
        for frame in sync_in::event_count_messages(&store) {
            if bulk.send((Instant::now(), frame)).await.is_err() {
                break;
            }
        }
    });
}

/// Why a reconciliation stopped early.
#[derive(Debug, thiserror::Error)]
enum Stop {
    /// The link closed or the peer fell back: nothing to do.
    #[error("link closed")]
    Closed,
    #[error(transparent)]
    Abort(#[from] Abort),
    #[error("no frame from the peer for {0:?}")]
    Timeout(Duration),
    #[error("round {got} where round {want} was due")]
    OutOfOrder { got: u32, want: u32 },
}

impl From<wire::WireError> for Stop {
    fn from(e: wire::WireError) -> Self {
        Stop::Abort(Abort::Wire(e))
    }
}

async fn run(
    repl: Arc<Replication>,
    initiator: bool,
    mut rx: mpsc::Receiver<m::Reconcile>,
    bulk: LinkTx,
    ec_sent: Arc<AtomicBool>,
) {
    let started = Instant::now();
    match drive(&repl, initiator, &mut rx, &bulk).await {
        Ok((rounds_sent, sent)) => {
            repl.metrics.sync_rounds.inc();
            crate::metrics::observe_duration(&repl.metrics.resync_seconds, started.elapsed());
            if initiator {
                repl.metrics.sync_round_trips.inc_by(u64::from(rounds_sent));
            }
            tracing::info!(
                initiator,
                rounds_sent,
                records_sent = sent,
                ms = started.elapsed().as_millis() as u64,
                "range reconciliation done"
            );
        }
        Err(Stop::Closed) => {}
        // Counted and logged once per link: the reader may have fallen back first.
        Err(e) if !ec_sent.swap(true, Ordering::AcqRel) => {
            tracing::warn!(error = %e, "range reconciliation failed; falling back to eventCounts");
            repl.metrics.sync_fallbacks.inc();
            send_event_counts(&repl, bulk);
        }
        Err(e) => tracing::debug!(error = %e, "reconciliation stopped after a fallback"),
    }
}

/// Runs one reconciliation to its end; returns the rounds this side sent and the records it
/// queued to the peer.
async fn drive(
    repl: &Arc<Replication>,
    initiator: bool,
    rx: &mut mpsc::Receiver<m::Reconcile>,
    bulk: &LinkTx,
) -> Result<(u32, usize), Stop> {
    let mut sent = 0;
    let mut r = if initiator {
        let store = Arc::clone(&repl.store);
        let (r, opening) = tokio::task::spawn_blocking(move || Reconciler::initiate(&*store))
            .await
            .map_err(|_| Stop::Closed)?;
        send_round(repl, bulk, 1, &opening, false).await?;
        r
    } else {
        Reconciler::respond()
    };
    let mut due = if initiator { 2 } else { 1 };
    loop {
        // The peer's round, frame by frame. Each frame's entries are answered off the async
        // threads: listing a whole range for a new server touches every record.
        let peer_done = loop {
            let frame = match tokio::time::timeout(ROUND_TIMEOUT, rx.recv()).await {
                Err(_) => return Err(Stop::Timeout(ROUND_TIMEOUT)),
                Ok(None) => return Err(Stop::Closed),
                Ok(Some(f)) => f,
            };
            if frame.round != due {
                return Err(Stop::OutOfOrder {
                    got: frame.round,
                    want: due,
                });
            }
            let entries = wire::decode_entries(&wire::from_text(&frame.data)?)?;
            let store = Arc::clone(&repl.store);
            let (back, result) = tokio::task::spawn_blocking(move || {
                let result = r.receive(&*store, entries);
                (r, result)
            })
            .await
            .map_err(|_| Stop::Closed)?;
            r = back;
            result?;
            if frame.last != 0 {
                break frame.done != 0;
            }
        };
        let out = r.end_round(peer_done)?;
        sent += out.users.len() + out.lists.len();
        send_records(repl, out.users, out.lists, bulk);
        match out.entries {
            None => return Ok((r.rounds_sent(), sent)),
            Some(entries) => {
                send_round(repl, bulk, due + 1, &entries, out.done).await?;
                if out.done {
                    return Ok((r.rounds_sent(), sent));
                }
                due += 2;
            }
        }
    }
}

/// Queues the records a round found the peer lacks (from a task of their own, so the next
/// round's frames are not held behind a large transfer's).
fn send_records(repl: &Arc<Replication>, users: Vec<UserId>, lists: Vec<UserId>, bulk: &LinkTx) {
    if users.is_empty() && lists.is_empty() {
        return;
    }
    repl.metrics
        .sync_records_sent
        .inc_by((users.len() + lists.len()) as u64);
    repl.tasks.spawn(batches::send_changed_entries(
        Arc::clone(repl),
        users,
        lists,
        bulk.clone(),
    ));
}

/// Sends one round as `reconcile` frames, each within the frame limit once base64-encoded.
async fn send_round(
    repl: &Replication,
    bulk: &LinkTx,
    round: u32,
    entries: &[crate::reconcile::Entry],
    done: bool,
) -> Result<(), Stop> {
    // Base64 adds a third, the XML envelope about a hundred bytes.
    let budget = (repl.max_frame.saturating_sub(256) / 4 * 3).max(1024);
    let mut chunks = wire::encode_chunks(entries, budget);
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let last = i + 1 == n;
        let frame = encode(m::Reconcile {
            round,
            last: u8::from(last),
            done: u8::from(last && done),
            data: wire::to_text(&chunk),
        });
        bulk.send((Instant::now(), frame))
            .await
            .map_err(|_| Stop::Closed)?;
    }
    Ok(())
}
