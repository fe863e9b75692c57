//! The minimum spanning tree every server computes from the shared RTT matrix.
//!
//! Every node must compute the *same* tree from the same matrix, or links would be opened on
//! one side and refused on the other. Two things make the tree unique:
//!
//! * Prim's algorithm starts from the alphabetically first server (the spec's fix for "start
//!   from ourself", which gave each node its own tree), and a disconnected graph (a partition)
//!   gives a spanning *forest*, each tree grown from the first server not yet covered;
//! * edges are totally ordered by `(weight, lower name, higher name)`, so no two edges tie and
//!   the minimum spanning tree is unique; any correct algorithm finds the same one, which the
//!   property test checks against petgraph's Kruskal.
//!
//! Weights are integer microseconds, so there is no floating-point disagreement between nodes.
//! How two directions' measurements become one weight, and how jitter is kept from reshaping the
//! tree, is decided where the matrix is built (`rtt.rs`); this module is pure.
//!
//! The priority queue holds, per server outside the tree, only its best known edge into the
//! tree (a lazy decrease-key), so on the complete graphs of a federation the heap stays small.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use petgraph::graph::{NodeIndex, UnGraph};

/// A server's canonical identity: `(host, client port)`, ordered host first, then port.
pub type ServerKey = (String, u16);

/// Formats a key as `host:port`.
pub fn key_string(k: &ServerKey) -> String {
    format!("{}:{}", k.0, k.1)
}

/// An edge of the tree, endpoints in ascending order.
pub type TreeEdge = (ServerKey, ServerKey);

/// The server graph: nodes are servers, edge weights are agreed RTTs in microseconds.
#[derive(Debug, Clone, Default)]
pub struct ServerGraph {
    graph: UnGraph<ServerKey, u64>,
}

impl ServerGraph {
    /// Builds the graph. `servers` may be in any order (they are sorted); `edges` name servers
    /// by key, unknown endpoints and self-loops are ignored, and a repeated edge keeps its
    /// lowest weight.
    pub fn new(
        servers: impl IntoIterator<Item = ServerKey>,
        edges: impl IntoIterator<Item = (ServerKey, ServerKey, u64)>,
    ) -> Self {
        let mut servers: Vec<ServerKey> = servers.into_iter().collect();
        servers.sort();
        servers.dedup();
        let mut graph = UnGraph::with_capacity(servers.len(), servers.len() * 4);
        for s in &servers {
            graph.add_node(s.clone());
        }
        let index = |k: &ServerKey| servers.binary_search(k).ok().map(NodeIndex::new);
        for (a, b, w) in edges {
            let (Some(ia), Some(ib)) = (index(&a), index(&b)) else {
                continue;
            };
            if ia == ib {
                continue;
            }
            match graph.find_edge(ia, ib) {
                Some(e) => {
                    let cur: &mut u64 = &mut graph[e];
                    *cur = (*cur).min(w);
                }
                None => {
                    graph.add_edge(ia, ib, w);
                }
            }
        }
        ServerGraph { graph }
    }

    /// The underlying petgraph graph; node indices follow alphabetical server order.
    pub fn graph(&self) -> &UnGraph<ServerKey, u64> {
        &self.graph
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    /// Whether the graph has no servers.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }
}

/// An edge's position in the total order: (weight, lower index, higher index).
type EdgeKey = (u64, usize, usize);

/// Total order key of an edge between node indices `a` and `b` (indices follow name order).
fn edge_key(w: u64, a: usize, b: usize) -> EdgeKey {
    (w, a.min(b), a.max(b))
}

/// The minimum spanning forest: Prim from the alphabetically first server, restarted from the
/// first uncovered server for every further component. Edges come out sorted.
pub fn minimum_spanning_tree(g: &ServerGraph) -> Vec<TreeEdge> {
    let graph = &g.graph;
    let n = graph.node_count();
    let mut in_tree = vec![false; n];
    // Best known edge into the tree for each outside node: (key, from).
    let mut best: Vec<Option<(EdgeKey, usize)>> = vec![None; n];
    let mut heap = BinaryHeap::new();
    let mut edges = Vec::with_capacity(n.saturating_sub(1));
    for root in 0..n {
        if in_tree[root] {
            continue;
        }
        heap.push(Reverse(((0, 0, 0), root, usize::MAX)));
        while let Some(Reverse((key, v, from))) = heap.pop() {
            if in_tree[v] || (from != usize::MAX && best[v].map(|b| b.0) != Some(key)) {
                continue; // stale heap entry
            }
            in_tree[v] = true;
            if from != usize::MAX {
                edges.push((from, v));
            }
            for e in graph.edges(NodeIndex::new(v)) {
                use petgraph::visit::EdgeRef;
                let u = if e.source().index() == v {
                    e.target().index()
                } else {
                    e.source().index()
                };
                if in_tree[u] {
                    continue;
                }
                let k = edge_key(*e.weight(), u, v);
                if best[u].is_none_or(|b| k < b.0) {
                    best[u] = Some((k, v));
                    heap.push(Reverse((k, u, v)));
                }
            }
        }
    }
    let mut out: Vec<TreeEdge> = edges
        .into_iter()
        .map(|(a, b)| {
            let (a, b) = (a.min(b), a.max(b));
            (
                graph[NodeIndex::new(a)].clone(),
                graph[NodeIndex::new(b)].clone(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The servers adjacent to `me` in `tree`: the only ones `me` keeps links to.
pub fn neighbours(tree: &[TreeEdge], me: &ServerKey) -> Vec<ServerKey> {
    let mut out: Vec<ServerKey> = tree
        .iter()
        .filter_map(|(a, b)| {
            if a == me {
                Some(b.clone())
            } else if b == me {
                Some(a.clone())
            } else {
                None
            }
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn k(name: &str) -> ServerKey {
        (name.to_owned(), 1024)
    }

    #[test]
    fn known_tree() {
        // a-b 10, b-c 10, a-c 30, c-d 5, b-d 50: tree a-b, b-c, c-d.
        let g = ServerGraph::new(
            ["d", "c", "b", "a"].map(k),
            [
                (k("a"), k("b"), 10),
                (k("b"), k("c"), 10),
                (k("a"), k("c"), 30),
                (k("c"), k("d"), 5),
                (k("b"), k("d"), 50),
            ],
        );
        let t = minimum_spanning_tree(&g);
        assert_eq!(
            t,
            vec![(k("a"), k("b")), (k("b"), k("c")), (k("c"), k("d"))]
        );
        assert_eq!(neighbours(&t, &k("b")), vec![k("a"), k("c")]);
    }

    #[test]
    fn ties_are_broken_by_names_not_by_input_order() {
        // A triangle of equal weights: the edge between the two highest names is left out.
        let edges = [
            (k("a"), k("b"), 7),
            (k("b"), k("c"), 7),
            (k("a"), k("c"), 7),
        ];
        let mut rev = edges.clone();
        rev.reverse();
        let t1 = minimum_spanning_tree(&ServerGraph::new(["a", "b", "c"].map(k), edges));
        let t2 = minimum_spanning_tree(&ServerGraph::new(["c", "b", "a"].map(k), rev));
        assert_eq!(t1, t2);
        assert_eq!(t1, vec![(k("a"), k("b")), (k("a"), k("c"))]);
    }

    #[test]
    fn partitions_give_a_forest() {
        let g = ServerGraph::new(
            ["a", "b", "c", "d"].map(k),
            [(k("a"), k("b"), 1), (k("c"), k("d"), 1)],
        );
        assert_eq!(minimum_spanning_tree(&g).len(), 2);
    }

    /// Random graphs as (node count, edge list) with weights from a small range, so ties are
    /// common and the total order is exercised.
    fn arb_graph() -> impl Strategy<Value = (usize, Vec<(usize, usize, u64)>)> {
        (2usize..40).prop_flat_map(|n| {
            let edge = (0..n, 0..n, 1u64..20);
            (Just(n), prop::collection::vec(edge, 0..(n * n).min(300)))
        })
    }

    proptest! {
        #[test]
        fn equals_petgraph_kruskal((n, raw) in arb_graph()) {
            let names: Vec<ServerKey> = (0..n).map(|i| (format!("s{i:03}"), 1000)).collect();
            let g = ServerGraph::new(
                names.clone(),
                raw.iter().map(|&(a, b, w)| (names[a].clone(), names[b].clone(), w)),
            );
            let ours = minimum_spanning_tree(&g);

            // petgraph's Kruskal on the same graph, weights replaced by the total-order key.
            let keyed = g.graph().map(|_, n| n.clone(), |_, w| *w);
            let mut with_keys = UnGraph::<ServerKey, (u64, usize, usize)>::default();
            for n in keyed.node_indices() {
                with_keys.add_node(keyed[n].clone());
            }
            for e in keyed.edge_indices() {
                let (a, b) = keyed.edge_endpoints(e).unwrap();
                with_keys.add_edge(a, b, edge_key(keyed[e], a.index(), b.index()));
            }
            // Kruskal yields every node first, in index order, so its edge endpoints are our
            // node indices.
            let mut theirs: Vec<TreeEdge> = Vec::new();
            for el in petgraph::algo::min_spanning_tree(&with_keys) {
                if let petgraph::data::Element::Edge { source, target, .. } = el {
                    let (a, b) = (source.min(target), source.max(target));
                    theirs.push((with_keys[NodeIndex::new(a)].clone(), with_keys[NodeIndex::new(b)].clone()));
                }
            }
            theirs.sort();
            let weight = |t: &[TreeEdge]| -> u64 {
                t.iter().map(|(a, b)| {
                    let ia = g.graph().node_indices().find(|i| &g.graph()[*i] == a).unwrap();
                    let ib = g.graph().node_indices().find(|i| &g.graph()[*i] == b).unwrap();
                    g.graph()[g.graph().find_edge(ia, ib).unwrap()]
                }).sum()
            };
            prop_assert_eq!(weight(&ours), weight(&theirs));
            prop_assert_eq!(ours, theirs);
        }
    }
}
