//! PayPal: detected by `PAYPAL-TRANSMISSION-ID`; event id and type from the body,
//! transmission id and time from headers. PayPal signs with a certificate that must be
//! downloaded from PayPal (RSA, not a shared secret), which hookscope does not do:
//! signatures stay `unchecked`.

use super::sig;
use super::{Identity, Provider, RequestView, Verification};
use crate::config::SourceConfig;
use crate::model::SignatureStatus;

pub(crate) struct PayPal;

impl Provider for PayPal {
    fn identify(&self, req: &RequestView<'_>) -> Identity {
        Identity {
            event_type: req.json_str("event_type"),
            event_id: req.json_str("id"),
            delivery_id: req.header("paypal-transmission-id").map(str::to_string),
            sent_at_us: req
                .header("paypal-transmission-time")
                .and_then(sig::rfc3339_us),
            provider_attempt: None,
        }
    }

    fn verify(&self, _req: &RequestView<'_>, _source: &SourceConfig) -> Verification {
        Verification::status(SignatureStatus::Unchecked)
    }
}
