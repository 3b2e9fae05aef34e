//! The engine: wires the write path (WAL → buffer → Parquet → manifest) and the read
//! path (catalog → query) for one data directory. The server and the CLI both go
//! through it; it knows nothing of HTTP.
//!
//! Invariants:
//! - [`Engine::ingest`] returns `Ok` only when the record is durable and visible.
//! - A flush writes Parquet files completely, makes them durable, commits a manifest
//!   naming them and the WAL sequence they reach, publishes that to the catalog
//!   (dropping the buffered copies in the same step), and only then releases the WAL
//!   segments. A crash at any point loses nothing and duplicates nothing: replay skips
//!   records the committed manifest covers, and files no manifest names are removed on
//!   the next start.
//! - One process writes a data directory at a time (an exclusive lock file); read-only
//!   opens take no lock and change nothing.

mod apply;
mod compact;
pub mod dedup;
mod flush;
mod open;
mod retention;
mod rollup;
#[cfg(test)]
pub(crate) mod tests;

use apply::{CutState, LakeApplier, OpenForwards};
pub use compact::{CompactReport, CompactionTotals};
pub use flush::FlushReport;
use flush::FlushStatus;
pub(crate) use open::lock_dir;
pub use rollup::{RollupWindow, RollupWrite};

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use thiserror::Error;

use crate::buffer::{Buffer, Derived};
use crate::config::Config;
use crate::engine::dedup::{DedupIndex, Delta};
use crate::lake::manifest::{FileEntry, Manifest, ManifestError};
use crate::lake::persist::{self, PersistError};
use crate::lake::{Lake, LakeError};
use crate::model::{Delivery, Entry, ForwardResult, Outcome};
use crate::query::catalog::Catalog;
use crate::query::{QueryEngine, QueryError, QueryLimits};
use crate::sys::Worker;
use crate::tables::Table;
use crate::wal::{self, Applier, Pending, ReplaySummary, SyncMode, Wal, WalConfig, WalError};

/// Errors of the engine.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error(transparent)]
    Dedup(#[from] crate::lake::dedup_state::LoadError),
    #[error(
        "data directory {0} is in use by another hookscope process (lock file {0}/.lock); stop it or use another --data-dir"
    )]
    Locked(PathBuf),
    #[error("cannot lock data directory {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("background task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Worker(#[from] crate::sys::WorkerGone),
}

/// Why a record was not accepted. Nothing was acknowledged.
#[derive(Debug, Error)]
pub enum IngestError {
    #[error("storage cannot make the delivery durable right now ({0}); retry shortly")]
    Wal(WalError),
    #[error(
        "the buffer holds {bytes} bytes, its limit (4 × [buffer] max_bytes) is {limit}: flushes to Parquet are behind or failing ({reason}); retry shortly"
    )]
    Overloaded {
        bytes: usize,
        limit: usize,
        reason: String,
    },
    #[error("this engine was opened read-only")]
    ReadOnly,
}

/// Engine settings, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub data_dir: PathBuf,
    pub node_id: String,
    pub wal_sync: SyncMode,
    pub wal_segment_max_bytes: u64,
    pub wal_commit_delay: Duration,
    pub flush_interval: Duration,
    pub flush_rows: usize,
    pub flush_bytes: usize,
    pub query: QueryLimits,
    pub dedup_window: Duration,
    pub dedup_max_keys: usize,
    pub zstd_level: i32,
    /// zstd level of the files compaction writes.
    pub compact_zstd_level: i32,
    /// Share of one core the background flusher's encoding may use (0-1].
    pub flush_cpu_share: f64,
    /// How often the server compacts in the background (zero: never).
    pub compact_interval: Duration,
    /// Days kept per table; tables not listed never expire.
    pub retention: Vec<(Table, u32)>,
}

impl EngineSettings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            data_dir: c.data_dir.clone(),
            node_id: c.node_id.clone(),
            wal_sync: c.wal.sync,
            wal_segment_max_bytes: c.wal.segment_max_bytes.0,
            wal_commit_delay: c.wal.commit_delay.0,
            flush_interval: c.buffer.flush_interval.0,
            flush_rows: c.buffer.max_rows,
            flush_bytes: c.buffer.max_bytes.0 as usize,
            query: QueryLimits {
                timeout: c.query.timeout.0,
                memory_limit: c.query.memory_limit.0 as usize,
                max_result_bytes: c.query.max_result_bytes.0,
            },
            dedup_window: c.dedup.window.0,
            dedup_max_keys: c.dedup.max_keys,
            zstd_level: c.parquet.zstd_level,
            compact_zstd_level: c.parquet.compact_zstd_level,
            flush_cpu_share: f64::from(c.parquet.flush_cpu_percent) / 100.0,
            compact_interval: c.parquet.compact_interval.0,
            retention: c.retention.days_per_table(),
        }
    }
}

/// How an engine opens its data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The server: takes the lock, writes the WAL, flushes, cleans up.
    Serve,
    /// Offline tools: reads the lake and the WAL as they are, changes nothing.
    ReadOnly,
}

/// What the applier says about an appended record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub attempt: i32,
    pub duplicate: bool,
}

impl Applied {
    /// What a processing report gets (it has no attempts).
    const REPORT: Applied = Applied {
        attempt: 1,
        duplicate: false,
    };
}

/// See the module docs.
pub struct Engine {
    settings: EngineSettings,
    catalog: Arc<Catalog>,
    query: QueryEngine,
    wal: Option<Wal<Applied>>,
    flush_lock: tokio::sync::Mutex<()>,
    flush_status: Mutex<FlushStatus>,
    background: Arc<Worker>,
    replay: ReplaySummary,
    open_forwards: Arc<OpenForwards>,
    /// What the applier saw at the last WAL cut (read by the flush that asked for it).
    last_cut: Arc<Mutex<Option<CutState>>>,
    /// Bytes reserved by appends on their way to the buffer (see [`Engine::reserve`]).
    reserved: AtomicUsize,
    /// Dedup changes of cuts whose flush did not commit: the next flush commits them.
    dedup_pending: Mutex<Delta>,
    /// No Parquet file number below this is written again: a manifest renamed into
    /// place whose fsync failed may name the files below it (see `write_cut_with`).
    file_seq_floor: AtomicU64,
    /// The persisted dedup state could not be read at open: the index was rebuilt
    /// from the lake, and the first commit replaces the old state by a checkpoint.
    dedup_rebase: AtomicBool,
    /// The thread compaction merges on, started at its first merge: a merge takes
    /// seconds, and on the flush thread it held flushes back (the WAL then grew
    /// new segments on the acknowledgement path).
    compactor: std::sync::OnceLock<Worker>,
    /// Retired files this process deleted already (the manifest lists them until a
    /// later commit forgets them).
    deleted_retired: Mutex<std::collections::HashSet<String>>,
    /// What compaction did since the open.
    compaction_totals: compact::CompactionTotals,
    /// No manifest version at or below this is written again: a version renamed into
    /// place whose fsync failed may be the committed state (see `raise_floors`).
    version_floor: AtomicU64,
    _lock: Option<File>,
}

/// Bytes of the buffer's budget held by a record on its way to the buffer; given back
/// when dropped (also when the request is abandoned mid-way).
struct Reservation<'a> {
    counter: &'a AtomicUsize,
    size: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.size, Ordering::AcqRel);
    }
}

impl Engine {
    /// Commits `next` (flush, compaction, retention), its numbers raised above any
    /// commit that may have taken effect unconfirmed. On failure: a version renamed
    /// into place may be the committed state after a crash, so its files stay and no
    /// later commit reuses its number or file names; otherwise the files `written`
    /// for it are removed (no manifest names them).
    pub(super) async fn commit_manifest(
        &self,
        next: &mut Manifest,
        written: &[String],
    ) -> Result<(), ManifestError> {
        self.apply_floors(next);
        let lake = self.catalog.lake();
        let parent = self.catalog.manifest();
        if let Err(e) = next.commit(lake, &parent).await {
            if Manifest::keeps_files(&e) {
                self.raise_floors(next);
            } else {
                flush::discard(lake, written.iter().map(String::as_str)).await;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Raises `next`'s version number and file numbers above those of any commit
    /// that may have taken effect without being confirmed.
    fn apply_floors(&self, next: &mut Manifest) {
        next.version = next
            .version
            .max(self.version_floor.load(Ordering::Acquire).saturating_add(1));
        next.next_file_seq = next
            .next_file_seq
            .max(self.file_seq_floor.load(Ordering::Acquire));
    }

    /// After a commit renamed into place but not confirmed durable (it may be the
    /// committed state after a crash, and readers may have loaded it): no later
    /// version reuses its number, and no later file its names.
    fn raise_floors(&self, next: &Manifest) {
        self.version_floor.fetch_max(next.version, Ordering::AcqRel);
        self.file_seq_floor
            .fetch_max(next.next_file_seq, Ordering::AcqRel);
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// The SQL engine over this lake.
    pub fn query(&self) -> &QueryEngine {
        &self.query
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// What was replayed from the WAL on open.
    pub fn replay_summary(&self) -> &ReplaySummary {
        &self.replay
    }

    /// Records a delivery. **Returns `Ok` only once it is durable and visible to SQL.**
    pub async fn ingest(&self, delivery: Delivery) -> Result<Applied, IngestError> {
        self.append(Entry::Delivery(Box::new(delivery))).await
    }

    /// Records processing outcomes, all or nothing: a batch is one WAL record.
    /// **Returns `Ok` only once they are durable.**
    pub async fn report(&self, mut outcomes: Vec<Outcome>) -> Result<(), IngestError> {
        let entry = match outcomes.len() {
            0 => return Ok(()),
            1 => Entry::Outcome(Box::new(outcomes.remove(0))),
            _ => Entry::Outcomes(outcomes),
        };
        self.append(entry).await.map(|_| ())
    }

    /// Makes a delivery durable before it is forwarded to the app. Its row appears
    /// once [`Engine::finish_forward`] records the app's answer.
    pub async fn begin_forward(&self, delivery: Delivery) -> Result<(), IngestError> {
        self.append(Entry::ForwardStart(Box::new(delivery)))
            .await
            .map(|_| ())
    }

    /// Records an alert notification (a row of `alerts`). **Returns `Ok` once
    /// durable and visible.**
    pub async fn record_alert(&self, row: crate::model::AlertRow) -> Result<Applied, IngestError> {
        self.append(Entry::Alert(Box::new(row))).await
    }

    /// Records a saved query's run (a row of `query_runs`). **Returns `Ok` once
    /// durable and visible.**
    pub async fn record_query_run(
        &self,
        run: crate::model::QueryRun,
    ) -> Result<Applied, IngestError> {
        self.append(Entry::QueryRun(Box::new(run))).await
    }

    /// Records the app's answer to a forwarded delivery (and the outcome row).
    /// **Returns `Ok` once durable and visible.**
    pub async fn finish_forward(&self, result: ForwardResult) -> Result<Applied, IngestError> {
        self.append(Entry::ForwardDone(Box::new(result))).await
    }

    /// [`Engine::finish_forward`] in the background, retried (backing off to 10 s)
    /// while the WAL cannot take it: the answer was already passed to the provider.
    pub fn finish_forward_soon(self: &Arc<Self>, result: ForwardResult) {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(200);
            while let Err(e) = engine.finish_forward(result.clone()).await {
                if matches!(e, IngestError::ReadOnly) {
                    return;
                }
                tracing::warn!(id = %result.id, error = %e, "could not record the app's answer yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        });
    }

    async fn append(&self, entry: Entry) -> Result<Applied, IngestError> {
        let wal = self.wal.as_ref().ok_or(IngestError::ReadOnly)?;
        // The answer to a forward completes work already durable (its start): it is
        // never refused for the budget, or its start would pin the WAL (and an open
        // after a crash with a full buffer could not record interrupted forwards).
        // Saved-query runs and alert notifications are few and small, and an alert
        // refused while ingest fills the buffer would be sent unrecorded (and sent
        // again after a restart): they are not refused either.
        let budgeted = !matches!(
            entry,
            Entry::ForwardDone(_) | Entry::QueryRun(_) | Entry::Alert(_)
        );
        let pending = Pending::new(entry);
        // Reserved before the record is queued and held until it is applied (then
        // the buffer counts it): concurrent appends cannot all pass the check before
        // any of them lands in the buffer.
        let _reserved = if budgeted {
            Some(self.reserve(pending.payload.len())?)
        } else {
            None
        };
        wal.append(pending)
            .await
            .map(|c| c.applied)
            .map_err(IngestError::Wal)
    }

    /// Takes `size` bytes of the buffer's budget (4 × `[buffer] max_bytes`), or says
    /// why not. A record alone in an empty buffer always fits.
    fn reserve(&self, size: usize) -> Result<Reservation<'_>, IngestError> {
        let limit = self.settings.flush_bytes.saturating_mul(4);
        let reserved = self.reserved.fetch_add(size, Ordering::AcqRel) + size;
        let reservation = Reservation {
            counter: &self.reserved,
            size,
        };
        let bytes = self.catalog.buffered_bytes().saturating_add(reserved);
        if bytes > limit && bytes > size {
            drop(reservation);
            let reason = self
                .flush_status
                .lock()
                .last_error
                .clone()
                .unwrap_or_else(|| "flushing is behind".into());
            return Err(IngestError::Overloaded {
                bytes,
                limit,
                reason,
            });
        }
        Ok(reservation)
    }

    /// Problems that make the server not ready (WAL failing, flushes failing).
    pub fn readiness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(why) = self.wal.as_ref().and_then(|w| w.status().fatal()) {
            problems.push(format!(
                "write-ahead log stopped after an internal error ({why}); acknowledged records are safe; restart hookscope"
            ));
        }
        if let Some(wal) = &self.wal
            && wal.status().is_degraded()
        {
            problems.push(format!(
                "write-ahead log is failing: {}",
                wal.status().last_error().unwrap_or_default()
            ));
        }
        let status = self.flush_status.lock();
        if let (Some(err), Some(since)) = (&status.last_error, status.failing_since)
            && since.elapsed() > Duration::from_secs(30)
        {
            problems.push(format!(
                "flushes to Parquet have failed for {}s: {err}",
                since.elapsed().as_secs()
            ));
        }
        problems
    }

    /// The WAL's status, in `Serve` mode.
    pub fn wal_status(&self) -> Option<&Arc<wal::WalStatus>> {
        self.wal.as_ref().map(|w| w.status())
    }

    /// Flushes what is buffered and stops the WAL writer. After this, ingest fails.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        // Answers of forwards are recorded just after they are passed back: give the
        // last ones a moment, so they are not left for the next start as interrupted.
        let waited = Instant::now();
        while self.open_forwards.oldest().is_some() && waited.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let result = self.flush().await;
        if let Some(wal) = &self.wal {
            wal.shutdown().await;
        }
        // Replaced files whose grace is over; the others stay listed in the manifest
        // for the next start (another process may still read them).
        self.delete_retired().await;
        result.map(|_| ())
    }
}
