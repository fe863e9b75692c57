//! Online backups and restores: a running node's files copied into one tar archive without
//! stopping it (`prodserver backup FILE`), and that archive unpacked into a new data directory
//! (`gossipd --restore FILE --data-dir DIR`).
//!
//! Consistency without a pause: every file a node keeps is append-only between rewrites, and a
//! rewrite replaces the file by a rename. So a backup opens each file, notes its length, and
//! copies exactly that prefix: later appends are not in it and a later rewrite does not touch
//! the handle it holds. The users' and contact lists' datafiles and the transaction log are
//! cut at one moment by the store's writer thread (everything queued before is written to
//! them first). Every update acknowledged before the backup started is in the copy, because
//! an acknowledgement waits for its `fdatasync`. A prefix can end inside a line that was being
//! written: every file's loader already cuts a torn last line (the crash case), so a restore
//! loads like a restart after `kill -9` at the moment of the backup.
//!
//! The private key (`server.key`) is left out unless asked for: an archive with it lets anyone
//! holding it act as this server.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::server_keys::KEY_FILE;
use crate::store::Store;

/// The format's name and version, in the manifest.
pub const FORMAT: &str = "gossip-backup 1";

/// The directory every entry of the archive is under.
const ROOT: &str = "gossip-backup";

/// The files besides the store's that a backup copies, if present: replicated last wills, the
/// mailbox, the server keyring, the address blacklist.
const OTHER_FILES: &[&str] = &["wills.log", "mailbox.log", "servers.keys", "blacklist.txt"];

/// Every file name a restore accepts (nothing else is unpacked, so an archive cannot write
/// outside the new data directory or plant other files).
fn restorable(name: &str) -> bool {
    name == KEY_FILE || OTHER_FILES.contains(&name) || crate::store::DATAFILES.contains(&name)
}

/// What a backup holds, written first in the archive as `MANIFEST.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// The `gossipd` version that wrote it.
    pub version: String,
    /// The server it was taken from (`host:port`).
    pub server: String,
    /// When it was taken, ms since the Unix epoch.
    pub created_ms: u64,
    /// Every file copied and its length in bytes.
    pub files: Vec<(String, u64)>,
    /// Whether `server.key` is in it.
    pub key_included: bool,
}

/// Why a backup or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading the node's files or writing the archive.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The archive is not a backup this build can restore.
    #[error("{0}")]
    Invalid(String),
    /// The target data directory holds files already.
    #[error("{0} is not empty: restore into a new (or empty) data directory, so nothing of another node is mixed in")]
    NotEmpty(PathBuf),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// Writes a backup of the node whose store is `store` (data directory `dir`, identity
/// `server`) to `out`: through a temporary file beside it, fsynced and renamed, so `out` is
/// either absent or a whole archive. Returns its manifest.
pub async fn write(
    store: &Store,
    dir: &Path,
    server: &str,
    out: &Path,
    include_key: bool,
) -> Result<Manifest, BackupError> {
    let mut cut = store
        .snapshot_files()
        .await
        .map_err(io_err("reading the datafiles"))?;
    for name in OTHER_FILES
        .iter()
        .copied()
        .chain(include_key.then_some(KEY_FILE))
    {
        let path = dir.join(name);
        match File::open(&path) {
            Ok(f) => {
                let len = f
                    .metadata()
                    .map_err(io_err(format!("reading {}", path.display())))?
                    .len();
                cut.push((path, f, len));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && name != KEY_FILE => {}
            Err(e) => return Err(io_err(format!("opening {}", path.display()))(e)),
        }
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        server: server.into(),
        created_ms: crate::mailbox::now_ms(),
        files: cut.iter().map(|(p, _, len)| (file_name(p), *len)).collect(),
        key_included: include_key,
    };
    let (out, m) = (out.to_owned(), manifest.clone());
    tokio::task::spawn_blocking(move || write_archive(&out, &m, cut))
        .await
        .map_err(|e| BackupError::Io {
            what: "writing the archive".into(),
            source: io::Error::other(e),
        })??;
    Ok(manifest)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The archive: the manifest, then each file's prefix.
fn write_archive(
    out: &Path,
    manifest: &Manifest,
    files: Vec<(PathBuf, File, u64)>,
) -> Result<(), BackupError> {
    let tmp = out.with_extension("partial");
    let written = (|| -> io::Result<()> {
        let file = File::create(&tmp)?;
        let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, file));
        let json = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
        append(
            &mut tar,
            "MANIFEST.json",
            json.len() as u64,
            json.as_slice(),
            0o644,
        )?;
        for (path, f, len) in files {
            let name = file_name(&path);
            let mode = if name == KEY_FILE { 0o600 } else { 0o644 };
            append(&mut tar, &name, len, f.take(len), mode)?;
        }
        let file = tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, out)?;
        crate::store::sync_parent(out)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(format!("writing {}", out.display()))(e)
    })
}

/// One entry of `len` bytes read from `data`; a shorter read (a file cut under us, which an
/// append-only file never is) fails rather than writing a short entry.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    len: u64,
    data: impl Read,
    mode: u32,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(len);
    header.set_mode(mode);
    header.set_mtime(crate::mailbox::now_ms() / 1000);
    header.set_cksum();
    tar.append_data(&mut header, format!("{ROOT}/{name}"), data)
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The backup's manifest.
    pub manifest: Manifest,
    /// Users and contact lists the restored store loaded (every signature verified).
    pub users: usize,
    /// Contact lists loaded.
    pub lists: usize,
    /// Bytes of a line cut off the end of a datafile (written while the backup was taken).
    pub torn_bytes: u64,
}

/// Unpacks the backup `archive` into `dir` (created; refused if it holds files), then opens
/// the store there once, which checks every record's signature, and reports what it holds.
pub fn restore(archive: &Path, dir: &Path) -> Result<Restored, BackupError> {
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(BackupError::NotEmpty(dir.to_owned()));
    }
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let file = File::open(archive).map_err(io_err(format!("opening {}", archive.display())))?;
    let mut tar = tar::Archive::new(io::BufReader::with_capacity(1 << 20, file));
    let mut manifest: Option<Manifest> = None;
    let mut unpacked = Vec::new();
    let entries = tar
        .entries()
        .map_err(io_err(format!("reading {}", archive.display())))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err(format!("reading {}", archive.display())))?;
        let path = entry
            .path()
            .map_err(io_err("reading an entry's name"))?
            .into_owned();
        let name = path
            .strip_prefix(ROOT)
            .ok()
            .and_then(|p| p.to_str())
            .filter(|n| !n.contains('/'))
            .ok_or_else(|| {
                BackupError::Invalid(format!(
                    "{} holds {}, which is not a gossip backup's",
                    archive.display(),
                    path.display()
                ))
            })?
            .to_owned();
        if name == "MANIFEST.json" {
            let mut json = Vec::new();
            (&mut entry)
                .take(1 << 20)
                .read_to_end(&mut json)
                .map_err(io_err("reading the manifest"))?;
            let m: Manifest = serde_json::from_slice(&json)
                .map_err(|e| BackupError::Invalid(format!("its manifest does not parse: {e}")))?;
            if m.format != FORMAT {
                return Err(BackupError::Invalid(format!(
                    "it is a {:?} archive; this gossipd restores {FORMAT:?}",
                    m.format
                )));
            }
            manifest = Some(m);
            continue;
        }
        if manifest.is_none() {
            return Err(BackupError::Invalid(
                "its first entry is not MANIFEST.json: not a gossip backup".into(),
            ));
        }
        if !restorable(&name) {
            return Err(BackupError::Invalid(format!(
                "it holds {name}, which is no file of a gossip node"
            )));
        }
        let target = dir.join(&name);
        let mut out = create(&target, name == KEY_FILE)
            .map_err(io_err(format!("creating {}", target.display())))?;
        io::copy(&mut entry, &mut out).map_err(io_err(format!("writing {}", target.display())))?;
        out.sync_all()
            .map_err(io_err(format!("writing {}", target.display())))?;
        unpacked.push((name, out.metadata().map(|m| m.len()).unwrap_or(0)));
    }
    let manifest =
        manifest.ok_or_else(|| BackupError::Invalid("it has no MANIFEST.json".into()))?;
    for (name, len) in &manifest.files {
        if !unpacked.iter().any(|(n, l)| n == name && l == len) {
            return Err(BackupError::Invalid(format!(
                "{name} ({len} bytes in the manifest) is missing or cut short: the archive is incomplete"
            )));
        }
    }
    crate::store::sync_parent(&dir.join("x")).map_err(io_err("syncing the data directory"))?;
    let (store, report) = Store::open(dir).map_err(io_err(format!(
        "loading the restored datafiles in {}",
        dir.display()
    )))?;
    drop(store);
    Ok(Restored {
        manifest,
        users: report.users,
        lists: report.lists,
        torn_bytes: report.torn_bytes,
    })
}

/// A new file; mode 0600 for the private key (never readable by others, even for a moment).
fn create(path: &Path, private: bool) -> io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_nodes_own_files_are_restorable() {
        for ok in [
            "users.udb",
            "contacts.cl",
            "transactions.log",
            "wills.log",
            "server.key",
        ] {
            assert!(restorable(ok), "{ok}");
        }
        for bad in [
            "LOCK",
            "ports.json",
            "../users.udb",
            "admin.sock",
            ".bashrc",
        ] {
            assert!(!restorable(bad), "{bad}");
        }
    }

    #[test]
    fn an_archive_that_is_not_a_backup_is_refused_and_nothing_is_written_outside() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("evil.tar");
        let mut tar = tar::Builder::new(File::create(&archive).unwrap());
        let m = serde_json::to_vec(&Manifest {
            format: FORMAT.into(),
            version: "0".into(),
            server: "x:1".into(),
            created_ms: 0,
            files: vec![],
            key_included: false,
        })
        .unwrap();
        append(
            &mut tar,
            "MANIFEST.json",
            m.len() as u64,
            m.as_slice(),
            0o644,
        )
        .unwrap();
        append(&mut tar, "authorized_keys", 3, &b"abc"[..], 0o644).unwrap();
        tar.finish().unwrap();
        drop(tar);
        let target = dir.path().join("restored");
        let err = restore(&archive, &target).unwrap_err().to_string();
        assert!(err.contains("authorized_keys"), "{err}");
        assert!(!target.join("authorized_keys").exists());

        // And a restore never mixes into a directory in use.
        std::fs::write(target.join("users.udb"), b"").unwrap();
        assert!(matches!(
            restore(&archive, &target),
            Err(BackupError::NotEmpty(_))
        ));
    }
}
