-- name: error_rate
-- description: failure reports against deliveries per source over the last :window, with the most frequent error type
-- schedule: every 5m
-- param: window = 1 hour
-- Method: error_rate = failure outcomes / deliveries of the same window (null without deliveries).
WITH d AS (
    SELECT source, count(*) AS deliveries
    FROM deliveries
    WHERE received_at > now() - CAST(:window AS INTERVAL) AND received_at <= now()
    GROUP BY source
),
o AS (
    SELECT source, count(*) AS reports,
           sum(CASE WHEN status = 'failure' THEN 1 ELSE 0 END) AS failures
    FROM outcomes
    WHERE reported_at > now() - CAST(:window AS INTERVAL) AND reported_at <= now()
    GROUP BY source
),
e AS (
    SELECT source, error_type,
           row_number() OVER (PARTITION BY source ORDER BY count(*) DESC, error_type) AS rank
    FROM outcomes
    WHERE reported_at > now() - CAST(:window AS INTERVAL) AND reported_at <= now()
      AND status = 'failure'
    GROUP BY source, error_type
)
SELECT coalesce(d.source, o.source) AS source,
       coalesce(d.deliveries, 0) AS deliveries,
       coalesce(o.reports, 0) AS reports,
       coalesce(o.failures, 0) AS failures,
       CAST(coalesce(o.failures, 0) AS DOUBLE) / nullif(coalesce(d.deliveries, 0), 0) AS error_rate,
       e.error_type AS top_error_type
FROM d
FULL JOIN o ON d.source = o.source
LEFT JOIN e ON e.source = coalesce(d.source, o.source) AND e.rank = 1
ORDER BY error_rate DESC NULLS LAST, source
