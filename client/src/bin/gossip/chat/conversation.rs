//! One conversation as the app holds it: the lines loaded so far (older ones come from the
//! history in `messages.db` a page at a time, as the person scrolls back), how far back the
//! pane is scrolled, the "new messages" marker, and what `/search` found. Pure data.

use std::collections::HashSet;

use super::wrap::wrap;

/// Messages read from the history at a time.
pub(crate) const PAGE: usize = 100;

/// Delivery state of one's own message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Handed to the network task.
    Sending,
    /// Stored by the servers, not yet delivered.
    Sent,
    /// The recipient's client took it.
    Delivered,
    /// It could not be delivered (why).
    Failed(String),
}

/// One line of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// Identifies the line in this run of the app (delivery updates, the marker, search hits).
    pub(crate) id: u64,
    /// The message's id in the history, once it has one (to not show it twice).
    pub(crate) key: Option<String>,
    /// Seconds since the Unix epoch.
    pub(crate) at: u64,
    /// Written by this user (else by the contact, or by the app when `system`).
    pub(crate) mine: bool,
    /// An app notice (e.g. `/info` output) rather than a message.
    pub(crate) system: bool,
    /// The text.
    pub(crate) text: String,
    /// For one's own messages.
    pub(crate) delivery: Option<Delivery>,
}

/// Where the history is read from next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The oldest message read so far: its send time and id.
    pub(crate) before: Option<(u64, String)>,
}

/// What the pane shows of one conversation.
#[derive(Debug, Default)]
pub(crate) struct Conversation {
    /// Oldest first.
    pub(crate) lines: Vec<Line>,
    /// Rows of the pane hidden below the bottom (0: the end is shown).
    pub(crate) scroll: usize,
    /// Lines that arrived while scrolled back (shown as "↓ N new").
    pub(crate) unseen: usize,
    /// The first line not yet read, marked with a rule until the person answers or leaves.
    pub(crate) marker: Option<u64>,
    /// The line `/search` jumped to.
    pub(crate) hit: Option<u64>,
    /// The oldest history message loaded (`None` with `history_started` false: none yet).
    oldest: Option<(u64, String)>,
    /// Whether the first page of history was asked for.
    history_started: bool,
    /// Whether the history holds nothing older.
    pub(crate) history_done: bool,
    /// A page was asked for and has not come.
    pub(crate) loading: bool,
    keys: HashSet<String>,
}

/// A history entry, as the model gets it from the network task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Past {
    /// Its id in the history.
    pub(crate) key: String,
    /// When it was sent, ms since the epoch.
    pub(crate) sent_ms: u64,
    /// Sent by this user.
    pub(crate) mine: bool,
    /// The text.
    pub(crate) text: String,
    /// `sent`, `delivered`, `received`.
    pub(crate) state: String,
}

/// Rows a line takes in a pane `width` columns wide: its prefix (`HH:MM who: `) and text
/// wrapped together.
pub(crate) fn rows_of(prefix: &str, text: &str, width: usize) -> Vec<String> {
    wrap(&format!("{prefix}{text}"), width)
}

impl Conversation {
    /// Whether the history's first page is still to be asked for (and notes that it is being
    /// asked now).
    pub(crate) fn wants_first_page(&mut self) -> Option<Cursor> {
        if self.history_started {
            return None;
        }
        self.history_started = true;
        self.loading = true;
        Some(Cursor { before: None })
    }

    /// The next older page to ask for, if there is one and none is on its way.
    pub(crate) fn wants_older(&mut self) -> Option<Cursor> {
        if !self.history_started {
            return self.wants_first_page();
        }
        if self.history_done || self.loading {
            return None;
        }
        self.loading = true;
        Some(Cursor {
            before: self.oldest.clone(),
        })
    }

    /// Where older history starts: before the oldest message loaded (from the newest when
    /// none is).
    pub(crate) fn cursor(&self) -> Cursor {
        Cursor {
            before: self.oldest.clone(),
        }
    }

    /// Adds a new line at the end. While scrolled back, the view stays where it is.
    pub(crate) fn push(&mut self, line: Line, rows: usize) {
        if let Some(key) = &line.key {
            if !self.keys.insert(key.clone()) {
                return;
            }
        }
        if self.scroll > 0 {
            self.scroll += rows;
            self.unseen += 1;
        }
        self.lines.push(line);
    }

    /// Gives a line its history id once the message has one.
    pub(crate) fn set_key(&mut self, line: u64, key: String) {
        if let Some(l) = self.lines.iter_mut().find(|l| l.id == line) {
            self.keys.insert(key.clone());
            l.key = Some(key);
        }
    }

    /// A page of older history (oldest first) arrived: the lines not shown yet go in front.
    /// `complete`: the history has nothing older. Returns the lines added.
    pub(crate) fn prepend(
        &mut self,
        page: Vec<Past>,
        complete: bool,
        mut line_id: impl FnMut() -> u64,
    ) -> usize {
        self.loading = false;
        self.history_done |= complete;
        if let Some(first) = page.first() {
            self.oldest = Some((first.sent_ms, first.key.clone()));
        }
        let mut older: Vec<Line> = Vec::with_capacity(page.len());
        for p in page {
            if !self.keys.insert(p.key.clone()) {
                continue;
            }
            let delivery = p.mine.then_some(match p.state.as_str() {
                "delivered" => Delivery::Delivered,
                _ => Delivery::Sent,
            });
            older.push(Line {
                id: line_id(),
                key: Some(p.key),
                at: p.sent_ms / 1000,
                mine: p.mine,
                system: false,
                text: p.text,
                delivery,
            });
        }
        let added = older.len();
        older.append(&mut self.lines);
        self.lines = older;
        added
    }

    /// Scrolls back by `rows` (of `total` rows in all, `page` on screen); whether an older
    /// page of history is needed to fill the screen.
    pub(crate) fn scroll_up(&mut self, rows: usize, total: usize, page: usize) -> bool {
        let top = total.saturating_sub(page);
        self.scroll = (self.scroll + rows).min(top);
        // Ask for more before the top is reached, so scrolling does not stall on it.
        self.scroll + 2 * page >= total
    }

    /// Scrolls towards the end by `rows`.
    pub(crate) fn scroll_down(&mut self, rows: usize) {
        self.scroll = self.scroll.saturating_sub(rows);
        if self.scroll == 0 {
            self.unseen = 0;
        }
    }

    /// Back to the end.
    pub(crate) fn scroll_to_end(&mut self) {
        self.scroll = 0;
        self.unseen = 0;
    }

    /// The newest line above line `from` (or from the end) whose text holds `needle`,
    /// ignoring case.
    pub(crate) fn find_before(&self, needle: &str, from: Option<u64>) -> Option<u64> {
        let needle = needle.to_lowercase();
        let end = match from {
            Some(id) => self.lines.iter().position(|l| l.id == id)?,
            None => self.lines.len(),
        };
        self.lines[..end]
            .iter()
            .rev()
            .find(|l| !l.system && l.text.to_lowercase().contains(&needle))
            .map(|l| l.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn past(i: u64) -> Past {
        Past {
            key: format!("m{i}"),
            sent_ms: i * 1000,
            mine: i.is_multiple_of(2),
            text: format!("message {i}"),
            state: if i.is_multiple_of(2) {
                "delivered"
            } else {
                "received"
            }
            .into(),
        }
    }

    fn live(id: u64, key: Option<&str>) -> Line {
        Line {
            id,
            key: key.map(str::to_owned),
            at: 0,
            mine: false,
            system: false,
            text: format!("live {id}"),
            delivery: None,
        }
    }

    #[test]
    fn history_pages_go_in_front_once_and_the_cursor_moves_back() {
        let mut c = Conversation::default();
        assert_eq!(c.wants_first_page(), Some(Cursor { before: None }));
        assert_eq!(c.wants_first_page(), None, "asked once");
        assert_eq!(c.wants_older(), None, "one page at a time");
        // A message that arrived live is also in the history: shown once.
        c.push(live(1, Some("m10")), 1);
        let mut next = 100;
        let added = c.prepend((5..=10).map(past).collect(), false, || {
            next += 1;
            next
        });
        assert_eq!(added, 5);
        let texts: Vec<&str> = c.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts.first(), Some(&"message 5"));
        assert_eq!(texts.last(), Some(&"live 1"));
        assert_eq!(
            c.lines[1].delivery,
            Some(Delivery::Delivered),
            "m6 was mine"
        );
        assert_eq!(
            c.wants_older(),
            Some(Cursor {
                before: Some((5000, "m5".into()))
            })
        );
        c.prepend((1..=4).map(past).collect(), true, || {
            next += 1;
            next
        });
        assert_eq!(c.lines.len(), 10, "m1..m9 and the live m10");
        assert!(c.history_done);
        assert_eq!(c.wants_older(), None, "nothing older");
    }

    #[test]
    fn scrolling_stays_in_bounds_and_a_new_line_keeps_the_view() {
        let mut c = Conversation::default();
        assert!(
            !c.scroll_up(10, 200, 20),
            "far from the top: no older page yet"
        );
        assert_eq!(c.scroll, 10);
        assert!(
            c.scroll_up(500, 200, 20),
            "near the top: the next page is wanted"
        );
        assert_eq!(c.scroll, 180, "stops with the first row at the top");
        c.push(live(1, None), 2);
        assert_eq!((c.scroll, c.unseen), (182, 1));
        c.scroll_down(1000);
        assert_eq!((c.scroll, c.unseen), (0, 0));
        c.push(live(2, None), 2);
        assert_eq!(c.scroll, 0, "at the end, the end stays in view");
    }

    #[test]
    fn search_finds_the_newest_match_above_the_last_one() {
        let mut c = Conversation::default();
        let mut next = 0;
        c.prepend((1..=9).map(past).collect(), true, || {
            next += 1;
            next
        });
        let first = c.find_before("MESSAGE 1", None).unwrap();
        assert_eq!(
            c.lines.iter().find(|l| l.id == first).unwrap().text,
            "message 1"
        );
        let newest = c.find_before("message", None).unwrap();
        assert_eq!(newest, c.lines.last().unwrap().id);
        let older = c.find_before("message", Some(newest)).unwrap();
        assert_eq!(older, c.lines[7].id);
        assert_eq!(c.find_before("nowhere", None), None);
    }
}
