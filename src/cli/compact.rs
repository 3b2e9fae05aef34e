//! `hookscope compact`: merges the small files of every partition of a lake no
//! server runs on, and prints what it did.

use anyhow::{Context, bail};

use crate::config::Config;
use crate::engine::{CompactReport, Engine, EngineSettings, Mode};
use crate::lake::compact::Policy;

/// Passes at most: a pass merges each partition's small files in groups bounded in
/// bytes, and the next pass merges what the first produced if it is still small.
const PASSES: usize = 8;

pub async fn run(config: Config) -> anyhow::Result<()> {
    if !config.data_dir.exists() {
        bail!(
            "data directory {} does not exist; pass --data-dir",
            config.data_dir.display()
        );
    }
    let mut settings = EngineSettings::from_config(&config);
    // No ingest to leave a core to: merge flat out.
    settings.flush_cpu_share = 1.0;
    let engine = Engine::open(settings, Mode::Serve)
        .await
        .with_context(|| {
            format!(
                "cannot open {} (a running server compacts in the background; stop it to compact by hand)",
                config.data_dir.display()
            )
        })?;
    let files_before = files(&engine);
    // Rows the open replayed from the WAL go to files first, so that retention
    // drops whole partitions.
    engine.flush().await?;
    let expired = engine
        .apply_retention(chrono::Utc::now().timestamp_micros())
        .await?;
    if expired > 0 {
        println!("dropped {expired} files of partitions past the retention horizon");
    }
    let mut total = CompactReport::default();
    let policy = Policy::everything();
    let result = async {
        for _ in 0..PASSES {
            let pass = engine.compact(&policy).await?;
            let done = pass.merged_files == 0;
            total.merged_files += pass.merged_files;
            total.written_files += pass.written_files;
            total.rows += pass.rows;
            total.bytes_before += pass.bytes_before;
            total.bytes_after += pass.bytes_after;
            total.skipped += pass.skipped;
            total.failed += pass.failed;
            if done {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    // The replaced files go once no query that may read them runs (readers of the
    // raw files, such as notebooks, would otherwise count their rows twice).
    let waiting = engine.retired_files();
    if result.is_ok() && waiting > 0 {
        let grace = config.query.timeout.0 + std::time::Duration::from_secs(1);
        eprintln!(
            "waiting {} for queries that may still read the {waiting} replaced files, then deleting them (interrupt to leave that to the next start)",
            humantime::format_duration(grace)
        );
        tokio::time::sleep(grace).await;
    }
    engine.shutdown().await?;
    result?;
    println!(
        "merged {} files into {} ({} rows, {} → {}); the lake holds {} files, {} before",
        total.merged_files,
        total.written_files,
        total.rows,
        bytesize::ByteSize(total.bytes_before),
        bytesize::ByteSize(total.bytes_after),
        files(&engine),
        files_before,
    );
    if total.failed > 0 {
        println!(
            "{} groups could not be merged and were left as they are (the log says why)",
            total.failed
        );
    }

    Ok(())
}

fn files(engine: &Engine) -> usize {
    let manifest = engine.catalog().manifest();
    crate::tables::Table::ALL
        .iter()
        .map(|t| manifest.files(*t).len())
        .sum()
}
