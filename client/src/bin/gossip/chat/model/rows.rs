//! The conversation pane as rows: the geometry of the screen (what the view draws is what
//! the model scrolls by), each line wrapped with its time, name and delivery mark, the day
//! and unread rules between them, and the window the scroll position shows.

use gossip_common::UserId;

use super::{Line, Model};
use crate::chat::conversation::{rows_of, Delivery};

/// One row of the conversation pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    /// The text of the row.
    pub(crate) text: String,
    /// The line it belongs to (`None`: the unread marker).
    pub(crate) line: Option<u64>,
    /// Columns of the row that are the line's prefix (time and name), on its first row.
    pub(crate) prefix: usize,
    /// Whether the line is one's own.
    pub(crate) mine: bool,
}

/// Columns of the contact pane.
pub(crate) const CONTACTS_WIDTH: u16 = 30;
/// Rows the composer grows to at most (a longer text scrolls inside it).
pub(crate) const COMPOSER_ROWS: usize = 5;

/// `HH:MM` (UTC) of a time in seconds since the epoch.
pub(crate) fn clock(at: u64) -> String {
    let day = at % 86_400;
    format!("{:02}:{:02}", day / 3600, day % 3600 / 60)
}

/// `YYYY-MM-DD` (UTC) of a time in seconds since the epoch.
pub(crate) fn date(at: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at as i64)
        .map_or_else(|_| "?".to_owned(), |t| t.date().to_string())
}

impl Model {
    /// The conversation pane's text area (columns, rows), for the terminal's size.
    pub(crate) fn conversation_area(&self) -> (usize, usize) {
        let (w, h) = self.size;
        let width = w.saturating_sub(CONTACTS_WIDTH + 2).max(10) as usize;
        let below = self.composer_rows() as u16 + 2 + 2;
        let height = h.saturating_sub(below + 2).max(2) as usize;
        (width, height)
    }

    /// Rows the composer takes (without its border).
    pub(crate) fn composer_rows(&self) -> usize {
        let width = self.size.0.saturating_sub(2) as usize;
        self.composer.layout(width).0.len().clamp(1, COMPOSER_ROWS)
    }

    /// A line as it is drawn: prefix, then text with its delivery mark.
    pub(super) fn line_text(&self, peer: UserId, l: &Line) -> (String, String) {
        let who = if l.system {
            "*".to_owned()
        } else if l.mine {
            "me".to_owned()
        } else {
            self.nick_of(peer)
        };
        let mark = match &l.delivery {
            Some(Delivery::Sending) => " …".to_owned(),
            Some(Delivery::Sent) => " ✓".to_owned(),
            Some(Delivery::Delivered) => " ✓✓".to_owned(),
            Some(Delivery::Failed(why)) => format!(" ✗ {why}"),
            None => String::new(),
        };
        (
            format!("{} {who}: ", clock(l.at)),
            format!("{}{mark}", l.text),
        )
    }

    /// Every row of `peer`'s conversation at the pane's width, oldest first.
    pub(crate) fn rows(&self, peer: UserId) -> Vec<Row> {
        let (width, _) = self.conversation_area();
        let Some(c) = self.conversations.get(&peer) else {
            return Vec::new();
        };
        let mut rows = Vec::new();
        let mut day = None;
        for l in &c.lines {
            // A rule with the date where a new day starts (the lines show only the time).
            if !l.system && day != Some(l.at / 86_400) {
                day = Some(l.at / 86_400);
                rows.push(Row {
                    text: format!("{:─^width$}", format!(" {} ", date(l.at))),
                    line: None,
                    prefix: 0,
                    mine: false,
                });
            }
            if c.marker == Some(l.id) {
                rows.push(Row {
                    text: format!("{:─^width$}", " new "),
                    line: None,
                    prefix: 0,
                    mine: false,
                });
            }
            let (prefix, text) = self.line_text(peer, l);
            for (i, text) in rows_of(&prefix, &text, width).into_iter().enumerate() {
                rows.push(Row {
                    text,
                    line: Some(l.id),
                    prefix: if i == 0 { prefix.chars().count() } else { 0 },
                    mine: l.mine,
                });
            }
        }
        rows
    }

    /// The rows on screen for `peer`: the window the scroll position shows.
    pub(crate) fn visible_rows(&self, peer: UserId) -> Vec<Row> {
        let (_, height) = self.conversation_area();
        let rows = self.rows(peer);
        let scroll = self.conversations.get(&peer).map_or(0, |c| c.scroll);
        let end = rows.len().saturating_sub(scroll);
        let start = end.saturating_sub(height);
        rows[start..end].to_vec()
    }

    /// Scrolls so that line `id` is in the middle of the pane.
    pub(super) fn show_line(&mut self, peer: UserId, id: u64) {
        let rows = self.rows(peer);
        let height = self.conversation_area().1;
        let Some(at) = rows.iter().position(|r| r.line == Some(id)) else {
            return;
        };
        let total = rows.len();
        let top = total.saturating_sub(height);
        let scroll = total.saturating_sub(at + height / 2 + 1).min(top);
        self.conversation(peer).scroll = scroll;
    }
}
