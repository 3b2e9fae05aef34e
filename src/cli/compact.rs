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
    // Deletes the replaced files (nothing else reads through this engine).
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
    let retired = engine.retired_files();
    if retired > 0 {
        println!(
            "the {retired} replaced files stay until no query can still read them ([query] timeout, {}); the next start of the server or of this command after that removes them",
            humantime::format_duration(config.query.timeout.0)
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
