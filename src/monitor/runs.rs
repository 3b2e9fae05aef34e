//! The recent runs of each saved query, in memory: what `GET /queries` shows as the
//! last run, the last result and the next scheduled time. (The durable history is the
//! `query_runs` table.)

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;

use super::QueryFile;

/// Runs kept per query.
const KEEP: usize = 20;
/// Rows of a last result kept for `GET /queries/{name}`.
pub const RESULT_ROWS: usize = 100;

/// Why a run happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Schedule,
    CatchUp,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch-up",
        }
    }
}

/// A time as RFC 3339 text, microseconds, UTC (`Z`).
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn serialize_time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(t))
}

/// One finished run.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub name: String,
    #[serde(serialize_with = "serialize_time")]
    pub scheduled_for: DateTime<Utc>,
    #[serde(serialize_with = "serialize_time")]
    pub started_at: DateTime<Utc>,
    pub duration_ms: f64,
    pub rows: i64,
    pub error: Option<String>,
    pub trigger: Trigger,
}

impl RunRecord {
    /// The run as a row of `query_runs`.
    pub fn to_row(&self) -> crate::model::QueryRun {
        crate::model::QueryRun {
            name: self.name.clone(),
            scheduled_for_us: self.scheduled_for.timestamp_micros(),
            started_at_us: self.started_at.timestamp_micros(),
            duration_ms: self.duration_ms,
            rows: self.rows,
            error: self.error.clone(),
            trigger: self.trigger.as_str().to_string(),
        }
    }
}

#[derive(Default)]
struct Runs {
    recent: VecDeque<RunRecord>,
    last_result: Option<serde_json::Value>,
    next: Option<DateTime<Utc>>,
}

/// The recent runs of every query.
#[derive(Default)]
pub struct RunLog {
    inner: Mutex<HashMap<String, Runs>>,
    /// Runs recorded since the start, and how many of them failed.
    runs: std::sync::atomic::AtomicU64,
    failures: std::sync::atomic::AtomicU64,
}

impl RunLog {
    /// (runs, failed runs) recorded since the start.
    pub fn totals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.runs.load(Relaxed), self.failures.load(Relaxed))
    }

    /// Records a finished run and (when it succeeded) its first rows as JSON.
    pub fn record(&self, run: RunRecord, result: Option<serde_json::Value>) {
        use std::sync::atomic::Ordering::Relaxed;
        self.runs.fetch_add(1, Relaxed);
        if run.error.is_some() {
            self.failures.fetch_add(1, Relaxed);
        }
        let mut inner = self.inner.lock();
        let runs = inner.entry(run.name.clone()).or_default();
        if runs.recent.len() == KEEP {
            runs.recent.pop_front();
        }
        runs.recent.push_back(run);
        if result.is_some() {
            runs.last_result = result;
        }
    }

    /// The scheduler's next time for `name`.
    pub fn set_next(&self, name: &str, next: Option<DateTime<Utc>>) {
        self.inner.lock().entry(name.to_string()).or_default().next = next;
    }

    pub fn last_run(&self, name: &str) -> serde_json::Value {
        self.inner
            .lock()
            .get(name)
            .and_then(|r| r.recent.back())
            .map_or(serde_json::Value::Null, |r| {
                serde_json::json!({
                    "scheduled_for": rfc3339(&r.scheduled_for),
                    "started_at": rfc3339(&r.started_at),
                    "duration_ms": r.duration_ms,
                    "rows": r.rows,
                    "error": r.error,
                    "trigger": r.trigger,
                })
            })
    }

    /// Newest first.
    pub fn last_runs(&self, name: &str) -> serde_json::Value {
        let inner = self.inner.lock();
        let runs: Vec<&RunRecord> = inner
            .get(name)
            .map(|r| r.recent.iter().rev().collect())
            .unwrap_or_default();
        serde_json::to_value(runs).unwrap_or_default()
    }

    pub fn last_result(&self, name: &str) -> serde_json::Value {
        self.inner
            .lock()
            .get(name)
            .and_then(|r| r.last_result.clone())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The next scheduled time: the scheduler's, or the schedule's next time after now
    /// when no scheduler runs it.
    pub fn next_run(&self, q: &QueryFile) -> serde_json::Value {
        let planned = self.inner.lock().get(&q.name).and_then(|r| r.next);
        planned
            .or_else(|| q.schedule.as_ref()?.next_after(Utc::now()))
            .map_or(serde_json::Value::Null, |t| serde_json::json!(rfc3339(&t)))
    }
}
