//! The writer thread: group commit (write, fdatasync, apply, answer), rotation,
//! release, the commit delay, and what a failure does.
//!
//! Invariants: an append is answered only after its group is durable and applied; on
//! a write or sync error nothing of the group is acknowledged and the segment is cut
//! back to its last good frame; after the applier fails, nothing more is accepted.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use super::*;

/// Once the active segment is this fraction full (1/N), the next spare is prepared
/// (early enough to be ready at the ingest rates measured, late enough that a server
/// that writes little never prepares one).
pub(super) const PREPARE_AHEAD_AT: u64 = 16;
/// Frames larger than this are corruption, not data (the body limit is far below).
pub(super) const MAX_FRAME: usize = 1 << 30;
/// Most records one group commit writes at once.
pub(super) const MAX_GROUP: usize = 4096;
/// Under concurrent load, a group is written no sooner than this after the previous
/// group's write began (see [`Writer::commit_delay`]). Off by default: groups form by
/// themselves from the appends that arrive during the previous sync. In paired
/// benchmark runs a delay saved CPU per request in the open loop but did not lower
/// its tail latency, raised its median and cost closed-loop throughput
/// (`benches/RESULTS.md`).
pub(crate) const DEFAULT_COMMIT_DELAY: Duration = Duration::ZERO;
/// The commit delay applies only when the previous group had at least this many
/// records (a lone client never waits)…
pub(super) const COMMIT_DELAY_MIN_GROUP: usize = 2;
/// …and not once the group has this many (it is large enough to be worth its sync).
pub(super) const COMMIT_DELAY_MAX_GROUP: usize = 64;

/// A group commit taking this long is logged (at debug level) with where the time went.
pub(super) const SLOW_GROUP: Duration = Duration::from_millis(5);

/// Logs (at debug level) a writer step that held up group commits for long.
pub(super) fn log_slow(step: &'static str, started: Instant) {
    let took = started.elapsed();
    if took >= SLOW_GROUP {
        tracing::debug!(step, ms = took.as_secs_f64() * 1e3, "slow WAL step");
    }
}

/// The text of a caught panic.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

pub(super) struct ActiveSegment {
    pub(super) file: File,
    pub(super) path: PathBuf,
    /// End of the last frame known to be written (and synced, in `always` mode).
    pub(super) good: u64,
}

impl ActiveSegment {
    /// A new segment starting at `first_seq`, reusing a spare file when there is one.
    pub(super) fn create(
        dir: &Path,
        first_seq: u64,
        spare: Option<PathBuf>,
    ) -> Result<Self, WalError> {
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

pub(super) struct Writer<A: Applier> {
    pub(super) config: WalConfig,
    pub(super) status: Arc<WalStatus>,
    /// Closed segments, oldest first, then the active one last.
    pub(super) segments: Vec<Segment>,
    pub(super) active: ActiveSegment,
    pub(super) next_seq: u64,
    /// Segment files for reuse (released ones, and one prepared ahead).
    pub(super) spares: Spares,
    /// Records in the previous group (drives the commit delay).
    pub(super) last_group: usize,
    /// When the previous group's write began (drives the commit delay).
    pub(super) last_write: Instant,
    /// Takes durable groups and cuts, in sequence order.
    pub(super) applier: A,
    pub(super) last_sync: Instant,
    pub(super) unsynced: bool,
}

pub(super) type AppendReply<T> = oneshot::Sender<Result<Committed<T>, WalError>>;

impl<A: Applier> Writer<A> {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Request<A::Output>>) {
        // The commit delay sleeps for a few hundred microseconds; Linux's default
        // timer slack would add a noticeable fraction to it.
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
    pub(super) fn next_request(
        &mut self,
        rx: &mut mpsc::Receiver<Request<A::Output>>,
    ) -> Option<Request<A::Output>> {
        rx.blocking_recv()
    }

    pub(super) fn commit_group(
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

    pub(super) fn write_and_sync(&mut self, frames: &mut Vec<u8>) -> Result<(), WalError> {
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

    pub(super) fn record_sync(&mut self, started: Instant) {
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
    pub(super) fn sync_if_needed(&mut self, force: bool) {
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
    pub(super) fn unsynced_failure(&mut self, err: io::Error) {
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
    /// Every sync costs about the same CPU whatever it covers (on a VM mostly
    /// virtualisation exits), so at a moderate, steady load,
    /// where appends arrive one by one and each group holds a few, spacing the syncs
    /// saves CPU for the requests themselves. It never waits for a lone client (the
    /// previous group held one record), nor for a group that is already large, nor
    /// under heavy load, where a group's write and sync already take longer than the
    /// delay. One sleep, not a polling loop: each wake-up costs as much as it saves.
    pub(super) fn commit_delay(
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
    pub(super) fn check_fatal(&self) -> Result<(), WalError> {
        match self.status.fatal() {
            Some(why) => Err(WalError::Fatal(why)),
            None => Ok(()),
        }
    }

    /// The applier panicked: from now on every append, rotation and release is
    /// refused (readiness reports it), so nothing is applied out of order and nothing
    /// is released; the durable records are recovered by the next start.
    pub(super) fn stop_for_good(
        &mut self,
        step: &str,
        panic: &(dyn std::any::Any + Send),
    ) -> WalError {
        let why = format!("{step} failed: {}", panic_message(panic));
        tracing::error!(
            reason = %why,
            "the write-ahead log stopped accepting records after an internal error; acknowledged records are safe; restart hookscope (and report this as a bug)"
        );
        *self.status.fatal.lock() = Some(why.clone());
        WalError::Fatal(why)
    }

    pub(super) fn fail(&mut self, err: io::Error) -> WalError {
        let err = WalError::io(&self.active.path, err);
        if !self.status.degraded.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %err, "write-ahead log write failed; answering 503 until it recovers");
        }
        *self.status.last_error.lock() = Some(err.to_string());
        // Best effort: drop any partial frame now; retried before the next write.
        let _ = self.active.file.set_len(self.active.good);
        err
    }

    pub(super) fn rotate(&mut self) -> Result<u64, WalError> {
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

    pub(super) fn release(&mut self, through: u64) {
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
