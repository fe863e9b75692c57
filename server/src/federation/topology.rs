//! Topology: from the membership's matrix to the tree, and from the tree to which links this
//! server should open and close. Pure: the caller holds the state, runs the plan, and owns the
//! sockets.
//!
//! Besides tree neighbours, a plan may open *repair links* and keep links the tree no longer
//! wants; both exist so that a federation split by stale dead marks always heals (see
//! docs/federation.md, "Why the tree always re-forms").

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::mst::{self, ServerId, TreeEdge};

use super::membership::{Edge, Membership, Row};

/// What to do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The tree of the current matrix (a forest when the matrix is split).
    pub(crate) tree: Vec<TreeEdge>,
    /// Servers to dial: tree neighbours and repair targets not linked, not being dialled and
    /// not backing off.
    pub(crate) connect: Vec<ServerId>,
    /// Of `connect`, those dialled as repair links (for the log).
    pub(crate) repairs: Vec<ServerId>,
    /// Links to close: neither tree neighbours nor repair targets, and allowed to close.
    pub(crate) close: Vec<ServerId>,
}

/// Plans links for this server (computing the tree). `links` maps each linked peer to how long its link has been
/// up; `busy` are servers being dialled or backing off; a non-tree link whose edge the rows call
/// dead is kept until it is `grace` old.
#[cfg(test)]
pub(crate) fn plan(
    m: &Membership,
    links: &BTreeMap<ServerId, Duration>,
    busy: &BTreeSet<ServerId>,
    grace: Duration,
) -> Plan {
    plan_with_tree(
        m,
        mst::minimum_spanning_tree(&m.graph()),
        links,
        busy,
        grace,
    )
}

/// [`plan`] with the tree of `m` already computed (it changes only when `m` does).
pub(crate) fn plan_with_tree(
    m: &Membership,
    tree: Vec<TreeEdge>,
    links: &BTreeMap<ServerId, Duration>,
    busy: &BTreeSet<ServerId>,
    grace: Duration,
) -> Plan {
    let neighbours = mst::neighbours(&tree, m.me());
    let repairs: Vec<ServerId> = repair_targets(m.me(), m.servers(), &tree, m.my_row())
        .into_iter()
        .filter(|r| !neighbours.contains(r))
        .collect();
    let connect: Vec<ServerId> = neighbours
        .iter()
        .chain(&repairs)
        .filter(|n| !links.contains_key(*n) && !busy.contains(*n))
        .cloned()
        .collect();
    let close = links
        .iter()
        .filter(|(k, _)| !neighbours.contains(k) && !repairs.contains(k))
        .filter(|(k, age)| may_close_non_tree_link(m.edge_to(k), m.both_measured(k), **age, grace))
        .map(|(k, _)| k.clone())
        .collect();
    Plan {
        repairs: repairs
            .into_iter()
            .filter(|r| connect.contains(r))
            .collect(),
        tree,
        connect,
        close,
    }
}

/// The servers to open a repair link to: for each component of the tree (a forest when the rows
/// disagree) other than this server's own, the member this server's own row measures alive with
/// the lowest RTT. Rows can only say two components are apart if one side marks the other dead
/// while this server measures it alive, so a repair link is dialled only when rows are stale.
pub(crate) fn repair_targets(
    me: &ServerId,
    servers: &BTreeSet<ServerId>,
    tree: &[TreeEdge],
    my_row: Option<&Row>,
) -> Vec<ServerId> {
    let Some(my_row) = my_row else {
        return Vec::new();
    };
    // Components of the forest by union-find over the tree's edges.
    let index: HashMap<&ServerId, usize> =
        servers.iter().enumerate().map(|(i, s)| (s, i)).collect();
    let mut parent: Vec<usize> = (0..servers.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (a, b) in tree {
        if let (Some(&i), Some(&j)) = (index.get(a), index.get(b)) {
            let (ri, rj) = (root(&mut parent, i), root(&mut parent, j));
            parent[ri] = rj;
        }
    }
    let Some(&mine) = index.get(me) else {
        return Vec::new();
    };
    let my_root = root(&mut parent, mine);
    let mut nearest: BTreeMap<usize, (u64, &ServerId)> = BTreeMap::new();
    for (s, rtt) in &my_row.rtts {
        let (Some(rtt), Some(&i)) = (rtt, index.get(s)) else {
            continue;
        };
        let r = root(&mut parent, i);
        if r == my_root {
            continue;
        }
        let best = nearest.entry(r).or_insert((*rtt, s));
        if (*rtt, s) < (best.0, best.1) {
            *best = (*rtt, s);
        }
    }
    nearest.into_values().map(|(_, s)| s.clone()).collect()
}

/// Whether a link outside the tree may be closed. Only once both ends' rows are known here
/// (a joining server is not cut off before it is measured), and, if the rows say the edge is
/// dead, only after `grace`: the open link proves the dead mark stale, and closing it would
/// leave the fresh rows no way across. The grace bounds the one case where a dead mark and a
/// live link truly coexist (RTT probes blocked while TCP works).
pub(crate) fn may_close_non_tree_link(
    edge: Edge,
    both_rows_known: bool,
    link_age: Duration,
    grace: Duration,
) -> bool {
    both_rows_known && (edge != Edge::Dead || link_age >= grace)
}

/// How long a link whose edge the rows call dead is kept outside the tree: long enough for both
/// ends' revival probes to publish fresh rows across it.
pub(crate) fn dead_edge_grace(probe: &gossip_common::rtt::ProbeConfig) -> Duration {
    probe.dead_after.max(probe.interval * 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u16) -> ServerId {
        ("h".into(), n)
    }

    fn row(cells: &[(u16, Option<u64>)]) -> Row {
        Row {
            seq: 1,
            rtts: cells.iter().map(|(n, v)| (k(*n), *v)).collect(),
            sig: None,
        }
    }

    /// The partition deadlock: a node's own row says the others are alive, but the rows it
    /// holds from them (stale, from the partition) mark it dead, so the tree leaves it alone.
    #[test]
    fn a_server_cut_off_by_stale_dead_marks_dials_the_nearest_server_of_the_other_part() {
        let servers: BTreeSet<ServerId> = (1..=4).map(k).collect();
        let me = k(4);
        // The others form a tree among themselves; 4 is alone in the forest.
        let tree = vec![(k(1), k(2)), (k(2), k(3))];
        let mine = row(&[(1, Some(900)), (2, Some(300)), (3, None)]);
        assert_eq!(
            repair_targets(&me, &servers, &tree, Some(&mine)),
            vec![k(2)]
        );
        // On the other side, server 1 measures 4 alive and sees it in another component.
        let ones = row(&[(2, Some(5)), (3, Some(5)), (4, Some(40))]);
        assert_eq!(
            repair_targets(&k(1), &servers, &tree, Some(&ones)),
            vec![k(4)]
        );
        // Once the tree spans everyone, nobody repairs.
        let whole = vec![(k(1), k(2)), (k(2), k(3)), (k(2), k(4))];
        assert!(repair_targets(&me, &servers, &whole, Some(&mine)).is_empty());
        // Servers measured dead are not dialled, even in another component.
        let all_dead = row(&[(1, None), (2, None), (3, None)]);
        assert!(repair_targets(&me, &servers, &tree, Some(&all_dead)).is_empty());
        assert!(repair_targets(&me, &servers, &tree, None).is_empty());
    }

    #[test]
    fn a_link_the_rows_call_dead_is_kept_until_fresh_rows_can_cross_it() {
        let grace = Duration::from_secs(30);
        let young = Duration::from_secs(1);
        // Normal case: both measured alive, not in the tree: close.
        assert!(may_close_non_tree_link(Edge::Alive(5), true, young, grace));
        // A joining server not measured yet by both: keep.
        assert!(!may_close_non_tree_link(
            Edge::Alive(5),
            false,
            young,
            grace
        ));
        // The rows say dead but the link is up: the mark is stale; keep until the grace ends.
        assert!(!may_close_non_tree_link(Edge::Dead, true, young, grace));
        assert!(may_close_non_tree_link(Edge::Dead, true, grace, grace));
        let probe = gossip_common::rtt::ProbeConfig::default();
        assert!(dead_edge_grace(&probe) >= probe.interval * 4);
    }

    /// Three servers in a line by RTT: 1 -10- 2 -10- 3, and 1-3 at 50.
    fn line(me: u16) -> Membership {
        let mut m = Membership::new(k(me), &[k(1), k(2), k(3)]);
        let rows = [
            (1, row(&[(2, Some(10)), (3, Some(50))])),
            (2, row(&[(1, Some(10)), (3, Some(10))])),
            (3, row(&[(1, Some(50)), (2, Some(10))])),
        ];
        for (who, r) in rows {
            if who == me {
                let cells: Vec<_> = r.rtts.into_iter().collect();
                m.apply_measurements(&cells, 1);
            } else {
                m.store_row(k(who), r);
            }
        }
        m
    }

    #[test]
    fn the_plan_links_tree_neighbours_and_closes_a_link_the_tree_dropped() {
        let none = BTreeMap::new();
        let p = plan(&line(2), &none, &BTreeSet::new(), Duration::from_secs(30));
        assert_eq!(p.tree, vec![(k(1), k(2)), (k(2), k(3))]);
        assert_eq!(p.connect, vec![k(1), k(3)]);
        assert!(p.repairs.is_empty() && p.close.is_empty());
        // Server 1 has a link to 3 (say, from an older tree): the edge is alive, so it goes.
        let links: BTreeMap<ServerId, Duration> =
            [(k(2), Duration::ZERO), (k(3), Duration::ZERO)].into();
        let p = plan(&line(1), &links, &BTreeSet::new(), Duration::from_secs(30));
        assert_eq!(p.close, vec![k(3)]);
        assert!(p.connect.is_empty());
        // Being dialled or backing off: not dialled again.
        let busy: BTreeSet<ServerId> = [k(1)].into();
        assert_eq!(
            plan(&line(2), &none, &busy, Duration::ZERO).connect,
            vec![k(3)]
        );
    }
}
