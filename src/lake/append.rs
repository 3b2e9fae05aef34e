//! Appending rows to a lake no server runs on (`generate`, `import`): encoded files
//! written under their partitions, then one manifest commit that makes them all
//! visible at once.
//!
//! Invariants:
//! - Nothing written here is visible until [`Append::commit`] succeeds; until then
//!   the files are ones no manifest names, which a failed commit or
//!   [`Append::abandon`] deletes, and a server's next start removes if the process
//!   stopped first (as for an interrupted flush).
//! - The caller holds the data directory's lock (`engine::lock_dir`) from before the
//!   manifest it appends to was loaded until the commit: no other writer can commit
//!   in between.
//! - The commit keeps the parent's WAL reach: appended rows never come from the WAL.

use crate::lake::Lake;
use crate::lake::manifest::{FileEntry, Manifest, ManifestError};
use crate::lake::persist::EncodedFile;
use crate::tables::Table;

/// Files written for one commit on top of a loaded manifest.
pub(crate) struct Append<'a> {
    lake: &'a Lake,
    parent: &'a Manifest,
    /// File names are `<prefix>-<seq>.parquet`, which says what wrote them.
    prefix: &'static str,
    added: Vec<(Table, FileEntry)>,
    paths: Vec<String>,
    next_file: u64,
    /// Bytes written so far.
    pub bytes: u64,
}

impl<'a> Append<'a> {
    /// An empty append on top of `parent`, naming its files `<prefix>-<seq>.parquet`.
    pub(crate) fn new(lake: &'a Lake, parent: &'a Manifest, prefix: &'static str) -> Self {
        Self {
            lake,
            parent,
            prefix,
            added: Vec::new(),
            paths: Vec::new(),
            next_file: parent.next_file_seq.max(1),
            bytes: 0,
        }
    }

    /// Files written so far.
    pub(crate) fn files(&self) -> usize {
        self.added.len()
    }

    /// Writes `files` (of `table`) durably under their partitions; not yet visible.
    pub(crate) async fn write(
        &mut self,
        table: Table,
        files: Vec<EncodedFile>,
    ) -> Result<(), crate::lake::LakeError> {
        for f in files {
            let path = format!(
                "{}/{}/{}-{:012}.parquet",
                table.name(),
                f.partition,
                self.prefix,
                self.next_file
            );
            self.next_file += 1;
            let (entry, bytes) = f.into_entry(path);
            self.paths.push(entry.path.clone());
            self.lake.put_durable(&entry.path, bytes).await?;
            self.bytes += entry.bytes;
            self.added.push((table, entry));
        }
        Ok(())
    }

    /// Commits every file written with one manifest version and returns it. On
    /// failure the files are deleted, unless the version may have been committed
    /// after all ([`Manifest::keeps_files`]).
    pub(crate) async fn commit(self) -> Result<Manifest, ManifestError> {
        let Append {
            lake,
            parent,
            added,
            paths,
            next_file,
            ..
        } = self;
        let mut next = parent.with_files(added, parent.wal_through, next_file);
        match next.commit(lake, parent).await {
            Ok(()) => Ok(next),
            Err(e) => {
                if !Manifest::keeps_files(&e) {
                    delete_all(lake, &paths).await;
                }
                Err(e)
            }
        }
    }

    /// Deletes the files written (best effort: a server's next start removes what is
    /// left, as no manifest names them).
    pub(crate) async fn abandon(self) {
        delete_all(self.lake, &self.paths).await;
    }
}

async fn delete_all(lake: &Lake, paths: &[String]) {
    for path in paths {
        let _ = lake.delete(path).await;
    }
}
