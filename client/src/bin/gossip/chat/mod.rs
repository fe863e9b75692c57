//! `gossip chat`: the interactive terminal client.
//!
//! Three parts that never wait on each other: a thread reading the terminal, a network task
//! that owns the [`GossipClient`] (logs in, goes online with a last will, sends, measures the
//! RTT, and logs in again when the server goes away), and the UI loop, which feeds both into the
//! [`model::Model`] and redraws. The UI only ever hands the network task an [`model::Action`]
//! through a bounded queue, so typing stays responsive however slow or gone the server is. The
//! terminal is restored on exit, on a panic (ratatui's hook) and on Ctrl-C or SIGTERM.

pub(crate) mod model;
pub(crate) mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gossip_client::{Event, GossipClient};
use gossip_common::{Keypair, Signed, UserId, UserInfo};
use ratatui::crossterm::event::{self as term, KeyCode, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc;

use model::{Action, Key, Model};

/// How to start.
#[derive(Clone)]
pub(crate) struct Options {
    /// The profile (server keys are pinned in it).
    pub profile: gossip_client::profile::Profile,
    /// Servers to try (the nearest live one is used).
    pub(crate) servers: Vec<String>,
    /// The profile's key.
    pub(crate) key: Keypair,
    /// The profile's UserID.
    pub(crate) uid: UserId,
    /// Status to announce.
    pub(crate) status: String,
    /// Address for direct messages.
    pub(crate) listen: SocketAddr,
    /// When the process started (for the start-up time shown once the contacts are drawn).
    pub(crate) started: Instant,
}

/// What the network task reports.
enum Net {
    LoggedIn {
        server: String,
        me: Option<Signed<UserInfo>>,
        ids: Vec<UserId>,
        contacts: Vec<Signed<UserInfo>>,
    },
    Me(Signed<UserInfo>),
    Presence(Signed<UserInfo>),
    Message {
        from: UserId,
        text: String,
        at: u64,
    },
    Delivered {
        line: u64,
        outcome: Result<(), String>,
    },
    Contacts {
        ids: Vec<UserId>,
        contacts: Vec<Signed<UserInfo>>,
    },
    Rtt(f64),
    Notice(String),
    Lost(String),
    Quitted,
}

/// What the terminal thread reports.
enum Input {
    Key(Key),
    Redraw,
}

/// Runs the app until the user quits.
pub(crate) async fn run(opts: Options) -> anyhow::Result<()> {
    let (act_tx, act_rx) = mpsc::channel::<Action>(64);
    let (net_tx, mut net_rx) = mpsc::channel::<Net>(1024);
    let network = tokio::spawn(network(opts.clone(), act_rx, net_tx));
    let (in_tx, mut in_rx) = mpsc::channel::<Input>(256);
    let mut terminal = ratatui::init();
    std::thread::spawn(move || read_terminal(in_tx));
    let theme = view::Theme {
        color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    let mut model = Model {
        me: Some(opts.uid),
        server: opts.servers.join(","),
        my_status: opts.status.clone(),
        ..Model::default()
    };
    let mut term_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ready_shown = false;
    let mut quit_deadline: Option<tokio::time::Instant> = None;
    let result = loop {
        if let Err(e) = terminal.draw(|f| view::draw(f, &model, theme)) {
            break Err(e.into());
        }
        if !ready_shown && model.connected {
            // The first frame with the contact list is on screen.
            ready_shown = true;
            model.notice = Some(format!(
                "ready in {} ms",
                opts.started.elapsed().as_millis()
            ));
            continue;
        }
        let quit_at = quit_deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            input = in_rx.recv() => match input {
                Some(Input::Key(k)) => {
                    if let Some(action) = model.key(k) {
                        if action == Action::Quit {
                            quit_deadline.get_or_insert(tokio::time::Instant::now() + Duration::from_secs(3));
                        }
                        if act_tx.try_send(action).is_err() {
                            model.notice = Some("still busy with the previous requests; try again".into());
                        }
                    }
                }
                Some(Input::Redraw) => {}
                None => break Ok(()),
            },
            net = net_rx.recv() => match net {
                Some(Net::Quitted) | None => break Ok(()),
                Some(n) => apply(&mut model, n),
            },
            _ = tokio::signal::ctrl_c() => {
                model.quitting = true;
                quit_deadline.get_or_insert(tokio::time::Instant::now() + Duration::from_secs(3));
                let _ = act_tx.try_send(Action::Quit);
            }
            _ = term_signal.recv() => {
                model.quitting = true;
                quit_deadline.get_or_insert(tokio::time::Instant::now() + Duration::from_secs(3));
                let _ = act_tx.try_send(Action::Quit);
            }
            _ = tokio::time::sleep_until(quit_at), if quit_deadline.is_some() => break Ok(()),
        }
    };
    ratatui::restore();
    network.abort();
    result
}

/// Folds a network report into the model.
fn apply(model: &mut Model, net: Net) {
    match net {
        Net::LoggedIn {
            server,
            me,
            ids,
            contacts,
        } => {
            if model.ever_connected {
                model.reconnects += 1;
                model.notice = Some(format!("reconnected to {server}"));
            }
            model.ever_connected = true;
            model.connected = true;
            model.server = server;
            if let Some(me) = me {
                model.presence(&me);
            }
            model.set_contact_ids(&ids);
            for c in &contacts {
                model.presence(c);
            }
        }
        Net::Me(me) => {
            model.notice = Some(format!("status set to {}", me.status));
            model.presence(&me);
        }
        Net::Presence(r) => model.presence(&r),
        Net::Message { from, text, at } => model.message_in(from, &text, at),
        Net::Delivered { line, outcome } => model.delivered(line, outcome),
        Net::Contacts { ids, contacts } => {
            model.set_contact_ids(&ids);
            for c in &contacts {
                model.presence(c);
            }
            model.notice = Some(format!("{} contacts", ids.len()));
        }
        Net::Rtt(ms) => model.rtt_ms = Some(ms),
        Net::Notice(n) => model.notice = Some(n),
        Net::Lost(why) => {
            model.connected = false;
            model.rtt_ms = None;
            model.notice = Some(why);
        }
        Net::Quitted => {}
    }
}

/// Reads the terminal on a thread of its own (crossterm's `read` blocks).
fn read_terminal(tx: mpsc::Sender<Input>) {
    loop {
        let input = match term::read() {
            Ok(term::Event::Key(k)) if k.kind != KeyEventKind::Release => {
                let key = match k.code {
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        Key::Interrupt
                    }
                    KeyCode::Char(c) => Key::Char(c),
                    KeyCode::Enter => Key::Enter,
                    KeyCode::Backspace => Key::Backspace,
                    KeyCode::Esc => Key::Esc,
                    KeyCode::Up => Key::Up,
                    KeyCode::Down => Key::Down,
                    _ => continue,
                };
                Input::Key(key)
            }
            Ok(term::Event::Resize(..)) => Input::Redraw,
            Ok(_) => continue,
            Err(_) => return,
        };
        if tx.blocking_send(input).is_err() {
            return;
        }
    }
}

/// How the serving of one connection ended.
enum End {
    Quit,
    Lost(String),
}

/// Owns the connection: logs in (again after every loss), serves actions and events.
async fn network(opts: Options, mut actions: mpsc::Receiver<Action>, out: mpsc::Sender<Net>) {
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
                        let _ = out.send(Net::Delivered { line, outcome: Err("not connected".into()) }).await;
                    }
                    Some(_) => {
                        let _ = out.send(Net::Notice("not connected; try again once back".into())).await;
                    }
                },
            }
        }
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
                                    id,
                                    peer: to,
                                    outgoing: true,
                                    text: text.clone(),
                                    sent_ms: crate::now_ms(),
                                    state: "sent".into(),
                                })
                                .map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        let _ = out.send(Net::Delivered { line, outcome }).await;
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
                Some(Action::Add(uid)) | Some(Action::Remove(uid)) if uid == me => {
                    let _ = out.send(Net::Notice("that is you".into())).await;
                }
                Some(a @ (Action::Add(_) | Action::Remove(_))) => {
                    let r = match a {
                        Action::Add(uid) => client.add_contacts(&[uid]).await,
                        Action::Remove(uid) => client.remove_contacts(&[uid]).await,
                        _ => unreachable!("matched above"),
                    };
                    let report = match r {
                        Ok(()) => Net::Contacts { ids: client.contact_ids(), contacts: client.contacts() },
                        Err(e) => Net::Notice(format!("contact list not changed: {e}")),
                    };
                    let _ = out.send(report).await;
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
                    let _ = out.send(Net::Message { from: m.from, text: m.text.clone(), at: m.sent_ms / 1000 }).await;
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
                            let _ = out.send(Net::Message { from: message.from, text, at: message.sent / 1000 }).await;
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
