//! The message commands: `send` (relayed and end-to-end encrypted, or `--direct`) and
//! `history` (the conversation kept in the profile's database).

use anyhow::Context;
use gossip_client::profile::Profile;
use gossip_client::GossipClient;
use gossip_common::UserId;
use serde_json::json;

use crate::args::{Args, Cmd};
use crate::session::{now_ms, open_e2e};

/// `gossip send UID TEXT [--direct]`, on a logged-in client.
pub(crate) async fn send(
    profile: &Profile,
    client: &GossipClient,
    args: &Args,
) -> anyhow::Result<()> {
    match &args.command {
        Some(Cmd::Send {
            uid: to,
            text,
            direct: true,
        }) => {
            client.send_message(*to, text).await?;
            if !args.json {
                println!("sent to {to}");
            }
        }
        Some(Cmd::Send {
            uid: to,
            text,
            direct: false,
        }) => {
            let mut e2e = open_e2e(profile)?;
            let id = client
                .send_encrypted(&mut e2e, *to, text.as_bytes())
                .await
                .with_context(|| format!("sending to {to}"))?;
            e2e.history().record(&gossip_client::history::Entry {
                id: id.clone(),
                peer: *to,
                outgoing: true,
                text: text.clone(),
                sent_ms: now_ms(),
                state: "sent".into(),
            })?;
            if args.json {
                println!("{}", json!({"sent": id, "to": to.0}));
            } else {
                println!("sent to {to} (encrypted, kept by the servers until delivered)");
            }
        }
        _ => unreachable!("send only"),
    }
    Ok(())
}

/// `gossip history UID`: the conversation with a user, from the profile's database.
pub(crate) fn history(
    profile: &Profile,
    peer: UserId,
    limit: usize,
    json_out: bool,
) -> anyhow::Result<()> {
    let e2e = open_e2e(profile)?;
    let conv = e2e.history().conversation(peer, limit)?;
    for e in &conv {
        if json_out {
            println!(
                "{}",
                json!({"id": e.id, "peer": e.peer.0, "outgoing": e.outgoing, "text": e.text, "sent_ms": e.sent_ms, "state": e.state})
            );
        } else {
            let when = time::OffsetDateTime::from_unix_timestamp((e.sent_ms / 1000) as i64)
                .ok()
                .and_then(|t| {
                    t.format(time::macros::format_description!(
                        "[year]-[month]-[day] [hour]:[minute]:[second]"
                    ))
                    .ok()
                })
                .unwrap_or_default();
            if e.outgoing {
                println!("{when} me → {peer}: {} ({})", e.text, e.state);
            } else {
                println!("{when} {peer} → me: {}", e.text);
            }
        }
    }
    if conv.is_empty() && !json_out {
        println!("no messages with {peer} in this profile");
    }
    Ok(())
}
