//! Counters the server keeps about itself. Local only: nothing is ever sent anywhere.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Server-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Client connections accepted.
    pub connections: Counter,
    /// Connections refused because the server was full.
    pub refused_full: Counter,
    /// Successful logins (including the implicit one after registration).
    pub logins: Counter,
    /// Login attempts whose challenge response did not verify.
    pub auth_failures: Counter,
    /// New users registered here.
    pub registrations: Counter,
    /// Last wills published after a connection dropped.
    pub last_wills: Counter,
}
