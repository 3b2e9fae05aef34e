//! Nothing acknowledged is lost, nothing is counted twice: crashes, flushes, restarts
//! and a full disk.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;

use crate::harness::{Options, Server, parquet_files};

/// Flush often so that kills and queries land during flushes.
fn busy_flushing() -> Options {
    Options::default()
        .env("HOOKSCOPE_BUFFER_MAX_ROWS", 40)
        .env("HOOKSCOPE_BUFFER_FLUSH_INTERVAL", "30ms")
}

async fn all_ids(server: &Server) -> Vec<String> {
    server
        .query("SELECT id FROM deliveries")
        .await
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Posts from `clients` concurrent clients until `stop`; collects acknowledged ids.
fn spawn_load(
    server: &Server,
    clients: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let url = format!("{}/webhook/load", server.url);
            let stop = Arc::clone(&stop);
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = json!({"type": "load.test", "client": c, "n": n}).to_string();
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let Ok(resp) = sent else { break };
                    if resp.status() != 200 {
                        continue;
                    }
                    let Ok(bytes) = resp.bytes().await else { break };
                    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                        break;
                    };
                    if let Some(id) = answer["id"].as_str() {
                        acked.lock().push(id.to_string());
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn acked_deliveries_survive_sigkill_exactly_once() {
    let (mut server, _dir) = Server::start(busy_flushing());
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let load = spawn_load(&server, 16, Arc::clone(&stop), Arc::clone(&acked));
        tokio::time::sleep(Duration::from_millis(250 + 150 * round)).await;
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for t in load {
            let _ = t.await;
        }
        server.restart();
        let ids = all_ids(&server).await;
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "round {round}: a delivery is counted twice"
        );
        let acked_now = acked.lock().clone();
        let missing: Vec<&String> = acked_now.iter().filter(|id| !unique.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} of {} acknowledged deliveries lost, e.g. {:?}",
            missing.len(),
            acked_now.len(),
            missing.first()
        );
    }
    let acked_total = acked.lock().len();
    let log = server.log();
    println!(
        "crash rounds: {acked_total} acknowledged; recovery found {} uncommitted flush files and {} torn WAL tails",
        log.matches("interrupted flush").count(),
        log.matches("torn tail").count()
    );
    assert!(
        acked_total > 200,
        "the load should have acknowledged many deliveries, got {acked_total}"
    );
    assert!(
        !parquet_files(&server.lake()).is_empty(),
        "flushes ran during the rounds"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_each_step_of_a_flush_loses_and_duplicates_nothing() {
    for point in [
        "after_parquet_write",
        "after_manifest_commit",
        "after_wal_release",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let options = Options::default()
            .env("HOOKSCOPE_BUFFER_FLUSH_INTERVAL", "1h")
            .env("HOOKSCOPE_BUFFER_MAX_ROWS", 30);
        // First run: 29 rows stay buffered; the 30th triggers a flush that crashes.
        let mut server = Server::start_in(
            dir.path(),
            options
                .clone()
                .env("HOOKSCOPE_FAILPOINTS", format!("{point}=crash")),
        );
        let mut ids = HashSet::new();
        for i in 0..30 {
            ids.insert(server.post_json("crash", &json!({"i": i})).await);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.log().contains("aborting the process") {
            assert!(
                Instant::now() < deadline,
                "{point}: the flush never reached the crash point"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill();
        // Second run, no crash: everything exactly once, before and after the next flush.
        let mut server = Server::start_in(dir.path(), options);
        let got = all_ids(&server).await;
        assert_eq!(got.len(), 30, "{point}: rows after restart");
        assert_eq!(got.into_iter().collect::<HashSet<_>>(), ids, "{point}");
        server.post_json("crash", &json!({"after": point})).await;
        assert!(server.terminate().success());
        let server = Server::start_in(dir.path(), Options::default());
        assert_eq!(
            server.count("deliveries").await,
            31,
            "{point}: after the next flush"
        );
        let files: usize = server
            .query("SELECT count(DISTINCT id) AS n FROM deliveries")
            .await[0]["n"]
            .as_i64()
            .unwrap() as usize;
        assert_eq!(files, 31);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn count_equals_acknowledged_rows_across_flushes() {
    let (server, _dir) = Server::start(busy_flushing());
    let mut acked = 0i64;
    let mut files_seen = HashSet::new();
    for batch in 0..8 {
        let posts = (0..25).map(|i| {
            let server = &server;
            async move {
                server
                    .post_json("race", &json!({"batch": batch, "i": i}))
                    .await
            }
        });
        acked += futures::future::join_all(posts).await.len() as i64;
        // Query repeatedly while the flusher moves these rows from buffer to Parquet.
        for _ in 0..15 {
            assert_eq!(
                server.count("deliveries").await,
                acked,
                "count differs from acknowledged rows"
            );
            tokio::time::sleep(Duration::from_millis(7)).await;
        }
        files_seen.extend(parquet_files(&server.lake()));
    }
    assert!(
        files_seen.len() >= 4,
        "expected several flushes, saw {} files",
        files_seen.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_survive_sigterm_and_restart_exactly_once_in_hive_parquet() {
    let (mut server, _dir) = Server::start(Options::default());
    let mut ids = HashSet::new();
    for i in 0..50 {
        ids.insert(
            server
                .post_json("restart", &json!({"type": "t", "i": i}))
                .await,
        );
    }
    let status = server.terminate();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    // Everything was flushed on shutdown: Hive-partitioned Parquet files.
    let files = parquet_files(&server.lake().join("deliveries"));
    assert!(!files.is_empty());
    let mut rows_in_files = 0;
    let mut ids_in_files = HashSet::new();
    for f in &files {
        let rel = f
            .strip_prefix(server.lake().join("deliveries"))
            .unwrap()
            .to_string_lossy()
            .to_string();
        let parts: Vec<&str> = rel.split('/').collect();
        assert!(
            parts[0].starts_with("date=") && parts[0].len() == "date=2026-11-22".len(),
            "{rel}"
        );
        assert!(
            parts[1].starts_with("hour=") && parts[1].len() == "hour=19".len(),
            "{rel}"
        );
        let (n, file_ids) = read_with_parquet_crate(f);
        rows_in_files += n;
        ids_in_files.extend(file_ids);
    }
    assert_eq!(rows_in_files, 50);
    assert_eq!(ids_in_files, ids);

    server.restart();
    assert_eq!(server.count("deliveries").await, 50);
    let again: HashSet<String> = all_ids(&server).await.into_iter().collect();
    assert_eq!(again, ids);
    // And once more, with no new data: still exactly once.
    server.terminate();
    server.restart();
    assert_eq!(server.count("deliveries").await, 50);
}

/// Reads a file with the parquet crate's row API, independent of DataFusion.
fn read_with_parquet_crate(path: &Path) -> (usize, Vec<String>) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let meta = reader.metadata();
    let codec = meta.row_group(0).column(0).compression();
    assert!(
        matches!(codec, parquet::basic::Compression::ZSTD(_)),
        "zstd: {codec:?}"
    );
    let mut ids = Vec::new();
    for row in reader.get_row_iter(None).unwrap() {
        let row = row.unwrap();
        ids.push(row.get_string(0).unwrap().clone());
    }
    (ids.len(), ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_torn_wal_tail_after_a_crash_is_cut_and_the_rest_kept() {
    let (mut server, _dir) = Server::start(Options::default());
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(server.post_json("torn", &json!({"i": i})).await);
    }
    server.kill();
    // Half a frame where the next write would go (over the 17-byte end marker), as a
    // crash mid-write leaves it.
    let wal = server.lake().join("wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    let newest = segs.last().unwrap();
    let mut data = std::fs::read(newest).unwrap();
    let end = data.len() - 17;
    data.truncate(end);
    data.extend_from_slice(&[200, 1, 0, 0, 9, 9, 9, 9, 1, 2, 3]);
    std::fs::write(newest, &data).unwrap();
    server.restart();
    let got: HashSet<String> = all_ids(&server).await.into_iter().collect();
    assert_eq!(got, ids.into_iter().collect::<HashSet<_>>());
    assert!(server.log().contains("torn"), "the cut is logged");
    server.post_json("torn", &json!({"after": true})).await;
    assert_eq!(server.count("deliveries").await, 11);
}

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_503_keeps_serving_reads_and_recovers() {
    let base = tempfile::tempdir().unwrap();
    let mount = base.path().join("small");
    let Some(_tmpfs) = Tmpfs::mount(&mount, "8m") else {
        // Mounting needs root (CI runs as root); say so rather than pass silently.
        panic!("cannot mount a tmpfs for the disk-full test: run the tests as root");
    };
    let server = Server::start_in(
        &mount,
        Options::default().env("HOOKSCOPE_BUFFER_FLUSH_INTERVAL", "1h"),
    );
    let before = server.post_json("disk", &json!({"before": true})).await;
    // Fill the filesystem.
    let filler = mount.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let mut refused = 0;
    for i in 0..20 {
        let resp = server
            .client
            .post(format!("{}/webhook/disk", server.url))
            .body(format!(
                "{{\"during\": {i}, \"pad\": \"{}\"}}",
                "p".repeat(4096)
            ))
            .send()
            .await
            .unwrap();
        if resp.status() == 503 {
            assert!(resp.headers().contains_key("retry-after"));
            let body: serde_json::Value =
                serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
            assert!(body["error"].as_str().unwrap().contains("retry"), "{body}");
            refused += 1;
        } else {
            assert_eq!(resp.status(), 200, "only 200 or 503");
        }
    }
    assert!(refused > 0, "a full disk must refuse deliveries");
    // Reads keep working, and no refused delivery is visible.
    let health = server.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 503, "not ready while the WAL fails");
    let rows = server.count("deliveries").await;
    assert_eq!(rows, 1 + 20 - refused);
    assert!(all_ids(&server).await.contains(&before));
    // The disk recovers; so does ingest.
    std::fs::remove_file(&filler).unwrap();
    let start = Instant::now();
    loop {
        let (status, _) = server.post("disk", &[], "{\"after\": true}").await;
        if status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ingest did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    drop(server);
}
