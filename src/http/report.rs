//! `POST /report/{source}` and the `/success` / `/fail` pings: the app says how
//! processing went. Reports are durable (WAL) before the answer.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::webhook::check_source;
use super::{ApiError, AppState};
use crate::ingest::report::{self, Ping};
use crate::model::Outcome;

pub async fn report(
    State(state): State<Arc<AppState>>,
    Path(source): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(e) = check_source(&state, &source) {
        return e.into_response();
    }
    let now = chrono::Utc::now().timestamp_micros();
    match report::parse(&source, &body, now) {
        Ok(outcomes) => record(&state, outcomes).await,
        Err(e) => ApiError::new(StatusCode::BAD_REQUEST, e).into_response(),
    }
}

type PingQuery = Result<Query<Ping>, QueryRejection>;

pub async fn success(
    state: State<Arc<AppState>>,
    source: Path<String>,
    ping: PingQuery,
) -> Response {
    pinged(state, source, ping, true).await
}

pub async fn fail(state: State<Arc<AppState>>, source: Path<String>, ping: PingQuery) -> Response {
    pinged(state, source, ping, false).await
}

async fn pinged(
    State(state): State<Arc<AppState>>,
    Path(source): Path<String>,
    ping: PingQuery,
    success: bool,
) -> Response {
    if let Err(e) = check_source(&state, &source) {
        return e.into_response();
    }
    let ping = match ping {
        Ok(Query(p)) => p,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("bad ping parameters ({e}); accepted: processing_time_ms, event_id, delivery_id, error_type"),
            )
            .into_response();
        }
    };
    let now = chrono::Utc::now().timestamp_micros();
    match report::ping(&source, success, ping, now) {
        Ok(o) => record(&state, vec![o]).await,
        Err(e) => ApiError::new(StatusCode::BAD_REQUEST, e).into_response(),
    }
}

/// Makes the outcomes durable, all or nothing (one WAL record), then answers.
async fn record(state: &AppState, outcomes: Vec<Outcome>) -> Response {
    let ids: Vec<String> = outcomes.iter().map(|o| o.id.clone()).collect();
    let labels: Vec<(String, String)> = outcomes
        .iter()
        .map(|o| (o.source.clone(), o.status.clone()))
        .collect();
    if let Err(e) = state.engine.report(outcomes).await {
        return ApiError::unavailable(e.to_string()).into_response();
    }
    for (source, status) in &labels {
        state.metrics.reports.inc(&[source, status]);
    }
    Json(serde_json::json!({ "recorded": ids.len(), "ids": ids })).into_response()
}
