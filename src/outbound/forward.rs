//! The forwarding step: passes a durable delivery to the app (`forward_to`) with its
//! original method, headers and body plus `X-Hookscope-Id`, and measures the answer.
//!
//! Invariants:
//! - One pooled HTTP client for the process: no per-request connection setup.
//! - The provider gets the app's status and body back (a transparent monitor); an app
//!   that does not answer in `forward_timeout` is a 504, one that cannot be reached a
//!   502. Redirects are passed back, not followed.
//! - Hop-by-hop headers are not forwarded in either direction.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use bytes::Bytes;

/// Most bytes of an app's answer passed back to the provider.
const MAX_ANSWER: usize = 10 << 20;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// The app's answer, or what hookscope answers in its place.
#[derive(Debug)]
pub(crate) struct AppAnswer {
    /// What the provider gets.
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub upstream_status: Option<i32>,
    pub upstream_latency_ms: f64,
    /// `timeout: …`, `connect: …`, `request: …` when the app gave no answer.
    pub upstream_error: Option<String>,
}

/// The pooled client. Cheap to share.
#[derive(Clone)]
pub(crate) struct Forwarder {
    client: reqwest::Client,
}

impl Forwarder {
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self { client })
    }

    /// Sends one delivery to `target` (query string appended) and waits at most
    /// `timeout` for the whole answer.
    #[allow(clippy::too_many_arguments)]
    pub async fn forward(
        &self,
        target: &str,
        timeout: Duration,
        id: &str,
        method: &Method,
        query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> AppAnswer {
        let url = if query.is_empty() {
            target.to_string()
        } else if target.contains('?') {
            format!("{target}&{query}")
        } else {
            format!("{target}?{query}")
        };
        let mut outgoing = HeaderMap::with_capacity(headers.len() + 1);
        for (name, value) in headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                outgoing.append(name.clone(), value.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(id) {
            outgoing.insert(HeaderName::from_static("x-hookscope-id"), v);
        }
        let started = Instant::now();
        let sent = self
            .client
            .request(method.clone(), &url)
            .headers(outgoing)
            .body(body)
            .timeout(timeout)
            .send()
            .await;
        let result = match sent {
            Ok(resp) => read_answer(resp).await,
            Err(e) => Err(e),
        };
        let latency = started.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok((status, headers, body)) => AppAnswer {
                status,
                headers,
                body,
                upstream_status: Some(i32::from(status.as_u16())),
                upstream_latency_ms: latency,
                upstream_error: None,
            },
            Err(e) => {
                let (status, error) = if e.is_timeout() {
                    (
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("timeout: the app did not answer within {timeout:?}"),
                    )
                } else if e.is_connect() {
                    (
                        StatusCode::BAD_GATEWAY,
                        format!("connect: {}", root_cause(&e)),
                    )
                } else {
                    (
                        StatusCode::BAD_GATEWAY,
                        format!("request: {}", root_cause(&e)),
                    )
                };
                let body = serde_json::json!({ "error": error, "id": id }).to_string();
                let mut headers = HeaderMap::new();
                headers.insert("content-type", HeaderValue::from_static("application/json"));
                AppAnswer {
                    status,
                    headers,
                    body: Bytes::from(body),
                    upstream_status: None,
                    upstream_latency_ms: latency,
                    upstream_error: Some(error),
                }
            }
        }
    }
}

async fn read_answer(
    resp: reqwest::Response,
) -> Result<(StatusCode, HeaderMap, Bytes), reqwest::Error> {
    let status = resp.status();
    let mut headers = HeaderMap::new();
    for (name, value) in resp.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    let mut body = Vec::new();
    let mut resp = resp;
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, headers, Bytes::from(body)))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
