//! The local admin socket that `prodserver` talks to (the spec's "prod": an admin adds a server
//! after a netsplit, inspects RTTs and the tree, blacklists an IP).
//!
//! JSON lines over Unix sockets (see `gossip_common::admin`). Two sockets, two privilege levels,
//! enforced by file permissions so no secret has to be managed:
//! * `admin.sock`, mode 0600 — the server's user only; every command;
//! * `status.sock`, mode 0660 — also the server's group; read-only commands.
//!
//! A path that exists and is not a socket is never removed: the server refuses to start. Every
//! change made through the socket is written to the transaction log.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gossip_common::admin::{AdminRequest, AdminResponse};
use gossip_common::UserId;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::blacklist::Blacklist;
use crate::config::Config;
use crate::federation::Federation;
use crate::metrics::{Metrics, Readings};
use crate::mst::id_string;
use crate::presence::Presence;
use crate::server_keys::ServerKeys;
use crate::store::Store;

/// What an admin request may read and change: the services `prodserver` reaches.
pub(crate) struct AdminServices {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Arc<Store>,
    pub(crate) federation: Arc<Federation>,
    pub(crate) presence: Arc<Presence>,
    pub(crate) blacklist: Arc<Blacklist>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) keys: Arc<ServerKeys>,
    /// When the node started (for `uptime_s`).
    pub(crate) started: std::time::Instant,
}

impl AdminServices {
    fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The exposition of every metric, read now.
    pub(crate) fn render_metrics(&self) -> String {
        let fed = &self.federation;
        let status = fed.status();
        self.metrics.render(&Readings {
            pushes: self.presence.pushes(),
            slow_consumers_dropped: self.presence.slow_consumers_dropped(),
            link_drops: fed.link_drops(),
            recomputations: fed.recomputations(),
            refused_introductions: fed.refused_introductions(),
            clients: self.presence.session_count() as u64,
            users: self.store.user_count() as u64,
            contact_lists: self.store.list_count() as u64,
            uptime_s: self.uptime_s(),
            rtts: status.rtts,
            links: status.links,
            repair_checks: fed.repair_checks(),
            repaired: fed.repaired(),
        })
    }
}

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// Binds a Unix socket at `path` with `mode`, replacing only a stale *socket*.
pub(crate) fn bind(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ))
        }
        Err(_) => {}
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Bound inside a private (0700) directory, given its final mode there, then moved into
    // place: there is no moment when the socket exists with the default permissions where
    // another local user could connect.
    // Short names: a socket path is limited to 107 bytes, and this one must fit as well.
    let private = dir.join(format!(".{}.{mode:o}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    }
    let staged = private.join("s");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// The read-only socket's path: `status.sock` beside the admin socket.
pub(crate) fn status_path(admin: &Path) -> PathBuf {
    admin.with_file_name("status.sock")
}

/// Serves one admin socket until shutdown.
pub(crate) fn serve(
    node: &Arc<AdminServices>,
    listener: UnixListener,
    read_only: bool,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let (node, shutdown, t) = (Arc::clone(node), shutdown.clone(), tracker.clone());
    tracker.spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let node = Arc::clone(&node);
            t.spawn(async move {
                let (rd, mut wr) = stream.into_split();
                let mut lines = BufReader::new(rd.take(16 * 1024 * 1024)).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let response = if line.len() > MAX_LINE {
                        AdminResponse::err("request too long")
                    } else {
                        match serde_json::from_str::<AdminRequest>(&line) {
                            Err(e) => AdminResponse::err(format!("bad request: {e}")),
                            Ok(req) if read_only && !req.is_read_only() => AdminResponse::err(
                                "permission denied: this is the read-only status socket; use admin.sock",
                            ),
                            Ok(req) => handle(&node, req).await,
                        }
                    };
                    let mut out = serde_json::to_vec(&response).unwrap_or_default();
                    out.push(b'\n');
                    if wr.write_all(&out).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

use tokio::io::AsyncReadExt;

/// The JSON field saying whether a blacklist change changed anything.
fn verb_past(add: bool) -> &'static str {
    if add {
        "added"
    } else {
        "removed"
    }
}

fn parse_server(s: &str) -> Result<(String, u16), String> {
    crate::config::parse_server(s).map_err(|e| e.to_string())
}

async fn handle(node: &AdminServices, req: AdminRequest) -> AdminResponse {
    let fed = &node.federation;
    // A blacklist entry that is a server key refuses that key, whatever its address.
    if let AdminRequest::BlacklistAdd { net } | AdminRequest::BlacklistRemove { net } = &req {
        if let Ok(key) = net.trim().parse::<gossip_common::PublicKey>() {
            let add = matches!(req, AdminRequest::BlacklistAdd { .. });
            let verb = if add { "add" } else { "remove" };
            node.store
                .audit("admin", &format!("blacklist {verb} key {key}"));
            let changed = fed.with_keyring(|k| if add { k.refuse(key) } else { k.unrefuse(&key) });
            let links = if add { fed.drop_links_by_key() } else { 0 };
            return AdminResponse::ok(
                json!({verb_past(add): changed, "key": key.to_string(), "links_closed": links}),
            );
        }
    }
    match req {
        AdminRequest::Status => AdminResponse::ok(status(node)),
        AdminRequest::Servers => AdminResponse::ok(status(node)["peers"].clone()),
        AdminRequest::Rtt => AdminResponse::ok(json!({
            "me": id_string(fed.me()),
            "matrix": fed.matrix().into_iter().map(|(from, row)| json!({
                "from": from,
                "rtts": row.into_iter().map(|(to, ms)| json!({"to": to, "rtt_ms": ms})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })),
        AdminRequest::Mst => {
            let st = fed.status();
            let me = id_string(fed.me());
            let neighbours: Vec<&String> = st
                .tree
                .iter()
                .filter_map(|(a, b)| {
                    if *a == me {
                        Some(b)
                    } else if *b == me {
                        Some(a)
                    } else {
                        None
                    }
                })
                .collect();
            AdminResponse::ok(json!({"mst": st.tree, "neighbours": neighbours, "links": st.links}))
        }
        AdminRequest::Users => {
            let mut users: Vec<_> = node
                .store
                .all_users()
                .into_iter()
                .map(|u| json!({"uid": u.user_id.0, "nick": u.nick_name, "status": u.status, "event_count": u.event_count.count, "rollover": u.event_count.rollover}))
                .collect();
            users.sort_by_key(|u| u["uid"].as_u64());
            AdminResponse::ok(json!(users))
        }
        AdminRequest::User { uid } => match node.store.user(UserId(uid)) {
            None => AdminResponse::err(format!("no user {uid} here")),
            Some(u) => AdminResponse::ok(json!({
                "uid": uid,
                "event_count": u.event_count.count,
                "rollover": u.event_count.rollover,
                "signature_valid": u.verify_self().is_ok(),
                "record": u.raw(),
                "contact_list": node.store.contact_list(UserId(uid)).map(|c| c.contacts.iter().map(|x| x.0).collect::<Vec<_>>()),
            })),
        },
        AdminRequest::AddServer { server } => {
            let key = match parse_server(&server) {
                Ok(k) => k,
                Err(e) => return AdminResponse::err(e),
            };
            // Resolve first, so one server is not added twice under two names.
            let Some(addr) = resolve(&key).await else {
                return AdminResponse::err(format!("cannot resolve {}", key.0));
            };
            for known in fed.status().servers {
                if let Ok(k) = parse_server(&known) {
                    if resolve(&k).await == Some(addr) {
                        return AdminResponse::ok(
                            json!({"added": false, "already_known_as": known}),
                        );
                    }
                }
            }
            node.store
                .audit("admin", &format!("add-server {}", id_string(&key)));
            fed.admin_add_server(key.clone());
            AdminResponse::ok(
                json!({"added": true, "server": id_string(&key), "note": "measuring RTTs; the tree is recomputed when they arrive"}),
            )
        }
        AdminRequest::DeleteServer { server } => {
            let key = match parse_server(&server) {
                Ok(k) => k,
                Err(e) => return AdminResponse::err(e),
            };
            if key == *fed.me() {
                node.store.audit("admin", "leave the federation");
                let links = fed.leave();
                return AdminResponse::ok(json!({
                    "left": true,
                    "links_told": links,
                    "note": "every server that verifies the signed removal forgets this one and refuses its links; stop this server now",
                }));
            }
            node.store
                .audit("admin", &format!("delete-server {}", id_string(&key)));
            let removed = fed.admin_delete_server(&key);
            AdminResponse::ok(json!({
                "deleted": removed,
                "note": "forgotten and refused here; only that server itself can remove it everywhere (prodserver delete-server on it)",
            }))
        }
        AdminRequest::Trust { server, key } => {
            let name = match parse_server(&server) {
                Ok(k) => k,
                Err(e) => return AdminResponse::err(e),
            };
            let Ok(pk) = key.parse::<gossip_common::PublicKey>() else {
                return AdminResponse::err(format!(
                    "{key:?} is not a server key (64 hex digits, as `prodserver servers` shows)"
                ));
            };
            if name == *fed.me() {
                return AdminResponse::err("this server's own key is its server.key file");
            }
            node.store
                .audit("admin", &format!("trust {} {pk}", id_string(&name)));
            let replaced = fed.with_keyring(|k| k.pin(&name, pk));
            let closed = fed.drop_links_by_key();
            fed.recalc();
            AdminResponse::ok(json!({
                "server": id_string(&name), "key": pk.to_string(),
                "replaced": replaced.map(|k| k.to_string()), "links_closed": closed,
            }))
        }
        AdminRequest::Notice { text } => {
            node.store.audit("admin", &format!("notice {text:?}"));
            let sent = node.presence.notify_all(&text);
            AdminResponse::ok(json!({"notice": text, "clients": sent}))
        }
        AdminRequest::Recalc => {
            node.store.audit("admin", "recalc");
            fed.recalc();
            AdminResponse::ok(json!({"recalc": "started"}))
        }
        AdminRequest::BlacklistAdd { net } => match node.blacklist.add(&net) {
            Ok(added) => {
                node.store.audit("admin", &format!("blacklist add {net}"));
                // The entry applies to what is already open, not just to what comes next.
                let links = fed.drop_links_from(|ip| node.blacklist.contains(ip));
                let clients = node.presence.kill_where(|ip| node.blacklist.contains(ip));
                AdminResponse::ok(json!({
                    "added": added,
                    "blacklist": node.blacklist.list(),
                    "links_closed": links,
                    "clients_closed": clients,
                }))
            }
            Err(e) => AdminResponse::err(e),
        },
        AdminRequest::BlacklistRemove { net } => match node.blacklist.remove(&net) {
            Ok(removed) => {
                node.store
                    .audit("admin", &format!("blacklist remove {net}"));
                AdminResponse::ok(json!({"removed": removed, "blacklist": node.blacklist.list()}))
            }
            Err(e) => AdminResponse::err(e),
        },
        AdminRequest::BlacklistList => {
            let (_, refused, _) = fed.keyring_view();
            let mut all = node.blacklist.list();
            all.extend(refused);
            AdminResponse::ok(json!(all))
        }
        AdminRequest::Backup { path, include_key } => {
            let path = std::path::PathBuf::from(path);
            if !path.is_absolute() {
                return AdminResponse::err(format!(
                    "{}: give an absolute path (prodserver makes one from yours)",
                    path.display()
                ));
            }
            let me = id_string(node.federation.me());
            match crate::backup::write(&node.store, &node.config.data_dir, &me, &path, include_key)
                .await
            {
                Ok(manifest) => {
                    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    node.store.audit(
                        "admin",
                        &format!(
                            "backup {} (key {})",
                            path.display(),
                            if include_key { "included" } else { "left out" }
                        ),
                    );
                    tracing::info!(path = %path.display(), bytes, key_included = include_key, "backup written");
                    AdminResponse::ok(json!({"path": path, "bytes": bytes, "manifest": manifest}))
                }
                Err(e) => AdminResponse::err(e.to_string()),
            }
        }
        AdminRequest::Diagnostics => {
            let c = &node.config;
            // The server holds no private keys; the config's only sensitive-ish parts are
            // paths and addresses, kept because they are what a bug report needs.
            let config = json!({
                "name": c.name, "base_port_requested": c.base_port, "strict_ports": c.strict_ports,
                "bind": c.bind.to_string(), "data_dir": c.data_dir, "admin_socket": c.admin_socket,
                "max_frame": c.max_frame, "max_clients": c.max_clients, "outbound_queue": c.outbound_queue,
                "keepalive_s": c.keepalive.as_secs_f64(), "idle_timeout_s": c.idle_timeout.as_secs_f64(),
                "uid_lock_s": c.uid_lock.as_secs(), "peers": c.peers.iter().map(|(h, p)| format!("{h}:{p}")).collect::<Vec<_>>(),
                "probe_interval_ms": c.probe.interval.as_millis() as u64, "dead_after_s": c.probe.dead_after.as_secs_f64(),
                "reprobe_s": c.reprobe.as_secs_f64(), "lab_link_delay": !c.lab.is_empty(),
                "trace": c.trace.is_some(), "blacklist_entries": node.blacklist.list().len(),
            });
            let st = fed.status();
            AdminResponse::ok(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "config": config,
                "status": status(node),
                "rtt": fed.matrix(),
                "mst": st.tree,
                "links": st.links,
                "metrics": node.render_metrics(),
                "recent_log": crate::logring::recent(),
            }))
        }
        AdminRequest::Metrics => AdminResponse::ok(json!({"text": node.render_metrics()})),
    }
}

async fn resolve(key: &(String, u16)) -> Option<std::net::SocketAddr> {
    tokio::net::lookup_host((key.0.as_str(), key.1))
        .await
        .ok()?
        .next()
}

/// The `status` document.
pub(crate) fn status(node: &AdminServices) -> serde_json::Value {
    let st = node.federation.status();
    let me = id_string(node.federation.me());
    let rtts: std::collections::HashMap<&String, Option<f64>> =
        st.rtts.iter().map(|(k, v)| (k, *v)).collect();
    let (keys, _, admission) = node.federation.keyring_view();
    let peers: Vec<_> = st
        .servers
        .iter()
        .filter(|s| **s != me)
        .map(|s| {
            let rtt = rtts.get(s).copied().flatten();
            json!({"id": s, "rtt_ms": rtt, "alive": rtt.is_some(), "linked": st.links.contains(s), "key": keys.get(s)})
        })
        .collect();
    json!({
        "name": node.config.name,
        "identity": me,
        "key": crate::server_keys::fingerprint(&node.keys.public()),
        "federation": admission,
        "base_port": node.federation.me().1,
        "users": node.store.user_count(),
        "contact_lists": node.store.list_count(),
        "clients": node.presence.session_count(),
        "peers": peers,
        "mst": st.tree.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
        "uptime_s": node.uptime_s(),
        "digest": node.store.digest(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_regular_file_is_never_replaced_but_a_stale_socket_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        std::fs::write(&path, "important").unwrap();
        let err = bind(&path, 0o600).expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "important");

        let sock = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let listener = bind(&sock, 0o600).expect("stale socket replaced");
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(listener);
    }
}
