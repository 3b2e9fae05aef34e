//! Synthetic traffic written straight into a lake, for benchmarks, tests and demos.
//!
//! Deliveries and outcomes from six sources over a time span: a daily rhythm and
//! quieter weekends, one burst a day, lognormal payload sizes and processing times, a
//! handler whose latency creeps up, failures (and an outage a week) answered by the
//! provider's retries on its own schedule, at-least-once duplicates, and a source
//! that goes silent for the last hours. The rows take the path a flush takes (the
//! buffer's builders → [`persist`] → the manifest), without the WAL: a generated lake
//! is an ordinary lake, and a server opens it like any other.
//!
//! Invariants:
//! - The same [`Spec`] (seed included) gives the same rows and the same files on a
//!   new lake; another run on the same lake adds other events with other ids.
//! - `attempt`, `is_duplicate` and `retry_gap_ms` are what the dedup index derives:
//!   the n-th arrival of a dedup_key at its source, and the time since the previous
//!   one (the schedule's gap, exactly).
//! - Nothing is visible until the one manifest commit at the end; files of a run that
//!   stops before it are removed at a server's next start, like a flush's.
//! - Generated rows are not added to a persisted dedup index: a lake generated
//!   without a server has none, and a server's first start rebuilds it from the
//!   lake's recent days, as for a lake written before the index was persisted.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use thiserror::Error;

use crate::buffer::{Buffer, Derived};
use crate::lake::manifest::{FileEntry, Manifest, ManifestError};
use crate::lake::persist::{self, PersistError};
use crate::lake::{Lake, LakeError};
use crate::model::{Delivery, Outcome, SignatureStatus, StoredBody};
use crate::tables::Table;

const SECOND_US: i64 = 1_000_000;
const HOUR_US: i64 = 3_600 * SECOND_US;
const DAY_US: i64 = 24 * HOUR_US;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Deliveries to aim for, retries and duplicates included (the result is within
    /// about a percent; [`Summary::deliveries`] has the exact count).
    pub deliveries: u64,
    /// The span ends here (microseconds, UTC) …
    pub end_us: i64,
    /// … and starts this long before.
    pub span: Duration,
    pub seed: u64,
    /// One file per partition and window of this length, as a server flushing at
    /// this interval leaves the lake; `None`: one file per partition and hour.
    pub flush_every: Option<Duration>,
    /// zstd level of the Parquet files (the server's default is 1).
    pub zstd_level: i32,
    /// Mean body bytes over all sources; each source keeps its own median relative
    /// to the others (GitHub's pushes are large, Slack's events small).
    pub mean_body_bytes: u32,
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub deliveries: u64,
    /// Deliveries with attempt > 1 after a failure …
    pub retries: u64,
    /// … and without one (a provider sending an event twice).
    pub duplicates: u64,
    pub outcomes: u64,
    pub files: u64,
    pub bytes: u64,
    /// Raw request bytes (bodies and headers) of the deliveries.
    pub request_bytes: u64,
}

#[derive(Debug, Error)]
pub enum GenerateError {
    #[error("{0}")]
    Spec(String),
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("the generator stopped: {0}")]
    Task(String),
}

/// How one source's traffic looks.
struct Profile {
    source: &'static str,
    provider: &'static str,
    /// Share of first sends.
    weight: f64,
    events: &'static [&'static str],
    /// Median body bytes and the lognormal's sigma.
    size: (f64, f64),
    /// Median processing time in ms and sigma.
    processing: (f64, f64),
    /// Seconds from a failed attempt to the next one; empty: never retried.
    retry_gaps: &'static [i64],
    user_agent: &'static str,
    /// The header carrying the provider's signature, if it signs.
    signature_header: Option<&'static str>,
}

const PROFILES: &[Profile] = &[
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
const CREEPING: usize = 1;
/// Index of the source that goes silent for the span's last hours.
const SILENT: usize = 5;
const SILENT_FOR_US: i64 = 6 * HOUR_US;
/// Chance that an attempt fails outside an outage.
const FAILURE_RATE: f64 = 0.015;
/// Chance that a provider sends a successful event again.
const DUPLICATE_RATE: f64 = 0.003;
/// Chance that the app reports an outcome for a delivery.
const REPORT_RATE: f64 = 0.85;
/// Share of first sends that arrive in the day's burst.
const BURST_SHARE: f64 = 0.04;
const BURST_US: i64 = 10 * 60 * SECOND_US;
/// An outage of one source's handler (every attempt fails) once a week.
const OUTAGE_US: i64 = 30 * 60 * SECOND_US;
const OUTAGE_EVERY_US: i64 = 7 * DAY_US;
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

/// Writes the generated traffic into the lake in `dir` (new or not) and commits it
/// with one manifest version. Holds the directory's lock meanwhile, so it never runs
/// beside a server on the same directory. `progress` is called with the deliveries
/// written so far.
///
/// The work runs as a task of its own that holds the lock to the end: dropping the
/// returned future does not stop it half-way or release the lock under a write.
pub async fn generate(
    dir: &Path,
    spec: &Spec,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<Summary, GenerateError> {
    let (dir, spec) = (dir.to_path_buf(), spec.clone());
    tokio::spawn(async move { generate_locked(&dir, &spec, &progress).await })
        .await
        .map_err(|e| GenerateError::Task(e.to_string()))?
}

async fn generate_locked(
    dir: &Path,
    spec: &Spec,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Summary, GenerateError> {
    if spec.deliveries == 0 {
        return Err(GenerateError::Spec(
            "nothing to generate: ask for at least one delivery".into(),
        ));
    }
    let span_us = i64::try_from(spec.span.as_micros()).unwrap_or(i64::MAX);
    if span_us < HOUR_US {
        return Err(GenerateError::Spec(format!(
            "a span of {} is too short: give at least an hour",
            humantime::format_duration(spec.span)
        )));
    }
    let window_us = match spec.flush_every {
        Some(d) => i64::try_from(d.as_micros())
            .unwrap_or(HOUR_US)
            .clamp(SECOND_US, HOUR_US),
        None => HOUR_US,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| GenerateError::Spec(format!("cannot create {}: {e}", dir.display())))?;
    let _lock = crate::engine::lock_dir(dir)?;
    let lake = &Lake::local(dir)?;
    let manifest = Manifest::load(lake).await?;
    let next_file = manifest.next_file_seq.max(1);

    // The generator fills windows on its own thread; this task encodes and writes
    // them (two cores: one each).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Window>(2);
    let spec_for_thread = spec.clone();
    // Another run on the same lake continues it: other events, other ids.
    let run = manifest.version;
    let generator = std::thread::Builder::new()
        .name("hookscope-generate".into())
        .spawn(move || Generator::new(&spec_for_thread, run, span_us, window_us).run(&tx))
        .map_err(|e| GenerateError::Task(format!("cannot start the generator thread: {e}")))?;

    let mut out = Written {
        summary: Summary::default(),
        added: Vec::new(),
        paths: Vec::new(),
        next_file,
    };
    let result: Result<(), GenerateError> = async {
        // Each table of a window is encoded on its own blocking thread, and the next
        // window's encoding starts before this one's files are written.
        let mut encoding = std::collections::VecDeque::new();
        while let Some(window) = rx.recv().await {
            out.summary.deliveries += window.deliveries;
            out.summary.retries += window.retries;
            out.summary.duplicates += window.duplicates;
            out.summary.outcomes += window.outcomes;
            out.summary.request_bytes += window.request_bytes;
            let mut buffer = window.buffer;
            for table in [Table::Deliveries, Table::Outcomes] {
                let batches = buffer.snapshot(table);
                let level = spec.zstd_level;
                encoding.push_back((
                    table,
                    tokio::task::spawn_blocking(move || persist::encode(table, &batches, level)),
                ));
            }
            while encoding.len() > 2 {
                if let Some((table, task)) = encoding.pop_front() {
                    out.write(lake, table, task).await?;
                }
            }
            progress(out.summary.deliveries);
        }
        while let Some((table, task)) = encoding.pop_front() {
            out.write(lake, table, task).await?;
        }
        Ok(())
    }
    .await;
    // Closing the channel stops the generator at its next window.
    drop(rx);
    let joined = tokio::task::spawn_blocking(move || generator.join())
        .await
        .map_err(|e| GenerateError::Task(e.to_string()))
        .and_then(|r| r.map_err(|_| GenerateError::Task("the generator thread panicked".into())));
    let outcome = result.and(joined.map(|_| ()));
    let committed = match outcome {
        Ok(()) => {
            let next = manifest.with_files(out.added, manifest.wal_through, out.next_file);
            next.commit(lake).await.map_err(GenerateError::from)
        }
        Err(e) => Err(e),
    };
    if let Err(e) = committed {
        // Files no manifest names: removed now (or at the next start if this fails).
        if !matches!(&e, GenerateError::Manifest(m) if Manifest::keeps_files(m)) {
            for path in &out.paths {
                let _ = lake.delete(path).await;
            }
        }
        return Err(e);
    }
    Ok(out.summary)
}

/// The files written so far.
struct Written {
    summary: Summary,
    added: Vec<(Table, FileEntry)>,
    paths: Vec<String>,
    next_file: u64,
}

impl Written {
    /// Writes the files `task` encodes for `table`.
    async fn write(
        &mut self,
        lake: &Lake,
        table: Table,
        task: tokio::task::JoinHandle<Result<Vec<persist::EncodedFile>, PersistError>>,
    ) -> Result<(), GenerateError> {
        let files = task
            .await
            .map_err(|e| GenerateError::Task(e.to_string()))??;
        for f in files {
            let path = format!(
                "{}/{}/gen-{:012}.parquet",
                table.name(),
                f.partition,
                self.next_file
            );
            self.next_file += 1;
            let bytes = f.bytes.len() as u64;
            self.paths.push(path.clone());
            lake.put_durable(&path, f.bytes).await?;
            self.summary.files += 1;
            self.summary.bytes += bytes;
            self.added.push((
                table,
                FileEntry {
                    path,
                    rows: f.rows,
                    bytes,
                    min_time_us: f.min_time_us,
                    max_time_us: f.max_time_us,
                },
            ));
        }
        Ok(())
    }
}

/// One window's rows, ready to encode.
struct Window {
    buffer: Buffer,
    deliveries: u64,
    retries: u64,
    duplicates: u64,
    outcomes: u64,
    request_bytes: u64,
}

struct Generator {
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
    fn new(spec: &Spec, run: u64, span_us: i64, window_us: i64) -> Self {
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

    fn run(mut self, tx: &tokio::sync::mpsc::Sender<Window>) {
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
        // The day's burst: one source, ten minutes, at a time drawn from the day.
        let day = from_us.div_euclid(DAY_US);
        let mut day_rng = StdRng::seed_from_u64(day as u64 ^ 0x9e37_79b9_7f4a_7c15);
        let burst_at = day * DAY_US + day_rng.random_range(0..DAY_US - BURST_US);
        let burst_profile = day_rng.random_range(0..PROFILES.len());
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
        let week = at_us.div_euclid(OUTAGE_EVERY_US);
        let mut week_rng = StdRng::seed_from_u64(week as u64 ^ 0x51ed_270b_2713_4f1d);
        let down = week_rng.random_range(0..PROFILES.len());
        let from = week * OUTAGE_EVERY_US + week_rng.random_range(0..OUTAGE_EVERY_US - OUTAGE_US);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::settings;
    use crate::engine::{Engine, EngineError, Mode};
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;

    /// 2026-11-02T00:00:00Z.
    const END_US: i64 = 1_793_577_600_000_000;

    fn spec(deliveries: u64, hours: u64) -> Spec {
        Spec {
            deliveries,
            end_us: END_US,
            span: Duration::from_secs(hours * 3600),
            seed: 7,
            flush_every: None,
            zstd_level: 1,
            mean_body_bytes: 4_000,
        }
    }

    async fn generated(spec: &Spec) -> (tempfile::TempDir, Summary, std::sync::Arc<Engine>) {
        let dir = tempfile::tempdir().unwrap();
        let summary = generate(dir.path(), spec, |_| {}).await.unwrap();
        let engine = Engine::open(settings(dir.path()), Mode::ReadOnly)
            .await
            .unwrap();
        (dir, summary, engine)
    }

    /// The one integer a query returns.
    async fn number(engine: &Engine, sql: &str) -> i64 {
        let (_, batches) = engine.query().collect(sql).await.unwrap();
        batches[0]
            .column(0)
            .as_primitive_opt::<Int64Type>()
            .unwrap_or_else(|| panic!("{sql}: not an integer"))
            .value(0)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_generated_lake_opens_and_holds_the_traffic_described() {
        let (_dir, summary, engine) = generated(&spec(20_000, 72)).await;
        let n = summary.deliveries as i64;
        assert!((19_400..20_600).contains(&n), "{summary:?}");
        assert_eq!(number(&engine, "SELECT count(*) FROM deliveries").await, n);
        assert_eq!(
            number(&engine, "SELECT count(*) FROM outcomes").await,
            summary.outcomes as i64
        );
        assert_eq!(
            number(&engine, "SELECT count(DISTINCT source) FROM deliveries").await,
            PROFILES.len() as i64
        );
        // Retries and duplicates are there, as the dedup index would number them:
        // attempts 1..n of a dedup_key, no holes.
        assert!(
            summary.retries > 100 && summary.duplicates > 10,
            "{summary:?}"
        );
        assert_eq!(
            number(
                &engine,
                "SELECT count(*) FROM deliveries WHERE is_duplicate"
            )
            .await,
            (summary.retries + summary.duplicates) as i64
        );
        assert_eq!(
            number(
                &engine,
                "SELECT count(*) FROM (SELECT source, dedup_key, count(*) AS c, max(attempt) AS m \
                 FROM deliveries GROUP BY source, dedup_key) WHERE c <> m"
            )
            .await,
            0
        );
        // Every gap is the provider's schedule (or a duplicate's few seconds), and
        // the SQL that finds retry intervals sees it.
        assert_eq!(
            number(
                &engine,
                "SELECT count(*) FROM deliveries WHERE source = 'stripe' AND attempt = 3 \
                 AND retry_gap_ms <> 300000"
            )
            .await,
            0
        );
        assert_eq!(
            number(
                &engine,
                "SELECT count(*) FROM (SELECT received_at - lag(received_at) OVER \
                 (PARTITION BY dedup_key ORDER BY received_at) AS gap, retry_gap_ms \
                 FROM deliveries WHERE source = 'shopify') \
                 WHERE gap IS NOT NULL AND CAST(date_part('epoch', gap) * 1000 AS BIGINT) <> CAST(retry_gap_ms AS BIGINT)"
            )
            .await,
            0
        );
        // The silent source sends nothing new in the last six hours.
        assert_eq!(
            number(
                &engine,
                "SELECT count(*) FROM deliveries WHERE source = 'acme' AND attempt = 1 \
                 AND received_at >= TIMESTAMP '2026-11-01T18:00:00Z'"
            )
            .await,
            0
        );
        // The creeping handler: its median in the last fifth is well above the first half's.
        let early = number(
            &engine,
            "SELECT CAST(approx_percentile_cont(processing_time_ms, 0.5) AS BIGINT) FROM outcomes \
             WHERE source = 'github' AND status = 'success' AND reported_at < TIMESTAMP '2026-10-31T12:00:00Z'",
        )
        .await;
        let late = number(
            &engine,
            "SELECT CAST(approx_percentile_cont(processing_time_ms, 0.5) AS BIGINT) FROM outcomes \
             WHERE source = 'github' AND status = 'success' AND reported_at >= TIMESTAMP '2026-11-01T12:00:00Z'",
        )
        .await;
        assert!(
            late > early * 2,
            "github median {early} ms early, {late} ms late"
        );
        // Everything is inside the span, and the sizes are lognormal around each
        // source's median.
        assert_eq!(
            number(
                &engine,
                "SELECT count(*) FROM deliveries WHERE received_at < TIMESTAMP '2026-10-30T00:00:00Z' \
                 OR received_at >= TIMESTAMP '2026-11-02T00:00:00Z'"
            )
            .await,
            0
        );
        let median = |source: &str| {
            format!(
                "SELECT CAST(approx_percentile_cont(payload_size, 0.5) AS BIGINT) FROM deliveries WHERE source = '{source}'"
            )
        };
        let github = number(&engine, &median("github")).await;
        let slack = number(&engine, &median("slack")).await;
        assert!(
            github > slack * 5,
            "median sizes: github {github}, slack {slack}"
        );
        let mean = number(
            &engine,
            "SELECT CAST(avg(payload_size) AS BIGINT) FROM deliveries",
        )
        .await;
        assert!(
            (3_400..4_600).contains(&mean),
            "mean size {mean}, asked for 4000"
        );
        assert!(summary.bytes * 3 < summary.request_bytes, "{summary:?}");
        // Bodies are JSON whose `type` is the event type.
        assert_eq!(
            number(
                &engine,
                "SELECT count(*) FROM deliveries WHERE json_get_str(body, 'type') IS DISTINCT FROM event_type"
            )
            .await,
            0
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_same_seed_gives_the_same_rows() {
        let fingerprint = "SELECT CAST(count(*) + sum(payload_size) + sum(attempt) * 7 \
             + sum(CAST(retry_gap_ms AS BIGINT)) + sum(length(dedup_key)) AS BIGINT) FROM deliveries";
        let (_a, sa, ea) = generated(&spec(3_000, 24)).await;
        let (_b, sb, eb) = generated(&spec(3_000, 24)).await;
        assert_eq!(sa, sb);
        assert_eq!(
            number(&ea, fingerprint).await,
            number(&eb, fingerprint).await
        );
        let mut other = spec(3_000, 24);
        other.seed = 8;
        let (_c, _, ec) = generated(&other).await;
        assert_ne!(
            number(&ea, fingerprint).await,
            number(&ec, fingerprint).await
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_flush_interval_leaves_a_file_per_window_as_ingest_would() {
        let mut s = spec(2_000, 2);
        s.flush_every = Some(Duration::from_secs(600));
        let (dir, summary, engine) = generated(&s).await;
        let manifest = Manifest::load(&Lake::local(dir.path()).unwrap())
            .await
            .unwrap();
        // Two hours of ten-minute windows: twelve delivery files.
        assert_eq!(manifest.files(Table::Deliveries).len(), 12);
        assert_eq!(
            number(&engine, "SELECT count(*) FROM deliveries").await,
            summary.deliveries as i64
        );
        // A second run adds to the lake; not while a server holds the directory.
        let more = generate(dir.path(), &spec(500, 2), |_| {}).await.unwrap();
        let engine = Engine::open(settings(dir.path()), Mode::ReadOnly)
            .await
            .unwrap();
        assert_eq!(
            number(&engine, "SELECT count(*) FROM deliveries").await,
            (summary.deliveries + more.deliveries) as i64
        );
        // … with other events and ids, so attempts still count without holes.
        assert_eq!(
            number(
                &engine,
                "SELECT count(*) - count(DISTINCT id) FROM deliveries"
            )
            .await,
            0
        );
        assert_eq!(
            number(
                &engine,
                "SELECT count(*) FROM (SELECT source, dedup_key, count(*) AS c, max(attempt) AS m \
                 FROM deliveries GROUP BY source, dedup_key) WHERE c <> m"
            )
            .await,
            0
        );
        let server = Engine::open(settings(dir.path()), Mode::Serve)
            .await
            .unwrap();
        let err = generate(dir.path(), &spec(500, 2), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, GenerateError::Engine(EngineError::Locked(_))),
            "{err}"
        );
        // The server goes on with the lake: a delivery, a flush, all rows there.
        let mut d = crate::model::tests::sample_delivery();
        d.provider_attempt = None;
        server.ingest(d).await.unwrap();
        server.flush().await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        let engine = Engine::open(settings(dir.path()), Mode::ReadOnly)
            .await
            .unwrap();
        assert_eq!(
            number(&engine, "SELECT count(*) FROM deliveries").await,
            (summary.deliveries + more.deliveries + 1) as i64
        );
    }

    #[tokio::test]
    async fn an_empty_or_too_short_spec_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = generate(dir.path(), &spec(0, 24), |_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("at least one delivery"), "{err}");
        let mut short = spec(10, 1);
        short.span = Duration::from_secs(60);
        let err = generate(dir.path(), &short, |_| {}).await.unwrap_err();
        assert!(err.to_string().contains("at least an hour"), "{err}");
    }
}
