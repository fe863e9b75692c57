//! What the server measures about itself, and its exposition in the Prometheus text format
//! (0.0.4), served by the admin socket's `metrics` (`prodserver metrics`) and, when enabled, by
//! the HTTP listener's `/metrics`. Nothing is ever sent anywhere by the server itself.
//!
//! Built on the `prometheus` crate: the counters and histograms are lock-free atomics that the
//! services update where things happen; values other services already keep (sessions, links,
//! RTTs) are read at the moment of a scrape ([`Readings`]). No label carries a user: labels are
//! message types, peers (bounded by the federation) and datafiles. `docs/operations.md` lists
//! every series.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry,
};

use gossip_common::message::MSGTYPES;

/// A monotonically increasing counter (lock-free).
pub type Counter = IntCounter;

/// Buckets for waits measured in milliseconds: pushes, handshakes, logins, `fdatasync`s,
/// acknowledgements (0.5 ms to 10 s).
const FAST: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for what can take minutes or days: resyncs of large databases, a message waiting
/// for its recipient to come online (5 ms to 1 day).
const SLOW: &[f64] = &[
    0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0,
    86400.0,
];

/// One counter per message type (index = position in `MSGTYPES`), made once so counting a
/// frame is one atomic add, not a label lookup.
#[derive(Debug)]
pub struct PerMsgtype(Vec<IntCounter>);

impl PerMsgtype {
    fn new(vec: &IntCounterVec) -> PerMsgtype {
        PerMsgtype(
            MSGTYPES
                .iter()
                .map(|t| vec.with_label_values(&[t]))
                .collect(),
        )
    }

    /// Counts `n` messages of `msgtype`.
    pub fn add(&self, msgtype: &str, n: u64) {
        if let Some(i) = MSGTYPES.iter().position(|t| *t == msgtype) {
            self.0[i].inc_by(n);
        }
    }
}

/// A histogram of `fdatasync` durations for one datafile (`datafile` label), made by the
/// service that owns the file and registered with the node's metrics when it is assembled.
pub fn fsync_histogram(datafile: &str) -> Histogram {
    Histogram::with_opts(
        HistogramOpts::new(
            "gossip_fsync_seconds",
            "Time a datafile's fdatasync took (one per write batch), by datafile.",
        )
        .const_label("datafile", datafile)
        .buckets(FAST.to_vec()),
    )
    .expect("valid histogram")
}

/// Records how long since `since` in `h`.
pub fn observe(h: &Histogram, since: std::time::Instant) {
    h.observe(since.elapsed().as_secs_f64());
}

/// Records `d` in `h`.
pub fn observe_duration(h: &Histogram, d: Duration) {
    h.observe(d.as_secs_f64());
}

/// Declares [`Metrics`]: its counters (field, series name, help) and its histograms (field,
/// series name, help, buckets), each registered once in the node's registry.
macro_rules! metrics {
    (
        counters { $( $(#[$cm:meta])* $c:ident => $cn:literal, $ch:literal; )* }
        histograms { $( $(#[$hm:meta])* $h:ident => $hn:literal, $hh:literal, $hb:expr; )* }
    ) => {
        /// Server-wide counters and histograms, and the registry that renders them.
        #[derive(Debug)]
        pub struct Metrics {
            registry: Registry,
            $( $(#[$cm])* pub $c: Counter, )*
            $( $(#[$hm])* pub $h: Histogram, )*
            /// Messages received, by type (clients and servers).
            pub messages_in: PerMsgtype,
            /// Messages sent to clients, by type (replies and pushes).
            pub messages_out: PerMsgtype,
            /// Noise handshakes that completed, by side (`client`: a client connection here;
            /// `server`: a server link, either way).
            pub handshake_seconds: HandshakeSeconds,
        }

        impl Metrics {
            /// Every series, registered, at zero.
            pub fn new() -> Metrics {
                let registry = Registry::new();
                $(
                    let $c = IntCounter::new($cn, $ch).expect("valid counter");
                    registry.register(Box::new($c.clone())).expect("one registration");
                )*
                $(
                    let $h = Histogram::with_opts(HistogramOpts::new($hn, $hh).buckets($hb.to_vec()))
                        .expect("valid histogram");
                    registry.register(Box::new($h.clone())).expect("one registration");
                )*
                let per = |dir: &str, what: &str| {
                    let v = IntCounterVec::new(
                        Opts::new(format!("gossip_messages_{dir}_total"), format!("Messages {what}, by type.")),
                        &["msgtype"],
                    )
                    .expect("valid counter");
                    registry.register(Box::new(v.clone())).expect("one registration");
                    PerMsgtype::new(&v)
                };
                let messages_in = per("in", "received");
                let messages_out = per("out", "sent");
                let hs = HistogramVec::new(
                    HistogramOpts::new(
                        "gossip_handshake_seconds",
                        "Time a Noise handshake took to complete, by side (client connections, server links).",
                    )
                    .buckets(FAST.to_vec()),
                    &["side"],
                )
                .expect("valid histogram");
                registry.register(Box::new(hs.clone())).expect("one registration");
                let handshake_seconds = HandshakeSeconds {
                    client: hs.with_label_values(&["client"]),
                    server: hs.with_label_values(&["server"]),
                };
                Metrics {
                    registry,
                    $( $c, )*
                    $( $h, )*
                    messages_in,
                    messages_out,
                    handshake_seconds,
                }
            }
        }
    };
}

/// Handshake durations, by side.
#[derive(Debug)]
pub struct HandshakeSeconds {
    /// Client connections accepted here.
    pub client: Histogram,
    /// Server links, dialled or accepted.
    pub server: Histogram,
}

metrics! {
    counters {
        /// Client connections accepted.
        connections => "gossip_connections_total", "Client connections accepted.";
        /// Connections refused because the server was full.
        refused_full => "gossip_refused_full_total", "Client connections refused at the connection limit.";
        /// Connections dropped at accept because the address is blacklisted.
        refused_blacklisted => "gossip_refused_blacklisted_total", "Connections dropped because the address is blacklisted.";
        /// Connections (client or server) whose encryption handshake failed: plaintext, bad
        /// identity, garbage, timeout.
        handshakes_failed => "gossip_handshakes_failed_total", "Connections whose encryption handshake failed (plaintext, bad identity, timeout).";
        /// Server links refused because the peer's key is not the one bound to its name, is
        /// refused by an admin, or is not on the allowlist.
        refused_keys => "gossip_refused_keys_total", "Server links refused for their key (not the bound one, refused, not allowed).";
        /// RTT rows dropped: unsigned, badly signed, or signed by a key not bound to the measurer.
        refused_rows => "gossip_refused_rows_total", "RTT rows dropped for their signature or key.";
        /// New users from peers not admitted: no valid registration certificate, or their sponsor
        /// over its budget (offered again later).
        refused_new_users => "gossip_refused_new_users_total", "New users from peers not admitted: no valid registration certificate, or their sponsor over its budget (offered again by later syncs).";
        /// Relayed messages accepted from this server's clients.
        relayed => "gossip_relayed_total", "Relayed messages accepted from this server's clients.";
        /// Link-up mailbox exchanges that found the peer holding the same messages (none sent).
        mailbox_equal => "gossip_mailbox_equal_total", "Link-up mailbox exchanges that found the peer holding the same messages.";
        /// Link-up mailbox exchanges whose digests differed, so this side sent its list of ids.
        mailbox_lists_sent => "gossip_mailbox_lists_sent_total", "Link-up mailbox exchanges that differed, so this server sent its list of ids.";
        /// Relayed messages sent to a peer at link-up because it lacked them (`mailboxIds`).
        mailbox_resent => "gossip_mailbox_resent_total", "Relayed messages sent to a peer at link-up because its list lacked them.";
        /// Successful logins (including the implicit one after registration).
        logins => "gossip_logins_total", "Successful logins.";
        /// Login attempts whose challenge response did not verify.
        auth_failures => "gossip_auth_failures_total", "Login attempts whose challenge response did not verify.";
        /// New users registered here.
        registrations => "gossip_registrations_total", "New users registered on this server.";
        /// Last wills published after a connection dropped.
        last_wills => "gossip_last_wills_total", "Last wills published after a connection dropped.";
        /// Records refused for a bad signature or a key other than the bound one.
        signature_failures => "gossip_signature_failures_total", "Records refused for a bad signature or key.";
        /// Records sent to peers in `changedEntries`.
        sync_records_sent => "gossip_sync_records_sent_total", "Records sent to peers during sync.";
        /// Records received from peers in `changedEntries`.
        sync_records_received => "gossip_sync_records_received_total", "Records received from peers during sync.";
        /// Link-up resyncs completed: a peer's complete event-count list was diffed against ours
        /// and what it lacks was queued to it, or a range reconciliation ended.
        sync_rounds => "gossip_sync_rounds_total", "Link-up resyncs completed (event-count diffs answered, reconciliations ended).";
        /// Round trips of range reconciliations this server started.
        sync_round_trips => "gossip_sync_round_trips_total", "Round trips of range reconciliations this server started.";
        /// Range reconciliations abandoned for `eventCounts` (a bound, a timeout or a bad peer).
        sync_fallbacks => "gossip_sync_fallbacks_total", "Range reconciliations abandoned for eventCounts.";
        /// Bytes of resync frames (`eventCounts`, `reconcile`, `changedEntries`) received.
        sync_bytes_in => "gossip_sync_bytes_in_total", "Bytes of resync frames (eventCounts, reconcile, changedEntries) received.";
        /// Bytes of resync frames sent.
        sync_bytes_out => "gossip_sync_bytes_out_total", "Bytes of resync frames sent.";
        /// Bytes received on server links (frames and their separators).
        link_bytes_in => "gossip_link_bytes_in_total", "Bytes received on server links.";
        /// Bytes sent on server links.
        link_bytes_out => "gossip_link_bytes_out_total", "Bytes sent on server links.";
        /// Connections (client or server) cut for sending more than their inbound budget.
        inbound_cut => "gossip_inbound_cut_total", "Connections (client or server) cut for sending more than their inbound budget.";
    }
    histograms {
        /// Presence pushes: the record accepted here (from a client or a peer) until the push
        /// frame was written to a watching client's socket; one observation per push.
        push_seconds => "gossip_push_seconds", "Time from a record accepted to its presence push written to a watching client's socket.", FAST;
        /// Logins: the login request until the `ok` after the contacts' records.
        login_seconds => "gossip_login_seconds", "Time from a login request to its completion (challenge answered, contacts sent).", FAST;
        /// Link-up resyncs: from the link's first sync frame to the end of the reconciliation.
        resync_seconds => "gossip_resync_seconds", "Time a link-up range reconciliation took to end.", SLOW;
        /// A client's relayed message until its acknowledgement (on this disk and another).
        relay_ack_seconds => "gossip_relay_ack_seconds", "Time from a client's relayed message to its acknowledgement (stored here and on another server).", FAST;
        /// A client's relayed message until the recipient's signed delivery notice came back.
        relay_delivery_seconds => "gossip_relay_delivery_seconds", "Time from a client's relayed message to the recipient's delivery notice arriving here (includes time the recipient was offline).", SLOW;
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// What the other services report for the exposition, read by the caller (the admin socket)
/// at the moment of a scrape; these counters and gauges are kept where they arise.
#[derive(Debug, Default, Clone)]
pub struct Readings {
    /// Presence pushes queued to clients.
    pub pushes: u64,
    /// Clients disconnected because their queue was full.
    pub slow_consumers_dropped: u64,
    /// Server links dropped because their queue was full.
    pub link_drops: u64,
    /// Times the spanning tree changed.
    pub recomputations: u64,
    /// Servers a peer named that were not learned (its key had named too many unproven ones).
    pub refused_introductions: u64,
    /// Logged-in client sessions.
    pub clients: u64,
    /// UserInfo records stored.
    pub users: u64,
    /// ContactList records stored.
    pub contact_lists: u64,
    /// Seconds since start.
    pub uptime_s: u64,
    /// This server's published RTT to each peer, in milliseconds (`None`: dead).
    pub rtts: Vec<(String, Option<f64>)>,
    /// The peers a server link is up to.
    pub links: Vec<String>,
    /// Repair checks opened.
    pub repair_checks: u64,
    /// Items repair checks brought that the tree had not, in all and per tree neighbour they
    /// should have come through.
    pub repaired: (u64, Vec<(String, u64)>),
}

impl Metrics {
    /// Adds a series another service keeps (a datafile's `fdatasync` histogram). A second
    /// registration of the same series is refused and logged, never fatal.
    pub fn register(&self, c: impl Collector + 'static) {
        if let Err(e) = self.registry.register(Box::new(c)) {
            tracing::warn!(error = %e, "a metric was not registered");
        }
    }

    /// Renders these metrics and the other services' `readings` in the Prometheus text
    /// exposition format (0.0.4), series sorted by name.
    pub fn render(&self, readings: &Readings) -> String {
        let scrape = Registry::new();
        let (node, reg) = (readings, &scrape);
        let counter = |name: &str, help: &str, v: u64| {
            let c = IntCounter::new(name, help).expect("valid counter");
            c.inc_by(v);
            let _ = reg.register(Box::new(c));
        };
        counter(
            "gossip_presence_pushes_total",
            "Presence pushes queued to clients.",
            node.pushes,
        );
        counter(
            "gossip_slow_consumer_drops_total",
            "Clients disconnected because their queue was full.",
            node.slow_consumers_dropped,
        );
        counter(
            "gossip_link_queue_drops_total",
            "Server links dropped because their queue was full.",
            node.link_drops,
        );
        counter(
            "gossip_refused_introductions_total",
            "Servers a peer named that were not learned: its key had named too many that never showed themselves.",
            node.refused_introductions,
        );
        counter(
            "gossip_mst_recomputations_total",
            "Times the spanning tree changed.",
            node.recomputations,
        );
        counter(
            "gossip_repair_checks_total",
            "Repair checks this server opened.",
            node.repair_checks,
        );
        counter(
            "gossip_repair_learned_total",
            "Records and messages repair checks brought that the tree had not delivered.",
            node.repaired.0,
        );
        let gauge = |name: &str, help: &str, v: u64| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
            let _ = reg.register(Box::new(g));
        };
        gauge("gossip_clients", "Logged-in client sessions.", node.clients);
        gauge("gossip_users", "UserInfo records stored.", node.users);
        gauge(
            "gossip_contact_lists",
            "ContactList records stored.",
            node.contact_lists,
        );
        gauge(
            "gossip_uptime_seconds",
            "Seconds since start.",
            node.uptime_s,
        );
        let labelled = |name: &str, help: &str, label: &str, values: &[(&str, f64)]| {
            let v = GaugeVec::new(Opts::new(name, help), &[label]).expect("valid gauge");
            for (l, x) in values {
                v.with_label_values(&[l]).set(*x);
            }
            let _ = reg.register(Box::new(v));
        };
        let via: Vec<(&str, f64)> = node
            .repaired
            .1
            .iter()
            .map(|(p, n)| (p.as_str(), *n as f64))
            .collect();
        // A counter by nature, but its set of labels is read at each scrape, so it is built
        // as a counter family here.
        let learned_via = IntCounterVec::new(
            Opts::new(
                "gossip_repair_learned_via_total",
                "The same, by the tree neighbour they should have come through (a hint: see docs/federation.md).",
            ),
            &["neighbour"],
        )
        .expect("valid counter");
        for (peer, n) in &via {
            learned_via.with_label_values(&[peer]).inc_by(*n as u64);
        }
        let _ = reg.register(Box::new(learned_via));
        let rtts: Vec<(&str, f64)> = node
            .rtts
            .iter()
            .filter_map(|(p, ms)| ms.map(|ms| (p.as_str(), ms / 1000.0)))
            .collect();
        labelled(
            "gossip_peer_rtt_seconds",
            "Last published RTT to each peer (absent when dead).",
            "peer",
            &rtts,
        );
        let up: Vec<(&str, f64)> = node
            .rtts
            .iter()
            .map(|(p, _)| (p.as_str(), f64::from(u8::from(node.links.contains(p)))))
            .collect();
        labelled(
            "gossip_peer_link_up",
            "Whether a server link to each known peer is up (1) or not (0).",
            "peer",
            &up,
        );
        let build = Gauge::with_opts(
            Opts::new(
                "gossip_build_info",
                "The running build: always 1, its version as a label.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("valid gauge");
        build.set(1.0);
        let _ = reg.register(Box::new(build));

        let mut families = self.registry.gather();
        families.extend(scrape.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::warn!(error = %e, "metrics exposition failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_rendered_once_with_help_and_type() {
        let m = Metrics::new();
        m.connections.inc();
        m.messages_in.add("authenticate", 2);
        m.push_seconds.observe(0.003);
        m.handshake_seconds.server.observe(0.02);
        m.register(fsync_histogram("users"));
        m.register(fsync_histogram("wills"));
        let text = m.render(&Readings {
            rtts: vec![("b:1".into(), Some(12.5)), ("c:1".into(), None)],
            links: vec!["b:1".into()],
            repaired: (3, vec![("b:1".into(), 3)]),
            ..Readings::default()
        });
        let mut types = std::collections::HashMap::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap().to_owned();
            assert!(types.insert(name, ()).is_none(), "two TYPE lines: {line}");
        }
        for want in [
            "gossip_connections_total 1",
            "gossip_messages_in_total{msgtype=\"authenticate\"} 2",
            "gossip_push_seconds_bucket{le=\"0.005\"} 1",
            "gossip_push_seconds_count 1",
            "gossip_handshake_seconds_count{side=\"server\"} 1",
            "gossip_fsync_seconds_count{datafile=\"users\"} 0",
            "gossip_fsync_seconds_count{datafile=\"wills\"} 0",
            "gossip_peer_rtt_seconds{peer=\"b:1\"} 0.0125",
            "gossip_peer_link_up{peer=\"b:1\"} 1",
            "gossip_peer_link_up{peer=\"c:1\"} 0",
            "gossip_repair_learned_via_total{neighbour=\"b:1\"} 3",
            "# TYPE gossip_repair_learned_via_total counter",
            "# TYPE gossip_push_seconds histogram",
        ] {
            assert!(text.contains(want), "{want} missing in:\n{text}");
        }
        assert!(
            !text.contains("peer_rtt_seconds{peer=\"c:1\"}"),
            "a dead peer has no RTT"
        );
        assert!(text.contains(&format!(
            "gossip_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
