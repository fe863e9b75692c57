//! The topology loop: recomputes the tree when the rows moved (and retries due dials every
//! second), opens links to tree neighbours and repair targets, and closes links that left the
//! tree. The decisions are the pure [`topology`](super::topology) plan; this is the thin loop
//! that carries them out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gossip_common::codec::encode_frame as encode;
use gossip_common::message as m;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{dial, topology, Federation, Hooks, UNPROVEN_MAX_AGE};
use crate::mst::{id_string, ServerId};
use crate::tasks::Tasks;

/// Recomputes the tree when anything changed (and every second), opens links to neighbours
/// (and repair links across a split the rows disagree about) and closes links that left the
/// tree.
pub(super) async fn topology_loop(
    fed: Arc<Federation>,
    hooks: Arc<dyn Hooks>,
    shutdown: CancellationToken,
    tasks: Tasks,
) {
    let grace = topology::dead_edge_grace(&fed.probing.probe);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = fed.changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let (to_connect, to_close) = {
            let mut guard = fed.state.lock();
            let st = &mut *guard;
            let now = Instant::now();
            let links_now: Vec<ServerId> = st.links.keys().cloned().collect();
            for k in &links_now {
                st.members.prove(k);
            }
            for gone in st.members.expire_unproven(now, UNPROVEN_MAX_AGE) {
                tracing::info!(server = %id_string(&gone), "forgot a server nobody has heard from itself");
            }
            let links: BTreeMap<ServerId, Duration> = st
                .links
                .iter()
                .map(|(k, l)| (k.clone(), now - l.up_at))
                .collect();
            let busy: BTreeSet<ServerId> = st
                .connecting
                .iter()
                .cloned()
                .chain(
                    st.backoff
                        .iter()
                        .filter(|(_, (_, at))| *at > now)
                        .map(|(k, _)| k.clone()),
                )
                .collect();
            // The MST (O(V²) on a complete graph) is recomputed only when the matrix moved;
            // the loop's one-second tick only retries dials whose backoff ran out.
            let tree = if st.tree_version == st.members.version() {
                st.tree.clone()
            } else {
                st.tree_version = st.members.version();
                crate::mst::minimum_spanning_tree(&st.members.graph())
            };
            let plan = topology::plan_with_tree(&st.members, tree, &links, &busy, grace);
            if plan.tree != st.tree {
                fed.recomputations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    tree = ?plan.tree.iter().map(|(a, b)| format!("{}-{}", id_string(a), id_string(b))).collect::<Vec<_>>(),
                    "spanning tree recomputed"
                );
                st.tree = plan.tree;
            }
            for n in &plan.connect {
                if plan.repairs.contains(n) {
                    tracing::info!(peer = %id_string(n), "dialling a server our rows put outside this part of the tree: it answers our probes");
                }
                st.connecting.insert(n.clone());
            }
            for k in &plan.close {
                if let Some(link) = st.links.get(k) {
                    let _ = link.tx.try_send((
                        now,
                        encode(m::Disconnect {
                            reason: Some("not a tree neighbour".into()),
                        }),
                    ));
                    link.kill.cancel();
                }
            }
            (plan.connect, plan.close)
        };
        for k in to_close {
            tracing::info!(peer = %id_string(&k), "closing link: no longer a tree neighbour");
        }
        for peer in to_connect {
            tasks.spawn(dial::dial(
                Arc::clone(&fed),
                Arc::clone(&hooks),
                peer,
                shutdown.clone(),
            ));
        }
    }
}
