//! The traffic model: when deliveries arrive, from which source, what each looks
//! like, which fail, and when their retries and duplicates follow.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};

use super::Spec;
use super::profiles::{CREEPING, PROFILES, SILENT, SILENT_FOR_US};
use crate::buffer::{Buffer, Derived};
use crate::model::{Delivery, Outcome, SignatureStatus, StoredBody};

pub(super) const SECOND_US: i64 = 1_000_000;
pub(super) const HOUR_US: i64 = 3_600 * SECOND_US;
const DAY_US: i64 = 24 * HOUR_US;

/// Chance that an attempt fails outside an outage.
const FAILURE_RATE: f64 = 0.015;
/// Chance that a provider sends a successful event again.
const DUPLICATE_RATE: f64 = 0.003;
/// Chance that the app reports an outcome for a delivery.
const REPORT_RATE: f64 = 0.85;
/// Share of first sends that arrive in the day's burst.
const BURST_SHARE: f64 = 0.04;
pub(crate) const BURST_US: i64 = 10 * 60 * SECOND_US;
/// The burst of day `day` (days since 1970-01-01 UTC): one source's extra traffic
/// for [`BURST_US`], starting at the time returned (microseconds), and the index of
/// that source in the profiles.
pub(crate) fn burst(day: i64) -> (i64, usize) {
    let mut day_rng = StdRng::seed_from_u64(day as u64 ^ 0x9e37_79b9_7f4a_7c15);
    let at = day * DAY_US + day_rng.random_range(0..DAY_US - BURST_US);
    (at, day_rng.random_range(0..PROFILES.len()))
}

/// The outage of week `week` (weeks since 1970-01-01 UTC): the time it starts
/// (microseconds; it lasts [`OUTAGE_US`]) and the index of the source whose handler
/// fails every attempt meanwhile.
pub(crate) fn outage(week: i64) -> (i64, usize) {
    let mut week_rng = StdRng::seed_from_u64(week as u64 ^ 0x51ed_270b_2713_4f1d);
    let down = week_rng.random_range(0..PROFILES.len());
    let from = week * OUTAGE_EVERY_US + week_rng.random_range(0..OUTAGE_EVERY_US - OUTAGE_US);
    (from, down)
}

/// An outage of one source's handler (every attempt fails) once a week.
pub(crate) const OUTAGE_US: i64 = 30 * 60 * SECOND_US;
pub(crate) const OUTAGE_EVERY_US: i64 = 7 * DAY_US;
/// A window holds at most this many deliveries.
const WINDOW_MAX_ROWS: u64 = 65_536;
/// Expected deliveries per first send (retries and duplicates), to aim at the total.
const PER_FIRST_SEND: f64 = 1.015;

/// An arrival still to come: a retry or a duplicate of an event already sent.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    at_us: i64,
    /// Tie-break, so the order (and so the lake) is deterministic.
    order: u64,
    profile: usize,
    event: u64,
    event_type: usize,
    size: usize,
    attempt: i32,
    /// When the event was first sent (its `created` time).
    first_us: i64,
    previous_us: i64,
    duplicate_only: bool,
}

/// One window's rows, ready to encode.
pub(super) struct Window {
    pub(super) buffer: Buffer,
    pub(super) deliveries: u64,
    pub(super) retries: u64,
    pub(super) duplicates: u64,
    pub(super) outcomes: u64,
    pub(super) request_bytes: u64,
}

pub(super) struct Generator {
    rng: StdRng,
    start_us: i64,
    end_us: i64,
    window_us: i64,
    /// First sends in an hour of average activity (see [`activity`]).
    per_hour: f64,
    /// First sends per day on average.
    per_day: f64,
    pending: BinaryHeap<Reverse<Pending>>,
    order: u64,
    next_event: u64,
    sizes: Vec<LogNormal<f64>>,
    processing: Vec<LogNormal<f64>>,
    delivery_lag: LogNormal<f64>,
    /// Words bodies are made of (JSON-ish text that compresses like real payloads).
    words: Vec<String>,
    seq: u64,
}

impl Generator {
    /// `run` is the lake's manifest version: each run on a lake draws other events.
    pub(super) fn new(spec: &Spec, run: u64, span_us: i64, window_us: i64) -> Self {
        let hours = span_us as f64 / HOUR_US as f64;
        let lognormal = |median: f64, sigma: f64| {
            // Both parameters are finite constants of this module.
            LogNormal::new(median.ln(), sigma).unwrap_or_else(|_| unreachable!())
        };
        // The profiles' sizes have this mean (a lognormal's mean is its median
        // times e^(σ²/2)); scaled to the one asked for.
        let natural_mean: f64 = PROFILES
            .iter()
            .map(|p| p.weight * p.size.0 * (p.size.1 * p.size.1 / 2.0).exp())
            .sum();
        let size_scale = f64::from(spec.mean_body_bytes.max(1)) / natural_mean;
        let mut rng = StdRng::seed_from_u64(spec.seed ^ run.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let words = (0..512)
            .map(|_| {
                let len = rng.random_range(3..10);
                (0..len)
                    .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                    .collect()
            })
            .collect();
        Generator {
            start_us: spec.end_us - span_us,
            end_us: spec.end_us,
            window_us,
            per_hour: spec.deliveries as f64
                / PER_FIRST_SEND
                / total_activity(spec.end_us - span_us, spec.end_us),
            per_day: spec.deliveries as f64 / PER_FIRST_SEND / (hours / 24.0),
            pending: BinaryHeap::new(),
            order: 0,
            next_event: run << 40,
            sizes: PROFILES
                .iter()
                .map(|p| lognormal(p.size.0 * size_scale, p.size.1))
                .collect(),
            processing: PROFILES
                .iter()
                .map(|p| lognormal(p.processing.0, p.processing.1))
                .collect(),
            delivery_lag: lognormal(250.0, 0.6),
            words,
            rng,
            seq: 0,
        }
    }

    pub(super) fn run(mut self, tx: &tokio::sync::mpsc::Sender<Window>) {
        let mut hour_start = self.start_us - self.start_us.rem_euclid(HOUR_US);
        let mut window = self.empty_window();
        let mut window_end =
            self.start_us - self.start_us.rem_euclid(self.window_us) + self.window_us;
        while hour_start < self.end_us {
            let hour_end = (hour_start + HOUR_US).min(self.end_us);
            let mut arrivals = self.first_sends(hour_start.max(self.start_us), hour_end);
            arrivals.sort_unstable();
            let mut next = arrivals.into_iter().peekable();
            loop {
                let due_retry = self
                    .pending
                    .peek()
                    .map(|Reverse(p)| p.at_us)
                    .filter(|&t| t < hour_end);
                let first = next.peek().map(|(t, _)| *t);
                let at = match (due_retry, first) {
                    (None, None) => break,
                    (Some(r), Some(f)) => r.min(f),
                    (Some(r), None) => r,
                    (None, Some(f)) => f,
                };
                if at >= window_end || window.deliveries >= WINDOW_MAX_ROWS {
                    // A window is also cut by rows, so a dense span holds memory
                    // bounded (and its partitions get several files, as flushes
                    // by size would leave them).
                    if window.deliveries > 0
                        && tx
                            .blocking_send(std::mem::replace(&mut window, self.empty_window()))
                            .is_err()
                    {
                        return;
                    }
                    while at >= window_end {
                        window_end += self.window_us;
                    }
                }
                if due_retry == Some(at) {
                    if let Some(Reverse(p)) = self.pending.pop() {
                        self.arrive(&mut window, p);
                    }
                } else if let Some((at, profile)) = next.next() {
                    let p = self.first_send(at, profile);
                    self.arrive(&mut window, p);
                }
            }
            hour_start = hour_end;
        }
        // Retries scheduled past the span's end never arrive.
        if window.deliveries > 0 {
            let _ = tx.blocking_send(window);
        }
    }

    fn empty_window(&self) -> Window {
        Window {
            buffer: Buffer::default(),
            deliveries: 0,
            retries: 0,
            duplicates: 0,
            outcomes: 0,
            request_bytes: 0,
        }
    }

    /// This hour's first sends: (time, profile), unsorted.
    fn first_sends(&mut self, from_us: i64, to_us: i64) -> Vec<(i64, usize)> {
        let expected = self.per_hour * activity(from_us, to_us) * (1.0 - BURST_SHARE);
        let count = expected.floor() as u64 + u64::from(self.rng.random_bool(expected.fract()));
        let mut out: Vec<(i64, usize)> = (0..count)
            .map(|_| {
                let at = self.rng.random_range(from_us..to_us);
                (at, self.pick_profile())
            })
            .collect();
        let (burst_at, burst_profile) = burst(from_us.div_euclid(DAY_US));
        let (b0, b1) = (burst_at.max(from_us), (burst_at + BURST_US).min(to_us));
        if b0 < b1 {
            let share = (b1 - b0) as f64 / BURST_US as f64;
            let extra = self.per_day * BURST_SHARE * share;
            let n = extra.floor() as u64 + u64::from(self.rng.random_bool(extra.fract()));
            for _ in 0..n {
                out.push((self.rng.random_range(b0..b1), burst_profile));
            }
        }
        out.retain(|&(at, p)| !(p == SILENT && at >= self.end_us - SILENT_FOR_US));
        out
    }

    fn pick_profile(&mut self) -> usize {
        let mut x = self.rng.random::<f64>();
        for (i, p) in PROFILES.iter().enumerate() {
            if x < p.weight {
                return i;
            }
            x -= p.weight;
        }
        PROFILES.len() - 1
    }

    fn first_send(&mut self, at_us: i64, profile: usize) -> Pending {
        self.next_event += 1;
        let p = &PROFILES[profile];
        let size = self.sizes[profile]
            .sample(&mut self.rng)
            .clamp(100.0, 256.0 * 1024.0) as usize;
        Pending {
            at_us,
            order: 0,
            profile,
            event: self.next_event,
            event_type: self.rng.random_range(0..p.events.len()),
            size,
            attempt: 1,
            first_us: at_us,
            previous_us: 0,
            duplicate_only: false,
        }
    }

    /// Is `profile`'s handler down at `at_us` (its weekly outage)?
    fn in_outage(&self, profile: usize, at_us: i64) -> bool {
        let (from, down) = outage(at_us.div_euclid(OUTAGE_EVERY_US));
        down == profile && (from..from + OUTAGE_US).contains(&at_us)
    }

    /// Records one arrival (and its outcome), and schedules what follows from it.
    fn arrive(&mut self, window: &mut Window, a: Pending) {
        let p = &PROFILES[a.profile];
        self.seq += 1;
        let event_type = p.events[a.event_type];
        let body = self.body(&a, event_type);
        let delivery = self.delivery(&a, event_type, body);
        let derived = Derived {
            attempt: a.attempt,
            is_duplicate: a.attempt > 1,
            retry_gap_ms: (a.attempt > 1).then(|| (a.at_us - a.previous_us) as f64 / 1000.0),
        };
        window.request_bytes +=
            (delivery.payload_size as usize + delivery.headers_json.len()) as u64;
        window.deliveries += 1;
        if a.attempt > 1 {
            if a.duplicate_only {
                window.duplicates += 1;
            } else {
                window.retries += 1;
            }
        }
        window.buffer.push_delivery(self.seq, &delivery, derived);

        // The app's handler: a failure makes the provider retry on its schedule.
        let failed = self.in_outage(a.profile, a.at_us) || self.rng.random_bool(FAILURE_RATE);
        if self.rng.random_bool(REPORT_RATE) {
            let outcome = self.outcome(&a, &delivery, failed);
            window.outcomes += 1;
            window.buffer.push_outcome(self.seq, &outcome);
        }
        let gap_s = if failed {
            p.retry_gaps.get(a.attempt as usize - 1).copied()
        } else if a.attempt == 1 && self.rng.random_bool(DUPLICATE_RATE) {
            Some(self.rng.random_range(2..20))
        } else {
            None
        };
        if let Some(gap) = gap_s {
            self.order += 1;
            self.pending.push(Reverse(Pending {
                at_us: a.at_us + gap * SECOND_US,
                order: self.order,
                attempt: a.attempt + 1,
                previous_us: a.at_us,
                duplicate_only: !failed,
                ..a
            }));
        }
    }

    /// A JSON body of about `a.size` bytes; the same for every attempt of an event.
    fn body(&self, a: &Pending, event_type: &str) -> String {
        let p = &PROFILES[a.profile];
        let mut rng = StdRng::seed_from_u64(a.event);
        let mut body = String::with_capacity(a.size + 64);
        let _ = write!(
            body,
            r#"{{"id":"{}","type":"{event_type}","created":{},"data":{{"object":{{"amount":{},"lines":["#,
            event_id(p.provider, a.event),
            a.first_us / SECOND_US,
            rng.random_range(100..100_000),
        );
        // Line items, as order and invoice payloads carry them: the same keys again
        // and again, a few words of text, numbers.
        let mut line = 0;
        while body.len() + 4 < a.size {
            line += 1;
            let _ = write!(
                body,
                r#"{{"id":"li_{}_{line}","object":"line_item","quantity":{},"price":{{"currency":"usd","unit_amount":{}}},"description":""#,
                a.event,
                rng.random_range(1..5),
                rng.random_range(100..20_000),
            );
            for _ in 0..rng.random_range(2..6) {
                body.push_str(&self.words[rng.random_range(0..self.words.len())]);
                body.push(' ');
            }
            body.push_str("\"},");
        }
        if body.ends_with(',') {
            body.pop();
        }
        body.push_str("]}}}");
        body
    }

    fn delivery(&mut self, a: &Pending, event_type: &str, body: String) -> Delivery {
        let p = &PROFILES[a.profile];
        let event_id = (p.provider != "generic").then(|| event_id(p.provider, a.event));
        let payload_sha256 = crate::ingest::providers::sig::sha256_hex(body.as_bytes());
        let dedup_key = match &event_id {
            Some(id) => id.clone(),
            None => format!("sha256:{payload_sha256}"),
        };
        let sent_at_us = matches!(p.provider, "stripe" | "svix" | "slack" | "shopify")
            .then(|| a.at_us - (self.delivery_lag.sample(&mut self.rng) * 1000.0) as i64);
        let signature_status = match p.signature_header {
            None => SignatureStatus::Unchecked,
            Some(_) if self.rng.random_bool(0.002) => SignatureStatus::Invalid,
            Some(_) => SignatureStatus::Valid,
        };
        let mut headers = format!(
            r#"{{"content-type":"application/json","user-agent":"{}""#,
            p.user_agent
        );
        if let Some(h) = p.signature_header {
            let _ = write!(headers, r#","{h}":"{:064x}""#, self.rng.random::<u128>());
        }
        headers.push('}');
        let delivery_id = (p.provider == "shopify").then(|| uuid_like(self.rng.random()));
        Delivery {
            id: ulid::Ulid::from_parts((a.at_us / 1000) as u64, self.rng.random::<u128>())
                .to_string(),
            received_at_us: a.at_us,
            source: p.source.to_string(),
            provider: p.provider.to_string(),
            event_type: Some(event_type.to_string()),
            event_id,
            delivery_id,
            dedup_key,
            provider_attempt: None,
            sent_at_us,
            signature_status,
            method: "POST".into(),
            path: format!("/webhook/{}", p.source),
            query: String::new(),
            content_type: Some("application/json".into()),
            user_agent: Some(p.user_agent.to_string()),
            remote_addr: Some(format!(
                "203.0.113.{}",
                a.profile * 16 + self.rng.random_range(1..16)
            )),
            headers_json: headers,
            payload_size: body.len() as i64,
            body: StoredBody::Text(body),
            payload_sha256,
            payload_issues: None,
            status_code: 200,
            upstream_status: None,
            upstream_latency_ms: None,
            upstream_error: None,
        }
    }

    fn outcome(&mut self, a: &Pending, d: &Delivery, failed: bool) -> Outcome {
        // The creeping handler slows to four times its speed over the last fifth.
        let span = (self.end_us - self.start_us) as f64;
        let late = ((a.at_us - self.start_us) as f64 / span - 0.8).max(0.0) / 0.2;
        let creep = if a.profile == CREEPING {
            1.0 + 3.0 * late
        } else {
            1.0
        };
        let mut ms = self.processing[a.profile].sample(&mut self.rng) * creep;
        let (error_type, error_message) = if failed {
            if self.rng.random_bool(0.5) {
                ms = 30_000.0;
                (Some("timeout"), Some("handler timed out after 30 s"))
            } else {
                (
                    Some("db_error"),
                    Some("could not serialize access due to concurrent update"),
                )
            }
        } else {
            (None, None)
        };
        Outcome {
            id: ulid::Ulid::from_parts((a.at_us / 1000) as u64, self.rng.random::<u128>())
                .to_string(),
            reported_at_us: a.at_us + (ms * 1000.0) as i64,
            source: d.source.clone(),
            delivery_id: Some(d.id.clone()),
            event_id: d.event_id.clone(),
            status: if failed { "failure" } else { "success" }.into(),
            processing_time_ms: Some((ms * 1000.0).round() / 1000.0),
            error_type: error_type.map(str::to_string),
            error_message: error_message.map(str::to_string),
            records_processed: (!failed).then(|| self.rng.random_range(1..20)),
            attributes: "{}".into(),
        }
    }
}

/// How busy `[from_us, to_us)` (within one hour) is, in hours of average traffic:
/// busiest mid-afternoon UTC, quietest at night, weekends at 60%.
fn total_activity(start_us: i64, end_us: i64) -> f64 {
    let mut total = 0.0;
    let mut at = start_us;
    while at < end_us {
        let next = (at - at.rem_euclid(HOUR_US) + HOUR_US).min(end_us);
        total += activity(at, next);
        at = next;
    }
    total.max(f64::MIN_POSITIVE)
}

fn activity(from_us: i64, to_us: i64) -> f64 {
    let hour_of_day = from_us.rem_euclid(DAY_US) / HOUR_US;
    let weekday = (from_us.div_euclid(DAY_US) + 4).rem_euclid(7); // 0 = Sunday
    let rhythm = 1.0 + 0.6 * ((hour_of_day as f64 - 9.0) * std::f64::consts::PI / 12.0).sin();
    let weekend = if weekday == 0 || weekday == 6 {
        0.6
    } else {
        1.0
    };
    (to_us - from_us) as f64 / HOUR_US as f64 * rhythm * weekend
}

/// The provider's id of event number `n`, in its own format.
fn event_id(provider: &str, n: u64) -> String {
    match provider {
        "stripe" => format!("evt_{n:024}"),
        "github" | "shopify" => uuid_like(u128::from(n) * 0x9e37_79b9_7f4a_7c15),
        "slack" => format!("Ev{n:010X}"),
        "svix" => format!("msg_{n:027}"),
        _ => format!("ord_{n}"),
    }
}

fn uuid_like(x: u128) -> String {
    let h = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
