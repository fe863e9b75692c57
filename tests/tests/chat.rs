//! `gossip chat` in a real terminal (tmux): two people on two federated nodes see each other's
//! presence change, chat, and change status; start-up with 200 contacts is measured.

use std::path::Path;
use std::time::Duration;

use gossip_tests::gossipd::{Gossipd, Spec};
use gossip_tests::tmux::Tmux;
use gossip_tests::{bin_path, wait_for};

fn gossip(home: &Path, args: &[&str]) -> String {
    gossip_tests::gossip_cli(home, args)
}

fn register(home: &Path, server: &str, nick: &str) -> u64 {
    gossip(home, &["keygen"]);
    let out = gossip(
        home,
        &["--json", "register", "--server", server, "--nick", nick],
    );
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["uid"]
        .as_u64()
        .unwrap()
}

fn chat(name: &str, home: &Path) -> Tmux {
    let argv = vec![
        bin_path("gossip").display().to_string(),
        "--home".into(),
        home.display().to_string(),
        "chat".into(),
    ];
    Tmux::start(name, 80, 24, &argv, &[("NO_COLOR", "1")])
}

/// The contact pane's line for `nick` (the left 30 columns of the row that names it).
fn contact_row(screen: &str, nick: &str) -> Option<String> {
    screen
        .lines()
        .map(|l| l.chars().take(30).collect::<String>())
        .find(|l| l.contains(nick))
}

#[test]
fn two_people_on_two_nodes_see_presence_and_chat_in_the_terminal_app() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = Gossipd::start(&Spec::new(dir.path().join("n1")).fast_probes())
        .unwrap_or_else(|e| panic!("{e}"));
    let n2 = Gossipd::start(
        &Spec::new(dir.path().join("n2"))
            .fast_probes()
            .args(["--peer".to_string(), n1.identity()]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let a = register(&alice, &n1.addr(), "alice");
    let b = register(&bob, &n2.addr(), "bob");
    gossip(&alice, &["contacts", "add", &b.to_string()]);
    // Bob's node learns alice's record across the federation before he adds her.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !gossip(&bob, &["contacts", "add", &a.to_string()]).contains(&a.to_string())
        || !gossip(&bob, &["--json", "contacts", "list"]).contains("alice")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "alice's record never reached node 2"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let alice_tty = chat("alice", &alice);
    alice_tty.wait_for(
        "alice's app with bob offline",
        Duration::from_secs(10),
        |s| contact_row(s, "bob").is_some_and(|r| r.contains("offline")) && s.contains("ready in"),
    );
    let bob_tty = chat("bob", &bob);
    let t = alice_tty.wait_for(
        "bob online in alice's contact pane",
        Duration::from_secs(10),
        |s| contact_row(s, "bob").is_some_and(|r| r.contains("● bob") && r.contains("online")),
    );
    eprintln!("bob's login shown to alice after {t:?}");

    // Bob goes away: alice's contact pane shows it within a second.
    bob_tty.wait_for("bob's app ready", Duration::from_secs(10), |s| {
        s.contains("ready in")
    });
    bob_tty.type_text("/status away lunch", true);
    let t = alice_tty.wait_for("bob away on alice's screen", Duration::from_secs(1), |s| {
        contact_row(s, "bob").is_some_and(|r| r.contains("◐ bob") && r.contains("away"))
    });
    eprintln!("bob's away shown to alice after {t:?}");
    assert!(
        alice_tty.screen().contains("away: lunch"),
        "{}",
        alice_tty.screen()
    );

    // Alice writes to bob (her only contact, selected): it appears in his conversation pane,
    // and hers shows it delivered.
    alice_tty.type_text("hello bob, lunch?", true);
    bob_tty.wait_for(
        "alice's message on bob's screen",
        Duration::from_secs(5),
        |s| s.contains("alice: hello bob, lunch?"),
    );
    alice_tty.wait_for("delivered mark", Duration::from_secs(5), |s| {
        s.contains("me: hello bob, lunch? ✓")
    });

    // /status busy changes what the contact sees.
    bob_tty.type_text("/status busy", true);
    alice_tty.wait_for("bob busy on alice's screen", Duration::from_secs(1), |s| {
        contact_row(s, "bob").is_some_and(|r| r.contains("⊘ bob") && r.contains("busy"))
    });

    // /quit goes offline (alice sees it) and ends the app.
    bob_tty.type_text("/quit", true);
    alice_tty.wait_for("bob offline after his /quit", Duration::from_secs(5), |s| {
        contact_row(s, "bob").is_some_and(|r| r.contains("○ bob") && r.contains("offline"))
    });
    let gone = std::time::Instant::now() + Duration::from_secs(5);
    while bob_tty.alive() {
        assert!(
            std::time::Instant::now() < gone,
            "the app did not exit on /quit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop((n1, n2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_draws_200_contacts_at_start_and_survives_its_server_going_away() {
    let dir = tempfile::tempdir().unwrap();
    // Two hundred registrations from one address in a few seconds.
    let mut node = Gossipd::start(
        &Spec::new(dir.path().join("n")).args(["--registrations-per-minute", "1000"]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut uids = Vec::new();
    for i in 0..200 {
        let (c, _e) =
            gossip_client::GossipClient::connect(&node.addr(), gossip_common::Keypair::generate())
                .await
                .unwrap();
        uids.push(
            c.register(|u| u.nick_name = format!("friend{i:03}"))
                .await
                .unwrap()
                .0
                .to_string(),
        );
    }
    let carol = dir.path().join("carol");
    register(&carol, &node.addr(), "carol");
    let mut args = vec!["contacts", "add"];
    args.extend(uids.iter().map(String::as_str));
    gossip(&carol, &args);
    let tty = chat("carol", &carol);
    tty.wait_for("200 contacts drawn", Duration::from_secs(10), |s| {
        s.contains("Contacts 0/200 online") && s.contains("friend000") && s.contains("ready in")
    });
    let screen = tty.screen();
    let ms: u64 = screen
        .split("ready in ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no start-up time on screen:\n{screen}"));
    eprintln!("start-up to a drawn list of 200 contacts: {ms} ms");
    // The target is 300 ms with a release build; debug builds on a busy machine get slack.
    assert!(ms < 2_000, "start-up took {ms} ms");

    // The server goes away: a status, not a crash; typing still works.
    node.kill9();
    tty.wait_for(
        "the lost server as a status",
        Duration::from_secs(15),
        |s| s.contains("no server"),
    );
    tty.type_text("still typing", false);
    tty.wait_for(
        "the composer echoing while offline",
        Duration::from_secs(2),
        |s| s.contains("still typing"),
    );
    assert!(tty.alive());
    let again = node.spec().clone().port(node.base_port);
    let node = wait_for(
        "the node to restart on its port",
        Duration::from_secs(10),
        || Gossipd::start(&again).ok(),
    )
    .await;
    tty.wait_for("the app logged in again", Duration::from_secs(15), |s| {
        s.contains("reconnects 1")
    });
    drop(node);
}

/// Lines of `screen` from the conversation pane (right of the contact pane).
fn conversation_pane(screen: &str) -> String {
    screen
        .lines()
        .map(|l| l.chars().skip(30).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_composer_edits_mid_line_and_the_pane_scrolls_and_searches_the_stored_history() {
    let dir = tempfile::tempdir().unwrap();
    let node = Gossipd::start(&Spec::new(dir.path().join("n"))).unwrap_or_else(|e| panic!("{e}"));
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let a = register(&alice, &node.addr(), "alice");
    register(&bob, &node.addr(), "bob");
    register(&dir.path().join("carol"), &node.addr(), "carol");
    gossip(&bob, &["contacts", "add", &a.to_string()]);
    // Two hundred messages of an earlier conversation, in Bob's history (where `gossip chat`
    // and `gossip watch` keep every message), a minute apart.
    {
        let history =
            gossip_client::history::History::open(&bob.join("messages.db")).expect("history");
        let start_ms = 1_700_000_000_000u64;
        for i in 0..200u64 {
            history
                .record(&gossip_client::history::Entry {
                    id: format!("old-{i:03}"),
                    peer: gossip_common::UserId(a),
                    outgoing: i % 2 == 1,
                    text: format!("message {i:03}"),
                    sent_ms: start_ms + i * 60_000,
                    state: if i % 2 == 1 { "delivered" } else { "received" }.into(),
                })
                .unwrap();
        }
    }
    let tty = chat("bob", &bob);
    tty.wait_for(
        "the end of the stored conversation",
        Duration::from_secs(10),
        |s| s.contains("ready in") && conversation_pane(s).contains("message 199"),
    );
    assert!(!conversation_pane(&tty.screen()).contains("message 150"));

    // The directory inside the app: /find lists, /add NUMBER adds.
    tty.type_text("/find car", true);
    tty.wait_for("carol found", Duration::from_secs(5), |s| {
        s.contains("found for \"car\"") && s.contains(" 1. carol")
    });
    tty.type_text("/add 1", true);
    tty.wait_for("carol in the contact pane", Duration::from_secs(5), |s| {
        contact_row(s, "carol").is_some() && s.contains("added carol")
    });
    tty.key("Escape");

    // `/search` finds a message older than the page that was loaded.
    tty.type_text("/search message 042", true);
    tty.wait_for("the old match on screen", Duration::from_secs(5), |s| {
        conversation_pane(s).contains("alice: message 042")
    });
    // Back at the end, then a screen at a time back to the first message, past the first
    // page of history (100 messages) into the second.
    for _ in 0..20 {
        tty.key("NPage");
    }
    tty.wait_for("the end again", Duration::from_secs(5), |s| {
        conversation_pane(s).contains("message 199")
    });
    let pages = std::cell::Cell::new(0);
    tty.wait_for(
        "the first message, by Page Up",
        Duration::from_secs(20),
        |s| {
            if conversation_pane(s).contains("alice: message 000") {
                return true;
            }
            tty.key("PPage");
            pages.set(pages.get() + 1);
            false
        },
    );
    eprintln!("the first of 200 messages after {} Page Ups", pages.get());
    assert!(
        tty.screen().contains("scrolled back"),
        "the title says the pane is scrolled back"
    );

    // A typed line edited in the middle: a word inserted after Home and →, the last word
    // replaced with Ctrl-W.
    tty.type_text("lunch at noon", false);
    tty.key("Home");
    for _ in 0..5 {
        tty.key("Right");
    }
    tty.type_text(" tomorrow", false);
    tty.key("End");
    tty.key("C-w");
    tty.type_text("one", false);
    tty.wait_for("the edited line", Duration::from_secs(2), |s| {
        s.contains("lunch tomorrow at one")
    });
    tty.key("Enter");
    // Sending goes back to the end of the conversation, and the servers take it.
    tty.wait_for("the edited message sent", Duration::from_secs(10), |s| {
        conversation_pane(s).contains("me: lunch tomorrow at one ✓")
    });
    let sent = gossip(&bob, &["--json", "history", &a.to_string(), "--limit", "1"]);
    assert!(sent.contains("lunch tomorrow at one"), "{sent}");
    drop(node);
}
