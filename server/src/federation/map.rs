//! The federation as this server sees it, for the live map (`/` and `/map.json` on the HTTP
//! listener): every known server and whether this server's row calls it alive, the tree with
//! the weight each edge was chosen by, the other measured edges, this server's links.
//!
//! Read under the federation lock in one pass over the rows, like the tree's own graph, and
//! bounded: at most `max_edges` non-tree edges (the shortest), so a large federation's map
//! costs a few milliseconds, and the HTTP side caches it (one read a second, however many
//! browsers watch).

use serde::Serialize;

use super::membership::{edge, Edge};
use super::Federation;
use crate::mst::{id_string, ServerId};

/// One server on the map.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MapServer {
    /// `host:port`.
    pub id: String,
    /// `"self"`, `"alive"` (this server's row has an RTT), `"dead"` (its row says dead) or
    /// `"unmeasured"` (not measured yet).
    pub state: &'static str,
    /// This server's RTT to it, in ms.
    pub rtt_ms: Option<f64>,
    /// Whether a server link to it is up.
    pub linked: bool,
}

/// One edge on the map: its ends (`a` < `b`) and its weight in ms (the worse direction's RTT,
/// as the tree uses it).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MapEdge {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    /// Weight in ms; `None` for a tree edge whose measurements this server no longer holds.
    pub rtt_ms: Option<f64>,
}

/// The federation as this server sees it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FederationMap {
    /// This server.
    pub me: String,
    /// Every known server, sorted.
    pub servers: Vec<MapServer>,
    /// The spanning tree this server computed.
    pub tree: Vec<MapEdge>,
    /// Measured edges not in the tree, shortest first, at most the bound asked for.
    pub measured: Vec<MapEdge>,
    /// Measured edges left off by that bound.
    pub measured_left_off: usize,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Federation {
    /// The map: every server, the tree, and up to `max_edges` other measured edges.
    pub fn map(&self, max_edges: usize) -> FederationMap {
        let st = self.state.lock();
        let m = &st.members;
        let me = m.me().clone();
        let mine = m.my_row();
        let servers = m
            .servers()
            .iter()
            .map(|s| {
                let cell = mine.and_then(|r| r.rtts.get(s)).copied();
                let state = match cell {
                    _ if *s == me => "self",
                    Some(Some(_)) => "alive",
                    Some(None) => "dead",
                    None => "unmeasured",
                };
                MapServer {
                    id: id_string(s),
                    state,
                    rtt_ms: cell.flatten().map(ms),
                    linked: st.links.contains_key(s),
                }
            })
            .collect();
        let weight = |a: &ServerId, b: &ServerId| match edge(m.row(a), b, m.row(b), a) {
            Edge::Alive(w) => Some(ms(w)),
            Edge::Dead | Edge::Unknown => None,
        };
        let tree: Vec<MapEdge> = st
            .tree
            .iter()
            .map(|(a, b)| MapEdge {
                a: id_string(a),
                b: id_string(b),
                rtt_ms: weight(a, b),
            })
            .collect();
        // The other measured edges, found the way the tree's graph is built (each pair once).
        // Tree edges are kept with their ends in order, as the sorted servers pair them here.
        let in_tree: std::collections::HashSet<(&_, &_)> =
            st.tree.iter().map(|(a, b)| (a.min(b), a.max(b))).collect();
        let all: Vec<_> = m.servers().iter().collect();
        let mut others = Vec::new();
        for (i, a) in all.iter().enumerate() {
            for b in all.iter().skip(i + 1) {
                if in_tree.contains(&(*a, *b)) {
                    continue;
                }
                if let Edge::Alive(w) = edge(m.row(a), b, m.row(b), a) {
                    others.push((w, *a, *b));
                }
            }
        }
        others.sort_unstable();
        let left_off = others.len().saturating_sub(max_edges);
        others.truncate(max_edges);
        FederationMap {
            me: id_string(&me),
            servers,
            tree,
            measured: others
                .into_iter()
                .map(|(w, a, b)| MapEdge {
                    a: id_string(a),
                    b: id_string(b),
                    rtt_ms: Some(ms(w)),
                })
                .collect(),
            measured_left_off: left_off,
        }
    }
}
