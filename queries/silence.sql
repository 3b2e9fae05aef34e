-- name: silence
-- description: a source that usually sends has been quiet for longer than :factor × its usual gap (and at least :min_quiet_seconds), judged on the last :history
-- schedule: every 1m
-- alert: rows > 0
-- severity: warning
-- key: source
-- param: history = 7 days
-- param: factor = 10
-- param: min_quiet_seconds = 300
-- param: min_deliveries = 20
-- Method: usual gap = the source's average gap between deliveries over the history
-- ((last - first) / (count - 1)); sources with fewer than :min_deliveries are not judged.
WITH s AS (
    SELECT source, count(*) AS deliveries,
           min(received_at) AS first_at, max(received_at) AS last_at
    FROM deliveries
    WHERE received_at > now() - CAST(:history AS INTERVAL) AND received_at <= now()
    GROUP BY source
),
g AS (
    SELECT source, deliveries, last_at,
           (date_part('epoch', last_at) - date_part('epoch', first_at)) / (deliveries - 1) AS usual_gap_s,
           date_part('epoch', now()) - date_part('epoch', last_at) AS quiet_s
    FROM s
    WHERE deliveries >= :min_deliveries
)
SELECT source, last_at, quiet_s, usual_gap_s, deliveries
FROM g
WHERE quiet_s > :factor * usual_gap_s AND quiet_s > :min_quiet_seconds
ORDER BY quiet_s DESC
