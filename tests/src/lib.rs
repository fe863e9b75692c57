//! Helpers for Gossip's multi-process integration tests: locating the workspace's binaries,
//! unique data directories, and waiting on conditions with a deadline (never sleep-and-hope).

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Path of a binary built from this workspace (`gossipd`, `gossip`, `prodserver`,
/// `store-writer`), next to the test executable's `deps/` directory.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo build --workspace` first (cargo test --workspace does)",
        path.display()
    );
    path
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
