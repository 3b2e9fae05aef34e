//! Shopify: `X-Shopify-Hmac-Sha256: <base64>` of HMAC-SHA256(secret, body). Topic,
//! event id (`X-Shopify-Event-Id`), per-attempt webhook id (`X-Shopify-Webhook-Id`)
//! and trigger time (`X-Shopify-Triggered-At`) come from headers.

use super::sig::{self, Algo};
use super::{Identity, Provider, RequestView, Verification};
use crate::config::SourceConfig;
use crate::model::SignatureStatus;

pub(crate) struct Shopify;

impl Provider for Shopify {
    fn identify(&self, req: &RequestView<'_>) -> Identity {
        let h = |n: &str| req.header(n).map(str::to_string);
        Identity {
            event_type: h("x-shopify-topic"),
            event_id: h("x-shopify-event-id"),
            delivery_id: h("x-shopify-webhook-id"),
            sent_at_us: req
                .header("x-shopify-triggered-at")
                .and_then(sig::rfc3339_us),
            provider_attempt: None,
        }
    }

    fn verify(&self, req: &RequestView<'_>, source: &SourceConfig) -> Verification {
        let Some(value) = req.header("x-shopify-hmac-sha256") else {
            return Verification::status(SignatureStatus::Missing);
        };
        let candidates: Vec<Vec<u8>> = sig::b64_decode(value).into_iter().collect();
        sig::body_hmac_status(Algo::Sha256, &candidates, req.body, source)
    }
}
