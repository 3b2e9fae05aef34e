//! GitHub: `X-Hub-Signature-256: sha256=<hex>` (HMAC-SHA256 of the body; the legacy
//! `X-Hub-Signature: sha1=` when that is all there is). The event type is
//! `X-GitHub-Event`; the event id is `X-GitHub-Hook-ID` + `X-GitHub-Delivery`, because
//! the delivery GUID is shared by every hook that receives the event.

use super::sig::{self, Algo};
use super::{Identity, Provider, RequestView, Verification};
use crate::config::SourceConfig;
use crate::model::SignatureStatus;

pub(crate) struct GitHub;

impl Provider for GitHub {
    fn identify(&self, req: &RequestView<'_>) -> Identity {
        let delivery = req.header("x-github-delivery");
        let event_id = match (req.header("x-github-hook-id"), delivery) {
            (Some(hook), Some(d)) => Some(format!("{hook}:{d}")),
            (None, Some(d)) => Some(d.to_string()),
            _ => None,
        };
        Identity {
            event_type: req.header("x-github-event").map(str::to_string),
            event_id,
            ..Identity::default()
        }
    }

    fn verify(&self, req: &RequestView<'_>, source: &SourceConfig) -> Verification {
        let (algo, value) = match (
            req.header("x-hub-signature-256"),
            req.header("x-hub-signature"),
        ) {
            (Some(v), _) => (Algo::Sha256, v.strip_prefix("sha256=")),
            (None, Some(v)) => (Algo::Sha1, v.strip_prefix("sha1=")),
            (None, None) => return Verification::status(SignatureStatus::Missing),
        };
        let candidates: Vec<Vec<u8>> = value.and_then(sig::hex_decode).into_iter().collect();
        sig::body_hmac_status(algo, &candidates, req.body, source)
    }
}
