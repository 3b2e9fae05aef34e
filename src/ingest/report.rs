//! The report step: turns an application's processing reports (`/report/{source}`)
//! into [`Outcome`] records.
//!
//! Invariants:
//! - A batch is all or nothing: one bad report rejects the batch with an error naming
//!   the report and the field; nothing of it is recorded.
//! - Reports link to deliveries by hookscope id or provider delivery id
//!   (`delivery_id`) or by provider event id (`event_id`); both are kept as given.
//! - No I/O, no state.

use serde::Deserialize;

use crate::ingest::receive::new_id;
use crate::model::Outcome;

/// Most reports in one batch.
pub(crate) const MAX_BATCH: usize = 10_000;
const MAX_TEXT: usize = 8 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportIn {
    delivery_id: Option<String>,
    event_id: Option<String>,
    status: String,
    processing_time_ms: Option<f64>,
    error_type: Option<String>,
    error_message: Option<String>,
    records_processed: Option<i64>,
    attributes: Option<serde_json::Value>,
}

fn clip(s: Option<String>) -> Option<String> {
    s.map(|mut s| {
        if s.len() > MAX_TEXT {
            let mut end = MAX_TEXT;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
        s
    })
}

/// Why a report (or a batch) was refused; nothing of it was recorded.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("body is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error(
        "expected a JSON object {{\"status\": \"success\" | \"failure\", …}} or an array of them"
    )]
    NotAReport,
    #[error("the report array is empty")]
    Empty,
    #[error("{0} reports in one batch; send at most {MAX_BATCH}")]
    TooMany(usize),
    /// A report's field (`index`: its place in a batch).
    #[error("{}{problem}", index.map(|i| format!("report [{i}]: ")).unwrap_or_default())]
    Field {
        index: Option<usize>,
        problem: String,
    },
}

impl ReportError {
    fn field(problem: impl Into<String>) -> Self {
        ReportError::Field {
            index: None,
            problem: problem.into(),
        }
    }

    /// The same error, said of the report at `index` of a batch.
    fn at(self, index: usize) -> Self {
        match self {
            ReportError::Field { problem, .. } => ReportError::Field {
                index: Some(index),
                problem,
            },
            other => other,
        }
    }
}

pub(crate) fn status_of(s: &str) -> Result<&'static str, ReportError> {
    match s {
        "success" => Ok("success"),
        "failure" => Ok("failure"),
        other => Err(ReportError::field(format!(
            "status must be \"success\" or \"failure\", got {other:?}"
        ))),
    }
}

fn check_time(ms: Option<f64>) -> Result<Option<f64>, ReportError> {
    match ms {
        Some(v) if !v.is_finite() || v < 0.0 => Err(ReportError::field(format!(
            "processing_time_ms must be a number ≥ 0, got {v}"
        ))),
        other => Ok(other),
    }
}

fn outcome(source: &str, r: ReportIn, now_us: i64) -> Result<Outcome, ReportError> {
    let status = status_of(&r.status)?;
    let processing_time_ms = check_time(r.processing_time_ms)?;
    if let Some(n) = r.records_processed
        && n < 0
    {
        return Err(ReportError::field(format!(
            "records_processed must be ≥ 0, got {n}"
        )));
    }
    let attributes = match r.attributes {
        None | Some(serde_json::Value::Null) => "{}".to_string(),
        Some(v @ serde_json::Value::Object(_)) => v.to_string(),
        Some(_) => return Err(ReportError::field("attributes must be a JSON object")),
    };
    Ok(Outcome {
        id: new_id(now_us),
        reported_at_us: now_us,
        source: source.to_string(),
        delivery_id: r.delivery_id.filter(|s| !s.is_empty()),
        event_id: r.event_id.filter(|s| !s.is_empty()),
        status: status.to_string(),
        processing_time_ms,
        error_type: clip(r.error_type),
        error_message: clip(r.error_message),
        records_processed: r.records_processed,
        attributes,
    })
}

/// Parses one JSON report object or an array of them.
pub fn parse(source: &str, body: &[u8], now_us: i64) -> Result<Vec<Outcome>, ReportError> {
    let one = |v: serde_json::Value| {
        serde_json::from_value::<ReportIn>(v)
            .map_err(|e| ReportError::field(e.to_string()))
            .and_then(|r| outcome(source, r, now_us))
    };
    match serde_json::from_slice(body).map_err(ReportError::NotJson)? {
        serde_json::Value::Array(items) => {
            if items.is_empty() {
                return Err(ReportError::Empty);
            }
            if items.len() > MAX_BATCH {
                return Err(ReportError::TooMany(items.len()));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| one(item).map_err(|e| e.at(i)))
                .collect()
        }
        v @ serde_json::Value::Object(_) => Ok(vec![one(v)?]),
        _ => Err(ReportError::NotAReport),
    }
}

/// Optional parameters of the `/success` and `/fail` pings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ping {
    pub processing_time_ms: Option<f64>,
    pub event_id: Option<String>,
    pub delivery_id: Option<String>,
    pub error_type: Option<String>,
}

/// The outcome of a one-line ping.
pub fn ping(source: &str, success: bool, p: Ping, now_us: i64) -> Result<Outcome, ReportError> {
    let r = ReportIn {
        delivery_id: p.delivery_id,
        event_id: p.event_id,
        status: if success { "success" } else { "failure" }.into(),
        processing_time_ms: p.processing_time_ms,
        error_type: p.error_type,
        error_message: None,
        records_processed: None,
        attributes: None,
    };
    outcome(source, r, now_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_report_or_a_batch() {
        let one = parse("app", br#"{"delivery_id":"01J","status":"success","processing_time_ms":12.5,"attributes":{"k":1}}"#, 5).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].status, "success");
        assert_eq!(one[0].attributes, r#"{"k":1}"#);
        let many = parse(
            "app",
            br#"[{"event_id":"evt_1","status":"failure","error_type":"db"},{"status":"success"}]"#,
            5,
        )
        .unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many[0].error_type.as_deref(), Some("db"));
    }

    #[test]
    fn errors_name_the_report_and_the_field() {
        let said = |body: &[u8]| parse("app", body, 0).unwrap_err().to_string();
        let e = said(br#"[{"status":"success"},{"status":"ok"}]"#);
        assert!(e.contains("[1]") && e.contains("status"), "{e}");
        let e = said(br#"{"delivery_id":"x"}"#);
        assert!(e.contains("missing field `status`"), "{e}");
        let e = said(br#"{"status":"success","processing_ms":3}"#);
        assert!(e.contains("unknown field `processing_ms`"), "{e}");
        let e = said(br#"{"status":"success","processing_time_ms":-1}"#);
        assert!(e.contains("processing_time_ms"), "{e}");
        let e = said(br#"{"status":"success","attributes":[1]}"#);
        assert!(e.contains("attributes"), "{e}");
        assert!(matches!(
            parse("app", b"not json", 0),
            Err(ReportError::NotJson(_))
        ));
        assert!(matches!(parse("app", b"[]", 0), Err(ReportError::Empty)));
    }
}
