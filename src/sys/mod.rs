//! Small operating-system helpers shared by the write path: paced writeback of large
//! files (so the WAL's syncs are not stuck behind them), lowering the CPU priority
//! of background threads (so acknowledgements win the CPU), the one low-priority
//! background worker, durable directory creation, and returning freed memory to the
//! OS on a background thread (so request threads never do it).
//!
//! Both are best effort: where the system does not support them they do nothing and
//! the caller's own `fsync` still makes the data durable.

pub mod failpoint;

use std::fs::File;
use std::io;
use std::path::Path;

/// Returns the memory this process has freed to the OS now, on the calling thread.
///
/// The allocator returns freed memory after a delay (see `main.rs`), in whichever
/// thread next calls into it. After a flush that is the whole buffer at once, and the
/// thread was a request worker: a syscall trace of the ingest benchmark showed
/// hundreds of `madvise(DONTNEED)` calls on a Tokio worker at the moment of the open
/// loop's worst acknowledgement (`benches/RESULTS.md`). The flush thread calls this
/// instead, right after it frees the flushed rows.
pub(crate) fn return_free_memory() {
    // SAFETY: mi_collect takes no pointers; it is safe to call from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Writes a file's dirty pages back in steps of this size.
const WRITEBACK_STEP: u64 = 1 << 20;

/// Starts and waits for writeback of `file` from `from` to its end, one step at a
/// time: each step is a short request at the device, so other writers' syncs (the
/// WAL's) interleave with it instead of queueing behind the whole file. The caller
/// still syncs the file afterwards (this does not flush the device cache).
pub(crate) fn paced_writeback(file: &File, from: u64) -> io::Result<()> {
    let len = file.metadata()?.len();
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mut offset = from;
        while offset < len {
            let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            // SAFETY: sync_file_range on an open, owned descriptor; no memory is passed.
            let rc = unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    offset as i64,
                    WRITEBACK_STEP as i64,
                    flags,
                )
            };
            if rc != 0 {
                // Not supported here (or failed): the caller's fsync does it all.
                return Ok(());
            }
            offset += WRITEBACK_STEP;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (from, len);
    Ok(())
}

/// Lowers the calling thread's CPU priority to nice 10, for background work (Parquet
/// encoding, preparing WAL segments) that must not delay acknowledgements. (Not
/// `SCHED_IDLE`: a starved thread holding a kernel lock, such as the address-space
/// lock while it frees memory, stalled every other thread for a second in tests.)
pub(crate) fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority on the calling thread only change its own
    // scheduling priority; a failure leaves the default priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The background work's one thread: a flush's CPU-heavy work (Parquet encoding,
/// the dedup index's state files, freeing flushed rows) runs on one long-lived thread
/// at a lower CPU priority ([`lower_thread_priority`]), so acknowledgements win the
/// CPU while a flush works. Long-lived, so its allocator heap is reused from flush to
/// flush: a new thread per flush started from fresh pages (page faults, and more
/// resident memory).
#[derive(Debug)]
pub struct Worker {
    jobs: std::sync::mpsc::Sender<Job>,
}

/// The worker thread is gone (it could not start, or a job panicked while the
/// result was awaited).
#[derive(Debug, thiserror::Error)]
#[error("the background thread {0}")]
pub struct WorkerGone(&'static str);

impl Worker {
    /// Starts the thread, named `name`.
    pub fn start(name: &str) -> io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                lower_thread_priority();
                for job in rx {
                    // A panicking job fails only itself (its result channel is
                    // dropped); the thread lives on for the next one.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `work` on the thread and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WorkerGone> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(work());
            }))
            .map_err(|_| WorkerGone("has stopped"))?;
        rx.await.map_err(|_| WorkerGone("stopped without a result"))
    }
}

/// fsyncs a directory, so that the names created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, and fsyncs the parent of every directory it
/// creates: a new directory's name lives in its parent, and without that sync a power
/// loss can take the directory (and every file later made durable inside it) away.
pub(crate) fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d);
        cur = d.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    for d in missing.iter().rev() {
        let parent = match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_thread_lives_on() {
        let worker = Worker::start("test-worker").unwrap();
        assert_eq!(worker.run(|| 1 + 1).await.unwrap(), 2);
        let failed = worker
            .run(|| -> u32 { panic!("encoder bug") })
            .await
            .unwrap_err();
        assert!(failed.to_string().contains("without a result"), "{failed}");
        assert_eq!(worker.run(|| 3).await.unwrap(), 3);
    }

    #[test]
    fn missing_directories_are_created_with_their_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        create_dir_all_durable(&deep).unwrap();
        assert!(deep.is_dir());
        // Existing directories are fine, and a file in the way is an error.
        create_dir_all_durable(&deep).unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        assert!(create_dir_all_durable(&tmp.path().join("f/g")).is_err());
    }
}
