-- name: error_burst
-- description: a source whose app reported at least :min_failures failures in the last :window, more than :ratio of its reports
-- schedule: every 1m
-- alert: rows > 0
-- severity: critical
-- key: source
-- param: window = 10 minutes
-- param: min_failures = 10
-- param: ratio = 0.5
-- Method: failure outcomes over all outcomes of the window, per source; both floors
-- must be passed, so a single failure of a quiet source does not page anyone.
SELECT source, count(*) AS reports,
       sum(CASE WHEN status = 'failure' THEN 1 ELSE 0 END) AS failures,
       CAST(sum(CASE WHEN status = 'failure' THEN 1 ELSE 0 END) AS DOUBLE) / count(*) AS failure_ratio,
       max(error_type) AS an_error_type
FROM outcomes
WHERE reported_at > now() - CAST(:window AS INTERVAL) AND reported_at <= now()
GROUP BY source
HAVING sum(CASE WHEN status = 'failure' THEN 1 ELSE 0 END) >= :min_failures
   AND CAST(sum(CASE WHEN status = 'failure' THEN 1 ELSE 0 END) AS DOUBLE) / count(*) > :ratio
ORDER BY failure_ratio DESC, source
