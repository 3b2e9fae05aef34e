//! `POST /report/{source}` and the `/success` / `/fail` pings: the app says how
//! processing went. Reports are durable (WAL) before the answer.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::{ApiError, AppState, ValidSource};
use crate::ingest::report::{self, Ping};
use crate::model::Outcome;

pub async fn report(
    State(state): State<Arc<AppState>>,
    ValidSource(source): ValidSource,
    body: Bytes,
) -> Result<Response, ApiError> {
    let now = chrono::Utc::now().timestamp_micros();
    let outcomes = report::parse(&source, &body, now)?;
    record(&state, outcomes).await
}

type PingQuery = Result<Query<Ping>, QueryRejection>;

pub async fn success(
    state: State<Arc<AppState>>,
    source: ValidSource,
    ping: PingQuery,
) -> Result<Response, ApiError> {
    pinged(state, source, ping, true).await
}

pub async fn fail(
    state: State<Arc<AppState>>,
    source: ValidSource,
    ping: PingQuery,
) -> Result<Response, ApiError> {
    pinged(state, source, ping, false).await
}

async fn pinged(
    State(state): State<Arc<AppState>>,
    ValidSource(source): ValidSource,
    ping: PingQuery,
    success: bool,
) -> Result<Response, ApiError> {
    let Query(ping) = ping.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("bad ping parameters ({e}); accepted: processing_time_ms, event_id, delivery_id, error_type"),
        )
    })?;
    let now = chrono::Utc::now().timestamp_micros();
    let outcome = report::ping(&source, success, ping, now)?;
    record(&state, vec![outcome]).await
}

/// A report that is not right is a 400 naming what is wrong.
impl From<report::ReportError> for ApiError {
    fn from(e: report::ReportError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
    }
}

/// Makes the outcomes durable, all or nothing (one WAL record), then answers.
async fn record(state: &AppState, outcomes: Vec<Outcome>) -> Result<Response, ApiError> {
    let ids: Vec<String> = outcomes.iter().map(|o| o.id.clone()).collect();
    let labels: Vec<(String, String)> = outcomes
        .iter()
        .map(|o| (o.source.clone(), o.status.clone()))
        .collect();
    state.engine.report(outcomes).await?;
    for (source, status) in &labels {
        state.metrics.reports.inc(&[source, status]);
    }
    Ok(Json(serde_json::json!({ "recorded": ids.len(), "ids": ids })).into_response())
}
