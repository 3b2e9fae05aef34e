//! The persisted dedup index: reads it back on open, and writes each flush's changes
//! (the [`Delta`] taken at its WAL cut) before the manifest that names them.
//!
//! Files: `_dedup/<ulid>.checkpoint` (the whole arrival queue) and
//! `_dedup/<ulid>.delta` (the changes of one or more flushes), listed in order by the
//! manifest ([`DedupFiles`]). A file is never rewritten: each commit names new ones,
//! so a manifest version and the files it names always agree.
//!
//! Invariants:
//! - The state a manifest names is the index exactly as of its `wal_through`; the
//!   engine replays the WAL after it through the restored index.
//! - When the changes since the checkpoint outgrow it (or pass [`MAX_FILES`] files), a
//!   flush writes a new checkpoint instead of a delta, so reading the state back costs
//!   at most about twice the index, and the manifest lists few files.
//! - Files a manifest no longer names are deleted only after a newer manifest is
//!   committed (and, left over by a crash, at the next start).

use crate::dedup::{Arrival, DedupIndex, Delta, StateFile, replay_deltas};
use crate::lake::{Lake, LakeError};
use crate::manifest::{DedupFiles, Manifest};
use crate::sys::{Worker, WorkerGone};

/// The folder of dedup state files in the lake.
pub const DIR: &str = "_dedup";
/// At most this many files in a state before a checkpoint replaces them.
pub const MAX_FILES: usize = 64;
/// Changes smaller than this never force a checkpoint by size.
const MIN_CHECKPOINT_GROWTH: u64 = 64 * 1024;

/// Why the persisted state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("dedup state file {path} is missing")]
    Missing { path: String },
    #[error("dedup state file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error(transparent)]
    Worker(#[from] WorkerGone),
}

/// The queue the manifest's state describes, or `None` when it has none.
pub async fn load(
    lake: &Lake,
    manifest: &Manifest,
    worker: &Worker,
) -> Result<Option<Vec<Arrival>>, LoadError> {
    let Some(state) = &manifest.dedup else {
        return Ok(None);
    };
    read_chain(lake, &state.files, Delta::default(), worker)
        .await
        .map(Some)
}

/// The index as of the manifest, under the configured limits; `None` without state.
pub async fn restore(
    lake: &Lake,
    manifest: &Manifest,
    window_us: i64,
    max_keys: usize,
    worker: &Worker,
) -> Result<Option<DedupIndex>, LoadError> {
    let Some(queue) = load(lake, manifest, worker).await? else {
        return Ok(None);
    };
    let index = worker
        .run(move || DedupIndex::restore(window_us, max_keys, queue))
        .await?;
    Ok(Some(index))
}

/// Reads `files` in order and applies `then` after them: the queue they describe.
async fn read_chain(
    lake: &Lake,
    files: &[String],
    then: Delta,
    worker: &Worker,
) -> Result<Vec<Arrival>, LoadError> {
    let mut raw = Vec::with_capacity(files.len());
    for path in files {
        let bytes = lake
            .get(path)
            .await?
            .ok_or_else(|| LoadError::Missing { path: path.clone() })?;
        raw.push((path.clone(), bytes));
    }
    worker
        .run(move || {
            let mut base = Vec::new();
            let mut deltas = Vec::with_capacity(raw.len() + 1);
            for (i, (path, bytes)) in raw.into_iter().enumerate() {
                let file = StateFile::decode(&bytes).map_err(|e| LoadError::Unreadable {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                match (i, file.checkpoint) {
                    (0, true) => base = file.delta.pushed,
                    (_, false) => deltas.push(file.delta),
                    (_, true) => {
                        return Err(LoadError::Unreadable {
                            path,
                            reason: "a checkpoint after the first file".into(),
                        });
                    }
                }
            }
            deltas.push(then);
            Ok(replay_deltas(base, deltas))
        })
        .await?
}

/// What [`persist`] wrote.
#[derive(Debug)]
pub struct Persisted {
    /// The state the next manifest names.
    pub state: DedupFiles,
    /// The file written (to discard if the commit fails).
    pub written: Option<String>,
    /// Files the new state no longer names (to delete once it is committed).
    pub replaced: Vec<String>,
}

/// Makes `delta` durable on top of `current` (the committed state; `None`: an empty
/// index) as a delta file, or as a new checkpoint when the changes have outgrown the
/// last one. Writes nothing when there is nothing to change.
///
/// With `rebase`, `delta` was journaled by an index that started empty (rebuilt
/// because `current` could not be read): it is written as a checkpoint on an empty
/// base, replacing `current`'s files.
pub async fn persist(
    lake: &Lake,
    current: Option<&DedupFiles>,
    delta: &Delta,
    rebase: bool,
    worker: &Worker,
) -> Result<Persisted, LoadError> {
    let old_files = current.map(|c| c.files.clone()).unwrap_or_default();
    let state = if rebase {
        DedupFiles::default()
    } else {
        current.cloned().unwrap_or_default()
    };
    if delta.is_empty() && current.is_some() && !rebase {
        return Ok(Persisted {
            state,
            written: None,
            replaced: Vec::new(),
        });
    }
    let grown = state.delta_entries + delta.pushed.len() as u64;
    let checkpoint = rebase
        || state.files.len() + 1 > MAX_FILES
        || grown > state.checkpoint_entries.max(MIN_CHECKPOINT_GROWTH);
    let id = ulid::Ulid::new();
    let (file, path, next) = if checkpoint {
        let queue = read_chain(lake, &state.files, delta.clone(), worker).await?;
        let entries = queue.len() as u64;
        let file = StateFile {
            checkpoint: true,
            delta: Delta {
                pushed: queue,
                popped: 0,
            },
        };
        let path = format!("{DIR}/{id}.checkpoint");
        let next = DedupFiles {
            files: vec![path.clone()],
            checkpoint_entries: entries,
            delta_entries: 0,
        };
        (file, path, next)
    } else {
        let file = StateFile {
            checkpoint: false,
            delta: delta.clone(),
        };
        let path = format!("{DIR}/{id}.delta");
        let mut next = state.clone();
        next.files.push(path.clone());
        next.delta_entries = grown;
        (file, path, next)
    };
    let bytes = worker.run(move || file.encode()).await?;
    lake.put_durable(&path, bytes.into()).await?;
    let replaced = if checkpoint { old_files } else { Vec::new() };
    Ok(Persisted {
        state: next,
        written: Some(path),
        replaced,
    })
}
