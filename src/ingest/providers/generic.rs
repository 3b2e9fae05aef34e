//! `generic`: any sender. No signature scheme; the event type comes from the body's
//! top-level `type`, `event_type` or `event`.

use super::{Identity, Provider, RequestView, Verification};
use crate::config::SourceConfig;
use crate::ingest::receive::generic_event_type;
use crate::model::SignatureStatus;

pub struct Generic;

impl Provider for Generic {
    fn name(&self) -> &'static str {
        "generic"
    }

    fn identify(&self, req: &RequestView<'_>) -> Identity {
        Identity {
            event_type: req.json.and_then(generic_event_type),
            ..Identity::default()
        }
    }

    fn verify(&self, _req: &RequestView<'_>, _source: &SourceConfig) -> Verification {
        Verification::status(SignatureStatus::Unchecked)
    }
}
