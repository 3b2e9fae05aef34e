//! Compaction, the engine's part: merges a partition's small files into one sorted
//! file and swaps them in one manifest commit, in the background and on
//! `hookscope compact`.
//!
//! Steps of one merge, and what a crash after each leaves:
//! 1. read the group's files and merge them (on the background thread, paced like a
//!    flush) — nothing written;
//! 2. write the merged file, durable — a file no manifest names: removed at the next
//!    start;
//! 3. under the flush lock, check that every input is still committed, and commit a
//!    manifest naming the merged file instead of them — the inputs are now files no
//!    manifest names (removed at the next start);
//! 4. publish the manifest to the catalog: new scans read the merged file;
//! 5. once every query that may have planned a scan of the inputs is past its
//!    deadline, delete the inputs. The manifest lists them as retired until then, so
//!    neither a restart nor another process removes them early.
//!
//! Invariants: at every instant exactly one committed version names each row (the
//! inputs, or the merged file), so queries see every row exactly once; a group that
//! cannot be merged is logged and skipped, never blocking the others.

use std::time::Duration;

use super::flush::{discard, put_or_discard};
use super::*;
use crate::lake::compact::{self as plan, CompactError, Group, Policy};

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompactReport {
    /// Files merged away …
    pub merged_files: u64,
    /// … into this many.
    pub written_files: u64,
    pub rows: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Groups skipped because another commit changed their files meanwhile.
    pub skipped: u64,
    /// Groups that could not be merged (logged; their files stay as they are).
    pub failed: u64,
    /// Replaced files deleted (by this call, of this or earlier compactions).
    pub deleted: u64,
}

/// What compaction did since the engine opened (for `/metrics`).
#[derive(Debug, Default)]
pub struct CompactionTotals {
    pub merged_files: AtomicU64,
    pub written_files: AtomicU64,
    pub bytes_before: AtomicU64,
    pub bytes_after: AtomicU64,
    pub failed: AtomicU64,
}

impl Engine {
    /// What compaction did since the engine opened.
    pub fn compaction_totals(&self) -> &CompactionTotals {
        &self.compaction_totals
    }

    /// The compaction thread (a low-priority worker of its own, beside the flush's).
    fn compactor(&self) -> Result<&Worker, EngineError> {
        if let Some(worker) = self.compactor.get() {
            return Ok(worker);
        }
        let worker = Worker::start("hookscope-compact")
            .map_err(|e| EngineError::Task(format!("cannot start the compaction thread: {e}")))?;
        Ok(self.compactor.get_or_init(|| worker))
    }

    /// When files replaced at `now_us` may be deleted.
    pub(super) fn retire_after(&self, now_us: i64) -> i64 {
        let grace_us = i64::try_from(self.retire_grace().as_micros()).unwrap_or(i64::MAX);
        now_us.saturating_add(grace_us)
    }

    /// How long replaced files stay: no query that planned a scan before the swap
    /// runs past its deadline.
    fn retire_grace(&self) -> Duration {
        self.settings.query.timeout + Duration::from_secs(1)
    }

    /// Merges what `policy` says is due, then deletes replaced files whose grace is
    /// over. Only a writing engine compacts. Stops between groups once `stop` is set.
    pub async fn compact(&self, policy: &Policy) -> Result<CompactReport, EngineError> {
        self.compact_until(policy, &AtomicBool::new(false)).await
    }

    async fn compact_until(
        &self,
        policy: &Policy,
        stop: &AtomicBool,
    ) -> Result<CompactReport, EngineError> {
        if self.wal.is_none() {
            return Err(EngineError::Task(
                "this engine was opened read-only; compaction needs the data directory's lock"
                    .into(),
            ));
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        let groups = plan::plan(&self.catalog.manifest(), now_us, policy);
        let mut report = CompactReport::default();
        for group in groups {
            if stop.load(Ordering::Acquire) {
                break;
            }
            if let Err(e) = self.compact_group(&group, &mut report).await {
                report.failed += 1;
                tracing::warn!(
                    table = group.table.name(),
                    partition = %group.partition,
                    files = group.files.len(),
                    error = %e,
                    "could not merge a partition's small files; they stay as they are"
                );
            }
            // A long pass deletes as it goes.
            report.deleted += self.delete_retired().await;
        }
        report.deleted += self.delete_retired().await;
        let totals = &self.compaction_totals;
        for (total, n) in [
            (&totals.merged_files, report.merged_files),
            (&totals.written_files, report.written_files),
            (&totals.bytes_before, report.bytes_before),
            (&totals.bytes_after, report.bytes_after),
            (&totals.failed, report.failed),
        ] {
            total.fetch_add(n, Ordering::Relaxed);
        }
        Ok(report)
    }

    async fn compact_group(
        &self,
        group: &Group,
        report: &mut CompactReport,
    ) -> Result<(), EngineError> {
        let lake = self.catalog.lake().clone();
        // 1. Read and merge.
        let mut inputs = Vec::with_capacity(group.files.len());
        for f in &group.files {
            match lake.get(&f.path).await? {
                Some(bytes) => inputs.push(bytes),
                // Gone: another commit replaced it since the plan (it is no longer
                // committed either, which step 3 would find).
                None => {
                    report.skipped += 1;
                    return Ok(());
                }
            }
        }
        let (level, share) = (
            self.settings.compact_zstd_level,
            self.settings.flush_cpu_share,
        );
        let owned = group.clone();
        let merged = self
            .compactor()?
            .run(move || {
                let merged = plan::merge(&owned, inputs, level, &mut persist::Pacer::new(share));
                // The decoded inputs are gone: give their memory back to the OS.
                crate::sys::return_free_memory();
                merged
            })
            .await?
            .map_err(|e: CompactError| EngineError::Task(e.to_string()))?;

        // 2. Write the merged files under names no flush uses.
        let mut added = Vec::new();
        for f in merged {
            let path = format!(
                "{}/{}/{}-c{}.parquet",
                group.table.name(),
                f.partition,
                self.settings.node_id,
                ulid::Ulid::new()
            );
            let (entry, bytes) = f.into_entry(path);
            put_or_discard(&lake, &entry, bytes, added.iter()).await?;
            added.push(entry);
        }
        crate::sys::failpoint::crash("compact_after_write");

        // 3. Swap them in, unless the inputs changed meanwhile.
        let written: Vec<String> = added.iter().map(|e| e.path.clone()).collect();
        let bytes_after: u64 = added.iter().map(|e| e.bytes).sum();
        let guard = self.flush_lock.lock().await;
        let manifest = self.catalog.manifest();
        if !manifest.holds(group.table, &group.files) {
            drop(guard);
            discard(&lake, written.iter().map(String::as_str)).await;
            report.skipped += 1;
            return Ok(());
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        let mut next = manifest.replacing(
            group.table,
            &group.files,
            added,
            now_us,
            self.retire_after(now_us),
        );
        if let Err(e) = self.commit_manifest(&mut next, &written).await {
            drop(guard);
            return Err(e.into());
        }
        crate::sys::failpoint::crash("compact_after_commit");
        // 4. New scans read the merged file from here on.
        self.catalog.replace_manifest(next);
        drop(guard);

        // 5. The inputs go once no query can still read them (`delete_retired`).
        report.merged_files += group.files.len() as u64;
        report.written_files += written.len() as u64;
        report.rows += group.rows();
        report.bytes_before += group.bytes();
        report.bytes_after += bytes_after;
        tracing::info!(
            table = group.table.name(),
            partition = %group.partition,
            files = group.files.len(),
            rows = group.rows(),
            bytes_before = group.bytes(),
            bytes_after,
            "merged small Parquet files"
        );
        Ok(())
    }

    /// Deletes the retired files whose time has come (the committed manifest lists
    /// them until a later commit forgets them). Returns how many it deleted. Only the
    /// writer deletes: a read-only engine never does.
    pub(crate) async fn delete_retired(&self) -> u64 {
        if self.wal.is_none() {
            return 0;
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        let manifest = self.catalog.manifest();
        let due: Vec<&str> = {
            let mut gone = self.deleted_retired.lock();
            // Forget what the manifest no longer lists.
            let listed: std::collections::HashSet<&str> =
                manifest.retired.iter().map(|r| r.path.as_str()).collect();
            gone.retain(|p| listed.contains(p.as_str()));
            manifest
                .retired
                .iter()
                .filter(|r| r.delete_after_us <= now_us && !gone.contains(&r.path))
                .map(|r| r.path.as_str())
                .collect()
        };
        let mut deleted = 0;
        for path in due {
            match self.catalog.lake().delete(path).await {
                Ok(()) => {
                    deleted += 1;
                    self.deleted_retired.lock().insert(path.to_string());
                }
                // Left for the next start, which removes files no manifest names.
                Err(e) => {
                    tracing::warn!(path, error = %e, "could not delete a replaced Parquet file")
                }
            }
            crate::sys::failpoint::crash("compact_after_delete");
        }
        deleted
    }

    /// Replaced files waiting for their grace to end.
    pub fn retired_files(&self) -> usize {
        let now_us = chrono::Utc::now().timestamp_micros();
        self.catalog.manifest().retired_paths(now_us).count()
    }

    /// Compacts in the background every `every`, until `stop` fires.
    pub fn spawn_compactor(
        self: &Arc<Self>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let policy = Policy::default();
            let stopping = Arc::new(AtomicBool::new(false));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
                // A shutdown during a pass ends it after the group at hand.
                let mut watch = stop.clone();
                let flag = Arc::clone(&stopping);
                let watcher = tokio::spawn(async move {
                    let _ = watch.changed().await;
                    flag.store(true, Ordering::Release);
                });
                let now_us = chrono::Utc::now().timestamp_micros();
                if let Err(e) = engine.apply_retention(now_us).await {
                    tracing::warn!(error = %e, "dropping partitions past the retention horizon failed; tried again later");
                }
                if let Err(e) = engine.compact_until(&policy, &stopping).await {
                    tracing::warn!(error = %e, "compaction failed; the files stay as they are and it is tried again");
                }
                watcher.abort();
                if stopping.load(Ordering::Acquire) {
                    return;
                }
            }
        })
    }
}
