//! Columns the lake does not store where another column of the row gives them, and
//! how a scan puts them back.
//!
//! - `deliveries.payload_sha256` is the SHA-256 of the body. Wherever the body itself
//!   is kept (`body` or `body_base64`), the buffer and the Parquet files hold null in
//!   its place: a hash is incompressible, and stored beside the body it was a large
//!   share of a delivery's bytes on disk (`benches/RESULTS.md`). Rows whose body was
//!   not kept (over the size limit) store the value itself.
//! - `deliveries.dedup_key` is the event id wherever the provider gave one; it is
//!   stored only where it differs (no event id: the body's hash, or an import's own
//!   key).
//! - `deliveries.delivery_lag_ms` is `received_at − sent_at`; it is stored only
//!   where an import gave another value.
//!
//! A scan that reads such a column computes it where it is not stored.
//!
//! Invariants:
//! - SQL sees exactly the values a stored column would hold: the stored value where
//!   there is one, else the value derived from the row (the hex SHA-256 of `body`'s
//!   bytes, else of `body_base64` decoded, else the empty string as on receipt; the
//!   event id; the lag in ms, null without `sent_at`).
//! - Only a value equal to what the row derives is left out of storage: whatever
//!   writes a row (receipt, the generator, import) gives the stored form through
//!   the column list in `tables.rs`, which stores every other value.
//! - Filters on a derived column never reach the Parquet reader (its statistics and
//!   bloom filters describe the stored nulls); DataFusion applies them above the
//!   scan.
//! - Files written before this existed hold the values themselves, used as they are.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Scalar, StringArray, StringBuilder};
use arrow::compute::cast;
use arrow::compute::is_not_null;
use arrow::compute::kernels::zip::zip;
use arrow::datatypes::{DataType, Field, FieldRef, SchemaRef, TimeUnit, TimestampMicrosecondType};
use base64::Engine as _;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility, col,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;

use crate::tables::Table;

/// A column stored only where it cannot be derived.
struct DerivedColumn {
    table: Table,
    name: &'static str,
    /// The columns it is computed from; the first is its own stored value.
    from: &'static [&'static str],
    /// The values the rows derive, from the columns `from` as read (text as `Utf8`);
    /// a row with a stored value may be given anything (it is not used).
    derive: fn(&[ArrayRef]) -> Result<ArrayRef>,
}

const DERIVED: &[DerivedColumn] = &[
    DerivedColumn {
        table: Table::Deliveries,
        name: "payload_sha256",
        from: &["payload_sha256", "body", "body_base64"],
        derive: body_sha256,
    },
    DerivedColumn {
        table: Table::Deliveries,
        name: "dedup_key",
        from: &["dedup_key", "event_id"],
        derive: event_id,
    },
    DerivedColumn {
        table: Table::Deliveries,
        name: "delivery_lag_ms",
        from: &["delivery_lag_ms", "received_at", "sent_at"],
        derive: delivery_lag,
    },
];

/// The hex SHA-256 of the body's bytes: `body`'s, else `body_base64` decoded, else
/// (no body kept) the empty string, as on receipt; computed only for the rows
/// without a stored value.
fn body_sha256(from: &[ArrayRef]) -> Result<ArrayRef> {
    let sha256_hex = crate::ingest::providers::sig::sha256_hex;
    let [stored, body, base64] = from else {
        return exec_err!("payload_sha256 is derived from body and body_base64");
    };
    let (stored, body, base64) = (
        stored.as_string::<i32>(),
        body.as_string::<i32>(),
        base64.as_string::<i32>(),
    );
    let rows = stored.len();
    let mut out = StringBuilder::with_capacity(rows, stored.null_count() * 64);
    for row in 0..rows {
        if stored.is_valid(row) {
            out.append_null();
        } else if body.is_valid(row) {
            out.append_value(sha256_hex(body.value(row).as_bytes()));
        } else if base64.is_valid(row) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(base64.value(row))
                .or_else(|e| {
                    exec_err!("a stored body_base64 is not base64 ({e}); run `hookscope check`")
                })?;
            out.append_value(sha256_hex(&bytes));
        } else {
            out.append_value("");
        }
    }
    Ok(Arc::new(out.finish()))
}

/// The event id: a delivery's dedup key wherever the provider gave one.
fn event_id(from: &[ArrayRef]) -> Result<ArrayRef> {
    let [_, event_id] = from else {
        return exec_err!("dedup_key is derived from event_id");
    };
    Ok(Arc::clone(event_id))
}

/// received_at − sent_at in ms, as on receipt (null without a sent_at).
fn delivery_lag(from: &[ArrayRef]) -> Result<ArrayRef> {
    let [_, received, sent] = from else {
        return exec_err!("delivery_lag_ms is derived from received_at and sent_at");
    };
    let us = |a: &ArrayRef| -> Result<ArrayRef> {
        Ok(cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))?)
    };
    let (received, sent) = (us(received)?, us(sent)?);
    let lag: Float64Array = arrow::compute::binary(
        received.as_primitive::<TimestampMicrosecondType>(),
        sent.as_primitive::<TimestampMicrosecondType>(),
        |r, s| r.wrapping_sub(s) as f64 / 1000.0,
    )?;
    Ok(Arc::new(lag))
}

/// Is `column` of `table` stored only where it cannot be derived?
fn is_derived(table: Table, column: &str) -> bool {
    table
        .columns()
        .iter()
        .any(|c| c.derived && c.name == column)
}

/// Does `filter` read a derived column of `table`?
pub(crate) fn reads_derived(table: Option<Table>, filter: &Expr) -> bool {
    table.is_some_and(|t| filter.column_refs().iter().any(|c| is_derived(t, c.name())))
}

/// How a scan reads a projection of a table's SQL columns.
pub(crate) struct Reading {
    /// The stored columns the scan reads, by index (`None`: all).
    pub columns: Option<Vec<usize>>,
    /// When the projection holds a derived column: each output column's source.
    outputs: Option<Vec<Output>>,
}

enum Output {
    /// Read as stored: its position among the columns read.
    Stored(usize),
    /// Computed from the columns read at these positions.
    Derived(&'static DerivedColumn, Vec<usize>),
}

impl Reading {
    /// What to read for `projection` (indices into `schema`, the table's columns;
    /// `None`: all) of `table` (`None`: a table with no derived columns).
    pub fn new(table: Option<Table>, schema: &SchemaRef, projection: Option<&Vec<usize>>) -> Self {
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..schema.fields().len()).collect(),
        };
        let derived = |i: usize| {
            table.and_then(|t| {
                DERIVED
                    .iter()
                    .find(|d| d.table == t && schema.field(i).name() == d.name)
            })
        };
        if !wanted.iter().any(|&i| derived(i).is_some()) {
            return Self {
                columns: projection.cloned(),
                outputs: None,
            };
        }
        let mut columns = wanted.clone();
        let position = |name: &str, columns: &mut Vec<usize>| {
            let i = schema
                .index_of(name)
                .unwrap_or_else(|_| unreachable!("{name}"));
            match columns.iter().position(|&c| c == i) {
                Some(p) => p,
                None => {
                    columns.push(i);
                    columns.len() - 1
                }
            }
        };
        let outputs = wanted
            .iter()
            .enumerate()
            .map(|(p, &i)| match derived(i) {
                Some(d) => Output::Derived(
                    d,
                    d.from
                        .iter()
                        .map(|name| position(name, &mut columns))
                        .collect(),
                ),
                None => Output::Stored(p),
            })
            .collect();
        Self {
            columns: Some(columns),
            outputs: Some(outputs),
        }
    }

    /// The plan that gives the projection's columns from `input`, which reads
    /// [`Reading::columns`]. `filters` are the scan's (DataFusion applies them again
    /// above): those on stored columns are applied before any value is derived, so
    /// that a lookup hashes one body, not every body of the pages it reads.
    pub fn finish(
        self,
        state: &dyn Session,
        table: Option<Table>,
        filters: &[Expr],
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(outputs) = self.outputs else {
            return Ok(input);
        };
        let read = input.schema();
        let df_schema = DFSchema::try_from(Arc::clone(&read))?;
        let stored_filters = filters
            .iter()
            .filter(|f| !reads_derived(table, f))
            .filter(|f| {
                f.column_refs()
                    .iter()
                    .all(|c| read.index_of(c.name()).is_ok())
            })
            .cloned();
        // A filter the physical planner cannot take here is applied above only.
        let input: Arc<dyn ExecutionPlan> = match conjunction(stored_filters)
            .and_then(|p| state.create_physical_expr(p, &df_schema).ok())
        {
            Some(predicate) => Arc::new(FilterExec::try_new(predicate, Arc::clone(&input))?),
            None => input,
        };
        let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::with_capacity(outputs.len());
        for output in outputs {
            match output {
                Output::Stored(p) => {
                    let name = read.field(p).name().clone();
                    exprs.push((Arc::new(Column::new(&name, p)), name));
                }
                Output::Derived(column, from) => {
                    let args = from.iter().map(|&p| col(read.field(p).name())).collect();
                    let call = Expr::ScalarFunction(ScalarFunction::new_udf(
                        Arc::new(Derive::udf(column)),
                        args,
                    ));
                    let name = read.field(from[0]).name().clone();
                    exprs.push((state.create_physical_expr(call, &df_schema)?, name));
                }
            }
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, input)?))
    }
}

/// The column `column` of each row: its stored value, else derived.
#[derive(Debug)]
struct Derive {
    column: &'static DerivedColumn,
    signature: Signature,
}

impl std::fmt::Debug for DerivedColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DerivedColumn")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Derive {
    fn eq(&self, other: &Self) -> bool {
        self.column.table == other.column.table && self.column.name == other.column.name
    }
}

impl Eq for Derive {}

impl std::hash::Hash for Derive {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.column.table.hash(state);
        self.column.name.hash(state);
    }
}

impl Derive {
    fn udf(column: &'static DerivedColumn) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            column,
            signature: Signature::any(column.from.len(), Volatility::Immutable),
        })
    }

    /// The column as SQL sees it.
    fn field(&self) -> Result<Field> {
        let schema = self.column.table.sql_schema();
        Ok(schema.field_with_name(self.column.name)?.clone())
    }
}

impl ScalarUDFImpl for Derive {
    fn name(&self) -> &str {
        self.column.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.field()?.data_type().clone())
    }

    /// Nullable only where the column is.
    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(self.field()?))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let from = args
            .args
            .iter()
            .map(|a| {
                let a = a.to_array(rows)?;
                Ok(match a.data_type() {
                    DataType::Utf8View | DataType::LargeUtf8 => cast(&a, &DataType::Utf8)?,
                    _ => a,
                })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let Some(stored) = from.first() else {
            return exec_err!("{} takes its stored value first", self.name());
        };
        let field = self.field()?;
        let stored = match stored.data_type() == field.data_type() {
            true => Arc::clone(stored),
            false => cast(stored, field.data_type())?,
        };
        let mut values = if stored.null_count() == 0 {
            stored
        } else {
            let derived = (self.column.derive)(&from)?;
            zip(&is_not_null(&stored)?, &stored, &derived)?
        };
        // A row that can give no value where the column may not be null (no such
        // row is written): as a row without a body gives no hash, the empty text.
        if !field.is_nullable() && values.null_count() > 0 {
            let empty = cast(&StringArray::from(vec![""]), field.data_type())?;
            values = zip(&is_not_null(&values)?, &values, &Scalar::new(empty))?;
        }
        Ok(ColumnarValue::Array(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_derived_column_has_a_rule_and_every_rule_a_column() {
        for t in Table::ALL {
            for c in t.columns() {
                let rule = DERIVED.iter().find(|d| d.table == t && d.name == c.name);
                assert_eq!(c.derived, rule.is_some(), "{}.{}", t.name(), c.name);
                if let Some(rule) = rule {
                    assert_eq!(rule.from[0], c.name);
                    for input in rule.from {
                        assert!(t.schema().index_of(input).is_ok(), "{input}");
                    }
                }
            }
        }
    }
}
