//! WAL tests: replay, torn tails, recycled segments, group commit, failures.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

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
    while fs::read(active(dir.path())).unwrap().len() < (full / PREPARE_AHEAD_AT) as usize + 64 {
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
