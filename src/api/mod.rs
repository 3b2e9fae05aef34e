//! The HTTP API (SPEC §3): routes, shared state, the bearer-token guard of the read
//! side, and the one error type every handler answers with.
//!
//! Invariants:
//! - Handlers translate HTTP into calls of the receive step and the engine, and the
//!   result back into HTTP; they hold no logic of their own.
//! - The ingest side (`/webhook`) is open to providers (signatures protect it); every
//!   read route requires `Authorization: Bearer <token>` when a token is configured,
//!   compared in constant time.
//! - Every error body is `{"error": "..."}` saying what went wrong and what to do.

mod health;
mod ingest;
mod query;
mod report;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::engine::Engine;
use crate::forward::Forwarder;
use crate::metrics::{Gauges, Metrics};
use crate::receive::Receiver;

/// What every handler shares.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub receiver: Receiver,
    pub forwarder: Forwarder,
    pub config: Config,
    pub metrics: Metrics,
}

/// An error answer: status plus a message for the `error` field.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            retry_after: Some(1),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The router of the whole API.
pub fn router(state: Arc<AppState>) -> Router {
    let read = Router::new()
        .route("/query", get(query::query_get).post(query::query_post))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ));
    Router::new()
        .route("/webhook/{*source}", any(ingest::ingest))
        .route("/webhook", any(ingest::bad_source))
        .route("/webhook/", any(ingest::bad_source))
        .route("/report/{source}", post(report::report))
        .route(
            "/report/{source}/success",
            get(report::success).post(report::success),
        )
        .route(
            "/report/{source}/fail",
            get(report::fail).post(report::fail),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(read)
        .fallback(not_found)
        .with_state(state)
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let engine = &state.engine;
    let (rows, _, _) = engine.catalog().buffer_stats();
    let manifest = engine.catalog().manifest();
    let wal = engine.wal_status();
    let (wal_groups, wal_records) = wal.map(|w| w.groups_and_records()).unwrap_or_default();
    let gauges = Gauges {
        buffer_rows: rows as u64,
        parquet_files: manifest.all_paths().count() as u64,
        alerts_firing: 0,
        wal_segments: wal.map(|w| w.segments()).unwrap_or(0),
        wal_groups,
        wal_records,
    };
    let text = state.metrics.render(&gauges, wal.map(|w| &w.sync_seconds));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route; webhooks go to POST /webhook/{source}, SQL to /query",
    )
}

/// Requires the configured bearer token, if any.
async fn require_token(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.config.auth.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = given.as_bytes().ct_eq(token.as_bytes()).into();
        if !ok {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send Authorization: Bearer <HOOKSCOPE_TOKEN>",
            )
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    next.run(req).await
}
