//! Saved queries: the list (with a broken file reported beside the rest), a run over
//! HTTP with parameters, and offline runs as of a scheduled time that repeat exactly.

use serde_json::{Value, json};

use crate::harness::{Options, Server, cli, cli_ok};

const PER_SOURCE: &str = "\
-- name: per_source
-- description: deliveries per source up to the run's time, sources with at least :min
-- schedule: every 1m
-- param: min = 1
SELECT source, count(*) AS n, max(received_at) AS last_at
FROM deliveries
WHERE received_at <= now()
GROUP BY source
HAVING count(*) >= :min
ORDER BY source
";

async fn get_json(server: &Server, path: &str) -> Value {
    let bytes = server.get(path).await.bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn saved_queries_are_listed_run_with_parameters_and_repeat_at_a_time() {
    let queries = tempfile::tempdir().unwrap();
    std::fs::write(queries.path().join("per_source.sql"), PER_SOURCE).unwrap();
    std::fs::write(
        queries.path().join("broken.sql"),
        "-- schedule: every 1m\nSELECT no_such_column FROM deliveries",
    )
    .unwrap();
    let (mut server, _dir) =
        Server::start(Options::default().env("HOOKSCOPE_QUERIES_DIRS", queries.path().display()));
    for (source, n) in [("alpha", 3), ("beta", 1)] {
        for i in 0..n {
            server.post_json(source, &json!({"i": i})).await;
        }
    }
    let cut = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(20));
    server.post_json("alpha", &json!({"late": true})).await;

    // The list: shipped queries, the user's, and the broken file with its reason.
    let list: Vec<Value> = serde_json::from_value(get_json(&server, "/queries").await).unwrap();
    let names: Vec<&str> = list.iter().filter_map(|q| q["name"].as_str()).collect();
    for expected in [
        "per_source",
        "traffic_spike",
        "silence",
        "latency_percentiles",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let broken = list.iter().find(|q| q["name"] == "broken").unwrap();
    let error = broken["error"].as_str().unwrap();
    assert!(
        error.contains("broken.sql:2") && error.contains("no_such_column"),
        "{error}"
    );
    let mine = list.iter().find(|q| q["name"] == "per_source").unwrap();
    assert_eq!(mine["schedule"], "every 1m");
    assert_eq!(mine["params"]["min"], "1");
    assert!(mine["next_run"].is_string(), "{mine}");
    let shown = get_json(&server, "/queries/per_source").await;
    assert!(shown["sql"].as_str().unwrap().contains(":min"), "{shown}");
    assert_eq!(server.get("/queries/nope").await.status(), 404);

    // A run now, with a parameter from the query string and from a JSON body.
    let run = |q: &'static str, body: Value| {
        let client = server.client.clone();
        let url = format!("{}/queries/per_source/run{q}", server.url);
        async move {
            let resp = client
                .post(url)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        }
    };
    let (status, rows) = run("?min=2", json!({})).await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["source"], "alpha");
    assert_eq!(rows[0]["n"], 4);
    let (_, rows) = run("", json!({"params": {"min": 1}, "at": cut.to_rfc3339()})).await;
    assert_eq!(
        rows[0]["n"], 3,
        "the late delivery is after the run's time: {rows}"
    );
    let (status, err) = run("?nope=1", json!({})).await;
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("`nope`"), "{err}");

    // Offline, as of the cut: the same rows every time, whatever came after.
    assert!(server.terminate().success());
    let lake = server.lake();
    let dirs = queries.path().display().to_string();
    let at = cut.to_rfc3339();
    let offline = || {
        let out = std::process::Command::new(crate::harness::binary())
            .args([
                "queries",
                "run",
                "per_source",
                "--format",
                "json",
                "--at",
                &at,
            ])
            .arg("--data-dir")
            .arg(&lake)
            .env("HOOKSCOPE_QUERIES_DIRS", &dirs)
            .env_remove("HOOKSCOPE_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let first = offline();
    assert_eq!(first, offline());
    assert_eq!(first[0]["n"], 3, "{first}");
    assert_eq!(first[1]["source"], "beta");

    // Errors name the query or the parameter.
    let out = cli(&lake, &["queries", "run", "no_such_query"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no saved query `no_such_query`"), "{err}");
    // A backtest: the rule at every second of the range, over the stored history.
    std::fs::write(
        queries.path().join("three.sql"),
        "-- alert: rows > 0\n-- schedule: every 1s\n\
         SELECT source, count(*) AS n FROM deliveries WHERE received_at <= now() \
         GROUP BY source HAVING count(*) >= 3",
    )
    .unwrap();
    let from = (cut - chrono::Duration::seconds(20)).to_rfc3339();
    let to = (cut + chrono::Duration::seconds(1)).to_rfc3339();
    let backtest = |name: &str| {
        std::process::Command::new(crate::harness::binary())
            .args([
                "queries", "backtest", name, "--from", &from, "--to", &to, "--format", "json",
            ])
            .arg("--data-dir")
            .arg(&lake)
            .env("HOOKSCOPE_QUERIES_DIRS", &dirs)
            .env_remove("HOOKSCOPE_CONFIG")
            .output()
            .unwrap()
    };
    let out = backtest("three");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let episodes: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(episodes.as_array().unwrap().len(), 1, "{episodes}");
    assert_eq!(episodes[0]["source"], "alpha");
    assert!(episodes[0]["resolved_at"].is_null(), "{episodes}");
    let out = backtest("per_source");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an alert rule"));

    let listed = cli_ok(&lake, &["queries", "list", "--format", "json"]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert!(listed["queries"].as_array().unwrap().len() >= 8, "{listed}");
}

/// The scheduler runs a query at its aligned times, as of those times, and the last
/// run and result show in `GET /queries/{name}`.
#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_runs_queries_at_their_aligned_times() {
    let queries = tempfile::tempdir().unwrap();
    std::fs::write(
        queries.path().join("ticks.sql"),
        "-- description: the run's time and the deliveries so far\n-- schedule: every 1s\n\
         SELECT now() AS at, count(*) AS n FROM deliveries WHERE received_at <= now()",
    )
    .unwrap();
    let (server, _dir) =
        Server::start(Options::default().env("HOOKSCOPE_QUERIES_DIRS", queries.path().display()));
    server.post_json("s", &json!({"a": 1})).await;
    let mut shown = Value::Null;
    for _ in 0..100 {
        shown = get_json(&server, "/queries/ticks").await;
        if shown["last_runs"].as_array().is_some_and(|r| r.len() >= 2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let runs = shown["last_runs"].as_array().expect("runs");
    assert!(runs.len() >= 2, "{shown}");
    for run in runs {
        let scheduled = run["scheduled_for"].as_str().unwrap();
        assert!(
            scheduled.ends_with(".000000Z"),
            "not on a whole second: {run}"
        );
        assert!(run["error"].is_null(), "{run}");
        // (catch-up when the machine was too busy to wake within the second)
        assert!(
            ["schedule", "catch-up"].contains(&run["trigger"].as_str().unwrap()),
            "{run}"
        );
        assert_eq!(run["rows"], 1);
    }
    // now() in the result is the scheduled time of the newest run, not its start.
    let newest = &runs[0];
    let at = shown["last_result"][0]["at"].as_str().unwrap();
    let scheduled =
        chrono::DateTime::parse_from_rfc3339(newest["scheduled_for"].as_str().unwrap()).unwrap();
    let seen =
        chrono::NaiveDateTime::parse_from_str(at.trim_end_matches('Z'), "%Y-%m-%dT%H:%M:%S%.f")
            .unwrap();
    assert_eq!(
        seen.and_utc().timestamp_micros(),
        scheduled.timestamp_micros(),
        "{shown}"
    );
    assert!(shown["next_run"].is_string());
    // The runs are counted in /metrics, and a query's time.
    server.query("SELECT 1 AS one").await;
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .parse()
            .unwrap()
    };
    assert!(
        value("hookscope_saved_query_runs_total") >= 2.0,
        "{metrics}"
    );
    assert_eq!(
        value("hookscope_saved_query_failures_total"),
        0.0,
        "{metrics}"
    );
    assert!(value("hookscope_parquet_bytes") >= 0.0);
    assert!(
        value("hookscope_query_duration_seconds_count") >= 1.0,
        "{metrics}"
    );

    // Every run is a row of query_runs, durable through the WAL: a kill -9 keeps them.
    let sql = "SELECT count(*) AS n, min(rows) AS r, count(error) AS e, \
               min(date_part('microsecond', scheduled_for) % 1000000) AS frac \
               FROM query_runs WHERE name = 'ticks'";
    let before = server.query(sql).await;
    assert!(before[0]["n"].as_i64().unwrap() >= 2, "{before:?}");
    assert_eq!(before[0]["r"], 1, "{before:?}");
    assert_eq!(before[0]["e"], 0, "{before:?}");
    let mut server = server;
    server.kill();
    server.restart();
    let after = server.query(sql).await;
    assert!(
        after[0]["n"].as_i64().unwrap() >= before[0]["n"].as_i64().unwrap(),
        "{before:?} → {after:?}"
    );
    let twice = server
        .query("SELECT scheduled_for, count(*) AS n FROM query_runs GROUP BY name, scheduled_for HAVING count(*) > 1")
        .await;
    assert!(twice.is_empty(), "runs recorded twice: {twice:?}");
}

/// Times missed while the server was stopped: each query runs once, for the latest.
#[tokio::test(flavor = "multi_thread")]
async fn after_downtime_each_query_catches_up_once_for_the_latest_missed_time() {
    let queries = tempfile::tempdir().unwrap();
    std::fs::write(
        queries.path().join("every2.sql"),
        "-- schedule: every 2s\nSELECT count(*) AS n FROM deliveries WHERE received_at <= now()",
    )
    .unwrap();
    let (mut server, _dir) =
        Server::start(Options::default().env("HOOKSCOPE_QUERIES_DIRS", queries.path().display()));
    let runs = "SELECT count(*) AS n FROM query_runs WHERE name = 'every2'";
    for _ in 0..60 {
        if server.query(runs).await[0]["n"].as_i64().unwrap() >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(server.terminate().success());
    // Down for at least two scheduled times.
    std::thread::sleep(std::time::Duration::from_millis(4_500));
    let before = chrono::Utc::now();
    server.restart();
    let after = chrono::Utc::now();
    // Catch-up runs for times up to the start (a loaded machine may add one for a
    // later time if the scheduler wakes more than a period late).
    let sql = format!(
        "SELECT scheduled_for, trigger FROM query_runs WHERE name = 'every2' \
         AND trigger = 'catch-up' AND scheduled_for <= '{}' ORDER BY scheduled_for",
        after.to_rfc3339()
    );
    let mut caught = Vec::new();
    for _ in 0..50 {
        caught = server.query(&sql).await;
        if !caught.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(caught.len(), 1, "{caught:?}");
    let at = chrono::DateTime::parse_from_rfc3339(caught[0]["scheduled_for"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    // The latest scheduled time before the start: within a period of it.
    assert!(
        at <= after && before - at < chrono::Duration::seconds(2),
        "{at} vs {before}..{after}"
    );
    assert_eq!(at.timestamp() % 2, 0, "aligned to the schedule: {at}");
    let twice = server
        .query("SELECT scheduled_for, count(*) AS n FROM query_runs GROUP BY name, scheduled_for HAVING count(*) > 1")
        .await;
    assert!(twice.is_empty(), "runs recorded twice: {twice:?}");
}

/// A rollup kept by the scheduler of a running server, visible to SQL as
/// `rollup_<name>`, and filled again by `queries backfill` on the stopped lake.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollup_is_kept_by_the_scheduler_and_backfilled_offline() {
    let queries = tempfile::tempdir().unwrap();
    std::fs::write(
        queries.path().join("per_minute.sql"),
        "-- schedule: every 1s\n-- materialize: true\n-- bucket: 1m\n-- lookback: 2\n\
         SELECT date_bin(INTERVAL '1 minute', received_at) AS minute, source, count(*) AS n \
         FROM deliveries WHERE received_at >= :from AND received_at < :to GROUP BY 1, 2",
    )
    .unwrap();
    let (mut server, _dir) =
        Server::start(Options::default().env("HOOKSCOPE_QUERIES_DIRS", queries.path().display()));
    let total = "SELECT CAST(sum(n) AS BIGINT) AS n FROM rollup_per_minute";
    let wait_for = |want: i64| {
        let server = &server;
        async move {
            let mut seen = Vec::new();
            for _ in 0..100 {
                let (status, body) = server.query_raw(total, "json").await;
                if status == 200 {
                    seen = serde_json::from_slice(&body).unwrap();
                    if seen.first().and_then(|r: &Value| r["n"].as_i64()) == Some(want) {
                        return;
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("rollup_per_minute never held {want} deliveries: {seen:?}");
        }
    };
    for i in 0..4 {
        server
            .post_json(if i % 2 == 0 { "a" } else { "b" }, &json!({"i": i}))
            .await;
    }
    wait_for(4).await;
    server.post_json("a", &json!({"i": 4})).await;
    wait_for(5).await;
    let shown = get_json(&server, "/queries/per_minute").await;
    assert_eq!(shown["materialize"], true, "{shown}");
    assert!(shown["last_runs"][0]["error"].is_null(), "{shown}");
    let direct = server
        .query("SELECT date_bin(INTERVAL '1 minute', received_at) AS minute, source, count(*) AS n FROM deliveries GROUP BY 1, 2 ORDER BY 1, 2")
        .await;
    let rolled = server
        .query("SELECT minute, source, n FROM rollup_per_minute ORDER BY 1, 2")
        .await;
    assert_eq!(rolled, direct);
    assert!(server.terminate().success());

    // Offline: the backfill recomputes the range from the raw rows.
    let lake = server.lake();
    let out = std::process::Command::new(crate::harness::binary())
        .args(["queries", "backfill", "per_minute", "--from"])
        .arg((chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339())
        .arg("--data-dir")
        .arg(&lake)
        .env("HOOKSCOPE_QUERIES_DIRS", queries.path())
        .env_remove("HOOKSCOPE_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("rollup_per_minute: ") && stdout.contains(" rows "),
        "{stdout}"
    );
    let n = cli_ok(&lake, &["query", "--format", "csv", total]);
    assert_eq!(n.lines().nth(1), Some("5"), "{n}");
    // Not a rollup: a clear refusal.
    let out = cli(
        &lake,
        &["queries", "backfill", "silence", "--from", "2026-01-01"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a rollup"));
}
