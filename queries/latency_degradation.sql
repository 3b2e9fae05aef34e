-- name: latency_degradation
-- description: a source whose p95 processing time over the last :window is more than :factor × its p95 over the same window a day before or a week before (a slow creep shows against the week)
-- schedule: every 15m
-- alert: rows > 0
-- severity: warning
-- key: source
-- param: window = 1 hour
-- param: factor = 2
-- param: min_samples = 30
-- Method: approx_percentile_cont of successful reports (failures are timeouts that
-- would measure the outage, not the handler); each period needs :min_samples reports.
WITH w AS (
    SELECT source, processing_time_ms,
           CASE
               WHEN reported_at > now() - CAST(:window AS INTERVAL) THEN 'now'
               WHEN reported_at > now() - INTERVAL '7 days' - CAST(:window AS INTERVAL)
                    AND reported_at <= now() - INTERVAL '7 days' THEN 'week'
               ELSE 'day'
           END AS period
    FROM outcomes
    WHERE status = 'success' AND processing_time_ms IS NOT NULL
      AND ((reported_at > now() - CAST(:window AS INTERVAL) AND reported_at <= now())
           OR (reported_at > now() - INTERVAL '1 day' - CAST(:window AS INTERVAL)
               AND reported_at <= now() - INTERVAL '1 day')
           OR (reported_at > now() - INTERVAL '7 days' - CAST(:window AS INTERVAL)
               AND reported_at <= now() - INTERVAL '7 days'))
),
p AS (
    SELECT source, period, count(*) AS samples,
           approx_percentile_cont(0.95) WITHIN GROUP (ORDER BY processing_time_ms) AS p95
    FROM w
    GROUP BY source, period
)
SELECT n.source, n.p95 AS p95_now, d.p95 AS p95_day_before, k.p95 AS p95_week_before,
       n.samples
FROM p n
LEFT JOIN p d ON d.source = n.source AND d.period = 'day' AND d.samples >= :min_samples
LEFT JOIN p k ON k.source = n.source AND k.period = 'week' AND k.samples >= :min_samples
WHERE n.period = 'now' AND n.samples >= :min_samples
  AND (d.p95 IS NOT NULL OR k.p95 IS NOT NULL)
  AND (n.p95 > :factor * d.p95 OR n.p95 > :factor * k.p95)
ORDER BY n.source
