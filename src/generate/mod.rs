//! Synthetic traffic written straight into a lake, for benchmarks, tests and demos.
//!
//! Deliveries and outcomes from six sources over a time span: a daily rhythm and
//! quieter weekends, one burst a day, lognormal payload sizes and processing times, a
//! handler whose latency creeps up, failures (and an outage a week) answered by the
//! provider's retries on its own schedule, at-least-once duplicates, and a source
//! that goes silent for the last hours. The rows take the path a flush takes (the
//! buffer's builders → [`persist`] → the manifest), without the WAL: a generated lake
//! is an ordinary lake, and a server opens it like any other.
//!
//! Invariants:
//! - The same [`Spec`] (seed included) gives the same rows and the same files on a
//!   new lake; another run on the same lake adds other events with other ids.
//! - `attempt`, `is_duplicate` and `retry_gap_ms` are what the dedup index derives:
//!   the n-th arrival of a dedup_key at its source, and the time since the previous
//!   one (the schedule's gap, exactly).
//! - Nothing is visible until the one manifest commit at the end; files of a run that
//!   stops before it are removed at a server's next start, like a flush's.
//! - Generated rows are not added to a persisted dedup index: a lake generated
//!   without a server has none, and a server's first start rebuilds it from the
//!   lake's recent days, as for a lake written before the index was persisted.

use std::path::Path;
use std::time::Duration;

use thiserror::Error;

use crate::lake::append::Append;
use crate::lake::manifest::{Manifest, ManifestError};
use crate::lake::persist::{self, PersistError};
use crate::lake::{Lake, LakeError};
use crate::tables::Table;

pub(crate) mod profiles;
#[cfg(test)]
mod tests;
pub(crate) mod traffic;

use traffic::{Generator, HOUR_US, SECOND_US, Window};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Deliveries to aim for, retries and duplicates included (the result is within
    /// about a percent; [`Summary::deliveries`] has the exact count).
    pub deliveries: u64,
    /// The span ends here (microseconds, UTC) …
    pub end_us: i64,
    /// … and starts this long before.
    pub span: Duration,
    pub seed: u64,
    /// One file per partition and window of this length, as a server flushing at
    /// this interval leaves the lake; `None`: one file per partition and hour.
    pub flush_every: Option<Duration>,
    /// zstd level of the Parquet files (the server's default is 1).
    pub zstd_level: i32,
    /// Mean body bytes over all sources; each source keeps its own median relative
    /// to the others (GitHub's pushes are large, Slack's events small).
    pub mean_body_bytes: u32,
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub deliveries: u64,
    /// Deliveries with attempt > 1 after a failure …
    pub retries: u64,
    /// … and without one (a provider sending an event twice).
    pub duplicates: u64,
    pub outcomes: u64,
    pub files: u64,
    pub bytes: u64,
    /// Raw request bytes (bodies and headers) of the deliveries.
    pub request_bytes: u64,
}

#[derive(Debug, Error)]
pub enum GenerateError {
    #[error("{0}")]
    Spec(String),
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("the generator stopped: {0}")]
    Task(String),
}

/// Writes the generated traffic into the lake in `dir` (new or not) and commits it
/// with one manifest version. Holds the directory's lock meanwhile, so it never runs
/// beside a server on the same directory. `progress` is called with the deliveries
/// written so far.
///
/// The work runs as a task of its own that holds the lock to the end: dropping the
/// returned future does not stop it half-way or release the lock under a write.
pub async fn generate(
    dir: &Path,
    spec: &Spec,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<Summary, GenerateError> {
    let (dir, spec) = (dir.to_path_buf(), spec.clone());
    tokio::spawn(async move { generate_locked(&dir, &spec, &progress).await })
        .await
        .map_err(|e| GenerateError::Task(e.to_string()))?
}

async fn generate_locked(
    dir: &Path,
    spec: &Spec,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Summary, GenerateError> {
    if spec.deliveries == 0 {
        return Err(GenerateError::Spec(
            "nothing to generate: ask for at least one delivery".into(),
        ));
    }
    let span_us = i64::try_from(spec.span.as_micros()).unwrap_or(i64::MAX);
    if span_us < HOUR_US {
        return Err(GenerateError::Spec(format!(
            "a span of {} is too short: give at least an hour",
            humantime::format_duration(spec.span)
        )));
    }
    let window_us = match spec.flush_every {
        Some(d) => i64::try_from(d.as_micros())
            .unwrap_or(HOUR_US)
            .clamp(SECOND_US, HOUR_US),
        None => HOUR_US,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| GenerateError::Spec(format!("cannot create {}: {e}", dir.display())))?;
    let _lock = crate::engine::lock_dir(dir)?;
    let lake = &Lake::local(dir)?;
    let manifest = Manifest::load(lake).await?;

    // The generator fills windows on its own thread; this task encodes and writes
    // them (two cores: one each).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Window>(2);
    let spec_for_thread = spec.clone();
    // Another run on the same lake continues it: other events, other ids.
    let run = manifest.version;
    let generator = std::thread::Builder::new()
        .name("hookscope-generate".into())
        .spawn(move || Generator::new(&spec_for_thread, run, span_us, window_us).run(&tx))
        .map_err(|e| GenerateError::Task(format!("cannot start the generator thread: {e}")))?;

    let mut summary = Summary::default();
    let mut out = Append::new(lake, &manifest, "gen");
    let result: Result<(), GenerateError> = async {
        // Each table of a window is encoded on its own blocking thread, and the next
        // window's encoding starts before this one's files are written.
        let mut encoding = std::collections::VecDeque::new();
        while let Some(window) = rx.recv().await {
            summary.deliveries += window.deliveries;
            summary.retries += window.retries;
            summary.duplicates += window.duplicates;
            summary.outcomes += window.outcomes;
            summary.request_bytes += window.request_bytes;
            let mut buffer = window.buffer;
            for table in [Table::Deliveries, Table::Outcomes] {
                let batches = buffer.snapshot(table);
                let level = spec.zstd_level;
                encoding.push_back((
                    table,
                    tokio::task::spawn_blocking(move || persist::encode(table, &batches, level)),
                ));
            }
            while encoding.len() > 2 {
                if let Some((table, task)) = encoding.pop_front() {
                    write(&mut out, table, task).await?;
                }
            }
            progress(summary.deliveries);
        }
        while let Some((table, task)) = encoding.pop_front() {
            write(&mut out, table, task).await?;
        }
        Ok(())
    }
    .await;
    // Closing the channel stops the generator at its next window.
    drop(rx);
    let joined = tokio::task::spawn_blocking(move || generator.join())
        .await
        .map_err(|e| GenerateError::Task(e.to_string()))
        .and_then(|r| r.map_err(|_| GenerateError::Task("the generator thread panicked".into())));
    summary.files = out.files() as u64;
    summary.bytes = out.bytes;
    match result.and(joined.map(|_| ())) {
        // Files no manifest names: removed now (or at the next start if this fails).
        Ok(()) => {
            out.commit().await?;
        }
        Err(e) => {
            out.abandon().await;
            return Err(e);
        }
    }
    Ok(summary)
}

/// Writes the files `task` encodes for `table`.
async fn write(
    out: &mut Append<'_>,
    table: Table,
    task: tokio::task::JoinHandle<Result<Vec<persist::EncodedFile>, PersistError>>,
) -> Result<(), GenerateError> {
    let files = task
        .await
        .map_err(|e| GenerateError::Task(e.to_string()))??;
    out.write(table, files).await?;
    Ok(())
}
