//! What one server link may have in flight at once. A link's reader hands records, sync
//! batches and relayed messages to tasks so it can keep reading; these bounds keep a fast or
//! hostile peer from queueing unbounded work behind it. One set per link, shared by the
//! services its messages go to.

use std::sync::Arc;

use tokio::sync::Semaphore;

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
