//! An imported history with anomalies injected at known times: the backtest of each
//! shipped anomaly rule finds them.
//!
//! Two days of steady traffic from three sources (Poisson arrivals, one a source
//! every 6 s on average with a ±20 % daily rhythm; lognormal processing times; 1.5 %
//! of attempts fail and are retried 30 s later), written as NDJSON the way an export
//! would be (retries appended after the first sends, not in time order; no `attempt`
//! column: the import derives it) and imported with [`import`]. The first day is
//! baseline (`latency_degradation` compares with the day before); on the second, each
//! rule gets two anomalies on two sources. Each rule is then backtested as
//! `hookscope queries backtest` does, over the two hours around each of its
//! anomalies (the quick test) or over the whole second day (the `--ignored` one,
//! minutes in a debug build).
//!
//! Rates are chosen for the rules' floors: a 5-minute bucket holds 40-60 first sends,
//! so `traffic_drop`'s drop to zero clears median − 4 spreads (it cannot below a
//! median of about 16-25, as its header says), and `traffic_spike`'s burst of 150
//! events in 10 minutes is far above median + 5 spreads.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp1, LogNormal};
use serde_json::json;

use super::*;
use crate::engine::tests::settings;
use crate::engine::{Engine, Mode};
use crate::monitor::{Registry, backtest};

const SECOND_US: i64 = 1_000_000;
const MINUTE_US: i64 = 60 * SECOND_US;
const HOUR_US: i64 = 60 * MINUTE_US;
const DAY_US: i64 = 24 * HOUR_US;
/// 2026-03-02T00:00:00Z: the history's start.
const T0: i64 = 1_772_409_600_000_000;
const DAYS: i64 = 2;
const SOURCES: [&str; 3] = ["shop", "billing", "crm"];
const MEAN_GAP_S: f64 = 6.0;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// 150 extra first sends over 10 minutes.
    Burst,
    /// No deliveries (nor reports) for 30 minutes.
    Silent,
    /// 90 % of reports are failures for 20 minutes.
    Errors,
    /// Processing times × 5 for 2 hours.
    Slow,
    /// Every event retried three times, a minute apart, for 20 minutes.
    Retries,
}

/// An injected anomaly.
#[derive(Debug, Clone, Copy)]
struct Injection {
    kind: Kind,
    source: &'static str,
    from_us: i64,
    until_us: i64,
}

fn injections() -> Vec<Injection> {
    let at = |kind, source, hour: i64, minutes: i64| Injection {
        kind,
        source,
        from_us: T0 + hour * HOUR_US,
        until_us: T0 + hour * HOUR_US + minutes * MINUTE_US,
    };
    vec![
        at(Kind::Slow, "billing", 25, 120),
        at(Kind::Burst, "shop", 28, 10),
        at(Kind::Retries, "billing", 30, 20),
        at(Kind::Silent, "crm", 32, 30),
        at(Kind::Errors, "shop", 34, 20),
        at(Kind::Errors, "crm", 36, 20),
        at(Kind::Burst, "crm", 38, 10),
        at(Kind::Slow, "shop", 40, 120),
        at(Kind::Silent, "billing", 43, 30),
        at(Kind::Retries, "shop", 45, 20),
    ]
}

fn active(injections: &[Injection], kind: Kind, source: &str, t: i64) -> bool {
    injections
        .iter()
        .any(|i| i.kind == kind && i.source == source && (i.from_us..i.until_us).contains(&t))
}

fn rfc3339(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The history as NDJSON text: (deliveries, outcomes).
fn history(injections: &[Injection]) -> (String, String) {
    let mut rng = StdRng::seed_from_u64(7);
    let processing = LogNormal::new(80f64.ln(), 0.4).unwrap_or_else(|_| unreachable!());
    let (mut deliveries, mut retries, mut outcomes) = (String::new(), String::new(), String::new());
    let mut event = 0u64;
    let mut send = |rng: &mut StdRng,
                    source: &str,
                    t: i64,
                    deliveries: &mut String,
                    retries: &mut String,
                    outcomes: &mut String| {
        event += 1;
        // billing's events carry no id: their retries are told by the body's hash.
        let body = json!({"id": format!("evt_{event}"), "type": "order.updated", "amount": rng.random_range(1..10_000)}).to_string();
        let row = |at: i64| {
            let mut d = super::tests::delivery(source, &rfc3339(at), &body);
            d["sent_at"] = json!(rfc3339(at - 200_000));
            if source != "billing" {
                d["event_id"] = json!(format!("evt_{event}"));
            }
            format!("{d}\n")
        };
        deliveries.push_str(&row(t));
        let mut ms = processing.sample(rng);
        if active(injections, Kind::Slow, source, t) {
            ms *= 5.0;
        }
        let failed = if active(injections, Kind::Errors, source, t) {
            rng.random_bool(0.9)
        } else {
            rng.random_bool(0.015)
        };
        let reported = t + (ms * 1000.0) as i64;
        let mut o = json!({
            "reported_at": rfc3339(reported),
            "source": source,
            "event_id": format!("evt_{event}"),
            "status": if failed { "failure" } else { "success" },
            "processing_time_ms": ms,
            "attributes": "{}",
        });
        if failed {
            o["error_type"] = json!("db_timeout");
        }
        outcomes.push_str(&format!("{o}\n"));
        if active(injections, Kind::Retries, source, t) {
            for k in 1..=3 {
                retries.push_str(&row(t + k * MINUTE_US));
            }
        } else if failed && !active(injections, Kind::Errors, source, t) {
            retries.push_str(&row(t + 30 * SECOND_US));
        }
    };
    for source in SOURCES {
        let mut t = T0;
        while t < T0 + DAYS * DAY_US {
            let phase = (t - T0) as f64 / DAY_US as f64 * std::f64::consts::TAU;
            let rate = 1.0 + 0.2 * phase.sin();
            let gap: f64 = Exp1.sample(&mut rng);
            t += (gap * MEAN_GAP_S / rate * 1e6) as i64;
            if t >= T0 + DAYS * DAY_US || active(injections, Kind::Silent, source, t) {
                continue;
            }
            send(
                &mut rng,
                source,
                t,
                &mut deliveries,
                &mut retries,
                &mut outcomes,
            );
        }
        for i in injections
            .iter()
            .filter(|i| i.kind == Kind::Burst && i.source == source)
        {
            for _ in 0..150 {
                let t = rng.random_range(i.from_us..i.until_us);
                send(
                    &mut rng,
                    source,
                    t,
                    &mut deliveries,
                    &mut retries,
                    &mut outcomes,
                );
            }
        }
    }
    deliveries.push_str(&retries);
    (deliveries, outcomes)
}

/// Each shipped anomaly rule, the anomalies it should find, and how long after an
/// anomaly starts it may first fire (its window, schedule and `for`).
fn rules() -> [(&'static str, Kind, i64); 6] {
    [
        ("traffic_spike", Kind::Burst, 15 * MINUTE_US),
        ("silence", Kind::Silent, 15 * MINUTE_US),
        ("traffic_drop", Kind::Silent, 25 * MINUTE_US),
        ("error_burst", Kind::Errors, 15 * MINUTE_US),
        ("latency_degradation", Kind::Slow, 45 * MINUTE_US),
        ("retry_storm", Kind::Retries, 15 * MINUTE_US),
    ]
}

/// Found, injected and the false alerts of each rule, backtested over the ranges
/// `ranges` gives for its anomalies; the simulated days backtested.
type Outcome = (&'static str, usize, usize, Vec<String>, usize, f64);

async fn backtest_rules(
    ranges: impl Fn(&[&Injection]) -> Vec<(i64, i64)>,
    thin_every_minute_rules: bool,
) -> Vec<Outcome> {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let injections = injections();
    let (deliveries, outcomes) = history(&injections);
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        path
    };
    let d = write("deliveries.ndjson", &deliveries);
    let o = write("outcomes.ndjson", &outcomes);
    let opts = |table| Options {
        dedup_max_keys: 1_000_000,
        ..super::tests::options(table)
    };
    let imported = import(&lake, &[d], &opts(Table::Deliveries), |_| {})
        .await
        .unwrap();
    let reported = import(&lake, &[o], &opts(Table::Outcomes), |_| {})
        .await
        .unwrap();
    eprintln!(
        "imported {} deliveries and {} outcomes in {:.1?}",
        imported[0].rows,
        reported[0].rows,
        started.elapsed()
    );

    let engine = Engine::open(settings(&lake), Mode::ReadOnly).await.unwrap();
    let registry = Registry::load(&[]);
    let renotify = Duration::from_secs(3600);
    let ranges = &ranges;
    let runs = rules().map(|(name, kind, delay)| {
        let q = registry
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not shipped"));
        let engine = &engine;
        let injections = &injections;
        async move {
            let expected: Vec<&Injection> = injections.iter().filter(|i| i.kind == kind).collect();
            let mut episodes = Vec::new();
            let (mut runs, mut simulated_us) = (0, 0);
            for (from, to) in ranges(&expected) {
                let at = |us| DateTime::from_timestamp_micros(us).unwrap_or_default();
                let every = backtest::times(q, at(from), at(to)).unwrap();
                // Rules that run every minute are run every third minute when asked
                // (to keep the test short in a debug build): their anomalies last 20
                // minutes or more.
                let minutely =
                    every.len() > 1 && every[1] - every[0] < chrono::TimeDelta::minutes(5);
                let step = if thin_every_minute_rules && minutely {
                    3
                } else {
                    1
                };
                let times: Vec<_> = every.into_iter().step_by(step).collect();
                runs += times.len();
                simulated_us += to - from;
                episodes.extend(
                    backtest::backtest(
                        engine.query(),
                        q,
                        &times,
                        &BTreeMap::new(),
                        renotify,
                        || {},
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}")),
                );
            }
            // Found: an episode of the injected source fired between the anomaly's
            // start and `delay` after it.
            let matches = |e: &backtest::Episode, i: &Injection| {
                let fired = e.fired_at.timestamp_micros();
                e.source.as_deref() == Some(i.source)
                    && fired >= i.from_us
                    && fired <= i.from_us + delay
            };
            let found = expected
                .iter()
                .filter(|i| episodes.iter().any(|e| matches(e, i)))
                .count();
            let false_alerts: Vec<String> = episodes
                .iter()
                .filter(|e| !expected.iter().any(|i| matches(e, i)))
                .map(|e| format!("{} at {}", e.key, e.fired_at))
                .collect();
            let days = simulated_us as f64 / DAY_US as f64;
            (name, expected.len(), found, false_alerts, runs, days)
        }
    });
    let results = futures::future::join_all(runs).await;
    eprintln!(
        "rule                  found/injected  false alerts  simulated days  per simulated day  runs"
    );
    for (name, injected, found, false_alerts, runs, days) in &results {
        eprintln!(
            "{name:<22}{:>14}  {:>12}  {days:>14.2}  {:>17.2}  {runs}",
            format!("{found}/{injected}"),
            false_alerts.len(),
            false_alerts.len() as f64 / days,
        );
        for f in false_alerts {
            eprintln!("    false alert: {f}");
        }
    }
    eprintln!("in {:.1?}", started.elapsed());
    results
}

fn assert_found(results: &[Outcome], max_false_per_day: f64) {
    for (name, injected, found, false_alerts, _, days) in results {
        assert_eq!(found, injected, "{name}: found {found} of {injected}");
        assert!(
            false_alerts.len() as f64 / days <= max_false_per_day,
            "{name}: {} false alerts in {days:.2} simulated days: {false_alerts:?}",
            false_alerts.len()
        );
    }
}

/// Each rule over the two hours around each of its anomalies (an hour of lead-in
/// settles its state); the every-minute rules every third minute. Under a minute in
/// a debug build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backtest_of_each_anomaly_rule_finds_the_anomalies_injected_in_an_imported_history() {
    let around = |expected: &[&Injection]| {
        expected
            .iter()
            .map(|i| (i.from_us - HOUR_US, i.from_us + HOUR_US))
            .collect()
    };
    let results = backtest_rules(around, true).await;
    // No false alert at all in these windows (another rule's anomaly may be in one).
    assert_found(&results, 0.0);
}

/// Each rule at every scheduled time of the whole second day: the false alerts of a
/// day with ten anomalies. Minutes in a debug build: run with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes in a debug build; run with --ignored"]
async fn a_whole_day_of_backtests_finds_every_anomaly_and_few_false_alerts() {
    let day = |_: &[&Injection]| vec![(T0 + DAY_US, T0 + 2 * DAY_US)];
    let results = backtest_rules(day, false).await;
    assert_found(&results, 1.0);
}
