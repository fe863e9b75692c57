//! Dialling tree neighbours and repair targets through the federation's transport, with
//! backoff that only a completed handshake resets, cancelled at once by the stop. What runs
//! on the link once connected is the server door's, reached through [`Hooks`].

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ConnectError, Federation, Hooks, LinkEnd, LinkKind};
use crate::mst::{id_string, ServerId};

/// Longest wait between reconnection attempts to a tree neighbour.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Shortest wait before redialling a server whose link ended or could not be opened.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// Opens a link to `peer` and runs it. Backoff doubles on every attempt that does not get
/// through the handshake (refused, timed out, closed before its `serverID`: a server that
/// refuses us, e.g. by blacklist, is not redialled in a tight loop) and restarts from the
/// minimum once a link was up. The stop cancels a pending connect or handshake at once.
pub(super) async fn dial(
    fed: Arc<Federation>,
    hooks: Arc<dyn Hooks>,
    peer: ServerId,
    stop: CancellationToken,
) {
    let connected = tokio::select! {
        _ = stop.cancelled() => None,
        r = fed.transport.connect(&fed.me, &peer) => Some(r),
    };
    let outcome = match connected {
        None => {
            fed.state.lock().connecting.remove(&peer);
            return;
        }
        Some(Ok((stream, addr))) => {
            // Not raced against the stop: the link says its goodbye and ends by itself.
            match hooks
                .run_link(stream, Some(peer.clone()), addr, LinkKind::Tree)
                .await
            {
                LinkEnd::WasUp => Ok(()),
                LinkEnd::NotUp(why) => Err(why.to_owned()),
            }
        }
        Some(Err(e)) => {
            if e == ConnectError::Refused {
                // Killed or crashed: its host refuses the connection. This node's probes would
                // take the dead timeout to say so; its users must not stay online that long.
                // Marked dead in this node's row now (the revival probes notice a restart),
                // and the wills of its users published.
                fed.publish_measurements(&[(peer.clone(), None)]);
                hooks.server_gone(peer.clone(), "server refuses connections");
            }
            Err(e.to_string())
        }
    };
    let mut st = fed.state.lock();
    st.connecting.remove(&peer);
    let delay = match outcome {
        Ok(()) => MIN_BACKOFF,
        Err(why) => {
            let delay = st
                .backoff
                .get(&peer)
                .map_or(MIN_BACKOFF, |(d, _)| (*d * 2).min(MAX_BACKOFF));
            tracing::info!(peer = %id_string(&peer), why = why.as_str(), retry_in = ?delay, "cannot reach tree neighbour");
            delay
        }
    };
    st.backoff.insert(peer, (delay, Instant::now() + delay));
    drop(st);
    fed.changed.notify_one();
}
