//! What the commands share: the profile's key, settings and UserID, the servers to use,
//! connecting (with the server key pinning), and the profile's message database.

use anyhow::{bail, Context};
use gossip_client::profile::{Profile, Settings};
use gossip_client::GossipClient;
use gossip_common::UserId;

use crate::args::Args;

pub(crate) fn servers_of(args: &Args, settings: &Settings) -> anyhow::Result<Vec<String>> {
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
pub(crate) async fn connect(
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

/// The profile's message database (`messages.db`: history and encryption state), made on
/// first use.
pub(crate) fn open_e2e(profile: &Profile) -> anyhow::Result<gossip_client::e2e::E2e> {
    Ok(gossip_client::e2e::E2e::open(
        &profile.home().join("messages.db"),
    )?)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The profile's key, settings and UserID, or what to run to get them.
pub(crate) fn registered(
    profile: &Profile,
) -> anyhow::Result<(gossip_common::Keypair, Settings, UserId)> {
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
