//! The verify/identify step: per-provider signature verification and event identity
//! (event type, ids, send time, attempt) from headers and body.
//!
//! Each provider is one file with a unit struct implementing [`Provider`]; the
//! [`REGISTRY`] names them and the headers that identify them. Adding a provider is
//! one new file and one line there.
//!
//! Invariants:
//! - Signatures are checked against the raw body bytes, with constant-time
//!   comparison ([`crate::ingest::providers::sig::ct_eq`]).
//! - Providers read the request; they never change it and never do I/O.

mod generic;
mod github;
mod hmac;
mod paypal;
mod sentry;
mod shopify;
pub mod sig;
mod slack;
mod standard;
mod stripe;
mod svix;
mod token;
mod twilio;

use axum::http::{HeaderMap, HeaderName};

use crate::config::SourceConfig;
use crate::ingest::body_json::BodyJson;
use crate::ingest::receive::generic_event_type;
use crate::model::SignatureStatus;

/// What a provider sees of a request.
#[derive(Debug)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    /// The raw body bytes (empty when the body was not kept).
    pub body: &'a [u8],
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<&'a BodyJson<'a>>,
    /// `scheme://host` the sender addressed, when known.
    pub public_base: Option<&'a str>,
    pub received_at_us: i64,
}

impl RequestView<'_> {
    /// A header's value, if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A top-level string field of a JSON body.
    pub fn json_str(&self, key: &str) -> Option<String> {
        self.json.and_then(|j| j.get(key)).and_then(|v| v.string())
    }
}

/// The provider's identity of an event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Identity {
    pub event_type: Option<String>,
    pub event_id: Option<String>,
    pub delivery_id: Option<String>,
    pub sent_at_us: Option<i64>,
    /// The provider's own attempt number (1 = first), when it sends one.
    pub provider_attempt: Option<i32>,
}

/// The result of signature verification.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verification {
    pub status: SignatureStatus,
    /// The timestamp the signature covers, when it carries one.
    pub signed_at_us: Option<i64>,
}

impl Verification {
    pub fn status(status: SignatureStatus) -> Self {
        Self {
            status,
            signed_at_us: None,
        }
    }

    /// For signatures over a timestamp: `valid` when a secret `matched` and the
    /// timestamp is within the source's tolerance of arrival, `expired` when it
    /// matched outside it, else `invalid`.
    pub fn timed(
        matched: bool,
        signed_at_secs: i64,
        req: &RequestView<'_>,
        source: &SourceConfig,
    ) -> Self {
        let status = if !matched {
            SignatureStatus::Invalid
        } else if !sig::within_tolerance(signed_at_secs, req.received_at_us, source.tolerance.0) {
            SignatureStatus::Expired
        } else {
            SignatureStatus::Valid
        };
        Self {
            status,
            signed_at_us: sig::secs_to_us(signed_at_secs),
        }
    }
}

/// A source's settings its provider cannot work with: what is wrong and what to set.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigProblem(pub String);

/// One webhook provider's scheme. See the module docs; its name and the headers that
/// identify it are in the [`REGISTRY`].
pub trait Provider: Sync + Send {
    /// Event identity from headers and body; by default only the event type, from the
    /// body's top-level `type`, `event_type` or `event`.
    fn identify(&self, req: &RequestView<'_>) -> Identity {
        Identity {
            event_type: req.json.and_then(generic_event_type),
            ..Identity::default()
        }
    }
    /// Verifies the request's signature with the source's secrets.
    fn verify(&self, req: &RequestView<'_>, source: &SourceConfig) -> Verification;
    /// Checks provider-specific source settings.
    fn check_config(&self, _source: &SourceConfig) -> Result<(), ConfigProblem> {
        Ok(())
    }
    /// Headers that carry a secret for this provider (never stored).
    fn secret_headers(&self, _source: Option<&SourceConfig>) -> Vec<String> {
        Vec::new()
    }
    /// True if verifying needs the URL the sender addressed
    /// ([`RequestView::public_base`]); only then is it worked out from the headers.
    fn signs_the_url(&self) -> bool {
        false
    }
}

/// A provider as a source names it and as a request shows it; derefs to its scheme.
pub struct Registered {
    /// The `provider` column value and config name.
    pub name: &'static str,
    /// Headers that, all present, show this provider sent the request (lower case);
    /// empty for providers that are never detected, only configured.
    pub detect_headers: &'static [&'static str],
    scheme: &'static dyn Provider,
}

impl std::ops::Deref for Registered {
    type Target = dyn Provider;

    fn deref(&self) -> &Self::Target {
        self.scheme
    }
}

const fn entry(
    name: &'static str,
    detect_headers: &'static [&'static str],
    scheme: &'static dyn Provider,
) -> Registered {
    Registered {
        name,
        detect_headers,
        scheme,
    }
}

/// Every provider, in detection order; `generic` is the fallback. `token` and `hmac`
/// are never detected: a source's config names them.
pub(crate) static REGISTRY: &[Registered] = &[
    entry("stripe", &["stripe-signature"], &stripe::Stripe),
    entry("github", &["x-github-event"], &github::GitHub),
    entry("shopify", &["x-shopify-topic"], &shopify::Shopify),
    entry("slack", &["x-slack-signature"], &slack::Slack),
    entry("svix", &["svix-id", "svix-signature"], &svix::SVIX),
    entry(
        "standard",
        &["webhook-id", "webhook-signature"],
        &standard::Scheme::STANDARD,
    ),
    entry("twilio", &["x-twilio-signature"], &twilio::Twilio),
    entry("paypal", &["paypal-transmission-id"], &paypal::PayPal),
    entry("sentry", &["sentry-hook-resource"], &sentry::Sentry),
    entry("token", &[], &token::Token),
    entry("hmac", &[], &hmac::GenericHmac),
    GENERIC,
];

/// The fallback: any sender, no signature scheme.
const GENERIC: Registered = entry("generic", &[], &generic::Generic);

/// Names accepted for `provider` in a source's config, comma-separated.
pub(crate) fn names() -> String {
    let names: Vec<&str> = REGISTRY.iter().map(|p| p.name).collect();
    names.join(", ")
}

/// The provider called `name`.
pub(crate) fn by_name(name: &str) -> Option<&'static Registered> {
    REGISTRY.iter().find(|p| p.name == name)
}

/// The provider whose headers these are; `generic` when none matches.
pub(crate) fn detect(headers: &HeaderMap) -> &'static Registered {
    // One pass over the request's few header names first: most deliveries to a
    // generic source carry no identifying header, and a lookup by name per provider
    // costs more (every delivery pays for this).
    let identifying = |name: &HeaderName| {
        REGISTRY
            .iter()
            .any(|p| p.detect_headers.contains(&name.as_str()))
    };
    if !headers.keys().any(identifying) {
        return &GENERIC;
    }
    REGISTRY
        .iter()
        .find(|p| {
            let names = p.detect_headers;
            !names.is_empty() && names.iter().all(|n| headers.contains_key(*n))
        })
        .unwrap_or(&GENERIC)
}

#[cfg(test)]
mod tests;
