//! What the composer's Enter does: a message to the selected contact, or a `/command`
//! carried out (status, contacts, the directory, search, notifications).

use gossip_client::directory::fingerprint;
use gossip_common::UserId;

use super::{now_s, Action, Line, Model, LONG_HELP};
use crate::chat::command::{parse_command, Command};
use crate::chat::conversation::Delivery;

impl Model {
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

    pub(super) fn submit(&mut self) {
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
    pub(super) fn search_in(&mut self, peer: UserId, text: &str, fresh: bool) {
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
}
