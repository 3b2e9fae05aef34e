//! The shipped analyses on generated traffic, whose answers are known: the generator
//! makes one source go silent for the span's last hours and gives each day a
//! ten-minute burst of one source.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Registry, run, scheduler};
use crate::engine::tests::settings;
use crate::engine::{Engine, Mode};
use crate::generate::profiles::{CREEPING, PROFILES, SILENT};
use crate::generate::traffic::{BURST_US, OUTAGE_EVERY_US, OUTAGE_US, burst, outage};
use crate::generate::{Spec, generate};

/// 2026-11-02T00:00:00Z.
const END_US: i64 = 1_793_577_600_000_000;
const DAY_US: i64 = 86_400_000_000;
/// Long enough to hold a weekly outage whatever the end.
const DAYS: i64 = 8;

async fn lake() -> (tempfile::TempDir, Arc<Engine>) {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        deliveries: 160_000,
        end_us: END_US,
        span: Duration::from_secs(DAYS as u64 * 86_400),
        seed: 11,
        flush_every: None,
        zstd_level: 1,
        mean_body_bytes: 300,
    };
    generate(dir.path(), &spec, |_| {}).await.unwrap();
    let engine = Engine::open(settings(dir.path()), Mode::ReadOnly)
        .await
        .unwrap();
    (dir, engine)
}

fn at(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap()
}

async fn rows(engine: &Engine, name: &str, at_us: i64, params: &[(&str, &str)]) -> Vec<Value> {
    let registry = Registry::load(&[]);
    let q = registry.get(name).unwrap();
    let params: BTreeMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (_, batches) = run::collect(engine.query(), q, at(at_us), &params)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    match scheduler::rows_json(&batches, usize::MAX) {
        Value::Array(rows) => rows,
        other => panic!("{name}: {other}"),
    }
}

async fn number(engine: &Engine, sql: &str) -> i64 {
    let (_, batches) = engine.query().collect(sql).await.unwrap();
    match scheduler::rows_json(&batches, 1) {
        Value::Array(r) => r[0]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_i64()
            .unwrap(),
        other => panic!("{other}"),
    }
}

fn sources(rows: &[Value]) -> Vec<&str> {
    rows.iter().map(|r| r["source"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_analyses_find_what_the_generator_put_in() {
    let (_dir, engine) = lake().await;

    // Silence: the silent source, and no other, at the end of the span.
    let silent = rows(&engine, "silence", END_US, &[]).await;
    assert_eq!(sources(&silent), [PROFILES[SILENT].source], "{silent:?}");
    // Before it went quiet (six hours before the end), nobody is silent.
    let before = rows(&engine, "silence", END_US - 7 * 3_600_000_000, &[]).await;
    assert!(before.is_empty(), "{before:?}");

    // Spikes: each day's burst is found in its last five minutes (after a day of
    // baseline); hourly checks elsewhere find none.
    let mut found = 0;
    let mut false_alerts = Vec::new();
    for day in END_US / DAY_US - DAYS + 1..END_US / DAY_US {
        let (start, profile) = burst(day);
        let during = rows(&engine, "traffic_spike", start + BURST_US - 60_000_000, &[]).await;
        if sources(&during).contains(&PROFILES[profile].source) {
            found += 1;
        }
        for hour in (1..24).step_by(4) {
            let t = day * DAY_US + hour * 3_600_000_000;
            if (start - 600_000_000..start + BURST_US + 600_000_000).contains(&t) {
                continue;
            }
            let quiet = rows(&engine, "traffic_spike", t, &[]).await;
            false_alerts.extend(quiet.into_iter().map(|r| (t, r)));
        }
    }
    assert_eq!(found, DAYS - 1, "bursts found");
    assert!(false_alerts.is_empty(), "{false_alerts:?}");

    // Volume: the buckets add up to the table, duplicates included.
    let window = &[("window", "96 hours"), ("bucket", "1 hour")];
    // (the last four days)
    let volume = rows(&engine, "volume_per_source", END_US, window).await;
    let total: i64 = volume
        .iter()
        .map(|r| r["deliveries"].as_i64().unwrap())
        .sum();
    let dups: i64 = volume
        .iter()
        .map(|r| r["duplicates"].as_i64().unwrap())
        .sum();
    let bound = "received_at > TIMESTAMP '2026-10-29T00:00:00Z' AND received_at <= TIMESTAMP '2026-11-02T00:00:00Z'";
    assert_eq!(
        total,
        number(
            &engine,
            &format!("SELECT count(*) FROM deliveries WHERE {bound}")
        )
        .await
    );
    assert_eq!(
        dups,
        number(
            &engine,
            &format!("SELECT count(*) FROM deliveries WHERE {bound} AND is_duplicate")
        )
        .await
    );
    assert_eq!(
        volume.len(),
        96 * PROFILES.len() - 6,
        "hours of sources with deliveries"
    );

    // Error rate: failures per source are the failure reports of the window.
    let errors = rows(&engine, "error_rate", END_US, &[("window", "24 hours")]).await;
    for r in &errors {
        let source = r["source"].as_str().unwrap();
        let direct = number(
            &engine,
            &format!(
                "SELECT count(*) FROM outcomes WHERE source = '{source}' AND status = 'failure' \
                 AND reported_at > TIMESTAMP '2026-11-01T00:00:00Z' AND reported_at <= TIMESTAMP '2026-11-02T00:00:00Z'"
            ),
        )
        .await;
        assert_eq!(r["failures"].as_i64().unwrap(), direct, "{r}");
    }
    assert_eq!(errors.len(), PROFILES.len());

    // Error burst: the source whose handler is down, during its outage, and nobody
    // an hour before it.
    let start = END_US - DAYS * DAY_US;
    let (down_from, down) = [END_US / OUTAGE_EVERY_US, END_US / OUTAGE_EVERY_US - 1]
        .into_iter()
        .map(outage)
        .find(|(from, _)| *from > start + DAY_US && *from + OUTAGE_US < END_US)
        .expect("an outage inside the span");
    let during = rows(
        &engine,
        "error_burst",
        down_from + OUTAGE_US - 60_000_000,
        &[],
    )
    .await;
    assert_eq!(sources(&during), [PROFILES[down].source], "{during:?}");
    let before = rows(&engine, "error_burst", down_from - 3_600_000_000, &[]).await;
    assert!(before.is_empty(), "{before:?}");

    // Backtests: the rule at every scheduled time around the outage finds exactly
    // it, firing during it and resolving after it.
    let registry = Registry::load(&[]);
    let hour = Duration::from_secs(3600);
    let rule = registry.get("error_burst").unwrap();
    let range = (
        at(down_from - 1_800_000_000),
        at(down_from + OUTAGE_US + 3_600_000_000),
    );
    let times = super::backtest::times(rule, range.0, range.1).unwrap();
    let episodes =
        super::backtest::backtest(engine.query(), rule, &times, &BTreeMap::new(), hour, || {})
            .await
            .unwrap();
    assert_eq!(episodes.len(), 1, "{episodes:?}");
    let e = &episodes[0];
    assert_eq!(e.source.as_deref(), Some(PROFILES[down].source));
    assert!(
        e.fired_at > at(down_from) && e.fired_at < at(down_from + OUTAGE_US),
        "{e:?}"
    );
    let resolved = e.resolved_at.expect("resolved");
    assert!(
        resolved > at(down_from + OUTAGE_US)
            && resolved < at(down_from + OUTAGE_US + 1_800_000_000),
        "{e:?}"
    );
    // And the spike rule around the last burst.
    let (start, profile) = burst(END_US / DAY_US - 1);
    let rule = registry.get("traffic_spike").unwrap();
    let times =
        super::backtest::times(rule, at(start - 3_600_000_000), at(start + 3_600_000_000)).unwrap();
    let episodes =
        super::backtest::backtest(engine.query(), rule, &times, &BTreeMap::new(), hour, || {})
            .await
            .unwrap();
    assert_eq!(episodes.len(), 1, "{episodes:?}");
    assert_eq!(
        episodes[0].source.as_deref(),
        Some(PROFILES[profile].source)
    );

    // Retry storm: the providers retry what the downed handler failed (thresholds
    // for this small lake's volumes).
    let storm = &[("min_retries", "5")];
    let stormy = rows(&engine, "retry_storm", down_from + OUTAGE_US, storm).await;
    assert!(
        sources(&stormy).contains(&PROFILES[down].source),
        "{stormy:?}"
    );
    for hours_before in [3, 9, 15] {
        let calm = rows(
            &engine,
            "retry_storm",
            down_from - hours_before * 3_600_000_000,
            storm,
        )
        .await;
        assert!(
            calm.is_empty(),
            "{hours_before} h before the outage: {calm:?}"
        );
    }

    // Traffic drop: the silent source, an hour after it went quiet (hourly buckets:
    // this lake's sources send a few deliveries a minute).
    let drop = &[
        ("bucket_seconds", "3600"),
        ("baseline_buckets", "6"),
        ("min_median", "5"),
    ];
    let quiet_from = END_US - 6 * 3_600_000_000;
    let dropped = rows(&engine, "traffic_drop", quiet_from + 65 * 60_000_000, drop).await;
    assert_eq!(sources(&dropped), [PROFILES[SILENT].source], "{dropped:?}");
    let mut false_drops = Vec::new();
    for hours_before in (2..48).step_by(5) {
        let t = quiet_from - hours_before * 3_600_000_000;
        if (down_from - 3_600_000_000..down_from + OUTAGE_US + 3_600_000_000).contains(&t) {
            continue;
        }
        false_drops.extend(rows(&engine, "traffic_drop", t, drop).await);
    }
    assert!(false_drops.is_empty(), "{false_drops:?}");

    // Payment failures: failed payment events over first arrivals, as counted directly.
    let payments = rows(
        &engine,
        "payment_failures",
        END_US,
        &[("window", "24 hours")],
    )
    .await;
    let stripe = payments.iter().find(|r| r["source"] == "stripe").unwrap();
    let direct = number(
        &engine,
        "SELECT count(*) FROM deliveries WHERE source = 'stripe' AND attempt = 1 \
         AND event_type = 'charge.failed' \
         AND received_at > TIMESTAMP '2026-11-01T00:00:00Z' AND received_at <= TIMESTAMP '2026-11-02T00:00:00Z'",
    )
    .await;
    assert!(direct > 0);
    assert_eq!(
        stripe["failed_events"].as_i64().unwrap(),
        direct,
        "{stripe}"
    );

    // Latency degradation: the handler that slows to four times its speed over the
    // span's last fifth, and no other, at the end; nobody two days before.
    let slow = rows(&engine, "latency_degradation", END_US, &[]).await;
    assert_eq!(sources(&slow), [PROFILES[CREEPING].source], "{slow:?}");
    let earlier = rows(&engine, "latency_degradation", END_US - 2 * DAY_US, &[]).await;
    assert!(earlier.is_empty(), "{earlier:?}");
}
