//! This server's RTT row and the rows of others: signing our own, verifying and storing
//! theirs, and the frames that hand every row to a new link. A row that does not verify
//! against its measurer's bound key is dropped, so no member can forge, alter or freeze
//! another's row.

use bytes::Bytes;
use gossip_common::codec::encode_frame as encode;
use gossip_common::message as m;

use super::{membership, now_ms, Federation, State};
use crate::mst::ServerId;

impl Federation {
    /// Signs this server's own row `row` (just made by membership), stores the signature with
    /// it, and returns the `updateRTTs` to flood.
    fn sign_own_row(&self, st: &mut State, mut row: membership::Row) -> m::UpdateRtts {
        let sig = self
            .signer
            .sign(
                gossip_common::Domain::ServerControl,
                &membership::row_bytes(&self.me, &row),
            )
            .to_bytes();
        st.members.set_own_sig(row.seq, sig);
        row.sig = Some(sig);
        membership::row_message(&self.me, &row, Some(&self.signer.public()))
    }

    /// A row from a peer: checked against the key bound to its measurer (bound on first sight
    /// from the key it carries), then stored if newer. Returns whether to forward it. A row
    /// that does not verify is dropped: no server can forge, alter or freeze another's row.
    pub(crate) fn receive_row(&self, u: &m::UpdateRtts) -> Result<bool, &'static str> {
        let measurer: ServerId = (u.host.clone(), u.port);
        let key = if measurer == self.me {
            self.signer.public()
        } else {
            let carried: gossip_common::PublicKey = u
                .key
                .as_deref()
                .ok_or("row without its measurer's key")?
                .parse()
                .map_err(|_| "row with an invalid key")?;
            if !self.claim_key(&measurer, &carried).accepted() {
                return Err("row signed by a key not bound to its measurer");
            }
            carried
        };
        let sig: gossip_common::Signature = u
            .sig
            .as_deref()
            .ok_or("unsigned row")?
            .parse()
            .map_err(|_| "row with an invalid signature")?;
        let (measurer, mut row) = membership::row_of(u);
        key.verify(
            gossip_common::Domain::ServerControl,
            &membership::row_bytes(&measurer, &row),
            &sig,
        )
        .map_err(|_| "row signature does not verify")?;
        row.sig = Some(sig.to_bytes());
        Ok(self.store_row(measurer, row))
    }

    /// Every row held, as `updateRTTs` frames with their measurers' keys (a link's opening).
    pub(crate) fn row_frames(&self) -> Vec<Bytes> {
        let mine = self.signer.public();
        let st = self.state.lock();
        st.members
            .rows()
            .iter()
            .filter(|(_, r)| r.sig.is_some())
            .map(|(k, r)| {
                let key = if *k == self.me {
                    Some(&mine)
                } else {
                    st.keys.key_of(k)
                };
                encode(membership::row_message(k, r, key))
            })
            .collect()
    }

    /// The rows held that are newer than what a peer's `serverlist` says it holds (its
    /// entries' `seq`; a measurer it does not list counts as `seq` 0), as `updateRTTs` frames.
    /// Nothing when the list carries no `seq` at all (a link's ordinary list: the rows go
    /// with the opening).
    pub(crate) fn rows_newer_than(&self, list: &m::ServerList) -> Vec<Bytes> {
        if list.servers.iter().all(|s| s.seq.is_none()) {
            return Vec::new();
        }
        let theirs: std::collections::HashMap<(&str, u16), u64> = list
            .servers
            .iter()
            .map(|s| ((s.host.as_str(), s.port), s.seq.unwrap_or(0)))
            .collect();
        let mine = self.signer.public();
        let st = self.state.lock();
        st.members
            .rows()
            .iter()
            .filter(|(k, r)| {
                r.sig.is_some() && theirs.get(&(k.0.as_str(), k.1)).copied().unwrap_or(0) < r.seq
            })
            .map(|(k, r)| {
                let key = if *k == self.me {
                    Some(&mine)
                } else {
                    st.keys.key_of(k)
                };
                encode(membership::row_message(k, r, key))
            })
            .collect()
    }

    /// Stores a row if it is newer than the one held; returns whether it was.
    fn store_row(&self, measurer: ServerId, row: membership::Row) -> bool {
        if measurer == self.me {
            // A row of ours from before a restart: republish past it at once, or the others
            // would keep the old one (our clock may even have gone back since).
            let bumped = {
                let mut st = self.state.lock();
                st.members.store_row(measurer, row);
                st.members
                    .bump_own_row(now_ms())
                    .map(|row| self.sign_own_row(&mut st, row))
            };
            if let Some(msg) = bumped {
                self.flood(&encode(msg), None);
                self.changed.notify_one();
            }
            return false;
        }
        let (newer, suspects) = {
            let mut st = self.state.lock();
            // Servers someone else now finds dead while our row says alive. Never taken on
            // their word: our own probe decides. But their measurer already waited out a dead
            // timeout, so ours is a short confirmation (`probe::confirm_loop`), not a second
            // full timeout: a death leaves every edge, and the tree, within one dead timeout
            // and a few seconds.
            let suspects: Vec<ServerId> = st
                .members
                .my_row()
                .map(|mine| {
                    row.rtts
                        .iter()
                        .filter(|(s, v)| v.is_none() && matches!(mine.rtts.get(*s), Some(Some(_))))
                        .map(|(s, _)| s.clone())
                        .collect()
                })
                .unwrap_or_default();
            (st.members.store_row(measurer, row), suspects)
        };
        if newer {
            self.changed.notify_one();
            if !suspects.is_empty() {
                // Their measurer has already seen them silent for a dead timeout.
                let since = tokio::time::Instant::now()
                    .checked_sub(self.probing.probe.dead_after)
                    .unwrap_or_else(tokio::time::Instant::now);
                self.suspect(suspects, since);
            }
        }
        newer
    }

    /// Asks the confirmation loop to probe `servers`, silent since `since`, now. Bounded: a
    /// server is held once (with the earliest silence), and only known servers are named.
    pub(crate) fn suspect(&self, servers: Vec<ServerId>, since: tokio::time::Instant) {
        let mut held = self.suspects.lock();
        for s in servers {
            if held.len() >= membership::MAX_SERVERS && !held.contains_key(&s) {
                break;
            }
            let at = held.entry(s).or_insert(since);
            *at = (*at).min(since);
        }
        drop(held);
        self.confirm_now.notify_one();
    }

    /// Folds measurements into this node's row (with damping) and, if the row changed,
    /// publishes it with a new `seq` to every link.
    pub(super) fn publish_measurements(&self, measured: &[(ServerId, Option<u64>)]) -> bool {
        let (row, redial) = {
            let mut st = self.state.lock();
            // A server that answers probes again is dialled again at once: a restarted
            // neighbour must not wait out the backoff its downtime built up (up to a minute).
            let before = st.backoff.len();
            st.backoff
                .retain(|k, _| !measured.iter().any(|(s, m)| s == k && m.is_some()));
            let redial = st.backoff.len() != before;
            let row = st
                .members
                .apply_measurements(measured, now_ms())
                .map(|row| self.sign_own_row(&mut st, row));
            (row, redial)
        };
        if redial {
            self.changed.notify_one();
        }
        let Some(row) = row else {
            return false;
        };
        tracing::debug!(seq = row.seq, "publishing RTT row");
        self.flood(&encode(row), None);
        self.changed.notify_one();
        true
    }
}
