//! What `prodserver` prints: names and texts come from the server, and from strangers before
//! it, so nothing printed may hold a raw control character that would drive the operator's
//! terminal, and JSON output stays JSON.

/// Prints a line with every control character but the layout's own (newline, tab) shown as an
/// escape: names and texts come from the server, and from strangers before it, and must not
/// drive the operator's terminal.
macro_rules! outln {
    ($($arg:tt)*) => {
        println!("{}", $crate::output::terminal_safe(&format!($($arg)*)))
    };
}

/// [`outln!`] without the newline.
macro_rules! out {
    ($($arg:tt)*) => {
        print!("{}", $crate::output::terminal_safe(&format!($($arg)*)))
    };
}

/// JSON text with every control character that JSON leaves raw (DEL, C1) written as a JSON
/// escape, so the output stays valid JSON and cannot drive a terminal.
pub(crate) fn json_safe(json: String) -> String {
    if !json.chars().any(|c| c.is_control() && c != '\n') {
        return json;
    }
    json.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `s` with every control character but newline and tab escaped.
pub(crate) fn terminal_safe(s: &str) -> String {
    s.split('\n')
        .map(|line| {
            line.split('\t')
                .map(|part| gossip_common::name::printable(part).into_owned())
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_printed_drives_a_terminal_and_json_stays_json() {
        let hostile = "evil\u{1b}]0;owned\u{7}\u{9b}2J";
        let table = terminal_safe(&format!("{hostile}\tok\nnext"));
        assert!(
            !table
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{table}"
        );
        assert!(table.contains("\tok\nnext"));
        let json =
            json_safe(serde_json::to_string(&serde_json::json!({ "name": hostile })).unwrap());
        assert!(!json.chars().any(char::is_control), "{json}");
        let back: serde_json::Value = serde_json::from_str(&json).expect("still JSON");
        assert_eq!(back["name"], hostile);
    }
}
