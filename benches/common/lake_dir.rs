//! Where a benchmark keeps its lake: the `--dir` given, or a temporary directory
//! removed when the returned guard is dropped.

use std::path::PathBuf;

pub fn lake_dir(given: Option<&PathBuf>) -> (Option<tempfile::TempDir>, PathBuf) {
    match given {
        Some(d) => (None, d.clone()),
        None => {
            let tmp = tempfile::tempdir().expect("temp dir");
            let dir = tmp.path().join("lake");
            (Some(tmp), dir)
        }
    }
}
