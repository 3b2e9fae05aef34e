//! Columns the lake does not store where another column of the row gives them, and
//! how a scan puts them back.
//!
//! - `deliveries.payload_sha256` is the SHA-256 of the body. Wherever the body itself
//!   is kept (`body` or `body_base64`), the buffer and the Parquet files hold null in
//!   its place: 32 bytes of hash are incompressible, and stored beside the body they
//!   were an eighth of a delivery's bytes on disk. Rows whose body was not kept (over
//!   the size limit) store the value itself.
//! - `deliveries.dedup_key` is the event id wherever the provider gave one; it is
//!   stored only where it differs (no event id: the body's hash, or an import's own
//!   key).
//!
//! A scan that reads such a column computes it where it is not stored.
//!
//! Invariants:
//! - SQL sees exactly the values a stored column would hold: the stored value where
//!   there is one, else the value derived from the row (the hex SHA-256 of `body`'s
//!   bytes, else of `body_base64` decoded, else the empty string as on receipt; the
//!   event id).
//! - Only a value equal to what the row derives is left out of storage: whatever
//!   writes a row (receipt, the generator, import) gives the stored form through
//!   the column list in `tables.rs`, which stores every other value.
//! - Filters on a derived column never reach the Parquet reader (its statistics and
//!   bloom filters describe the stored nulls); DataFusion applies them above the
//!   scan.
//! - Files written before this existed hold the values themselves, used as they are.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, SchemaRef};
use base64::Engine as _;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility, col,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;

use crate::tables::Table;

/// A column stored only where it cannot be derived.
struct DerivedColumn {
    table: Table,
    name: &'static str,
    /// The columns it is computed from; the first is its own stored value.
    from: &'static [&'static str],
    /// Appends the value of a row whose value is not stored, from the columns
    /// `from` (as `Utf8`).
    derive: fn(&[&StringArray], usize, &mut StringBuilder) -> Result<()>,
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
];

/// The hex SHA-256 of the body's bytes: `body`'s, else `body_base64` decoded, else
/// of no body kept, the empty string (as on receipt).
fn body_sha256(from: &[&StringArray], row: usize, out: &mut StringBuilder) -> Result<()> {
    let sha256_hex = crate::ingest::providers::sig::sha256_hex;
    let [_, body, base64] = from else {
        return exec_err!("payload_sha256 is derived from body and body_base64");
    };
    if body.is_valid(row) {
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
    Ok(())
}

/// The event id: a delivery's dedup key wherever the provider gave one.
fn event_id(from: &[&StringArray], row: usize, out: &mut StringBuilder) -> Result<()> {
    let [_, event_id] = from else {
        return exec_err!("dedup_key is derived from event_id");
    };
    out.append_value(if event_id.is_valid(row) {
        event_id.value(row)
    } else {
        ""
    });
    Ok(())
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
    /// [`Reading::columns`].
    pub fn finish(
        self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(outputs) = self.outputs else {
            return Ok(input);
        };
        let read = input.schema();
        let df_schema = DFSchema::try_from(Arc::clone(&read))?;
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
}

impl ScalarUDFImpl for Derive {
    fn name(&self) -> &str {
        self.column.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    /// Never null, as the stored column.
    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(self.name(), DataType::Utf8, false)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| {
                let a = a.to_array(rows)?;
                Ok(match a.data_type() {
                    DataType::Utf8 => a,
                    _ => cast(&a, &DataType::Utf8)?,
                })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let from: Vec<&StringArray> = arrays.iter().map(|a| a.as_string::<i32>()).collect();
        let Some(stored) = from.first() else {
            return exec_err!("{} takes its stored value first", self.name());
        };
        let mut out = StringBuilder::with_capacity(rows, stored.value_data().len().max(rows * 32));
        for row in 0..rows {
            if stored.is_valid(row) {
                out.append_value(stored.value(row));
            } else {
                (self.column.derive)(&from, row, &mut out)?;
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
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
