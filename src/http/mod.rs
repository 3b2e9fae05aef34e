//! The HTTP API: routes, shared state, the bearer-token guard of the read
//! side, and the one error type every handler answers with.
//!
//! Invariants:
//! - Handlers translate HTTP into calls of the receive step and the engine, and the
//!   result back into HTTP; they hold no logic of their own.
//! - The ingest side (`/webhook`) is open to providers (signatures protect it); every
//!   read route requires `Authorization: Bearer <token>` when a token is configured,
//!   compared in constant time.
//! - The read side refuses cross-origin browser requests (an `Origin` other than the
//!   request's own host, or `Sec-Fetch-Site` other than same-origin), and, without a
//!   token, requests addressed to anything but `localhost` or an IP address: a web
//!   page cannot read it through DNS rebinding or a preflight-free `text/plain` POST.
//! - Every error body is `{"error": "..."}` saying what went wrong and what to do.

mod api;
mod dashboard;
mod health;
mod queries;
mod query;
mod report;
pub mod server;
mod webhook;

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
use crate::ingest::receive::Receiver;
use crate::outbound::forward::Forwarder;
use crate::telemetry::metrics::{Gauges, Metrics};

/// What every handler shares.
pub(crate) struct AppState {
    pub engine: Arc<Engine>,
    pub receiver: Receiver,
    pub forwarder: Forwarder,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// The saved queries (checked against the tables at start).
    pub queries: Arc<crate::monitor::Registry>,
    /// Their recent runs.
    pub runs: Arc<crate::monitor::runs::RunLog>,
    /// The alert rules' instances and notifications.
    pub alerting: Arc<crate::monitor::alerts::Alerting>,
    /// Acknowledged deliveries for the live stream (`GET /api/events/stream`).
    pub live: tokio::sync::broadcast::Sender<Arc<api::Live>>,
    /// Turns true when the server begins to stop.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// An error answer: status plus a message for the `error` field.
#[derive(Debug)]
pub(crate) struct ApiError {
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

/// Storage could not take the record: 503, retry shortly.
impl From<crate::engine::IngestError> for ApiError {
    fn from(e: crate::engine::IngestError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

/// A source name from the path, valid and (with `strict_sources`) configured: the
/// `{source}` of `/webhook/{source}` and `/report/{source}…`. Refused with 400 (bad
/// name) or 404 (unknown source under `strict_sources`).
pub(crate) struct ValidSource(pub String);

impl axum::extract::FromRequestParts<Arc<AppState>> for ValidSource {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        // The name as sent, not percent-decoded: `st%72ipe` is not a name.
        let path = parts.uri.path();
        let source = if let Some(rest) = path.strip_prefix("/webhook/") {
            rest
        } else {
            let rest = path.strip_prefix("/report/").unwrap_or_default();
            rest.split('/').next().unwrap_or_default()
        };
        webhook::check_source(state, source)?;
        Ok(ValidSource(source.to_owned()))
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
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let read = Router::new()
        .route("/query", get(query::query_get).post(query::query_post))
        .route("/api/events", get(api::events))
        .route("/api/events/stream", get(api::stream))
        .route("/api/events/{id}", get(api::event))
        .route("/api/stats", get(api::stats))
        .route("/api/alerts", get(api::alerts))
        .route("/queries", get(queries::list))
        .route("/queries/{name}", get(queries::show))
        .route("/queries/{name}/run", post(queries::run_now))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            guard_read,
        ));
    Router::new()
        .route("/webhook/{*source}", any(webhook::ingest))
        .route("/webhook", any(webhook::bad_source))
        .route("/webhook/", any(webhook::bad_source))
        .route("/report/{source}", post(report::report))
        .route(
            "/report/{source}/success",
            get(report::success).post(report::success),
        )
        .route(
            "/report/{source}/fail",
            get(report::fail).post(report::fail),
        )
        .route("/", get(dashboard::index))
        .route("/assets/{file}", get(dashboard::asset))
        .route("/api/openapi.json", get(openapi))
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
    let compaction = engine.compaction_totals();
    use std::sync::atomic::Ordering::Relaxed;
    let gauges = Gauges {
        buffer_rows: rows as u64,
        parquet_files: manifest.all_paths().count() as u64,
        alerts_firing: state.alerting.firing() as u64,
        wal_segments: wal.map(|w| w.segments()).unwrap_or(0),
        wal_groups,
        wal_records,
        wal_sync_failures: wal.map(|w| w.sync_failures()).unwrap_or(0),
        parquet_bytes: manifest.tables.values().flatten().map(|f| f.bytes).sum(),
        saved_query_runs: state.runs.totals().0,
        saved_query_failures: state.runs.totals().1,
        compaction_input_files: compaction.merged_files.load(Relaxed),
        compaction_output_files: compaction.written_files.load(Relaxed),
        compaction_input_bytes: compaction.bytes_before.load(Relaxed),
        compaction_output_bytes: compaction.bytes_after.load(Relaxed),
        compaction_failures: compaction.failed.load(Relaxed),
    };
    let text = state.metrics.render(&gauges, wal.map(|w| &w.sync_seconds));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The OpenAPI 3 description of these routes (a test keeps it in step with the
/// router).
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route; webhooks go to POST /webhook/{source}, SQL to /query",
    )
}

/// The read side's guard: no cross-origin browser requests; the configured bearer
/// token, if any; without one, only requests addressed to `localhost` or an IP.
async fn guard_read(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let host = request_host(&req);
    if let Some(why) = cross_origin(req.headers(), host.as_deref()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "cross-origin request refused ({why}): the read API answers only its own origin"
            ),
        )
        .into_response();
    }
    match &state.config.auth.token {
        Some(token) => {
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
        None => {
            if let Some(host) = host.as_deref()
                && !is_local_or_ip(host)
            {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "request addressed to {host:?} refused: without a token the read API answers only requests to localhost or an IP address (protection against DNS rebinding); set HOOKSCOPE_TOKEN to reach it by name"
                    ),
                )
                .into_response();
            }
        }
    }
    next.run(req).await
}

/// The host (and port) the request was addressed to: `Host`, or the HTTP/2 authority.
fn request_host(req: &Request) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
}

/// Why the request comes from another origin's page, if it does.
fn cross_origin(headers: &axum::http::HeaderMap, host: Option<&str>) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Some(format!("Sec-Fetch-Site: {site}"));
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => None,
        _ => Some(format!("Origin: {origin}")),
    }
}

/// `localhost` or an IP address (with or without a port). (Not names under
/// `.localhost`: some browsers resolve them through DNS.)
fn is_local_or_ip(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of the router is in the OpenAPI document, and every documented
    /// path is a route.
    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let documented: std::collections::BTreeSet<String> =
            doc["paths"].as_object().unwrap().keys().cloned().collect();
        let source = include_str!("mod.rs");
        let routed: std::collections::BTreeSet<String> = source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
            .filter(|path| path.starts_with('/') && !matches!(*path, "/webhook" | "/webhook/"))
            .map(|path| path.replace("{*source}", "{source}"))
            .collect();
        assert!(routed.len() > 15, "{routed:?}");
        assert_eq!(routed, documented);
    }

    #[test]
    fn local_names_and_ip_addresses_pass_other_names_do_not() {
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "[fe80::1]",
        ] {
            assert!(is_local_or_ip(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "app.localhost:1",
            "127.0.0.1.nip.io",
            "[::1",
            "",
        ] {
            assert!(!is_local_or_ip(bad), "{bad}");
        }
    }
}
