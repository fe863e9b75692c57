//! `gossip watch`: online until Ctrl-C, printing every presence change, message and notice as it
//! arrives, across server failovers.

use anyhow::{bail, Context};
use gossip_client::failover::Update;
use gossip_client::profile::Profile;
use gossip_client::Event;
use gossip_common::{UserId, UserInfo};
use serde_json::json;

use crate::args::{Args, Cmd};
use crate::session::{open_e2e, registered, servers_of};

/// `gossip watch`: online until Ctrl-C, printing presence changes, messages and notices, and
/// staying up across its server's death (it logs in to the nearest live server it knows and
/// says where).
pub(crate) async fn watch(profile: &Profile, args: &Args) -> anyhow::Result<()> {
    let Some(Cmd::Watch { status, listen }) = &args.command else {
        unreachable!("watch only")
    };
    let (key, mut settings, uid) = registered(profile)?;
    let servers = servers_of(args, &settings)?;
    let mut e2e = open_e2e(profile)?;
    // What each contact was last shown as (human output).
    let mut shown: std::collections::HashMap<UserId, (String, String)> = Default::default();
    let mut cfg = gossip_client::failover::Config::new(servers, key, uid, status);
    cfg.listen = Some(*listen);
    cfg.pins = settings.pins();
    // The keys go out with the online record itself; a key rotated later in the session is
    // published by the check at every (re)connection below.
    cfg.publish = e2e.published();
    let (session, mut updates) = gossip_client::failover::Failover::start(cfg)
        .await
        .with_context(|| format!("logging in as {uid}"))?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let nick_of = |from: UserId| {
        session
            .client()
            .and_then(|c| c.contacts().into_iter().find(|c| c.user_id == from))
            .map(|c| c.nick_name.clone())
            .unwrap_or_default()
    };
    loop {
        let update = tokio::select! {
            _ = &mut ctrl_c => break,
            u = updates.recv() => u,
        };
        let Some(update) = update else {
            bail!("the session ended")
        };
        let again = matches!(update, Update::Reconnected { .. });
        match update {
            Update::Connected { server } | Update::Reconnected { server } => {
                let client = session.client();
                if let Some(c) = &client {
                    if let Err(e) = c.publish_keys(&e2e).await {
                        eprintln!("could not publish encryption keys: {e}");
                    }
                }
                let contacts = client.map(|c| c.contacts()).unwrap_or_default();
                if args.json {
                    let event = if again { "reconnected" } else { "connected" };
                    println!(
                        "{}",
                        json!({"event": event, "server": server, "uid": uid.0})
                    );
                    for c in &contacts {
                        print_presence(c, true);
                    }
                } else {
                    if again {
                        println!("reconnected to {server}");
                    } else {
                        println!(
                            "online as {uid} ({status}) on {server}; watching {} contacts. Ctrl-C to go offline.",
                            contacts.len()
                        );
                    }
                    for c in &contacts {
                        println!("  {} ({}) is {}", c.nick_name, c.user_id, c.status);
                        shown.insert(c.user_id, (c.status.clone(), c.status_message.clone()));
                    }
                }
            }
            Update::Lost { server, why } => {
                if args.json {
                    println!("{}", json!({"event": "lost", "server": server, "why": why}));
                } else {
                    println!("lost {server} ({why}); finding another server…");
                }
            }
            Update::Pins(pins) => {
                let new: Vec<_> = pins
                    .iter()
                    .filter(|(s, _)| !settings.server_keys.contains_key(*s))
                    .collect();
                for (server, key) in &new {
                    if !args.json {
                        println!("pinned {server}'s server key {key}");
                    }
                }
                settings.set_pins(&pins);
                if let Err(e) = profile.save_settings(&settings) {
                    tracing::warn!(error = %e, "could not save the pinned server keys");
                }
            }
            Update::Servers(list) => {
                // Kept in the profile, so the next start can reach any of them too.
                settings.servers = list;
                if let Err(e) = profile.save_settings(&settings) {
                    tracing::warn!(error = %e, "could not save the learned servers");
                }
            }
            Update::Event(Event::Presence(r)) => {
                // A record can change without its presence changing (the user published
                // encryption keys, or an address): said once, not again.
                let now = (r.status.clone(), r.status_message.clone());
                if args.json || shown.insert(r.user_id, now.clone()) != Some(now) {
                    print_presence(&r, args.json)
                }
            }
            Update::Event(Event::Message(m)) => {
                if args.json {
                    println!(
                        "{}",
                        json!({"event": "message", "from": m.from.0, "sent_ms": m.sent_ms, "text": m.text})
                    );
                } else {
                    println!("{} ({}) says: {}", nick_of(m.from), m.from, m.text);
                }
            }
            Update::Event(Event::Unreachable(u)) => {
                if args.json {
                    println!("{}", json!({"event": "unreachable", "uid": u.0}));
                } else {
                    println!("{u} is unreachable; showing offline");
                }
            }
            Update::Event(Event::ServerMessage(t)) => {
                if args.json {
                    println!("{}", json!({"event": "servermsg", "text": t}));
                } else {
                    println!("server: {t}");
                }
            }
            Update::Event(Event::Error { code, text }) => {
                eprintln!("server error {code:?}: {text}")
            }
            Update::Event(Event::Relayed { message, request }) => {
                let opened = match session.client() {
                    Some(c) => c.open_relayed(&mut e2e, &message).await,
                    None => Err(gossip_client::ClientError::NotLoggedIn),
                };
                let from = message.from;
                match opened {
                    Ok(plain) => {
                        let text = String::from_utf8_lossy(&plain);
                        if let Err(e) = e2e.history().record(&gossip_client::history::Entry {
                            id: message.id.clone(),
                            peer: from,
                            outgoing: false,
                            text: text.to_string(),
                            sent_ms: message.sent,
                            state: "received".into(),
                        }) {
                            eprintln!("could not keep the message in the history: {e}");
                        }
                        if args.json {
                            println!(
                                "{}",
                                json!({"event": "message", "id": message.id, "from": from.0, "sent_ms": message.sent, "text": text, "request": request, "encrypted": true})
                            );
                        } else {
                            let who = if request { " (not a contact)" } else { "" };
                            println!("{} ({from}){who} says: {text}", nick_of(from));
                        }
                    }
                    Err(e) => eprintln!("a message from {from} could not be opened: {e}"),
                }
            }
            Update::Event(Event::Delivered { id, to }) => {
                match e2e.history().delivered(&id) {
                    Ok(true) => {}
                    // Told before (notices can come twice), or not sent from this profile.
                    Ok(false) => continue,
                    Err(e) => {
                        eprintln!("could not mark the message delivered in the history: {e}")
                    }
                }
                if args.json {
                    println!("{}", json!({"event": "delivered", "id": id, "to": to.0}));
                } else {
                    println!("message {id} delivered to {to}");
                }
            }
            Update::Event(Event::Disconnected(_)) => {}
        }
        use std::io::Write;
        std::io::stdout().flush()?;
    }
    session.logout().await?;
    if !args.json {
        println!("offline");
    }
    Ok(())
}

fn print_presence(r: &UserInfo, json: bool) {
    if json {
        println!(
            "{}",
            json!({"event": "presence", "uid": r.user_id.0, "nick": r.nick_name, "status": r.status, "message": r.status_message, "online": r.is_online()})
        );
    } else {
        let msg = if r.status_message.is_empty() {
            String::new()
        } else {
            format!(": {}", r.status_message)
        };
        println!("{} ({}) is now {}{}", r.nick_name, r.user_id, r.status, msg);
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
