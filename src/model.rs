//! The records that travel the write path: what arrived ([`Delivery`]), what the
//! application reported ([`Outcome`]), and what a forward's app answered. How each is
//! encoded in the WAL is `wal::codec`'s.
//!
//! Invariants:
//! - A record holds only what was *observed* on receipt. Columns derived from
//!   history (attempt, is_duplicate, retry_gap_ms) are computed when the record is
//!   applied to the buffer, in WAL order, so replaying the WAL after a crash derives
//!   exactly the values the live server derived.
//! - The encoding is versioned by the WAL record kind; decoding a kind this build does
//!   not know is an error, never a guess.

use crate::wal::codec::DecodeError;

/// Signature verification result of a delivery (the `signature_status` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureStatus {
    /// The signature matched one of the configured secrets.
    Valid,
    /// A signature was present and did not match.
    Invalid,
    /// The signature matched but its timestamp is outside the tolerance.
    Expired,
    /// A secret is configured but the request carried no signature.
    Missing,
    /// No secret is configured for the source: nothing was checked.
    Unchecked,
}

impl SignatureStatus {
    /// The SQL value of this status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::Missing => "missing",
            Self::Unchecked => "unchecked",
        }
    }

    /// The status whose SQL value is `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Valid,
            Self::Invalid,
            Self::Expired,
            Self::Missing,
            Self::Unchecked,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Valid => 0,
            Self::Invalid => 1,
            Self::Expired => 2,
            Self::Missing => 3,
            Self::Unchecked => 4,
        }
    }

    pub(crate) fn from_code(code: u8) -> Result<Self, DecodeError> {
        Ok(match code {
            0 => Self::Valid,
            1 => Self::Invalid,
            2 => Self::Expired,
            3 => Self::Missing,
            4 => Self::Unchecked,
            other => return Err(DecodeError::BadValue("signature_status", other as u64)),
        })
    }
}

/// The body of a delivery as stored: text when it is UTF-8, else raw bytes (stored
/// base64 in SQL), or nothing when it was refused (over the size limit).
#[derive(Debug, Clone, PartialEq)]
pub enum StoredBody {
    /// Valid UTF-8.
    Text(String),
    /// Any other bytes.
    Binary(Vec<u8>),
    /// Not kept (body over the limit).
    Omitted,
}

/// One request on `/webhook/{source}`, as observed on receipt.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// ULID assigned on receipt.
    pub id: String,
    /// Microseconds since the Unix epoch, UTC.
    pub received_at_us: i64,
    pub source: String,
    pub provider: String,
    pub event_type: Option<String>,
    pub event_id: Option<String>,
    pub delivery_id: Option<String>,
    /// event_id when known, else `sha256:<hex>` of the body.
    pub dedup_key: String,
    /// The provider's own attempt number, when it sends one (Slack retry num + 1).
    pub provider_attempt: Option<i32>,
    pub sent_at_us: Option<i64>,
    pub signature_status: SignatureStatus,
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    pub remote_addr: Option<String>,
    /// JSON object of the request headers, secrets already redacted.
    pub headers_json: String,
    pub body: StoredBody,
    pub payload_size: i64,
    pub payload_sha256: String,
    /// JSON array of integrity problems, or None.
    pub payload_issues: Option<String>,
    pub status_code: i32,
    pub upstream_status: Option<i32>,
    pub upstream_latency_ms: Option<f64>,
    pub upstream_error: Option<String>,
}

impl Delivery {
    /// received_at − sent_at in milliseconds, when the provider said when it sent.
    pub fn delivery_lag_ms(&self) -> Option<f64> {
        self.sent_at_us
            .map(|sent| (self.received_at_us - sent) as f64 / 1000.0)
    }
}

/// One processing report (a row of `outcomes`).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub id: String,
    pub reported_at_us: i64,
    pub source: String,
    pub delivery_id: Option<String>,
    pub event_id: Option<String>,
    /// `success` or `failure`.
    pub status: String,
    pub processing_time_ms: Option<f64>,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub records_processed: Option<i64>,
    /// JSON object text.
    pub attributes: String,
}

/// How the app answered a forwarded delivery (see [`Entry::ForwardDone`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardResult {
    /// The delivery's id.
    pub id: String,
    pub completed_at_us: i64,
    /// What hookscope answered the provider (the app's status, 502, 504; 0 if the
    /// process stopped before answering).
    pub status_code: i32,
    pub upstream_status: Option<i32>,
    pub upstream_latency_ms: Option<f64>,
    pub upstream_error: Option<String>,
}

/// One run of a saved query (a row of `query_runs`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRun {
    pub name: String,
    pub scheduled_for_us: i64,
    pub started_at_us: i64,
    pub duration_ms: f64,
    pub rows: i64,
    pub error: Option<String>,
    /// schedule or catch-up.
    pub trigger: String,
}

/// One notification of an alert (a row of `alerts`).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    pub fired_at_us: i64,
    pub rule: String,
    pub source: Option<String>,
    pub severity: String,
    pub message: String,
    /// JSON object text.
    pub details: String,
    pub resolved_at_us: Option<i64>,
    /// JSON object text of the key columns.
    pub key: String,
    /// firing or resolved.
    pub state: String,
    pub notified_at_us: i64,
}

/// What one WAL record carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A delivery, complete.
    Delivery(Box<Delivery>),
    /// A processing report.
    Outcome(Box<Outcome>),
    /// A batch of processing reports, recorded all or nothing.
    Outcomes(Vec<Outcome>),
    /// A delivery made durable before it is forwarded to the app; its row appears
    /// when the matching [`Entry::ForwardDone`] is applied.
    ForwardStart(Box<Delivery>),
    /// The app's answer to a forwarded delivery.
    ForwardDone(Box<ForwardResult>),
    /// A saved query's run.
    QueryRun(Box<QueryRun>),
    /// An alert notification.
    Alert(Box<AlertRow>),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_delivery() -> Delivery {
        Delivery {
            id: "01JDQ8ZC9X0000000000000000".into(),
            received_at_us: 1_732_300_000_123_456,
            source: "stripe".into(),
            provider: "generic".into(),
            event_type: Some("invoice.paid".into()),
            event_id: None,
            delivery_id: None,
            dedup_key: "sha256:abc".into(),
            provider_attempt: Some(3),
            sent_at_us: Some(1_732_300_000_000_000),
            signature_status: SignatureStatus::Unchecked,
            method: "POST".into(),
            path: "/webhook/stripe".into(),
            query: "a=1".into(),
            content_type: Some("application/json".into()),
            user_agent: None,
            remote_addr: Some("127.0.0.1:5555".into()),
            headers_json: r#"{"content-type":"application/json"}"#.into(),
            body: StoredBody::Text(r#"{"type":"invoice.paid"}"#.into()),
            payload_size: 23,
            payload_sha256: "ff".into(),
            payload_issues: None,
            status_code: 200,
            upstream_status: None,
            upstream_latency_ms: Some(1.5),
            upstream_error: None,
        }
    }
}
