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

    /// Send realistic, signed webhook traffic from several providers to a running
    /// server (start it with `hookscope serve --demo` so the signatures verify).
    #[command(after_help = "Examples:
  hookscope serve --demo            (in one terminal)
  hookscope simulate                (in another: 20 deliveries a second for a minute)
  hookscope simulate --rate 200 --duration 5m --profile spike
  hookscope simulate --profile outage --server http://127.0.0.1:9000")]
    Simulate(SimulateArgs),

    /// Run SQL against a data directory (offline) or a running server.
    #[command(after_help = "Examples:
  hookscope query \"SELECT source, count(*) FROM deliveries GROUP BY source\"
  hookscope query \"SELECT * FROM deliveries WHERE received_at > now() - INTERVAL '1 hour'\" --format json
  hookscope query \"SELECT * FROM deliveries\" -o deliveries.parquet
  hookscope query \"SELECT count(*) FROM deliveries\" --server http://127.0.0.1:8080

Tables: deliveries, outcomes, alerts, query_runs (their columns: docs/tables.md, or DESCRIBE deliveries). Only read-only statements run.")]
    Query(QueryArgs),

    /// Time the standard analytic set on a generated lake (or your own).
    #[command(after_help = "Examples:
  hookscope bench                 # 1M deliveries over 30 days, in data/bench-1000000-30d
  hookscope bench --rows 10000000 --days 30 --format json
  hookscope bench --rows 1000000 --flush-every 10s --data-dir /tmp/small-files
  hookscope bench --data-dir data/lake --query last_hour --query lookup_id

A directory that already holds a lake is measured as it is (a generated one is reused);
an empty or missing one is filled with generated traffic first: six sources, retries on
each provider's schedule, duplicates, failures, lognormal sizes and latencies.

The set: latency_by_hour, retry_intervals, size_trend, volume_spikes, volume_7d, last_hour,
lookup_id, lookup_event, then every saved query as saved:<name> (run with now() at the
lake's newest delivery). Times are anchored at the lake's newest delivery. Each query
runs once untimed, then --runs times; the median is reported, with the rows of its table
in its time range per second, and the rows it returned.")]
    Bench(BenchArgs),

    /// List the saved queries, run one now (or as of a scheduled time), backtest an
    /// alert rule, or backfill a rollup.
    #[command(after_help = "Examples:
  hookscope queries list
  hookscope queries list --format json
  hookscope queries run traffic_spike
  hookscope queries run traffic_spike --param k=3 --at 2026-03-01T12:05:00Z --format json
  hookscope queries run volume_per_source --server http://127.0.0.1:8080
  hookscope queries backtest traffic_spike --from 2026-03-01 --to 2026-03-08 --param k=4
  hookscope queries backfill hourly_traffic --from 2026-01-01

The shipped queries are built in; .sql files in the queries_dirs folders (default
./queries) add more, and one with a shipped query's name replaces it. A file starts
with `-- key: value` lines (name, description, schedule, alert, severity, param,
materialize, bucket …), then one SELECT; `:name` in the SQL is a parameter. In a run,
now() is the run's scheduled time (--at), so a run can be repeated exactly.")]
    Queries(QueriesArgs),

    /// Merge the small Parquet files of each partition into large sorted ones.
    #[command(after_help = "Examples:
  hookscope compact
  hookscope compact --data-dir /var/lib/hookscope

A running server does this in the background ([parquet] compact_interval); this command
is for a lake no server runs on (it needs the data directory's lock). Rows are swapped
in one manifest commit: a query sees every row exactly once, before, during and after.")]
    Compact(CompactArgs),

    /// Append history (of any age) to a lake from Parquet, NDJSON or CSV files.
    #[command(after_help = "Examples:
  hookscope import --data-dir /var/lib/hookscope old-receiver.ndjson
  hookscope import --table outcomes reports-2025.csv reports-2026.parquet
  sqlite3 -json hooks.db \"SELECT * FROM deliveries\" > history.json && hookscope import history.json

The files' columns are the table's (docs/tables.md, or `hookscope query \"DESCRIBE deliveries\"`),
by name; the format is told by the extension: .parquet, .ndjson / .jsonl / .json (one object a
line, or one array), .csv (with a header). A column the file lacks is null if it is optional;
the id is assigned (a ULID of the row's time) and these deliveries columns are derived as on
receipt when the file has none: payload_size and payload_sha256 (from body or body_base64),
dedup_key (event_id, else sha256:<payload_sha256>), attempt, is_duplicate and retry_gap_ms
(every row of the command in received_at order, per source and dedup_key, as the dedup index
counts live arrivals), delivery_lag_ms (received_at - sent_at).

Timestamps in NDJSON and CSV: RFC 3339 (2026-03-01T12:00:00Z, 2026-03-01 12:00:00.5+02:00;
no offset means UTC) or an integer epoch in seconds, ms, µs or ns. Other values must have
their column's type (an integer column takes no \"12\" in JSON). A file with an unknown
column, a value of the wrong type, or a required column missing or empty is refused with the
row and column named, and then nothing is imported. Each file is committed on its own (all
its rows or none) and its rows are printed. Stop the server first: the import takes the
data directory's lock. Importing a file twice adds its rows twice.")]
    Import(ImportArgs),

    /// Verify a lake: manifest, files and WAL; exits non-zero when anything is wrong.
    #[command(after_help = "Examples:
  hookscope check
  hookscope check --data-dir /var/lib/hookscope

Checks that every file the manifest names exists, reads as Parquet and holds the rows
and bytes recorded; that no table folder holds a file the manifest does not name; that
the dedup state files exist; and that the WAL reads and no record past the committed
files is missing. Changes nothing; safe beside a running server (a flush in progress
may show as a file the manifest does not name yet).")]
    Check(CompactArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The table the rows go to.
    #[arg(long, default_value = "deliveries", value_parser = ["deliveries", "outcomes"])]
    pub table: String,
    /// Data directory (overrides data_dir); created if missing.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Files to import (.parquet, .ndjson, .jsonl, .json, .csv).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct QueriesArgs {
    #[command(subcommand)]
    pub command: QueriesCommand,
}

#[derive(Debug, Subcommand)]
pub enum QueriesCommand {
    /// The saved queries, their schedules and parameters, and files that cannot be used.
    List(QueriesListArgs),
    /// Run one saved query and print its rows.
    Run(QueriesRunArgs),
    /// Run an alert rule at every scheduled time of a range over the stored history
    /// and print when its alerts would have fired and resolved (sends nothing).
    Backtest(QueriesBacktestArgs),
    /// Fill a rollup (a query with `materialize: true`) for a range of its buckets
    /// from the stored deliveries, a day of buckets at a time; each day replaces what
    /// the rollup held for it. Needs the data directory: stop the server first.
    Backfill(QueriesBackfillArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  hookscope queries backfill hourly_traffic --from 2026-11-01 --to 2026-12-01"
)]
pub struct QueriesBackfillArgs {
    /// The rollup's name.
    pub name: String,
    /// First bucket to fill: the one holding this time (RFC 3339 or a date).
    #[arg(long, value_name = "TIME")]
    pub from: String,
    /// End of the range, not included (RFC 3339 or a date; default: now).
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// A parameter's value, e.g. --param k=3 (repeatable).
    #[arg(long, value_name = "NAME=VALUE")]
    pub param: Vec<String>,
    /// Drop every row the rollup holds first (needed when the query's columns
    /// changed; buckets outside the range are gone afterwards).
    #[arg(long)]
    pub rebuild: bool,
    /// Data directory to fill (overrides data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct QueriesBacktestArgs {
    /// The rule's name.
    pub name: String,
    /// Start of the range (RFC 3339 or a date).
    #[arg(long, value_name = "TIME")]
    pub from: String,
    /// End of the range, not included (RFC 3339 or a date).
    #[arg(long, value_name = "TIME")]
    pub to: String,
    /// A parameter's value, e.g. --param k=3 (repeatable).
    #[arg(long, value_name = "NAME=VALUE")]
    pub param: Vec<String>,
    /// Output: table or json.
    #[arg(long, short = 'f')]
    pub format: Option<String>,
    /// Data directory to read (overrides data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct QueriesListArgs {
    /// Output: table or json.
    #[arg(long, short = 'f')]
    pub format: Option<String>,
    /// Data directory (overrides data_dir; not needed to list).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct QueriesRunArgs {
    /// The query's name (see `hookscope queries list`).
    pub name: String,
    /// A parameter's value for this run, e.g. --param k=3 (repeatable).
    #[arg(long, value_name = "NAME=VALUE")]
    pub param: Vec<String>,
    /// Run as of this scheduled time: now() is this time (RFC 3339 or a date).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    #[command(flatten)]
    pub out: ResultArgs,
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Data directory (overrides data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
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
    /// Add the sources `hookscope simulate` sends to, with its demo secrets (stripe,
    /// github, shopify, slack, sentry; a source you configured keeps your settings).
    #[arg(long)]
    pub demo: bool,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The running server to send to.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
    pub server: String,
    /// First sends per second over all sources (retries and duplicates come on top).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// How long to send, e.g. 60s, 10m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub duration: std::time::Duration,
    /// realistic, spike (Stripe at ten times its rate in the middle third) or outage
    /// (GitHub goes silent after the first third).
    #[arg(long, default_value = "realistic")]
    pub profile: String,
    /// Share of deliveries the app reports as failed (the provider then retries them).
    #[arg(long, default_value_t = 0.05)]
    pub failure_ratio: f64,
    /// Share of deliveries sent twice (at-least-once delivery).
    #[arg(long, default_value_t = 0.02)]
    pub duplicate_ratio: f64,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Deliveries to generate (when the lake is generated).
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Days the generated traffic spans, ending now.
    #[arg(long, default_value_t = 30)]
    pub days: u64,
    /// The lake to measure or fill (default: data/bench-<rows>-<days>d).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Output: table or json.
    #[arg(long, short = 'f')]
    pub format: Option<String>,
    /// Timed runs per query (after one untimed run).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Run only these queries of the set (repeatable).
    #[arg(long, value_name = "NAME")]
    pub query: Vec<String>,
    /// Generate one file per partition and window of this length (e.g. 10s), as a
    /// server flushing at that interval leaves a lake; default one per hour.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub flush_every: Option<std::time::Duration>,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Include each query's result rows in the json output (to check them against
    /// another engine).
    #[arg(long)]
    pub results: bool,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The SQL to run.
    pub sql: String,
    #[command(flatten)]
    pub out: ResultArgs,
}

/// Where a result goes and where it comes from (`query`, `queries run`).
#[derive(Debug, Args)]
pub struct ResultArgs {
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
pub mod bench;
pub mod check;
pub mod compact;
pub mod import;
pub mod queries;
pub mod query;
pub mod simulate;
