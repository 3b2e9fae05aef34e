use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::engine::tests::settings;
use crate::engine::{Engine, Mode};

pub(super) fn options(table: Table) -> Options {
    Options {
        receiver: std::sync::Arc::new(
            crate::ingest::receive::Receiver::new(&crate::config::Config::default()).unwrap(),
        ),
        table,
        dedup_window: Duration::from_secs(7 * 86_400),
        dedup_max_keys: 100_000,
        zstd_level: 1,
    }
}

/// A delivery with only the required columns (and a body).
pub(super) fn delivery(source: &str, at: &str, body: &str) -> Value {
    json!({
        "received_at": at,
        "source": source,
        "provider": "generic",
        "signature_status": "unchecked",
        "method": "POST",
        "path": format!("/webhook/{source}"),
        "query": "",
        "headers": {"content-type": "application/json"},
        "status_code": 200,
        "body": body,
    })
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn ndjson(rows: &[Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

async fn run(lake: &Path, files: &[PathBuf], table: Table) -> Result<Vec<Imported>, ImportError> {
    import(lake, files, &options(table), |_| {}).await
}

async fn query(lake: &Path, sql: &str) -> Vec<Value> {
    let engine = Engine::open(settings(lake), Mode::ReadOnly).await.unwrap();
    let (_, batches) = engine.query().collect(sql).await.unwrap();
    match crate::monitor::scheduler::rows_json(&batches, usize::MAX) {
        Value::Array(rows) => rows,
        other => panic!("{other}"),
    }
}

fn refused(e: ImportError) -> String {
    assert!(matches!(e, ImportError::Refused { .. }), "{e}");
    e.to_string()
}

#[tokio::test]
async fn a_missing_optional_column_is_null_and_ids_and_derived_columns_are_filled() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    // Two files out of order: the attempts count in time order across both.
    let a = write(
        dir.path(),
        "a.ndjson",
        &ndjson(&[
            delivery("shop", "2025-01-01T10:00:00Z", r#"{"n":1}"#),
            delivery("shop", "2025-01-01T10:00:30Z", r#"{"n":1}"#),
        ]),
    );
    let mut with_id = delivery("shop", "2025-01-01 09:59:00+00:00", r#"{"n":1}"#);
    with_id["id"] = json!("01JKEPT00000000000000000ID");
    with_id["sent_at"] = json!(1_735_725_539_000i64); // epoch ms, a second before
    let b = write(dir.path(), "b.ndjson", &ndjson(&[with_id]));
    let done = run(&lake, &[a.clone(), b.clone()], Table::Deliveries)
        .await
        .unwrap();
    assert_eq!(done.iter().map(|d| d.rows).collect::<Vec<_>>(), [2, 1]);
    let rows = query(
        &lake,
        "SELECT id, attempt, is_duplicate, retry_gap_ms, event_type, payload_size, payload_sha256, dedup_key, delivery_lag_ms, headers FROM deliveries ORDER BY received_at",
    )
    .await;
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["id"], "01JKEPT00000000000000000ID");
    let attempts: Vec<i64> = rows
        .iter()
        .map(|r| r["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(rows[0]["is_duplicate"], false);
    assert_eq!(rows[1]["is_duplicate"], true);
    assert_eq!(rows[1]["retry_gap_ms"], 60_000.0);
    assert_eq!(rows[2]["retry_gap_ms"], 30_000.0);
    assert_eq!(rows[0]["delivery_lag_ms"], 1_000.0);
    assert!(rows[1]["delivery_lag_ms"].is_null());
    for r in &rows {
        assert!(r["event_type"].is_null(), "{r}");
        assert_eq!(r["payload_size"], 7);
        let sha = crate::ingest::providers::sig::sha256_hex(br#"{"n":1}"#);
        assert_eq!(r["payload_sha256"], sha.as_str());
        assert_eq!(r["dedup_key"], format!("sha256:{sha}"));
        assert_eq!(r["headers"], r#"{"content-type":"application/json"}"#);
    }
    // Assigned ids: ULIDs of the row's time.
    let id = rows[1]["id"].as_str().unwrap();
    assert_eq!(id.len(), 26);
    let ulid: ulid::Ulid = id.parse().unwrap();
    assert_eq!(ulid.timestamp_ms(), 1_735_725_600_000);
}

#[tokio::test]
async fn a_wrong_type_is_refused_with_its_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut bad = delivery("shop", "2025-01-01T10:00:00Z", "{}");
    bad["status_code"] = json!("200");
    let json_file = write(
        dir.path(),
        "bad.ndjson",
        &ndjson(&[delivery("shop", "2025-01-01T09:00:00Z", "{}"), bad]),
    );
    let e = refused(
        run(&lake, &[json_file], Table::Deliveries)
            .await
            .unwrap_err(),
    );
    assert!(
        e.contains("bad.ndjson") && e.contains("line 2") && e.contains("`status_code`"),
        "{e}"
    );
    assert!(e.contains("expected an integer"), "{e}");

    let csv = write(
        dir.path(),
        "bad.csv",
        "received_at,source,provider,signature_status,method,path,query,headers,status_code\n\
         2025-01-01T10:00:00Z,shop,generic,unchecked,POST,/webhook/shop,,{},200\n\
         yesterday,shop,generic,unchecked,POST,/webhook/shop,,{},200\n",
    );
    let e = refused(run(&lake, &[csv], Table::Deliveries).await.unwrap_err());
    assert!(
        e.contains("row 2 (line 3") && e.contains("`received_at`"),
        "{e}"
    );
    assert!(e.contains("yesterday") && e.contains("RFC 3339"), "{e}");

    let mut status = delivery("shop", "2025-01-01T10:00:00Z", "{}");
    status["signature_status"] = json!("ok");
    let f = write(dir.path(), "status.jsonl", &ndjson(&[status]));
    let e = refused(run(&lake, &[f], Table::Deliveries).await.unwrap_err());
    assert!(
        e.contains("line 1") && e.contains("`signature_status`"),
        "{e}"
    );

    let f = write(
        dir.path(),
        "outcomes.ndjson",
        r#"{"reported_at":"2025-01-01T10:00:00Z","source":"shop","status":"ok","attributes":"{}"}"#,
    );
    let e = refused(run(&lake, &[f], Table::Outcomes).await.unwrap_err());
    assert!(
        e.contains("line 1") && e.contains("`status`") && e.contains("success"),
        "{e}"
    );

    let mut typo = delivery("shop", "2025-01-01T10:00:00Z", "{}");
    typo["evnt_type"] = json!("x");
    let f = write(dir.path(), "typo.ndjson", &ndjson(&[typo]));
    let e = refused(run(&lake, &[f], Table::Deliveries).await.unwrap_err());
    assert!(
        e.contains("`evnt_type` is not a column of deliveries"),
        "{e}"
    );
    assert!(!lake.join("deliveries").exists(), "nothing was written");
}

#[tokio::test]
async fn a_missing_required_column_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let csv = write(
        dir.path(),
        "no-method.csv",
        "received_at,source,provider,signature_status,path,query,headers,status_code\n\
         2025-01-01T10:00:00Z,shop,generic,unchecked,/webhook/shop,,{},200\n",
    );
    let e = refused(run(&lake, &[csv], Table::Deliveries).await.unwrap_err());
    assert!(e.contains("required column `method` is missing"), "{e}");

    // A required value missing in one row of NDJSON.
    let mut no_source = delivery("shop", "2025-01-01T10:00:00Z", "{}");
    no_source.as_object_mut().unwrap().remove("source");
    let f = write(
        dir.path(),
        "no-source.ndjson",
        &format!(
            "{}\n\n{no_source}\n",
            delivery("shop", "2025-01-01T09:00:00Z", "{}")
        ),
    );
    let e = refused(run(&lake, &[f], Table::Deliveries).await.unwrap_err());
    assert!(
        e.contains("line 3, column `source`: a value is required"),
        "{e}"
    );
}

#[tokio::test]
async fn a_refused_file_leaves_the_lake_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let good = write(
        dir.path(),
        "good.ndjson",
        &ndjson(&[delivery("shop", "2025-01-01T10:00:00Z", "{}")]),
    );
    run(&lake, std::slice::from_ref(&good), Table::Deliveries)
        .await
        .unwrap();
    let lake_ref = Lake::local(&lake).unwrap();
    let before = Manifest::load(&lake_ref).await.unwrap();
    let files_before = lake_ref.list("deliveries").await.unwrap().len();

    let mut bad = delivery("shop", "2025-01-02T10:00:00Z", "{}");
    bad["attempt"] = json!(1.5);
    let other = write(
        dir.path(),
        "other.ndjson",
        &ndjson(&[delivery("api", "2025-01-03T10:00:00Z", "{}")]),
    );
    let bad = write(dir.path(), "bad.ndjson", &ndjson(&[bad]));
    let e = refused(
        run(&lake, &[other, bad], Table::Deliveries)
            .await
            .unwrap_err(),
    );
    assert!(e.contains("bad.ndjson") && e.contains("`attempt`"), "{e}");
    let after = Manifest::load(&lake_ref).await.unwrap();
    assert_eq!(after.version, before.version);
    assert_eq!(
        lake_ref.list("deliveries").await.unwrap().len(),
        files_before
    );
    let rows = query(&lake, "SELECT source FROM deliveries").await;
    assert_eq!(rows, [json!({"source": "shop"})]);
}

#[tokio::test]
async fn csv_and_parquet_read_into_the_tables_types() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let csv = write(
        dir.path(),
        "outcomes.csv",
        "id,reported_at,source,status,processing_time_ms,error_type,records_processed,attributes\n\
         o1,1735725600000,shop,success,12.5,,3,{}\n\
         ,1735725600123456,shop,failure,,db,,\"{\"\"k\"\":1}\"\n",
    );
    run(&lake, &[csv], Table::Outcomes).await.unwrap();
    let rows = query(
        &lake,
        "SELECT id, CAST(reported_at AS VARCHAR) AS t, status, processing_time_ms, error_type, records_processed, attributes FROM outcomes ORDER BY reported_at",
    )
    .await;
    assert_eq!(rows[0]["id"], "o1");
    assert_eq!(rows[0]["t"], "2025-01-01T10:00:00Z");
    assert_eq!(rows[0]["processing_time_ms"], 12.5);
    assert!(rows[0]["error_type"].is_null());
    assert_eq!(rows[0]["records_processed"], 3);
    assert_eq!(rows[1]["t"], "2025-01-01T10:00:00.123456Z");
    assert_eq!(rows[1]["id"].as_str().unwrap().len(), 26);
    assert_eq!(rows[1]["attributes"], r#"{"k":1}"#);
    assert!(rows[1]["records_processed"].is_null());

    // Parquet written by another tool: int64 status codes, nanosecond timestamps.
    use arrow::array::{Int64Array, StringArray, TimestampNanosecondArray};
    let text = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
    let schema = Arc::new(arrow::datatypes::Schema::new(
        [
            (
                "received_at",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
            ),
            ("source", DataType::Utf8),
            ("provider", DataType::Utf8),
            ("signature_status", DataType::Utf8),
            ("method", DataType::Utf8),
            ("path", DataType::Utf8),
            ("query", DataType::Utf8),
            ("headers", DataType::Utf8),
            ("status_code", DataType::Int64),
            ("event_id", DataType::Utf8),
        ]
        .map(|(n, t)| arrow::datatypes::Field::new(n, t, true))
        .to_vec(),
    ));
    let batch = |status: i64| {
        RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(TimestampNanosecondArray::from(vec![
                    1_735_725_600_000_000_000,
                ])),
                text("pq"),
                text("stripe"),
                text("valid"),
                text("POST"),
                text("/webhook/pq"),
                text(""),
                text("{}"),
                Arc::new(Int64Array::from(vec![status])),
                text("evt_1"),
            ],
        )
        .unwrap()
    };
    let write_parquet = |name: &str, b: RecordBatch| {
        let path = dir.path().join(name);
        let file = std::fs::File::create(&path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, b.schema(), None).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
        path
    };
    let good = write_parquet("ok.parquet", batch(202));
    run(&lake, &[good], Table::Deliveries).await.unwrap();
    let rows = query(
        &lake,
        "SELECT status_code, dedup_key, payload_size, payload_sha256, CAST(received_at AS VARCHAR) AS t FROM deliveries",
    )
    .await;
    assert_eq!(
        rows,
        [
            json!({"status_code": 202, "dedup_key": "evt_1", "payload_size": 0, "payload_sha256": "", "t": "2025-01-01T10:00:00Z"})
        ]
    );
    let big = write_parquet("big.parquet", batch(1 << 40));
    let e = refused(run(&lake, &[big], Table::Deliveries).await.unwrap_err());
    assert!(
        e.contains("row 1, column `status_code`") && e.contains("out of range"),
        "{e}"
    );
}

use arrow::datatypes::{DataType, TimeUnit};
use std::sync::Arc;

#[tokio::test]
async fn unknown_formats_and_a_running_server_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let xlsx = write(dir.path(), "export.xlsx", "");
    let e = run(&lake, &[xlsx], Table::Deliveries).await.unwrap_err();
    assert!(matches!(e, ImportError::UnknownFormat(_)), "{e}");
    assert!(e.to_string().contains(".parquet, .ndjson"), "{e}");

    std::fs::create_dir_all(&lake).unwrap();
    let _server = crate::engine::lock_dir(&lake).unwrap();
    let f = write(
        dir.path(),
        "a.ndjson",
        &ndjson(&[delivery("shop", "2025-01-01T10:00:00Z", "{}")]),
    );
    let e = run(&lake, &[f], Table::Deliveries).await.unwrap_err();
    assert!(e.to_string().contains("stop the server first"), "{e}");
}

#[test]
fn timestamps_in_the_formats_exports_use() {
    let t = 1_735_725_600_000_000; // 2025-01-01T10:00:00Z
    for text in [
        "2025-01-01T10:00:00Z",
        "2025-01-01T11:00:00+01:00",
        "2025-01-01 10:00:00",
        "2025-01-01 10:00:00.000",
        "2025-01-01 12:00:00+02:00",
        "2025-01-01T10:00:00",
        "1735725600",
        "1735725600000",
        "1735725600000000",
        "1735725600000000000",
        "1735725600.0",
    ] {
        assert_eq!(parse_timestamp(text), Some(t), "{text}");
    }
    assert_eq!(
        parse_timestamp("2025-01-01T10:00:00.25Z"),
        Some(t + 250_000)
    );
    for bad in ["", "yesterday", "2025-13-01T00:00:00Z", "01/01/2025"] {
        assert_eq!(parse_timestamp(bad), None, "{bad}");
    }
}

#[tokio::test]
async fn imported_headers_are_redacted_as_on_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut row = delivery("shop", "2025-01-01T10:00:00Z", "{}");
    row["headers"] = json!({
        "Authorization": "Bearer sk_live_secret",
        "Cookie": "session=1",
        "X-Custom": "kept",
        "Content-Length": 2,
    });
    let file = write(dir.path(), "h.ndjson", &ndjson(&[row]));
    run(&lake, &[file], Table::Deliveries).await.unwrap();
    let rows = query(&lake, "SELECT headers FROM deliveries").await;
    let headers: Value = serde_json::from_str(rows[0]["headers"].as_str().unwrap()).unwrap();
    assert_eq!(
        headers,
        json!({"authorization": "[redacted]", "content-length": "2", "cookie": "[redacted]", "x-custom": "kept"})
    );
    // Headers that are not a JSON object are refused, naming the column.
    let mut bad = delivery("shop", "2025-01-01T10:00:00Z", "{}");
    bad["headers"] = json!("authorization: Bearer x");
    let file = write(dir.path(), "bad.ndjson", &ndjson(&[bad]));
    let err = refused(run(&lake, &[file], Table::Deliveries).await.unwrap_err());
    assert!(
        err.contains("`headers`") && err.contains("JSON object"),
        "{err}"
    );
}

#[tokio::test]
async fn times_outside_1970_to_2200_are_refused_and_a_fresh_lake_keeps_an_empty_dedup_index() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut far = delivery("shop", "2025-01-01T10:00:00Z", "{}");
    far["received_at"] = json!(99_999_999_999_999_999i64); // ns read as µs: year 5138
    let file = write(dir.path(), "far.ndjson", &ndjson(&[far]));
    let err = refused(run(&lake, &[file], Table::Deliveries).await.unwrap_err());
    assert!(
        err.contains("`received_at`") && err.contains("1970 and 2200"),
        "{err}"
    );
    // Into a lake no server wrote: the manifest says the dedup index is empty, so a
    // first start does not rebuild it from the imported rows.
    let ok = write(
        dir.path(),
        "ok.ndjson",
        &ndjson(&[delivery("shop", "2025-01-01T10:00:00Z", "{}")]),
    );
    run(&lake, &[ok], Table::Deliveries).await.unwrap();
    let manifest = crate::lake::manifest::Manifest::load(&crate::lake::Lake::local(&lake).unwrap())
        .await
        .unwrap();
    assert_eq!(manifest.dedup, Some(Default::default()));
}

#[tokio::test]
async fn given_hashes_and_lags_are_kept_as_given_where_the_row_would_derive_others() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let body = r#"{"n":1}"#;
    let own = crate::ingest::providers::sig::sha256_hex(body.as_bytes());
    let mut rows = Vec::new();
    for (i, given) in [Some(own.clone()), Some("ABC123".to_string()), None]
        .into_iter()
        .enumerate()
    {
        let mut d = delivery("shop", &format!("2025-01-01T10:00:0{i}Z"), body);
        if let Some(g) = given {
            d["payload_sha256"] = json!(g);
        }
        d["sent_at"] = json!("2025-01-01T09:59:00Z");
        if i == 1 {
            d["delivery_lag_ms"] = json!(5.5);
        }
        rows.push(d);
    }
    let file = write(dir.path(), "h.ndjson", &ndjson(&rows));
    run(&lake, &[file], Table::Deliveries).await.unwrap();
    let got = query(
        &lake,
        "SELECT payload_sha256, delivery_lag_ms FROM deliveries ORDER BY received_at",
    )
    .await;
    let hashes: Vec<&str> = got
        .iter()
        .map(|r| r["payload_sha256"].as_str().unwrap())
        .collect();
    assert_eq!(hashes, [own.as_str(), "ABC123", own.as_str()]);
    let lags: Vec<f64> = got
        .iter()
        .map(|r| r["delivery_lag_ms"].as_f64().unwrap())
        .collect();
    assert_eq!(lags, [60_000.0, 5.5, 62_000.0]);
}
