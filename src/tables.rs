//! The SQL tables hookscope keeps: for each, one list of its columns (name, type,
//! nullability, how it is stored, what it means, and, for the tables the write path
//! fills, how a record gives its value). Everything else is generated from that list:
//! the Arrow schema, the buffer's column builders, the Parquet column settings, and
//! the column reference in `docs/tables.md` (a test keeps the file in step).
//!
//! Invariants: a column is defined once, here; schemas only ever gain nullable
//! columns at the end, so files written by an older build stay readable.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// A table of the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Deliveries,
    Outcomes,
    Alerts,
    QueryRuns,
}

/// A table's key in the manifest is its name.
impl AsRef<str> for Table {
    fn as_ref(&self) -> &str {
        self.name()
    }
}

impl Table {
    /// Every table, in catalog order.
    pub const ALL: [Table; 4] = [
        Table::Deliveries,
        Table::Outcomes,
        Table::Alerts,
        Table::QueryRuns,
    ];

    /// The tables whose rows come through the WAL and the buffer.
    pub const BUFFERED: [Table; 4] = [
        Table::Deliveries,
        Table::Outcomes,
        Table::Alerts,
        Table::QueryRuns,
    ];

    /// The SQL name, also the directory name under the data dir (and its key in the
    /// manifest).
    pub fn name(self) -> &'static str {
        match self {
            Table::Deliveries => "deliveries",
            Table::Outcomes => "outcomes",
            Table::Alerts => "alerts",
            Table::QueryRuns => "query_runs",
        }
    }

    /// Looks a table up by its SQL name.
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// What one row is.
    pub fn about(self) -> &'static str {
        match self {
            Table::Deliveries => "One row per request on `/webhook/{source}`",
            Table::Outcomes => {
                "One row per processing report (`/report/{source}`), or per forwarded delivery's answer"
            }
            Table::Alerts => {
                "One row per alert notification: when a rule's instance fires, each time it is sent again while firing, and when it resolves"
            }
            Table::QueryRuns => "One row per run of a saved query by the scheduler",
        }
    }

    /// The timestamp column that partitions files and sorts rows.
    pub fn time_column(self) -> &'static str {
        match self {
            Table::Deliveries => "received_at",
            Table::Outcomes => "reported_at",
            Table::Alerts => "fired_at",
            Table::QueryRuns => "started_at",
        }
    }

    /// The columns, in order.
    pub fn columns(self) -> &'static [Column] {
        match self {
            Table::Deliveries => deliveries::COLUMNS,
            Table::Outcomes => outcomes::COLUMNS,
            Table::Alerts => alerts::COLUMNS,
            Table::QueryRuns => query_runs::COLUMNS,
        }
    }

    /// The Arrow schema of the buffer's batches and of the Parquet files: a derived
    /// column is nullable (see [`Column::derived`]).
    pub fn schema(self) -> SchemaRef {
        static SCHEMAS: LazyLock<[SchemaRef; 4]> =
            LazyLock::new(|| Table::ALL.map(|t| schema_of(t.columns(), true)));
        Arc::clone(&SCHEMAS[self as usize])
    }

    /// The Arrow schema SQL sees: each column as declared.
    pub fn sql_schema(self) -> SchemaRef {
        static SCHEMAS: LazyLock<[SchemaRef; 4]> =
            LazyLock::new(|| Table::ALL.map(|t| schema_of(t.columns(), false)));
        Arc::clone(&SCHEMAS[self as usize])
    }

    /// The column named `name`.
    pub fn column(self, name: &str) -> Option<&'static Column> {
        self.columns().iter().find(|c| c.name == name)
    }

    /// The names of the columns stored with `role`.
    pub fn columns_stored_as(self, role: Role) -> impl Iterator<Item = &'static str> {
        self.columns()
            .iter()
            .filter(move |c| c.role == role)
            .map(|c| c.name)
    }
}

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// `Timestamp(Microsecond, "UTC")`.
    Timestamp,
    Int32,
    Int64,
    Float64,
    Bool,
}

impl Kind {
    pub fn data_type(self) -> DataType {
        match self {
            Kind::Text => DataType::Utf8,
            Kind::Timestamp => timestamp_type(),
            Kind::Int32 => DataType::Int32,
            Kind::Int64 => DataType::Int64,
            Kind::Float64 => DataType::Float64,
            Kind::Bool => DataType::Boolean,
        }
    }

    #[cfg(test)]
    fn sql_name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Timestamp => "timestamp (µs, UTC)",
            Kind::Int32 => "int32",
            Kind::Int64 => "int64",
            Kind::Float64 => "float64",
            Kind::Bool => "boolean",
        }
    }
}

/// How a column is stored in Parquet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Short values that repeat: dictionary-encoded, with statistics.
    Plain,
    /// Free text, large and unique per row: no dictionary (it would only overflow)
    /// and no statistics (min/max of a body prunes nothing, and costs CPU and footer
    /// space).
    Bulky,
    /// (Nearly) unique per row but short: no dictionary (interning values that never
    /// repeat cost a measurable share of a flush's CPU and made files larger);
    /// statistics kept
    /// (ULIDs sort by time, so min/max prune lookups by id).
    Unique,
    /// Looked up by equality (provider event ids, delivery ids, dedup keys): like
    /// `Unique`, plus a bloom filter per row group, so a lookup skips the row groups
    /// (files) that cannot hold the value; min/max prune nothing for random ids. A
    /// derived column gets no bloom filter: filters on it never reach the reader.
    Key,
    /// Timestamps: no dictionary, delta-encoded (rows are sorted by the time column,
    /// so its deltas are small).
    Time,
}

/// One column of a table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    /// May be null in SQL.
    pub nullable: bool,
    /// Stored only where it cannot be derived from the row's other columns (null in
    /// the buffer and the files elsewhere) and computed on read: see
    /// `query::derived`. SQL sees it as declared.
    pub derived: bool,
    pub role: Role,
    pub doc: &'static str,
}

/// `Timestamp(Microsecond, "UTC")`, the type of every time column.
pub(crate) fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The schema of `columns`: as stored (`stored`), or as SQL sees them.
fn schema_of(columns: &[Column], stored: bool) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| {
                Field::new(
                    c.name,
                    c.kind.data_type(),
                    c.nullable || (stored && c.derived),
                )
            })
            .collect::<Vec<_>>(),
    ))
}

/// Rows per chunk the buffer's builders are sized for.
pub(crate) const CHUNK_ROWS: usize = 8192;
/// The most bytes a chunk's builders grow to before the buffer freezes them.
pub(crate) const CHUNK_BYTES: usize = 32 << 20;

/// Bytes to reserve for a string column of a new chunk, from the average row size of
/// the last one: reserving up front spares the doubling (allocate, copy, free) of
/// multi-megabyte buffers on the ingest path. A chunk is frozen at `CHUNK_BYTES`
/// whatever its rows: never reserve past that (a few multi-megabyte bodies would
/// otherwise ask for gigabytes).
fn reserve_for(bytes: usize, rows: usize) -> usize {
    if rows == 0 {
        return 0;
    }
    ((bytes / rows) * CHUNK_ROWS).min(CHUNK_BYTES) * 9 / 8
}

/// Defines a table's columns once: the `COLUMNS` list, and `Builders`, the Arrow
/// builders the buffer appends records to (`push`) and freezes (`finish`).
/// Each column: `name: Kind req|opt|derived|derived_opt Role = value_expression,
/// "meaning";` where the expression reads the row (`req` columns give a value, `opt`
/// ones an `Option`, `derived` ones (nullable in SQL: `derived_opt`) the value to
/// store: `None` where the row gives it).
macro_rules! table_columns {
    ($row:ty, |$r:ident| {
        $( $name:ident : $kind:ident $null:ident $role:ident = $value:expr, $doc:literal; )*
    }) => {
        use super::*;

        /// The columns, in order.
        pub const COLUMNS: &[Column] = &[
            $( Column {
                name: stringify!($name),
                kind: Kind::$kind,
                nullable: table_columns!(@nullable $null),
                derived: table_columns!(@derived $null),
                role: Role::$role,
                doc: $doc,
            }, )*
        ];

        /// One Arrow builder per column.
        pub struct Builders {
            $( $name: table_columns!(@builder $kind), )*
        }

        impl Default for Builders {
            fn default() -> Self {
                Self { $( $name: table_columns!(@new $kind), )* }
            }
        }

        impl Builders {
            /// Appends one row.
            pub fn push(&mut self, $r: $row) {
                $( table_columns!(@append self.$name, $null, $value); )*
            }

            /// Rows appended since the last `finish`.
            pub fn len(&self) -> usize {
                let lens = [$( ArrayBuilder::len(&self.$name), )*];
                lens[0]
            }

            /// True when no row was appended since the last `finish`.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// The columns of the rows appended, in order; the builders start over.
            /// A `full` chunk (frozen by rows or bytes) sizes the next one like it;
            /// one frozen early (a query's snapshot, a flush's cut) gives back what
            /// was reserved and lets the next start small, so frequent early freezes
            /// never hold a full chunk's reservation each.
            pub fn finish(&mut self, full: bool) -> Vec<ArrayRef> {
                let rows = self.len();
                vec![ $( table_columns!(@finish self.$name, $kind, rows, full), )* ]
            }
        }
    };
    (@nullable req) => { false };
    (@nullable opt) => { true };
    (@nullable derived) => { false };
    (@nullable derived_opt) => { true };
    (@derived derived) => { true };
    (@derived derived_opt) => { true };
    (@derived $null:ident) => { false };
    (@builder Text) => { StringBuilder };
    (@builder Timestamp) => { TimestampMicrosecondBuilder };
    (@builder Int32) => { Int32Builder };
    (@builder Int64) => { Int64Builder };
    (@builder Float64) => { Float64Builder };
    (@builder Bool) => { BooleanBuilder };
    (@new Timestamp) => { TimestampMicrosecondBuilder::new().with_timezone("UTC") };
    (@new $kind:ident) => { <table_columns!(@builder $kind)>::new() };
    (@append $b:expr, req, $v:expr) => { $b.append_value($v) };
    (@append $b:expr, opt, $v:expr) => { $b.append_option($v) };
    (@append $b:expr, derived, $v:expr) => { $b.append_option($v) };
    (@append $b:expr, derived_opt, $v:expr) => { $b.append_option($v) };
    (@finish $b:expr, Text, $rows:ident, $full:ident) => {{
        let bytes = $b.values_slice().len();
        let mut array = $b.finish();
        if $full {
            $b = StringBuilder::with_capacity(CHUNK_ROWS, reserve_for(bytes, $rows));
        } else {
            arrow::array::Array::shrink_to_fit(&mut array);
        }
        Arc::new(array) as ArrayRef
    }};
    (@finish $b:expr, $kind:ident, $rows:ident, $full:ident) => {{
        let mut array = $b.finish();
        if !$full {
            arrow::array::Array::shrink_to_fit(&mut array);
        }
        Arc::new(array) as ArrayRef
    }};
}

/// `deliveries`: one row per request on `/webhook/{source}`.
pub mod deliveries {
    use crate::buffer::Derived;
    use crate::model::{Delivery, StoredBody};
    use base64::Engine as _;

    table_columns!((&Delivery, Derived), |r| {
        id: Text req Unique = &r.0.id,
            "ULID assigned on receipt (time-sortable; returned to the sender)";
        received_at: Timestamp req Time = r.0.received_at_us,
            "when the request arrived";
        source: Text req Plain = &r.0.source,
            "the `{source}` path segment";
        provider: Text req Plain = &r.0.provider,
            "stripe, github, shopify, slack, standard, svix, twilio, paypal, sentry, token, hmac or generic: configured, or detected from the headers";
        event_type: Text opt Plain = r.0.event_type.as_deref(),
            "the provider's event type (X-GitHub-Event, X-Shopify-Topic, body `type` …)";
        event_id: Text opt Key = r.0.event_id.as_deref(),
            "the provider's stable id of the event (Stripe body `id`, `X-GitHub-Delivery`, `webhook-id` …)";
        delivery_id: Text opt Key = r.0.delivery_id.as_deref(),
            "a per-attempt id where the provider has one (`X-Shopify-Webhook-Id`, PayPal transmission id)";
        dedup_key: Text derived Key = (r.0.event_id.as_deref() != Some(r.0.dedup_key.as_str()))
                .then_some(r.0.dedup_key.as_str()),
            "event_id when known, else `sha256:` of the body; stored only where it differs from event_id";
        attempt: Int32 req Plain = r.1.attempt,
            "1 for the first arrival of a dedup_key at a source, 2 for the second …; a provider's own number (Slack `X-Slack-Retry-Num` + 1) wins";
        is_duplicate: Bool req Plain = r.1.is_duplicate,
            "attempt > 1";
        retry_gap_ms: Float64 opt Unique = r.1.retry_gap_ms,
            "ms since the previous arrival of the same dedup_key (null on the first)";
        sent_at: Timestamp opt Time = r.0.sent_at_us,
            "the provider's own time of the event or signature (Stripe `t=`, `webhook-timestamp` …)";
        delivery_lag_ms: Float64 derived_opt Unique = None,
            "received_at − sent_at, in ms; stored only where it is not that (an import's own value)";
        signature_status: Text req Plain = r.0.signature_status.as_str(),
            "valid, invalid, expired, missing, or unchecked (no secret configured)";
        method: Text req Plain = &r.0.method,
            "the request method";
        path: Text req Plain = &r.0.path,
            "the request path";
        query: Text req Plain = &r.0.query,
            "the query string";
        content_type: Text opt Plain = r.0.content_type.as_deref(),
            "the Content-Type header";
        user_agent: Text opt Plain = r.0.user_agent.as_deref(),
            "the User-Agent header";
        remote_addr: Text opt Unique = r.0.remote_addr.as_deref(),
            "the peer address (or the configured proxy header's first entry)";
        headers: Text req Bulky = &r.0.headers_json,
            "JSON object of the request headers, lower-case names, secrets redacted";
        body: Text opt Bulky = match &r.0.body {
                StoredBody::Text(t) => Some(t.as_str()),
                _ => None,
            },
            "the body as text when it is UTF-8";
        body_base64: Text opt Bulky = match &r.0.body {
                StoredBody::Binary(b) => Some(base64::engine::general_purpose::STANDARD.encode(b)),
                _ => None,
            },
            "the body in base64 when it is not UTF-8";
        payload_size: Int64 req Plain = r.0.payload_size,
            "body bytes";
        payload_sha256: Text derived Unique = match &r.0.body {
                StoredBody::Omitted => Some(r.0.payload_sha256.as_str()),
                _ => None,
            },
            "SHA-256 of the body, hex (empty when the body was not kept); stored only for such rows, and computed from `body` or `body_base64` on read";
        payload_issues: Text opt Bulky = r.0.payload_issues.as_deref(),
            "JSON array of integrity problems found on receipt (not JSON under a JSON content type, a required field missing, over the size limit); null when none";
        status_code: Int32 req Plain = r.0.status_code,
            "what hookscope answered";
        upstream_status: Int32 opt Plain = r.0.upstream_status,
            "with `forward_to`: the app's HTTP status";
        upstream_latency_ms: Float64 opt Unique = r.0.upstream_latency_ms,
            "with `forward_to`: the app's response time, in ms";
        upstream_error: Text opt Plain = r.0.upstream_error.as_deref(),
            "with `forward_to`: timeout, connect, … when the app did not answer";
    });
}

/// `outcomes`: one row per processing report.
pub mod outcomes {
    use crate::model::Outcome;

    table_columns!(&Outcome, |o| {
        id: Text req Unique = &o.id,
            "ULID of the report (a forwarded delivery's answer: the delivery's id)";
        reported_at: Timestamp req Time = o.reported_at_us,
            "when the report arrived";
        source: Text req Plain = &o.source,
            "the `{source}` path segment";
        delivery_id: Text opt Key = o.delivery_id.as_deref(),
            "hookscope's delivery id or the provider's delivery id, as reported";
        event_id: Text opt Key = o.event_id.as_deref(),
            "the provider's event id, as reported";
        status: Text req Plain = &o.status,
            "success or failure";
        processing_time_ms: Float64 opt Unique = o.processing_time_ms,
            "how long processing took, in ms";
        error_type: Text opt Plain = o.error_type.as_deref(),
            "a short error class";
        error_message: Text opt Bulky = o.error_message.as_deref(),
            "the error's message";
        records_processed: Int64 opt Plain = o.records_processed,
            "how many records the app processed";
        attributes: Text req Bulky = &o.attributes,
            "JSON object of other attributes";
    });
}

/// `query_runs`: one row per run of a saved query.
pub mod query_runs {
    use crate::model::QueryRun;

    table_columns!(&QueryRun, |q| {
        name: Text req Plain = &q.name,
            "the saved query";
        scheduled_for: Timestamp req Time = q.scheduled_for_us,
            "the run's scheduled time: now() inside the query";
        started_at: Timestamp req Time = q.started_at_us,
            "when the run started";
        duration_ms: Float64 req Unique = q.duration_ms,
            "how long it ran, in ms";
        rows: Int64 req Plain = q.rows,
            "rows it returned (0 when it failed)";
        error: Text opt Bulky = q.error.as_deref(),
            "why it failed; null when it succeeded";
        trigger: Text req Plain = &q.trigger,
            "schedule, or catch-up (a time missed while stopped, or skipped by a clock jump)";
    });
}

/// `alerts`: one row per notification of an alert rule (firing, sent again, resolved).
pub mod alerts {
    use crate::model::AlertRow;

    table_columns!(&AlertRow, |a| {
        fired_at: Timestamp req Time = a.fired_at_us,
            "when the alert started firing (the same in every row of one episode)";
        rule: Text req Plain = &a.rule,
            "the saved query whose rows are the problem";
        source: Text opt Plain = a.source.as_deref(),
            "the source it is about";
        severity: Text req Plain = &a.severity,
            "info, warning or critical, from the rule";
        message: Text req Bulky = &a.message,
            "what happened, in a sentence";
        details: Text req Bulky = &a.details,
            "JSON object: the query's row for this alert";
        resolved_at: Timestamp opt Time = a.resolved_at_us,
            "when it resolved (in the row of state resolved); null while firing";
        key: Text req Plain = &a.key,
            "JSON object of the rule's key columns: which instance of the rule";
        state: Text req Plain = &a.state,
            "firing (sent, or sent again while it keeps firing) or resolved";
        notified_at: Timestamp req Time = a.notified_at_us,
            "when this notification was made (the run's scheduled time)";
    });
}

/// The column reference (the text of `docs/tables.md`, which a test keeps current).
#[cfg(test)]
pub(crate) fn reference_markdown() -> String {
    let mut out = String::from(
        "# Tables\n\n\
         hookscope's SQL tables (`/query`, `hookscope query`) and the Parquet files under\n\
         `<data>/<table>/date=YYYY-MM-DD/hour=HH/`. Timestamps are\n\
         `Timestamp(Microsecond, \"UTC\")`. This file is generated from the column list in\n\
         `src/tables.rs`; a test fails when they differ.\n\n\
         A column \"stored only\" somewhere is null in the Parquet files wherever the row\n\
         gives its value (the body gives its hash; an event id is the dedup key): SQL\n\
         computes it there, and a program reading the files directly computes it the same\n\
         way, e.g. `coalesce(dedup_key, event_id)`.\n",
    );
    for table in Table::ALL {
        out.push_str(&format!(
            "\n## `{}`\n\n{}; partitioned and sorted by `{}`.\n\n| column | type | null | meaning |\n| --- | --- | --- | --- |\n",
            table.name(),
            table.about(),
            table.time_column()
        ));
        for c in table.columns() {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                c.name,
                c.kind.sql_name(),
                if c.nullable { "yes" } else { "no" },
                c.doc
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_its_time_column_as_a_utc_timestamp() {
        for t in Table::ALL {
            let schema = t.schema();
            let field = schema.field_with_name(t.time_column()).unwrap();
            assert_eq!(field.data_type(), &timestamp_type());
            assert!(!field.is_nullable());
            assert_eq!(Table::from_name(t.name()), Some(t));
        }
    }

    #[test]
    fn the_column_reference_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/tables.md");
        let written = std::fs::read_to_string(path).unwrap_or_default();
        if written != reference_markdown() {
            if std::env::var_os("HOOKSCOPE_WRITE_DOCS").is_some() {
                std::fs::write(path, reference_markdown()).unwrap();
            } else {
                panic!(
                    "docs/tables.md differs from the column list in src/tables.rs; run `HOOKSCOPE_WRITE_DOCS=1 cargo test the_column_reference` to write it"
                );
            }
        }
    }
}
