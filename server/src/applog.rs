//! Append-only logs the server keeps beside its datafiles (`wills.log`, `mailbox.log`): one
//! batch of lines appended and `fdatasync`ed at a time, or the file rewritten whole when it has
//! grown too far past what is live. Done off the async threads.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How a batch is written: appended, or the file replaced by `rewrite`.
pub(crate) type Rewrite = Box<dyn FnOnce(&Path) -> io::Result<()> + Send>;

/// Appends `batch` to `path` and `fdatasync`s it, or, when `rewrite` is given, runs it instead
/// (it writes the live lines). `None` when the blocking pool is gone (shutting down).
pub(crate) async fn write_batch(
    path: &Path,
    batch: Vec<u8>,
    rewrite: Option<Rewrite>,
) -> Option<io::Result<()>> {
    let path: PathBuf = path.to_owned();
    tokio::task::spawn_blocking(move || {
        if let Some(rewrite) = rewrite {
            return rewrite(&path);
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        f.write_all(&batch)?;
        f.sync_data()
    })
    .await
    .ok()
}
