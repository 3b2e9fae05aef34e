//! `GET|POST /query`: runs read-only SQL and answers in the asked format. Small
//! results are sent whole (so errors keep their status codes); past 1 MiB of output
//! the rest streams batch by batch.

use std::sync::Arc;

use parking_lot::Mutex;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::query::QueryError;
use crate::query::format::{Encoder, ResultFormat};

/// The part of a streamed result not yet sent; `expired` once its deadline passed
/// (and the rest dropped), `done` once the body ended.
struct Held {
    rest: Option<(crate::query::ResultStream, Encoder)>,
    expired: bool,
    done: bool,
}

/// Output buffered before a response starts streaming.
const STREAM_AFTER: usize = 1 << 20;

#[derive(Debug, Deserialize, Default)]
pub(crate) struct QueryParams {
    sql: Option<String>,
    format: Option<String>,
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let status = match &e {
            QueryError::Forbidden(_) => StatusCode::FORBIDDEN,
            QueryError::Invalid(_) => StatusCode::BAD_REQUEST,
            QueryError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            QueryError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

pub(crate) async fn query_get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(params): Query<QueryParams>,
) -> Response {
    run(&state, &headers, params.sql, params.format).await
}

pub(crate) async fn query_post(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(params): Query<QueryParams>,
    body: Bytes,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(crate::ingest::receive::is_json_content_type);
    let (sql, format) = if is_json {
        match serde_json::from_slice::<QueryParams>(&body) {
            Ok(p) => (p.sql.or(params.sql), p.format.or(params.format)),
            Err(e) => {
                return ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("request body is not {{\"sql\": \"...\", \"format\": \"json\"}}: {e}"),
                )
                .into_response();
            }
        }
    } else {
        match std::str::from_utf8(&body) {
            Ok(text) if !text.trim().is_empty() => (Some(text.to_string()), params.format),
            Ok(_) => (params.sql, params.format),
            Err(_) => {
                return ApiError::new(StatusCode::BAD_REQUEST, "SQL body is not UTF-8 text")
                    .into_response();
            }
        }
    };
    run(&state, &headers, sql, format).await
}

async fn run(
    state: &AppState,
    headers: &HeaderMap,
    sql: Option<String>,
    format: Option<String>,
) -> Response {
    let Some(sql) = sql.filter(|s| !s.trim().is_empty()) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "no SQL given: POST {\"sql\": \"SELECT ...\"}, POST a text/plain SQL body, or GET /query?sql=...",
        )
        .into_response();
    };
    let format = match negotiate(format, headers) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let started = async {
        let stream = state.engine.query().stream(&sql).await?;
        answer(state, stream, format).await
    };
    match started.await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = %e, "query refused or failed");
            ApiError::from(e).into_response()
        }
    }
}

/// The result format: `format` when given, else the `Accept` header, else JSON.
pub(crate) fn negotiate(
    format: Option<String>,
    headers: &HeaderMap,
) -> Result<ResultFormat, ApiError> {
    match format {
        Some(f) => f
            .parse::<ResultFormat>()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e)),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .and_then(ResultFormat::from_accept)
            .unwrap_or(ResultFormat::Json)),
    }
}

/// Answers with a started query's result in `format`.
pub(crate) async fn answer(
    state: &AppState,
    mut stream: crate::query::ResultStream,
    format: ResultFormat,
) -> Result<Response, QueryError> {
    state
        .metrics
        .queries
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let engine = state.engine.query();
    // The query started (planning included) one timeout before its deadline.
    let started = stream
        .deadline()
        .checked_sub(engine.limits().timeout)
        .unwrap_or_else(std::time::Instant::now);
    let metrics = Arc::clone(&state.metrics);
    let mut encoder = Encoder::new(format, &stream.schema(), engine.limits().max_result_bytes)?;
    let mut head = BytesMut::new();
    loop {
        match stream.next().await {
            None => {
                head.extend_from_slice(&encoder.finish()?);
                metrics.query.observe(started.elapsed().as_secs_f64());
                return Ok(respond(format, Body::from(head.freeze())));
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(batch)) => {
                head.extend_from_slice(&encoder.write(&batch)?);
                if format.streams() && head.len() >= STREAM_AFTER {
                    break;
                }
            }
        }
    }
    // The rest of the result is held here, and dropped at the deadline even if the
    // client stopped reading (hyper polls the body only when the socket takes more):
    // the batches and the encoder's buffers are not kept for as long as the
    // connection stays open.
    let deadline = stream.deadline();
    let timeout = state.engine.query().limits().timeout;
    let held = Arc::new(Mutex::new(Held {
        rest: Some((stream, encoder)),
        expired: false,
        done: false,
    }));
    let dropper = Arc::clone(&held);
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline.into()).await;
        let rest = {
            let mut held = dropper.lock();
            held.expired = true;
            held.rest.take()
        };
        drop(rest);
    });
    let rest = futures::stream::unfold(held, move |held| {
        let metrics = Arc::clone(&metrics);
        async move {
            let taken = {
                let mut slot = held.lock();
                if slot.done {
                    return None;
                }
                slot.done = true;
                slot.rest.take()
            };
            // Dropped at the deadline: the body must end as an error, not look complete.
            let Some((mut stream, mut encoder)) = taken else {
                let e = QueryError::Timeout(timeout);
                tracing::warn!(error = %e, "the client did not read the result in time; the response is cut short");
                return Some((Err(std::io::Error::other(e.to_string())), held));
            };
            let item = match stream.next().await {
                Some(Ok(batch)) => encoder.write(&batch).map(|b| (b, Some((stream, encoder)))),
                Some(Err(e)) => Err(e),
                None => encoder.finish().map(|b| {
                    metrics.query.observe(started.elapsed().as_secs_f64());
                    (b, None)
                }),
            };
            match item {
                Ok((bytes, rest)) => {
                    let mut slot = held.lock();
                    if let Some(rest) = rest {
                        slot.done = false;
                        if !slot.expired {
                            slot.rest = Some(rest);
                        }
                    }
                    drop(slot);
                    Some((Ok::<Bytes, std::io::Error>(bytes), held))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "query failed while streaming its result; the response is cut short");
                    Some((Err(std::io::Error::other(e.to_string())), held))
                }
            }
        }
    });
    let first = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(head.freeze()) });
    Ok(respond(
        format,
        Body::from_stream(futures::StreamExt::chain(first, rest)),
    ))
}

fn respond(format: ResultFormat, body: Body) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(format.content_type()),
    );
    if format == ResultFormat::Parquet {
        resp.headers_mut().insert(
            header::CONTENT_DISPOSITION,
            header::HeaderValue::from_static("attachment; filename=\"result.parquet\""),
        );
    }
    resp
}
