//! Replicated last wills: the will of every user logged in anywhere in the federation, held by
//! every server, so that when a user's server dies the others publish it and nobody stays
//! "online" behind a dead server (`docs/presence.md`).
//!
//! A will is the user's own offline record, signed by the user, one event count past their
//! current record. The server the user is logged in to (its *home*) floods it as `heldWill`
//! when the client sets it and re-announces its own sessions' wills on every link-up. Every
//! server keeps the will while it is *outstanding*: newer than the record it stores for that
//! user. Any newer record (the user's next change, a clean logout, the will itself published
//! by anyone) supersedes it, so no cancellation message exists. A server publishes the wills
//! whose home its own probes judge dead and the wills of its own sessions left by a crash when
//! it restarts. When a user logs in, the event count of their outstanding will (if any) goes
//! to the client in the login's `ok`, and the client numbers its records past it, so a will
//! firing late is stale everywhere.
//!
//! This module is the service (holding and flooding, publishing, a peer's `heldWill`, the
//! link-up announcement); [`held`] keeps the wills and their file.

pub mod held;

use std::sync::Arc;
use std::time::Duration;

use gossip_common::codec::encode_frame;
use gossip_common::message::{HeldWill, WillDigest};
use gossip_common::{Signed, UserId, UserInfo};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::federation::{Federation, LinkTx};
use crate::metrics::Metrics;
use crate::mst::{id_string, ServerId};
use crate::records::Records;
use crate::store::{self, Store};
use crate::tasks::Tasks;

pub use held::{Refused, WillTable, Wills, MAX_HELD, MAX_PER_HOME};

/// How long a peer's will for a user not stored here waits for that user's first record.
const UNKNOWN_USER_WAIT: Duration = Duration::from_secs(2);

/// `willDigest`s looked at per link: a check carries one from each end and one answer.
const DIGESTS_PER_LINK: u32 = 4;

/// The last-will service of one server.
pub struct LastWills {
    held: Arc<Wills>,
    store: Arc<Store>,
    records: Arc<Records>,
    federation: Arc<Federation>,
    metrics: Arc<Metrics>,
    tasks: Tasks,
}

impl LastWills {
    /// The service over these handles.
    pub(crate) fn new(
        held: Arc<Wills>,
        store: Arc<Store>,
        records: Arc<Records>,
        federation: Arc<Federation>,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> LastWills {
        LastWills {
            held,
            store,
            records,
            federation,
            metrics,
            tasks,
        }
    }

    /// The wills held here.
    pub fn held(&self) -> &Wills {
        &self.held
    }

    /// The event count of `uid`'s outstanding will, if one is held.
    pub fn peek(&self, uid: UserId) -> Option<gossip_common::EventCount> {
        self.held.peek(uid)
    }

    /// Holds `will` for the sessions of `home` (verified by the caller: signed by the bound
    /// key) and floods it as `heldWill` to every link but `from_peer` if it is news here.
    pub fn hold(
        &self,
        home: ServerId,
        will: Signed<UserInfo>,
        from_peer: Option<&ServerId>,
    ) -> bool {
        if !self.held.hold(&self.store, &home, will.clone()) {
            return false;
        }
        let frame = encode_frame(HeldWill {
            host: home.0,
            port: home.1,
            record: will,
        });
        self.federation.flood(&frame, from_peer);
        true
    }

    /// Holds this server's own session's will (the client just set it).
    pub fn hold_own(&self, will: Signed<UserInfo>) -> bool {
        self.hold(self.federation.me().clone(), will, None)
    }

    /// Publishes every will held for `home` (a server judged dead, or this one after a crash).
    /// Returns how many were news.
    pub async fn publish_of(&self, home: &ServerId, why: &str) -> usize {
        let wills = self.held.take_home(home);
        if wills.is_empty() {
            return 0;
        }
        let n = self.publish(wills, why).await;
        tracing::info!(home = %id_string(home), published = n, why, "held last wills published");
        n
    }

    /// [`Self::publish_of`] by a task of its own.
    pub fn spawn_publish_of(self: &Arc<Self>, home: ServerId, why: &'static str) {
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            this.publish_of(&home, why).await;
        });
    }

    /// Stores and announces wills, all at once (their writes share `fdatasync`s). The same will
    /// published by several servers is one change: every copy after the first is stale.
    async fn publish(&self, wills: Vec<Signed<UserInfo>>, why: &str) -> usize {
        let origin = format!("will:{why}");
        let results = futures::future::join_all(wills.into_iter().map(|w| {
            self.store
                .apply_user_info_then(w, store::Mode::Update, &origin, |r| {
                    self.records.user_changed(r, None)
                })
        }))
        .await;
        let mut news = 0;
        for r in results {
            match r {
                Ok(_) => news += 1,
                Err(store::StoreError::Stale { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "held last will refused"),
            }
        }
        self.metrics.last_wills.inc_by(news as u64);
        news
    }

    /// A peer's `heldWill`. A new user's will can overtake their first record, which is being
    /// applied by a task of its own: it waits for it (briefly, and at most as many at a time
    /// as `waiting` has permits).
    pub(crate) fn on_held_will(
        self: &Arc<Self>,
        h: HeldWill,
        peer: &ServerId,
        waiting: &Arc<Semaphore>,
    ) {
        if self.store.contains_user(h.record.user_id) {
            self.hold_from_peer(h, peer);
            return;
        }
        let Ok(slot) = Arc::clone(waiting).try_acquire_owned() else {
            tracing::info!("held will for an unknown user dropped: too many waiting");
            return;
        };
        let (this, peer) = (Arc::clone(self), peer.clone());
        self.tasks.spawn(async move {
            let uid = h.record.user_id;
            this.store.await_user(uid, UNKNOWN_USER_WAIT).await;
            this.hold_from_peer(h, &peer);
            drop(slot);
        });
    }

    /// Holds a will a peer sent if it is the user's offline record signed by their bound key.
    fn hold_from_peer(&self, h: HeldWill, peer: &ServerId) {
        let record = h.record;
        let bound = self.store.public_key(record.user_id) == Some(record.public_key);
        if bound && !record.is_online() && record.verify_self().is_ok() {
            self.hold((h.host, h.port), record, Some(peer));
        } else {
            tracing::info!(uid = %record.user_id, "held will refused: not an offline record signed by the bound key");
        }
    }

    /// The wills held for `home` in brief: how many, and the wrapping sum of their signatures'
    /// 128-bit xxh3 hashes (the same set gives the same digest whatever order it came in).
    pub fn digest_of(&self, home: &ServerId) -> (u64, u128) {
        self.held
            .of_home(home)
            .iter()
            .fold((0, 0u128), |(n, sum), w| {
                let h = xxhash_rust::xxh3::xxh3_128(&w.signature().to_bytes());
                (n + 1, sum.wrapping_add(h))
            })
    }

    /// This server's own sessions' digest as a `willDigest` frame (`want`: answering one that
    /// differs).
    pub(crate) fn digest_frame(&self, home: &ServerId, want: bool) -> bytes::Bytes {
        let (count, sum) = self.digest_of(home);
        encode_frame(WillDigest {
            host: home.0.clone(),
            port: home.1,
            count,
            sum: format!("{sum:032x}"),
            want: want.then_some(1),
        })
    }

    /// A peer's `willDigest` on a repair check. Its own sessions' digest: answered with ours
    /// and `want` if they differ. An answer with `want` about this server's sessions: their
    /// wills go to the peer, once per check (`announced`). At most [`DIGESTS_PER_LINK`] are
    /// looked at per link (each costs a pass over one home's wills).
    pub(crate) fn on_will_digest(
        &self,
        d: WillDigest,
        bulk: &LinkTx,
        (announced, seen): (&mut bool, &mut u32),
    ) {
        *seen += 1;
        if *seen > DIGESTS_PER_LINK {
            tracing::info!("willDigest ignored: too many on one link");
            return;
        }
        let home: ServerId = (d.host.clone(), d.port);
        if d.want == Some(1) {
            if home == *self.federation.me() && !std::mem::replace(announced, true) {
                self.announce_to(bulk.clone());
            }
            return;
        }
        let Ok(sum) = u128::from_str_radix(&d.sum, 16) else {
            tracing::info!(sum = %d.sum, "willDigest refused: bad sum");
            return;
        };
        if self.digest_of(&home) != (d.count, sum) {
            let _ = bulk.try_send((Instant::now(), self.digest_frame(&home, true)));
        }
    }

    /// A link came up: the wills of this server's sessions go to it on its bulk queue, so a
    /// peer that was away holds them too.
    pub(crate) fn announce_to(&self, bulk: LinkTx) {
        let (held, me) = (Arc::clone(&self.held), self.federation.me().clone());
        self.tasks.spawn(async move {
            for record in held.of_home(&me) {
                let frame = encode_frame(HeldWill {
                    host: me.0.clone(),
                    port: me.1,
                    record,
                });
                if bulk.send((Instant::now(), frame)).await.is_err() {
                    break;
                }
            }
        });
    }
}
