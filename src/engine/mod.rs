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

pub mod dedup;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, TimestampMicrosecondType};
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
    /// Share of one core the background flusher's encoding may use (0-1].
    pub flush_cpu_share: f64,
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
            flush_cpu_share: f64::from(c.parquet.flush_cpu_percent) / 100.0,
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

/// What one flush did.
#[derive(Debug, Default, Clone)]
pub struct FlushReport {
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    pub wal_through: u64,
    /// Time spent encoding Parquet (on the low-priority flush thread).
    pub encode: Duration,
    /// Time spent writing, syncing and committing the files.
    pub write: Duration,
}

#[derive(Debug, Default)]
struct FlushStatus {
    last_error: Option<String>,
    failing_since: Option<Instant>,
    flushes: u64,
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
    _lock: Option<File>,
}

/// The state of the applier at a WAL cut: the flush that made the cut writes the rows
/// up to `through` and may release the WAL only below `oldest_open_forward`.
#[derive(Debug, Clone)]
struct CutState {
    through: u64,
    /// The dedup index's changes up to the cut (committed with the rows).
    dedup: Delta,
    /// The oldest forward start still waiting for its answer at the cut. Its row is
    /// written with its answer, after the cut, so this flush does not commit it: the
    /// segment holding the start must outlive this flush even if the answer arrives
    /// while it runs.
    oldest_open_forward: Option<u64>,
}

/// Dedup changes taken for a flush: back to the pending ones when dropped, unless the
/// flush committed them.
struct PendingDelta<'a> {
    slot: &'a Mutex<Delta>,
    delta: Delta,
    committed: bool,
}

impl Drop for PendingDelta<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let mut slot = self.slot.lock();
        let later = std::mem::take(&mut *slot);
        let mut delta = std::mem::take(&mut self.delta);
        delta.append(later);
        *slot = delta;
    }
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

/// Forwarded deliveries whose start is durable and whose answer is not yet.
#[derive(Debug, Default)]
pub struct OpenForwards {
    /// WAL sequence of each open start → delivery id.
    open: Mutex<std::collections::BTreeMap<u64, String>>,
}

impl OpenForwards {
    /// The oldest open start's sequence number: WAL segments from it on must stay.
    fn oldest(&self) -> Option<u64> {
        self.open.lock().keys().next().copied()
    }
    fn ids(&self) -> Vec<String> {
        self.open.lock().values().cloned().collect()
    }
}

/// Hands durable records to the dedup index and the buffer, in WAL order.
struct LakeApplier {
    catalog: Arc<Catalog>,
    dedup: DedupIndex,
    /// Records at or below this are in committed files already.
    skip_through: u64,
    /// Started forwards by delivery id, with the start's sequence number.
    forwards: std::collections::HashMap<String, (u64, Box<Delivery>)>,
    open: Arc<OpenForwards>,
    last_cut: Arc<Mutex<Option<CutState>>>,
}

impl LakeApplier {
    fn apply_entry(&mut self, buf: &mut Buffer, seq: u64, entry: &Entry) -> Applied {
        match entry {
            Entry::Delivery(d) => self.push_delivery(buf, seq, d),
            Entry::Outcome(o) => {
                buf.push_outcome(seq, o);
                Applied::REPORT
            }
            Entry::Outcomes(list) => {
                for o in list {
                    buf.push_outcome(seq, o);
                }
                Applied::REPORT
            }
            Entry::ForwardStart(d) => {
                self.forwards.insert(d.id.clone(), (seq, d.clone()));
                self.open.open.lock().insert(seq, d.id.clone());
                Applied {
                    attempt: 0,
                    duplicate: false,
                }
            }
            Entry::ForwardDone(r) => {
                let Some((start, mut d)) = self.forwards.remove(&r.id) else {
                    tracing::warn!(id = %r.id, "forward answer without a recorded start; ignored");
                    return Applied {
                        attempt: 0,
                        duplicate: false,
                    };
                };
                self.open.open.lock().remove(&start);
                d.status_code = r.status_code;
                d.upstream_status = r.upstream_status;
                d.upstream_latency_ms = r.upstream_latency_ms;
                d.upstream_error = r.upstream_error.clone();
                let applied = self.push_delivery(buf, seq, &d);
                buf.push_outcome(seq, &forward_outcome(&d, r));
                applied
            }
        }
    }

    fn push_delivery(&mut self, buf: &mut Buffer, seq: u64, d: &Delivery) -> Applied {
        let seen = self
            .dedup
            .observe(&d.source, &d.dedup_key, d.received_at_us);
        let attempt = d
            .provider_attempt
            .unwrap_or(i32::try_from(seen.arrivals).unwrap_or(i32::MAX));
        let derived = Derived {
            attempt,
            is_duplicate: attempt > 1,
            retry_gap_ms: seen.gap_ms,
        };
        buf.push_delivery(seq, d, derived);
        Applied {
            attempt,
            duplicate: attempt > 1,
        }
    }
}

/// The outcome hookscope records itself for a forwarded delivery: 2xx is success.
fn forward_outcome(d: &Delivery, r: &ForwardResult) -> Outcome {
    let success = r.upstream_status.is_some_and(|s| (200..300).contains(&s));
    let (error_type, error_message) = match (&r.upstream_error, r.upstream_status) {
        (Some(e), _) => (
            Some(e.split(':').next().unwrap_or(e).trim().to_string()),
            Some(e.clone()),
        ),
        (None, Some(s)) if !success => (
            Some(format!("http_{s}")),
            Some(format!("the app answered {s}")),
        ),
        _ => (None, None),
    };
    Outcome {
        id: d.id.clone(),
        reported_at_us: r.completed_at_us,
        source: d.source.clone(),
        delivery_id: Some(d.id.clone()),
        event_id: d.event_id.clone(),
        status: if success { "success" } else { "failure" }.to_string(),
        processing_time_ms: r.upstream_latency_ms,
        error_type,
        error_message,
        records_processed: None,
        attributes: serde_json::json!({ "forwarded": true, "upstream_status": r.upstream_status })
            .to_string(),
    }
}

impl Applier for LakeApplier {
    type Output = Applied;

    fn apply(&mut self, records: &[(u64, Entry)]) -> Vec<Applied> {
        let catalog = Arc::clone(&self.catalog);
        catalog.with_buffer(|buf| {
            records
                .iter()
                .map(|(seq, entry)| self.apply_entry(buf, *seq, entry))
                .collect()
        })
    }

    fn replay(&mut self, seq: u64, entry: Entry) {
        let catalog = Arc::clone(&self.catalog);
        match &entry {
            // A start is needed even when committed files cover its sequence: its row
            // is written only with its answer, which may come later in the WAL.
            Entry::ForwardStart(_) => {
                catalog.with_buffer(|buf| self.apply_entry(buf, seq, &entry));
            }
            // An answer already committed closes its start without adding a row.
            Entry::ForwardDone(r) if seq <= self.skip_through => {
                if let Some((start, _)) = self.forwards.remove(&r.id) {
                    self.open.open.lock().remove(&start);
                }
            }
            _ if seq <= self.skip_through => {}
            _ => {
                catalog.with_buffer(|buf| self.apply_entry(buf, seq, &entry));
            }
        }
    }

    fn cut(&mut self, through: u64) {
        self.catalog.with_buffer(|buf| buf.cut(through));
        let mut cut = CutState {
            through,
            dedup: self.dedup.take_delta(),
            oldest_open_forward: self.open.oldest(),
        };
        // A cut nobody took (its flush was abandoned after the rotation) still holds
        // changes the persisted index needs, and a forward its flush never released:
        // fold them into this one.
        let mut slot = self.last_cut.lock();
        if let Some(mut earlier) = slot.take() {
            earlier.dedup.append(std::mem::take(&mut cut.dedup));
            cut.dedup = earlier.dedup;
            cut.oldest_open_forward = match (earlier.oldest_open_forward, cut.oldest_open_forward) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        *slot = Some(cut);
    }
}

fn lock_dir(dir: &Path) -> Result<File, EngineError> {
    let path = dir.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| EngineError::Lock {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a valid, owned file descriptor; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            EngineError::Locked(dir.to_path_buf())
        } else {
            EngineError::Lock { path, source: err }
        });
    }
    Ok(file)
}

impl Engine {
    /// Opens the data directory: loads the committed manifest and the dedup index,
    /// replays the WAL into the buffer, and (in `Serve` mode) starts the WAL writer.
    /// When this returns, every acknowledged record is queryable.
    ///
    /// Read-only, the directory may belong to a running server, which can commit a
    /// flush and release WAL segments between this reading the manifest and the WAL:
    /// those rows are then in files of a newer manifest. So a read-only open reads
    /// again until the manifest did not change while it read.
    pub async fn open(settings: EngineSettings, mode: Mode) -> Result<Arc<Engine>, EngineError> {
        if mode == Mode::Serve {
            return Self::open_once(settings, mode).await;
        }
        const ATTEMPTS: usize = 10;
        let lake = Lake::local(&settings.data_dir)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = Manifest::load(&lake).await?.version;
            let opened = Self::open_once(settings.clone(), mode).await;
            let after = Manifest::load(&lake).await?.version;
            let read = match &opened {
                Ok(engine) => engine.catalog.manifest().version,
                Err(_) => before,
            };
            if read == after {
                return opened;
            }
            if attempt == ATTEMPTS {
                return Err(EngineError::Task(format!(
                    "the lake in {} changed {ATTEMPTS} times while it was read (a server is flushing to it); try again",
                    settings.data_dir.display()
                )));
            }
            tracing::debug!(
                attempt,
                read,
                after,
                "the lake changed while it was read; reading again"
            );
        }
    }

    async fn open_once(settings: EngineSettings, mode: Mode) -> Result<Arc<Engine>, EngineError> {
        let lake = Lake::local(&settings.data_dir)?;
        let root = lake
            .local_root()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| settings.data_dir.clone());
        let lock = match mode {
            Mode::Serve => Some(lock_dir(&root)?),
            Mode::ReadOnly => None,
        };
        let manifest = Manifest::load(&lake).await?;
        if mode == Mode::Serve {
            remove_uncommitted(&lake, &manifest).await;
        }
        let skip_through = manifest.wal_through;
        let catalog = Catalog::new(lake, manifest);
        let query = QueryEngine::new(&catalog, settings.query.clone(), mode == Mode::Serve)?;
        let background = Arc::new(
            Worker::start("hookscope-flush")
                .map_err(|e| EngineError::Task(format!("cannot start the flush thread: {e}")))?,
        );
        let (dedup, dedup_rebase) = open_dedup(&catalog, &settings, &background).await?;
        let open_forwards = Arc::new(OpenForwards::default());
        let last_cut = Arc::new(Mutex::new(None));
        let mut applier = LakeApplier {
            catalog: Arc::clone(&catalog),
            dedup,
            skip_through,
            forwards: std::collections::HashMap::new(),
            open: Arc::clone(&open_forwards),
            last_cut: Arc::clone(&last_cut),
        };
        let wal_dir = root.join("wal");
        let (wal, replay) = match mode {
            Mode::Serve => {
                let config = WalConfig {
                    dir: wal_dir,
                    sync: settings.wal_sync,
                    segment_max_bytes: settings.wal_segment_max_bytes,
                    commit_delay: settings.wal_commit_delay,
                };
                let (wal, summary) =
                    tokio::task::spawn_blocking(move || Wal::open(config, skip_through, applier))
                        .await
                        .map_err(|e| EngineError::Task(e.to_string()))??;
                (Some(wal), summary)
            }
            Mode::ReadOnly => {
                #[cfg(test)]
                tests::pause_before_the_wal(&settings.data_dir).await;
                let summary = tokio::task::spawn_blocking(move || {
                    wal::read_only_replay(&wal_dir, |seq, entry| applier.replay(seq, entry))
                })
                .await
                .map_err(|e| EngineError::Task(e.to_string()))??;
                (None, summary)
            }
        };
        let engine = Arc::new(Engine {
            settings,
            catalog,
            query,
            wal,
            flush_lock: tokio::sync::Mutex::new(()),
            flush_status: Mutex::new(FlushStatus::default()),
            background,
            replay,
            open_forwards,
            last_cut,
            reserved: AtomicUsize::new(0),
            dedup_pending: Mutex::new(Delta::default()),
            file_seq_floor: AtomicU64::new(0),
            dedup_rebase: AtomicBool::new(dedup_rebase),
            _lock: lock,
        });
        engine.resolve_interrupted_forwards().await?;
        Ok(engine)
    }

    /// Forwards started before a crash never got their answer recorded: record that
    /// they were interrupted, so their rows appear (once) and their WAL can go.
    async fn resolve_interrupted_forwards(&self) -> Result<(), EngineError> {
        let ids = self.open_forwards.ids();
        if ids.is_empty() || self.wal.is_none() {
            return Ok(());
        }
        tracing::warn!(
            count = ids.len(),
            "recording forwards interrupted by a restart"
        );
        let now = chrono::Utc::now().timestamp_micros();
        for id in ids {
            let result = ForwardResult {
                id,
                completed_at_us: now,
                status_code: 0,
                upstream_status: None,
                upstream_latency_ms: None,
                upstream_error: Some(
                    "interrupted: hookscope stopped before the app answered".into(),
                ),
            };
            self.finish_forward(result).await.map_err(|e| {
                EngineError::Task(format!("cannot record an interrupted forward: {e}"))
            })?;
        }
        Ok(())
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

    /// Records the app's answer to a forwarded delivery (and the outcome row).
    /// **Returns `Ok` once durable and visible.**
    pub async fn finish_forward(&self, result: ForwardResult) -> Result<Applied, IngestError> {
        self.append(Entry::ForwardDone(Box::new(result))).await
    }

    async fn append(&self, entry: Entry) -> Result<Applied, IngestError> {
        let wal = self.wal.as_ref().ok_or(IngestError::ReadOnly)?;
        // The answer to a forward completes work already durable (its start): it is
        // never refused for the budget, or its start would pin the WAL (and an open
        // after a crash with a full buffer could not record interrupted forwards).
        let budgeted = !matches!(entry, Entry::ForwardDone(_));
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

    /// True when the buffer has reached a flush threshold.
    pub fn flush_due(&self) -> bool {
        let (rows, bytes, oldest) = self.catalog.buffer_stats();
        rows >= self.settings.flush_rows
            || bytes >= self.settings.flush_bytes
            || oldest.is_some_and(|t| t.elapsed() >= self.settings.flush_interval)
    }

    /// Writes every buffered row to committed Parquet files (see the module docs for
    /// the order of steps). A no-op when nothing is buffered or the engine is
    /// read-only.
    pub async fn flush(&self) -> Result<FlushReport, EngineError> {
        self.flush_with(1.0).await
    }

    /// [`Engine::flush`], encoding with at most `cpu_share` of one core (see
    /// [`persist::Pacer`]); the background flusher uses `[parquet] flush_cpu_percent`.
    async fn flush_with(&self, cpu_share: f64) -> Result<FlushReport, EngineError> {
        let Some(wal) = &self.wal else {
            return Ok(FlushReport::default());
        };
        let _guard = self.flush_lock.lock().await;
        let started = Instant::now();
        let result = self.flush_locked(wal, started, cpu_share).await;
        let mut status = self.flush_status.lock();
        match &result {
            Ok(report) => {
                status.flushes += 1;
                if status.last_error.take().is_some() {
                    tracing::info!("flushing to Parquet works again");
                }
                status.failing_since = None;
                if report.files > 0 {
                    tracing::info!(
                        files = report.files,
                        rows = report.rows,
                        bytes = report.bytes,
                        ms = started.elapsed().as_millis() as u64,
                        encode_ms = report.encode.as_millis() as u64,
                        write_ms = report.write.as_millis() as u64,
                        "flushed buffer to Parquet"
                    );
                }
            }
            Err(e) => {
                if status.last_error.is_none() {
                    tracing::error!(error = %e, "flush to Parquet failed; rows stay in the WAL and buffer, retrying");
                }
                status.last_error = Some(e.to_string());
                status.failing_since.get_or_insert(started);
            }
        }
        result
    }

    async fn flush_locked(
        &self,
        wal: &Wal<Applied>,
        started: Instant,
        cpu_share: f64,
    ) -> Result<FlushReport, EngineError> {
        let cut = self.cut(wal).await?;
        self.write_cut(wal, cut, started, cpu_share).await
    }

    /// Closes the WAL segment and freezes the buffer at the same sequence number.
    async fn cut(&self, wal: &Wal<Applied>) -> Result<CutState, EngineError> {
        let through = wal.rotate().await?;
        let mut slot = self.last_cut.lock();
        match slot.take() {
            Some(cut) if cut.through == through => Ok(cut),
            other => {
                // Cannot happen: the applier records every cut before rotate answers.
                // Keep what is there for the next cut; this flush must not commit.
                *slot = other;
                Err(EngineError::Task(format!(
                    "no applier state for the WAL cut at {through}; the flush is retried"
                )))
            }
        }
    }

    /// Writes the rows up to `cut` to Parquet, commits them with the dedup index's
    /// changes and releases the WAL.
    async fn write_cut(
        &self,
        wal: &Wal<Applied>,
        mut cut: CutState,
        started: Instant,
        cpu_share: f64,
    ) -> Result<FlushReport, EngineError> {
        // The dedup changes of every cut since the last commit go with this one; they
        // go back to the pending ones unless committed, even if this future is dropped.
        let mut pending = PendingDelta {
            slot: &self.dedup_pending,
            delta: std::mem::take(&mut *self.dedup_pending.lock()),
            committed: false,
        };
        pending.delta.append(std::mem::take(&mut cut.dedup));
        let delta = std::mem::take(&mut pending.delta);
        let result = self
            .write_cut_with(
                wal,
                &cut,
                &delta,
                &mut pending.committed,
                started,
                cpu_share,
            )
            .await;
        pending.delta = delta;
        result
    }

    async fn write_cut_with(
        &self,
        wal: &Wal<Applied>,
        cut: &CutState,
        delta: &Delta,
        committed: &mut bool,
        started: Instant,
        cpu_share: f64,
    ) -> Result<FlushReport, EngineError> {
        let through = cut.through;
        if self.catalog.with_buffer(|b| b.damaged()) {
            return Err(EngineError::Task(
                "the buffer lost rows to an internal error; nothing is flushed past them (the WAL keeps them): restart hookscope".into(),
            ));
        }
        let manifest = self.catalog.manifest();
        if through <= manifest.wal_through {
            return Ok(FlushReport {
                wal_through: manifest.wal_through,
                ..Default::default()
            });
        }
        let lake = self.catalog.lake().clone();
        let mut next_file_seq = manifest
            .next_file_seq
            .max(self.file_seq_floor.load(Ordering::Acquire));
        let mut added = Vec::new();
        let mut report = FlushReport {
            wal_through: through,
            ..Default::default()
        };
        for table in [Table::Deliveries, Table::Outcomes] {
            let batches = self.catalog.buffered_through(table, through);
            if batches.is_empty() {
                continue;
            }
            let level = self.settings.zstd_level;
            let t = Instant::now();
            let files = self
                .background
                .run(move || {
                    persist::encode_paced(
                        table,
                        &batches,
                        level,
                        &mut persist::Pacer::new(cpu_share),
                    )
                })
                .await??;
            report.encode += t.elapsed();
            let t = Instant::now();
            for f in files {
                let path = format!(
                    "{}/{}/{}-{:012}.parquet",
                    table.name(),
                    f.partition,
                    self.settings.node_id,
                    next_file_seq
                );
                next_file_seq += 1;
                let size = f.bytes.len() as u64;
                if let Err(e) = lake.put_durable(&path, f.bytes).await {
                    discard(
                        &lake,
                        added
                            .iter()
                            .map(|(_, e): &(Table, FileEntry)| e.path.as_str())
                            .chain([path.as_str()]),
                    )
                    .await;
                    return Err(e.into());
                }
                crate::sys::failpoint::crash("after_parquet_write");
                report.files += 1;
                report.rows += f.rows;
                report.bytes += size;
                added.push((
                    table,
                    FileEntry {
                        path,
                        rows: f.rows,
                        bytes: size,
                        min_time_us: f.min_time_us,
                        max_time_us: f.max_time_us,
                    },
                ));
            }
            report.write += t.elapsed();
        }
        let mut paths: Vec<String> = added.iter().map(|(_, e)| e.path.clone()).collect();
        let rebase = self.dedup_rebase.load(Ordering::Acquire);
        let persisted = crate::lake::dedup_state::persist(
            &lake,
            manifest.dedup.as_ref(),
            delta,
            rebase,
            &self.background,
        )
        .await;
        let dedup = match persisted {
            Ok(d) => d,
            Err(e) => {
                discard(&lake, paths.iter().map(String::as_str)).await;
                return Err(e.into());
            }
        };
        paths.extend(dedup.written.iter().cloned());
        let mut next = manifest.with_files(added, through, next_file_seq);
        next.dedup = Some(dedup.state);
        if let Err(e) = next.commit(&lake).await {
            // A version renamed into place may be the committed state after a crash:
            // its files stay (the next start removes them if it is not), and no later
            // flush may write (or discard) a file under their names.
            if Manifest::keeps_files(&e) {
                self.file_seq_floor
                    .fetch_max(next.next_file_seq, Ordering::AcqRel);
            } else {
                discard(&lake, paths.iter().map(String::as_str)).await;
            }
            return Err(e.into());
        }
        *committed = true;
        self.dedup_rebase.store(false, Ordering::Release);
        crate::sys::failpoint::crash("after_manifest_commit");
        // Dedup files the new state replaced (by a checkpoint): no manifest names them.
        for path in &dedup.replaced {
            if let Err(e) = lake.delete(path).await {
                tracing::warn!(path, error = %e, "could not delete a replaced dedup state file");
            }
        }
        let flushed = self.catalog.publish(next, started);
        // Free the flushed rows, and return them and the encoder's memory to the OS,
        // on the background thread: not under a lock or on a request worker.
        let _ = self
            .background
            .run(move || {
                drop(flushed);
                crate::sys::return_free_memory();
            })
            .await;
        // Segments holding a forward that was still waiting for its answer at the
        // cut must stay: its row is not in this flush, even if it was answered since.
        let releasable = match cut.oldest_open_forward {
            Some(oldest) => through.min(oldest.saturating_sub(1)),
            None => through,
        };
        wal.release(releasable).await?;
        crate::sys::failpoint::crash("after_wal_release");
        Ok(report)
    }

    /// Runs flushes whenever a threshold is reached, until `stop` fires.
    pub fn spawn_flusher(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                if !engine.flush_due() {
                    continue;
                }
                backoff = match engine.flush_with(engine.settings.flush_cpu_share).await {
                    Ok(_) => Duration::from_millis(100),
                    Err(_) => (backoff * 2).min(Duration::from_secs(10)),
                };
            }
        })
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
        result.map(|_| ())
    }
}

async fn discard<'a>(lake: &Lake, paths: impl Iterator<Item = &'a str>) {
    for p in paths {
        if let Err(e) = lake.delete(p).await {
            tracing::warn!(path = p, error = %e, "could not remove an uncommitted Parquet file");
        }
    }
}

/// Deletes files under the table folders that no committed manifest names: files of a
/// flush that crashed before its commit, and staging files of interrupted writes.
async fn remove_uncommitted(lake: &Lake, manifest: &Manifest) {
    // Staging files of writes a crash interrupted (object_store's local backend
    // writes `<name>#<n>` and renames; it does not list them, so they are looked for
    // on disk).
    let folders: Vec<&str> = Table::ALL
        .iter()
        .map(|t| t.name())
        .chain([crate::lake::dedup_state::DIR])
        .collect();
    let mut with_manifests = folders.clone();
    with_manifests.push(crate::lake::manifest::DIR);
    for path in lake.remove_staging_files(&with_manifests) {
        tracing::info!(path = %path.display(), "removed a staging file left by an interrupted write");
    }
    let committed: std::collections::HashSet<&str> =
        manifest.all_paths().chain(manifest.dedup_paths()).collect();
    for folder in folders {
        let listed = match lake.list(folder).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(folder, error = %e, "could not list files for cleanup");
                continue;
            }
        };
        for file in listed {
            if !committed.contains(file.path.as_str()) {
                tracing::info!(path = %file.path, "removing a file no committed manifest names (interrupted flush)");
                if let Err(e) = lake.delete(&file.path).await {
                    tracing::warn!(path = %file.path, error = %e, "could not remove an uncommitted file");
                }
            }
        }
    }
}

/// The dedup index as of the committed manifest: its persisted state, or (a lake
/// written before the state was persisted, or whose state cannot be read) one rebuilt
/// from the committed deliveries.
///
/// The flag says the index was rebuilt: its journal then holds its whole queue, and
/// the first commit must write it as a checkpoint replacing any old state.
async fn open_dedup(
    catalog: &Arc<Catalog>,
    settings: &EngineSettings,
    worker: &Worker,
) -> Result<(DedupIndex, bool), EngineError> {
    let window_us = i64::try_from(settings.dedup_window.as_micros()).unwrap_or(i64::MAX);
    let max_keys = settings.dedup_max_keys;
    let manifest = catalog.manifest();
    match crate::lake::dedup_state::restore(catalog.lake(), &manifest, window_us, max_keys, worker)
        .await
    {
        Ok(Some(index)) => return Ok((index, false)),
        Ok(None) if manifest.files(Table::Deliveries).is_empty() => {
            return Ok((DedupIndex::new(window_us, max_keys), false));
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the persisted dedup index; rebuilding it from the lake (attempt numbers of keys seen before this start may restart at 1); the next flush replaces the old state");
        }
    }
    Ok((rebuild_dedup(catalog, window_us, max_keys).await?, true))
}

/// Rebuilds the dedup index from the committed deliveries of the window, read in the
/// order they were flushed: an approximation of the live index (a lake written before
/// the index was persisted has nothing better). Reads three columns, streams, and
/// runs under limits of its own, not the user query limits.
async fn rebuild_dedup(
    catalog: &Arc<Catalog>,
    window_us: i64,
    max_keys: usize,
) -> Result<DedupIndex, EngineError> {
    let started = Instant::now();
    let mut index = DedupIndex::new(window_us, max_keys);
    let cutoff_us = chrono::Utc::now()
        .timestamp_micros()
        .saturating_sub(window_us);
    let cutoff = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(cutoff_us)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let query = QueryEngine::for_maintenance(catalog)?;
    let sql = format!(
        "SELECT source, dedup_key, received_at FROM deliveries WHERE received_at >= '{cutoff}'"
    );
    let mut stream = query.stream(&sql).await?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let text = |c: &arrow::array::ArrayRef| {
            arrow::compute::cast(c, &DataType::Utf8)
                .map_err(|e| QueryError::Internal(e.to_string()))
        };
        let sources = text(batch.column(0))?;
        let sources = sources.as_string::<i32>();
        let keys = text(batch.column(1))?;
        let keys = keys.as_string::<i32>();
        let times = batch.column(2).as_primitive::<TimestampMicrosecondType>();
        for i in 0..batch.num_rows() {
            if keys.is_null(i) || sources.is_null(i) || times.is_null(i) {
                continue;
            }
            index.observe(sources.value(i), keys.value(i), times.value(i));
            rows += 1;
        }
    }
    tracing::info!(
        rows,
        keys = index.len(),
        ms = started.elapsed().as_millis() as u64,
        "rebuilt the dedup index from the lake (it is persisted from the next flush on)"
    );
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::sample_delivery;

    pub(crate) fn settings(dir: &Path) -> EngineSettings {
        EngineSettings::from_config(&Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        })
    }

    fn delivery(id: &str) -> Delivery {
        let mut d = sample_delivery();
        d.id = id.to_string();
        d.provider_attempt = None;
        d
    }

    /// How many rows of `table` have `id`, as a fresh open of the directory (the
    /// next start after a crash, read-only) sees them.
    async fn rows_after_a_crash(dir: &Path, table: &str, id: &str) -> i64 {
        let engine = Engine::open(settings(dir), Mode::ReadOnly).await.unwrap();
        let (_, batches) = engine
            .query()
            .collect(&format!("SELECT count(*) FROM {table} WHERE id = '{id}'"))
            .await
            .unwrap();
        batches[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
    }

    /// Where a read-only open of a directory pauses between reading the manifest and
    /// the WAL: (directory, "reached" signal, "go on" signal).
    type Pause = (
        PathBuf,
        tokio::sync::oneshot::Sender<()>,
        tokio::sync::oneshot::Receiver<()>,
    );
    static PAUSE: Mutex<Option<Pause>> = Mutex::new(None);

    pub(super) async fn pause_before_the_wal(dir: &Path) {
        let pause = {
            let mut slot = PAUSE.lock();
            match slot.take() {
                Some((d, reached, go_on)) if d == dir => Some((reached, go_on)),
                other => {
                    *slot = other;
                    None
                }
            }
        };
        if let Some((reached, go_on)) = pause {
            let _ = reached.send(());
            let _ = go_on.await;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_offline_read_sees_every_row_of_a_lake_that_flushes_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let server = Engine::open(settings(dir.path()), Mode::Serve)
            .await
            .unwrap();
        for i in 0..20 {
            server.ingest(delivery(&format!("live-{i}"))).await.unwrap();
        }
        let (reached_tx, reached) = tokio::sync::oneshot::channel();
        let (go_on, go_on_rx) = tokio::sync::oneshot::channel();
        *PAUSE.lock() = Some((dir.path().to_path_buf(), reached_tx, go_on_rx));
        let path = dir.path().to_path_buf();
        let reader =
            tokio::spawn(async move { Engine::open(settings(&path), Mode::ReadOnly).await });
        // The reader has the manifest (no files yet); the server flushes and releases
        // the WAL segments before the reader reads them.
        reached.await.unwrap();
        let flushed = server.flush().await.unwrap();
        assert_eq!(flushed.rows, 20);
        go_on.send(()).unwrap();
        let reader = reader.await.unwrap().unwrap();
        let (_, batches) = reader
            .query()
            .collect("SELECT count(*) FROM deliveries")
            .await
            .unwrap();
        let n = batches[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0);
        assert_eq!(n, 20, "the offline read missed rows");
    }

    impl Engine {
        /// Stops the WAL without a flush, as a crash would leave the directory.
        async fn stop_without_flush(&self) {
            if let Some(wal) = &self.wal {
                wal.shutdown().await;
            }
        }
    }

    /// (id, attempt as answered) for `arrivals` ingested one by one; with `chaos`, the
    /// engine flushes and restarts (without a flush) at random points.
    async fn ingest_with_chaos(
        dir: &Path,
        settings: &EngineSettings,
        arrivals: &[(String, String, i64)],
        mut chaos: Option<&mut dyn FnMut() -> u64>,
    ) -> Vec<(String, i32)> {
        let mut engine = Engine::open(settings.clone(), Mode::Serve).await.unwrap();
        let mut answered = Vec::new();
        for (i, (source, key, at)) in arrivals.iter().enumerate() {
            let mut d = delivery(&format!("d{i:04}"));
            d.source = source.clone();
            d.dedup_key = key.clone();
            d.received_at_us = *at;
            answered.push((d.id.clone(), engine.ingest(d).await.unwrap().attempt));
            if let Some(roll) = chaos.as_mut() {
                match roll() % 12 {
                    0 | 1 => {
                        engine.flush().await.unwrap();
                    }
                    2 => {
                        engine.stop_without_flush().await;
                        drop(engine);
                        engine = Engine::open(settings.clone(), Mode::Serve).await.unwrap();
                    }
                    _ => {}
                }
            }
        }
        engine.shutdown().await.unwrap();
        drop(engine);
        let _ = dir;
        answered
    }

    #[tokio::test]
    async fn attempts_after_restarts_are_exactly_the_live_ones() {
        for seed in 1..=10u64 {
            let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            // A window of 10 s and room for 7 arrivals: keys expire and are trimmed.
            let mut at = 1_732_300_000_000_000i64;
            let arrivals: Vec<(String, String, i64)> = (0..120)
                .map(|_| {
                    at += (next() % 3_000_000) as i64;
                    let source = if next() % 4 == 0 { "b" } else { "a" };
                    (source.to_string(), format!("k{}", next() % 9), at)
                })
                .collect();
            let configure = |dir: &Path| {
                let mut s = settings(dir);
                s.dedup_window = Duration::from_secs(10);
                s.dedup_max_keys = 7;
                s
            };
            let live_dir = tempfile::tempdir().unwrap();
            let live = ingest_with_chaos(
                live_dir.path(),
                &configure(live_dir.path()),
                &arrivals,
                None,
            )
            .await;
            let dir = tempfile::tempdir().unwrap();
            let settings = configure(dir.path());
            let restarted =
                ingest_with_chaos(dir.path(), &settings, &arrivals, Some(&mut next)).await;
            assert_eq!(
                restarted, live,
                "seed {seed}: attempts differ after restarts"
            );
            // What is stored says the same.
            let engine = Engine::open(settings, Mode::ReadOnly).await.unwrap();
            let (_, batches) = engine
                .query()
                .collect("SELECT id, attempt FROM deliveries ORDER BY id")
                .await
                .unwrap();
            let stored: Vec<(String, i32)> = batches
                .iter()
                .flat_map(|b| {
                    let ids = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
                    let ids = ids.as_string::<i32>().clone();
                    let attempts = b
                        .column(1)
                        .as_primitive::<arrow::datatypes::Int32Type>()
                        .clone();
                    (0..b.num_rows())
                        .map(|i| (ids.value(i).to_string(), attempts.value(i)))
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(stored, live, "seed {seed}: stored attempts");
        }
    }

    /// Ingests a delivery of `key` (source "a") at `at_us`; its attempt.
    async fn arrive(engine: &Engine, id: &str, key: &str, at_us: i64) -> i32 {
        let mut d = delivery(id);
        d.source = "a".into();
        d.dedup_key = key.into();
        d.received_at_us = at_us;
        engine.ingest(d).await.unwrap().attempt
    }

    #[tokio::test]
    async fn unreadable_dedup_state_is_replaced_by_a_checkpoint_of_the_rebuilt_index() {
        let dir = tempfile::tempdir().unwrap();
        let at = chrono::Utc::now().timestamp_micros() - 60_000_000;
        let engine = Engine::open(settings(dir.path()), Mode::Serve)
            .await
            .unwrap();
        assert_eq!(arrive(&engine, "d1", "k", at).await, 1);
        engine.shutdown().await.unwrap();
        drop(engine);
        // The state file is lost (or damaged, or from a newer build).
        let manifest = Manifest::load(&Lake::local(dir.path()).unwrap())
            .await
            .unwrap();
        for f in manifest.dedup_paths() {
            std::fs::remove_file(dir.path().join(f)).unwrap();
        }
        let engine = Engine::open(settings(dir.path()), Mode::Serve)
            .await
            .unwrap();
        // Rebuilt from the lake, the count goes on.
        assert_eq!(arrive(&engine, "d2", "k", at + 1_000_000).await, 2);
        engine.flush().await.unwrap();
        let dedup = engine.catalog.manifest().dedup.clone().unwrap();
        assert_eq!(dedup.files.len(), 1, "{dedup:?}");
        assert!(dedup.files[0].ends_with(".checkpoint"), "{dedup:?}");
        engine.shutdown().await.unwrap();
        drop(engine);
        // The next start reads the new state, with no rebuild.
        let engine = Engine::open(settings(dir.path()), Mode::Serve)
            .await
            .unwrap();
        assert!(!engine.dedup_rebase.load(Ordering::Relaxed));
        assert_eq!(arrive(&engine, "d3", "k", at + 2_000_000).await, 3);
    }

    #[tokio::test]
    async fn a_cut_whose_flush_was_abandoned_still_reaches_the_persisted_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.dedup_max_keys = 1;
        let at = 1_732_300_000_000_000;
        let engine = Engine::open(s.clone(), Mode::Serve).await.unwrap();
        arrive(&engine, "d1", "a", at).await;
        // A flush rotates the WAL and is abandoned before it takes its cut.
        engine.wal.as_ref().unwrap().rotate().await.unwrap();
        // "b" pushes out "a" (one key only): the pop belongs to the next cut.
        assert_eq!(arrive(&engine, "d2", "b", at + 1).await, 1);
        engine.flush().await.unwrap();
        engine.stop_without_flush().await;
        drop(engine);
        let engine = Engine::open(s, Mode::Serve).await.unwrap();
        assert_eq!(
            arrive(&engine, "d3", "b", at + 2).await,
            2,
            "b was forgotten"
        );
    }

    #[tokio::test]
    async fn a_forwards_answer_is_recorded_even_when_the_buffer_is_over_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.flush_bytes = 64 << 10; // a budget of 256 KiB
        let engine = Engine::open(s, Mode::Serve).await.unwrap();
        engine.begin_forward(delivery("fwd")).await.unwrap();
        let mut big = delivery("big");
        big.body = crate::model::StoredBody::Text("x".repeat(300 << 10));
        engine.ingest(big).await.unwrap();
        assert!(matches!(
            engine.ingest(delivery("refused")).await,
            Err(IngestError::Overloaded { .. })
        ));
        let answer = ForwardResult {
            id: "fwd".into(),
            completed_at_us: 1,
            status_code: 200,
            upstream_status: Some(200),
            upstream_latency_ms: Some(3.0),
            upstream_error: None,
        };
        engine.finish_forward(answer).await.unwrap();
        assert!(engine.open_forwards.oldest().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_cannot_overrun_the_buffer_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings(dir.path());
        settings.flush_bytes = 1 << 20; // a budget of 4 MiB
        let engine = Engine::open(settings, Mode::Serve).await.unwrap();
        let body = crate::model::StoredBody::Text("x".repeat(256 << 10));
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let engine = Arc::clone(&engine);
                let mut d = delivery(&format!("big-{i}"));
                d.body = body.clone();
                tokio::spawn(async move { engine.ingest(d).await })
            })
            .collect();
        let mut accepted = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => accepted += 1,
                Err(IngestError::Overloaded { .. }) => {}
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        // 16 records of 256 KiB fill 4 MiB; their headers and fields take a little more.
        assert!(
            (8..=16).contains(&accepted),
            "{accepted} of 64 accepted into a 4 MiB budget"
        );
        assert_eq!(
            engine.reserved.load(Ordering::Relaxed),
            0,
            "reservations returned"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn scans_of_large_stored_rows_pass_the_batch_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.query.memory_limit = 256 << 20; // batches up to 64 MiB
        let engine = Engine::open(s, Mode::Serve).await.unwrap();
        let body = crate::model::StoredBody::Text("b".repeat(30 << 10));
        for i in 0..2400 {
            let mut d = delivery(&format!("wide-{i:04}"));
            d.body = body.clone();
            engine.ingest(d).await.unwrap();
        }
        engine.flush().await.unwrap();
        // 70 MiB of bodies in one Parquet batch: stored rows, not growth.
        for sql in [
            "SELECT sum(length(body)) FROM deliveries",
            "SELECT count(*) FROM deliveries WHERE body LIKE '%zzz%'",
            "SELECT id FROM deliveries ORDER BY id LIMIT 3",
        ] {
            engine.query().collect(sql).await.expect(sql);
        }
    }

    #[tokio::test]
    async fn a_forward_answered_while_a_flush_runs_survives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(settings(dir.path()), Mode::Serve)
            .await
            .unwrap();
        engine.begin_forward(delivery("fwd-1")).await.unwrap();
        let wal = engine.wal.as_ref().unwrap();
        // A flush cuts the WAL with the forward still open; the app answers while the
        // flush encodes; the flush commits and releases.
        let _flushing = engine.flush_lock.lock().await;
        let cut = engine.cut(wal).await.unwrap();
        let answer = ForwardResult {
            id: "fwd-1".into(),
            completed_at_us: 1_732_300_000_200_000,
            status_code: 200,
            upstream_status: Some(200),
            upstream_latency_ms: Some(80.0),
            upstream_error: None,
        };
        engine.finish_forward(answer).await.unwrap();
        engine
            .write_cut(wal, cut, Instant::now(), 1.0)
            .await
            .unwrap();
        // The process dies before the next flush.
        assert_eq!(
            rows_after_a_crash(dir.path(), "deliveries", "fwd-1").await,
            1
        );
        assert_eq!(rows_after_a_crash(dir.path(), "outcomes", "fwd-1").await, 1);
    }
}
