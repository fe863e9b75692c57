//! The RTT prober of a server: measurement rounds over the servers it believes alive, and
//! revival probes of those it believes dead (so a server back from a crash or a cut is seen
//! within about one probe interval). Measurements go through the federation's transport and their
//! results to the membership (`Federation::publish_measurements`); this module only paces them.

use std::sync::Arc;

use gossip_common::rtt::{self, Rtt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Federation, Hooks};
use crate::mst::{id_string, ServerId};

/// Measures every known server that this node's row does not mark dead, once per `reprobe`
/// (or sooner when asked), publishing the row when a value moved past the damping threshold.
/// Servers marked dead are watched by [`revival_loop`], so a long round waiting out a dead
/// server's timeout never delays noticing that another one came back.
pub(super) async fn prober_loop(
    fed: Arc<Federation>,
    hooks: Arc<dyn Hooks>,
    shutdown: CancellationToken,
) {
    loop {
        let servers: Vec<ServerId> = fed.state.lock().members.to_measure();
        if !servers.is_empty() {
            let results = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = fed.transport.probe(&fed.me, &servers, &fed.probing.probe) => r,
            };
            match results {
                Ok(results) => {
                    // Unresolvable and refused (blacklisted) servers count as dead: the tree
                    // must not route through a server this node will not talk to.
                    let measured: Vec<(ServerId, Option<u64>)> = servers
                        .iter()
                        .map(|s| (s.clone(), alive_us(results.get(s))))
                        .collect();
                    fed.publish_measurements(&measured);
                    fed.probe_rounds
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // A server judged dead by this node's own probes: the users logged in there
                    // are not online any more. Its held wills are published (once: they are
                    // taken; copies published by other servers are the same change).
                    for (server, rtt) in &measured {
                        if rtt.is_none() && *server != fed.me {
                            hooks.server_gone(server.clone(), "server dead");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "RTT probe failed; keeping the previous row"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(fed.probing.reprobe) => {}
            _ = fed.probe_now.notified() => {}
        }
    }
}

/// Re-probes, one packet each per probe interval, every server this node's row marks dead, and
/// publishes the ones that answer at once: a server back from a crash or a partition is seen
/// within about one interval, whatever the measurement rounds are doing.
pub(super) async fn revival_loop(fed: Arc<Federation>, shutdown: CancellationToken) {
    let interval = fed.probing.probe.interval;
    let single = rtt::ProbeConfig {
        replies: 1,
        dead_after: interval,
        ..fed.probing.probe.clone()
    };
    loop {
        let started = Instant::now();
        let dead: Vec<ServerId> = fed.state.lock().members.dead_in_my_row();
        if !dead.is_empty() {
            // One packet to each, answers awaited for one interval.
            let results = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = fed.transport.probe(&fed.me, &dead, &single) => r,
            };
            match results {
                Ok(results) => {
                    let revived: Vec<(ServerId, Option<u64>)> = dead
                        .iter()
                        .filter_map(|s| alive_us(results.get(s)).map(|us| (s.clone(), Some(us))))
                        .collect();
                    if !revived.is_empty() {
                        tracing::info!(
                            servers = ?revived.iter().map(|(s, _)| id_string(s)).collect::<Vec<_>>(),
                            "servers marked dead answer again"
                        );
                        fed.publish_measurements(&revived);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "revival probe failed"),
            }
        }
        // At most one round per interval, however fast the probe came back (nothing to probe,
        // or every target refused here).
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(started + interval) => {}
            _ = fed.revive_now.notified(), if dead.is_empty() => {}
        }
    }
}

/// An RTT result in microseconds (at least 1), `None` when dead or not measured.
fn alive_us(r: Option<&Rtt>) -> Option<u64> {
    match r {
        Some(Rtt::Alive(d)) => Some(d.as_micros().max(1) as u64),
        _ => None,
    }
}
