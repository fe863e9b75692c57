use super::*;
use gossip_client::directory::fingerprint;
use gossip_common::Keypair;

fn info(uid: u64, nick: &str, status: &str) -> UserInfo {
    let mut u = UserInfo::new(UserId(uid), Keypair::generate().public());
    u.nick_name = nick.into();
    u.status = status.into();
    u
}

/// An 80×24 app.
fn model() -> Model {
    Model::new(None, "test:1".into(), "online".into(), false)
}

fn typed(m: &mut Model, s: &str) -> Vec<Action> {
    m.key(Key::Paste(s.into()));
    m.key(Key::Enter);
    m.take_actions()
}

fn past(i: u64) -> Past {
    Past {
        key: format!("m{i}"),
        sent_ms: 1_000 * i,
        mine: false,
        text: format!("old message {i}"),
        state: "received".into(),
    }
}

fn visible_texts(m: &Model) -> String {
    m.visible_rows(m.selected.unwrap())
        .iter()
        .map(|r| r.text.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn contacts_sort_online_first_and_follow_pushes() {
    let mut m = model();
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
fn unread_messages_are_counted_then_marked_with_a_rule_and_can_ring() {
    let mut m = model();
    m.set_contact_ids(&[UserId(1), UserId(2)]);
    m.select(UserId(1));
    m.message_in(UserId(2), "hi", 0, None);
    assert!(!m.bell, "no bell unless asked for");
    typed(&mut m, "/notify on");
    assert!(m.notify);
    m.message_in(UserId(2), "there?", 0, None);
    assert!(m.bell, "a message to a contact not on screen rings");
    m.message_in(UserId(1), "seen at once", 0, None);
    assert_eq!(m.contacts[&UserId(2)].unread, 2);
    assert_eq!(m.contacts[&UserId(1)].unread, 0);
    m.key(Key::NextContact);
    assert_eq!(m.selected, Some(UserId(2)));
    assert_eq!(m.contacts[&UserId(2)].unread, 0);
    let rows = m.rows(UserId(2));
    assert!(
        rows[0].text.contains(" 1970-01-01 "),
        "the day's rule: {rows:?}"
    );
    assert!(rows[1].text.contains(" new "), "the unread rule: {rows:?}");
    assert!(rows[2].text.ends_with("hi"));
    // Answering clears the rule.
    typed(&mut m, "ok");
    assert!(!m.rows(UserId(2)).iter().any(|r| r.text.contains(" new ")));
}

#[test]
fn enter_sends_to_the_selected_contact_and_tracks_delivery() {
    let mut m = model();
    m.set_contact_ids(&[UserId(5)]);
    assert_eq!(m.selected, Some(UserId(5)), "the only contact is selected");
    let actions = typed(&mut m, "hello bob ");
    let Some(Action::Send { to, text, line }) = actions.last().cloned() else {
        panic!("no send in {actions:?}");
    };
    assert_eq!((to, text.as_str()), (UserId(5), "hello bob"));
    assert!(m.composer.is_empty());
    let delivery = |m: &Model| m.conversations[&UserId(5)].lines[0].delivery.clone();
    assert_eq!(delivery(&m), Some(Delivery::Sending));
    m.sent(line, Ok("id-1".into()));
    assert_eq!(delivery(&m), Some(Delivery::Sent));
    m.delivered("id-1");
    assert_eq!(delivery(&m), Some(Delivery::Delivered));
    assert!(visible_texts(&m).contains("me: hello bob ✓✓"));
    assert!(typed(&mut m, "   ").is_empty());
}

#[test]
fn commands_are_carried_out_or_say_how_to_use_them() {
    let mut m = model();
    assert_eq!(
        typed(&mut m, "/status away out for lunch"),
        [Action::SetStatus {
            status: "away".into(),
            message: Some("out for lunch".into())
        }]
    );
    assert_eq!(typed(&mut m, "/add bob"), [Action::Add("bob".into())]);
    assert_eq!(typed(&mut m, "/find bob"), [Action::Find("bob".into())]);
    assert!(typed(&mut m, "/remove bob").is_empty(), "not a contact");
    assert!(m.notice.as_deref().unwrap().contains("no contact"));
    assert!(typed(&mut m, "/frobnicate").is_empty());
    assert!(m.notice.as_deref().unwrap().contains("/help"));
    assert!(typed(&mut m, "hello").is_empty(), "nobody to send to");
    assert_eq!(typed(&mut m, "/quit"), [Action::Quit]);
    assert!(m.quitting);
}

#[test]
fn a_find_result_is_added_by_its_number() {
    let mut m = model();
    m.found(
        "bob".into(),
        vec![
            Person {
                uid: UserId(11),
                about: "bob".into(),
            },
            Person {
                uid: UserId(12),
                about: "bobby".into(),
            },
        ],
    );
    assert!(m.notice.as_deref().unwrap().contains("2 found"));
    assert_eq!(typed(&mut m, "/add 2"), [Action::Add("12".into())]);
    assert!(m.found.is_none(), "the list closes once one is chosen");
    m.found("zed".into(), vec![]);
    assert!(m.found.is_none());
    assert!(m.notice.as_deref().unwrap().contains("nobody found"));
}

#[test]
fn tab_gives_the_contact_list_the_arrows_and_the_composer_its_history() {
    let mut m = model();
    m.set_contact_ids(&[UserId(1), UserId(2)]);
    m.presence(&info(1, "amy", "online"));
    m.presence(&info(2, "bob", "online"));
    m.select(UserId(1));
    typed(&mut m, "first line");
    typed(&mut m, "second line");
    // In the composer, ↑ is the input history.
    m.key(Key::Up);
    assert_eq!(m.composer.text(), "second line");
    assert_eq!(m.selected, Some(UserId(1)));
    m.key(Key::Esc);
    // Tab: the arrows move through the contacts; typing goes back to the composer.
    m.key(Key::Tab);
    assert_eq!(m.focus, Focus::Contacts);
    m.key(Key::Down);
    assert_eq!(m.selected, Some(UserId(2)));
    m.key(Key::Char('x'));
    assert_eq!(
        (m.focus, m.composer.text().as_str()),
        (Focus::Composer, "x")
    );
}

#[test]
fn a_line_is_edited_in_the_middle_before_it_is_sent() {
    let mut m = model();
    m.set_contact_ids(&[UserId(5)]);
    m.take_actions();
    m.key(Key::Paste("meet at noon".into()));
    m.key(Key::WordLeft);
    m.key(Key::DeleteWord);
    m.key(Key::Paste("by the fountain ".into()));
    m.key(Key::End);
    m.key(Key::Paste("!".into()));
    m.key(Key::Enter);
    assert!(matches!(
        m.take_actions().as_slice(),
        [Action::Send { text, .. }] if text == "meet by the fountain noon!"
    ));
}

#[test]
fn history_is_read_on_first_view_and_page_by_page_while_scrolling_back() {
    let mut m = model();
    m.set_contact_ids(&[UserId(5)]);
    assert_eq!(
        m.take_actions(),
        [Action::LoadHistory {
            peer: UserId(5),
            cursor: Cursor { before: None }
        }]
    );
    m.history(UserId(5), (101..=200).map(past).collect(), false);
    assert!(visible_texts(&m).contains("old message 200"));
    // Back a screen at a time: the next page is asked for before the top is reached, once.
    let mut asked = Vec::new();
    for _ in 0..10 {
        m.key(Key::PageUp);
        asked.extend(m.take_actions());
    }
    assert_eq!(
        asked,
        [Action::LoadHistory {
            peer: UserId(5),
            cursor: Cursor {
                before: Some((101_000, "m101".into()))
            }
        }]
    );
    m.history(UserId(5), (1..=100).map(past).collect(), true);
    for _ in 0..20 {
        m.key(Key::PageUp);
    }
    assert!(m.take_actions().is_empty(), "the history has no more");
    let shown = visible_texts(&m);
    assert!(shown.contains("old message 1\n"), "{shown}");
    // The wheel and PgDn come back down; a message arriving meanwhile does not move the view.
    m.key(Key::WheelDown);
    let before = visible_texts(&m);
    m.message_in(UserId(5), "new one", 0, None);
    assert_eq!(visible_texts(&m), before);
    for _ in 0..40 {
        m.key(Key::PageDown);
    }
    assert!(visible_texts(&m).ends_with("new one"));
}

#[test]
fn search_jumps_to_older_matches_and_asks_the_history_past_the_loaded_lines() {
    let mut m = model();
    m.set_contact_ids(&[UserId(5)]);
    m.take_actions();
    m.history(UserId(5), (101..=200).map(past).collect(), false);
    assert!(typed(&mut m, "/search message 150").is_empty());
    assert!(visible_texts(&m).contains("old message 150"));
    let hit = m.conversations[&UserId(5)].hit.unwrap();
    // Not among the loaded lines: the history is asked, from before the oldest loaded.
    assert_eq!(
        typed(&mut m, "/search message 42"),
        [Action::SearchHistory {
            peer: UserId(5),
            text: "message 42".into(),
            cursor: Cursor {
                before: Some((101_000, "m101".into()))
            }
        }]
    );
    m.search_result(UserId(5), "message 42", (42..=100).map(past).collect());
    assert!(visible_texts(&m).contains("old message 42"));
    assert_ne!(m.conversations[&UserId(5)].hit, Some(hit));
    // `/search` alone goes on to the next older match: the history, before message 42.
    assert_eq!(
        typed(&mut m, "/search"),
        [Action::SearchHistory {
            peer: UserId(5),
            text: "message 42".into(),
            cursor: Cursor {
                before: Some((42_000, "m42".into()))
            }
        }]
    );
    m.search_result(UserId(5), "message 42", vec![]);
    assert!(m.notice.as_deref().unwrap().contains("no older message"));
}

#[test]
fn info_shows_the_key_fingerprint() {
    let mut m = model();
    m.set_contact_ids(&[UserId(7)]);
    let i = info(7, "bob", "online");
    let key = i.public_key;
    m.presence(&i);
    typed(&mut m, "/info bob");
    let shown: Vec<&str> = m.conversations[&UserId(7)]
        .lines
        .iter()
        .map(|l| l.text.as_str())
        .collect();
    assert!(
        shown.iter().any(|l| l.contains(&fingerprint(&key))),
        "{shown:?}"
    );
}
