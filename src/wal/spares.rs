//! Spare segment files for the WAL writer: released segments kept for reuse, and a
//! spare filled to the full segment size on a background thread before it is needed.
//!
//! Why: `fdatasync` after a write that grows a file must also write the inode. A
//! block trace of the ingest benchmark showed it: on a fresh segment every WAL sync
//! was a data write, a 4 KiB metadata write and a cache flush; within a file whose
//! blocks are all written already it is the data write and the flush. So released
//! segments are recycled, and the next spare is zero-filled to the segment size ahead
//! of need (like PostgreSQL's `wal_init_zero`, but off the commit path).
//!
//! Invariants:
//! - A spare's contents are never read as log: a spare becomes a segment only through
//!   `ActiveSegment::create`, which writes a fresh header and terminator first.
//! - Released segments are kept as spares, as many as the WAL started since the
//!   previous release plus one (at least [`MIN_SPARES`], at most [`MAX_SPARES`]), so
//!   that in a steady state every new segment is a recycled one: zero-filling a fresh
//!   segment once per flush and deleting a surplus one after it (as a fixed limit of
//!   three did under heavy load) put two segments' worth of device writes and frees
//!   into every flush cycle, and WAL syncs queued behind them. Beyond a moment's
//!   overlap, ready plus being prepared never exceeds that limit; the preparer fills
//!   one file at a time, at low CPU priority, with paced writeback so WAL syncs do not
//!   queue behind it. The disk held is at most what the WAL itself held at its peak.
//! - A spare the preparer failed on, or that a crash left half-filled, is still a
//!   valid, shorter spare.
//! - The writer thread only renames: deleting an extra spare (renamed to
//!   `*.discard` first, so it is never taken) and syncing the directory after a
//!   release run on the same background thread. Every pause of the writer holds up
//!   all acknowledgements, and the two took milliseconds per flush in the ingest
//!   benchmark (`benches/RESULTS.md`).
//!   The deletion frees the spare's blocks a few MiB at a time, because freeing them
//!   at once stalls every sync on the device (see [`remove_gradually`]).

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Spare files always kept for reuse…
pub(super) const MIN_SPARES: usize = 3;
/// …and at most (1 GiB at the default segment size).
pub(super) const MAX_SPARES: usize = 16;
/// The preparer writes zeros in pieces of this size.
const ZERO_CHUNK: usize = 1 << 20;

/// The writer thread's spare files.
pub(super) struct Spares {
    dir: PathBuf,
    /// The size of a prepared spare: the segment size.
    full: u64,
    /// Spares that can be taken now, with their sizes.
    ready: Vec<(PathBuf, u64)>,
    /// Files at the preparer.
    preparing: usize,
    /// Names the next spare.
    counter: u64,
    /// Segments started (spares asked for) since the last release.
    taken_since_release: usize,
    preparer: Option<Preparer>,
}

/// The background thread that fills spares, started on first use.
struct Preparer {
    to: mpsc::Sender<Job>,
    done: mpsc::Receiver<(PathBuf, u64)>,
}

/// File work kept off the writer thread (whose every pause holds up all acks).
enum Job {
    /// Fill a spare to the segment size; it comes back through `done`.
    Fill(PathBuf),
    /// Delete a file no longer needed.
    Remove(PathBuf),
    /// Sync a directory.
    SyncDir(PathBuf),
}

impl Job {
    /// Does a `Remove` or `SyncDir` on the calling thread (a `Fill` is never run
    /// inline: without the thread, segments just grow as they are written).
    fn run_inline(self) {
        match self {
            Job::Fill(_) => {}
            Job::Remove(path) => {
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "could not delete a released WAL segment");
                }
            }
            Job::SyncDir(dir) => {
                if let Err(e) = fs::File::open(&dir).and_then(|d| d.sync_all()) {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not sync the WAL directory");
                }
            }
        }
    }
}

/// Extension of a spare being deleted (never listed as a spare; removed at open).
const DISCARD_EXT: &str = "discard";

impl Spares {
    /// The spares already in `dir` (left by an earlier run); segments are `full` bytes.
    pub(super) fn open(dir: &Path, full: u64) -> Self {
        for doomed in list_with_ext(dir, DISCARD_EXT) {
            let _ = fs::remove_file(doomed);
        }
        let ready: Vec<(PathBuf, u64)> = list_spares(dir)
            .into_iter()
            .map(|p| {
                let len = file_len(&p);
                (p, len)
            })
            .collect();
        let counter = ready
            .iter()
            .filter_map(|(p, _)| p.file_stem()?.to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        Self {
            dir: dir.to_path_buf(),
            full,
            ready,
            preparing: 0,
            counter,
            taken_since_release: 0,
            preparer: None,
        }
    }

    /// Takes the largest spare: the more blocks a segment already has, the longer
    /// writes stay within its size.
    pub(super) fn take(&mut self) -> Option<PathBuf> {
        self.collect();
        self.taken_since_release += 1;
        let index = self.largest()?;
        Some(self.ready.swap_remove(index).0)
    }

    /// Keeps a released segment file as a spare; when there are more than the WAL
    /// is expected to need before the next release (see the module docs), deletes
    /// the smallest.
    pub(super) fn keep(&mut self, segment: &Path) -> io::Result<()> {
        self.collect();
        let spare = self.next_path();
        fs::rename(segment, &spare)?;
        let len = file_len(&spare);
        self.ready.push((spare, len));
        let limit = (self.taken_since_release + 1).clamp(MIN_SPARES, MAX_SPARES);
        while !self.ready.is_empty() && self.ready.len() + self.preparing > limit {
            let smallest = (0..self.ready.len())
                .min_by_key(|&i| self.ready[i].1)
                .unwrap_or(0);
            let extra = self.ready.swap_remove(smallest).0;
            // Out of the spares' namespace now; deleted on the background thread
            // (freeing a segment's blocks takes milliseconds with online discard).
            let doomed = extra.with_extension(DISCARD_EXT);
            fs::rename(&extra, &doomed)?;
            self.send(Job::Remove(doomed));
        }
        Ok(())
    }

    /// Ends a release: the count of segments started begins again.
    pub(super) fn released(&mut self) {
        self.taken_since_release = 0;
    }

    /// Makes the directory's renames durable, on the background thread. (Nothing
    /// depends on it: a rename lost in a crash leaves a released segment whose
    /// records are all committed, which replay skips; and reusing a spare syncs the
    /// directory itself.)
    pub(super) fn sync_dir_later(&mut self) {
        self.send(Job::SyncDir(self.dir.clone()));
    }

    /// Hands a job to the background thread, starting it if needed; without one,
    /// does the job here.
    fn send(&mut self, job: Job) {
        if self.preparer.is_none() {
            match Preparer::start(self.full) {
                Ok(p) => self.preparer = Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the WAL spare thread; doing its work inline");
                }
            }
        }
        let job = match &self.preparer {
            Some(p) => match p.to.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => {
                    self.preparer = None;
                    job
                }
            },
            None => job,
        };
        job.run_inline();
    }

    /// Makes sure a full-size spare will be ready for the next segment: unless one is
    /// ready or being prepared, hands the largest short spare (or a new file) to the
    /// preparer. Cheap when there is nothing to do; the writer calls it after each
    /// group once the active segment is partly full.
    pub(super) fn prepare_ahead(&mut self) {
        self.collect();
        if self.preparing > 0 || self.ready.iter().any(|(_, len)| *len >= self.full) {
            return;
        }
        let path = match self.largest() {
            Some(i) => self.ready.swap_remove(i).0,
            None => self.next_path(),
        };
        let full = self.full;
        let preparer = match &self.preparer {
            Some(p) => p,
            None => match Preparer::start(full) {
                Ok(p) => self.preparer.insert(p),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the WAL spare preparer; segments grow as they are written");
                    self.give_back(path);
                    return;
                }
            },
        };
        match preparer.to.send(Job::Fill(path)) {
            Ok(()) => self.preparing += 1,
            Err(mpsc::SendError(job)) => {
                self.preparer = None;
                if let Job::Fill(path) = job {
                    self.give_back(path);
                }
            }
        }
    }

    /// Moves spares the preparer has finished to the ready list.
    fn collect(&mut self) {
        let Some(preparer) = &self.preparer else {
            return;
        };
        while let Ok(spare) = preparer.done.try_recv() {
            self.preparing = self.preparing.saturating_sub(1);
            self.ready.push(spare);
        }
    }

    /// Puts back a spare that could not be sent to the preparer (if it exists).
    fn give_back(&mut self, path: PathBuf) {
        if path.exists() {
            let len = file_len(&path);
            self.ready.push((path, len));
        }
    }

    fn largest(&self) -> Option<usize> {
        (0..self.ready.len()).max_by_key(|&i| self.ready[i].1)
    }

    fn next_path(&mut self) -> PathBuf {
        self.counter += 1;
        self.dir.join(format!("{:020}.spare", self.counter))
    }
}

impl Preparer {
    fn start(full: u64) -> io::Result<Self> {
        let (to, rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("hookscope-walprep".into())
            .spawn(move || {
                crate::sys::lower_thread_priority();
                let zeros = vec![0u8; ZERO_CHUNK];
                for job in rx {
                    let path = match job {
                        Job::Fill(path) => path,
                        Job::Remove(path) => {
                            let started = std::time::Instant::now();
                            remove_gradually(&path);
                            tracing::debug!(
                                ms = started.elapsed().as_secs_f64() * 1e3,
                                "removed an extra WAL spare"
                            );
                            continue;
                        }
                        other => {
                            other.run_inline();
                            continue;
                        }
                    };
                    let started = std::time::Instant::now();
                    let before = file_len(&path);
                    let len = fill(&path, full, &zeros).unwrap_or_else(|e| {
                        tracing::warn!(spare = %path.display(), error = %e, "could not prepare a spare WAL segment; it stays short");
                        file_len(&path)
                    });
                    if len > before {
                        tracing::debug!(
                            bytes = len - before,
                            ms = started.elapsed().as_secs_f64() * 1e3,
                            "filled a spare WAL segment with zeros"
                        );
                    }
                    if done_tx.send((path, len)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self { to, done })
    }
}

/// Blocks a background removal frees at a time, and the pause after each step.
const FREE_STEP: u64 = 4 << 20;
const FREE_PAUSE: Duration = Duration::from_millis(20);

/// Deletes `path` after shrinking it [`FREE_STEP`] at a time: freeing many blocks at
/// once stalls the device: next to a probe doing small `pwrite` + `fdatasync` (as the
/// WAL does), unlinking a whole segment on ext4 with online discard held the probe's
/// syncs up several times longer than shrinking it step by step did (measurements in
/// `benches/RESULTS.md`; the ingest benchmark showed the same stall after every
/// flush). For the background thread only: a full segment takes a while.
fn remove_gradually(path: &Path) {
    if let Ok(file) = OpenOptions::new().write(true).open(path) {
        let mut len = file_len(path);
        while len > FREE_STEP {
            len -= FREE_STEP;
            if file.set_len(len).is_err() {
                break;
            }
            std::thread::sleep(FREE_PAUSE);
        }
    }
    Job::Remove(path.to_path_buf()).run_inline();
}

/// Extends `path` (created if missing) with zeros to `full` bytes and syncs it, so
/// every block is allocated and written. Returns the file's size.
fn fill(path: &Path, full: u64, zeros: &[u8]) -> io::Result<u64> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let start = file.metadata()?.len();
    let mut offset = start;
    while offset < full {
        let n = (full - offset).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset)?;
        offset += n as u64;
    }
    crate::sys::paced_writeback(&file, start)?;
    file.sync_data()?;
    Ok(start.max(full))
}

/// Released segment files kept for reuse.
pub(super) fn list_spares(dir: &Path) -> Vec<PathBuf> {
    list_with_ext(dir, "spare")
}

fn list_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect()
}

/// A file's size, 0 when it cannot be read (spares are only ranked by it).
pub(super) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Waits until the preparer has handed back what it was given.
    fn settle(spares: &mut Spares) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while spares.preparing > 0 {
            assert!(Instant::now() < deadline, "the preparer did not finish");
            std::thread::sleep(Duration::from_millis(5));
            spares.collect();
        }
    }

    #[test]
    fn a_new_spare_is_prepared_to_the_full_segment_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut spares = Spares::open(dir.path(), 3 << 20);
        spares.prepare_ahead();
        spares.prepare_ahead(); // one at a time
        settle(&mut spares);
        let listed = list_spares(dir.path());
        assert_eq!(listed.len(), 1);
        assert_eq!(file_len(&listed[0]), 3 << 20);
        assert!(fs::read(&listed[0]).unwrap().iter().all(|b| *b == 0));
        // A full one is ready: nothing more to do.
        spares.prepare_ahead();
        assert_eq!(spares.preparing, 0);
        assert_eq!(spares.take(), Some(listed[0].clone()));
        assert_eq!(spares.take(), None);
    }

    #[test]
    fn a_short_released_segment_is_extended_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join("00000000000000000001.wal");
        fs::write(&segment, b"HKSWAL01 some old frames").unwrap();
        let mut spares = Spares::open(dir.path(), 1 << 20);
        spares.keep(&segment).unwrap();
        assert!(!segment.exists());
        spares.prepare_ahead();
        settle(&mut spares);
        let listed = list_spares(dir.path());
        assert_eq!(listed.len(), 1, "extended in place, no second file");
        let data = fs::read(&listed[0]).unwrap();
        assert_eq!(data.len(), 1 << 20);
        assert!(data.starts_with(b"HKSWAL01 some old frames"));
    }

    #[test]
    fn spares_from_an_earlier_run_are_reused_and_never_overwritten_by_name() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("00000000000000000007.spare"), [1u8; 10]).unwrap();
        let mut spares = Spares::open(dir.path(), 1 << 20);
        let segment = dir.path().join("00000000000000000002.wal");
        fs::write(&segment, [2u8; 20]).unwrap();
        spares.keep(&segment).unwrap();
        assert_eq!(list_spares(dir.path()).len(), 2);
        assert_eq!(file_len(&spares.take().unwrap()), 20, "largest first");
        assert_eq!(file_len(&spares.take().unwrap()), 10);
    }

    #[test]
    fn extra_spares_are_deleted_in_the_background_and_leftovers_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut spares = Spares::open(dir.path(), 1 << 20);
        for i in 0..MIN_SPARES + 2 {
            let segment = dir.path().join(format!("{:020}.wal", i + 1));
            fs::write(&segment, vec![7u8; 100 + i]).unwrap();
            spares.keep(&segment).unwrap();
        }
        // The extras are out of the spares' namespace at once…
        assert_eq!(list_spares(dir.path()).len(), MIN_SPARES);
        // …and gone once the background thread gets to them.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !list_with_ext(dir.path(), DISCARD_EXT).is_empty() {
            assert!(Instant::now() < deadline, "extra spares were not deleted");
            std::thread::sleep(Duration::from_millis(5));
        }
        // A crash may leave one behind: the next open deletes it.
        let left = dir.path().join(format!("{:020}.{DISCARD_EXT}", 99));
        fs::write(&left, b"x").unwrap();
        let spares = Spares::open(dir.path(), 1 << 20);
        assert!(!left.exists());
        assert_eq!(spares.ready.len(), MIN_SPARES);
    }

    #[test]
    fn a_large_file_is_shrunk_step_by_step_then_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.discard");
        let file = fs::File::create(&path).unwrap();
        file.set_len(3 * FREE_STEP + 5).unwrap();
        drop(file);
        let started = Instant::now();
        remove_gradually(&path);
        assert!(!path.exists());
        // Three steps, each followed by a pause.
        assert!(
            started.elapsed() >= FREE_PAUSE * 3,
            "{:?}",
            started.elapsed()
        );
        // A file that is already gone is not an error.
        remove_gradually(&path);
    }
}
