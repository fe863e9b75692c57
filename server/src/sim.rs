//! The cluster simulator: many real nodes in one process, on an in-memory network, on the
//! runtime's clock (run it under `tokio::time::pause()` and it runs on simulated time).
//!
//! Each node is the real server minus its sockets: its datafiles, membership, topology, links,
//! replication and locks are the production code; only the [`Transport`](crate::federation::Transport)
//! is [`SimTransport`]. The [`SimNet`] it runs on knows every pair's RTT and can cut a node off
//! (its links stall, its probes go unanswered, as a cut cable would) and mend it, and a node can
//! crash (its links close, as the kernel closes a killed process's sockets) and restart on its
//! data. [`Cluster`] scripts that (add, crash, restart, cut, heal, set an RTT) and polls
//! assertions until they hold or a deadline passes, chitchat-style.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gossip_common::rtt::{ProbeConfig, Rtt};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::federation::transport::{BoxFuture, Conn, Transport};
use crate::mst::ServerKey;
use crate::{Config, FileConfig, Node, RunningNode, StartError};

/// The network the simulated nodes share.
pub struct SimNet {
    state: Mutex<NetState>,
    /// Bumped on every cut, heal or crash, so stalled links look again.
    changes: watch::Sender<u64>,
    /// Bytes that crossed links (every frame, control and sync alike).
    link_bytes: AtomicU64,
    /// Probe packets answered.
    probes: AtomicU64,
    /// Link bandwidth in bytes per second (0: unlimited).
    bandwidth: AtomicU64,
}

#[derive(Default)]
struct NetState {
    /// Where each running node takes its incoming links.
    accept: HashMap<ServerKey, mpsc::Sender<(Conn, SocketAddr)>>,
    /// Round-trip time by unordered pair; `default_rtt` otherwise.
    rtt: HashMap<(ServerKey, ServerKey), Duration>,
    default_rtt: Duration,
    cut: BTreeSet<ServerKey>,
    /// Address each node is known by (for logs and blacklists).
    addrs: HashMap<ServerKey, IpAddr>,
}

fn pair(a: &ServerKey, b: &ServerKey) -> (ServerKey, ServerKey) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

impl SimNet {
    /// An empty network where every pair is `default_rtt` apart.
    pub fn new(default_rtt: Duration) -> Arc<SimNet> {
        Arc::new(SimNet {
            state: Mutex::new(NetState {
                default_rtt,
                ..NetState::default()
            }),
            changes: watch::channel(0).0,
            link_bytes: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            bandwidth: AtomicU64::new(0),
        })
    }

    /// Sets the RTT between `a` and `b`.
    pub fn set_rtt(&self, a: &ServerKey, b: &ServerKey, rtt: Duration) {
        self.state.lock().rtt.insert(pair(a, b), rtt);
    }

    /// The RTT between `a` and `b`.
    pub fn rtt(&self, a: &ServerKey, b: &ServerKey) -> Duration {
        let st = self.state.lock();
        st.rtt.get(&pair(a, b)).copied().unwrap_or(st.default_rtt)
    }

    /// Limits every link to `bytes_per_s` (0: unlimited), so bulk transfers take simulated
    /// time as they take real time on a real link.
    pub fn set_bandwidth(&self, bytes_per_s: u64) {
        self.bandwidth.store(bytes_per_s, Ordering::Relaxed);
    }

    /// Cuts `k` off from everyone.
    pub fn cut(&self, k: &ServerKey) {
        self.state.lock().cut.insert(k.clone());
        self.changes.send_modify(|g| *g += 1);
    }

    /// Mends `k`'s cable: held bytes flow again.
    pub fn heal(&self, k: &ServerKey) {
        self.state.lock().cut.remove(k);
        self.changes.send_modify(|g| *g += 1);
    }

    /// Bytes that have crossed links so far.
    pub fn link_bytes(&self) -> u64 {
        self.link_bytes.load(Ordering::Relaxed)
    }

    /// Probe packets answered so far.
    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }

    /// Whether `a` and `b` can reach each other now (both running, neither cut).
    fn reachable(&self, a: &ServerKey, b: &ServerKey) -> bool {
        let st = self.state.lock();
        st.accept.contains_key(a)
            && st.accept.contains_key(b)
            && !st.cut.contains(a)
            && !st.cut.contains(b)
    }

    /// Whether the path between `a` and `b` is down for good (one of them crashed).
    fn gone(&self, a: &ServerKey, b: &ServerKey) -> bool {
        let st = self.state.lock();
        !st.accept.contains_key(a) || !st.accept.contains_key(b)
    }

    fn register(&self, k: &ServerKey, ip: IpAddr, accept: mpsc::Sender<(Conn, SocketAddr)>) {
        let mut st = self.state.lock();
        st.accept.insert(k.clone(), accept);
        st.addrs.insert(k.clone(), ip);
    }

    fn unregister(&self, k: &ServerKey) {
        self.state.lock().accept.remove(k);
        self.changes.send_modify(|g| *g += 1);
    }

    fn addr_of(&self, k: &ServerKey) -> SocketAddr {
        let ip = self
            .state
            .lock()
            .addrs
            .get(k)
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        SocketAddr::new(ip, k.1 + 1)
    }
}

/// One node's view of the [`SimNet`].
pub struct SimTransport {
    net: Arc<SimNet>,
    me: ServerKey,
}

impl Transport for SimTransport {
    fn connect<'a>(
        &'a self,
        _node: &'a Node,
        peer: &'a ServerKey,
    ) -> BoxFuture<'a, Result<(Conn, SocketAddr), &'static str>> {
        Box::pin(async move {
            let target = self.net.state.lock().accept.get(peer).cloned();
            let Some(target) = target else {
                return Err("connection refused");
            };
            if !self.net.reachable(&self.me, peer) {
                // A SYN into a cut cable: nothing answers until the connect timeout.
                tokio::time::sleep(Duration::from_secs(5)).await;
                return Err("connect timed out");
            }
            let (mine, my_far) = tokio::io::duplex(64 * 1024);
            let (theirs, their_far) = tokio::io::duplex(64 * 1024);
            let (a, b) = (self.me.clone(), peer.clone());
            let (ra, wa) = tokio::io::split(my_far);
            let (rb, wb) = tokio::io::split(their_far);
            tokio::spawn(pump(Arc::clone(&self.net), a.clone(), b.clone(), ra, wb));
            tokio::spawn(pump(Arc::clone(&self.net), b, a, rb, wa));
            let from = self.net.addr_of(&self.me);
            target
                .send((Box::new(theirs) as Conn, from))
                .await
                .map_err(|_| "connection refused")?;
            Ok((Box::new(mine) as Conn, self.net.addr_of(peer)))
        })
    }

    fn probe<'a>(
        &'a self,
        _node: &'a Node,
        targets: &'a [ServerKey],
        cfg: &'a ProbeConfig,
    ) -> BoxFuture<'a, std::io::Result<BTreeMap<ServerKey, Rtt>>> {
        Box::pin(async move {
            // As the real prober: a packet to each target every interval until `replies` came
            // back, one more interval for stragglers; a target that never answers within the
            // dead timeout is dead. A target that comes back during the round answers the
            // packets sent after it did.
            let start = tokio::time::Instant::now();
            let mut replies: BTreeMap<&ServerKey, usize> = targets.iter().map(|t| (t, 0)).collect();
            loop {
                for (t, n) in replies.iter_mut() {
                    if *n < cfg.replies && self.net.reachable(&self.me, t) {
                        *n += 1;
                        self.net.probes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if replies.values().all(|n| *n >= cfg.replies) {
                    tokio::time::sleep(cfg.interval).await;
                    break;
                }
                if start.elapsed() + cfg.interval > cfg.dead_after {
                    tokio::time::sleep_until(start + cfg.dead_after).await;
                    break;
                }
                tokio::time::sleep(cfg.interval).await;
            }
            Ok(replies
                .into_iter()
                .map(|(t, n)| {
                    let r = if n > 0 {
                        Rtt::Alive(self.net.rtt(&self.me, t))
                    } else {
                        Rtt::Dead
                    };
                    (t.clone(), r)
                })
                .collect())
        })
    }
}

/// Copies one direction of a link: held while the path is cut, closed when an end crashed.
async fn pump(
    net: Arc<SimNet>,
    from_key: ServerKey,
    to_key: ServerKey,
    mut from: tokio::io::ReadHalf<tokio::io::DuplexStream>,
    mut to: tokio::io::WriteHalf<tokio::io::DuplexStream>,
) {
    let mut changes = net.changes.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => r.unwrap_or(0),
            _ = wait_gone(&net, &mut changes, &from_key, &to_key) => return,
        };
        // A cut holds the bytes (and the end of stream) until it heals.
        while !net.reachable(&from_key, &to_key) {
            if net.gone(&from_key, &to_key) || changes.changed().await.is_err() {
                return;
            }
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        net.link_bytes.fetch_add(n as u64, Ordering::Relaxed);
        let bw = net.bandwidth.load(Ordering::Relaxed);
        if bw > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / bw as f64)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Resolves once one end of the path has crashed.
async fn wait_gone(net: &SimNet, changes: &mut watch::Receiver<u64>, a: &ServerKey, b: &ServerKey) {
    loop {
        if net.gone(a, b) {
            return;
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Settings of a simulated node: gossipd's defaults (probe every 2 s, dead after 30 s, a round
/// every 60 s), which simulated time makes free to wait out.
pub fn node_config(dir: &Path, key: &ServerKey, peers: &[ServerKey]) -> Result<Config, StartError> {
    let mut c = Config::from_file_config(FileConfig {
        name: Some(key.0.clone()),
        base_port: Some(key.1),
        bind: Some("127.0.0.1".into()),
        data_dir: Some(dir.to_owned()),
        ..FileConfig::default()
    })
    .map_err(|e| StartError::Admin(e.to_string()))?;
    c.peers = peers.to_vec();
    Ok(c)
}

/// Starts a simulated node `key` on `net`, keeping its data in `dir`, joining `peers`.
pub fn start_node(
    net: &Arc<SimNet>,
    key: &ServerKey,
    dir: &Path,
    peers: &[ServerKey],
) -> Result<RunningNode, StartError> {
    let config = node_config(dir, key, peers)?;
    let (tx, rx) = mpsc::channel(64);
    let transport = Arc::new(SimTransport {
        net: Arc::clone(net),
        me: key.clone(),
    });
    let node = crate::start_headless(config, transport, rx)?;
    net.register(key, IpAddr::V4(Ipv4Addr::LOCALHOST), tx);
    Ok(node)
}

/// A scripted cluster of simulated nodes.
pub struct Cluster {
    /// The network.
    pub net: Arc<SimNet>,
    root: PathBuf,
    nodes: BTreeMap<ServerKey, Option<RunningNode>>,
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
    pub fn key(i: usize) -> ServerKey {
        (format!("s{i:04}"), 1024)
    }

    fn dir(&self, k: &ServerKey) -> PathBuf {
        self.root.join(&k.0)
    }

    /// Adds and starts server `k`, joining `peers`.
    pub fn add(&mut self, k: &ServerKey, peers: &[ServerKey]) -> Result<(), StartError> {
        let node = start_node(&self.net, k, &self.dir(k), peers)?;
        self.nodes.insert(k.clone(), Some(node));
        Ok(())
    }

    /// Crashes server `k`: its links close at once and it answers nothing, like a killed
    /// process; what it acknowledged is on its disk.
    pub async fn crash(&mut self, k: &ServerKey) {
        self.net.unregister(k);
        if let Some(Some(node)) = self.nodes.insert(k.clone(), None) {
            let _ = node.stop().await;
        }
    }

    /// Restarts a crashed server on its data.
    pub fn restart(&mut self, k: &ServerKey) -> Result<(), StartError> {
        let node = start_node(&self.net, k, &self.dir(k), &[])?;
        self.nodes.insert(k.clone(), Some(node));
        Ok(())
    }

    /// The running node `k`.
    pub fn node(&self, k: &ServerKey) -> Option<&Arc<Node>> {
        self.nodes.get(k)?.as_ref().map(|n| &n.node)
    }

    /// Every running node.
    pub fn running(&self) -> impl Iterator<Item = (&ServerKey, &Arc<Node>)> {
        self.nodes
            .iter()
            .filter_map(|(k, n)| n.as_ref().map(|n| (k, &n.node)))
    }

    /// Whether every running node holds the same tree, spanning exactly the running nodes,
    /// and is linked to exactly its tree neighbours.
    pub fn one_tree(&self) -> bool {
        let running: BTreeSet<String> = self
            .running()
            .map(|(k, _)| crate::mst::key_string(k))
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
                let me = crate::mst::key_string(k);
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
        let keys: Vec<ServerKey> = self.running().map(|(k, _)| k.clone()).collect();
        let mut edges = Vec::new();
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                edges.push((i, j, self.net.rtt(&keys[i], &keys[j]).as_micros() as u64));
            }
        }
        let g = crate::mst::ServerGraph::from_indexed(keys, edges);
        crate::mst::minimum_spanning_tree(&g)
            .iter()
            .map(|(a, b)| (crate::mst::key_string(a), crate::mst::key_string(b)))
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
        on: &ServerKey,
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
            node.user_created(&applied.record, None);
        } else {
            node.user_changed(&applied.record, None);
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
    pub server: ServerKey,
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
    let keys: Vec<ServerKey> = c.nodes.keys().cloned().collect();
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
                c.restart(&victim).map_err(|e| e.to_string())?;
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
                            crate::mst::key_string(k),
                            st.tree,
                            st.links,
                            st.rtts,
                            n.store.digest()
                        )
                    })
                    .collect();
                return Err(format!(
                    "after a {kind} of {}, no single tree with identical databases within {limit:?} (seed {seed}):\n{}",
                    crate::mst::key_string(&victim),
                    views.join("\n")
                ));
            }
        }
    }
    Ok(healed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossip_common::{EventCount, Keypair, Signed, UserId, UserInfo};
    use rand::{Rng, SeedableRng};

    fn root() -> tempfile::TempDir {
        // Datafiles on tmpfs when there is one: the simulated nodes' fsyncs cost nothing.
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            if let Ok(d) = tempfile::Builder::new()
                .prefix("gossip-sim-")
                .tempdir_in(shm)
            {
                return d;
            }
        }
        tempfile::tempdir().unwrap()
    }

    fn user(key: &Keypair, uid: u64, count: u32, status: &str) -> Signed<UserInfo> {
        let mut u = UserInfo::new(UserId(uid), key.public());
        u.nick_name = format!("u{uid}");
        u.status = status.into();
        u.event_count = EventCount::new(count, false);
        Signed::sign(u, key).unwrap()
    }

    /// Starts `n` servers with seeded random RTTs, each joining server 0.
    fn cluster(dir: &Path, n: usize, seed: u64) -> Cluster {
        let mut c = Cluster::new(dir, Duration::from_millis(50));
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for i in 0..n {
            for j in i + 1..n {
                let ms = rng.gen_range(1_000..100_000);
                c.net.set_rtt(
                    &Cluster::key(i),
                    &Cluster::key(j),
                    Duration::from_micros(ms),
                );
            }
        }
        for i in 0..n {
            let peers = if i == 0 {
                vec![]
            } else {
                vec![Cluster::key(0)]
            };
            c.add(&Cluster::key(i), &peers).unwrap();
        }
        c
    }

    #[tokio::test(start_paused = true)]
    async fn fifty_servers_form_the_minimum_spanning_tree_of_their_rtts() {
        let dir = root();
        let c = cluster(dir.path(), 50, 1);
        let want = c.expected_tree();
        // Early trees are built from partial measurements (a star around the server everyone
        // joined); the rows converge to the full matrix, and so the tree to its MST.
        let took = c
            .wait(Duration::from_secs(300), |c| {
                c.one_tree() && c.node(&Cluster::key(7)).unwrap().federation.status().tree == want
            })
            .await
            .unwrap_or_else(|| {
                let tree = c.node(&Cluster::key(7)).unwrap().federation.status().tree;
                panic!("no agreement on the MST within 300 s; server 7 holds {tree:?}")
            });
        eprintln!("50 servers agreed on the tree after {took:?} (simulated)");
        c.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_heals_to_identical_databases_within_ten_seconds() {
        let dir = root();
        let c = cluster(dir.path(), 8, 2);
        c.wait(Duration::from_secs(300), Cluster::one_tree)
            .await
            .expect("formed");
        let keys: Vec<Keypair> = (0..8).map(|_| Keypair::generate()).collect();
        for (i, k) in keys.iter().enumerate() {
            c.publish(&Cluster::key(i), user(k, 100 + i as u64, 0, "online"), true)
                .await
                .unwrap();
        }
        c.wait(Duration::from_secs(30), Cluster::same_data)
            .await
            .expect("records everywhere");
        // Server 3 is cut off long enough for every side to mark the other dead; both sides
        // change records meanwhile.
        let cut = Cluster::key(3);
        c.net.cut(&cut);
        tokio::time::sleep(Duration::from_secs(5)).await;
        c.publish(&cut, user(&keys[3], 103, 1, "away"), false)
            .await
            .unwrap();
        c.publish(&Cluster::key(5), user(&keys[5], 105, 1, "busy"), false)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(55)).await;
        let marked_dead = c
            .node(&Cluster::key(0))
            .unwrap()
            .federation
            .status()
            .rtts
            .iter()
            .any(|(k, v)| *k == crate::mst::key_string(&cut) && v.is_none());
        assert!(marked_dead, "the cut was never noticed");
        c.net.heal(&cut);
        let took = c
            .wait(Duration::from_secs(10), |c| c.one_tree() && c.same_data())
            .await
            .expect("one tree and identical databases within 10 s of the heal");
        eprintln!("healed after {took:?} (simulated)");
        let n0 = c.node(&Cluster::key(0)).unwrap();
        assert_eq!(n0.store.user(UserId(103)).unwrap().status, "away");
        let n3 = c.node(&cut).unwrap();
        assert_eq!(n3.store.user(UserId(105)).unwrap().status, "busy");
        c.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_crashed_in_the_middle_of_a_sync_converges_after_restart() {
        let dir = root();
        let mut c = cluster(dir.path(), 4, 3);
        c.wait(Duration::from_secs(300), Cluster::one_tree)
            .await
            .expect("formed");
        let late = Cluster::key(3);
        c.crash(&late).await;
        // Many records while it is down, so its catch-up sync takes a while.
        let key = Keypair::generate();
        for i in 0..3_000u64 {
            c.publish(&Cluster::key(0), user(&key, 1_000 + i, 0, "online"), true)
                .await
                .unwrap();
        }
        c.restart(&late).unwrap();
        // Its neighbours see it again, link to it and sync, at 1 MB/s: a few seconds.
        c.net.set_bandwidth(1_000_000);
        let mid = c
            .wait(Duration::from_secs(120), |c| {
                c.node(&late)
                    .is_some_and(|n| (1..3_000).contains(&n.store.user_count()))
            })
            .await
            .is_some();
        assert!(
            mid,
            "never caught the sync half-way: {} users, {:?}",
            c.node(&late).unwrap().store.user_count(),
            c.node(&late).unwrap().federation.status()
        );
        c.crash(&late).await;
        c.restart(&late).unwrap();
        c.net.set_bandwidth(0);
        let took = c
            .wait(Duration::from_secs(120), |c| c.one_tree() && c.same_data())
            .await
            .expect("converged after the second restart");
        assert_eq!(c.node(&late).unwrap().store.user_count(), 3_000);
        eprintln!("converged {took:?} (simulated) after restarting mid-sync");
        c.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn seeded_chaos_always_heals_within_ten_simulated_seconds() {
        for seed in 1..=5 {
            let dir = root();
            let mut c = cluster(dir.path(), 8, seed);
            c.wait(Duration::from_secs(300), Cluster::one_tree)
                .await
                .expect("formed");
            let healed = chaos(&mut c, seed, 12, Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let worst = healed
                .iter()
                .filter(|h| h.kind != "rtt")
                .map(|h| h.took)
                .max()
                .unwrap_or_default();
            eprintln!("seed {seed}: 12 faults, worst heal {worst:?} (simulated)");
            assert_eq!(healed.len(), 12);
            c.stop().await;
        }
    }
}
