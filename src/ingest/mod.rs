//! Request → record, with no I/O: the receive step turns an HTTP request into a
//! [`Delivery`](crate::model::Delivery) (body, redacted headers, integrity problems,
//! dedup key), the providers verify its signature and identify the event, and the
//! report step turns the app's processing reports into outcomes.
//!
//! Invariants: every request becomes exactly one record; secrets are redacted here,
//! before anything is written; nothing here does I/O or keeps state between requests.

pub mod body_json;
pub mod headers;
pub mod providers;
pub mod receive;
pub mod report;
