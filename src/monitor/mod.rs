//! Saved analyses: query files with a schedule, parameters and (later in the path)
//! alert rules and rollups. This module owns the step after the SQL engine: which
//! saved queries exist, and running one as of a scheduled time.
//!
//! - `file.rs`: one file's `--` header and SQL.
//! - `schedule.rs`: `every 5m` (aligned) and cron schedules in a time zone.
//! - `params.rs`: `:name` parameters bound as literals.
//! - `run.rs`: one run: parameters bound, `now()` the scheduled time, a timeout.
//! - `runs.rs`: the recent runs and last results, in memory.
//! - `scheduler.rs`: runs each scheduled query at its times, never overlapping itself.
//! - `alerts.rs`: the alert state machine; `backtest.rs`: a rule over stored history.
//!
//! The shipped queries (the repository's `queries/` folder) are built into the binary;
//! `queries_dirs` adds the user's own, and a user file of the same name replaces a
//! shipped one. A file that cannot be used is reported (file, line, reason) and
//! never stops the others.

pub mod alerts;
pub mod backtest;
pub mod file;
pub mod params;
pub mod rollup;
pub mod run;
pub mod runs;
pub mod schedule;
pub mod scheduler;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use file::{FileError, QueryFile};

use crate::query::QueryEngine;

/// The shipped query files, built into the binary.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "latency_percentiles.sql",
        include_str!("../../queries/latency_percentiles.sql"),
    ),
    (
        "retry_intervals.sql",
        include_str!("../../queries/retry_intervals.sql"),
    ),
    (
        "payload_size_trend.sql",
        include_str!("../../queries/payload_size_trend.sql"),
    ),
    (
        "volume_per_source.sql",
        include_str!("../../queries/volume_per_source.sql"),
    ),
    (
        "hourly_traffic.sql",
        include_str!("../../queries/hourly_traffic.sql"),
    ),
    (
        "signature_failures.sql",
        include_str!("../../queries/signature_failures.sql"),
    ),
    (
        "error_rate.sql",
        include_str!("../../queries/error_rate.sql"),
    ),
    (
        "traffic_spike.sql",
        include_str!("../../queries/traffic_spike.sql"),
    ),
    ("silence.sql", include_str!("../../queries/silence.sql")),
    (
        "error_burst.sql",
        include_str!("../../queries/error_burst.sql"),
    ),
    (
        "latency_degradation.sql",
        include_str!("../../queries/latency_degradation.sql"),
    ),
    (
        "traffic_drop.sql",
        include_str!("../../queries/traffic_drop.sql"),
    ),
    (
        "retry_storm.sql",
        include_str!("../../queries/retry_storm.sql"),
    ),
    (
        "payment_failures.sql",
        include_str!("../../queries/payment_failures.sql"),
    ),
];

/// The largest query file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Every saved query, and the files that could not be used.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    queries: BTreeMap<String, QueryFile>,
    problems: Vec<FileError>,
    notes: Vec<String>,
}

impl Registry {
    /// The shipped queries, then those of `dirs` (missing folders are skipped).
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut registry = Registry::default();
        for (name, text) in SHIPPED {
            let stem = name.trim_end_matches(".sql");
            registry.add(file::parse(&format!("shipped:{name}"), stem, text));
        }
        for dir in dirs {
            registry.load_dir(dir);
        }
        registry
    }

    fn load_dir(&mut self, dir: &Path) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                self.problem(dir, 0, format!("cannot list the folder: {e}"));
                return;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        paths.sort();
        for path in paths {
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                self.problem(&path, 0, "the file name is not UTF-8".into());
                continue;
            };
            match std::fs::metadata(&path) {
                Ok(m) if m.len() > MAX_FILE_BYTES => {
                    self.problem(&path, 0, format!("larger than {MAX_FILE_BYTES} bytes"));
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    self.problem(&path, 0, format!("cannot read it: {e}"));
                    continue;
                }
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let parsed = file::parse(&path.display().to_string(), stem, &text);
                    self.add(parsed);
                }
                Err(e) => self.problem(&path, 0, format!("cannot read it as UTF-8 text: {e}")),
            }
        }
    }

    fn problem(&mut self, path: &Path, line: usize, reason: String) {
        self.problems.push(FileError {
            file: path.display().to_string(),
            line,
            reason,
        });
    }

    fn add(&mut self, parsed: Result<QueryFile, FileError>) {
        match parsed {
            Ok(q) => {
                let mut same = q.clone();
                if let Some(old) = self.queries.get(&q.name) {
                    same.origin.clone_from(&old.origin);
                }
                if let Some(old) = self.queries.get(&q.name).filter(|old| **old != same) {
                    self.notes.push(format!(
                        "{} replaces {} (same name `{}`)",
                        q.origin, old.origin, q.name
                    ));
                }
                self.queries.insert(q.name.clone(), q);
            }
            Err(e) => self.problems.push(e),
        }
    }

    /// Plans every query with its default parameters against `engine`; a query whose
    /// SQL does not plan moves to the problems. A query that reads the rollup of
    /// another saved query before that rollup has rows cannot be planned yet: it stays,
    /// with a note, and its runs fail until the rollup's first run.
    pub async fn check(&mut self, engine: &QueryEngine) {
        let names: Vec<String> = self.queries.keys().cloned().collect();
        for name in names {
            let Some(q) = self.queries.get(&name) else {
                continue;
            };
            let checked = match run::sql_of(q, chrono::Utc::now(), &BTreeMap::new()) {
                Ok(sql) => match engine.check(&sql).await {
                    Ok(columns) => key_columns_exist(q, &columns),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            if let Err(reason) = &checked
                && let Some(rollup) = self.rollup_not_yet_written(reason)
            {
                self.notes.push(format!(
                    "{}: reads {rollup}, which has no rows yet; it runs once the rollup's first run has written some",
                    q.origin
                ));
                continue;
            }
            if let Err(reason) = checked {
                let q = self.queries.remove(&name).expect("listed");
                self.problems.push(FileError {
                    file: q.origin,
                    line: q.sql_line,
                    reason,
                });
            }
        }
    }

    /// The rollup table a planning error says is missing, if it is the rollup of a
    /// saved query here (so it is only not written yet).
    fn rollup_not_yet_written(&self, error: &str) -> Option<String> {
        let table = error
            .split(['\'', '.'])
            .find(|part| crate::query::catalog::rollup::is_rollup(part))?;
        let query = table.strip_prefix(crate::query::catalog::rollup::PREFIX)?;
        (error.contains("not found") && self.queries.get(query).is_some_and(|q| q.materialize))
            .then(|| table.to_string())
    }

    pub fn get(&self, name: &str) -> Option<&QueryFile> {
        self.queries.get(name)
    }

    /// Why `name` is not a usable query: unknown, or its file cannot be used.
    pub fn not_found(&self, name: &str) -> String {
        let broken = self
            .problems
            .iter()
            .find(|p| p.file.contains(name))
            .map(|p| format!(" (its file cannot be used: {p})"))
            .unwrap_or_default();
        format!("no saved query `{name}`{broken}")
    }

    /// The usable queries, by name.
    pub fn queries(&self) -> impl Iterator<Item = &QueryFile> {
        self.queries.values()
    }

    /// Files that could not be used.
    pub fn problems(&self) -> &[FileError] {
        &self.problems
    }

    /// Header warnings and replaced files: worth a line in the log.
    pub fn notes(&self) -> Vec<String> {
        self.notes
            .iter()
            .cloned()
            .chain(
                self.queries
                    .values()
                    .flat_map(|q| q.warnings.iter().cloned()),
            )
            .collect()
    }
}

/// An alert rule's key columns must be columns of its result (a typo would merge
/// every row into one instance).
fn key_columns_exist(q: &QueryFile, columns: &[String]) -> Result<(), String> {
    match q.alert {
        None => return Ok(()),
        // A rule that holds only without rows is its own instance: no key is read.
        Some(c) if c.holds(0) && !c.holds(1) => return Ok(()),
        Some(_) => {}
    }
    match q.key.iter().find(|k| !columns.contains(k)) {
        Some(missing) => Err(format!(
            "key column `{missing}` is not a column of the query's result (its columns: {}); set `-- key:` to the columns that name one alert",
            columns.join(", ")
        )),
        None => Ok(()),
    }
}

/// A saved query as `GET /queries` and `hookscope queries list --format json` show it.
pub fn describe(q: &QueryFile) -> serde_json::Value {
    serde_json::json!({
        "name": q.name,
        "description": q.description,
        "schedule": q.schedule.as_ref().map(schedule::Schedule::describe),
        "alert": q.alert.map(|a| a.to_string()),
        "severity": q.severity,
        "materialize": q.materialize,
        "rollup": q.bucket.filter(|_| q.materialize).map(|b| serde_json::json!({
            "table": crate::query::catalog::rollup::table_name(&q.name),
            "bucket": humantime::format_duration(b).to_string(),
            "lookback": q.lookback,
        })),
        "params": q.params,
        "origin": q.origin,
    })
}

/// The files that could not be used, as JSON.
pub fn describe_problems(problems: &[FileError]) -> serde_json::Value {
    problems
        .iter()
        .map(|p| serde_json::json!({"file": p.file, "line": p.line, "error": p.reason}))
        .collect()
}

#[cfg(test)]
mod known_answers;
#[cfg(test)]
mod rollup_tests;
#[cfg(test)]
mod tests;
