//! Start-up: reading a datafile back (newest entry per UserID, the first entry's key bound,
//! torn tails and bad lines reported) and verifying every signature, in batches, before a
//! single record is served; and the batch check a sync batch gets.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use gossip_common::{Domain, PublicKey, Signature, Signed, UserId, Versioned};

use super::{datafile, BoundKey, Stored};

/// Records loaded from a datafile, keyed by owner.
pub(super) type Loaded<T> = Vec<(UserId, Stored<T>)>;

/// Reads a datafile, keeping the newest parseable entry per UserID.
pub(super) fn load<T: Versioned + BoundKey>(
    path: &Path,
    header: &str,
) -> io::Result<(Loaded<T>, datafile::RecoveryReport)> {
    let mut newest: HashMap<UserId, Stored<T>> = HashMap::new();
    // The key of a UserID's first entry is the bound one: entries are appended in the order
    // they were accepted, so a later entry with another key can only be an edit of the file.
    let mut bound: HashMap<UserId, Option<PublicKey>> = HashMap::new();
    let mut unparseable = 0usize;
    let mut rekeyed = 0usize;
    let report = datafile::recover(path, header, |line, len| {
        let record = match Signed::<T>::from_parts(line.raw, line.signature) {
            Ok(r) if r.owner() == line.uid && r.event_count() == line.event_count => r,
            _ => {
                unparseable += 1;
                return;
            }
        };
        let key = T::bound_key(record.value());
        if *bound.entry(line.uid).or_insert(key) != key {
            rekeyed += 1;
            return;
        }
        let replace = newest
            .get(&line.uid)
            .is_none_or(|s| line.event_count.is_newer_than(s.record.event_count()));
        if replace {
            newest.insert(
                line.uid,
                Stored {
                    record,
                    line_len: len as u64,
                },
            );
        }
    })?;
    if unparseable > 0 {
        tracing::warn!(path = %path.display(), unparseable, "datafile entries with a valid checksum but an unusable record were skipped");
    }
    if rekeyed > 0 {
        tracing::warn!(path = %path.display(), rekeyed, "datafile entries carrying a key other than the UserID's first one were skipped (file edited?)");
    }
    Ok((newest.into_iter().collect(), report))
}

/// Verifies loaded records with batch verification, in parallel on every core; returns the
/// good ones and how many were dropped.
pub(super) fn verify_all<T: Versioned>(
    items: Loaded<T>,
    key_of: impl Fn(&T) -> Option<PublicKey> + Sync,
) -> (Loaded<T>, usize) {
    const CHUNK: usize = 256;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = items.len().div_ceil(threads).max(CHUNK);
    let mut items = items;
    let mut parts: Vec<Loaded<T>> = Vec::new();
    while items.len() > per_thread {
        let rest = items.split_off(per_thread);
        parts.push(std::mem::replace(&mut items, rest));
    }
    parts.push(items);
    let key_of = &key_of;
    let results: Vec<(Loaded<T>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| {
                s.spawn(move || {
                    let mut good = Vec::with_capacity(part.len());
                    let mut bad = 0;
                    let mut part = part.into_iter().peekable();
                    while part.peek().is_some() {
                        let chunk: Vec<_> = part.by_ref().take(CHUNK).collect();
                        let keys: Vec<Option<PublicKey>> =
                            chunk.iter().map(|(_, s)| key_of(s.record.value())).collect();
                        let batch_ok = keys.iter().all(Option::is_some) && {
                            let items: Vec<_> = chunk
                                .iter()
                                .zip(&keys)
                                .map(|((_, s), k)| {
                                    (
                                        k.as_ref().expect("checked"),
                                        s.record.raw().as_bytes(),
                                        s.record.signature(),
                                    )
                                })
                                .collect();
                            PublicKey::verify_batch(&items).is_ok()
                        };
                        for ((uid, stored), key) in chunk.into_iter().zip(keys) {
                            let ok = batch_ok
                                || key.is_some_and(|k| stored.record.verify(&k).is_ok());
                            if ok {
                                good.push((uid, stored));
                            } else {
                                tracing::warn!(%uid, "stored record fails signature check; dropped (sync will fetch a good copy)");
                                bad += 1;
                            }
                        }
                    }
                    (good, bad)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("verifier thread panicked"))
            .collect()
    });
    let bad = results.iter().map(|r| r.1).sum();
    (results.into_iter().flat_map(|r| r.0).collect(), bad)
}

/// Which signatures verify against the given keys (`None`: no key, fails): batch verification
/// per chunk, one by one only in a chunk that fails. Takes (key, signed bytes, signature) of
/// records of any kind, so UserInfo and ContactList records of one batch are verified together:
/// the batch verifier decompresses each distinct key once, so a user's record and list sent side
/// by side share that work.
pub(super) fn verify_signed_bytes(
    domain: Domain,
    items: Vec<(Option<PublicKey>, &[u8], &Signature)>,
) -> Vec<bool> {
    // Large enough that a sync frame (about 100 records) is one batch; a chunk that fails is
    // checked one signature at a time, so a bad record costs its chunk's batch.
    const CHUNK: usize = 128;
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(CHUNK) {
        let batch: Option<Vec<_>> = chunk
            .iter()
            .map(|(k, raw, sig)| k.as_ref().map(|k| (k, *raw, *sig)))
            .collect();
        // The batch verifier checks record signatures (the only kind stored).
        if domain == Domain::Record && batch.is_some_and(|b| PublicKey::verify_batch(&b).is_ok()) {
            out.extend(std::iter::repeat_n(true, chunk.len()));
        } else {
            out.extend(
                chunk
                    .iter()
                    .map(|(k, raw, sig)| k.is_some_and(|k| k.verify(domain, raw, sig).is_ok())),
            );
        }
    }
    out
}
