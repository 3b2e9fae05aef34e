//! Retention, the engine's part: drops the hourly partitions past each table's
//! horizon (`[retention] days`, per table under `[retention.tables]`) in one
//! manifest commit, from the background compactor's loop and `hookscope compact`.
//!
//! Invariants: the drop is one commit (a query sees all of a partition or none of
//! it); nothing inside the horizon is touched; the dropped files are retired like
//! compaction's inputs, deleted once no query that may have planned them runs.

use super::*;
use crate::lake::retention;

const DAY_US: i64 = 86_400_000_000;

impl Engine {
    /// The newest retention horizon of `tables` as of `now_us`: rows older than it
    /// may be gone from one of them (`None` when none of them has retention).
    /// Rollups are kept past it, so a rollup never recomputes buckets older than this.
    pub fn retention_horizon_us(&self, now_us: i64, tables: &[Table]) -> Option<i64> {
        self.settings
            .retention
            .iter()
            .filter(|(table, _)| tables.contains(table))
            .map(|(_, days)| now_us.saturating_sub(i64::from(*days).saturating_mul(DAY_US)))
            .max()
    }

    /// Drops the partitions past the horizon as of `now_us`; returns how many files
    /// it dropped. Nothing to do without retention settings or on a read-only engine.
    pub async fn apply_retention(&self, now_us: i64) -> Result<u64, EngineError> {
        if self.wal.is_none() || self.settings.retention.is_empty() {
            return Ok(0);
        }
        let expired = |manifest: &Manifest| -> Vec<(Table, Vec<FileEntry>)> {
            self.settings
                .retention
                .iter()
                .map(|(table, days)| {
                    let horizon = now_us.saturating_sub(i64::from(*days).saturating_mul(DAY_US));
                    (*table, retention::expired(manifest, *table, horizon))
                })
                .filter(|(_, files)| !files.is_empty())
                .collect()
        };
        if expired(&self.catalog.manifest()).is_empty() {
            return Ok(0);
        }
        let guard = self.flush_lock.lock().await;
        // Rows of an expired hour still in the buffer (flushes failing, or a replay)
        // would be left as part of a partition: wait until they are flushed.
        if self.flush_status.lock().failing_since.is_some() {
            return Ok(0);
        }
        let manifest = self.catalog.manifest();
        let drops = expired(&manifest);
        if drops.is_empty() {
            return Ok(0);
        }
        // The grace counts from the commit: the lock may have been waited for.
        let committed_at = chrono::Utc::now().timestamp_micros();
        let mut next = manifest.next_version(committed_at);
        let mut dropped = 0;
        for (table, files) in &drops {
            next.swap_files(*table, files, Vec::new(), self.retire_after(committed_at));
            dropped += files.len() as u64;
        }
        self.commit_manifest(&mut next, &[]).await?;
        crate::sys::failpoint::crash("retention_after_commit");
        self.catalog.replace_manifest(next);
        drop(guard);
        for (table, files) in &drops {
            tracing::info!(
                table = table.name(),
                files = files.len(),
                rows = files.iter().map(|f| f.rows).sum::<u64>(),
                "dropped partitions past the retention horizon"
            );
        }
        Ok(dropped)
    }
}
