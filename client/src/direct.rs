//! Direct client-to-client messages, as the spec has them: the sender connects to the address
//! in the recipient's UserInfo and sends one signed `txt`; servers never see the text.
//!
//! The receiver checks the signature against the sender's key from the sender's UserInfo
//! (which it holds for its contacts) and that the message is addressed to it; anything else is
//! dropped and logged.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gossip_common::message::Txt;
use gossip_common::{Body, ChatMessage, Message, PublicKey, Signed, UserId, XmlFrameCodec};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use crate::Event;

/// How long delivery may take before the contact counts as unreachable.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks up the key bound to a user, from what the client already verified.
pub(crate) trait KeyLookup: Send + Sync {
    fn key_of(&self, uid: UserId) -> Option<PublicKey>;
}

/// A running direct-message listener; stops when dropped.
pub struct DirectListener {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DirectListener {
    /// The bound address (advertise it in the UserInfo).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DirectListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn deliver(addr: SocketAddr, record: Signed<ChatMessage>) -> Result<(), String> {
    let work = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut framed = Framed::new(stream, XmlFrameCodec::default());
        let msg = Message::new(Ipv6Addr::UNSPECIFIED, Txt { record });
        framed.send(&msg).await.map_err(|e| e.to_string())?;
        // Wait for the receiver to close (or answer) so the message is known to have arrived.
        let _ = framed.next().await;
        Ok(())
    };
    tokio::time::timeout(DELIVERY_TIMEOUT, work)
        .await
        .map_err(|_| "timed out".to_owned())?
}

pub(crate) async fn listen(
    bind: SocketAddr,
    me: UserId,
    keys: Arc<dyn KeyLookup>,
    events: mpsc::Sender<Event>,
) -> std::io::Result<DirectListener> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    // (sender, sent time) of recent messages: a replayed copy of a signed message is dropped.
    let seen: Arc<std::sync::Mutex<std::collections::VecDeque<(UserId, u64)>>> = Arc::default();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (keys, events, seen) = (Arc::clone(&keys), events.clone(), Arc::clone(&seen));
            tokio::spawn(async move {
                let mut framed = Framed::new(stream, XmlFrameCodec::default());
                let Ok(Some(Ok(Ok(frame)))) =
                    tokio::time::timeout(DELIVERY_TIMEOUT, framed.next()).await
                else {
                    return;
                };
                let Ok(Message {
                    body: Body::Txt(txt),
                    ..
                }) = Message::decode(&frame)
                else {
                    tracing::info!(%peer, "direct connection sent something other than <txt>");
                    return;
                };
                let record = txt.record;
                let verified = record.to == me
                    && keys
                        .key_of(record.from)
                        .is_some_and(|k| record.verify(&k).is_ok());
                let fresh = verified && {
                    let mut seen = seen.lock().expect("lock");
                    let id = (record.from, record.sent_ms);
                    let fresh = !seen.contains(&id);
                    if fresh {
                        if seen.len() >= 4096 {
                            seen.pop_front();
                        }
                        seen.push_back(id);
                    }
                    fresh
                };
                if fresh {
                    let _ = events.send(Event::Message(record)).await;
                } else if verified {
                    tracing::info!(%peer, from = %record.from, "replayed direct message dropped");
                } else {
                    tracing::warn!(%peer, from = %record.from, "direct message dropped: not for us, unknown sender or bad signature");
                }
                let _ = SinkExt::<bytes::Bytes>::close(&mut framed).await;
            });
        }
    });
    Ok(DirectListener { addr, task })
}
