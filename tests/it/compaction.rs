//! Compaction against the real binary: a crash at each step loses and duplicates
//! nothing, and the server's background compaction keeps every row exactly once
//! while queries run.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Options, Server, binary, cli, cli_ok, parquet_files};

const CHECKSUM: &str = "SELECT count(*) AS n, count(DISTINCT id) AS ids, sum(payload_size) AS bytes, \
                        min(id) AS first, max(id) AS last FROM deliveries";

fn offline(lake: &Path, sql: &str) -> Value {
    serde_json::from_str(&cli_ok(lake, &["query", sql, "--format", "json"])).unwrap()
}

/// Files the committed manifest names (as `hookscope check` counts them).
fn committed(lake: &Path) -> usize {
    let out = cli(lake, &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (_, after) = stdout
        .split_once("files,")
        .and_then(|(before, _)| before.rsplit_once(", "))
        .unwrap_or_else(|| panic!("no file count in: {stdout}"));
    after.trim().parse().unwrap_or_else(|_| panic!("{stdout}"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn compact(lake: &Path, failpoints: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(binary());
    cmd.args(["compact", "--data-dir"])
        .arg(lake)
        .env_remove("HOOKSCOPE_CONFIG")
        // The replaced files' grace is the query timeout.
        .env("HOOKSCOPE_QUERY_TIMEOUT", "1s");
    if let Some(f) = failpoints {
        cmd.env("HOOKSCOPE_FAILPOINTS", f);
    }
    cmd.output().unwrap()
}

/// A lake of many small files: a server flushing every ten rows.
async fn small_files_lake(dir: &Path) {
    let options = Options::default()
        .env("HOOKSCOPE_BUFFER_MAX_ROWS", 10)
        .env("HOOKSCOPE_PARQUET_COMPACT_INTERVAL", "0s");
    let mut server = Server::start_in(dir, options);
    for i in 0..80 {
        server
            .post_json("small", &json!({"i": i, "pad": "x".repeat(i * 7)}))
            .await;
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_each_step_of_a_compaction_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    small_files_lake(dir.path()).await;
    let lake = dir.path().join("lake");
    let before = offline(&lake, CHECKSUM);
    assert_eq!(before[0]["n"], 80);
    let files_before = committed(&lake);
    assert!(files_before >= 4, "{files_before} files");

    for point in [
        "compact_after_write",
        "compact_after_commit",
        "compact_after_delete",
    ] {
        let copy = dir.path().join(point);
        copy_dir(&lake, &copy);
        // (`compact_after_delete`: the command merges, waits out the grace and crashes
        // after deleting the first replaced file.)
        let crashed = compact(&copy, Some(&format!("{point}=crash")));
        assert!(
            !crashed.status.success(),
            "{point}: the compaction did not crash"
        );
        // Right after the crash, and after a clean compaction, the same rows.
        assert_eq!(offline(&copy, CHECKSUM), before, "{point}: after the crash");
        let clean = compact(&copy, None);
        assert!(
            clean.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&clean.stderr)
        );
        assert_eq!(offline(&copy, CHECKSUM), before, "{point}: compacted");
        // Files the crashed run left on disk go at the next start.
        let again = compact(&copy, None);
        assert!(
            again.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        // One file per table and hour, and nothing on disk the manifest does not
        // name (files of the crashed run were removed at the next open).
        let files = committed(&copy);
        assert!(files < files_before && files <= 4, "{point}: {files} files");
        assert_eq!(parquet_files(&copy).len(), files, "{point}: orphans left");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_compacts_in_the_background_while_queries_run() {
    let options = Options::default()
        .env("HOOKSCOPE_BUFFER_MAX_ROWS", 1)
        .env("HOOKSCOPE_PARQUET_COMPACT_INTERVAL", "300ms")
        .env("HOOKSCOPE_QUERY_TIMEOUT", "2s");
    let (server, _dir) = Server::start(options);
    // Small files until the background policy merges some (32 in the current hour;
    // at an hour's turn the files split between two hours, and it takes longer).
    let mut n = 0;
    while !server.log().contains("merged small Parquet files") {
        server.post_json("bg", &json!({"n": n})).await;
        n += 1;
        assert_eq!(
            server.count("deliveries").await,
            n,
            "a query missed or doubled rows"
        );
        tokio::time::sleep(Duration::from_millis(110)).await;
        assert!(n < 1200, "no merge after {n} deliveries: {}", server.log());
    }
    let at_merge = parquet_files(&server.lake()).len();
    assert!(at_merge >= 32, "{at_merge} files");
    let ids = server
        .query("SELECT count(DISTINCT id) AS n FROM deliveries")
        .await;
    assert_eq!(ids[0]["n"], n);
    // The replaced files go once their grace (the query timeout) is over.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    // (A merge replaces at least 32 files by one.)
    while parquet_files(&server.lake()).len() > at_merge - 31 {
        assert!(
            std::time::Instant::now() < deadline,
            "replaced files were never deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(server.count("deliveries").await, n);
    // /metrics counts what compaction did.
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert!(
        value("hookscope_compaction_input_files_total") >= 32,
        "{metrics}"
    );
    assert!(
        value("hookscope_compaction_output_files_total") >= 1,
        "{metrics}"
    );
    assert!(
        value("hookscope_compaction_input_bytes_total")
            > value("hookscope_compaction_output_bytes_total") / 2
    );
    assert_eq!(value("hookscope_compaction_failures_total"), 0);
}

fn check(lake: &Path) -> (bool, String) {
    let out = cli(lake, &["check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_each_missing_damaged_or_unnamed_file() {
    let dir = tempfile::tempdir().unwrap();
    small_files_lake(dir.path()).await;
    let lake = dir.path().join("lake");
    let (ok, text) = check(&lake);
    assert!(ok, "{text}");
    assert!(text.contains("ok: every committed file"), "{text}");
    // Acknowledged rows only in the WAL (a killed server) are fine, and said.
    let mut server = Server::start_in(
        dir.path(),
        Options::default().env("HOOKSCOPE_BUFFER_FLUSH_INTERVAL", "1h"),
    );
    for i in 0..3 {
        server.post_json("small", &json!({"late": i})).await;
    }
    server.kill();
    let (ok, text) = check(&lake);
    assert!(ok, "{text}");
    assert!(
        text.contains("3 WAL records are not in files yet"),
        "{text}"
    );

    let files = parquet_files(&lake);
    assert!(files.len() >= 3);
    let name = |p: &Path| p.strip_prefix(&lake).unwrap().to_string_lossy().to_string();
    // One file gone, one cut short, one the manifest does not name.
    std::fs::remove_file(&files[0]).unwrap();
    let cut = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &cut[..cut.len() / 2]).unwrap();
    let stray = files[2].with_file_name("stray.parquet");
    std::fs::copy(&files[2], &stray).unwrap();
    let (ok, text) = check(&lake);
    assert!(!ok, "{text}");
    for (file, says) in [
        (&files[0], "cannot be opened"),
        (&files[1], "changed or cut short"),
        (&stray, "not named by the manifest"),
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(&name(file)))
            .unwrap_or_else(|| panic!("{} not named in {text}", name(file)));
        assert!(line.contains(says), "{line}");
    }
    assert!(text.contains("3 problem(s)"), "{text}");
}
