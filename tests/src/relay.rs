//! A relay that stands between federated nodes, so a test can cut a node off as a cut cable
//! would and mend it again.
//!
//! Each node `i` is known to the others by a *public* address (its `--name`), where the relay
//! listens on the node's server port P+1 (TCP) and RTT port P+2 (UDP); the node itself binds a
//! *private* address (its `--bind`) and its outgoing links and probes leave from there, so the
//! relay knows which node every connection and packet comes from. While a node is cut:
//! * bytes on its links are held (not dropped, not closed): the links stall, and resume with
//!   everything in order if they survive the cut, as TCP does when a cable comes back;
//! * a new connection to or from it is accepted by the relay but not passed on until the cut
//!   heals (the dialler sees a silent peer, as it would a SYN into the void);
//! * its RTT probes and their echoes are dropped.
//!
//! Clients are not relayed: they reach their node's private address directly.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The addresses of one relayed node.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// Where the others reach it (its `--name`; the relay listens here).
    pub public: Ipv4Addr,
    /// Where it binds and sends from (its `--bind`).
    pub private: Ipv4Addr,
}

/// A running relay for a set of nodes sharing one base port P.
pub struct Relay {
    cut: watch::Sender<BTreeSet<usize>>,
    stop: CancellationToken,
}

/// UDP forwarding state kept per probing socket, dropped after this long without traffic.
const UDP_IDLE: Duration = Duration::from_secs(5);

impl Relay {
    /// Starts relaying P+1 and P+2 for every node. Fails if a public address cannot be bound.
    pub async fn start(nodes: &[Addrs], base_port: u16) -> std::io::Result<Relay> {
        let (cut, _) = watch::channel(BTreeSet::new());
        let stop = CancellationToken::new();
        let by_private: Arc<HashMap<IpAddr, usize>> = Arc::new(
            nodes
                .iter()
                .enumerate()
                .map(|(i, a)| (IpAddr::V4(a.private), i))
                .collect(),
        );
        for (dst, a) in nodes.iter().enumerate() {
            let tcp = TcpListener::bind((a.public, base_port + 1)).await?;
            let udp = Arc::new(UdpSocket::bind((a.public, base_port + 2)).await?);
            let ctx = Ctx {
                dst,
                by_private: Arc::clone(&by_private),
                cut: cut.subscribe(),
                stop: stop.clone(),
            };
            tokio::spawn(tcp_accept(
                tcp,
                SocketAddr::from((a.private, base_port + 1)),
                ctx.clone(),
            ));
            tokio::spawn(udp_relay(
                udp,
                SocketAddr::from((a.private, base_port + 2)),
                ctx,
            ));
        }
        Ok(Relay { cut, stop })
    }

    /// Cuts node `i` off from every other node.
    pub fn cut(&self, i: usize) {
        self.cut.send_modify(|c| {
            c.insert(i);
        });
    }

    /// Mends node `i`'s links: held bytes flow again.
    pub fn heal(&self, i: usize) {
        self.cut.send_modify(|c| {
            c.remove(&i);
        });
    }

    /// Whether node `i` is cut off.
    pub fn is_cut(&self, i: usize) -> bool {
        self.cut.borrow().contains(&i)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct Ctx {
    dst: usize,
    by_private: Arc<HashMap<IpAddr, usize>>,
    cut: watch::Receiver<BTreeSet<usize>>,
    stop: CancellationToken,
}

impl Ctx {
    /// Whether traffic between `src` (a node, or `None` for anyone else) and this node is cut.
    fn is_cut(&self, src: Option<usize>) -> bool {
        let cut = self.cut.borrow();
        cut.contains(&self.dst) || src.is_some_and(|s| cut.contains(&s))
    }

    /// Waits until traffic from `src` to this node may pass; false when the relay stops.
    async fn passable(&mut self, src: Option<usize>) -> bool {
        loop {
            if !self.is_cut(src) {
                return true;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                changed = self.cut.changed() => if changed.is_err() { return false },
            }
        }
    }
}

async fn tcp_accept(listener: TcpListener, target: SocketAddr, ctx: Ctx) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((inbound, from)) = accepted else {
            continue;
        };
        let src = ctx.by_private.get(&from.ip()).copied();
        let mut ctx = ctx.clone();
        tokio::spawn(async move {
            // A connection made during a cut reaches its node only once the cut heals.
            if !ctx.passable(src).await {
                return;
            }
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = outbound.set_nodelay(true);
            let _ = inbound.set_nodelay(true);
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::join!(pump(ir, ow, src, ctx.clone()), pump(or, iw, src, ctx));
        });
    }
}

/// Copies one direction, holding every chunk (and the end of stream) while the path is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    src: Option<usize>,
    mut ctx: Ctx,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            _ = ctx.stop.cancelled() => return,
            r = from.read(&mut buf) => r.unwrap_or(0),
        };
        if !ctx.passable(src).await {
            return;
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn udp_relay(socket: Arc<UdpSocket>, target: SocketAddr, ctx: Ctx) {
    // One upstream socket per probing socket, so echoes find their way back.
    let upstreams: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = tokio::select! {
            _ = ctx.stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let src = ctx.by_private.get(&from.ip()).copied();
        if ctx.is_cut(src) {
            continue;
        }
        let existing = upstreams.lock().get(&from).cloned();
        let up = match existing {
            Some(up) => up,
            None => {
                let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let up = Arc::new(up);
                upstreams.lock().insert(from, Arc::clone(&up));
                tokio::spawn(udp_replies(
                    Arc::clone(&up),
                    Arc::clone(&socket),
                    from,
                    src,
                    ctx.clone(),
                    Arc::clone(&upstreams),
                ));
                up
            }
        };
        let _ = up.send_to(&buf[..n], target).await;
    }
}

/// Relays echoes back to the prober, until the prober has been quiet for [`UDP_IDLE`].
async fn udp_replies(
    up: Arc<UdpSocket>,
    public: Arc<UdpSocket>,
    prober: SocketAddr,
    src: Option<usize>,
    ctx: Ctx,
    upstreams: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>,
) {
    let mut buf = [0u8; 2048];
    loop {
        let r = tokio::select! {
            _ = ctx.stop.cancelled() => break,
            r = tokio::time::timeout(UDP_IDLE, up.recv(&mut buf)) => r,
        };
        match r {
            Ok(Ok(n)) => {
                if !ctx.is_cut(src) {
                    let _ = public.send_to(&buf[..n], prober).await;
                }
            }
            Ok(Err(_)) => continue,
            Err(_) => break,
        }
    }
    upstreams.lock().remove(&prober);
}
