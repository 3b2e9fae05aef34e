-- name: signature_failures
-- description: deliveries whose signature did not verify (invalid, expired, or missing where a secret is set) per source and status over the last :window
-- schedule: every 5m
-- param: window = 1 hour
SELECT source, signature_status, count(*) AS deliveries,
       min(received_at) AS first_at, max(received_at) AS last_at,
       count(DISTINCT remote_addr) AS remote_addrs
FROM deliveries
WHERE received_at > now() - CAST(:window AS INTERVAL) AND received_at <= now()
  AND signature_status IN ('invalid', 'expired', 'missing')
GROUP BY source, signature_status
ORDER BY deliveries DESC, source, signature_status
