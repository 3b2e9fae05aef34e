//! One run of a saved query: its parameters bound, `now()` fixed at the run's
//! scheduled time (so a run at 12:05:00 that starts at 12:05:00.8, or reruns a day
//! later with `--at`, computes exactly the same window), and the query's own timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use thiserror::Error;

use super::{QueryFile, params, rollup};
use crate::query::{QueryEngine, QueryError, ResultStream};

#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0}")]
    Params(String),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("the query ran past its own timeout of {0:?} (`-- timeout:` in its file)")]
    Timeout(Duration),
}

/// The SQL a run as of `at` executes: `q`'s SQL with its defaults overridden by
/// `overrides` (and, for a rollup, `:from` and `:to` bound to its window at `at`).
pub fn sql_of(
    q: &QueryFile,
    at: DateTime<Utc>,
    overrides: &BTreeMap<String, String>,
) -> Result<String, RunError> {
    let window = q.materialize.then(|| rollup::window_at(q, at));
    sql_for(q, window, overrides)
}

/// [`sql_of`] with a rollup's window given.
fn sql_for(
    q: &QueryFile,
    window: Option<rollup::Window>,
    overrides: &BTreeMap<String, String>,
) -> Result<String, RunError> {
    let mut values = params::resolve(&q.params, overrides).map_err(RunError::Params)?;
    if let Some(w) = window {
        values.insert(rollup::FROM.into(), super::runs::rfc3339(&w.from));
        values.insert(rollup::TO.into(), super::runs::rfc3339(&w.to));
    }
    params::bind(&q.sql, &values).map_err(RunError::Params)
}

/// Starts `q` as of `at`; rows arrive as from [`QueryEngine::stream`].
pub async fn stream(
    engine: &QueryEngine,
    q: &QueryFile,
    at: DateTime<Utc>,
    overrides: &BTreeMap<String, String>,
) -> Result<ResultStream, RunError> {
    let sql = sql_of(q, at, overrides)?;
    Ok(engine.stream_at(&sql, Some(at)).await?)
}

/// Runs `q` as of `at` to completion.
pub async fn collect(
    engine: &QueryEngine,
    q: &QueryFile,
    at: DateTime<Utc>,
    overrides: &BTreeMap<String, String>,
) -> Result<(SchemaRef, Vec<RecordBatch>), RunError> {
    let sql = sql_of(q, at, overrides)?;
    timed(q, engine.collect_at(&sql, Some(at))).await
}

/// Runs rollup `q` over the buckets of `window`, as of the window's end.
pub async fn collect_window(
    engine: &QueryEngine,
    q: &QueryFile,
    window: rollup::Window,
    overrides: &BTreeMap<String, String>,
) -> Result<(SchemaRef, Vec<RecordBatch>), RunError> {
    let sql = sql_for(q, Some(window), overrides)?;
    timed(q, engine.collect_at(&sql, Some(window.to))).await
}

/// `run` within `q`'s own timeout.
async fn timed(
    q: &QueryFile,
    run: impl std::future::Future<Output = Result<(SchemaRef, Vec<RecordBatch>), QueryError>>,
) -> Result<(SchemaRef, Vec<RecordBatch>), RunError> {
    match q.timeout {
        Some(limit) => tokio::time::timeout(limit, run)
            .await
            .map_err(|_| RunError::Timeout(limit))?
            .map_err(RunError::from),
        None => Ok(run.await?),
    }
}

/// Parses a run time: RFC 3339 (`2026-03-01T12:05:00Z`) or a date (midnight UTC).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    Err(format!(
        "time `{text}`: write RFC 3339 (2026-03-01T12:05:00Z) or a date (2026-03-01)"
    ))
}
