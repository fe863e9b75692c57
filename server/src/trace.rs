//! Protocol trace: an optional record of every frame this node sends and receives, for
//! debugging a network (`gossipd --trace FILE`; `prodserver trace summarize FILE`).
//!
//! One JSON object per line: `{"t": unix seconds (float), "dir": "in"|"out", "peer": "ip:port",
//! "link": "client"|"server", "frame": "<…/>"}`. Recording never slows the node down: frames go
//! through a bounded queue to a writer thread, and if the disk cannot keep up, frames are
//! dropped and counted (the count is written at the end) rather than queued without bound.
//! Traces contain everything on the wire, including user records: they are as public as the
//! records themselves (see the security model), but treat the file like a log.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a traced frame travelled.
#[derive(Debug, Clone, Copy)]
pub enum Dir {
    /// Received.
    In,
    /// Sent.
    Out,
}

/// One connection's view of the trace: which peer and which kind of link to record frames
/// under. Writers hold this, not the whole node.
#[derive(Clone)]
pub struct Tap {
    trace: std::sync::Arc<Trace>,
    peer: SocketAddr,
    link: &'static str,
}

impl Tap {
    /// A tap for `peer` on a `link` ("client" or "server") connection, if tracing is on.
    pub fn new(
        trace: Option<&std::sync::Arc<Trace>>,
        peer: SocketAddr,
        link: &'static str,
    ) -> Option<Tap> {
        trace.map(|t| Tap {
            trace: std::sync::Arc::clone(t),
            peer,
            link,
        })
    }

    /// Records one frame.
    pub fn record(&self, dir: Dir, frame: &[u8]) {
        self.trace.record(dir, self.peer, self.link, frame);
    }
}

/// Handle for recording frames; cheap to share.
pub struct Trace {
    tx: mpsc::SyncSender<String>,
    dropped: std::sync::Arc<AtomicU64>,
}

impl Trace {
    /// Starts recording to `path` (appending).
    pub fn open(path: &Path) -> std::io::Result<Trace> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = mpsc::sync_channel::<String>(65_536);
        let dropped = std::sync::Arc::new(AtomicU64::new(0));
        let dropped_w = std::sync::Arc::clone(&dropped);
        std::thread::Builder::new()
            .name("gossip-trace".into())
            .spawn(move || {
                let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
                while let Ok(line) = rx.recv() {
                    let _ = w.write_all(line.as_bytes());
                    while let Ok(more) = rx.try_recv() {
                        let _ = w.write_all(more.as_bytes());
                    }
                    let _ = w.flush();
                }
                let lost = dropped_w.load(Ordering::Relaxed);
                if lost > 0 {
                    let _ = writeln!(w, "{{\"dropped\":{lost}}}");
                }
                let _ = w.flush();
            })?;
        Ok(Trace { tx, dropped })
    }

    /// Records one frame.
    pub fn record(&self, dir: Dir, peer: SocketAddr, link: &str, frame: &[u8]) {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let line = serde_json::json!({
            "t": t,
            "dir": match dir { Dir::In => "in", Dir::Out => "out" },
            "peer": peer.to_string(),
            "link": link,
            "frame": String::from_utf8_lossy(frame),
        });
        if self.tx.try_send(format!("{line}\n")).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
