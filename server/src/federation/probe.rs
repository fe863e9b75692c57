//! The RTT prober of a server: measurement rounds over the servers it believes alive, revival
//! probes of those it believes dead (so a server back from a crash or a cut is seen within
//! about one probe interval), and confirmation probes of those another server's row has just
//! found dead (so a death costs the federation one dead timeout, not two). Measurements go through the federation's transport and their
//! results to the membership (`Federation::publish_measurements`); this module only paces them.

use std::sync::Arc;
use std::time::Duration;

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

/// How a confirmation probes: a packet every half probe interval, one reply enough, for
/// `window` (two probe intervals at least, so four packets are lost before a live server is
/// taken for dead).
pub(super) fn confirm_config(probe: &rtt::ProbeConfig, window: Duration) -> rtt::ProbeConfig {
    rtt::ProbeConfig {
        replies: 1,
        interval: (probe.interval / 2).max(Duration::from_millis(1)),
        dead_after: window
            .max(probe.interval * 2)
            .min(probe.dead_after.max(probe.interval)),
        ..probe.clone()
    }
}

/// How long to probe servers silent since `since` so that a verdict of death comes no sooner
/// than one dead timeout after the silence began.
pub(super) fn confirm_window(since: Instant, now: Instant, dead_after: Duration) -> Duration {
    (since + dead_after).saturating_duration_since(now)
}

/// Confirms the suspects ([`Federation::suspect`]): servers another server's row has just
/// marked dead while this node's row says they are alive (their measurer waited a full dead
/// timeout before saying so), and link peers gone silent. Each batch is probed on a task of
/// its own until one dead timeout after the earliest silence has passed (two probe intervals
/// at least); those that do not answer are marked dead here too, and their users' wills
/// published. The others keep their edges to this node: a partition between two other
/// servers, or a member lying about a third, moves nothing here. A server is in one
/// confirmation at a time and a batch starts at most every half probe interval, so a member
/// publishing false marks costs each server a few packets per known server per interval, as
/// the revival probes do.
pub(super) async fn confirm_loop(
    fed: Arc<Federation>,
    hooks: Arc<dyn Hooks>,
    shutdown: CancellationToken,
    tasks: crate::tasks::Tasks,
) {
    let probe = fed.probing.probe.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = fed.confirm_now.notified() => {}
        }
        let started = Instant::now();
        let batch: Vec<(ServerId, Instant)> = {
            let taken = std::mem::take(&mut *fed.suspects.lock());
            let alive: std::collections::BTreeSet<ServerId> =
                fed.state.lock().members.to_measure().into_iter().collect();
            let mut confirming = fed.confirming.lock();
            taken
                .into_iter()
                .filter(|(s, _)| alive.contains(s) && confirming.insert(s.clone()))
                .collect()
        };
        if let Some(since) = batch.iter().map(|(_, t)| *t).min() {
            let window = confirm_window(since, started, probe.dead_after);
            let cfg = confirm_config(&probe, window);
            let servers: Vec<ServerId> = batch.into_iter().map(|(s, _)| s).collect();
            let (fed, hooks, stop) = (Arc::clone(&fed), Arc::clone(&hooks), shutdown.clone());
            tasks.spawn(async move {
                let results = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = fed.transport.probe(&fed.me, &servers, &cfg) => r,
                };
                fed.confirming.lock().retain(|s| !servers.contains(s));
                match results {
                    Ok(results) => {
                        let dead: Vec<(ServerId, Option<u64>)> = servers
                            .iter()
                            .filter(|s| alive_us(results.get(*s)).is_none())
                            .map(|s| (s.clone(), None))
                            .collect();
                        if !dead.is_empty() {
                            tracing::info!(
                                servers = ?dead.iter().map(|(s, _)| id_string(s)).collect::<Vec<_>>(),
                                "silent servers do not answer here either: dead"
                            );
                            fed.publish_measurements(&dead);
                            for (server, _) in &dead {
                                hooks.server_gone(server.clone(), "server dead");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "confirmation probe failed"),
                }
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(started + probe.interval / 2) => {}
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
