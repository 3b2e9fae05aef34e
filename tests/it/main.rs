//! Integration tests: each starts the real `hookscope` binary on an ephemeral port
//! with its own data directory (see `harness`). One test binary for all of them.

mod alerts;
mod bench;
mod compaction;
mod dashboard;
mod durability;
mod harness;
mod import;
mod ingest;
mod inspect_api;
mod providers;
mod query_api;
mod recovery;
mod saved_queries;
mod simulate;
