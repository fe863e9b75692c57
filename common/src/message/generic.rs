//! The spec's generic view of a message ([`GenericMessage`]): a multimap of tags to data, for
//! any well-formed frame, known message type or not. Kept apart from the typed messages because
//! nothing in the server or client uses it (only a round-trip test does).

use quick_xml::events::Event;
use quick_xml::Reader;

use super::ProtocolError;

/// The spec's generic view of a parsed message: special keys `msgtype`, `ipaddr`, `version`,
/// then one `(tag, data)` pair per child element, in order (a multimap: tags may repeat).
/// Children with structure of their own keep their inner XML as the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericMessage {
    /// Message type.
    pub msgtype: String,
    /// `version` attribute as sent.
    pub version: Option<String>,
    /// `ipaddr` attribute as sent.
    pub ipaddr: Option<String>,
    /// Child elements as (tag, data).
    pub fields: Vec<(String, String)>,
}

impl GenericMessage {
    /// Parses any well-formed frame, known message type or not.
    pub fn parse(frame: &[u8]) -> Result<GenericMessage, ProtocolError> {
        let xml =
            std::str::from_utf8(frame).map_err(|e| ProtocolError::BadUtf8(e.valid_up_to()))?;
        let mut reader = Reader::from_str(xml);
        let mut out: Option<GenericMessage> = None;
        let mut depth = 0usize;
        let mut child: Option<(String, usize)> = None; // (tag, start offset of inner content)
        loop {
            let before = reader.buffer_position() as usize;
            let event = reader
                .read_event()
                .map_err(|e| ProtocolError::MalformedXml(e.to_string()))?;
            let after = reader.buffer_position() as usize;
            match event {
                Event::Start(start) | Event::Empty(start) if depth == 0 => {
                    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                    let attr = |k: &[u8]| {
                        start
                            .try_get_attribute(k)
                            .ok()
                            .flatten()
                            .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
                    };
                    out = Some(GenericMessage {
                        msgtype: name,
                        version: attr(b"version"),
                        ipaddr: attr(b"ipaddr"),
                        fields: Vec::new(),
                    });
                    if xml[before..after].ends_with("/>") {
                        break;
                    }
                    depth = 1;
                }
                Event::Start(start) => {
                    if depth == 1 {
                        child = Some((
                            String::from_utf8_lossy(start.name().as_ref()).into_owned(),
                            after,
                        ));
                    }
                    depth += 1;
                }
                Event::Empty(start) if depth == 1 => {
                    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                    let data = xml[before..after].to_owned();
                    let fields = &mut out.as_mut().expect("root seen").fields;
                    // Attributes-only children keep their markup so no data is lost.
                    fields.push((
                        name,
                        if data.contains('=') {
                            data
                        } else {
                            String::new()
                        },
                    ));
                }
                Event::End(_) => {
                    depth -= 1;
                    if depth == 1 {
                        if let Some((name, start)) = child.take() {
                            let inner = &xml[start..before];
                            let data = if inner.contains('<') {
                                inner.to_owned()
                            } else {
                                quick_xml::escape::unescape(inner)
                                    .map(|c| c.into_owned())
                                    .unwrap_or_else(|_| inner.to_owned())
                            };
                            out.as_mut().expect("root seen").fields.push((name, data));
                        }
                    } else if depth == 0 {
                        break;
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        out.ok_or_else(|| ProtocolError::MalformedXml("no element".into()))
    }

    /// The first value for `key` (`msgtype`, `ipaddr` and `version` included).
    pub fn get(&self, key: &str) -> Option<&str> {
        match key {
            "msgtype" => Some(&self.msgtype),
            "version" => self.version.as_deref(),
            "ipaddr" => self.ipaddr.as_deref(),
            _ => self
                .fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str()),
        }
    }
}
