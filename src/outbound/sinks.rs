//! Alert notifications out: the server log, a generic JSON webhook, or a
//! Slack-compatible incoming webhook.
//!
//! Invariants:
//! - Sending never blocks the caller (the scheduler): each sink has one worker and a
//!   queue of [`QUEUE`] notifications; when the queue is full (a sink down for a long
//!   time) the new notification is dropped and counted, never waited for.
//! - A sink's notifications go out in order (a resolved notice never overtakes its
//!   firing one), and a dead sink delays only its own queue.
//! - A connection error, a timeout, a 5xx or a 429 is retried with backoff,
//!   [`ATTEMPTS`] tries in all; another 4xx is not (the request itself is wrong).
//!   Every outcome is counted in `hookscope_alert_notifications_total{sink,result}`.
//! - A sink's URL is never logged (a Slack URL holds its secret): sinks are named
//!   by kind and position (`webhook#0`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::SinkConfig;
use crate::model::AlertRow;
use crate::telemetry::metrics::Metrics;

/// Tries per notification and sink.
pub const ATTEMPTS: u32 = 4;
/// Notifications waiting per sink.
const QUEUE: usize = 1_000;
/// Per POST.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry's delay; doubled each time.
const BACKOFF: Duration = Duration::from_secs(1);
/// Longest text of a Slack block (Slack refuses more than 3,000 characters).
const SLACK_TEXT: usize = 2_900;

/// Sends alert notifications to the configured sinks.
pub(crate) struct Notifier {
    /// Emptied at the stop, which ends the workers once their queues are sent.
    queues: parking_lot::Mutex<Vec<(String, mpsc::Sender<AlertRow>)>>,
    workers: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// Starts one worker per sink (the log when none is configured).
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
        let mut queues = Vec::new();
        let mut workers = Vec::new();
        for (i, sink) in sinks.into_iter().enumerate() {
            let name = format!("{}#{i}", sink.kind);
            let (tx, mut rx) = mpsc::channel::<AlertRow>(QUEUE);
            let (client, metrics, label) = (client.clone(), Arc::clone(&metrics), name.clone());
            workers.push(tokio::spawn(async move {
                while let Some(alert) = rx.recv().await {
                    let ok = deliver(&client, &sink, &label, &alert).await;
                    metrics
                        .alert_notifications
                        .inc(&[sink.kind.as_str(), if ok { "ok" } else { "failed" }]);
                }
            }));
            queues.push((name, tx));
        }
        Ok(Notifier {
            queues: parking_lot::Mutex::new(queues),
            workers: parking_lot::Mutex::new(workers),
            metrics,
        })
    }

    /// Queues `alert` for every sink; never waits.
    pub(crate) fn send(&self, alert: &AlertRow) {
        for (name, queue) in self.queues.lock().iter() {
            if queue.try_send(alert.clone()).is_err() {
                let kind = name.split('#').next().unwrap_or(name);
                self.metrics.alert_notifications.inc(&[kind, "dropped"]);
                tracing::error!(sink = %name, rule = %alert.rule, state = %alert.state, "alert sink queue full (the sink has been failing): notification dropped");
            }
        }
    }

    /// Lets the queued notifications go out, for at most `limit` (at a stop).
    pub(crate) async fn drain(&self, limit: Duration) {
        let workers = std::mem::take(&mut *self.workers.lock());
        let queues = std::mem::take(&mut *self.queues.lock());
        let waiting: usize = queues.iter().map(|(_, q)| QUEUE - q.capacity()).sum();
        drop(queues);
        if waiting > 0 {
            tracing::info!(
                notifications = waiting,
                "sending the queued alert notifications before stopping"
            );
        }
        let deadline = tokio::time::Instant::now() + limit;
        for worker in workers {
            let abort = worker.abort_handle();
            if tokio::time::timeout_at(deadline, worker).await.is_err() {
                abort.abort();
                tracing::error!(
                    "stopping with alert notifications not sent (a sink is failing); they are in the alerts table, but not sent again after the start"
                );
            }
        }
    }
}

/// One notification to one sink, with retries; true once delivered.
async fn deliver(
    client: &reqwest::Client,
    sink: &SinkConfig,
    name: &str,
    alert: &AlertRow,
) -> bool {
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
    let mut delay = BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let mut req = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string());
        for (k, v) in &sink.headers {
            req = req.header(k, v);
        }
        let retry = match req.send().await {
            Ok(resp) if resp.status().is_success() => return true,
            Ok(resp) => {
                let status = resp.status();
                tracing::warn!(sink = %name, %status, attempt, "alert sink refused a notification");
                status.is_server_error() || status.as_u16() == 429
            }
            Err(e) => {
                tracing::warn!(sink = %name, error = %without_url(&e), attempt, "alert sink unreachable");
                true
            }
        };
        if !retry {
            break;
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    tracing::error!(sink = %name, rule = %alert.rule, state = %alert.state, "gave up sending an alert notification");
    false
}

/// A request error's text without the URL (which may hold a secret).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.into(),
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
        "details": serde_json::from_str::<Value>(&a.details).unwrap_or_else(|_| Value::String(a.details.clone())),
        "key": serde_json::from_str::<Value>(&a.key).unwrap_or(Value::Null),
        "fired_at": rfc3339(a.fired_at_us),
        "resolved_at": a.resolved_at_us.map_or(Value::Null, rfc3339),
    })
}

/// Text for Slack's mrkdwn: its control characters escaped, at most `limit` chars.
fn slack_text(text: &str, limit: usize) -> String {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    match escaped.char_indices().nth(limit) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped,
    }
}

/// A Slack incoming-webhook message saying the same.
pub fn slack_payload(a: &AlertRow) -> Value {
    let icon = match (a.state.as_str(), a.severity.as_str()) {
        ("resolved", _) => ":white_check_mark:",
        (_, "critical") => ":rotating_light:",
        (_, "info") => ":information_source:",
        _ => ":warning:",
    };
    let text = format!("{icon} {}", slack_text(&a.message, SLACK_TEXT));
    let details = slack_text(&a.details.replace("```", "'''"), SLACK_TEXT - 6);
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": format!(
                    "rule `{}` · {} · fired {}",
                    slack_text(&a.rule, 200),
                    a.severity,
                    rfc3339(a.fired_at_us).as_str().unwrap_or("?")
                )}
            ]},
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("```{details}```")}}
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(details: String) -> AlertRow {
        AlertRow {
            fired_at_us: 1_700_000_000_000_000,
            rule: "spike".into(),
            source: Some("s".into()),
            severity: "critical".into(),
            message: "critical: spike for source=<s> & more".into(),
            details,
            resolved_at_us: None,
            key: r#"{"source":"s"}"#.into(),
            state: "firing".into(),
            notified_at_us: 1_700_000_000_000_000,
        }
    }

    #[test]
    fn slack_blocks_stay_under_slacks_limit_and_escape_its_markup() {
        let long = format!("{{\"x\":\"{}\"}}", "a".repeat(10_000));
        let p = slack_payload(&alert(long));
        for block in p["blocks"].as_array().unwrap() {
            if let Some(text) = block["text"]["text"].as_str() {
                assert!(text.chars().count() <= 3_000, "{}", text.len());
            }
        }
        let text = p["text"].as_str().unwrap();
        assert!(text.contains("&lt;s&gt; &amp; more"), "{text}");
    }

    #[test]
    fn the_webhook_payload_carries_the_alert() {
        let p = webhook_payload(&alert(r#"{"n":40}"#.into()));
        assert_eq!(p["state"], "firing");
        assert_eq!(p["details"]["n"], 40);
        assert_eq!(p["key"]["source"], "s");
        assert_eq!(p["fired_at"], "2023-11-14T22:13:20.000000Z");
        assert!(p["resolved_at"].is_null());
        // Details that are not JSON are sent as text.
        let p = webhook_payload(&alert("not json".into()));
        assert_eq!(p["details"], "not json");
    }
}
