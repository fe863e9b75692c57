//! What `gossip chat` shows, as plain data: contacts with live presence and unread counts,
//! conversations (scrolled back through the stored history a page at a time, searched, with a
//! marker at the first unread line), the composer, directory results, and the status line.
//! Keys and network events go in; [`Action`]s for the network task come out of
//! [`Model::take_actions`]. Nothing here does I/O, so every rule (focus, scrolling, history
//! paging, search, commands, unread counts) is unit-tested without a terminal. The state and
//! the keys are here; the pane's rows in `rows`, what Enter and the `/commands` do in
//! `commands`.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use gossip_common::{UserId, UserInfo};

use super::composer::Composer;
use super::conversation::rows_of;
pub(crate) use super::conversation::{Conversation, Cursor, Delivery, Line, Past, PAGE};
pub(crate) use super::keys::Key;
pub(crate) use rows::{clock, CONTACTS_WIDTH};

mod commands;
mod rows;

/// What has the keyboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Focus {
    /// Typing (↑/↓ walk the input history).
    #[default]
    Composer,
    /// The contact list (↑/↓ select).
    Contacts,
}

/// Something for the network task to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send `text` to `to`; the answer names `line`.
    Send {
        /// Recipient.
        to: UserId,
        /// The message.
        text: String,
        /// The conversation line that shows its delivery state.
        line: u64,
    },
    /// Set the status and, if given, the status message.
    SetStatus {
        /// `online`, `away`, `busy`, …
        status: String,
        /// Status message.
        message: Option<String>,
    },
    /// Add a contact named by UserID, card, nickname or e-mail (resolved by the network task
    /// through the directory).
    Add(String),
    /// Remove a contact.
    Remove(UserId),
    /// Search the directory.
    Find(String),
    /// Read a page of `peer`'s history older than `cursor`.
    LoadHistory {
        /// The conversation.
        peer: UserId,
        /// Where to read from.
        cursor: Cursor,
    },
    /// Find the newest message of `peer`'s history older than `cursor` holding `text`, and read
    /// everything from it up to `cursor`.
    SearchHistory {
        /// The conversation.
        peer: UserId,
        /// What to look for.
        text: String,
        /// Older than this.
        cursor: Cursor,
    },
    /// Keep the notification setting in the profile.
    SaveNotify(bool),
    /// Go offline and quit.
    Quit,
}

/// A contact as shown in the contact pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Contact {
    /// Their UserID.
    pub(crate) uid: UserId,
    /// Nickname (`?` until their record is known).
    pub(crate) nick: String,
    /// Status (`offline` until known).
    pub(crate) status: String,
    /// Status message.
    pub(crate) message: String,
    /// Whether they are online (any status but offline).
    pub(crate) online: bool,
    /// When they were last seen going offline, or last seen online (seconds since the epoch).
    pub(crate) last_seen: Option<u64>,
    /// Messages from them not yet looked at.
    pub(crate) unread: usize,
    /// Their full record, for `/info`.
    pub(crate) record: Option<UserInfo>,
}

impl Contact {
    fn unknown(uid: UserId) -> Contact {
        Contact {
            uid,
            nick: "?".into(),
            status: "offline".into(),
            message: String::new(),
            online: false,
            last_seen: None,
            unread: 0,
            record: None,
        }
    }
}

/// A person the directory found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Person {
    /// Their UserID.
    pub(crate) uid: UserId,
    /// One line about them, with their key's fingerprint.
    pub(crate) about: String,
}

/// The directory's answer to `/find` (or to an ambiguous `/add`), shown over the conversation
/// until Esc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// What was looked for.
    pub(crate) query: String,
    /// Who was found, best first.
    pub(crate) people: Vec<Person>,
}

/// Everything on screen.
#[derive(Debug, Default)]
pub(crate) struct Model {
    /// This user's UserID.
    pub(crate) me: Option<UserId>,
    /// This user's nickname.
    pub(crate) my_nick: String,
    /// This user's status.
    pub(crate) my_status: String,
    /// Contacts by UserID.
    pub(crate) contacts: BTreeMap<UserId, Contact>,
    /// The contact whose conversation is shown.
    pub(crate) selected: Option<UserId>,
    /// Conversations by contact.
    pub(crate) conversations: HashMap<UserId, Conversation>,
    /// What is being typed.
    pub(crate) composer: Composer,
    /// What has the keyboard.
    pub(crate) focus: Focus,
    /// The terminal's size (columns, rows).
    pub(crate) size: (u16, u16),
    /// The server logged in to.
    pub(crate) server: String,
    /// Its last measured RTT, ms.
    pub(crate) rtt_ms: Option<f64>,
    /// Whether the connection is up.
    pub(crate) connected: bool,
    /// Whether a login ever succeeded (the next one is a reconnect).
    pub(crate) ever_connected: bool,
    /// Times the connection was re-established.
    pub(crate) reconnects: u32,
    /// The latest notice (server message, error, command result).
    pub(crate) notice: Option<String>,
    /// Set once the user asked to quit.
    pub(crate) quitting: bool,
    /// Ring the terminal bell for a message to a contact not on screen.
    pub(crate) notify: bool,
    /// A bell is due (the UI rings it once and clears this).
    pub(crate) bell: bool,
    /// Directory results on screen.
    pub(crate) found: Option<Found>,
    /// The text of the last `/search`, and the conversation it was in.
    last_search: Option<(UserId, String)>,
    /// The last line id handed out.
    next_line: u64,
    /// What the network task has to do, in order.
    outbox: Vec<Action>,
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The help bar.
pub(crate) const HELP: &str =
    "Tab contacts · PgUp/PgDn scroll · /find /add /search /info /status /notify /help";

/// `/help`.
pub(crate) const LONG_HELP: &str = "Enter send · ←→ Home End Ctrl-W Ctrl-U edit · ↑↓ earlier \
     lines · Tab or Alt-↑↓ contacts · /find NAME · /add NAME|UID|CARD|N · /remove · /info · \
     /search TEXT (or / TEXT; /search again: older) · /status S [msg] · /notify on|off · /quit";

impl Model {
    /// The app of user `me` before its first login: `status` announced, the bell as `notify`.
    pub(crate) fn new(me: Option<UserId>, server: String, status: String, notify: bool) -> Model {
        Model {
            me,
            server,
            my_status: status,
            notify,
            size: (80, 24),
            ..Model::default()
        }
    }

    /// What the network task has to do since the last call.
    pub(crate) fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.outbox)
    }

    /// Contacts in display order: online first, then by nickname, then UserID.
    pub(crate) fn sorted_contacts(&self) -> Vec<&Contact> {
        let mut v: Vec<&Contact> = self.contacts.values().collect();
        v.sort_by(|a, b| {
            (!a.online, a.nick.to_lowercase(), a.uid).cmp(&(
                !b.online,
                b.nick.to_lowercase(),
                b.uid,
            ))
        });
        v
    }

    /// The contact list as the server has it: unknown contacts appear, removed ones go.
    pub(crate) fn set_contact_ids(&mut self, ids: &[UserId]) {
        self.contacts.retain(|uid, _| ids.contains(uid));
        for uid in ids {
            self.contacts
                .entry(*uid)
                .or_insert_with(|| Contact::unknown(*uid));
        }
        if self
            .selected
            .is_none_or(|s| !self.contacts.contains_key(&s))
        {
            if let Some(first) = self.sorted_contacts().first().map(|c| c.uid) {
                self.select(first);
            } else {
                self.selected = None;
            }
        }
    }

    /// A UserInfo arrived (login snapshot or push).
    pub(crate) fn presence(&mut self, info: &UserInfo) {
        if Some(info.user_id) == self.me {
            self.my_nick = info.nick_name.clone();
            self.my_status = info.status.clone();
            return;
        }
        let Some(c) = self.contacts.get_mut(&info.user_id) else {
            return;
        };
        let was_online = c.online;
        c.nick = info.nick_name.clone();
        c.status = info.status.clone();
        c.message = info.status_message.clone();
        c.online = info.is_online();
        if was_online || c.online {
            c.last_seen = Some(now_s());
        }
        c.record = Some(info.clone());
    }

    /// The name shown for `uid` in its conversation.
    fn nick_of(&self, uid: UserId) -> String {
        self.contacts
            .get(&uid)
            .map_or_else(|| uid.to_string(), |c| c.nick.clone())
    }

    fn conversation(&mut self, peer: UserId) -> &mut Conversation {
        self.conversations.entry(peer).or_default()
    }

    fn push_line(&mut self, peer: UserId, line: Line) {
        let (prefix, text) = self.line_text(peer, &line);
        let rows = rows_of(&prefix, &text, self.conversation_area().0).len();
        self.conversation(peer).push(line, rows);
    }

    /// A message from a contact (or from a stranger: shown all the same). `key`: its id in
    /// the history.
    pub(crate) fn message_in(&mut self, from: UserId, text: &str, at: u64, key: Option<String>) {
        let id = self.line_id();
        self.push_line(
            from,
            Line {
                id,
                key,
                at,
                mine: false,
                system: false,
                text: text.to_owned(),
                delivery: None,
            },
        );
        self.contacts
            .entry(from)
            .or_insert_with(|| Contact::unknown(from));
        if self.selected != Some(from) {
            let contact = self.contacts.get_mut(&from).expect("inserted above");
            contact.unread += 1;
            if self.notify {
                self.bell = true;
            }
        }
        if self.selected.is_none() {
            self.select(from);
        }
    }

    /// The outcome of sending one's own message: its history id, or why it failed.
    pub(crate) fn sent(&mut self, line: u64, outcome: Result<String, String>) {
        for c in self.conversations.values_mut() {
            if let Some(l) = c.lines.iter_mut().find(|l| l.id == line) {
                match outcome {
                    Ok(key) => {
                        // A delivery notice may have overtaken the answer.
                        if l.delivery != Some(Delivery::Delivered) {
                            l.delivery = Some(Delivery::Sent);
                        }
                        c.set_key(line, key);
                    }
                    Err(why) => l.delivery = Some(Delivery::Failed(why)),
                }
                return;
            }
        }
    }

    /// The recipient's client has message `key`.
    pub(crate) fn delivered(&mut self, key: &str) {
        for c in self.conversations.values_mut() {
            if let Some(l) = c.lines.iter_mut().find(|l| l.key.as_deref() == Some(key)) {
                l.delivery = Some(Delivery::Delivered);
                return;
            }
        }
    }

    /// A page of `peer`'s history arrived (oldest first).
    pub(crate) fn history(&mut self, peer: UserId, page: Vec<Past>, complete: bool) {
        let mut next = self.next_line;
        self.conversation(peer).prepend(page, complete, || {
            next += 1;
            next
        });
        self.next_line = next;
    }

    /// The history's answer to a search that found nothing among the loaded lines: `page`
    /// runs from the match up to what was loaded (empty: no older match).
    pub(crate) fn search_result(&mut self, peer: UserId, text: &str, page: Vec<Past>) {
        if page.is_empty() {
            self.notice = Some(format!("no older message holds {text:?}"));
            return;
        }
        self.history(peer, page, false);
        self.search_in(peer, text, false);
    }

    /// The directory answered.
    pub(crate) fn found(&mut self, query: String, people: Vec<Person>) {
        self.notice = Some(match people.len() {
            0 => format!("nobody found for {query:?}"),
            n => format!("{n} found: /add NUMBER adds one, Esc closes"),
        });
        self.found = (!people.is_empty()).then_some(Found { query, people });
    }

    /// A key press.
    pub(crate) fn key(&mut self, key: Key) {
        if self.focus == Focus::Contacts {
            match key {
                Key::Up => return self.step_contact(-1),
                Key::Down => return self.step_contact(1),
                Key::Tab | Key::Enter | Key::Esc => {
                    self.focus = Focus::Composer;
                    return;
                }
                Key::Char(_) | Key::Paste(_) => self.focus = Focus::Composer,
                _ => {}
            }
        }
        let c = &mut self.composer;
        match key {
            Key::Char(ch) => c.insert(ch),
            Key::Paste(s) => c.paste(&s),
            Key::Backspace => c.backspace(),
            Key::Delete => c.delete(),
            Key::Left => c.left(),
            Key::Right => c.right(),
            Key::WordLeft => c.word_left(),
            Key::WordRight => c.word_right(),
            Key::Home => c.home(),
            Key::End => c.end(),
            Key::DeleteWord => c.delete_word(),
            Key::KillToStart => c.kill_to_start(),
            Key::KillToEnd => c.kill_to_end(),
            Key::Up => c.history_back(),
            Key::Down => c.history_forward(),
            Key::Esc => {
                c.clear();
                self.found = None;
            }
            Key::Tab => self.focus = Focus::Contacts,
            Key::PrevContact => self.step_contact(-1),
            Key::NextContact => self.step_contact(1),
            Key::PageUp => self.scroll_up(self.conversation_area().1.saturating_sub(1).max(1)),
            Key::PageDown => {
                let page = self.conversation_area().1.saturating_sub(1).max(1);
                self.scroll_down(page);
            }
            Key::WheelUp => self.scroll_up(3),
            Key::WheelDown => self.scroll_down(3),
            Key::Enter => self.submit(),
            Key::Interrupt => {
                self.quitting = true;
                self.outbox.push(Action::Quit);
            }
        }
    }

    fn step_contact(&mut self, by: isize) {
        let order: Vec<UserId> = self.sorted_contacts().iter().map(|c| c.uid).collect();
        if order.is_empty() {
            return;
        }
        let at = self
            .selected
            .and_then(|s| order.iter().position(|u| *u == s))
            .unwrap_or(0) as isize;
        let n = order.len() as isize;
        self.select(order[(at + by).rem_euclid(n) as usize]);
    }

    fn scroll_up(&mut self, rows: usize) {
        let Some(peer) = self.selected else { return };
        let total = self.rows(peer).len();
        let page = self.conversation_area().1;
        let conversation = self.conversation(peer);
        if conversation.scroll_up(rows, total, page) {
            if let Some(cursor) = conversation.wants_older() {
                self.outbox.push(Action::LoadHistory { peer, cursor });
            }
        }
    }

    fn scroll_down(&mut self, rows: usize) {
        if let Some(peer) = self.selected {
            self.conversation(peer).scroll_down(rows);
        }
    }

    /// Shows `uid`'s conversation and marks it read, with a marker at the first unread line;
    /// reads its history the first time.
    pub(crate) fn select(&mut self, uid: UserId) {
        if let Some(old) = self.selected.filter(|s| *s != uid) {
            if let Some(c) = self.conversations.get_mut(&old) {
                c.marker = None;
                c.hit = None;
            }
        }
        self.selected = Some(uid);
        let unread = self
            .contacts
            .get_mut(&uid)
            .map_or(0, |c| std::mem::take(&mut c.unread));
        let conversation = self.conversation(uid);
        if unread > 0 {
            let first = conversation.lines.len().saturating_sub(unread);
            conversation.marker = conversation.lines.get(first).map(|l| l.id);
        }
        conversation.scroll_to_end();
        if let Some(cursor) = conversation.wants_first_page() {
            self.outbox.push(Action::LoadHistory { peer: uid, cursor });
        }
    }

    fn line_id(&mut self) -> u64 {
        self.next_line += 1;
        self.next_line
    }
}

#[cfg(test)]
mod tests;
