-- name: retry_storm
-- description: a source whose retries (second and later arrivals) in the last :window are at least :min_retries and more than :ratio of its deliveries, or that delivered one event more than :max_attempts times
-- schedule: every 1m
-- alert: rows > 0
-- severity: warning
-- key: source
-- param: window = 10 minutes
-- param: min_retries = 20
-- param: ratio = 0.3
-- param: max_attempts = 10
-- Method: attempt > 1 counts a retry or a duplicate; providers retry on failures, so
-- a storm usually means the handler is down or slow (see error_burst).
SELECT source, count(*) AS deliveries,
       sum(CASE WHEN attempt > 1 THEN 1 ELSE 0 END) AS retries,
       CAST(sum(CASE WHEN attempt > 1 THEN 1 ELSE 0 END) AS DOUBLE) / count(*) AS retry_ratio,
       max(attempt) AS max_attempt,
       min(retry_gap_ms) AS min_gap_ms
FROM deliveries
WHERE received_at > now() - CAST(:window AS INTERVAL) AND received_at <= now()
GROUP BY source
HAVING (sum(CASE WHEN attempt > 1 THEN 1 ELSE 0 END) >= :min_retries
        AND CAST(sum(CASE WHEN attempt > 1 THEN 1 ELSE 0 END) AS DOUBLE) / count(*) > :ratio)
    OR max(attempt) > :max_attempts
ORDER BY retry_ratio DESC, source
