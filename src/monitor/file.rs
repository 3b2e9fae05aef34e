//! Reading one saved-query file: its `--` header (name, schedule, alert, rollup and
//! parameter settings) and its SQL.
//!
//! The header is the run of `-- key: value` comment lines (and blank lines) at the
//! top; the SQL is everything after it. Free-text comment lines in the header are
//! allowed (`-- Method: …` describes the query); a lower-case `key:` this build does
//! not know is a warning, so a typo does not pass unnoticed. Errors name the file, the
//! line and what to write instead.

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;

use super::schedule::{Schedule, ScheduleError};

/// The keys a header may set.
pub const KEYS: &[&str] = &[
    "name",
    "description",
    "schedule",
    "alert",
    "severity",
    "materialize",
    "bucket",
    "lookback",
    "for",
    "keep_firing_for",
    "key",
    "timezone",
    "param",
    "timeout",
];

/// A query file that cannot be used.
#[derive(Debug, Clone, Error, PartialEq)]
#[error("{file}:{line}: {reason}")]
pub struct FileError {
    pub file: String,
    /// 1-based; the line of the SQL's start for errors in the SQL.
    pub line: usize,
    pub reason: String,
}

/// One saved query, as its file defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryFile {
    pub name: String,
    /// Where it came from: `shipped:<file>` or a path.
    pub origin: String,
    pub description: String,
    pub schedule: Option<Schedule>,
    pub alert: Option<AlertCondition>,
    pub severity: String,
    pub materialize: bool,
    pub bucket: Option<Duration>,
    pub lookback: u32,
    pub pending_for: Duration,
    pub keep_firing_for: Duration,
    /// Columns that identify one alert instance.
    pub key: Vec<String>,
    /// Named parameters and their defaults, as written.
    pub params: BTreeMap<String, String>,
    /// A per-query limit below the server's query timeout.
    pub timeout: Option<Duration>,
    pub sql: String,
    /// The line (1-based) the SQL starts on.
    pub sql_line: usize,
    /// Unknown header keys and similar: reported, not fatal.
    pub warnings: Vec<String>,
}

/// `alert: rows > 0`: when a run's result is a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertCondition {
    pub op: CompareOp,
    pub rows: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl AlertCondition {
    /// True if a result of `rows` rows is a problem.
    pub fn holds(self, rows: u64) -> bool {
        match self.op {
            CompareOp::Gt => rows > self.rows,
            CompareOp::Ge => rows >= self.rows,
            CompareOp::Lt => rows < self.rows,
            CompareOp::Le => rows <= self.rows,
            CompareOp::Eq => rows == self.rows,
            CompareOp::Ne => rows != self.rows,
        }
    }

    fn parse(text: &str) -> Result<AlertCondition, String> {
        let usage = "write `rows > 0` (or >=, <, <=, =, != and a whole number)";
        let rest = text
            .trim()
            .strip_prefix("rows")
            .ok_or_else(|| format!("alert `{text}`: {usage}"))?
            .trim_start();
        let (op, number) = [
            (">=", CompareOp::Ge),
            ("<=", CompareOp::Le),
            ("!=", CompareOp::Ne),
            (">", CompareOp::Gt),
            ("<", CompareOp::Lt),
            ("=", CompareOp::Eq),
        ]
        .into_iter()
        .find_map(|(sym, op)| rest.strip_prefix(sym).map(|n| (op, n)))
        .ok_or_else(|| format!("alert `{text}`: {usage}"))?;
        let rows = number
            .trim()
            .parse()
            .map_err(|_| format!("alert `{text}`: {usage}"))?;
        Ok(AlertCondition { op, rows })
    }
}

impl std::fmt::Display for AlertCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Eq => "=",
            CompareOp::Ne => "!=",
        };
        write!(f, "rows {op} {}", self.rows)
    }
}

/// True for a name usable as a query name (it becomes part of a URL and of the
/// table name `rollup_<name>`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// True for a parameter name.
pub fn valid_param(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses a query file's text. `file` names it in errors; `stem` (the file name
/// without `.sql`) is the name unless the header sets one.
pub fn parse(file: &str, stem: &str, text: &str) -> Result<QueryFile, FileError> {
    let err = |line: usize, reason: String| FileError {
        file: file.to_string(),
        line,
        reason,
    };
    let mut values: Vec<(usize, &str, &str)> = Vec::new();
    let mut warnings = Vec::new();
    let mut sql_start = None;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            offset += line.len();
            continue;
        }
        let Some(comment) = trimmed.strip_prefix("--") else {
            sql_start = Some((i + 1, offset));
            break;
        };
        offset += line.len();
        let comment = comment.trim();
        let Some((key, value)) = comment.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let is_key = !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !is_key {
            continue;
        }
        if KEYS.contains(&key) {
            values.push((i + 1, key, value.trim()));
        } else {
            warnings.push(format!(
                "{file}:{}: unknown header key `{key}` (ignored; known: {})",
                i + 1,
                KEYS.join(", ")
            ));
        }
    }
    let Some((sql_line, sql_offset)) = sql_start else {
        return Err(err(
            text.lines().count().max(1),
            "no SQL after the header: a query file is `-- key: value` lines, then one SELECT"
                .into(),
        ));
    };
    let sql = text[sql_offset..].trim().trim_end_matches(';').trim_end();
    let mut q = QueryFile {
        name: stem.to_string(),
        origin: file.to_string(),
        description: String::new(),
        schedule: None,
        alert: None,
        severity: "warning".into(),
        materialize: false,
        bucket: None,
        lookback: 2,
        pending_for: Duration::ZERO,
        keep_firing_for: Duration::ZERO,
        key: vec!["source".into()],
        params: BTreeMap::new(),
        timeout: None,
        sql: sql.to_string(),
        sql_line,
        warnings,
    };
    let mut timezone = None;
    let mut schedule_text = None;
    let mut seen = std::collections::HashSet::new();
    for (line, key, value) in values {
        if key != "param" && !seen.insert(key) {
            return Err(err(line, format!("`{key}` is set twice")));
        }
        let duration = |what: &str| {
            humantime::parse_duration(value).map_err(|e| {
                err(
                    line,
                    format!("{what} `{value}` is not a duration ({e}); write e.g. 30s, 5m, 1h"),
                )
            })
        };
        match key {
            "name" => q.name = value.to_string(),
            "description" => q.description = value.to_string(),
            "schedule" => schedule_text = Some((line, value)),
            "timezone" => timezone = Some((line, value)),
            "alert" => q.alert = Some(AlertCondition::parse(value).map_err(|r| err(line, r))?),
            "severity" => {
                if !["info", "warning", "critical"].contains(&value) {
                    return Err(err(
                        line,
                        format!("severity `{value}`: write info, warning or critical"),
                    ));
                }
                q.severity = value.to_string();
            }
            "materialize" => {
                q.materialize = match value {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(err(
                            line,
                            format!("materialize `{value}`: write true or false"),
                        ));
                    }
                }
            }
            "bucket" => q.bucket = Some(duration("bucket")?),
            "lookback" => {
                q.lookback = value.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    err(
                        line,
                        format!("lookback `{value}`: write a whole number of buckets, at least 1"),
                    )
                })?;
            }
            "for" => q.pending_for = duration("for")?,
            "keep_firing_for" => q.keep_firing_for = duration("keep_firing_for")?,
            "timeout" => q.timeout = Some(duration("timeout")?),
            "key" => {
                q.key = value
                    .split(',')
                    .map(|k| k.trim().to_string())
                    .filter(|k| !k.is_empty())
                    .collect();
                if q.key.is_empty() {
                    return Err(err(line, "key: name at least one column".into()));
                }
            }
            "param" => {
                let (name, default) = value.split_once('=').ok_or_else(|| {
                    err(
                        line,
                        format!("param `{value}`: write `name = default`, e.g. `spike_factor = 5`"),
                    )
                })?;
                let name = name.trim();
                if !valid_param(name) {
                    return Err(err(
                        line,
                        format!(
                            "param name `{name}`: letters, digits and _, not starting with a digit"
                        ),
                    ));
                }
                let default = default.trim();
                let default = default
                    .strip_prefix('\'')
                    .and_then(|d| d.strip_suffix('\''))
                    .unwrap_or(default);
                if q.params
                    .insert(name.to_string(), default.to_string())
                    .is_some()
                {
                    return Err(err(line, format!("param `{name}` is declared twice")));
                }
            }
            _ => {}
        }
    }
    if !valid_name(&q.name) {
        return Err(err(
            1,
            format!(
                "query name `{}`: use 1-64 lower-case letters, digits and _ (it names a URL and the table rollup_<name>)",
                q.name
            ),
        ));
    }
    if let Some((line, text)) = schedule_text {
        let tz = match timezone {
            Some((tz_line, tz)) => Some(tz.parse::<chrono_tz::Tz>().map_err(|_| {
                err(
                    tz_line,
                    format!("timezone `{tz}` is not an IANA zone name (e.g. Europe/Berlin, UTC)"),
                )
            })?),
            None => None,
        };
        q.schedule =
            Some(Schedule::parse(text, tz).map_err(|e: ScheduleError| err(line, e.to_string()))?);
    } else if let Some((line, _)) = timezone {
        return Err(err(line, "timezone without a schedule".into()));
    }
    if q.materialize && q.bucket.is_none() {
        return Err(err(
            1,
            "materialize: true needs `-- bucket: <duration>` (the rollup's time bucket, e.g. 1h)"
                .into(),
        ));
    }
    if q.materialize && q.alert.is_some() {
        return Err(err(
            1,
            "a query is either a rollup (materialize) or an alert rule, not both".into(),
        ));
    }
    if q.bucket.is_some_and(|b| b < Duration::from_secs(1)) {
        return Err(err(
            1,
            "bucket: a rollup's bucket is 1s at least (e.g. 1m, 1h, 1d)".into(),
        ));
    }
    if q.materialize {
        if let Some(name) = ["from", "to"]
            .into_iter()
            .find(|p| q.params.contains_key(*p))
        {
            return Err(err(
                1,
                format!(
                    "`{name}` is not a parameter a rollup may declare: :from and :to are its window's bounds, set by each run"
                ),
            ));
        }
        if !q.sql.contains(":from") {
            q.warnings.push(format!(
                "{}: the rollup's SQL does not read `:from`: each run computes every bucket and keeps only its window's (filter the time column on :from and :to)",
                q.origin
            ));
        }
    }
    Ok(q)
}
