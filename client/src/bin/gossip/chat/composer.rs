//! The composer: the line being typed, edited the way every terminal app edits a line (cursor,
//! Home/End, word moves and deletes, Ctrl-U/Ctrl-K, paste), wrapped over several rows when
//! it is long, with the history of what was sent (↑/↓, as in a shell). Pure data: the model
//! feeds it keys and the view asks it for its rows and where the cursor is.

use super::wrap::char_width;

/// Characters a composed message may have (more is not taken).
pub(crate) const MAX_CHARS: usize = 4000;
/// Lines of input history kept.
const HISTORY: usize = 200;

/// What is being typed, and what was.
#[derive(Debug, Default)]
pub(crate) struct Composer {
    text: Vec<char>,
    /// Index in `text` the cursor stands before.
    cursor: usize,
    /// What was sent, oldest first.
    history: Vec<String>,
    /// While browsing the history: the index shown, and the line that was being typed.
    browsing: Option<(usize, Vec<char>)>,
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl Composer {
    /// The text.
    #[cfg(test)]
    pub(crate) fn text(&self) -> String {
        self.text.iter().collect()
    }

    /// Whether nothing is typed.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Where the cursor is, in characters from the start.
    #[cfg(test)]
    pub(crate) fn cursor(&self) -> usize {
        self.cursor
    }

    /// Types `c` at the cursor.
    pub(crate) fn insert(&mut self, c: char) {
        if self.text.len() < MAX_CHARS && !c.is_control() {
            self.text.insert(self.cursor, c);
            self.cursor += 1;
        }
    }

    /// Pastes `s` at the cursor: line breaks and tabs become spaces, other control characters
    /// are dropped, and what does not fit is cut.
    pub(crate) fn paste(&mut self, s: &str) {
        for c in s.chars() {
            match c {
                '\n' | '\r' | '\t' => self.insert(' '),
                c => self.insert(c),
            }
        }
    }

    /// ←.
    pub(crate) fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    /// →.
    pub(crate) fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.text.len());
    }

    /// Home, Ctrl-A.
    pub(crate) fn home(&mut self) {
        self.cursor = 0;
    }

    /// End, Ctrl-E.
    pub(crate) fn end(&mut self) {
        self.cursor = self.text.len();
    }

    /// Where the word before the cursor starts (skipping the spaces before it).
    fn word_start(&self) -> usize {
        let mut at = self.cursor;
        while at > 0 && !is_word(self.text[at - 1]) {
            at -= 1;
        }
        while at > 0 && is_word(self.text[at - 1]) {
            at -= 1;
        }
        at
    }

    /// Ctrl-←, Alt-B: to the start of this or the previous word.
    pub(crate) fn word_left(&mut self) {
        self.cursor = self.word_start();
    }

    /// Ctrl-→, Alt-F: past the end of this or the next word.
    pub(crate) fn word_right(&mut self) {
        let mut at = self.cursor;
        while at < self.text.len() && !is_word(self.text[at]) {
            at += 1;
        }
        while at < self.text.len() && is_word(self.text[at]) {
            at += 1;
        }
        self.cursor = at;
    }

    /// Backspace.
    pub(crate) fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            self.text.remove(self.cursor);
        }
    }

    /// Delete.
    pub(crate) fn delete(&mut self) {
        if self.cursor < self.text.len() {
            self.text.remove(self.cursor);
        }
    }

    /// Ctrl-W, Alt-Backspace: deletes the word before the cursor.
    pub(crate) fn delete_word(&mut self) {
        let from = self.word_start();
        self.text.drain(from..self.cursor);
        self.cursor = from;
    }

    /// Ctrl-U: deletes everything before the cursor.
    pub(crate) fn kill_to_start(&mut self) {
        self.text.drain(..self.cursor);
        self.cursor = 0;
    }

    /// Ctrl-K: deletes everything from the cursor on.
    pub(crate) fn kill_to_end(&mut self) {
        self.text.truncate(self.cursor);
    }

    /// Esc: clears the line (and stops browsing the history).
    pub(crate) fn clear(&mut self) {
        self.text.clear();
        self.cursor = 0;
        self.browsing = None;
    }

    /// Enter: the line, now empty, with what was typed kept in the history.
    pub(crate) fn take(&mut self) -> String {
        let line: String = std::mem::take(&mut self.text).into_iter().collect();
        self.cursor = 0;
        self.browsing = None;
        let kept = line.trim();
        if !kept.is_empty() && self.history.last().map(String::as_str) != Some(kept) {
            if self.history.len() == HISTORY {
                self.history.remove(0);
            }
            self.history.push(kept.to_owned());
        }
        line
    }

    /// ↑: the previous line of the history (the line being typed is kept for ↓).
    pub(crate) fn history_back(&mut self) {
        let at = match &self.browsing {
            Some((0, _)) => return,
            Some((at, _)) => at - 1,
            None if self.history.is_empty() => return,
            None => {
                self.browsing = Some((self.history.len(), self.text.clone()));
                self.history.len() - 1
            }
        };
        if let Some((shown, _)) = &mut self.browsing {
            *shown = at;
        }
        self.text = self.history[at].chars().collect();
        self.cursor = self.text.len();
    }

    /// ↓: the next line of the history, and after the last, the line that was being typed.
    pub(crate) fn history_forward(&mut self) {
        let Some((at, draft)) = self.browsing.take() else {
            return;
        };
        if at + 1 < self.history.len() {
            self.text = self.history[at + 1].chars().collect();
            self.browsing = Some((at + 1, draft));
        } else {
            self.text = draft;
        }
        self.cursor = self.text.len();
    }

    /// The text as rows of at most `width` columns (cut by width, not at words, so that every
    /// character's place is plain), and the cursor's row and column.
    pub(crate) fn layout(&self, width: usize) -> (Vec<String>, (usize, usize)) {
        let width = width.max(2);
        let mut rows = vec![String::new()];
        let mut col = 0;
        let mut cursor = (0, 0);
        for (i, &c) in self.text.iter().enumerate() {
            let w = char_width(c);
            if col + w > width {
                rows.push(String::new());
                col = 0;
            }
            if i == self.cursor {
                cursor = (rows.len() - 1, col);
            }
            rows.last_mut().expect("one row at least").push(c);
            col += w;
        }
        if self.cursor == self.text.len() {
            // After the last character: on its row, or the next when the row is full.
            if col >= width {
                rows.push(String::new());
                col = 0;
            }
            cursor = (rows.len() - 1, col);
        }
        (rows, cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(s: &str) -> Composer {
        let mut c = Composer::default();
        c.paste(s);
        c
    }

    #[test]
    fn the_cursor_moves_and_edits_in_the_middle() {
        let mut c = typed("hello world");
        c.home();
        c.right();
        c.right();
        c.insert('X');
        assert_eq!(c.text(), "heXllo world");
        c.end();
        c.left();
        c.backspace();
        assert_eq!(c.text(), "heXllo word");
        c.home();
        c.delete();
        assert_eq!((c.text().as_str(), c.cursor()), ("eXllo word", 0));
    }

    #[test]
    fn words_are_jumped_over_and_deleted_whole() {
        let mut c = typed("send it to bob  ");
        c.delete_word();
        assert_eq!(c.text(), "send it to ");
        c.word_left();
        assert_eq!(c.cursor(), 8, "start of 'to'");
        c.word_left();
        c.word_right();
        assert_eq!(c.cursor(), 7, "end of 'it'");
        c.kill_to_end();
        assert_eq!(c.text(), "send it");
        c.word_left();
        c.kill_to_start();
        assert_eq!((c.text().as_str(), c.cursor()), ("it", 0));
    }

    #[test]
    fn history_goes_back_and_returns_to_the_draft() {
        let mut c = Composer::default();
        for line in ["first", "second", "second", "  "] {
            c.paste(line);
            c.take();
        }
        c.paste("draft");
        c.history_back();
        assert_eq!(
            c.text(),
            "second",
            "repeats are kept once, blanks not at all"
        );
        c.history_back();
        assert_eq!(c.text(), "first");
        c.history_back();
        assert_eq!(c.text(), "first", "stops at the oldest");
        c.history_forward();
        assert_eq!(c.text(), "second");
        c.history_forward();
        assert_eq!(c.text(), "draft");
        c.history_forward();
        assert_eq!(c.text(), "draft");
    }

    #[test]
    fn a_paste_is_one_line_without_control_characters_and_bounded() {
        let mut c = typed("one\ntwo\tthree\u{1b}[31m");
        assert_eq!(c.text(), "one two three[31m");
        c.clear();
        c.paste(&"x".repeat(MAX_CHARS + 10));
        assert_eq!(c.text().len(), MAX_CHARS);
    }

    #[test]
    fn a_long_line_wraps_and_the_cursor_follows() {
        let mut c = typed("abcdefghij");
        assert_eq!(
            c.layout(4),
            (vec!["abcd".into(), "efgh".into(), "ij".into()], (2, 2))
        );
        c.home();
        c.right();
        c.right();
        c.right();
        c.right();
        assert_eq!(c.layout(4).1, (1, 0), "before 'e'");
        let full = typed("abcd");
        assert_eq!(full.layout(4), (vec!["abcd".into(), String::new()], (1, 0)));
        let wide = typed("日本語");
        assert_eq!(wide.layout(4).0, vec!["日本".to_owned(), "語".into()]);
    }
}
