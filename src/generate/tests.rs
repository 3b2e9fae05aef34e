//! The generator's tests: a generated lake opened and queried like any other.

use super::profiles::PROFILES;
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

/// Dedup keys whose attempts are not 1..n: none, if the lake numbers arrivals as the
/// dedup index would.
const ATTEMPTS_WITH_HOLES: &str = "SELECT count(*) FROM (SELECT source, dedup_key, \
     count(*) AS c, max(attempt) AS m FROM deliveries GROUP BY source, dedup_key) WHERE c <> m";

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
    assert_eq!(number(&engine, ATTEMPTS_WITH_HOLES).await, 0);
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
    assert_eq!(number(&engine, ATTEMPTS_WITH_HOLES).await, 0);
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
