//! Finding people: `gossip find`, and naming a contact by card, nickname or e-mail (what
//! `contacts add` and the app's `/add` share). Every person shown comes with their key's
//! fingerprint, since anyone can call themselves "bob".

use anyhow::bail;
use gossip_client::directory::{fingerprint, Found, Who};
use gossip_client::GossipClient;
use gossip_common::{Signed, UserId, UserInfo};
use serde_json::json;

/// One line about a person: `bob (Robert Smith, Berlin) 3648494103546560513, online, key 0123 …`.
pub(crate) fn describe(r: &UserInfo) -> String {
    let mut about: Vec<&str> = Vec::new();
    for part in [&r.name, &r.location] {
        if !part.trim().is_empty() {
            about.push(part);
        }
    }
    let about = if about.is_empty() {
        String::new()
    } else {
        format!(" ({})", about.join(", "))
    };
    let state = if r.is_online() { "online" } else { "offline" };
    format!(
        "{}{about} {}, {state}, key {}",
        r.nick_name,
        r.user_id,
        fingerprint(&r.public_key)
    )
}

/// A person as JSON.
pub(crate) fn to_json(r: &UserInfo) -> serde_json::Value {
    json!({
        "uid": r.user_id.0,
        "nick": r.nick_name,
        "name": r.name,
        "email": r.email,
        "location": r.location,
        "online": r.is_online(),
        "fingerprint": fingerprint(&r.public_key).replace(' ', ""),
    })
}

/// `gossip find TEXT…`.
pub(crate) async fn find(
    client: &GossipClient,
    text: &[String],
    limit: u32,
    json: bool,
) -> anyhow::Result<()> {
    let text = text.join(" ");
    let found = client.find(&text, Some(limit)).await?;
    if json {
        let list: Vec<_> = found.iter().map(|r| to_json(r)).collect();
        println!("{}", json!(list));
        return Ok(());
    }
    if found.is_empty() {
        println!("nobody found for {text:?}");
        return Ok(());
    }
    println!(
        "{:<20} {:<16} {:<20} {:<14} {:<8} KEY FINGERPRINT",
        "UID", "NICK", "NAME", "LOCATION", "ONLINE"
    );
    for r in &found {
        println!(
            "{:<20} {:<16} {:<20} {:<14} {:<8} {}",
            r.user_id.0,
            clip(&r.nick_name, 16),
            clip(&r.name, 20),
            clip(&r.location, 14),
            if r.is_online() { "yes" } else { "no" },
            fingerprint(&r.public_key)
        );
    }
    Ok(())
}

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// Who `typed` names, as one user, or why not in words a person can act on.
pub(crate) async fn resolve_one(
    client: &GossipClient,
    typed: &str,
) -> anyhow::Result<Signed<UserInfo>> {
    let who = Who::parse(typed);
    match client.resolve(&who).await?? {
        Found::One(r) => Ok(r),
        Found::NoOne => match who {
            Who::Uid(uid) | Who::Card(gossip_client::directory::Card { uid, .. }) => {
                bail!("no user {uid} is known to the server")
            }
            Who::Text(text) => bail!("nobody found for {text:?}: try `gossip find {text}`"),
        },
        Found::Several(list) => {
            let lines: Vec<String> = list.iter().map(|r| format!("  {}", describe(r))).collect();
            bail!(
                "{} people match {typed:?}; add one by UserID:\n{}",
                list.len(),
                lines.join("\n")
            )
        }
    }
}

/// Resolves every name, or none: the UserIDs to add, each shown as it is chosen (on stderr
/// when the output is JSON).
pub(crate) async fn resolve_all(
    client: &GossipClient,
    typed: &[String],
    json: bool,
) -> anyhow::Result<Vec<UserId>> {
    let mut uids = Vec::with_capacity(typed.len());
    for t in typed {
        // A bare UserID is added as it is, known here yet or not (its record may still be on
        // its way across the federation; it shows up when it arrives).
        if let Who::Uid(uid) = Who::parse(t) {
            uids.push(uid);
            continue;
        }
        // A name or card is shown, so that the person can check it is whom they meant.
        let r = resolve_one(client, t).await?;
        let line = format!("adding {}", describe(&r));
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        uids.push(r.user_id);
    }
    Ok(uids)
}
