//! A session that outlives its server: [`Failover`] keeps one user logged in somewhere in the
//! federation. When the connection ends it backs off, re-measures the servers it knows (the
//! ones it was given plus every server its servers told it about), logs in to the nearest live
//! one, numbers its records past the last will it handed out (which the federation may still
//! publish), re-sends its presence and a fresh will, and carries on, reporting
//! [`Update::Reconnected`].
//!
//! It also answers the federation: if a record of its own user arrives that says "offline"
//! while it is connected (its will, published by servers that judged its server dead during a
//! partition), it publishes its presence again, past that record.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gossip_common::rtt::ProbeConfig;
use gossip_common::{Keypair, UserId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{ClientError, DirectListener, Event, GossipClient};

/// What a [`Failover`] session is.
#[derive(Clone)]
pub struct Config {
    /// Servers to start from (`host:port`, base ports).
    pub servers: Vec<String>,
    /// The user's key.
    pub key: Keypair,
    /// The user.
    pub uid: UserId,
    /// The status to keep published (`online`, `away`…).
    pub status: String,
    /// Where to accept direct messages (re-bound on every connection), if anywhere.
    pub listen: Option<SocketAddr>,
    /// How servers are measured before each login.
    pub probe: ProbeConfig,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// Server keys pinned per server; servers without one are pinned at first contact (or
    /// from a connected server's list) and reported by [`Update::Pins`].
    pub pins: crate::Pins,
    /// Extra UserInfo fields published with the online record (the encryption keys,
    /// [`crate::e2e::E2e::published`]): in the same record, so no second update follows that
    /// could race a change made meanwhile by another client of the same user.
    pub publish: Vec<(String, String)>,
}

impl Config {
    /// Defaults for interactive use: quick probes (a dead server must not delay the failover
    /// by seconds), backoff up to 10 s.
    pub fn new(servers: Vec<String>, key: Keypair, uid: UserId, status: &str) -> Config {
        Config {
            servers,
            key,
            uid,
            status: status.to_owned(),
            listen: None,
            probe: ProbeConfig {
                interval: Duration::from_millis(50),
                replies: 2,
                dead_after: Duration::from_millis(400),
                source: None,
            },
            max_backoff: Duration::from_secs(10),
            pins: crate::Pins::new(),
            publish: Vec::new(),
        }
    }
}

/// What happened to the session.
#[derive(Debug)]
pub enum Update {
    /// Something from the server or a contact.
    Event(Event),
    /// Logged in (the first time) to `server`.
    Connected {
        /// `host:port`.
        server: String,
    },
    /// Logged in again, to `server`, after the previous connection ended.
    Reconnected {
        /// `host:port`.
        server: String,
    },
    /// The connection to `server` ended; a new one is being sought.
    Lost {
        /// `host:port`.
        server: String,
        /// Why, as far as known.
        why: String,
    },
    /// The servers now known (given and learned), to keep in the profile.
    Servers(Vec<String>),
    /// The server keys now pinned, to keep in the profile.
    Pins(crate::Pins),
}

/// A logged-in session that reconnects by itself.
pub struct Failover {
    current: Arc<Mutex<Option<Arc<GossipClient>>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Failover {
    /// Logs in (the first attempt must succeed, so a wrong key or UserID is reported at once)
    /// and keeps the session up from then on. Updates arrive on the returned channel.
    pub async fn start(cfg: Config) -> Result<(Failover, mpsc::Receiver<Update>), ClientError> {
        let (tx, rx) = mpsc::channel(1024);
        let current = Arc::new(Mutex::new(None));
        let first = connect(&cfg, None).await?;
        *current.lock().expect("lock") = Some(Arc::clone(&first.client));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(cfg, first, Arc::clone(&current), tx, stop.clone()));
        Ok((
            Failover {
                current,
                stop,
                task,
            },
            rx,
        ))
    }

    /// The connected client, if any right now.
    pub fn client(&self) -> Option<Arc<GossipClient>> {
        self.current.lock().expect("lock").clone()
    }

    /// Stops reconnecting and logs out cleanly (publishing the offline record).
    pub async fn logout(self) -> Result<(), ClientError> {
        self.stop.cancel();
        let _ = self.task.await;
        let client = self.current.lock().expect("lock").take();
        match client.map(Arc::try_unwrap) {
            Some(Ok(c)) => c.logout().await,
            Some(Err(shared)) => {
                shared
                    .set_status(gossip_common::record::STATUS_OFFLINE, None)
                    .await
            }
            None => Ok(()),
        }
    }
}

struct Connected {
    client: Arc<GossipClient>,
    events: crate::Events,
    _direct: Option<DirectListener>,
}

/// Connects to the nearest live server, logs in, numbers past `floor`, goes online.
async fn connect(
    cfg: &Config,
    floor: Option<gossip_common::EventCount>,
) -> Result<Connected, ClientError> {
    let (client, events) =
        GossipClient::connect_nearest(&cfg.servers, cfg.key.clone(), &cfg.probe, &cfg.pins).await?;
    client.login(cfg.uid).await?;
    if let Some(f) = floor {
        client.number_past(f);
    }
    let direct = match cfg.listen {
        Some(bind) => Some(client.listen_direct(bind).await?),
        None => None,
    };
    client
        .go_online_publishing(
            &cfg.status,
            direct.as_ref().map(|d| d.local_addr()),
            &cfg.publish,
        )
        .await?;
    Ok(Connected {
        client: Arc::new(client),
        events,
        _direct: direct,
    })
}

async fn run(
    mut cfg: Config,
    first: Connected,
    current: Arc<Mutex<Option<Arc<GossipClient>>>>,
    tx: mpsc::Sender<Update>,
    stop: CancellationToken,
) {
    let mut conn = Some(first);
    let mut reconnect = false;
    let mut backoff = Duration::from_millis(100);
    let mut floor = None;
    loop {
        let Some(mut c) = conn.take() else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            match connect(&cfg, floor).await {
                Ok(c) => {
                    conn = Some(c);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::info!(error = %e, ?backoff, "no server reachable yet");
                    backoff = (backoff * 2).min(cfg.max_backoff);
                }
            }
            continue;
        };
        let server = c.client.server().to_owned();
        *current.lock().expect("lock") = Some(Arc::clone(&c.client));
        let hello = if reconnect {
            Update::Reconnected {
                server: server.clone(),
            }
        } else {
            Update::Connected {
                server: server.clone(),
            }
        };
        reconnect = true;
        let _ = tx.send(hello).await;
        // Learn the federation's servers, so the next failover can reach any of them.
        let pins_before = cfg.pins.clone();
        cfg.pins
            .entry(server.clone())
            .or_insert_with(|| c.client.server_key());
        if let Ok(learned) = c.client.server_keys().await {
            let before = cfg.servers.len();
            for (s, key) in learned {
                if let Some(key) = key {
                    cfg.pins.entry(s.clone()).or_insert(key);
                }
                if !cfg.servers.contains(&s) {
                    cfg.servers.push(s);
                }
            }
            if cfg.servers.len() != before {
                let _ = tx.send(Update::Servers(cfg.servers.clone())).await;
            }
        }
        if cfg.pins != pins_before {
            let _ = tx.send(Update::Pins(cfg.pins.clone())).await;
        }
        let why = loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = c.events.next() => ev,
            };
            match ev {
                None => break "connection closed".to_owned(),
                Some(Event::Disconnected(why)) => break why,
                Some(Event::Presence(r)) if r.user_id == cfg.uid => {
                    // Our own record, changed elsewhere: our will published by servers that
                    // took ours for dead, or another client of ours. Publish our presence again
                    // past it (an offline record while we are here is wrong), or just refresh
                    // the will (another client's update made it stale).
                    c.client.number_past(r.event_count);
                    let client = Arc::clone(&c.client);
                    let status = cfg.status.clone();
                    let online = r.is_online();
                    tokio::spawn(async move {
                        let result = if online {
                            client.refresh_last_will().await
                        } else {
                            client.set_status(&status, None).await
                        };
                        if let Err(e) = result {
                            tracing::info!(error = %e, "could not re-assert presence");
                        }
                    });
                }
                Some(ev) => {
                    if tx.send(Update::Event(ev)).await.is_err() {
                        return;
                    }
                }
            }
        };
        floor = c.client.will_floor();
        *current.lock().expect("lock") = None;
        let _ = tx
            .send(Update::Lost {
                server: server.clone(),
                why,
            })
            .await;
        backoff = Duration::from_millis(50);
    }
}
