//! `generic`: any sender. No signature scheme; the event type comes from the body's
//! top-level `type`, `event_type` or `event`.

use super::{Provider, RequestView, Verification};
use crate::config::SourceConfig;
use crate::model::SignatureStatus;

pub(crate) struct Generic;

impl Provider for Generic {
    fn verify(&self, _req: &RequestView<'_>, _source: &SourceConfig) -> Verification {
        Verification::status(SignatureStatus::Unchecked)
    }
}
