use std::collections::BTreeMap;
use std::time::Duration;

use super::file::{AlertCondition, CompareOp};
use super::*;

#[test]
fn every_shipped_file_is_built_in_and_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    on_disk.sort();
    let mut built_in: Vec<String> = SHIPPED.iter().map(|(n, _)| n.to_string()).collect();
    built_in.sort();
    assert_eq!(on_disk, built_in, "queries/ and SHIPPED differ");
    let registry = Registry::load(&[]);
    assert!(registry.problems().is_empty(), "{:?}", registry.problems());
    assert!(registry.notes().is_empty(), "{:?}", registry.notes());
    for q in registry.queries() {
        assert!(!q.description.is_empty(), "{}: no description", q.name);
        assert!(q.schedule.is_some(), "{}: no schedule", q.name);
    }
}

#[test]
fn a_header_sets_every_key() {
    let text = "-- name: spikes\n\
                -- description: spikes per source\n\
                -- schedule: 0 9 * * 1-5\n\
                -- timezone: Europe/Berlin\n\
                -- alert: rows >= 2\n\
                -- severity: critical\n\
                -- for: 2m\n\
                -- keep_firing_for: 5m\n\
                -- key: source, event_type\n\
                -- param: factor = 5\n\
                -- param: label = 'a b'\n\
                -- Method: anything, free text\n\
                -- colour: blue\n\
                \n\
                SELECT 1 AS x;\n";
    let q = file::parse("f.sql", "f", text).unwrap();
    assert_eq!(q.name, "spikes");
    assert_eq!(
        q.alert,
        Some(AlertCondition {
            op: CompareOp::Ge,
            rows: 2
        })
    );
    assert_eq!(q.severity, "critical");
    assert_eq!(q.pending_for, Duration::from_secs(120));
    assert_eq!(q.keep_firing_for, Duration::from_secs(300));
    assert_eq!(q.key, ["source", "event_type"]);
    assert_eq!(q.params["factor"], "5");
    assert_eq!(q.params["label"], "a b");
    assert_eq!(q.sql, "SELECT 1 AS x");
    assert_eq!(q.sql_line, 15);
    assert_eq!(
        q.schedule.as_ref().unwrap().describe(),
        "0 9 * * 1-5 (Europe/Berlin)"
    );
    assert_eq!(q.warnings.len(), 1, "{:?}", q.warnings);
    assert!(q.warnings[0].contains("f.sql:13") && q.warnings[0].contains("colour"));
}

#[test]
fn bad_headers_name_the_file_line_and_fix() {
    let cases = [
        (
            "-- schedule: every fortnight\nSELECT 1",
            1,
            "every <duration>",
        ),
        ("-- alert: many rows\nSELECT 1", 1, "rows > 0"),
        (
            "-- severity: loud\nSELECT 1",
            1,
            "info, warning or critical",
        ),
        ("-- x\n-- lookback: 0\nSELECT 1", 2, "at least 1"),
        ("-- param: 1x = 3\nSELECT 1", 1, "param name"),
        (
            "-- param: a = 1\n-- param: a = 2\nSELECT 1",
            2,
            "declared twice",
        ),
        ("-- name: Bad-Name\nSELECT 1", 1, "lower-case"),
        (
            "-- timezone: Mars/Olympus\n-- schedule: 0 * * * *\nSELECT 1",
            1,
            "IANA",
        ),
        ("-- materialize: true\nSELECT 1", 1, "bucket"),
        ("-- name: only_a_header\n", 1, "no SQL"),
        ("-- for: soon\nSELECT 1", 1, "duration"),
    ];
    for (text, line, hint) in cases {
        let err = file::parse("q.sql", "q", text).unwrap_err();
        assert_eq!(err.line, line, "{text}: {err}");
        assert!(
            err.to_string().starts_with(&format!("q.sql:{line}: ")),
            "{err}"
        );
        assert!(err.reason.contains(hint), "{text}: {err}");
    }
}

#[test]
fn user_files_replace_shipped_ones_and_broken_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("silence.sql"),
        "-- description: mine\n-- schedule: every 1m\nSELECT 1 AS x",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("broken.sql"),
        "-- schedule: sometimes\nSELECT 1",
    )
    .unwrap();
    std::fs::write(dir.path().join("Bad Name.sql"), "SELECT 1").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a query").unwrap();
    let registry = Registry::load(&[dir.path().to_path_buf(), dir.path().join("missing")]);
    assert_eq!(registry.get("silence").unwrap().description, "mine");
    assert!(
        registry
            .notes()
            .iter()
            .any(|n| n.contains("replaces shipped:silence.sql"))
    );
    let problems: Vec<String> = registry.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains("broken.sql:1")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("Bad Name.sql")),
        "{problems:?}"
    );
    assert_eq!(registry.queries().count(), SHIPPED.len());
}

#[test]
fn run_sql_binds_overrides_and_refuses_unknown_ones() {
    let q = file::parse(
        "q.sql",
        "q",
        "-- param: k = 5\nSELECT :k AS k, ':k' AS text",
    )
    .unwrap();
    let none = BTreeMap::new();
    assert_eq!(
        run::sql_of(&q, chrono::Utc::now(), &none).unwrap(),
        "SELECT 5 AS k, ':k' AS text"
    );
    let k3 = BTreeMap::from([("k".to_string(), "3".to_string())]);
    assert_eq!(
        run::sql_of(&q, chrono::Utc::now(), &k3).unwrap(),
        "SELECT 3 AS k, ':k' AS text"
    );
    let bad = BTreeMap::from([("x".to_string(), "3".to_string())]);
    assert!(
        run::sql_of(&q, chrono::Utc::now(), &bad)
            .unwrap_err()
            .to_string()
            .contains("`x`")
    );
    assert!(run::parse_time("2026-03-01").is_ok());
    assert!(run::parse_time("2026-03-01T12:05:00Z").is_ok());
    assert!(
        run::parse_time("yesterday")
            .unwrap_err()
            .contains("RFC 3339")
    );
}

/// Every shipped query plans against the tables; a rule whose key is not a column of
/// its result is a problem, not a rule that merges every row into one alert.
#[tokio::test]
async fn shipped_queries_plan_and_alert_keys_must_be_result_columns() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("typo.sql"),
        "-- alert: rows > 0\n-- key: sourse\n-- schedule: every 1m\nSELECT source, count(*) AS n FROM deliveries GROUP BY source",
    )
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let catalog = crate::query::catalog::Catalog::new(
        crate::lake::Lake::local(scratch.path()).unwrap(),
        crate::lake::manifest::Manifest::default(),
    );
    let engine =
        crate::query::QueryEngine::new(&catalog, crate::query::QueryLimits::default(), false)
            .unwrap();
    // A query over a rollup with no rows yet waits for it; one over a rollup that no
    // query keeps is a problem.
    std::fs::write(
        dir.path().join("daily.sql"),
        "-- schedule: every 1h\nSELECT date_trunc('day', hour) AS day, sum(deliveries) AS n FROM rollup_hourly_traffic GROUP BY 1",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("orphan.sql"),
        "-- schedule: every 1h\nSELECT * FROM rollup_nobody_keeps",
    )
    .unwrap();
    let mut registry = Registry::load(&[dir.path().to_path_buf()]);
    registry.check(&engine).await;
    assert!(registry.get("daily").is_some());
    assert!(
        registry
            .notes()
            .iter()
            .any(|n| n.contains("daily.sql") && n.contains("rollup_hourly_traffic")),
        "{:?}",
        registry.notes()
    );
    let problems: Vec<String> = registry.problems().iter().map(|p| p.to_string()).collect();
    assert!(
        problems.iter().any(|p| p.contains("orphan.sql")),
        "{problems:?}"
    );
    let problems: Vec<String> = problems
        .into_iter()
        .filter(|p| !p.contains("orphan.sql"))
        .collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("key column `sourse`"), "{problems:?}");
    // The shipped ones and `daily`.
    assert_eq!(registry.queries().count(), SHIPPED.len() + 1);
}
