//! SQL over HTTP and the CLI: formats, read-only guard, limits, pruning, auth.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Options, Server, binary, cli_ok, parquet_files};

#[tokio::test(flavor = "multi_thread")]
async fn every_forbidden_statement_kind_gets_403() {
    let (server, _dir) = Server::start(Options::default());
    server.post_json("s", &json!({"a": 1})).await;
    for sql in [
        "CREATE TABLE t AS SELECT 1",
        "CREATE VIEW v AS SELECT * FROM deliveries",
        "CREATE EXTERNAL TABLE etc STORED AS CSV LOCATION '/etc/passwd'",
        "INSERT INTO deliveries SELECT * FROM deliveries",
        "DELETE FROM deliveries",
        "UPDATE deliveries SET source = 'x'",
        "DROP TABLE deliveries",
        "COPY (SELECT * FROM deliveries) TO '/tmp/hookscope-leak.csv'",
        "SET datafusion.execution.target_partitions = 1",
        "EXPLAIN COPY (SELECT 1) TO '/tmp/hookscope-leak.parquet'",
    ] {
        let (status, body) = server.query_raw(sql, "json").await;
        assert_eq!(status, 403, "{sql}: {}", String::from_utf8_lossy(&body));
        let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(
            err["error"].as_str().unwrap().contains("read-only"),
            "{err}"
        );
    }
    assert_eq!(server.count("deliveries").await, 1);
    assert!(!std::path::Path::new("/tmp/hookscope-leak.csv").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_sql_gets_400_with_datafusions_message() {
    let (server, _dir) = Server::start(Options::default());
    for (sql, needle) in [
        ("SELEC 1", "SELEC"),
        ("SELECT nope FROM deliveries", "nope"),
        ("SELECT * FROM no_such_table", "no_such_table"),
        ("SELECT 1; SELECT 2", "exactly one"),
    ] {
        let (status, body) = server.query_raw(sql, "json").await;
        assert_eq!(status, 400, "{sql}");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(needle), "{sql}: {text}");
    }
    let (status, body) = server.query_raw("SELECT 1", "xml").await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runaway_query_is_stopped_by_the_timeout_while_healthz_answers() {
    let (server, _dir) = Server::start(Options::default().env("HOOKSCOPE_QUERY_TIMEOUT", "1500ms"));
    let runaway =
        "SELECT sum(a.value * b.value) AS s FROM range(1000000) a CROSS JOIN range(1000000) b";
    let started = Instant::now();
    let query = server.query_raw(runaway, "json");
    let health = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut worst = Duration::ZERO;
        for _ in 0..5 {
            let t = Instant::now();
            let resp = server.get("/healthz").await;
            assert_eq!(resp.status(), 200);
            worst = worst.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        worst
    };
    let ((status, body), worst) = tokio::join!(query, health);
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("time limit"));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        worst < Duration::from_millis(500),
        "/healthz took {worst:?} during the runaway query"
    );
    // Ingest keeps working too, and the next query runs.
    server.post_json("after", &json!({"ok": true})).await;
    assert_eq!(server.count("deliveries").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn results_come_in_every_format() {
    let (server, _dir) = Server::start(Options::default());
    for i in 0..3 {
        server
            .post_json("fmt", &json!({"type": format!("t{i}")}))
            .await;
    }
    let sql = "SELECT event_type, attempt FROM deliveries ORDER BY event_type";

    let (s, body) = server.query_raw(sql, "json").await;
    assert_eq!(s, 200);
    let rows: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        rows,
        json!([{"event_type":"t0","attempt":1},{"event_type":"t1","attempt":1},{"event_type":"t2","attempt":1}])
    );

    let (_, body) = server.query_raw(sql, "ndjson").await;
    let lines: Vec<serde_json::Value> = String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);

    let (_, body) = server.query_raw(sql, "csv").await;
    assert_eq!(
        String::from_utf8(body.to_vec()).unwrap(),
        "event_type,attempt\nt0,1\nt1,1\nt2,1\n"
    );

    let (_, body) = server.query_raw(sql, "arrow").await;
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body.to_vec()), None)
            .unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 3);

    let (_, body) = server.query_raw(sql, "parquet").await;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(body)
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 3);

    // GET with the format from Accept, and a text/plain POST body.
    let resp = server
        .client
        .get(format!("{}/query", server.url))
        .query(&[("sql", "SELECT count(*) AS n FROM deliveries")])
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(resp.text().await.unwrap(), "n\n3\n");
    let resp = server
        .client
        .post(format!("{}/query?format=ndjson", server.url))
        .header("content-type", "text/plain")
        .body("SELECT count(*) AS n FROM deliveries")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap().trim(), "{\"n\":3}");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_results_stream_and_the_size_limit_gives_413() {
    let (server, _dir) =
        Server::start(Options::default().env("HOOKSCOPE_QUERY_MAX_RESULT_BYTES", "64KiB"));
    let (status, body) = server
        .query_raw(
            "SELECT value, repeat('x', 100) AS pad FROM range(100000)",
            "json",
        )
        .await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let (status, body) = server
        .query_raw("SELECT value FROM range(1000)", "csv")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 1001);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_result_that_passes_the_limit_ends_as_a_cut_short_body() {
    let (server, _dir) =
        Server::start(Options::default().env("HOOKSCOPE_QUERY_MAX_RESULT_BYTES", "2MiB"));
    for format in ["json", "ndjson", "csv", "arrow"] {
        let resp = server
            .client
            .post(format!("{}/query", server.url))
            .header("content-type", "application/json")
            .body(
                serde_json::json!({
                    "sql": "SELECT value, repeat('x', 100) AS pad FROM range(100000)",
                    "format": format
                })
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        // Past 1 MiB the answer streams: the status went out before the end was known.
        assert_eq!(resp.status(), 200, "{format}");
        let body = resp.bytes().await;
        assert!(
            body.is_err(),
            "{format}: a result past the limit must not look complete ({} bytes)",
            body.map(|b| b.len()).unwrap_or_default()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn time_filters_prune_parquet_files_in_explain() {
    let (server, _dir) =
        Server::start(Options::default().env("HOOKSCOPE_BUFFER_FLUSH_INTERVAL", "50ms"));
    let explain = |sql: String| {
        let server = &server;
        async move {
            let rows = server.query(&format!("EXPLAIN {sql}")).await;
            rows.iter()
                .find(|r| r["plan_type"] == "physical_plan")
                .and_then(|r| r["plan"].as_str())
                .unwrap()
                .to_string()
        }
    };
    let name = |p: &std::path::PathBuf| p.file_name().unwrap().to_string_lossy().to_string();
    // Waits until `n` rows are in Parquet files (a flush may split a batch of posts over
    // several files) and the catalog lists every one of those files; returns their names.
    let flushed = |n: usize| {
        let lake = server.lake();
        let explain = &explain;
        async move {
            for _ in 0..200 {
                let files = parquet_files(&lake.join("deliveries"));
                let rows: usize = files.iter().map(|f| parquet_rows(f)).sum();
                let names: Vec<String> = files.iter().map(name).collect();
                if rows == n {
                    let all = explain("SELECT count(*) FROM deliveries".into()).await;
                    if names.iter().all(|f| all.contains(f)) {
                        return names;
                    }
                }
                assert!(rows <= n, "{rows} rows flushed, expected {n}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("flush did not write {n} rows");
        }
    };
    for i in 0..5 {
        server.post_json("prune", &json!({"first": i})).await;
    }
    let first = flushed(5).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mid = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..3 {
        server.post_json("prune", &json!({"second": i})).await;
    }
    let second: Vec<String> = flushed(8)
        .await
        .into_iter()
        .filter(|f| !first.contains(f))
        .collect();
    assert!(!first.is_empty() && !second.is_empty());

    let recent = explain(format!(
        "SELECT count(*) FROM deliveries WHERE received_at > '{mid}'"
    ))
    .await;
    for f in &second {
        assert!(recent.contains(f), "{f} should be scanned:\n{recent}");
    }
    for f in &first {
        assert!(!recent.contains(f), "{f} should be pruned:\n{recent}");
    }
    let rows = server
        .query(&format!(
            "SELECT count(*) AS n FROM deliveries WHERE received_at > '{mid}'"
        ))
        .await;
    assert_eq!(rows[0]["n"], 3);
    let old = explain(format!(
        "SELECT * FROM deliveries WHERE received_at <= '{mid}'"
    ))
    .await;
    for f in &first {
        assert!(old.contains(f), "{f} should be scanned:\n{old}");
    }
    for f in &second {
        assert!(!old.contains(f), "{f} should be pruned:\n{old}");
    }
}

/// Rows in one Parquet file, from its footer.
fn parquet_rows(path: &std::path::Path) -> usize {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).unwrap();
    let reader = SerializedFileReader::new(file).unwrap();
    reader.metadata().file_metadata().num_rows() as usize
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_token_guards_the_read_side_but_not_ingest() {
    let (server, _dir) = Server::start(Options::default().env("HOOKSCOPE_TOKEN", "t0ken"));
    assert_eq!(
        server.post("s", &[], "x").await.0,
        200,
        "providers need no token"
    );
    let (status, _) = server.query_raw("SELECT 1", "json").await;
    assert_eq!(status, 401);
    let resp = server
        .client
        .post(format!("{}/query", server.url))
        .bearer_auth("wrong")
        .body("SELECT 1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = server
        .client
        .post(format!("{}/query", server.url))
        .bearer_auth("t0ken")
        .body("SELECT count(*) AS n FROM deliveries")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "[{\"n\":1}]");
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_that_would_allocate_past_the_memory_limit_get_a_400_and_memory_stays_bounded() {
    let (server, _dir) =
        Server::start(Options::default().env("HOOKSCOPE_QUERY_MEMORY_LIMIT", "256MiB"));
    for sql in [
        "SELECT repeat('x', 2000000000)",
        "SELECT length(repeat('x', 2000000000)) AS n",
        "SELECT lpad('x', 2000000000)",
        "SELECT array_repeat('abc', 1000000000)",
        "SELECT range(0, 2000000000)",
        // Not one function: eight values of 16 MB in one row, caught between operators.
        "SELECT concat(x, x, x, x, x, x, x, x) AS y FROM (SELECT repeat('x', 16000000) AS x)",
    ] {
        let started = std::time::Instant::now();
        let (status, body) = server.query_raw(sql, "json").await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{sql}: {body}");
        assert!(body.contains("memory_limit"), "{sql}: {body}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{sql} took {:?}",
            started.elapsed()
        );
    }
    let peak = server.peak_rss();
    println!("peak resident memory: {} MiB", peak >> 20);
    assert!(
        peak < 768 << 20,
        "the server's resident memory peaked at {} MiB",
        peak >> 20
    );
    // And it still answers.
    assert_eq!(server.query("SELECT 1 AS one").await[0]["one"], 1);
}

/// POSTs `SELECT 1` as text/plain with extra headers; returns the status.
async fn read_with(server: &Server, headers: &[(&str, String)]) -> u16 {
    let mut req = server
        .client
        .post(format!("{}/query", server.url))
        .header("content-type", "text/plain")
        .body("SELECT 1");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_the_read_side_answers_only_local_names_and_its_own_origin() {
    let (server, _dir) = Server::start(Options::default());
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let own = server.url.clone();
    // DNS rebinding: a page of evil.example whose name now points at 127.0.0.1.
    assert_eq!(
        read_with(&server, &[("host", format!("evil.example:{port}"))]).await,
        403
    );
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "[::1]".into(),
    ] {
        assert_eq!(
            read_with(&server, &[("host", host.clone())]).await,
            200,
            "{host}"
        );
    }
    // A cross-origin text/plain POST needs no preflight: refused by its Origin.
    assert_eq!(
        read_with(&server, &[("origin", "http://evil.example".into())]).await,
        403
    );
    assert_eq!(
        read_with(&server, &[("sec-fetch-site", "cross-site".into())]).await,
        403
    );
    assert_eq!(read_with(&server, &[("origin", "null".into())]).await, 403);
    // The same origin (a dashboard served by hookscope itself) is fine.
    assert_eq!(read_with(&server, &[("origin", own)]).await, 200);
    // Ingest stays open to any Host: providers address it by its public name.
    let resp = server
        .client
        .post(format!("{}/webhook/s", server.url))
        .header("host", "hooks.example.com")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // With a token, a name is fine (a rebinding page cannot send the token).
    let (server, _dir) = Server::start(Options::default().env("HOOKSCOPE_TOKEN", "t0ken"));
    let status = read_with(
        &server,
        &[
            ("host", "hookscope.internal".into()),
            ("authorization", "Bearer t0ken".into()),
        ],
    )
    .await;
    assert_eq!(status, 200);
}

#[test]
fn serve_refuses_to_listen_beyond_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary())
        .current_dir(dir.path())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("lake"))
        .env_remove("HOOKSCOPE_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen") && err.contains("HOOKSCOPE_TOKEN"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_config_keys_warn_and_the_server_still_starts() {
    let (server, _dir) = Server::start(Options::default().config(
        "listen = \"127.0.0.1:0\"\nfuture_feature = 1\n[wal]\nsync = \"always\"\nturbo = true\n",
    ));
    assert_eq!(server.post("s", &[], "x").await.0, 200);
    let log = server.log();
    assert!(
        log.contains("unknown key `future_feature`") && log.contains("hookscope.toml:2"),
        "{log}"
    );
    assert!(log.contains("wal.turbo"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_queries_a_data_directory_offline() {
    let (mut server, _dir) = Server::start(Options::default());
    for i in 0..4 {
        server
            .post_json("cli", &json!({"type": "cli.test", "i": i}))
            .await;
    }
    // Killed: two rows only in the WAL; the CLI must see them too.
    server.kill();
    let lake = server.lake();
    let run = |args: &[&str]| cli_ok(&lake, args);
    let json_out = run(&[
        "query",
        "SELECT count(*) AS n FROM deliveries",
        "--format",
        "json",
    ]);
    assert_eq!(json_out.trim(), "[{\"n\":4}]");
    let table = run(&[
        "query",
        "SELECT event_type, count(*) AS n FROM deliveries GROUP BY event_type",
    ]);
    assert!(
        table.contains("cli.test") && table.contains("| 4"),
        "{table}"
    );
    let out_file = server.dir.join("export.parquet");
    run(&[
        "query",
        "SELECT * FROM deliveries",
        "-o",
        out_file.to_str().unwrap(),
    ]);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&out_file).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 4);
    // Bad SQL is an error with the message, not a crash.
    let out = std::process::Command::new(binary())
        .args(["query", "DROP TABLE deliveries", "--data-dir"])
        .arg(server.lake())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
}
