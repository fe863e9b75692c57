//! Names as they travel between servers and reach logs, tables and other servers' lists. A
//! server's host is a DNS name or an IP literal, at most [`MAX_HOST`] bytes: never a control
//! character (an operator's terminal must not be driven by a stranger's `addServer`), never a
//! newline (it would break one-frame-per-line framing downstream). Messages naming a host that
//! is not one are refused at decode ([`crate::Message::decode`]) as `malformed`.

use std::borrow::Cow;

/// The longest host name: DNS's limit on a name's text.
pub const MAX_HOST: usize = 253;

/// The longest label of a DNS name.
const MAX_LABEL: usize = 63;

/// Whether `s` is a host: an IPv4 or IPv6 literal, or a DNS name of letters, digits, `-` and
/// `_` in dot-separated labels of 1 to 63 bytes that neither start nor end with `-`.
pub fn is_host(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_HOST {
        return false;
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// `s` fit for a terminal or a log line: every control character (and DEL) shown as a
/// `\u{…}` escape, everything else as it is.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hosts_and_not_hosts() {
        for ok in [
            "localhost",
            "a",
            "gossip.example.org",
            "s-1.x_y.example",
            "127.0.0.1",
            "::1",
            "2001:db8::7",
        ] {
            assert!(is_host(ok), "{ok}");
        }
        let long_label = format!("{}.example", "a".repeat(64));
        let long_name = ["a"; 130].join(".");
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "-a",
            "a-",
            "a b",
            "a\u{1b}]0;owned\u{7}",
            "a\nb",
            "a\0",
            "a/b",
            "a:1",
            "<x>",
            "é.example",
            &long_label,
            &long_name,
        ] {
            assert!(!is_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn printable_escapes_only_control_characters() {
        assert!(matches!(printable("plain.example"), Cow::Borrowed(_)));
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\u{a}");
        assert_eq!(printable("é"), "é");
    }

    proptest! {
        #[test]
        fn a_host_never_holds_a_control_character_or_markup(s in "\\PC*|[\\x00-\\x7f]{0,300}") {
            if is_host(&s) {
                prop_assert!(s.len() <= MAX_HOST);
                prop_assert!(!s.chars().any(|c| c.is_control() || "<>&\"' /\n".contains(c)));
            }
            prop_assert!(!printable(&s).chars().any(char::is_control));
        }
    }
}
