//! The client's message database: one SQLite file in the profile (`messages.db`, mode 0600)
//! holding the conversation history and the Olm state ([`crate::e2e`]), so a message, its
//! delivery state and the ratchet that decrypted it are written together, atomically and
//! durably (SQLite's journal, `synchronous = FULL`).
//!
//! Tables: `messages` (id, peer, outgoing, text, sent_ms, state: `sent`, `delivered` or
//! `received`) and `olm` (one row: the pickled account and sessions).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use gossip_common::UserId;
use rusqlite::{params, Connection, OptionalExtension};

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
#[error("message database {path}: {source}")]
pub struct HistoryError {
    path: PathBuf,
    #[source]
    source: rusqlite::Error,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The message id (the relay id).
    pub id: String,
    /// The other user.
    pub peer: UserId,
    /// Sent by us.
    pub outgoing: bool,
    /// The text.
    pub text: String,
    /// The sender's clock, ms since the Unix epoch.
    pub sent_ms: u64,
    /// `sent`, `delivered` (outgoing) or `received` (incoming).
    pub state: String,
}

/// The open database.
pub struct History {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "History({})", self.path.display())
    }
}

impl History {
    /// Opens (creating, mode 0600) the database at `path`.
    pub fn open(path: &Path) -> Result<History, HistoryError> {
        let err = |source| HistoryError {
            path: path.to_owned(),
            source,
        };
        // Created with its final mode before SQLite opens it.
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS messages (
                 id TEXT PRIMARY KEY,
                 peer INTEGER NOT NULL,
                 outgoing INTEGER NOT NULL,
                 text TEXT NOT NULL,
                 sent_ms INTEGER NOT NULL,
                 state TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS messages_by_peer ON messages (peer, sent_ms);
             CREATE TABLE IF NOT EXISTS olm (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 state BLOB NOT NULL
             );",
        )
        .map_err(err)?;
        Ok(History {
            conn,
            path: path.to_owned(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError {
            path: self.path.clone(),
            source,
        }
    }

    /// Records a message (a message already recorded keeps its row).
    pub fn record(&self, e: &Entry) -> Result<(), HistoryError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO messages (id, peer, outgoing, text, sent_ms, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    e.id,
                    e.peer.0 as i64,
                    e.outgoing,
                    e.text,
                    e.sent_ms as i64,
                    e.state
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Marks an outgoing message delivered; returns whether that is news (one of ours, not
    /// marked before: notices can come twice, live and again at a login elsewhere).
    pub fn delivered(&self, id: &str) -> Result<bool, HistoryError> {
        let n = self
            .conn
            .execute(
                "UPDATE messages SET state = 'delivered'
                 WHERE id = ?1 AND outgoing = 1 AND state = 'sent'",
                params![id],
            )
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// The conversation with `peer`, oldest first (the last `limit` messages).
    pub fn conversation(&self, peer: UserId, limit: usize) -> Result<Vec<Entry>, HistoryError> {
        self.page(peer, None, limit)
    }

    /// Up to `limit` messages with `peer` sent before message `before` (its send time and
    /// id; `None`: the latest), oldest first. Paging back through a conversation this way
    /// reads each message once, in the order of the index.
    pub fn page(
        &self,
        peer: UserId,
        before: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<Vec<Entry>, HistoryError> {
        let (ms, id) = split(before);
        let mut out = self.select(
            "WHERE peer = ?1 AND (?2 IS NULL OR (sent_ms, rowid) <
                 (?2, (SELECT rowid FROM messages WHERE id = ?3)))
             ORDER BY sent_ms DESC, rowid DESC LIMIT ?4",
            params![peer.0 as i64, ms, id, limit as i64],
        )?;
        out.reverse();
        Ok(out)
    }

    /// The newest message with `peer` before `before` (as in [`Self::page`]) whose text holds
    /// `needle`, ignoring case (any script's: the comparison is Rust's lowercasing, not
    /// SQLite's ASCII-only `lower`). Reads back from `before` through the index and stops at
    /// the first match.
    pub fn search(
        &self,
        peer: UserId,
        needle: &str,
        before: Option<(u64, &str)>,
    ) -> Result<Option<Entry>, HistoryError> {
        let needle = needle.to_lowercase();
        let (ms, id) = split(before);
        let mut st = self
            .conn
            .prepare(
                "SELECT id, peer, outgoing, text, sent_ms, state FROM messages
                 WHERE peer = ?1 AND (?2 IS NULL OR (sent_ms, rowid) <
                     (?2, (SELECT rowid FROM messages WHERE id = ?3)))
                 ORDER BY sent_ms DESC, rowid DESC",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = st
            .query(params![peer.0 as i64, ms, id])
            .map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let entry = entry(r).map_err(|e| self.err(e))?;
            if entry.text.to_lowercase().contains(&needle) {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// The messages with `peer` from message `from` (included) up to `before` (excluded;
    /// `None`: the latest), oldest first, at most `limit`.
    pub fn since(
        &self,
        peer: UserId,
        from: (u64, &str),
        before: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<Vec<Entry>, HistoryError> {
        let (ms, id) = split(before);
        self.select(
            "WHERE peer = ?1
               AND (sent_ms, rowid) >= (?2, (SELECT rowid FROM messages WHERE id = ?3))
               AND (?4 IS NULL OR (sent_ms, rowid) <
                   (?4, (SELECT rowid FROM messages WHERE id = ?5)))
             ORDER BY sent_ms, rowid LIMIT ?6",
            params![peer.0 as i64, from.0 as i64, from.1, ms, id, limit as i64],
        )
    }

    fn select(
        &self,
        clauses: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Entry>, HistoryError> {
        let sql =
            format!("SELECT id, peer, outgoing, text, sent_ms, state FROM messages {clauses}");
        let mut st = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = st.query_map(params, entry).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The saved Olm state.
    pub(crate) fn load_olm(&self) -> Result<Option<Vec<u8>>, HistoryError> {
        self.conn
            .query_row("SELECT state FROM olm WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Replaces the saved Olm state.
    pub(crate) fn save_olm(&self, state: &[u8]) -> Result<(), HistoryError> {
        self.conn
            .execute(
                "INSERT INTO olm (id, state) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state",
                params![state],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// A row of `SELECT id, peer, outgoing, text, sent_ms, state`.
fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: r.get(0)?,
        peer: UserId(r.get::<_, i64>(1)? as u64),
        outgoing: r.get(2)?,
        text: r.get(3)?,
        sent_ms: r.get::<_, i64>(4)? as u64,
        state: r.get(5)?,
    })
}

/// A paging cursor as SQL parameters (both NULL for "from the latest").
fn split(before: Option<(u64, &str)>) -> (Option<i64>, Option<&str>) {
    match before {
        Some((ms, id)) => (Some(ms as i64), Some(id)),
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_go_back_without_gaps_or_repeats_and_search_finds_older_matches() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("messages.db")).unwrap();
        // 250 messages, some sharing a send time (the id breaks the tie by insertion).
        for i in 0..250u64 {
            h.record(&Entry {
                id: format!("m{i:03}"),
                peer: UserId(7),
                outgoing: i % 3 == 0,
                text: if i % 50 == 7 {
                    format!("Lunch {i}")
                } else {
                    format!("text {i}")
                },
                sent_ms: 1000 * (i / 2),
                state: "received".into(),
            })
            .unwrap();
        }
        let mut seen = Vec::new();
        let mut before: Option<(u64, String)> = None;
        loop {
            let page = h
                .page(
                    UserId(7),
                    before.as_ref().map(|(t, i)| (*t, i.as_str())),
                    100,
                )
                .unwrap();
            if page.is_empty() {
                break;
            }
            before = Some((page[0].sent_ms, page[0].id.clone()));
            let mut ids: Vec<String> = page.into_iter().map(|e| e.id).collect();
            ids.extend(seen);
            seen = ids;
        }
        let all: Vec<String> = (0..250).map(|i| format!("m{i:03}")).collect();
        assert_eq!(seen, all, "every message once, in order");
        // The newest "lunch" before m200 is m157; everything from it up to m200 is read.
        let hit = h
            .search(UserId(7), "LUNCH", Some((100_000, "m200")))
            .unwrap()
            .unwrap();
        assert_eq!(hit.id, "m157");
        let run = h
            .since(
                UserId(7),
                (hit.sent_ms, &hit.id),
                Some((100_000, "m200")),
                1000,
            )
            .unwrap();
        assert_eq!(run.first().map(|e| e.id.as_str()), Some("m157"));
        assert_eq!(run.last().map(|e| e.id.as_str()), Some("m199"));
        assert_eq!(run.len(), 43);
        assert!(h
            .search(UserId(7), "lunch", Some((3_000, "m007")))
            .unwrap()
            .is_none());
        assert!(
            h.search(UserId(8), "lunch", None).unwrap().is_none(),
            "another peer"
        );
    }

    #[test]
    fn a_conversation_in_order_with_delivery_state_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.db");
        {
            let h = History::open(&path).unwrap();
            for (i, out) in [(1u64, true), (2, false), (3, true)] {
                h.record(&Entry {
                    id: format!("m{i}"),
                    peer: UserId(7),
                    outgoing: out,
                    text: format!("text {i}"),
                    sent_ms: 1000 * i,
                    state: if out { "sent" } else { "received" }.into(),
                })
                .unwrap();
            }
            assert!(h.delivered("m1").unwrap());
            assert!(
                !h.delivered("m2").unwrap(),
                "incoming messages are not ours"
            );
            h.save_olm(b"state").unwrap();
        }
        let h = History::open(&path).unwrap();
        let conv = h.conversation(UserId(7), 10).unwrap();
        let view: Vec<(&str, &str)> = conv
            .iter()
            .map(|e| (e.id.as_str(), e.state.as_str()))
            .collect();
        assert_eq!(
            view,
            [("m1", "delivered"), ("m2", "received"), ("m3", "sent")]
        );
        assert_eq!(h.conversation(UserId(7), 2).unwrap()[0].id, "m2");
        assert_eq!(h.load_olm().unwrap().as_deref(), Some(&b"state"[..]));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
