//! Precise waits for the lab link emulation (`--lab-link-delay`).
//!
//! tokio's timer has millisecond granularity and rounds every deadline up to its next tick,
//! which would add 0–1 ms to each emulated hop: about the size of the per-hop overhead the
//! federation benchmark measures, so the emulation would swamp the thing measured. A thread of
//! its own, sleeping on the OS's high-resolution timers, wakes within tens of microseconds.
//! It exists only when a lab delay is configured.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Instant;

use tokio::sync::oneshot;

type Wakeup = (Instant, oneshot::Sender<()>);

/// Waits out an emulated link delay until `deadline`: precisely when the node has its lab
/// clock, on tokio's timer otherwise.
pub(crate) async fn sleep_until(clock: Option<&LabClock>, deadline: tokio::time::Instant) {
    match clock {
        Some(clock) => clock.sleep_until(deadline).await,
        None => tokio::time::sleep_until(deadline).await,
    }
}

/// A precise timer service for the emulated link delays.
#[derive(Debug)]
pub(crate) struct LabClock {
    tx: mpsc::Sender<Wakeup>,
}

impl LabClock {
    /// Starts the timer thread; it ends when the clock is dropped.
    pub(crate) fn start() -> std::io::Result<LabClock> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("gossip-lab-clock".into())
            .spawn(move || run(rx))?;
        Ok(LabClock { tx })
    }

    /// Waits until `deadline`.
    pub(crate) async fn sleep_until(&self, deadline: tokio::time::Instant) {
        let deadline = deadline.into_std();
        if deadline <= Instant::now() {
            return;
        }
        let (done, woken) = oneshot::channel();
        if self.tx.send((deadline, done)).is_err() {
            tokio::time::sleep_until(deadline.into()).await;
            return;
        }
        let _ = woken.await;
    }
}

fn run(rx: mpsc::Receiver<Wakeup>) {
    let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut waiting: HashMap<u64, oneshot::Sender<()>> = HashMap::new();
    let mut next_id = 0u64;
    loop {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = due.peek().copied() {
            if at > now {
                break;
            }
            due.pop();
            if let Some(w) = waiting.remove(&id) {
                let _ = w.send(());
            }
        }
        let got = match due.peek() {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(Reverse((at, _))) => rx.recv_timeout(at.saturating_duration_since(now)),
        };
        match got {
            Ok((at, w)) => {
                due.push(Reverse((at, next_id)));
                waiting.insert(next_id, w);
                next_id += 1;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // The node is gone: release whoever still waits, and stop.
                for (_, w) in waiting.drain() {
                    let _ = w.send(());
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_close_to_the_deadline_not_on_the_next_millisecond() {
        let clock = LabClock::start().unwrap();
        let mut late = Vec::new();
        for i in 0..20u64 {
            let deadline = tokio::time::Instant::now() + Duration::from_micros(1_300 + 37 * i);
            clock.sleep_until(deadline).await;
            let now = tokio::time::Instant::now();
            assert!(now >= deadline, "woke early");
            late.push(now - deadline);
        }
        late.sort();
        // tokio's own timer would be up to a whole millisecond late; the median here is far
        // below that even on a loaded machine.
        assert!(
            late[10] < Duration::from_micros(500),
            "median lateness {:?}",
            late[10]
        );
    }
}
