//! The only outbound HTTP hookscope makes: forwarding deliveries to the app (and, as
//! the monitoring issues land, alert sinks).
//!
//! Invariant: the engine makes a delivery durable before anything here sends it.

pub mod forward;
pub mod sinks;
