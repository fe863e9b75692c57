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

use crate::blacklist::Blacklist;
use crate::mst::{id_string, ServerId};

/// A byte stream a link runs over.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// An open link's stream.
pub type Conn = Box<dyn Stream>;

/// A future a transport returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a connection to a peer could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Its name does not resolve.
    #[error("cannot resolve")]
    Unresolvable,
    /// Its address is blacklisted here.
    #[error("its address is blacklisted here")]
    Blacklisted,
    /// No socket could be made or bound to the source address.
    #[error("cannot create or bind a socket")]
    Socket,
    /// Nothing answered in time (a cut cable, a host that drops packets).
    #[error("connect timed out")]
    TimedOut,
    /// Nothing listens on its server port: a live gossipd always does, so its process is gone.
    #[error("connection refused")]
    Refused,
    /// Any other failure.
    #[error("connect failed")]
    Failed,
}

/// How links are opened and RTTs measured.
pub trait Transport: Send + Sync + 'static {
    /// Opens a connection from `me` to `peer`'s server port.
    fn connect<'a>(
        &'a self,
        me: &'a ServerId,
        peer: &'a ServerId,
    ) -> BoxFuture<'a, Result<(Conn, SocketAddr), ConnectError>>;

    /// One measurement round from `me`: every target's RTT, or dead. Targets this transport
    /// cannot or will not reach (unresolvable, blacklisted) are reported dead without being
    /// probed.
    fn probe<'a>(
        &'a self,
        me: &'a ServerId,
        targets: &'a [ServerId],
        cfg: &'a ProbeConfig,
    ) -> BoxFuture<'a, std::io::Result<BTreeMap<ServerId, Rtt>>>;
}

/// The real transport: TCP links, UDP probes, from the bound address, blacklisted servers
/// left out.
pub struct Tcp {
    /// The address this server binds (links leave from it when it is specific).
    pub bind: std::net::IpAddr,
    /// Refused addresses: neither dialled nor probed.
    pub blacklist: std::sync::Arc<Blacklist>,
    /// Emulated link delays (lab runs only).
    pub lab: gossip_common::rtt::LabDelays,
}

/// The address of `key`'s port at `offset` from its base port.
async fn resolve(key: &ServerId, offset: u16) -> Option<SocketAddr> {
    tokio::net::lookup_host((key.0.as_str(), key.1.checked_add(offset)?))
        .await
        .ok()?
        .next()
}

impl Transport for Tcp {
    fn connect<'a>(
        &'a self,
        _me: &'a ServerId,
        peer: &'a ServerId,
    ) -> BoxFuture<'a, Result<(Conn, SocketAddr), ConnectError>> {
        Box::pin(async move {
            let addr = resolve(peer, 1).await.ok_or(ConnectError::Unresolvable)?;
            if self.blacklist.contains(addr.ip()) {
                return Err(ConnectError::Blacklisted);
            }
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(|_| ConnectError::Socket)?;
            // From the bound address, so the peer (its logs, its blacklist) sees the address
            // this server is known by.
            let bind = self.bind;
            if !bind.is_unspecified() && bind.is_ipv4() == addr.is_ipv4() {
                socket
                    .bind(SocketAddr::new(bind, 0))
                    .map_err(|_| ConnectError::Socket)?;
            }
            let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
                .await
                .map_err(|_| ConnectError::TimedOut)?
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => ConnectError::Refused,
                    _ => ConnectError::Failed,
                })?;
            let _ = stream.set_nodelay(true);
            Ok((Box::new(stream) as Conn, addr))
        })
    }

    fn probe<'a>(
        &'a self,
        me: &'a ServerId,
        targets: &'a [ServerId],
        cfg: &'a ProbeConfig,
    ) -> BoxFuture<'a, std::io::Result<BTreeMap<ServerId, Rtt>>> {
        Box::pin(async move {
            let mut addrs = BTreeMap::new();
            for s in targets {
                if let Some(addr) = resolve(s, 2).await {
                    if !self.blacklist.contains(addr.ip()) {
                        addrs.insert(id_string(s), addr);
                    }
                }
            }
            let results = if addrs.is_empty() {
                BTreeMap::new()
            } else {
                rtt::probe(&addrs, &id_string(me), cfg, &self.lab).await?
            };
            Ok(targets
                .iter()
                .map(|s| {
                    let r = results.get(&id_string(s)).copied().unwrap_or(Rtt::Dead);
                    (s.clone(), r)
                })
                .collect())
        })
    }
}
