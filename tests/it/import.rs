//! `hookscope import` against the real binary: NDJSON, CSV and Parquet history files
//! appended to a lake, then queried with `hookscope query`; a refused file imports
//! nothing; a running server's lake is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde_json::{Value, json};

use crate::harness::{Options, Server, cli, cli_ok};

fn query(lake: &Path, sql: &str) -> Value {
    serde_json::from_str(&cli_ok(lake, &["query", sql, "--format", "json"])).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A Parquet file as another tool writes one: millisecond timestamps without a zone,
/// int64 status codes.
fn parquet(dir: &Path) -> PathBuf {
    let text = |v: &str| Arc::new(StringArray::from(vec![v, v])) as ArrayRef;
    let fields = [
        (
            "received_at",
            DataType::Timestamp(TimeUnit::Millisecond, None),
        ),
        ("source", DataType::Utf8),
        ("provider", DataType::Utf8),
        ("event_id", DataType::Utf8),
        ("signature_status", DataType::Utf8),
        ("method", DataType::Utf8),
        ("path", DataType::Utf8),
        ("query", DataType::Utf8),
        ("headers", DataType::Utf8),
        ("status_code", DataType::Int64),
    ];
    let schema = Arc::new(Schema::new(
        fields.map(|(n, t)| Field::new(n, t, false)).to_vec(),
    ));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            // 2025-01-02T08:00:00Z and a retry 90 s later.
            Arc::new(TimestampMillisecondArray::from(vec![
                1_735_804_800_000,
                1_735_804_890_000,
            ])),
            text("stripe"),
            text("stripe"),
            text("evt_9"),
            text("valid"),
            text("POST"),
            text("/webhook/stripe"),
            text(""),
            text("{}"),
            Arc::new(Int64Array::from(vec![500, 200])),
        ],
    )
    .unwrap();
    let path = dir.join("stripe.parquet");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    path
}

#[test]
fn history_files_of_every_format_are_imported_and_queryable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let lake = dir.join("lake");
    let row = |at: &str, body: &str| {
        json!({
            "received_at": at, "source": "flask", "provider": "generic",
            "signature_status": "unchecked", "method": "POST", "path": "/hook",
            "query": "", "headers": {"content-type": "application/json"},
            "status_code": 200, "body": body,
        })
        .to_string()
    };
    let ndjson = write(
        dir,
        "flask.ndjson",
        &format!(
            "{}\n{}\n",
            row("2025-01-01 10:00:00", r#"{"order":1}"#),
            row("2025-01-01T10:00:05+00:00", r#"{"order":1}"#)
        ),
    );
    let csv = write(
        dir,
        "saas.csv",
        "id,received_at,source,provider,event_type,signature_status,method,path,query,headers,status_code,body\n\
         01JH0000000000000000000CSV,1735725602000,saas,github,push,valid,POST,/webhook/saas,,{},200,hello\n",
    );
    let parquet = parquet(dir);
    let out = cli_ok(
        &lake,
        &[
            "import",
            ndjson.to_str().unwrap(),
            csv.to_str().unwrap(),
            parquet.to_str().unwrap(),
        ],
    );
    assert!(out.contains("flask.ndjson: 2 rows imported"), "{out}");
    assert!(out.contains("saas.csv: 1 row imported"), "{out}");
    assert!(out.contains("stripe.parquet: 2 rows imported"), "{out}");
    assert!(
        out.contains("5 rows from 3 files imported into deliveries"),
        "{out}"
    );

    let rows = query(
        &lake,
        "SELECT source, attempt, is_duplicate, retry_gap_ms, status_code, event_type, dedup_key, payload_size \
         FROM deliveries ORDER BY received_at",
    );
    assert_eq!(
        rows,
        json!([
            {"source": "flask", "attempt": 1, "is_duplicate": false, "retry_gap_ms": null, "status_code": 200,
             "event_type": null, "dedup_key": format!("sha256:{}", sha256(br#"{"order":1}"#)), "payload_size": 11},
            {"source": "saas", "attempt": 1, "is_duplicate": false, "retry_gap_ms": null, "status_code": 200,
             "event_type": "push", "dedup_key": format!("sha256:{}", sha256(b"hello")), "payload_size": 5},
            {"source": "flask", "attempt": 2, "is_duplicate": true, "retry_gap_ms": 5000.0, "status_code": 200,
             "event_type": null, "dedup_key": format!("sha256:{}", sha256(br#"{"order":1}"#)), "payload_size": 11},
            {"source": "stripe", "attempt": 1, "is_duplicate": false, "retry_gap_ms": null, "status_code": 500,
             "event_type": null, "dedup_key": "evt_9", "payload_size": 0},
            {"source": "stripe", "attempt": 2, "is_duplicate": true, "retry_gap_ms": 90000.0, "status_code": 200,
             "event_type": null, "dedup_key": "evt_9", "payload_size": 0},
        ])
    );
    // The imported files are ordinary committed files of the lake.
    cli_ok(&lake, &["check"]);
    let ids = query(
        &lake,
        "SELECT count(DISTINCT id) AS n FROM deliveries WHERE id = '01JH0000000000000000000CSV' OR length(id) = 26",
    );
    assert_eq!(ids, json!([{"n": 5}]));

    // Outcomes, and a refused file: nothing of the command is imported.
    let outcomes = write(
        dir,
        "reports.jsonl",
        r#"{"reported_at": 1735725601, "source": "flask", "status": "success", "processing_time_ms": 12, "attributes": {}}
{"reported_at": "2025-01-01T10:00:06Z", "source": "flask", "status": "failure", "error_type": "db", "attributes": "{}"}
"#,
    );
    let bad = write(
        dir,
        "bad.jsonl",
        r#"{"reported_at": "2025-01-01T11:00:00Z", "source": "flask", "status": "success", "processing_time_ms": "slow", "attributes": "{}"}
"#,
    );
    let out = cli(
        &lake,
        &[
            "import",
            "--table",
            "outcomes",
            outcomes.to_str().unwrap(),
            bad.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.jsonl: refused, nothing was imported: line 1, column `processing_time_ms`: expected a number"),
        "{err}"
    );
    assert_eq!(
        query(&lake, "SELECT count(*) AS n FROM outcomes"),
        json!([{"n": 0}])
    );
    let out = cli_ok(
        &lake,
        &["import", "--table", "outcomes", outcomes.to_str().unwrap()],
    );
    assert!(
        out.contains("reports.jsonl: 2 rows imported into outcomes"),
        "{out}"
    );
    assert_eq!(
        query(
            &lake,
            "SELECT status, processing_time_ms, error_type FROM outcomes ORDER BY reported_at"
        ),
        json!([
            {"status": "success", "processing_time_ms": 12.0, "error_type": null},
            {"status": "failure", "processing_time_ms": null, "error_type": "db"},
        ])
    );

    let out = cli(
        &lake,
        &["import", write(dir, "x.txt", "").to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("x.txt: cannot tell its format"), "{err}");

    // The lake of a running server: refused, the server's rows untouched.
    let server = Server::start_in(dir, Options::default());
    let out = cli(&server.lake(), &["import", ndjson.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stop the server first"), "{err}");
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
