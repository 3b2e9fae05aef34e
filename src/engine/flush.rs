//! Flushing: a WAL cut, the rows up to it encoded to Parquet, written durably, the
//! dedup index's changes written, a manifest committed, published to the catalog,
//! and the WAL released below the oldest forward open at the cut.
//!
//! Invariant: nothing is released before the manifest that covers it is durable, and
//! nothing a possibly committed manifest names is ever deleted or overwritten.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::*;

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
pub(super) struct FlushStatus {
    pub(super) last_error: Option<String>,
    pub(super) failing_since: Option<Instant>,
    pub(super) flushes: u64,
}

/// Dedup changes taken for a flush: back to the pending ones when dropped, unless the
/// flush committed them.
pub(super) struct PendingDelta<'a> {
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

impl Engine {
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
    pub(super) async fn cut(&self, wal: &Wal<Applied>) -> Result<CutState, EngineError> {
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
    pub(super) async fn write_cut(
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
        for table in Table::BUFFERED {
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
                let (entry, bytes) = f.into_entry(path);
                let written = added.iter().map(|(_, e): &(Table, FileEntry)| e);
                put_or_discard(&lake, &entry, bytes, written).await?;
                crate::sys::failpoint::crash("after_parquet_write");
                report.files += 1;
                report.rows += entry.rows;
                report.bytes += entry.bytes;
                added.push((table, entry));
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
        self.commit_manifest(&mut next, &paths).await?;
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
}

/// Writes `entry`'s file durably; if that fails, removes it and the files of the
/// same commit `written` before it (no manifest names them).
pub(super) async fn put_or_discard<'a>(
    lake: &Lake,
    entry: &FileEntry,
    bytes: bytes::Bytes,
    written: impl Iterator<Item = &'a FileEntry>,
) -> Result<(), EngineError> {
    if let Err(e) = lake.put_durable(&entry.path, bytes).await {
        let paths = written
            .map(|e| e.path.as_str())
            .chain([entry.path.as_str()]);
        discard(lake, paths).await;
        return Err(e.into());
    }
    Ok(())
}

pub(super) async fn discard<'a>(lake: &Lake, paths: impl Iterator<Item = &'a str>) {
    for p in paths {
        if let Err(e) = lake.delete(p).await {
            tracing::warn!(path = p, error = %e, "could not remove an uncommitted Parquet file");
        }
    }
}
