//! What one server link may have in flight at once. A link's reader hands records, sync
//! batches and relayed messages to tasks so it can keep reading; these bounds keep a fast or
//! hostile peer from queueing unbounded work behind it. One set per link, shared by the
//! services its messages go to.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::ratelimit::{Rate, TokenBucket};

/// KiB of relayed messages a link holds while their senders' records are on their way (16 MiB):
/// past it a message is refused, and stays with the peer for the next link-up's exchange.
pub(crate) const PARKED_KIB: usize = 16 * 1024;

/// Propagated records a link applies concurrently (each waits for its own fdatasync); relayed
/// messages and wills waiting for their user share the bound.
pub(crate) const RECORDS_IN_FLIGHT: usize = 256;

/// `changedEntries` batches a link applies concurrently: verifying the next batch while the
/// previous one waits for its `fdatasync` keeps both the CPU and the disk busy.
pub(crate) const SYNC_BATCHES_IN_FLIGHT: usize = 8;

/// One link's budgets.
#[derive(Clone)]
pub(crate) struct Budgets {
    /// Sync batches in flight.
    pub(crate) batches: Arc<Semaphore>,
    /// Records, relayed messages and held wills in flight.
    pub(crate) records: Arc<Semaphore>,
    /// KiB of relayed messages parked until their sender's record arrives.
    pub(crate) parked: Arc<Semaphore>,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            batches: Arc::new(Semaphore::new(SYNC_BATCHES_IN_FLIGHT)),
            records: Arc::new(Semaphore::new(RECORDS_IN_FLIGHT)),
            parked: Arc::new(Semaphore::new(PARKED_KIB)),
        }
    }
}

/// What one connection may send this server: frames and bytes a second, each with a burst.
#[derive(Debug, Clone, Copy)]
pub struct InboundRate {
    /// Frames.
    pub frames: Rate,
    /// Bytes (frames and their ends).
    pub bytes: Rate,
}

impl InboundRate {
    /// `frames` a second with ten seconds' worth as the burst, and `kib` KiB a second with
    /// eight seconds' worth (a burst of 60 relayed messages of 64 KiB fits the default).
    pub fn per_second(frames: f64, kib: f64) -> InboundRate {
        InboundRate {
            frames: Rate {
                burst: frames * 10.0,
                per_second: frames,
            },
            bytes: Rate {
                burst: kib * 1024.0 * 8.0,
                per_second: kib * 1024.0,
            },
        }
    }
}

impl InboundRate {
    /// What a connection may send before it logs in: a fiftieth of `self` (4 frames a second
    /// with a burst of 40 by default). A login or a registration takes two or three frames, so
    /// only a stranger that floods and reconnects is held to it, at the price of a handshake
    /// for every 40 frames.
    pub fn before_login(self) -> InboundRate {
        let part = |r: Rate| Rate {
            burst: r.burst / 50.0,
            per_second: r.per_second / 50.0,
        };
        InboundRate {
            frames: part(self.frames),
            bytes: part(self.bytes),
        }
    }
}

/// A server link's inbound budget: far above what the fastest resync measured moves (about
/// 30 MB/s and 600 frames/s of sync batches on a 2-vCPU machine), so only a flood reaches it.
pub(crate) const LINK_INBOUND: InboundRate = InboundRate {
    frames: Rate {
        burst: 500_000.0,
        per_second: 50_000.0,
    },
    bytes: Rate {
        burst: 1024.0 * 1024.0 * 1024.0,
        per_second: 128.0 * 1024.0 * 1024.0,
    },
};

/// One connection's inbound budget, spent as its frames arrive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inbound {
    rate: InboundRate,
    frames: TokenBucket,
    bytes: TokenBucket,
}

/// A connection sent more than its budget.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub(crate) enum Exceeded {
    /// Too many frames.
    #[error("more than {0:.0} frames a second")]
    Frames(f64),
    /// Too many bytes.
    #[error("more than {0:.0} KiB a second")]
    Bytes(f64),
}

impl Inbound {
    /// A full budget of `rate`.
    pub(crate) fn new(rate: InboundRate, now: Instant) -> Inbound {
        Inbound {
            rate,
            frames: TokenBucket::new(rate.frames, now),
            bytes: TokenBucket::new(rate.bytes, now),
        }
    }

    /// Spends what a decoder's `item` cost: a frame's bytes and its end, or one frame for a
    /// frame refused (its bytes were skipped unbuffered).
    pub(crate) fn spend_item<E1, E2>(
        &mut self,
        item: &Option<Result<Result<bytes::Bytes, E1>, E2>>,
        now: Instant,
    ) -> Result<(), Exceeded> {
        let len = match item {
            Some(Ok(Ok(frame))) => frame.len() + 1,
            _ => 1,
        };
        self.spend(len, now)
    }

    /// Spends one frame of `len` bytes (its end included).
    pub(crate) fn spend(&mut self, len: usize, now: Instant) -> Result<(), Exceeded> {
        if !self.frames.take(1.0, now) {
            return Err(Exceeded::Frames(self.rate.frames.per_second));
        }
        if !self.bytes.take(len as f64, now) {
            return Err(Exceeded::Bytes(self.rate.bytes.per_second / 1024.0));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_and_a_flood_is_caught() {
        let t0 = Instant::now();
        let mut b = Inbound::new(InboundRate::per_second(10.0, 1.0), t0);
        // The burst: 100 frames, 8 KiB.
        for _ in 0..8 {
            assert_eq!(b.spend(1024, t0), Ok(()));
        }
        assert!(matches!(b.spend(1, t0), Err(Exceeded::Bytes(_))));
        let mut b = Inbound::new(InboundRate::per_second(10.0, 1.0), t0);
        for _ in 0..100 {
            assert_eq!(b.spend(1, t0), Ok(()));
        }
        assert!(matches!(b.spend(1, t0), Err(Exceeded::Frames(_))));
        // A second later, ten more frames.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(b.spend(1, t1), Ok(()));
        }
        assert!(b.spend(1, t1).is_err());
    }
}
