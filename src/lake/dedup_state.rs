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

use crate::engine::dedup::{Arrival, DedupIndex, Delta};
use crate::lake::dedup_file::{StateError, StateHeader, StateReader, StateWriter, encode_state};
use crate::lake::manifest::{DedupFiles, Manifest};
use crate::lake::{Lake, LakeError};
use crate::sys::{Worker, WorkerGone};

/// The folder of dedup state files in the lake.
pub(crate) const DIR: &str = "_dedup";
/// At most this many files in a state before a checkpoint replaces them.
pub(crate) const MAX_FILES: usize = 64;
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
pub(crate) async fn restore(
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
    let raw = fetch(lake, files).await?;
    worker
        .run(move || {
            let (kept, _) = chain_size(&raw, &then)?;
            let mut queue = Vec::with_capacity(usize::try_from(kept).unwrap_or(0));
            fold_chain(&raw, &then, |a| {
                queue.push(*a);
                Ok(())
            })?;
            Ok(queue)
        })
        .await?
}

/// The bytes of `files`.
async fn fetch(lake: &Lake, files: &[String]) -> Result<Vec<(String, bytes::Bytes)>, LoadError> {
    let mut raw = Vec::with_capacity(files.len());
    for path in files {
        let bytes = lake
            .get(path)
            .await?
            .ok_or_else(|| LoadError::Missing { path: path.clone() })?;
        raw.push((path.clone(), bytes));
    }
    Ok(raw)
}

fn unreadable(path: &str) -> impl Fn(StateError) -> LoadError + '_ {
    move |e| LoadError::Unreadable {
        path: path.to_string(),
        reason: e.to_string(),
    }
}

/// (arrivals left, arrivals popped) of the queue `raw` then `then` describe, from the
/// files' headers.
fn chain_size(raw: &[(String, bytes::Bytes)], then: &Delta) -> Result<(u64, u64), LoadError> {
    let mut popped = then.popped;
    let mut total = then.pushed.len() as u64;
    for (i, (path, bytes)) in raw.iter().enumerate() {
        let header = StateReader::new(bytes).map_err(unreadable(path))?.header();
        if header.checkpoint && i > 0 {
            return Err(LoadError::Unreadable {
                path: path.clone(),
                reason: "a checkpoint after the first file".into(),
            });
        }
        popped += header.popped;
        total += header.count;
    }
    Ok((total.saturating_sub(popped), popped))
}

/// Streams the queue `raw` then `then` describe — every arrival pushed, less the
/// ones popped from the front — to `sink`, one file at a time.
fn fold_chain(
    raw: &[(String, bytes::Bytes)],
    then: &Delta,
    mut sink: impl FnMut(&Arrival) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    let (_, mut skip) = chain_size(raw, then)?;
    let mut take = |a: &Arrival| {
        if skip > 0 {
            skip -= 1;
            Ok(())
        } else {
            sink(a)
        }
    };
    for (path, bytes) in raw {
        let mut reader = StateReader::new(bytes).map_err(unreadable(path))?;
        while let Some(a) = reader.next_arrival().map_err(unreadable(path))? {
            take(&a)?;
        }
    }
    then.pushed.iter().try_for_each(take)
}

fn write_error(e: std::io::Error) -> LoadError {
    LoadError::Unreadable {
        path: DIR.into(),
        reason: format!("cannot encode a state file: {e}"),
    }
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
    let (path, bytes, next) = if checkpoint {
        let raw = fetch(lake, &state.files).await?;
        let then = delta.clone();
        let (entries, bytes) = worker
            .run(move || -> Result<(u64, Vec<u8>), LoadError> {
                let (kept, _) = chain_size(&raw, &then)?;
                let header = StateHeader {
                    checkpoint: true,
                    popped: 0,
                    count: kept,
                };
                let mut writer = StateWriter::new(header).map_err(write_error)?;
                fold_chain(&raw, &then, |a| writer.push(a).map_err(write_error))?;
                Ok((kept, writer.finish().map_err(write_error)?))
            })
            .await??;
        let path = format!("{DIR}/{id}.checkpoint");
        let next = DedupFiles {
            files: vec![path.clone()],
            checkpoint_entries: entries,
            delta_entries: 0,
        };
        (path, bytes, next)
    } else {
        let then = delta.clone();
        let bytes = worker
            .run(move || encode_state(false, &then))
            .await?
            .map_err(write_error)?;
        let path = format!("{DIR}/{id}.delta");
        let mut next = state.clone();
        next.files.push(path.clone());
        next.delta_entries = grown;
        (path, bytes, next)
    };
    lake.put_durable(&path, bytes.into()).await?;
    let replaced = if checkpoint { old_files } else { Vec::new() };
    Ok(Persisted {
        state: next,
        written: Some(path),
        replaced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::dedup::replay_deltas;

    #[tokio::test]
    async fn deltas_and_checkpoints_read_back_as_the_queue_they_describe() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::local(dir.path()).unwrap();
        let worker = Worker::start("test-dedup").unwrap();
        let mut index = DedupIndex::new(50, 20);
        let mut all = Vec::new();
        let mut manifest = Manifest::default();
        let mut checkpoints = 0;
        for cut in 0..150u64 {
            for i in 0..(cut % 7) {
                index.observe(
                    "s",
                    &format!("k{}", (cut * 7 + i) % 23),
                    (cut * 10 + i) as i64,
                );
            }
            let delta = index.take_delta();
            all.push(delta.clone());
            let done = persist(&lake, manifest.dedup.as_ref(), &delta, false, &worker)
                .await
                .unwrap();
            checkpoints += usize::from(
                done.written
                    .as_deref()
                    .is_some_and(|p| p.ends_with(".checkpoint")),
            );
            for old in &done.replaced {
                lake.delete(old).await.unwrap();
            }
            manifest.dedup = Some(done.state);
            let queue = load(&lake, &manifest, &worker).await.unwrap().unwrap();
            assert_eq!(
                queue,
                replay_deltas(Vec::new(), all.iter().cloned()),
                "cut {cut}"
            );
        }
        assert!(checkpoints >= 2, "{checkpoints} checkpoints written");
        assert!(manifest.dedup.unwrap().files.len() <= MAX_FILES);
    }
}
