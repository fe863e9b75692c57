//! When this server's own clients' messages were accepted, kept until their delivery notices
//! come back, so the delivery-time histogram (`gossip_relay_delivery_seconds`) measures the
//! whole way: sender's server → recipient's client → the signed notice back here.
//!
//! Bounded: at most [`MAX_TRACKED`] messages. When full, entries older than [`FORGET_AFTER`]
//! are dropped (a recipient who stays away that long is not a latency to alert on), and if it
//! is still full the new message goes untimed. Nothing here is persisted: a restart forgets
//! the clocks, never the messages.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Messages timed at once.
pub(crate) const MAX_TRACKED: usize = 65_536;

/// How long a message stays timed without a delivery.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Accepted-at times by message id (32 hex digits, kept as the number they spell).
#[derive(Debug, Default)]
pub(crate) struct SentClock {
    at: HashMap<u128, Instant>,
}

impl SentClock {
    /// Notes that message `id` was accepted at `now`; whether it is timed.
    pub(crate) fn accepted(&mut self, id: &str, now: Instant) -> bool {
        let Ok(id) = u128::from_str_radix(id, 16) else {
            return false;
        };
        if self.at.len() >= MAX_TRACKED {
            self.at
                .retain(|_, t| now.saturating_duration_since(*t) < FORGET_AFTER);
        }
        if self.at.len() >= MAX_TRACKED {
            return false;
        }
        self.at.insert(id, now);
        true
    }

    /// Message `id` was delivered at `now`: how long after it was accepted, if it was timed.
    pub(crate) fn delivered(&mut self, id: &str, now: Instant) -> Option<Duration> {
        let id = u128::from_str_radix(id, 16).ok()?;
        self.at
            .remove(&id)
            .map(|t| now.saturating_duration_since(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> String {
        format!("{n:032x}")
    }

    #[test]
    fn a_delivery_is_timed_once_from_its_acceptance() {
        let mut c = SentClock::default();
        let t0 = Instant::now();
        assert!(c.accepted(&id(7), t0));
        let later = t0 + Duration::from_millis(40);
        assert_eq!(c.delivered(&id(7), later), Some(Duration::from_millis(40)));
        assert_eq!(
            c.delivered(&id(7), later),
            None,
            "the second notice is not timed"
        );
        assert_eq!(
            c.delivered(&id(8), later),
            None,
            "nor one never accepted here"
        );
        assert!(!c.accepted("not hex", t0));
    }

    #[test]
    fn it_stays_bounded_and_forgets_the_oldest_first() {
        let mut c = SentClock::default();
        let t0 = Instant::now();
        for n in 0..MAX_TRACKED as u128 {
            assert!(c.accepted(&id(n), t0));
        }
        // Full, and nothing old enough to forget: the next goes untimed.
        assert!(!c.accepted(&id(u128::MAX), t0 + Duration::from_secs(1)));
        assert_eq!(c.at.len(), MAX_TRACKED);
        // A day later the old ones make room.
        let t1 = t0 + FORGET_AFTER + Duration::from_secs(1);
        assert!(c.accepted(&id(u128::MAX), t1));
        assert_eq!(c.at.len(), 1);
        assert_eq!(c.delivered(&id(0), t1), None);
    }
}
