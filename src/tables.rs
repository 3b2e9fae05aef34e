//! The SQL tables hookscope keeps (SPEC §4): their names, Arrow schemas and time
//! columns. Every step that touches rows (buffer, Parquet, catalog) takes its schema
//! from here, so a column is defined once.
//!
//! Invariant: schemas only ever gain nullable columns at the end; files written by an
//! older build stay readable.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// A table of the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Deliveries,
    Outcomes,
    Alerts,
}

impl Table {
    /// Every table, in catalog order.
    pub const ALL: [Table; 3] = [Table::Deliveries, Table::Outcomes, Table::Alerts];

    /// The SQL name, also the directory name under the data dir.
    pub fn name(self) -> &'static str {
        match self {
            Table::Deliveries => "deliveries",
            Table::Outcomes => "outcomes",
            Table::Alerts => "alerts",
        }
    }

    /// Looks a table up by its SQL name.
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The timestamp column that partitions files and sorts rows.
    pub fn time_column(self) -> &'static str {
        match self {
            Table::Deliveries => "received_at",
            Table::Outcomes => "reported_at",
            Table::Alerts => "fired_at",
        }
    }

    /// The Arrow schema.
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Deliveries => Arc::clone(&DELIVERIES),
            Table::Outcomes => Arc::clone(&OUTCOMES),
            Table::Alerts => Arc::clone(&ALERTS),
        }
    }
}

/// `Timestamp(Microsecond, "UTC")`, the type of every time column.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn ts(name: &str, nullable: bool) -> Field {
    Field::new(name, timestamp_type(), nullable)
}

static DELIVERIES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("id", false),
        ts("received_at", false),
        utf8("source", false),
        utf8("provider", false),
        utf8("event_type", true),
        utf8("event_id", true),
        utf8("delivery_id", true),
        utf8("dedup_key", false),
        Field::new("attempt", DataType::Int32, false),
        Field::new("is_duplicate", DataType::Boolean, false),
        Field::new("retry_gap_ms", DataType::Float64, true),
        ts("sent_at", true),
        Field::new("delivery_lag_ms", DataType::Float64, true),
        utf8("signature_status", false),
        utf8("method", false),
        utf8("path", false),
        utf8("query", false),
        utf8("content_type", true),
        utf8("user_agent", true),
        utf8("remote_addr", true),
        utf8("headers", false),
        utf8("body", true),
        utf8("body_base64", true),
        Field::new("payload_size", DataType::Int64, false),
        utf8("payload_sha256", false),
        utf8("payload_issues", true),
        Field::new("status_code", DataType::Int32, false),
        Field::new("upstream_status", DataType::Int32, true),
        Field::new("upstream_latency_ms", DataType::Float64, true),
        utf8("upstream_error", true),
    ]))
});

static OUTCOMES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("id", false),
        ts("reported_at", false),
        utf8("source", false),
        utf8("delivery_id", true),
        utf8("event_id", true),
        utf8("status", false),
        Field::new("processing_time_ms", DataType::Float64, true),
        utf8("error_type", true),
        utf8("error_message", true),
        Field::new("records_processed", DataType::Int64, true),
        utf8("attributes", false),
    ]))
});

static ALERTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        ts("fired_at", false),
        utf8("rule", false),
        utf8("source", true),
        utf8("severity", false),
        utf8("message", false),
        utf8("details", false),
        ts("resolved_at", true),
    ]))
});

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
}
