//! Process metrics for `GET /metrics` (Prometheus text format): counters, gauges and
//! fixed-bucket histograms built on atomics, cheap enough for the ingest hot path.
//!
//! Invariant: recording never blocks on I/O and never allocates after a label set has
//! been seen once; a labelled counter holds at most [`MAX_LABEL_SETS`] label sets
//! (plus one overflow set), whatever names clients make up.

use std::fmt::Write as _;
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Upper bounds (seconds) of histogram buckets: 50 µs … 10 s.
const BOUNDS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 17],
    overflow: AtomicU64,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation of `seconds`.
    pub fn observe(&self, seconds: f64) {
        let i = BOUNDS.iter().position(|b| seconds <= *b);
        match i {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Sum of observations, seconds.
    pub fn sum(&self) -> f64 {
        self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// The upper bound of the bucket holding quantile `q` (an estimate).
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let target = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= target {
                return BOUNDS[i];
            }
        }
        f64::INFINITY
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
                BOUNDS[i]
            );
        }
        cumulative += self.overflow.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum());
        let _ = writeln!(out, "{name}_count{braces} {}", self.count());
    }
}

/// Distinct label sets one counter keeps. Source names come from request paths, so a
/// client posting to ever new names must not grow `/metrics` (or the lookup) without
/// bound: label sets first seen after this many are counted under [`OVERFLOW_LABEL`].
pub(crate) const MAX_LABEL_SETS: usize = 1000;

/// The value of every label of the set that counts what came after [`MAX_LABEL_SETS`].
pub(crate) const OVERFLOW_LABEL: &str = "_other";

/// Counters keyed by label values, found by hash without allocating once a label set
/// has been seen; at most [`MAX_LABEL_SETS`] sets plus the overflow set.
#[derive(Debug, Default)]
pub(crate) struct LabeledCounter {
    sets: Mutex<LabelSets>,
}

#[derive(Debug, Default)]
struct LabelSets {
    hasher: std::hash::RandomState,
    /// Hash of the label values → indices into `values` with that hash.
    index: std::collections::HashMap<u64, Vec<usize>>,
    values: Vec<(Vec<String>, u64)>,
    /// Where in `values` the overflow set is, once there is one.
    overflow: Option<usize>,
}

impl LabelSets {
    fn find(&self, hash: u64, labels: &[&str]) -> Option<usize> {
        self.index.get(&hash)?.iter().copied().find(|&i| {
            self.values[i]
                .0
                .iter()
                .map(String::as_str)
                .eq(labels.iter().copied())
        })
    }

    fn insert(&mut self, hash: u64, labels: &[&str], n: u64) {
        self.index.entry(hash).or_default().push(self.values.len());
        self.values
            .push((labels.iter().map(|s| s.to_string()).collect(), n));
    }
}

impl LabeledCounter {
    /// Adds one to the counter of `labels`.
    pub fn inc(&self, labels: &[&str]) {
        let mut sets = self.sets.lock();
        let hash = sets.hasher.hash_one(labels);
        if let Some(i) = sets.find(hash, labels) {
            sets.values[i].1 += 1;
            return;
        }
        if sets.values.len() < MAX_LABEL_SETS {
            sets.insert(hash, labels, 1);
            return;
        }
        match sets.overflow {
            Some(i) => sets.values[i].1 += 1,
            None => {
                tracing::warn!(
                    limit = MAX_LABEL_SETS,
                    "more distinct metric label sets than the limit (many source names?); \
                     new ones are counted under {OVERFLOW_LABEL:?}"
                );
                let overflow = vec![OVERFLOW_LABEL; labels.len()];
                let hash = sets.hasher.hash_one(&overflow[..]);
                sets.overflow = Some(sets.values.len());
                sets.insert(hash, &overflow, 1);
            }
        }
    }

    fn render(&self, out: &mut String, name: &str, keys: &[&str]) {
        let mut values = self.sets.lock().values.clone();
        values.sort();
        for (values, n) in values {
            let labels: Vec<String> = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(out, "{name}{{{}}} {n}", labels.join(","));
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every metric of the process.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Labels: source, provider, signature_status, status_code.
    pub deliveries: LabeledCounter,
    /// Labels: source, status.
    pub reports: LabeledCounter,
    /// Request arrival to acknowledgement of a delivery.
    pub ack: Histogram,
    /// Queries run through the API.
    pub queries: AtomicU64,
    /// Alert notifications sent. Labels: sink, result (ok, failed).
    pub alert_notifications: LabeledCounter,
}

/// Gauges read at render time.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    pub buffer_rows: u64,
    pub parquet_files: u64,
    pub alerts_firing: u64,
    pub wal_segments: u64,
    pub wal_groups: u64,
    pub wal_records: u64,
    pub wal_sync_failures: u64,
    /// Bytes of the committed Parquet files.
    pub parquet_bytes: u64,
    /// Saved-query runs since the start, and the failed ones.
    pub saved_query_runs: u64,
    pub saved_query_failures: u64,
}

impl Metrics {
    /// The Prometheus text exposition of these metrics, the gauges and the WAL's
    /// sync histogram.
    pub fn render(&self, gauges: &Gauges, wal_sync: Option<&Histogram>) -> String {
        let mut out = String::with_capacity(4096);
        let help = |out: &mut String, name: &str, kind: &str, text: &str| {
            let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
        };
        help(
            &mut out,
            "hookscope_deliveries_total",
            "counter",
            "Deliveries recorded.",
        );
        self.deliveries.render(
            &mut out,
            "hookscope_deliveries_total",
            &["source", "provider", "signature_status", "status_code"],
        );
        help(
            &mut out,
            "hookscope_reports_total",
            "counter",
            "Processing reports recorded.",
        );
        self.reports
            .render(&mut out, "hookscope_reports_total", &["source", "status"]);
        help(
            &mut out,
            "hookscope_alert_notifications_total",
            "counter",
            "Alert notifications, by sink and result (ok, or failed after its retries).",
        );
        self.alert_notifications.render(
            &mut out,
            "hookscope_alert_notifications_total",
            &["sink", "result"],
        );
        help(
            &mut out,
            "hookscope_ack_duration_seconds",
            "histogram",
            "Delivery arrival to acknowledgement.",
        );
        self.ack
            .render(&mut out, "hookscope_ack_duration_seconds", "");
        if let Some(h) = wal_sync {
            help(
                &mut out,
                "hookscope_wal_sync_duration_seconds",
                "histogram",
                "WAL fdatasync duration.",
            );
            h.render(&mut out, "hookscope_wal_sync_duration_seconds", "");
        }
        for (name, kind, text, value) in [
            (
                "hookscope_buffer_rows",
                "gauge",
                "Rows buffered, not yet in Parquet.",
                gauges.buffer_rows,
            ),
            (
                "hookscope_parquet_files",
                "gauge",
                "Committed Parquet files.",
                gauges.parquet_files,
            ),
            (
                "hookscope_wal_segments",
                "gauge",
                "WAL segment files.",
                gauges.wal_segments,
            ),
            (
                "hookscope_wal_groups_total",
                "counter",
                "WAL group commits (one write and sync each).",
                gauges.wal_groups,
            ),
            (
                "hookscope_wal_records_total",
                "counter",
                "Records written to the WAL.",
                gauges.wal_records,
            ),
            (
                "hookscope_wal_sync_failures_total",
                "counter",
                "WAL syncs that failed after their records were acknowledged (sync = \"none\"): records may be lost if the machine crashes.",
                gauges.wal_sync_failures,
            ),
            (
                "hookscope_queries_total",
                "counter",
                "SQL queries run through the API.",
                self.queries.load(Ordering::Relaxed),
            ),
            (
                "hookscope_alerts_firing",
                "gauge",
                "Alerts currently firing.",
                gauges.alerts_firing,
            ),
            (
                "hookscope_parquet_bytes",
                "gauge",
                "Bytes of the committed Parquet files (tables and rollups).",
                gauges.parquet_bytes,
            ),
            (
                "hookscope_saved_query_runs_total",
                "counter",
                "Scheduled runs of saved queries (alert rules and rollups included) since the start.",
                gauges.saved_query_runs,
            ),
            (
                "hookscope_saved_query_failures_total",
                "counter",
                "Scheduled runs of saved queries that failed (their errors are in query_runs).",
                gauges.saved_query_failures,
            ),
        ] {
            help(&mut out, name, kind, text);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_into_buckets_and_estimate_quantiles() {
        let h = Histogram::default();
        for _ in 0..90 {
            h.observe(0.0008);
        }
        for _ in 0..10 {
            h.observe(0.02);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.5), 0.001);
        assert_eq!(h.quantile(0.99), 0.025);
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.001\"} 90"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 100"));
        assert!(out.contains("x_count 100"));
    }

    #[test]
    fn labeled_counters_render_prometheus_text() {
        let m = Metrics::default();
        m.deliveries.inc(&["stripe", "stripe", "valid", "200"]);
        m.deliveries.inc(&["stripe", "stripe", "valid", "200"]);
        m.deliveries.inc(&["gh", "github", "invalid", "401"]);
        let text = m.render(&Gauges::default(), None);
        assert!(text.contains(
            "hookscope_deliveries_total{source=\"stripe\",provider=\"stripe\",signature_status=\"valid\",status_code=\"200\"} 2"
        ));
        assert!(text.contains("status_code=\"401\"} 1"));
        assert!(text.contains("# TYPE hookscope_ack_duration_seconds histogram"));
    }

    #[test]
    fn label_sets_are_bounded_and_the_rest_counted_as_other() {
        let c = LabeledCounter::default();
        for i in 0..MAX_LABEL_SETS + 500 {
            c.inc(&[&format!("src{i}"), "200"]);
        }
        // A set seen before the limit still counts on its own.
        c.inc(&["src7", "200"]);
        let mut out = String::new();
        c.render(&mut out, "x", &["source", "status_code"]);
        assert_eq!(out.lines().count(), MAX_LABEL_SETS + 1, "{out}");
        assert!(out.contains("x{source=\"src7\",status_code=\"200\"} 2"));
        assert!(out.contains("x{source=\"_other\",status_code=\"_other\"} 500"));
        let total: u64 = out
            .lines()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(total, MAX_LABEL_SETS as u64 + 501);
    }
}
