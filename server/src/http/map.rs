//! The live map of the federation: `/` serves one self-contained page (HTML, SVG and script
//! embedded in the binary: no CDN, no build step), which polls `/map.json` every second and
//! redraws the servers, the tree and this server's links.
//!
//! `/map.json` is built from [`Federation::map`](crate::federation::Federation::map) and a few
//! counts, and cached for [`FRESH_FOR`]: however many browsers watch, the federation's lock
//! is taken for the map at most twice a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use parking_lot::Mutex;
use serde_json::json;

use crate::admin::AdminServices;

/// The page.
const PAGE: &str = include_str!("map.html");

/// How long one reading of the map is served.
pub(crate) const FRESH_FOR: Duration = Duration::from_millis(500);

/// Non-tree edges drawn at most (the shortest), so a large federation's map stays readable and
/// cheap.
pub(crate) const MAX_EDGES: usize = 2_000;

/// The last reading, and when it was made.
#[derive(Default)]
pub(crate) struct MapCache(Mutex<Option<(Instant, bytes::Bytes)>>);

/// `/`: the page.
pub(crate) async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}

/// `/map.json`: what the page draws.
pub(crate) async fn map_json(State(state): State<Arc<super::HttpState>>) -> impl IntoResponse {
    let now = Instant::now();
    let cached = state
        .map
        .0
        .lock()
        .as_ref()
        .filter(|(at, _)| now.duration_since(*at) < FRESH_FOR)
        .map(|(_, body)| body.clone());
    let body = match cached {
        Some(body) => body,
        None => {
            let body = bytes::Bytes::from(reading(&state.admin).to_string());
            *state.map.0.lock() = Some((now, body.clone()));
            body
        }
    };
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
}

/// One reading of the map and the counts around it.
fn reading(admin: &AdminServices) -> serde_json::Value {
    let map = admin.federation.map(MAX_EDGES);
    // Servers whose host is an address this server refuses (`prodserver blacklist`).
    let blacklisted: Vec<&str> = map
        .servers
        .iter()
        .filter(|s| {
            crate::mst::parse_id(&s.id)
                .ok()
                .and_then(|(host, _)| host.parse::<std::net::IpAddr>().ok())
                .is_some_and(|ip| admin.blacklist.contains(ip))
        })
        .map(|s| s.id.as_str())
        .collect();
    let (_, refused_keys, _) = admin.federation.keyring_view();
    let links = map.servers.iter().filter(|s| s.linked).count();
    json!({
        "federation": map,
        "blacklisted_servers": blacklisted,
        "refused_keys": refused_keys,
        "links": links,
        "clients": admin.presence.session_count(),
        "users_online": admin.presence.user_count(),
        "users": admin.store.user_count(),
        "updated_ms": crate::mailbox::now_ms(),
    })
}
