//! The transport under the federation: how a link to a server is opened and how a round of RTT
//! measurements is taken. [`Tcp`] is the real one (TCP links on P+1, UDP probes on P+2, from the
//! bound address, blacklisted servers left out); tests and the simulator substitute an
//! in-memory network (`gossip_server::sim`) that can delay, partition and heal, on simulated
//! time. Everything above this seam (membership, topology, links, replication) is the same code.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use gossip_common::rtt::{self, ProbeConfig, Rtt};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::mst::{key_string, ServerKey};
use crate::Node;

/// A byte stream a link runs over.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// An open link's stream.
pub type Conn = Box<dyn Stream>;

/// A future a transport returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How links are opened and RTTs measured.
pub trait Transport: Send + Sync + 'static {
    /// Opens a connection to `peer`'s server port; the error says why not, for the log.
    fn connect<'a>(
        &'a self,
        node: &'a Node,
        peer: &'a ServerKey,
    ) -> BoxFuture<'a, Result<(Conn, SocketAddr), &'static str>>;

    /// One measurement round: every target's RTT, or dead. Targets this transport cannot or
    /// will not reach (unresolvable, blacklisted) are reported dead without being probed.
    fn probe<'a>(
        &'a self,
        node: &'a Node,
        targets: &'a [ServerKey],
        cfg: &'a ProbeConfig,
    ) -> BoxFuture<'a, std::io::Result<BTreeMap<ServerKey, Rtt>>>;
}

/// The real transport: TCP links, UDP probes.
#[derive(Debug, Default)]
pub struct Tcp;

impl Transport for Tcp {
    fn connect<'a>(
        &'a self,
        node: &'a Node,
        peer: &'a ServerKey,
    ) -> BoxFuture<'a, Result<(Conn, SocketAddr), &'static str>> {
        Box::pin(async move {
            let addr = super::resolve(peer, 1).await.ok_or("cannot resolve")?;
            if node.blacklist.contains(addr.ip()) {
                return Err("its address is blacklisted here");
            }
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(|_| "cannot create a socket")?;
            // From the bound address, so the peer (its logs, its blacklist) sees the address
            // this server is known by.
            let bind = node.config.bind;
            if !bind.is_unspecified() && bind.is_ipv4() == addr.is_ipv4() {
                socket
                    .bind(SocketAddr::new(bind, 0))
                    .map_err(|_| "cannot bind the source address")?;
            }
            let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
                .await
                .map_err(|_| "connect timed out")?
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => super::dial::REFUSED,
                    _ => "connect failed",
                })?;
            let _ = stream.set_nodelay(true);
            Ok((Box::new(stream) as Conn, addr))
        })
    }

    fn probe<'a>(
        &'a self,
        node: &'a Node,
        targets: &'a [ServerKey],
        cfg: &'a ProbeConfig,
    ) -> BoxFuture<'a, std::io::Result<BTreeMap<ServerKey, Rtt>>> {
        Box::pin(async move {
            let mut addrs = BTreeMap::new();
            for s in targets {
                if let Some(addr) = super::resolve(s, 2).await {
                    if !node.blacklist.contains(addr.ip()) {
                        addrs.insert(key_string(s), addr);
                    }
                }
            }
            let results = if addrs.is_empty() {
                BTreeMap::new()
            } else {
                rtt::probe(
                    &addrs,
                    &key_string(node.federation.me()),
                    cfg,
                    &node.config.lab,
                )
                .await?
            };
            Ok(targets
                .iter()
                .map(|s| {
                    let r = results.get(&key_string(s)).copied().unwrap_or(Rtt::Dead);
                    (s.clone(), r)
                })
                .collect())
        })
    }
}
