//! Token buckets per key (an address, a peer's key), for what a stranger can make a server do
//! repeatedly: registrations per address, lock requests per linked peer, syncs per peer. Pure:
//! the caller passes the time. The table is bounded: past `max_keys`, keys whose bucket is full
//! again (idle long enough to have forgotten them) are dropped, and if none is, the new key is
//! refused, so a flood of distinct keys costs memory up to the bound and no more.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// A rate: `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Tokens a key starts with and can save up.
    pub burst: f64,
    /// Tokens added per second.
    pub per_second: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets per key.
#[derive(Debug)]
pub struct Limiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// A limiter at `rate` for at most `max_keys` keys at once.
    pub fn new(rate: Rate, max_keys: usize) -> Limiter<K> {
        Limiter {
            rate,
            max_keys,
            buckets: HashMap::new(),
        }
    }

    fn refill(rate: Rate, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * rate.per_second).min(rate.burst);
        b.at = now;
    }

    /// Takes one token for `key`: `Ok` if there was one, else how long until there is.
    pub fn take(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        let rate = self.rate;
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            // Forget keys that have refilled: they are as good as new.
            self.buckets.retain(|_, b| {
                Self::refill(rate, b, now);
                b.tokens < rate.burst
            });
            if self.buckets.len() >= self.max_keys {
                return Err(Duration::from_secs_f64(1.0 / rate.per_second));
            }
        }
        let b = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        Self::refill(rate, b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate.per_second))
        }
    }

    /// Whether `key` has a token now, without taking it (a key not tracked has a full bucket).
    pub fn has_token(&mut self, key: &K, now: Instant) -> bool {
        let rate = self.rate;
        match self.buckets.get_mut(key) {
            Some(b) => {
                Self::refill(rate, b, now);
                b.tokens >= 1.0
            }
            None => true,
        }
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        burst: 3.0,
        per_second: 1.0,
    };

    #[test]
    fn a_burst_then_the_refill_rate() {
        let mut l = Limiter::new(RATE, 10);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.take(&"a", t).is_ok());
        }
        let wait = l.take(&"a", t).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900));
        // Other keys are not affected.
        assert!(l.take(&"b", t).is_ok());
        assert!(l.take(&"a", t + Duration::from_millis(1010)).is_ok());
        assert!(l.take(&"a", t + Duration::from_millis(1020)).is_err());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_keys() {
        let mut l = Limiter::new(RATE, 2);
        let t = Instant::now();
        assert!(l.take(&1, t).is_ok());
        assert!(l.take(&2, t).is_ok());
        // Full, and neither key has refilled: a third key is refused.
        assert!(l.take(&3, t).is_err());
        assert_eq!(l.len(), 2);
        // Once they have refilled they are forgotten, and make room.
        assert!(l.take(&3, t + Duration::from_secs(5)).is_ok());
        assert_eq!(l.len(), 1);
    }
}

/// One token bucket, for a budget that is its owner's alone (one connection's inbound).
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: Rate,
    bucket: Bucket,
}

impl TokenBucket {
    /// A full bucket of `rate`.
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            bucket: Bucket {
                tokens: rate.burst,
                at: now,
            },
        }
    }

    /// Takes `n` tokens if the bucket holds them (refilled to `now` first); whether it did.
    pub fn take(&mut self, n: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.bucket.at).as_secs_f64();
        self.bucket.tokens = (self.bucket.tokens + dt * self.rate.per_second).min(self.rate.burst);
        self.bucket.at = now;
        if self.bucket.tokens >= n {
            self.bucket.tokens -= n;
            true
        } else {
            false
        }
    }
}
