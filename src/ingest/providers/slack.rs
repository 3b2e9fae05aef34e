//! Slack: `X-Slack-Signature: v0=<hex>` of HMAC-SHA256(signing secret,
//! `"v0:{X-Slack-Request-Timestamp}:{body}"`); a timestamp outside the tolerance is
//! expired. Events API bodies give `event.type` and `event_id`; slash commands and
//! interactivity posts are forms. `X-Slack-Retry-Num` + 1 is Slack's own attempt.

use super::sig::{self, Algo};
use super::{Identity, Provider, RequestView, Verification};
use crate::config::SourceConfig;
use crate::model::SignatureStatus;

pub(crate) struct Slack;

fn form_event_type(body: &[u8]) -> Option<String> {
    let mut command = false;
    for (k, v) in form_urlencoded::parse(body) {
        match k.as_ref() {
            "payload" => {
                let payload: serde_json::Value = serde_json::from_str(&v).ok()?;
                return payload
                    .get("type")
                    .and_then(|t| t.as_str())
                    .map(str::to_string);
            }
            "command" => command = true,
            _ => {}
        }
    }
    command.then(|| "slash_command".to_string())
}

impl Provider for Slack {
    fn identify(&self, req: &RequestView<'_>) -> Identity {
        let json = req.json;
        let event_type = match json {
            Some(j) => j
                .at("event.type")
                .or_else(|| j.get("type"))
                .and_then(|v| v.string()),
            None => form_event_type(req.body),
        };
        Identity {
            event_type,
            event_id: req.json_str("event_id"),
            delivery_id: None,
            sent_at_us: req
                .header("x-slack-request-timestamp")
                .and_then(|t| t.trim().parse().ok())
                .and_then(sig::secs_to_us),
            provider_attempt: req
                .header("x-slack-retry-num")
                .and_then(|n| n.trim().parse::<i32>().ok())
                .map(|n| n.saturating_add(1)),
        }
    }

    fn verify(&self, req: &RequestView<'_>, source: &SourceConfig) -> Verification {
        let (Some(value), Some(ts)) = (
            req.header("x-slack-signature"),
            req.header("x-slack-request-timestamp"),
        ) else {
            return Verification::status(SignatureStatus::Missing);
        };
        let Ok(t) = ts.trim().parse::<i64>() else {
            return Verification::status(SignatureStatus::Invalid);
        };
        let candidates: Vec<Vec<u8>> = value
            .strip_prefix("v0=")
            .and_then(sig::hex_decode)
            .into_iter()
            .collect();
        let ok = sig::any_secret_matches(&source.secret.0, &candidates, |key| {
            sig::hmac(
                Algo::Sha256,
                key,
                &[b"v0:", ts.trim().as_bytes(), b":", req.body],
            )
        });
        Verification::timed(ok, t, req, source)
    }
}
