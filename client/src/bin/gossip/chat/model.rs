//! What `gossip chat` shows, as plain data: contacts with live presence and unread counts,
//! conversations (scrolled back through the stored history a page at a time, searched, with a
//! marker at the first unread line), the composer, directory results, and the status line.
//! Keys and network events go in; [`Action`]s for the network task come out of
//! [`Model::take_actions`]. Nothing here does I/O, so every rule (focus, scrolling, history
//! paging, search, commands, unread counts) is unit-tested without a terminal.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use gossip_client::directory::fingerprint;
use gossip_common::{UserId, UserInfo};

use super::command::{parse_command, Command};
use super::composer::Composer;
use super::conversation::rows_of;
pub(crate) use super::conversation::{Conversation, Cursor, Delivery, Line, Past, PAGE};

/// A key press (or a paste, or a turn of the mouse wheel), as the model understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    /// A printable character.
    Char(char),
    /// Pasted text (bracketed paste).
    Paste(String),
    /// Enter: send the message or run the command.
    Enter,
    /// Delete the character before the cursor.
    Backspace,
    /// Delete the character under the cursor.
    Delete,
    /// Clear the composer, close the directory results, leave the contact list.
    Esc,
    /// Move the focus between the composer and the contact list.
    Tab,
    /// ←.
    Left,
    /// →.
    Right,
    /// Ctrl-←, Alt-B.
    WordLeft,
    /// Ctrl-→, Alt-F.
    WordRight,
    /// Home, Ctrl-A.
    Home,
    /// End, Ctrl-E.
    End,
    /// Ctrl-W, Alt-Backspace.
    DeleteWord,
    /// Ctrl-U.
    KillToStart,
    /// Ctrl-K.
    KillToEnd,
    /// ↑: the input history, or the previous contact when the list has the focus.
    Up,
    /// ↓: the input history forward, or the next contact.
    Down,
    /// Alt-↑: the previous contact, whatever has the focus.
    PrevContact,
    /// Alt-↓: the next contact.
    NextContact,
    /// Page Up: a screen back in the conversation.
    PageUp,
    /// Page Down: a screen forward.
    PageDown,
    /// The mouse wheel turned up.
    WheelUp,
    /// The mouse wheel turned down.
    WheelDown,
    /// Ctrl-C: quit.
    Interrupt,
}

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
    fn line_text(&self, peer: UserId, l: &Line) -> (String, String) {
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

    /// Who `typed` names among the contacts: a UserID, or a contact's nickname.
    fn contact_named(&self, typed: &str) -> Option<UserId> {
        if let Ok(uid) = typed.parse::<u64>() {
            return Some(UserId(uid));
        }
        self.contacts
            .values()
            .find(|c| c.nick.eq_ignore_ascii_case(typed))
            .map(|c| c.uid)
    }

    fn submit(&mut self) {
        let text = self.composer.take();
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        if let Some(cmd) = text.strip_prefix('/') {
            match parse_command(cmd) {
                Ok(cmd) => self.command(cmd),
                Err(e) => self.notice = Some(e),
            }
            return;
        }
        let Some(to) = self.selected else {
            self.notice = Some("no contact selected: /find NAME, then /add".into());
            return;
        };
        let id = self.line_id();
        self.push_line(
            to,
            Line {
                id,
                key: None,
                at: now_s(),
                mine: true,
                system: false,
                text: text.to_owned(),
                delivery: Some(Delivery::Sending),
            },
        );
        let conversation = self.conversation(to);
        conversation.marker = None;
        conversation.scroll_to_end();
        self.outbox.push(Action::Send {
            to,
            text: text.to_owned(),
            line: id,
        });
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Quit => {
                self.quitting = true;
                self.outbox.push(Action::Quit);
            }
            Command::Help => self.notice = Some(LONG_HELP.into()),
            Command::Status { status, message } => {
                self.notice = Some(format!("setting status to {status}…"));
                self.outbox.push(Action::SetStatus { status, message });
            }
            Command::Add(who) => {
                // A small number picks a result of the last /find (UserIDs are far larger).
                let picked = self.found.as_ref().and_then(|f| {
                    let n: usize = who.parse().ok()?;
                    f.people.get(n.checked_sub(1)?).map(|p| p.uid.to_string())
                });
                if picked.is_some() {
                    self.found = None;
                }
                self.outbox.push(Action::Add(picked.unwrap_or(who)));
            }
            Command::Remove(who) => match self.contact_named(&who) {
                Some(uid) => self.outbox.push(Action::Remove(uid)),
                None => self.notice = Some(format!("no contact {who:?}")),
            },
            Command::Info(who) => {
                let uid = match who {
                    Some(w) => self.contact_named(&w),
                    None => self.selected,
                };
                match uid {
                    Some(uid) => self.info(uid),
                    None => self.notice = Some("usage: /info [UID or nickname]".into()),
                }
            }
            Command::Find(text) => {
                self.notice = Some(format!("looking for {text:?}…"));
                self.outbox.push(Action::Find(text));
            }
            Command::Search(text) => {
                let Some(peer) = self.selected else {
                    self.notice = Some("no conversation to search".into());
                    return;
                };
                let again = self
                    .last_search
                    .as_ref()
                    .filter(|(p, t)| *p == peer && text.as_ref().is_none_or(|n| n == t))
                    .map(|(_, t)| t.clone());
                let Some(text) = text.or_else(|| again.clone()) else {
                    self.notice = Some("usage: /search TEXT".into());
                    return;
                };
                self.last_search = Some((peer, text.clone()));
                self.search_in(peer, &text, again.is_none());
            }
            Command::Notify(on) => {
                self.notify = on;
                self.notice = Some(
                    if on {
                        "a bell for messages from contacts not on screen"
                    } else {
                        "no bell"
                    }
                    .into(),
                );
                self.outbox.push(Action::SaveNotify(on));
            }
        }
    }

    /// Jumps to the newest line holding `text` above the current hit (from the end when
    /// `fresh`), asking the history for older ones when the loaded lines have none.
    fn search_in(&mut self, peer: UserId, text: &str, fresh: bool) {
        let conversation = self.conversation(peer);
        if fresh {
            conversation.hit = None;
        }
        match conversation.find_before(text, conversation.hit) {
            Some(hit) => {
                conversation.hit = Some(hit);
                self.show_line(peer, hit);
                self.notice = Some(format!("found {text:?}; /search again for older"));
            }
            None if conversation.history_done => {
                self.notice = Some(format!("no older message holds {text:?}"));
            }
            None => {
                let cursor = conversation.cursor();
                self.notice = Some(format!("searching the history for {text:?}…"));
                self.outbox.push(Action::SearchHistory {
                    peer,
                    text: text.to_owned(),
                    cursor,
                });
            }
        }
    }

    /// Scrolls so that line `id` is in the middle of the pane.
    fn show_line(&mut self, peer: UserId, id: u64) {
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

    /// Shows what is known of `uid` in its conversation (and selects it).
    fn info(&mut self, uid: UserId) {
        let lines: Vec<String> = match self.contacts.get(&uid).and_then(|c| c.record.as_ref()) {
            Some(r) => vec![
                format!(
                    "{} ({}) — {} {}",
                    r.nick_name, r.user_id, r.status, r.status_message
                ),
                format!("name: {}  e-mail: {}", r.name, r.email),
                format!("location: {}  web: {}", r.location, r.website),
                format!("key fingerprint: {}", fingerprint(&r.public_key)),
            ],
            None => vec![format!(
                "{uid}: no record known (not a contact, or not seen yet)"
            )],
        };
        for text in lines {
            let id = self.line_id();
            self.push_line(
                uid,
                Line {
                    id,
                    key: None,
                    at: now_s(),
                    mine: false,
                    system: true,
                    text,
                    delivery: None,
                },
            );
        }
        if self.contacts.contains_key(&uid) {
            self.select(uid);
        }
    }

    fn line_id(&mut self) -> u64 {
        self.next_line += 1;
        self.next_line
    }
}

#[cfg(test)]
mod tests;
