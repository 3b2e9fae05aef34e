//! `hookscope query`: the same engine as the server's `/query`, on a data directory
//! read in place (committed files plus WAL records not yet flushed), or forwarded to a
//! running server.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

use super::QueryArgs;
use crate::config::Config;
use crate::engine::{Engine, EngineSettings, Mode};
use crate::query::ResultStream;
use crate::query::format::{Encoder, ResultFormat};

/// Runs the query command; output goes to `-o FILE` or standard output.
pub async fn run(args: QueryArgs, config: Config) -> anyhow::Result<()> {
    let format = output_format(args.out.format.as_deref(), args.out.output.as_deref())?;
    let mut out = open_output(args.out.output.as_deref())?;
    match &args.out.server {
        Some(url) => {
            let body = serde_json::json!({ "sql": args.sql, "format": wire_format(format) });
            remote(url, "/query", body, format, &mut out).await?
        }
        None => local(config, &args.sql, format, &mut out).await?,
    }
    out.flush().context("cannot write the result")?;
    Ok(())
}

/// The output format: `--format`, else Parquet for `-o *.parquet`, else a table.
pub(crate) fn output_format(
    format: Option<&str>,
    output: Option<&Path>,
) -> anyhow::Result<ResultFormat> {
    Ok(match format {
        Some(f) => f.parse::<ResultFormat>().map_err(anyhow::Error::msg)?,
        None if output
            .and_then(Path::extension)
            .is_some_and(|e| e == "parquet") =>
        {
            ResultFormat::Parquet
        }
        None => ResultFormat::Table,
    })
}

/// `-o FILE`, or standard output.
pub(crate) fn open_output(output: Option<&Path>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    })
}

/// Opens the data directory read-only for offline commands.
pub(crate) async fn open_offline(config: &Config) -> anyhow::Result<std::sync::Arc<Engine>> {
    if !config.data_dir.exists() {
        bail!(
            "data directory {} does not exist; pass --data-dir or run `hookscope serve` first",
            config.data_dir.display()
        );
    }
    Ok(Engine::open(EngineSettings::from_config(config), Mode::ReadOnly).await?)
}

async fn local(
    config: Config,
    sql: &str,
    format: ResultFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let engine = open_offline(&config).await?;
    let stream = engine.query().stream(sql).await?;
    write_stream(stream, format, out).await
}

/// Encodes a result to `out` batch by batch.
pub(crate) async fn write_stream(
    mut stream: ResultStream,
    format: ResultFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut encoder = Encoder::new(format, &stream.schema(), u64::MAX)?;
    while let Some(batch) = stream.next().await {
        out.write_all(&encoder.write(&batch?)?)?;
    }
    out.write_all(&encoder.finish()?)?;
    Ok(())
}

/// What to ask a server for: a table is printed from Arrow.
pub(crate) fn wire_format(format: ResultFormat) -> &'static str {
    match format {
        ResultFormat::Json => "json",
        ResultFormat::Ndjson => "ndjson",
        ResultFormat::Csv => "csv",
        ResultFormat::Parquet => "parquet",
        ResultFormat::Arrow | ResultFormat::Table => "arrow",
    }
}

/// POSTs `body` to `path` of the server at `url` and writes the answer (a table is
/// printed from the Arrow the server sends).
pub(crate) async fn remote(
    url: &str,
    path: &str,
    body: serde_json::Value,
    format: ResultFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", url.trim_end_matches('/')))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Ok(token) = std::env::var("HOOKSCOPE_TOKEN")
        && !token.is_empty()
    {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .context("the server's answer was cut short")?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("server answered {status}: {msg}");
    }
    if format == ResultFormat::Table {
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        writeln!(
            out,
            "{}",
            arrow::util::pretty::pretty_format_batches(&batches)?
        )?;
    } else {
        out.write_all(&bytes)?;
    }
    Ok(())
}
