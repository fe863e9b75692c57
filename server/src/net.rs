//! Listening sockets: binding the three ports of a base port (with fallback), accept loops
//! with connection limits and backoff, and the RTT echo service on P+2.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// How many base ports to try (P, P+3, P+6, …) before giving up.
const BIND_ATTEMPTS: u16 = 32;

/// A port of the three that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {what} port {port} on {addr}: {source}")]
pub struct BindError {
    /// "client", "server" or "RTT echo".
    pub what: &'static str,
    /// The port.
    pub port: u16,
    /// The address.
    pub addr: IpAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// The sockets of one base port.
pub(crate) struct Listeners {
    pub(crate) base_port: u16,
    pub(crate) client: TcpListener,
    pub(crate) server: TcpListener,
    pub(crate) echo_udp: UdpSocket,
    pub(crate) echo_tcp: TcpListener,
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restarted node must get its ports back while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn bind_at(ip: IpAddr, base: u16) -> Result<Listeners, BindError> {
    let err = |what, port, source| BindError {
        what,
        port,
        addr: ip,
        source,
    };
    let client = tcp_listener(SocketAddr::new(ip, base)).map_err(|e| err("client", base, e))?;
    let server =
        tcp_listener(SocketAddr::new(ip, base + 1)).map_err(|e| err("server", base + 1, e))?;
    let echo_udp = UdpSocket::bind(SocketAddr::new(ip, base + 2))
        .await
        .map_err(|e| err("RTT echo (UDP)", base + 2, e))?;
    let echo_tcp = tcp_listener(SocketAddr::new(ip, base + 2))
        .map_err(|e| err("RTT echo (TCP)", base + 2, e))?;
    Ok(Listeners {
        base_port: base,
        client,
        server,
        echo_udp,
        echo_tcp,
    })
}

/// Binds P, P+1, P+2; if any is taken, says which and why and moves on to the next base port
/// (P+3, …) unless `strict`.
pub(crate) async fn bind(ip: IpAddr, base: u16, strict: bool) -> Result<Listeners, BindError> {
    let mut port = base;
    let mut attempt = 0;
    loop {
        match bind_at(ip, port).await {
            Ok(l) => {
                if port != base {
                    tracing::warn!(requested = base, using = port, "moved to another base port");
                }
                return Ok(l);
            }
            Err(e) => {
                attempt += 1;
                let next = port.checked_add(3).filter(|p| *p <= u16::MAX - 2);
                match next {
                    Some(next) if !strict && attempt < BIND_ATTEMPTS => {
                        tracing::warn!(error = %e, next_base_port = next, "base port unusable, trying the next one");
                        port = next;
                    }
                    _ => return Err(e),
                }
            }
        }
    }
}

/// Accepts connections until shutdown, backing off on errors such as running out of file
/// descriptors instead of spinning.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    what: &'static str,
    mut on_conn: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let _ = stream.set_nodelay(true);
                    on_conn(stream, peer).await;
                }
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, ?backoff, "accept failed; backing off");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// TCP echo on P+2 for the spec's throughput measurement: echoes up to 4 MiB or 10 s per
/// connection, then closes, so it cannot be used to tie the server up.
pub(crate) async fn tcp_echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0usize;
    let work = async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 || total > 4 << 20 {
                return Ok::<_, std::io::Error>(());
            }
            total += n;
            stream.write_all(&buf[..n]).await?;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
}
