//! Parquet encoding: turns buffered record batches of one table into Parquet files,
//! one per Hive partition (`date=YYYY-MM-DD/hour=HH`).
//!
//! Invariants:
//! - Every input row lands in exactly one output file.
//! - Rows in a file are sorted by the table's time column (stable: equal times keep
//!   their WAL order); files are zstd-compressed with page-level statistics and the
//!   page index, and declare their sort order in the footer.
//! - This module does no I/O: it returns bytes. The engine writes them through the
//!   lake and commits them in the manifest.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::TimestampMicrosecondType;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use thiserror::Error;

use crate::lake::manifest::FileEntry;
use crate::tables::{Role, Table};

/// Rows per batch handed to the Parquet writer (also the step of pacing)…
const WRITE_BATCH: usize = 2048;
/// …or fewer, so that its text stays far below the 2 GiB a string column can hold
/// (gathering rows past it panics in Arrow).
const WRITE_BATCH_BYTES: usize = 64 << 20;
const HOUR_US: i64 = 3_600_000_000;
/// False-positive rate of the bloom filters on lookup keys.
const BLOOM_FPP: f64 = 0.01;

/// Errors encoding Parquet.
#[derive(Debug, Error)]
pub enum PersistError {
    #[error("table {0} has no time column {1} in its batches")]
    NoTimeColumn(&'static str, &'static str),
    #[error("arrow error while preparing Parquet: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet encoding error: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// One encoded Parquet file for one partition.
#[derive(Debug)]
pub struct EncodedFile {
    /// `date=YYYY-MM-DD/hour=HH`.
    pub partition: String,
    pub bytes: Bytes,
    pub rows: u64,
    pub min_time_us: i64,
    pub max_time_us: i64,
    /// Smallest and largest `id` in the file (for pruning lookups by id).
    pub ids: Option<(String, String)>,
}

impl EncodedFile {
    /// The file's manifest entry once written at `path` (lake-relative), and the bytes
    /// to write there.
    pub fn into_entry(self, path: String) -> (FileEntry, Bytes) {
        let entry = FileEntry {
            path,
            rows: self.rows,
            bytes: self.bytes.len() as u64,
            min_time_us: self.min_time_us,
            max_time_us: self.max_time_us,
            ids: self.ids,
        };
        (entry, self.bytes)
    }
}

/// The Hive partition of a time: `date=YYYY-MM-DD/hour=HH` (UTC).
pub(crate) fn partition_of(time_us: i64) -> String {
    let hour_start = time_us.div_euclid(HOUR_US) * HOUR_US;
    let dt = DateTime::<Utc>::from_timestamp_micros(hour_start).unwrap_or_default();
    dt.format("date=%Y-%m-%d/hour=%H").to_string()
}

/// Writer settings for a lake file whose column `c` holds `values(c)` non-null
/// values.
pub(crate) fn writer_properties(
    table: Table,
    zstd_level: i32,
    values: impl Fn(&str) -> u64,
) -> Result<WriterProperties, PersistError> {
    let schema = table.schema();
    let time_idx = schema
        .index_of(table.time_column())
        .map_err(|_| PersistError::NoTimeColumn(table.name(), table.time_column()))?;
    let mut builder = WriterProperties::builder();
    for col in table.columns_stored_as(Role::Bulky) {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(col), false)
            .set_column_statistics_enabled(ColumnPath::from(col), EnabledStatistics::None);
    }
    for col in table.columns_stored_as(Role::Unique) {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(col), false);
    }
    // Sized for the column's values in the file (the writer's default assumes a
    // million distinct values, far larger than a flush's file needs). None for a
    // column without values (its statistics prune it), nor for a derived one: a
    // filter on it never reaches the reader (`query::derived`).
    for col in table.columns_stored_as(Role::Key) {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(col), false);
        let values = values(col);
        if values > 0 && !table.column(col).is_some_and(|c| c.derived) {
            builder = builder
                .set_column_bloom_filter_enabled(ColumnPath::from(col), true)
                .set_column_bloom_filter_fpp(ColumnPath::from(col), BLOOM_FPP)
                .set_column_bloom_filter_max_ndv(ColumnPath::from(col), values);
        }
    }
    for col in table.columns_stored_as(Role::Time) {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(col), false)
            .set_column_encoding(ColumnPath::from(col), Encoding::DELTA_BINARY_PACKED);
    }
    Ok(builder
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(zstd_level)?))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: time_idx as i32,
            descending: false,
            nulls_first: false,
        }]))
        .set_created_by(format!("hookscope {}", env!("CARGO_PKG_VERSION")))
        .build())
}

/// Spreads CPU-heavy work over time: after each step, sleeps so that the work takes
/// at most `share` of one core.
///
/// Why: on a busy machine a flush that encodes flat out leaves no idle core, and
/// every wake-up on the acknowledgement path (request workers, the WAL writer) then
/// queues behind something. The ingest benchmark's open loop showed the WAL writer
/// waiting for a CPU at every group commit during flushes, and acknowledgements tens
/// of milliseconds late, although the flush thread already runs at a lower priority
/// (`benches/RESULTS.md`).
#[derive(Debug)]
pub(crate) struct Pacer {
    share: f64,
    /// The thread's CPU time at the end of the last step.
    since: Duration,
}

impl Pacer {
    /// A pacer keeping work to `share` (0 < share ≤ 1) of one core; 1 never sleeps.
    pub fn new(share: f64) -> Self {
        Self {
            share: share.clamp(0.01, 1.0),
            since: thread_cpu_time(),
        }
    }

    /// Call between steps of work. Work is the CPU time the calling thread used since
    /// the last step, so time spent waiting for a CPU on a busy machine does not make
    /// the flush sleep longer still.
    pub fn step(&mut self) {
        if self.share < 1.0 {
            let worked = thread_cpu_time().saturating_sub(self.since);
            std::thread::sleep(worked.mul_f64(1.0 / self.share - 1.0));
        }
        self.since = thread_cpu_time();
    }
}

/// CPU time used by the calling thread (zero where the clock is unavailable, which
/// makes a [`Pacer`] never sleep).
pub(crate) fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; no other memory is touched.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The bytes of text each row holds, over all string columns.
fn row_text_bytes(batch: &RecordBatch) -> Vec<usize> {
    let mut out = vec![0usize; batch.num_rows()];
    for column in batch.columns() {
        if let Some(strings) = column.as_string_opt::<i32>() {
            for (row, w) in strings.offsets().windows(2).enumerate() {
                out[row] += (w[1] - w[0]).max(0) as usize;
            }
        }
    }
    out
}

/// Encodes `batches` (all of `table`'s schema) into one sorted file per partition.
pub fn encode(
    table: Table,
    batches: &[RecordBatch],
    zstd_level: i32,
) -> Result<Vec<EncodedFile>, PersistError> {
    encode_paced(table, batches, zstd_level, &mut Pacer::new(1.0))
}

/// [`encode`], pacing its CPU use with `pacer`.
pub(crate) fn encode_paced(
    table: Table,
    batches: &[RecordBatch],
    zstd_level: i32,
    pacer: &mut Pacer,
) -> Result<Vec<EncodedFile>, PersistError> {
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let time_col = table.time_column();
    let mut order: Vec<(i64, usize, usize)> =
        Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    for (bi, batch) in batches.iter().enumerate() {
        let col = batch
            .column_by_name(time_col)
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
            .ok_or(PersistError::NoTimeColumn(table.name(), time_col))?;
        for (ri, t) in col.values().iter().enumerate() {
            order.push((*t, bi, ri));
        }
        debug_assert_eq!(col.null_count(), 0);
    }
    order.sort_by_key(|(t, _, _)| *t);
    let text_bytes: Vec<Vec<usize>> = batches.iter().map(|b| row_text_bytes(b)).collect();
    let ids: Vec<Option<&arrow::array::StringArray>> = batches
        .iter()
        .map(|b| {
            b.column_by_name("id")
                .and_then(|c| c.as_string_opt::<i32>())
        })
        .collect();

    let schema = table.schema();
    let mut files = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let hour = order[start].0.div_euclid(HOUR_US);
        let end = start
            + order[start..]
                .iter()
                .position(|(t, _, _)| t.div_euclid(HOUR_US) != hour)
                .unwrap_or(order.len() - start);
        let run = &order[start..end];
        let values = |column: &str| {
            let arrays: Vec<Option<&ArrayRef>> =
                batches.iter().map(|b| b.column_by_name(column)).collect();
            run.iter()
                .filter(|(_, b, r)| arrays[*b].is_some_and(|a| a.is_valid(*r)))
                .count() as u64
        };
        let props = writer_properties(table, zstd_level, values)?;
        let mut writer = ArrowWriter::try_new(Vec::new(), Arc::clone(&schema), Some(props))?;
        let mut indices = Vec::with_capacity(WRITE_BATCH);
        let mut bytes = 0;
        for (i, (_, b, r)) in run.iter().enumerate() {
            indices.push((*b, *r));
            bytes += text_bytes[*b][*r];
            let last = i + 1 == run.len();
            if last || indices.len() >= WRITE_BATCH || bytes >= WRITE_BATCH_BYTES {
                writer.write(&interleave_record_batch(&batches, &indices)?)?;
                pacer.step();
                indices.clear();
                bytes = 0;
            }
        }
        let bytes = writer.into_inner()?;
        files.push(EncodedFile {
            partition: partition_of(run[0].0),
            bytes: Bytes::from(bytes),
            rows: run.len() as u64,
            min_time_us: run[0].0,
            max_time_us: run[run.len() - 1].0,
            ids: id_range(&ids, run),
        });
        start = end;
    }
    Ok(files)
}

/// The smallest and largest non-null `id` of the rows of `run`.
fn id_range(
    ids: &[Option<&arrow::array::StringArray>],
    run: &[(i64, usize, usize)],
) -> Option<(String, String)> {
    let mut range: Option<(&str, &str)> = None;
    for (_, b, r) in run {
        let column = ids.get(*b).copied().flatten()?;
        if column.is_null(*r) {
            continue;
        }
        let id = column.value(*r);
        range = Some(match range {
            Some((lo, hi)) => (lo.min(id), hi.max(id)),
            None => (id, id),
        });
    }
    range.map(|(lo, hi)| (lo.to_string(), hi.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::{Buffer, Derived};
    use crate::model::tests::sample_delivery;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn a_pacer_sleeps_as_long_as_its_share_requires() {
        use std::time::Instant;
        let work = Duration::from_millis(20);
        // Spins until the thread has used `d` of CPU time (wall time is at least that).
        let busy = |d: Duration| {
            let t = thread_cpu_time();
            while thread_cpu_time().saturating_sub(t) < d {
                std::hint::spin_loop();
            }
        };
        // Half of a core: each step of work is followed by at least as long a pause.
        let mut pacer = Pacer::new(0.5);
        let started = Instant::now();
        for _ in 0..3 {
            busy(work);
            pacer.step();
        }
        assert!(started.elapsed() >= work * 6, "{:?}", started.elapsed());
    }

    #[test]
    fn partitions_are_utc_hours() {
        assert_eq!(partition_of(0), "date=1970-01-01/hour=00");
        assert_eq!(
            partition_of(1_732_300_000_000_000),
            "date=2024-11-22/hour=18"
        );
    }

    #[test]
    fn rows_are_split_by_hour_and_sorted_within_a_file() {
        let mut buf = Buffer::default();
        let d = Derived::FIRST;
        let base = 1_732_300_000_000_000 - 1_732_300_000_000_000 % HOUR_US;
        // Out of order, spanning two hours.
        let times = [
            base + 5,
            base + HOUR_US + 1,
            base + 1,
            base + 3,
            base + HOUR_US,
        ];
        for (i, t) in times.iter().enumerate() {
            let mut row = sample_delivery();
            row.received_at_us = *t;
            row.id = format!("r{i}");
            buf.push_delivery(i as u64 + 1, &row, d);
            buf.snapshot(Table::Deliveries); // several batches
        }
        let batches = buf.snapshot(Table::Deliveries);
        let files = encode(Table::Deliveries, &batches, 3).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].rows + files[1].rows, 5);
        assert_eq!(
            (files[0].min_time_us, files[0].max_time_us),
            (base + 1, base + 5)
        );
        // Rows r2, r3, r0 in the first hour; r4, r1 in the second.
        assert_eq!(files[0].ids, Some(("r0".into(), "r3".into())));
        assert_eq!(files[1].ids, Some(("r1".into(), "r4".into())));

        let options = parquet::arrow::arrow_reader::ArrowReaderOptions::new()
            .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required);
        let reader =
            ParquetRecordBatchReaderBuilder::try_new_with_options(files[0].bytes.clone(), options)
                .unwrap();
        let meta = reader.metadata().clone();
        assert!(meta.column_index().is_some(), "page index written");
        let rows: Vec<RecordBatch> = reader.build().unwrap().collect::<Result<_, _>>().unwrap();
        let ts = rows[0]
            .column_by_name("received_at")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec();
        assert_eq!(ts, vec![base + 1, base + 3, base + 5]);
        let cc = meta.row_group(0).column(0);
        assert!(matches!(cc.compression(), Compression::ZSTD(_)));

        // Column settings: the time column delta-encoded, unique columns without a
        // dictionary, repeated short values (source) with one.
        let column = |name: &str| {
            let i = Table::Deliveries.schema().index_of(name).unwrap();
            meta.row_group(0).column(i).clone()
        };
        let encodings = |name: &str| column(name).encodings().collect::<Vec<_>>();
        assert!(encodings("received_at").contains(&Encoding::DELTA_BINARY_PACKED));
        assert!(column("received_at").dictionary_page_offset().is_none());
        assert!(column("event_id").dictionary_page_offset().is_none());
        assert!(column("source").dictionary_page_offset().is_some());
    }

    #[test]
    fn rows_with_large_bodies_are_written_in_byte_bounded_steps() {
        let mut buf = Buffer::default();
        let d = Derived::FIRST;
        let mut row = sample_delivery();
        row.body = crate::model::StoredBody::Text("b".repeat(4 << 20));
        for i in 0..20 {
            row.id = format!("r{i:02}");
            row.received_at_us += 1;
            buf.push_delivery(i + 1, &row, d);
        }
        let batches = buf.snapshot(Table::Deliveries);
        // 80 MiB of text: more than one write step.
        let total: usize = batches.iter().flat_map(row_text_bytes).sum();
        assert!(total > WRITE_BATCH_BYTES);
        let files = encode(Table::Deliveries, &batches, 1).unwrap();
        assert_eq!(files.len(), 1);
        let reader = ParquetRecordBatchReaderBuilder::try_new(files[0].bytes.clone())
            .unwrap()
            .build()
            .unwrap();
        let ids: Vec<String> = reader
            .flat_map(|b| {
                let b = b.unwrap();
                let ids = b.column_by_name("id").unwrap().as_string::<i32>().clone();
                ids.iter()
                    .map(|v| v.unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(ids, (0..20).map(|i| format!("r{i:02}")).collect::<Vec<_>>());
    }
}
