//! `POST /webhook/{source}`: reads the body within the limit, builds the record
//! (receive step), makes it durable (engine), answers with its id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{ApiError, AppState, ValidSource};
use crate::config::is_valid_name;
use crate::ingest::receive::{BodyRead, RequestParts};
use crate::model::{Delivery, ForwardResult};

pub(super) fn invalid_source(source: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "invalid source name {source:?}: use 1 to 64 characters of A-Z a-z 0-9 _ . - (POST /webhook/{{source}})"
        ),
    )
}

/// Any other shape of `/webhook/...`.
pub(crate) async fn bad_source(req: Request) -> ApiError {
    let rest = req
        .uri()
        .path()
        .trim_start_matches("/webhook")
        .trim_start_matches('/');
    invalid_source(rest)
}

/// Checks a source name from a path: valid, and configured when sources are strict.
pub(super) fn check_source(state: &AppState, source: &str) -> Result<(), ApiError> {
    if !is_valid_name(source) {
        return Err(invalid_source(source));
    }
    if state.config.strict_sources && !state.receiver.is_configured(source) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unknown source {source:?}: strict_sources is on; add it under [[sources]] in hookscope.toml"
            ),
        ));
    }
    Ok(())
}

pub async fn ingest(
    State(state): State<Arc<AppState>>,
    ValidSource(source): ValidSource,
    req: Request,
) -> Result<Response, ApiError> {
    let arrived = std::time::Instant::now();
    let received_at_us = chrono::Utc::now().timestamp_micros();
    let (parts, body) = req.into_parts();
    let source = source.as_str();
    let forward_to = state
        .receiver
        .source_config(source)
        .and_then(|s| s.forward_to.clone().map(|t| (t, s.forward_timeout.0)));
    if parts.method != Method::POST && forward_to.is_none() {
        let mut resp = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} is not accepted here: webhooks are POSTed to /webhook/{source}",
                parts.method
            ),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(resp);
    }
    let limit = state.config.max_body_bytes.0;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = read_body(body, declared, limit).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("could not read the request body: {e}"),
        )
    })?;
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let request = RequestParts {
        source,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        peer,
        received_at_us,
    };
    let received = state.receiver.receive(&request, &body);
    if let (Some((target, timeout)), BodyRead::Complete(bytes)) = (forward_to, &body)
        && !received.rejected
    {
        return forward(
            &state,
            received.delivery,
            &target,
            timeout,
            &parts,
            bytes.clone(),
        )
        .await;
    }
    let id = received.delivery.id.clone();
    let status = received.delivery.status_code;
    let status_text = received.delivery.signature_status.as_str();
    let provider = received.delivery.provider.clone();
    let mut live = super::api::watched(&state, &received.delivery);
    let applied = state.engine.ingest(received.delivery).await?;
    if let Some(live) = &mut live {
        live.attempt = Some(applied.attempt as i32);
    }
    super::api::publish(&state, live);
    state.metrics.ack.observe(arrived.elapsed().as_secs_f64());
    let code = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
    state
        .metrics
        .deliveries
        .inc(&[source, &provider, status_text, code.as_str()]);
    let error = if status == 413 {
        Some(format!(
            "body exceeds the {limit}-byte limit; recorded without its body"
        ))
    } else if received.rejected {
        Some(format!(
            "signature {status_text}; the delivery was recorded but not accepted"
        ))
    } else {
        None
    };
    Ok(ack(code, applied.duplicate, error, &id))
}

/// The answer to a recorded delivery (keys in this order, as clients have seen them).
#[derive(serde::Serialize)]
struct Ack<'a> {
    duplicate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    id: &'a str,
}

/// The ack response. The common answer (no error, an id that needs no escaping) is
/// written directly; anything else goes through serde.
fn ack(code: StatusCode, duplicate: bool, error: Option<String>, id: &str) -> Response {
    let plain = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_');
    if error.is_none() && id.bytes().all(plain) {
        let duplicate = if duplicate { "true" } else { "false" };
        let body = [r#"{"duplicate":"#, duplicate, r#","id":""#, id, r#""}"#].concat();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = code;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return response;
    }
    let answer = Ack {
        duplicate,
        error,
        id,
    };
    (code, Json(answer)).into_response()
}

/// The forwarding monitor: durable first, then the app, then its answer recorded and
/// passed back to the provider.
async fn forward(
    state: &Arc<AppState>,
    delivery: Delivery,
    target: &str,
    timeout: Duration,
    parts: &axum::http::request::Parts,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = delivery.id.clone();
    let labels = [
        delivery.source.clone(),
        delivery.provider.clone(),
        delivery.signature_status.as_str().to_string(),
    ];
    let live = super::api::watched(state, &delivery);
    state.engine.begin_forward(delivery).await?;
    super::api::publish(state, live);
    let answer = state
        .forwarder
        .forward(
            target,
            timeout,
            &id,
            &parts.method,
            parts.uri.query().unwrap_or(""),
            &parts.headers,
            body,
        )
        .await;
    let result = ForwardResult {
        id: id.clone(),
        completed_at_us: chrono::Utc::now().timestamp_micros(),
        status_code: i32::from(answer.status.as_u16()),
        upstream_status: answer.upstream_status,
        upstream_latency_ms: Some(answer.upstream_latency_ms),
        upstream_error: answer.upstream_error.clone(),
    };
    // The delivery is already durable; the provider gets the app's answer now and the
    // engine records the answer right after. If the process stops before that record
    // is durable, the next start records the forward as interrupted: nothing is lost,
    // nothing doubled.
    state.engine.finish_forward_soon(result);
    state
        .metrics
        .deliveries
        .inc(&[&labels[0], &labels[1], &labels[2], answer.status.as_str()]);
    let mut resp = (answer.status, answer.body).into_response();
    *resp.headers_mut() = answer.headers;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-hookscope-id", v);
    }
    Ok(resp)
}

/// Reads the body, stopping past `limit` bytes.
async fn read_body(body: Body, declared: Option<u64>, limit: u64) -> Result<BodyRead, axum::Error> {
    if declared.is_some_and(|n| n > limit) {
        return Ok(BodyRead::TooLarge {
            declared,
            received: 0,
            limit,
        });
    }
    let mut stream = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        total += chunk.len() as u64;
        if total > limit {
            return Ok(BodyRead::TooLarge {
                declared,
                received: total,
                limit,
            });
        }
        match &first {
            None if rest.is_empty() => first = Some(chunk),
            _ => {
                if let Some(f) = first.take() {
                    rest.extend_from_slice(&f);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(BodyRead::Complete(first.unwrap_or_else(|| rest.freeze())))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(resp: Response) -> (StatusCode, String, serde_json::Value) {
        let code = resp.status();
        let ct = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 10)
            .await
            .unwrap();
        (code, ct, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn the_direct_ack_says_the_same_as_the_serde_one() {
        let id = "01JBZ8Y1ZK3V9Q7W6X5T4S3R2P";
        for duplicate in [false, true] {
            let direct = body_of(ack(StatusCode::OK, duplicate, None, id)).await;
            let answer = Ack {
                duplicate,
                error: None,
                id,
            };
            let serde = body_of((StatusCode::OK, Json(answer)).into_response()).await;
            assert_eq!(direct, serde);
        }
        // An error message or an id needing escapes goes through serde.
        let (code, _, v) = body_of(ack(
            StatusCode::UNAUTHORIZED,
            false,
            Some("bad \"sig\"".into()),
            "a\"b",
        ))
        .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(
            v,
            serde_json::json!({"duplicate": false, "error": "bad \"sig\"", "id": "a\"b"})
        );
    }
}
