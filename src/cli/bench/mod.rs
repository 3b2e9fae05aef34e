//! `hookscope bench`: times the standard analytic set on a lake — one it generates
//! (or generated before, and reuses), or the user's own — and prints per query the
//! median time, the rows it reads per second and the rows it returns.
//!
//! The queries run through the same engine as `hookscope query` and `/query`, after
//! one untimed run each (so every engine compared is warm). Rows scanned are the rows
//! of the query's table within its time range (what it has to read before pruning),
//! the same figure for any engine run on the same files.

mod set;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};

use super::BenchArgs;
use crate::config::Config;
use crate::engine::{Engine, EngineSettings, Mode};
use crate::generate::{Spec, generate};
use crate::query::QueryEngine;
use crate::query::format::{Encoder, ResultFormat};
use crate::tables::Table;
use set::{Analysis, Anchors};

/// The outcome of one query of the set.
#[derive(Debug, serde::Serialize)]
struct Timing {
    name: String,
    description: String,
    sql: String,
    /// Median of the timed runs, milliseconds.
    median_ms: Option<f64>,
    times_ms: Vec<f64>,
    scanned_rows: u64,
    rows_per_s: Option<f64>,
    result_rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The result rows (with `--results`), as the json format writes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<serde_json::Value>,
}

/// What the lake held when it was measured.
#[derive(Debug, serde::Serialize)]
struct LakeFacts {
    dir: PathBuf,
    generated_now: bool,
    deliveries: u64,
    outcomes: u64,
    files: u64,
    bytes: u64,
    /// Bytes on disk (both tables) per delivery.
    bytes_per_delivery: Option<u64>,
    #[serde(serialize_with = "optional_rfc3339")]
    from: Option<DateTime<Utc>>,
    #[serde(serialize_with = "optional_rfc3339")]
    to: Option<DateTime<Utc>>,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    lake: LakeFacts,
    runs: usize,
    anchors: Anchors,
    queries: Vec<Timing>,
}

fn optional_rfc3339<S: serde::Serializer>(
    t: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => set::rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// Runs the bench command.
pub async fn run(args: BenchArgs, config: Config) -> anyhow::Result<()> {
    let format = match args.format.as_deref().unwrap_or("table") {
        "table" => ResultFormat::Table,
        "json" => ResultFormat::Json,
        other => bail!("unknown format {other:?}; use table or json"),
    };
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let registry = crate::monitor::Registry::load(&config.queries_dirs);
    let known = names(&registry);
    if let Some(unknown) = args.query.iter().find(|q| !known.contains(q)) {
        bail!(
            "no query of the set is named {unknown:?}; the set: {}",
            known.join(", ")
        );
    }
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("data/bench-{}-{}d", args.rows, args.days)));
    let generated_now = ensure_lake(&dir, &args, &config).await?;
    fill_rollups(&dir, &registry, &config).await?;

    let mut settings = EngineSettings::from_config(&config);
    settings.data_dir = dir.clone();
    // The bench measures speed, not the limits: a slow query finishes and is timed.
    settings.query.timeout = settings.query.timeout.max(Duration::from_secs(3600));
    settings.query.max_result_bytes = u64::MAX;
    let engine = Engine::open(settings, Mode::ReadOnly).await?;
    let facts = lake_facts(&engine, &dir, generated_now);
    let Some(to) = facts.to else {
        bail!(
            "the lake in {} has no deliveries to measure; remove it, or pass an empty --data-dir to generate one",
            dir.display()
        );
    };
    let query = engine.query();
    let anchors = anchors(query, facts.from.unwrap_or(to), to).await?;
    let analyses: Vec<Analysis> = set::standard_set(&anchors)
        .into_iter()
        .chain(set::saved_queries(&registry, &anchors))
        .chain(set::rollup_pair(&anchors))
        .filter(|a| args.query.is_empty() || args.query.contains(&a.name))
        .collect();
    if analyses.is_empty() {
        bail!("the lake has no delivery to look up; run other queries of the set");
    }

    let bar = progress_bar((analyses.len() * (args.runs + 1)) as u64, "running the set");
    let mut queries = Vec::new();
    for analysis in &analyses {
        bar.set_message(analysis.name.clone());
        queries.push(time_one(query, analysis, args.runs, args.results, &bar).await);
    }
    bar.finish_and_clear();
    let report = Report {
        lake: facts,
        runs: args.runs,
        anchors,
        queries,
    };
    match format {
        ResultFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        _ => print_table(&report),
    }
    Ok(())
}

/// Fills each rollup the lake does not hold yet over the lake's whole span (as
/// `hookscope queries backfill` would), so the set can compare a chart read from a
/// rollup with the same chart read from the raw table.
async fn fill_rollups(
    dir: &Path,
    registry: &crate::monitor::Registry,
    config: &Config,
) -> anyhow::Result<()> {
    let lake = crate::lake::Lake::local(dir)?;
    let manifest = crate::lake::manifest::Manifest::load(&lake).await?;
    let missing: Vec<&crate::monitor::QueryFile> = registry
        .queries()
        .filter(|q| q.materialize)
        .filter(|q| {
            manifest
                .files(crate::query::catalog::rollup::table_name(&q.name))
                .is_empty()
        })
        .collect();
    let deliveries = manifest.files(Table::Deliveries);
    let (Some(from), Some(to)) = (
        deliveries.iter().map(|f| f.min_time_us).min(),
        deliveries.iter().map(|f| f.max_time_us).max(),
    ) else {
        return Ok(());
    };
    if missing.is_empty() {
        return Ok(());
    }
    let mut settings = EngineSettings::from_config(config);
    settings.data_dir = dir.to_path_buf();
    settings.query.timeout = settings.query.timeout.max(Duration::from_secs(3600));
    let engine = Engine::open(settings, Mode::Serve)
        .await
        .with_context(|| format!("cannot open {} to fill its rollups", dir.display()))?;
    let time = |us: i64| DateTime::from_timestamp_micros(us).unwrap_or_default();
    for q in missing {
        let started = Instant::now();
        let done = crate::monitor::rollup::refresh(
            &engine,
            q,
            time(from),
            time(to.saturating_add(1)),
            &Default::default(),
            false,
            |_, _| {},
        )
        .await
        .map_err(anyhow::Error::msg)?;
        eprintln!(
            "filled rollup_{} with {} rows in {:.1} s",
            q.name,
            done.rows,
            started.elapsed().as_secs_f64()
        );
    }
    engine.shutdown().await?;
    Ok(())
}

/// Uses the lake in `dir` when it holds one; generates one otherwise. True if it
/// generated.
async fn ensure_lake(dir: &Path, args: &BenchArgs, config: &Config) -> anyhow::Result<bool> {
    let lake = crate::lake::Lake::local(dir)?;
    if dir.exists() {
        let manifest = crate::lake::manifest::Manifest::load(&lake).await?;
        if !manifest.files(Table::Deliveries).is_empty() {
            return Ok(false);
        }
    }
    let spec = Spec {
        deliveries: args.rows,
        end_us: Utc::now().timestamp_micros(),
        span: Duration::from_secs(args.days.saturating_mul(86_400)),
        seed: args.seed,
        flush_every: args.flush_every,
        zstd_level: config.parquet.zstd_level,
        mean_body_bytes: 1024,
    };
    let bar = progress_bar(args.rows, "generating deliveries");
    let progress = {
        let bar = bar.clone();
        move |n: u64| bar.set_position(n)
    };
    let started = Instant::now();
    let summary = generate(dir, &spec, progress)
        .await
        .with_context(|| format!("cannot generate a lake in {}", dir.display()))?;
    bar.finish_and_clear();
    eprintln!(
        "generated {} deliveries and {} outcomes over {} days in {} ({:.1} s)",
        summary.deliveries,
        summary.outcomes,
        args.days,
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(true)
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(&format!(
        "{what} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn lake_facts(engine: &Engine, dir: &Path, generated_now: bool) -> LakeFacts {
    let manifest = engine.catalog().manifest();
    let rows = |t: Table| manifest.files(t).iter().map(|f| f.rows).sum::<u64>();
    let all: Vec<_> = Table::ALL
        .iter()
        .flat_map(|t| manifest.files(*t).iter())
        .collect();
    let deliveries = manifest.files(Table::Deliveries);
    let time = |us: Option<i64>| us.and_then(DateTime::<Utc>::from_timestamp_micros);
    LakeFacts {
        dir: dir.to_path_buf(),
        generated_now,
        deliveries: rows(Table::Deliveries),
        outcomes: rows(Table::Outcomes),
        files: all.len() as u64,
        bytes: all.iter().map(|f| f.bytes).sum(),
        bytes_per_delivery: all
            .iter()
            .map(|f| f.bytes)
            .sum::<u64>()
            .checked_div(rows(Table::Deliveries)),
        from: time(deliveries.iter().map(|f| f.min_time_us).min()),
        to: time(deliveries.iter().map(|f| f.max_time_us).max()),
    }
}

/// Picks the lookups' targets from the middle of the lake's span.
async fn anchors(
    query: &QueryEngine,
    from: DateTime<Utc>,
    end: DateTime<Utc>,
) -> anyhow::Result<Anchors> {
    let middle = from + (end - from) / 2;
    let (_, batches) = query
        .collect(&set::anchors_sql(middle))
        .await
        .context("cannot pick a delivery to look up")?;
    let text = |column: usize| {
        batches.iter().find(|b| b.num_rows() > 0).and_then(|b| {
            let c =
                arrow::compute::cast(b.column(column), &arrow::datatypes::DataType::Utf8).ok()?;
            let c = c.as_string::<i32>();
            (!c.is_null(0)).then(|| c.value(0).to_string())
        })
    };
    Ok(Anchors {
        end,
        id: text(0),
        event_id: text(1),
    })
}

async fn time_one(
    query: &QueryEngine,
    analysis: &Analysis,
    runs: usize,
    keep_result: bool,
    bar: &ProgressBar,
) -> Timing {
    let mut timing = Timing {
        name: analysis.name.clone(),
        description: analysis.description.clone(),
        sql: analysis.sql.clone(),
        median_ms: None,
        times_ms: Vec::new(),
        scanned_rows: 0,
        rows_per_s: None,
        result_rows: None,
        error: None,
        result: None,
    };
    match scanned(query, analysis).await {
        Ok(n) => timing.scanned_rows = n,
        Err(e) => timing.error = Some(format!("{e:#}")),
    }
    // One untimed run, then the timed ones.
    for run in 0..=runs {
        let started = Instant::now();
        let result = run_once(query, analysis, keep_result && run == 0).await;
        let elapsed = started.elapsed();
        bar.inc(1);
        match result {
            Ok((rows, value)) => {
                timing.result_rows = Some(rows);
                if value.is_some() {
                    timing.result = value;
                }
                if run > 0 {
                    timing.times_ms.push(elapsed.as_secs_f64() * 1000.0);
                }
            }
            Err(e) => {
                timing.error = Some(format!("{e:#}"));
                bar.inc((runs - run) as u64);
                return timing;
            }
        }
    }
    let mut sorted = timing.times_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    };
    timing.median_ms = median;
    timing.rows_per_s = median
        .filter(|ms| *ms > 0.0 && analysis.table.is_some())
        .map(|ms| timing.scanned_rows as f64 / (ms / 1000.0));
    timing
}

/// Runs `sql` to its end: the result's rows, and with `keep` the rows as JSON.
async fn run_once(
    query: &QueryEngine,
    analysis: &Analysis,
    keep: bool,
) -> anyhow::Result<(u64, Option<serde_json::Value>)> {
    let mut stream = query.stream_at(&analysis.sql, analysis.now).await?;
    let mut encoder = keep
        .then(|| Encoder::new(ResultFormat::Json, &stream.schema(), u64::MAX))
        .transpose()?;
    let mut json = Vec::new();
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        if let Some(e) = encoder.as_mut() {
            json.extend_from_slice(&e.write(&batch)?);
        }
    }
    let value = match encoder {
        Some(e) => {
            json.extend_from_slice(&e.finish()?);
            Some(serde_json::from_slice(&json).context("the result is not JSON")?)
        }
        None => None,
    };
    Ok((rows, value))
}

async fn scanned(query: &QueryEngine, analysis: &Analysis) -> anyhow::Result<u64> {
    let Some(sql) = set::scanned_sql(analysis) else {
        return Ok(0);
    };
    let (_, batches) = query.collect(&sql).await?;
    let count = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| {
            b.column(0)
                .as_primitive_opt::<Int64Type>()
                .map(|c| c.value(0))
        })
        .unwrap_or(0);
    Ok(u64::try_from(count).unwrap_or(0))
}

fn print_table(report: &Report) {
    let lake = &report.lake;
    let span = match (lake.from, lake.to) {
        (Some(from), Some(to)) => format!(
            "{} to {}",
            from.format("%Y-%m-%d %H:%M"),
            to.format("%Y-%m-%d %H:%M UTC")
        ),
        _ => "empty".into(),
    };
    println!(
        "lake {}{}: {} deliveries, {} outcomes, {} files, {}{}, {span}",
        lake.dir.display(),
        if lake.generated_now {
            " (generated now)"
        } else {
            ""
        },
        lake.deliveries,
        lake.outcomes,
        lake.files,
        bytesize::ByteSize(lake.bytes),
        lake.bytes_per_delivery
            .map_or_else(String::new, |b| format!(" ({b} bytes per delivery)")),
    );
    println!("median of {} runs after one untimed run\n", report.runs);
    println!(
        "{:<28} {:>12} {:>14} {:>14} {:>12}",
        "query", "median", "rows scanned", "rows/s", "result rows"
    );
    for q in &report.queries {
        let median = q
            .median_ms
            .map_or_else(|| "-".into(), |ms| format!("{ms:.1} ms"));
        let rate = q.rows_per_s.map_or_else(|| "-".into(), per_second);
        let rows = q.result_rows.map_or_else(|| "-".into(), |r| r.to_string());
        let scanned = if q.rows_per_s.is_some() || q.scanned_rows > 0 {
            q.scanned_rows.to_string()
        } else {
            "-".into()
        };
        println!(
            "{:<28} {:>12} {:>14} {:>14} {:>12}",
            q.name, median, scanned, rate, rows
        );
        if let Some(e) = &q.error {
            println!("  error: {e}");
        }
    }
}

fn per_second(rate: f64) -> String {
    match rate {
        r if r >= 1e6 => format!("{:.1} M", r / 1e6),
        r if r >= 1e3 => format!("{:.1} k", r / 1e3),
        r => format!("{r:.0}"),
    }
}

/// The set's query names (for errors): the standard set, then the saved queries.
pub(crate) fn names(registry: &crate::monitor::Registry) -> Vec<String> {
    let anchors = Anchors {
        end: Utc::now(),
        id: Some(String::new()),
        event_id: Some(String::new()),
    };
    set::standard_set(&anchors)
        .into_iter()
        .chain(set::saved_queries(registry, &anchors))
        .chain(set::rollup_pair(&anchors))
        .map(|a| a.name)
        .collect()
}
