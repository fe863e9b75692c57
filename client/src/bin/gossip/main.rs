//! `gossip`: command-line chat client for Gossip; all protocol logic is in the `gossip_client`
//! library. `gossip chat` (or `gossip` alone on a terminal) is the interactive app (`chat/`).

mod chat;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use gossip_client::failover::Update;
use gossip_client::profile::{portable_key, Profile, Settings};
use gossip_client::{Event, GossipClient};
use gossip_common::{Signed, UserId, UserInfo};
use serde_json::json;
use tracing_subscriber::EnvFilter;

/// Gossip chat client: register, set your status, manage contacts, watch presence, chat.
///
/// Your key and settings live in a profile directory (--home, default ~/.config/gossip or
/// $GOSSIP_HOME). Typical start:
///   gossip keygen
///   gossip register --server 127.0.0.1:1024 --nick alice
///   gossip contacts add 5299989643264
///   gossip chat          (or just `gossip` on a terminal: the interactive app)
#[derive(Debug, Parser)]
#[command(name = "gossip", version)]
struct Args {
    /// Profile directory holding the key and settings.
    #[arg(long, global = true, value_name = "DIR", env = "GOSSIP_HOME")]
    home: Option<PathBuf>,
    /// Server(s) to use, HOST:PORT (base port), comma-separated; overrides the profile. With
    /// several, the client measures their RTT and logs in to the nearest live one.
    #[arg(long, short = 's', global = true, value_name = "HOST:PORT[,…]")]
    server: Option<String>,
    /// Machine-readable output: JSON (one object per line for streams).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a new key in the profile (file mode 0600).
    Keygen {
        /// Replace an existing key (the old identity is lost!).
        #[arg(long)]
        force: bool,
        /// Derive a portable key from USER and a password read from $GOSSIP_PASSWORD
        /// (argon2id): the same pair recreates it anywhere, but it is only as strong as the
        /// password.
        #[arg(long, value_name = "USER")]
        portable: Option<String>,
    },
    /// Register a new user with the profile's key; prints and stores the new UserID.
    Register {
        /// Nickname.
        #[arg(long)]
        nick: String,
        /// Full name.
        #[arg(long, default_value = "")]
        name: String,
        /// E-mail address.
        #[arg(long, default_value = "")]
        email: String,
        /// Location.
        #[arg(long, default_value = "")]
        location: String,
        /// Website.
        #[arg(long, default_value = "")]
        website: String,
    },
    /// Show the profile: UserID, public key, servers.
    Whoami,
    /// Show the conversation with a user (messages sent and received by this profile, with
    /// their delivery state), oldest first.
    History {
        /// The other user's UserID.
        uid: UserId,
        /// How many of the latest messages.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Accept a server's new identity key after its admin rotated it (compare it with
    /// `prodserver status` on that server first); replaces the key pinned for it.
    TrustServer {
        /// HOST:PORT (base port), as in your profile.
        server: String,
        /// The new key, 64 hex digits.
        key: String,
    },
    /// Set your status (online, away, busy, offline, or anything) and status message.
    SetStatus {
        /// The status.
        status: String,
        /// Status message.
        #[arg(long, short = 'm')]
        message: Option<String>,
    },
    /// Manage your contact list.
    Contacts {
        #[command(subcommand)]
        action: ContactsCmd,
    },
    /// Stay online and print every presence change and message as it arrives (Ctrl-C to go
    /// offline and quit).
    Watch {
        /// Status to announce.
        #[arg(long, default_value = "online")]
        status: String,
        /// Address to accept direct messages on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// The interactive terminal app: contacts with live presence, conversations, a composer
    /// with /commands (the default when `gossip` runs on a terminal without a command).
    Chat {
        /// Status to announce.
        #[arg(long, default_value = "online")]
        status: String,
        /// Address to accept direct messages on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Send a message, end-to-end encrypted and relayed through the servers: it arrives
    /// wherever and whenever the recipient next logs in (kept up to 30 days), and `watch`
    /// shows when it was delivered.
    Send {
        /// Recipient's UserID.
        uid: UserId,
        /// The message.
        text: String,
        /// Send straight to the contact's client instead (the spec's path: signed but not
        /// encrypted, and only while they are online and reachable).
        #[arg(long)]
        direct: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ContactsCmd {
    /// Add users to your contact list.
    Add {
        /// UserIDs.
        #[arg(required = true)]
        uids: Vec<UserId>,
    },
    /// Remove users from your contact list.
    Remove {
        /// UserIDs.
        #[arg(required = true)]
        uids: Vec<UserId>,
    },
    /// List your contacts with nickname and status.
    List,
}

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
        Cmd::Whoami => whoami(&profile, args.json),
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
    })
    .await
}

fn keygen(
    profile: &Profile,
    force: bool,
    portable: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let key = match portable {
        Some(user) => {
            let password = std::env::var("GOSSIP_PASSWORD")
                .context("--portable needs the password in $GOSSIP_PASSWORD")?;
            portable_key(user, &password)
        }
        None => gossip_common::Keypair::generate(),
    };
    profile.save_key(&key, force)?;
    if json {
        println!(
            "{}",
            json!({"public_key": key.public().to_string(), "home": profile.home()})
        );
    } else {
        println!("new key written to {}/key", profile.home().display());
        println!("public key: {}", key.public());
    }
    Ok(())
}

fn whoami(profile: &Profile, json: bool) -> anyhow::Result<()> {
    let key = profile
        .load_key()
        .context("no key yet: run `gossip keygen`")?;
    let s = profile.settings()?;
    if json {
        println!(
            "{}",
            json!({"uid": s.uid, "public_key": key.public().to_string(), "servers": s.servers, "server_keys": s.server_keys, "home": profile.home()})
        );
    } else {
        match s.uid {
            Some(uid) => println!("uid:        {uid}"),
            None => println!("uid:        (not registered: run `gossip register`)"),
        }
        println!("public key: {}", key.public());
        println!("servers:    {}", s.servers.join(", "));
        for (server, key) in &s.server_keys {
            println!("  {server} key {key}");
        }
        println!("profile:    {}", profile.home().display());
    }
    Ok(())
}

fn servers_of(args: &Args, settings: &Settings) -> anyhow::Result<Vec<String>> {
    let list: Vec<String> = match &args.server {
        Some(s) => s
            .split(',')
            .map(|x| x.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect(),
        None => settings.servers.clone(),
    };
    if list.is_empty() {
        bail!("no server: pass --server HOST:PORT");
    }
    Ok(list)
}

/// Connects to the only server, or to the nearest of several (RTT-probed, 200 ms apart),
/// refusing a server whose key differs from the one pinned in the profile, and pinning the key
/// of a server met for the first time (said on stderr unless `quiet`).
async fn connect(
    profile: &Profile,
    servers: &[String],
    key: gossip_common::Keypair,
    quiet: bool,
) -> anyhow::Result<(GossipClient, gossip_client::Events, String)> {
    let mut settings = profile.settings()?;
    let pins = settings.pins();
    let (c, e) = if let [only] = servers {
        GossipClient::connect_pinned(only, key, pins.get(only).copied()).await?
    } else {
        let probe = gossip_common::rtt::ProbeConfig {
            interval: std::time::Duration::from_millis(200),
            replies: 3,
            dead_after: std::time::Duration::from_secs(3),
            source: None,
        };
        GossipClient::connect_nearest(servers, key, &probe, &pins).await?
    };
    let server = c.server().to_owned();
    if !pins.contains_key(&server) {
        let mut pins = pins;
        pins.insert(server.clone(), c.server_key());
        settings.set_pins(&pins);
        profile.save_settings(&settings)?;
        if !quiet {
            eprintln!(
                "{server} is new to this profile: its server key {} is pinned from now on",
                c.server_key()
            );
        }
    }
    Ok((c, e, server))
}

async fn register(profile: &Profile, args: &Args) -> anyhow::Result<()> {
    let Some(Cmd::Register {
        nick,
        name,
        email,
        location,
        website,
    }) = &args.command
    else {
        unreachable!()
    };
    let key = profile
        .load_key()
        .context("no key yet: run `gossip keygen` first")?;
    let mut settings = profile.settings()?;
    if let Some(uid) = settings.uid {
        bail!("this profile is already registered as {uid}; use another --home for a new user");
    }
    let (client, _events, server) =
        connect(profile, &servers_of(args, &settings)?, key, args.json).await?;
    let uid = client
        .register(|u| {
            u.nick_name = nick.clone();
            u.name = name.clone();
            u.email = email.clone();
            u.location = location.clone();
            u.website = website.clone();
        })
        .await?;
    settings.uid = Some(uid.0);
    // `connect` pinned the server's key in the profile meanwhile: keep it.
    settings.server_keys = profile.settings()?.server_keys;
    for s in servers_of(args, &settings)?.into_iter().rev() {
        if !settings.servers.contains(&s) {
            settings.servers.insert(0, s);
        }
    }
    profile.save_settings(&settings)?;
    if args.json {
        println!("{}", json!({"uid": uid.0, "server": server}));
    } else {
        println!("registered as {uid} on {server}");
    }
    Ok(())
}

/// The profile's message database (`messages.db`: history and encryption state), made on
/// first use.
fn open_e2e(profile: &Profile) -> anyhow::Result<gossip_client::e2e::E2e> {
    Ok(gossip_client::e2e::E2e::open(
        &profile.home().join("messages.db"),
    )?)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `gossip history UID`: the conversation with a user, from the profile's database.
fn history(profile: &Profile, peer: UserId, limit: usize, json_out: bool) -> anyhow::Result<()> {
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

fn trust_server(profile: &Profile, server: &str, key: &str) -> anyhow::Result<()> {
    let key: gossip_common::PublicKey = key
        .parse()
        .with_context(|| format!("{key:?} is not a server key (64 hex digits)"))?;
    let mut settings = profile.settings()?;
    let old = settings
        .server_keys
        .insert(server.to_owned(), key.to_string());
    profile.save_settings(&settings)?;
    match old {
        Some(old) if old != key.to_string() => println!("{server}: pinned key {key} (was {old})"),
        Some(_) => println!("{server}: key {key} was already pinned"),
        None => println!("{server}: pinned key {key}"),
    }
    Ok(())
}

/// The profile's key, settings and UserID, or what to run to get them.
fn registered(profile: &Profile) -> anyhow::Result<(gossip_common::Keypair, Settings, UserId)> {
    let key = profile
        .load_key()
        .context("no key yet: run `gossip keygen`, then `gossip register`")?;
    let settings = profile.settings()?;
    let uid = settings
        .uid
        .map(UserId)
        .context("not registered yet: run `gossip register --server HOST:PORT --nick NAME`")?;
    Ok((key, settings, uid))
}

/// `gossip watch`: online until Ctrl-C, printing presence changes, messages and notices, and
/// staying up across its server's death (it logs in to the nearest live server it knows and
/// says where).
async fn watch(profile: &Profile, args: &Args) -> anyhow::Result<()> {
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

async fn logged_in(profile: &Profile, args: &Args) -> anyhow::Result<()> {
    let (key, settings, uid) = registered(profile)?;
    let (client, _events, server) =
        connect(profile, &servers_of(args, &settings)?, key, args.json).await?;
    client
        .login(uid)
        .await
        .with_context(|| format!("logging in as {uid} on {server}"))?;
    let Some(command) = &args.command else {
        unreachable!("a command is set in main")
    };
    match command {
        Cmd::SetStatus { status, message } => {
            client.set_status(status, message.as_deref()).await?;
            if args.json {
                println!("{}", json!({"status": status, "message": message}));
            } else {
                println!("status set to {status}");
            }
        }
        Cmd::Contacts {
            action: action @ (ContactsCmd::Add { .. } | ContactsCmd::Remove { .. }),
        } => {
            match action {
                ContactsCmd::Add { uids } => client.add_contacts(uids).await?,
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
        Cmd::Contacts {
            action: ContactsCmd::List,
        } => {
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
        Cmd::Send {
            uid: to,
            text,
            direct: true,
        } => {
            client.send_message(*to, text).await?;
            if !args.json {
                println!("sent to {to}");
            }
        }
        Cmd::Send {
            uid: to,
            text,
            direct: false,
        } => {
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
        Cmd::Keygen { .. }
        | Cmd::TrustServer { .. }
        | Cmd::History { .. }
        | Cmd::Whoami
        | Cmd::Register { .. }
        | Cmd::Chat { .. }
        | Cmd::Watch { .. } => {
            unreachable!("handled earlier")
        }
    }
    use std::io::Write;
    std::io::stdout().flush()?;
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

fn join(ids: &[UserId]) -> String {
    ids.iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
