//! Replication: records from peers (one at a time as they propagate, or in sync batches)
//! verified, stored, pushed to local watchers and forwarded; and the resync a link runs when
//! it comes up — a range reconciliation ([`resync`], over `crate::reconcile`) or the spec's
//! event-count sync ([`sync_in`]) — with the records the peer lacks sent as batches
//! ([`batches`]).

mod batches;
pub(crate) mod resync;
pub(crate) mod sync_in;

use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::Bytes;
use gossip_common::codec::encode_frame as encode;
use gossip_common::message as m;
use gossip_common::{Body, ContactList, Signed, UserInfo};
use tokio::time::Instant;

use crate::budget::Budgets;
use crate::federation::{Federation, LinkTx};
use crate::metrics::Metrics;
use crate::mst::{id_string, ServerId};
use crate::records::Records;
use crate::registration::Sponsors;
use crate::store::{Mode, Store, StoreError};
use crate::tasks::Tasks;

pub(crate) use batches::is_changed_entries;
pub(crate) use resync::Resync;
pub(crate) use sync_in::{SyncIn, SyncStep};

/// The replication service of one server.
pub(crate) struct Replication {
    store: Arc<Store>,
    records: Arc<Records>,
    federation: Arc<Federation>,
    /// Who may add users here, and how many.
    sponsors: Arc<Sponsors>,
    metrics: Arc<Metrics>,
    /// The frame limit: sync batches are filled to about 3/4 of it.
    max_frame: usize,
    /// Whether this server offers range reconciliation at link-up.
    range: bool,
    tasks: Tasks,
}

impl Replication {
    /// The service over these handles.
    pub(crate) fn new(
        store: Arc<Store>,
        records: Arc<Records>,
        federation: Arc<Federation>,
        sponsors: Arc<Sponsors>,
        metrics: Arc<Metrics>,
        (max_frame, range): (usize, bool),
        tasks: Tasks,
    ) -> Replication {
        Replication {
            store,
            records,
            federation,
            sponsors,
            metrics,
            max_frame,
            range,
            tasks,
        }
    }

    /// Whether this server offers range reconciliation.
    pub(crate) fn offers_range(&self) -> bool {
        self.range
    }

    /// A propagated record from `peer` (`UserInfo`, `newuser`, `ChangeCL`). Applied by a task
    /// of its own: the link's reader must not wait for each record's fdatasync (it would carry
    /// one record per flush); `budgets` keeps a fast peer from queueing unbounded work. Two
    /// changes of one record racing is harmless: the newer event count wins wherever they
    /// meet. Breaks only when the link is ending.
    pub(crate) async fn on_record(
        self: &Arc<Self>,
        body: Body,
        peer: &ServerId,
        budgets: &Budgets,
    ) -> ControlFlow<()> {
        let Ok(slot) = Arc::clone(&budgets.records).acquire_owned().await else {
            return ControlFlow::Break(());
        };
        let (this, peer) = (Arc::clone(self), peer.clone());
        self.tasks.spawn(async move {
            let origin = format!("peer:{}", id_string(&peer));
            this.apply_from_peer(&peer, body, &origin).await;
            drop(slot);
        });
        ControlFlow::Continue(())
    }

    /// A `changedEntries` frame from `peer`, undecoded: decoded, verified and stored by a task
    /// of its own (bounded by `budgets`), so several batches are worked on at once, on every
    /// core the node has, while the link's reader goes on reading. `check`: the link is a
    /// repair check (what is news is counted as learned by repair).
    pub(crate) async fn on_batch(
        self: &Arc<Self>,
        frame: Bytes,
        peer: &ServerId,
        budgets: &Budgets,
        check: bool,
    ) -> ControlFlow<()> {
        let Ok(slot) = Arc::clone(&budgets.batches).acquire_owned().await else {
            return ControlFlow::Break(());
        };
        self.tasks.spawn(batches::apply_changed_entries(
            Arc::clone(self),
            (peer.clone(), check),
            frame,
            slot,
        ));
        ControlFlow::Continue(())
    }

    /// A part of the peer's `eventCounts` list. Once it is complete, the records the peer
    /// lacks go out on `bulk`; a refused list is answered on `tx` (and may close the link).
    pub(crate) fn on_event_counts(
        self: &Arc<Self>,
        (sync, resync): (&mut SyncIn, &mut Resync),
        ec: m::EventCounts,
        tx: &LinkTx,
        bulk: &LinkTx,
    ) -> ControlFlow<()> {
        resync.on_event_counts(self);
        match sync.on_event_counts(ec) {
            SyncStep::Pending => {}
            SyncStep::Refused { why, close } => {
                tracing::warn!(why, "sync request refused");
                let _ = tx.try_send((
                    Instant::now(),
                    encode(m::Error {
                        code: gossip_common::ErrorCode::NotAllowed,
                        text: why.into(),
                        current: None,
                    }),
                ));
                if close {
                    return ControlFlow::Break(());
                }
            }
            SyncStep::Complete {
                users: theirs_users,
                lists: theirs_lists,
            } => {
                let users = crate::sync::to_send(&self.store.user_event_counts(), &theirs_users);
                let lists = crate::sync::to_send(&self.store.list_event_counts(), &theirs_lists);
                tracing::info!(
                    users = users.len(),
                    lists = lists.len(),
                    "sync: sending what the peer lacks"
                );
                self.metrics
                    .sync_records_sent
                    .inc_by((users.len() + lists.len()) as u64);
                self.metrics.sync_rounds.inc();
                // Sent by a task of its own: a large sync takes a while, and this link's reader
                // must keep reading meanwhile, or two nodes syncing to each other could each
                // wait for the other to read.
                self.tasks.spawn(batches::send_changed_entries(
                    Arc::clone(self),
                    users,
                    lists,
                    bulk.clone(),
                ));
            }
        }
        ControlFlow::Continue(())
    }

    /// A record propagated by a peer (`UserInfo`, `newuser`, `ChangeCL`): stored if it is news,
    /// pushed to local watchers and forwarded.
    async fn apply_from_peer(&self, peer: &ServerId, body: Body, origin: &str) {
        match body {
            Body::UserInfo(u) => self.apply_user(u.record, false, Some(peer), origin).await,
            Body::NewUser(n) => self.apply_user(n.record, true, Some(peer), origin).await,
            Body::ChangeCl(c) => self.apply_list(c.record, Some(peer), origin).await,
            other => tracing::debug!(msgtype = other.msgtype(), "not a record"),
        }
    }

    /// Stores a UserInfo from a peer; if it is news, pushes it to local watchers and forwards
    /// it.
    async fn apply_user(
        &self,
        record: Signed<UserInfo>,
        new: bool,
        from: Option<&ServerId>,
        origin: &str,
    ) {
        if let Some(peer) = from {
            if !self.admits(&record, peer) {
                return;
            }
        }
        // Pushed and forwarded as soon as it is verified, not after this node's disk flush: a
        // flush per hop would add up along the tree (see `Store::apply_user_info_then`).
        match self
            .store
            .apply_user_info_then(record, Mode::Replicate, origin, |r| {
                self.records.user_changed_from(r, None, from, new)
            })
            .await
        {
            Ok(_) => {}
            Err(StoreError::Stale { .. }) => {}
            Err(e) => tracing::warn!(error = %e, %origin, "record from peer refused"),
        }
    }

    /// Whether a UserInfo from `peer` may be stored: any record of a user held here; a new
    /// user only as its sponsor's budget allows (`registration/sponsor.rs`). Refusals are
    /// logged and counted.
    pub(super) fn admits(&self, record: &Signed<UserInfo>, peer: &ServerId) -> bool {
        if self.store.contains_user(record.user_id) {
            return true;
        }
        match self.sponsors.admit(record, peer) {
            Ok(()) => true,
            Err(why) => {
                self.metrics.refused_new_users.inc();
                tracing::debug!(uid = %record.user_id, peer = %id_string(peer), %why, "new user not admitted");
                false
            }
        }
    }

    async fn apply_list(&self, record: Signed<ContactList>, from: Option<&ServerId>, origin: &str) {
        match self.store.apply_contact_list(record, origin).await {
            Ok(applied) => self.records.list_changed_from(&applied.record, from),
            Err(StoreError::Stale { .. }) => {}
            Err(e) => tracing::warn!(error = %e, %origin, "contact list from peer refused"),
        }
    }
}
