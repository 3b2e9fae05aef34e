//! The receive step: turns one request on `/webhook/{source}` into a [`Delivery`]
//! record: id, time, request line, redacted headers, body, integrity checks and the
//! provider's identity of the event (via [`crate::ingest::providers`]).
//!
//! Invariants:
//! - Every request becomes exactly one record, whatever its bytes: binary bodies are
//!   kept as base64, malformed JSON is kept as text and flagged in `payload_issues`,
//!   an oversized body is recorded without its body.
//! - Secrets never reach the record: `authorization`, `cookie`, token headers and
//!   configured `redact_headers` are replaced by `"[redacted]"` here, before the WAL.
//! - This module does no I/O and keeps no state; it knows request parts (`http`
//!   types), not the server.

use crate::ingest::providers::ConfigProblem;
use std::collections::HashMap;
use std::net::SocketAddr;

use axum::http::{HeaderMap, HeaderName};
use bytes::Bytes;

use crate::config::{Config, SourceConfig};
use crate::ingest::body_json::BodyJson;
use crate::ingest::providers::{self, Registered, RequestView, Verification};
use crate::model::{Delivery, SignatureStatus, StoredBody};

/// Headers whose values are never stored.
pub(crate) const ALWAYS_REDACTED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-webhook-token",
];

/// The stored value of a redacted header.
pub(crate) const REDACTED: &str = "[redacted]";

/// The body as read by the HTTP layer.
#[derive(Debug, Clone)]
pub enum BodyRead {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// The body passed the limit; reading stopped.
    TooLarge {
        /// Content-Length, when the sender declared one.
        declared: Option<u64>,
        /// Bytes read before stopping.
        received: u64,
        limit: u64,
    },
}

/// The request line and headers of a delivery.
#[derive(Debug)]
pub struct RequestParts<'a> {
    pub source: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub peer: Option<SocketAddr>,
    pub received_at_us: i64,
}

/// A source as the receive step uses it: config plus its resolved provider.
struct Source {
    config: SourceConfig,
    provider: Option<&'static Registered>,
    /// Lower-case header names. A handful, so a scan beats hashing each header name.
    redact: Vec<String>,
}

/// Builds delivery records. Cheap to share; holds only configuration.
pub struct Receiver {
    sources: HashMap<String, Source>,
    /// Lower-case header names always redacted.
    redact: Vec<String>,
    remote_addr_header: Option<HeaderName>,
}

/// A received delivery and what the HTTP layer should answer.
#[derive(Debug)]
pub struct Received {
    pub delivery: Delivery,
    /// The signature was required and is not valid: answer 401.
    pub rejected: bool,
}

/// Settings the receive step cannot work with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SetupError {
    #[error("source {name:?}: {problem}")]
    Source {
        name: String,
        problem: ConfigProblem,
    },
    #[error("remote_addr_header {0:?} is not a valid header name")]
    RemoteAddrHeader(String),
}

impl Receiver {
    /// True if header `name` (lower case) of a delivery to `source` from `provider`
    /// is stored as `"[redacted]"`: the names always redacted, the source's
    /// `redact_headers` and token header, and the provider's secret headers.
    pub fn redacts(&self, source: &str, provider: &str, name: &str) -> bool {
        let configured = self.sources.get(source);
        let scheme = configured
            .and_then(|s| s.provider)
            .or_else(|| providers::by_name(provider));
        self.redact.iter().any(|h| h == name)
            || configured.is_some_and(|s| s.redact.iter().any(|h| h == name))
            || scheme.is_some_and(|p| {
                p.secret_headers(configured.map(|s| &s.config))
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(name))
            })
    }

    /// A receiver for `config`'s sources. Fails on a source whose provider settings
    /// are unusable (unknown provider, bad algorithm …).
    pub fn new(config: &Config) -> Result<Self, SetupError> {
        let mut sources = HashMap::new();
        for s in &config.sources {
            let provider = match s.provider.as_deref() {
                Some(name) => Some(providers::by_name(name).ok_or_else(|| SetupError::Source {
                    name: s.name.clone(),
                    problem: ConfigProblem(format!(
                        "unknown provider {name:?}; use one of {}",
                        providers::names()
                    )),
                })?),
                None => None,
            };
            if let Some(p) = provider {
                p.check_config(s).map_err(|problem| SetupError::Source {
                    name: s.name.clone(),
                    problem,
                })?;
            }
            if s.require_signature && s.secret.is_empty() {
                return Err(SetupError::Source {
                    name: s.name.clone(),
                    problem: ConfigProblem(
                        "require_signature is set but no secret is configured (is its environment variable set?)".into(),
                    ),
                });
            }
            let mut redact: Vec<String> = s
                .redact_headers
                .iter()
                .chain(&s.token_header)
                .map(|h| h.to_ascii_lowercase())
                .collect();
            redact.sort_unstable();
            redact.dedup();
            sources.insert(
                s.name.clone(),
                Source {
                    config: s.clone(),
                    provider,
                    redact,
                },
            );
        }
        let remote_addr_header = match &config.remote_addr_header {
            Some(h) => Some(
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| SetupError::RemoteAddrHeader(h.clone()))?,
            ),
            None => None,
        };
        Ok(Self {
            sources,
            redact: ALWAYS_REDACTED.iter().map(|s| s.to_string()).collect(),
            remote_addr_header,
        })
    }

    /// True if `name` is a configured source.
    pub fn is_configured(&self, name: &str) -> bool {
        self.sources.contains_key(name)
    }

    /// The configuration of source `name`, if configured.
    pub fn source_config(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.get(name).map(|s| &s.config)
    }

    /// Builds the record of one request. `status_code` is what will be answered when
    /// nothing else decides (200); 413 and 401 are decided here.
    pub fn receive(&self, req: &RequestParts<'_>, body: &BodyRead) -> Received {
        let source = self.sources.get(req.source);
        let mut issues = Issues::default();
        let (bytes, too_large) = match body {
            BodyRead::Complete(b) => (b.as_ref(), None),
            BodyRead::TooLarge {
                declared,
                received,
                limit,
            } => {
                issues.push(
                    "body_too_large",
                    format!(
                        "body of {} bytes exceeds the {limit}-byte limit; not stored",
                        declared.unwrap_or(*received)
                    ),
                );
                (&[][..], Some(declared.unwrap_or(*received)))
            }
        };
        let content_type = header_str(req.headers, "content-type");
        let json_declared = content_type.as_deref().is_some_and(is_json_content_type);
        let json = if too_large.is_none() && (json_declared || looks_like_json(bytes)) {
            match BodyJson::parse(bytes) {
                Ok(v) => Some(v),
                Err(e) => {
                    if json_declared {
                        let detail = if bytes.is_empty() {
                            "empty body".to_string()
                        } else {
                            e.to_string()
                        };
                        issues.push("not_json", detail);
                    }
                    None
                }
            }
        } else {
            if json_declared && too_large.is_none() && !bytes.is_empty() {
                issues.push("not_json", "body is not JSON".to_string());
            }
            None
        };

        let provider = source
            .and_then(|s| s.provider)
            .unwrap_or_else(|| providers::detect(req.headers));
        let base = provider
            .signs_the_url()
            .then(|| public_base(req.headers))
            .flatten();
        let view = RequestView {
            method: req.method,
            path: req.path,
            query: req.query,
            headers: req.headers,
            body: bytes,
            json: json.as_ref(),
            public_base: base.as_deref(),
            received_at_us: req.received_at_us,
        };
        let identity = provider.identify(&view);
        let verification = match (source, too_large) {
            (Some(s), None) if !s.config.secret.is_empty() => provider.verify(&view, &s.config),
            (Some(s), Some(_)) if !s.config.secret.is_empty() => {
                Verification::status(SignatureStatus::Missing)
            }
            _ => Verification::status(SignatureStatus::Unchecked),
        };
        if let (Some(s), Some(json)) = (source, json.as_ref()) {
            for field in &s.config.required_fields {
                if !has_field(json, field) {
                    issues.push(
                        "missing_field",
                        format!("required field {field} is missing or null"),
                    );
                }
            }
        }

        let payload_sha256 = if too_large.is_some() {
            String::new()
        } else {
            providers::sig::sha256_hex(bytes)
        };
        let dedup_key = match &identity.event_id {
            Some(id) => id.clone(),
            None if too_large.is_some() => format!("oversize:{}", too_large.unwrap_or(0)),
            None => ["sha256:", &payload_sha256].concat(),
        };
        let stored = if too_large.is_some() {
            StoredBody::Omitted
        } else {
            match std::str::from_utf8(bytes) {
                Ok(text) => StoredBody::Text(text.to_string()),
                Err(_) => StoredBody::Binary(bytes.to_vec()),
            }
        };
        let extra_redact = source.map(|s| &s.redact);
        let mut extra_provider = provider.secret_headers(source.map(|s| &s.config));
        extra_provider.retain(|h| !h.is_empty());
        let headers_json = headers_json(req.headers, |name| {
            self.redact.iter().any(|h| h == name)
                || extra_redact.is_some_and(|r| r.iter().any(|h| h == name))
                || extra_provider.iter().any(|h| h.eq_ignore_ascii_case(name))
        });
        let required = source.is_some_and(|s| s.config.require_signature);
        let rejected = required && verification.status != SignatureStatus::Valid;
        let status_code = if too_large.is_some() {
            413
        } else if rejected {
            401
        } else {
            200
        };
        let mut event_type = identity.event_type;
        if event_type.is_none() {
            event_type = json.as_ref().and_then(generic_event_type);
        }
        let delivery = Delivery {
            id: new_id(req.received_at_us),
            received_at_us: req.received_at_us,
            source: req.source.to_string(),
            provider: provider.name.to_string(),
            event_type,
            event_id: identity.event_id,
            delivery_id: identity.delivery_id,
            dedup_key,
            provider_attempt: identity.provider_attempt,
            sent_at_us: identity.sent_at_us.or(verification.signed_at_us),
            signature_status: verification.status,
            method: req.method.to_string(),
            path: req.path.to_string(),
            query: req.query.to_string(),
            content_type,
            user_agent: header_str(req.headers, "user-agent"),
            remote_addr: self.remote_addr(req),
            headers_json,
            body: stored,
            payload_size: too_large.map_or(bytes.len() as i64, |n| n as i64),
            payload_sha256,
            payload_issues: issues.into_json(),
            status_code,
            upstream_status: None,
            upstream_latency_ms: None,
            upstream_error: None,
        };
        Received { delivery, rejected }
    }

    fn remote_addr(&self, req: &RequestParts<'_>) -> Option<String> {
        if let Some(h) = &self.remote_addr_header
            && let Some(v) = req.headers.get(h).and_then(|v| v.to_str().ok())
            && let Some(first) = v.split(',').next().map(str::trim).filter(|s| !s.is_empty())
        {
            return Some(first.to_string());
        }
        req.peer.map(socket_addr_text)
    }
}

/// `scheme://host` as the sender addressed it (X-Forwarded-Proto/Host, then Host).
fn public_base(headers: &HeaderMap) -> Option<String> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = get("x-forwarded-host").or_else(|| get("host"))?;
    let proto = get("x-forwarded-proto").unwrap_or("http");
    Some(format!("{proto}://{host}"))
}

/// A new ULID whose time part is `at_us`.
pub fn new_id(at_us: i64) -> String {
    let ms = u64::try_from(at_us / 1000).unwrap_or(0);
    ulid::Ulid::from_parts(ms, rand::random::<u128>()).to_string()
}

/// Event type from a JSON body's top-level `type`, `event_type` or `event`.
pub(crate) fn generic_event_type(json: &BodyJson<'_>) -> Option<String> {
    ["type", "event_type", "event"]
        .iter()
        .find_map(|k| json.get(k).and_then(|v| v.string()))
}

/// True if a JSON value has a non-null value at a dot path (`data.object.id`).
pub(crate) fn has_field(json: &BodyJson<'_>, path: &str) -> bool {
    json.at(path).is_some_and(|v| !v.is_null())
}

fn looks_like_json(body: &[u8]) -> bool {
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// Integrity problems of one delivery.
#[derive(Default)]
struct Issues(Vec<serde_json::Value>);

impl Issues {
    fn push(&mut self, kind: &str, detail: String) {
        self.0
            .push(serde_json::json!({ "kind": kind, "detail": detail }));
    }
    fn into_json(self) -> Option<String> {
        (!self.0.is_empty()).then(|| serde_json::Value::Array(self.0).to_string())
    }
}

use super::headers::socket_addr_text;
pub(crate) use super::headers::{header_str, headers_json, is_json_content_type};

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn receiver(toml: &str) -> Receiver {
        let config = Config::from_toml(toml, "test", &|_| None).unwrap();
        Receiver::new(&config).unwrap()
    }

    /// A `POST /webhook/src` from 127.0.0.1 with these headers.
    fn post(headers: &HeaderMap) -> RequestParts<'_> {
        RequestParts {
            source: "src",
            method: "POST",
            path: "/webhook/src",
            query: "",
            headers,
            peer: Some("127.0.0.1:4000".parse().unwrap()),
            received_at_us: 1_700_000_000_000_000,
        }
    }

    fn receive(r: &Receiver, headers: &[(&str, &str)], body: &[u8]) -> Delivery {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r.receive(
            &post(&map),
            &BodyRead::Complete(Bytes::copy_from_slice(body)),
        )
        .delivery
    }

    #[test]
    fn a_url_signature_is_checked_against_the_address_the_sender_used() {
        use crate::ingest::providers::sig::{Algo, hmac};
        use base64::Engine as _;
        let r = receiver("[[sources]]\nname = \"src\"\nprovider = \"twilio\"\nsecret = \"tok\"\n");
        let body = b"Body=hi&From=%2B15550001";
        // Twilio signs the full URL it posted to, then the sorted form parameters.
        let url = "https://hooks.example.com/webhook/src";
        let mac = hmac(
            Algo::Sha1,
            b"tok",
            &[url.as_bytes(), b"Bodyhi", b"From+15550001"],
        );
        let signature = base64::engine::general_purpose::STANDARD.encode(mac);
        let form = ("content-type", "application/x-www-form-urlencoded");
        let behind_proxy = [
            form,
            ("host", "10.0.0.5:8080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "hooks.example.com"),
            ("x-twilio-signature", signature.as_str()),
        ];
        let d = receive(&r, &behind_proxy, body);
        assert_eq!(d.signature_status, SignatureStatus::Valid);
        // Without the forwarded headers the server's own address does not match.
        let direct = [
            form,
            ("host", "10.0.0.5:8080"),
            ("x-twilio-signature", signature.as_str()),
        ];
        let d = receive(&r, &direct, body);
        assert_eq!(d.signature_status, SignatureStatus::Invalid);
    }

    #[test]
    fn json_bodies_give_event_type_and_a_body_hash_dedup_key() {
        let r = receiver("");
        let d = receive(
            &r,
            &[("content-type", "application/json")],
            br#"{"type":"invoice.paid","n":1}"#,
        );
        assert_eq!(d.event_type.as_deref(), Some("invoice.paid"));
        assert_eq!(d.provider, "generic");
        assert_eq!(d.signature_status, SignatureStatus::Unchecked);
        assert!(d.dedup_key.starts_with("sha256:"));
        assert_eq!(d.dedup_key, format!("sha256:{}", d.payload_sha256));
        assert_eq!(d.payload_issues, None);
        assert_eq!(d.status_code, 200);
        assert_eq!(d.id.len(), 26);
    }

    #[test]
    fn malformed_json_is_kept_as_text_and_flagged() {
        let r = receiver("");
        let d = receive(
            &r,
            &[("content-type", "application/json; charset=utf-8")],
            b"{\"type\": oops",
        );
        assert_eq!(d.body, StoredBody::Text("{\"type\": oops".into()));
        let issues: serde_json::Value =
            serde_json::from_str(d.payload_issues.as_deref().unwrap()).unwrap();
        assert_eq!(issues[0]["kind"], "not_json");
    }

    #[test]
    fn binary_bodies_are_kept_as_bytes() {
        let r = receiver("");
        let d = receive(
            &r,
            &[("content-type", "application/octet-stream")],
            &[0xff, 0xfe, 0x00],
        );
        assert_eq!(d.body, StoredBody::Binary(vec![0xff, 0xfe, 0x00]));
        assert_eq!(d.payload_size, 3);
        assert_eq!(d.payload_issues, None);
    }

    #[test]
    fn secrets_in_headers_are_redacted() {
        let r = receiver("[[sources]]\nname = \"src\"\nredact_headers = [\"X-Custom-Secret\"]\n");
        let d = receive(
            &r,
            &[
                ("authorization", "Bearer s3cret"),
                ("cookie", "session=abc"),
                ("x-custom-secret", "hunter2"),
                ("x-trace", "keep-me"),
            ],
            b"",
        );
        assert!(!d.headers_json.contains("s3cret"));
        assert!(!d.headers_json.contains("session=abc"));
        assert!(!d.headers_json.contains("hunter2"));
        let h: serde_json::Value = serde_json::from_str(&d.headers_json).unwrap();
        assert_eq!(h["authorization"], REDACTED);
        assert_eq!(h["x-trace"], "keep-me");
    }

    #[test]
    fn oversized_bodies_are_recorded_without_body() {
        let r = receiver("");
        let map = HeaderMap::new();
        let got = r.receive(
            &post(&map),
            &BodyRead::TooLarge {
                declared: Some(20),
                received: 0,
                limit: 10,
            },
        );
        let d = got.delivery;
        assert_eq!(d.status_code, 413);
        assert_eq!(d.body, StoredBody::Omitted);
        assert_eq!(d.payload_size, 20);
        assert!(d.payload_issues.unwrap().contains("body_too_large"));
    }

    #[test]
    fn required_fields_are_checked_by_dot_path() {
        let r = receiver(
            "[[sources]]\nname = \"src\"\nrequired_fields = [\"data.object.id\", \"type\", \"created\"]\n",
        );
        let d = receive(
            &r,
            &[("content-type", "application/json")],
            br#"{"type":"x","created":null,"data":{"object":{"id":"o1"}}}"#,
        );
        let issues = d.payload_issues.unwrap();
        assert!(issues.contains("created"), "{issues}");
        assert!(!issues.contains("data.object.id"), "{issues}");
    }
}
