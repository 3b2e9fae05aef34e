-- name: traffic_drop
-- description: a source that usually sends whose new events in the last :bucket_seconds seconds fell below the median - :k spreads of the :baseline_buckets buckets before (quiet buckets count as zeros), with a baseline median of at least :min_median
-- schedule: every 5m
-- alert: rows > 0
-- severity: warning
-- key: source
-- param: bucket_seconds = 300
-- param: baseline_buckets = 12
-- for: 10m
-- param: k = 4
-- param: min_median = 10
-- Method: the mirror of traffic_spike (first arrivals; the median, and as spread the
-- larger of 1.4826 × MAD and √median, of the zero-filled buckets of the hour before);
-- a source quiet in the last bucket counts as zero. It fires once the drop has lasted
-- 10 minutes (`for`), so one quiet bucket does not page anyone. A drop to zero shows
-- only when the median is above k² (16): for a quiet source, use longer buckets.
WITH counts AS (
    SELECT source,
           CAST(floor((date_part('epoch', now()) - date_part('epoch', received_at)) / :bucket_seconds) AS BIGINT) AS ago,
           count(*) AS n
    FROM deliveries
    WHERE received_at > now() - CAST(CAST(:bucket_seconds * (:baseline_buckets + 1) AS VARCHAR) || ' seconds' AS INTERVAL)
      AND received_at <= now()
      AND attempt = 1
    GROUP BY 1, 2
),
known AS (SELECT DISTINCT source FROM counts WHERE ago >= 1),
grid AS (
    SELECT k.source, g.ago
    FROM known k CROSS JOIN (SELECT unnest(range(0, :baseline_buckets + 1)) AS ago) g
),
filled AS (
    SELECT g.source, g.ago, coalesce(c.n, 0) AS n
    FROM grid g LEFT JOIN counts c ON c.source = g.source AND c.ago = g.ago
),
med AS (
    SELECT source, median(n) AS med FROM filled WHERE ago >= 1 GROUP BY source
),
spread AS (
    SELECT f.source, m.med, median(abs(f.n - m.med)) AS mad
    FROM filled f JOIN med m ON m.source = f.source
    WHERE f.ago >= 1
    GROUP BY f.source, m.med
)
SELECT f.source, f.n AS deliveries, s.med AS baseline_median, s.mad AS baseline_mad,
       s.med - :k * greatest(1.4826 * s.mad, sqrt(s.med), 1) AS threshold
FROM filled f JOIN spread s ON s.source = f.source
WHERE f.ago = 0 AND s.med >= :min_median AND f.n < s.med - :k * greatest(1.4826 * s.mad, sqrt(s.med), 1)
ORDER BY f.source
