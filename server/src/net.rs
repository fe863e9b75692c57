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

fn bind_error(
    what: &'static str,
    port: u16,
    addr: IpAddr,
) -> impl FnOnce(std::io::Error) -> BindError {
    move |source| BindError {
        what,
        port,
        addr,
        source,
    }
}

async fn bind_at(ip: IpAddr, base: u16) -> Result<Listeners, BindError> {
    let client = tcp_listener(SocketAddr::new(ip, base)).map_err(bind_error("client", base, ip))?;
    bind_rest(ip, base, client).await
}

/// Binds P+1 and P+2 beside an already bound client port P.
async fn bind_rest(ip: IpAddr, base: u16, client: TcpListener) -> Result<Listeners, BindError> {
    let server =
        tcp_listener(SocketAddr::new(ip, base + 1)).map_err(bind_error("server", base + 1, ip))?;
    let echo_udp = UdpSocket::bind(SocketAddr::new(ip, base + 2))
        .await
        .map_err(bind_error("RTT echo (UDP)", base + 2, ip))?;
    let echo_tcp = tcp_listener(SocketAddr::new(ip, base + 2)).map_err(bind_error(
        "RTT echo (TCP)",
        base + 2,
        ip,
    ))?;
    Ok(Listeners {
        base_port: base,
        client,
        server,
        echo_udp,
        echo_tcp,
    })
}

/// Binds P, P+1, P+2; if any is taken, says which and why and moves on to the next base port
/// (P+3, …) unless `strict`. Base port 0 lets the kernel choose P (see [`bind_any`]).
pub(crate) async fn bind(ip: IpAddr, base: u16, strict: bool) -> Result<Listeners, BindError> {
    if base == 0 {
        return bind_any(ip).await;
    }
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

/// Base port 0: the kernel picks a free P for the client port, and P+1 and P+2 are then tried;
/// on a clash the three are released and the kernel is asked again. Nothing is guessed, so two
/// nodes (or tests) started at once can never race for the same ports.
async fn bind_any(ip: IpAddr) -> Result<Listeners, BindError> {
    let mut last = None;
    for _ in 0..BIND_ATTEMPTS * 4 {
        // P stays bound while P+1 and P+2 are tried, so nobody can take it meanwhile.
        let client = tcp_listener(SocketAddr::new(ip, 0)).map_err(bind_error("client", 0, ip))?;
        let port = client.local_addr().map(|a| a.port()).unwrap_or(0);
        if port == 0 || port > u16::MAX - 2 {
            continue;
        }
        match bind_rest(ip, port, client).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        bind_error("client", 0, ip)(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no free base port P with P+1 and P+2 free",
        ))
    }))
}

/// Whether a connection from `peer` may be served on the `what` port ("client", "server",
/// "echo"). Blacklisted addresses are refused, counted and logged here, once for all ports.
pub(crate) fn admit(
    blacklist: &crate::blacklist::Blacklist,
    metrics: &crate::metrics::Metrics,
    peer: SocketAddr,
    what: &str,
) -> bool {
    if blacklist.contains(peer.ip()) {
        metrics.refused_blacklisted.inc();
        tracing::warn!(%peer, port = what, "connection from a blacklisted address dropped");
        return false;
    }
    true
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

/// TCP echo connections served at once; more are closed at accept.
pub(crate) const ECHO_CONNECTIONS: usize = 64;

/// TCP echo on P+2, served for external measurement tools only (the spec's throughput idea);
/// nothing in Gossip uses it. Echoes up to about 4 MiB or 10 s per connection, then closes, so
/// it cannot tie the server up.
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

/// Name of the file in the data directory that records the ports of the running node.
pub const PORTS_FILE: &str = "ports.json";

/// Records the bound ports in `DATA_DIR/ports.json` (written to a temporary file and renamed, so
/// a reader never sees half of it): scripts and tests that start a node with base port 0 read
/// its ports there instead of guessing. It describes the most recent start.
pub(crate) fn write_ports_file(
    data_dir: &std::path::Path,
    identity: &str,
    bind: IpAddr,
    base: u16,
) -> std::io::Result<()> {
    let doc = serde_json::json!({
        "identity": identity,
        "bind": bind.to_string(),
        "client": base,
        "server": base + 1,
        "rtt": base + 2,
        "pid": std::process::id(),
    });
    let tmp = data_dir.join(format!("{PORTS_FILE}.tmp"));
    std::fs::write(&tmp, format!("{doc}\n"))?;
    std::fs::rename(&tmp, data_dir.join(PORTS_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn base_port_zero_gets_three_consecutive_free_ports_every_time() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = bind(ip, 0, true).await.expect("kernel-chosen ports");
        let b = bind(ip, 0, true)
            .await
            .expect("a second set while the first is held");
        assert_ne!(a.base_port, b.base_port);
        for l in [&a, &b] {
            assert_ne!(l.base_port, 0);
            assert_eq!(l.client.local_addr().unwrap().port(), l.base_port);
            assert_eq!(l.server.local_addr().unwrap().port(), l.base_port + 1);
            assert_eq!(l.echo_udp.local_addr().unwrap().port(), l.base_port + 2);
            assert_eq!(l.echo_tcp.local_addr().unwrap().port(), l.base_port + 2);
        }
    }

    #[tokio::test]
    async fn strict_ports_refuse_a_taken_port_and_name_it() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let held = bind(ip, 0, true).await.unwrap();
        let err = bind(ip, held.base_port, true)
            .await
            .err()
            .expect("taken port refused");
        assert_eq!(err.port, held.base_port);
        assert_eq!(err.what, "client");
    }
}
