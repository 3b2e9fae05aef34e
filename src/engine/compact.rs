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
//!    deadline, delete the inputs.
//!
//! Invariant: at every instant exactly one committed version names each row (the
//! inputs, or the merged file), so queries see every row exactly once.

use std::time::{Duration, Instant};

use super::flush::discard;
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
    /// Replaced files deleted (by this call, of this or earlier compactions).
    pub deleted: u64,
}

/// Files replaced by a committed compaction, kept until no query can read them.
#[derive(Debug, Default)]
pub(crate) struct Retired {
    files: Vec<(Instant, Vec<String>)>,
}

impl Engine {
    /// How long replaced files stay: no query that planned a scan before the swap
    /// runs past its deadline.
    fn retire_grace(&self) -> Duration {
        self.settings.query.timeout + Duration::from_secs(1)
    }

    /// Merges what `policy` says is due, then deletes replaced files whose grace is
    /// over. Only a writing engine compacts.
    pub async fn compact(&self, policy: &Policy) -> Result<CompactReport, EngineError> {
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
            self.compact_group(&group, &mut report).await?;
        }
        report.deleted += self.delete_retired(false).await;
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
        let (level, share) = (self.settings.zstd_level, self.settings.flush_cpu_share);
        let owned = group.clone();
        let merged = self
            .background
            .run(move || plan::merge(&owned, inputs, level, &mut persist::Pacer::new(share)))
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
            let bytes = f.bytes.len() as u64;
            if let Err(e) = lake.put_durable(&path, f.bytes).await {
                discard(
                    &lake,
                    added
                        .iter()
                        .map(|e: &FileEntry| e.path.as_str())
                        .chain([path.as_str()]),
                )
                .await;
                return Err(e.into());
            }
            added.push(FileEntry {
                path,
                rows: f.rows,
                bytes,
                min_time_us: f.min_time_us,
                max_time_us: f.max_time_us,
            });
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
        let next = manifest.replacing(group.table, &group.files, added);
        if let Err(e) = next.commit(&lake).await {
            drop(guard);
            if !Manifest::keeps_files(&e) {
                discard(&lake, written.iter().map(String::as_str)).await;
            }
            return Err(e.into());
        }
        crate::sys::failpoint::crash("compact_after_commit");
        // 4. New scans read the merged file from here on.
        self.catalog.replace_manifest(next);
        drop(guard);

        // 5. The inputs go once no query can still read them.
        self.retired.lock().files.push((
            Instant::now() + self.retire_grace(),
            group.files.iter().map(|f| f.path.clone()).collect(),
        ));
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

    /// Deletes replaced files whose grace is over (all of them with `all`: nothing
    /// reads them any more, as at shutdown). Returns how many it deleted.
    pub(crate) async fn delete_retired(&self, all: bool) -> u64 {
        let now = Instant::now();
        let due: Vec<String> = {
            let mut retired = self.retired.lock();
            let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut retired.files)
                .into_iter()
                .partition(|(at, _)| all || *at <= now);
            retired.files = keep;
            due.into_iter().flat_map(|(_, paths)| paths).collect()
        };
        let mut deleted = 0;
        for path in due {
            match self.catalog.lake().delete(&path).await {
                Ok(()) => deleted += 1,
                // Left for the next start, which removes files no manifest names.
                Err(e) => {
                    tracing::warn!(path, error = %e, "could not delete a replaced Parquet file")
                }
            }
            crate::sys::failpoint::crash("compact_after_delete");
        }
        deleted
    }

    /// Replaced files still waiting for their grace to end.
    pub fn retired_files(&self) -> usize {
        self.retired.lock().files.iter().map(|(_, p)| p.len()).sum()
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
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
                if let Err(e) = engine.compact(&policy).await {
                    tracing::warn!(error = %e, "compaction failed; the files stay as they are and it is tried again");
                }
            }
        })
    }
}
