//! Counters the server keeps about itself, rendered in the Prometheus text format on request
//! through the admin socket (`prodserver metrics`). Local only: nothing is ever sent anywhere,
//! and no HTTP port is opened. `docs/operations.md` lists every metric.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use gossip_common::message::MSGTYPES;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One counter per message type (index = position in `MSGTYPES`).
#[derive(Debug)]
pub struct PerMsgtype(Vec<AtomicU64>);

impl Default for PerMsgtype {
    fn default() -> Self {
        PerMsgtype((0..MSGTYPES.len()).map(|_| AtomicU64::new(0)).collect())
    }
}

impl PerMsgtype {
    /// Counts `n` messages of `msgtype`.
    pub fn add(&self, msgtype: &str, n: u64) {
        if let Some(i) = MSGTYPES.iter().position(|t| *t == msgtype) {
            self.0[i].fetch_add(n, Ordering::Relaxed);
        }
    }

    fn nonzero(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        MSGTYPES
            .iter()
            .zip(&self.0)
            .map(|(t, c)| (*t, c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
    }
}

/// Server-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Client connections accepted.
    pub connections: Counter,
    /// Connections refused because the server was full.
    pub refused_full: Counter,
    /// Connections dropped at accept because the address is blacklisted.
    pub refused_blacklisted: Counter,
    /// Connections (client or server) whose encryption handshake failed: plaintext, bad
    /// identity, garbage, timeout.
    pub handshakes_failed: Counter,
    /// Server links refused because the peer's key is not the one bound to its name, is
    /// refused by an admin, or is not on the allowlist.
    pub refused_keys: Counter,
    /// RTT rows dropped: unsigned, badly signed, or signed by a key not bound to the measurer.
    pub refused_rows: Counter,
    /// New users from peers not admitted: no valid registration certificate, or their sponsor
    /// over its budget (offered again later).
    pub refused_new_users: Counter,
    /// Relayed messages accepted from this server's clients.
    pub relayed: Counter,
    /// Link-up mailbox exchanges that found the peer holding the same messages (none sent).
    pub mailbox_equal: Counter,
    /// Link-up mailbox exchanges whose digests differed, so this side sent its list of ids.
    pub mailbox_lists_sent: Counter,
    /// Relayed messages sent to a peer at link-up because it lacked them (`mailboxIds`).
    pub mailbox_resent: Counter,
    /// Successful logins (including the implicit one after registration).
    pub logins: Counter,
    /// Login attempts whose challenge response did not verify.
    pub auth_failures: Counter,
    /// New users registered here.
    pub registrations: Counter,
    /// Last wills published after a connection dropped.
    pub last_wills: Counter,
    /// Records refused for a bad signature or a key other than the bound one.
    pub signature_failures: Counter,
    /// Messages received, by type (clients and servers).
    pub messages_in: PerMsgtype,
    /// Messages sent to clients, by type (replies and pushes).
    pub messages_out: PerMsgtype,
    /// Records sent to peers in `changedEntries`.
    pub sync_records_sent: Counter,
    /// Records received from peers in `changedEntries`.
    pub sync_records_received: Counter,
    /// Link-up resyncs completed: a peer's complete event-count list was diffed against ours
    /// and what it lacks was queued to it, or a range reconciliation ended.
    pub sync_rounds: Counter,
    /// Round trips of range reconciliations this server started.
    pub sync_round_trips: Counter,
    /// Range reconciliations abandoned for `eventCounts` (a bound, a timeout or a bad peer).
    pub sync_fallbacks: Counter,
    /// Bytes of resync frames (`eventCounts`, `reconcile`, `changedEntries`) received.
    pub sync_bytes_in: Counter,
    /// Bytes of resync frames sent.
    pub sync_bytes_out: Counter,
    /// Bytes received on server links (frames and their separators).
    pub link_bytes_in: Counter,
    /// Bytes sent on server links.
    pub link_bytes_out: Counter,
    /// Connections (client or server) cut for sending more than their inbound budget.
    pub inbound_cut: Counter,
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
    /// Renders these metrics and the other services' `readings` in the Prometheus text
    /// exposition format.
    pub fn render(&self, readings: &Readings) -> String {
        let (m, node) = (self, readings);
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP gossip_{name} {help}\n# TYPE gossip_{name} counter\ngossip_{name} {v}"
            );
        };
        counter(
            "connections_total",
            "Client connections accepted.",
            m.connections.get(),
        );
        counter(
            "refused_full_total",
            "Client connections refused at the connection limit.",
            m.refused_full.get(),
        );
        counter(
            "handshakes_failed_total",
            "Connections whose encryption handshake failed (plaintext, bad identity, timeout).",
            m.handshakes_failed.get(),
        );
        counter(
            "refused_keys_total",
            "Server links refused for their key (not the bound one, refused, not allowed).",
            m.refused_keys.get(),
        );
        counter(
            "relayed_total",
            "Relayed messages accepted from this server's clients.",
            m.relayed.get(),
        );
        counter(
            "mailbox_equal_total",
            "Link-up mailbox exchanges that found the peer holding the same messages.",
            m.mailbox_equal.get(),
        );
        counter(
            "mailbox_lists_sent_total",
            "Link-up mailbox exchanges that differed, so this server sent its list of ids.",
            m.mailbox_lists_sent.get(),
        );
        counter(
            "mailbox_resent_total",
            "Relayed messages sent to a peer at link-up because its list lacked them.",
            m.mailbox_resent.get(),
        );
        counter(
            "refused_new_users_total",
            "New users from peers not admitted: no valid registration certificate, or their sponsor over its budget (offered again by later syncs).",
            m.refused_new_users.get(),
        );
        counter(
            "refused_rows_total",
            "RTT rows dropped for their signature or key.",
            m.refused_rows.get(),
        );
        counter(
            "refused_blacklisted_total",
            "Connections dropped because the address is blacklisted.",
            m.refused_blacklisted.get(),
        );
        counter("logins_total", "Successful logins.", m.logins.get());
        counter(
            "auth_failures_total",
            "Login attempts whose challenge response did not verify.",
            m.auth_failures.get(),
        );
        counter(
            "registrations_total",
            "New users registered on this server.",
            m.registrations.get(),
        );
        counter(
            "last_wills_total",
            "Last wills published after a connection dropped.",
            m.last_wills.get(),
        );
        counter(
            "signature_failures_total",
            "Records refused for a bad signature or key.",
            m.signature_failures.get(),
        );
        counter(
            "presence_pushes_total",
            "Presence pushes queued to clients.",
            node.pushes,
        );
        counter(
            "slow_consumer_drops_total",
            "Clients disconnected because their queue was full.",
            node.slow_consumers_dropped,
        );
        counter(
            "link_queue_drops_total",
            "Server links dropped because their queue was full.",
            node.link_drops,
        );
        counter(
            "sync_records_sent_total",
            "Records sent to peers during sync.",
            m.sync_records_sent.get(),
        );
        counter(
            "sync_records_received_total",
            "Records received from peers during sync.",
            m.sync_records_received.get(),
        );
        counter(
            "sync_rounds_total",
            "Link-up resyncs completed (event-count diffs answered, reconciliations ended).",
            m.sync_rounds.get(),
        );
        counter(
            "sync_round_trips_total",
            "Round trips of range reconciliations this server started.",
            m.sync_round_trips.get(),
        );
        counter(
            "sync_fallbacks_total",
            "Range reconciliations abandoned for eventCounts.",
            m.sync_fallbacks.get(),
        );
        counter(
            "sync_bytes_in_total",
            "Bytes of resync frames (eventCounts, reconcile, changedEntries) received.",
            m.sync_bytes_in.get(),
        );
        counter(
            "sync_bytes_out_total",
            "Bytes of resync frames sent.",
            m.sync_bytes_out.get(),
        );
        counter(
            "link_bytes_in_total",
            "Bytes received on server links.",
            m.link_bytes_in.get(),
        );
        counter(
            "link_bytes_out_total",
            "Bytes sent on server links.",
            m.link_bytes_out.get(),
        );
        counter(
            "inbound_cut_total",
            "Connections (client or server) cut for sending more than their inbound budget.",
            m.inbound_cut.get(),
        );
        counter(
            "refused_introductions_total",
            "Servers a peer named that were not learned: its key had named too many that never showed themselves.",
            node.refused_introductions,
        );
        counter(
            "mst_recomputations_total",
            "Times the spanning tree changed.",
            node.recomputations,
        );
        let mut gauge = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP gossip_{name} {help}\n# TYPE gossip_{name} gauge\ngossip_{name} {v}"
            );
        };
        gauge("clients", "Logged-in client sessions.", node.clients);
        gauge("users", "UserInfo records stored.", node.users);
        gauge(
            "contact_lists",
            "ContactList records stored.",
            node.contact_lists,
        );
        gauge("uptime_seconds", "Seconds since start.", node.uptime_s);
        for (dir, per) in [("in", &m.messages_in), ("out", &m.messages_out)] {
            let _ = writeln!(out, "# HELP gossip_messages_{dir}_total Messages {}, by type.\n# TYPE gossip_messages_{dir}_total counter", if dir == "in" { "received" } else { "sent" });
            for (t, n) in per.nonzero() {
                let _ = writeln!(out, "gossip_messages_{dir}_total{{msgtype=\"{t}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# HELP gossip_repair_checks_total Repair checks this server opened.\n# TYPE gossip_repair_checks_total counter\ngossip_repair_checks_total {}", node.repair_checks);
        let _ = writeln!(out, "# HELP gossip_repair_learned_total Records and messages repair checks brought that the tree had not delivered.\n# TYPE gossip_repair_learned_total counter\ngossip_repair_learned_total {}", node.repaired.0);
        let _ = writeln!(out, "# HELP gossip_repair_learned_via_total The same, by the tree neighbour they should have come through (a hint: see docs/federation.md).\n# TYPE gossip_repair_learned_via_total counter");
        for (peer, n) in &node.repaired.1 {
            let _ = writeln!(
                out,
                "gossip_repair_learned_via_total{{neighbour=\"{peer}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP gossip_peer_rtt_seconds Last published RTT to each peer (absent when dead).\n# TYPE gossip_peer_rtt_seconds gauge");
        for (peer, rtt) in &node.rtts {
            if let Some(ms) = rtt {
                let _ = writeln!(
                    out,
                    "gossip_peer_rtt_seconds{{peer=\"{peer}\"}} {}",
                    ms / 1000.0
                );
            }
        }
        let _ = writeln!(out, "# HELP gossip_peer_link_up Whether a server link to each known peer is up (1) or not (0).\n# TYPE gossip_peer_link_up gauge");
        for (peer, _) in &node.rtts {
            let up = u8::from(node.links.iter().any(|l| l == peer));
            let _ = writeln!(out, "gossip_peer_link_up{{peer=\"{peer}\"}} {up}");
        }
        let _ = writeln!(out, "# HELP gossip_build_info The running build: always 1, its version as a label.\n# TYPE gossip_build_info gauge\ngossip_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        out
    }
}
