//! The node's tasks and its stop signal, as one small handle every service that spawns work
//! holds: whatever a service spawns is tracked, so a stop can wait for all of it before the
//! datafiles are flushed, and every timer that outlives a request can select on the stop.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where a service spawns its tasks, and the node's stop signal.
#[derive(Clone, Debug)]
pub struct Tasks {
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Tasks {
    /// A handle over `tracker`, stopped by `shutdown`.
    pub fn new(tracker: TaskTracker, shutdown: CancellationToken) -> Tasks {
        Tasks { tracker, shutdown }
    }

    /// Spawns `task`, tracked: a stop waits for it.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Cancelled when the node stops.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The tracker itself (a stop closes it and waits on it).
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }
}
