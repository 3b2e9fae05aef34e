-- name: volume_per_source
-- description: deliveries per source per :bucket over the last :window, with duplicates, their ratio, signature failures and bytes
-- schedule: every 5m
-- param: window = 24 hours
-- param: bucket = 1 hour
-- Method: date_bin buckets (from 1970-01-01 UTC); a duplicate is a second or later arrival of a dedup_key.
SELECT date_bin(CAST(:bucket AS INTERVAL), received_at) AS bucket, source,
       count(*) AS deliveries,
       sum(CASE WHEN is_duplicate THEN 1 ELSE 0 END) AS duplicates,
       CAST(sum(CASE WHEN is_duplicate THEN 1 ELSE 0 END) AS DOUBLE) / count(*) AS duplicate_ratio,
       sum(CASE WHEN signature_status IN ('invalid', 'expired', 'missing') THEN 1 ELSE 0 END) AS signature_failures,
       sum(payload_size) AS bytes
FROM deliveries
WHERE received_at > now() - CAST(:window AS INTERVAL) AND received_at <= now()
GROUP BY 1, 2
ORDER BY 1, 2
