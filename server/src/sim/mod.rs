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
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gossip_common::rtt::{ProbeConfig, Rtt};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::federation::transport::{BoxFuture, Conn, ConnectError, Transport};
use crate::mst::ServerId;
use crate::{Config, FileConfig, RunningNode, StartError};

mod cluster;
#[cfg(test)]
mod tests;

pub use cluster::{chaos, Cluster, Healed};

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
    accept: HashMap<ServerId, mpsc::Sender<(Conn, SocketAddr)>>,
    /// Round-trip time by unordered pair; `default_rtt` otherwise.
    rtt: HashMap<(ServerId, ServerId), Duration>,
    default_rtt: Duration,
    cut: BTreeSet<ServerId>,
    /// Address each node is known by (for logs and blacklists).
    addrs: HashMap<ServerId, IpAddr>,
}

fn pair(a: &ServerId, b: &ServerId) -> (ServerId, ServerId) {
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
    pub fn set_rtt(&self, a: &ServerId, b: &ServerId, rtt: Duration) {
        self.state.lock().rtt.insert(pair(a, b), rtt);
    }

    /// The RTT between `a` and `b`.
    pub fn rtt(&self, a: &ServerId, b: &ServerId) -> Duration {
        let st = self.state.lock();
        st.rtt.get(&pair(a, b)).copied().unwrap_or(st.default_rtt)
    }

    /// Limits every link to `bytes_per_s` (0: unlimited), so bulk transfers take simulated
    /// time as they take real time on a real link.
    pub fn set_bandwidth(&self, bytes_per_s: u64) {
        self.bandwidth.store(bytes_per_s, Ordering::Relaxed);
    }

    /// Cuts `k` off from everyone.
    pub fn cut(&self, k: &ServerId) {
        self.state.lock().cut.insert(k.clone());
        self.changes.send_modify(|g| *g += 1);
    }

    /// Mends `k`'s cable: held bytes flow again.
    pub fn heal(&self, k: &ServerId) {
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
    fn reachable(&self, a: &ServerId, b: &ServerId) -> bool {
        let st = self.state.lock();
        st.accept.contains_key(a)
            && st.accept.contains_key(b)
            && !st.cut.contains(a)
            && !st.cut.contains(b)
    }

    /// Whether the path between `a` and `b` is down for good (one of them crashed).
    fn gone(&self, a: &ServerId, b: &ServerId) -> bool {
        let st = self.state.lock();
        !st.accept.contains_key(a) || !st.accept.contains_key(b)
    }

    fn register(&self, k: &ServerId, ip: IpAddr, accept: mpsc::Sender<(Conn, SocketAddr)>) {
        let mut st = self.state.lock();
        st.accept.insert(k.clone(), accept);
        st.addrs.insert(k.clone(), ip);
    }

    fn unregister(&self, k: &ServerId) {
        self.state.lock().accept.remove(k);
        self.changes.send_modify(|g| *g += 1);
    }

    fn addr_of(&self, k: &ServerId) -> SocketAddr {
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
    me: ServerId,
}

impl Transport for SimTransport {
    fn connect<'a>(
        &'a self,
        _me: &'a ServerId,
        peer: &'a ServerId,
    ) -> BoxFuture<'a, Result<(Conn, SocketAddr), ConnectError>> {
        Box::pin(async move {
            let target = self.net.state.lock().accept.get(peer).cloned();
            let Some(target) = target else {
                return Err(ConnectError::Refused);
            };
            if !self.net.reachable(&self.me, peer) {
                // A SYN into a cut cable: nothing answers until the connect timeout.
                tokio::time::sleep(Duration::from_secs(5)).await;
                return Err(ConnectError::TimedOut);
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
                .map_err(|_| ConnectError::Refused)?;
            Ok((Box::new(mine) as Conn, self.net.addr_of(peer)))
        })
    }

    fn probe<'a>(
        &'a self,
        _me: &'a ServerId,
        targets: &'a [ServerId],
        cfg: &'a ProbeConfig,
    ) -> BoxFuture<'a, std::io::Result<BTreeMap<ServerId, Rtt>>> {
        Box::pin(async move {
            // As the real prober: a packet to each target every interval until `replies` came
            // back, one more interval for stragglers; a target that never answers within the
            // dead timeout is dead. A target that comes back during the round answers the
            // packets sent after it did.
            let start = tokio::time::Instant::now();
            let mut replies: BTreeMap<&ServerId, usize> = targets.iter().map(|t| (t, 0)).collect();
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
    from_key: ServerId,
    to_key: ServerId,
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
async fn wait_gone(net: &SimNet, changes: &mut watch::Receiver<u64>, a: &ServerId, b: &ServerId) {
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
pub fn node_config(dir: &Path, key: &ServerId, peers: &[ServerId]) -> Result<Config, StartError> {
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
    key: &ServerId,
    dir: &Path,
    peers: &[ServerId],
) -> Result<RunningNode, StartError> {
    let config = node_config(dir, key, peers)?;
    let (tx, rx) = mpsc::channel(64);
    let transport = Arc::new(SimTransport {
        net: Arc::clone(net),
        me: key.clone(),
    });
    let node = crate::lifecycle::start_headless(config, transport, rx)?;
    net.register(key, IpAddr::V4(Ipv4Addr::LOCALHOST), tx);
    Ok(node)
}
