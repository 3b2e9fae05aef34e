-- name: hourly_traffic
-- description: deliveries per source and hour, kept as table rollup_hourly_traffic: counts, duplicates, signature failures, bytes and latency, for charts over months
-- schedule: every 5m
-- materialize: true
-- bucket: 1h
-- lookback: 3
-- Method: each run recomputes the last 3 hours (the :from and :to of its window) and replaces them in the rollup, so late rows are counted; sum the counts over hours for longer periods.
SELECT date_bin(INTERVAL '1 hour', received_at) AS hour, source,
       count(*) AS deliveries,
       sum(CASE WHEN is_duplicate THEN 1 ELSE 0 END) AS duplicates,
       sum(CASE WHEN signature_status IN ('invalid', 'expired', 'missing') THEN 1 ELSE 0 END) AS signature_failures,
       sum(CASE WHEN status_code >= 400 OR upstream_status >= 400 OR upstream_error IS NOT NULL THEN 1 ELSE 0 END) AS errors,
       sum(payload_size) AS bytes,
       max(payload_size) AS max_bytes,
       approx_percentile_cont(delivery_lag_ms, 0.95) AS p95_delivery_lag_ms,
       approx_percentile_cont(upstream_latency_ms, 0.95) AS p95_upstream_latency_ms
FROM deliveries
WHERE received_at >= :from AND received_at < :to
GROUP BY 1, 2
