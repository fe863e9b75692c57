//! A client session's I/O: the reader (frames in, idle and login deadlines, pings) and the
//! writer (the bounded outbound queue drained into the socket in vectored writes).

use bytes::Bytes;
use futures::StreamExt;
use gossip_common::codec::write_frames;
use gossip_common::message as m;
use gossip_common::secure::{SecureReader, SecureWriter};
use gossip_common::{ErrorCode, Message, XmlFrameCodec};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::Session;
use crate::presence::Outbound;

/// Drains the outbound queue into the socket: whatever is queued goes out in one vectored
/// write, straight from the shared frames. No write buffer is kept per connection (an idle
/// client costs no buffer memory, and a push encoded once is never copied per recipient).
pub(super) async fn write_loop(
    mut wr: SecureWriter<OwnedWriteHalf>,
    mut rx: mpsc::Receiver<Outbound>,
    kill: CancellationToken,
    tap: Option<crate::trace::Tap>,
    stall: std::time::Duration,
    push_seconds: prometheus::Histogram,
) {
    /// Frames per write; more stay queued for the next one.
    const BATCH: usize = 32;
    let mut batch: Vec<Bytes> = Vec::new();
    // When the pushes in `batch` were accepted (observed once the write is done).
    let mut accepted: Vec<std::time::Instant> = Vec::new();
    loop {
        let frame = tokio::select! {
            _ = kill.cancelled() => break,
            f = rx.recv() => match f { Some(f) => f, None => break },
        };
        let mut next = Some(frame);
        while let Some(out) = next.take() {
            accepted.extend(out.accepted);
            batch.push(out.frame);
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
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
        if !accepted.is_empty() {
            let now = std::time::Instant::now();
            for t in accepted.drain(..) {
                push_seconds.observe(now.saturating_duration_since(t).as_secs_f64());
            }
            accepted = Vec::new();
        }
    }
    // A goodbye still buffered goes out if the client reads it soon; a client cut for not
    // reading gets no wait at all. Either way the socket is closed when this returns (the
    // encrypted stream's shutdown drains first, which a client that never reads would hold
    // forever).
    if !kill.is_cancelled() {
        let _ = tokio::time::timeout(CLOSE_DRAIN, wr.shutdown()).await;
    }
}

/// How long a session's writer drains what is left before it closes the socket anyway.
pub(super) const CLOSE_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Session {
    pub(super) async fn read_loop(
        &mut self,
        rd: SecureReader<tokio::net::tcp::OwnedReadHalf>,
        shutdown: &CancellationToken,
    ) -> &'static str {
        let cfg = &self.door.settings;
        let (keepalive, idle) = (cfg.keepalive, cfg.idle_timeout);
        let mut frames = FramedRead::with_capacity(rd, XmlFrameCodec::new(cfg.max_frame), 1024);
        let mut last_rx = Instant::now();
        let mut pinged = false;
        let login_deadline = cfg.login_deadline;
        let login_by = Instant::now() + login_deadline;
        // Strangers get a small budget until they log in, so reconnecting does not renew a
        // flood's burst; a logged-in session gets the full one.
        let full_rate = cfg.inbound;
        let mut inbound = crate::budget::Inbound::new(full_rate.before_login(), Instant::now());
        let mut full_budget = false;
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
                    // Every frame, even a refused one, is spent from the connection's budget:
                    // a flood is cut before it costs the server more than a few thousand frames.
                    if !full_budget && !anonymous {
                        full_budget = true;
                        inbound = crate::budget::Inbound::new(full_rate, last_rx);
                    }
                    if let Err(e) = inbound.spend_item(&item, last_rx) {
                        tracing::warn!(over = %e, "client over its inbound budget; disconnecting");
                        self.door.metrics.inbound_cut.inc();
                        let text = format!("you sent {e}; disconnecting");
                        self.error(None, ErrorCode::NotAllowed, text, None).await;
                        return "inbound over its budget";
                    }
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
                            if let Some(t) = &self.door.trace {
                                t.record(crate::trace::Dir::In, self.peer, "client", &frame);
                            }
                            match Message::decode(&frame) {
                                Ok(msg) => {
                                    tracing::trace!(msgtype = msg.msgtype(), "received");
                                    self.door.metrics.messages_in.add(msg.msgtype(), 1);
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
}
