//! The held wills and their file: which will is outstanding for which user and home server
//! (the pure [`WillTable`]), and `wills.log`.
//!
//! Wills are appended to `wills.log` in the data directory (JSON lines, `fdatasync`ed in
//! batches gathered for 20 ms by a task of their own) and reloaded at start, dropping those the store has since
//! superseded; the file is rewritten when it holds four times more lines than live wills.

use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gossip_common::{Signed, UserId, UserInfo};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::mst::{id_string, ServerId};
use crate::store::Store;

/// Wills held for one home server at most: a server cannot have more sessions than that.
pub const MAX_PER_HOME: usize = 100_000;
/// Wills held in all: a bound on what peers can make this server keep.
pub const MAX_HELD: usize = 2_000_000;

const FILE: &str = "wills.log";
/// How long the writer gathers wills before a write and its `fdatasync`.
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);
/// Lines queued for the file before new ones are dropped from it (still held in memory).
const QUEUE: usize = 4096;

/// Why a will was not held.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not newer than what is stored or held.
    #[error("not newer than the stored record or the held will")]
    Stale,
    /// Over [`MAX_PER_HOME`] or [`MAX_HELD`].
    #[error("too many wills held")]
    Full,
}

/// The held wills (pure: no I/O).
#[derive(Default)]
pub struct WillTable {
    held: HashMap<UserId, (ServerId, Signed<UserInfo>)>,
    per_home: HashMap<ServerId, usize>,
}

impl WillTable {
    /// Holds `will` for `home`, replacing an older one of the same user.
    pub fn hold(&mut self, home: &ServerId, will: Signed<UserInfo>) -> Result<(), Refused> {
        let uid = will.user_id;
        if let Some((_, held)) = self.held.get(&uid) {
            if !will.event_count.is_newer_than(held.event_count) {
                return Err(Refused::Stale);
            }
        } else if self.held.len() >= MAX_HELD {
            return Err(Refused::Full);
        }
        let moving = self.held.get(&uid).is_none_or(|(h, _)| h != home);
        if moving && self.per_home.get(home).copied().unwrap_or(0) >= MAX_PER_HOME {
            return Err(Refused::Full);
        }
        if let Some((old_home, _)) = self.held.insert(uid, (home.clone(), will)) {
            self.dec(&old_home);
        }
        *self.per_home.entry(home.clone()).or_default() += 1;
        Ok(())
    }

    /// Drops `uid`'s will if `ec` (a record now stored) is as new or newer.
    pub fn superseded(&mut self, uid: UserId, ec: gossip_common::EventCount) {
        if self
            .held
            .get(&uid)
            .is_some_and(|(_, w)| !w.event_count.is_newer_than(ec))
        {
            self.remove(uid);
        }
    }

    /// Takes every will held for `home`.
    pub fn take_home(&mut self, home: &ServerId) -> Vec<Signed<UserInfo>> {
        let uids: Vec<UserId> = self
            .held
            .iter()
            .filter(|(_, (h, _))| h == home)
            .map(|(u, _)| *u)
            .collect();
        uids.into_iter().filter_map(|u| self.remove(u)).collect()
    }

    /// Takes `uid`'s will.
    pub fn take_user(&mut self, uid: UserId) -> Option<Signed<UserInfo>> {
        self.remove(uid)
    }

    /// The wills held for `home` (copies).
    pub fn of_home(&self, home: &ServerId) -> Vec<Signed<UserInfo>> {
        self.held
            .values()
            .filter(|(h, _)| h == home)
            .map(|(_, w)| w.clone())
            .collect()
    }

    /// Wills held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn remove(&mut self, uid: UserId) -> Option<Signed<UserInfo>> {
        let (home, will) = self.held.remove(&uid)?;
        self.dec(&home);
        Some(will)
    }

    fn dec(&mut self, home: &ServerId) {
        if let Some(n) = self.per_home.get_mut(home) {
            *n -= 1;
            if *n == 0 {
                self.per_home.remove(home);
            }
        }
    }
}

/// One line of `wills.log`.
#[derive(Serialize, Deserialize)]
struct Line {
    home: String,
    sig: String,
    raw: String,
}

impl Line {
    fn of(home: &ServerId, will: &Signed<UserInfo>) -> Vec<u8> {
        let line = Line {
            home: id_string(home),
            sig: will.signature().to_string(),
            raw: will.raw().to_owned(),
        };
        let mut v = serde_json::to_vec(&line).expect("plain strings serialise");
        v.push(b'\n');
        v
    }
}

/// The held wills and their file.
pub struct Wills {
    table: Arc<Mutex<WillTable>>,
    file: mpsc::Sender<Vec<u8>>,
    lagging: std::sync::atomic::AtomicBool,
    /// `fdatasync` durations of `wills.log`.
    fsync: prometheus::Histogram,
}

impl Wills {
    /// The `fdatasync` durations of `wills.log`.
    pub fn fsync_histogram(&self) -> prometheus::Histogram {
        self.fsync.clone()
    }

    /// Loads `wills.log` from `dir` (keeping the wills still newer than `store`'s records and
    /// validly signed by the bound key), rewrites it with those, and starts its writer.
    pub fn open(
        dir: &Path,
        store: &Store,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> io::Result<Wills> {
        let path = dir.join(FILE);
        let mut table = WillTable::default();
        if let Ok(f) = std::fs::File::open(&path) {
            for line in io::BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                let Ok(l) = serde_json::from_str::<Line>(&line) else {
                    continue; // a torn last line
                };
                let (Ok(home), Ok(sig)) = (crate::mst::parse_id(&l.home), l.sig.parse()) else {
                    continue;
                };
                let Ok(will) = Signed::<UserInfo>::from_parts(l.raw, sig) else {
                    continue;
                };
                if !outstanding(store, &will) || will.verify_self().is_err() {
                    continue;
                }
                let _ = table.hold(&home, will);
            }
        }
        let table = Arc::new(Mutex::new(table));
        rewrite(&path, &table.lock())?;
        let (file, rx) = mpsc::channel(QUEUE);
        let fsync = crate::metrics::fsync_histogram("wills");
        tasks.spawn(writer(
            path,
            rx,
            Arc::clone(&table),
            shutdown.clone(),
            fsync.clone(),
        ));
        Ok(Wills {
            table,
            file,
            fsync,
            lagging: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Holds `will` for `home` if it is outstanding at `store` and newer than the will held;
    /// the caller has checked its signature against the bound key. Returns whether it is news.
    pub fn hold(&self, store: &Store, home: &ServerId, will: Signed<UserInfo>) -> bool {
        if !outstanding(store, &will) {
            return false;
        }
        let line = Line::of(home, &will);
        let news = self.table.lock().hold(home, will).is_ok();
        if news && self.file.try_send(line).is_err() {
            // Under a burst the file lags; said once, not once per will.
            if !self
                .lagging
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!("wills file queue full; some wills are held in memory only");
            }
        }
        news
    }

    /// A record of `uid` at `ec` is stored now: a will not newer than it is void.
    pub fn superseded(&self, uid: UserId, ec: gossip_common::EventCount) {
        self.table.lock().superseded(uid, ec);
    }

    /// Takes the wills held for `home` (to publish them).
    pub fn take_home(&self, home: &ServerId) -> Vec<Signed<UserInfo>> {
        self.table.lock().take_home(home)
    }

    /// The event count of `uid`'s outstanding will, if one is held.
    pub fn peek(&self, uid: UserId) -> Option<gossip_common::EventCount> {
        self.table.lock().held.get(&uid).map(|(_, w)| w.event_count)
    }

    /// The wills held for `home`.
    pub fn of_home(&self, home: &ServerId) -> Vec<Signed<UserInfo>> {
        self.table.lock().of_home(home)
    }

    /// Wills held.
    pub fn len(&self) -> usize {
        self.table.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether `will` is newer than the record `store` holds for its user.
fn outstanding(store: &Store, will: &Signed<UserInfo>) -> bool {
    store.user(will.user_id).is_some_and(|u| {
        u.public_key == will.public_key && will.event_count.is_newer_than(u.event_count)
    })
}

/// Appends queued lines, one `fdatasync` per batch (done off the async threads); rewrites the
/// file when it holds four times more lines than live wills. Ends at shutdown, after writing
/// what is queued.
async fn writer(
    path: PathBuf,
    mut rx: mpsc::Receiver<Vec<u8>>,
    table: Arc<Mutex<WillTable>>,
    shutdown: tokio_util::sync::CancellationToken,
    fsync: prometheus::Histogram,
) {
    let mut lines = table.lock().len();
    loop {
        // A short window gathers the wills of a burst into one write and one `fdatasync`
        // (each status change hands over a new will: one flush per will would cost more than
        // the change itself).
        let Some(items) = crate::applog::next_batch(&mut rx, &shutdown, GATHER).await else {
            return;
        };
        lines += items.len();
        let batch = items.concat();
        let live = table.lock().len();
        let compact = crate::applog::worth_compacting(lines, live);
        let rewrite = compact.then(|| {
            let table = Arc::clone(&table);
            Box::new(move |p: &Path| rewrite(p, &table.lock())) as crate::applog::Rewrite
        });
        let written = crate::applog::write_batch(&path, batch, rewrite, &fsync).await;
        match written {
            Some(Ok(())) if compact => lines = live,
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "wills file write failed; wills held in memory only")
            }
            None => return,
        }
    }
}

/// Writes the live wills to a new file and renames it over the old one.
fn rewrite(path: &Path, table: &WillTable) -> io::Result<()> {
    let tmp = path.with_extension("log.tmp");
    let mut f = io::BufWriter::new(std::fs::File::create(&tmp)?);
    for (home, will) in table.held.values() {
        f.write_all(&Line::of(home, will))?;
    }
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossip_common::{EventCount, Keypair};

    fn will(key: &Keypair, uid: u64, count: u32) -> Signed<UserInfo> {
        let mut u = UserInfo::new(UserId(uid), key.public());
        u.status = "offline".into();
        u.event_count = EventCount::new(count, false);
        Signed::sign(u, key).unwrap()
    }

    fn home(p: u16) -> ServerId {
        ("h".into(), p)
    }

    #[test]
    fn a_will_is_held_until_a_record_as_new_is_stored() {
        let k = Keypair::generate();
        let mut t = WillTable::default();
        t.hold(&home(1), will(&k, 7, 3)).unwrap();
        assert_eq!(t.hold(&home(1), will(&k, 7, 3)), Err(Refused::Stale));
        assert_eq!(t.hold(&home(2), will(&k, 7, 2)), Err(Refused::Stale));
        t.superseded(UserId(7), EventCount::new(2, false));
        assert_eq!(t.len(), 1);
        t.superseded(UserId(7), EventCount::new(3, false));
        assert!(t.is_empty());
    }

    #[test]
    fn wills_are_taken_by_home_and_a_newer_one_moves_home() {
        let k = Keypair::generate();
        let mut t = WillTable::default();
        t.hold(&home(1), will(&k, 1, 1)).unwrap();
        t.hold(&home(1), will(&k, 2, 1)).unwrap();
        t.hold(&home(2), will(&k, 3, 1)).unwrap();
        // User 2 logged in again at home 2.
        t.hold(&home(2), will(&k, 2, 5)).unwrap();
        let mut one: Vec<u64> = t.take_home(&home(1)).iter().map(|w| w.user_id.0).collect();
        one.sort();
        assert_eq!(one, [1]);
        assert_eq!(t.of_home(&home(2)).len(), 2);
        assert_eq!(t.take_user(UserId(3)).unwrap().user_id, UserId(3));
        assert_eq!(t.per_home.get(&home(2)), Some(&1));
    }
}
