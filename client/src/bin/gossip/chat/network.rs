//! The network task of the app: owns the [`GossipClient`], logs in (again after every loss),
//! carries out the UI's [`Action`]s (sending, status, contacts, the directory) and turns the
//! client's events into [`Net`] reports. It never waits on the UI: reports go through a
//! bounded queue the UI drains on every turn.

use std::sync::Arc;
use std::time::Duration;

use gossip_client::{Event, GossipClient};
use gossip_common::{UserId, UserInfo};
use tokio::sync::mpsc;

use super::model::{Action, Person};
use super::{Net, Options};

/// How the serving of one connection ended.
enum End {
    Quit,
    Lost(String),
}

/// Owns the connection: logs in (again after every loss), serves actions and events.
pub(super) async fn network(
    opts: Options,
    mut actions: mpsc::Receiver<Action>,
    out: mpsc::Sender<Net>,
) {
    // Messages are end-to-end encrypted and relayed (`docs/messaging.md`); the Olm state and
    // the history live in the profile's database.
    let e2e = match crate::open_e2e(&opts.profile) {
        Ok(e) => Arc::new(tokio::sync::Mutex::new(e)),
        Err(e) => {
            let _ = out
                .send(Net::Lost(format!(
                    "cannot open the message database: {e:#}"
                )))
                .await;
            return;
        }
    };
    loop {
        let end = match login(&opts).await {
            Ok((client, events, listener)) => {
                let client = Arc::new(client);
                if let Err(e) = client.publish_keys(&*e2e.lock().await).await {
                    let _ = out
                        .send(Net::Notice(format!("encryption keys not published: {e}")))
                        .await;
                }
                let _ = out
                    .send(Net::LoggedIn {
                        server: client.server().to_owned(),
                        me: client.me(),
                        ids: client.contact_ids(),
                        contacts: client.contacts(),
                    })
                    .await;
                let end = serve(&client, &e2e, events, &mut actions, &out, opts.uid).await;
                drop(listener);
                if let (End::Quit, Ok(client)) = (&end, Arc::try_unwrap(client)) {
                    let _ = tokio::time::timeout(Duration::from_secs(2), client.logout()).await;
                }
                end
            }
            Err(e) => End::Lost(format!("cannot log in: {e:#}")),
        };
        match end {
            End::Quit => {
                let _ = out.send(Net::Quitted).await;
                return;
            }
            End::Lost(why) => {
                let _ = out.send(Net::Lost(why)).await;
            }
        }
        // Retry in a while; keep answering the UI meanwhile.
        let retry = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(retry);
        loop {
            tokio::select! {
                _ = &mut retry => break,
                a = actions.recv() => match a {
                    None | Some(Action::Quit) => {
                        let _ = out.send(Net::Quitted).await;
                        return;
                    }
                    Some(Action::Send { line, .. }) => {
                        let _ = out.send(Net::Sent { line, outcome: Err("not connected".into()) }).await;
                    }
                    Some(_) => {
                        let _ = out.send(Net::Notice("not connected; try again once back".into())).await;
                    }
                },
            }
        }
    }
}

/// A person as the directory results show them.
fn person(r: &UserInfo) -> Person {
    Person {
        uid: r.user_id,
        about: crate::people::describe(r),
    }
}

/// `/add WHO`: resolved through the directory (a UserID, a card, a nickname or e-mail); one
/// person is added and named with their fingerprint, several are listed to choose from.
async fn add(client: &GossipClient, who: &str, me: UserId) -> Vec<Net> {
    use gossip_client::directory::{Found, Who};
    let notice = |text: String| vec![Net::Notice(text)];
    match client.resolve(&Who::parse(who)).await {
        Err(e) => notice(format!("could not look {who:?} up: {e}")),
        Ok(Err(mismatch)) => notice(mismatch.to_string()),
        Ok(Ok(Found::NoOne)) => notice(format!("nobody found for {who:?}; try /find")),
        Ok(Ok(Found::Several(list))) => vec![Net::Found {
            query: who.to_owned(),
            people: list.iter().map(|r| person(r)).collect(),
        }],
        Ok(Ok(Found::One(r))) if r.user_id == me => notice("that is you".into()),
        Ok(Ok(Found::One(r))) => match client.add_contacts(&[r.user_id]).await {
            Ok(()) => vec![
                Net::Contacts {
                    ids: client.contact_ids(),
                    contacts: client.contacts(),
                },
                Net::Notice(format!("added {}", crate::people::describe(&r))),
            ],
            Err(e) => notice(format!("contact list not changed: {e}")),
        },
    }
}

async fn login(
    opts: &Options,
) -> anyhow::Result<(
    GossipClient,
    gossip_client::Events,
    gossip_client::DirectListener,
)> {
    let (client, events, _server) =
        crate::connect(&opts.profile, &opts.servers, opts.key.clone(), true).await?;
    client.login(opts.uid).await?;
    let listener = client.listen_direct(opts.listen).await?;
    client
        .go_online(&opts.status, Some(listener.local_addr()))
        .await?;
    Ok((client, events, listener))
}

async fn serve(
    client: &Arc<GossipClient>,
    e2e: &Arc<tokio::sync::Mutex<gossip_client::e2e::E2e>>,
    mut events: gossip_client::Events,
    actions: &mut mpsc::Receiver<Action>,
    out: &mpsc::Sender<Net>,
    me: UserId,
) -> End {
    let mut ping = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            a = actions.recv() => match a {
                None | Some(Action::Quit) => return End::Quit,
                Some(Action::Send { to, text, line }) => {
                    // Delivery takes a while (or times out): not in this loop.
                    let (c, out, e2e) = (Arc::clone(client), out.clone(), Arc::clone(e2e));
                    tokio::spawn(async move {
                        let mut e2e = e2e.lock().await;
                        let outcome = match c.send_encrypted(&mut e2e, to, text.as_bytes()).await {
                            Ok(id) => e2e
                                .history()
                                .record(&gossip_client::history::Entry {
                                    id: id.clone(),
                                    peer: to,
                                    outgoing: true,
                                    text: text.clone(),
                                    sent_ms: crate::now_ms(),
                                    state: "sent".into(),
                                })
                                .map(|()| id)
                                .map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        let _ = out.send(Net::Sent { line, outcome }).await;
                    });
                }
                Some(Action::SetStatus { status, message }) => {
                    let report = match client.set_status(&status, message.as_deref()).await {
                        Ok(()) => client.me().map(Net::Me),
                        Err(e) => Some(Net::Notice(format!("status not set: {e}"))),
                    };
                    if let Some(r) = report {
                        let _ = out.send(r).await;
                    }
                }
                Some(Action::Remove(uid)) => {
                    let report = match client.remove_contacts(&[uid]).await {
                        Ok(()) => Net::Contacts { ids: client.contact_ids(), contacts: client.contacts() },
                        Err(e) => Net::Notice(format!("contact list not changed: {e}")),
                    };
                    let _ = out.send(report).await;
                }
                Some(Action::Add(who)) => {
                    for report in add(client, &who, me).await {
                        let _ = out.send(report).await;
                    }
                }
                Some(Action::Find(query)) => {
                    let report = match client.find(&query, None).await {
                        Ok(found) => Net::Found { people: found.iter().map(|r| person(r)).collect(), query },
                        Err(e) => Net::Notice(format!("search failed: {e}")),
                    };
                    let _ = out.send(report).await;
                }
                Some(a @ (Action::LoadHistory { .. } | Action::SearchHistory { .. } | Action::SaveNotify(_))) => {
                    unreachable!("{a:?} is done by the UI loop")
                }
            },
            ev = events.next() => match ev {
                Some(Event::Presence(r)) => {
                    if r.user_id == me {
                        // Another client of ours changed our record: the last will follows it.
                        let _ = client.refresh_last_will().await;
                    }
                    let _ = out.send(Net::Presence(r)).await;
                }
                Some(Event::Message(m)) => {
                    let _ = out.send(Net::Message { from: m.from, text: m.text.clone(), at: m.sent_ms / 1000, key: None }).await;
                }
                Some(Event::Unreachable(u)) => {
                    let _ = out.send(Net::Notice(format!("{u} is unreachable; shown offline"))).await;
                }
                Some(Event::ServerMessage(t)) => {
                    let _ = out.send(Net::Notice(format!("server: {t}"))).await;
                }
                Some(Event::Error { code, text }) => {
                    let _ = out.send(Net::Notice(format!("server error {code:?}: {text}"))).await;
                }
                Some(Event::Relayed { message, request }) => {
                    let mut e2e = e2e.lock().await;
                    match client.open_relayed(&mut e2e, &message).await {
                        Ok(plain) => {
                            let text = String::from_utf8_lossy(&plain).to_string();
                            let _ = e2e.history().record(&gossip_client::history::Entry {
                                id: message.id.clone(),
                                peer: message.from,
                                outgoing: false,
                                text: text.clone(),
                                sent_ms: message.sent,
                                state: "received".into(),
                            });
                            if request {
                                let note = format!("message request from {} (not a contact)", message.from);
                                let _ = out.send(Net::Notice(note)).await;
                            }
                            let _ = out.send(Net::Message { from: message.from, text, at: message.sent / 1000, key: Some(message.id.clone()) }).await;
                        }
                        Err(e) => {
                            let _ = out.send(Net::Notice(format!("a message from {} could not be opened: {e}", message.from))).await;
                        }
                    }
                }
                Some(Event::Delivered { id, to }) => {
                    if e2e.lock().await.history().delivered(&id).unwrap_or(false) {
                        let _ = out.send(Net::Notice(format!("delivered to {to}"))).await;
                    }
                    let _ = out.send(Net::DeliveredTo(id)).await;
                }
                Some(Event::Disconnected(why)) => return End::Lost(format!("disconnected: {why}")),
                None => return End::Lost("connection lost".into()),
            },
            _ = ping.tick() => match client.ping().await {
                Ok(rtt) => {
                    let _ = out.send(Net::Rtt(rtt.as_secs_f64() * 1000.0)).await;
                }
                Err(e) => return End::Lost(format!("server not answering: {e}")),
            },
        }
    }
}
