-- name: latency_percentiles
-- description: p50 / p95 / p99 of processing time (the app's reports), upstream latency (forwarded deliveries) and delivery lag (provider to hookscope), per source and event type, over the last :window
-- schedule: every 5m
-- param: window = 24 hours
-- Method: approx_percentile_cont (t-digest: exact for small samples, an estimate for
-- large ones). A report takes its event type from the delivery it names.
WITH d AS (
    SELECT id, source, event_type, upstream_latency_ms, delivery_lag_ms
    FROM deliveries
    WHERE received_at > now() - CAST(:window AS INTERVAL) AND received_at <= now()
),
samples AS (
    SELECT source, event_type, 'upstream_latency_ms' AS metric, upstream_latency_ms AS ms
    FROM d WHERE upstream_latency_ms IS NOT NULL
    UNION ALL
    SELECT source, event_type, 'delivery_lag_ms' AS metric, delivery_lag_ms AS ms
    FROM d WHERE delivery_lag_ms IS NOT NULL
    UNION ALL
    SELECT o.source, d.event_type, 'processing_time_ms' AS metric, o.processing_time_ms AS ms
    FROM outcomes o LEFT JOIN d ON d.id = o.delivery_id
    WHERE o.reported_at > now() - CAST(:window AS INTERVAL) AND o.reported_at <= now()
      AND o.processing_time_ms IS NOT NULL
)
SELECT source, event_type, metric, count(*) AS samples,
       approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
       approx_percentile_cont(0.95) WITHIN GROUP (ORDER BY ms) AS p95,
       approx_percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99
FROM samples
GROUP BY source, event_type, metric
ORDER BY source, event_type, metric
