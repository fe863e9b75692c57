//! Membership: which servers exist, which an admin deleted (tombstones), and every server's
//! published RTT row with its `seq`; this node's own row with damping; and the graph the rows
//! make. Pure: messages and measurements in, decisions out, no I/O and no clock but the `now_ms`
//! it is handed.
//!
//! Every server ends up holding the same rows (they are flooded and the newest per measurer
//! wins), so every server derives the same graph from them, and so the same tree.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gossip_common::message as m;

use crate::mst::{ServerGraph, ServerKey};

/// A server republishes its measurement of a peer only when it moved by more than this
/// fraction *and* by more than [`DAMPING_FLOOR_US`] (or the peer died or came back), so jitter
/// never reshapes the tree: the fraction covers WAN links, the floor covers LAN and loopback,
/// where sub-millisecond noise is large relative to the RTT itself.
pub(crate) const DAMPING: f64 = 0.20;
/// Smallest RTT change, in microseconds, worth republishing.
pub(crate) const DAMPING_FLOOR_US: f64 = 1000.0;

/// Most servers a federation may have here. A peer's server list, `addServer` or row can only
/// teach servers up to this bound, so no peer can grow this server's state (or the matrix,
/// which grows with its square) without limit; a row naming more is refused whole.
pub(crate) const MAX_SERVERS: usize = 10_000;

/// A measurer's published row: RTT in microseconds per server, `None` = dead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Row {
    /// Publication number (the measurer's clock in ms, strictly increasing per measurer).
    pub(crate) seq: u64,
    /// Measured server → RTT in µs, `None` = dead.
    pub(crate) rtts: BTreeMap<ServerKey, Option<u64>>,
    /// The measurer's signature over [`row_bytes`]; every row held carries one (this node's
    /// own gets it as it is published).
    pub(crate) sig: Option<[u8; 64]>,
}

/// The bytes a measurer signs for its row (domain `ServerControl`): a canonical text of the
/// measurer, `seq` and every cell in order, RTTs in whole µs (at least 1, as the wire's
/// milliseconds round-trip them) or `dead`.
pub(crate) fn row_bytes(measurer: &ServerKey, row: &Row) -> Vec<u8> {
    use std::fmt::Write;
    let mut s = format!("rtt-row\n{}:{}\n{}\n", measurer.0, measurer.1, row.seq);
    for ((h, p), v) in &row.rtts {
        let _ = match v {
            Some(us) => writeln!(s, "{h}:{p} {}", (*us).max(1)),
            None => writeln!(s, "{h}:{p} dead"),
        };
    }
    s.into_bytes()
}

/// What the rows say of the edge between two servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Edge {
    /// Usable, with this weight: the larger of the two directions' measurements (a link is as
    /// good as its worse direction), or the one present.
    Alive(u64),
    /// A direction reported dead: no edge.
    Dead,
    /// Neither direction measured yet.
    Unknown,
}

/// The edge between `a` (row `row_a`) and `b` (row `row_b`).
pub(crate) fn edge(row_a: Option<&Row>, b: &ServerKey, row_b: Option<&Row>, a: &ServerKey) -> Edge {
    let ab = row_a.and_then(|r| r.rtts.get(b)).copied();
    let ba = row_b.and_then(|r| r.rtts.get(a)).copied();
    match (ab, ba) {
        (Some(None), _) | (_, Some(None)) => Edge::Dead,
        (None, None) => Edge::Unknown,
        (Some(Some(x)), Some(Some(y))) => Edge::Alive(x.max(y)),
        (Some(Some(x)), None) | (None, Some(Some(x))) => Edge::Alive(x),
    }
}

/// Whether a new measurement is within the damping threshold of the published one (so the row
/// keeps the old value): moved by at most [`DAMPING`] of it or by at most
/// [`DAMPING_FLOOR_US`]. Dead stays dead; any change between dead and alive is news.
pub(crate) fn damped(published: Option<&Option<u64>>, measured: Option<u64>) -> bool {
    match (published, measured) {
        (Some(Some(prev)), Some(now)) => {
            let moved = (now as f64 - *prev as f64).abs();
            moved <= DAMPING * *prev as f64 || moved <= DAMPING_FLOOR_US
        }
        (Some(None), None) => true,
        _ => false,
    }
}

/// Known servers, tombstones and rows.
#[derive(Debug)]
pub(crate) struct Membership {
    me: ServerKey,
    servers: BTreeSet<ServerKey>,
    /// Servers an admin deleted: not re-learned from links, lists or rows, and their links are
    /// refused, until an admin adds them again.
    deleted: BTreeSet<ServerKey>,
    rows: HashMap<ServerKey, Row>,
    /// Bumped on every change of servers or rows: the tree needs recomputing only when it moved.
    version: u64,
    /// The lowest `seq` this server's next row may carry: above any row of its own seen from
    /// others (one it published before a restart, whose clock may have gone back since).
    min_own_seq: u64,
    /// Servers that showed they exist: a signed row of their own, a link, a measurement that
    /// they answer, or an admin (the config's peers, `add-server`). Others were only named by
    /// someone, and are forgotten if they stay unproven (see [`Membership::expire_unproven`]).
    proven: BTreeSet<ServerKey>,
    /// When each unproven server was first seen unproven.
    unproven_since: HashMap<ServerKey, tokio::time::Instant>,
}

impl Membership {
    /// This server, knowing `peers`.
    pub(crate) fn new(me: ServerKey, peers: &[ServerKey]) -> Membership {
        let mut servers: BTreeSet<ServerKey> = peers.iter().cloned().collect();
        servers.insert(me.clone());
        Membership {
            proven: servers.clone(),
            unproven_since: HashMap::new(),
            me,
            servers,
            deleted: BTreeSet::new(),
            rows: HashMap::new(),
            version: 1,
            min_own_seq: 0,
        }
    }

    /// Changes so far; equal versions mean the same graph.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// This server.
    pub(crate) fn me(&self) -> &ServerKey {
        &self.me
    }

    /// Every known server, this one included, in order.
    pub(crate) fn servers(&self) -> &BTreeSet<ServerKey> {
        &self.servers
    }

    /// Whether `key` is known.
    #[cfg(test)]
    pub(crate) fn knows(&self, key: &ServerKey) -> bool {
        self.servers.contains(key)
    }

    /// Whether an admin deleted `key`.
    pub(crate) fn is_deleted(&self, key: &ServerKey) -> bool {
        self.deleted.contains(key)
    }

    /// Every row held, by measurer.
    pub(crate) fn rows(&self) -> &HashMap<ServerKey, Row> {
        &self.rows
    }

    /// `key`'s row, if held.
    pub(crate) fn row(&self, key: &ServerKey) -> Option<&Row> {
        self.rows.get(key)
    }

    /// This server's own row, once published.
    pub(crate) fn my_row(&self) -> Option<&Row> {
        self.rows.get(&self.me)
    }

    /// Learns servers (tombstoned ones excepted, and none past [`MAX_SERVERS`]); returns those
    /// that were new.
    pub(crate) fn add_servers(
        &mut self,
        servers: impl IntoIterator<Item = ServerKey>,
    ) -> Vec<ServerKey> {
        let mut added = Vec::new();
        for s in servers {
            if self.servers.len() >= MAX_SERVERS {
                break;
            }
            if !self.deleted.contains(&s) && self.servers.insert(s.clone()) {
                added.push(s);
            }
        }
        if !added.is_empty() {
            self.version += 1;
        }
        added
    }

    /// `key` showed it exists (a link, a signed row, an answered probe, an admin).
    pub(crate) fn prove(&mut self, key: &ServerKey) {
        if self.servers.contains(key) && self.proven.insert(key.clone()) {
            self.unproven_since.remove(key);
        }
    }

    /// Forgets (without a tombstone) the servers that were only ever named by others and have
    /// not shown they exist for `max_age`: a peer announcing junk names costs this server a
    /// probe per name for that long, and no more. A real server that comes back announces
    /// itself again when it links. Returns those forgotten.
    pub(crate) fn expire_unproven(
        &mut self,
        now: tokio::time::Instant,
        max_age: std::time::Duration,
    ) -> Vec<ServerKey> {
        let unproven: Vec<ServerKey> = self
            .servers
            .iter()
            .filter(|s| !self.proven.contains(*s))
            .cloned()
            .collect();
        self.unproven_since.retain(|k, _| unproven.contains(k));
        let mut expired = Vec::new();
        for s in unproven {
            let since = *self.unproven_since.entry(s.clone()).or_insert(now);
            if now.saturating_duration_since(since) >= max_age {
                expired.push(s);
            }
        }
        for s in &expired {
            self.servers.remove(s);
            self.rows.remove(s);
            self.unproven_since.remove(s);
        }
        if !expired.is_empty() {
            self.version += 1;
        }
        expired
    }

    /// Whether no more servers can be learned.
    pub(crate) fn is_full(&self) -> bool {
        self.servers.len() >= MAX_SERVERS
    }

    /// An admin added `key` again: lifts its tombstone.
    pub(crate) fn undelete(&mut self, key: &ServerKey) {
        self.deleted.remove(key);
        self.version += 1;
    }

    /// Forgets `key` and leaves a tombstone; returns whether it was known.
    pub(crate) fn remove_server(&mut self, key: &ServerKey) -> bool {
        self.deleted.insert(key.clone());
        self.version += 1;
        let removed = self.servers.remove(key);
        self.proven.remove(key);
        self.unproven_since.remove(key);
        self.rows.remove(key);
        for row in self.rows.values_mut() {
            row.rtts.remove(key);
        }
        removed
    }

    /// Stores `measurer`'s row if it is newer than the one held (learning the servers it
    /// names); returns whether it was.
    pub(crate) fn store_row(&mut self, measurer: ServerKey, row: Row) -> bool {
        if measurer == self.me {
            // Our own row, echoed back: if it is one we published before a restart, our next
            // rows must go past it or nobody would take them. Until we have measured anything
            // ourselves it is the best we know, and what everyone else holds: taking it keeps
            // our tree the same as theirs meanwhile.
            let mine = self.rows.get(&self.me).map(|r| r.seq);
            if mine.is_none_or(|m| row.seq >= m) {
                self.min_own_seq = self.min_own_seq.max(row.seq + 1);
            }
            if mine.is_none() && row.rtts.len() <= MAX_SERVERS {
                self.add_servers(row.rtts.keys().cloned().collect::<Vec<_>>());
                self.rows.insert(measurer, row);
                self.version += 1;
            }
            return false;
        }
        if self.deleted.contains(&measurer)
            || row.rtts.len() > MAX_SERVERS
            || self.rows.get(&measurer).is_some_and(|r| row.seq <= r.seq)
        {
            return false;
        }
        let named: Vec<ServerKey> = std::iter::once(&measurer)
            .chain(row.rtts.keys())
            .cloned()
            .collect();
        self.add_servers(named);
        if !self.servers.contains(&measurer) {
            return false; // full: a row of a server that cannot be learned is not kept either
        }
        self.proven.insert(measurer.clone());
        self.unproven_since.remove(&measurer);
        self.rows.insert(measurer, row);
        self.version += 1;
        true
    }

    /// Folds this server's measurements into its row, with damping; if the row changed, gives
    /// it a new `seq` (at least `now_ms`, and above the previous one) and returns it to publish.
    pub(crate) fn apply_measurements(
        &mut self,
        measured: &[(ServerKey, Option<u64>)],
        now_ms: u64,
    ) -> Option<Row> {
        for (s, m) in measured {
            if m.is_some() {
                self.prove(s);
            }
        }
        let old = self.rows.get(&self.me).cloned().unwrap_or_default();
        let mut row = old.clone();
        for (s, m) in measured {
            if !damped(old.rtts.get(s), *m) {
                row.rtts.insert(s.clone(), *m);
            }
        }
        row.rtts.retain(|k, _| self.servers.contains(k));
        let stale_seq = self.rows.contains_key(&self.me) && old.seq < self.min_own_seq;
        let changed = row.rtts != old.rtts || !self.rows.contains_key(&self.me) || stale_seq;
        if !changed {
            return None;
        }
        row.seq = now_ms.max(old.seq + 1).max(self.min_own_seq);
        row.sig = None;
        self.rows.insert(self.me.clone(), row.clone());
        self.version += 1;
        Some(row)
    }

    /// Attaches the signature of this server's own row `seq` (made by the caller, which holds
    /// the key).
    pub(crate) fn set_own_sig(&mut self, seq: u64, sig: [u8; 64]) {
        if let Some(row) = self.rows.get_mut(&self.me).filter(|r| r.seq == seq) {
            row.sig = Some(sig);
        }
    }

    /// If a row of ours from before a restart outranks the current one, gives the current one
    /// a `seq` past it and returns it to publish.
    pub(crate) fn bump_own_row(&mut self, now_ms: u64) -> Option<Row> {
        let min = self.min_own_seq;
        let row = self.rows.get_mut(&self.me)?;
        if row.seq >= min {
            return None;
        }
        row.seq = now_ms.max(min);
        row.sig = None;
        self.version += 1;
        Some(row.clone())
    }

    /// Servers this server's row marks dead (watched by the revival probes).
    pub(crate) fn dead_in_my_row(&self) -> Vec<ServerKey> {
        self.my_row()
            .map(|r| {
                r.rtts
                    .iter()
                    .filter(|(s, rtt)| rtt.is_none() && self.servers.contains(*s))
                    .map(|(s, _)| s.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Servers for a measurement round: every other one not marked dead in this server's row.
    pub(crate) fn to_measure(&self) -> Vec<ServerKey> {
        let mine = self.my_row();
        self.servers
            .iter()
            .filter(|s| **s != self.me)
            .filter(|s| !matches!(mine.and_then(|r| r.rtts.get(*s)), Some(None)))
            .cloned()
            .collect()
    }

    /// The edge between this server and `peer`.
    pub(crate) fn edge_to(&self, peer: &ServerKey) -> Edge {
        edge(self.my_row(), peer, self.row(peer), &self.me)
    }

    /// Whether both this server's row measures `peer` and `peer`'s row is held.
    pub(crate) fn both_measured(&self, peer: &ServerKey) -> bool {
        self.rows.contains_key(peer) && self.my_row().is_some_and(|r| r.rtts.contains_key(peer))
    }

    /// The graph of the current matrix: an edge for every pair the rows call alive.
    pub(crate) fn graph(&self) -> ServerGraph {
        // `servers` iterates in order, so positions are the graph's indices: no key is cloned
        // per edge and each row is looked up once per server.
        let servers: Vec<&ServerKey> = self.servers.iter().collect();
        let rows: Vec<Option<&Row>> = servers.iter().map(|s| self.rows.get(*s)).collect();
        let mut edges = Vec::new();
        for (i, a) in servers.iter().enumerate() {
            for (j, b) in servers.iter().enumerate().skip(i + 1) {
                if let Edge::Alive(w) = edge(rows[i], b, rows[j], a) {
                    edges.push((i, j, w));
                }
            }
        }
        ServerGraph::from_indexed(self.servers.iter().cloned().collect(), edges)
    }
}

/// `measurer`'s row as an `updateRTTs` message (RTTs in ms).
pub(crate) fn row_message(
    measurer: &ServerKey,
    row: &Row,
    key: Option<&gossip_common::PublicKey>,
) -> m::UpdateRtts {
    m::UpdateRtts {
        key: key.map(|k| k.to_string()),
        sig: row.sig.map(hex::encode),
        host: measurer.0.clone(),
        port: measurer.1,
        seq: row.seq,
        rtts: row
            .rtts
            .iter()
            .map(|(k, v)| m::RttEntry {
                host: k.0.clone(),
                port: k.1,
                ms: v.map(|us| us as f64 / 1000.0),
            })
            .collect(),
    }
}

/// The measurer and row an `updateRTTs` message carries (RTTs rounded to whole µs, at least 1).
pub(crate) fn row_of(u: &m::UpdateRtts) -> (ServerKey, Row) {
    let row = Row {
        sig: None,
        seq: u.seq,
        rtts: u
            .rtts
            .iter()
            .map(|e| {
                (
                    (e.host.clone(), e.port),
                    e.ms.map(|ms| (ms * 1000.0).round().max(1.0) as u64),
                )
            })
            .collect(),
    };
    ((u.host.clone(), u.port), row)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn k(n: u16) -> ServerKey {
        ("h".into(), n)
    }

    pub(crate) fn row(seq: u64, cells: &[(u16, Option<u64>)]) -> Row {
        Row {
            seq,
            rtts: cells.iter().map(|(n, v)| (k(*n), *v)).collect(),
            sig: None,
        }
    }

    #[test]
    fn an_edge_is_dead_if_either_direction_says_so_and_weighs_its_worse_direction() {
        let (a, b) = (row(1, &[(2, Some(10))]), row(1, &[(1, Some(30))]));
        assert_eq!(edge(Some(&a), &k(2), Some(&b), &k(1)), Edge::Alive(30));
        assert_eq!(edge(Some(&a), &k(2), None, &k(1)), Edge::Alive(10));
        let b_dead = row(1, &[(1, None)]);
        assert_eq!(edge(Some(&a), &k(2), Some(&b_dead), &k(1)), Edge::Dead);
        assert_eq!(edge(None, &k(2), None, &k(1)), Edge::Unknown);
    }

    #[test]
    fn damping_keeps_small_moves_and_passes_every_death_and_revival() {
        assert!(damped(Some(&Some(10_000)), Some(11_000)));
        assert!(!damped(Some(&Some(10_000)), Some(13_000)));
        // Sub-millisecond noise on loopback is kept out by the floor.
        assert!(damped(Some(&Some(100)), Some(900)));
        assert!(!damped(Some(&Some(100)), None));
        assert!(!damped(Some(&None), Some(100)));
        assert!(damped(Some(&None), None));
        assert!(!damped(None, None));
    }

    #[test]
    fn only_newer_rows_are_stored_and_they_teach_the_servers_they_name() {
        let mut m = Membership::new(k(1), &[k(2)]);
        assert!(m.store_row(k(2), row(10, &[(1, Some(5)), (3, Some(7))])));
        assert!(m.knows(&k(3)), "a server named in a row is learned");
        assert!(!m.store_row(k(2), row(10, &[(1, None)])), "same seq");
        assert!(!m.store_row(k(2), row(9, &[(1, None)])), "older seq");
        assert_eq!(m.row(&k(2)).unwrap().seq, 10);
        // This server's own row, echoed back, is never news to flood (before this server has
        // measured anything it is adopted, so its tree matches everyone else's).
        assert!(!m.store_row(k(1), row(99, &[])));
        assert_eq!(m.my_row().map(|r| r.seq), Some(99));
        // A tombstone keeps a deleted server out of rows and lists.
        assert!(m.remove_server(&k(3)));
        assert!(!m.store_row(k(3), row(11, &[])));
        assert!(m.add_servers([k(3)]).is_empty());
        assert!(m.store_row(k(4), row(1, &[(3, Some(1))])));
        assert!(!m.knows(&k(3)), "not re-learned from a row");
        m.undelete(&k(3));
        assert_eq!(m.add_servers([k(3)]), vec![k(3)]);
    }

    #[test]
    fn own_measurements_publish_only_real_changes_with_increasing_seq() {
        let mut m = Membership::new(k(1), &[k(2), k(3)]);
        let first = m
            .apply_measurements(&[(k(2), Some(10_000)), (k(3), None)], 1_000)
            .expect("first row");
        assert_eq!(first.seq, 1_000);
        assert_eq!(m.dead_in_my_row(), vec![k(3)]);
        assert_eq!(m.to_measure(), vec![k(2)]);
        // Jitter: nothing to publish.
        assert!(m
            .apply_measurements(&[(k(2), Some(10_500))], 2_000)
            .is_none());
        // A revival is always news, even with a clock that went backwards.
        let v = m.version();
        assert!(m
            .apply_measurements(&[(k(2), Some(10_400))], 2_500)
            .is_none());
        assert_eq!(m.version(), v, "nothing published, nothing to recompute");
        let next = m.apply_measurements(&[(k(3), Some(300))], 500).unwrap();
        assert!(m.version() > v);
        assert_eq!(next.seq, 1_001);
        assert!(m.dead_in_my_row().is_empty());
    }

    #[test]
    fn after_a_restart_our_rows_go_past_the_ones_we_published_before() {
        // Before the restart this server published seq 5,000; its clock now says 1,000.
        let mut m = Membership::new(k(1), &[k(2)]);
        let first = m
            .apply_measurements(&[(k(2), Some(10_000))], 1_000)
            .unwrap();
        assert_eq!(first.seq, 1_000);
        assert!(
            !m.store_row(k(1), row(5_000, &[(2, Some(10_000))])),
            "never stored"
        );
        // The next round republishes past it even though nothing changed.
        let again = m
            .apply_measurements(&[(k(2), Some(10_000))], 1_001)
            .unwrap();
        assert_eq!(again.seq, 5_001);
        assert!(m
            .apply_measurements(&[(k(2), Some(10_000))], 1_002)
            .is_none());
    }

    #[test]
    fn the_graph_has_an_edge_for_each_pair_the_rows_call_alive() {
        let mut m = Membership::new(k(1), &[k(2), k(3)]);
        m.apply_measurements(&[(k(2), Some(10)), (k(3), Some(20))], 1);
        m.store_row(k(2), row(1, &[(1, Some(15)), (3, None)]));
        let g = m.graph();
        let tree = crate::mst::minimum_spanning_tree(&g);
        assert_eq!(tree.len(), 2, "{tree:?}");
        assert!(tree.contains(&(k(1), k(2))) && tree.contains(&(k(1), k(3))));
        assert_eq!(m.edge_to(&k(2)), Edge::Alive(15));
        assert!(m.both_measured(&k(2)) && !m.both_measured(&k(3)));
    }

    #[test]
    fn servers_only_named_by_others_are_forgotten_unless_they_show_up() {
        let mut m = Membership::new(k(0), &[k(1)]);
        m.add_servers([k(2), k(3), k(4)]);
        let t = tokio::time::Instant::now();
        let age = std::time::Duration::from_secs(600);
        assert!(m.expire_unproven(t, age).is_empty());
        // k(2) publishes a row, k(3) answers our probe; k(4) never shows up.
        assert!(m.store_row(k(2), row(5, &[(0, Some(100))])));
        m.apply_measurements(&[(k(3), Some(200)), (k(4), None)], 1);
        assert_eq!(m.expire_unproven(t + age, age), vec![k(4)]);
        assert!(!m.knows(&k(4)));
        // The config's peer is proven by the admin who named it, even if silent.
        assert!(m.knows(&k(1)) && m.knows(&k(2)) && m.knows(&k(3)));
    }

    #[test]
    fn rows_round_trip_through_update_rtts() {
        let r = row(
            42,
            &[
                (2, Some(1500)),
                (3, None),
                (4, Some(1)),
                (5, Some(123_456_789)),
            ],
        );
        let (who, back) = row_of(&row_message(&k(1), &r, None));
        // The signed bytes survive the wire's milliseconds, so a forwarded row still verifies.
        assert_eq!(row_bytes(&who, &back), row_bytes(&k(1), &r));
        assert_eq!((who, back), (k(1), r));
    }

    #[test]
    fn no_peer_can_grow_the_server_list_or_the_rows_without_bound() {
        let mut m = Membership::new(k(0), &[]);
        let many = (1..=MAX_SERVERS as u16 + 50).map(|i| ("x".to_owned(), i));
        let added = m.add_servers(many);
        assert_eq!(m.servers().len(), MAX_SERVERS);
        assert_eq!(added.len(), MAX_SERVERS - 1);
        assert!(m.is_full());
        // A row of a server not yet known cannot make room for itself.
        assert!(!m.store_row(("y".into(), 1), row(1, &[])));
        // An oversized row is refused whole.
        let mut huge = Row {
            seq: 5,
            ..Row::default()
        };
        for i in 0..=MAX_SERVERS as u16 {
            huge.rtts.insert(("z".into(), i), Some(1));
        }
        assert!(!m.store_row(("x".into(), 1), huge));
    }
}
