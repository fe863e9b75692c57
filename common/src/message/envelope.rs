//! The first pass of decoding a frame: checks the whole frame is well-formed XML with exactly
//! one root and reads the envelope attributes (`version`, `ipaddr`, `id`, `re`) without touching
//! the body. It exists apart from the typed (serde) pass so that errors are precise: malformed
//! XML, unknown message type and unsupported version are told apart before any body is read.

use quick_xml::events::Event;
use quick_xml::Reader;

use super::{Header, ProtocolError, MSGTYPES, PROTOCOL_VERSION};

/// Deepest element nesting accepted; real messages are at most 3 deep.
const MAX_DEPTH: usize = 16;

/// Root element name and envelope attributes, read without touching the body.
pub(super) struct Envelope {
    pub(super) msgtype: String,
    version: Option<String>,
    ipaddr: Option<String>,
    id: Option<String>,
    re: Option<String>,
}

impl Envelope {
    /// Checks the whole frame is well-formed XML with exactly one root, and reads the envelope.
    pub(super) fn scan(xml: &str) -> Result<Envelope, ProtocolError> {
        let mut reader = Reader::from_str(xml);
        let mut depth = 0usize;
        let mut envelope: Option<Envelope> = None;
        let mut closed = false;
        let malformed = |reader: &Reader<&[u8]>, what: String| {
            ProtocolError::MalformedXml(format!("{what} (at byte {})", reader.buffer_position()))
        };
        loop {
            let event = reader
                .read_event()
                .map_err(|e| malformed(&reader, e.to_string()))?;
            match event {
                Event::Start(ref start) | Event::Empty(ref start) => {
                    if closed {
                        return Err(malformed(&reader, "second root element".into()));
                    }
                    if envelope.is_none() {
                        envelope = Some(Envelope::from_root(start)?);
                    }
                    if matches!(event, Event::Start(_)) {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return Err(malformed(&reader, "elements nested too deeply".into()));
                        }
                    } else if depth == 0 {
                        closed = true;
                    }
                }
                Event::End(_) => {
                    depth -= 1;
                    if depth == 0 {
                        closed = true;
                    }
                }
                Event::Text(ref t) if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) => {
                    return Err(malformed(&reader, "text outside the root element".into()));
                }
                Event::DocType(_) => {
                    return Err(malformed(&reader, "DOCTYPE is not allowed".into()));
                }
                Event::Eof => break,
                _ => {}
            }
        }
        match envelope {
            Some(e) if closed => Ok(e),
            Some(_) => Err(ProtocolError::MalformedXml(
                "root element not closed".into(),
            )),
            None => Err(ProtocolError::MalformedXml("no element".into())),
        }
    }

    fn from_root(start: &quick_xml::events::BytesStart<'_>) -> Result<Envelope, ProtocolError> {
        let msgtype = std::str::from_utf8(start.name().as_ref())
            .map_err(|e| ProtocolError::MalformedXml(e.to_string()))?
            .to_owned();
        if !MSGTYPES.contains(&msgtype.as_str()) {
            return Err(ProtocolError::UnknownMsgType(msgtype));
        }
        let mut env = Envelope {
            msgtype,
            version: None,
            ipaddr: None,
            id: None,
            re: None,
        };
        for attr in start.attributes() {
            let attr = attr.map_err(|e| ProtocolError::MalformedXml(e.to_string()))?;
            let value = || -> Result<String, ProtocolError> {
                Ok(attr
                    .unescape_value()
                    .map_err(|e| ProtocolError::MalformedXml(e.to_string()))?
                    .into_owned())
            };
            match attr.key.as_ref() {
                b"version" => env.version = Some(value()?),
                b"ipaddr" => env.ipaddr = Some(value()?),
                b"id" => env.id = Some(value()?),
                b"re" => env.re = Some(value()?),
                _ => {}
            }
        }
        Ok(env)
    }

    pub(super) fn header(&self) -> Result<Header, ProtocolError> {
        let missing = |field: &str| ProtocolError::MissingField {
            msgtype: self.msgtype.clone(),
            field: field.into(),
        };
        let invalid = |detail: String| ProtocolError::InvalidField {
            msgtype: self.msgtype.clone(),
            detail,
        };
        let version_text = self.version.as_deref().ok_or_else(|| missing("version"))?;
        // "1" or "1.x": the major version must match; minor revisions only add fields.
        let major = version_text.split('.').next().unwrap_or("");
        let version: u32 = major
            .parse()
            .map_err(|_| ProtocolError::UnsupportedVersion(version_text.to_owned()))?;
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion(version_text.to_owned()));
        }
        let ip_text = self.ipaddr.as_deref().ok_or_else(|| missing("ipaddr"))?;
        let ipaddr = ip_text
            .parse::<std::net::IpAddr>()
            .map(crate::user_id::to_ipv6)
            .map_err(|e| invalid(format!("ipaddr {ip_text:?}: {e}")))?;
        let num = |name: &str, v: &Option<String>| -> Result<Option<u64>, ProtocolError> {
            v.as_deref()
                .map(|s| {
                    s.parse::<u64>()
                        .map_err(|e| invalid(format!("{name} {s:?}: {e}")))
                })
                .transpose()
        };
        Ok(Header {
            version,
            ipaddr,
            id: num("id", &self.id)?,
            re: num("re", &self.re)?,
        })
    }
}
