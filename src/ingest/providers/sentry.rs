//! Sentry (integration platform webhooks): `Sentry-Hook-Signature: <hex>`, the
//! HMAC-SHA256 of the body with the integration's client secret. The event type is
//! `Sentry-Hook-Resource` and the body's `action` (`issue.created`,
//! `event_alert.triggered` …); `Sentry-Hook-Timestamp` (Unix seconds) is when it was
//! sent; `Request-ID` names the request. The event id comes from the body: the error
//! event's `event_id` when there is one, else the (or alert's) id with the
//! action, since one issue is created, assigned and resolved under the same id.

use super::sig::{self, Algo};
use super::{Identity, Provider, RequestView, Verification};
use crate::config::SourceConfig;
use crate::model::SignatureStatus;

pub(crate) struct Sentry;

impl Provider for Sentry {
    fn identify(&self, req: &RequestView<'_>) -> Identity {
        let resource = req.header("sentry-hook-resource");
        let action = req.json_str("action");
        let event_type = match (resource, &action) {
            (Some(r), Some(a)) => Some(format!("{r}.{a}")),
            (Some(r), None) => Some(r.to_string()),
            (None, a) => a.clone(),
        };
        let body = |path: &str| {
            req.json
                .and_then(|j| j.at(path))
                .and_then(|v| v.string().or_else(|| v.as_i64().map(|n| n.to_string())))
        };
        let event_id = body("data.event.event_id")
            .or_else(|| body("data.error.event_id"))
            .or_else(|| {
                ["issue", "metric_alert", "comment"]
                    .into_iter()
                    .find_map(|kind| {
                        let id = body(&format!("data.{kind}.id"))?;
                        Some(format!("{kind}:{id}:{}", action.as_deref().unwrap_or("")))
                    })
            });
        Identity {
            event_type,
            event_id,
            delivery_id: req.header("request-id").map(str::to_string),
            sent_at_us: req
                .header("sentry-hook-timestamp")
                .and_then(|t| t.trim().parse::<f64>().ok())
                .and_then(|t| sig::secs_to_us(t as i64)),
            provider_attempt: None,
        }
    }

    fn verify(&self, req: &RequestView<'_>, source: &SourceConfig) -> Verification {
        let Some(value) = req.header("sentry-hook-signature") else {
            return Verification::status(SignatureStatus::Missing);
        };
        let candidates: Vec<Vec<u8>> = sig::hex_decode(value.trim()).into_iter().collect();
        sig::body_hmac_status(Algo::Sha256, &candidates, req.body, source)
    }
}
