//! The sources the generator imitates: each one's share of the traffic, event
//! types, sizes, processing times, retry schedule and headers.

use super::traffic::HOUR_US;

/// How one source's traffic looks.
pub(crate) struct Profile {
    pub(crate) source: &'static str,
    pub(super) provider: &'static str,
    /// Share of first sends.
    pub(super) weight: f64,
    pub(super) events: &'static [&'static str],
    /// Median body bytes and the lognormal's sigma.
    pub(super) size: (f64, f64),
    /// Median processing time in ms and sigma.
    pub(super) processing: (f64, f64),
    /// Seconds from a failed attempt to the next one; empty: never retried.
    pub(super) retry_gaps: &'static [i64],
    pub(super) user_agent: &'static str,
    /// The header carrying the provider's signature, if it signs.
    pub(super) signature_header: Option<&'static str>,
}

pub(crate) const PROFILES: &[Profile] = &[
    Profile {
        source: "stripe",
        provider: "stripe",
        weight: 0.35,
        events: &[
            "invoice.paid",
            "payment_intent.succeeded",
            "charge.succeeded",
            "customer.subscription.updated",
            "charge.failed",
        ],
        size: (2_600.0, 0.5),
        processing: (140.0, 0.5),
        retry_gaps: &[60, 300, 1_800, 7_200, 18_000],
        user_agent: "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        signature_header: Some("stripe-signature"),
    },
    Profile {
        source: "github",
        provider: "github",
        weight: 0.25,
        events: &[
            "push",
            "pull_request",
            "issues",
            "workflow_run",
            "check_suite",
        ],
        size: (7_000.0, 0.9),
        processing: (220.0, 0.6),
        retry_gaps: &[],
        user_agent: "GitHub-Hookshot/8d6f3e2",
        signature_header: Some("x-hub-signature-256"),
    },
    Profile {
        source: "shopify",
        provider: "shopify",
        weight: 0.15,
        events: &[
            "orders/create",
            "orders/paid",
            "products/update",
            "customers/create",
        ],
        size: (4_000.0, 0.7),
        processing: (180.0, 0.5),
        retry_gaps: &[10, 30, 60, 300, 900, 3_600],
        user_agent: "Shopify-Captain-Hook",
        signature_header: Some("x-shopify-hmac-sha256"),
    },
    Profile {
        source: "slack",
        provider: "slack",
        weight: 0.10,
        events: &["message", "app_mention", "reaction_added"],
        size: (900.0, 0.4),
        processing: (90.0, 0.4),
        retry_gaps: &[1, 60, 300],
        user_agent: "Slackbot 1.0 (+https://api.slack.com/robots)",
        signature_header: Some("x-slack-signature"),
    },
    Profile {
        source: "svix",
        provider: "svix",
        weight: 0.10,
        events: &["user.created", "invoice.finalized", "subscription.renewed"],
        size: (1_200.0, 0.5),
        processing: (120.0, 0.5),
        retry_gaps: &[5, 300, 1_800, 7_200, 18_000, 36_000],
        user_agent: "Svix-Webhooks/1.40",
        signature_header: Some("svix-signature"),
    },
    Profile {
        source: "acme",
        provider: "generic",
        weight: 0.05,
        events: &["order.shipped", "order.cancelled"],
        size: (600.0, 0.5),
        processing: (60.0, 0.4),
        retry_gaps: &[30, 120, 600],
        user_agent: "acme-notifier/2.3",
        signature_header: None,
    },
];

/// Index of the source whose handler slows down over the span's last fifth.
pub(crate) const CREEPING: usize = 1;
/// Index of the source that goes silent for the span's last hours.
pub(crate) const SILENT: usize = 5;
pub(super) const SILENT_FOR_US: i64 = 6 * HOUR_US;
