//! Rollups against a real engine: runs over time with late rows, reruns, a changed
//! query, and the direct aggregate they must equal.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::rollup::{self, Window};
use super::runs::{RunLog, Trigger};
use super::{QueryFile, file, run, scheduler};
use crate::engine::tests::settings;
use crate::engine::{Engine, Mode};
use crate::model::tests::sample_delivery;

/// 2026-11-02T00:00:00Z.
const T0_US: i64 = 1_793_577_600_000_000;
const MIN_US: i64 = 60_000_000;

const ROLLUP: &str = "-- name: per_hour
-- schedule: every 10m
-- materialize: true
-- bucket: 1h
-- lookback: 2
SELECT date_bin(INTERVAL '1 hour', received_at) AS hour, source,
       count(*) AS n, sum(payload_size) AS bytes,
       sum(CASE WHEN is_duplicate THEN 1 ELSE 0 END) AS duplicates
FROM deliveries
WHERE received_at >= :from AND received_at < :to
GROUP BY 1, 2";

fn at(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap()
}

fn query(text: &str) -> QueryFile {
    file::parse("test:per_hour.sql", "per_hour", text).unwrap()
}

async fn ingest(engine: &Engine, n: &mut u32, source: &str, at_us: i64, size: i64) {
    *n += 1;
    let mut d = sample_delivery();
    d.id = format!("01JDQ8ZC9X{:016}", *n);
    d.provider_attempt = None;
    d.received_at_us = at_us;
    d.source = source.into();
    // Every third delivery repeats an earlier one's key: duplicates are counted too.
    d.dedup_key = format!("k{}", *n - u32::from(n.is_multiple_of(3)));
    d.payload_size = size;
    engine.ingest(d).await.unwrap();
}

async fn json(engine: &Engine, sql: &str) -> Vec<Value> {
    let (_, batches) = engine.query().collect(sql).await.unwrap();
    match scheduler::rows_json(&batches, usize::MAX) {
        Value::Array(rows) => rows,
        other => panic!("{other}"),
    }
}

/// The rollup's rows, in order.
async fn rollup_rows(engine: &Engine) -> Vec<Value> {
    json(
        engine,
        "SELECT * FROM rollup_per_hour ORDER BY hour, source",
    )
    .await
}

/// The same aggregate computed from the raw table over `[from, to)`.
async fn direct(engine: &Engine, q: &QueryFile, from: i64, to: i64) -> Vec<Value> {
    let window = Window {
        from: at(from),
        to: at(to),
    };
    let (_, batches) = run::collect_window(engine.query(), q, window, &BTreeMap::new())
        .await
        .unwrap();
    let mut rows = match scheduler::rows_json(&batches, usize::MAX) {
        Value::Array(rows) => rows,
        other => panic!("{other}"),
    };
    rows.sort_by_key(|r| (r["hour"].to_string(), r["source"].to_string()));
    rows
}

#[test]
fn windows_are_the_lookback_buckets_before_the_run() {
    let q = query(ROLLUP);
    let w = rollup::window_at(&q, at(T0_US + 5 * MIN_US));
    assert_eq!(
        (w.from, w.to),
        (at(T0_US - 60 * MIN_US), at(T0_US + 5 * MIN_US))
    );
    // On a bucket boundary the bucket that just ended is the newest.
    let w = rollup::window_at(&q, at(T0_US));
    assert_eq!(w.from, at(T0_US - 120 * MIN_US));
    // Chunks: whole buckets, a day at most, the last one ending at `to`.
    let chunks = rollup::chunks(&q, at(T0_US - 30 * MIN_US), at(T0_US + 30 * 60 * MIN_US));
    assert_eq!(chunks.first().unwrap().from, at(T0_US - 60 * MIN_US));
    assert_eq!(chunks.last().unwrap().to, at(T0_US + 30 * 60 * MIN_US));
    assert!(chunks.windows(2).all(|w| w[0].to == w[1].from));
    assert!(
        chunks
            .iter()
            .all(|c| c.to - c.from <= chrono::Duration::days(1))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollup_over_many_runs_with_late_rows_equals_the_direct_aggregate() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(settings(dir.path()), Mode::Serve)
        .await
        .unwrap();
    let q = query(ROLLUP);
    let runs = RunLog::default();
    let mut n = 0;
    // Five hours of runs every 10 minutes. Before each run, rows arrive for the
    // 10 minutes since the last one, and late rows for the previous hour (inside the
    // lookback); some runs follow a flush, so the rollup reads files and the buffer.
    let mut late_outside = 0;
    for step in 1..=30 {
        let now = T0_US + step * 10 * MIN_US;
        for i in 0..7 {
            let t = now - 10 * MIN_US + i * 80_000_000;
            ingest(
                &engine,
                &mut n,
                if i % 2 == 0 { "a" } else { "b" },
                t,
                100 + i,
            )
            .await;
        }
        if step > 6 {
            ingest(&engine, &mut n, "b", now - 70 * MIN_US, 5).await;
        }
        if step % 4 == 0 {
            engine.flush().await.unwrap();
        }
        // A row far behind the run (three hours): outside the lookback, so scheduled
        // runs do not count it; a backfill does.
        if step == 25 {
            ingest(&engine, &mut n, "a", now - 180 * MIN_US, 7).await;
            late_outside += 1;
        }
        let record =
            scheduler::run_rollup(&engine, &q, at(now), at(now), Trigger::Schedule, &runs).await;
        assert_eq!(record.error, None, "run at step {step}");
    }
    let end = T0_US + 300 * MIN_US;
    let rolled = rollup_rows(&engine).await;
    let raw = direct(&engine, &q, T0_US, end).await;
    assert_eq!(rolled.len(), raw.len(), "{rolled:?}\n{raw:?}");
    let total = |rows: &[Value]| rows.iter().map(|r| r["n"].as_i64().unwrap()).sum::<i64>();
    assert_eq!(total(&rolled) + late_outside, total(&raw));
    assert!(total(&raw) > 200 && rolled.iter().any(|r| r["duplicates"].as_i64() > Some(0)));

    // The buckets since the far-late row, recomputed: the rollup equals the
    // aggregate, row for row.
    rollup::refresh(
        &engine,
        &q,
        at(T0_US),
        at(end),
        &BTreeMap::new(),
        false,
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(rollup_rows(&engine).await, raw);
    // A rerun changes nothing, and the rollup holds one file per day.
    let record =
        scheduler::run_rollup(&engine, &q, at(end), at(end), Trigger::Schedule, &runs).await;
    assert_eq!(record.error, None);
    assert_eq!(rollup_rows(&engine).await, raw);
    let files = engine.catalog().manifest().files("rollup_per_hour").len();
    assert_eq!(files, 1, "one day of buckets is one file");

    // Buckets the query computes off the rollup's boundaries are refused.
    let halves = query(&ROLLUP.replace("INTERVAL '1 hour'", "INTERVAL '30 minutes'"));
    let record =
        scheduler::run_rollup(&engine, &halves, at(end), at(end), Trigger::Schedule, &runs).await;
    let error = record.error.unwrap();
    assert!(
        error.contains("not on a boundary") && error.contains("date_bin"),
        "{error}"
    );
    assert_eq!(rollup_rows(&engine).await, raw);

    // The query changes its columns: runs are refused (the rollup is kept) until a
    // rebuild replaces it.
    let changed =
        query(&ROLLUP.replace("sum(payload_size) AS bytes", "max(payload_size) AS largest"));
    let record = scheduler::run_rollup(
        &engine,
        &changed,
        at(end),
        at(end),
        Trigger::Schedule,
        &runs,
    )
    .await;
    let error = record.error.unwrap();
    assert!(
        error.contains("--rebuild") && error.contains("largest"),
        "{error}"
    );
    assert_eq!(rollup_rows(&engine).await, raw);
    let from = rollup::window_at(&changed, at(end)).from;
    rollup::refresh(
        &engine,
        &changed,
        from,
        at(end),
        &BTreeMap::new(),
        true,
        |_, _| {},
    )
    .await
    .unwrap();
    let rows = rollup_rows(&engine).await;
    assert!(
        !rows.is_empty()
            && rows
                .iter()
                .all(|r| r.get("largest").is_some() && r.get("bytes").is_none())
    );
    assert!(
        rows.iter()
            .all(|r| r["hour"].as_str() >= Some("2026-11-02T03:00:00")),
        "{rows:?}"
    );
    engine.shutdown().await.unwrap();

    // After a restart the rollup is still there, read from its files.
    let engine = Engine::open(settings(dir.path()), Mode::ReadOnly)
        .await
        .unwrap();
    assert_eq!(rollup_rows(&engine).await, rows);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollup_whose_first_column_is_not_a_time_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(settings(dir.path()), Mode::Serve)
        .await
        .unwrap();
    let mut n = 0;
    ingest(&engine, &mut n, "a", T0_US + MIN_US, 10).await;
    let q = query(
        "-- materialize: true\n-- bucket: 1h\nSELECT source, count(*) AS n FROM deliveries \
         WHERE received_at >= :from AND received_at < :to GROUP BY 1",
    );
    let err = rollup::refresh(
        &engine,
        &q,
        at(T0_US),
        at(T0_US + 60 * MIN_US),
        &BTreeMap::new(),
        false,
        |_, _| {},
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("first column `source`") && err.contains("date_bin"),
        "{err}"
    );
    assert!(
        engine
            .catalog()
            .manifest()
            .files("rollup_per_hour")
            .is_empty()
    );
}
