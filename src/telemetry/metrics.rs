//! Process metrics for `GET /metrics`: counters and fixed-bucket histograms recorded
//! on atomics (cheap enough for the ingest hot path), and gauges read at scrape time.
//! The exposition (Prometheus text format 0.0.4) is `prometheus-client`'s: each scrape
//! hands these values to its encoder through a [`Collector`].
//!
//! Invariant: recording never blocks on I/O and never allocates after a label set has
//! been seen once; a labelled counter holds at most [`MAX_LABEL_SETS`] label sets
//! (plus one overflow set), whatever names clients make up.

use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

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

    /// The histogram as it is now.
    fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| (*bound, n.load(Ordering::Relaxed)))
            .collect();
        buckets.push((f64::INFINITY, self.overflow.load(Ordering::Relaxed)));
        HistogramSnapshot {
            sum: self.sum(),
            count: self.count(),
            buckets,
        }
    }
}

/// A histogram's values at one scrape: (upper bound, observations in that bucket).
#[derive(Debug)]
struct HistogramSnapshot {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for HistogramSnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
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

    /// Every label set and its count, in order.
    fn values(&self) -> Vec<(Vec<String>, u64)> {
        let mut values = self.sets.lock().values.clone();
        values.sort();
        values
    }
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
    /// A query's start (planning included) to the last byte of its answer, for
    /// answers that completed.
    pub query: Histogram,
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
    /// Compaction since the start: files merged, files written, their bytes, and
    /// partitions that could not be merged.
    pub compaction_input_files: u64,
    pub compaction_output_files: u64,
    pub compaction_input_bytes: u64,
    pub compaction_output_bytes: u64,
    pub compaction_failures: u64,
}

/// A labelled counter at one scrape: (name without `_total`, help, label names, label
/// sets and their counts).
type Family = (
    &'static str,
    &'static str,
    &'static [&'static str],
    Vec<(Vec<String>, u64)>,
);

/// Everything one scrape shows, taken from the atomics at once and handed to
/// `prometheus-client`'s encoder.
#[derive(Debug)]
struct Scrape {
    /// The labelled counters.
    families: Vec<Family>,
    histograms: Vec<(&'static str, &'static str, HistogramSnapshot)>,
    /// (name, help, is a counter, value).
    values: Vec<(&'static str, &'static str, bool, u64)>,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, keys, sets) in &self.families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (values, n) in sets {
                let labels: Vec<(&str, &str)> = keys
                    .iter()
                    .copied()
                    .zip(values.iter().map(String::as_str))
                    .collect();
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, histogram) in &self.histograms {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            histogram.encode(metric)?;
        }
        for (name, help, counter, value) in &self.values {
            if *counter {
                let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(*value).encode(metric)?;
            } else {
                let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(*value).encode(metric)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// The Prometheus text exposition of these metrics, the gauges and the WAL's
    /// sync histogram.
    pub fn render(&self, gauges: &Gauges, wal_sync: Option<&Histogram>) -> String {
        let families: Vec<Family> = vec![
            (
                "hookscope_deliveries",
                "Deliveries recorded.",
                &["source", "provider", "signature_status", "status_code"],
                self.deliveries.values(),
            ),
            (
                "hookscope_reports",
                "Processing reports recorded.",
                &["source", "status"],
                self.reports.values(),
            ),
            (
                "hookscope_alert_notifications",
                "Alert notifications, by sink and result (ok, or failed after its retries).",
                &["sink", "result"],
                self.alert_notifications.values(),
            ),
        ];
        let mut histograms = Vec::new();
        histograms.push((
            "hookscope_ack_duration_seconds",
            "Delivery arrival to acknowledgement.",
            self.ack.snapshot(),
        ));
        histograms.push((
            "hookscope_query_duration_seconds",
            "SQL query start (planning included) to the last byte of its answer, for answers that completed.",
            self.query.snapshot(),
        ));
        if let Some(h) = wal_sync {
            histograms.push((
                "hookscope_wal_sync_duration_seconds",
                "WAL fdatasync duration.",
                h.snapshot(),
            ));
        }
        let values = vec![
            (
                "hookscope_buffer_rows",
                "Rows buffered, not yet in Parquet.",
                false,
                gauges.buffer_rows,
            ),
            (
                "hookscope_parquet_files",
                "Committed Parquet files.",
                false,
                gauges.parquet_files,
            ),
            (
                "hookscope_parquet_bytes",
                "Bytes of the committed Parquet files (tables and rollups).",
                false,
                gauges.parquet_bytes,
            ),
            (
                "hookscope_wal_segments",
                "WAL segment files.",
                false,
                gauges.wal_segments,
            ),
            (
                "hookscope_wal_groups",
                "WAL group commits (one write and sync each).",
                true,
                gauges.wal_groups,
            ),
            (
                "hookscope_wal_records",
                "Records written to the WAL.",
                true,
                gauges.wal_records,
            ),
            (
                "hookscope_wal_sync_failures",
                "WAL syncs that failed after their records were acknowledged (sync = \"none\"): records may be lost if the machine crashes.",
                true,
                gauges.wal_sync_failures,
            ),
            (
                "hookscope_queries",
                "SQL queries run through the API.",
                true,
                self.queries.load(Ordering::Relaxed),
            ),
            (
                "hookscope_saved_query_runs",
                "Scheduled runs of saved queries (alert rules and rollups included) since the start.",
                true,
                gauges.saved_query_runs,
            ),
            (
                "hookscope_saved_query_failures",
                "Scheduled runs of saved queries that failed (their errors are in query_runs).",
                true,
                gauges.saved_query_failures,
            ),
            (
                "hookscope_alerts_firing",
                "Alerts currently firing.",
                false,
                gauges.alerts_firing,
            ),
            (
                "hookscope_compaction_input_files",
                "Small Parquet files merged away by compaction since the start.",
                true,
                gauges.compaction_input_files,
            ),
            (
                "hookscope_compaction_output_files",
                "Parquet files compaction wrote since the start.",
                true,
                gauges.compaction_output_files,
            ),
            (
                "hookscope_compaction_input_bytes",
                "Bytes of the files compaction merged away since the start.",
                true,
                gauges.compaction_input_bytes,
            ),
            (
                "hookscope_compaction_output_bytes",
                "Bytes of the files compaction wrote since the start.",
                true,
                gauges.compaction_output_bytes,
            ),
            (
                "hookscope_compaction_failures",
                "Partitions compaction could not merge since the start (their files stay as they are; see the log).",
                true,
                gauges.compaction_failures,
            ),
        ];
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape {
            families,
            histograms,
            values,
        }));
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &registry);
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
        let out = Metrics::default().render(&Gauges::default(), Some(&h));
        let line = |l: &str| out.lines().any(|x| x == l);
        assert!(
            line("hookscope_wal_sync_duration_seconds_bucket{le=\"0.001\"} 90"),
            "{out}"
        );
        assert!(
            line("hookscope_wal_sync_duration_seconds_bucket{le=\"+Inf\"} 100"),
            "{out}"
        );
        assert!(
            line("hookscope_wal_sync_duration_seconds_count 100"),
            "{out}"
        );
        assert!(
            line("# TYPE hookscope_wal_sync_duration_seconds histogram"),
            "{out}"
        );
    }

    #[test]
    fn labeled_counters_render_prometheus_text() {
        let m = Metrics::default();
        m.deliveries.inc(&["stripe", "stripe", "valid", "200"]);
        m.deliveries.inc(&["stripe", "stripe", "valid", "200"]);
        m.deliveries.inc(&["gh", "github", "invalid", "401"]);
        m.deliveries.inc(&["we\"ird\\", "generic", "valid", "200"]);
        let text = m.render(
            &Gauges {
                alerts_firing: 3,
                ..Gauges::default()
            },
            None,
        );
        assert!(text.contains(
            "hookscope_deliveries_total{source=\"stripe\",provider=\"stripe\",signature_status=\"valid\",status_code=\"200\"} 2"
        ), "{text}");
        assert!(text.contains("status_code=\"401\"} 1"));
        assert!(
            text.contains("source=\"we\\\"ird\\\\\""),
            "label values are escaped: {text}"
        );
        assert!(
            text.contains("# TYPE hookscope_deliveries_total counter"),
            "{text}"
        );
        assert!(text.contains("# TYPE hookscope_ack_duration_seconds histogram"));
        assert!(
            text.lines().any(|l| l == "hookscope_alerts_firing 3"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l == "hookscope_wal_groups_total 0"),
            "{text}"
        );
    }

    #[test]
    fn label_sets_are_bounded_and_the_rest_counted_as_other() {
        let c = LabeledCounter::default();
        for i in 0..MAX_LABEL_SETS + 500 {
            c.inc(&[&format!("src{i}"), "200"]);
        }
        // A set seen before the limit still counts on its own.
        c.inc(&["src7", "200"]);
        let values = c.values();
        assert_eq!(values.len(), MAX_LABEL_SETS + 1);
        let count = |labels: [&str; 2]| {
            values
                .iter()
                .find(|(v, _)| v.iter().map(String::as_str).eq(labels))
                .map(|(_, n)| *n)
        };
        assert_eq!(count(["src7", "200"]), Some(2));
        assert_eq!(count(["_other", "_other"]), Some(500));
        let total: u64 = values.iter().map(|(_, n)| n).sum();
        assert_eq!(total, MAX_LABEL_SETS as u64 + 501);
    }
}
