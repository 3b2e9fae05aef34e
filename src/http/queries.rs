//! `GET /queries`, `GET /queries/{name}`, `POST /queries/{name}/run`: the saved
//! queries, with their schedules, last runs and last results, and one run now (or as
//! of a given scheduled time) answered like `/query`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::query::{answer, negotiate};
use super::{ApiError, AppState};
use crate::monitor::{self, run};

/// Every usable query, then one `{"name", "origin", "error"}` entry per file that
/// cannot be used.
pub(crate) async fn list(State(state): State<Arc<AppState>>) -> Response {
    let mut queries: Vec<serde_json::Value> = state
        .queries
        .queries()
        .map(|q| {
            let mut v = monitor::describe(q);
            v["last_run"] = state.runs.last_run(&q.name);
            v["next_run"] = state.runs.next_run(q);
            v
        })
        .collect();
    queries.extend(state.queries.problems().iter().map(|p| {
        let stem = std::path::Path::new(p.file.trim_start_matches("shipped:"))
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned());
        serde_json::json!({"name": stem, "origin": p.file, "error": p.to_string()})
    }));
    Json(queries).into_response()
}

pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let q = find(&state, &name)?;
    let mut v = monitor::describe(q);
    v["sql"] = q.sql.clone().into();
    v["last_run"] = state.runs.last_run(&q.name);
    v["last_runs"] = state.runs.last_runs(&q.name);
    v["last_result"] = state.runs.last_result(&q.name);
    v["next_run"] = state.runs.next_run(q);
    Ok(Json(v).into_response())
}

fn find<'a>(state: &'a AppState, name: &str) -> Result<&'a monitor::QueryFile, ApiError> {
    state.queries.get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{}; GET /queries lists them", state.queries.not_found(name)),
        )
    })
}

/// A run's options in a JSON body: `{"params": {...}, "at": "...", "format": "..."}`.
#[derive(Debug, Deserialize, Default)]
struct RunBody {
    #[serde(default)]
    params: BTreeMap<String, serde_json::Value>,
    at: Option<String>,
    format: Option<String>,
}

/// Parameters come from the query string (`?k=3`, besides `format` and `at`) and
/// from a JSON body (`{"params": {"k": 3}}`, which wins).
pub(crate) async fn run_now(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(mut query): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let q = find(&state, &name)?;
    let body: RunBody = if body.iter().all(u8::is_ascii_whitespace) {
        RunBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("request body is not {{\"params\": {{...}}, \"at\": \"<RFC 3339>\", \"format\": \"json\"}}: {e}"),
            )
        })?
    };
    let format = negotiate(body.format.or_else(|| query.remove("format")), &headers)?;
    let at = match body.at.or_else(|| query.remove("at")) {
        Some(t) => run::parse_time(&t).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?,
        None => chrono::Utc::now(),
    };
    let mut params = query;
    for (k, v) in body.params {
        let text = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        params.insert(k, text);
    }
    let stream = run::stream(state.engine.query(), q, at, &params)
        .await
        .map_err(|e| match e {
            run::RunError::Query(q) => ApiError::from(q),
            other => ApiError::new(StatusCode::BAD_REQUEST, other.to_string()),
        })?;
    Ok(answer(&state, stream, format).await?)
}
