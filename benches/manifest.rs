//! The cost of a manifest commit and of a cold load on a year-old lake: a commit that
//! writes the whole state (a checkpoint, what every commit wrote before deltas) against
//! one that writes only its changes (a delta), and a load of a checkpoint alone against
//! a checkpoint with a full chain of deltas after it.
//!
//! ```text
//! cargo bench --bench manifest
//! ```
//!
//! The manifest is a year of compacted hourly partitions of both tables (17,520
//! files, with the id ranges a real lake records), on the local disk with fsync.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hookscope::lake::Lake;
use hookscope::lake::manifest::{FileEntry, MAX_DELTAS, Manifest};
use hookscope::tables::Table;

const HOUR_US: i64 = 3_600_000_000;

fn file(table: Table, hour: i64, seq: u64) -> (Table, FileEntry) {
    let start = 1_764_547_200_000_000 + hour * HOUR_US;
    let day = chrono::DateTime::from_timestamp_micros(start).expect("time");
    (
        table,
        FileEntry {
            path: format!(
                "{}/date={}/hour={}/node-1-{seq:012}.parquet",
                table.name(),
                day.format("%Y-%m-%d"),
                day.format("%H")
            ),
            rows: 1_141,
            bytes: 331_776,
            min_time_us: start,
            max_time_us: start + HOUR_US - 1,
            ids: Some((format!("01KB{seq:022}"), format!("01KC{seq:022}"))),
        },
    )
}

fn manifest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = Lake::local(dir.path()).expect("lake");
    let empty = rt.block_on(Manifest::load(&lake)).expect("load");
    let mut seq = 1;
    let mut year = Vec::new();
    for hour in 0..365 * 24 {
        for table in [Table::Deliveries, Table::Outcomes] {
            year.push(file(table, hour, seq));
            seq += 1;
        }
    }
    let mut committed = empty.with_files(year, 1, seq);
    rt.block_on(committed.commit(&lake, &empty))
        .expect("commit");
    let size = std::fs::metadata(
        dir.path()
            .join("_manifest")
            .join(format!("{:020}.json", committed.version)),
    )
    .expect("checkpoint")
    .len();
    eprintln!("checkpoint of {} files: {size} bytes", 2 * 365 * 24);
    let delta_size = || {
        std::fs::read_dir(dir.path().join("_manifest"))
            .expect("versions")
            .filter_map(Result::ok)
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .min()
            .unwrap_or(0)
    };

    let mut group = c.benchmark_group("manifest_commit");
    group.sample_size(20);
    // Loaded, not committed by this process: every commit writes a checkpoint.
    let loaded = rt.block_on(Manifest::load(&lake)).expect("load");
    group.bench_function("checkpoint", |b| {
        b.iter(|| {
            let mut next = loaded.with_files(vec![file(Table::Deliveries, 0, seq)], 2, seq + 1);
            rt.block_on(next.commit(&lake, &loaded)).expect("commit");
            black_box(next.version)
        })
    });
    let mut parent = rt.block_on(Manifest::load(&lake)).expect("load");
    let mut first = parent.with_files(vec![], 2, seq);
    rt.block_on(first.commit(&lake, &parent)).expect("commit");
    parent = first;
    // The in-memory part of a commit: the next version derived from the committed one.
    group.bench_function("derive_next", |b| {
        b.iter(|| {
            black_box(parent.with_files(vec![file(Table::Deliveries, 0, seq + 1)], 2, seq + 2))
        })
    });
    group.bench_function("delta", |b| {
        b.iter(|| {
            let mut next = parent.with_files(vec![file(Table::Deliveries, 0, seq + 1)], 2, seq + 2);
            rt.block_on(next.commit(&lake, &parent)).expect("commit");
            assert!(next.is_delta());
            black_box(next.version)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("manifest_load");
    group.sample_size(20);
    let mut parent = rt.block_on(Manifest::load(&lake)).expect("load");
    let mut first = parent.with_files(vec![], 3, seq);
    rt.block_on(first.commit(&lake, &parent)).expect("commit");
    parent = first;
    group.bench_function("checkpoint", |b| {
        b.iter(|| black_box(rt.block_on(Manifest::load(&lake)).expect("load").version))
    });
    for i in 0..MAX_DELTAS - 1 {
        let mut next = parent.with_files(
            vec![file(Table::Deliveries, 0, seq + 2 + u64::from(i))],
            3,
            seq + 3 + u64::from(i),
        );
        rt.block_on(next.commit(&lake, &parent)).expect("commit");
        assert!(next.is_delta());
        parent = next;
    }
    eprintln!("a delta adding one file: {} bytes", delta_size());
    group.bench_function("checkpoint_and_99_deltas", |b| {
        b.iter(|| black_box(rt.block_on(Manifest::load(&lake)).expect("load").version))
    });
    group.finish();
}

criterion_group!(benches, manifest);
criterion_main!(benches);
