//! The binary form of a reconciliation round's entries, carried base64-encoded as the text of
//! a `reconcile` message. Binary because the entries are mostly 64-bit fingerprints and
//! UserIDs: as XML attributes they would be three times larger, and the point of the protocol
//! is to move few bytes.
//!
//! Every length is checked against the bytes left before anything is allocated, so a frame
//! can never make the decoder allocate more than a small multiple of its own size.

use gossip_common::message::EcEntry;
use gossip_common::{EventCount, UserId};

use super::{Entry, Node, FANOUT};

/// Why a round's bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The bytes end inside an entry.
    #[error("entry cut short")]
    Truncated,
    /// An entry kind this version does not know.
    #[error("unknown entry kind {0}")]
    UnknownKind(u8),
    /// A range outside the key space (level over 16, or a prefix too long for its level).
    #[error("invalid range (level {level}, prefix {prefix:#x})")]
    BadNode {
        /// Level sent.
        level: u8,
        /// Prefix sent.
        prefix: u64,
    },
    /// A varint longer than 64 bits.
    #[error("integer overflow")]
    Overflow,
    /// Not base64.
    #[error("not base64")]
    Base64,
}

const FINGERPRINT: u8 = 0;
const CHILDREN: u8 = 1;
const ITEMS: u8 = 2;
const WANT: u8 = 3;
const WANT_ALL: u8 = 4;

/// Appends `entry` to `out`.
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    match entry {
        Entry::Fingerprint { node, fp, count } => {
            out.push(FINGERPRINT);
            put_node(out, *node);
            out.extend_from_slice(&fp.to_le_bytes());
            put_varint(out, *count);
        }
        Entry::Children { node, children } => {
            out.push(CHILDREN);
            put_node(out, *node);
            for (fp, count) in children.iter() {
                out.extend_from_slice(&fp.to_le_bytes());
                put_varint(out, *count);
            }
        }
        Entry::Items { node, users, lists } => {
            out.push(ITEMS);
            put_node(out, *node);
            for list in [users, lists] {
                put_varint(out, list.len() as u64);
                for e in list {
                    out.extend_from_slice(&e.uid.0.to_le_bytes());
                    put_varint(out, u64::from(e.count) << 1 | u64::from(e.rollover != 0));
                }
            }
        }
        Entry::Want { node, users, lists } => {
            out.push(WANT);
            put_node(out, *node);
            for list in [users, lists] {
                put_varint(out, list.len() as u64);
                for uid in list {
                    out.extend_from_slice(&uid.0.to_le_bytes());
                }
            }
        }
        Entry::WantAll { node } => {
            out.push(WANT_ALL);
            put_node(out, *node);
        }
    }
}

/// `entries`, encoded into chunks of at most `budget` bytes each. Entries are never split: the
/// largest one an honest node sends is an item list of a range it holds at most
/// [`super::LIST_AT`] items in, about a kilobyte.
pub fn encode_chunks(entries: &[Entry], budget: usize) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut cur = Vec::new();
    let mut one = Vec::new();
    for entry in entries {
        one.clear();
        encode_entry(entry, &mut one);
        if !cur.is_empty() && cur.len() + one.len() > budget {
            chunks.push(std::mem::take(&mut cur));
        }
        cur.extend_from_slice(&one);
    }
    if !cur.is_empty() {
        chunks.push(cur);
    }
    chunks
}

/// Decodes one chunk.
pub fn decode_entries(mut b: &[u8]) -> Result<Vec<Entry>, WireError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let kind = take_u8(&mut b)?;
        let node = take_node(&mut b)?;
        out.push(match kind {
            FINGERPRINT => Entry::Fingerprint {
                node,
                fp: take_u64(&mut b)?,
                count: take_varint(&mut b)?,
            },
            CHILDREN => {
                let mut children = Box::new([(0, 0); FANOUT]);
                for c in children.iter_mut() {
                    *c = (take_u64(&mut b)?, take_varint(&mut b)?);
                }
                Entry::Children { node, children }
            }
            ITEMS => {
                let mut lists = [Vec::new(), Vec::new()];
                for list in &mut lists {
                    // Each item is at least 9 bytes: a count beyond that is a lie.
                    let n = bounded_len(&mut b, 9)?;
                    list.reserve(n);
                    for _ in 0..n {
                        let uid = UserId(take_u64(&mut b)?);
                        let ec = take_varint(&mut b)?;
                        let count = u32::try_from(ec >> 1).map_err(|_| WireError::Overflow)?;
                        list.push(EcEntry::new(uid, EventCount::new(count, ec & 1 == 1)));
                    }
                }
                let [users, lists] = lists;
                Entry::Items { node, users, lists }
            }
            WANT => {
                let mut lists = [Vec::new(), Vec::new()];
                for list in &mut lists {
                    let n = bounded_len(&mut b, 8)?;
                    list.reserve(n);
                    for _ in 0..n {
                        list.push(UserId(take_u64(&mut b)?));
                    }
                }
                let [users, lists] = lists;
                Entry::Want { node, users, lists }
            }
            WANT_ALL => Entry::WantAll { node },
            other => return Err(WireError::UnknownKind(other)),
        });
    }
    Ok(out)
}

/// Base64 (standard alphabet, padded) of a chunk, for the message text.
pub fn to_text(chunk: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(chunk)
}

/// The chunk a message text carries.
pub fn from_text(text: &str) -> Result<Vec<u8>, WireError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| WireError::Base64)
}

fn put_node(out: &mut Vec<u8>, node: Node) {
    out.push(node.level);
    put_varint(out, node.prefix);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_u8(b: &mut &[u8]) -> Result<u8, WireError> {
    let (&x, rest) = b.split_first().ok_or(WireError::Truncated)?;
    *b = rest;
    Ok(x)
}

fn take_u64(b: &mut &[u8]) -> Result<u64, WireError> {
    if b.len() < 8 {
        return Err(WireError::Truncated);
    }
    let (x, rest) = b.split_at(8);
    *b = rest;
    Ok(u64::from_le_bytes(x.try_into().expect("8 bytes")))
}

fn take_varint(b: &mut &[u8]) -> Result<u64, WireError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = take_u8(b)?;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(WireError::Overflow);
        }
        v |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(WireError::Overflow)
}

fn take_node(b: &mut &[u8]) -> Result<Node, WireError> {
    let level = take_u8(b)?;
    let prefix = take_varint(b)?;
    Node::new(level, prefix).ok_or(WireError::BadNode { level, prefix })
}

/// A list length, refused if the bytes left cannot hold that many items of `min` bytes.
fn bounded_len(b: &mut &[u8], min: usize) -> Result<usize, WireError> {
    let n = take_varint(b)?;
    if n > (b.len() / min) as u64 {
        return Err(WireError::Truncated);
    }
    Ok(n as usize)
}
