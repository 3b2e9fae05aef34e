//! The manifest: which Parquet files are committed, and how far into the WAL they
//! reach.
//!
//! Stored as `_manifest/<version, 20 digits>.json`. A commit writes version `v + 1`
//! as a new object (object_store's put is atomic: staged, then renamed) and makes it
//! durable; the newest version that parses is the committed state.
//!
//! Most versions are **deltas** (`delta.rs`): the changes since the version before,
//! so a flush writes a few hundred bytes however many files the lake holds. Every
//! [`MAX_DELTAS`] commits, once the deltas add up to the checkpoint's size (64 KiB at
//! least), or once the state names under half the files its checkpoint does (after a
//! compaction or retention), a
//! commit writes a **checkpoint**, the whole state; versions older than the newest
//! checkpoint are then deleted. A load reads the newest version, its checkpoint and
//! the deltas between.
//!
//! Invariants:
//! - **Committed**: a Parquet file is committed exactly when a durable manifest lists
//!   it. Queries and other readers see only committed files.
//! - `wal_through` is the highest WAL sequence number whose row is in a committed
//!   file; replay skips records at or below it, so a crash between a commit and the
//!   WAL release counts nothing twice.
//! - A manifest version torn by a crash was never acknowledged as committed (its WAL
//!   segments were not released), so falling back to the previous version loses
//!   nothing.
//! - A delta is written only on top of a version this process committed and saw
//!   confirmed durable, numbered one past it: its chain (the checkpoint and every
//!   delta up to it) is durable and is never deleted while it is the newest chain. The
//!   first commit after an open, and the first after an unconfirmed commit, is a
//!   checkpoint.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::lake::{Lake, LakeError};
use crate::tables::Table;

mod delta;

use delta::Delta;

/// The folder of manifest versions in the lake.
pub(crate) const DIR: &str = "_manifest";
/// Format 2 added deltas; format 1 manifests are checkpoints. Format 3: the files
/// it names may leave derived columns null (`query::derived`), which an older build
/// would read as values missing from non-null columns, so it refuses the lake.
const FORMAT: u32 = 3;
/// Deltas after a checkpoint before a commit writes the next checkpoint.
pub const MAX_DELTAS: u32 = 100;
/// Delta bytes a chain may add up to before the next checkpoint, at least (a small
/// lake's checkpoint is smaller than a few deltas).
const MIN_DELTA_BUDGET: u64 = 64 * 1024;
/// Listings a load tries when the versions it listed vanish before it reads them.
const LOAD_ATTEMPTS: usize = 5;

/// Errors reading or committing the manifest.
#[derive(Debug, Error)]
pub enum ManifestError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(
        "manifest {path} was written by a newer hookscope (format {found}, this build reads {FORMAT}); start that version or a newer one"
    )]
    TooNew { path: String, found: u64 },
    #[error("manifest {path} cannot be used: {reason}")]
    Corrupt { path: String, reason: String },
    #[error(
        "the new manifest {path} is in place but could not be confirmed durable ({source}); its files are kept, and the next flush writes it again"
    )]
    Unconfirmed { path: String, source: LakeError },
    #[error("could not encode the manifest: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One committed Parquet file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Lake-relative path.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// Smallest and largest value of the table's time column, microseconds UTC.
    pub min_time_us: i64,
    pub max_time_us: i64,
    /// Smallest and largest `id` (absent in files committed before it was kept): a
    /// lookup by id skips files whose range cannot hold it without opening them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<(String, String)>,
}

/// The committed state of the lake.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub version: u64,
    /// Rows of every WAL record with seq ≤ this are in committed files.
    pub wal_through: u64,
    /// Next number for a Parquet file name.
    pub next_file_seq: u64,
    /// Committed files per table name.
    pub tables: BTreeMap<String, Vec<FileEntry>>,
    /// The dedup index as of `wal_through` (absent in lakes written before it was
    /// persisted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupFiles>,
    /// Files a compaction replaced, kept on disk until no query that may have planned
    /// a scan of them still runs (in this process or another): no start removes them
    /// before `delete_after_us`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredFile>,
    /// Where this version sits in its chain, if this process committed it.
    #[serde(skip)]
    chain: Chain,
}

/// The chain a committed version ends: set only by a confirmed commit, so a delta is
/// only ever written on top of a durable chain.
#[derive(Debug, Clone, Copy, Default)]
struct Chain(Option<ChainInfo>);

#[derive(Debug, Clone, Copy)]
struct ChainInfo {
    checkpoint: u64,
    checkpoint_bytes: u64,
    /// Files (committed and retired) the checkpoint names.
    checkpoint_entries: usize,
    deltas: u32,
    delta_bytes: u64,
}

/// Chains are bookkeeping, not state: two manifests with the same files are equal.
impl PartialEq for Chain {
    fn eq(&self, _: &Chain) -> bool {
        true
    }
}

/// A replaced file waiting for its deletion.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RetiredFile {
    pub path: String,
    /// Microseconds UTC.
    pub delete_after_us: i64,
}

/// The persisted dedup index: files under `_dedup/`, read in order (the first may be
/// a checkpoint of the whole index, the rest are the changes of later flushes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DedupFiles {
    pub files: Vec<String>,
    /// Arrivals in the checkpoint, and pushed by the later files: when the changes
    /// outgrow the checkpoint, a flush writes a new one.
    pub checkpoint_entries: u64,
    pub delta_entries: u64,
}

impl Manifest {
    /// The committed files of `table`.
    pub fn files(&self, table: impl AsRef<str>) -> &[FileEntry] {
        self.tables
            .get(table.as_ref())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Loads the newest manifest; an empty one if the lake is new.
    ///
    /// Only the newest version may be torn (not JSON at all: a crash before its
    /// bytes were durable; its flush was never acknowledged, so the previous version
    /// is the committed state). A version that is whole JSON is never skipped: a newer
    /// format or a manifest this build cannot read stops the open, because falling
    /// back would drop the files it names.
    pub async fn load(lake: &Lake) -> Result<Manifest, ManifestError> {
        // A writer deletes old versions after each commit: versions listed here may be
        // gone when they are read. Listing again finds the newer ones.
        for _ in 0..LOAD_ATTEMPTS {
            if let Some(manifest) = Self::load_listed(lake).await? {
                return Ok(manifest);
            }
        }
        Err(ManifestError::Corrupt {
            path: DIR.into(),
            reason: format!(
                "{LOAD_ATTEMPTS} listings in a row named a version that was gone when read, or a delta whose chain is not all there (a writer replacing versions very fast, or a version file deleted by hand); try again, and if it persists restore the folder from a backup"
            ),
        })
    }

    /// The number of the newest version in the folder (`None`: no version yet),
    /// without reading it: it changes whenever a commit lands.
    pub async fn newest_listed(lake: &Lake) -> Result<Option<u64>, ManifestError> {
        Ok(list_versions(lake).await?.into_iter().map(|(v, _)| v).max())
    }

    /// The newest readable version; `None` if a version this load needs was gone
    /// when read (a writer replaced the chain meanwhile: list again).
    async fn load_listed(lake: &Lake) -> Result<Option<Manifest>, ManifestError> {
        let mut versions = list_versions(lake).await?;
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        for (i, (version, path)) in versions.iter().enumerate() {
            // Gone since the listing: newer versions exist; list again.
            let Some(bytes) = lake.get(path).await? else {
                return Ok(None);
            };
            let parsed = match Version::parse(&bytes, *version, path) {
                Ok(v) => v,
                Err(Unreadable::Torn(e)) if i == 0 => {
                    tracing::warn!(manifest = %path, error = %e, "skipping the newest manifest version: it was torn by a crash before it was durable; using the previous one");
                    continue;
                }
                Err(Unreadable::Torn(e)) => {
                    return Err(ManifestError::Corrupt {
                        path: path.clone(),
                        reason: format!("not JSON ({e}), and a newer version exists"),
                    });
                }
                Err(Unreadable::TooNew(e)) => return Err(e),
                Err(Unreadable::NotManifest(r)) => {
                    return Err(ManifestError::Corrupt {
                        path: path.clone(),
                        reason: format!(
                            "{}: restore it from a backup, or move it aside to start from the previous version",
                            not_manifest(&r)
                        ),
                    });
                }
            };
            return match parsed {
                Version::Checkpoint(m) => Ok(Some(m)),
                Version::Delta(head) => {
                    let listed: BTreeMap<u64, &str> =
                        versions.iter().map(|(v, p)| (*v, p.as_str())).collect();
                    load_chain(lake, &listed, head, path).await
                }
            };
        }
        Ok(Some(Manifest {
            format: FORMAT,
            next_file_seq: 1,
            ..Default::default()
        }))
    }

    /// The next version: `self` plus `added` files, reaching WAL seq `wal_through`.
    pub fn with_files(
        &self,
        added: Vec<(Table, FileEntry)>,
        wal_through: u64,
        next_file_seq: u64,
    ) -> Manifest {
        let mut next = self.next_version(chrono::Utc::now().timestamp_micros());
        next.wal_through = next.wal_through.max(wal_through);
        next.next_file_seq = next_file_seq;
        for (table, entry) in added {
            next.tables
                .entry(table.name().to_string())
                .or_default()
                .push(entry);
        }
        next
    }

    /// The next version: `self` with `removed` files of `table` replaced by `added`
    /// (compaction; retention adds nothing). WAL reach and the dedup state stay.
    ///
    /// The added files take the place of the first removed one, so the list keeps
    /// the order in which rows arrived (the dedup rebuild reads files in that order).
    /// The removed files are retired until `delete_after_us`; retired files whose
    /// time has passed leave the list.
    pub fn replacing(
        &self,
        table: impl AsRef<str>,
        removed: &[FileEntry],
        added: Vec<FileEntry>,
        now_us: i64,
        delete_after_us: i64,
    ) -> Manifest {
        let mut next = self.next_version(now_us);
        next.swap_files(table, removed, added, delete_after_us);
        next
    }

    /// In this version (no new number): `removed` files of `table` replaced by
    /// `added` in the place of the first removed one, the removed ones retired until
    /// `delete_after_us`.
    pub fn swap_files(
        &mut self,
        table: impl AsRef<str>,
        removed: &[FileEntry],
        added: Vec<FileEntry>,
        delete_after_us: i64,
    ) {
        let next = self;
        let gone: std::collections::HashSet<&str> =
            removed.iter().map(|r| r.path.as_str()).collect();
        let files = next.tables.entry(table.as_ref().to_string()).or_default();
        let at = files
            .iter()
            .position(|f| gone.contains(f.path.as_str()))
            .unwrap_or(files.len());
        let kept_before = files[..at].to_vec();
        let kept_after: Vec<FileEntry> = files[at..]
            .iter()
            .filter(|f| !gone.contains(f.path.as_str()))
            .cloned()
            .collect();
        *files = kept_before;
        files.extend(added);
        files.extend(kept_after);
        next.retired.extend(removed.iter().map(|f| RetiredFile {
            path: f.path.clone(),
            delete_after_us,
        }));
    }

    /// `self` as the base of the next version: the number after it, and retired files
    /// an hour past their time forgotten (deleted by then, or removed at the next
    /// start as files no manifest names).
    pub fn next_version(&self, now_us: i64) -> Manifest {
        const FORGET_AFTER_US: i64 = 3_600_000_000;
        let mut next = self.clone();
        next.format = FORMAT;
        next.version += 1;
        next.chain = Chain::default();
        next.retired
            .retain(|r| r.delete_after_us.saturating_add(FORGET_AFTER_US) > now_us);
        next
    }

    /// True if every one of `files` is committed for `table` in this version.
    pub fn holds(&self, table: impl AsRef<str>, files: &[FileEntry]) -> bool {
        let committed: std::collections::HashMap<&str, &FileEntry> = self
            .files(table)
            .iter()
            .map(|f| (f.path.as_str(), f))
            .collect();
        files
            .iter()
            .all(|f| committed.get(f.path.as_str()).is_some_and(|c| *c == f))
    }

    /// Makes this version durable: **when this returns `Ok`, it is the committed
    /// state.** `parent` is the committed version this one was made from: if this
    /// process committed it and the chain is short, only the changes are written (a
    /// delta); otherwise the whole state (a checkpoint), after which the versions
    /// before it are deleted (best effort).
    ///
    /// On [`ManifestError::Unconfirmed`] the version was renamed into place but not
    /// confirmed durable: it may be the committed state after a crash, so the files
    /// it names must stay. Any other error means it never replaced anything.
    pub async fn commit(&mut self, lake: &Lake, parent: &Manifest) -> Result<(), ManifestError> {
        self.format = FORMAT;
        let entries = self.entries();
        // A state that shrank to under half its checkpoint (a compaction, retention)
        // gets a new, smaller checkpoint: every load reads the checkpoint whole.
        let delta = parent
            .chain
            .0
            .filter(|c| c.deltas < MAX_DELTAS && entries * 2 >= c.checkpoint_entries)
            .and_then(|c| Some((c, Delta::between(parent, self, c.checkpoint)?)))
            .and_then(|(c, d)| {
                let body = serde_json::to_vec(&d).ok()?;
                let budget = c.checkpoint_bytes.max(MIN_DELTA_BUDGET);
                // What a load will read back, through the same steps as a load.
                let back = serde_json::from_slice::<Delta>(&body).ok();
                (c.delta_bytes + body.len() as u64 <= budget && back.as_ref() == Some(&d))
                    .then_some((c, body))
            });
        let (body, chain) = match delta {
            Some((c, body)) => {
                let chain = ChainInfo {
                    deltas: c.deltas + 1,
                    delta_bytes: c.delta_bytes + body.len() as u64,
                    ..c
                };
                (body, chain)
            }
            None => {
                let body = serde_json::to_vec(self)?;
                let chain = ChainInfo {
                    checkpoint: self.version,
                    checkpoint_bytes: body.len() as u64,
                    checkpoint_entries: entries,
                    deltas: 0,
                    delta_bytes: 0,
                };
                (body, chain)
            }
        };
        let path = version_path(self.version);
        match lake.put_durable(&path, Bytes::from(body)).await {
            Ok(()) => {}
            Err(source @ LakeError::Sync { .. }) => {
                return Err(ManifestError::Unconfirmed { path, source });
            }
            Err(e) => return Err(e.into()),
        }
        self.chain = Chain(Some(chain));
        if chain.deltas == 0 {
            // Committed. Cleaning up the previous chains is housekeeping: a failure
            // here must not make the flush look failed (it would discard committed
            // files).
            delete_versions_before(lake, chain.checkpoint).await;
        }
        Ok(())
    }

    /// Files this version names, committed and retired.
    fn entries(&self) -> usize {
        self.tables.values().map(Vec::len).sum::<usize>() + self.retired.len()
    }

    /// True if this version was written as a delta.
    pub fn is_delta(&self) -> bool {
        self.chain.0.is_some_and(|c| c.deltas > 0)
    }

    /// True when a failed commit must keep the files the version names.
    pub fn keeps_files(err: &ManifestError) -> bool {
        matches!(err, ManifestError::Unconfirmed { .. })
    }

    /// Retired files whose time has not come (`now_us`): not to be removed yet.
    pub fn retired_paths(&self, now_us: i64) -> impl Iterator<Item = &str> {
        self.retired
            .iter()
            .filter(move |r| r.delete_after_us > now_us)
            .map(|r| r.path.as_str())
    }

    /// Every committed file path, over all tables.
    pub fn all_paths(&self) -> impl Iterator<Item = &str> {
        self.tables.values().flatten().map(|f| f.path.as_str())
    }

    /// The dedup state files this version names.
    pub fn dedup_paths(&self) -> impl Iterator<Item = &str> {
        self.dedup
            .iter()
            .flat_map(|d| d.files.iter().map(String::as_str))
    }
}

fn version_path(version: u64) -> String {
    format!("{DIR}/{version:020}.json")
}

/// A version file, parsed.
enum Version {
    Checkpoint(Manifest),
    Delta(Delta),
}

/// What a version file says of itself, read without building the rest (reading it
/// checks that the whole file is JSON).
#[derive(Deserialize)]
struct Header {
    format: Option<serde_json::Value>,
    kind: Option<serde_json::Value>,
}

/// Why a version file could not be used.
enum Unreadable {
    /// Not (whole) JSON: torn by a crash if it is the newest version.
    Torn(serde_json::Error),
    /// Whole JSON, but not a manifest this build reads: why.
    NotManifest(String),
    /// Written by a newer build.
    TooNew(ManifestError),
}

/// Why a whole-JSON version is refused, and that it was not torn.
fn not_manifest(reason: &str) -> String {
    format!(
        "it is whole JSON but not a manifest this build understands ({reason}); it was not torn by a crash, so nothing falls back past it"
    )
}

impl Version {
    /// Parses the bytes read from `path` (listed as `version`).
    fn parse(bytes: &[u8], version: u64, path: &str) -> Result<Version, Unreadable> {
        let corrupt = Unreadable::NotManifest;
        // Whole JSON or not (a syntax check that builds nothing): only a file that is
        // not whole JSON can have been torn by a crash.
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(Unreadable::Torn)?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(corrupt("whole JSON, but not an object".into()));
        }
        let header: Header = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        match header.format.as_ref().and_then(serde_json::Value::as_u64) {
            Some(f) if f > u64::from(FORMAT) => {
                return Err(Unreadable::TooNew(ManifestError::TooNew {
                    path: path.to_string(),
                    found: f,
                }));
            }
            Some(_) => {}
            None => return Err(corrupt("no format number".into())),
        }
        let is_delta =
            header.kind.as_ref().and_then(serde_json::Value::as_str) == Some(delta::KIND);
        let parsed = if is_delta {
            let d: Delta = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
            if d.checkpoint >= d.version {
                return Err(corrupt(format!(
                    "delta {} names checkpoint {}, which is not before it",
                    d.version, d.checkpoint
                )));
            }
            (d.version, Version::Delta(d))
        } else {
            let m: Manifest = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
            (m.version, Version::Checkpoint(m))
        };
        if parsed.0 != version {
            return Err(corrupt(format!("it says version {}", parsed.0)));
        }
        Ok(parsed.1)
    }
}

/// The state at `head` (read from `head_path`): its checkpoint with every delta up to
/// it applied in order. `None` if a version of the chain is not listed or was gone
/// when read (a writer wrote a newer checkpoint and is deleting this chain).
async fn load_chain(
    lake: &Lake,
    listed: &BTreeMap<u64, &str>,
    head: Delta,
    head_path: &str,
) -> Result<Option<Manifest>, ManifestError> {
    let mut state: Option<Manifest> = None;
    for version in head.checkpoint..head.version {
        let Some(path) = listed.get(&version) else {
            return Ok(None);
        };
        let Some(bytes) = lake.get(path).await? else {
            return Ok(None);
        };
        let advice = if version == head.checkpoint {
            "it is the checkpoint of the newest chain and no earlier state is kept: restore the _manifest folder from a backup".to_string()
        } else {
            format!(
                "to start from the state before it, move aside this version and every newer one (versions {version} to {}); the next start then deletes the files only those versions name",
                head.version
            )
        };
        let parsed = match Version::parse(&bytes, version, path) {
            Ok(v) => v,
            Err(Unreadable::TooNew(e)) => return Err(e),
            Err(Unreadable::NotManifest(r)) => {
                return Err(ManifestError::Corrupt {
                    path: path.to_string(),
                    reason: format!(
                        "{}, and the newer version {head_path} builds on it; {advice}",
                        not_manifest(&r)
                    ),
                });
            }
            Err(Unreadable::Torn(e)) => {
                return Err(ManifestError::Corrupt {
                    path: path.to_string(),
                    reason: format!(
                        "not JSON ({e}), and the newer version {head_path} builds on it; {advice}"
                    ),
                });
            }
        };
        match (parsed, state.as_mut()) {
            (Version::Checkpoint(m), None) => state = Some(m),
            (Version::Delta(d), Some(m)) if d.checkpoint == head.checkpoint => d.apply(m),
            _ => {
                return Err(ManifestError::Corrupt {
                    path: path.to_string(),
                    reason: format!(
                        "{head_path} is a delta on checkpoint {}, but this version does not belong to that chain; restore the _manifest folder from a backup",
                        head.checkpoint
                    ),
                });
            }
        }
    }
    let Some(mut manifest) = state else {
        return Ok(None);
    };
    head.apply(&mut manifest);
    Ok(Some(manifest))
}

/// Deletes the versions before `version` (the chains a checkpoint replaced).
async fn delete_versions_before(lake: &Lake, version: u64) {
    match list_versions(lake).await {
        Ok(versions) => {
            for (v, path) in versions {
                if v < version
                    && let Err(e) = lake.delete(&path).await
                {
                    tracing::warn!(manifest = %path, error = %e, "could not delete an old manifest version");
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not list old manifest versions to delete them");
        }
    }
}

async fn list_versions(lake: &Lake) -> Result<Vec<(u64, String)>, LakeError> {
    Ok(lake
        .list(DIR)
        .await?
        .into_iter()
        .filter_map(|l| {
            let name = l.path.rsplit('/').next()?;
            let v = name.strip_suffix(".json")?.parse::<u64>().ok()?;
            Some((v, l.path))
        })
        .collect())
}

#[cfg(test)]
mod tests;
