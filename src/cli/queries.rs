//! `hookscope queries list|run`: the saved queries, and one run of a query as of a
//! scheduled time, offline on a data directory or on a running server.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, bail};

use super::query::{open_offline, open_output, output_format, remote, wire_format, write_stream};
use super::{
    QueriesArgs, QueriesBackfillArgs, QueriesBacktestArgs, QueriesCommand, QueriesListArgs,
    QueriesRunArgs,
};
use crate::config::Config;
use crate::engine::{Engine, EngineSettings, Mode};
use crate::lake::Lake;
use crate::lake::manifest::Manifest;
use crate::monitor::{self, Registry, run};
use crate::query::QueryEngine;
use crate::query::catalog::Catalog;

pub async fn run(args: QueriesArgs, mut config: Config) -> anyhow::Result<()> {
    match args.command {
        QueriesCommand::List(list) => {
            if let Some(dir) = &list.data_dir {
                config.data_dir = dir.clone();
            }
            list_queries(list, config).await
        }
        QueriesCommand::Run(r) => {
            if let Some(dir) = &r.out.data_dir {
                config.data_dir = dir.clone();
            }
            run_query(r, config).await
        }
        QueriesCommand::Backtest(b) => {
            if let Some(dir) = &b.data_dir {
                config.data_dir = dir.clone();
            }
            backtest(b, config).await
        }
        QueriesCommand::Backfill(b) => {
            if let Some(dir) = &b.data_dir {
                config.data_dir = dir.clone();
            }
            backfill(b, config).await
        }
    }
}

async fn backfill(args: QueriesBackfillArgs, config: Config) -> anyhow::Result<()> {
    let from = run::parse_time(&args.from).map_err(anyhow::Error::msg)?;
    let now = chrono::Utc::now();
    let to = match &args.to {
        Some(t) => run::parse_time(t).map_err(anyhow::Error::msg)?,
        None => now,
    };
    if to <= from {
        bail!("--to must be after --from");
    }
    let params = parse_params(&args.param)?;
    let registry = checked_registry(&config).await?;
    let q = find(&registry, &args.name)?;
    if !q.materialize {
        bail!(
            "{} is not a rollup: its file has no `-- materialize: true` (and `-- bucket:`)",
            q.name
        );
    }
    if !config.data_dir.exists() {
        bail!(
            "data directory {} does not exist; pass --data-dir",
            config.data_dir.display()
        );
    }
    let engine = Engine::open(EngineSettings::from_config(&config), Mode::Serve)
        .await
        .with_context(|| {
            format!(
                "cannot open {} (a running server keeps its rollups itself; stop it to backfill)",
                config.data_dir.display()
            )
        })?;
    // A bucket is computed whole (unless it is still going on).
    let to = crate::monitor::rollup::bucket_end(q, to).min(now.max(to));
    let chunks = crate::monitor::rollup::chunks(q, from, to);
    let bar = indicatif::ProgressBar::new(chunks.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "backfill [{elapsed_precise}] {bar:30} {pos}/{len} days {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let result =
        crate::monitor::rollup::refresh(&engine, q, from, to, &params, args.rebuild, |w, _| {
            bar.set_message(w.from.format("%Y-%m-%d").to_string());
            bar.inc(1);
        })
        .await;
    bar.finish_and_clear();
    let shutdown = engine.shutdown().await;
    let done = result.map_err(anyhow::Error::msg)?;
    shutdown?;
    println!(
        "rollup_{}: {} rows for the buckets from {} to {} ({} chunks)",
        q.name,
        done.rows,
        crate::monitor::runs::rfc3339(&crate::monitor::rollup::bucket_start(q, from)),
        crate::monitor::runs::rfc3339(&to),
        done.chunks
    );
    if let Some(kept) = done.kept_before {
        println!(
            "note: the buckets before {} were left as they are: the tables the query reads keep their rows for less time than that ([retention])",
            crate::monitor::runs::rfc3339(&kept)
        );
    }
    if done.outside > 0 {
        println!(
            "note: the query returned {} rows outside the buckets it was run for; they were not kept (filter its time column on :from and :to)",
            done.outside
        );
    }
    Ok(())
}

/// The registry, its SQL checked against the tables (of an empty lake: only the
/// columns matter).
pub(crate) async fn checked_registry(config: &Config) -> anyhow::Result<Registry> {
    let mut registry = Registry::load(&config.queries_dirs);
    let scratch = tempfile_dir()?;
    let catalog = Catalog::new(Lake::local(scratch.path())?, Manifest::default());
    let engine = QueryEngine::new(&catalog, crate::query::QueryLimits::default(), false)?;
    registry.check(&engine).await;
    Ok(registry)
}

/// A scratch directory removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> anyhow::Result<Scratch> {
    let dir = std::env::temp_dir().join(format!("hookscope-queries-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(Scratch(dir))
}

async fn list_queries(args: QueriesListArgs, config: Config) -> anyhow::Result<()> {
    let registry = checked_registry(&config).await?;
    let mut out = std::io::stdout().lock();
    match args.format.as_deref().unwrap_or("table") {
        "json" => {
            let value = serde_json::json!({
                "queries": registry.queries().map(monitor::describe).collect::<Vec<_>>(),
                "problems": monitor::describe_problems(registry.problems()),
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        }
        "table" => {
            writeln!(
                out,
                "{:<22} {:<20} {:<12} {:<9} description",
                "name", "schedule", "alert/rollup", "severity"
            )?;
            for q in registry.queries() {
                let schedule = q
                    .schedule
                    .as_ref()
                    .map_or_else(|| "-".into(), |s| s.describe());
                let (kind, severity) = match (q.alert, q.bucket.filter(|_| q.materialize)) {
                    (Some(a), _) => (a.to_string(), q.severity.as_str()),
                    (None, Some(b)) => (format!("rollup {}", humantime::format_duration(b)), "-"),
                    (None, None) => ("-".into(), "-"),
                };
                writeln!(
                    out,
                    "{:<22} {:<20} {:<12} {:<9} {}",
                    q.name, schedule, kind, severity, q.description
                )?;
                if !q.params.is_empty() {
                    let params: Vec<String> =
                        q.params.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    writeln!(out, "{:<22} params: {}", "", params.join(", "))?;
                }
            }
            for note in registry.notes() {
                writeln!(out, "note: {note}")?;
            }
            for problem in registry.problems() {
                writeln!(out, "problem: {problem}")?;
            }
        }
        other => bail!("--format {other}: write table or json"),
    }
    Ok(())
}

/// `--param k=v` flags as a map.
pub(crate) fn parse_params(flags: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    for flag in flags {
        let Some((k, v)) = flag.split_once('=') else {
            bail!("--param {flag}: write --param name=value");
        };
        params.insert(k.trim().to_string(), v.to_string());
    }
    Ok(params)
}

async fn run_query(args: QueriesRunArgs, config: Config) -> anyhow::Result<()> {
    let format = output_format(args.out.format.as_deref(), args.out.output.as_deref())?;
    let params = parse_params(&args.param)?;
    let at = match &args.at {
        Some(t) => Some(run::parse_time(t).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let mut out = open_output(args.out.output.as_deref())?;
    if let Some(url) = &args.out.server {
        let body = serde_json::json!({
            "params": params,
            "at": at.map(|t| t.to_rfc3339()),
            "format": wire_format(format),
        });
        let path = format!("/queries/{}/run", args.name);
        remote(url, &path, body, format, &mut out).await?;
    } else {
        let registry = Registry::load(&config.queries_dirs);
        let q = find(&registry, &args.name)?;
        let engine = open_offline(&config).await?;
        let at = at.unwrap_or_else(chrono::Utc::now);
        let stream = run::stream(engine.query(), q, at, &params).await?;
        write_stream(stream, format, &mut out).await?;
    }
    out.flush().context("cannot write the result")?;
    Ok(())
}

/// The named query of the registry, or an error listing the others.
fn find<'a>(registry: &'a Registry, name: &str) -> anyhow::Result<&'a crate::monitor::QueryFile> {
    if let Some(q) = registry.get(name) {
        return Ok(q);
    }
    let known: Vec<&str> = registry.queries().map(|q| q.name.as_str()).collect();
    bail!(
        "{}; the saved queries: {}",
        registry.not_found(name),
        known.join(", ")
    )
}

async fn backtest(args: QueriesBacktestArgs, config: Config) -> anyhow::Result<()> {
    let format = args.format.as_deref().unwrap_or("table");
    if !["table", "json"].contains(&format) {
        bail!("--format {format}: write table or json");
    }
    let from = run::parse_time(&args.from).map_err(anyhow::Error::msg)?;
    let to = run::parse_time(&args.to).map_err(anyhow::Error::msg)?;
    if to <= from {
        bail!("--to must be after --from");
    }
    let params = parse_params(&args.param)?;
    let registry = Registry::load(&config.queries_dirs);
    let q = find(&registry, &args.name)?;
    let times = crate::monitor::backtest::times(q, from, to).map_err(anyhow::Error::msg)?;
    let engine = open_offline(&config).await?;
    let bar = indicatif::ProgressBar::new(times.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "backtest [{elapsed_precise}] {bar:30} {pos}/{len} runs",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let episodes = crate::monitor::backtest::backtest(
        engine.query(),
        q,
        &times,
        &params,
        config.alerts.renotify.0,
        || bar.inc(1),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    if format == "json" {
        let list: Vec<serde_json::Value> = episodes.iter().map(|e| e.to_json()).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<28} {:<28} {:<9} key",
        "fired_at", "resolved_at", "severity"
    )?;
    for e in &episodes {
        let resolved = e.resolved_at.map_or_else(
            || "(still firing)".into(),
            |t| crate::monitor::runs::rfc3339(&t),
        );
        writeln!(
            out,
            "{:<28} {:<28} {:<9} {}",
            crate::monitor::runs::rfc3339(&e.fired_at),
            resolved,
            e.severity,
            e.key
        )?;
    }
    let days = (to - from).num_seconds() as f64 / 86_400.0;
    writeln!(
        out,
        "{} alerts in {} runs over {days:.1} days ({:.2} a day); nothing was sent",
        episodes.len(),
        times.len(),
        episodes.len() as f64 / days
    )?;
    Ok(())
}
