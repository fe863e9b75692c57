//! [`Event`]s, what happened without being asked for, and [`Events`], their stream: the spec's
//! "message buffer". The reader task (in `connection`) and the direct listener feed it.

use std::pin::Pin;
use std::task::{Context, Poll};

use gossip_common::message as m;
use gossip_common::{ChatMessage, ErrorCode, Signed, UserId, UserInfo};
use tokio::sync::mpsc;

/// Something that happened without being asked for.
#[derive(Debug, Clone)]
pub enum Event {
    /// A contact's UserInfo changed (status, message, address…).
    Presence(Signed<UserInfo>),
    /// A direct chat message whose signature verified against the sender's key.
    Message(Signed<ChatMessage>),
    /// A contact could not be reached directly; the client now shows them offline
    /// (the spec's client-side detection of users who dropped without logging out).
    Unreachable(UserId),
    /// A notice from the server.
    ServerMessage(String),
    /// A message relayed through the servers (already acknowledged to them as delivered).
    /// `request`: the sender is not in your contact list.
    Relayed {
        /// The message (its body is what the sender's client put in it).
        message: m::Relay,
        /// Whether the sender is not among your contacts (a message request).
        request: bool,
    },
    /// The recipient's client has a message you sent through the servers.
    Delivered {
        /// The message id (as [`GossipClient::send_relayed`] returned it).
        ///
        /// [`GossipClient::send_relayed`]: crate::GossipClient::send_relayed
        id: String,
        /// The recipient.
        to: UserId,
    },
    /// An `error` not tied to a request.
    Error {
        /// Code.
        code: ErrorCode,
        /// Explanation.
        text: String,
    },
    /// The connection ended.
    Disconnected(String),
}

/// The stream of [`Event`]s of one client.
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client and its connection are gone.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures::Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
