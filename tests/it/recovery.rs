//! Recovery from faults the write path cannot avoid: a manifest that could not be
//! confirmed durable, a manifest from a newer build, and crash loops under mixed load.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;

use crate::harness::{Options, Server, parquet_files, start_fails};

/// Waits until the server's log contains `text`.
async fn wait_for_log(server: &Server, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log().contains(text) {
        assert!(Instant::now() < deadline, "the log never said {text:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ids_of(server: &Server, table: &str) -> Vec<String> {
    server
        .query(&format!("SELECT id FROM {table}"))
        .await
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

/// Every id of `acked` appears exactly once in `table`, and nothing else does.
async fn assert_exactly(server: &Server, table: &str, acked: &HashSet<String>, when: &str) {
    let got = ids_of(server, table).await;
    let unique: HashSet<String> = got.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        got.len(),
        "{when}: a row of {table} is counted twice"
    );
    assert_eq!(
        &unique, acked,
        "{when}: {table} rows differ from those acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_whose_sync_failed_keeps_its_files_and_the_lake_restarts_whole() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .env("HOOKSCOPE_BUFFER_FLUSH_INTERVAL", "1h")
        .env("HOOKSCOPE_BUFFER_MAX_ROWS", 20);
    // Every manifest is renamed into place and then its fsync fails.
    let mut server = Server::start_in(
        dir.path(),
        options
            .clone()
            .env("HOOKSCOPE_FAILPOINTS", "lake_sync:_manifest=error"),
    );
    let mut deliveries = HashSet::new();
    for i in 0..10 {
        deliveries.insert(server.post_json("sync", &json!({"i": i})).await);
    }
    let reports: Vec<_> = (0..10)
        .map(|i| json!({"event_id": format!("e{i}"), "status": "success"}))
        .collect();
    let answer = server
        .client
        .post(format!("{}/report/sync", server.url))
        .header("content-type", "application/json")
        .body(serde_json::Value::from(reports).to_string())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let outcomes: HashSet<String> = answer["ids"]
        .as_array()
        .expect("report ids")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    wait_for_log(&server, "could not be confirmed durable").await;
    server.kill();

    let server = Server::start_in(dir.path(), options);
    assert!(
        !parquet_files(&server.lake()).is_empty(),
        "the files stayed"
    );
    assert_exactly(&server, "deliveries", &deliveries, "after the restart").await;
    assert_exactly(&server, "outcomes", &outcomes, "after the restart").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_from_a_newer_build_stops_the_start_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), Options::default());
    for i in 0..5 {
        server.post_json("future", &json!({"i": i})).await;
    }
    assert!(server.terminate().success());
    let files = parquet_files(&server.lake());
    assert!(!files.is_empty());
    // A newer build flushed once more (a file, and manifest version 2 in its format).
    let future = files[0].with_file_name("node-1-future.parquet");
    std::fs::copy(&files[0], &future).unwrap();
    let rel = future
        .strip_prefix(server.lake())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let manifest = json!({
        "format": 99, "version": 2, "wal_through": 99, "next_file_seq": 3,
        "tables": {"deliveries": [{"path": rel, "rows": 5}]}, "checkpoint": "x",
    });
    std::fs::write(
        server.lake().join(format!("_manifest/{:020}.json", 2)),
        manifest.to_string(),
    )
    .unwrap();

    let err = start_fails(dir.path(), &Options::default());
    assert!(err.contains("newer hookscope"), "{err}");
    assert!(future.exists(), "the newer build's file was deleted");
    for f in &files {
        assert!(f.exists(), "{} was deleted", f.display());
    }
}

/// Flushes fail (the Parquet files cannot be synced), so the buffer cannot drain and
/// its budget (4 × 256 KiB) is all there is.
fn stuck_buffer() -> Options {
    Options::default()
        .env("HOOKSCOPE_BUFFER_MAX_BYTES", "256KiB")
        .env(
            "HOOKSCOPE_FAILPOINTS",
            "lake_sync:deliveries=error;lake_sync:outcomes=error",
        )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_large_bodies_is_held_to_the_buffer_budget_and_the_server_stays_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), stuck_buffer());
    let body = "x".repeat(128 << 10);
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let client = server.client.clone();
            let url = format!("{}/webhook/flood", server.url);
            let body = format!("{i:04}{body}");
            tokio::spawn(async move {
                let resp = client.post(url).body(body).send().await.unwrap();
                let status = resp.status().as_u16();
                let retry_after = resp.headers().contains_key("retry-after");
                let answer: serde_json::Value =
                    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
                (status, retry_after, answer)
            })
        })
        .collect();
    let mut acked = HashSet::new();
    for t in tasks {
        let (status, retry_after, answer) = t.await.unwrap();
        match status {
            200 => {
                acked.insert(answer["id"].as_str().unwrap().to_string());
            }
            503 => {
                assert!(retry_after, "503 without Retry-After");
                assert!(
                    answer["error"].as_str().unwrap().contains("limit"),
                    "{answer}"
                );
            }
            other => panic!("unexpected status {other}: {answer}"),
        }
    }
    // 1 MiB of budget holds at most eight 128 KiB bodies (plus their fields).
    assert!(
        (1..=8).contains(&acked.len()),
        "{} of 48 bodies of 128 KiB accepted into a 1 MiB budget",
        acked.len()
    );
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    assert_exactly(&server, "deliveries", &acked, "while stuck").await;
    // Nothing acknowledged is lost when the stuck server is killed.
    server.kill();
    let server = Server::start_in(dir.path(), Options::default());
    assert_exactly(&server, "deliveries", &acked, "after a restart").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_batch_is_recorded_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), stuck_buffer());
    let batch = |n: usize, tag: &str| {
        let reports: Vec<_> = (0..n)
            .map(|i| {
                json!({"event_id": format!("{tag}-{i}"), "status": "failure",
                       "error_message": "e".repeat(8000)})
            })
            .collect();
        serde_json::Value::from(reports).to_string()
    };
    let post = |body: String| {
        let req = server
            .client
            .post(format!("{}/report/app", server.url))
            .header("content-type", "application/json")
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.bytes().await.unwrap())
        }
    };
    // 20 reports of 8 KB fit in 1 MiB: recorded whole.
    let (status, answer) = post(batch(20, "small")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(server.count("outcomes").await, 20);
    // 200 more do not: refused whole, nothing of them recorded.
    let (status, answer) = post(batch(200, "big")).await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(
        server.count("outcomes").await,
        20,
        "a refused batch left rows"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_sync_none_a_failed_sync_is_reported_and_cuts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .env("HOOKSCOPE_WAL_SYNC", "none")
        .env("HOOKSCOPE_BUFFER_FLUSH_INTERVAL", "1h");
    let mut server = Server::start_in(
        dir.path(),
        options
            .clone()
            .env("HOOKSCOPE_FAILPOINTS", "wal_sync=error*3"),
    );
    // Steady traffic for a few seconds: the once-a-second syncs fail (three times)
    // while deliveries keep being written after them.
    let mut acked = HashSet::new();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        acked.insert(server.post_json("nosync", &json!({"i": i})).await);
        i += 1;
    }
    wait_for_log(&server, "may be lost if the machine crashes").await;
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hookscope_wal_sync_failures_total "))
        .expect("the failure counter")
        .parse::<u64>()
        .unwrap();
    assert!((1..=3).contains(&failures), "{failures} failures counted");
    // The process dies (the machine does not): every acknowledged delivery is in the WAL.
    server.kill();
    let server = Server::start_in(dir.path(), options);
    assert_exactly(&server, "deliveries", &acked, "after the restart").await;
}

/// What the clients of the crash loop saw acknowledged.
#[derive(Default)]
struct Acked {
    deliveries: HashSet<String>,
    forwards: HashSet<String>,
    reports: HashSet<String>,
}

/// A slow app for forwards: answers 200 after 0–250 ms.
async fn start_slow_app() -> String {
    let app = axum::Router::new().fallback(|| async {
        let wait = rand::random::<u64>() % 250;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        "processed"
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// Deliveries, forwards and report batches from concurrent clients until `stop`.
fn mixed_load(
    server: &Server,
    stop: &Arc<AtomicBool>,
    acked: &Arc<Mutex<Acked>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    // (kind, clients, pause between requests): about a thousand rows a second, which
    // the paced flusher keeps up with, so flushes complete and release the WAL.
    for (kind, clients, pause) in [("load", 4, 6), ("fwd", 6, 0), ("report", 1, 20)] {
        for c in 0..clients {
            let base = server.url.clone();
            let stop = Arc::clone(stop);
            let acked = Arc::clone(acked);
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    let sent = match kind {
                        "report" => {
                            let batch: Vec<_> = (0..1 + n % 12)
                                .map(|i| json!({"event_id": format!("e{c}-{n}-{i}"), "status": "success"}))
                                .collect();
                            client
                                .post(format!("{base}/report/app"))
                                .header("content-type", "application/json")
                                .body(serde_json::Value::from(batch).to_string())
                                .send()
                                .await
                        }
                        source => {
                            client
                                .post(format!("{base}/webhook/{source}"))
                                .header("content-type", "application/json")
                                .body(json!({"type": "crash.loop", "c": c, "n": n}).to_string())
                                .send()
                                .await
                        }
                    };
                    let Ok(resp) = sent else { break };
                    if resp.status() != 200 {
                        continue;
                    }
                    let forwarded = resp
                        .headers()
                        .get("x-hookscope-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let Ok(bytes) = resp.bytes().await else { break };
                    let mut acked = acked.lock();
                    match kind {
                        "fwd" => {
                            // The provider got the app's answer: an acknowledgement.
                            if let Some(id) = forwarded {
                                acked.forwards.insert(id);
                            }
                        }
                        _ => {
                            let Ok(answer) = serde_json::from_slice::<serde_json::Value>(&bytes)
                            else {
                                break;
                            };
                            if let Some(id) = answer["id"].as_str() {
                                acked.deliveries.insert(id.to_string());
                            }
                            for id in answer["ids"].as_array().into_iter().flatten() {
                                acked.reports.insert(id.as_str().unwrap_or("").to_string());
                            }
                        }
                    }
                }
            }));
        }
    }
    tasks
}

/// Every id of `expected` is in `table` (under `column`) exactly once, and no id of
/// the table repeats.
async fn assert_once(server: &Server, table: &str, expected: &HashSet<String>, round: usize) {
    let rows = ids_of(server, table).await;
    let mut seen = HashSet::new();
    let twice: Vec<&String> = rows.iter().filter(|id| !seen.insert(*id)).collect();
    assert!(
        twice.is_empty(),
        "round {round}: {table} has {} ids twice, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    let missing: Vec<&String> = expected.iter().filter(|id| !seen.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "round {round}: {} of {} acknowledged ids missing from {table}, e.g. {:?}",
        missing.len(),
        expected.len(),
        missing.first()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_kill_9_rounds_under_mixed_load_lose_and_double_nothing() {
    let app = start_slow_app().await;
    let config = format!(
        "[[sources]]\nname = \"fwd\"\nforward_to = \"{app}/hook\"\nforward_timeout = \"5s\"\n"
    );
    let options = Options::default()
        .config(&config)
        .env("HOOKSCOPE_BUFFER_MAX_ROWS", 150)
        .env("HOOKSCOPE_BUFFER_FLUSH_INTERVAL", "40ms")
        .env("HOOKSCOPE_PARQUET_FLUSH_CPU_PERCENT", 10);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), options);
    let acked = Arc::new(Mutex::new(Acked::default()));
    for round in 0..20 {
        let stop = Arc::new(AtomicBool::new(false));
        let load = mixed_load(&server, &stop, &acked);
        tokio::time::sleep(Duration::from_millis(300 + 37 * (round as u64 % 11))).await;
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for t in load {
            let _ = t.await;
        }
        server.restart();
        let (deliveries, outcomes) = {
            let acked = acked.lock();
            let mut deliveries = acked.deliveries.clone();
            deliveries.extend(acked.forwards.iter().cloned());
            let mut outcomes = acked.reports.clone();
            // A forward's outcome row carries the delivery's id.
            outcomes.extend(acked.forwards.iter().cloned());
            (deliveries, outcomes)
        };
        assert_once(&server, "deliveries", &deliveries, round).await;
        assert_once(&server, "outcomes", &outcomes, round).await;
    }
    let acked = acked.lock();
    let log = server.log();
    let flushes = log.matches("flushed buffer").count();
    println!(
        "crash loop: {} deliveries, {} forwards, {} reports acknowledged; {flushes} flushes committed; recovery removed {} uncommitted files, cut {} torn tails, recorded {} interrupted forwards",
        acked.deliveries.len(),
        acked.forwards.len(),
        acked.reports.len(),
        log.matches("interrupted flush").count(),
        log.matches("torn tail").count(),
        log.matches("recording forwards interrupted").count(),
    );
    assert!(acked.deliveries.len() > 200 && acked.forwards.len() > 50 && acked.reports.len() > 100);
    assert!(
        flushes >= 20,
        "flushes must complete between the kills, {flushes} did"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_flush_after_an_unconfirmed_manifest_leaves_that_manifests_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .env("HOOKSCOPE_BUFFER_FLUSH_INTERVAL", "1h")
        .env("HOOKSCOPE_BUFFER_MAX_ROWS", 10);
    // Flush 1: its files are durable, its manifest is renamed into place but its sync
    // fails. Every later flush fails on its own Parquet file (and discards it).
    let mut server = Server::start_in(
        dir.path(),
        options.clone().env(
            "HOOKSCOPE_FAILPOINTS",
            "lake_sync:_manifest=error*1;lake_sync:deliveries=error*1000@2",
        ),
    );
    let mut acked = HashSet::new();
    for i in 0..10 {
        acked.insert(server.post_json("floor", &json!({"i": i})).await);
    }
    wait_for_log(&server, "could not be confirmed durable").await;
    for i in 10..20 {
        acked.insert(server.post_json("floor", &json!({"i": i})).await);
    }
    wait_for_log(&server, "lake_sync:deliveries=error: failing this step").await;
    server.kill();
    // The start reads the unconfirmed version (it is in place): its files must be there.
    let server = Server::start_in(dir.path(), options);
    assert_exactly(&server, "deliveries", &acked, "after the restart").await;
}
