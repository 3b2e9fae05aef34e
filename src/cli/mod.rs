//! Command-line flags (clap definitions only; the commands live in their modules).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// hookscope: a self-hosted webhook monitor and analytics engine.
///
/// Receives webhooks from any provider, records every delivery durably, and answers
/// SQL over the history (DataFusion over Hive-partitioned Parquet).
#[derive(Debug, Parser)]
#[command(name = "hookscope", version, about, long_about = None)]
pub struct Cli {
    /// Config file (default: $HOOKSCOPE_CONFIG, else ./hookscope.toml if present).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the receiver, the engine and the API.
    #[command(after_help = "Examples:
  hookscope serve
  hookscope serve --listen 0.0.0.0:8080 --data-dir /var/lib/hookscope   (needs HOOKSCOPE_TOKEN)
  HOOKSCOPE_WAL_SYNC=none hookscope serve --config hookscope.toml")]
    Serve(ServeArgs),

    /// Run SQL against a data directory (offline) or a running server.
    #[command(after_help = "Examples:
  hookscope query \"SELECT source, count(*) FROM deliveries GROUP BY source\"
  hookscope query \"SELECT * FROM deliveries WHERE received_at > now() - INTERVAL '1 hour'\" --format json
  hookscope query \"SELECT * FROM deliveries\" -o deliveries.parquet
  hookscope query \"SELECT count(*) FROM deliveries\" --server http://127.0.0.1:8080

Tables: deliveries, outcomes, alerts (their columns: docs/tables.md, or DESCRIBE deliveries). Only read-only statements run.")]
    Query(QueryArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory (overrides data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (overrides listen), e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Allow listening beyond loopback without a token.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The SQL to run.
    pub sql: String,
    /// Output format: table, json, ndjson, csv, parquet, arrow (default: table, or
    /// parquet when -o ends in .parquet).
    #[arg(long, short = 'f')]
    pub format: Option<String>,
    /// Write the result to FILE instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Data directory to read (overrides data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Ask a running server instead (token from $HOOKSCOPE_TOKEN).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}
pub mod query;
