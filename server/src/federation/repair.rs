//! Repair checks: the path around a tree node that does not forward.
//!
//! The tree is the fast path: every change is flooded along it, and only along it. A member
//! that sits in the tree and forwards nothing used to cut the federation in two for good (the
//! only repair was a link's opening). So every `repair_interval` (default 10 s) each server
//! opens a short **check** with one server chosen at random among those it measures alive and
//! is not linked to: the same Noise handshake as a link, `serverID` with the word `check`,
//! then the link-up exchange a new link runs — the range reconciliation of records (161 bytes
//! when nothing differs), the mailbox digests, the digest of each end's own sessions' wills
//! (the wills cross only if it differs), and the server lists with each row's `seq` (each end
//! sends only the rows the other lacks) — and then it closes once the exchange has gone quiet. A check is never entered in the link
//! table: nothing is flooded over it and the tree does not see it. What it brings is stored
//! and flooded along the tree like anything else, so one check across the gap repairs the
//! whole far side.
//!
//! Why periodic anti-entropy rather than lazy digests on every update (Plumtree's IHAVE): it
//! costs nothing per update, a fixed few hundred bytes per interval when nothing differs, and
//! it repairs everything the link-up exchange covers with code that already exists. Its bound:
//! an update withheld by one server reaches the far side on the first check that crosses the
//! gap; a server whose only tree neighbour withholds crosses it on its own next check (every
//! partner it can pick is on the far side), so within one interval plus the exchange.
//!
//! Bounds: one check out at a time per server; at most [`MAX_CHECKS_IN`] accepted at once
//! (more are refused); a check lasts at most [`CHECK_MAX`]; link-ups, checks included, count
//! against the key's link-up rate.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::{Federation, Hooks, LinkKind};
use crate::mst::{id_string, ServerId};

/// Checks accepted at once; more are refused (each costs a handshake and an exchange).
pub(crate) const MAX_CHECKS_IN: usize = 16;

/// A check ends once nothing has arrived on it for this long (its exchange is done).
pub(crate) const CHECK_QUIET: Duration = Duration::from_secs(2);

/// A check ends after this long whatever it is doing (a resync that needs longer finishes on
/// the next check, or on a link).
pub(crate) const CHECK_MAX: Duration = Duration::from_secs(60);

/// Tree neighbours whose repair counts are kept (a federation's servers are bounded anyway;
/// this bounds the map whatever the tree did over time).
const MAX_BLAMED: usize = 4096;

/// What repair checks brought that the tree had not delivered: in all, and per tree neighbour
/// it should have come through (the first hop of the tree path toward the server checked).
///
/// The attribution is a hint, not proof: on a path A–H–R–B where R withholds, A counts
/// against H (honest) and H against R. Only R's own neighbours count against R on every
/// check, which is why an operator reads it across servers and why no edge is cut on it.
#[derive(Debug, Default)]
pub(crate) struct Learned {
    total: u64,
    via: HashMap<ServerId, u64>,
}

impl Learned {
    /// `n` items learned from a check; `via`: the tree neighbour they should have come through.
    pub(crate) fn note(&mut self, via: Option<ServerId>, n: u64) {
        self.total += n;
        if let Some(v) = via {
            if self.via.len() < MAX_BLAMED || self.via.contains_key(&v) {
                *self.via.entry(v).or_default() += n;
            }
        }
    }

    /// Items learned in all, and per neighbour (sorted by name).
    pub(crate) fn readings(&self) -> (u64, Vec<(String, u64)>) {
        let mut via: Vec<(String, u64)> =
            self.via.iter().map(|(s, n)| (id_string(s), *n)).collect();
        via.sort();
        (self.total, via)
    }
}

/// The first hop of the path from `me` to `to` along `tree`, if `to` is in `me`'s tree.
pub(crate) fn first_hop(
    me: &ServerId,
    to: &ServerId,
    tree: &[(ServerId, ServerId)],
) -> Option<ServerId> {
    // Breadth-first from `me`, remembering for each server reached the neighbour of `me` its
    // path starts with.
    let mut via: HashMap<&ServerId, &ServerId> = HashMap::new();
    let mut queue = VecDeque::from([me]);
    while let Some(at) = queue.pop_front() {
        if at == to {
            return via.get(at).map(|s| (*s).clone());
        }
        for (a, b) in tree {
            let next = if a == at {
                b
            } else if b == at {
                a
            } else {
                continue;
            };
            if next == me || via.contains_key(next) {
                continue;
            }
            let start = if at == me { next } else { via[at] };
            via.insert(next, start);
            queue.push_back(next);
        }
    }
    None
}

/// Who a server may check: servers its own row measures alive, other than itself, those it
/// is linked to and its tree neighbours (their updates reach it along the tree anyway).
pub(super) fn candidates(
    me: &ServerId,
    alive: impl IntoIterator<Item = ServerId>,
    linked: impl Fn(&ServerId) -> bool,
    tree: &[(ServerId, ServerId)],
) -> Vec<ServerId> {
    let neighbour = |s: &ServerId| {
        tree.iter()
            .any(|(a, b)| (a == me && b == s) || (b == me && a == s))
    };
    alive
        .into_iter()
        .filter(|s| s != me && !linked(s) && !neighbour(s))
        .collect()
}

/// Opens a check with a random candidate every interval (±20 %, so servers started together
/// do not check in step; a check that outlasts the interval delays the next), one at a time,
/// until the stop.
pub(super) async fn repair_loop(
    fed: Arc<Federation>,
    hooks: Arc<dyn Hooks>,
    shutdown: CancellationToken,
) {
    let every = fed.probing.repair;
    if every.is_zero() {
        return;
    }
    let mut last = tokio::time::Instant::now();
    loop {
        // Paced from the previous check's start: a check's own length (it stays open until
        // quiet) does not stretch the interval.
        let wait = every.mul_f64(rand::thread_rng().gen_range(0.8..1.2));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(last + wait) => {}
        }
        last = tokio::time::Instant::now();
        let target = {
            let st = fed.state.lock();
            let alive: Vec<ServerId> = st
                .members
                .my_row()
                .map(|r| {
                    r.rtts
                        .iter()
                        .filter(|(_, v)| v.is_some())
                        .map(|(s, _)| s.clone())
                        .collect()
                })
                .unwrap_or_default();
            let options = candidates(&fed.me, alive, |s| st.links.contains_key(s), &st.tree);
            options.choose(&mut rand::thread_rng()).cloned()
        };
        let Some(peer) = target else { continue };
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = fed.transport.connect(&fed.me, &peer) => r,
        };
        match connected {
            Ok((stream, addr)) => {
                tracing::debug!(peer = %id_string(&peer), "repair check");
                fed.repair_checks.fetch_add(1, Ordering::Relaxed);
                // Not raced against the stop: the check ends by itself, bounded.
                let _ = hooks
                    .run_link(stream, Some(peer), addr, LinkKind::Check)
                    .await;
            }
            Err(e) => {
                tracing::debug!(peer = %id_string(&peer), error = %e, "repair check: cannot reach")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u16) -> ServerId {
        ("h".into(), n)
    }

    #[test]
    fn a_check_goes_to_a_live_server_that_is_neither_linked_nor_a_neighbour() {
        // A line 1 - 2 - 3 - 4 - 5, seen from 2, linked to 1 and 3 (its neighbours) and to 5
        // (say, a link about to close).
        let tree = vec![
            (id(1), id(2)),
            (id(2), id(3)),
            (id(3), id(4)),
            (id(4), id(5)),
        ];
        let alive = [1, 2, 3, 4, 5].map(id);
        let linked = |s: &ServerId| [id(1), id(3), id(5)].contains(s);
        assert_eq!(
            candidates(&id(2), alive.clone(), linked, &tree),
            vec![id(4)]
        );
        // Nothing linked: everyone but itself and its two neighbours.
        assert_eq!(
            candidates(&id(2), alive, |_| false, &tree),
            vec![id(4), id(5)]
        );
    }

    #[test]
    fn news_from_a_check_is_counted_against_the_neighbour_it_should_have_come_through() {
        // 1 - 2 - 3 - 4, and 5 hanging off 2.
        let tree = vec![
            (id(1), id(2)),
            (id(3), id(2)),
            (id(3), id(4)),
            (id(5), id(2)),
        ];
        assert_eq!(first_hop(&id(1), &id(4), &tree), Some(id(2)));
        assert_eq!(first_hop(&id(4), &id(5), &tree), Some(id(3)));
        assert_eq!(first_hop(&id(2), &id(4), &tree), Some(id(3)));
        assert_eq!(first_hop(&id(2), &id(5), &tree), Some(id(5)));
        assert_eq!(first_hop(&id(2), &id(9), &tree), None, "not in the tree");
        assert_eq!(first_hop(&id(2), &id(2), &tree), None, "itself");
        let mut learned = Learned::default();
        learned.note(first_hop(&id(1), &id(4), &tree), 3);
        learned.note(first_hop(&id(1), &id(2), &tree), 1);
        learned.note(None, 2);
        assert_eq!(learned.readings(), (6, vec![(id_string(&id(2)), 4)]));
    }
}
