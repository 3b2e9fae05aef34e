//! Hard bounds on what one query allocates outside DataFusion's memory pool.
//!
//! The pool accounts for what operators hold (hash tables, sort buffers); a value a
//! function computes, a batch flowing between operators, and the encoded result are
//! not in it. So:
//! - the SQL functions whose output can dwarf their input (`repeat`, `lpad`, `rpad`,
//!   `replace`, `array_repeat`, `range`, `generate_series`) are wrapped: before they
//!   compute, they estimate their output from their arguments and refuse past the
//!   per-batch limit;
//! - [`QueryGuard`](super::guard::QueryGuard) checks every batch between operators
//!   against the same limit ([`batch_bytes`]), which stops any other growth at the
//!   next operator;
//! - the result encoder works in row slices of bounded size and checks the result
//!   limit after each.
//!
//! The per-batch limit is a quarter of `[query] memory_limit` (at least 64 MiB).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::udf_eq::UdfEq;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// The most bytes one batch (or one function's output) of a query may hold.
pub(crate) fn batch_limit(memory_limit: usize) -> usize {
    (memory_limit / 4).max(64 << 20)
}

/// The bytes a batch's rows hold (a slice counts only its own rows, not the buffers
/// it shares with a larger array).
pub(crate) fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| array_bytes(c.as_ref()))
        .sum()
}

/// The bytes of `array`'s own rows.
pub(crate) fn array_bytes(array: &dyn Array) -> usize {
    match array.data_type() {
        DataType::Utf8View => view_bytes(array.as_string_view().views()),
        DataType::BinaryView => view_bytes(array.as_binary_view().views()),
        _ => array
            .to_data()
            .get_slice_memory_size()
            .unwrap_or_else(|_| array.get_buffer_memory_size()),
    }
}

fn view_bytes(views: &[u128]) -> usize {
    views
        .iter()
        .map(|v| {
            let len = *v as u32 as usize;
            16 + if len > 12 { len } else { 0 }
        })
        .sum()
}

/// The error of a query over a limit of this module.
pub(crate) fn too_large(what: &str, bytes: usize, limit: usize) -> DataFusionError {
    DataFusionError::ResourcesExhausted(format!(
        "{what} would hold about {bytes} bytes, over the {limit}-byte limit for one batch (a quarter of [query] memory_limit)"
    ))
}

/// How a wrapped function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Estimate {
    /// `repeat(text, n)`: text × n.
    Repeat,
    /// `lpad/rpad(text, n[, fill])`: n characters of up to 4 bytes.
    Pad,
    /// `replace(text, from, to)`: each occurrence of `from` grows by |to| − |from|.
    Replace,
    /// `array_repeat(element, n)`: n elements.
    ArrayRepeat,
    /// `range/generate_series([start,] stop[, step])`: (stop − start) / step elements
    /// (numbers, or dates and timestamps with an interval step).
    Range,
    /// `array_resize(list, n[, value])`: n elements.
    ArrayResize,
    /// `array_to_string(list, delimiter[, null])`: the list as text, a delimiter
    /// between elements.
    ArrayToString,
    /// `regexp_replace(text, pattern, replacement[, flags])`: a match may occur at
    /// every position (an empty pattern), and each inserts the replacement.
    RegexpReplace,
    /// `concat(…)`, `concat_ws(sep, …)`: the sum of the arguments.
    Concat,
}

const WRAPPED: &[(&str, Estimate)] = &[
    ("repeat", Estimate::Repeat),
    ("lpad", Estimate::Pad),
    ("rpad", Estimate::Pad),
    ("replace", Estimate::Replace),
    ("array_repeat", Estimate::ArrayRepeat),
    ("range", Estimate::Range),
    ("generate_series", Estimate::Range),
    ("array_resize", Estimate::ArrayResize),
    ("array_to_string", Estimate::ArrayToString),
    ("regexp_replace", Estimate::RegexpReplace),
    ("concat", Estimate::Concat),
    ("concat_ws", Estimate::Concat),
];

/// Replaces the session's growing functions by bounded ones (see the module docs).
pub(crate) fn register_bounded_functions(ctx: &SessionContext, limit: usize) {
    let state = ctx.state();
    let functions = state.scalar_functions();
    for (name, estimate) in WRAPPED {
        if let Some(inner) = functions.get(*name) {
            let bounded = Bounded {
                inner: UdfEq::from(Arc::clone(inner.inner())),
                estimate: *estimate,
                limit,
            };
            ctx.register_udf(ScalarUDF::new_from_impl(bounded));
        }
    }
}

/// A function wrapped with a size check before it computes.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: UdfEq<Arc<dyn ScalarUDFImpl>>,
    estimate: Estimate,
    limit: usize,
}

/// Per-row integer arguments (nulls as 0).
fn ints(arg: &ColumnarValue, rows: usize) -> Option<Vec<i64>> {
    let array: ArrayRef = arg.to_array(rows).ok()?;
    if !array.data_type().is_integer() {
        return None;
    }
    let array = arrow::compute::cast(&array, &DataType::Int64).ok()?;
    let ints = array.as_primitive::<Int64Type>();
    Some(
        (0..rows)
            .map(|i| if ints.is_null(i) { 0 } else { ints.value(i) })
            .collect(),
    )
}

/// Per-row byte sizes of an argument: text and binary by their bytes, lists and other
/// nested values by what they hold (nulls as 0, other scalars 16).
fn lengths(arg: &ColumnarValue, rows: usize) -> Vec<u64> {
    if let ColumnarValue::Scalar(s) = arg {
        let n = match s {
            ScalarValue::Utf8(Some(v))
            | ScalarValue::LargeUtf8(Some(v))
            | ScalarValue::Utf8View(Some(v)) => v.len() as u64,
            ScalarValue::Binary(Some(v))
            | ScalarValue::LargeBinary(Some(v))
            | ScalarValue::BinaryView(Some(v)) => v.len() as u64,
            s if s.is_null() => 0,
            s if s.data_type().is_nested() => s.size() as u64,
            _ => 16,
        };
        return vec![n; rows];
    }
    let Ok(array) = arg.to_array(rows) else {
        return vec![16; rows];
    };
    if array.data_type().is_nested() {
        return (0..rows)
            .map(|i| array_bytes(&array.slice(i, 1)) as u64)
            .collect();
    }
    per_row_length(&array, rows).unwrap_or_else(|| vec![16; rows])
}

/// Per-row `length()` of `array` (text: bytes; lists: elements; nulls as 0).
fn per_row_length(array: &ArrayRef, rows: usize) -> Option<Vec<u64>> {
    let lengths = arrow::compute::kernels::length::length(array).ok()?;
    let lengths = arrow::compute::cast(&lengths, &DataType::Int64).ok()?;
    let l = lengths.as_primitive::<Int64Type>();
    Some(
        (0..rows)
            .map(|i| {
                if l.is_null(i) {
                    0
                } else {
                    l.value(i).max(0) as u64
                }
            })
            .collect(),
    )
}

/// The shortest text a constant regular expression can match (`None` when it is not a
/// constant or not a pattern).
fn shortest_match(pattern: &ColumnarValue) -> Option<u64> {
    let ColumnarValue::Scalar(
        ScalarValue::Utf8(Some(p))
        | ScalarValue::LargeUtf8(Some(p))
        | ScalarValue::Utf8View(Some(p)),
    ) = pattern
    else {
        return None;
    };
    let hir = regex_syntax::parse(p).ok()?;
    hir.properties().minimum_len().map(|n| n as u64)
}

/// Per-row element counts of a list argument (anything else: 1).
fn list_lengths(arg: &ColumnarValue, rows: usize) -> Vec<u64> {
    let Ok(array) = arg.to_array(rows) else {
        return vec![1; rows];
    };
    if !array.data_type().is_nested() {
        return vec![1; rows];
    }
    per_row_length(&array, rows).unwrap_or_else(|| vec![1; rows])
}

/// Per-row values of a number, date, timestamp or interval argument, in microseconds
/// for times and intervals (a month as 30 days); `None` for anything else.
fn points(arg: &ColumnarValue, rows: usize) -> Option<Vec<i64>> {
    use arrow::datatypes::{
        IntervalDayTimeType, IntervalMonthDayNanoType, IntervalUnit, IntervalYearMonthType,
        TimeUnit,
    };
    const DAY_US: i64 = 86_400_000_000;
    let array: ArrayRef = arg.to_array(rows).ok()?;
    let value = |i: usize| -> i64 {
        if array.is_null(i) {
            return 0;
        }
        match array.data_type() {
            DataType::Interval(IntervalUnit::MonthDayNano) => {
                let v = array.as_primitive::<IntervalMonthDayNanoType>().value(i);
                i64::from(v.months) * 30 * DAY_US
                    + i64::from(v.days) * DAY_US
                    + v.nanoseconds / 1000
            }
            DataType::Interval(IntervalUnit::DayTime) => {
                let v = array.as_primitive::<IntervalDayTimeType>().value(i);
                i64::from(v.days) * DAY_US + i64::from(v.milliseconds) * 1000
            }
            _ => {
                let months = array.as_primitive::<IntervalYearMonthType>().value(i);
                i64::from(months) * 30 * DAY_US
            }
        }
    };
    match array.data_type() {
        DataType::Interval(_) => Some((0..rows).map(value).collect()),
        t if t.is_temporal() => {
            let micros =
                arrow::compute::cast(&array, &DataType::Timestamp(TimeUnit::Microsecond, None))
                    .ok()?;
            let micros = arrow::compute::cast(&micros, &DataType::Int64).ok()?;
            let v = micros.as_primitive::<Int64Type>();
            Some(
                (0..rows)
                    .map(|i| if v.is_null(i) { 0 } else { v.value(i) })
                    .collect(),
            )
        }
        _ => ints(arg, rows),
    }
}

impl Bounded {
    /// The bytes the call would produce (an upper estimate; 0 when unknown).
    fn output_bytes(&self, args: &ScalarFunctionArgs) -> u64 {
        let rows = args.number_rows.max(1);
        let a = &args.args;
        let sum = |per_row: &dyn Fn(usize) -> u64| -> u64 {
            (0..rows).fold(0u64, |acc, i| acc.saturating_add(per_row(i)))
        };
        let count = |v: i64| v.max(0) as u64;
        match self.estimate {
            Estimate::Repeat if a.len() >= 2 => {
                let (text, n) = (lengths(&a[0], rows), ints(&a[1], rows));
                let Some(n) = n else { return 0 };
                sum(&|i| text[i].saturating_mul(count(n[i])))
            }
            Estimate::Pad if a.len() >= 2 => {
                let Some(n) = ints(&a[1], rows) else { return 0 };
                let text = lengths(&a[0], rows);
                sum(&|i| count(n[i]).saturating_mul(4).saturating_add(text[i]))
            }
            Estimate::Replace if a.len() >= 3 => {
                let (text, from, to) = (
                    lengths(&a[0], rows),
                    lengths(&a[1], rows),
                    lengths(&a[2], rows),
                );
                sum(&|i| {
                    let (l, f, t) = (text[i], from[i], to[i]);
                    match l.checked_div(f) {
                        _ if t <= f => l,
                        Some(occurrences) => l.saturating_add(occurrences.saturating_mul(t - f)),
                        // An empty `from` matches between every two characters.
                        None => (l + 1).saturating_mul(t).saturating_add(l),
                    }
                })
            }
            Estimate::ArrayRepeat if a.len() >= 2 => {
                let Some(n) = ints(&a[1], rows) else { return 0 };
                let element = lengths(&a[0], rows);
                sum(&|i| count(n[i]).saturating_mul(element[i].max(8)))
            }
            Estimate::Range => {
                // Unknown kinds of argument: no bound rather than a wrong one.
                let parsed: Option<Vec<Vec<i64>>> = a.iter().map(|x| points(x, rows)).collect();
                let Some(p) = parsed else { return 0 };
                let bounds = |i: usize| -> (i64, i64, i64) {
                    match p.len() {
                        1 => (0, p[0][i], 1),
                        2 => (p[0][i], p[1][i], 1),
                        _ => (p[0][i], p[1][i], p[2][i]),
                    }
                };
                sum(&|i| {
                    let (start, stop, step) = bounds(i);
                    if step == 0 {
                        return 0;
                    }
                    let span = (i128::from(stop) - i128::from(start)) / i128::from(step);
                    u64::try_from(span.max(0))
                        .unwrap_or(u64::MAX)
                        .saturating_mul(8)
                })
            }
            Estimate::ArrayResize if a.len() >= 2 => {
                let Some(n) = ints(&a[1], rows) else { return 0 };
                let (list, elems) = (lengths(&a[0], rows), list_lengths(&a[0], rows));
                sum(&|i| {
                    let element = (list[i] / elems[i].max(1)).max(8);
                    count(n[i]).saturating_mul(element)
                })
            }
            Estimate::ArrayToString if a.len() >= 2 => {
                let (list, elems, delimiter) = (
                    lengths(&a[0], rows),
                    list_lengths(&a[0], rows),
                    lengths(&a[1], rows),
                );
                // Numbers print longer than they are stored: up to about 3×.
                sum(&|i| {
                    list[i]
                        .saturating_mul(3)
                        .saturating_add(elems[i].saturating_mul(delimiter[i]))
                })
            }
            Estimate::RegexpReplace if a.len() >= 3 => {
                // Matches do not overlap, so there are at most |text| / (the pattern's
                // shortest match) of them, or one per position when it can match
                // nothing; each inserts the replacement.
                let Some(shortest) = shortest_match(&a[1]) else {
                    return 0;
                };
                let (text, replacement) = (lengths(&a[0], rows), lengths(&a[2], rows));
                sum(&|i| {
                    let (l, r) = (text[i], replacement[i]);
                    let matches = l.checked_div(shortest).unwrap_or(l) + 1;
                    l.saturating_add(matches.saturating_mul(r))
                })
            }
            Estimate::Concat => {
                let all: Vec<Vec<u64>> = a.iter().map(|x| lengths(x, rows)).collect();
                sum(&|i| all.iter().map(|l| l[i]).sum())
            }
            _ => 0,
        }
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bytes = self.output_bytes(&args);
        if bytes > self.limit as u64 {
            return Err(too_large(
                &format!("{}(…)", self.name()),
                usize::try_from(bytes).unwrap_or(usize::MAX),
                self.limit,
            ));
        }
        self.inner.invoke_with_args(args)
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    #[test]
    fn a_slice_counts_only_its_own_rows() {
        let big = StringArray::from(vec!["x".repeat(1 << 20); 64]);
        let whole = array_bytes(&big);
        let slice = big.slice(0, 1);
        assert!(whole >= 64 << 20);
        assert!(array_bytes(&slice) < 2 << 20, "{}", array_bytes(&slice));
    }
}
