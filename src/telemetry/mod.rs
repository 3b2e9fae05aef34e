//! What hookscope says about itself: the counters and histograms of `GET /metrics`.
//!
//! Invariant: recording never blocks on I/O.

pub mod metrics;
