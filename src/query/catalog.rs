//! The catalog: what each table holds right now (committed Parquet files plus
//! buffered rows) and the DataFusion `TableProvider` that scans it.
//!
//! Invariants:
//! - **Visible**: a row is visible to SQL once its WAL record is durable (it is in the
//!   buffer before the append is acknowledged) and stays visible while it moves from
//!   the buffer to Parquet.
//! - The manifest and the buffer live behind one lock. [`Catalog::snapshot`] reads
//!   both in one critical section, and [`Catalog::publish`] swaps in a new manifest and
//!   drops the rows it now covers in one critical section, so a scan sees every row
//!   exactly once even while a flush is in progress.
//! - Scans prune files by the table's time column using the manifest's per-file
//!   min/max, and hand the same filters to the Parquet reader for row-group and page
//!   pruning. Filters are reported `Inexact`: DataFusion still applies them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::config::TableParquetOptions;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use parking_lot::Mutex;

use super::derived::{self, Reading};
use crate::buffer::Buffer;
use crate::lake::manifest::{FileEntry, Manifest};
use crate::lake::{Lake, LakeError};
use crate::tables::Table;

/// Rollup tables in the manifest and in SQL.
pub mod rollup {
    use super::*;

    /// The prefix of a rollup table's SQL name.
    pub const PREFIX: &str = "rollup_";
    /// The folder under the data dir that holds every rollup's files.
    pub const DIR: &str = "rollups";

    /// The table of the saved query `query`.
    pub fn table_name(query: &str) -> String {
        format!("{PREFIX}{query}")
    }

    pub fn is_rollup(name: &str) -> bool {
        name.starts_with(PREFIX) && name.len() > PREFIX.len()
    }

    /// The Arrow schema of a committed rollup file.
    pub async fn read_schema(lake: &Lake, path: &str) -> Result<SchemaRef, LakeError> {
        let bytes = lake.get(path).await?.ok_or_else(|| LakeError::Unreadable {
            path: path.to_string(),
            reason: "a committed rollup file is missing; run `hookscope check`".into(),
        })?;
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map(|b| Arc::clone(b.schema()))
            .map_err(|e| LakeError::Unreadable {
                path: path.to_string(),
                reason: format!("not a readable Parquet file ({e}); run `hookscope check`"),
            })
    }
}

struct State {
    manifest: Arc<Manifest>,
    buffer: Buffer,
}

/// See the module docs.
pub struct Catalog {
    lake: Lake,
    state: Mutex<State>,
    /// The buffer's approximate bytes, updated under the lock whenever the buffer
    /// changes, so that every request can check it without taking the lock.
    buffered_bytes: AtomicUsize,
    /// Schemas of the rollup tables, by SQL name (see [`Catalog::rollup_schema`]).
    /// (a committed file, the schema read from it) per rollup.
    rollup_schemas: Mutex<std::collections::HashMap<String, (String, SchemaRef)>>,
}

/// What a scan of one table reads: the committed manifest (its files are read by
/// reference: a year of hourly files is tens of thousands of entries, too many to
/// copy per query) and the buffered rows.
pub struct Snapshot {
    pub manifest: Arc<Manifest>,
    pub batches: Vec<RecordBatch>,
}

impl Catalog {
    pub fn new(lake: Lake, manifest: Manifest) -> Arc<Self> {
        Arc::new(Self {
            lake,
            state: Mutex::new(State {
                manifest: Arc::new(manifest),
                buffer: Buffer::default(),
            }),
            buffered_bytes: AtomicUsize::new(0),
            rollup_schemas: Mutex::default(),
        })
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// The committed manifest.
    pub fn manifest(&self) -> Arc<Manifest> {
        Arc::clone(&self.state.lock().manifest)
    }

    /// Runs `f` on the buffer under the catalog lock (used by the WAL applier).
    pub fn with_buffer<R>(&self, f: impl FnOnce(&mut Buffer) -> R) -> R {
        let mut state = self.state.lock();
        let out = f(&mut state.buffer);
        self.buffered_bytes
            .store(state.buffer.approx_bytes(), Ordering::Relaxed);
        out
    }

    /// The buffer's approximate bytes, without taking the catalog lock (checked on
    /// every append; the applier holds the lock while it applies a group).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes.load(Ordering::Relaxed)
    }

    /// Committed files and buffered rows of `table`, consistent with each other.
    pub fn snapshot(&self, table: Table) -> Snapshot {
        let mut state = self.state.lock();
        let batches = state.buffer.snapshot(table);
        Snapshot {
            manifest: Arc::clone(&state.manifest),
            batches,
        }
    }

    /// Buffered rows of `table` up to WAL seq `through` (for the flusher).
    pub fn buffered_through(&self, table: Table, through: u64) -> Vec<RecordBatch> {
        self.state.lock().buffer.take_through(table, through)
    }

    /// Publishes a committed manifest and forgets the buffered rows it now covers,
    /// atomically for readers. Returns the forgotten batches: freeing that much memory
    /// takes a while, so the caller does it after the lock is released.
    #[must_use = "drop the returned batches off the hot path"]
    pub fn publish(&self, manifest: Manifest, flush_started: Instant) -> Vec<RecordBatch> {
        let mut state = self.state.lock();
        let through = manifest.wal_through;
        state.manifest = Arc::new(manifest);
        let dropped = state.buffer.drop_through(through, flush_started);
        self.buffered_bytes
            .store(state.buffer.approx_bytes(), Ordering::Relaxed);
        dropped
    }

    /// Publishes a committed manifest that moved files but reaches no further into
    /// the WAL (compaction, retention): the buffer is untouched.
    pub fn replace_manifest(&self, manifest: Manifest) {
        self.state.lock().manifest = Arc::new(manifest);
    }

    /// (rows, approximate bytes, oldest row's arrival) of the buffer.
    pub fn buffer_stats(&self) -> (usize, usize, Option<Instant>) {
        let state = self.state.lock();
        (
            state.buffer.rows(),
            state.buffer.approx_bytes(),
            state.buffer.oldest(),
        )
    }

    /// The DataFusion table over `table`.
    pub fn provider(self: &Arc<Self>, table: Table) -> Arc<LakeTable> {
        Arc::new(LakeTable {
            name: table.name().to_string(),
            time_column: table.time_column().to_string(),
            buffered: Some(table),
            schema: table.sql_schema(),
            stored_schema: table.schema(),
            catalog: Arc::clone(self),
        })
    }

    /// The rollup tables with committed rows, by SQL name.
    pub fn rollup_names(&self) -> Vec<String> {
        self.manifest()
            .tables
            .iter()
            .filter(|(name, files)| rollup::is_rollup(name) && !files.is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The schema of rollup table `name`, as its files hold it; `None` if it has no
    /// committed file. All files of a rollup have the same columns, so it is read
    /// from one file's footer and kept while that file is committed.
    pub async fn rollup_schema(&self, name: &str) -> Result<Option<SchemaRef>, LakeError> {
        let manifest = self.manifest();
        let files = manifest.files(name);
        let Some(newest) = files.last() else {
            return Ok(None);
        };
        if let Some((path, schema)) = self.rollup_schemas.lock().get(name)
            && files.iter().any(|f| f.path == *path)
        {
            return Ok(Some(Arc::clone(schema)));
        }
        let schema = rollup::read_schema(&self.lake, &newest.path).await?;
        self.rollup_schemas
            .lock()
            .insert(name.to_string(), (newest.path.clone(), Arc::clone(&schema)));
        Ok(Some(schema))
    }

    /// The DataFusion table over rollup table `name` (committed files only).
    pub async fn rollup_provider(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<Option<Arc<LakeTable>>, LakeError> {
        let Some(schema) = self.rollup_schema(name).await? else {
            return Ok(None);
        };
        let time_column = schema
            .fields()
            .first()
            .map(|f| f.name().clone())
            .unwrap_or_default();
        Ok(Some(Arc::new(LakeTable {
            name: name.to_string(),
            time_column,
            buffered: None,
            stored_schema: Arc::clone(&schema),
            schema,
            catalog: Arc::clone(self),
        })))
    }
}

/// The tables of the lake for DataFusion: the write path's tables, and a
/// `rollup_<name>` table for each materialized saved query with committed rows
/// (looked up when a query names it, so a rollup committed after the session was
/// made is visible to the next query).
pub struct LakeSchema {
    catalog: Arc<Catalog>,
}

impl std::fmt::Debug for LakeSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeSchema").finish_non_exhaustive()
    }
}

impl LakeSchema {
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Self { catalog }
    }
}

#[async_trait]
impl SchemaProvider for LakeSchema {
    fn table_names(&self) -> Vec<String> {
        Table::ALL
            .iter()
            .map(|t| t.name().to_string())
            .chain(self.catalog.rollup_names())
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(table) = Table::from_name(name) {
            return Ok(Some(self.catalog.provider(table)));
        }
        if !rollup::is_rollup(name) {
            return Ok(None);
        }
        let provider = self
            .catalog
            .rollup_provider(name)
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        Ok(provider.map(|p| p as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        Table::from_name(name).is_some()
            || (rollup::is_rollup(name) && !self.catalog.manifest().files(name).is_empty())
    }
}

/// A lake table as DataFusion sees it: committed Parquet files ∪ buffered rows.
pub struct LakeTable {
    /// The SQL name, also the manifest's key.
    name: String,
    /// Files are pruned by this column's min/max.
    time_column: String,
    /// The write path's table (with buffered rows); `None` for a rollup.
    buffered: Option<Table>,
    /// The columns as SQL sees them.
    schema: SchemaRef,
    /// The columns as the files and the buffer hold them (derived columns nullable:
    /// see `query::derived`).
    stored_schema: SchemaRef,
    catalog: Arc<Catalog>,
}

impl std::fmt::Debug for LakeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeTable")
            .field("table", &self.name)
            .finish()
    }
}

#[async_trait]
impl TableProvider for LakeTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let snapshot = match self.buffered {
            Some(table) => self.catalog.snapshot(table),
            None => Snapshot {
                manifest: self.catalog.manifest(),
                batches: Vec::new(),
            },
        };
        let range = TimeRange::from_filters(filters, &self.time_column);
        let reading = Reading::new(self.buffered, &self.schema, projection);
        let projection = reading.columns.as_ref();
        let ids = ids_from_filters(filters);
        let files: Vec<&FileEntry> = snapshot
            .manifest
            .files(&self.name)
            .iter()
            .filter(|f| range.overlaps(f.min_time_us, f.max_time_us))
            .filter(|f| match (&ids, &f.ids) {
                (Some(wanted), Some((lo, hi))) => wanted.iter().any(|id| lo <= id && id <= hi),
                _ => true,
            })
            .collect();

        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !files.is_empty() {
            // The session's Parquet settings (pushdown, page index, bloom filters), and
            // footers and page indexes kept in the session's metadata cache: lake files
            // never change under a name, so a cached footer stays right.
            let options = TableParquetOptions {
                global: state.config_options().execution.parquet.clone(),
                ..Default::default()
            };
            let runtime = state.runtime_env();
            let store = runtime.object_store(self.catalog.lake().url())?;
            let reader = CachedParquetFileReaderFactory::new(
                store,
                runtime.cache_manager.get_file_metadata_cache(),
            );
            let mut source = ParquetSource::new(Arc::clone(&self.stored_schema))
                .with_table_parquet_options(options)
                .with_parquet_file_reader_factory(Arc::new(reader));
            let pushed = filters
                .iter()
                .filter(|f| !derived::reads_derived(self.buffered, f))
                .cloned();
            if let Some(predicate) = conjunction(pushed) {
                let df_schema = DFSchema::try_from(Arc::clone(&self.stored_schema))?;
                // A filter the physical planner cannot take is simply not used for pruning.
                if let Ok(physical) = state.create_physical_expr(predicate, &df_schema) {
                    source = source.with_predicate(physical);
                }
            }
            let groups = split_groups(&self.catalog, &files, state.config().target_partitions())?;
            let config =
                FileScanConfigBuilder::new(self.catalog.lake().url().clone(), Arc::new(source))
                    .with_file_groups(groups)
                    .with_projection_indices(projection.cloned())?
                    .with_limit(limit)
                    .build();
            inputs.push(DataSourceExec::from_data_source(config));
        }
        if !snapshot.batches.is_empty() {
            inputs.push(MemorySourceConfig::try_new_exec(
                &[snapshot.batches],
                Arc::clone(&self.stored_schema),
                projection.cloned(),
            )?);
        }
        let read = match inputs.len() {
            0 => {
                let projected = match projection {
                    Some(p) => Arc::new(self.stored_schema.project(p)?),
                    None => Arc::clone(&self.stored_schema),
                };
                Arc::new(EmptyExec::new(projected))
            }
            1 => inputs.remove(0),
            _ => UnionExec::try_new(inputs)?,
        };
        reading.finish(state, self.buffered, filters, read)
    }
}

/// Spreads files over up to `n` groups (one scan partition each), balancing bytes.
fn split_groups(catalog: &Catalog, files: &[&FileEntry], n: usize) -> DfResult<Vec<FileGroup>> {
    let n = n.clamp(1, files.len());
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for f in files {
        let path = catalog
            .lake()
            .object_path(&f.path)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        let smallest = groups
            .iter_mut()
            .min_by_key(|(bytes, _)| *bytes)
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("no file group".into()))?;
        smallest.0 += f.bytes;
        smallest
            .1
            .push(PartitionedFile::new(path.to_string(), f.bytes));
    }
    Ok(groups
        .into_iter()
        .filter(|(_, g)| !g.is_empty())
        .map(|(_, g)| FileGroup::new(g))
        .collect())
}

/// Inclusive bounds on a time column implied by a scan's filters (microseconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TimeRange {
    pub min: i64,
    pub max: i64,
}

impl TimeRange {
    const ALL: TimeRange = TimeRange {
        min: i64::MIN,
        max: i64::MAX,
    };

    /// The range every filter (ANDed) allows for `column`; unbounded if unknown.
    pub fn from_filters(filters: &[Expr], column: &str) -> TimeRange {
        filters
            .iter()
            .fold(Self::ALL, |r, f| r.intersect(Self::from_expr(f, column)))
    }

    fn intersect(self, other: TimeRange) -> TimeRange {
        TimeRange {
            min: self.min.max(other.min),
            max: self.max.min(other.max),
        }
    }

    fn from_expr(expr: &Expr, column: &str) -> TimeRange {
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Operator::And => {
                    Self::from_expr(left, column).intersect(Self::from_expr(right, column))
                }
                Operator::Or => {
                    let (a, b) = (
                        Self::from_expr(left, column),
                        Self::from_expr(right, column),
                    );
                    TimeRange {
                        min: a.min.min(b.min),
                        max: a.max.max(b.max),
                    }
                }
                _ => {
                    if let (Some(c), Some(t)) = (column_name(left), literal_us(right))
                        && c == column
                    {
                        return Self::compare(*op, t);
                    }
                    if let (Some(t), Some(c)) = (literal_us(left), column_name(right))
                        && c == column
                        && let Some(op) = op.swap()
                    {
                        return Self::compare(op, t);
                    }
                    Self::ALL
                }
            },
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if column_name(expr) == Some(column) => match (literal_us(low), literal_us(high)) {
                (Some(lo), Some(hi)) => TimeRange { min: lo, max: hi },
                _ => Self::ALL,
            },
            _ => Self::ALL,
        }
    }

    fn compare(op: Operator, t: i64) -> TimeRange {
        match op {
            Operator::Eq => TimeRange { min: t, max: t },
            Operator::Gt => TimeRange {
                min: t.saturating_add(1),
                max: i64::MAX,
            },
            Operator::GtEq => TimeRange {
                min: t,
                max: i64::MAX,
            },
            Operator::Lt => TimeRange {
                min: i64::MIN,
                max: t.saturating_sub(1),
            },
            Operator::LtEq => TimeRange {
                min: i64::MIN,
                max: t,
            },
            _ => Self::ALL,
        }
    }

    /// True if a file spanning `[min, max]` may hold rows in this range.
    pub fn overlaps(&self, min: i64, max: i64) -> bool {
        min <= self.max && max >= self.min
    }
}

/// The ids a row must have to pass the filters (`id = '…'`, `id IN (…)`, and ORs of
/// them), if one of them says so.
fn ids_from_filters(filters: &[Expr]) -> Option<Vec<String>> {
    filters.iter().find_map(ids_of)
}

fn ids_of(expr: &Expr) -> Option<Vec<String>> {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => {
            let (c, v) = match (column_name(left), column_name(right)) {
                (Some(c), None) => (c, right),
                (None, Some(c)) => (c, left),
                _ => return None,
            };
            (c == "id")
                .then(|| literal_text(v))
                .flatten()
                .map(|v| vec![v])
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut ids = ids_of(left)?;
            ids.extend(ids_of(right)?);
            Some(ids)
        }
        Expr::InList(list) if !list.negated && column_name(&list.expr) == Some("id") => list
            .list
            .iter()
            .map(literal_text)
            .collect::<Option<Vec<_>>>(),
        _ => None,
    }
}

fn literal_text(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Literal(
            ScalarValue::Utf8(Some(v))
            | ScalarValue::Utf8View(Some(v))
            | ScalarValue::LargeUtf8(Some(v)),
            _,
        ) => Some(v.clone()),
        _ => None,
    }
}

fn column_name(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Column(c) => Some(c.name.as_str()),
        _ => None,
    }
}

/// A timestamp literal in microseconds. Nanoseconds round down for a lower bound,
/// which only widens ranges (never prunes a file that may match).
fn literal_us(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(v.div_euclid(1000)),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn ts(us: i64) -> Expr {
        lit(ScalarValue::TimestampMicrosecond(
            Some(us),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn lookups_by_id_name_the_ids_they_need() {
        let ids = |f: Expr| ids_from_filters(&[f]);
        assert_eq!(ids(col("id").eq(lit("a"))), Some(vec!["a".to_string()]));
        assert_eq!(ids(lit("b").eq(col("id"))), Some(vec!["b".to_string()]));
        assert_eq!(
            ids(col("id").eq(lit("a")).or(col("id").eq(lit("c")))),
            Some(vec!["a".to_string(), "c".to_string()])
        );
        assert_eq!(
            ids(col("id").in_list(vec![lit("x"), lit("y")], false)),
            Some(vec!["x".to_string(), "y".to_string()])
        );
        assert_eq!(ids(col("id").in_list(vec![lit("x")], true)), None);
        assert_eq!(
            ids(col("id").eq(lit("a")).or(col("source").eq(lit("s")))),
            None
        );
        assert_eq!(ids(col("event_id").eq(lit("a"))), None);
        assert_eq!(ids(col("id").gt(lit("a"))), None);
    }

    #[test]
    fn time_ranges_come_from_comparisons_and_between() {
        let c = "received_at";
        let r = TimeRange::from_filters(&[col(c).gt_eq(ts(100)), col(c).lt(ts(200))], c);
        assert_eq!(r, TimeRange { min: 100, max: 199 });
        let r = TimeRange::from_filters(&[ts(50).lt(col(c))], c);
        assert_eq!(r.min, 51);
        let r = TimeRange::from_filters(&[col(c).between(ts(1), ts(9))], c);
        assert_eq!(r, TimeRange { min: 1, max: 9 });
        let r = TimeRange::from_filters(&[col("other").gt(ts(5))], c);
        assert_eq!(r, TimeRange::ALL);
        assert!(r.overlaps(0, 1));
        let r = TimeRange::from_filters(&[col(c).gt(ts(10)).or(col(c).lt(ts(0)))], c);
        assert_eq!(r, TimeRange::ALL);
    }
}
