//! `hookscope bench`: generates a lake, reuses it, times the whole set, and its
//! queries answer what the stored columns say.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::harness::cli;

fn hookscope(dir: &Path, args: &[&str]) -> Output {
    cli(dir, args)
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn bench(dir: &Path) -> Value {
    json_of(&hookscope(
        dir,
        &[
            "bench",
            "--rows",
            "4000",
            "--days",
            "1",
            "--runs",
            "1",
            "--format",
            "json",
            "--results",
        ],
    ))
}

fn query<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["queries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {report}"))
}

#[test]
fn bench_generates_a_lake_then_reuses_it_and_times_the_whole_set() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lake");
    let first = bench(&dir);
    let lake = &first["lake"];
    assert_eq!(lake["generated_now"], true);
    let deliveries = lake["deliveries"].as_u64().unwrap();
    let outcomes = lake["outcomes"].as_u64().unwrap();
    assert!((3800..4200).contains(&deliveries), "{lake}");
    assert!(outcomes > 0, "{lake}");

    let names: Vec<&str> = first["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names[..8],
        [
            "latency_by_hour",
            "retry_intervals",
            "size_trend",
            "volume_spikes",
            "volume_7d",
            "last_hour",
            "lookup_id",
            "lookup_event"
        ]
    );
    // Then every shipped saved query, as of the lake's newest delivery.
    for saved in [
        "saved:traffic_spike",
        "saved:silence",
        "saved:latency_percentiles",
    ] {
        assert!(names.contains(&saved), "{names:?}");
    }
    // Then a chart read from the raw table and from the hourly rollup (filled
    // first).
    let tail = names.len() - 2;
    assert!(
        names[8..tail].iter().all(|n| n.starts_with("saved:")),
        "{names:?}"
    );
    assert_eq!(
        names[tail..],
        ["rollup:daily_from_raw", "rollup:daily_from_rollup"]
    );
    for q in first["queries"].as_array().unwrap() {
        assert!(q.get("error").is_none(), "{q}");
        assert!(q["median_ms"].as_f64().unwrap() > 0.0, "{q}");
        assert_eq!(q["times_ms"].as_array().unwrap().len(), 1, "{q}");
    }
    // Rows scanned: the table in the query's time range.
    assert_eq!(query(&first, "latency_by_hour")["scanned_rows"], outcomes);
    assert_eq!(query(&first, "size_trend")["scanned_rows"], deliveries);
    assert_eq!(query(&first, "volume_7d")["scanned_rows"], deliveries);
    let last_hour = query(&first, "last_hour")["scanned_rows"].as_u64().unwrap();
    assert!(last_hour > 0 && last_hour < deliveries / 4, "{last_hour}");
    // Six sources, one a day spanning 24 or 25 hours; acme is silent at the end.
    let by_hour = query(&first, "latency_by_hour")["result_rows"]
        .as_u64()
        .unwrap();
    assert!((100..=150).contains(&by_hour), "{by_hour}");
    assert_eq!(query(&first, "last_hour")["result_rows"], 5);
    assert_eq!(query(&first, "lookup_id")["result_rows"], 1);
    let event = &query(&first, "lookup_event")["result"];
    assert!(event.as_array().unwrap().len() >= 2, "{event}");
    assert_eq!(event[0]["attempt"], 1, "{event}");
    assert_eq!(event[1]["attempt"], 2, "{event}");

    // Reused as it is the second time.
    let second = bench(&dir);
    assert_eq!(second["lake"]["generated_now"], false);
    assert_eq!(second["lake"]["deliveries"], deliveries);

    // Retry intervals by lag() over dedup_key are the stored retry_gap_ms.
    let stored = json_of(&hookscope(
        &dir,
        &[
            "query",
            "SELECT source, count(*) AS repeats, avg(retry_gap_ms) AS avg_gap_ms, \
             min(retry_gap_ms) AS min_gap_ms, max(retry_gap_ms) AS max_gap_ms \
             FROM deliveries WHERE retry_gap_ms IS NOT NULL GROUP BY source ORDER BY source",
            "--format",
            "json",
        ],
    ));
    let lagged = &query(&first, "retry_intervals")["result"];
    assert!(!stored.as_array().unwrap().is_empty());
    assert_eq!(
        stored.as_array().unwrap().len(),
        lagged.as_array().unwrap().len()
    );
    for (s, l) in stored
        .as_array()
        .unwrap()
        .iter()
        .zip(lagged.as_array().unwrap())
    {
        assert_eq!(s["source"], l["source"]);
        assert_eq!(s["repeats"], l["repeats"]);
        for c in ["avg_gap_ms", "min_gap_ms", "max_gap_ms"] {
            let (a, b) = (s[c].as_f64().unwrap(), l[c].as_f64().unwrap());
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{c}: {s} vs {l}");
        }
    }
}

#[test]
fn bench_says_what_is_wrong_with_its_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let out = hookscope(tmp.path(), &["bench", "--format", "xml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use table or json"));
    let out = hookscope(
        &tmp.path().join("lake"),
        &["bench", "--rows", "500", "--days", "1", "--query", "nope"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope") && err.contains("retry_intervals"),
        "{err}"
    );
}
