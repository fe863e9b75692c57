//! Small XML helpers shared by records and messages: escaping for text we produce, and a
//! strict reader for the *flat* XML records (a root element holding only leaf elements).
//!
//! Records are signed over their exact bytes, so the encoder here is deliberately boring and
//! deterministic: fields in a fixed order, no whitespace, every markup character and every
//! control character escaped. Raw control characters therefore never appear in a record's bytes,
//! which lets datafiles keep one record per line and protects signatures from line-ending
//! normalisation by other XML tools.

use std::borrow::Cow;

use quick_xml::events::Event;
use quick_xml::Reader;

/// One leaf element of a flat record: `<name attr="v">text</name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Element name (case-sensitive, as the spec insists).
    pub name: String,
    /// Attributes in document order, unescaped.
    pub attrs: Vec<(String, String)>,
    /// Unescaped text content.
    pub text: String,
}

impl Field {
    /// The value of attribute `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Escapes text for element content or attribute values. Markup characters become entities and
/// control characters become character references, so the output is a single printable line.
pub fn escape(s: &str) -> Cow<'_, str> {
    let needs = |c: char| matches!(c, '&' | '<' | '>' | '"' | '\'') || c.is_control();
    if !s.chars().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {
                use std::fmt::Write;
                let _ = write!(out, "&#{};", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Writes `<name>escaped text</name>` to `out`.
pub fn push_leaf(out: &mut String, name: &str, text: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    out.push_str(&escape(text));
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// Whether escaped XML from [`escape`] only references characters XML 1.0 can carry: tab, line
/// feed and carriage return are fine, other C0 controls are not (even as `&#N;`). Records are
/// checked when built, rather than failing to parse on some other server later.
pub fn is_allowed_escaped(escaped: &str) -> bool {
    escaped.split("&#").skip(1).all(|rest| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        match digits.parse::<u32>() {
            Ok(n) => {
                n >= 0x20 && n != 0x7f || matches!(n, 9 | 10 | 13) || (0x80..0xa0).contains(&n)
            }
            Err(_) => true,
        }
    })
}

/// Parses a flat record `<root><a>..</a><b x="1">..</b></root>` into its leaf fields.
///
/// Errors are human-readable strings; callers wrap them in their own error type.
pub fn parse_flat(raw: &str, root: &str) -> Result<Vec<Field>, String> {
    let mut reader = Reader::from_str(raw);
    let mut fields = Vec::new();
    let mut seen_root = false;
    let mut current: Option<Field> = None;
    let mut ended = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.buffer_position()))?;
        if ended && !matches!(event, Event::Eof) {
            return Err("content after the root element".into());
        }
        match event {
            Event::Start(start) => {
                let name = utf8_name(start.name().as_ref())?;
                if !seen_root {
                    if name != root {
                        return Err(format!("root element is <{name}>, expected <{root}>"));
                    }
                    seen_root = true;
                } else if current.is_some() {
                    return Err(format!("field <{name}> is nested inside another field"));
                } else {
                    current = Some(Field {
                        name,
                        attrs: read_attrs(&start)?,
                        text: String::new(),
                    });
                }
            }
            Event::Empty(start) => {
                let name = utf8_name(start.name().as_ref())?;
                if !seen_root {
                    return Err(format!("root element <{name}> is empty"));
                }
                if current.is_some() {
                    return Err(format!("field <{name}> is nested inside another field"));
                }
                fields.push(Field {
                    name,
                    attrs: read_attrs(&start)?,
                    text: String::new(),
                });
            }
            Event::End(_) => match current.take() {
                Some(field) => fields.push(field),
                None => ended = true,
            },
            Event::Text(text) => {
                let text = text.unescape().map_err(|e| e.to_string())?;
                match current.as_mut() {
                    Some(field) => field.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err("text outside any field".into()),
                }
            }
            Event::CData(data) => match current.as_mut() {
                Some(field) => field
                    .text
                    .push_str(std::str::from_utf8(&data).map_err(|e| e.to_string())?),
                None => return Err("CDATA outside any field".into()),
            },
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) => {}
            Event::DocType(_) => return Err("DOCTYPE is not allowed".into()),
            Event::Eof => break,
        }
    }
    if !seen_root || !ended {
        return Err(format!("missing <{root}> element"));
    }
    Ok(fields)
}

fn utf8_name(name: &[u8]) -> Result<String, String> {
    std::str::from_utf8(name)
        .map(str::to_owned)
        .map_err(|e| e.to_string())
}

fn read_attrs(start: &quick_xml::events::BytesStart<'_>) -> Result<Vec<(String, String)>, String> {
    start
        .attributes()
        .map(|a| {
            let a = a.map_err(|e| e.to_string())?;
            let key = utf8_name(a.key.as_ref())?;
            let value = a.unescape_value().map_err(|e| e.to_string())?.into_owned();
            Ok((key, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trips_through_the_flat_reader() {
        let nasty = "a<b>&\"c'\n\t\r]]> ünï";
        let mut raw = String::from("<R>");
        push_leaf(&mut raw, "X", nasty);
        raw.push_str("</R>");
        assert!(!raw.chars().any(|c| c.is_control()), "{raw}");
        let fields = parse_flat(&raw, "R").unwrap();
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].text, nasty);
    }

    #[test]
    fn flat_reader_rejects_structure_it_does_not_expect() {
        assert!(parse_flat("<R><a><b/></a></R>", "R").is_err());
        assert!(parse_flat("<Q></Q>", "R").is_err());
        assert!(parse_flat("<R><a>x</a>", "R").is_err());
        assert!(parse_flat("<R>junk<a/></R>", "R").is_err());
        assert!(parse_flat("<R></R><R></R>", "R").is_err());
        assert!(parse_flat("<R><a>x</b></R>", "R").is_err());
        assert_eq!(
            parse_flat("<R><a k=\"v\"/></R>", "R").unwrap()[0].attr("k"),
            Some("v")
        );
    }
}
