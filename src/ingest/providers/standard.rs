//! Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature:
//! v1,<base64> [v1,<base64> …]`; the key is the base64-decoded secret (without its
//! `whsec_` prefix), the MAC HMAC-SHA256 over `"{id}.{timestamp}.{body}"`. Timestamps
//! too old or too far in the future are expired. Svix uses the same scheme with
//! `svix-` headers ([`Scheme::SVIX`]).

use super::sig::{self, Algo};
use super::{Identity, Provider, RequestView, Verification};
use crate::config::SourceConfig;
use crate::ingest::receive::generic_event_type;
use crate::model::SignatureStatus;

/// The header names of a Standard-Webhooks-style scheme.
pub(crate) struct Scheme {
    pub id: &'static str,
    pub timestamp: &'static str,
    pub signature: &'static str,
}

impl Scheme {
    pub const STANDARD: Scheme = Scheme {
        id: "webhook-id",
        timestamp: "webhook-timestamp",
        signature: "webhook-signature",
    };
    pub const SVIX: Scheme = Scheme {
        id: "svix-id",
        timestamp: "svix-timestamp",
        signature: "svix-signature",
    };
}

/// The signing key of a secret: base64 after an optional `whsec_` prefix; a secret
/// that is not base64 is used as raw bytes.
fn key_of(secret: &str) -> Vec<u8> {
    let raw = secret.strip_prefix("whsec_").unwrap_or(secret);
    sig::b64_decode(raw).unwrap_or_else(|| raw.as_bytes().to_vec())
}

impl Provider for Scheme {
    fn identify(&self, req: &RequestView<'_>) -> Identity {
        Identity {
            event_type: req.json.and_then(generic_event_type),
            event_id: req.header(self.id).map(str::to_string),
            delivery_id: None,
            sent_at_us: req
                .header(self.timestamp)
                .and_then(|t| t.trim().parse().ok())
                .and_then(sig::secs_to_us),
            provider_attempt: None,
        }
    }

    fn verify(&self, req: &RequestView<'_>, source: &SourceConfig) -> Verification {
        let (Some(id), Some(ts), Some(value)) = (
            req.header(self.id),
            req.header(self.timestamp),
            req.header(self.signature),
        ) else {
            return Verification::status(SignatureStatus::Missing);
        };
        let Ok(t) = ts.trim().parse::<i64>() else {
            return Verification::status(SignatureStatus::Invalid);
        };
        let candidates: Vec<Vec<u8>> = value
            .split_whitespace()
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(sig::b64_decode)
            .collect();
        let keys: Vec<String> = source.secret.0.clone();
        let mut ok = false;
        for secret in &keys {
            let mac = sig::hmac(
                Algo::Sha256,
                &key_of(secret),
                &[id.as_bytes(), b".", ts.trim().as_bytes(), b".", req.body],
            );
            for c in &candidates {
                ok |= sig::ct_eq(&mac, c);
            }
        }
        Verification::timed(ok, t, req, source)
    }
}
