//! The scheduler: runs each saved query with a schedule at its scheduled times, as
//! of those times, on the query engine (its own runtime in the server, so runs never
//! take ingest's threads), and records each run in the [`RunLog`] and, durably
//! through the WAL, as a row of `query_runs`.
//!
//! Invariants:
//! - A query never overlaps itself: a time that comes while the previous run still
//!   goes is skipped (and logged), not queued.
//! - A run's `now()` is its scheduled time, whenever it actually starts.
//! - The wall clock is read again at least every second, so a stop, or a clock that
//!   jumps, is noticed within a second: after a jump back the times are planned
//!   again; after a jump forward (or a suspended machine) a query runs once, for the
//!   latest time it missed.
//! - After downtime each query runs once, for the latest time missed since its last
//!   run in `query_runs` (trigger `catch-up`).
//! - A rollup's run recomputes every bucket since its last run without an error (in
//!   `query_runs` at start, then as runs succeed), so a failed, skipped or missed run
//!   leaves no bucket behind.
//! - On stop, runs in flight get a few seconds to finish and be recorded before the
//!   engine's last flush.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::runs::{RESULT_ROWS, RunLog, RunRecord, Trigger};

/// Rows of an alert rule's run that are judged (each is an instance).
pub(crate) const ALERT_ROWS: usize = 1_000;
use super::alerts::Alerting;
use super::{QueryFile, Registry, rollup, run};
use crate::engine::Engine;
use crate::query::QueryEngine;

/// Longest single sleep: the clock and the stop signal are looked at this often.
const TICK: Duration = Duration::from_secs(1);
/// How often reading the alerts table is tried again when it failed at start.
const RESTORE_RETRY: Duration = Duration::from_secs(30);
/// Tries at reading the alerts table before rules are judged without it (a
/// notification sent twice is better than none).
const RESTORE_ATTEMPTS: u32 = 4;
/// How long a stop waits for runs in flight.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Runs the scheduled queries until `stop` turns true.
pub fn spawn(
    engine: Arc<Engine>,
    registry: Arc<Registry>,
    runs: Arc<RunLog>,
    alerting: Arc<Alerting>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (last, succeeded) = tokio::select! {
            last = async {
                if let Err(e) = restore_alerts(&engine, &registry, &alerting).await {
                    tracing::error!(error = %e, "cannot read the alerts table; alert rules are not judged until it can be read (retried every {RESTORE_RETRY:?})");
                }
                last_scheduled(engine.query()).await
            } => last,
            _ = stop.changed() => return,
        };
        // The latest time each rollup ran for without an error: its next run
        // recomputes every bucket since (a failed or skipped run leaves no gap).
        let rollups: Rollups = Arc::new(parking_lot::Mutex::new(
            succeeded
                .into_iter()
                .filter(|(name, _)| registry.get(name).is_some_and(|q| q.materialize))
                .collect(),
        ));
        let mut restore_tried = Instant::now();
        let mut restore_failures = u32::from(!alerting.is_restored());
        let mut tasks = JoinSet::new();
        let now = Utc::now();
        // Times missed while the server was down: each query runs once, for the
        // latest of them (an alert judges the present; older windows are history; a
        // rollup's run covers every bucket since its last run).
        let mut catch_up: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = Vec::new();
        for q in registry.queries() {
            let (Some(schedule), Some(previous)) = (&q.schedule, last.get(&q.name)) else {
                continue;
            };
            if let Some(missed) = schedule.latest_at_or_before(now).filter(|t| t > previous) {
                catch_up.push((q.name.clone(), missed, *previous));
            }
        }
        let mut next: BTreeMap<String, DateTime<Utc>> = registry
            .queries()
            .filter_map(|q| Some((q.name.clone(), q.schedule.as_ref()?.next_after(now)?)))
            .collect();
        for (name, t) in &next {
            runs.set_next(name, Some(*t));
        }
        let busy: HashMap<String, Arc<AtomicBool>> = next
            .keys()
            .map(|n| (n.clone(), Arc::new(AtomicBool::new(false))))
            .collect();
        tracing::info!(
            queries = next.len(),
            catch_up = catch_up.len(),
            "scheduler started"
        );
        // What a run of `q` needs.
        let context = |q: &QueryFile| -> RunContext {
            (
                Arc::clone(&engine),
                Arc::clone(&runs),
                Arc::clone(&alerting),
                Arc::clone(&rollups),
                q.clone(),
            )
        };
        for (name, at, since) in catch_up {
            let (Some(q), Some(flag)) = (registry.get(&name), busy.get(&name)) else {
                continue;
            };
            flag.store(true, Ordering::Release);
            let run = context(q);
            let when = When {
                at,
                since,
                trigger: Trigger::CatchUp,
            };
            tasks.spawn(run_and_record(run, when, Arc::clone(flag)));
        }
        let mut last_now = now;
        loop {
            if *stop.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            if !alerting.is_restored() && restore_tried.elapsed() >= RESTORE_RETRY {
                restore_tried = Instant::now();
                let tried = tokio::select! {
                    r = restore_alerts(&engine, &registry, &alerting) => r,
                    _ = stop.changed() => break,
                };
                if let Err(e) = tried {
                    restore_failures += 1;
                    if restore_failures >= RESTORE_ATTEMPTS {
                        tracing::error!(error = %e, "cannot read the alerts table after {restore_failures} tries: judging alert rules without what fired before the start (alerts still holding are sent again)");
                        alerting.set_restored();
                    } else {
                        tracing::error!(error = %e, "still cannot read the alerts table");
                    }
                }
            }
            let now = Utc::now();
            // The clock went back: the planned times may be far ahead; plan again.
            if now + chrono::Duration::seconds(1) < last_now {
                tracing::warn!(from = %last_now, to = %now, "the clock went back; the saved queries' next times are planned again");
                for q in registry.queries() {
                    if let Some(t) = q.schedule.as_ref().and_then(|s| s.next_after(now)) {
                        next.insert(q.name.clone(), t);
                        runs.set_next(&q.name, Some(t));
                    }
                }
            }
            last_now = now;
            let due: Vec<(String, DateTime<Utc>)> = next
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(n, t)| (n.clone(), *t))
                .collect();
            for (name, at) in due {
                let Some(q) = registry.get(&name) else {
                    continue;
                };
                let following = q.schedule.as_ref().and_then(|s| s.next_after(now.max(at)));
                match following {
                    Some(t) => {
                        next.insert(name.clone(), t);
                    }
                    None => {
                        next.remove(&name);
                    }
                }
                runs.set_next(&name, following);
                let flag = Arc::clone(&busy[&name]);
                if flag.swap(true, Ordering::AcqRel) {
                    tracing::warn!(query = %name, scheduled_for = %at, "skipped a scheduled run: the previous run of this query is still going");
                    continue;
                }
                // Later times passed meanwhile (the clock jumped, the machine slept):
                // run once, for the latest of them.
                let latest = q.schedule.as_ref().and_then(|s| s.latest_at_or_before(now));
                let when = match latest {
                    Some(latest) if latest > at => When {
                        at: latest,
                        since: at,
                        trigger: Trigger::CatchUp,
                    },
                    _ => When {
                        at,
                        since: at,
                        trigger: Trigger::Schedule,
                    },
                };
                tasks.spawn(run_and_record(context(q), when, flag));
            }
            let wait = next
                .values()
                .min()
                .and_then(|t| (*t - Utc::now()).to_std().ok())
                .unwrap_or(TICK)
                .min(TICK);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        // Runs in flight finish (and are recorded) before the engine's last flush,
        // unless they take longer than STOP_WAIT; an aborted one is caught up at the
        // next start.
        let drained = tokio::time::timeout(STOP_WAIT, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                runs = tasks.len(),
                "stopping saved-query runs that did not finish in time"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    })
}

/// What a run needs besides the query.
type RunContext = (Arc<Engine>, Arc<RunLog>, Arc<Alerting>, Rollups, QueryFile);

/// The latest scheduled time each rollup ran for without an error.
type Rollups = Arc<parking_lot::Mutex<HashMap<String, DateTime<Utc>>>>;

/// When a run is for.
struct When {
    /// Its scheduled time: `now()` in the query.
    at: DateTime<Utc>,
    /// The earliest scheduled time it stands for (earlier than `at` for a catch-up):
    /// a rollup recomputes every bucket from this time's window on.
    since: DateTime<Utc>,
    trigger: Trigger,
}

/// Runs `q` as of `at`, records it (in the log and in `query_runs`); for an alert
/// rule, applies its rows to the alert state, recording each notification in
/// `alerts` (through the WAL) before it is sent; for a rollup, replaces the buckets
/// of its window. Then clears `busy`.
async fn run_and_record(
    (engine, runs, alerting, rollups, q): RunContext,
    When { at, since, trigger }: When,
    busy: Arc<AtomicBool>,
) {
    if q.materialize {
        let done = rollups.lock().get(&q.name).copied();
        let since = done.map_or(since, |done| done.min(since));
        let record = run_rollup(&engine, &q, at, since, trigger, &runs).await;
        if record.error.is_none() {
            rollups.lock().insert(q.name.clone(), at);
        }
        if let Err(e) = engine.record_query_run(record.to_row()).await {
            tracing::warn!(query = %q.name, error = %e, "could not record a saved query's run in query_runs");
        }
        busy.store(false, Ordering::Release);
        return;
    }
    let (record, rows) = run_once(engine.query(), &q, at, trigger, &runs).await;
    if let Err(e) = engine.record_query_run(record.to_row()).await {
        tracing::warn!(query = %q.name, error = %e, "could not record a saved query's run in query_runs");
    }
    if let (Some(_), Some(rows)) = (q.alert, rows) {
        let total = u64::try_from(record.rows).unwrap_or(0);
        if total > rows.len() as u64 {
            tracing::warn!(query = %q.name, rows = record.rows, judged = rows.len(), "an alert rule returned more rows than are judged; only the first ones fire, and nothing resolves");
        }
        if alerting.is_restored() {
            let notices = alerting
                .book
                .lock()
                .evaluate(&q, at, &rows, total, alerting.renotify);
            notify(&engine, &alerting, notices).await;
        } else {
            tracing::error!(query = %q.name, "alert rule not judged: the alerts firing before the start are not known yet (reading the alerts table failed; retried)");
        }
    }
    busy.store(false, Ordering::Release);
}

/// Records each notification in `alerts` (through the WAL), then sends it.
async fn notify(engine: &Engine, alerting: &Alerting, notices: Vec<crate::model::AlertRow>) {
    for notice in notices {
        if let Err(e) = engine.record_alert(notice.clone()).await {
            tracing::error!(rule = %notice.rule, error = %e, "could not record an alert notification in alerts; it is sent anyway");
        }
        alerting.send(&notice);
    }
}

/// Puts back the alerts firing at the last stop: for each rule and key, the latest
/// row of `alerts` (by `notified_at`), if it says firing. An instance of a rule that
/// is gone, or no longer a scheduled alert rule, is resolved now (recorded and sent).
async fn restore_alerts(
    engine: &Engine,
    registry: &Registry,
    alerting: &Alerting,
) -> Result<(), String> {
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampMicrosecondType;
    // Only the narrow columns are sorted (a row's details can be large); the row is
    // taken again at the rule's next run.
    let sql = "SELECT rule, key, fired_at, notified_at FROM ( \
                 SELECT rule, key, fired_at, notified_at, state, \
                        row_number() OVER (PARTITION BY rule, key ORDER BY notified_at DESC, state DESC) AS rn \
                 FROM alerts) \
               WHERE rn = 1 AND state = 'firing'";
    let (_, batches) = engine
        .query()
        .collect(sql)
        .await
        .map_err(|e| e.to_string())?;
    let mut restored = 0;
    let mut retired = std::collections::BTreeSet::new();
    for b in &batches {
        let (Some(rule), Some(key), Some(fired), Some(notified)) = (
            b.column(0).as_string_opt::<i32>(),
            b.column(1).as_string_opt::<i32>(),
            b.column(2).as_primitive_opt::<TimestampMicrosecondType>(),
            b.column(3).as_primitive_opt::<TimestampMicrosecondType>(),
        ) else {
            return Err("the alerts table has unexpected column types".into());
        };
        for i in 0..b.num_rows() {
            let (Some(fired_at), Some(last)) = (
                DateTime::from_timestamp_micros(fired.value(i)),
                DateTime::from_timestamp_micros(notified.value(i)),
            ) else {
                continue;
            };
            let name = rule.value(i);
            alerting.book.lock().restore(
                name,
                key.value(i),
                fired_at,
                last,
                serde_json::Value::Null,
            );
            restored += 1;
            let judged = registry
                .get(name)
                .is_some_and(|q| q.alert.is_some() && q.schedule.is_some());
            if !judged {
                retired.insert(name.to_string());
            }
        }
    }
    let now = Utc::now();
    for name in retired {
        let notices = alerting.book.lock().retire(&name, now);
        notify(engine, alerting, notices).await;
    }
    if restored > 0 {
        tracing::info!(
            alerts = restored,
            "alerts firing at the last stop are firing again (without being sent again)"
        );
    }
    alerting.set_restored();
    Ok(())
}

/// The latest scheduled time each query ran for, and the latest it ran for without
/// an error, from `query_runs` (empty if it cannot be read: then nothing is caught
/// up).
async fn last_scheduled(
    engine: &QueryEngine,
) -> (
    HashMap<String, DateTime<Utc>>,
    HashMap<String, DateTime<Utc>>,
) {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::TimestampMicrosecondType;
    let sql = "SELECT name, max(scheduled_for) AS last, \
               max(CASE WHEN error IS NULL THEN scheduled_for END) AS succeeded \
               FROM query_runs GROUP BY name";
    let batches = match engine.collect(sql).await {
        Ok((_, b)) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read query_runs: no catch-up of runs missed while stopped");
            return Default::default();
        }
    };
    let (mut last, mut succeeded) = (HashMap::new(), HashMap::new());
    for batch in &batches {
        let (Some(names), Some(times), Some(ok)) = (
            batch.column(0).as_string_opt::<i32>(),
            batch
                .column(1)
                .as_primitive_opt::<TimestampMicrosecondType>(),
            batch
                .column(2)
                .as_primitive_opt::<TimestampMicrosecondType>(),
        ) else {
            continue;
        };
        for i in 0..batch.num_rows() {
            let name = names.value(i);
            for (column, into) in [(times, &mut last), (ok, &mut succeeded)] {
                if column.is_valid(i)
                    && let Some(t) = DateTime::from_timestamp_micros(column.value(i))
                {
                    into.insert(name.to_string(), t);
                }
            }
        }
    }
    (last, succeeded)
}

/// Runs `q` as of `at` and records the run (and its first rows) in `runs`.
pub async fn run_once(
    engine: &QueryEngine,
    q: &QueryFile,
    at: DateTime<Utc>,
    trigger: Trigger,
    runs: &RunLog,
) -> (RunRecord, Option<Vec<serde_json::Value>>) {
    let started_at = Utc::now();
    let clock = Instant::now();
    let result = run::collect(engine, q, at, &BTreeMap::new()).await;
    let duration_ms = clock.elapsed().as_secs_f64() * 1000.0;
    let (rows, error, result_rows) = match result {
        Ok((_, batches)) => {
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let limit = if q.alert.is_some() {
                ALERT_ROWS
            } else {
                RESULT_ROWS
            };
            match rows_json(&batches, limit) {
                serde_json::Value::Array(json) => (rows as i64, None, Some(json)),
                _ => (
                    rows as i64,
                    Some("the result could not be read as JSON rows".to_string()),
                    None,
                ),
            }
        }
        Err(e) => (0, Some(e.to_string()), None),
    };
    let record = RunRecord {
        name: q.name.clone(),
        scheduled_for: at,
        started_at,
        duration_ms,
        rows,
        error,
        trigger,
    };
    let shown = result_rows
        .as_ref()
        .map(|r| serde_json::Value::Array(r.iter().take(RESULT_ROWS).cloned().collect()));
    finish(record.clone(), shown, runs);
    (record, result_rows)
}

/// Logs a run and keeps it in `runs`.
fn finish(record: RunRecord, shown: Option<serde_json::Value>, runs: &RunLog) {
    let (name, at) = (&record.name, record.scheduled_for);
    match &record.error {
        Some(e) => {
            tracing::warn!(query = %name, scheduled_for = %at, error = %e, "saved query failed")
        }
        None => {
            tracing::debug!(query = %name, scheduled_for = %at, rows = record.rows, duration_ms = record.duration_ms, "saved query ran")
        }
    }
    runs.record(record, shown);
}

/// Runs rollup `q` as of `at`: recomputes the buckets of its window at `since`
/// through `at`, and records the run (its rows are the rows written).
pub async fn run_rollup(
    engine: &Arc<Engine>,
    q: &QueryFile,
    at: DateTime<Utc>,
    since: DateTime<Utc>,
    trigger: Trigger,
    runs: &RunLog,
) -> RunRecord {
    let started_at = Utc::now();
    let clock = Instant::now();
    let from = rollup::window_at(q, since.min(at)).from;
    let result = rollup::refresh(engine, q, from, at, &BTreeMap::new(), false, |_, _| {}).await;
    let (rows, error) = match result {
        Ok(done) => (i64::try_from(done.rows).unwrap_or(i64::MAX), None),
        Err(e) => (0, Some(e)),
    };
    let record = RunRecord {
        name: q.name.clone(),
        scheduled_for: at,
        started_at,
        duration_ms: clock.elapsed().as_secs_f64() * 1000.0,
        rows,
        error,
        trigger,
    };
    finish(record.clone(), None, runs);
    record
}

/// The first `limit` rows as a JSON array of objects.
pub(crate) fn rows_json(
    batches: &[arrow::record_batch::RecordBatch],
    limit: usize,
) -> serde_json::Value {
    let mut left = limit;
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for batch in batches {
        if left == 0 {
            break;
        }
        let take = batch.num_rows().min(left);
        if writer.write(&batch.slice(0, take)).is_err() {
            return serde_json::Value::Null;
        }
        left -= take;
    }
    if writer.finish().is_err() {
        return serde_json::Value::Null;
    }
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return serde_json::json!([]);
    }
    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
}
