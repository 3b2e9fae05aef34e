//! Rollups: a saved query with `materialize: true` keeps its result as table
//! `rollup_<name>`, so a chart over a year reads a year of hourly rows instead of a
//! year of deliveries.
//!
//! A run at time `at` recomputes a window of whole buckets, the last `lookback`
//! buckets that began before `at`, and replaces them in the rollup (late rows inside
//! the window are counted; a rerun is idempotent). The query reads its window through
//! the parameters `:from` and `:to` (RFC 3339 times, `to` not included) and returns the
//! bucket start as its first column. A longer range (a catch-up after downtime, a
//! backfill) is computed in chunks of a day of buckets, each as of its end.
//!
//! Invariants:
//! - Windows start on a bucket boundary (multiples of the bucket since 1970-01-01
//!   UTC, as `date_bin` counts them) and chunks end on one, or at the run's time.
//! - A chunk's rows replace exactly that chunk's buckets, in one commit
//!   ([`Engine::write_rollup`]); a failed chunk leaves the rollup as it was for its
//!   buckets and stops the run, so the next run or backfill redoes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::{QueryFile, run};
use crate::engine::{Engine, RollupWindow};
use crate::tables::Table;

/// The parameters a rollup's window is bound to.
pub const FROM: &str = "from";
pub const TO: &str = "to";
const DAY_US: i64 = 86_400_000_000;

/// Buckets `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// What a refresh wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refreshed {
    /// Rows now in the rollup for the refreshed buckets.
    pub rows: u64,
    /// Chunks computed and committed.
    pub chunks: usize,
    /// Rows the query returned outside its chunk's buckets (not kept).
    pub outside: u64,
    /// The buckets before this were left as they are: the raw rows of a table the
    /// query reads may be past its retention there.
    pub kept_before: Option<DateTime<Utc>>,
}

fn bucket_us(q: &QueryFile) -> i64 {
    let bucket = q.bucket.unwrap_or(Duration::from_secs(3600));
    i64::try_from(bucket.as_micros()).unwrap_or(i64::MAX).max(1)
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// The start of the bucket that holds `t`.
pub fn bucket_start(q: &QueryFile, t: DateTime<Utc>) -> DateTime<Utc> {
    let b = bucket_us(q);
    time(micros(t).div_euclid(b) * b)
}

/// The end of the bucket that holds the instant before `t` (`t` itself on a
/// boundary).
pub fn bucket_end(q: &QueryFile, t: DateTime<Utc>) -> DateTime<Utc> {
    let b = bucket_us(q);
    time((micros(t).saturating_sub(1).div_euclid(b) + 1).saturating_mul(b))
}

/// The write path's tables a query's SQL names.
fn tables_read(sql: &str) -> Vec<Table> {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return Table::ALL.to_vec();
    };
    let mut tables: Vec<Table> = tokens
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) => Table::from_name(&w.value.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    tables.sort();
    tables.dedup();
    tables
}

/// The window a run at `at` recomputes: the `lookback` buckets up to the one that
/// holds the instant before `at`, read up to `at`.
pub fn window_at(q: &QueryFile, at: DateTime<Utc>) -> Window {
    let b = bucket_us(q);
    let last = micros(at).saturating_sub(1).div_euclid(b) * b;
    let from = last.saturating_sub(b.saturating_mul(i64::from(q.lookback.max(1)) - 1));
    Window {
        from: time(from),
        to: at,
    }
}

/// `[from, to)` cut into chunks of whole buckets, about a day each (a bucket at least),
/// the first starting at the bucket that holds `from`.
pub fn chunks(q: &QueryFile, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Window> {
    let b = bucket_us(q);
    let step = b.saturating_mul((DAY_US / b).max(1));
    let mut out = Vec::new();
    let mut start = micros(bucket_start(q, from));
    let end = micros(to);
    while start < end {
        let stop = start.saturating_add(step).min(end);
        out.push(Window {
            from: time(start),
            to: time(stop),
        });
        start = stop;
    }
    out
}

/// Computes `q` over `[from, to)` chunk by chunk and replaces those buckets of its
/// rollup (`rebuild`: the first chunk replaces the whole rollup, whatever columns it
/// had). `on_chunk` hears of each committed chunk (for progress).
pub async fn refresh(
    engine: &Arc<Engine>,
    q: &QueryFile,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    overrides: &BTreeMap<String, String>,
    rebuild: bool,
    mut on_chunk: impl FnMut(&Window, u64),
) -> Result<Refreshed, String> {
    if !q.materialize {
        return Err(format!(
            "{} is not a rollup (its file has no `-- materialize: true`)",
            q.name
        ));
    }
    // Buckets whose raw rows retention may have dropped keep what the rollup holds.
    let mut done = Refreshed::default();
    let horizon = engine.retention_horizon_us(Utc::now().timestamp_micros(), &tables_read(&q.sql));
    let from = match horizon {
        Some(h) if h > micros(from) => {
            let kept = bucket_end(q, time(h));
            tracing::info!(query = %q.name, from = %from, kept_from = %kept, "buckets before the retention horizon are kept as they are in the rollup");
            done.kept_before = Some(kept);
            kept
        }
        _ => from,
    };
    let mut rebuild = rebuild;
    for chunk in chunks(q, from, to) {
        let (schema, batches) = run::collect_window(engine.query(), q, chunk, overrides)
            .await
            .map_err(|e| e.to_string())?;
        let window = RollupWindow {
            from_us: micros(chunk.from),
            to_us: micros(chunk.to),
            bucket_us: bucket_us(q),
            rebuild,
        };
        let written = engine
            .write_rollup(&q.name, window, &schema, batches)
            .await
            .map_err(|e| format!("cannot write rollup_{}: {e}", q.name))?;
        rebuild = false;
        if written.outside > 0 {
            tracing::warn!(query = %q.name, rows = written.outside, "rows outside the run's buckets were not kept (filter the time column on :from and :to)");
        }
        done.rows += written.rows;
        done.outside += written.outside;
        done.chunks += 1;
        on_chunk(&chunk, written.rows);
    }
    Ok(done)
}
