//! Engine tests: flushes driven step by step, restarts, budgets, read-only opens.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::{Array as _, AsArray};
use arrow::datatypes::DataType;
use parking_lot::Mutex;

use super::*;
use crate::config::Config;
use crate::lake::Lake;
use crate::lake::manifest::Manifest;
use crate::model::tests::sample_delivery;
use crate::model::{Delivery, ForwardResult};

pub(crate) fn settings(dir: &Path) -> EngineSettings {
    EngineSettings::from_config(&Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    })
}

fn delivery(id: &str) -> Delivery {
    let mut d = sample_delivery();
    d.id = id.to_string();
    d.provider_attempt = None;
    d
}

/// How many rows of `table` have `id`, as a fresh open of the directory (the
/// next start after a crash, read-only) sees them.
async fn rows_after_a_crash(dir: &Path, table: &str, id: &str) -> i64 {
    let engine = Engine::open(settings(dir), Mode::ReadOnly).await.unwrap();
    let (_, batches) = engine
        .query()
        .collect(&format!("SELECT count(*) FROM {table} WHERE id = '{id}'"))
        .await
        .unwrap();
    batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0)
}

/// Where a read-only open of a directory pauses between reading the manifest and
/// the WAL: (directory, "reached" signal, "go on" signal).
type Pause = (
    PathBuf,
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
);
/// One pause per directory: tests that pause run at the same time.
static PAUSE: Mutex<Vec<Pause>> = Mutex::new(Vec::new());

pub(super) async fn pause_before_the_wal(dir: &Path) {
    let pause = {
        let mut pauses = PAUSE.lock();
        pauses
            .iter()
            .position(|(d, _, _)| d == dir)
            .map(|i| pauses.swap_remove(i))
            .map(|(_, reached, go_on)| (reached, go_on))
    };
    if let Some((reached, go_on)) = pause {
        let _ = reached.send(());
        let _ = go_on.await;
    }
}

/// Deliveries a read-only open counts when a server with 20 of them in its WAL
/// flushes (commits and releases the WAL segments) after the open read the manifest
/// and before it reads the WAL; `prepare` runs on the directory before the open.
async fn rows_seen_by_an_open_during_a_flush(prepare: impl FnOnce(&Path)) -> i64 {
    let dir = tempfile::tempdir().unwrap();
    let server = Engine::open(settings(dir.path()), Mode::Serve)
        .await
        .unwrap();
    for i in 0..20 {
        server.ingest(delivery(&format!("live-{i}"))).await.unwrap();
    }
    prepare(dir.path());
    let (reached_tx, reached) = tokio::sync::oneshot::channel();
    let (go_on, go_on_rx) = tokio::sync::oneshot::channel();
    PAUSE
        .lock()
        .push((dir.path().to_path_buf(), reached_tx, go_on_rx));
    let path = dir.path().to_path_buf();
    let reader = tokio::spawn(async move { Engine::open(settings(&path), Mode::ReadOnly).await });
    reached.await.unwrap();
    let flushed = server.flush().await.unwrap();
    assert_eq!(flushed.rows, 20);
    assert_eq!(server.catalog().manifest().version, 1);
    go_on.send(()).unwrap();
    let reader = reader.await.unwrap().unwrap();
    let (_, batches) = reader
        .query()
        .collect("SELECT count(*) FROM deliveries")
        .await
        .unwrap();
    batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_read_sees_every_row_of_a_lake_that_flushes_meanwhile() {
    // The reader has the manifest (no files yet) when the server flushes.
    let n = rows_seen_by_an_open_during_a_flush(|_| {}).await;
    assert_eq!(n, 20, "the offline read missed rows");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_read_behind_a_torn_newest_manifest_sees_the_rows_its_rewrite_commits() {
    // A crash left version 1 torn: the reader reads version 0 and lists 1 as the
    // newest, and the server's flush writes version 1 again.
    let n = rows_seen_by_an_open_during_a_flush(|dir| {
        let manifests = dir.join(crate::lake::manifest::DIR);
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(
            manifests.join("00000000000000000001.json"),
            r#"{"format": 3, "vers"#,
        )
        .unwrap();
    })
    .await;
    assert_eq!(n, 20, "the offline read missed rows");
}

impl Engine {
    /// Stops the WAL without a flush, as a crash would leave the directory.
    async fn stop_without_flush(&self) {
        if let Some(wal) = &self.wal {
            wal.shutdown().await;
        }
    }
}

/// (id, attempt as answered) for `arrivals` ingested one by one; with `chaos`, the
/// engine flushes and restarts (without a flush) at random points.
async fn ingest_with_chaos(
    dir: &Path,
    settings: &EngineSettings,
    arrivals: &[(String, String, i64)],
    mut chaos: Option<&mut dyn FnMut() -> u64>,
) -> Vec<(String, i32)> {
    let mut engine = Engine::open(settings.clone(), Mode::Serve).await.unwrap();
    let mut answered = Vec::new();
    for (i, (source, key, at)) in arrivals.iter().enumerate() {
        let mut d = delivery(&format!("d{i:04}"));
        d.source = source.clone();
        d.dedup_key = key.clone();
        d.received_at_us = *at;
        answered.push((d.id.clone(), engine.ingest(d).await.unwrap().attempt));
        if let Some(roll) = chaos.as_mut() {
            match roll() % 12 {
                0 | 1 => {
                    engine.flush().await.unwrap();
                }
                2 => {
                    engine.stop_without_flush().await;
                    drop(engine);
                    engine = Engine::open(settings.clone(), Mode::Serve).await.unwrap();
                }
                _ => {}
            }
        }
    }
    engine.shutdown().await.unwrap();
    drop(engine);
    let _ = dir;
    answered
}

#[tokio::test]
async fn attempts_after_restarts_are_exactly_the_live_ones() {
    for seed in 1..=10u64 {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // A window of 10 s and room for 7 arrivals: keys expire and are trimmed.
        let mut at = 1_732_300_000_000_000i64;
        let arrivals: Vec<(String, String, i64)> = (0..120)
            .map(|_| {
                at += (next() % 3_000_000) as i64;
                let source = if next() % 4 == 0 { "b" } else { "a" };
                (source.to_string(), format!("k{}", next() % 9), at)
            })
            .collect();
        let configure = |dir: &Path| {
            let mut s = settings(dir);
            s.dedup_window = Duration::from_secs(10);
            s.dedup_max_keys = 7;
            s
        };
        let live_dir = tempfile::tempdir().unwrap();
        let live = ingest_with_chaos(
            live_dir.path(),
            &configure(live_dir.path()),
            &arrivals,
            None,
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let settings = configure(dir.path());
        let restarted = ingest_with_chaos(dir.path(), &settings, &arrivals, Some(&mut next)).await;
        assert_eq!(
            restarted, live,
            "seed {seed}: attempts differ after restarts"
        );
        // What is stored says the same.
        let engine = Engine::open(settings, Mode::ReadOnly).await.unwrap();
        let (_, batches) = engine
            .query()
            .collect("SELECT id, attempt FROM deliveries ORDER BY id")
            .await
            .unwrap();
        let stored: Vec<(String, i32)> = batches
            .iter()
            .flat_map(|b| {
                let ids = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
                let ids = ids.as_string::<i32>().clone();
                let attempts = b
                    .column(1)
                    .as_primitive::<arrow::datatypes::Int32Type>()
                    .clone();
                (0..b.num_rows())
                    .map(|i| (ids.value(i).to_string(), attempts.value(i)))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(stored, live, "seed {seed}: stored attempts");
    }
}

/// Ingests a delivery of `key` (source "a") at `at_us`; its attempt.
async fn arrive(engine: &Engine, id: &str, key: &str, at_us: i64) -> i32 {
    let mut d = delivery(id);
    d.source = "a".into();
    d.dedup_key = key.into();
    d.received_at_us = at_us;
    engine.ingest(d).await.unwrap().attempt
}

#[tokio::test]
async fn unreadable_dedup_state_is_replaced_by_a_checkpoint_of_the_rebuilt_index() {
    let dir = tempfile::tempdir().unwrap();
    let at = chrono::Utc::now().timestamp_micros() - 60_000_000;
    let engine = Engine::open(settings(dir.path()), Mode::Serve)
        .await
        .unwrap();
    assert_eq!(arrive(&engine, "d1", "k", at).await, 1);
    engine.shutdown().await.unwrap();
    drop(engine);
    // The state file is lost (or damaged, or from a newer build).
    let manifest = Manifest::load(&Lake::local(dir.path()).unwrap())
        .await
        .unwrap();
    for f in manifest.dedup_paths() {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    let engine = Engine::open(settings(dir.path()), Mode::Serve)
        .await
        .unwrap();
    // Rebuilt from the lake, the count goes on.
    assert_eq!(arrive(&engine, "d2", "k", at + 1_000_000).await, 2);
    engine.flush().await.unwrap();
    let dedup = engine.catalog.manifest().dedup.clone().unwrap();
    assert_eq!(dedup.files.len(), 1, "{dedup:?}");
    assert!(dedup.files[0].ends_with(".checkpoint"), "{dedup:?}");
    engine.shutdown().await.unwrap();
    drop(engine);
    // The next start reads the new state, with no rebuild.
    let engine = Engine::open(settings(dir.path()), Mode::Serve)
        .await
        .unwrap();
    assert!(!engine.dedup_rebase.load(Ordering::Relaxed));
    assert_eq!(arrive(&engine, "d3", "k", at + 2_000_000).await, 3);
}

#[tokio::test]
async fn a_cut_whose_flush_was_abandoned_still_reaches_the_persisted_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.dedup_max_keys = 1;
    let at = 1_732_300_000_000_000;
    let engine = Engine::open(s.clone(), Mode::Serve).await.unwrap();
    arrive(&engine, "d1", "a", at).await;
    // A flush rotates the WAL and is abandoned before it takes its cut.
    engine.wal.as_ref().unwrap().rotate().await.unwrap();
    // "b" pushes out "a" (one key only): the pop belongs to the next cut.
    assert_eq!(arrive(&engine, "d2", "b", at + 1).await, 1);
    engine.flush().await.unwrap();
    engine.stop_without_flush().await;
    drop(engine);
    let engine = Engine::open(s, Mode::Serve).await.unwrap();
    assert_eq!(
        arrive(&engine, "d3", "b", at + 2).await,
        2,
        "b was forgotten"
    );
}

#[tokio::test]
async fn a_forwards_answer_is_recorded_even_when_the_buffer_is_over_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.flush_bytes = 64 << 10; // a budget of 256 KiB
    let engine = Engine::open(s, Mode::Serve).await.unwrap();
    engine.begin_forward(delivery("fwd")).await.unwrap();
    let mut big = delivery("big");
    big.body = crate::model::StoredBody::Text("x".repeat(300 << 10));
    engine.ingest(big).await.unwrap();
    assert!(matches!(
        engine.ingest(delivery("refused")).await,
        Err(IngestError::Overloaded { .. })
    ));
    let answer = ForwardResult {
        id: "fwd".into(),
        completed_at_us: 1,
        status_code: 200,
        upstream_status: Some(200),
        upstream_latency_ms: Some(3.0),
        upstream_error: None,
    };
    engine.finish_forward(answer).await.unwrap();
    assert!(engine.open_forwards.oldest().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_cannot_overrun_the_buffer_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.flush_bytes = 1 << 20; // a budget of 4 MiB
    let engine = Engine::open(settings, Mode::Serve).await.unwrap();
    let body = crate::model::StoredBody::Text("x".repeat(256 << 10));
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let engine = Arc::clone(&engine);
            let mut d = delivery(&format!("big-{i}"));
            d.body = body.clone();
            tokio::spawn(async move { engine.ingest(d).await })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(IngestError::Overloaded { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    // 16 records of 256 KiB fill 4 MiB; their headers and fields take a little more.
    assert!(
        (8..=16).contains(&accepted),
        "{accepted} of 64 accepted into a 4 MiB budget"
    );
    assert_eq!(
        engine.reserved.load(Ordering::Relaxed),
        0,
        "reservations returned"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scans_of_large_stored_rows_pass_the_batch_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.query.memory_limit = 256 << 20; // batches up to 64 MiB
    let engine = Engine::open(s, Mode::Serve).await.unwrap();
    let body = crate::model::StoredBody::Text("b".repeat(30 << 10));
    for i in 0..2400 {
        let mut d = delivery(&format!("wide-{i:04}"));
        d.body = body.clone();
        engine.ingest(d).await.unwrap();
    }
    engine.flush().await.unwrap();
    // 70 MiB of bodies in one Parquet batch: stored rows, not growth.
    for sql in [
        "SELECT sum(length(body)) FROM deliveries",
        "SELECT count(*) FROM deliveries WHERE body LIKE '%zzz%'",
        "SELECT id FROM deliveries ORDER BY id LIMIT 3",
    ] {
        engine.query().collect(sql).await.expect(sql);
    }
}

#[tokio::test]
async fn a_forward_answered_while_a_flush_runs_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(settings(dir.path()), Mode::Serve)
        .await
        .unwrap();
    engine.begin_forward(delivery("fwd-1")).await.unwrap();
    let wal = engine.wal.as_ref().unwrap();
    // A flush cuts the WAL with the forward still open; the app answers while the
    // flush encodes; the flush commits and releases.
    let _flushing = engine.flush_lock.lock().await;
    let cut = engine.cut(wal).await.unwrap();
    let answer = ForwardResult {
        id: "fwd-1".into(),
        completed_at_us: 1_732_300_000_200_000,
        status_code: 200,
        upstream_status: Some(200),
        upstream_latency_ms: Some(80.0),
        upstream_error: None,
    };
    engine.finish_forward(answer).await.unwrap();
    engine
        .write_cut(wal, cut, Instant::now(), 1.0)
        .await
        .unwrap();
    // The process dies before the next flush.
    assert_eq!(
        rows_after_a_crash(dir.path(), "deliveries", "fwd-1").await,
        1
    );
    assert_eq!(rows_after_a_crash(dir.path(), "outcomes", "fwd-1").await, 1);
}

#[tokio::test]
async fn a_read_only_open_numbers_the_wal_s_arrivals_after_the_committed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let at = chrono::Utc::now().timestamp_micros() - 60_000_000;
    let engine = Engine::open(settings(dir.path()), Mode::Serve)
        .await
        .unwrap();
    assert_eq!(arrive(&engine, "first", "k", at).await, 1);
    engine.flush().await.unwrap();
    assert_eq!(arrive(&engine, "second", "k", at + 1_000_000).await, 2);
    engine.stop_without_flush().await;
    drop(engine);
    let reader = Engine::open(settings(dir.path()), Mode::ReadOnly)
        .await
        .unwrap();
    let (_, batches) = reader
        .query()
        .collect("SELECT attempt, retry_gap_ms FROM deliveries WHERE id = 'second'")
        .await
        .unwrap();
    let b = &batches[0];
    assert_eq!(
        b.column(0)
            .as_primitive::<arrow::datatypes::Int32Type>()
            .value(0),
        2
    );
    assert_eq!(
        b.column(1)
            .as_primitive::<arrow::datatypes::Float64Type>()
            .value(0),
        1000.0
    );
}

/// (rows, distinct ids, sum of payload sizes) of deliveries, as `engine` sees them.
async fn checksum(engine: &Engine) -> (i64, i64, i64) {
    let (_, batches) = engine
        .query()
        .collect("SELECT count(*), count(DISTINCT id), sum(payload_size) FROM deliveries")
        .await
        .unwrap();
    let b = &batches[0];
    let v = |i: usize| {
        b.column(i)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
    };
    (v(0), v(1), v(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_every_row_exactly_once_while_queries_run() {
    use crate::lake::compact::Policy;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.query.timeout = Duration::from_secs(2);
    let engine = Engine::open(s, Mode::Serve).await.unwrap();
    // Two hours back: the previous hour is not settled in the first minutes of an hour.
    let hour_ago = chrono::Utc::now().timestamp_micros() - 2 * 3_600_000_000;
    // Twelve flushes: twelve small files per table in one past hour's partition.
    for f in 0..12 {
        for i in 0..25 {
            let mut d = delivery(&format!("d{f}-{i}"));
            d.received_at_us = hour_ago - hour_ago % 3_600_000_000 + f * 1000 + i;
            d.payload_size = f * 100 + i;
            engine.ingest(d).await.unwrap();
        }
        engine.flush().await.unwrap();
    }
    let before = checksum(&engine).await;
    assert_eq!(before.0, 300);
    let files_before = engine
        .catalog()
        .manifest()
        .files(Table::Deliveries)
        .to_vec();
    assert_eq!(files_before.len(), 12);

    // Queries keep running while the files are swapped.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let engine = Arc::new(engine);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut seen = 0;
                while !stop.load(Ordering::Acquire) {
                    assert_eq!(checksum(&engine).await, before, "a query saw other rows");
                    seen += 1;
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = engine.compact(&Policy::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Release);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    assert_eq!(report.merged_files, 12, "{report:?}");
    assert_eq!(report.written_files, 1, "{report:?}");
    assert_eq!(checksum(&engine).await, before);
    let after = engine
        .catalog()
        .manifest()
        .files(Table::Deliveries)
        .to_vec();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].rows, 300);

    // The replaced files stay until no query planned before the swap can run.
    let on_disk = |p: &str| dir.path().join(p).exists();
    assert!(files_before.iter().all(|f| on_disk(&f.path)));
    assert_eq!(engine.retired_files(), 12);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let again = engine.compact(&Policy::default()).await.unwrap();
    assert_eq!((again.merged_files, again.deleted), (0, 12));
    assert!(files_before.iter().all(|f| !on_disk(&f.path)));
    assert!(on_disk(&after[0].path));

    // A restart reads the same rows; the merged file is sorted by time.
    engine.shutdown().await.unwrap();
    drop(engine);
    let reopened = Engine::open(settings(dir.path()), Mode::ReadOnly)
        .await
        .unwrap();
    assert_eq!(checksum(&reopened).await, before);
    let (_, batches) = reopened
        .query()
        .collect("SELECT received_at FROM deliveries")
        .await
        .unwrap();
    let times: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .values()
                .to_vec()
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not sorted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_compactions_at_once_swap_each_file_once() {
    use crate::lake::compact::Policy;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(settings(dir.path()), Mode::Serve)
        .await
        .unwrap();
    // Two hours back: the previous hour is not settled in the first minutes of an hour.
    let hour_ago = chrono::Utc::now().timestamp_micros() - 2 * 3_600_000_000;
    let base = hour_ago - hour_ago % 3_600_000_000;
    for f in 0..6 {
        let mut d = delivery(&format!("old-{f}"));
        d.received_at_us = base + f;
        engine.ingest(d).await.unwrap();
        engine.flush().await.unwrap();
    }
    let before = checksum(&engine).await;
    // Both plan the same group; the second to commit finds its inputs gone.
    let policy = Policy::default();
    let (a, b) = tokio::join!(engine.compact(&policy), engine.compact(&policy));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.merged_files + b.merged_files, 6, "{a:?} {b:?}");
    assert_eq!(a.skipped + b.skipped, 1, "{a:?} {b:?}");
    assert_eq!(checksum(&engine).await, before);
    assert_eq!(
        engine.catalog().manifest().files(Table::Deliveries).len(),
        1
    );
    // The loser's merged file was removed: on disk are the committed file and the
    // six it replaced, retired until no query can read them.
    let retired = engine.retired_files();
    assert_eq!(retired, 6);
    engine.shutdown().await.unwrap();
    let on_disk = walk(&dir.path().join("deliveries"));
    assert_eq!(on_disk.len(), 1 + retired, "{on_disk:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Deliveries `hours_ago` (at least two: a settled hour) in `flushes` files of the
/// same partition.
async fn small_files(engine: &Engine, flushes: i64, prefix: &str, hours_ago: i64) {
    let t = chrono::Utc::now().timestamp_micros() - hours_ago * 3_600_000_000;
    let base = t - t % 3_600_000_000;
    for f in 0..flushes {
        let mut d = delivery(&format!("{prefix}-{f}"));
        d.received_at_us = base + f;
        engine.ingest(d).await.unwrap();
        engine.flush().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_files_outlive_a_restart_for_readers_that_planned_them() {
    use crate::lake::compact::Policy;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(settings(dir.path()), Mode::Serve)
        .await
        .unwrap();
    small_files(&engine, 4, "r", 2).await;
    // Another process reads the lake as it is now (four files).
    let reader = Engine::open(settings(dir.path()), Mode::ReadOnly)
        .await
        .unwrap();
    assert_eq!(
        engine
            .compact(&Policy::default())
            .await
            .unwrap()
            .merged_files,
        4
    );
    engine.shutdown().await.unwrap();
    drop(engine);
    // The next start keeps the replaced files: their grace is not over.
    let engine = Engine::open(settings(dir.path()), Mode::Serve)
        .await
        .unwrap();
    assert_eq!(engine.retired_files(), 4);
    assert_eq!(checksum(&reader).await.0, 4, "the reader lost its files");
    assert_eq!(checksum(&engine).await.0, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_cannot_be_merged_does_not_stop_the_others() {
    use crate::lake::compact::Policy;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(settings(dir.path()), Mode::Serve)
        .await
        .unwrap();
    small_files(&engine, 3, "bad", 4).await;
    small_files(&engine, 3, "good", 3).await;
    // One file of the older partition is damaged on disk.
    let damaged = engine.catalog().manifest().files(Table::Deliveries)[0]
        .path
        .clone();
    std::fs::write(dir.path().join(&damaged), b"not parquet").unwrap();
    let report = engine.compact(&Policy::default()).await.unwrap();
    assert_eq!(report.failed, 1, "{report:?}");
    assert_eq!(report.merged_files, 3, "{report:?}");
    let files = engine
        .catalog()
        .manifest()
        .files(Table::Deliveries)
        .to_vec();
    assert_eq!(
        files.len(),
        4,
        "three damaged-partition files and one merged"
    );
    assert!(files.iter().any(|f| f.path == damaged));
}

#[tokio::test]
async fn a_version_that_may_have_been_committed_is_never_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(settings(dir.path()), Mode::Serve)
        .await
        .unwrap();
    engine.ingest(delivery("a")).await.unwrap();
    engine.flush().await.unwrap();
    let current = engine.catalog().manifest();
    // A commit of the next version was renamed into place but not confirmed: the
    // catalog stays where it was, and the next commit must not reuse its number.
    let unconfirmed = current.next_version(chrono::Utc::now().timestamp_micros());
    engine.raise_floors(&unconfirmed);
    engine.ingest(delivery("b")).await.unwrap();
    engine.flush().await.unwrap();
    assert_eq!(engine.catalog().manifest().version, unconfirmed.version + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_partitions_past_the_horizon_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.retention = vec![(Table::Deliveries, 30)];
    s.query.timeout = Duration::from_secs(1);
    let engine = Arc::new(Engine::open(s, Mode::Serve).await.unwrap());
    const DAY: i64 = 86_400_000_000;
    const HOUR: i64 = 3_600_000_000;
    let now = chrono::Utc::now().timestamp_micros();
    let horizon = now - 30 * DAY;
    // Two partitions wholly past the horizon, the one it falls inside, and newer.
    let times = [
        horizon - 3 * HOUR,
        horizon - 2 * HOUR,
        horizon - horizon.rem_euclid(HOUR),
        horizon + 1,
        now - DAY,
    ];
    for (i, t) in times.iter().enumerate() {
        let mut d = delivery(&format!("t{i}"));
        d.received_at_us = *t;
        d.payload_size = 10 + i as i64;
        engine.ingest(d).await.unwrap();
        engine.flush().await.unwrap();
    }
    let before = checksum(&engine).await;
    assert_eq!(before.0, 5);
    // Queries running meanwhile see the rows before or after, never a mix.
    let after = (3, 3, 12 + 13 + 14);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let seen = checksum(&engine).await;
                assert!(seen == before || seen == after, "{seen:?}");
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.apply_retention(now).await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Release);
    reader.await.unwrap();
    assert_eq!(checksum(&engine).await, after);
    // Nothing more to drop; the dropped files go after the grace.
    assert_eq!(engine.apply_retention(now).await.unwrap(), 0);
    assert_eq!(engine.retired_files(), 2);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(engine.delete_retired().await, 2);
    engine.shutdown().await.unwrap();
    let reopened = Engine::open(settings(dir.path()), Mode::ReadOnly)
        .await
        .unwrap();
    assert_eq!(checksum(&reopened).await, after);
}

/// Saved-query runs go through the WAL like deliveries: across flushes and restarts
/// without a flush, and in read-only opens beside them, each run is one row.
#[tokio::test]
async fn query_runs_survive_restarts_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let mut engine = Engine::open(settings.clone(), Mode::Serve).await.unwrap();
    let run = |i: i64| crate::model::QueryRun {
        name: format!("q{}", i % 3),
        scheduled_for_us: 1_700_000_000_000_000 + i * 60_000_000,
        started_at_us: 1_700_000_000_000_000 + i * 60_000_000 + 500,
        duration_ms: 1.5,
        rows: i,
        error: (i % 5 == 0).then(|| "failed".to_string()),
        trigger: "schedule".into(),
    };
    let count =
        "SELECT count(*) AS n, count(DISTINCT scheduled_for) AS d, sum(rows) AS s FROM query_runs";
    for i in 0..30 {
        engine.record_query_run(run(i)).await.unwrap();
        match i % 10 {
            3 => {
                engine.flush().await.unwrap();
            }
            7 => {
                engine.stop_without_flush().await;
                drop(engine);
                engine = Engine::open(settings.clone(), Mode::Serve).await.unwrap();
            }
            _ => {}
        }
    }
    let expected = (30, 30, (0..30).sum::<i64>());
    let read_only = Engine::open(settings.clone(), Mode::ReadOnly)
        .await
        .unwrap();
    for e in [&engine, &read_only] {
        let (_, batches) = e.query().collect(count).await.unwrap();
        let row = |c: usize| {
            batches[0]
                .column(c)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0)
        };
        assert_eq!((row(0), row(1), row(2)), expected);
    }
    engine.shutdown().await.unwrap();
}

/// `(id, payload_sha256, dedup_key)` of the deliveries that pass `filter`, by id,
/// as SQL sees them.
async fn derived_values(engine: &Engine, filter: &str) -> Vec<[String; 3]> {
    let (_, batches) = engine
        .query()
        .collect(&format!(
            "SELECT id, payload_sha256, dedup_key FROM deliveries {filter} ORDER BY id"
        ))
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in &batches {
        assert!(!b.schema().field(1).is_nullable());
        assert!(!b.schema().field(2).is_nullable());
        for i in 0..b.num_rows() {
            out.push([0, 1, 2].map(|c| b.column(c).as_string::<i32>().value(i).to_string()));
        }
    }
    out
}

/// `(id, payload_sha256, dedup_key)` of every row of a Parquet file, as stored.
fn stored_values(path: &Path) -> Vec<[Option<String>; 3]> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let columns = ["id", "payload_sha256", "dedup_key"]
            .map(|c| batch.column_by_name(c).unwrap().as_string::<i32>().clone());
        for i in 0..batch.num_rows() {
            out.push(
                columns
                    .each_ref()
                    .map(|c| c.is_valid(i).then(|| c.value(i).to_string())),
            );
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn derivable_columns_are_stored_only_where_the_row_cannot_give_them() {
    use crate::ingest::providers::sig::sha256_hex;
    use crate::model::StoredBody;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(settings(dir.path()), Mode::Serve)
        .await
        .unwrap();
    let text = r#"{"id":"evt_1","type":"invoice.paid"}"#;
    let binary = vec![0u8, 159, 146, 150, 255];
    let sha = |b: &[u8]| sha256_hex(b);
    // (id, body, its hash, event id, dedup key)
    let rows = [
        (
            "d1",
            StoredBody::Text(text.into()),
            sha(text.as_bytes()),
            Some("evt_1"),
            "evt_1".to_string(),
        ),
        (
            "d2",
            StoredBody::Binary(binary.clone()),
            sha(&binary),
            None,
            format!("sha256:{}", sha(&binary)),
        ),
        (
            "d3",
            StoredBody::Omitted,
            String::new(),
            Some("evt_3"),
            "evt_3".into(),
        ),
        (
            "d4",
            StoredBody::Text(String::new()),
            sha(b""),
            Some("evt_4"),
            "imported-key".into(),
        ),
        (
            "d5",
            StoredBody::Omitted,
            String::new(),
            None,
            "oversize:9000000".into(),
        ),
    ];
    let mut expected = Vec::new();
    let mut lags = Vec::new();
    for (n, (id, body, sha, event_id, key)) in rows.into_iter().enumerate() {
        let mut d = delivery(id);
        d.body = body;
        d.payload_sha256 = sha.clone();
        d.event_id = event_id.map(str::to_string);
        d.dedup_key = key.clone();
        d.sent_at_us = (id != "d2").then(|| d.received_at_us - 1500 * (n as i64 + 1));
        lags.push((id.to_string(), d.delivery_lag_ms()));
        engine.ingest(d).await.unwrap();
        expected.push([id.to_string(), sha, key]);
    }
    let delivery_lags = async |filter: &str| {
        let sql = format!("SELECT id, delivery_lag_ms FROM deliveries {filter} ORDER BY id");
        let (_, batches) = engine.query().collect(&sql).await.unwrap();
        let mut out = Vec::new();
        for b in &batches {
            let lag = b.column(1).as_primitive::<arrow::datatypes::Float64Type>();
            for i in 0..b.num_rows() {
                let id = b.column(0).as_string::<i32>().value(i).to_string();
                out.push((id, lag.is_valid(i).then(|| lag.value(i))));
            }
        }
        out
    };
    // In the buffer, then in a file.
    assert_eq!(derived_values(&engine, "").await, expected);
    assert_eq!(delivery_lags("").await, lags);
    engine.flush().await.unwrap();
    assert_eq!(derived_values(&engine, "").await, expected);
    assert_eq!(delivery_lags("").await, lags);
    assert_eq!(lags[2], ("d3".to_string(), Some(4.5)));
    assert_eq!(
        delivery_lags("WHERE delivery_lag_ms = 4.5").await,
        [lags[2].clone()]
    );
    for row in &expected {
        // A filter on a derived column finds its row in a file whose stored column
        // is null there (it must not be used to prune the file).
        for (column, value) in [("payload_sha256", &row[1]), ("dedup_key", &row[2])] {
            let filter = format!("WHERE {column} = '{value}'");
            let found = derived_values(&engine, &filter).await;
            assert!(found.contains(row), "{filter}: {found:?}");
        }
    }

    // The file holds a value only where the row cannot give it.
    let files: Vec<PathBuf> = walk(dir.path())
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "parquet")
                && p.to_string_lossy().contains("deliveries")
        })
        .collect();
    assert_eq!(files.len(), 1);
    let lag_nulls: usize = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&files[0]).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap()
    .map(|b| {
        b.unwrap()
            .column_by_name("delivery_lag_ms")
            .unwrap()
            .null_count()
    })
    .sum();
    assert_eq!(lag_nulls, 5, "a lag is never stored where the row gives it");
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        stored_values(&files[0]),
        [
            [s("d1"), None, None],
            [s("d2"), None, s(&expected[1][2])],
            [s("d3"), s(""), None],
            [s("d4"), None, s("imported-key")],
            [s("d5"), s(""), s("oversize:9000000")],
        ]
    );
}
