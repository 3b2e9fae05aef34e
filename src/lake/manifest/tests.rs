use super::*;

fn entry(path: &str) -> FileEntry {
    FileEntry {
        path: path.into(),
        rows: 3,
        bytes: 100,
        min_time_us: 1,
        max_time_us: 2,
        ids: None,
    }
}

fn versions_on_disk(dir: &std::path::Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir.join(DIR))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".json")?.parse().ok()
        })
        .collect();
    v.sort();
    v
}

/// Versions 1 (a checkpoint), 2 and 3 (deltas), each adding a file; the last.
async fn chain_of_three(lake: &Lake) -> Manifest {
    let mut committed = Manifest::load(lake).await.unwrap();
    for i in 0..3 {
        let mut next = committed.with_files(
            vec![(Table::Deliveries, entry(&format!("deliveries/{i}.parquet")))],
            i,
            i + 2,
        );
        next.commit(lake, &committed).await.unwrap();
        committed = next;
    }
    committed
}

#[tokio::test]
async fn commits_are_loaded_back_as_a_checkpoint_and_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let m0 = Manifest::load(&lake).await.unwrap();
    assert_eq!(m0.version, 0);
    let mut m1 = m0.with_files(
        vec![(Table::Deliveries, entry("deliveries/a.parquet"))],
        10,
        2,
    );
    m1.commit(&lake, &m0).await.unwrap();
    assert!(
        !m1.is_delta(),
        "the first commit of a process is a checkpoint"
    );
    let mut m2 = m1.with_files(
        vec![(Table::Deliveries, entry("deliveries/b.parquet"))],
        20,
        3,
    );
    m2.commit(&lake, &m1).await.unwrap();
    assert!(m2.is_delta());
    let mut m3 = m2.with_files(vec![], 30, 3);
    m3.commit(&lake, &m2).await.unwrap();
    assert!(m3.is_delta());
    let loaded = Manifest::load(&lake).await.unwrap();
    assert_eq!(loaded, m3);
    assert_eq!(loaded.files(Table::Deliveries).len(), 2);
    assert_eq!(versions_on_disk(dir.path()), vec![1, 2, 3]);
    // A delta holds the changes only.
    let delta = std::fs::read_to_string(dir.path().join(version_path(3))).unwrap();
    assert!(!delta.contains("a.parquet"), "{delta}");
}

/// Every kind of change a commit makes (flush, compaction swap, retention, retired
/// files forgotten, a new dedup state) survives a load of the chain, and checkpoints
/// come often enough to bound it, deleting the chains before them.
#[tokio::test]
async fn a_long_history_of_changes_loads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let mut committed = Manifest::load(&lake).await.unwrap();
    let mut seq = 1u64;
    let mut now = 1_000_000_000_000i64;
    let mut checkpoints = 0;
    for round in 0..(2 * MAX_DELTAS as u64 + 30) {
        now += 10_000_000;
        let mut next = match round % 7 {
            // Compaction: three files of a table merged into one, in the place of
            // the first.
            5 if committed.files(Table::Deliveries).len() > 4 => {
                let files = committed.files(Table::Deliveries);
                let removed = vec![files[1].clone(), files[2].clone(), files[4].clone()];
                seq += 1;
                committed.replacing(
                    Table::Deliveries,
                    &removed,
                    vec![entry(&format!("deliveries/m{seq}.parquet"))],
                    now,
                    now + 30_000_000,
                )
            }
            // Retention: the oldest outcome file dropped.
            6 if !committed.files(Table::Outcomes).is_empty() => {
                let mut next = committed.next_version(now);
                let oldest = vec![committed.files(Table::Outcomes)[0].clone()];
                next.swap_files(Table::Outcomes, &oldest, Vec::new(), now);
                next
            }
            _ => {
                let mut added = vec![(
                    Table::Deliveries,
                    entry(&format!("deliveries/{seq}.parquet")),
                )];
                if round % 2 == 0 {
                    added.push((
                        Table::Outcomes,
                        entry(&format!("outcomes/{}.parquet", seq + 1)),
                    ));
                }
                seq += 2;
                let mut next = committed.with_files(added, round * 10, seq);
                if round % 3 == 0 {
                    next.dedup = Some(DedupFiles {
                        files: vec![format!("_dedup/{round}.checkpoint")],
                        checkpoint_entries: round,
                        delta_entries: 0,
                    });
                }
                next
            }
        };
        // Retired files are forgotten an hour after their time.
        if round % 50 == 49 {
            now += 7_200_000_000;
            next = next.next_version(now);
            next.version -= 1;
        }
        next.commit(&lake, &committed).await.unwrap();
        checkpoints += usize::from(!next.is_delta());
        let loaded = Manifest::load(&lake).await.unwrap();
        assert_eq!(loaded, next, "round {round}");
        committed = next;
    }
    assert!(checkpoints >= 3, "{checkpoints} checkpoints");
    let on_disk = versions_on_disk(dir.path());
    assert!(on_disk.len() <= MAX_DELTAS as usize + 1, "{on_disk:?}");
    assert_eq!(on_disk.last(), Some(&committed.version));
}

/// After a commit that was not confirmed (its number skipped by the engine's floor),
/// the next commit does not build on a chain it cannot vouch for.
#[tokio::test]
async fn a_commit_that_skips_a_number_is_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let m0 = Manifest::load(&lake).await.unwrap();
    let mut m1 = m0.with_files(vec![(Table::Outcomes, entry("outcomes/a.parquet"))], 5, 2);
    m1.commit(&lake, &m0).await.unwrap();
    // Version 2 was renamed into place unconfirmed, with a file of its own.
    let mut unconfirmed = m1.with_files(vec![(Table::Outcomes, entry("outcomes/b.parquet"))], 6, 3);
    unconfirmed.commit(&lake, &m1).await.unwrap();
    let mut m3 = m1.with_files(vec![(Table::Outcomes, entry("outcomes/c.parquet"))], 7, 4);
    m3.version = 3;
    m3.commit(&lake, &m1).await.unwrap();
    assert!(!m3.is_delta());
    let loaded = Manifest::load(&lake).await.unwrap();
    assert_eq!(loaded, m3);
    assert_eq!(
        loaded
            .files(Table::Outcomes)
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        ["outcomes/a.parquet", "outcomes/c.parquet"]
    );
    assert_eq!(versions_on_disk(dir.path()), vec![3]);
}

#[tokio::test]
async fn a_torn_newest_version_falls_back_to_the_previous() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let m0 = Manifest::load(&lake).await.unwrap();
    let mut m1 = m0.with_files(vec![(Table::Outcomes, entry("outcomes/a.parquet"))], 5, 2);
    m1.commit(&lake, &m0).await.unwrap();
    std::fs::write(dir.path().join(version_path(2)), b"{\"format\":2,\"vers").unwrap();
    assert_eq!(Manifest::load(&lake).await.unwrap(), m1);
    // Zeros (a rename made durable before the data) are torn too.
    std::fs::write(dir.path().join(version_path(2)), [0u8; 64]).unwrap();
    assert_eq!(Manifest::load(&lake).await.unwrap(), m1);
    // The same on top of a delta.
    let mut m2 = m1.with_files(vec![(Table::Outcomes, entry("outcomes/b.parquet"))], 6, 3);
    m2.commit(&lake, &m1).await.unwrap();
    assert!(m2.is_delta());
    std::fs::write(
        dir.path().join(version_path(3)),
        b"{\"format\":2,\"kind\":\"del",
    )
    .unwrap();
    assert_eq!(Manifest::load(&lake).await.unwrap(), m2);
}

#[tokio::test]
async fn a_chain_with_a_missing_or_damaged_version_stops_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let committed = chain_of_three(&lake).await;
    assert_eq!(versions_on_disk(dir.path()), vec![1, 2, 3]);
    let middle = dir.path().join(version_path(2));
    let saved = std::fs::read(&middle).unwrap();
    // Damaged (not torn: a newer version builds on it): never skipped.
    std::fs::write(&middle, b"{\"format\":2,").unwrap();
    let err = Manifest::load(&lake).await.unwrap_err();
    assert!(matches!(err, ManifestError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("builds on it"), "{err}");
    // Gone.
    std::fs::remove_file(&middle).unwrap();
    let err = Manifest::load(&lake).await.unwrap_err();
    assert!(err.to_string().contains("chain is not all there"), "{err}");
    std::fs::write(&middle, saved).unwrap();
    assert_eq!(Manifest::load(&lake).await.unwrap(), committed);
}

#[tokio::test]
async fn a_format_1_manifest_loads_and_is_followed_by_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    std::fs::create_dir_all(dir.path().join(DIR)).unwrap();
    let old = r#"{"format": 1, "version": 4, "wal_through": 9, "next_file_seq": 3,
        "tables": {"deliveries": [{"path": "deliveries/a.parquet", "rows": 3, "bytes": 100,
        "min_time_us": 1, "max_time_us": 2}]}}"#;
    std::fs::write(dir.path().join(version_path(4)), old).unwrap();
    let m4 = Manifest::load(&lake).await.unwrap();
    assert_eq!(m4.files(Table::Deliveries), [entry("deliveries/a.parquet")]);
    let mut m5 = m4.with_files(
        vec![(Table::Deliveries, entry("deliveries/b.parquet"))],
        10,
        4,
    );
    m5.commit(&lake, &m4).await.unwrap();
    assert!(!m5.is_delta());
    assert_eq!(Manifest::load(&lake).await.unwrap(), m5);
    assert_eq!(versions_on_disk(dir.path()), vec![5]);
}

#[tokio::test]
async fn a_newer_or_unreadable_whole_manifest_stops_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let m0 = Manifest::load(&lake).await.unwrap();
    let mut m1 = m0.with_files(vec![(Table::Outcomes, entry("outcomes/a.parquet"))], 5, 2);
    m1.commit(&lake, &m0).await.unwrap();
    // A newer build's manifest, with fields this build does not know.
    let newer = r#"{"format": 4, "version": 2, "tables": {"deliveries": [{"path": "deliveries/b.parquet", "rows": 1}]}, "partitions": {}}"#;
    std::fs::write(dir.path().join(version_path(2)), newer).unwrap();
    let err = Manifest::load(&lake).await.unwrap_err();
    assert!(
        matches!(err, ManifestError::TooNew { found: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer hookscope"), "{err}");
    // Whole JSON of this format that is not a manifest: corrupt, not torn.
    std::fs::write(
        dir.path().join(version_path(2)),
        r#"{"format": 2, "version": "x"}"#,
    )
    .unwrap();
    let err = Manifest::load(&lake).await.unwrap_err();
    assert!(matches!(err, ManifestError::Corrupt { .. }), "{err}");
    // A delta that names a checkpoint after itself.
    std::fs::write(
        dir.path().join(version_path(2)),
        r#"{"format": 2, "version": 2, "kind": "delta", "checkpoint": 2, "wal_through": 5, "next_file_seq": 2}"#,
    )
    .unwrap();
    let err = Manifest::load(&lake).await.unwrap_err();
    assert!(err.to_string().contains("not before it"), "{err}");
}

/// Values at the edges of their types, and an entry changed in place under the same
/// path, survive a delta's trip through JSON.
#[tokio::test]
async fn deltas_round_trip_edge_values_and_changed_entries() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let m0 = Manifest::load(&lake).await.unwrap();
    let mut m1 = m0.with_files(
        vec![(Table::Deliveries, entry("deliveries/a.parquet"))],
        1,
        2,
    );
    m1.commit(&lake, &m0).await.unwrap();
    let edge = FileEntry {
        path: "deliveries/date=1969-12-31/hour=23/\"quoted\" ü.parquet".into(),
        rows: u64::MAX,
        bytes: u64::MAX,
        min_time_us: i64::MIN,
        max_time_us: -1,
        ids: Some((String::new(), "\u{10FFFF}".into())),
    };
    let mut m2 = m1.with_files(vec![(Table::Deliveries, edge)], u64::MAX, u64::MAX);
    m2.tables.get_mut("deliveries").unwrap()[0].rows = 7;
    m2.commit(&lake, &m1).await.unwrap();
    assert!(m2.is_delta());
    assert_eq!(Manifest::load(&lake).await.unwrap(), m2);
}

/// A commit whose changes would take the chain past its budget (here: retention
/// dropping most of a large table) is written as a checkpoint.
#[tokio::test]
async fn a_delta_over_the_budget_is_written_as_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let m0 = Manifest::load(&lake).await.unwrap();
    let many: Vec<_> = (0..2_000)
        .map(|i| {
            (
                Table::Outcomes,
                entry(&format!("outcomes/date=2026-01-01/hour=00/{i:012}.parquet")),
            )
        })
        .collect();
    let mut m1 = m0.with_files(many, 1, 2_001);
    m1.commit(&lake, &m0).await.unwrap();
    let mut m2 = m1.with_files(
        vec![(Table::Outcomes, entry("outcomes/x.parquet"))],
        2,
        2_002,
    );
    m2.commit(&lake, &m1).await.unwrap();
    assert!(m2.is_delta());
    let dropped: Vec<FileEntry> = m2.files(Table::Outcomes)[..1_990].to_vec();
    let mut m3 = m2.next_version(0);
    m3.swap_files(Table::Outcomes, &dropped, Vec::new(), 5);
    m3.commit(&lake, &m2).await.unwrap();
    assert!(!m3.is_delta());
    assert_eq!(Manifest::load(&lake).await.unwrap(), m3);
    assert_eq!(versions_on_disk(dir.path()), vec![3]);
}

/// Only a file that is not whole JSON counts as torn; whole JSON that is not a
/// manifest object never does.
#[test]
fn torn_means_not_whole_json() {
    let torn: &[&[u8]] = &[
        b"",
        &[0u8; 64],
        b"{\"format\":2,\"vers",
        b"{\"a\":1}x",
        b"  ",
    ];
    for bytes in torn {
        assert!(
            matches!(Version::parse(bytes, 1, "v"), Err(Unreadable::Torn(_))),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    let whole: &[&[u8]] = &[
        b"[1,2,3]",
        b"[2,\"delta\"]",
        b"5",
        b"null",
        b"{\"format\":\"x\"}",
    ];
    for bytes in whole {
        assert!(
            matches!(
                Version::parse(bytes, 1, "v"),
                Err(Unreadable::NotManifest(_))
            ),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[tokio::test]
async fn a_damaged_chain_member_names_what_to_move_aside() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    chain_of_three(&lake).await;
    std::fs::write(
        dir.path().join(version_path(2)),
        r#"{"format": 2, "version": "x"}"#,
    )
    .unwrap();
    let err = Manifest::load(&lake).await.unwrap_err().to_string();
    assert!(
        err.contains("versions 2 to 3") && err.contains("not torn"),
        "{err}"
    );
    std::fs::write(dir.path().join(version_path(1)), b"{\"format\":2,").unwrap();
    let err = Manifest::load(&lake).await.unwrap_err().to_string();
    assert!(
        err.contains("restore the _manifest folder from a backup"),
        "{err}"
    );
    // The newest version as a top-level array is whole JSON: never skipped as torn.
    std::fs::write(dir.path().join(version_path(4)), b"[1,2,3]").unwrap();
    let err = Manifest::load(&lake).await.unwrap_err().to_string();
    assert!(err.contains("not an object"), "{err}");
}

#[tokio::test]
async fn a_state_that_shrank_to_under_half_its_checkpoint_is_written_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let m0 = Manifest::load(&lake).await.unwrap();
    let files: Vec<_> = (0..100)
        .map(|i| {
            (
                Table::Deliveries,
                entry(&format!("deliveries/{i:04}.parquet")),
            )
        })
        .collect();
    let mut committed = m0.with_files(files, 1, 101);
    committed.commit(&lake, &m0).await.unwrap();
    // Merges, each a delta (well under the budget) while the files and the retired
    // ones they replaced add up to half the checkpoint's 100 at least.
    const LATER_US: i64 = 10_000_000_000;
    let commit = async |next: Manifest, committed: &mut Manifest| {
        let mut next = next;
        next.commit(&lake, committed).await.unwrap();
        *committed = next;
        (committed.is_delta(), committed.entries())
    };
    let merged: Vec<FileEntry> = committed.files(Table::Deliveries)[..40].to_vec();
    let mut next = committed.next_version(0);
    next.swap_files(
        Table::Deliveries,
        &merged,
        vec![entry("deliveries/m1.parquet")],
        5,
    );
    assert_eq!(commit(next, &mut committed).await, (true, 61 + 40));
    // The replaced files forgotten.
    let next = committed.next_version(LATER_US);
    assert_eq!(commit(next, &mut committed).await, (true, 61));
    let merged: Vec<FileEntry> = committed.files(Table::Deliveries)[1..21].to_vec();
    let mut next = committed.next_version(0);
    next.swap_files(
        Table::Deliveries,
        &merged,
        vec![entry("deliveries/m2.parquet")],
        5,
    );
    assert_eq!(commit(next, &mut committed).await, (true, 42 + 20));
    // 42 left of the checkpoint's 100: a new checkpoint, and loads no longer read
    // the old one.
    let next = committed.next_version(LATER_US);
    assert_eq!(commit(next, &mut committed).await, (false, 42));
    assert_eq!(Manifest::load(&lake).await.unwrap(), committed);
    assert_eq!(versions_on_disk(dir.path()), vec![5]);
}
