//! Retention, the lake's part: which committed files lie in hourly partitions that
//! ended before the horizon. The engine drops them in one manifest commit
//! (`engine/retention.rs`).
//!
//! Invariant: only whole partitions go, and only those that ended at or before the
//! horizon; a partition the horizon falls inside is kept whole.

use crate::lake::manifest::{FileEntry, Manifest};
use crate::tables::Table;

const HOUR_US: i64 = 3_600_000_000;

/// The files of `table` in partitions that ended at or before `horizon_us`.
pub fn expired(manifest: &Manifest, table: Table, horizon_us: i64) -> Vec<FileEntry> {
    manifest
        .files(table)
        .iter()
        .filter(|f| {
            let partition_end = f
                .max_time_us
                .div_euclid(HOUR_US)
                .saturating_add(1)
                .saturating_mul(HOUR_US);
            partition_end <= horizon_us
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partitions_that_ended_before_the_horizon_expire() {
        let at = |path: &str, min: i64, max: i64| FileEntry {
            path: path.into(),
            rows: 1,
            bytes: 1,
            min_time_us: min,
            max_time_us: max,
            ids: None,
        };
        let h = 1_000 * HOUR_US;
        let m = Manifest::default().with_files(
            vec![
                (Table::Deliveries, at("a", h - HOUR_US, h - 1)),
                (Table::Deliveries, at("b", h, h + 5)),
                (Table::Outcomes, at("c", h - HOUR_US, h - 1)),
            ],
            0,
            1,
        );
        // The horizon at the end of the first hour: that hour goes.
        let gone = expired(&m, Table::Deliveries, h);
        assert_eq!(
            gone.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        // A horizon inside an hour keeps that hour whole.
        assert!(expired(&m, Table::Deliveries, h - 1).is_empty());
        assert!(expired(&m, Table::Deliveries, h + 10).len() == 1);
    }
}
