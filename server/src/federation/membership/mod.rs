//! Membership: which servers exist, which an admin deleted (tombstones), and every server's
//! published RTT row with its `seq`; this node's own row with damping; and the graph the rows
//! make. Pure: messages and measurements in, decisions out, no I/O and no clock but the `now_ms`
//! it is handed.
//!
//! Every server ends up holding the same rows (they are flooded and the newest per measurer
//! wins), so every server derives the same graph from them, and so the same tree.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gossip_common::message as m;

use crate::mst::{ServerGraph, ServerId};

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
    pub(crate) rtts: BTreeMap<ServerId, Option<u64>>,
    /// The measurer's signature over [`row_bytes`]; every row held carries one (this node's
    /// own gets it as it is published).
    pub(crate) sig: Option<[u8; 64]>,
}

/// The bytes a measurer signs for its row (domain `ServerControl`): a canonical text of the
/// measurer, `seq` and every cell in order, RTTs in whole µs (at least 1, as the wire's
/// milliseconds round-trip them) or `dead`.
pub(crate) fn row_bytes(measurer: &ServerId, row: &Row) -> Vec<u8> {
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
pub(crate) fn edge(row_a: Option<&Row>, b: &ServerId, row_b: Option<&Row>, a: &ServerId) -> Edge {
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
    me: ServerId,
    servers: BTreeSet<ServerId>,
    /// Servers an admin deleted: not re-learned from links, lists or rows, and their links are
    /// refused, until an admin adds them again.
    deleted: BTreeSet<ServerId>,
    rows: HashMap<ServerId, Row>,
    /// Bumped on every change of servers or rows: the tree needs recomputing only when it moved.
    version: u64,
    /// The lowest `seq` this server's next row may carry: above any row of its own seen from
    /// others (one it published before a restart, whose clock may have gone back since).
    min_own_seq: u64,
    /// Servers that showed they exist: a signed row of their own, a link, a measurement that
    /// they answer, or an admin (the config's peers, `add-server`). Others were only named by
    /// someone, and are forgotten if they stay unproven (see [`Membership::expire_unproven`]).
    proven: BTreeSet<ServerId>,
    /// When each unproven server was first seen unproven.
    unproven_since: HashMap<ServerId, tokio::time::Instant>,
    /// Who introduced each unproven server learned from a peer's word.
    introduced: introduced::Introductions,
}

impl Membership {
    /// This server, knowing `peers`.
    pub(crate) fn new(me: ServerId, peers: &[ServerId]) -> Membership {
        let mut servers: BTreeSet<ServerId> = peers.iter().cloned().collect();
        servers.insert(me.clone());
        Membership {
            proven: servers.clone(),
            unproven_since: HashMap::new(),
            introduced: Default::default(),
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
    pub(crate) fn me(&self) -> &ServerId {
        &self.me
    }

    /// Every known server, this one included, in order.
    pub(crate) fn servers(&self) -> &BTreeSet<ServerId> {
        &self.servers
    }

    /// Whether `key` is known.
    #[cfg(test)]
    pub(crate) fn knows(&self, key: &ServerId) -> bool {
        self.servers.contains(key)
    }

    /// Whether an admin deleted `key`.
    pub(crate) fn is_deleted(&self, key: &ServerId) -> bool {
        self.deleted.contains(key)
    }

    /// Every row held, by measurer.
    pub(crate) fn rows(&self) -> &HashMap<ServerId, Row> {
        &self.rows
    }

    /// `key`'s row, if held.
    pub(crate) fn row(&self, key: &ServerId) -> Option<&Row> {
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
        servers: impl IntoIterator<Item = ServerId>,
    ) -> Vec<ServerId> {
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

    /// Learns servers a peer whose key is `by` named (`addServer`, `serverlist`): like
    /// [`Self::add_servers`], but a name nobody has shown yet counts against `by`, which may
    /// have at most [`introduced::MAX_INTRODUCED`] such names at once. Returns those learned
    /// and how many were refused for that bound.
    pub(crate) fn add_introduced(
        &mut self,
        servers: impl IntoIterator<Item = ServerId>,
        by: &gossip_common::PublicKey,
    ) -> (Vec<ServerId>, usize) {
        let mut admitted = Vec::new();
        let mut refused = 0;
        for s in servers {
            if self.servers.contains(&s) {
                continue;
            }
            if self.introduced.admits(by) {
                self.introduced.record(s.clone(), *by);
                admitted.push(s);
            } else {
                refused += 1;
            }
        }
        let added = self.add_servers(admitted.iter().cloned());
        for s in admitted.iter().filter(|s| !added.contains(s)) {
            self.introduced.settle(s); // tombstoned or full: not learned after all
        }
        (added, refused)
    }

    /// How many unproven servers `by` introduced and are still held.
    #[cfg(test)]
    pub(crate) fn introduced_by(&self, by: &gossip_common::PublicKey) -> usize {
        self.introduced.count(by)
    }

    /// `key` showed it exists (a link, a signed row, an answered probe, an admin).
    pub(crate) fn prove(&mut self, key: &ServerId) {
        if self.servers.contains(key) && self.proven.insert(key.clone()) {
            self.unproven_since.remove(key);
            self.introduced.settle(key);
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
    ) -> Vec<ServerId> {
        let unproven: Vec<ServerId> = self
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
            self.introduced.settle(s);
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
    pub(crate) fn undelete(&mut self, key: &ServerId) {
        self.deleted.remove(key);
        self.version += 1;
    }

    /// Forgets `key` and leaves a tombstone; returns whether it was known.
    pub(crate) fn remove_server(&mut self, key: &ServerId) -> bool {
        self.deleted.insert(key.clone());
        self.version += 1;
        let removed = self.servers.remove(key);
        self.proven.remove(key);
        self.unproven_since.remove(key);
        self.introduced.settle(key);
        self.rows.remove(key);
        for row in self.rows.values_mut() {
            row.rtts.remove(key);
        }
        removed
    }

    /// Stores `measurer`'s row if it is newer than the one held (learning the servers it
    /// names); returns whether it was.
    pub(crate) fn store_row(&mut self, measurer: ServerId, row: Row) -> bool {
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
        let named: Vec<ServerId> = std::iter::once(&measurer)
            .chain(row.rtts.keys())
            .cloned()
            .collect();
        self.add_servers(named);
        if !self.servers.contains(&measurer) {
            return false; // full: a row of a server that cannot be learned is not kept either
        }
        self.proven.insert(measurer.clone());
        self.unproven_since.remove(&measurer);
        self.introduced.settle(&measurer);
        self.rows.insert(measurer, row);
        self.version += 1;
        true
    }

    /// Folds this server's measurements into its row, with damping; if the row changed, gives
    /// it a new `seq` (at least `now_ms`, and above the previous one) and returns it to publish.
    pub(crate) fn apply_measurements(
        &mut self,
        measured: &[(ServerId, Option<u64>)],
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
    pub(crate) fn dead_in_my_row(&self) -> Vec<ServerId> {
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
    pub(crate) fn to_measure(&self) -> Vec<ServerId> {
        let mine = self.my_row();
        self.servers
            .iter()
            .filter(|s| **s != self.me)
            .filter(|s| !matches!(mine.and_then(|r| r.rtts.get(*s)), Some(None)))
            .cloned()
            .collect()
    }

    /// The edge between this server and `peer`.
    pub(crate) fn edge_to(&self, peer: &ServerId) -> Edge {
        edge(self.my_row(), peer, self.row(peer), &self.me)
    }

    /// Whether both this server's row measures `peer` and `peer`'s row is held.
    pub(crate) fn both_measured(&self, peer: &ServerId) -> bool {
        self.rows.contains_key(peer) && self.my_row().is_some_and(|r| r.rtts.contains_key(peer))
    }

    /// The graph of the current matrix: an edge for every pair the rows call alive.
    pub(crate) fn graph(&self) -> ServerGraph {
        // `servers` iterates in order, so positions are the graph's indices: no key is cloned
        // per edge and each row is looked up once per server.
        let servers: Vec<&ServerId> = self.servers.iter().collect();
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
    measurer: &ServerId,
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
pub(crate) fn row_of(u: &m::UpdateRtts) -> (ServerId, Row) {
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

pub(crate) mod introduced;
#[cfg(test)]
mod tests;
