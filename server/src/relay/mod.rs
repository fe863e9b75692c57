//! Relayed messages through the federation (`docs/messaging.md`): the checks a message passes
//! before a server keeps it, storing it (the [`Mailbox`]), flooding it along the tree, pushing
//! it to the recipient's sessions here, and dropping it everywhere once the recipient's client
//! says it has it. The same code serves a message from a client and from a peer; only the
//! sender's own server rate-limits and waits for a second copy before acknowledging. A link-up
//! compares mailboxes ([`mailsync`]) so a server that was away gets what it missed.

pub mod mailsync;
mod timing;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use gossip_common::codec::encode_frame as frame;
use gossip_common::message::{self as m, Relay as RelayMsg};
use gossip_common::{Domain, ErrorCode, UserId};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::budget::Budgets;
use crate::federation::{Federation, LinkTx};
use crate::mailbox::{Mailbox, Origin, Refused, Sender, UNCERTIFIED};
use crate::metrics::Metrics;
use crate::mst::ServerId;
use crate::presence::Presence;
use crate::ratelimit::{Limiter, Rate};
use crate::registration::Sponsors;
use crate::store::Store;
use crate::tasks::Tasks;

/// Relayed messages one user may send: a burst of 60, then one a second.
const RELAY_RATE: Rate = Rate {
    burst: 60.0,
    per_second: 1.0,
};

/// Senders whose relay rate is tracked at once (each entry is a few dozen bytes).
const RATE_TRACKED_USERS: usize = 100_000;

/// The relay service of one server.
pub struct Relay {
    store: Arc<Store>,
    presence: Arc<Presence>,
    mailbox: Arc<Mailbox>,
    federation: Arc<Federation>,
    /// Which server's users a sender is one of (the mailbox's per-origin bound).
    sponsors: Arc<Sponsors>,
    metrics: Arc<Metrics>,
    /// Relayed messages sent per user, from this server's clients.
    rate: Mutex<Limiter<UserId>>,
    /// The same rate for messages that arrive from peers: a member cannot send more in one
    /// user's name than that user's own server would take.
    peer_rate: Mutex<Limiter<UserId>>,
    /// When this server's clients' messages were accepted, for the delivery-time histogram.
    sent_at: Mutex<timing::SentClock>,
    tasks: Tasks,
}

/// How long the sender's server waits for another server to store a message before it
/// acknowledges it anyway (with only its own copy).
const SECOND_COPY_WAIT: Duration = Duration::from_secs(2);

/// What a server answers a peer that relayed it a message.
enum PeerAnswer {
    /// `stored`: this server has it on disk (`true`: stored now, it was news here).
    Stored(bool),
    /// The message was delivered already: its signed notice.
    Delivered(m::Delivered),
    /// Nothing (refused, or the disk failed).
    Nothing,
}

/// Whether `id` is 32 lowercase hex digits (a relayed message's id).
pub(crate) fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks the envelope's signature against the sender's bound key.
fn verify(store: &Store, r: &RelayMsg) -> Result<(), (ErrorCode, String)> {
    let key = store
        .public_key(r.from)
        .ok_or((ErrorCode::UnknownUser, format!("no user {}", r.from)))?;
    let sig: gossip_common::Signature = r
        .sig
        .parse()
        .map_err(|_| (ErrorCode::Malformed, "sig is not a signature".to_owned()))?;
    key.verify(Domain::Relay, &gossip_common::relay_bytes(r), &sig)
        .map_err(|_| {
            (
                ErrorCode::BadSignature,
                "the message's signature does not verify".to_owned(),
            )
        })
}

fn refused(e: Refused) -> (ErrorCode, String) {
    let code = match e {
        Refused::TooLarge => ErrorCode::TooLarge,
        Refused::BadId => ErrorCode::Malformed,
        Refused::Unstored => ErrorCode::Internal,
        Refused::MailboxFull
        | Refused::StrangerQuota
        | Refused::SenderFull
        | Refused::OriginFull
        | Refused::Full
        | Refused::Expired => ErrorCode::NotAllowed,
    };
    (code, e.to_string())
}

/// How long a message from a peer waits for its sender's record (a link-up resync of a large
/// store takes this long at most before it falls back).
const SENDER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Relay {
    /// The service over these handles.
    pub(crate) fn new(
        store: Arc<Store>,
        presence: Arc<Presence>,
        mailbox: Arc<Mailbox>,
        (federation, sponsors): (Arc<Federation>, Arc<Sponsors>),
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Relay {
        Relay {
            store,
            presence,
            mailbox,
            federation,
            sponsors,
            metrics,
            rate: Mutex::new(Limiter::new(RELAY_RATE, RATE_TRACKED_USERS)),
            peer_rate: Mutex::new(Limiter::new(RELAY_RATE, RATE_TRACKED_USERS)),
            sent_at: Mutex::new(timing::SentClock::default()),
            tasks,
        }
    }

    /// What a user logging in here gets: the ids of the messages that waited for them,
    /// wherever they were sent (each read with [`Self::held_message`]), then the deliveries of
    /// what they sent while they were away.
    pub(crate) fn held_for(&self, uid: UserId) -> (Vec<String>, Vec<m::Delivered>) {
        (
            self.mailbox.for_recipient(uid),
            self.mailbox.take_receipts(uid),
        )
    }

    /// Held message `id` as its recipient gets it (read back from the mailbox's file), if it
    /// is still held.
    pub(crate) async fn held_message(&self, id: &str) -> Option<RelayMsg> {
        let r = self.mailbox.get(id).await?;
        Some(self.for_recipient(r))
    }

    /// A peer's `stored`: a copy of message `id` is on its disk.
    pub(crate) fn on_stored(&self, id: &str) {
        self.mailbox.stored(id);
    }

    /// A relayed message from `peer`, answered on `tx` once it is stored (or with its notice,
    /// if delivered already). Stored by a task of its own (each waits for its fdatasync),
    /// bounded like records; a message whose sender this server does not know yet waits for
    /// the sender's record (the link-up resync, or its `newuser` handled beside this frame),
    /// off the reader and bounded in bytes, so the records can still arrive. Breaks only when
    /// the link is ending. `check`: the link is a repair check (a new message is counted as
    /// learned by repair).
    pub(crate) async fn on_relay_from_peer(
        self: &Arc<Self>,
        r: RelayMsg,
        peer: &ServerId,
        (budgets, tx): (&Budgets, &LinkTx),
        check: bool,
    ) -> ControlFlow<()> {
        let slot = if self.store.public_key(r.from).is_some() && self.store.contains_user(r.to) {
            let Ok(slot) = Arc::clone(&budgets.records).acquire_owned().await else {
                return ControlFlow::Break(());
            };
            slot
        } else {
            let kib = (r.body.len() / 1024).max(1) as u32;
            let Ok(slot) = Arc::clone(&budgets.parked).try_acquire_many_owned(kib) else {
                tracing::info!(id = %r.id, "relayed message refused: too many wait for their users' records");
                return ControlFlow::Continue(());
            };
            slot
        };
        let (this, peer, tx) = (Arc::clone(self), peer.clone(), tx.clone());
        self.tasks.spawn(async move {
            let id = r.id.clone();
            let answer = match this.receive(r, &peer).await {
                PeerAnswer::Stored(new) => {
                    if new && check {
                        this.federation.note_repaired(&peer, 1);
                    }
                    Some(frame(m::Stored { id }))
                }
                PeerAnswer::Delivered(d) => Some(frame(d)),
                PeerAnswer::Nothing => None,
            };
            if let Some(frame) = answer {
                let _ = tx.try_send((Instant::now(), frame));
            }
            drop(slot);
        });
        ControlFlow::Continue(())
    }

    /// A message from the logged-in client `uid`: checked, stored, flooded, pushed if the
    /// recipient is here; returns once it is on this server's disk and (if any server is
    /// linked) on one other server's, or why it was refused.
    pub(crate) async fn submit(
        &self,
        uid: UserId,
        mut r: RelayMsg,
    ) -> Result<(), (ErrorCode, String)> {
        let started = std::time::Instant::now();
        if r.from != uid {
            return Err((ErrorCode::NotAllowed, "from must be your own UserID".into()));
        }
        if !valid_id(&r.id) {
            return Err((
                ErrorCode::Malformed,
                "id must be 32 lowercase hex digits".into(),
            ));
        }
        if let Err(wait) = self.rate.lock().take(&uid, tokio::time::Instant::now()) {
            let text = format!("too many messages; try again in {} s", wait.as_secs() + 1);
            return Err((ErrorCode::NotAllowed, text));
        }
        if !self.store.contains_user(r.to) {
            return Err((ErrorCode::UnknownUser, format!("no user {}", r.to)));
        }
        verify(&self.store, &r)?;
        r.request = None;
        let second_copy = self.mailbox.await_stored(&r.id);
        let Some(disk) = self
            .mailbox
            .hold(r.clone(), self.sender_of(&r), self.origin_of(&r))
            .map_err(refused)?
        else {
            return Ok(()); // a retry of a message already held (or delivered)
        };
        // Timed before it is forwarded: a recipient online here can answer at once.
        self.sent_at.lock().accepted(&r.id, started);
        // Forwarded at once; acknowledged only once it is on this disk and another.
        self.push_to_recipient(&r);
        // A second copy is awaited whenever another server is alive, linked or not: while
        // the tree re-forms a server can be between links for a moment, and the next link's
        // opening exchange carries the message (and its `stored`) over.
        let others = self.federation.has_live_peers();
        self.federation.flood(&frame(r.clone()), None);
        disk.done().await.map_err(refused)?;
        self.metrics.relayed.inc();
        if others
            && tokio::time::timeout(SECOND_COPY_WAIT, second_copy)
                .await
                .is_err()
        {
            tracing::warn!(id = %r.id, "no other server confirmed the message in time; acknowledged with this server's copy only");
        }
        crate::metrics::observe(&self.metrics.relay_ack_seconds, started);
        Ok(())
    }

    /// A message from peer `peer`: kept if its signature verifies, then flooded on and pushed
    /// if the recipient is here. Says what to answer the peer.
    async fn receive(&self, mut r: RelayMsg, peer: &ServerId) -> PeerAnswer {
        if !valid_id(&r.id) {
            tracing::info!(id = %r.id, "relayed message refused: bad id");
            return PeerAnswer::Nothing;
        }
        if !self.store.await_user(r.from, SENDER_WAIT).await {
            tracing::info!(id = %r.id, from = %r.from, "relayed message refused: its sender's record never came");
            return PeerAnswer::Nothing;
        }
        // A message to nobody is refused, not kept: no member can store its junk under
        // UserIDs that do not exist.
        if !self.store.await_user(r.to, SENDER_WAIT).await {
            tracing::info!(id = %r.id, to = %r.to, "relayed message refused: no such recipient");
            return PeerAnswer::Nothing;
        }
        if verify(&self.store, &r).is_err() {
            tracing::info!(id = %r.id, "relayed message refused: bad signature");
            return PeerAnswer::Nothing;
        }
        // Delivered already, and the peer did not know (it was cut off when the notice
        // flooded): it gets the notice, so it drops the message and tells the sender.
        if let Some(notice) = self.mailbox.notice(&r.id) {
            return PeerAnswer::Delivered(notice);
        }
        r.request = None;
        // A new message from a peer spends its sender's rate here too (a copy of one held or
        // delivered does not).
        if !self.mailbox.knows(&r.id) {
            if let Err(wait) = self.peer_rate.lock().take(&r.from, Instant::now()) {
                tracing::info!(id = %r.id, from = %r.from, retry_in = ?wait, "relayed message refused: its sender is over the relay rate");
                return PeerAnswer::Nothing;
            }
        }
        match self
            .mailbox
            .hold(r.clone(), self.sender_of(&r), self.origin_of(&r))
        {
            Ok(Some(disk)) => {
                // Forwarded at once (each hop would otherwise add its fdatasync to the
                // delivery); `stored` is answered only once it is on disk here.
                let id = r.id.clone();
                self.push_to_recipient(&r);
                self.federation.flood(&frame(r), Some(peer));
                match disk.done().await {
                    Ok(()) => PeerAnswer::Stored(true),
                    Err(e) => {
                        tracing::warn!(%id, error = %e, "relayed message not stored");
                        PeerAnswer::Nothing
                    }
                }
            }
            Ok(None) => PeerAnswer::Stored(false),
            Err(e) => {
                tracing::info!(id = %r.id, error = %e, "relayed message not kept");
                PeerAnswer::Nothing
            }
        }
    }

    /// Pushes `r` to the recipient's sessions here, marked as a request if the sender is not
    /// in their contact list.
    fn push_to_recipient(&self, r: &RelayMsg) {
        if !self.presence.is_logged_in(r.to) {
            return;
        }
        self.presence
            .send_to_user(r.to, None, &frame(self.for_recipient(r.clone())));
    }

    /// Who `r` is from, as its recipient sees it: a contact, or a stranger.
    fn sender_of(&self, r: &RelayMsg) -> Sender {
        let contact = self
            .store
            .contact_list(r.to)
            .is_some_and(|cl| cl.contacts.contains(&r.from));
        if contact {
            Sender::Contact
        } else {
            Sender::Stranger
        }
    }

    /// Which origin `r`'s sender is of (the server that sponsored their registration).
    fn origin_of(&self, r: &RelayMsg) -> Origin {
        self.store
            .user(r.from)
            .map_or(UNCERTIFIED, |u| self.sponsors.origin_of(&u))
    }

    /// `r` as its recipient gets it: with `request` set when the sender is not a contact.
    pub(crate) fn for_recipient(&self, mut r: RelayMsg) -> RelayMsg {
        r.request = (self.sender_of(&r) == Sender::Stranger).then_some(1);
        r
    }

    /// The recipient's client has message `d.id` (`from_peer`: flooded by a peer; `None`: said
    /// by the recipient's session here). Checked against the recipient's key; the message is
    /// dropped here, the notice flooded on, and the sender's sessions here told.
    pub(crate) fn delivered(&self, d: m::Delivered, from_peer: Option<&ServerId>) -> bool {
        let (Some(key), Ok(sig)) = (
            self.store.public_key(d.to),
            d.sig.parse::<gossip_common::Signature>(),
        ) else {
            return false;
        };
        if key
            .verify(
                Domain::Relay,
                &gossip_common::delivered_bytes(&d.id, d.from, d.to),
                &sig,
            )
            .is_err()
        {
            tracing::info!(id = %d.id, "delivered notice refused: not signed by the recipient");
            return false;
        }
        let (news, held) = self.mailbox.delivered(&d);
        if !news {
            return false; // known delivered already: the flood ends here
        }
        // Not held here yet is possible: the notice can overtake the message, which a peer's
        // link stores by a task of its own. It is news all the same (and the late copy is not
        // kept).
        if held.is_some_and(|h| h.to != d.to || h.from != d.from) {
            tracing::warn!(id = %d.id, "delivered notice for a message of other users; ignored");
            return false;
        }
        if let Some(took) = self
            .sent_at
            .lock()
            .delivered(&d.id, std::time::Instant::now())
        {
            crate::metrics::observe_duration(&self.metrics.relay_delivery_seconds, took);
        }
        let f = frame(d.clone());
        self.federation.flood(&f, from_peer);
        if self.presence.is_logged_in(d.from) {
            self.presence.send_to_user(d.from, None, &f);
        } else {
            // Told at the sender's next login here (each server keeps its own).
            self.mailbox.keep_receipt(d);
        }
        true
    }
}
