//! Importing history: rows of `deliveries` or `outcomes` from Parquet, NDJSON or CSV
//! files (a former receiver's database, a SaaS export), of any age, appended to a
//! lake no server runs on.
//!
//! The files are read and checked whole first ([`read`]); then the columns the write
//! path derives are derived as it does: ids by [`new_id`], `payload_size`,
//! `payload_sha256` and `dedup_key` from the body as on receipt, `attempt`,
//! `is_duplicate` and `retry_gap_ms` by a fresh dedup index fed every row of the
//! invocation in `received_at` order, `delivery_lag_ms` from `sent_at`. The rows then
//! take the path a flush takes (the buffer's builders → [`persist`] → the manifest),
//! without the WAL, like `generate`.
//!
//! Invariants:
//! - A file is refused whole, with the row and column named, when a value does not
//!   have its column's type, a column is not the table's, or a required column is
//!   missing or null; as every file is checked before anything is written, nothing
//!   of the invocation is imported then.
//! - One manifest commit per file: a file's rows become visible all at once or not
//!   at all; files of an import that stops before its commit are removed at a
//!   server's next start, like a flush's.
//! - A derived column the file has keeps the file's values (nulls in it are
//!   derived); an `attempt` the file gives is used as the provider's own number
//!   (so `is_duplicate` follows it).
//! - The data directory's lock is held throughout: an import never runs beside a
//!   server (or another import) on the same directory.
//! - Imported rows are not added to a persisted dedup index (like generated ones):
//!   arrivals after the import count from what the server's index holds.

#[cfg(test)]
mod anomalies;
mod read;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use base64::Engine as _;
use thiserror::Error;

use read::FileRows;
pub use read::{Format, parse_timestamp};

use crate::buffer::{Buffer, Derived};
use crate::config::Config;
use crate::engine::EngineError;
use crate::engine::dedup::DedupIndex;
use crate::ingest::providers::sig::sha256_hex;
use crate::ingest::receive::new_id;
use crate::lake::append::Append;
use crate::lake::manifest::{Manifest, ManifestError};
use crate::lake::persist::{self, PersistError};
use crate::lake::{Lake, LakeError};
use crate::model::{Delivery, Outcome, SignatureStatus, StoredBody};
use crate::tables::Table;

/// How to import.
#[derive(Clone)]
pub struct Options {
    /// Which headers are stored redacted, as the receive step decides it.
    pub receiver: std::sync::Arc<crate::ingest::receive::Receiver>,
    /// `deliveries` or `outcomes`.
    pub table: Table,
    /// The dedup index's window and bound, as the server's (`[dedup]`).
    pub dedup_window: Duration,
    pub dedup_max_keys: usize,
    /// zstd level of the Parquet files written.
    pub zstd_level: i32,
}

impl Options {
    /// The settings of `config` for importing into `table`.
    pub fn from_config(table: Table, config: &Config) -> Result<Self, String> {
        let receiver = crate::ingest::receive::Receiver::new(config).map_err(|e| e.to_string())?;
        Ok(Self {
            receiver: std::sync::Arc::new(receiver),
            table,
            dedup_window: config.dedup.window.0,
            dedup_max_keys: config.dedup.max_keys,
            zstd_level: config.parquet.zstd_level,
        })
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("table", &self.table)
            .field("dedup_window", &self.dedup_window)
            .finish_non_exhaustive()
    }
}

/// A file's `headers` as the receive step stores them: a JSON object with lower-case
/// names in order, the values of secret headers replaced by `"[redacted]"`.
fn redacted_headers(text: &str, redacts: impl Fn(&str) -> bool) -> Result<String, String> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
        .map_err(|_| {
            "column `headers`: a JSON object of header names and values, e.g. {\"content-type\": \"application/json\"}".to_string()
        })?;
    let mut sorted = std::collections::BTreeMap::new();
    for (name, value) in object {
        let name = name.to_ascii_lowercase();
        let value = match value {
            _ if redacts(&name) => crate::ingest::receive::REDACTED.to_string(),
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        sorted.insert(name, value);
    }
    Ok(serde_json::to_string(&sorted).unwrap_or_else(|_| "{}".into()))
}

/// What one input file added.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub path: PathBuf,
    pub rows: u64,
    /// Parquet files written (one per hour partition its rows fall in).
    pub files: u64,
}

#[derive(Debug, Error)]
pub enum ImportError {
    #[error(
        "{}: cannot tell its format; name it .parquet, .ndjson (or .jsonl, .json) or .csv",
        .0.display()
    )]
    UnknownFormat(PathBuf),
    #[error("the {0} table cannot be imported: import deliveries or outcomes")]
    Table(&'static str),
    #[error("no files to import: name at least one")]
    NoFiles,
    #[error(
        "{}: refused, nothing was imported: {problem}. Fix the file and run the import again",
        path.display()
    )]
    Refused { path: PathBuf, problem: String },
    #[error(
        "data directory {} is in use by a running hookscope (lock file {}/.lock): stop the server first, then import",
        .0.display(),
        .0.display()
    )]
    Locked(PathBuf),
    #[error(
        "{}: may have been imported: its manifest version is in place but could not be confirmed durable ({source}); count its rows with `hookscope query` before importing it again",
        path.display()
    )]
    MaybeWritten {
        path: PathBuf,
        source: Box<ManifestError>,
    },
    #[error("{}: not imported: {source}", path.display())]
    Write {
        path: PathBuf,
        source: Box<ImportError>,
    },
    #[error(transparent)]
    Engine(EngineError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error("arrow error while assembling rows: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("the import stopped: {0}")]
    Task(String),
}

/// Imports `files` into the lake in `dir` (created if missing), one manifest commit
/// per file, in the order given; `on_file` is called after each commit. Holds the
/// directory's lock throughout, in a task of its own that runs to the end even if the
/// returned future is dropped.
pub async fn import(
    dir: &Path,
    files: &[PathBuf],
    options: &Options,
    on_file: impl Fn(&Imported) + Send + Sync + 'static,
) -> Result<Vec<Imported>, ImportError> {
    let (dir, files, options) = (dir.to_path_buf(), files.to_vec(), options.clone());
    tokio::spawn(async move { import_locked(&dir, &files, &options, &on_file).await })
        .await
        .map_err(|e| ImportError::Task(e.to_string()))?
}

async fn import_locked(
    dir: &Path,
    files: &[PathBuf],
    options: &Options,
    on_file: &(dyn Fn(&Imported) + Sync),
) -> Result<Vec<Imported>, ImportError> {
    let table = options.table;
    if !matches!(table, Table::Deliveries | Table::Outcomes) {
        return Err(ImportError::Table(table.name()));
    }
    if files.is_empty() {
        return Err(ImportError::NoFiles);
    }
    let formats = files
        .iter()
        .map(|p| Format::of(p).ok_or_else(|| ImportError::UnknownFormat(p.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let lake = Lake::local(dir)?;
    let _lock = crate::engine::lock_dir(dir).map_err(|e| match e {
        EngineError::Locked(p) => ImportError::Locked(p),
        e => ImportError::Engine(e),
    })?;
    let batches = {
        let (files, options) = (files.to_vec(), options.clone());
        tokio::task::spawn_blocking(move || prepare(&files, &formats, &options))
            .await
            .map_err(|e| ImportError::Task(e.to_string()))??
    };
    let mut manifest = Manifest::load(&lake).await?;
    // A lake no server has written yet: its dedup index is marked empty, so the
    // first start does not rebuild it from the imported history. Imported rows never
    // count toward live attempts, as in a lake a server already keeps.
    if manifest.dedup.is_none()
        && manifest.wal_through == 0
        && manifest.files(Table::Deliveries).is_empty()
    {
        manifest.dedup = Some(Default::default());
    }
    let mut done = Vec::with_capacity(files.len());
    for (path, batch) in files.iter().zip(batches) {
        let rows = batch.num_rows() as u64;
        let mut written = 0;
        if rows > 0 {
            let committed = commit_file(&lake, &manifest, table, batch, options.zstd_level).await;
            let (next, n) = committed.map_err(|e| match e {
                ImportError::Manifest(m) if Manifest::keeps_files(&m) => {
                    ImportError::MaybeWritten {
                        path: path.clone(),
                        source: Box::new(m),
                    }
                }
                e => ImportError::Write {
                    path: path.clone(),
                    source: Box::new(e),
                },
            })?;
            manifest = next;
            written = n;
        }
        let imported = Imported {
            path: path.clone(),
            rows,
            files: written,
        };
        on_file(&imported);
        done.push(imported);
    }
    Ok(done)
}

/// Writes one input file's rows and commits them: the new manifest, and the number
/// of Parquet files.
async fn commit_file(
    lake: &Lake,
    manifest: &Manifest,
    table: Table,
    batch: RecordBatch,
    zstd_level: i32,
) -> Result<(Manifest, u64), ImportError> {
    let encoded = tokio::task::spawn_blocking(move || persist::encode(table, &[batch], zstd_level))
        .await
        .map_err(|e| ImportError::Task(e.to_string()))??;
    let mut append = Append::new(lake, manifest, "imp");
    if let Err(e) = append.write(table, encoded).await {
        append.abandon().await;
        return Err(e.into());
    }
    let files = append.files() as u64;
    Ok((append.commit().await?, files))
}

/// Reads and checks every file, then derives their rows' columns: one batch (of the
/// table's schema) per file.
fn prepare(
    files: &[PathBuf],
    formats: &[Format],
    options: &Options,
) -> Result<Vec<RecordBatch>, ImportError> {
    let table = options.table;
    let refused = |path: &Path| {
        let path = path.to_path_buf();
        move |problem: String| ImportError::Refused { path, problem }
    };
    let mut read = Vec::with_capacity(files.len());
    for (path, format) in files.iter().zip(formats) {
        let rows = read::read(path, *format, table).map_err(refused(path))?;
        check_required(table, &rows).map_err(refused(path))?;
        read.push(rows);
    }
    match table {
        Table::Deliveries => deliveries(files, &read, options),
        _ => outcomes(files, &read),
    }
}

/// Columns the write path fills itself when a file has no value for them.
pub(super) fn derivable(table: Table, column: &str) -> bool {
    match table {
        Table::Deliveries => matches!(
            column,
            "id" | "dedup_key"
                | "attempt"
                | "is_duplicate"
                | "retry_gap_ms"
                | "delivery_lag_ms"
                | "payload_size"
                | "payload_sha256"
        ),
        _ => column == "id",
    }
}

/// Every required column (not null, not derivable) is in the file, with a value in
/// every row.
fn check_required(table: Table, file: &FileRows) -> Result<(), String> {
    for c in table.columns() {
        if c.nullable || derivable(table, c.name) {
            continue;
        }
        match file.column(table, c.name) {
            None if file.rows > 0 => {
                return Err(format!(
                    "the required column `{}` is missing (the {} columns: docs/tables.md)",
                    c.name,
                    table.name()
                ));
            }
            Some(a) if a.null_count() > 0 => {
                let row = (0..a.len()).find(|&i| a.is_null(i)).unwrap_or(0);
                return Err(format!(
                    "{}, column `{}`: a value is required, the row has none",
                    file.position(row),
                    c.name
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Typed access to one row of a file's columns.
struct Row<'a> {
    file: &'a FileRows,
    table: Table,
    i: usize,
}

impl<'a> Row<'a> {
    fn column(&self, name: &str) -> Option<&'a ArrayRef> {
        self.file
            .column(self.table, name)
            .filter(|a| a.is_valid(self.i))
    }
    fn text(&self, name: &str) -> Option<&'a str> {
        Some(self.column(name)?.as_string_opt::<i32>()?.value(self.i))
    }
    fn primitive<T: arrow::datatypes::ArrowPrimitiveType>(&self, name: &str) -> Option<T::Native> {
        Some(self.column(name)?.as_primitive_opt::<T>()?.value(self.i))
    }
    fn time(&self, name: &str) -> Option<i64> {
        self.primitive::<TimestampMicrosecondType>(name)
    }
    fn int32(&self, name: &str) -> Option<i32> {
        self.primitive::<Int32Type>(name)
    }
    fn int64(&self, name: &str) -> Option<i64> {
        self.primitive::<Int64Type>(name)
    }
    fn float(&self, name: &str) -> Option<f64> {
        self.primitive::<Float64Type>(name)
    }
    fn owned(&self, name: &str) -> Option<String> {
        self.text(name).map(str::to_string)
    }
    /// A required column's value (checked present before; an error all the same).
    fn required<T>(&self, name: &str, get: impl Fn(&Self, &str) -> Option<T>) -> Result<T, String> {
        get(self, name)
            .ok_or_else(|| format!("column `{name}`: a value is required, the row has none"))
    }
}

/// The delivery of row `r`, its derived columns filled as on receipt (except the
/// dedup index's, which need every row in time order).
/// Times before 1970 or from 2200 on are refused: they are typos or wrong units,
/// and each distinct hour would become a file of its own.
fn sane_time(column: &str, us: i64) -> Result<i64, String> {
    const Y2200_US: i64 = 7_258_118_400_000_000;
    if (0..Y2200_US).contains(&us) {
        Ok(us)
    } else {
        Err(format!(
            "column `{column}`: {us} µs is not a time between 1970 and 2200 (an epoch in other units?)"
        ))
    }
}

fn delivery_of(
    r: &Row<'_>,
    receiver: &crate::ingest::receive::Receiver,
) -> Result<Delivery, String> {
    let received_at_us = sane_time("received_at", r.required("received_at", Row::time)?)?;
    let body = match (r.text("body"), r.text("body_base64")) {
        (Some(t), _) => StoredBody::Text(t.to_string()),
        (None, Some(b64)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("column `body_base64`: not base64 ({e})"))?;
            // Stored as the receive step stores a body: text when it is UTF-8.
            match String::from_utf8(bytes) {
                Ok(t) => StoredBody::Text(t),
                Err(e) => StoredBody::Binary(e.into_bytes()),
            }
        }
        (None, None) => StoredBody::Omitted,
    };
    let bytes: &[u8] = match &body {
        StoredBody::Text(t) => t.as_bytes(),
        StoredBody::Binary(b) => b,
        StoredBody::Omitted => &[],
    };
    // Without a body, as for a body not kept on receipt: no hash. A hash given is
    // kept as given (`keep_given_hash` stores it where it is not the body's).
    let payload_sha256 = match (r.owned("payload_sha256"), &body) {
        (Some(given), _) => given,
        (None, StoredBody::Omitted) => String::new(),
        (None, _) => sha256_hex(bytes),
    };
    let event_id = r.owned("event_id");
    let dedup_key = match (r.owned("dedup_key"), &event_id) {
        (Some(k), _) => k,
        (None, Some(e)) => e.clone(),
        (None, None) if !payload_sha256.is_empty() => ["sha256:", &payload_sha256].concat(),
        (None, None) => {
            return Err(
                "no dedup_key, event_id, body or payload_sha256 to tell retries apart by; give one of them"
                    .into(),
            );
        }
    };
    let status = r.required("signature_status", Row::text)?;
    let signature_status = SignatureStatus::parse(status).ok_or_else(|| {
        format!(
            "column `signature_status`: expected valid, invalid, expired, missing or unchecked, got {status:?}"
        )
    })?;
    Ok(Delivery {
        id: r.owned("id").unwrap_or_else(|| new_id(received_at_us)),
        received_at_us,
        source: r.required("source", Row::owned)?,
        provider: r.required("provider", Row::owned)?,
        event_type: r.owned("event_type"),
        event_id,
        delivery_id: r.owned("delivery_id"),
        dedup_key,
        provider_attempt: r.int32("attempt"),
        sent_at_us: r
            .time("sent_at")
            .map(|t| sane_time("sent_at", t))
            .transpose()?,
        signature_status,
        method: r.required("method", Row::owned)?,
        path: r.required("path", Row::owned)?,
        query: r.required("query", Row::owned)?,
        content_type: r.owned("content_type"),
        user_agent: r.owned("user_agent"),
        remote_addr: r.owned("remote_addr"),
        headers_json: {
            let (source, provider) = (
                r.text("source").unwrap_or_default(),
                r.text("provider").unwrap_or_default(),
            );
            redacted_headers(r.required("headers", Row::text)?, |name| {
                receiver.redacts(source, provider, name)
            })?
        },
        payload_size: r.int64("payload_size").unwrap_or(bytes.len() as i64),
        body,
        payload_sha256,
        payload_issues: r.owned("payload_issues"),
        status_code: r.required("status_code", Row::int32)?,
        upstream_status: r.int32("upstream_status"),
        upstream_latency_ms: r.float("upstream_latency_ms"),
        upstream_error: r.owned("upstream_error"),
    })
}

fn outcome_of(r: &Row<'_>) -> Result<Outcome, String> {
    let reported_at_us = sane_time("reported_at", r.required("reported_at", Row::time)?)?;
    let status = crate::ingest::report::status_of(r.required("status", Row::text)?)
        .map_err(|e| format!("column `status`: {e}"))?;
    let processing_time_ms = r.float("processing_time_ms");
    if let Some(ms) = processing_time_ms.filter(|ms| *ms < 0.0) {
        return Err(format!(
            "column `processing_time_ms`: a time is ≥ 0, got {ms}"
        ));
    }
    Ok(Outcome {
        id: r.owned("id").unwrap_or_else(|| new_id(reported_at_us)),
        reported_at_us,
        source: r.required("source", Row::owned)?,
        delivery_id: r.owned("delivery_id"),
        event_id: r.owned("event_id"),
        status: status.to_string(),
        processing_time_ms,
        error_type: r.owned("error_type"),
        error_message: r.owned("error_message"),
        records_processed: r.int64("records_processed"),
        attributes: r.required("attributes", Row::owned)?,
    })
}

/// Each file's records, or the first row that cannot be one (named).
fn records<T>(
    files: &[PathBuf],
    read: &[FileRows],
    table: Table,
    of: impl Fn(&Row<'_>) -> Result<T, String>,
) -> Result<Vec<Vec<T>>, ImportError> {
    files
        .iter()
        .zip(read)
        .map(|(path, file)| {
            (0..file.rows)
                .map(|i| {
                    of(&Row { file, table, i }).map_err(|problem| ImportError::Refused {
                        path: path.clone(),
                        problem: format!("{}: {problem}", file.position(i)),
                    })
                })
                .collect()
        })
        .collect()
}

fn deliveries(
    files: &[PathBuf],
    read: &[FileRows],
    options: &Options,
) -> Result<Vec<RecordBatch>, ImportError> {
    let records = records(files, read, Table::Deliveries, |r| {
        delivery_of(r, &options.receiver)
    })?;
    // Every row of the invocation through one fresh index, in arrival order (a
    // stable sort: equal times keep the files' order).
    let mut order: Vec<(i64, usize, usize)> = records
        .iter()
        .enumerate()
        .flat_map(|(f, list)| {
            list.iter()
                .enumerate()
                .map(move |(i, d)| (d.received_at_us, f, i))
        })
        .collect();
    order.sort_by_key(|o| o.0);
    let window_us = i64::try_from(options.dedup_window.as_micros()).unwrap_or(i64::MAX);
    let mut index = DedupIndex::new(window_us, options.dedup_max_keys);
    let first = Derived {
        attempt: 1,
        is_duplicate: false,
        retry_gap_ms: None,
    };
    let mut derived: Vec<Vec<Derived>> = records.iter().map(|l| vec![first; l.len()]).collect();
    for (at, f, i) in order {
        let d = &records[f][i];
        derived[f][i] = index
            .observe(&d.source, &d.dedup_key, at)
            .derived(d.provider_attempt);
    }
    let mut out = Vec::with_capacity(records.len());
    for ((list, derived), file) in records.iter().zip(&derived).zip(read) {
        let mut buffer = Buffer::default();
        for (d, x) in list.iter().zip(derived) {
            buffer.push_delivery(0, d, *x);
        }
        let batch = one_batch(Table::Deliveries, buffer.snapshot(Table::Deliveries))?;
        let batch = keep_given_hash(batch, list)?;
        out.push(keep_given(
            Table::Deliveries,
            batch,
            file,
            &["is_duplicate", "retry_gap_ms", "delivery_lag_ms"],
        )?);
    }
    Ok(out)
}

fn outcomes(files: &[PathBuf], read: &[FileRows]) -> Result<Vec<RecordBatch>, ImportError> {
    let records = records(files, read, Table::Outcomes, outcome_of)?;
    records
        .iter()
        .map(|list| {
            let mut buffer = Buffer::default();
            for o in list {
                buffer.push_outcome(0, o);
            }
            one_batch(Table::Outcomes, buffer.snapshot(Table::Outcomes))
        })
        .collect()
}

fn one_batch(table: Table, batches: Vec<RecordBatch>) -> Result<RecordBatch, ImportError> {
    Ok(arrow::compute::concat_batches(&table.schema(), &batches)?)
}

/// `batch` with the derived `columns` replaced by the file's values where it has
/// them (rows in the same order).
/// `batch` (the rows of `list`, in order) with each `payload_sha256` that is not
/// its body's own hash stored: the lake leaves out only the body's hash, which a
/// read computes (`query::derived`), so a different one a file gives would be lost.
fn keep_given_hash(batch: RecordBatch, list: &[Delivery]) -> Result<RecordBatch, ImportError> {
    let schema = Table::Deliveries.schema();
    let Ok(i) = schema.index_of("payload_sha256") else {
        return Ok(batch);
    };
    let own = |d: &Delivery| match &d.body {
        StoredBody::Text(t) => Some(sha256_hex(t.as_bytes())),
        StoredBody::Binary(b) => Some(sha256_hex(b)),
        StoredBody::Omitted => None,
    };
    let differs: Vec<Option<&str>> = list
        .iter()
        .map(|d| match own(d) {
            Some(h) if h != d.payload_sha256 => Some(d.payload_sha256.as_str()),
            Some(_) => None,
            None => Some(d.payload_sha256.as_str()),
        })
        .collect();
    if differs.len() != batch.num_rows() || differs.iter().all(Option::is_none) {
        return Ok(batch);
    }
    let mut arrays = batch.columns().to_vec();
    arrays[i] = std::sync::Arc::new(arrow::array::StringArray::from(differs));
    Ok(RecordBatch::try_new(schema, arrays)?)
}

fn keep_given(
    table: Table,
    batch: RecordBatch,
    file: &FileRows,
    columns: &[&str],
) -> Result<RecordBatch, ImportError> {
    let mut arrays = batch.columns().to_vec();
    for name in columns {
        let (Some(given), Ok(i)) = (file.column(table, name), table.schema().index_of(name)) else {
            continue;
        };
        let mask = arrow::compute::is_not_null(given.as_ref())?;
        arrays[i] = arrow::compute::kernels::zip::zip(&mask, given, &arrays[i])?;
    }
    Ok(RecordBatch::try_new(table.schema(), arrays)?)
}
