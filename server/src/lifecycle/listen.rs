//! The node's sockets: clients on P (bounded by `max_clients`), server links on P+1 through
//! the server door, the RTT echo on P+2 (UDP and TCP), and the open-file limit they share.

use std::sync::Arc;

use gossip_common::ErrorCode;
use tokio::sync::Semaphore;

use super::Node;
use crate::config::Config;
use crate::{net, peer, session};

/// File descriptors kept back from clients: links, datafiles, the wills log, the admin and echo
/// sockets, the trace, name resolution.
const RESERVED_FDS: u64 = 256;

/// Raises the open-file soft limit to the hard limit, and lowers `max_clients` to what the
/// limit leaves room for (after [`RESERVED_FDS`]), so a full server refuses with `server-full`
/// instead of its accept loop running out of descriptors.
pub(super) fn fit_open_files(mut config: Config) -> Config {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            let room = soft.saturating_sub(RESERVED_FDS).max(1);
            if config.max_clients as u64 > room {
                tracing::warn!(
                    open_files = soft,
                    max_clients = config.max_clients,
                    serving = room,
                    "the open-file limit leaves room for fewer clients than max_clients; raise it (ulimit -n, or LimitNOFILE= in a systemd unit) to serve more"
                );
                config.max_clients = room as usize;
            } else {
                tracing::debug!(open_files = soft, "open-file limit");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    config
}

/// Clients on P, bounded by `max_clients`: past it a connection gets `server-full` and closes.
pub(super) fn serve_clients(node: &Arc<Node>, listener: tokio::net::TcpListener) {
    let limit = Arc::new(Semaphore::new(node.config.max_clients));
    let (door, blacklist, metrics) = (
        Arc::clone(&node.clients),
        Arc::clone(&node.blacklist),
        Arc::clone(&node.metrics),
    );
    let t = node.tasks.clone();
    let shutdown = t.shutdown().clone();
    node.tasks.spawn(net::accept_loop(
        listener,
        shutdown.clone(),
        "client",
        move |stream, peer| {
            if !net::admit(&blacklist, &metrics, peer, "client") {
                return std::future::ready(());
            }
            metrics.connections.inc();
            match Arc::clone(&limit).try_acquire_owned() {
                Ok(permit) => {
                    let (door, shutdown) = (Arc::clone(&door), shutdown.clone());
                    t.spawn(async move {
                        session::serve(door, stream, peer, shutdown).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    metrics.refused_full.inc();
                    tracing::warn!(%peer, "client limit reached; connection refused");
                    t.spawn(session::refuse(
                        stream,
                        ErrorCode::ServerFull,
                        "server is at its client limit; try another server".into(),
                    ));
                }
            }
            std::future::ready(())
        },
    ));
}

/// Server links on P+1, through the server door.
pub(super) fn serve_servers(node: &Arc<Node>, listener: tokio::net::TcpListener) {
    let (door, blacklist, metrics) = (
        Arc::clone(&node.peers),
        Arc::clone(&node.blacklist),
        Arc::clone(&node.metrics),
    );
    let t = node.tasks.clone();
    node.tasks.spawn(net::accept_loop(
        listener,
        node.links_stop.clone(),
        "server",
        move |stream, peer| {
            if net::admit(&blacklist, &metrics, peer, "server") {
                t.spawn(peer::run_link(
                    Arc::clone(&door),
                    Box::new(stream),
                    None,
                    peer,
                    crate::federation::LinkKind::Tree,
                ));
            }
            std::future::ready(())
        },
    ));
}

/// RTT echo on P+2, UDP and TCP.
pub(super) fn serve_echo(
    node: &Arc<Node>,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
) {
    let stop = node.tasks.shutdown().clone();
    let blacklist = Arc::clone(&node.blacklist);
    node.tasks.spawn(gossip_common::rtt::udp_echo(
        Arc::new(udp),
        node.config.lab.clone(),
        move |ip| blacklist.contains(ip),
        async move { stop.cancelled().await },
    ));
    let t = node.tasks.clone();
    // Each echo connection lives up to 10 s: bounded, so a stranger cannot hold thousands.
    let slots = Arc::new(Semaphore::new(net::ECHO_CONNECTIONS));
    let (blacklist, metrics) = (Arc::clone(&node.blacklist), Arc::clone(&node.metrics));
    node.tasks.spawn(net::accept_loop(
        tcp,
        node.tasks.shutdown().clone(),
        "echo",
        move |stream, peer| {
            if !net::admit(&blacklist, &metrics, peer, "echo") {
                return std::future::ready(());
            }
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(slot) => {
                    t.spawn(async move {
                        net::tcp_echo(stream).await;
                        drop(slot);
                    });
                }
                Err(_) => tracing::debug!(%peer, "TCP echo busy; connection closed"),
            }
            std::future::ready(())
        },
    ));
}
