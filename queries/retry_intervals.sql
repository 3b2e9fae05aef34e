-- name: retry_intervals
-- description: events that arrived at least :min_attempts times in the last :window: attempts, first and last arrival, smallest / average / largest gap between arrivals
-- schedule: every 15m
-- param: window = 24 hours
-- param: min_attempts = 2
-- Method: gaps from lag() over each event's arrivals (source and dedup_key, in time
-- order); the stored retry_gap_ms column holds the same gap, also across the window's start.
WITH arrivals AS (
    SELECT source, dedup_key, event_type, received_at,
           (date_part('epoch', received_at)
            - date_part('epoch', lag(received_at) OVER (PARTITION BY source, dedup_key ORDER BY received_at))) * 1000 AS gap_ms
    FROM deliveries
    WHERE received_at > now() - CAST(:window AS INTERVAL) AND received_at <= now()
)
SELECT source, dedup_key, max(event_type) AS event_type, count(*) AS attempts,
       min(received_at) AS first_at, max(received_at) AS last_at,
       min(gap_ms) AS min_gap_ms, avg(gap_ms) AS avg_gap_ms, max(gap_ms) AS max_gap_ms
FROM arrivals
GROUP BY source, dedup_key
HAVING count(*) >= :min_attempts
ORDER BY attempts DESC, last_at DESC, source, dedup_key
