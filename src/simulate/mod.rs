//! `hookscope simulate`: realistic webhook traffic sent to a running server over
//! HTTP, as the providers send it, so a new user sees a living dashboard at once.
//!
//! Five sources, each signed with its provider's published algorithm and a demo
//! secret that `hookscope serve --demo` configures ([`demo_sources`]): Stripe, GitHub,
//! Shopify, Slack and Sentry. Event types per provider, lognormal body sizes, a few
//! at-least-once duplicates, processing outcomes reported through `/report` (with
//! failures), and the provider's retry of a failed delivery (the same event, later,
//! with the next attempt's headers). Profiles: `realistic`; `spike` (Stripe sends ten
//! times its rate through the middle third); `outage` (GitHub goes silent after the
//! first third).
//!
//! Invariants:
//! - Every request is signed exactly as the provider signs it, so a server with the
//!   demo secrets records `signature_status = valid` for each.
//! - Nothing outlives the run: retries still pending at the end are not sent, and the
//!   summary counts what was sent and answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use serde_json::json;
use sha2::Sha256;
use thiserror::Error;

use crate::config::{Secrets, SourceConfig};

#[cfg(test)]
mod tests;

/// Errors that stop a simulation.
#[derive(Debug, Error)]
pub enum SimulateError {
    #[error("unknown profile {0:?}: use realistic, spike or outage")]
    Profile(String),
    #[error("--rate must be between 0.1 and 10000 deliveries a second")]
    Rate,
    #[error("cannot reach the server at {url}: {reason} (start it with `hookscope serve --demo`)")]
    Unreachable { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// How the traffic changes over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Realistic,
    Spike,
    Outage,
}

impl std::str::FromStr for Profile {
    type Err = SimulateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "realistic" => Ok(Profile::Realistic),
            "spike" => Ok(Profile::Spike),
            "outage" => Ok(Profile::Outage),
            other => Err(SimulateError::Profile(other.to_string())),
        }
    }
}

/// One simulated source.
struct Sender {
    source: &'static str,
    provider: &'static str,
    secret: &'static str,
    weight: f64,
    events: &'static [&'static str],
    /// Median body bytes.
    size: f64,
    /// Median processing time in ms.
    processing: f64,
}

const SENDERS: &[Sender] = &[
    Sender {
        source: "stripe",
        provider: "stripe",
        secret: "whsec_hookscope_demo_stripe",
        weight: 0.35,
        events: &[
            "invoice.paid",
            "payment_intent.succeeded",
            "charge.succeeded",
            "customer.subscription.updated",
            "charge.failed",
        ],
        size: 2_600.0,
        processing: 140.0,
    },
    Sender {
        source: "github",
        provider: "github",
        secret: "hookscope-demo-github",
        weight: 0.25,
        events: &[
            "push",
            "pull_request",
            "issues",
            "workflow_run",
            "check_run",
        ],
        size: 7_000.0,
        processing: 220.0,
    },
    Sender {
        source: "shopify",
        provider: "shopify",
        secret: "hookscope-demo-shopify",
        weight: 0.2,
        events: &[
            "orders/create",
            "orders/paid",
            "products/update",
            "customers/create",
        ],
        size: 4_000.0,
        processing: 180.0,
    },
    Sender {
        source: "slack",
        provider: "slack",
        secret: "hookscope-demo-slack",
        weight: 0.12,
        events: &["message", "app_mention", "reaction_added"],
        size: 900.0,
        processing: 90.0,
    },
    Sender {
        source: "sentry",
        provider: "sentry",
        secret: "hookscope-demo-sentry",
        weight: 0.08,
        events: &["issue.created", "issue.resolved", "event_alert.triggered"],
        size: 3_000.0,
        processing: 60.0,
    },
];

/// The sources `hookscope serve --demo` adds: the simulated senders with their demo
/// secrets (a source configured under the same name is kept as it is).
pub fn demo_sources() -> Vec<SourceConfig> {
    SENDERS
        .iter()
        .map(|s| SourceConfig {
            name: s.source.into(),
            provider: Some(s.provider.into()),
            secret: Secrets(vec![s.secret.into()]),
            ..SourceConfig::default()
        })
        .collect()
}

/// What to send.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// First sends per second, over all sources.
    pub rate: f64,
    pub duration: Duration,
    pub profile: Profile,
    pub seed: u64,
    /// Share of deliveries whose processing the app reports as failed (then retried).
    pub failure_ratio: f64,
    /// Share of deliveries sent twice at once (at-least-once delivery).
    pub duplicate_ratio: f64,
}

/// Counts of a run, per source and in total.
#[derive(Debug, Default)]
pub struct Counts {
    pub sent: AtomicU64,
    pub acknowledged: AtomicU64,
    pub duplicates: AtomicU64,
    pub retries: AtomicU64,
    pub reported_failures: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
}

/// The summary of a run.
#[derive(Debug)]
pub struct Summary {
    pub per_source: Vec<(&'static str, Arc<Counts>)>,
    pub elapsed: Duration,
}

impl Summary {
    pub fn total(&self, f: impl Fn(&Counts) -> &AtomicU64) -> u64 {
        self.per_source
            .iter()
            .map(|(_, c)| f(c).load(Ordering::Relaxed))
            .sum()
    }
}

/// One request as a provider would send it.
#[derive(Debug, Clone)]
pub struct Request {
    pub source: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// An event and how it has been delivered so far.
#[derive(Debug, Clone)]
struct Event {
    sender: usize,
    event_type: &'static str,
    id: String,
    body: String,
    attempt: u32,
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn body_of(rng: &mut StdRng, s: &Sender, event_type: &str, id: &str, created: i64) -> String {
    let size = LogNormal::new(s.size.ln(), 0.6)
        .map(|d| d.sample(rng))
        .unwrap_or(s.size)
        .clamp(200.0, 200_000.0) as usize;
    let words = [
        "order", "amount", "customer", "item", "status", "total", "note",
    ];
    let mut filler = String::with_capacity(size);
    while filler.len() < size.saturating_sub(160) {
        filler.push_str(words[rng.random_range(0..words.len())]);
        filler.push(' ');
    }
    let failed = event_type.ends_with("failed");
    let value = match s.provider {
        "stripe" => json!({
            "id": id, "object": "event", "type": event_type, "created": created,
            "data": {"object": {"id": format!("ch_{}", &id[4..]), "status": if failed { "failed" } else { "succeeded" }, "description": filler}},
        }),
        "github" => json!({
            "action": "completed",
            "repository": {"full_name": "acme/shop"},
            "check_run": {"conclusion": if rng.random_bool(0.1) { "failure" } else { "success" }},
            "head_commit": {"message": filler},
        }),
        "shopify" => {
            json!({"id": rng.random_range(1_000_000..9_999_999u64), "financial_status": "paid", "note": filler})
        }
        "slack" => json!({
            "type": "event_callback", "event_id": id, "event_time": created,
            "event": {"type": event_type, "text": filler},
        }),
        _ => {
            let (resource, action) = event_type
                .split_once('.')
                .unwrap_or((event_type, "created"));
            let data = match resource {
                "event_alert" => json!({"event": {"event_id": id, "message": filler}}),
                _ => json!({"issue": {"id": id, "title": filler}}),
            };
            json!({"action": action, "installation": {"uuid": "demo"}, "data": data})
        }
    };
    value.to_string()
}

/// The request of `event`'s current attempt, signed with the provider's algorithm.
fn sign(event: &Event, now: i64, delivery: &str) -> Request {
    let s = &SENDERS[event.sender];
    let key = s.secret.as_bytes();
    let body = event.body.as_bytes();
    let ts = now.to_string();
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    let mut add = |k: &str, v: String| headers.push((k.to_string(), v));
    match s.provider {
        "stripe" => {
            let sig = hex::encode(hmac_sha256(key, &[ts.as_bytes(), b".", body]));
            add("stripe-signature", format!("t={ts},v1={sig}"));
            add(
                "user-agent",
                "Stripe/1.0 (+https://stripe.com/docs/webhooks)".into(),
            );
        }
        "github" => {
            let sig = hex::encode(hmac_sha256(key, &[body]));
            add("x-hub-signature-256", format!("sha256={sig}"));
            add("x-github-event", event.event_type.into());
            add("x-github-delivery", event.id.clone());
            add("x-github-hook-id", "4242".into());
            add("user-agent", "GitHub-Hookshot/8d6f3e2".into());
        }
        "shopify" => {
            let sig = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(key, &[body]));
            add("x-shopify-hmac-sha256", sig);
            add("x-shopify-topic", event.event_type.into());
            add("x-shopify-event-id", event.id.clone());
            add("x-shopify-webhook-id", delivery.to_string());
            add("user-agent", "Shopify-Captain-Hook".into());
        }
        "slack" => {
            let sig = hex::encode(hmac_sha256(key, &[b"v0:", ts.as_bytes(), b":", body]));
            add("x-slack-request-timestamp", ts.clone());
            add("x-slack-signature", format!("v0={sig}"));
            if event.attempt > 1 {
                add("x-slack-retry-num", (event.attempt - 1).to_string());
                add("x-slack-retry-reason", "http_error".into());
            }
        }
        _ => {
            let resource = event.event_type.split('.').next().unwrap_or("issue");
            add("sentry-hook-resource", resource.into());
            add("sentry-hook-timestamp", ts.clone());
            add(
                "sentry-hook-signature",
                hex::encode(hmac_sha256(key, &[body])),
            );
            add("request-id", delivery.to_string());
        }
    }
    Request {
        source: s.source,
        headers,
        body: event.body.clone(),
    }
}

/// The weight of sender `i` at fraction `f` of the run under `profile`.
fn weight(i: usize, f: f64, profile: Profile) -> f64 {
    let s = &SENDERS[i];
    match profile {
        Profile::Spike if s.source == "stripe" && (1.0 / 3.0..2.0 / 3.0).contains(&f) => {
            s.weight * 10.0
        }
        Profile::Outage if s.source == "github" && f >= 1.0 / 3.0 => 0.0,
        _ => s.weight,
    }
}

/// What the server answered to one request.
enum Answer {
    Acknowledged { id: String, duplicate: bool },
    Rejected,
    Failed,
}

struct Shared {
    client: reqwest::Client,
    plan: Plan,
    counts: Vec<Arc<Counts>>,
    started: Instant,
}

async fn post(shared: &Shared, req: &Request) -> Answer {
    let mut builder = shared
        .client
        .post(format!("{}/webhook/{}", shared.plan.server, req.source));
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    match builder.body(req.body.clone()).send().await {
        Ok(resp) if resp.status().is_success() => {
            let bytes = resp.bytes().await.unwrap_or_default();
            let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            match answer["id"].as_str() {
                Some(id) => Answer::Acknowledged {
                    id: id.to_string(),
                    duplicate: answer["duplicate"] == true,
                },
                None => Answer::Failed,
            }
        }
        Ok(_) => Answer::Rejected,
        Err(_) => Answer::Failed,
    }
}

/// Sends one attempt of `event`; reports its processing; schedules the provider's
/// retry when the app failed it (if the run is not over by then).
fn deliver(
    shared: Arc<Shared>,
    mut event: Event,
    rng_seed: u64,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        let mut rng = StdRng::seed_from_u64(rng_seed);
        let now = chrono::Utc::now().timestamp();
        let delivery = ulid::Ulid::new().to_string();
        let req = sign(&event, now, &delivery);
        let counts = Arc::clone(&shared.counts[event.sender]);
        counts.sent.fetch_add(1, Ordering::Relaxed);
        if event.attempt > 1 {
            counts.retries.fetch_add(1, Ordering::Relaxed);
        }
        let sends = if event.attempt == 1 && rng.random_bool(shared.plan.duplicate_ratio) {
            2
        } else {
            1
        };
        let mut first_id = None;
        for n in 0..sends {
            if n > 0 {
                counts.sent.fetch_add(1, Ordering::Relaxed);
            }
            match post(&shared, &req).await {
                Answer::Acknowledged { id, duplicate } => {
                    counts.acknowledged.fetch_add(1, Ordering::Relaxed);
                    if duplicate {
                        counts.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    first_id.get_or_insert(id);
                }
                Answer::Rejected => {
                    counts.rejected.fetch_add(1, Ordering::Relaxed);
                }
                Answer::Failed => {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let Some(id) = first_id else { return };
        let s = &SENDERS[event.sender];
        let failed = rng.random_bool(shared.plan.failure_ratio);
        let took = LogNormal::new(s.processing.ln(), 0.5)
            .map(|d| d.sample(&mut rng))
            .unwrap_or(s.processing);
        let report = if failed {
            json!({"delivery_id": id, "event_id": event.id, "status": "failure", "processing_time_ms": took, "error_type": "timeout", "error_message": "the database did not answer in time"})
        } else {
            json!({"delivery_id": id, "event_id": event.id, "status": "success", "processing_time_ms": took, "records_processed": 1})
        };
        let reported = shared
            .client
            .post(format!("{}/report/{}", shared.plan.server, s.source))
            .header("content-type", "application/json")
            .body(report.to_string())
            .send()
            .await;
        if failed && reported.is_ok() {
            counts.reported_failures.fetch_add(1, Ordering::Relaxed);
        }
        // The provider retries a failed delivery a little later (seconds here,
        // minutes for real), at most three times; GitHub never retries.
        if failed && event.attempt < 4 && s.provider != "github" {
            let gap =
                Duration::from_secs_f64(1.0 + rng.random::<f64>() * 2.0 * f64::from(event.attempt));
            if shared.started.elapsed() + gap < shared.plan.duration {
                tokio::time::sleep(gap).await;
                event.attempt += 1;
                deliver(Arc::clone(&shared), event, rng.random()).await;
            }
        }
    })
}

/// Runs `plan`; `progress` hears the seconds elapsed.
pub async fn run(plan: Plan, mut progress: impl FnMut(Duration)) -> Result<Summary, SimulateError> {
    if !(0.1..=10_000.0).contains(&plan.rate) {
        return Err(SimulateError::Rate);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| SimulateError::Client(e.to_string()))?;
    client
        .get(format!("{}/healthz", plan.server))
        .send()
        .await
        .map_err(|e| SimulateError::Unreachable {
            url: plan.server.clone(),
            reason: e.to_string(),
        })?;
    let shared = Arc::new(Shared {
        client,
        counts: SENDERS.iter().map(|_| Arc::default()).collect(),
        started: Instant::now(),
        plan,
    });
    let plan = &shared.plan;
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut tasks = tokio::task::JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / plan.rate);
    let mut next = Instant::now();
    let mut sent_first = 0u64;
    while shared.started.elapsed() < plan.duration {
        let f = shared.started.elapsed().as_secs_f64() / plan.duration.as_secs_f64();
        let weights: Vec<f64> = (0..SENDERS.len())
            .map(|i| weight(i, f, plan.profile))
            .collect();
        // The spike adds its sends on top of the usual rate.
        let boost: f64 =
            weights.iter().sum::<f64>() / SENDERS.iter().map(|s| s.weight).sum::<f64>();
        let mut pick = rng.random::<f64>() * weights.iter().sum::<f64>();
        let sender = weights
            .iter()
            .position(|w| {
                pick -= w;
                pick <= 0.0
            })
            .unwrap_or(0);
        let s = &SENDERS[sender];
        let event_type = s.events[rng.random_range(0..s.events.len())];
        let created = chrono::Utc::now().timestamp();
        let id = match s.provider {
            "stripe" => format!("evt_{}", ulid::Ulid::new()),
            "slack" => format!("Ev{}", ulid::Ulid::new()),
            _ => ulid::Ulid::new().to_string().to_lowercase(),
        };
        let body = body_of(&mut rng, s, event_type, &id, created);
        let event = Event {
            sender,
            event_type,
            id,
            body,
            attempt: 1,
        };
        tasks.spawn(deliver(Arc::clone(&shared), event, rng.random()));
        sent_first += 1;
        while tasks.try_join_next().is_some() {}
        progress(shared.started.elapsed());
        next += gap.div_f64(boost.max(0.01));
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    tracing::debug!(sent_first, "first sends done; waiting for the last answers");
    // Answers still on their way (retries past the end were never scheduled).
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(Summary {
        per_source: SENDERS
            .iter()
            .zip(&shared.counts)
            .map(|(s, c)| (s.source, Arc::clone(c)))
            .collect(),
        elapsed: shared.started.elapsed(),
    })
}
