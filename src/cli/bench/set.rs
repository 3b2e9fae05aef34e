//! The standard analytic set: the questions users ask of their webhook history, as
//! SQL over a lake, anchored at the lake's last delivery so that a lake generated
//! last month is measured like one filled a minute ago.

use chrono::{DateTime, Utc};

use crate::tables::Table;

/// Values the queries are written with, read from the lake before timing starts.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Anchors {
    /// The newest delivery's time: "now" for the queries.
    #[serde(serialize_with = "rfc3339")]
    pub end: DateTime<Utc>,
    /// A delivery to look up by id …
    pub id: Option<String>,
    /// … and an event (with retries, when the lake has any) to look up by event_id.
    pub event_id: Option<String>,
}

/// One query of the set.
pub(crate) struct Analysis {
    pub name: String,
    pub description: String,
    /// The table it reads, for rows scanned (`None`: not counted).
    pub table: Option<Table>,
    /// The time range the query reads (`None`: the whole table), for rows scanned.
    pub since: Option<DateTime<Utc>>,
    pub sql: String,
    /// `now()` in the query (a saved query's run time), if fixed.
    pub now: Option<DateTime<Utc>>,
}

/// A time as RFC 3339 in JSON (chrono is built without serde).
pub(crate) fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::monitor::runs::rfc3339(t))
}

fn at(t: DateTime<Utc>) -> String {
    format!("'{}'", crate::monitor::runs::rfc3339(&t))
}

/// The set, in the order it runs. Lookups are left out when the lake has no row to
/// look up.
pub(crate) fn standard_set(a: &Anchors) -> Vec<Analysis> {
    let end = at(a.end);
    let week = a.end - chrono::Duration::days(7);
    let hour = a.end - chrono::Duration::hours(1);
    let mut set = vec![
        Analysis {
            name: "latency_by_hour".into(),
            description: "p50 / p95 / p99 processing time per source per hour (approximate percentiles, t-digest)".into(),
            table: Some(Table::Outcomes),
            since: None,
            now: None,
            sql: "SELECT source, date_trunc('hour', reported_at) AS hour_start, count(*) AS reports, \
                  approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY processing_time_ms) AS p50_ms, \
                  approx_percentile_cont(0.95) WITHIN GROUP (ORDER BY processing_time_ms) AS p95_ms, \
                  approx_percentile_cont(0.99) WITHIN GROUP (ORDER BY processing_time_ms) AS p99_ms \
                  FROM outcomes GROUP BY source, hour_start ORDER BY source, hour_start"
                .into(),
        },
        Analysis {
            name: "retry_intervals".into(),
            description: "time between arrivals of the same event (lag over dedup_key), per source".into(),
            table: Some(Table::Deliveries),
            since: None,
            now: None,
            sql: "SELECT source, count(*) AS repeats, avg(gap_ms) AS avg_gap_ms, \
                  min(gap_ms) AS min_gap_ms, max(gap_ms) AS max_gap_ms FROM ( \
                  SELECT source, (CAST(received_at AS BIGINT) - lag(CAST(received_at AS BIGINT)) \
                  OVER (PARTITION BY source, dedup_key ORDER BY received_at)) / 1000.0 AS gap_ms \
                  FROM deliveries) AS gaps WHERE gap_ms IS NOT NULL GROUP BY source ORDER BY source"
                .into(),
        },
        Analysis {
            name: "size_trend".into(),
            description: "payload size per source per day".into(),
            table: Some(Table::Deliveries),
            since: None,
            now: None,
            sql: "SELECT source, date_trunc('day', received_at) AS day, count(*) AS deliveries, \
                  avg(payload_size) AS avg_bytes, max(payload_size) AS max_bytes \
                  FROM deliveries GROUP BY source, day ORDER BY source, day"
                .into(),
        },
        Analysis {
            name: "volume_spikes".into(),
            description: "minutes with over 5× a source's trailing hour average (the spike rule)".into(),
            table: Some(Table::Deliveries),
            since: None,
            now: None,
            sql: "WITH per_minute AS (SELECT source, date_trunc('minute', received_at) AS minute, \
                  count(*) AS n FROM deliveries GROUP BY source, minute), \
                  scored AS (SELECT source, minute, n, avg(n) OVER (PARTITION BY source ORDER BY minute \
                  ROWS BETWEEN 60 PRECEDING AND 1 PRECEDING) AS baseline FROM per_minute) \
                  SELECT source, minute, n, baseline FROM scored \
                  WHERE n >= 10 AND n > 5 * baseline ORDER BY source, minute"
                .into(),
        },
        Analysis {
            name: "volume_7d".into(),
            description: "deliveries, bytes and repeats per source over the last 7 days".into(),
            table: Some(Table::Deliveries),
            since: Some(week),
            now: None,
            sql: format!(
                "SELECT source, count(*) AS deliveries, sum(payload_size) AS bytes, \
                 sum(CASE WHEN is_duplicate THEN 1 ELSE 0 END) AS repeats FROM deliveries \
                 WHERE received_at > {} AND received_at <= {end} GROUP BY source ORDER BY source",
                at(week)
            ),
        },
        Analysis {
            name: "last_hour".into(),
            description: "the last hour per source: volume, size, signature failures".into(),
            table: Some(Table::Deliveries),
            since: Some(hour),
            now: None,
            sql: format!(
                "SELECT source, count(*) AS deliveries, avg(payload_size) AS avg_bytes, \
                 sum(CASE WHEN signature_status = 'invalid' THEN 1 ELSE 0 END) AS bad_signatures \
                 FROM deliveries WHERE received_at > {} GROUP BY source ORDER BY source",
                at(hour)
            ),
        },
    ];
    if let Some(id) = &a.id {
        set.push(Analysis {
            name: "lookup_id".into(),
            description: "one delivery, whole, by id".into(),
            table: Some(Table::Deliveries),
            since: None,
            now: None,
            sql: format!("SELECT * FROM deliveries WHERE id = '{}'", quote(id)),
        });
    }
    if let Some(event_id) = &a.event_id {
        set.push(Analysis {
            name: "lookup_event".into(),
            description: "every arrival of one event, by event_id".into(),
            table: Some(Table::Deliveries),
            since: None,
            now: None,
            sql: format!(
                "SELECT id, received_at, source, attempt, retry_gap_ms, status_code FROM deliveries \
                 WHERE event_id = '{}' ORDER BY received_at",
                quote(event_id)
            ),
        });
    }
    set
}

/// A value inside a single-quoted SQL string.
fn quote(s: &str) -> String {
    s.replace('\'', "''")
}

/// The query that picks the lookups' targets: a delivery from the middle of the span
/// whose event was retried, when there is one.
pub(crate) fn anchors_sql(middle: DateTime<Utc>) -> String {
    format!(
        "SELECT id, event_id FROM deliveries WHERE received_at >= {} AND received_at < {} \
         AND event_id IS NOT NULL ORDER BY attempt DESC, received_at LIMIT 1",
        at(middle),
        at(middle + chrono::Duration::hours(6))
    )
}

/// Counts the rows a query reads: its table within its time range.
pub(crate) fn scanned_sql(analysis: &Analysis) -> Option<String> {
    let table = analysis.table?;
    let column = table.time_column();
    Some(match analysis.since {
        Some(since) => format!(
            "SELECT count(*) FROM {} WHERE {column} > {}",
            table.name(),
            at(since)
        ),
        None => format!("SELECT count(*) FROM {}", table.name()),
    })
}

/// The saved queries (shipped and the user's), run as of the lake's newest delivery
/// with their default parameters. Named `saved:<name>`; rows scanned are not counted
/// (each reads its own window).
pub(crate) fn saved_queries(registry: &crate::monitor::Registry, a: &Anchors) -> Vec<Analysis> {
    registry
        .queries()
        .filter_map(|q| {
            let sql = crate::monitor::run::sql_of(q, a.end, &Default::default()).ok()?;
            Some(Analysis {
                name: format!("saved:{}", q.name),
                description: q.description.clone(),
                table: None,
                since: None,
                sql,
                now: Some(a.end),
            })
        })
        .collect()
}

/// A dashboard's chart over the whole lake (deliveries, duplicates and bytes per
/// source per day), from the raw table and from the shipped hourly rollup: the
/// speed-up a rollup buys. Named `rollup:…`; present when the rollup has rows.
pub(crate) fn rollup_pair(a: &Anchors) -> Vec<Analysis> {
    let pair = [
        (
            "rollup:daily_from_raw",
            "deliveries, duplicates and bytes per source per day over the whole lake, from deliveries",
            Some(Table::Deliveries),
            "SELECT date_trunc('day', received_at) AS day, source, count(*) AS deliveries, \
             sum(CASE WHEN is_duplicate THEN 1 ELSE 0 END) AS duplicates, sum(payload_size) AS bytes \
             FROM deliveries GROUP BY 1, 2 ORDER BY 1, 2",
        ),
        (
            "rollup:daily_from_rollup",
            "the same, from rollup_hourly_traffic (one row per source and hour)",
            None,
            "SELECT date_trunc('day', hour) AS day, source, CAST(sum(deliveries) AS BIGINT) AS deliveries, \
             CAST(sum(duplicates) AS BIGINT) AS duplicates, CAST(sum(bytes) AS BIGINT) AS bytes \
             FROM rollup_hourly_traffic GROUP BY 1, 2 ORDER BY 1, 2",
        ),
    ];
    pair.into_iter()
        .map(|(name, description, table, sql)| Analysis {
            name: name.into(),
            description: description.into(),
            table,
            since: None,
            sql: sql.into(),
            now: Some(a.end),
        })
        .collect()
}
