//! Compaction, the lake's part: which files of a partition to merge, and the merge
//! itself (Parquet bytes in, sorted Parquet bytes out). The engine reads the inputs,
//! writes the outputs and commits the swap (`engine/compact.rs`).
//!
//! Invariants:
//! - A group holds files of one table and one partition, so a merged file lands in
//!   the partition its inputs came from.
//! - A merge returns exactly the rows it was given (checked against the manifest's
//!   counts before anything is written), sorted by the table's time column, encoded
//!   like a flush's files ([`persist::encode_paced`]).
//! - Files that are already large are never rewritten: only small files are merged,
//!   and a group's input is bounded in bytes, which bounds a merge's memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, new_null_array};
use arrow::compute::{CastOptions, cast_with_options};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use thiserror::Error;

use crate::lake::manifest::{FileEntry, Manifest};
use crate::lake::persist::{self, EncodedFile, Pacer, PersistError};
use crate::tables::Table;

const HOUR_US: i64 = 3_600_000_000;
/// A value that does not convert is an error, never a null: a merge must not lose it.
const STRICT: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: arrow::util::display::FormatOptions::new(),
};

/// When files are merged.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Files smaller than this are merged with the other small files of their
    /// partition; larger ones are left as they are.
    pub small_bytes: u64,
    /// The input of one merge is at most this many bytes (its memory is a small
    /// multiple of it).
    pub max_merge_bytes: u64,
    /// A partition whose hour has not settled yet is merged once it holds this many
    /// small files (so the current hour's query stays fast); a settled one as soon as
    /// it holds two.
    pub open_min_files: usize,
    /// An hour is settled this long after it ended (rows still arriving late for it
    /// have landed by then).
    pub settle_us: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            small_bytes: 16 << 20,
            max_merge_bytes: 32 << 20,
            open_min_files: 32,
            settle_us: 120_000_000,
        }
    }
}

impl Policy {
    /// Merges every partition with two small files or more, settled or not (the
    /// `hookscope compact` command).
    pub fn everything() -> Self {
        Self {
            open_min_files: 2,
            settle_us: 0,
            ..Self::default()
        }
    }
}

/// Files of one partition to merge into one.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub table: Table,
    /// `date=YYYY-MM-DD/hour=HH`.
    pub partition: String,
    /// In the order of their time ranges.
    pub files: Vec<FileEntry>,
}

impl Group {
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// Why a merge failed. Nothing was written.
#[derive(Debug, Error)]
pub enum CompactError {
    #[error("cannot read {path} to merge it: {source}")]
    Read {
        path: String,
        source: parquet::errors::ParquetError,
    },
    #[error("cannot merge {path}: its column {column} {problem}")]
    Column {
        path: String,
        column: String,
        problem: String,
    },
    #[error("merging gave {got} rows where the manifest lists {expected}; nothing was replaced")]
    RowCount { expected: u64, got: u64 },
    #[error(transparent)]
    Persist(#[from] PersistError),
}

/// The partition folder of a lake path (`table/date=…/hour=…/name.parquet`).
fn partition_of_path(path: &str) -> Option<&str> {
    let (dir, _) = path.rsplit_once('/')?;
    let (_, partition) = dir.split_once('/')?;
    Some(partition)
}

/// The groups to merge now (`now_us`), oldest partition first.
pub fn plan(manifest: &Manifest, now_us: i64, policy: &Policy) -> Vec<Group> {
    let mut groups = Vec::new();
    for table in Table::ALL {
        let mut partitions: BTreeMap<&str, Vec<&FileEntry>> = BTreeMap::new();
        for f in manifest.files(table) {
            if f.bytes < policy.small_bytes
                && let Some(p) = partition_of_path(&f.path)
            {
                partitions.entry(p).or_default().push(f);
            }
        }
        for (partition, mut small) in partitions {
            if small.len() < 2 {
                continue;
            }
            let hour_end = small
                .iter()
                .map(|f| f.max_time_us.div_euclid(HOUR_US))
                .max()
                .unwrap_or(0)
                .saturating_add(1)
                .saturating_mul(HOUR_US);
            let settled = now_us >= hour_end.saturating_add(policy.settle_us);
            if !settled && small.len() < policy.open_min_files {
                continue;
            }
            small.sort_by_key(|f| (f.min_time_us, f.max_time_us));
            let mut current: Vec<FileEntry> = Vec::new();
            let mut bytes = 0;
            for f in small {
                if !current.is_empty() && bytes + f.bytes > policy.max_merge_bytes {
                    push_group(&mut groups, table, partition, std::mem::take(&mut current));
                    bytes = 0;
                }
                bytes += f.bytes;
                current.push(f.clone());
            }
            push_group(&mut groups, table, partition, current);
        }
    }
    groups
}

fn push_group(groups: &mut Vec<Group>, table: Table, partition: &str, files: Vec<FileEntry>) {
    if files.len() >= 2 {
        groups.push(Group {
            table,
            partition: partition.to_string(),
            files,
        });
    }
}

/// Merges the files of `group` (their bytes in `inputs`, in the group's order) into
/// sorted files of the table's current schema.
pub(crate) fn merge(
    group: &Group,
    inputs: Vec<Bytes>,
    zstd_level: i32,
    pacer: &mut Pacer,
) -> Result<Vec<EncodedFile>, CompactError> {
    let schema = group.table.schema();
    let mut batches = Vec::new();
    for (entry, bytes) in group.files.iter().zip(inputs) {
        let read_error = |source| CompactError::Read {
            path: entry.path.clone(),
            source,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.with_batch_size(8192).build())
            .map_err(read_error)?;
        for batch in reader {
            let batch = batch.map_err(|e| read_error(e.into()))?;
            batches.push(to_schema(&batch, &schema, &entry.path)?);
            pacer.step();
        }
    }
    let got: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    if got != group.rows() {
        return Err(CompactError::RowCount {
            expected: group.rows(),
            got,
        });
    }
    let files = persist::encode_paced(group.table, &batches, zstd_level, pacer)?;
    let written: u64 = files.iter().map(|f| f.rows).sum();
    if written != got {
        return Err(CompactError::RowCount {
            expected: got,
            got: written,
        });
    }
    Ok(files)
}

/// `batch` with the table's current columns: a column files of an older version lack
/// is null (when it may be), and types are cast to the current ones.
fn to_schema(
    batch: &RecordBatch,
    schema: &arrow::datatypes::SchemaRef,
    path: &str,
) -> Result<RecordBatch, CompactError> {
    let problem = |column: &str, problem: String| CompactError::Column {
        path: path.to_string(),
        column: column.to_string(),
        problem,
    };
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = match batch.column_by_name(field.name()) {
            Some(c) if c.data_type() == field.data_type() => Arc::clone(c),
            Some(c) => cast_with_options(c, field.data_type(), &STRICT).map_err(|e| {
                problem(
                    field.name(),
                    format!("cannot be read as {}: {e}", field.data_type()),
                )
            })?,
            None if field.is_nullable() => new_null_array(field.data_type(), batch.num_rows()),
            None => {
                return Err(problem(
                    field.name(),
                    "is missing and may not be null".into(),
                ));
            }
        };
        columns.push(column);
    }
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| problem("*", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, bytes: u64, min: i64) -> FileEntry {
        FileEntry {
            path: path.into(),
            rows: 10,
            bytes,
            min_time_us: min,
            max_time_us: min + 1_000_000,
            ids: None,
        }
    }

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        Manifest::default().with_files(
            files.into_iter().map(|f| (Table::Deliveries, f)).collect(),
            0,
            1,
        )
    }

    const H0: i64 = 1_764_547_200_000_000; // 2025-12-01T00:00Z

    #[test]
    fn settled_partitions_merge_their_small_files_and_leave_large_ones() {
        let p = "deliveries/date=2025-12-01/hour=00";
        let m = manifest(vec![
            file(&format!("{p}/b.parquet"), 100, H0 + 20),
            file(&format!("{p}/a.parquet"), 100, H0 + 10),
            file(&format!("{p}/big.parquet"), 32 << 20, H0),
            file(
                "deliveries/date=2025-12-01/hour=01/c.parquet",
                100,
                H0 + HOUR_US,
            ),
        ]);
        let policy = Policy::default();
        // Before the hour settled: two small files are not enough.
        assert!(plan(&m, H0 + HOUR_US, &policy).is_empty());
        let groups = plan(&m, H0 + HOUR_US + policy.settle_us, &policy);
        assert_eq!(groups.len(), 1);
        let paths: Vec<&str> = groups[0].files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, [format!("{p}/a.parquet"), format!("{p}/b.parquet")]);
        assert_eq!(groups[0].partition, "date=2025-12-01/hour=00");
    }

    #[test]
    fn an_open_hour_merges_once_it_has_many_files_in_bounded_groups() {
        let p = "deliveries/date=2025-12-01/hour=00";
        let policy = Policy {
            open_min_files: 4,
            max_merge_bytes: 250,
            ..Policy::default()
        };
        let three = manifest(
            (0..3)
                .map(|i| file(&format!("{p}/{i}.parquet"), 100, H0 + i))
                .collect(),
        );
        assert!(plan(&three, H0 + 10, &policy).is_empty());
        let five = manifest(
            (0..5)
                .map(|i| file(&format!("{p}/{i}.parquet"), 100, H0 + i))
                .collect(),
        );
        let groups = plan(&five, H0 + 10, &policy);
        // 250 bytes a merge: two files each, and the fifth is left alone.
        assert_eq!(
            groups.iter().map(|g| g.files.len()).collect::<Vec<_>>(),
            [2, 2]
        );
    }
}
