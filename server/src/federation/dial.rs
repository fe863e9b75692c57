//! Dialling tree neighbours and repair targets through the node's transport, with backoff
//! that only a completed handshake resets, cancelled at once by shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::link::run_link;
use crate::mst::{key_string, ServerKey};
use crate::Node;

/// Longest wait between reconnection attempts to a tree neighbour.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why a connect failed when nothing listens on the peer's server port (a live gossipd always
/// does, so its process is gone).
pub const REFUSED: &str = "connection refused";

/// Shortest wait before redialling a server whose link ended or could not be opened.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// Opens a link to `peer` and runs it. Backoff doubles on every attempt that does not get
/// through the handshake (refused, timed out, closed before its `serverID`: a server that
/// refuses us, e.g. by blacklist, is not redialled in a tight loop) and restarts from the
/// minimum once a link was up. Shutdown cancels a pending connect or handshake at once.
pub(super) async fn dial(node: Arc<Node>, peer: ServerKey, shutdown: CancellationToken) {
    let fed = &node.federation;
    let connected = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = node.transport.connect(&node, &peer) => Some(r),
    };
    let outcome = match connected {
        None => {
            fed.state.lock().connecting.remove(&peer);
            return;
        }
        Some(Ok((stream, addr))) => {
            match run_link(
                Arc::clone(&node),
                stream,
                Some(peer.clone()),
                addr,
                shutdown.clone(),
            )
            .await
            {
                LinkEnd::WasUp => Ok(()),
                LinkEnd::NotUp(why) => Err(why),
            }
        }
        Some(Err(why)) => {
            if why == REFUSED {
                // Killed or crashed: its host refuses the connection. This node's probes would
                // take the dead timeout to say so; its users must not stay online that long.
                // Marked dead in this node's row now (the revival probes notice a restart),
                // and the wills of its users published.
                fed.publish_measurements(&[(peer.clone(), None)]);
                let (n, p) = (Arc::clone(&node), peer.clone());
                node.tasks.spawn(async move {
                    n.publish_wills_of(&p, "server refuses connections").await;
                });
            }
            Err(why)
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
            tracing::info!(peer = %key_string(&peer), why, retry_in = ?delay, "cannot reach tree neighbour");
            delay
        }
    };
    st.backoff.insert(peer, (delay, Instant::now() + delay));
    drop(st);
    fed.changed.notify_one();
}

/// How a link attempt ended.
pub(super) enum LinkEnd {
    /// The handshake completed and the link ran (and has ended since).
    WasUp,
    /// The handshake did not complete: why.
    NotUp(&'static str),
}
