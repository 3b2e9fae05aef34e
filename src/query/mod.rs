//! SQL over the lake: a DataFusion session with the tables `deliveries`, `outcomes`
//! and `alerts`, guarded to be read-only and bounded in time and memory.
//!
//! Invariants:
//! - Only read-only statements run: a query (`SELECT` / `WITH` / `VALUES`),
//!   `EXPLAIN` of one, `SHOW`, `DESCRIBE`. Everything else is refused before planning
//!   ([`QueryError::Forbidden`]), and DataFusion's own `SQLOptions` refuse DDL, DML and
//!   statements as a second line.
//! - Every query has a deadline: past it the execution task is aborted and the caller
//!   gets [`QueryError::Timeout`]. Its memory is capped by the session's memory pool.
//! - With a dedicated runtime, queries execute on their own worker threads, so a
//!   runaway query cannot starve ingest or health checks.
//! - The CLI and the server run the same [`QueryEngine`].

pub mod catalog;
mod date_trunc;
pub(crate) mod derived;
pub mod format;
mod guard;
pub mod limits;
mod window;

use std::num::NonZeroUsize;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use futures::StreamExt;
use thiserror::Error;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::query::catalog::Catalog;
use guard::QueryGuard;

/// Why a query did not produce its result.
#[derive(Debug, Error)]
pub enum QueryError {
    /// Not a read-only statement.
    #[error("{0}")]
    Forbidden(String),
    /// The SQL is wrong (syntax, unknown column, bad cast …).
    #[error("{0}")]
    Invalid(String),
    #[error(
        "query exceeded the {0:?} time limit and was cancelled; narrow it (a WHERE on received_at) or raise [query] timeout"
    )]
    Timeout(Duration),
    #[error(
        "query result exceeded the {0}-byte limit; add a LIMIT or aggregate, or raise [query] max_result_bytes"
    )]
    TooLarge(u64),
    #[error("query failed: {0}")]
    Internal(String),
}

impl QueryError {
    fn from_df(e: DataFusionError) -> Self {
        let message = e.to_string();
        match e.find_root() {
            DataFusionError::IoError(_)
            | DataFusionError::ObjectStore(_)
            | DataFusionError::ParquetError(_)
            | DataFusionError::Internal(_)
            | DataFusionError::ExecutionJoin(_) => QueryError::Internal(message),
            DataFusionError::ResourcesExhausted(_) => QueryError::Invalid(format!(
                "{message} (the query needs more memory than [query] memory_limit allows; narrow it or raise the limit)"
            )),
            _ => QueryError::Invalid(message),
        }
    }
}

/// Time and memory bounds of queries.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    pub timeout: Duration,
    pub memory_limit: usize,
    pub max_result_bytes: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            memory_limit: 1 << 30,
            max_result_bytes: 256 << 20,
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    limits: QueryLimits,
    runtime: Option<Handle>,
}

/// Runtime shared by all query engines of the process (server mode).
fn query_runtime() -> Result<Handle, QueryError> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt.handle().clone());
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("hookscope-query")
        .enable_all()
        .build()
        .map_err(|e| QueryError::Internal(format!("cannot start the query runtime: {e}")))?;
    // Two first callers may race: the loser's runtime is shut down without waiting,
    // as dropping it here, perhaps inside another runtime, would panic.
    if let Err(spare) = RT.set(rt) {
        spare.shutdown_background();
    }
    RT.get()
        .map(|rt| rt.handle().clone())
        .ok_or_else(|| QueryError::Internal("the query runtime was not kept".into()))
}

impl QueryEngine {
    /// A session over `catalog`'s tables. With `dedicated_runtime`, execution runs on
    /// the process's query threads instead of the caller's runtime.
    pub fn new(
        catalog: &Arc<Catalog>,
        limits: QueryLimits,
        dedicated_runtime: bool,
    ) -> Result<Self, QueryError> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::with_partitions(catalog, limits, dedicated_runtime, threads)
    }

    /// The engine's own reads of the lake on open (not user queries): generous limits
    /// of their own, and one scan partition, so rows come in the order of the
    /// manifest's files (flush order).
    pub fn for_maintenance(catalog: &Arc<Catalog>) -> Result<Self, QueryError> {
        let limits = QueryLimits {
            timeout: Duration::from_secs(3600),
            memory_limit: 4 << 30,
            max_result_bytes: u64::MAX,
        };
        Self::with_partitions(catalog, limits, false, 1)
    }

    fn with_partitions(
        catalog: &Arc<Catalog>,
        limits: QueryLimits,
        dedicated_runtime: bool,
        threads: usize,
    ) -> Result<Self, QueryError> {
        // DataFusion's own `DATAFUSION_*` variables tune the session (for experiments);
        // the settings below win.
        let config = SessionConfig::from_env()
            .unwrap_or_default()
            .with_information_schema(true)
            .with_target_partitions(threads);
        // A fair pool: each sort or join that can spill gets its share and spills past
        // it, instead of the first to grow starving the others into an error.
        let pool = TrackConsumersPool::new(
            FairSpillPool::new(limits.memory_limit),
            NonZeroUsize::MIN.saturating_add(4),
        );
        // Footers and page indexes of the lake's files stay in memory between queries
        // (a year of compacted hourly files holds tens of thousands).
        let cache =
            CacheManagerConfig::default().with_metadata_cache_limit(limits.memory_limit / 4);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(pool))
            .with_cache_manager(cache)
            .build_arc()
            .map_err(QueryError::from_df)?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(window::LagWindowRule))
            .build();
        let mut ctx = SessionContext::new_with_state(state);
        let lake = catalog.lake();
        ctx.register_object_store(lake.url().as_ref(), Arc::clone(lake.store()));
        // The default schema is the lake's: its tables, and rollups as they appear.
        let lake_schema = Arc::new(catalog::LakeSchema::new(Arc::clone(catalog)));
        ctx.catalog("datafusion")
            .ok_or_else(|| QueryError::Internal("the session has no default catalog".into()))?
            .register_schema("public", lake_schema)
            .map_err(QueryError::from_df)?;
        datafusion_functions_json::register_all(&mut ctx).map_err(QueryError::from_df)?;
        ctx.register_udf(date_trunc::UtcDateTrunc::udf());
        limits::register_bounded_functions(&ctx, limits::batch_limit(limits.memory_limit));
        let runtime = if dedicated_runtime {
            Some(query_runtime()?)
        } else {
            None
        };
        Ok(Self {
            ctx,
            limits,
            runtime,
        })
    }

    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// Bytes the session's memory pool has reserved right now (all running queries).
    pub fn memory_reserved(&self) -> usize {
        self.ctx.runtime_env().memory_pool.reserved()
    }

    /// Plans and starts `sql`; the result arrives batch by batch from the stream.
    /// The deadline starts now and covers planning and every batch.
    pub async fn stream(&self, sql: &str) -> Result<ResultStream, QueryError> {
        self.stream_at(sql, None).await
    }

    /// [`Self::stream`], with `now()` (and the other current-time functions) fixed
    /// at `now` when given: a saved query's run computes what it would have at its
    /// scheduled time.
    pub async fn stream_at(
        &self,
        sql: &str,
        now: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<ResultStream, QueryError> {
        check_read_only(sql)?;
        let deadline = Instant::now() + self.limits.timeout;
        let (schema_tx, schema_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(4);
        let ctx = self.ctx.clone();
        let sql = sql.to_string();
        let guard = QueryGuard::new(deadline, limits::batch_limit(self.limits.memory_limit));
        let task_guard = guard.clone();
        let timeout = self.limits.timeout;
        // Set once the whole result was sent: a channel that closes without it (the
        // deadline ended the task, or it panicked) is an error, never a short result.
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task_finished = Arc::clone(&finished);
        let task = async move {
            let guard = task_guard;
            let error = |e: DataFusionError| {
                if guard.timed_out() {
                    QueryError::Timeout(timeout)
                } else {
                    QueryError::from_df(e)
                }
            };
            let mut stream = match start(&ctx, &sql, now, &guard).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = schema_tx.send(Err(error(e)));
                    return;
                }
            };
            if schema_tx.send(Ok(stream.schema())).is_err() {
                return;
            }
            while let Some(batch) = stream.next().await {
                let stop = batch.is_err();
                if tx.send(batch.map_err(error)).await.is_err() || stop {
                    return;
                }
            }
            task_finished.store(true, std::sync::atomic::Ordering::Release);
        };
        // The deadline ends the task even when nobody reads its result (a client
        // that stopped reading): dropping the plan frees its memory reservations. A
        // panic in an operator ends it too, and is logged.
        let task = async move {
            let run = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(task));
            if let Ok(Err(panic)) = tokio::time::timeout_at(deadline.into(), run).await {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %message, "a query panicked; it gets an error");
            }
        };
        let handle = match &self.runtime {
            Some(rt) => rt.spawn(task),
            None => tokio::spawn(task),
        };
        let guard = AbortOnDrop(handle, guard);
        let schema = match tokio::time::timeout_at(deadline.into(), schema_rx).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) if Instant::now() >= deadline => {
                return Err(QueryError::Timeout(self.limits.timeout));
            }
            Ok(Err(_)) => {
                return Err(QueryError::Internal(
                    "the query stopped before it started (an internal error; see the server log)"
                        .into(),
                ));
            }
            Err(_) => return Err(QueryError::Timeout(self.limits.timeout)),
        };
        Ok(ResultStream {
            schema,
            rx,
            finished,
            deadline,
            timeout: self.limits.timeout,
            _task: guard,
        })
    }

    /// Checks that `sql` is a read-only query that plans (tables and columns exist,
    /// types fit), without running it; returns the names of its result's columns.
    pub async fn check(&self, sql: &str) -> Result<Vec<String>, QueryError> {
        check_read_only(sql)?;
        let df = plan(&self.ctx, sql, None)
            .await
            .map_err(QueryError::from_df)?;
        Ok(df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect())
    }

    /// Runs `sql` to completion and returns all batches.
    pub async fn collect(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        self.collect_at(sql, None).await
    }

    /// [`Self::collect`] with `now()` fixed at `now` when given.
    pub async fn collect_at(
        &self,
        sql: &str,
        now: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let mut stream = self.stream_at(sql, now).await?;
        let mut batches = Vec::new();
        while let Some(batch) = stream.next().await {
            batches.push(batch?);
        }
        Ok((stream.schema(), batches))
    }
}

/// Plans `sql` read-only (with `now()` at `now` when given), guards every plan node,
/// and starts execution.
async fn start(
    ctx: &SessionContext,
    sql: &str,
    now: Option<chrono::DateTime<chrono::Utc>>,
    guard: &QueryGuard,
) -> Result<datafusion::physical_plan::SendableRecordBatchStream, DataFusionError> {
    let df = plan(ctx, sql, now).await?;
    let task_ctx = df.task_ctx();
    let batch_rows = task_ctx.session_config().batch_size();
    let plan = guard.guard_plan(df.create_physical_plan().await?, batch_rows)?;
    datafusion::physical_plan::execute_stream(plan, Arc::new(task_ctx))
}

/// The read-only logical plan of `sql`, its clock at `now` when given (the optimizer
/// folds `now()` into a constant from the state it plans with).
async fn plan(
    ctx: &SessionContext,
    sql: &str,
    now: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<datafusion::dataframe::DataFrame, DataFusionError> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let mut state = ctx.state();
    if let Some(now) = now {
        state.execution_props_mut().query_execution_start_time = Some(now);
    }
    let plan = state.create_logical_plan(sql).await?;
    options.verify_plan(&plan)?;
    Ok(datafusion::dataframe::DataFrame::new(state, plan))
}

/// Stops the query when the result is dropped (client gone, timeout): cancels its
/// plan at the next batch and aborts its task.
struct AbortOnDrop(tokio::task::JoinHandle<()>, QueryGuard);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.1.cancel();
        self.0.abort();
    }
}

/// A running query's result.
pub struct ResultStream {
    schema: SchemaRef,
    rx: mpsc::Receiver<Result<RecordBatch, QueryError>>,
    /// Set by the query task once every batch was sent.
    finished: Arc<std::sync::atomic::AtomicBool>,
    deadline: Instant,
    timeout: Duration,
    _task: AbortOnDrop,
}

impl ResultStream {
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// When the query's time is up.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The next batch; `None` at the end. Past the deadline: `Timeout`. A query that
    /// stopped before its end (deadline, panic) is an error, never a short result.
    pub async fn next(&mut self) -> Option<Result<RecordBatch, QueryError>> {
        match tokio::time::timeout_at(self.deadline.into(), self.rx.recv()).await {
            Ok(Some(item)) => Some(item),
            Ok(None) if self.finished.load(std::sync::atomic::Ordering::Acquire) => None,
            Ok(None) if Instant::now() >= self.deadline => {
                Some(Err(QueryError::Timeout(self.timeout)))
            }
            Ok(None) => Some(Err(QueryError::Internal(
                "the query stopped before its end (an internal error; see the server log)".into(),
            ))),
            Err(_) => Some(Err(QueryError::Timeout(self.timeout))),
        }
    }
}

/// Refuses anything but a read-only statement; reports syntax errors as `Invalid`.
pub(crate) fn check_read_only(sql: &str) -> Result<(), QueryError> {
    let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})
        .map_err(|e| QueryError::Invalid(e.to_string()))?;
    if statements.len() != 1 {
        return Err(QueryError::Invalid(format!(
            "expected exactly one SQL statement, found {}",
            statements.len()
        )));
    }
    statements.iter().try_for_each(check_statement)
}

fn forbidden(what: &str) -> QueryError {
    QueryError::Forbidden(format!(
        "{what} is not allowed: the query API is read-only (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE)"
    ))
}

fn check_statement(statement: &DfStatement) -> Result<(), QueryError> {
    match statement {
        DfStatement::Statement(s) => check_sql_statement(s),
        DfStatement::Explain(e) => check_statement(&e.statement),
        DfStatement::CreateExternalTable(_) => Err(forbidden("CREATE EXTERNAL TABLE")),
        DfStatement::CopyTo(_) => Err(forbidden("COPY")),
        DfStatement::Reset(_) => Err(forbidden("RESET")),
    }
}

fn check_sql_statement(statement: &Statement) -> Result<(), QueryError> {
    match statement {
        Statement::Query(_)
        | Statement::ExplainTable { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowDatabases { .. } => Ok(()),
        Statement::Explain { statement, .. } => check_sql_statement(statement),
        other => {
            let text = other.to_string();
            let keyword: String = text
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
                .to_uppercase();
            Err(forbidden(&keyword))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(timeout: Duration) -> (QueryEngine, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let lake = crate::lake::Lake::local(dir.path()).unwrap();
        let catalog = Catalog::new(lake, crate::lake::manifest::Manifest::default());
        let limits = QueryLimits {
            timeout,
            ..QueryLimits::default()
        };
        (QueryEngine::new(&catalog, limits, false).unwrap(), dir)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_deadline_ends_a_query_whose_result_nobody_reads() {
        let (engine, _dir) = engine(Duration::from_millis(1500));
        // A sort holds its input in the memory pool until its output is read.
        let stream = engine
            .stream("SELECT value FROM generate_series(1, 500000) ORDER BY value DESC")
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while engine.memory_reserved() == 0 {
            assert!(Instant::now() < deadline, "the sort never reserved memory");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The client stopped reading: the result is neither read nor dropped.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            engine.memory_reserved(),
            0,
            "the query still holds memory past its deadline"
        );
        drop(stream);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_query_that_panics_is_an_error_never_a_short_result() {
        let (engine, _dir) = engine(Duration::from_secs(30));
        let boom = datafusion::logical_expr::create_udf(
            "boom",
            vec![arrow::datatypes::DataType::Int64],
            arrow::datatypes::DataType::Int64,
            datafusion::logical_expr::Volatility::Volatile,
            Arc::new(|_| panic!("an operator bug")),
        );
        engine.ctx.register_udf(boom);
        let result = engine
            .collect("SELECT boom(value) FROM generate_series(1, 10)")
            .await;
        assert!(result.is_err(), "{:?}", result.map(|(_, b)| b.len()));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_query_past_its_deadline_is_an_error_never_a_short_result() {
        let (engine, _dir) = engine(Duration::from_millis(200));
        for _ in 0..20 {
            let result = engine
                .collect("SELECT sum(a.value * b.value) FROM generate_series(1, 100000) a, generate_series(1, 100000) b")
                .await;
            assert!(
                matches!(result, Err(QueryError::Timeout(_))),
                "{:?}",
                result.map(|(_, b)| b.len())
            );
        }
    }

    #[tokio::test]
    async fn functions_that_grow_their_input_are_bounded_before_they_compute() {
        let (engine, _dir) = engine(Duration::from_secs(30));
        for sql in [
            "SELECT repeat('x', 2000000000)",
            "SELECT lpad('x', 2000000000)",
            "SELECT rpad('x', 2000000000, 'ab')",
            "SELECT array_repeat(1, 1000000000)",
            "SELECT range(0, 1000000000)",
            "SELECT generate_series(1, 1000000000)",
            "SELECT replace(repeat('a', 1000000), 'a', repeat('b', 1000))",
            "SELECT cardinality(range(TIMESTAMP '1970-01-01', TIMESTAMP '2200-01-01', INTERVAL '1 second'))",
            "SELECT cardinality(array_repeat(range(100000), 100000))",
            "SELECT array_resize([1], 2000000000)",
            "SELECT length(array_to_string(range(100000), repeat('x', 10000)))",
            "SELECT regexp_replace(repeat('a', 100000), '', repeat('b', 100000), 'g')",
            "SELECT length(concat(x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x)) FROM (SELECT repeat('x', 10000000) AS x)",
        ] {
            let Err(err) = engine.collect(sql).await else {
                panic!("{sql} ran");
            };
            assert!(
                matches!(err, QueryError::Invalid(_)) && err.to_string().contains("memory_limit"),
                "{sql}: {err}"
            );
        }
        // A folded value repeated over the rows of a batch is refused before it runs;
        // once, without FROM, it is fine.
        for sql in [
            "SELECT repeat('x', 300000) FROM generate_series(1, 8192)",
            "SELECT arrow_cast(repeat('x', 5000000), 'LargeUtf8') FROM generate_series(1, 8192)",
            "SELECT concat(repeat('y', 100000), value) FROM generate_series(1, 10)",
        ] {
            let Err(err) = engine.collect(sql).await else {
                panic!("{sql} ran");
            };
            assert!(
                err.to_string().contains("repeated for each of"),
                "{sql}: {err}"
            );
        }
        let (_, batches) = engine
            .collect("SELECT repeat('x', 100000) AS x")
            .await
            .unwrap();
        assert_eq!(batches[0].num_rows(), 1);
        // Ordinary uses still work.
        let (_, batches) = engine
            .collect(
                "SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS p, replace('aXa', 'X', 'yy') AS x, \
                 regexp_replace('a  b   c', '\\s+', '-', 'g') AS g, concat('c', 'at') AS c, \
                 cardinality(range(DATE '2024-01-01', DATE '2024-12-31', INTERVAL '1 day')) AS days",
            )
            .await
            .unwrap();
        let row = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        for part in ["ababab", "007", "ayya", "a-b-c", "cat", "365"] {
            assert!(row.contains(part), "{part} in {row}");
        }
    }

    #[test]
    fn read_only_statements_pass() {
        for sql in [
            "SELECT 1",
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
            "EXPLAIN SELECT * FROM deliveries",
            "EXPLAIN ANALYZE SELECT 1",
            "SHOW TABLES",
            "SHOW COLUMNS FROM deliveries",
            "DESCRIBE deliveries",
            "VALUES (1), (2)",
        ] {
            assert!(check_read_only(sql).is_ok(), "{sql} should be allowed");
        }
    }

    #[test]
    fn writes_and_settings_are_forbidden() {
        for sql in [
            "CREATE TABLE t (a INT)",
            "CREATE TABLE t AS SELECT 1",
            "CREATE VIEW v AS SELECT 1",
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc/'",
            "INSERT INTO deliveries SELECT * FROM deliveries",
            "DELETE FROM deliveries",
            "UPDATE deliveries SET source = 'x'",
            "DROP TABLE deliveries",
            "COPY (SELECT 1) TO '/tmp/x.parquet'",
            "SET datafusion.execution.batch_size = 1",
            "EXPLAIN COPY (SELECT 1) TO '/tmp/x.csv'",
            "EXPLAIN INSERT INTO deliveries SELECT * FROM deliveries",
            "RESET datafusion.execution.batch_size",
        ] {
            assert!(
                matches!(check_read_only(sql), Err(QueryError::Forbidden(_))),
                "{sql} should be forbidden, got {:?}",
                check_read_only(sql)
            );
        }
    }

    #[test]
    fn bad_sql_is_invalid_not_forbidden() {
        assert!(matches!(
            check_read_only("SELEC 1"),
            Err(QueryError::Invalid(_))
        ));
        assert!(matches!(
            check_read_only("SELECT 1; SELECT 2"),
            Err(QueryError::Invalid(_))
        ));
    }
}
