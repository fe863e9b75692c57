//! Direct client-to-client messages, as the spec has them: the sender connects to the address
//! in the recipient's UserInfo and sends one signed `txt`; servers never see the text.
//!
//! The receiver checks the signature against the sender's key from the sender's UserInfo
//! (which it holds for its contacts) and that the message is addressed to it; anything else is
//! dropped and logged.
//!
//! The client's side of it ([`GossipClient::send_message`], [`GossipClient::listen_direct`])
//! is here too, as one `impl GossipClient` block.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gossip_common::message::Txt;
use gossip_common::{Body, ChatMessage, Message, PublicKey, Signed, UserId, XmlFrameCodec};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use std::sync::Mutex;

use crate::state::State;
use crate::{ClientError, Event, GossipClient};

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

impl GossipClient {
    /// Sends a signed chat message directly to a contact, at the address in their UserInfo.
    /// If they cannot be reached they are marked offline locally and an
    /// [`Event::Unreachable`] is emitted.
    pub async fn send_message(&self, to: UserId, text: &str) -> Result<(), ClientError> {
        let from = self.uid().ok_or(ClientError::NotLoggedIn)?;
        let target = {
            let state = self.state.lock().expect("lock");
            state.contacts.get(&to).cloned()
        };
        let target = match target {
            Some(t) => t,
            None => self
                .fetch_users(&[to])
                .await?
                .pop()
                .ok_or(ClientError::Unreachable {
                    uid: to,
                    reason: "unknown user".into(),
                })?,
        };
        let (Some(ip), Some(port)) = (target.ip_addr, target.port) else {
            return Err(ClientError::Unreachable {
                uid: to,
                reason: "no direct address (offline)".into(),
            });
        };
        let sent_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let record = Signed::sign(
            ChatMessage {
                from,
                to,
                sent_ms,
                text: text.to_owned(),
            },
            &self.key,
        )?;
        let addr = SocketAddr::new(gossip_common::user_id::to_canonical(ip), port);
        if let Err(reason) = deliver(addr, record).await {
            self.state.lock().expect("lock").unreachable.insert(to);
            let _ = self.events_tx.send(Event::Unreachable(to)).await;
            return Err(ClientError::Unreachable { uid: to, reason });
        }
        Ok(())
    }

    /// Starts accepting direct messages on `bind` (port 0 picks one). Incoming messages are
    /// verified against the sender's key and appear as [`Event::Message`].
    pub async fn listen_direct(&self, bind: SocketAddr) -> Result<DirectListener, ClientError> {
        let uid = self.uid().ok_or(ClientError::NotLoggedIn)?;
        listen(bind, uid, self.state_handle(), self.events_tx.clone())
            .await
            .map_err(|source| ClientError::Connect {
                addr: bind.to_string(),
                source,
            })
    }

    fn state_handle(&self) -> Arc<dyn KeyLookup> {
        Arc::new(StateKeys(Arc::clone(&self.state)))
    }
}

struct StateKeys(Arc<Mutex<State>>);

impl KeyLookup for StateKeys {
    fn key_of(&self, uid: UserId) -> Option<gossip_common::PublicKey> {
        self.0
            .lock()
            .expect("lock")
            .contacts
            .get(&uid)
            .map(|u| u.public_key)
    }
}
