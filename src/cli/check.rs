//! `hookscope check`: verifies a lake without changing it. The manifest against
//! the files (each named file exists, is a readable Parquet file, and holds the rows
//! and bytes the manifest records), the files against the manifest (no file in a
//! table folder that no manifest names), the dedup state files, and the WAL (it
//! reads, and no record past the committed files is missing). Prints each problem
//! with what to do, and exits non-zero when there is one.

use std::collections::HashSet;
use std::path::Path;

use anyhow::bail;
use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::config::Config;
use crate::lake::Lake;
use crate::lake::manifest::Manifest;
use crate::model::Entry;
use crate::tables::Table;

/// What the check found.
#[derive(Debug, Default)]
struct Findings {
    problems: Vec<String>,
    notes: Vec<String>,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let dir = &config.data_dir;
    if !dir.exists() {
        bail!(
            "data directory {} does not exist; pass --data-dir",
            dir.display()
        );
    }
    let lake = Lake::local(dir)?;
    let manifest = Manifest::load(&lake).await?;
    let mut found = Findings::default();
    check_files(&lake, dir, &manifest, &mut found).await?;
    check_wal(&dir.join("wal"), manifest.wal_through, &mut found)?;

    let files: usize = Table::ALL.iter().map(|t| manifest.files(*t).len()).sum();
    let rows: u64 = Table::ALL
        .iter()
        .flat_map(|t| manifest.files(*t))
        .map(|f| f.rows)
        .sum();
    println!(
        "lake {}: manifest version {}, {files} files, {rows} rows, WAL committed through {}",
        dir.display(),
        manifest.version,
        manifest.wal_through
    );
    for note in &found.notes {
        println!("note: {note}");
    }
    for problem in &found.problems {
        println!("problem: {problem}");
    }
    if found.problems.is_empty() {
        println!("ok: every committed file is present and whole, and the WAL is continuous");
        Ok(())
    } else {
        bail!("{} problem(s) found (listed above)", found.problems.len())
    }
}

async fn check_files(
    lake: &Lake,
    dir: &Path,
    manifest: &Manifest,
    found: &mut Findings,
) -> anyhow::Result<()> {
    let mut named: HashSet<&str> = HashSet::new();
    // The write path's tables and the rollups.
    for files in manifest.tables.values() {
        for entry in files {
            named.insert(entry.path.as_str());
            let path = dir.join(&entry.path);
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    found.problems.push(format!(
                        "{} is named by the manifest but cannot be opened ({e}): its {} rows are lost unless it is restored from a backup",
                        entry.path, entry.rows
                    ));
                    continue;
                }
            };
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if size != entry.bytes {
                found.problems.push(format!(
                    "{} holds {size} bytes where the manifest records {}: it was changed or cut short after it was committed; restore it from a backup",
                    entry.path, entry.bytes
                ));
                continue;
            }
            match SerializedFileReader::new(file) {
                Ok(reader) => {
                    let rows = reader.metadata().file_metadata().num_rows();
                    if u64::try_from(rows).ok() != Some(entry.rows) {
                        found.problems.push(format!(
                            "{} holds {rows} rows where the manifest records {}; restore it from a backup",
                            entry.path, entry.rows
                        ));
                    }
                }
                Err(e) => found.problems.push(format!(
                    "{} is not a readable Parquet file ({e}); restore it from a backup",
                    entry.path
                )),
            }
        }
    }
    for path in manifest.dedup_paths() {
        named.insert(path);
        if !dir.join(path).exists() {
            found.problems.push(format!(
                "the dedup state file {path} is missing: the next start rebuilds the index from the lake (attempt numbers of earlier keys may restart at 1)"
            ));
        }
    }
    let retired: HashSet<&str> = manifest.retired.iter().map(|r| r.path.as_str()).collect();
    let mut waiting = 0;
    for folder in Table::ALL.iter().map(|t| t.name()).chain([
        crate::lake::dedup_state::DIR,
        crate::query::catalog::rollup::DIR,
    ]) {
        for listed in lake.list(folder).await? {
            if named.contains(listed.path.as_str()) {
                continue;
            }
            if retired.contains(listed.path.as_str()) {
                waiting += 1;
                continue;
            }
            found.problems.push(format!(
                "{} is not named by the manifest (left by an interrupted flush, or copied in): readers of the raw files count its rows; the next `hookscope serve` or `hookscope compact` removes it",
                listed.path
            ));
        }
    }
    if waiting > 0 {
        found.notes.push(format!(
            "{waiting} files replaced by compaction or retention wait to be deleted (no query may still read them)"
        ));
    }
    Ok(())
}

fn check_wal(wal_dir: &Path, wal_through: u64, found: &mut Findings) -> anyhow::Result<()> {
    let mut next: Option<u64> = None;
    let mut gaps = Vec::new();
    let mut pending = 0u64;
    let summary = crate::wal::read_only_replay(wal_dir, |seq, _entry: Entry| {
        if seq <= wal_through {
            return;
        }
        pending += 1;
        let expected = next.unwrap_or(wal_through + 1);
        if seq != expected {
            gaps.push((expected, seq));
        }
        next = Some(seq + 1);
    });
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            found.problems.push(format!(
                "the WAL in {} cannot be read ({e}); its unflushed deliveries cannot be recovered until it can",
                wal_dir.display()
            ));
            return Ok(());
        }
    };
    for (expected, got) in gaps {
        found.problems.push(format!(
            "WAL records {expected} to {} are missing (after the committed files, before record {got}): acknowledged deliveries were lost",
            got - 1
        ));
    }
    for corrupt in &summary.corrupt {
        found.problems.push(format!("WAL: {corrupt}"));
    }
    if summary.torn_bytes_cut > 0 {
        found.notes.push(format!(
            "the newest WAL segment ends in {} bytes of a torn write (a crash mid-append; that record was never acknowledged); the next start trims them",
            summary.torn_bytes_cut
        ));
    }
    if pending > 0 {
        found.notes.push(format!(
            "{pending} WAL records are not in files yet (a running server flushes them; a stopped one does at its next start)"
        ));
    }
    Ok(())
}
