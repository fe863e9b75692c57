//! A server link's writer: its two bounded queues (control first, bulk when no control frame
//! waits) drained into the encrypted stream through the lab delay line, with a stall bound so
//! a peer that stops reading cannot hold the task; and the one-`error` refusal of a link whose
//! handshake is refused.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gossip_common::codec::{encode_frame, write_frames};
use gossip_common::message as m;
use gossip_common::secure;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::federation::transport::Conn;
use crate::federation::LinkQueue;
use crate::lab::{self, LabClock};
use crate::metrics::Metrics;
use crate::replication::resync;
use crate::trace::{Dir, Tap};

/// What a link's writer needs besides its queues.
pub(super) struct WriterParts {
    /// The emulated delay to this peer (zero in production).
    pub(super) delay: Duration,
    /// Ends the link (the reader's, or this writer's own on a failed write).
    pub(super) kill: CancellationToken,
    /// The protocol trace, if one is written.
    pub(super) tap: Option<Tap>,
    /// Link byte counters.
    pub(super) metrics: Arc<Metrics>,
    /// The precise timer for the delay line.
    pub(super) clock: Option<Arc<LabClock>>,
    /// How long a write may make no progress.
    pub(super) stall: Duration,
}

/// Writes queued frames, each no earlier than its enqueue time plus the lab delay (a delay
/// line: constant delay, order kept).
pub(super) async fn link_writer(
    wr: secure::SecureWriter<tokio::io::WriteHalf<Conn>>,
    (mut rx, mut bulk): (LinkQueue, LinkQueue),
    parts: WriterParts,
) {
    let WriterParts {
        delay,
        kill,
        tap,
        metrics,
        clock,
        stall,
    } = parts;
    let clock = clock.as_deref();
    let mut wr = tokio::io::BufWriter::with_capacity(64 * 1024, wr);
    let trace = |frame: &Bytes| {
        metrics.link_bytes_out.inc_by(frame.len() as u64 + 1);
        if resync::is_sync_frame(frame) {
            metrics.sync_bytes_out.inc_by(frame.len() as u64 + 1);
        }
        if let Some(tap) = &tap {
            tap.record(Dir::Out, frame);
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
            lab::sleep_until(clock, at + delay).await;
        }
        trace(&frame);
        let batch = async {
            let mut ok = write_one(&mut wr, &frame).await;
            while ok {
                // Control frames first; bulk frames only when no control frame waits.
                match rx.try_recv().or_else(|_| bulk.try_recv()) {
                    Ok((at, more)) => {
                        if !delay.is_zero() && at + delay > Instant::now() {
                            // Not due yet: flush what is, then wait for it.
                            ok = wr.flush().await.is_ok();
                            lab::sleep_until(clock, at + delay).await;
                        }
                        trace(&more);
                        ok = ok && write_one(&mut wr, &more).await;
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
            if !write_one(&mut wr, &frame).await {
                break;
            }
        }
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    })
    .await;
}

/// Writes one frame and its end into the link's buffer (flushed by the caller).
async fn write_one(wr: &mut (impl tokio::io::AsyncWrite + Unpin), frame: &[u8]) -> bool {
    wr.write_all(frame).await.is_ok() && wr.write_all(gossip_common::codec::FRAME_END).await.is_ok()
}

/// Tells a peer why its link is refused (one `error`, flushed) before the link closes.
pub(super) async fn refuse_link(wr: &mut (impl tokio::io::AsyncWrite + Unpin), text: &str) {
    let frame = encode_frame(m::Error {
        code: gossip_common::ErrorCode::NotAllowed,
        text: text.to_owned(),
        current: None,
    });
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        write_frames(wr, &[frame]).await?;
        wr.shutdown().await
    })
    .await;
}
