//! The opt-in HTTP listener (`--http ADDR:PORT`, config `http`): `/metrics` in the Prometheus
//! text format for a scraper, `/healthz` (the process serves) and `/readyz` (datafiles loaded,
//! ports bound; the federation's state in the body) for service managers and probes, and the
//! live map of the federation at `/` (its data at `/map.json`; see [`map`]).
//!
//! Off by default. It has no authentication and tells what the read-only status socket tells
//! (server names, links, counts), so it belongs on loopback or a private interface; a
//! non-loopback address is logged as a warning. Built on axum (hyper), not hand-written HTTP.
//! Each request reads the same counters the admin socket's `metrics` reads: no lock is held
//! longer than a scrape of them, and nothing on the push path waits for it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminServices;

mod map;

/// What the handlers read: the admin services, and the map's last reading.
pub(crate) struct HttpState {
    admin: Arc<AdminServices>,
    map: map::MapCache,
}

/// The routes, over the admin services.
pub(crate) fn router(admin: Arc<AdminServices>) -> Router {
    let state = Arc::new(HttpState {
        admin,
        map: map::MapCache::default(),
    });
    // Gzip where it pays: the exposition is ~30 KB of text and the map grows with the
    // federation; Prometheus asks for gzip on every scrape. Only when the client asks.
    let compressed = Router::new()
        .route("/map.json", get(map::map_json))
        .route("/metrics", get(metrics))
        .layer(tower_http::compression::CompressionLayer::new());
    Router::new()
        .route("/", get(map::page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(compressed)
        .with_state(state)
}

/// The Prometheus text exposition (format 0.0.4).
async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let admin = &state.admin;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        admin.render_metrics(),
    )
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the listener starts only once the datafiles are loaded and every port is
/// bound, so answering is being ready; the body says where the federation stands.
async fn readyz(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let admin = &state.admin;
    let st = admin.federation.status();
    Json(json!({
        "ready": true,
        "server": crate::mst::id_string(admin.federation.me()),
        "servers": st.servers.len(),
        "links": st.links,
        "tree_edges": st.tree.len(),
        "clients": admin.presence.session_count(),
        "users": admin.store.user_count(),
    }))
}

/// Binds `addr` (warning when it is not loopback: the listener has no authentication).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the HTTP listener has no authentication; keep it on loopback or a private network");
    }
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `listener` until the stop, by a task in `tracker`.
pub(crate) fn serve(
    admin: &Arc<AdminServices>,
    listener: tokio::net::TcpListener,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let (app, stop) = (router(Arc::clone(admin)), shutdown.clone());
    tracker.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    });
}
