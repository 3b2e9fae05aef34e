//! Rollup writes: the rows a materialized saved query computed for a window of
//! buckets replace that window of its table `rollup_<query>`, in one manifest commit.
//!
//! Invariants:
//! - A rollup's files hold one UTC day of buckets each
//!   (`rollups/<query>/date=YYYY-MM-DD/…`), rows sorted by the bucket column (the
//!   first), stored as a UTC timestamp.
//! - A write replaces exactly the rows whose bucket is in `[from, to)`: rows outside it
//!   are kept (the day files it touches are rewritten with them). The swap is one
//!   manifest commit, so a query sees the old rows or the new ones, never both or
//!   neither; a rerun with the same rows leaves the same table.
//! - Bucket values are multiples of the bucket since 1970-01-01 UTC (as `date_bin`
//!   gives them); a result with others is refused, since its buckets would straddle
//!   windows.
//! - All files of a rollup have the same columns: a result whose columns differ is
//!   refused, unless the write rebuilds (then it replaces the whole rollup).
//! - Only the writing engine writes rollups, under the flush lock, in a task of its
//!   own (a run aborted at a stop cannot leave a commit half done); the raw tables,
//!   the WAL and the buffer are untouched. Retention and compaction leave rollups
//!   alone.

use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::{
    cast, concat_batches, filter_record_batch, sort_to_indices, take_record_batch,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::flush::{discard, put_or_discard};
use super::{Engine, EngineError};
use crate::lake::manifest::FileEntry;
use crate::lake::persist::EncodedFile;
use crate::query::catalog::rollup;

const DAY_US: i64 = 86_400_000_000;

/// Which buckets a write replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollupWindow {
    /// Buckets `[from_us, to_us)`.
    pub from_us: i64,
    pub to_us: i64,
    /// The bucket's length: bucket values are multiples of it.
    pub bucket_us: i64,
    /// Replace the whole rollup (whatever its columns) by this window's rows.
    pub rebuild: bool,
}

/// What one rollup write did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RollupWrite {
    /// Rows of the window now in the rollup.
    pub rows: u64,
    /// Rows of the result whose bucket is outside the window (or null): not written.
    pub outside: u64,
    pub files_written: usize,
    pub files_replaced: usize,
    /// The whole rollup was replaced (a rebuild).
    pub rebuilt: bool,
}

impl Engine {
    /// Replaces the buckets of `window` in the rollup of saved query `query` by
    /// `batches` (the query's result, `schema` its columns; the first column is the
    /// bucket start). See the module docs.
    pub async fn write_rollup(
        self: &Arc<Self>,
        query: &str,
        window: RollupWindow,
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<RollupWrite, EngineError> {
        let RollupWindow {
            from_us,
            to_us,
            rebuild,
            ..
        } = window;
        if self.wal.is_none() {
            return Err(EngineError::Task(
                "this engine was opened read-only; writing a rollup needs the data directory's lock"
                    .into(),
            ));
        }
        let table = rollup::table_name(query);
        let (schema, fresh, outside) = normalize(schema, &batches, &window)?;
        drop(batches);
        let lake = self.catalog.lake().clone();
        let manifest = self.catalog.manifest();
        let existing = manifest.files(&table).to_vec();
        let stored = match existing.is_empty() {
            true => None,
            false => self.catalog.rollup_schema(&table).await?,
        };
        if let Some(stored) = stored.filter(|s| !rebuild && !same_columns(s, &schema)) {
            return Err(EngineError::Task(format!(
                "{table} holds the columns ({}) but the query now returns ({}); to start the rollup again with the new columns, stop the server and run `hookscope queries backfill {query} --from <time> --rebuild` (it drops the rows it holds)",
                describe(&stored),
                describe(&schema)
            )));
        }
        let replaced: Vec<FileEntry> = existing
            .into_iter()
            .filter(|f| rebuild || (f.max_time_us >= from_us && f.min_time_us < to_us))
            .collect();
        if fresh.is_empty() && replaced.is_empty() {
            return Ok(RollupWrite {
                outside,
                ..RollupWrite::default()
            });
        }

        // Rows of the replaced day files outside the window stay.
        let mut rows = fresh;
        if !rebuild {
            for f in &replaced {
                let bytes = lake.get(&f.path).await?.ok_or_else(|| {
                    EngineError::Task(format!(
                        "the committed rollup file {} is missing; run `hookscope check`",
                        f.path
                    ))
                })?;
                rows.extend(kept_rows(bytes, &schema, from_us, to_us).map_err(|e| {
                    EngineError::Task(format!("cannot read rollup file {}: {e}", f.path))
                })?);
            }
        }
        let level = self.settings.compact_zstd_level;
        let encode_schema = Arc::clone(&schema);
        let days = tokio::task::spawn_blocking(move || encode_days(&encode_schema, rows, level))
            .await
            .map_err(|e| EngineError::Task(format!("rollup encoding stopped: {e}")))?
            .map_err(|e| EngineError::Task(format!("cannot encode the rollup: {e}")))?;

        let mut added: Vec<FileEntry> = Vec::new();
        for day in days {
            let path = format!(
                "{}/{query}/{}/{}-r{}.parquet",
                rollup::DIR,
                chrono::DateTime::from_timestamp_micros(day.min_time_us)
                    .unwrap_or_default()
                    .format("date=%Y-%m-%d"),
                self.settings.node_id,
                ulid::Ulid::new()
            );
            let (entry, bytes) = EncodedFile {
                partition: String::new(),
                bytes: day.bytes,
                rows: day.rows,
                min_time_us: day.min_time_us,
                max_time_us: day.max_time_us,
                ids: None,
            }
            .into_entry(path);
            put_or_discard(&lake, &entry, bytes, added.iter()).await?;
            added.push(entry);
        }
        let written: Vec<String> = added.iter().map(|e| e.path.clone()).collect();
        let report = RollupWrite {
            rows: added.iter().map(|f| f.rows).sum::<u64>(),
            outside,
            files_written: added.len(),
            files_replaced: replaced.len(),
            rebuilt: rebuild,
        };
        // The swap runs to its end even if the run is aborted meanwhile (a commit
        // cut off between its rename and its bookkeeping could be overwritten).
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            engine
                .swap_rollup(&table, window, &replaced, added, &written)
                .await
        })
        .await
        .map_err(|e| EngineError::Task(format!("the rollup commit stopped: {e}")))??;
        Ok(report)
    }

    /// Under the flush lock: if the files of `table` in `window` are still exactly
    /// `replaced`, commits `added` in their place.
    async fn swap_rollup(
        &self,
        table: &str,
        window: RollupWindow,
        replaced: &[FileEntry],
        added: Vec<FileEntry>,
        written: &[String],
    ) -> Result<(), EngineError> {
        let lake = self.catalog.lake();
        let guard = self.flush_lock.lock().await;
        let manifest = self.catalog.manifest();
        let now_in_window = manifest
            .files(table)
            .iter()
            .filter(|f| {
                window.rebuild || (f.max_time_us >= window.from_us && f.min_time_us < window.to_us)
            })
            .count();
        if now_in_window != replaced.len() || !manifest.holds(table, replaced) {
            drop(guard);
            discard(lake, written.iter().map(String::as_str)).await;
            return Err(EngineError::Task(format!(
                "{table} changed while this run wrote it; the next run writes its buckets again"
            )));
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        let mut next =
            manifest.replacing(table, replaced, added, now_us, self.retire_after(now_us));
        if let Err(e) = self.commit_manifest(&mut next, written).await {
            drop(guard);
            return Err(e.into());
        }
        self.catalog.replace_manifest(next);
        drop(guard);
        Ok(())
    }
}

/// `name type, …` of a schema's columns, for errors.
fn describe(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// True if `a` and `b` have the same column names and types (nullability and
/// metadata aside).
fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

/// The bucket column's stored type.
fn bucket_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The result as stored: the bucket column as a UTC timestamp, every column nullable,
/// and only rows whose bucket is in the window. Returns the schema, the rows and how
/// many rows were left out. Refuses bucket values off the bucket's boundaries.
fn normalize(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    window: &RollupWindow,
) -> Result<(SchemaRef, Vec<RecordBatch>, u64), EngineError> {
    let (from_us, to_us) = (window.from_us, window.to_us);
    let first = schema.fields().first().ok_or_else(|| {
        EngineError::Task("the query returns no columns: nothing to keep as a rollup".into())
    })?;
    if !matches!(
        first.data_type(),
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
    ) {
        return Err(EngineError::Task(format!(
            "the first column `{}` is {}; a rollup's first column is its bucket start, a timestamp (for example `date_bin(INTERVAL '1 hour', received_at) AS hour`)",
            first.name(),
            first.data_type()
        )));
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let field = f.as_ref().clone().with_nullable(true);
            match i {
                0 => field.with_data_type(bucket_type()),
                _ => field,
            }
        })
        .collect();
    let stored = Arc::new(Schema::new(fields));
    let mut out = Vec::with_capacity(batches.len());
    let mut outside = 0u64;
    let arrow = |e: arrow::error::ArrowError| EngineError::Task(format!("rollup rows: {e}"));
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let mut columns = batch.columns().to_vec();
        columns[0] = cast(&columns[0], &bucket_type()).map_err(arrow)?;
        let batch = RecordBatch::try_new(Arc::clone(&stored), columns).map_err(arrow)?;
        let keep = in_window(&batch, from_us, to_us);
        let kept = filter_record_batch(&batch, &keep).map_err(arrow)?;
        outside += (batch.num_rows() - kept.num_rows()) as u64;
        let buckets = kept.column(0).as_primitive::<TimestampMicrosecondType>();
        if let Some(off) = buckets
            .values()
            .iter()
            .find(|t| t.rem_euclid(window.bucket_us.max(1)) != 0)
        {
            let at = chrono::DateTime::from_timestamp_micros(*off).unwrap_or_default();
            return Err(EngineError::Task(format!(
                "the bucket `{}` = {at} is not on a boundary of the rollup's {} buckets (counted from 1970-01-01 UTC); compute it with date_bin(INTERVAL '<bucket>', <time column>), or make `-- bucket:` match the query",
                first.name(),
                humantime::format_duration(std::time::Duration::from_micros(
                    window.bucket_us.max(1).unsigned_abs()
                )),
            )));
        }
        if kept.num_rows() > 0 {
            out.push(kept);
        }
    }
    Ok((stored, out, outside))
}

/// Rows whose bucket is in `[from_us, to_us)` (a null bucket is in no window).
fn in_window(batch: &RecordBatch, from_us: i64, to_us: i64) -> BooleanArray {
    let buckets = batch.column(0).as_primitive::<TimestampMicrosecondType>();
    buckets
        .iter()
        .map(|t| Some(t.is_some_and(|t| t >= from_us && t < to_us)))
        .collect()
}

/// The rows of a stored rollup file outside `[from_us, to_us)`, as `schema`.
fn kept_rows(
    bytes: Bytes,
    schema: &SchemaRef,
    from_us: i64,
    to_us: i64,
) -> Result<Vec<RecordBatch>, Box<dyn std::error::Error + Send + Sync>> {
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = RecordBatch::try_new(Arc::clone(schema), batch?.columns().to_vec())?;
        let inside = in_window(&batch, from_us, to_us);
        let outside: BooleanArray = inside.iter().map(|k| k.map(|k| !k)).collect();
        let kept = filter_record_batch(&batch, &outside)?;
        if kept.num_rows() > 0 {
            out.push(kept);
        }
    }
    Ok(out)
}

/// One encoded day file.
struct Day {
    bytes: Bytes,
    rows: u64,
    min_time_us: i64,
    max_time_us: i64,
}

/// `rows` as one Parquet file per UTC day of the bucket column, sorted by it.
fn encode_days(
    schema: &SchemaRef,
    rows: Vec<RecordBatch>,
    zstd_level: i32,
) -> Result<Vec<Day>, Box<dyn std::error::Error + Send + Sync>> {
    let all = concat_batches(schema, &rows)?;
    drop(rows);
    if all.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let order = sort_to_indices(all.column(0), None, None)?;
    let sorted = take_record_batch(&all, &order)?;
    let buckets = sorted.column(0).as_primitive::<TimestampMicrosecondType>();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(zstd_level)?))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: 0,
            descending: false,
            nulls_first: false,
        }]))
        .set_created_by(format!("hookscope {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut days = Vec::new();
    let mut start = 0;
    while start < sorted.num_rows() {
        let day = buckets.value(start).div_euclid(DAY_US);
        let mut end = start + 1;
        while end < sorted.num_rows() && buckets.value(end).div_euclid(DAY_US) == day {
            end += 1;
        }
        let slice = sorted.slice(start, end - start);
        let mut writer = ArrowWriter::try_new(Vec::new(), Arc::clone(schema), Some(props.clone()))?;
        writer.write(&slice)?;
        let bytes = writer.into_inner()?;
        days.push(Day {
            bytes: Bytes::from(bytes),
            rows: slice.num_rows() as u64,
            min_time_us: buckets.value(start),
            max_time_us: buckets.value(end - 1),
        });
        start = end;
    }
    Ok(days)
}
