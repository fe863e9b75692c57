//! Wrapping text to a pane's width, the way the terminal will draw it: by display width (a
//! CJK character or an emoji takes two columns), breaking after the last space that fits and
//! inside a word only when a word is wider than the pane. The model and the view both wrap
//! with this, so that "one page up" in the model is exactly one screen in the view.

use unicode_width::UnicodeWidthChar;

/// Columns `c` takes (control characters none: they are never drawn).
pub(crate) fn char_width(c: char) -> usize {
    c.width().unwrap_or(0)
}

/// Columns `s` takes.
#[cfg(test)]
pub(crate) fn str_width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// `text` as rows of at most `width` columns (at least one row, even for empty text).
pub(crate) fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut rows = Vec::new();
    for paragraph in text.split('\n') {
        wrap_paragraph(paragraph, width, &mut rows);
    }
    rows
}

fn wrap_paragraph(text: &str, width: usize, rows: &mut Vec<String>) {
    let mut row = String::new();
    let mut row_width = 0;
    // Where the row may be broken: the byte after its last space, and the width up to it.
    let mut last_space: Option<(usize, usize)> = None;
    for c in text.chars() {
        let w = char_width(c);
        if row_width + w > width && !row.is_empty() {
            if c == ' ' {
                // The break falls on this space: it ends the row and is not drawn.
                rows.push(std::mem::take(&mut row).trim_end().to_owned());
                row_width = 0;
                last_space = None;
                continue;
            }
            match last_space {
                Some((at, at_width)) => {
                    // Carry the unfinished word to the next row.
                    let rest = row.split_off(at);
                    rows.push(row.trim_end().to_owned());
                    row = rest;
                    row_width -= at_width;
                }
                _ => {
                    rows.push(std::mem::take(&mut row).trim_end().to_owned());
                    row_width = 0;
                }
            }
            last_space = None;
        }
        if c == ' ' && row.is_empty() && !rows.is_empty() {
            // A space that ends up at the start of a continuation row is not drawn.
            continue;
        }
        row.push(c);
        row_width += w;
        if c == ' ' {
            last_space = Some((row.len(), row_width));
        }
    }
    rows.push(row);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_move_to_the_next_row_whole() {
        assert_eq!(
            wrap("hello brave new world", 11),
            ["hello brave", "new world"]
        );
        assert_eq!(wrap("a bb ccc", 4), ["a bb", "ccc"]);
        assert_eq!(wrap("", 10), [""]);
        assert_eq!(wrap("short", 10), ["short"]);
    }

    #[test]
    fn a_word_wider_than_the_pane_is_cut() {
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("hi abcdefghij", 4), ["hi", "abcd", "efgh", "ij"]);
    }

    #[test]
    fn wide_characters_take_two_columns_and_newlines_break() {
        assert_eq!(str_width("日本"), 4);
        assert_eq!(wrap("日本語です", 4), ["日本", "語で", "す"]);
        assert_eq!(wrap("one\ntwo", 10), ["one", "two"]);
        for row in wrap("a 日本語 mixed with 🙂 emoji and long words", 7) {
            assert!(str_width(&row) <= 7, "{row:?}");
        }
    }
}
