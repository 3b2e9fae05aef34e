//! Opening a data directory: the lock, the committed manifest, files no manifest
//! names (and staging files) removed, the dedup index loaded, the WAL replayed, and
//! forwards a crash interrupted recorded once.
//!
//! Invariant: when an open returns, every acknowledged record is queryable, exactly
//! once.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, TimestampMicrosecondType};
use parking_lot::Mutex;

use super::*;

pub(crate) fn lock_dir(dir: &Path) -> Result<File, EngineError> {
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
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(EngineError::Locked(dir.to_path_buf()));
        }
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(EngineError::Lock { path, source });
        }
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
    /// again until no manifest version was committed while it read (the newest listed
    /// version is the same before and after).
    pub async fn open(settings: EngineSettings, mode: Mode) -> Result<Arc<Engine>, EngineError> {
        if mode == Mode::Serve {
            return Self::open_once(settings, mode).await;
        }
        const ATTEMPTS: usize = 10;
        let lake = Lake::local(&settings.data_dir)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = Manifest::newest_listed(&lake).await?;
            let opened = Self::open_once(settings.clone(), mode).await;
            let after = Manifest::newest_listed(&lake).await?;
            let read = match &opened {
                Ok(engine) => Some(engine.catalog.manifest().version),
                Err(_) => after,
            };
            // The newest version was read: nothing was committed meanwhile. If the
            // open read an older one, the newest is torn (a crash) and a server may
            // write that number again: a full load tells whether it did.
            if before == after
                && (read == after.or(Some(0)) || read == Some(Manifest::load(&lake).await?.version))
            {
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
                ?before,
                ?after,
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
        // A read-only open needs the dedup index only for WAL records past the
        // committed manifest (it derives their attempt numbers): it loads it only then.
        let (dedup, dedup_rebase) = match mode {
            Mode::Serve => open_dedup(&catalog, &settings, &background).await?,
            Mode::ReadOnly => (empty_dedup(&settings), false),
        };
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
                let (summary, records) = tokio::task::spawn_blocking(move || {
                    let mut records = Vec::new();
                    wal::read_only_replay(&wal_dir, |seq, entry| {
                        if seq > skip_through
                            || matches!(entry, Entry::ForwardStart(_) | Entry::ForwardDone(_))
                        {
                            records.push((seq, entry));
                        }
                    })
                    .map(|summary| (summary, records))
                })
                .await
                .map_err(|e| EngineError::Task(e.to_string()))??;
                let adds_deliveries = records.iter().any(|(seq, entry)| {
                    *seq > skip_through
                        && matches!(entry, Entry::Delivery(_) | Entry::ForwardDone(_))
                });
                if adds_deliveries {
                    applier.dedup = open_dedup(&catalog, &settings, &background).await?.0;
                }
                tokio::task::spawn_blocking(move || {
                    for (seq, entry) in records {
                        applier.replay(seq, entry);
                    }
                })
                .await
                .map_err(|e| EngineError::Task(e.to_string()))?;
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
            version_floor: AtomicU64::new(0),
            compactor: std::sync::OnceLock::new(),
            deleted_retired: Mutex::new(Default::default()),
            compaction_totals: Default::default(),
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
        .chain([
            crate::lake::dedup_state::DIR,
            crate::query::catalog::rollup::DIR,
        ])
        .collect();
    let mut with_manifests = folders.clone();
    with_manifests.push(crate::lake::manifest::DIR);
    for path in lake.remove_staging_files(&with_manifests) {
        tracing::info!(path = %path.display(), "removed a staging file left by an interrupted write");
    }
    // Files a compaction replaced stay until their time (another process may read
    // them) and are deleted by `delete_retired`, not here.
    let committed: std::collections::HashSet<&str> = manifest
        .all_paths()
        .chain(manifest.dedup_paths())
        .chain(manifest.retired.iter().map(|r| r.path.as_str()))
        .collect();
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

fn empty_dedup(settings: &EngineSettings) -> DedupIndex {
    let window_us = i64::try_from(settings.dedup_window.as_micros()).unwrap_or(i64::MAX);
    DedupIndex::new(window_us, settings.dedup_max_keys)
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
            return Ok((empty_dedup(settings), false));
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
