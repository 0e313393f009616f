//! The operators' HTTP API (`[admin]`, on by default at 127.0.0.1:9464): health and
//! readiness, Prometheus metrics, live plugin management, connection and group figures,
//! drain. JSON in and out; errors are `{"error": "..."}` with a fitting status.
//!
//! Everything but `/health` and `/ready` requires `Authorization: Bearer <token>` when a
//! token is configured; a gateway refuses to start with the API off loopback and no token.

mod plugins;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::metrics::{CONTENT_TYPE, Metrics};
use crate::server::Shared;

#[derive(Clone)]
struct Admin {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    token: Option<Arc<str>>,
}

/// Serves the admin API on `listener` until the gateway stops.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, metrics: Arc<Metrics>) {
    let token = shared.config.admin.token().map(Into::into);
    let admin = Admin {
        shared,
        metrics,
        token,
    };
    if let Err(error) = axum::serve(listener, router(admin)).await {
        tracing::error!(%error, "admin API stopped");
    }
}

fn router(admin: Admin) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/connections", get(connections))
        .route("/groups/{group}", get(group))
        .route("/drain", post(drain))
        .route("/plugins", get(plugins::list).post(plugins::load))
        .route("/plugins/order", put(plugins::reorder))
        .route("/plugins/{name}", delete(plugins::remove))
        .route("/plugins/{name}/reload", post(plugins::reload))
        .route_layer(middleware::from_fn_with_state(admin.clone(), authorize));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(guarded)
        .fallback(|| async { Error::new(StatusCode::NOT_FOUND, "no such admin endpoint") })
        .with_state(admin)
}

/// An error answer: a status and a sentence for the operator.
struct Error {
    status: StatusCode,
    message: String,
}

impl Error {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

async fn authorize(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    let Some(token) = &admin.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => {
            next.run(request).await
        }
        _ => Error::new(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs Authorization: Bearer <admin token>",
        )
        .into_response(),
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Liveness: the process answers.
async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the gateway takes new connections (not while draining).
async fn ready(State(admin): State<Admin>) -> Response {
    if admin.shared.draining() {
        let body = json!({ "status": "draining" });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else {
        Json(json!({ "status": "ready" })).into_response()
    }
}

async fn metrics(State(admin): State<Admin>) -> Response {
    admin.shared.refresh_quic_totals().await;
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        admin.metrics.encode(),
    )
        .into_response()
}

/// Connection figures: counts, queue depths, delivery totals.
async fn connections(State(admin): State<Admin>) -> Json<serde_json::Value> {
    let node = &admin.shared.node;
    let delivery = admin.shared.metrics.delivery();
    Json(json!({
        "local": node.local_stats(),
        "delivery": {
            "pushes": delivery.pushes,
            "retransmits": delivery.retransmits,
            "ack_frames": delivery.ack_frames,
            "acknowledged": delivery.acked,
        },
        "draining": admin.shared.draining(),
    }))
}

/// One group: its head and size from the store, its members connected here and whether
/// this gateway is subscribed to it. Never message bodies.
async fn group(
    State(admin): State<Admin>,
    Path(group): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    let node = &admin.shared.node;
    let info = node
        .store
        .group(&group)
        .await
        .map_err(|e| Error::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .ok_or_else(|| Error::new(StatusCode::NOT_FOUND, format!("no group {group:?}")))?;
    let local = node.local_members(&group);
    let members: Vec<_> = local
        .iter()
        .map(|(user, connections)| json!({ "user": user, "connections": connections }))
        .collect();
    Ok(Json(json!({
        "group": group,
        "owner": info.owner,
        "head_seq": info.head_seq,
        "local_members": members,
        "subscribed": !local.is_empty(),
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    /// Seconds clients get to move; default `drain.deadline_s`.
    deadline_s: Option<u64>,
}

/// Starts a drain and answers at once (202); `/ready` says `draining` meanwhile and the
/// process exits once it is done, as on SIGTERM.
async fn drain(
    State(admin): State<Admin>,
    body: Option<Json<DrainRequest>>,
) -> (StatusCode, Json<serde_json::Value>) {
    let request = body.map(|Json(b)| b).unwrap_or_default();
    let deadline_s = request
        .deadline_s
        .unwrap_or(admin.shared.config.drain.deadline_s);
    let already = admin.shared.draining();
    let connections = admin.shared.node.local_counts().0;
    if !already {
        tracing::info!(deadline_s, "drain requested on the admin API");
        let shared = admin.shared.clone();
        tokio::spawn(async move { shared.drain(Duration::from_secs(deadline_s)).await });
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "draining": true,
            "already": already,
            "deadline_s": deadline_s,
            "connections": connections,
        })),
    )
}
