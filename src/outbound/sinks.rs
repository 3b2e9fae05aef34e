//! Alert notifications out: the server log, a generic JSON webhook, or a
//! Slack-compatible incoming webhook.
//!
//! Invariants:
//! - Sending never blocks the caller (the scheduler): each notification goes out on a
//!   task of its own, at most [`IN_FLIGHT`] at a time; a dead sink costs only its
//!   retries.
//! - A failed POST (a connection error, a timeout, or a status other than 2xx) is
//!   retried with backoff, [`ATTEMPTS`] times in all; every outcome is counted in
//!   `hookscope_alert_notifications_total{sink,result}`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::config::SinkConfig;
use crate::model::AlertRow;
use crate::telemetry::metrics::Metrics;

/// Tries per notification and sink.
pub const ATTEMPTS: u32 = 4;
/// Notifications being sent at once; more wait their turn.
const IN_FLIGHT: usize = 16;
/// Per POST.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends alert notifications to the configured sinks.
#[derive(Clone)]
pub(crate) struct Notifier {
    sinks: Arc<Vec<SinkConfig>>,
    client: reqwest::Client,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// First retry delay (doubled each time).
    backoff: Duration,
}

impl Notifier {
    /// With no sinks configured, notifications go to the log.
    pub(crate) fn new(sinks: &[SinkConfig], metrics: Arc<Metrics>) -> Result<Notifier, String> {
        let sinks = if sinks.is_empty() {
            vec![SinkConfig {
                kind: "log".into(),
                url: None,
                headers: Default::default(),
            }]
        } else {
            sinks.to_vec()
        };
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the alert sinks' HTTP client: {e}"))?;
        Ok(Notifier {
            sinks: Arc::new(sinks),
            client,
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            metrics,
            backoff: Duration::from_secs(1),
        })
    }

    /// Sends `alert` to every sink, in the background.
    pub fn send(&self, alert: &AlertRow) {
        for sink in self.sinks.iter() {
            let (sink, this, alert) = (sink.clone(), self.clone(), alert.clone());
            tokio::spawn(async move {
                let Ok(_slot) = this.slots.acquire().await else {
                    return;
                };
                let result = this.deliver(&sink, &alert).await;
                this.metrics
                    .alert_notifications
                    .inc(&[sink.kind.as_str(), if result { "ok" } else { "failed" }]);
            });
        }
    }

    /// One notification to one sink, with retries; true once delivered.
    async fn deliver(&self, sink: &SinkConfig, alert: &AlertRow) -> bool {
        let body = match sink.kind.as_str() {
            "log" => {
                tracing::warn!(
                    rule = %alert.rule,
                    state = %alert.state,
                    severity = %alert.severity,
                    key = %alert.key,
                    "alert: {}",
                    alert.message
                );
                return true;
            }
            "slack" => slack_payload(alert),
            _ => webhook_payload(alert),
        };
        let Some(url) = &sink.url else {
            return false;
        };
        let mut delay = self.backoff;
        for attempt in 1..=ATTEMPTS {
            let mut req = self
                .client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string());
            for (k, v) in &sink.headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => return true,
                Ok(resp) => {
                    tracing::warn!(sink = %sink.kind, url, status = %resp.status(), attempt, "alert sink refused a notification")
                }
                Err(e) => {
                    tracing::warn!(sink = %sink.kind, url, error = %e, attempt, "alert sink unreachable")
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        tracing::error!(sink = %sink.kind, url, rule = %alert.rule, state = %alert.state, "gave up sending an alert notification");
        false
    }
}

fn rfc3339(us: i64) -> Value {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| Value::String(crate::monitor::runs::rfc3339(&t)))
        .unwrap_or(Value::Null)
}

/// The generic webhook's JSON.
pub fn webhook_payload(a: &AlertRow) -> Value {
    json!({
        "state": a.state,
        "rule": a.rule,
        "source": a.source,
        "severity": a.severity,
        "message": a.message,
        "details": serde_json::from_str::<Value>(&a.details).unwrap_or(Value::Null),
        "key": serde_json::from_str::<Value>(&a.key).unwrap_or(Value::Null),
        "fired_at": rfc3339(a.fired_at_us),
        "resolved_at": a.resolved_at_us.map_or(Value::Null, rfc3339),
    })
}

/// A Slack incoming-webhook message saying the same.
pub fn slack_payload(a: &AlertRow) -> Value {
    let icon = match (a.state.as_str(), a.severity.as_str()) {
        ("resolved", _) => ":white_check_mark:",
        (_, "critical") => ":rotating_light:",
        (_, "info") => ":information_source:",
        _ => ":warning:",
    };
    let text = format!("{icon} {}", a.message);
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{text}*")}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": format!(
                    "rule `{}` · {} · fired {}",
                    a.rule,
                    a.severity,
                    rfc3339(a.fired_at_us).as_str().unwrap_or("?")
                )}
            ]},
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("```{}```", a.details)}}
        ]
    })
}
