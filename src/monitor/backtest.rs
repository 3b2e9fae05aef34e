//! Backtesting a rule: run it at every scheduled time of a range over the stored
//! history, through the same state machine as the server, and report when each of its
//! alerts would have fired and resolved. Sends nothing, writes nothing.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::alerts::AlertBook;
use super::{QueryFile, run, scheduler};
use crate::query::QueryEngine;

/// One firing episode of an alert instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub rule: String,
    pub key: Value,
    pub source: Option<String>,
    pub severity: String,
    pub fired_at: DateTime<Utc>,
    /// `None`: still firing at the end of the range.
    pub resolved_at: Option<DateTime<Utc>>,
}

impl Episode {
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "rule": self.rule,
            "key": self.key,
            "source": self.source,
            "severity": self.severity,
            "fired_at": super::runs::rfc3339(&self.fired_at),
            "resolved_at": self.resolved_at.map(|t| super::runs::rfc3339(&t)),
        })
    }
}

/// The scheduled times of `q` in `[from, to)`.
pub fn times(
    q: &QueryFile,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, String> {
    let schedule = q.schedule.as_ref().ok_or_else(|| {
        format!(
            "{} has no schedule (`-- schedule:`): nothing to backtest",
            q.name
        )
    })?;
    let mut out = Vec::new();
    let mut t = match schedule.latest_at_or_before(from) {
        Some(t) if t == from => Some(t),
        _ => schedule.next_after(from),
    };
    while let Some(at) = t.filter(|t| *t < to) {
        out.push(at);
        t = schedule.next_after(at);
    }
    Ok(out)
}

/// Runs rule `q` at each of `times` (with `params`) and returns its episodes, in the
/// order they fired. `progress` is called after each run.
pub async fn backtest(
    engine: &QueryEngine,
    q: &QueryFile,
    times: &[DateTime<Utc>],
    params: &BTreeMap<String, String>,
    renotify: Duration,
    progress: impl Fn(),
) -> Result<Vec<Episode>, String> {
    if q.alert.is_none() {
        return Err(format!(
            "{} is not an alert rule (no `-- alert:` line): nothing would fire",
            q.name
        ));
    }
    let mut book = AlertBook::default();
    let mut open: HashMap<String, usize> = HashMap::new();
    let mut episodes: Vec<Episode> = Vec::new();
    for &at in times {
        let (_, batches) = run::collect(engine, q, at, params)
            .await
            .map_err(|e| format!("{} at {}: {e}", q.name, super::runs::rfc3339(&at)))?;
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        let rows = match scheduler::rows_json(&batches, scheduler::ALERT_ROWS) {
            Value::Array(rows) => rows,
            _ => {
                return Err(format!(
                    "{}: the result could not be read as JSON rows",
                    q.name
                ));
            }
        };
        for notice in book.evaluate(q, at, &rows, total as u64, renotify) {
            let fired_at = DateTime::from_timestamp_micros(notice.fired_at_us).unwrap_or(at);
            match notice.state.as_str() {
                "resolved" => {
                    if let Some(i) = open.remove(&notice.key) {
                        episodes[i].resolved_at = Some(at);
                    }
                }
                _ if !open.contains_key(&notice.key) => {
                    open.insert(notice.key.clone(), episodes.len());
                    episodes.push(Episode {
                        rule: notice.rule.clone(),
                        key: serde_json::from_str(&notice.key).unwrap_or(Value::Null),
                        source: notice.source.clone(),
                        severity: notice.severity.clone(),
                        fired_at,
                        resolved_at: None,
                    });
                }
                _ => {}
            }
        }
        progress();
    }
    Ok(episodes)
}
