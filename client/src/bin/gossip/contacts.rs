//! `gossip contacts add|remove|list`: the contact list.

use gossip_client::GossipClient;
use gossip_common::{Signed, UserId, UserInfo};
use serde_json::json;

use crate::args::{Args, Cmd, ContactsCmd};

/// `gossip contacts ACTION`, on a logged-in client.
pub(crate) async fn run(client: &GossipClient, args: &Args) -> anyhow::Result<()> {
    let Some(Cmd::Contacts { action }) = &args.command else {
        unreachable!("contacts only")
    };
    match action {
        ContactsCmd::Add { .. } | ContactsCmd::Remove { .. } => {
            match action {
                ContactsCmd::Add { who } => {
                    let uids = crate::people::resolve_all(client, who, args.json).await?;
                    client.add_contacts(&uids).await?
                }
                ContactsCmd::Remove { uids } => client.remove_contacts(uids).await?,
                ContactsCmd::List => unreachable!("matched above"),
            }
            let ids = client.contact_ids();
            if args.json {
                println!("{}", json!({ "contacts": ids }));
            } else {
                println!("contacts: {}", join(&ids));
            }
        }
        ContactsCmd::List => {
            let known: std::collections::HashMap<UserId, Signed<UserInfo>> = client
                .contacts()
                .into_iter()
                .map(|c| (c.user_id, c))
                .collect();
            let ids = client.contact_ids();
            if args.json {
                let list: Vec<_> = ids
                    .iter()
                    .map(|u| match known.get(u) {
                        Some(c) => json!({"uid": u.0, "nick": c.nick_name, "status": c.status, "message": c.status_message, "online": c.is_online()}),
                        None => json!({"uid": u.0, "nick": null, "status": null, "online": false}),
                    })
                    .collect();
                println!("{}", json!(list));
            } else {
                println!("{:<20} {:<16} {:<10} MESSAGE", "UID", "NICK", "STATUS");
                for u in ids {
                    match known.get(&u) {
                        Some(c) => println!(
                            "{:<20} {:<16} {:<10} {}",
                            u.0, c.nick_name, c.status, c.status_message
                        ),
                        None => println!("{:<20} {:<16} {:<10}", u.0, "?", "unknown"),
                    }
                }
            }
        }
    }
    Ok(())
}

fn join(ids: &[UserId]) -> String {
    ids.iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
