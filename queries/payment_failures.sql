-- name: payment_failures
-- description: failures the providers report in the payloads themselves, per source over the last :window: failed payment events (charge.failed, invoice.payment_failed …), failed check runs, and bodies whose status is failed or error, against all deliveries
-- schedule: every 5m
-- param: window = 1 hour
-- Method: first arrivals only (a retried event counts once); an event type containing
-- "failed" or "failure", a check_run or check_suite whose conclusion is failure, or a
-- body status of failed / error.
WITH d AS (
    SELECT source, event_type,
           (event_type LIKE '%failed%' OR event_type LIKE '%failure%'
            OR (event_type = 'check_run'
                AND coalesce(json_get_str(body, 'check_run', 'conclusion'), '') = 'failure')
            OR (event_type = 'check_suite'
                AND coalesce(json_get_str(body, 'check_suite', 'conclusion'), '') = 'failure')
            OR coalesce(json_get_str(body, 'status'), '') IN ('failed', 'error')) AS failed
    FROM deliveries
    WHERE received_at > now() - CAST(:window AS INTERVAL) AND received_at <= now()
      AND attempt = 1
)
SELECT source, count(*) AS events,
       sum(CASE WHEN failed THEN 1 ELSE 0 END) AS failed_events,
       CAST(sum(CASE WHEN failed THEN 1 ELSE 0 END) AS DOUBLE) / count(*) AS failure_ratio,
       max(CASE WHEN failed THEN event_type END) AS a_failed_type
FROM d
GROUP BY source
ORDER BY failure_ratio DESC, source
