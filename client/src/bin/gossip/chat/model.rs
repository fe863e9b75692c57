//! What `gossip chat` shows, as plain data: contacts with live presence and unread counts,
//! conversations with the delivery state of one's own messages, the composer, and the status
//! line. Keys and network events go in, [`Action`]s for the network task come out; nothing here
//! does I/O, so every rule (sorting, commands, unread counts) is unit-tested without a
//! terminal.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use gossip_client::directory::fingerprint;
use gossip_common::{UserId, UserInfo};

/// A key press, as the model understands it (mapped from the terminal's events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    /// A printable character.
    Char(char),
    /// Enter: send the message or run the command.
    Enter,
    /// Delete the character before the cursor.
    Backspace,
    /// Clear the composer.
    Esc,
    /// Select the previous contact.
    Up,
    /// Select the next contact.
    Down,
    /// Ctrl-C: quit.
    Interrupt,
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
    /// Add a contact.
    Add(UserId),
    /// Remove a contact.
    Remove(UserId),
    /// Go offline and quit.
    Quit,
}

/// Delivery state of one's own message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Handed to the network task.
    Sending,
    /// The recipient's client took it.
    Delivered,
    /// It could not be delivered (why).
    Failed(String),
}

/// One line of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// Identifies one's own lines for delivery updates.
    pub(crate) id: u64,
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

/// Everything on screen.
#[derive(Debug, Default)]
pub(crate) struct Model {
    /// This user's UserID.
    pub(crate) me: Option<UserId>,
    /// This user's nickname and status.
    pub(crate) my_nick: String,
    /// This user's status.
    pub(crate) my_status: String,
    /// Contacts by UserID.
    pub(crate) contacts: BTreeMap<UserId, Contact>,
    /// The contact whose conversation is shown.
    pub(crate) selected: Option<UserId>,
    /// Conversations by contact.
    pub(crate) conversations: HashMap<UserId, Vec<Line>>,
    /// What is being typed.
    pub(crate) composer: String,
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
    /// The last line id handed out.
    pub(crate) next_line: u64,
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

/// The help shown for `/help` and in the help bar.
pub(crate) const HELP: &str =
    "↑↓ contact · Enter send · /status S [msg] · /add /remove /info UID · /quit";

impl Model {
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
            self.selected = self.sorted_contacts().first().map(|c| c.uid);
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

    /// A message from a contact (or from a stranger: shown all the same).
    pub(crate) fn message_in(&mut self, from: UserId, text: &str, at: u64) {
        let id = self.line_id();
        self.conversations.entry(from).or_default().push(Line {
            id,
            at,
            mine: false,
            system: false,
            text: text.to_owned(),
            delivery: None,
        });
        let contact = self
            .contacts
            .entry(from)
            .or_insert_with(|| Contact::unknown(from));
        if self.selected != Some(from) {
            contact.unread += 1;
        }
        if self.selected.is_none() {
            self.selected = Some(from);
        }
    }

    /// The outcome of sending one's own message.
    pub(crate) fn delivered(&mut self, line: u64, outcome: Result<(), String>) {
        for lines in self.conversations.values_mut() {
            if let Some(l) = lines.iter_mut().find(|l| l.id == line) {
                l.delivery = Some(match outcome {
                    Ok(()) => Delivery::Delivered,
                    Err(why) => Delivery::Failed(why),
                });
                return;
            }
        }
    }

    /// A key press; returns what the network task must do, if anything.
    pub(crate) fn key(&mut self, key: Key) -> Option<Action> {
        match key {
            Key::Char(c) => {
                if self.composer.chars().count() < 2000 {
                    self.composer.push(c);
                }
                None
            }
            Key::Backspace => {
                self.composer.pop();
                None
            }
            Key::Esc => {
                self.composer.clear();
                None
            }
            Key::Up | Key::Down => {
                let order: Vec<UserId> = self.sorted_contacts().iter().map(|c| c.uid).collect();
                if order.is_empty() {
                    return None;
                }
                let at = self
                    .selected
                    .and_then(|s| order.iter().position(|u| *u == s))
                    .unwrap_or(0);
                let next = if key == Key::Up {
                    at.checked_sub(1).unwrap_or(order.len() - 1)
                } else {
                    (at + 1) % order.len()
                };
                self.select(order[next]);
                None
            }
            Key::Enter => self.submit(),
            Key::Interrupt => {
                self.quitting = true;
                Some(Action::Quit)
            }
        }
    }

    /// Shows `uid`'s conversation and marks it read.
    pub(crate) fn select(&mut self, uid: UserId) {
        self.selected = Some(uid);
        if let Some(c) = self.contacts.get_mut(&uid) {
            c.unread = 0;
        }
    }

    fn submit(&mut self) -> Option<Action> {
        let text = std::mem::take(&mut self.composer);
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        if let Some(cmd) = text.strip_prefix('/') {
            return match parse_command(cmd) {
                Ok(Command::Quit) => {
                    self.quitting = true;
                    Some(Action::Quit)
                }
                Ok(Command::Help) => {
                    self.notice = Some(HELP.into());
                    None
                }
                Ok(Command::Status { status, message }) => {
                    self.notice = Some(format!("setting status to {status}…"));
                    Some(Action::SetStatus { status, message })
                }
                Ok(Command::Add(uid)) => Some(Action::Add(uid)),
                Ok(Command::Remove(uid)) => Some(Action::Remove(uid)),
                Ok(Command::Info(uid)) => {
                    self.info(uid);
                    None
                }
                Err(e) => {
                    self.notice = Some(e);
                    None
                }
            };
        }
        let Some(to) = self.selected else {
            self.notice = Some("no contact selected: /add UID first".into());
            return None;
        };
        let id = self.line_id();
        self.conversations.entry(to).or_default().push(Line {
            id,
            at: now_s(),
            mine: true,
            system: false,
            text: text.to_owned(),
            delivery: Some(Delivery::Sending),
        });
        Some(Action::Send {
            to,
            text: text.to_owned(),
            line: id,
        })
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
            self.conversations.entry(uid).or_default().push(Line {
                id,
                at: now_s(),
                mine: false,
                system: true,
                text,
                delivery: None,
            });
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

/// A composer command (after the `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// `/status STATUS [message…]`
    Status {
        /// The status word.
        status: String,
        /// The rest of the line.
        message: Option<String>,
    },
    /// `/add UID`
    Add(UserId),
    /// `/remove UID`
    Remove(UserId),
    /// `/info UID`
    Info(UserId),
    /// `/help`
    Help,
    /// `/quit`
    Quit,
}

/// Parses a command line (without its `/`); the error says how to use it.
pub(crate) fn parse_command(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let name = words.next().unwrap_or_default();
    let uid = |w: Option<&str>, usage: &str| -> Result<UserId, String> {
        w.and_then(|w| w.parse::<u64>().ok())
            .map(UserId)
            .ok_or_else(|| format!("usage: {usage}"))
    };
    match name {
        "status" => {
            let status = words
                .next()
                .ok_or("usage: /status online|away|busy|offline [message]")?
                .to_owned();
            let rest: Vec<&str> = words.collect();
            let message = (!rest.is_empty()).then(|| rest.join(" "));
            Ok(Command::Status { status, message })
        }
        "add" => uid(words.next(), "/add UID").map(Command::Add),
        "remove" => uid(words.next(), "/remove UID").map(Command::Remove),
        "info" => uid(words.next(), "/info UID").map(Command::Info),
        "help" => Ok(Command::Help),
        "quit" | "exit" => Ok(Command::Quit),
        other => Err(format!("unknown command /{other}; /help lists them")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossip_common::Keypair;

    fn info(uid: u64, nick: &str, status: &str) -> UserInfo {
        let mut u = UserInfo::new(UserId(uid), Keypair::generate().public());
        u.nick_name = nick.into();
        u.status = status.into();
        u
    }

    fn typed(m: &mut Model, s: &str) -> Option<Action> {
        for c in s.chars() {
            m.key(Key::Char(c));
        }
        m.key(Key::Enter)
    }

    #[test]
    fn contacts_sort_online_first_and_follow_pushes() {
        let mut m = Model::default();
        m.set_contact_ids(&[UserId(1), UserId(2), UserId(3)]);
        m.presence(&info(1, "zoe", "offline"));
        m.presence(&info(2, "bob", "away"));
        m.presence(&info(3, "amy", "online"));
        let order: Vec<&str> = m
            .sorted_contacts()
            .iter()
            .map(|c| c.nick.as_str())
            .collect();
        assert_eq!(order, ["amy", "bob", "zoe"]);
        m.presence(&info(3, "amy", "offline"));
        let amy = &m.contacts[&UserId(3)];
        assert!(!amy.online && amy.last_seen.is_some());
        assert_eq!(m.sorted_contacts()[0].nick, "bob");
        // A push about someone not in the list is not shown.
        m.presence(&info(9, "eve", "online"));
        assert!(!m.contacts.contains_key(&UserId(9)));
    }

    #[test]
    fn messages_count_as_unread_until_their_conversation_is_shown() {
        let mut m = Model::default();
        m.set_contact_ids(&[UserId(1), UserId(2)]);
        m.select(UserId(1));
        m.message_in(UserId(2), "hi", 0);
        m.message_in(UserId(2), "there?", 0);
        m.message_in(UserId(1), "seen at once", 0);
        assert_eq!(m.contacts[&UserId(2)].unread, 2);
        assert_eq!(m.contacts[&UserId(1)].unread, 0);
        m.key(Key::Down);
        assert_eq!(m.selected, Some(UserId(2)));
        assert_eq!(m.contacts[&UserId(2)].unread, 0);
    }

    #[test]
    fn enter_sends_to_the_selected_contact_and_tracks_delivery() {
        let mut m = Model::default();
        m.set_contact_ids(&[UserId(5)]);
        assert_eq!(m.selected, Some(UserId(5)), "the only contact is selected");
        let Some(Action::Send { to, text, line }) = typed(&mut m, "hello bob ") else {
            panic!("no send");
        };
        assert_eq!((to, text.as_str()), (UserId(5), "hello bob"));
        assert!(m.composer.is_empty());
        assert_eq!(
            m.conversations[&UserId(5)][0].delivery,
            Some(Delivery::Sending)
        );
        m.delivered(line, Ok(()));
        assert_eq!(
            m.conversations[&UserId(5)][0].delivery,
            Some(Delivery::Delivered)
        );
        assert_eq!(typed(&mut m, "   "), None);
    }

    #[test]
    fn commands_parse_or_say_how_to_use_them() {
        let mut m = Model::default();
        assert_eq!(
            typed(&mut m, "/status away out for lunch"),
            Some(Action::SetStatus {
                status: "away".into(),
                message: Some("out for lunch".into())
            })
        );
        assert_eq!(typed(&mut m, "/add 42"), Some(Action::Add(UserId(42))));
        assert_eq!(
            typed(&mut m, "/remove 42"),
            Some(Action::Remove(UserId(42)))
        );
        assert_eq!(typed(&mut m, "/add bob"), None);
        assert_eq!(m.notice.as_deref(), Some("usage: /add UID"));
        assert_eq!(typed(&mut m, "/frobnicate"), None);
        assert!(m.notice.as_deref().unwrap().contains("/help"));
        assert_eq!(typed(&mut m, "hello"), None, "nobody to send to");
        assert_eq!(typed(&mut m, "/quit"), Some(Action::Quit));
        assert!(m.quitting);
    }

    #[test]
    fn info_shows_the_key_fingerprint() {
        let mut m = Model::default();
        m.set_contact_ids(&[UserId(7)]);
        let i = info(7, "bob", "online");
        let key = i.public_key;
        m.presence(&i);
        typed(&mut m, "/info 7");
        let shown: Vec<&str> = m.conversations[&UserId(7)]
            .iter()
            .map(|l| l.text.as_str())
            .collect();
        assert!(
            shown.iter().any(|l| l.contains(&fingerprint(&key))),
            "{shown:?}"
        );
    }
}
