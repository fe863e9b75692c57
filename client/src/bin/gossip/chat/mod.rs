//! `gossip chat`: the interactive terminal client.
//!
//! Three parts that never wait on each other: a thread reading the terminal, a network task
//! that owns the `GossipClient` (`network`: logs in, goes online with a last will, sends, measures the
//! RTT, and logs in again when the server goes away), and the UI loop, which feeds both into the
//! [`model::Model`] and redraws. The UI only ever hands the network task an [`model::Action`]
//! through a bounded queue, so typing stays responsive however slow or gone the server is.
//! Reading the history (scrolling back, `/search`) needs no server: it is done on the blocking
//! pool over a connection of its own to `messages.db`. The terminal is restored on exit, on a
//! panic (ratatui's hook) and on Ctrl-C or SIGTERM.
//!
//! The parts of the model: `model` (the screen's state and every key's rule), `keys` (the
//! terminal's keys as the model's), `composer`
//! (line editing and input history), `conversation` (lines, scrolling, history paging,
//! search), `command` (the `/commands`), `wrap` (rows as the terminal draws them); `view`
//! draws it.

mod command;
mod composer;
mod conversation;
mod keys;
pub(crate) mod model;
mod network;
pub(crate) mod view;
mod wrap;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gossip_common::{Keypair, Signed, UserId, UserInfo};
use ratatui::crossterm::event::{self as term, KeyEventKind};
use tokio::sync::mpsc;

use gossip_client::history::History;
use model::{Action, Key, Model, Past, Person};

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
    /// Ring the bell for messages to contacts not on screen (`/notify`, kept in the profile).
    pub(crate) notify: bool,
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
        /// Its id in the history (relayed messages).
        key: Option<String>,
    },
    /// One's own message: stored by the servers under this id, or why not.
    Sent {
        line: u64,
        outcome: Result<String, String>,
    },
    /// The recipient's client has message `id`.
    DeliveredTo(String),
    History {
        peer: UserId,
        page: Vec<Past>,
        complete: bool,
    },
    SearchResult {
        peer: UserId,
        text: String,
        page: Vec<Past>,
    },
    Found {
        query: String,
        people: Vec<Person>,
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
    let network = tokio::spawn(network::network(opts.clone(), act_rx, net_tx));
    let (in_tx, mut in_rx) = mpsc::channel::<Input>(256);
    // What the history reader found (a channel of its own, so that the network task's ending
    // still ends `net_rx`).
    let (past_tx, mut past_rx) = mpsc::channel::<Net>(64);
    // A second connection to the database, for reading the history without the network task.
    let history = match History::open(&opts.profile.home().join("messages.db")) {
        Ok(h) => Some(Arc::new(std::sync::Mutex::new(h))),
        Err(e) => {
            tracing::warn!(error = %e, "history not readable; the app shows this session only");
            None
        }
    };
    let mut terminal = ratatui::init();
    // The wheel scrolls the conversation; a paste arrives whole, not as keys. (Hold Shift to
    // select text with the mouse while the app has it.)
    let _ = ratatui::crossterm::execute!(
        std::io::stdout(),
        ratatui::crossterm::event::EnableMouseCapture,
        ratatui::crossterm::event::EnableBracketedPaste
    );
    std::thread::spawn(move || read_terminal(in_tx));
    let theme = view::Theme {
        color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    let mut model = Model::new(
        Some(opts.uid),
        opts.servers.join(","),
        opts.status.clone(),
        opts.notify,
    );
    let mut term_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ready_shown = false;
    let mut quit_deadline: Option<tokio::time::Instant> = None;
    let result = loop {
        if let Ok(size) = terminal.size() {
            model.size = (size.width, size.height);
        }
        for action in model.take_actions() {
            dispatch(
                action,
                &act_tx,
                &past_tx,
                history.as_ref(),
                &opts,
                &mut model,
            );
        }
        if let Err(e) = terminal.draw(|f| view::draw(f, &model, theme)) {
            break Err(e.into());
        }
        if std::mem::take(&mut model.bell) {
            use std::io::Write;
            let _ = std::io::stdout()
                .write_all(b"\x07")
                .and_then(|()| std::io::stdout().flush());
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
                    model.key(k);
                    if model.quitting {
                        quit_deadline.get_or_insert(tokio::time::Instant::now() + Duration::from_secs(3));
                    }
                }
                Some(Input::Redraw) => {}
                None => break Ok(()),
            },
            Some(past) = past_rx.recv() => apply(&mut model, past),
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
    let _ = ratatui::crossterm::execute!(
        std::io::stdout(),
        ratatui::crossterm::event::DisableMouseCapture,
        ratatui::crossterm::event::DisableBracketedPaste
    );
    ratatui::restore();
    network.abort();
    result
}

/// Hands an action to whoever does it: the history reader (on the blocking pool), the profile,
/// or the network task.
fn dispatch(
    action: Action,
    act_tx: &mpsc::Sender<Action>,
    past_tx: &mpsc::Sender<Net>,
    history: Option<&Arc<std::sync::Mutex<History>>>,
    opts: &Options,
    model: &mut Model,
) {
    match action {
        Action::LoadHistory { .. } | Action::SearchHistory { .. } => {
            let Some(history) = history.cloned() else {
                return;
            };
            let out = past_tx.clone();
            tokio::task::spawn_blocking(move || {
                let report =
                    read_history(&history.lock().unwrap_or_else(|p| p.into_inner()), action);
                match report {
                    Ok(report) => {
                        let _ = out.blocking_send(report);
                    }
                    Err(e) => {
                        let _ = out.blocking_send(Net::Notice(format!("history: {e}")));
                    }
                }
            });
        }
        Action::SaveNotify(on) => {
            let saved = opts.profile.settings().and_then(|mut s| {
                s.notify = on;
                opts.profile.save_settings(&s)
            });
            if let Err(e) = saved {
                model.notice = Some(format!("setting not kept in the profile: {e}"));
            }
        }
        action => {
            if act_tx.try_send(action).is_err() {
                model.notice = Some("still busy with the previous requests; try again".into());
            }
        }
    }
}

/// Reads what a history action asks for.
fn read_history(h: &History, action: Action) -> Result<Net, gossip_client::history::HistoryError> {
    let past = |e: gossip_client::history::Entry| Past {
        key: e.id,
        sent_ms: e.sent_ms,
        mine: e.outgoing,
        text: e.text,
        state: e.state,
    };
    match action {
        Action::LoadHistory { peer, cursor } => {
            let before = cursor.before.as_ref().map(|(t, id)| (*t, id.as_str()));
            let page = h.page(peer, before, model::PAGE)?;
            let complete = page.len() < model::PAGE;
            Ok(Net::History {
                peer,
                page: page.into_iter().map(past).collect(),
                complete,
            })
        }
        Action::SearchHistory { peer, text, cursor } => {
            let before = cursor.before.as_ref().map(|(t, id)| (*t, id.as_str()));
            let page = match h.search(peer, &text, before)? {
                // Everything from the match on, so the conversation stays whole around it
                // (at most 10,000 lines at once).
                Some(hit) => h.since(peer, (hit.sent_ms, &hit.id), before, 10_000)?,
                None => Vec::new(),
            };
            Ok(Net::SearchResult {
                peer,
                text,
                page: page.into_iter().map(past).collect(),
            })
        }
        _ => unreachable!("only history actions are read here"),
    }
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
        Net::Message {
            from,
            text,
            at,
            key,
        } => model.message_in(from, &text, at, key),
        Net::Sent { line, outcome } => model.sent(line, outcome),
        Net::DeliveredTo(id) => model.delivered(&id),
        Net::History {
            peer,
            page,
            complete,
        } => model.history(peer, page, complete),
        Net::SearchResult { peer, text, page } => model.search_result(peer, &text, page),
        Net::Found { query, people } => model.found(query, people),
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
            Ok(term::Event::Key(k)) if k.kind != KeyEventKind::Release => match keys::map_key(k) {
                Some(key) => Input::Key(key),
                None => continue,
            },
            Ok(term::Event::Paste(text)) => Input::Key(Key::Paste(text)),
            Ok(term::Event::Mouse(m)) => match m.kind {
                term::MouseEventKind::ScrollUp => Input::Key(Key::WheelUp),
                term::MouseEventKind::ScrollDown => Input::Key(Key::WheelDown),
                _ => continue,
            },
            Ok(term::Event::Resize(..)) => Input::Redraw,
            Ok(_) => continue,
            Err(_) => return,
        };
        if tx.blocking_send(input).is_err() {
            return;
        }
    }
}
