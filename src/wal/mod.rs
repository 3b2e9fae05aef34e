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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::model::{DecodeError, Entry};
use crate::telemetry::metrics::Histogram;

mod spares;
use spares::Spares;

const MAGIC: &[u8; 8] = b"HKSWAL01";
const FRAME_HEADER: usize = 4 + 4 + 8 + 1;
/// Written after the last frame of every write: the end of the log.
const TERMINATOR: [u8; FRAME_HEADER] = [0; FRAME_HEADER];
/// Once the active segment is this fraction full (1/N), the next spare is prepared
/// (early enough to be ready at the ingest rates measured, late enough that a server
/// that writes little never prepares one).
const PREPARE_AHEAD_AT: u64 = 16;
/// Frames larger than this are corruption, not data (the body limit is far below).
const MAX_FRAME: usize = 1 << 30;
/// Most records one group commit writes at once.
const MAX_GROUP: usize = 4096;
/// Under concurrent load, a group is written no sooner than this after the previous
/// group's write began (see [`Writer::commit_delay`]). Off by default: groups form by
/// themselves from the appends that arrive during the previous sync. In paired
/// benchmark runs (2026-11-23) 300 µs tripled the records per group and saved ~10%
/// of the CPU per request in the open loop, but did not lower its p99, raised its
/// p50 by ~0.2 ms and cost 14% of the closed-loop rate (`benches/RESULTS.md`).
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::ZERO;
/// The commit delay applies only when the previous group had at least this many
/// records (a lone client never waits)…
const COMMIT_DELAY_MIN_GROUP: usize = 2;
/// …and not once the group has this many (it is large enough to be worth its sync).
const COMMIT_DELAY_MAX_GROUP: usize = 64;

/// When an append is acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
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
pub struct WalConfig {
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
pub trait Applier: Send + 'static {
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
pub struct Pending {
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
pub struct Committed<T> {
    pub seq: u64,
    pub applied: T,
    /// The record itself, handed back so that its memory is freed on the appending
    /// thread: a block freed by another thread costs the allocator a cross-thread
    /// free and a later collection (measured: ~3% of the server's CPU at full load).
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

/// A group commit taking this long is logged (at debug level) with where the time went.
const SLOW_GROUP: Duration = Duration::from_millis(5);

/// Logs (at debug level) a writer step that held up group commits for long.
fn log_slow(step: &'static str, started: Instant) {
    let took = started.elapsed();
    if took >= SLOW_GROUP {
        tracing::debug!(step, ms = took.as_secs_f64() * 1e3, "slow WAL step");
    }
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
pub struct Wal<T> {
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

/// Reads every record under `dir` in order without changing anything (for offline
/// tools reading a live or crashed lake). A torn tail is skipped, not cut.
pub fn read_only_replay(
    dir: &Path,
    mut f: impl FnMut(u64, Entry),
) -> Result<ReplaySummary, WalError> {
    if !dir.exists() {
        return Ok(ReplaySummary::default());
    }
    read_dir_records(dir, false, &mut f).map(|(s, _)| s)
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| WalError::io(dir, e))? {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".wal") else {
            continue;
        };
        if let Ok(first) = stem.parse::<u64>() {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn read_dir_records(
    dir: &Path,
    repair: bool,
    f: &mut dyn FnMut(u64, Entry),
) -> Result<(ReplaySummary, Vec<Segment>), WalError> {
    let listed = list_segments(dir)?;
    let mut summary = ReplaySummary {
        segments: listed.len(),
        ..Default::default()
    };
    let mut segments = Vec::new();
    let count = listed.len();
    for (i, (first_seq, path)) in listed.into_iter().enumerate() {
        let newest = i + 1 == count;
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|mut file| file.read_to_end(&mut data))
            .map_err(|e| WalError::io(&path, e))?;
        if data.len() < MAGIC.len() || data.iter().all(|b| *b == 0) {
            // A segment created right before a crash, magic not yet durable; or a
            // zero-filled spare renamed into place whose header write failed.
            if repair {
                rewrite_magic(&path)?;
            }
            segments.push(Segment {
                first_seq,
                last_seq: first_seq.saturating_sub(1),
                path,
            });
            continue;
        }
        if &data[..MAGIC.len()] != MAGIC {
            return Err(WalError::BadMagic { path });
        }
        let mut pos = MAGIC.len();
        let mut last_seq = first_seq.saturating_sub(1);
        let mut problem = None;
        let mut clean_end = false;
        while pos < data.len() {
            match parse_frame(&data[pos..]) {
                Frame::Record {
                    seq,
                    kind,
                    payload,
                    len,
                } => {
                    let expected = last_seq + 1;
                    if seq < expected {
                        // A stale frame of a recycled segment's previous life.
                        clean_end = true;
                        break;
                    }
                    if seq > expected && last_seq >= first_seq {
                        problem = Some(format!("sequence gap: expected {expected}, found {seq}"));
                        break;
                    }
                    // A frame that passes its checksum was written whole: failing to
                    // decode it is never a torn write, and cutting it would destroy
                    // acknowledged records. Stop and say why.
                    let entry = Entry::decode(kind, payload).map_err(|e| {
                        let advice = match e {
                            DecodeError::UnknownKind(_) => {
                                "start the hookscope version that wrote it (a newer one)"
                            }
                            _ => {
                                "start the hookscope version that wrote it, and report this as a bug with the segment file"
                            }
                        };
                        WalError::Undecodable {
                            path: path.clone(),
                            seq,
                            offset: pos,
                            reason: e.to_string(),
                            advice,
                        }
                    })?;
                    f(seq, entry);
                    summary.records += 1;
                    summary.last_seq = seq;
                    last_seq = seq;
                    pos += len;
                }
                Frame::End => {
                    clean_end = true;
                    break;
                }
                Frame::Bad(why) => {
                    problem = Some(why);
                    break;
                }
            }
        }
        let tail = if clean_end {
            0
        } else {
            (data.len() - pos) as u64
        };
        if tail > 0 {
            if newest {
                // A torn write: the crash happened while this frame was being written.
                tracing::warn!(
                    segment = %path.display(),
                    offset = pos,
                    bytes = tail,
                    reason = problem.as_deref().unwrap_or("zero fill"),
                    "cutting torn tail of the newest WAL segment"
                );
                summary.torn_bytes_cut += tail;
                if repair {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| WalError::io(&path, e))?;
                    file.set_len(pos as u64)
                        .and_then(|_| file.sync_all())
                        .map_err(|e| WalError::io(&path, e))?;
                }
            } else {
                let msg = format!(
                    "{}: {} bytes unreadable at offset {} ({}); records after it in this segment are skipped",
                    path.display(),
                    tail,
                    pos,
                    problem.as_deref().unwrap_or("unknown")
                );
                tracing::error!("{msg}");
                summary.corrupt.push(msg);
            }
        }
        segments.push(Segment {
            first_seq,
            last_seq,
            path,
        });
    }
    Ok((summary, segments))
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn rewrite_magic(path: &Path) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| WalError::io(path, e))?;
    file.write_all_at(MAGIC, 0)
        .and_then(|_| file.sync_all())
        .map_err(|e| WalError::io(path, e))
}

enum Frame<'a> {
    Record {
        seq: u64,
        kind: u8,
        payload: &'a [u8],
        len: usize,
    },
    /// Zero fill or nothing left: the clean end of the log.
    End,
    Bad(String),
}

fn parse_frame(buf: &[u8]) -> Frame<'_> {
    if buf.len() < FRAME_HEADER {
        if buf.iter().all(|b| *b == 0) {
            return Frame::End;
        }
        return Frame::Bad("incomplete frame header".into());
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len == 0 && crc == 0 {
        // The terminator: what follows is stale (a recycled segment) or zeros.
        return Frame::End;
    }
    if len > MAX_FRAME {
        return Frame::Bad(format!("frame length {len} is impossible"));
    }
    let total = FRAME_HEADER + len;
    if buf.len() < total {
        return Frame::Bad(format!(
            "frame needs {total} bytes, only {} present",
            buf.len()
        ));
    }
    let body = &buf[8..total];
    if crc32fast::hash(body) != crc {
        return Frame::Bad("checksum mismatch".into());
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&buf[8..16]);
    Frame::Record {
        seq: u64::from_le_bytes(seq),
        kind: buf[16],
        payload: &buf[FRAME_HEADER..total],
        len: total,
    }
}

fn encode_frame(out: &mut Vec<u8>, seq: u64, kind: u8, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

struct ActiveSegment {
    file: File,
    path: PathBuf,
    /// End of the last frame known to be written (and synced, in `always` mode).
    good: u64,
}

impl ActiveSegment {
    /// A new segment starting at `first_seq`, reusing a spare file when there is one.
    fn create(dir: &Path, first_seq: u64, spare: Option<PathBuf>) -> Result<Self, WalError> {
        let path = dir.join(format!("{first_seq:020}.wal"));
        let reused = match spare {
            Some(spare) => match fs::rename(&spare, &path) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(spare = %spare.display(), error = %e, "could not reuse a spare WAL segment");
                    false
                }
            },
            None => false,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!reused)
            .open(&path)
            .map_err(|e| WalError::io(&path, e))?;
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&TERMINATOR);
        if let Err(e) = file.write_all_at(&head, 0).and_then(|_| file.sync_all()) {
            // Best effort: a file under a segment's name without a header is read as
            // an empty segment at the next start; better not to leave it at all.
            let _ = fs::remove_file(&path);
            return Err(WalError::io(&path, e));
        }
        crate::sys::sync_dir(dir).map_err(|e| WalError::io(&path, e))?;
        Ok(Self {
            file,
            path,
            good: MAGIC.len() as u64,
        })
    }
}

struct Writer<A: Applier> {
    config: WalConfig,
    status: Arc<WalStatus>,
    /// Closed segments, oldest first, then the active one last.
    segments: Vec<Segment>,
    active: ActiveSegment,
    next_seq: u64,
    /// Segment files for reuse (released ones, and one prepared ahead).
    spares: Spares,
    /// Records in the previous group (drives the commit delay).
    last_group: usize,
    /// When the previous group's write began (drives the commit delay).
    last_write: Instant,
    /// Takes durable groups and cuts, in sequence order.
    applier: A,
    last_sync: Instant,
    unsynced: bool,
}

type AppendReply<T> = oneshot::Sender<Result<Committed<T>, WalError>>;

impl<A: Applier> Writer<A> {
    fn run(mut self, mut rx: mpsc::Receiver<Request<A::Output>>) {
        // The commit delay sleeps for a few hundred microseconds; Linux's default
        // timer slack (50 µs) would add a fifth to it.
        #[cfg(target_os = "linux")]
        // SAFETY: prctl with integer arguments; sets this thread's timer slack (ns).
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 5_000);
        }
        let mut frames = Vec::with_capacity(1 << 20);
        let mut group: Vec<(u64, Entry)> = Vec::with_capacity(MAX_GROUP);
        let mut replies: Vec<(AppendReply<A::Output>, Vec<u8>)> = Vec::with_capacity(MAX_GROUP);
        let mut deferred: Option<Request<A::Output>> = None;
        loop {
            let first = match deferred.take() {
                Some(r) => r,
                None => match self.next_request(&mut rx) {
                    Some(r) => r,
                    None => break,
                },
            };
            let mut next = Some(first);
            let mut waited = false;
            // Gather consecutive appends into one group; a control request ends it.
            while let Some(req) = next.take() {
                match req {
                    Request::Append { pending, reply } => {
                        let seq = self.next_seq + group.len() as u64;
                        encode_frame(&mut frames, seq, pending.entry.kind(), &pending.payload);
                        group.push((seq, pending.entry));
                        replies.push((reply, pending.payload));
                        if group.len() < MAX_GROUP && frames.len() < (8 << 20) {
                            next = rx.try_recv().ok();
                            if next.is_none() {
                                next = self.commit_delay(&mut rx, group.len(), &mut waited);
                            }
                        }
                    }
                    other => deferred = Some(other),
                }
            }
            self.last_group = group.len();
            if !group.is_empty() {
                self.commit_group(&mut frames, &mut group, &mut replies);
            }
            match deferred.take() {
                Some(Request::Rotate { reply }) => {
                    let started = Instant::now();
                    let result = self.check_fatal().and_then(|()| self.rotate());
                    match result {
                        Ok(through) => {
                            let cut =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    self.applier.cut(through)
                                }));
                            match cut {
                                Ok(()) => {
                                    let _ = reply.send(Ok(through));
                                }
                                Err(panic) => {
                                    let err = self.stop_for_good("cutting the buffer", &*panic);
                                    let _ = reply.send(Err(err));
                                }
                            }
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                    log_slow("rotate", started);
                }
                Some(Request::Release { through, reply }) => {
                    let started = Instant::now();
                    // Once stopped for good, nothing leaves the WAL: it is what the
                    // next start recovers from.
                    if self.check_fatal().is_ok() {
                        self.release(through);
                    }
                    let _ = reply.send(());
                    log_slow("release", started);
                }
                Some(Request::Shutdown { reply }) => {
                    self.sync_if_needed(true);
                    // Everything before is applied: groups are applied as they commit.
                    let _ = reply.send(());
                    break;
                }
                Some(Request::Tick) => self.sync_if_needed(true),
                Some(append @ Request::Append { .. }) => deferred = Some(append),
                None => {}
            }
        }
        self.sync_if_needed(true);
    }

    /// Waits for the next request. (In `sync = "none"` mode a ticker thread sends
    /// `Tick` once a second, so unsynced writes are synced within about a second.)
    fn next_request(
        &mut self,
        rx: &mut mpsc::Receiver<Request<A::Output>>,
    ) -> Option<Request<A::Output>> {
        rx.blocking_recv()
    }

    fn commit_group(
        &mut self,
        frames: &mut Vec<u8>,
        group: &mut Vec<(u64, Entry)>,
        replies: &mut Vec<(AppendReply<A::Output>, Vec<u8>)>,
    ) {
        let started = Instant::now();
        self.last_write = started;
        let bytes = frames.len();
        let result = self
            .check_fatal()
            .and_then(|()| self.write_and_sync(frames));
        frames.clear();
        match result {
            Ok(()) => {
                let synced = started.elapsed();
                let last = group.last().map(|(s, _)| *s).unwrap_or(self.next_seq);
                self.next_seq = last + 1;
                self.status.groups.fetch_add(1, Ordering::Relaxed);
                self.status
                    .records
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                self.status.last_seq.store(last, Ordering::Relaxed);
                if let Some(seg) = self.segments.last_mut() {
                    seg.last_seq = last;
                }
                let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.applier.apply(group)
                }));
                let outputs = match applied {
                    Ok(outputs) => outputs,
                    Err(panic) => {
                        // The group is durable but not applied; applying later records
                        // out of order would derive wrong values. Stop accepting.
                        let err = self.stop_for_good("applying a durable group", &*panic);
                        for (reply, _) in replies.drain(..) {
                            let _ = reply.send(Err(err.clone()));
                        }
                        group.clear();
                        return;
                    }
                };
                let applied_at = started.elapsed();
                let records = group.len();
                for (((seq, entry), (reply, payload)), applied) in
                    group.drain(..).zip(replies.drain(..)).zip(outputs)
                {
                    let record = Pending { entry, payload };
                    let _ = reply.send(Ok(Committed {
                        seq,
                        applied,
                        record,
                    }));
                }
                let took = started.elapsed();
                if took >= SLOW_GROUP {
                    tracing::debug!(
                        records,
                        bytes,
                        write_sync_ms = synced.as_secs_f64() * 1e3,
                        apply_ms = (applied_at - synced).as_secs_f64() * 1e3,
                        reply_ms = (took - applied_at).as_secs_f64() * 1e3,
                        "slow WAL group commit"
                    );
                }
                if self.active.good >= self.config.segment_max_bytes {
                    let started = Instant::now();
                    if let Err(e) = self.rotate() {
                        tracing::warn!(error = %e, "WAL segment rotation failed; continuing in the current segment");
                    }
                    log_slow("segment full: rotate", started);
                }
                if self.active.good >= self.config.segment_max_bytes / PREPARE_AHEAD_AT {
                    self.spares.prepare_ahead();
                }
            }
            Err(err) => {
                for (reply, _) in replies.drain(..) {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
        group.clear();
    }

    fn write_and_sync(&mut self, frames: &mut Vec<u8>) -> Result<(), WalError> {
        if self.status.is_degraded() {
            // Cut whatever a failed write may have left before writing again.
            if let Err(e) = self.active.file.set_len(self.active.good) {
                return Err(self.fail(e));
            }
        }
        let frames_len = frames.len() as u64;
        frames.extend_from_slice(&TERMINATOR);
        if let Err(e) = self.active.file.write_all_at(frames, self.active.good) {
            return Err(self.fail(e));
        }
        match self.config.sync {
            SyncMode::Always => {
                let t = Instant::now();
                if let Err(e) = self.active.file.sync_data() {
                    return Err(self.fail(e));
                }
                self.record_sync(t);
            }
            SyncMode::None => {
                self.unsynced = true;
                self.sync_if_needed(false);
            }
        }
        self.active.good += frames_len;
        if self.status.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("write-ahead log recovered; accepting deliveries again");
            *self.status.last_error.lock() = None;
        }
        Ok(())
    }

    fn record_sync(&mut self, started: Instant) {
        let took = started.elapsed();
        self.status.syncs.fetch_add(1, Ordering::Relaxed);
        self.status
            .sync_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.status.sync_seconds.observe(took.as_secs_f64());
        self.last_sync = Instant::now();
        self.unsynced = false;
    }

    /// With `sync = "none"`: syncs what was written when asked to or once a second.
    fn sync_if_needed(&mut self, force: bool) {
        if !self.unsynced {
            return;
        }
        if force || self.last_sync.elapsed() >= Duration::from_secs(1) {
            let t = Instant::now();
            let synced = crate::sys::failpoint::error("wal_sync")
                .and_then(|()| self.active.file.sync_data());
            match synced {
                Ok(()) => self.record_sync(t),
                Err(e) => self.unsynced_failure(e),
            }
        }
    }

    /// A failed sync of records already written and acknowledged (`sync = "none"`).
    /// They are in the file and stay there (cutting them would lose them for sure),
    /// and the sync is retried; but the kernel may have dropped the failed pages'
    /// dirty state, so a machine crash can lose them: that is logged and counted
    /// (`hookscope_wal_sync_failures_total`), never passed over.
    fn unsynced_failure(&mut self, err: io::Error) {
        let err = WalError::io(&self.active.path, err);
        self.status.sync_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            error = %err,
            "fdatasync of the write-ahead log failed (sync = \"none\"): deliveries acknowledged since the last successful sync may be lost if the machine crashes; check the disk"
        );
        *self.status.last_error.lock() = Some(err.to_string());
        self.last_sync = Instant::now();
    }

    /// The commit delay: with no append waiting, decides whether the group being
    /// gathered should wait for more before it is written and synced, and if so
    /// sleeps once, until `commit_delay` after the previous group's write began, and
    /// takes what arrived meanwhile.
    ///
    /// Every sync costs about the same CPU whatever it covers (~45 µs on the
    /// development VM, mostly virtualisation exits), so at a moderate, steady load,
    /// where appends arrive one by one and each group holds a few, spacing the syncs
    /// saves CPU for the requests themselves. It never waits for a lone client (the
    /// previous group held one record), nor for a group that is already large, nor
    /// under heavy load, where a group's write and sync already take longer than the
    /// delay. One sleep, not a polling loop: each wake-up costs as much as it saves.
    fn commit_delay(
        &self,
        rx: &mut mpsc::Receiver<Request<A::Output>>,
        gathered: usize,
        waited: &mut bool,
    ) -> Option<Request<A::Output>> {
        let delay = self.config.commit_delay;
        if *waited
            || delay.is_zero()
            || self.last_group < COMMIT_DELAY_MIN_GROUP
            || gathered >= COMMIT_DELAY_MAX_GROUP
        {
            return None;
        }
        *waited = true;
        let left = (self.last_write + delay).saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(left);
        rx.try_recv().ok()
    }

    /// `Err(Fatal)` once the WAL has stopped for good.
    fn check_fatal(&self) -> Result<(), WalError> {
        match self.status.fatal() {
            Some(why) => Err(WalError::Fatal(why)),
            None => Ok(()),
        }
    }

    /// The applier panicked: from now on every append, rotation and release is
    /// refused (readiness reports it), so nothing is applied out of order and nothing
    /// is released; the durable records are recovered by the next start.
    fn stop_for_good(&mut self, step: &str, panic: &(dyn std::any::Any + Send)) -> WalError {
        let why = format!("{step} failed: {}", panic_message(panic));
        tracing::error!(
            reason = %why,
            "the write-ahead log stopped accepting records after an internal error; acknowledged records are safe; restart hookscope (and report this as a bug)"
        );
        *self.status.fatal.lock() = Some(why.clone());
        WalError::Fatal(why)
    }

    fn fail(&mut self, err: io::Error) -> WalError {
        let err = WalError::io(&self.active.path, err);
        if !self.status.degraded.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %err, "write-ahead log write failed; answering 503 until it recovers");
        }
        *self.status.last_error.lock() = Some(err.to_string());
        // Best effort: drop any partial frame now; retried before the next write.
        let _ = self.active.file.set_len(self.active.good);
        err
    }

    fn rotate(&mut self) -> Result<u64, WalError> {
        let through = self.next_seq - 1;
        self.sync_if_needed(true);
        if self.active.good > MAGIC.len() as u64 {
            let next = ActiveSegment::create(&self.config.dir, self.next_seq, self.spares.take())?;
            self.active = next;
            self.segments.push(Segment {
                first_seq: self.next_seq,
                last_seq: through,
                path: self.active.path.clone(),
            });
            self.status
                .segments
                .store(self.segments.len() as u64, Ordering::Relaxed);
        }
        Ok(through)
    }

    fn release(&mut self, through: u64) {
        let active_path = self.active.path.clone();
        let mut removed = false;
        let mut released = Vec::new();
        self.segments.retain(|seg| {
            let keep = seg.path == active_path || seg.last_seq > through;
            if !keep {
                released.push(seg.path.clone());
            }
            keep
        });
        for path in released {
            // Kept as spares (as many as the next cycle will likely need): rewriting
            // allocated blocks makes fdatasync cheap.
            let outcome = self.spares.keep(&path);
            match outcome {
                Ok(()) => removed = true,
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "could not release a WAL segment");
                }
            }
        }
        if removed {
            self.spares.sync_dir_later();
        }
        self.spares.released();
        self.status
            .segments
            .store(self.segments.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::spares::{MIN_SPARES, file_len, list_spares};
    use super::*;
    use crate::model::tests::sample_delivery;

    /// Collects replayed records into a shared list.
    #[derive(Default, Clone)]
    struct Collect(Arc<Mutex<Vec<(u64, Entry)>>>);
    impl Applier for Collect {
        type Output = u64;
        fn apply(&mut self, records: &[(u64, Entry)]) -> Vec<u64> {
            records.iter().map(|(s, _)| *s).collect()
        }
        fn replay(&mut self, seq: u64, entry: Entry) {
            self.0.lock().push((seq, entry));
        }
        fn cut(&mut self, _through: u64) {}
    }

    fn config(dir: &Path) -> WalConfig {
        WalConfig {
            dir: dir.to_path_buf(),
            sync: SyncMode::Always,
            segment_max_bytes: 1 << 20,
            commit_delay: DEFAULT_COMMIT_DELAY,
        }
    }

    fn entry(i: usize) -> Entry {
        let mut d = sample_delivery();
        d.id = format!("id-{i}");
        Entry::Delivery(Box::new(d))
    }

    /// Appends `n` records from `n` concurrent tasks; their sequence numbers, sorted.
    async fn append_concurrently(wal: &Wal<u64>, n: usize) -> Vec<u64> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let wal = wal.clone();
                tokio::spawn(async move { wal.append(Pending::new(entry(i))).await.unwrap().seq })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort();
        seqs
    }

    /// A new directory with a closed WAL holding records 1..=n; and its newest segment.
    async fn closed_wal(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(config(dir.path()), 0, Collect::default()).unwrap();
        for i in 0..n {
            wal.append(Pending::new(entry(i))).await.unwrap();
        }
        wal.shutdown().await;
        let (_, seg) = list_segments(dir.path()).unwrap().pop().unwrap();
        (dir, seg)
    }

    fn replayed(dir: &Path) -> (Vec<(u64, Entry)>, ReplaySummary) {
        let mut seen = Vec::new();
        let summary = read_only_replay(dir, |s, e| seen.push((s, e))).unwrap();
        (seen, summary)
    }

    #[tokio::test]
    async fn appended_records_replay_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(config(dir.path()), 0, Collect::default()).unwrap();
        let mut seqs = Vec::new();
        for i in 0..10 {
            seqs.push(wal.append(Pending::new(entry(i))).await.unwrap().seq);
        }
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        wal.shutdown().await;
        let collect = Collect::default();
        let (wal, summary) = Wal::open(config(dir.path()), 0, collect.clone()).unwrap();
        let seen = collect.0.lock().clone();
        assert_eq!(summary.records, 10);
        assert_eq!(seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs);
        assert_eq!(seen[3].1, entry(3));
        // New records continue the sequence.
        assert_eq!(wal.append(Pending::new(entry(99))).await.unwrap().seq, 11);
    }

    #[tokio::test]
    async fn concurrent_appends_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(config(dir.path()), 0, Collect::default()).unwrap();
        let seqs = append_concurrently(&wal, 200).await;
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        let (syncs, _) = wal.status().sync_stats();
        assert!(
            syncs < 200,
            "expected group commit to share fsyncs, got {syncs} syncs for 200 appends"
        );
    }

    #[tokio::test]
    async fn a_lone_client_never_waits_for_the_commit_delay() {
        // With a 2 s commit delay, 10 sequential appends would take 20 s if a lone
        // client waited; the delay only applies once groups show concurrent load.
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.commit_delay = Duration::from_secs(2);
        let (wal, _) = Wal::open(cfg, 0, Collect::default()).unwrap();
        let started = Instant::now();
        for i in 0..10 {
            wal.append(Pending::new(entry(i))).await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "sequential appends waited for the commit delay: {:?}",
            started.elapsed()
        );
        // Concurrent appends under the same delay all complete, in sequence.
        let seqs = append_concurrently(&wal, 100).await;
        assert_eq!(seqs, (11..=110).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_steady_stream_of_appends_shares_syncs_under_the_commit_delay() {
        // One append a millisecond, each from its own task: without a delay each
        // group holds about one record (a sync takes well under a millisecond here).
        // With a 20 ms delay, once a burst has shown concurrent load, the groups
        // are spaced 20 ms apart and hold about twenty each.
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.commit_delay = Duration::from_millis(20);
        let (wal, _) = Wal::open(cfg, 0, Collect::default()).unwrap();
        append_concurrently(&wal, 10).await;
        let (groups_before, records_before) = wal.status().groups_and_records();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let wal = wal.clone();
            tasks.push(tokio::spawn(async move {
                wal.append(Pending::new(entry(i))).await.unwrap().seq
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (11..=210).collect::<Vec<_>>());
        let (groups, records) = wal.status().groups_and_records();
        let (groups, records) = (groups - groups_before, records - records_before);
        assert_eq!(records, 200);
        assert!(
            records >= 4 * groups,
            "{records} records in {groups} groups: the commit delay did not gather them"
        );
    }

    #[tokio::test]
    async fn torn_tail_is_cut_and_never_half_read() {
        let (dir, seg) = closed_wal(5).await;
        let full = fs::metadata(&seg).unwrap().len();
        // Simulate a crash in the middle of writing a sixth frame: it lands where the
        // next write goes, over the terminator.
        let good = full - TERMINATOR.len() as u64;
        let mut frame = Vec::new();
        encode_frame(&mut frame, 6, entry(5).kind(), &entry(5).encode());
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        file.write_all_at(&frame[..frame.len() / 2], good).unwrap();
        drop(file);
        let torn_len = fs::metadata(&seg).unwrap().len() - good;

        let (seen, summary) = replayed(dir.path());
        assert_eq!(seen.len(), 5, "read-only replay skips the torn frame");
        assert!(summary.torn_bytes_cut > 0);

        let collect = Collect::default();
        let (wal, summary) = Wal::open(config(dir.path()), 0, collect.clone()).unwrap();
        let seen: Vec<u64> = collect.0.lock().iter().map(|(s, _)| *s).collect();
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        assert_eq!(summary.torn_bytes_cut, torn_len);
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            good,
            "segment cut back to the last good frame"
        );
        assert_eq!(wal.append(Pending::new(entry(6))).await.unwrap().seq, 6);
    }

    #[tokio::test]
    async fn a_whole_record_this_build_cannot_decode_stops_the_open_and_cuts_nothing() {
        // A newer build's record kind, written whole (valid checksum) and followed by
        // more acknowledged records, as that build would have left the segment.
        let (dir, seg) = closed_wal(3).await;
        let good = fs::metadata(&seg).unwrap().len() - TERMINATOR.len() as u64;
        let mut frames = Vec::new();
        encode_frame(&mut frames, 4, 99, b"a record from the future");
        encode_frame(&mut frames, 5, entry(5).kind(), &entry(5).encode());
        frames.extend_from_slice(&TERMINATOR);
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        file.write_all_at(&frames, good).unwrap();
        drop(file);
        let before = fs::read(&seg).unwrap();

        let err = Wal::open(config(dir.path()), 0, Collect::default())
            .err()
            .expect("the open must refuse the segment");
        assert!(matches!(err, WalError::Undecodable { seq: 4, .. }), "{err}");
        assert!(err.to_string().contains("newer"), "{err}");
        assert_eq!(fs::read(&seg).unwrap(), before, "nothing was cut");
        assert!(read_only_replay(dir.path(), |_, _| {}).is_err());
    }

    #[tokio::test]
    async fn an_all_zero_segment_left_by_a_failed_header_write_is_empty() {
        let (dir, _) = closed_wal(3).await;
        // A prepared (zero-filled) spare renamed into place, its header never written.
        fs::write(
            dir.path().join(format!("{:020}.wal", 4)),
            vec![0u8; 64 << 10],
        )
        .unwrap();
        let collect = Collect::default();
        let (wal, summary) = Wal::open(config(dir.path()), 0, collect.clone()).unwrap();
        assert_eq!(collect.0.lock().len(), 3);
        assert!(summary.corrupt.is_empty(), "{:?}", summary.corrupt);
        assert_eq!(wal.append(Pending::new(entry(3))).await.unwrap().seq, 4);
        wal.shutdown().await;
        let (seen, _) = replayed(dir.path());
        assert_eq!(
            seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
    }

    /// Panics when it is asked to apply the record with the given sequence number.
    struct PanicAt(u64);
    impl Applier for PanicAt {
        type Output = u64;
        fn apply(&mut self, records: &[(u64, Entry)]) -> Vec<u64> {
            records
                .iter()
                .map(|(s, _)| {
                    assert_ne!(*s, self.0, "applier bug");
                    *s
                })
                .collect()
        }
        fn replay(&mut self, seq: u64, _entry: Entry) {
            assert_ne!(seq, self.0, "applier bug");
        }
        fn cut(&mut self, _through: u64) {}
    }

    #[tokio::test]
    async fn a_panicking_applier_stops_the_wal_visibly_and_releases_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(config(dir.path()), 0, PanicAt(3)).unwrap();
        for i in 0..2 {
            wal.append(Pending::new(entry(i))).await.unwrap();
        }
        let through = wal.rotate().await.unwrap();
        let err = wal.append(Pending::new(entry(2))).await.err().unwrap();
        assert!(matches!(err, WalError::Fatal(_)), "{err}");
        assert!(wal.status().fatal().unwrap().contains("applier bug"));
        // Every later request is refused, nothing is released, and nothing hangs.
        assert!(matches!(
            wal.append(Pending::new(entry(3))).await,
            Err(WalError::Fatal(_))
        ));
        assert!(matches!(wal.rotate().await, Err(WalError::Fatal(_))));
        wal.release(through).await.unwrap();
        wal.shutdown().await;
        let (seen, _) = replayed(dir.path());
        assert_eq!(
            seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![1, 2, 3],
            "the durable record stays for the next start"
        );
        // Replaying the same record with the same bug is an error, not a crash.
        let err = Wal::open(config(dir.path()), 0, PanicAt(3)).err().unwrap();
        assert!(err.to_string().contains("replaying WAL record 3"), "{err}");
    }

    #[tokio::test]
    async fn sequence_numbers_never_repeat_after_everything_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(config(dir.path()), 0, Collect::default()).unwrap();
        for i in 0..3 {
            wal.append(Pending::new(entry(i))).await.unwrap();
        }
        let through = wal.rotate().await.unwrap();
        wal.release(through).await.unwrap();
        wal.shutdown().await;
        // Only an empty segment is left: numbering continues after its name.
        let (wal, _) = Wal::open(config(dir.path()), 0, Collect::default()).unwrap();
        assert_eq!(wal.append(Pending::new(entry(3))).await.unwrap().seq, 4);
        wal.shutdown().await;
        // The WAL directory is gone entirely: the committed floor still holds.
        std::fs::remove_dir_all(dir.path()).unwrap();
        let (wal, _) = Wal::open(config(dir.path()), 40, Collect::default()).unwrap();
        assert_eq!(wal.append(Pending::new(entry(4))).await.unwrap().seq, 41);
    }

    #[tokio::test]
    async fn recycled_segments_never_yield_stale_frames() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(config(dir.path()), 0, Collect::default()).unwrap();
        // Fill a segment with long records, release it (it becomes a spare), then
        // write fewer, shorter records into the recycled file.
        for i in 0..20 {
            wal.append(Pending::new(entry(i))).await.unwrap();
        }
        let through = wal.rotate().await.unwrap();
        wal.append(Pending::new(entry(20))).await.unwrap();
        wal.release(through).await.unwrap();
        assert_eq!(list_spares(dir.path()).len(), 1);
        let through = wal.rotate().await.unwrap();
        assert!(list_spares(dir.path()).is_empty(), "the spare was reused");
        wal.append(Pending::new(entry(21))).await.unwrap();
        wal.release(through).await.unwrap();
        wal.shutdown().await;
        let (seen, summary) = replayed(dir.path());
        assert_eq!(seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![22]);
        assert!(summary.corrupt.is_empty(), "{:?}", summary.corrupt);
        assert_eq!(summary.torn_bytes_cut, 0);
        // Even without the terminator, a stale frame's sequence number gives it away.
        let (_, seg) = list_segments(dir.path()).unwrap().pop().unwrap();
        let mut data = fs::read(&seg).unwrap();
        let good = data
            .windows(TERMINATOR.len())
            .rposition(|w| w == TERMINATOR)
            .unwrap();
        data[good] = 0xff;
        fs::write(&seg, &data).unwrap();
        let (seen, _) = replayed(dir.path());
        assert_eq!(seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![22]);
    }

    #[tokio::test]
    async fn released_segments_are_kept_for_the_next_cycle_and_the_largest_reused_first() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(config(dir.path()), 0, Collect::default()).unwrap();
        let mut i = 0;
        let mut through = 0;
        for records in [1, 5, 2, 8, 3] {
            for _ in 0..records {
                wal.append(Pending::new(entry(i))).await.unwrap();
                i += 1;
            }
            through = wal.rotate().await.unwrap();
        }
        // Sizes of files, smallest first.
        let sorted_sizes = |paths: Vec<PathBuf>| {
            let mut sizes: Vec<u64> = paths.iter().map(|p| file_len(p)).collect();
            sizes.sort();
            sizes
        };
        let segments = list_segments(dir.path()).unwrap();
        let mut sizes = sorted_sizes(segments.into_iter().map(|(_, p)| p).collect());
        wal.release(through).await.unwrap();
        let spare_sizes = sorted_sizes(list_spares(dir.path()));
        // Five released (plus the empty active one, kept): the WAL started more
        // segments than that since it opened, so all five stay for the next cycle.
        sizes.retain(|&n| n > (MAGIC.len() + TERMINATOR.len()) as u64);
        assert_eq!(spare_sizes, sizes);
        // The next segment reuses the largest.
        wal.append(Pending::new(entry(i))).await.unwrap();
        i += 1;
        through = wal.rotate().await.unwrap();
        let left = sorted_sizes(list_spares(dir.path()));
        assert_eq!(left, spare_sizes[..spare_sizes.len() - 1].to_vec());
        // A cycle that started one segment keeps only the minimum (the smallest go).
        wal.append(Pending::new(entry(i))).await.unwrap();
        wal.release(through).await.unwrap();
        let kept = sorted_sizes(list_spares(dir.path()));
        assert_eq!(kept.len(), MIN_SPARES);
        assert_eq!(kept, left[left.len() - MIN_SPARES..].to_vec());
    }

    #[tokio::test]
    async fn a_full_size_spare_is_ready_before_the_segment_fills() {
        let dir = tempfile::tempdir().unwrap();
        let full = config(dir.path()).segment_max_bytes;
        let (wal, _) = Wal::open(config(dir.path()), 0, Collect::default()).unwrap();
        let active = |dir: &Path| list_segments(dir).unwrap().pop().unwrap().1;
        let mut i = 0;
        while fs::read(active(dir.path())).unwrap().len() < (full / PREPARE_AHEAD_AT) as usize + 64
        {
            wal.append(Pending::new(entry(i))).await.unwrap();
            i += 1;
        }
        // One more append past the mark hands a spare to the preparer.
        wal.append(Pending::new(entry(i))).await.unwrap();
        i += 1;
        // Rotation never waits for the preparer: rotate until the new segment is the
        // prepared spare (a fresh segment meanwhile is too small to ask for another).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            wal.rotate().await.unwrap();
            wal.append(Pending::new(entry(i))).await.unwrap();
            i += 1;
            if file_len(&active(dir.path())) == full {
                break;
            }
            assert!(Instant::now() < deadline, "no spare was prepared");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(list_spares(dir.path()).is_empty());
        wal.shutdown().await;
        let (seen, summary) = replayed(dir.path());
        assert_eq!(seen.len(), i);
        assert_eq!(seen.last().map(|(s, _)| *s), Some(i as u64));
        assert!(summary.corrupt.is_empty(), "{:?}", summary.corrupt);
        assert_eq!(summary.torn_bytes_cut, 0);
    }

    #[tokio::test]
    async fn sync_none_acknowledges_without_an_fsync_per_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.sync = SyncMode::None;
        let (wal, _) = Wal::open(cfg, 0, Collect::default()).unwrap();
        for i in 0..50 {
            wal.append(Pending::new(entry(i))).await.unwrap();
        }
        assert!(wal.status().sync_stats().0 <= 1, "no fsync per append");
        // Within about a second the ticker syncs what was written.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(wal.status().sync_stats().0 >= 1);
        wal.shutdown().await;
        let (seen, _) = replayed(dir.path());
        assert_eq!(seen.len(), 50);
    }

    #[tokio::test]
    async fn a_flipped_bit_fails_the_checksum() {
        let (dir, seg) = closed_wal(3).await;
        let mut data = fs::read(&seg).unwrap();
        // A bit inside the last frame (before the terminator).
        let n = data.len() - TERMINATOR.len();
        data[n - 10] ^= 0x40;
        fs::write(&seg, &data).unwrap();
        let (seen, _) = replayed(dir.path());
        assert_eq!(seen.len(), 2);
    }

    #[tokio::test]
    async fn rotate_then_release_deletes_only_covered_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(config(dir.path()), 0, Collect::default()).unwrap();
        for i in 0..3 {
            wal.append(Pending::new(entry(i))).await.unwrap();
        }
        let through = wal.rotate().await.unwrap();
        assert_eq!(through, 3);
        wal.append(Pending::new(entry(3))).await.unwrap();
        wal.release(through).await.unwrap();
        let (seen, _) = replayed(dir.path());
        assert_eq!(seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![4]);
    }
}
