//! The server door's dispatcher: routes one decoded message from a peer to the service that
//! owns it. It decides nothing itself beyond answering `ping` and ending the link on
//! `disconnect`; every rule lives with its owner.

use std::ops::ControlFlow::{self, Break, Continue};

use gossip_common::codec::encode_frame as encode;
use gossip_common::message as m;
use gossip_common::{Body, Message};
use tokio::time::Instant;

use super::PeerDoor;
use crate::budget::Budgets;
use crate::federation::{Control, LinkTx};
use crate::mst::ServerId;
use crate::registration::{LockRate, Registration};
use crate::relay::mailsync::{self, MailSync};
use crate::replication::{Resync, SyncIn};

/// What one link keeps for the services its messages go to.
pub(crate) struct LinkState {
    /// The peer.
    pub(crate) peer: ServerId,
    /// Its address on this connection.
    pub(crate) addr: std::net::SocketAddr,
    /// Its control queue (answers go here).
    pub(crate) tx: LinkTx,
    /// Its bulk queue (sync data, mailbox lists).
    pub(crate) bulk: LinkTx,
    /// The event-count sync's progress.
    pub(crate) sync: SyncIn,
    /// The link-up resync.
    pub(crate) resync: Resync,
    /// The link's lock-request budget.
    pub(crate) locks: LockRate,
    /// The link-up mailbox exchange.
    pub(crate) mail: MailSync,
    /// What the link may have in flight.
    pub(crate) budgets: Budgets,
    /// Whether this is a repair check (what it brings is counted as learned by repair).
    pub(crate) check: bool,
    /// Whether this server's wills went out on this link after a `willDigest` asked.
    pub(crate) wills_announced: bool,
    /// `willDigest`s received.
    pub(crate) will_digests: u32,
    /// Whether this server's list with each row's `seq` went out on this check.
    pub(crate) rows_listed: bool,
}

/// Routes `msg` from the link's peer to its owner. Breaks when the link is to end.
pub(super) async fn dispatch(
    door: &PeerDoor,
    link: &mut LinkState,
    msg: Message,
) -> ControlFlow<()> {
    let peer = &link.peer;
    let fed = &door.federation;
    match msg.body {
        Body::Ping(_) => {
            let _ = link.tx.try_send((Instant::now(), encode(m::Pong {})));
        }
        Body::Pong(_) | Body::Ok(_) => {}
        Body::Disconnect(d) => {
            tracing::info!(reason = ?d.reason, "peer closed the link");
            return Break(());
        }
        // The federation itself.
        Body::ServerList(l) => {
            // A repair check's list says which rows the peer holds: it gets those it lacks,
            // and, once, this server's list, so that it sends the rows this one lacks.
            let now = Instant::now();
            for row in fed.rows_newer_than(&l) {
                let _ = link.tx.try_send((now, row));
            }
            let seqs = l.servers.iter().any(|s| s.seq.is_some());
            if link.check && seqs && !std::mem::replace(&mut link.rows_listed, true) {
                let _ = link.tx.try_send((now, fed.check_server_list()));
            }
            fed.on_server_list(l, peer);
        }
        Body::ReqServerList(r) => {
            let now = Instant::now();
            match (
                r.rows,
                r.rsum.as_deref().map(|t| u128::from_str_radix(t, 16)),
            ) {
                // A repair check's rows digest: nothing to say if ours is the same.
                (Some(n), Some(Ok(sum))) => {
                    if fed.rows_digest() != (n, sum)
                        && !std::mem::replace(&mut link.rows_listed, true)
                    {
                        let _ = link.tx.try_send((now, fed.check_server_list()));
                    }
                }
                _ => {
                    let servers = fed.server_list();
                    let _ = link.tx.try_send((now, encode(m::ServerList { servers })));
                }
            }
        }
        Body::AddServer(a) => fed.on_add_server(a, peer),
        Body::DeleteServer(d) => fed.on_delete_server(d, peer),
        Body::UpdateRtts(u) => {
            if let Control::RowRefused(_) = fed.on_row(u, peer) {
                door.metrics.refused_rows.inc();
            }
        }
        // Records and their sync.
        body @ (Body::UserInfo(_) | Body::NewUser(_) | Body::ChangeCl(_)) => {
            return door.replication.on_record(body, peer, &link.budgets).await;
        }
        Body::Reconcile(r) => link.resync.on_frame(&door.replication, r),
        Body::EventCounts(ec) => {
            let state = (&mut link.sync, &mut link.resync);
            return door
                .replication
                .on_event_counts(state, ec, &link.tx, &link.bulk);
        }
        Body::ChangedEntries(_) => {
            // Routed to `Replication::on_batch` before decoding; never reaches here.
        }
        // Last wills.
        Body::HeldWill(h) => door.wills.on_held_will(h, peer, &link.budgets.records),
        Body::WillDigest(d) => {
            let seen = (&mut link.wills_announced, &mut link.will_digests);
            door.wills.on_will_digest(d, &link.bulk, seen)
        }
        // Registrations.
        Body::LockUid(l) => {
            if let Some(answer) =
                Registration::on_lock_request(&door.registration, l, peer, &mut link.locks)
            {
                let _ = link.tx.try_send((Instant::now(), answer));
            }
        }
        Body::LockResult(r) => door.registration.on_lock_result(r, peer),
        Body::UnlockUid(u) => door.registration.on_unlock(u, peer),
        // Relayed messages.
        Body::Relay(r) => {
            return door
                .relay
                .on_relay_from_peer(r, peer, (&link.budgets, &link.tx), link.check)
                .await;
        }
        Body::Stored(s) => door.relay.on_stored(&s.id),
        Body::MailboxDigest(d) => {
            mailsync::answer_digest(&door.relay, &mut link.mail, &d, &link.bulk)
        }
        Body::MailboxIds(part) => {
            mailsync::answer_ids(&door.relay, &mut link.mail, &part, &link.bulk)
        }
        Body::Delivered(d) => {
            door.relay.delivered(d, Some(peer));
        }
        Body::Error(e) => tracing::info!(code = ?e.code, text = %e.text, "peer reported an error"),
        other => tracing::debug!(msgtype = other.msgtype(), "ignored on a server link"),
    }
    Continue(())
}
