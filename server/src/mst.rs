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
//! How two directions' measurements become one weight (`edge`, `Federation::graph`) and how
//! jitter is kept from reshaping the tree (damping, `DAMPING` / `DAMPING_FLOOR_US`) is decided
//! where the matrix is built, in `federation.rs`; this module is pure.
//!
//! Two variants of Prim share that order: a dense one, O(V² + E), which scans the frontier for
//! its minimum (federations measure every pair, so their graphs are complete and this is the
//! one that runs; measured figures are in `docs/performance.md`), and a lazy-heap one,
//! O(E log V), for sparse graphs (partial measurements, partitions).
//!
//! The graph is stored as compressed adjacency arrays indexed by position in the sorted server
//! list, so building it is O(V log V + E) with no per-edge allocation.

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

/// A server's canonical identity: `(host, client port)`, ordered host first, then port.
pub type ServerId = (String, u16);

/// Formats a server id as `host:port` (a name and port, not a cryptographic key).
pub fn id_string(k: &ServerId) -> String {
    format!("{}:{}", k.0, k.1)
}

/// Parses `host:port` (a server's identity: host name and base port); the error says what is
/// wrong with it.
pub fn parse_id(s: &str) -> Result<ServerId, &'static str> {
    let (host, port) = s.trim().rsplit_once(':').ok_or("must be HOST:PORT")?;
    let port: u16 = port.parse().map_err(|_| "bad port")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("empty host");
    }
    if !gossip_common::name::is_host(host) {
        return Err("not a host name or IP address");
    }
    Ok((host.to_owned(), port))
}

/// An edge of the tree, endpoints in ascending order.
pub type TreeEdge = (ServerId, ServerId);

/// The server graph: nodes are servers, edge weights are agreed RTTs in microseconds.
#[derive(Debug, Clone, Default)]
pub struct ServerGraph {
    /// Servers, sorted: a server's index is its rank by name.
    servers: Vec<ServerId>,
    /// Adjacency of server `i`: `adj[start[i]..start[i + 1]]`, as (neighbour, weight).
    /// Weights are stored in 32 bits (microseconds up to 71 minutes; longer saturates, the same
    /// on every node): 8-byte entries halve the memory a complete graph's build writes, which
    /// is most of its time.
    start: Vec<usize>,
    adj: Vec<(u32, u32)>,
}

impl ServerGraph {
    /// Builds the graph. `servers` may be in any order (they are sorted); `edges` name servers
    /// by key, unknown endpoints and self-loops are ignored, and a repeated edge counts with its
    /// lowest weight.
    pub fn new<K: Borrow<ServerId>>(
        servers: impl IntoIterator<Item = ServerId>,
        edges: impl IntoIterator<Item = (K, K, u64)>,
    ) -> Self {
        let mut servers: Vec<ServerId> = servers.into_iter().collect();
        servers.sort();
        servers.dedup();
        let index: HashMap<&ServerId, usize> =
            servers.iter().enumerate().map(|(i, s)| (s, i)).collect();
        let edges: Vec<(usize, usize, u64)> = edges
            .into_iter()
            .filter_map(|(a, b, w)| Some((*index.get(a.borrow())?, *index.get(b.borrow())?, w)))
            .collect();
        drop(index);
        Self::from_indexed(servers, edges)
    }

    /// Builds the graph from edges given by index into `servers`, which must be sorted and
    /// without duplicates (as a `BTreeSet` iterates). The fast path: no key is looked up.
    pub fn from_indexed(
        servers: Vec<ServerId>,
        edges: impl IntoIterator<Item = (usize, usize, u64)> + Clone,
    ) -> Self {
        debug_assert!(
            servers.windows(2).all(|w| w[0] < w[1]),
            "servers not sorted"
        );
        let n = servers.len();
        let valid = |&(a, b, _): &(usize, usize, u64)| a != b && a < n && b < n;
        // Counting pass, then fill: compressed adjacency without sorting the edges.
        let mut start = vec![0usize; n + 1];
        for (a, b, _) in edges.clone().into_iter().filter(valid) {
            start[a + 1] += 1;
            start[b + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut adj = vec![(0u32, 0u32); start[n]];
        for (a, b, w) in edges.into_iter().filter(valid) {
            let w = u32::try_from(w).unwrap_or(u32::MAX);
            adj[fill[a]] = (b as u32, w);
            fill[a] += 1;
            adj[fill[b]] = (a as u32, w);
            fill[b] += 1;
        }
        ServerGraph {
            servers,
            start,
            adj,
        }
    }

    /// The servers, sorted (a server's index in the graph is its position here).
    pub fn servers(&self) -> &[ServerId] {
        &self.servers
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the graph has no servers.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Number of edges (a repeated edge counts each time it was given).
    pub fn edge_count(&self) -> usize {
        self.adj.len() / 2
    }

    fn neighbours(&self, v: usize) -> &[(u32, u32)] {
        &self.adj[self.start[v]..self.start[v + 1]]
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
    let n = g.len();
    // Dense scan when the graph has at least a quarter of all possible edges.
    let edges = if 8 * g.edge_count() >= n * n.saturating_sub(1) {
        prim_dense(g)
    } else {
        prim_heap(g)
    };
    let mut out: Vec<TreeEdge> = edges
        .into_iter()
        .map(|(a, b)| {
            let (a, b) = (a.min(b), a.max(b));
            (g.servers[a].clone(), g.servers[b].clone())
        })
        .collect();
    out.sort();
    out
}

/// Prim with a linear scan of the frontier: O(V² + E).
fn prim_dense(g: &ServerGraph) -> Vec<(usize, usize)> {
    let n = g.len();
    let mut in_tree = vec![false; n];
    let mut best: Vec<Option<(EdgeKey, usize)>> = vec![None; n];
    // Servers not in the tree yet, kept in index order so a new component's root is the
    // alphabetically first uncovered server.
    let mut outside: Vec<usize> = (0..n).collect();
    let mut edges = Vec::with_capacity(n.saturating_sub(1));
    while !outside.is_empty() {
        // The cheapest frontier edge, or a new root when the component is complete.
        let mut pick = 0;
        for (i, &v) in outside.iter().enumerate() {
            if let Some((k, _)) = best[v] {
                if best[outside[pick]].is_none_or(|(pk, _)| k < pk) {
                    pick = i;
                }
            }
        }
        let v = outside.remove(pick);
        in_tree[v] = true;
        if let Some((_, from)) = best[v] {
            edges.push((from, v));
        }
        relax(g, v, &in_tree, &mut best, |_, _| {});
    }
    edges
}

/// Offers `v`'s edges to the servers outside the tree: where one is better than the best edge
/// known for its far end, it becomes that server's best, and `improved(key, server)` is told.
fn relax(
    g: &ServerGraph,
    v: usize,
    in_tree: &[bool],
    best: &mut [Option<(EdgeKey, usize)>],
    mut improved: impl FnMut(EdgeKey, usize),
) {
    for &(u, w) in g.neighbours(v) {
        let u = u as usize;
        if in_tree[u] {
            continue;
        }
        let k = edge_key(u64::from(w), u, v);
        if best[u].is_none_or(|(b, _)| k < b) {
            best[u] = Some((k, v));
            improved(k, u);
        }
    }
}

/// Prim with a lazy-decrease-key heap: O(E log V), for sparse graphs.
fn prim_heap(g: &ServerGraph) -> Vec<(usize, usize)> {
    let n = g.len();
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
            relax(g, v, &in_tree, &mut best, |k, u| {
                heap.push(Reverse((k, u, v)))
            });
        }
    }
    edges
}

/// The servers adjacent to `me` in `tree`: the only ones `me` keeps links to.
pub fn neighbours(tree: &[TreeEdge], me: &ServerId) -> Vec<ServerId> {
    let mut out: Vec<ServerId> = tree
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

    fn k(name: &str) -> ServerId {
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

    fn to_tree(g: &ServerGraph, mut edges: Vec<(usize, usize)>) -> Vec<TreeEdge> {
        edges.sort();
        let mut t: Vec<TreeEdge> = edges
            .into_iter()
            .map(|(a, b)| (g.servers[a.min(b)].clone(), g.servers[a.max(b)].clone()))
            .collect();
        t.sort();
        t
    }

    #[test]
    fn dense_variant_is_chosen_for_complete_graphs() {
        let names: Vec<ServerId> = (0..50).map(|i| (format!("s{i:03}"), 1)).collect();
        let mut edges = Vec::new();
        for a in 0..50 {
            for b in a + 1..50 {
                edges.push((a, b, ((a * 7 + b * 13) % 17) as u64));
            }
        }
        let g = ServerGraph::from_indexed(names, edges);
        assert_eq!(g.edge_count(), 50 * 49 / 2);
        let t = minimum_spanning_tree(&g);
        assert_eq!(t.len(), 49);
        assert_eq!(t, to_tree(&g, prim_heap(&g)));
    }

    proptest! {
        #[test]
        fn both_variants_equal_petgraph_kruskal((n, raw) in arb_graph()) {
            use petgraph::graph::{NodeIndex, UnGraph};
            let names: Vec<ServerId> = (0..n).map(|i| (format!("s{i:03}"), 1000)).collect();
            let g = ServerGraph::new(
                names.clone(),
                raw.iter().map(|&(a, b, w)| (&names[a], &names[b], w)),
            );
            // petgraph's Kruskal on the same graph, weights replaced by the total-order key
            // (names are in index order, so indices agree).
            let mut pg = UnGraph::<ServerId, EdgeKey>::default();
            for name in &names {
                pg.add_node(name.clone());
            }
            for &(a, b, w) in &raw {
                if a != b {
                    pg.add_edge(NodeIndex::new(a), NodeIndex::new(b), edge_key(w, a, b));
                }
            }
            let mut theirs: Vec<TreeEdge> = Vec::new();
            for el in petgraph::algo::min_spanning_tree(&pg) {
                if let petgraph::data::Element::Edge { source, target, .. } = el {
                    let (a, b) = (source.min(target), source.max(target));
                    theirs.push((names[a].clone(), names[b].clone()));
                }
            }
            theirs.sort();
            prop_assert_eq!(&to_tree(&g, prim_dense(&g)), &theirs);
            prop_assert_eq!(&to_tree(&g, prim_heap(&g)), &theirs);
            prop_assert_eq!(minimum_spanning_tree(&g), theirs);
        }
    }
}
