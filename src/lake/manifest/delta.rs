//! A manifest version written as the changes since the version before it.
//!
//! A version file is either a **checkpoint** (the whole [`Manifest`]) or a **delta**:
//! the files a commit added and removed per table, the retired files it added and
//! forgot, and the new WAL reach, file number and dedup state. A delta names the
//! checkpoint its chain starts from; its parent is always the version just before it.
//! Loading reads the newest version, then its checkpoint and every delta after it, in
//! order.
//!
//! Invariants:
//! - `Delta::between(parent, next)` returns a delta only if applying it to `parent`
//!   gives exactly `next` (it is checked, not assumed): anything a delta cannot say
//!   is written as a checkpoint.
//! - A delta is applied in place, so loading a chain of `d` deltas over a checkpoint
//!   of `n` files costs one read of each file, not `d` copies of `n` entries.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{DedupFiles, FileEntry, Manifest, RetiredFile};

/// The value of a version file's `kind` for a delta (checkpoints have no `kind`).
pub(super) const KIND: &str = "delta";

/// The changes of one commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Delta {
    pub format: u32,
    pub version: u64,
    pub kind: String,
    /// The checkpoint version this chain starts from.
    pub checkpoint: u64,
    pub wal_through: u64,
    pub next_file_seq: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, TableChange>,
    /// The dedup state, when the commit changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupFiles>,
    /// Retired files the commit forgot, and the ones it retired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_gone: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_added: Vec<RetiredFile>,
}

/// One table's changes: files removed (by path), then files inserted at the index
/// they have in the new list (in ascending order of index).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct TableChange {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<Placed>,
}

/// A file inserted at index `at` of the table's new list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Placed {
    pub at: usize,
    #[serde(flatten)]
    pub entry: FileEntry,
}

impl Delta {
    /// The changes from `parent` to `next` (the version after it, in the chain that
    /// starts at `checkpoint`), or `None` if a delta cannot reproduce `next` exactly.
    pub fn between(parent: &Manifest, next: &Manifest, checkpoint: u64) -> Option<Delta> {
        if next.version != parent.version + 1 || (parent.dedup.is_some() && next.dedup.is_none()) {
            return None;
        }
        let mut tables = BTreeMap::new();
        for (name, files) in &next.tables {
            let before = parent.tables.get(name);
            if before == Some(files) {
                continue;
            }
            let before = before.map(Vec::as_slice).unwrap_or(&[]);
            tables.insert(name.clone(), table_change(before, files));
        }
        let retired_before: HashSet<&RetiredFile> = parent.retired.iter().collect();
        let retired_after: HashSet<&RetiredFile> = next.retired.iter().collect();
        let delta = Delta {
            format: super::FORMAT,
            version: next.version,
            kind: KIND.into(),
            checkpoint,
            wal_through: next.wal_through,
            next_file_seq: next.next_file_seq,
            tables,
            dedup: (next.dedup != parent.dedup)
                .then(|| next.dedup.clone())
                .flatten(),
            retired_gone: parent
                .retired
                .iter()
                .filter(|r| !retired_after.contains(r))
                .map(|r| r.path.clone())
                .collect(),
            retired_added: next
                .retired
                .iter()
                .filter(|r| !retired_before.contains(r))
                .cloned()
                .collect(),
        };
        delta.reproduces(parent, next).then_some(delta)
    }

    /// True if applying this delta to `parent` gives exactly `next`. Copies only the
    /// tables it changes (the others were compared whole when it was made).
    fn reproduces(&self, parent: &Manifest, next: &Manifest) -> bool {
        // Every field is covered below: a new one fails to compile here until it is.
        let Manifest {
            format: _,
            version: _,
            wal_through: _,
            next_file_seq: _,
            tables: _,
            dedup: _,
            retired: _,
            chain: _,
        } = next;
        let same_tables = parent.tables.keys().all(|k| next.tables.contains_key(k))
            && self.tables.iter().all(|(name, change)| {
                let mut files = parent.tables.get(name).cloned().unwrap_or_default();
                change.apply(&mut files);
                next.tables.get(name) == Some(&files)
            });
        let mut retired: Vec<RetiredFile> = Vec::new();
        let gone: HashSet<&str> = self.retired_gone.iter().map(String::as_str).collect();
        retired.extend(
            parent
                .retired
                .iter()
                .filter(|r| !gone.contains(r.path.as_str()))
                .cloned(),
        );
        retired.extend(self.retired_added.iter().cloned());
        same_tables
            && next.format == super::FORMAT
            && retired == next.retired
            && self.dedup.as_ref().or(parent.dedup.as_ref()) == next.dedup.as_ref()
    }

    /// Turns `manifest` (the version before this one) into this version.
    pub fn apply(&self, manifest: &mut Manifest) {
        manifest.format = super::FORMAT;
        manifest.version = self.version;
        manifest.wal_through = self.wal_through;
        manifest.next_file_seq = self.next_file_seq;
        for (name, change) in &self.tables {
            change.apply(manifest.tables.entry(name.clone()).or_default());
        }
        if let Some(dedup) = &self.dedup {
            manifest.dedup = Some(dedup.clone());
        }
        if !self.retired_gone.is_empty() {
            let gone: HashSet<&str> = self.retired_gone.iter().map(String::as_str).collect();
            manifest.retired.retain(|r| !gone.contains(r.path.as_str()));
        }
        manifest.retired.extend(self.retired_added.iter().cloned());
    }
}

impl TableChange {
    fn apply(&self, files: &mut Vec<FileEntry>) {
        if !self.removed.is_empty() {
            let gone: HashSet<&str> = self.removed.iter().map(String::as_str).collect();
            files.retain(|f| !gone.contains(f.path.as_str()));
        }
        for placed in &self.added {
            let at = placed.at.min(files.len());
            files.insert(at, placed.entry.clone());
        }
    }
}

/// `before` → `after` as removals (files gone or changed) and insertions at their
/// new index.
fn table_change(before: &[FileEntry], after: &[FileEntry]) -> TableChange {
    let old: HashMap<&str, &FileEntry> = before.iter().map(|f| (f.path.as_str(), f)).collect();
    let new: HashMap<&str, &FileEntry> = after.iter().map(|f| (f.path.as_str(), f)).collect();
    TableChange {
        removed: before
            .iter()
            .filter(|f| new.get(f.path.as_str()).copied() != Some(*f))
            .map(|f| f.path.clone())
            .collect(),
        added: after
            .iter()
            .enumerate()
            .filter(|(_, f)| old.get(f.path.as_str()).copied() != Some(*f))
            .map(|(at, f)| Placed {
                at,
                entry: f.clone(),
            })
            .collect(),
    }
}
