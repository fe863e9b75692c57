//! [`Cluster`]: a scripted set of simulated servers (add, crash, restart, cut, heal, set an
//! RTT, publish a record) with assertions polled until they hold; and [`chaos`], seeded faults
//! one after another with a heal deadline after each.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{start_node, SimNet};
use crate::mst::ServerId;
use crate::{Node, RunningNode, StartError};

/// A scripted cluster of simulated nodes.
pub struct Cluster {
    /// The network.
    pub net: Arc<SimNet>,
    root: PathBuf,
    nodes: BTreeMap<ServerId, Option<RunningNode>>,
}

impl Cluster {
    /// An empty cluster keeping the nodes' data under `root`.
    pub fn new(root: &Path, default_rtt: Duration) -> Cluster {
        Cluster {
            net: SimNet::new(default_rtt),
            root: root.to_owned(),
            nodes: BTreeMap::new(),
        }
    }

    /// The name of simulated server `i`: `s0007:1024`.
    pub fn key(i: usize) -> ServerId {
        (format!("s{i:04}"), 1024)
    }

    fn dir(&self, k: &ServerId) -> PathBuf {
        self.root.join(&k.0)
    }

    /// Adds and starts server `k`, joining `peers`.
    pub fn add(&mut self, k: &ServerId, peers: &[ServerId]) -> Result<(), StartError> {
        let node = start_node(&self.net, k, &self.dir(k), peers)?;
        self.nodes.insert(k.clone(), Some(node));
        Ok(())
    }

    /// Crashes server `k`: its links close at once and it answers nothing, like a killed
    /// process; what it acknowledged is on its disk.
    pub async fn crash(&mut self, k: &ServerId) {
        self.net.unregister(k);
        if let Some(Some(node)) = self.nodes.insert(k.clone(), None) {
            let _ = node.stop().await;
        }
    }

    /// Restarts a crashed server on its data.
    ///
    /// A crashed node's last tasks may still be finishing (its data directory stays locked
    /// until they have: a killed process's lock goes with the process), so a locked directory
    /// is retried for up to a simulated minute.
    pub async fn restart(&mut self, k: &ServerId) -> Result<(), StartError> {
        let mut tries = 0;
        let node = loop {
            match start_node(&self.net, k, &self.dir(k), &[]) {
                Ok(node) => break node,
                Err(StartError::Store { source, .. })
                    if source.kind() == std::io::ErrorKind::WouldBlock && tries < 6_000 =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.nodes.insert(k.clone(), Some(node));
        Ok(())
    }

    /// The running node `k`.
    pub fn node(&self, k: &ServerId) -> Option<&Arc<Node>> {
        self.nodes.get(k)?.as_ref().map(|n| &n.node)
    }

    /// Every running node.
    pub fn running(&self) -> impl Iterator<Item = (&ServerId, &Arc<Node>)> {
        self.nodes
            .iter()
            .filter_map(|(k, n)| n.as_ref().map(|n| (k, &n.node)))
    }

    /// Whether every running node holds the same tree, spanning exactly the running nodes,
    /// and is linked to exactly its tree neighbours.
    pub fn one_tree(&self) -> bool {
        let running: BTreeSet<String> = self
            .running()
            .map(|(k, _)| crate::mst::id_string(k))
            .collect();
        let mut trees = self.running().map(|(_, n)| n.federation.status());
        let Some(first) = trees.next() else {
            return true;
        };
        let members: BTreeSet<String> = first
            .tree
            .iter()
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect();
        let spans =
            first.tree.len() + 1 == running.len() && (running.len() == 1 || members == running);
        spans
            && self.running().all(|(k, n)| {
                let st = n.federation.status();
                let me = crate::mst::id_string(k);
                let mut want: Vec<String> = st
                    .tree
                    .iter()
                    .filter_map(|(a, b)| {
                        (*a == me)
                            .then(|| b.clone())
                            .or_else(|| (*b == me).then(|| a.clone()))
                    })
                    .collect();
                want.sort();
                st.tree == first.tree && st.links == want
            })
    }

    /// The minimum spanning tree of the running servers' true RTTs, computed from the
    /// network's matrix, independently of any node (as `host:port` pairs, like a status).
    pub fn expected_tree(&self) -> Vec<(String, String)> {
        let keys: Vec<ServerId> = self.running().map(|(k, _)| k.clone()).collect();
        let mut edges = Vec::new();
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                edges.push((i, j, self.net.rtt(&keys[i], &keys[j]).as_micros() as u64));
            }
        }
        let g = crate::mst::ServerGraph::from_indexed(keys, edges);
        crate::mst::minimum_spanning_tree(&g)
            .iter()
            .map(|(a, b)| (crate::mst::id_string(a), crate::mst::id_string(b)))
            .collect()
    }

    /// Whether every running node holds the same database.
    pub fn same_data(&self) -> bool {
        let mut digests = self.running().map(|(_, n)| n.store.digest());
        let Some(first) = digests.next() else {
            return true;
        };
        digests.all(|d| d == first)
    }

    /// Polls `check` every 10 ms (of the runtime's clock) until it holds; how long that took,
    /// or `None` after `timeout`.
    pub async fn wait(
        &self,
        timeout: Duration,
        check: impl Fn(&Cluster) -> bool,
    ) -> Option<Duration> {
        let t0 = tokio::time::Instant::now();
        loop {
            if check(self) {
                return Some(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every node.
    pub async fn stop(self) {
        for (_, node) in self.nodes {
            if let Some(node) = node {
                let _ = node.stop().await;
            }
        }
    }
}

impl Cluster {
    /// Stores `record` on server `on` as if its owner's client sent it (`new`: a registration),
    /// and lets it travel the federation like any change.
    pub async fn publish(
        &self,
        on: &ServerId,
        record: gossip_common::Signed<gossip_common::UserInfo>,
        new: bool,
    ) -> Result<(), crate::store::StoreError> {
        let node = self.node(on).expect("a running node");
        let mode = if new {
            crate::store::Mode::Create
        } else {
            crate::store::Mode::Update
        };
        let applied = node.store.apply_user_info(record, mode, "sim").await?;
        if new {
            node.records.user_created(&applied.record, None);
        } else {
            node.records.user_changed(&applied.record, None);
        }
        Ok(())
    }
}

/// What one simulated fault was and how long the cluster took to heal from it.
#[derive(Debug, Clone)]
pub struct Healed {
    /// `cut`, `crash` or `rtt`.
    pub kind: &'static str,
    /// The server it hit.
    pub server: ServerId,
    /// From the heal (or restart) to one tree and identical databases, simulated.
    pub took: Duration,
}

/// Seeded chaos on `c`: `faults` faults one after another (a server cut off for 40–90 s, long
/// enough for dead marks; a crash and restart after 5–60 s; an RTT change), with a record
/// changed somewhere during each. After every heal the cluster must be back in one tree with
/// identical databases within `deadline` (simulated); the error says which fault did not heal.
pub async fn chaos(
    c: &mut Cluster,
    seed: u64,
    faults: usize,
    deadline: Duration,
) -> Result<Vec<Healed>, String> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let keys: Vec<ServerId> = c.nodes.keys().cloned().collect();
    let owner = gossip_common::Keypair::generate();
    let uid = gossip_common::UserId(0xC4A0_5000 + seed);
    let mut count = 0u32;
    let record = |count: u32| {
        let mut u = gossip_common::UserInfo::new(uid, owner.public());
        u.status = format!("chaos {count}");
        u.event_count = gossip_common::EventCount::new(count, false);
        gossip_common::Signed::sign(u, &owner).expect("signable")
    };
    c.publish(&keys[0], record(0), true)
        .await
        .map_err(|e| e.to_string())?;
    c.wait(deadline, Cluster::same_data)
        .await
        .ok_or("the first record never reached every server")?;
    let mut healed = Vec::new();
    for _ in 0..faults {
        let victim = keys[rng.gen_range(0..keys.len())].clone();
        // A change made somewhere that stays up, during the fault.
        let writer = keys
            .iter()
            .find(|k| **k != victim)
            .expect("two servers at least")
            .clone();
        let kind = match rng.gen_range(0..3) {
            0 => {
                c.net.cut(&victim);
                tokio::time::sleep(Duration::from_secs(rng.gen_range(40..90))).await;
                count += 1;
                c.publish(&writer, record(count), false)
                    .await
                    .map_err(|e| e.to_string())?;
                c.net.heal(&victim);
                "cut"
            }
            1 => {
                c.crash(&victim).await;
                tokio::time::sleep(Duration::from_secs(rng.gen_range(5..60))).await;
                count += 1;
                c.publish(&writer, record(count), false)
                    .await
                    .map_err(|e| e.to_string())?;
                c.restart(&victim).await.map_err(|e| e.to_string())?;
                "crash"
            }
            _ => {
                let other = keys[rng.gen_range(0..keys.len())].clone();
                if other != victim {
                    let ms = rng.gen_range(1_000..100_000);
                    c.net.set_rtt(&victim, &other, Duration::from_micros(ms));
                }
                "rtt"
            }
        };
        // An RTT change is seen at the next measurement round (a minute by default).
        let limit = if kind == "rtt" {
            deadline + Duration::from_secs(90)
        } else {
            deadline
        };
        match c.wait(limit, |c| c.one_tree() && c.same_data()).await {
            Some(took) => healed.push(Healed {
                kind,
                server: victim,
                took,
            }),
            None => {
                let views: Vec<String> = c
                    .running()
                    .map(|(k, n)| {
                        let st = n.federation.status();
                        format!(
                            "{}: tree {:?} links {:?} rtts {:?} digest {}",
                            crate::mst::id_string(k),
                            st.tree,
                            st.links,
                            st.rtts,
                            n.store.digest()
                        )
                    })
                    .collect();
                return Err(format!(
                    "after a {kind} of {}, no single tree with identical databases within {limit:?} (seed {seed}):\n{}",
                    crate::mst::id_string(&victim),
                    views.join("\n")
                ));
            }
        }
    }
    Ok(healed)
}
