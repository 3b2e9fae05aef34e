//! hookscope: a self-hosted webhook monitor and analytics engine.
//!
//! The modules follow the data's path:
//! [`ingest`] (request → record, signatures, ids) → [`wal`] (durable) →
//! [`engine`] (applies records: dedup, forwards; flushes) → [`buffer`] (Arrow,
//! queryable) → [`lake`] (Parquet files, the manifest, durable storage) → [`query`]
//! (the catalog of tables, SQL) → [`http`] (the API and the server). [`outbound`]
//! forwards deliveries to the app. [`model`] and [`tables`] are the shared vocabulary
//! (records, table columns), [`config`] the settings, [`telemetry`] the metrics,
//! [`sys`] the operating-system helpers, and [`cli`] the commands. [`generate`] writes
//! synthetic traffic into a lake for benchmarks, tests and demos; [`import`] appends
//! history from Parquet, NDJSON or CSV files. See ARCHITECTURE.md.

pub mod buffer;
pub mod cli;
pub mod config;
pub mod engine;
pub mod generate;
pub mod http;
pub mod import;
pub mod ingest;
pub mod lake;
pub mod model;
pub mod monitor;
pub mod outbound;
pub mod query;
pub mod simulate;
pub mod sys;
pub mod tables;
pub mod telemetry;
pub mod wal;
