//! Field encodings shared by the record kinds: the `<EventCount rollover="…">` element,
//! UserID fields, and the rule that a known field appears at most once.

use super::RecordError;
use crate::event_count::EventCount;
use crate::user_id::UserId;
use crate::xml::Field;

pub(super) fn push_event_count(out: &mut String, ec: EventCount) {
    out.push_str("<EventCount rollover=\"");
    out.push(if ec.rollover { '1' } else { '0' });
    out.push_str("\">");
    out.push_str(&ec.count.to_string());
    out.push_str("</EventCount>");
}

pub(super) fn parse_event_count(kind: &'static str, f: &Field) -> Result<EventCount, RecordError> {
    let invalid = |detail: String| RecordError::InvalidField {
        kind,
        field: "EventCount".into(),
        detail,
    };
    let count = f
        .text
        .trim()
        .parse::<u32>()
        .map_err(|e| invalid(e.to_string()))?;
    let rollover = match f.attr("rollover").unwrap_or("0") {
        "0" | "false" => false,
        "1" | "true" => true,
        other => return Err(invalid(format!("rollover must be 0 or 1, not {other:?}"))),
    };
    Ok(EventCount::new(count, rollover))
}

pub(super) fn parse_uid(
    kind: &'static str,
    field: &str,
    text: &str,
) -> Result<UserId, RecordError> {
    text.parse()
        .map_err(|e: std::num::ParseIntError| RecordError::InvalidField {
            kind,
            field: field.into(),
            detail: e.to_string(),
        })
}

/// Fills `slot` once; a second occurrence of a known field is an error, because two servers
/// could otherwise read different values out of the same signed bytes.
pub(super) fn once<T>(
    slot: &mut Option<T>,
    kind: &'static str,
    name: &str,
    value: T,
) -> Result<(), RecordError> {
    if slot.replace(value).is_some() {
        return Err(RecordError::InvalidField {
            kind,
            field: name.into(),
            detail: "appears twice".into(),
        });
    }
    Ok(())
}
