//! The last log lines, kept in memory for `prodserver diagnostics`.
//!
//! `gossipd` installs [`LogRing::writer`] as a second log destination next to stderr. Only the
//! last [`CAPACITY`] lines are kept, so memory stays bounded no matter how chatty the logs are.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// Lines kept.
pub const CAPACITY: usize = 1000;

static RING: OnceLock<Arc<Mutex<VecDeque<String>>>> = OnceLock::new();

fn ring() -> &'static Arc<Mutex<VecDeque<String>>> {
    RING.get_or_init(|| Arc::new(Mutex::new(VecDeque::with_capacity(CAPACITY))))
}

/// The most recent log lines, oldest first.
pub fn recent() -> Vec<String> {
    ring()
        .lock()
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default()
}

/// A `std::io::Write` that appends whole lines to the ring.
#[derive(Default)]
pub struct LogRing {
    partial: Vec<u8>,
}

impl LogRing {
    /// A writer for `tracing_subscriber`'s `with_writer`.
    pub fn writer() -> LogRing {
        LogRing::default()
    }
}

impl Write for LogRing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(buf);
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            if let Ok(mut r) = ring().lock() {
                if r.len() == CAPACITY {
                    r.pop_front();
                }
                r.push_back(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
