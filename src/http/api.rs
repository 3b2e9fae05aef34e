//! The inspection API, all answered by the SQL engine (no second store):
//! `GET /api/events` (recent deliveries, filtered, newest first, cursor pages),
//! `GET /api/events/{id}` (one delivery whole, its outcome and every attempt of the
//! same event), `GET /api/stats` (per source over a window), `GET /api/alerts`, and
//! `GET /api/events/stream` (Server-Sent Events of deliveries as they are
//! acknowledged).
//!
//! Invariants:
//! - Every value from the request reaches SQL as a literal (`monitor::params::literal`),
//!   never as SQL text.
//! - A page is ordered by (received_at, id) descending and the cursor is the last
//!   row's pair, so paging neither skips nor repeats a delivery.
//! - The live stream never holds up ingest: an acknowledged delivery is offered to a
//!   bounded broadcast channel only when someone listens, and a client that falls
//!   behind by the channel's capacity is disconnected (it reconnects and goes on).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::broadcast;

use super::{ApiError, AppState};
use crate::monitor::params::string_literal as literal;
use crate::monitor::run::parse_time;
use crate::monitor::runs::rfc3339;
use crate::monitor::scheduler::rows_json;

/// Deliveries a page holds by default, and at most.
const PAGE: usize = 50;
const MAX_PAGE: usize = 500;
/// Deliveries the live stream holds for a client that reads slowly.
pub(crate) const LIVE_CAPACITY: usize = 1024;

/// The columns of a delivery in a list (the body and headers are in the drill-down).
const DELIVERY_COLUMNS: &str = "d.id, d.received_at, d.source, d.provider, d.event_type, \
     d.event_id, d.attempt, d.is_duplicate, d.retry_gap_ms, d.signature_status, \
     d.payload_size, d.status_code, d.upstream_status, d.upstream_latency_ms, \
     d.delivery_lag_ms";
/// … and its outcome (`o`: [`OUTCOMES`] by delivery id).
const LIST_COLUMNS: &str = "d.id, d.received_at, d.source, d.provider, d.event_type, \
     d.event_id, d.attempt, d.is_duplicate, d.retry_gap_ms, d.signature_status, \
     d.payload_size, d.status_code, d.upstream_status, d.upstream_latency_ms, \
     d.delivery_lag_ms, o.outcome, o.processing_time_ms";
/// A delivery's outcome: failure if any report says so.
const OUTCOMES: &str = "SELECT delivery_id, \
     CASE WHEN bool_or(status = 'failure') THEN 'failure' ELSE 'success' END AS outcome, \
     max(processing_time_ms) AS processing_time_ms FROM outcomes";

/// One acknowledged delivery, as the live stream sends it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Live {
    pub id: String,
    pub received_at: String,
    pub source: String,
    pub event_type: Option<String>,
    pub signature_status: &'static str,
    pub payload_size: i64,
    /// Unknown for a forwarded delivery until the app answered.
    pub attempt: Option<i32>,
}

impl Live {
    pub fn of(d: &crate::model::Delivery) -> Self {
        Live {
            id: d.id.clone(),
            received_at: rfc3339(
                &DateTime::from_timestamp_micros(d.received_at_us).unwrap_or_default(),
            ),
            source: d.source.clone(),
            event_type: d.event_type.clone(),
            signature_status: d.signature_status.as_str(),
            payload_size: d.payload_size,
            attempt: None,
        }
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

async fn rows(state: &AppState, sql: &str) -> Result<Vec<Value>, ApiError> {
    let (_, batches) = state.engine.query().collect(sql).await?;
    match rows_json(&batches, usize::MAX) {
        Value::Array(rows) => Ok(rows),
        _ => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the result could not be read as JSON rows",
        )),
    }
}

/// The filters of `GET /api/events`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EventFilters {
    source: Option<String>,
    event_type: Option<String>,
    signature_status: Option<String>,
    /// The outcome: success, failure, or none (no report).
    status: Option<String>,
    duplicate: Option<bool>,
    since: Option<String>,
    until: Option<String>,
    /// Text the body contains.
    q: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn time_param(name: &str, value: &Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .as_deref()
        .map(|v| parse_time(v).map_err(|e| bad(format!("{name}: {e}"))))
        .transpose()
}

/// `GET /api/events`: `{"events": [...], "next_cursor": "..." | null}`.
pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    Query(f): Query<EventFilters>,
) -> Result<Response, ApiError> {
    let limit = f.limit.unwrap_or(PAGE).clamp(1, MAX_PAGE);
    let since = time_param("since", &f.since)?;
    let until = time_param("until", &f.until)?;
    let cursor = match f.cursor.as_deref() {
        Some(c) => Some(parse_cursor(c)?),
        None => None,
    };
    let mut conditions = Vec::new();
    for (column, value) in [
        ("d.source", &f.source),
        ("d.event_type", &f.event_type),
        ("d.signature_status", &f.signature_status),
    ] {
        if let Some(v) = value {
            conditions.push(format!("{column} = {}", literal(v)));
        }
    }
    match f.status.as_deref() {
        None => {}
        Some("success" | "failure") => conditions.push(format!(
            "o.outcome = {}",
            literal(f.status.as_deref().unwrap_or_default())
        )),
        Some("none") => conditions.push("o.outcome IS NULL".into()),
        Some(other) => {
            return Err(bad(format!(
                "status {other:?}: write success, failure or none (the outcome the app reported)"
            )));
        }
    }
    if let Some(d) = f.duplicate {
        conditions.push(format!("d.is_duplicate = {d}"));
    }
    if let Some(q) = f.q.as_deref().filter(|q| !q.is_empty()) {
        conditions.push(format!("strpos(d.body, {}) > 0", literal(q)));
    }
    if let Some(t) = until {
        conditions.push(format!("d.received_at < {}", literal(&rfc3339(&t))));
    }
    if let Some((us, id)) = &cursor {
        let t = rfc3339(&DateTime::from_timestamp_micros(*us).unwrap_or_default());
        conditions.push(format!(
            "(d.received_at < {t} OR (d.received_at = {t} AND d.id < {id}))",
            t = literal(&t),
            id = literal(id)
        ));
    }
    // Newest first without a `since`: look back an hour, then a day, a week, and
    // the whole lake, until the page is full (a recent page reads recent files only).
    let base = cursor
        .as_ref()
        .and_then(|(us, _)| DateTime::from_timestamp_micros(*us))
        .or(until)
        .unwrap_or_else(Utc::now);
    let lookbacks: Vec<Option<DateTime<Utc>>> = match since {
        Some(s) => vec![Some(s)],
        None => [1, 24, 24 * 7]
            .into_iter()
            .map(|h| base.checked_sub_signed(chrono::Duration::hours(h)))
            .chain([None])
            .collect(),
    };
    let mut found = Vec::new();
    for from in lookbacks {
        let mut all = conditions.clone();
        // Outcomes are looked at from a little before the window on.
        let outcomes_from = match from {
            Some(t) => {
                all.push(format!("d.received_at >= {}", literal(&rfc3339(&t))));
                format!(
                    "WHERE reported_at >= {}",
                    literal(&rfc3339(
                        &t.checked_sub_signed(chrono::Duration::hours(1))
                            .unwrap_or(t)
                    ))
                )
            }
            None => String::new(),
        };
        let filter = if all.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", all.join(" AND "))
        };
        // Filtering on the outcome joins the window's outcomes; otherwise the page is
        // found first and only its own outcomes are looked up.
        let sql = if f.status.is_some() {
            format!(
                "SELECT {LIST_COLUMNS} FROM deliveries d LEFT JOIN ({OUTCOMES} {outcomes_from} GROUP BY delivery_id) o \
                 ON o.delivery_id = d.id {filter} ORDER BY d.received_at DESC, d.id DESC LIMIT {}",
                limit + 1
            )
        } else {
            format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d {filter} ORDER BY d.received_at DESC, d.id DESC LIMIT {}",
                limit + 1
            )
        };
        found = rows(&state, &sql).await?;
        if found.len() > limit {
            break;
        }
    }
    if f.status.is_none() {
        add_outcomes(&state, &mut found).await?;
    }
    let next_cursor = if found.len() > limit {
        found.truncate(limit);
        found.last().and_then(cursor_of)
    } else {
        None
    };
    Ok(Json(serde_json::json!({"events": found, "next_cursor": next_cursor})).into_response())
}

/// Adds `outcome` and `processing_time_ms` to listed deliveries: the reports of
/// those deliveries only, from an hour before the oldest of them on.
async fn add_outcomes(state: &AppState, found: &mut [Value]) -> Result<(), ApiError> {
    let ids: Vec<String> = found
        .iter()
        .filter_map(|r| r["id"].as_str().map(literal))
        .collect();
    let oldest = found
        .iter()
        .filter_map(|r| r["received_at"].as_str())
        .filter_map(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .min();
    let mut by_id = std::collections::HashMap::new();
    if let (false, Some(oldest)) = (ids.is_empty(), oldest) {
        let sql = format!(
            "{OUTCOMES} WHERE delivery_id IN ({}) AND reported_at >= {} GROUP BY delivery_id",
            ids.join(", "),
            literal(&rfc3339(
                &oldest
                    .checked_sub_signed(chrono::Duration::hours(1))
                    .unwrap_or(oldest)
            ))
        );
        for row in rows(state, &sql).await? {
            if let Some(id) = row["delivery_id"].as_str() {
                by_id.insert(id.to_string(), row);
            }
        }
    }
    for r in found.iter_mut() {
        let o = r["id"].as_str().and_then(|id| by_id.get(id));
        r["outcome"] = o.map_or(Value::Null, |o| o["outcome"].clone());
        r["processing_time_ms"] = o.map_or(Value::Null, |o| o["processing_time_ms"].clone());
    }
    Ok(())
}

/// `<received_at µs>:<id>` of a listed row.
fn cursor_of(row: &Value) -> Option<String> {
    let t = row["received_at"].as_str()?;
    let us = chrono::NaiveDateTime::parse_from_str(t.trim_end_matches('Z'), "%Y-%m-%dT%H:%M:%S%.f")
        .ok()?
        .and_utc()
        .timestamp_micros();
    Some(format!("{us}:{}", row["id"].as_str()?))
}

fn parse_cursor(c: &str) -> Result<(i64, String), ApiError> {
    c.split_once(':')
        .and_then(|(us, id)| Some((us.parse().ok()?, id.to_string())))
        .filter(|(_, id)| !id.is_empty())
        .ok_or_else(|| bad("cursor: pass the next_cursor of the previous page as it was"))
}

/// `GET /api/events/{id}`: the delivery whole (headers as an object, the body, and
/// `body_json` when it is JSON), its outcomes, and every arrival of the same event at
/// its source with the gaps between them.
pub(crate) async fn event(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let found = rows(
        &state,
        &format!("SELECT * FROM deliveries WHERE id = {}", literal(&id)),
    )
    .await?;
    let Some(mut delivery) = found.into_iter().next() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no delivery with id {id:?}; GET /api/events lists them"),
        ));
    };
    if let Some(h) = delivery["headers"].as_str()
        && let Ok(parsed) = serde_json::from_str::<Value>(h)
    {
        delivery["headers"] = parsed;
    }
    if let Some(body) = delivery["body"].as_str()
        && let Ok(parsed) = serde_json::from_str::<Value>(body)
    {
        delivery["body_json"] = parsed;
    }
    let mut ids = vec![literal(&id)];
    if let Some(provider_id) = delivery["delivery_id"].as_str() {
        ids.push(literal(provider_id));
    }
    let outcomes = rows(
        &state,
        &format!(
            "SELECT * FROM outcomes WHERE delivery_id IN ({}) ORDER BY reported_at",
            ids.join(", ")
        ),
    )
    .await?;
    // Attempts are counted within the dedup window of each other: look that far
    // either side of this one (files outside are not opened).
    let window = chrono::Duration::from_std(state.config.dedup.window.0)
        .unwrap_or_else(|_| chrono::Duration::days(7));
    let near = delivery["received_at"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .and_then(|t| {
            let t = t.with_timezone(&Utc);
            Some(format!(
                " AND received_at >= {} AND received_at <= {}",
                literal(&rfc3339(&t.checked_sub_signed(window)?)),
                literal(&rfc3339(&t.checked_add_signed(window)?))
            ))
        })
        .unwrap_or_default();
    let attempts = match (delivery["source"].as_str(), delivery["dedup_key"].as_str()) {
        (Some(source), Some(key)) => {
            // A key that is the event id is one on every attempt received (only an
            // import gives a key of its own): the filter on event_id lets its bloom
            // filters skip row groups, which one on the derived dedup_key cannot.
            let by_event = if delivery["event_id"].as_str() == Some(key) {
                format!(" AND event_id = {}", literal(key))
            } else {
                String::new()
            };
            rows(
                &state,
                &format!(
                    "SELECT id, received_at, attempt, is_duplicate, retry_gap_ms, status_code, \
                            signature_status, upstream_status, upstream_error \
                     FROM deliveries WHERE source = {} AND dedup_key = {}{by_event}{near} \
                     ORDER BY received_at, id",
                    literal(source),
                    literal(key)
                ),
            )
            .await?
        }
        _ => Vec::new(),
    };
    Ok(Json(serde_json::json!({
        "delivery": delivery,
        "outcomes": outcomes,
        "attempts": attempts,
    }))
    .into_response())
}

/// `GET /api/stats?window=1h`: per source over the window, from deliveries and
/// outcomes.
pub(crate) async fn stats(
    State(state): State<Arc<AppState>>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let window = match params.get("window") {
        Some(w) => humantime::parse_duration(w)
            .map_err(|e| bad(format!("window {w:?}: {e} (write e.g. 15m, 1h, 7d)")))?,
        None => std::time::Duration::from_secs(3600),
    };
    let seconds = window.as_secs_f64().max(1.0);
    let since = chrono::Duration::from_std(window)
        .ok()
        .and_then(|w| Utc::now().checked_sub_signed(w))
        .ok_or_else(|| bad("window: too long (at most a few thousand years)"))?;
    let since = literal(&rfc3339(&since));
    let deliveries = rows(
        &state,
        &format!(
            "SELECT source, count(*) AS deliveries, CAST(count(*) AS DOUBLE) / {seconds:.3} AS per_second, \
                    avg(CASE WHEN is_duplicate THEN 1.0 ELSE 0.0 END) AS duplicate_ratio, \
                    sum(CASE WHEN signature_status IN ('invalid', 'expired', 'missing') THEN 1 ELSE 0 END) AS signature_failures, \
                    avg(CASE WHEN status_code >= 400 OR upstream_status >= 400 OR upstream_error IS NOT NULL THEN 1.0 ELSE 0.0 END) AS error_ratio, \
                    max(received_at) AS last_seen, \
                    approx_percentile_cont(upstream_latency_ms, 0.5) AS upstream_p50_ms, \
                    approx_percentile_cont(upstream_latency_ms, 0.95) AS upstream_p95_ms, \
                    approx_percentile_cont(upstream_latency_ms, 0.99) AS upstream_p99_ms, \
                    approx_percentile_cont(delivery_lag_ms, 0.95) AS delivery_lag_p95_ms \
             FROM deliveries WHERE received_at >= {since} GROUP BY source ORDER BY source"
        ),
    )
    .await?;
    let outcomes = rows(
        &state,
        &format!(
            "SELECT source, count(*) AS reports, \
                    avg(CASE WHEN status = 'failure' THEN 1.0 ELSE 0.0 END) AS failure_ratio, \
                    approx_percentile_cont(processing_time_ms, 0.5) AS processing_p50_ms, \
                    approx_percentile_cont(processing_time_ms, 0.95) AS processing_p95_ms, \
                    approx_percentile_cont(processing_time_ms, 0.99) AS processing_p99_ms \
             FROM outcomes WHERE reported_at >= {since} GROUP BY source"
        ),
    )
    .await?;
    let mut by_source: BTreeMap<String, Value> = BTreeMap::new();
    for row in deliveries.into_iter().chain(outcomes) {
        let Value::Object(fields) = row else { continue };
        let Some(source) = fields
            .get("source")
            .and_then(Value::as_str)
            .map(String::from)
        else {
            continue;
        };
        let entry = by_source
            .entry(source)
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(merged) = entry {
            merged.extend(fields);
        }
    }
    Ok(Json(serde_json::json!({
        "window_seconds": seconds,
        "sources": by_source.into_values().collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `GET /api/alerts`: the latest state of each alert (rule and key), firing first,
/// then the newest.
pub(crate) async fn alerts(
    State(state): State<Arc<AppState>>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = match params.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| bad("limit: a whole number"))?
            .clamp(1, MAX_PAGE),
        None => 100,
    };
    let found = rows(
        &state,
        &format!(
            "SELECT rule, key, source, severity, state, message, fired_at, notified_at, resolved_at, details FROM ( \
               SELECT *, row_number() OVER (PARTITION BY rule, key ORDER BY notified_at DESC, state DESC) AS rn \
               FROM alerts) \
             WHERE rn = 1 \
             ORDER BY CASE WHEN state = 'firing' THEN 0 ELSE 1 END, notified_at DESC LIMIT {limit}"
        ),
    )
    .await?;
    Ok(Json(found).into_response())
}

/// The filter of `GET /api/events/stream`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamFilter {
    source: Option<String>,
}

/// `GET /api/events/stream?source=`: one `delivery` event per acknowledged delivery.
pub(crate) async fn stream(
    State(state): State<Arc<AppState>>,
    Query(filter): Query<StreamFilter>,
) -> Response {
    let events = live_events(
        state.live.subscribe(),
        filter.source,
        state.stopping.clone(),
    );
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The events of one live-stream client: deliveries of `source` (or all) until the
/// server stops, or until the client falls behind by the channel's capacity.
fn live_events(
    receiver: broadcast::Receiver<Arc<Live>>,
    source: Option<String>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> impl futures::Stream<Item = Result<Event, std::convert::Infallible>> {
    futures::stream::unfold(
        (receiver, source, stopping),
        |(mut receiver, source, mut stopping)| async move {
            loop {
                let next = tokio::select! {
                    next = receiver.recv() => next,
                    _ = stopping.wait_for(|s| *s) => return None,
                };
                match next {
                    Ok(live) => {
                        if source.as_deref().is_some_and(|s| s != live.source) {
                            continue;
                        }
                        let event = Event::default()
                            .event("delivery")
                            .json_data(&*live)
                            .unwrap_or_else(|_| Event::default().comment("unencodable"));
                        return Some((
                            Ok::<_, std::convert::Infallible>(event),
                            (receiver, source, stopping),
                        ));
                    }
                    // Too slow: the client is dropped (it reconnects and goes on).
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "a live-stream client fell behind; disconnected");
                        return None;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    )
}

/// The live-stream entry of `d` when someone listens (taken before the delivery
/// moves into the engine).
pub(crate) fn watched(state: &AppState, d: &crate::model::Delivery) -> Option<Live> {
    (state.live.receiver_count() > 0).then(|| Live::of(d))
}

/// Offers an acknowledged delivery to the live stream.
pub(crate) fn publish(state: &AppState, live: Option<Live>) {
    if let Some(live) = live {
        // An error only means every listener left meanwhile.
        let _ = state.live.send(Arc::new(live));
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn live(source: &str, n: usize) -> Arc<Live> {
        Arc::new(Live {
            id: format!("id{n}"),
            received_at: String::new(),
            source: source.into(),
            event_type: None,
            signature_status: "unchecked",
            payload_size: 1,
            attempt: Some(1),
        })
    }

    #[tokio::test]
    async fn a_client_gets_its_source_and_is_dropped_when_it_falls_behind() {
        let (tx, rx) = broadcast::channel(8);
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut events = Box::pin(live_events(rx, Some("a".into()), stop));
        tx.send(live("b", 0)).unwrap();
        tx.send(live("a", 1)).unwrap();
        let first = events.next().await.unwrap().unwrap();
        assert!(format!("{first:?}").contains("id1"), "{first:?}");
        // The sender never waits: far more than the capacity goes out while the
        // client reads nothing, and the client's stream then ends.
        for n in 2..100 {
            tx.send(live("a", n)).unwrap();
        }
        assert!(events.next().await.is_none());
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_server_stops() {
        let (_tx, rx) = broadcast::channel::<Arc<Live>>(8);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut events = Box::pin(live_events(rx, None, stop));
        stop_tx.send(true).unwrap();
        assert!(events.next().await.is_none());
    }
}
