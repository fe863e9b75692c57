//! The `.udb` / `.cl` datafile format: one record per line, append-only, checksummed.
//!
//! ```text
//! #gossip-udb v1
//! 1f2e3d4c 5299989643264 3 0 9a8b…(128 hex) <UserInfo>…</UserInfo>
//! ```
//!
//! Each entry line is `crc32 uid event_count rollover signature record_xml`, the spec's
//! "uid event_count rollover record" plus the owner's signature (without it the record could
//! not be re-verified or forwarded) and a CRC-32 of everything after the first space, so a torn
//! or corrupted line is detected. Record XML never contains raw control characters (see
//! `gossip_common::xml`), so a newline always ends an entry.
//!
//! Files only grow: a new version of a record is appended and the old line becomes garbage,
//! which [`write_compacted`] removes by writing the live lines to a temporary file, syncing it
//! and renaming it over the original.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use gossip_common::{EventCount, Record, Signature, Signed, UserId};

/// One parsed entry line.
#[derive(Debug)]
pub(crate) struct Line<'a> {
    pub(crate) uid: UserId,
    pub(crate) event_count: EventCount,
    pub(crate) signature: Signature,
    pub(crate) raw: &'a str,
}

/// Encodes one entry, newline included.
pub(crate) fn encode_line<T: Record>(uid: UserId, ec: EventCount, record: &Signed<T>) -> Vec<u8> {
    let body = format!(
        "{} {} {} {} {}",
        uid,
        ec.count,
        u8::from(ec.rollover),
        record.signature(),
        record.raw()
    );
    let crc = crc32fast::hash(body.as_bytes());
    let mut line = Vec::with_capacity(body.len() + 10);
    line.extend_from_slice(format!("{crc:08x} ").as_bytes());
    line.extend_from_slice(body.as_bytes());
    line.push(b'\n');
    line
}

/// Decodes one entry line (without its newline); `None` when the checksum or shape is wrong.
pub(crate) fn decode_line(line: &[u8]) -> Option<Line<'_>> {
    let text = std::str::from_utf8(line).ok()?;
    let (crc, body) = text.split_once(' ')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) {
        return None;
    }
    let mut parts = body.splitn(5, ' ');
    let uid = parts.next()?.parse().ok()?;
    let count = parts.next()?.parse().ok()?;
    let rollover = match parts.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    let signature = parts.next()?.parse().ok()?;
    let raw = parts.next()?;
    Some(Line {
        uid,
        event_count: EventCount::new(count, rollover),
        signature,
        raw,
    })
}

/// What recovery found in a datafile.
#[derive(Debug, Default)]
pub(crate) struct RecoveryReport {
    /// Complete, checksummed entries.
    pub(crate) entries: usize,
    /// Bytes cut off the end: a last entry torn by a crash mid-write.
    pub(crate) torn_tail_bytes: u64,
    /// Complete lines in the middle of the file whose checksum failed; skipped.
    pub(crate) corrupt: usize,
    /// File length after recovery.
    pub(crate) len: u64,
}

/// Reads every entry of `path` (creating it with `header` if absent), calling `each` for every
/// valid one in file order. A torn last line is truncated away so appends start on a clean
/// line; corrupt lines elsewhere are skipped and counted.
pub(crate) fn recover(
    path: &Path,
    header: &str,
    mut each: impl FnMut(Line<'_>, usize),
) -> io::Result<RecoveryReport> {
    let mut report = RecoveryReport::default();
    if !path.exists() {
        let mut f = File::create(path)?;
        f.write_all(header.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        sync_dir(path)?;
    }
    let file = File::open(path)?;
    let total = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut line = Vec::with_capacity(4096);
    let mut last_bad_at: Option<u64> = None;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            // Torn tail: the crash happened before the newline was written.
            report.torn_tail_bytes = n as u64;
            break;
        }
        let content = &line[..n - 1];
        if content.starts_with(b"#") || content.is_empty() {
            // Header or comment.
        } else if let Some(entry) = decode_line(content) {
            each(entry, n);
            report.entries += 1;
            last_bad_at = None;
        } else {
            report.corrupt += 1;
            last_bad_at = Some(offset);
        }
        offset += n as u64;
    }
    // A bad *last* line is a torn write too (e.g. the newline made it to disk, part of the
    // line did not): cut it, like a line without a newline.
    let mut keep = offset;
    if let Some(at) = last_bad_at {
        report.corrupt -= 1;
        report.torn_tail_bytes += offset - at;
        keep = at;
    }
    if keep < total {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(keep)?;
        f.sync_all()?;
    }
    report.len = keep;
    Ok(report)
}

/// Writes a new datafile `path` (`header` plus `lines`) through a temporary file, so a crash
/// never leaves a half-written datafile behind.
pub(crate) fn write_new(
    path: &Path,
    header: &str,
    lines: impl Iterator<Item = Vec<u8>>,
) -> io::Result<u64> {
    write_via_temp(path, "new.tmp", header, lines)
}

/// Replaces `path` by `header` plus `lines`, crash-safely: temp file, fsync, rename, fsync dir.
/// A crash at any point leaves either the old file or the new one, never a mix.
pub(crate) fn write_compacted(
    path: &Path,
    header: &str,
    lines: impl Iterator<Item = impl AsRef<[u8]>>,
) -> io::Result<u64> {
    write_via_temp(path, "compact.tmp", header, lines)
}

/// Writes `header` and `lines` to `path` with extension `tmp_ext`, syncs it, renames it over
/// `path` and syncs the directory. Returns the new file's length.
fn write_via_temp(
    path: &Path,
    tmp_ext: &str,
    header: &str,
    lines: impl Iterator<Item = impl AsRef<[u8]>>,
) -> io::Result<u64> {
    let tmp = path.with_extension(tmp_ext);
    let mut w = io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    w.write_all(header.as_bytes())?;
    w.write_all(b"\n")?;
    for line in lines {
        w.write_all(line.as_ref())?;
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    let len = f.metadata()?.len();
    drop(f);
    fs::rename(&tmp, path)?;
    sync_dir(path)?;
    Ok(len)
}

/// Opens a datafile for appending at its end.
pub(crate) fn open_append(path: &Path) -> io::Result<File> {
    let mut f = OpenOptions::new().read(true).append(true).open(path)?;
    f.seek(SeekFrom::End(0))?;
    Ok(f)
}

/// Makes a rename or create durable by syncing the containing directory.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

/// Reads a whole file (small helper for tests and diagnostics).
#[allow(dead_code)]
pub(crate) fn read_all(path: &Path) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    File::open(path)?.read_to_end(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossip_common::{Keypair, UserInfo};

    fn record(key: &Keypair, uid: u64, count: u32) -> Signed<UserInfo> {
        let mut u = UserInfo::new(UserId(uid), key.public());
        u.event_count = EventCount::new(count, false);
        u.nick_name = format!("n{uid}");
        Signed::sign(u, key).unwrap()
    }

    fn collect(path: &Path) -> (Vec<(u64, u32)>, RecoveryReport) {
        let mut seen = Vec::new();
        let report = recover(path, "#test v1", |l, _| {
            seen.push((l.uid.0, l.event_count.count))
        })
        .unwrap();
        (seen, report)
    }

    #[test]
    fn line_round_trip_and_checksum() {
        let k = Keypair::generate();
        let r = record(&k, 9, 4);
        let line = encode_line(UserId(9), EventCount::new(4, false), &r);
        let parsed = decode_line(&line[..line.len() - 1]).unwrap();
        assert_eq!(parsed.raw, r.raw());
        assert_eq!(&parsed.signature, r.signature());
        let mut bad = line.clone();
        bad[20] ^= 1;
        assert!(decode_line(&bad[..bad.len() - 1]).is_none());
    }

    #[test]
    fn truncated_last_entry_loses_no_complete_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.udb");
        let k = Keypair::generate();
        let mut bytes = b"#test v1\n".to_vec();
        for i in 0..10 {
            bytes.extend(encode_line(
                UserId(i),
                EventCount::new(1, false),
                &record(&k, i, 1),
            ));
        }
        let complete = bytes.len();
        let last = encode_line(UserId(99), EventCount::new(1, false), &record(&k, 99, 1));
        // Every possible tear point of the last entry.
        for cut in 0..last.len() {
            let mut file = bytes.clone();
            file.extend_from_slice(&last[..cut]);
            fs::write(&path, &file).unwrap();
            let (seen, report) = collect(&path);
            assert_eq!(seen.len(), 10, "cut at {cut}");
            assert_eq!(report.len as usize, complete, "cut at {cut}");
            assert_eq!(fs::metadata(&path).unwrap().len() as usize, complete);
        }
    }

    #[test]
    fn corrupt_middle_line_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.udb");
        let k = Keypair::generate();
        let mut file = b"#test v1\n".to_vec();
        for i in 0..3 {
            let mut line = encode_line(UserId(i), EventCount::new(1, false), &record(&k, i, 1));
            if i == 1 {
                line[15] ^= 0x20;
            }
            file.extend(line);
        }
        fs::write(&path, &file).unwrap();
        let (seen, report) = collect(&path);
        assert_eq!(seen, vec![(0, 1), (2, 1)]);
        assert_eq!(report.corrupt, 1);
        assert_eq!(report.torn_tail_bytes, 0);
    }

    #[test]
    fn compaction_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.udb");
        let k = Keypair::generate();
        let lines: Vec<Vec<u8>> = (0..5)
            .map(|i| encode_line(UserId(i), EventCount::new(2, false), &record(&k, i, 2)))
            .collect();
        write_compacted(&path, "#test v1", lines.iter().map(Vec::as_slice)).unwrap();
        let (seen, _) = collect(&path);
        assert_eq!(seen.len(), 5);
        assert!(!path.with_extension("compact.tmp").exists());
    }
}
