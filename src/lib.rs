//! hookscope: a self-hosted webhook monitor and analytics engine.
//!
//! The modules follow the data: [`receive`] (request → record) → [`providers`]
//! (verify / identify) → [`wal`] (durable) → [`forward`] (to the app, when
//! configured) → [`buffer`] (Arrow, queryable) →
//! [`persist`] (Parquet) → [`lake`] + [`manifest`] (committed files) → [`catalog`]
//! (tables) → [`query`] (SQL) → [`api`] (HTTP). [`report`] turns the app's processing
//! reports into outcome records. [`engine`] wires the steps; [`server`]
//! and [`cli`] are the two ways in. See ARCHITECTURE.md.

pub mod api;
pub mod body_json;
pub mod buffer;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod dedup;
pub mod dedup_store;
pub mod engine;
pub mod failpoint;
pub mod forward;
pub mod lake;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod persist;
pub mod providers;
pub mod query;
pub mod receive;
pub mod report;
pub mod server;
pub mod sys;
pub mod tables;
pub mod wal;
