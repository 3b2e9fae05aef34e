//! The write-ahead log: makes every accepted record durable before it is
//! acknowledged, until the flusher has written it to a committed Parquet file.
//!
//! Layout: `<data>/wal/<first-seq, 20 digits>.wal`, each segment an 8-byte magic
//! followed by frames `[len u32][crc32 u32][seq u64][kind u8][payload len bytes]`
//! (little-endian; the CRC covers seq, kind and payload). Every write ends with a
//! zero frame header, which the next write overwrites: the log ends at the first zero
//! header.
//!
//! Released segments are recycled (renamed to `*.spare`, then to the next segment's
//! name) rather than deleted, and a spare is zero-filled to the segment size before it
//! is needed ([`spares`]): writing into blocks a file already has, within its size,
//! lets `fdatasync` skip the inode write, a second device write per sync. Bytes after the
//! end of a recycled segment are stale frames of its previous life; they are never
//! read because the zero header comes first and frame sequence numbers must follow
//! each other exactly (a stale frame's number is always lower).
//!
//! Invariants:
//! - **Durable**: when [`Wal::append`] returns `Ok`, the record's frame has been
//!   written and `fdatasync`ed (with `sync = "always"`), and the record has been handed
//!   to the [`Applier`] (so it is already visible to queries).
//! - Records are applied in sequence order, exactly once per process lifetime; after a
//!   restart [`Wal::open`] replays every surviving record, in order, before new ones.
//! - Concurrent appends share one write and one fsync (group commit). The writer
//!   thread applies each durable group itself, in sequence order, before it gathers
//!   the next: appends that arrive meanwhile queue up and form the next group. (A
//!   separate applier thread, pipelined with the next sync, cost a thread wake-up per
//!   group; on two virtual cores that was more than the overlap gained.)
//! - A frame that is incomplete or fails its CRC at the end of the newest segment is a
//!   torn write from a crash: replay stops there and the segment is cut back to the
//!   last good frame. It is never half-read.
//! - On a write or sync error nothing in the failed group is acknowledged, the segment
//!   is cut back to its last good frame, and the next group tries again; the WAL
//!   recovers by itself when the disk does.
//! - Segments are deleted only through [`Wal::release`], after the flusher committed
//!   the records they hold.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::model::Entry;
use crate::telemetry::metrics::Histogram;
use codec::DecodeError;

pub mod codec;
mod frame;
mod replay;
mod spares;
#[cfg(test)]
mod tests;
mod writer;

use frame::*;
pub(crate) use replay::read_only_replay;
use replay::*;
use spares::Spares;
pub(crate) use writer::DEFAULT_COMMIT_DELAY;
use writer::*;

/// When an append is acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Acknowledge only after `fdatasync` (the default).
    Always,
    /// Acknowledge after `write`; sync about once a second. A machine crash may lose
    /// the last second of acknowledged records.
    None,
}

/// Where and how the WAL writes.
#[derive(Debug, Clone)]
pub(crate) struct WalConfig {
    pub dir: PathBuf,
    pub sync: SyncMode,
    /// A segment is closed and a new one started past this size.
    pub segment_max_bytes: u64,
    /// Under concurrent load, consecutive group writes are spaced at least this far
    /// apart, so that more appends share each sync (zero: never wait).
    pub commit_delay: Duration,
}

/// Errors of the WAL.
#[derive(Debug, Error, Clone)]
pub enum WalError {
    #[error("write-ahead log I/O error on {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path} is not a hookscope WAL segment (bad magic); move it out of the wal directory")]
    BadMagic { path: PathBuf },
    #[error(
        "WAL record {seq} in {path} (offset {offset}) passes its checksum but this build cannot decode it: {reason}. Nothing was cut; {advice}"
    )]
    Undecodable {
        path: PathBuf,
        seq: u64,
        offset: usize,
        reason: String,
        advice: &'static str,
    },
    #[error(
        "the write-ahead log stopped after an internal error ({0}); records already acknowledged are safe in the WAL; restart hookscope"
    )]
    Fatal(String),
    #[error("the write-ahead log is shut down")]
    Closed,
}

impl WalError {
    fn io(path: &Path, err: io::Error) -> Self {
        WalError::Io {
            path: path.to_path_buf(),
            message: err.to_string(),
        }
    }
}

/// Receives records once they are durable, in sequence order, on the WAL thread.
pub(crate) trait Applier: Send + 'static {
    /// What an append's caller gets back for its record.
    type Output: Send + 'static;
    /// Applies a durable group; returns one output per record, in order.
    fn apply(&mut self, records: &[(u64, Entry)]) -> Vec<Self::Output>;
    /// Applies a record found in the WAL on open (written before a restart).
    fn replay(&mut self, seq: u64, entry: Entry);
    /// Called once every surviving record has been replayed.
    fn replay_done(&mut self) {}
    /// Called when a segment is closed by [`Wal::rotate`]: every record up to and
    /// including `through` has been applied and none after it.
    fn cut(&mut self, through: u64);
}

/// A record handed to [`Wal::append`], encoded by the caller (off the WAL thread).
pub(crate) struct Pending {
    pub entry: Entry,
    pub payload: Vec<u8>,
}

impl Pending {
    pub fn new(entry: Entry) -> Self {
        let payload = entry.encode();
        Self { entry, payload }
    }
}

/// An appended record: its sequence number and what the applier said of it.
pub(crate) struct Committed<T> {
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the engine needs only `applied`")
    )]
    pub seq: u64,
    pub applied: T,
    /// The record itself, handed back so that its memory is freed on the appending
    /// thread: a block freed by another thread costs the allocator a cross-thread
    /// free and a later collection, a measurable share of the server's CPU at full
    /// load (`benches/RESULTS.md`).
    #[expect(dead_code, reason = "held only to be dropped by the appending thread")]
    pub record: Pending,
}

enum Request<T> {
    Append {
        pending: Pending,
        reply: oneshot::Sender<Result<Committed<T>, WalError>>,
    },
    Rotate {
        reply: oneshot::Sender<Result<u64, WalError>>,
    },
    Release {
        through: u64,
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Once a second in `sync = "none"` mode: sync what was written since the last.
    Tick,
}

/// Health and counters shared with the rest of the server.
#[derive(Debug, Default)]
pub struct WalStatus {
    degraded: AtomicBool,
    /// Set once the applier failed: the WAL accepts nothing more until a restart.
    fatal: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
    last_seq: AtomicU64,
    syncs: AtomicU64,
    sync_micros: AtomicU64,
    segments: AtomicU64,
    /// Syncs that failed after their records were acknowledged (`sync = "none"`).
    sync_failures: AtomicU64,
    groups: AtomicU64,
    records: AtomicU64,
    /// Duration of each fdatasync.
    pub sync_seconds: Histogram,
}

impl WalStatus {
    /// True while the last write or sync failed and none has succeeded since.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }
    /// Why the WAL stopped for good (until a restart), if it did: the applier failed
    /// on a durable record, so the records after it could not be applied in order.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().clone()
    }
    /// The last I/O error, if the WAL is degraded.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }
    /// The highest sequence number written.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Relaxed)
    }
    /// Number of fsyncs and their total duration in microseconds.
    pub fn sync_stats(&self) -> (u64, u64) {
        (
            self.syncs.load(Ordering::Relaxed),
            self.sync_micros.load(Ordering::Relaxed),
        )
    }
    /// Syncs that failed after their records were acknowledged (`sync = "none"`):
    /// each means records may be lost if the machine crashes.
    pub fn sync_failures(&self) -> u64 {
        self.sync_failures.load(Ordering::Relaxed)
    }
    /// Segments on disk.
    pub fn segments(&self) -> u64 {
        self.segments.load(Ordering::Relaxed)
    }
    /// Group commits and records written so far.
    pub fn groups_and_records(&self) -> (u64, u64) {
        (
            self.groups.load(Ordering::Relaxed),
            self.records.load(Ordering::Relaxed),
        )
    }
}

/// What [`Wal::open`] found on disk.
#[derive(Debug, Default, Clone)]
pub struct ReplaySummary {
    pub segments: usize,
    pub records: u64,
    pub last_seq: u64,
    /// Bytes cut from the end of the newest segment (a torn write).
    pub torn_bytes_cut: u64,
    /// Problems in older segments (corruption, not a torn tail).
    pub corrupt: Vec<String>,
}

/// Handle to the WAL writer thread. Cheap to clone.
pub(crate) struct Wal<T> {
    tx: mpsc::Sender<Request<T>>,
    status: Arc<WalStatus>,
}

impl<T> Clone for Wal<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            status: Arc::clone(&self.status),
        }
    }
}

struct Segment {
    first_seq: u64,
    last_seq: u64,
    path: PathBuf,
}

impl<T: Send + 'static> Wal<T> {
    /// Opens the WAL in `config.dir`: hands every surviving record to
    /// [`Applier::replay`] (in order, torn tail cut), then starts the writer thread,
    /// which hands new records to [`Applier::apply`].
    ///
    /// New records are numbered after every sequence number ever used: after the
    /// newest record, after the newest segment's name, and after `committed_through`
    /// (the highest sequence already committed elsewhere; the WAL may hold nothing
    /// once everything is flushed). Sequence numbers never repeat.
    pub fn open<A>(
        config: WalConfig,
        committed_through: u64,
        mut applier: A,
    ) -> Result<(Self, ReplaySummary), WalError>
    where
        A: Applier<Output = T>,
    {
        crate::sys::create_dir_all_durable(&config.dir)
            .map_err(|e| WalError::io(&config.dir, e))?;
        let mut replaying = 0;
        let replayed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let result = read_dir_records(&config.dir, true, &mut |seq, entry| {
                replaying = seq;
                applier.replay(seq, entry)
            });
            applier.replay_done();
            result
        }));
        let (summary, mut segments) = match replayed {
            Ok(result) => result?,
            Err(panic) => {
                return Err(WalError::Fatal(format!(
                    "replaying WAL record {replaying} failed: {}; the server cannot start past it. Report this bug; to start anyway, move the segment holding record {replaying} out of {} (its records are then lost)",
                    panic_message(&*panic),
                    config.dir.display()
                )));
            }
        };
        let status = Arc::new(WalStatus::default());
        let used_through = segments
            .iter()
            .map(|s| s.last_seq)
            .chain([summary.last_seq, committed_through])
            .max()
            .unwrap_or(0);
        status.last_seq.store(used_through, Ordering::Relaxed);
        let first_seq = used_through + 1;
        let mut spares = Spares::open(&config.dir, config.segment_max_bytes);
        let active = ActiveSegment::create(&config.dir, first_seq, spares.take())?;
        // An empty segment left by a crash right after rotation is reused, not listed twice.
        segments.retain(|s| s.first_seq != first_seq);
        segments.push(Segment {
            first_seq,
            last_seq: used_through,
            path: active.path.clone(),
        });
        status
            .segments
            .store(segments.len() as u64, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(16 * 1024);
        let thread_error = |e: io::Error| WalError::Io {
            path: PathBuf::from("<thread>"),
            message: e.to_string(),
        };
        let writer = Writer {
            config,
            status: Arc::clone(&status),
            segments,
            active,
            next_seq: first_seq,
            spares,
            last_group: 0,
            last_write: Instant::now(),
            applier,
            last_sync: Instant::now(),
            unsynced: false,
        };
        let sync_mode = writer.config.sync;
        std::thread::Builder::new()
            .name("hookscope-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(thread_error)?;
        if sync_mode == SyncMode::None {
            let ticks = tx.clone();
            std::thread::Builder::new()
                .name("hookscope-wal-tick".into())
                .spawn(move || {
                    while ticks.blocking_send(Request::Tick).is_ok() {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                })
                .map_err(thread_error)?;
        }
        Ok((Self { tx, status }, summary))
    }

    /// Appends one record. **When this returns `Ok`, the record is durable** (fsynced,
    /// unless `sync = "none"`) and has been applied. On `Err` it was not acknowledged.
    pub async fn append(&self, pending: Pending) -> Result<Committed<T>, WalError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Append { pending, reply })
            .await
            .map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)?
    }

    /// Closes the current segment and starts a new one. Returns the last sequence
    /// number in the closed segments; the applier's `cut` ran with it.
    pub async fn rotate(&self) -> Result<u64, WalError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Rotate { reply })
            .await
            .map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)?
    }

    /// Deletes closed segments whose records all have `seq <= through`. Call only
    /// once those records are committed elsewhere.
    pub async fn release(&self, through: u64) -> Result<(), WalError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Release { through, reply })
            .await
            .map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)
    }

    /// Syncs and stops the writer thread; later appends fail with `Closed`.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    pub fn status(&self) -> &Arc<WalStatus> {
        &self.status
    }
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
