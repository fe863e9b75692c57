//! Finding people without their UserID, with real processes: `gossip find` on one node finds a
//! user registered on another, `gossip contacts add` takes a nickname (showing the fingerprint)
//! or a pasted contact card, and refuses an ambiguous name or a forged card.

use std::path::Path;
use std::process::Command;

use gossip_tests::bin_path;
use gossip_tests::gossipd::Gossipd;

use crate::processes::{
    gossip, json, keygen_and_register, keygen_and_register_with, spec, start, wait_json, wait_tree,
};

/// Runs `gossip` expecting it to fail; its stderr.
fn gossip_fails(home: &Path, args: &[&str]) -> String {
    let out = Command::new(bin_path("gossip"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "gossip {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn people_are_found_by_name_and_added_by_name_or_card_from_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let n0 = start(&spec(&dir.path().join("n0")).fast_probes());
    let n1 = start(
        &spec(&dir.path().join("n1"))
            .fast_probes()
            .args(["--peer".to_string(), n0.identity()]),
    );
    let nodes = [n0, n1];
    let ids: Vec<String> = nodes.iter().map(Gossipd::identity).collect();
    wait_tree(&nodes, &ids, "the two nodes to link");

    let (alice, bob, carol) = (
        dir.path().join("alice"),
        dir.path().join("bob"),
        dir.path().join("carol"),
    );
    let a = keygen_and_register(&alice, "alice", &nodes[0]);
    // Bob registers on the other node, with a name, an e-mail and a town.
    let b = keygen_and_register_with(
        &bob,
        "bob",
        &nodes[1],
        &[
            "--name",
            "Robert Smith",
            "--email",
            "rob@example.org",
            "--location",
            "Berlin",
        ],
    );
    // Someone else whose nickname starts the same way.
    keygen_and_register(&carol, "bobby", &nodes[1]);
    let bob_key = json(&gossip(&bob, &["--json", "whoami"]))["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();

    // From node 0, Alice finds Bob by a word of his name, once his record has arrived.
    wait_json(
        &alice,
        &["--json", "find", "rob"],
        "Bob's record to be found on node 0",
        |v| {
            v.as_array()
                .is_some_and(|l| l.len() == 1 && l[0]["uid"] == b)
        },
    );
    let found = json(&gossip(&alice, &["--json", "find", "ROBERT", "berl"]));
    assert_eq!(found[0]["nick"], "bob");
    assert_eq!(found[0]["location"], "Berlin");
    assert_eq!(found[0]["fingerprint"], bob_key.replace(' ', ""));
    let both = json(&gossip(&alice, &["--json", "find", "bob"]));
    let nicks: Vec<&str> = both
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["nick"].as_str().unwrap())
        .collect();
    assert_eq!(nicks, ["bob", "bobby"], "the exact word first");
    let table = gossip(&alice, &["find", "rob"]);
    assert!(
        table.contains(&b.to_string()) && table.contains(&bob_key),
        "{table}"
    );

    // "bo" is both of them: listed, nothing added.
    let err = gossip_fails(&alice, &["contacts", "add", "bo"]);
    assert!(
        err.contains("2 people match") && err.contains("bobby"),
        "{err}"
    );
    let listed = json(&gossip(&alice, &["--json", "contacts", "list"]));
    assert_eq!(listed.as_array().unwrap().len(), 0);
    // "bob" is exactly one nickname: added, after showing who and with which key.
    let out = gossip(&alice, &["contacts", "add", "bob"]);
    assert!(
        out.contains("adding bob (Robert Smith, Berlin)") && out.contains(&bob_key),
        "{out}"
    );
    let listed = json(&gossip(&alice, &["--json", "contacts", "list"]));
    assert_eq!(listed[0]["uid"], b);

    // Alice's card, pasted to Carol (on node 1) as one line, adds her.
    wait_json(
        &carol,
        &["--json", "find", "alice"],
        "Alice's record on node 1",
        |v| v[0]["uid"] == a,
    );
    let card = gossip(&alice, &["whoami", "--card"]).trim().to_owned();
    assert!(
        card.starts_with(&format!("alice <gossip:{a}?fp=")),
        "{card}"
    );
    let out = gossip(&carol, &["contacts", "add", &card]);
    assert!(out.contains("adding alice"), "{out}");
    let listed = json(&gossip(&carol, &["--json", "contacts", "list"]));
    assert_eq!(listed[0]["uid"], a);
    // A card whose fingerprint is not the key the servers hold is refused.
    let fp_at = card.find("fp=").unwrap() + 3;
    let mut forged = card.clone();
    let flipped = if &card[fp_at..fp_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    forged.replace_range(fp_at..fp_at + 1, flipped);
    let err = gossip_fails(&bob, &["contacts", "add", &forged]);
    assert!(err.contains("forged or out of date"), "{err}");
    let err = gossip_fails(&bob, &["contacts", "add", "nobody-by-this-name"]);
    assert!(err.contains("nobody found"), "{err}");
}
