//! Framing: turning a TCP byte stream into one-XML-element frames, and back.
//!
//! A frame is exactly one top-level XML element. The decoder is an incremental scanner that
//! understands just enough XML to find where an element ends — tags, quoted attribute values,
//! comments, CDATA, processing instructions — and keeps its position between reads, so a frame
//! that arrives in a thousand pieces is scanned once, not a thousand times.
//!
//! It tells *incomplete* (wait for more bytes) from *invalid* the way mini-redis's `check` does,
//! and classifies invalid input the way xmpp-rs's `xmlstream` does:
//!
//! * a frame larger than the limit is skipped as it streams past (never buffered whole) and
//!   reported as a recoverable [`ProtocolError::FrameTooLarge`] — the connection goes on;
//! * bytes that make framing impossible (text outside an element, a stray end tag, `<!DOCTYPE`)
//!   are a fatal [`ProtocolError::Framing`] — the connection must close.
//!
//! Well-formedness *inside* a frame is the parser's job ([`crate::Message::decode`]), where an
//! error costs one message, not the connection.
//!
//! The encoder writes each frame followed by a newline, which keeps a captured stream readable.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::message::{Message, ProtocolError};

/// Default maximum frame size: 64 KiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// How much of an oversized frame is skipped before the peer is judged hostile.
const MAX_DISCARD_FACTOR: usize = 64;
/// Deepest nesting the framer follows; protocol messages are at most 3 deep.
const MAX_DEPTH: usize = 32;
/// Longest element name the framer accepts.
const MAX_NAME: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Character data (or whitespace between frames).
    Text,
    /// Just saw `<`.
    Lt,
    /// Inside `<name …`; tracks whether the name is still being read, quoting, and whether
    /// the last significant byte was `/`.
    StartTag {
        in_name: bool,
        quote: Option<u8>,
        slash: bool,
    },
    /// Inside `</name …`; `in_name` while the name is still being read.
    EndTag { in_name: bool },
    /// Inside `<? … ?>`; `q` = previous byte was `?`.
    Pi { q: bool },
    /// Just saw `<!`; the next bytes decide comment, CDATA or refusal.
    Bang,
    /// Inside `<!-- … -->`; counts trailing dashes.
    Comment { dashes: u8 },
    /// Inside `<![CDATA[ … ]]>`; counts trailing brackets.
    Cdata { brackets: u8 },
}

enum Scan {
    Incomplete,
    /// A complete top-level construct ends at this offset; `root` says whether it was an element
    /// (a frame) or only a comment or processing instruction to skip.
    Complete {
        end: usize,
        root: bool,
    },
}

/// tokio codec for XML frames.
///
/// `Item` is `Result<Bytes, ProtocolError>`: an `Err` item is a recoverable problem with one
/// frame (it was too large), while the decoder's own `Err` is fatal. (tokio-util ends a framed
/// stream after the decoder's first error, so recoverable problems must travel as items.)
#[derive(Debug)]
pub struct XmlFrameCodec {
    max_frame: usize,
    pos: usize,
    /// Names of the open elements: an end tag must close the innermost one, or the frame
    /// boundary is unknowable and the stream cannot be framed any further.
    open: Vec<Vec<u8>>,
    /// Name of the tag being read.
    name: Vec<u8>,
    in_root: bool,
    state: State,
    /// Bytes of the current oversized frame already dropped, when skipping one.
    discarded: Option<usize>,
}

impl Default for XmlFrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl XmlFrameCodec {
    /// A codec refusing frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        XmlFrameCodec {
            max_frame: max_frame.max(64),
            pos: 0,
            open: Vec::new(),
            name: Vec::new(),
            in_root: false,
            state: State::Text,
            discarded: None,
        }
    }

    /// The configured limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    fn reset(&mut self) {
        self.pos = 0;
        self.open.clear();
        self.in_root = false;
        self.state = State::Text;
    }

    fn framing(what: &str) -> ProtocolError {
        ProtocolError::Framing(what.to_owned())
    }

    fn push_name(&mut self, b: u8) -> Result<(), ProtocolError> {
        if self.name.len() >= MAX_NAME {
            return Err(Self::framing("element name too long"));
        }
        self.name.push(b);
        Ok(())
    }

    fn scan(&mut self, buf: &[u8]) -> Result<Scan, ProtocolError> {
        while self.pos < buf.len() {
            let depth = self.open.len();
            let b = buf[self.pos];
            match self.state {
                State::Text => {
                    if depth > 0 {
                        // Fast path through character data.
                        match buf[self.pos..].iter().position(|&c| c == b'<') {
                            Some(off) => {
                                self.pos += off + 1;
                                self.state = State::Lt;
                            }
                            None => self.pos = buf.len(),
                        }
                        continue;
                    }
                    if b == b'<' {
                        self.state = State::Lt;
                    } else if !b.is_ascii_whitespace() {
                        return Err(Self::framing("text outside any element"));
                    }
                }
                State::Lt => {
                    self.name.clear();
                    self.state = match b {
                        b'/' => State::EndTag { in_name: true },
                        b'?' => State::Pi { q: false },
                        b'!' => State::Bang,
                        b'>' | b'<' | b'=' | b'"' | b'\'' => {
                            return Err(Self::framing("invalid character after '<'"))
                        }
                        c if c.is_ascii_whitespace() => {
                            return Err(Self::framing("whitespace after '<'"))
                        }
                        _ => {
                            if depth == 0 {
                                self.in_root = true;
                            }
                            self.push_name(b)?;
                            State::StartTag {
                                in_name: true,
                                quote: None,
                                slash: false,
                            }
                        }
                    };
                }
                State::StartTag {
                    in_name: true,
                    quote,
                    slash,
                } if !b.is_ascii_whitespace() && !matches!(b, b'/' | b'>') => {
                    self.push_name(b)?;
                    self.state = State::StartTag {
                        in_name: true,
                        quote,
                        slash,
                    };
                }
                State::StartTag { quote, slash, .. } => match quote {
                    Some(q) => {
                        if b == q {
                            self.state = State::StartTag {
                                in_name: false,
                                quote: None,
                                slash: false,
                            };
                        }
                    }
                    None => match b {
                        b'"' | b'\'' => {
                            self.state = State::StartTag {
                                in_name: false,
                                quote: Some(b),
                                slash: false,
                            }
                        }
                        b'>' => {
                            self.state = State::Text;
                            if !slash {
                                if depth >= MAX_DEPTH {
                                    return Err(Self::framing("elements nested too deeply"));
                                }
                                self.open.push(std::mem::take(&mut self.name));
                            } else if depth == 0 {
                                self.pos += 1;
                                return Ok(Scan::Complete {
                                    end: self.pos,
                                    root: true,
                                });
                            }
                        }
                        b'<' => return Err(Self::framing("'<' inside a tag")),
                        _ => {
                            self.state = State::StartTag {
                                in_name: false,
                                quote: None,
                                slash: b == b'/',
                            }
                        }
                    },
                },
                State::EndTag { in_name } => match b {
                    b'>' => {
                        match self.open.pop() {
                            None => return Err(Self::framing("end tag without a start tag")),
                            Some(open) if open != self.name => {
                                return Err(ProtocolError::Framing(format!(
                                    "end tag </{}> does not close <{}>",
                                    String::from_utf8_lossy(&self.name),
                                    String::from_utf8_lossy(&open)
                                )))
                            }
                            Some(_) => {}
                        }
                        self.state = State::Text;
                        if self.open.is_empty() {
                            self.pos += 1;
                            return Ok(Scan::Complete {
                                end: self.pos,
                                root: true,
                            });
                        }
                    }
                    b'<' => return Err(Self::framing("'<' inside an end tag")),
                    c if c.is_ascii_whitespace() => self.state = State::EndTag { in_name: false },
                    c if in_name => self.push_name(c)?,
                    _ => return Err(Self::framing("junk after an end tag's name")),
                },
                State::Pi { q } => {
                    if q && b == b'>' {
                        self.state = State::Text;
                        if depth == 0 {
                            self.pos += 1;
                            return Ok(Scan::Complete {
                                end: self.pos,
                                root: false,
                            });
                        }
                    } else {
                        self.state = State::Pi { q: b == b'?' };
                    }
                }
                State::Bang => {
                    let rest = &buf[self.pos..];
                    const COMMENT: &[u8] = b"--";
                    const CDATA: &[u8] = b"[CDATA[";
                    if rest.starts_with(COMMENT) {
                        self.state = State::Comment { dashes: 0 };
                        self.pos += COMMENT.len();
                    } else if rest.starts_with(CDATA) {
                        if depth == 0 {
                            return Err(Self::framing("CDATA outside any element"));
                        }
                        self.state = State::Cdata { brackets: 0 };
                        self.pos += CDATA.len();
                    } else if COMMENT.starts_with(rest) || CDATA.starts_with(rest) {
                        return Ok(Scan::Incomplete);
                    } else {
                        return Err(Self::framing(
                            "DOCTYPE and other <! declarations are refused",
                        ));
                    }
                    continue;
                }
                State::Comment { dashes } => {
                    if b == b'-' {
                        self.state = State::Comment {
                            dashes: (dashes + 1).min(2),
                        };
                    } else if b == b'>' && dashes == 2 {
                        self.state = State::Text;
                        if depth == 0 {
                            self.pos += 1;
                            return Ok(Scan::Complete {
                                end: self.pos,
                                root: false,
                            });
                        }
                    } else {
                        self.state = State::Comment { dashes: 0 };
                    }
                }
                State::Cdata { brackets } => {
                    if b == b']' {
                        self.state = State::Cdata {
                            brackets: (brackets + 1).min(2),
                        };
                    } else if b == b'>' && brackets == 2 {
                        self.state = State::Text;
                    } else {
                        self.state = State::Cdata { brackets: 0 };
                    }
                }
            }
            self.pos += 1;
        }
        Ok(Scan::Incomplete)
    }
}

impl Decoder for XmlFrameCodec {
    type Item = Result<Bytes, ProtocolError>;
    type Error = ProtocolError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, ProtocolError> {
        loop {
            if self.pos == 0 && self.discarded.is_none() {
                // Drop whitespace between frames so it never counts against a frame.
                let ws = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
                buf.advance(ws);
            }
            if buf.is_empty() {
                return Ok(None);
            }
            match self.scan(buf)? {
                Scan::Incomplete => {
                    if let Some(discarded) = self.discarded.as_mut() {
                        // Everything before `pos` is scanned and no longer needed.
                        *discarded += self.pos;
                        buf.advance(self.pos);
                        self.pos = 0;
                        if *discarded > self.max_frame * MAX_DISCARD_FACTOR {
                            return Err(Self::framing("oversized frame never ends"));
                        }
                    } else if buf.len() > self.max_frame {
                        self.discarded = Some(self.pos);
                        buf.advance(self.pos);
                        self.pos = 0;
                    }
                    return Ok(None);
                }
                Scan::Complete { end, root } => {
                    let frame = buf.split_to(end).freeze();
                    self.reset();
                    if let Some(discarded) = self.discarded.take() {
                        return Ok(Some(Err(ProtocolError::FrameTooLarge {
                            size: discarded + end,
                            max: self.max_frame,
                        })));
                    }
                    if frame.len() > self.max_frame {
                        return Ok(Some(Err(ProtocolError::FrameTooLarge {
                            size: frame.len(),
                            max: self.max_frame,
                        })));
                    }
                    if root {
                        return Ok(Some(Ok(frame)));
                    }
                    // A top-level comment or <?xml …?> declaration: skip it.
                }
            }
        }
    }
}

impl Encoder<Bytes> for XmlFrameCodec {
    type Error = ProtocolError;

    /// Writes an already-encoded frame (used to fan one encoded push out to many clients).
    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        dst.reserve(frame.len() + 1);
        dst.put(frame);
        dst.put_u8(b'\n');
        Ok(())
    }
}

impl Encoder<&Message> for XmlFrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let xml = msg.to_xml();
        dst.reserve(xml.len() + 1);
        dst.put(xml.as_bytes());
        dst.put_u8(b'\n');
        Ok(())
    }
}

/// What ends every frame on the wire.
pub const FRAME_END: &[u8] = b"\n";

/// A message encoded once as a frame's contents (without its end): what a server queues,
/// shares between every recipient of a push, and writes with [`write_frames`]. The header's
/// `ipaddr` is left unspecified, as every server-built message has it.
pub fn encode_frame(body: impl Into<crate::message::Body>) -> Bytes {
    Bytes::from(Message::new(std::net::Ipv6Addr::UNSPECIFIED, body).to_xml())
}

/// Writes `frames`, each followed by [`FRAME_END`], in as few vectored writes as the stream
/// takes, then flushes (an encrypted stream holds what the socket did not take at once until
/// flushed). The one way a server writes frames outside the [`Encoder`]s.
pub async fn write_frames(
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    frames: &[impl AsRef<[u8]>],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut slices: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(frames.len() * 2);
    for f in frames {
        slices.push(std::io::IoSlice::new(f.as_ref()));
        slices.push(std::io::IoSlice::new(FRAME_END));
    }
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let n = wr.write_vectored(bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut bufs, n);
    }
    wr.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(codec: &mut XmlFrameCodec, input: &[u8]) -> Vec<Result<Bytes, String>> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(item) = codec.decode(&mut buf).expect("no fatal error") {
            out.push(item.map_err(|e| e.to_string()));
        }
        out
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut c = XmlFrameCodec::default();
        let got = frames(
            &mut c,
            b"<?xml version=\"1.0\"?>\n<a x='>'><b/>t</a>  <!-- hi --><c/>\n<d><![CDATA[</d>]]></d>",
        );
        let got: Vec<_> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            got,
            vec![
                Bytes::from_static(b"<a x='>'><b/>t</a>"),
                Bytes::from_static(b"<c/>"),
                Bytes::from_static(b"<d><![CDATA[</d>]]></d>"),
            ]
        );
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        let input = b"<m a=\"1\"><x>1 &lt; 2</x><!-- c > --><y/></m><n/>";
        let mut whole = XmlFrameCodec::default();
        let expected = frames(&mut whole, input);
        let mut c = XmlFrameCodec::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in input.iter() {
            buf.put_u8(b);
            while let Some(item) = c.decode(&mut buf).unwrap() {
                got.push(item.map_err(|e| e.to_string()));
            }
        }
        assert_eq!(got, expected);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn oversized_frame_is_skipped_and_the_stream_goes_on() {
        let mut c = XmlFrameCodec::new(100);
        let big = format!("<big>{}</big><ok/>", "x".repeat(1000));
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        // Feed in chunks so the decoder must discard while streaming.
        for chunk in big.as_bytes().chunks(37) {
            buf.extend_from_slice(chunk);
            while let Some(item) = c.decode(&mut buf).unwrap() {
                got.push(item);
            }
            assert!(buf.len() <= 100 + 37, "buffered {} bytes", buf.len());
        }
        assert_eq!(got.len(), 2);
        assert!(matches!(
            got[0],
            Err(ProtocolError::FrameTooLarge {
                size: 1011,
                max: 100
            })
        ));
        assert_eq!(got[1].as_ref().unwrap(), &Bytes::from_static(b"<ok/>"));
    }

    #[test]
    fn garbage_is_fatal() {
        for bad in [
            &b"hello"[..],
            b"</a>",
            b"<!DOCTYPE x [<!ENTITY a 'b'>]><x/>",
            b"< a/>",
        ] {
            let mut c = XmlFrameCodec::default();
            let mut buf = BytesMut::from(bad);
            let err = loop {
                match c.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("{:?} accepted", String::from_utf8_lossy(bad)),
                    Err(e) => break e,
                }
            };
            assert!(err.is_fatal(), "{err}");
        }
    }

    #[test]
    fn endless_oversized_frame_is_eventually_fatal() {
        let mut c = XmlFrameCodec::new(64);
        let mut buf = BytesMut::from(&b"<a>"[..]);
        let mut result = Ok(None);
        for _ in 0..1000 {
            buf.extend_from_slice(&[b'x'; 64]);
            result = c.decode(&mut buf);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(ProtocolError::Framing(_))));
    }
}
