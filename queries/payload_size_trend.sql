-- name: payload_size_trend
-- description: payload size per source per :bucket over the last :window: average, p95 and largest, and the average's change against the bucket before
-- schedule: every 1h
-- param: window = 7 days
-- param: bucket = 1 day
-- Method: date_bin buckets (from 1970-01-01 UTC); p95 by approx_percentile_cont;
-- avg_change = average / previous bucket's average - 1 (null for a source's first bucket).
WITH b AS (
    SELECT source, date_bin(CAST(:bucket AS INTERVAL), received_at) AS bucket,
           count(*) AS deliveries, avg(payload_size) AS avg_bytes,
           approx_percentile_cont(0.95) WITHIN GROUP (ORDER BY payload_size) AS p95_bytes,
           max(payload_size) AS max_bytes
    FROM deliveries
    WHERE received_at > now() - CAST(:window AS INTERVAL) AND received_at <= now()
    GROUP BY 1, 2
)
SELECT source, bucket, deliveries, avg_bytes, p95_bytes, max_bytes,
       avg_bytes / lag(avg_bytes) OVER (PARTITION BY source ORDER BY bucket) - 1 AS avg_change
FROM b
ORDER BY source, bucket
