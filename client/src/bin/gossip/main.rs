//! `gossip`: command-line chat client for Gossip; all protocol logic is in the `gossip_client`
//! library. `gossip chat` (or `gossip` alone on a terminal) is the interactive app (`chat/`).
//!
//! Where things live: the command line's definitions in `args`; one module per command group —
//! `account` (keygen, whoami, register, trust-server), `status` (set-status), `contacts`,
//! `people` (find, and naming people by card, nickname or e-mail),
//! `messages` (send, history), `watch`, and `chat/` (the interactive app); what the commands
//! share (profile, servers, connecting) in `session`. This file parses and dispatches.

mod account;
mod args;
mod chat;
mod contacts;
mod messages;
mod people;
mod session;
mod status;
mod watch;

use anyhow::Context;
use clap::Parser;
use gossip_client::profile::Profile;
use tracing_subscriber::EnvFilter;

use crate::account::{keygen, register, trust_server, whoami};
use crate::args::{Args, Cmd};
use crate::messages::history;
// `chat/` reaches the shared helpers as `crate::connect`, `crate::open_e2e` and `crate::now_ms`.
use crate::session::{connect, now_ms, open_e2e, registered, servers_of};
use crate::watch::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut args = Args::parse();
    let profile = Profile::at(args.home.clone().unwrap_or_else(Profile::default_home));
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stdin())
        && std::io::IsTerminal::is_terminal(&std::io::stdout());
    if args.command.is_none() {
        if !on_terminal {
            use clap::CommandFactory;
            Args::command().print_help()?;
            std::process::exit(2);
        }
        args.command = Some(Cmd::Chat {
            status: "online".into(),
            listen: "127.0.0.1:0".parse().expect("valid address"),
        });
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    if matches!(args.command, Some(Cmd::Chat { .. })) {
        // The screen belongs to the app: logs go to the profile's chat.log.
        let log = std::fs::create_dir_all(profile.home())
            .and_then(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(profile.home().join("chat.log"))
            })
            .context("opening chat.log in the profile")?;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::sync::Mutex::new(log))
            .with_ansi(false)
            .init();
        return chat_command(&profile, &args, started).await;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let Some(command) = &args.command else {
        unreachable!("set above")
    };
    match *command {
        Cmd::Keygen {
            force,
            ref portable,
        } => keygen(&profile, force, portable.as_deref(), args.json),
        Cmd::Whoami { card } => whoami(&profile, card, args.json),
        Cmd::TrustServer {
            ref server,
            ref key,
        } => trust_server(&profile, server, key),
        Cmd::History { uid, limit } => history(&profile, uid, limit, args.json),
        Cmd::Register { .. } => register(&profile, &args).await,
        Cmd::Watch { .. } => watch(&profile, &args).await,
        _ => logged_in(&profile, &args).await,
    }
}

/// Keeps the own nickname in the profile, for `gossip whoami --card` (which runs offline).
fn remember_nick(profile: &Profile, client: &gossip_client::GossipClient) {
    let Some(me) = client.me() else { return };
    let Ok(mut settings) = profile.settings() else {
        return;
    };
    if settings.nick.as_deref() != Some(me.nick_name.as_str()) {
        settings.nick = Some(me.nick_name.clone());
        if let Err(e) = profile.save_settings(&settings) {
            eprintln!("could not save the nickname in the profile: {e}");
        }
    }
}

/// `gossip chat`: the interactive app.
async fn chat_command(
    profile: &Profile,
    args: &Args,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    let Some(Cmd::Chat { status, listen }) = &args.command else {
        unreachable!("chat only")
    };
    let (key, settings, uid) = registered(profile)?;
    chat::run(chat::Options {
        profile: Profile::at(profile.home()),
        servers: servers_of(args, &settings)?,
        key,
        uid,
        status: status.clone(),
        listen: *listen,
        started,
        notify: settings.notify,
    })
    .await
}

/// The commands that need a session: logs in (on the nearest server), then runs the command.
async fn logged_in(profile: &Profile, args: &Args) -> anyhow::Result<()> {
    let (key, settings, uid) = registered(profile)?;
    let (client, mut events, server) =
        connect(profile, &servers_of(args, &settings)?, key, args.json).await?;
    // These commands show no messages: the ones waiting stay with the servers for the next
    // `gossip watch` or `gossip chat` (which keep them in the history).
    client.leave_relayed_messages();
    client
        .login(uid)
        .await
        .with_context(|| format!("logging in as {uid} on {server}"))?;
    // A profile registered before keys went out at registration publishes them at its next
    // login, whatever the command (a no-op once the own record carries them).
    let keys = open_e2e(profile)?.published();
    if let Err(e) = client.publish_published(&keys).await {
        eprintln!("could not publish encryption keys: {e}");
    }
    remember_nick(profile, &client);
    let Some(command) = &args.command else {
        unreachable!("a command is set in main")
    };
    match command {
        Cmd::SetStatus { .. } => status::set_status(&client, args).await?,
        Cmd::Contacts { .. } => contacts::run(&client, args).await?,
        Cmd::Find { text, limit } => people::find(&client, text, *limit, args.json).await?,
        Cmd::Send { .. } => messages::send(profile, &client, args).await?,
        Cmd::Keygen { .. }
        | Cmd::TrustServer { .. }
        | Cmd::History { .. }
        | Cmd::Whoami { .. }
        | Cmd::Register { .. }
        | Cmd::Chat { .. }
        | Cmd::Watch { .. } => {
            unreachable!("handled earlier")
        }
    }
    // The servers tell a sender of deliveries at their next login, once: a receipt that came
    // with this one is kept in the history, as `watch` would.
    let history = open_e2e(profile)?;
    while let Ok(Some(ev)) =
        tokio::time::timeout(std::time::Duration::from_millis(50), events.next()).await
    {
        if let gossip_client::Event::Delivered { id, .. } = ev {
            if let Err(e) = history.history().delivered(&id) {
                eprintln!("could not mark {id} delivered in the history: {e}");
            }
        }
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    Ok(())
}
