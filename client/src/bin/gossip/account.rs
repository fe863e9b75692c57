//! The profile and account commands: `keygen`, `whoami`, `register` and `trust-server`.

use anyhow::{bail, Context};
use gossip_client::directory::{fingerprint, Card};
use gossip_client::profile::{portable_key, Profile};
use serde_json::json;

use crate::args::{Args, Cmd};
use crate::session::{connect, servers_of};

pub(crate) fn keygen(
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

pub(crate) fn whoami(profile: &Profile, card_only: bool, json: bool) -> anyhow::Result<()> {
    let key = profile
        .load_key()
        .context("no key yet: run `gossip keygen`")?;
    let s = profile.settings()?;
    let card = s.uid.map(|uid| {
        Card::new(
            gossip_common::UserId(uid),
            &key.public(),
            s.nick.as_deref(),
            s.servers.first().map(String::as_str),
        )
    });
    if card_only {
        let card = card.context("not registered yet: run `gossip register` first")?;
        if json {
            println!("{}", json!({ "card": card.to_string() }));
        } else {
            println!("{card}");
        }
        return Ok(());
    }
    if json {
        println!(
            "{}",
            json!({"uid": s.uid, "nick": s.nick, "public_key": key.public().to_string(), "fingerprint": fingerprint(&key.public()), "card": card.map(|c| c.to_string()), "servers": s.servers, "server_keys": s.server_keys, "home": profile.home()})
        );
    } else {
        match s.uid {
            Some(uid) => println!("uid:        {uid}"),
            None => println!("uid:        (not registered: run `gossip register`)"),
        }
        println!("public key: {}", key.public());
        println!("fingerprint: {}", fingerprint(&key.public()));
        if let Some(card) = card {
            println!("card:       {card}");
        }
        println!("servers:    {}", s.servers.join(", "));
        for (server, key) in &s.server_keys {
            println!("  {server} key {key}");
        }
        println!("profile:    {}", profile.home().display());
    }
    Ok(())
}

pub(crate) async fn register(profile: &Profile, args: &Args) -> anyhow::Result<()> {
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
    // The encryption keys go out in the very first record, so the new user can be written to
    // from the moment they exist (a message sent before their first login waits for them).
    let e2e = crate::session::open_e2e(profile)?;
    let (client, _events, server) =
        connect(profile, &servers_of(args, &settings)?, key, args.json).await?;
    let uid = client
        .register_with_keys(&e2e, |u| {
            u.nick_name = nick.clone();
            u.name = name.clone();
            u.email = email.clone();
            u.location = location.clone();
            u.website = website.clone();
        })
        .await?;
    settings.uid = Some(uid.0);
    settings.nick = Some(nick.clone());
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

pub(crate) fn trust_server(profile: &Profile, server: &str, key: &str) -> anyhow::Result<()> {
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
