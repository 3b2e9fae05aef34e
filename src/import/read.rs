//! Reading one history file into a table's columns: Parquet (its own types), NDJSON
//! or CSV (text, parsed strictly by each column's type, timestamps forgivingly).
//!
//! Invariants:
//! - Every column of the result has the table's Arrow type, or is absent (`None`)
//!   when the file does not have it; rows keep the file's order.
//! - A value that does not have its column's type, a column the table does not
//!   have, or a null in a required column fails the whole file, with the row and
//!   the column named.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringArray,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::compute::CastOptions;
use arrow::datatypes::{DataType, Field, Schema};
use chrono::{DateTime, NaiveDateTime, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use crate::tables::{Column, Kind, Table};

/// The kinds of file `import` reads, told by the name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    /// One JSON object a line (`.ndjson`, `.jsonl`; `.json` may also be one array).
    Ndjson,
    Csv,
}

impl Format {
    /// The format of `path` by its extension, if it is one `import` reads.
    pub fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" => Some(Format::Parquet),
            "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

/// A file's rows as the table's columns.
#[derive(Debug)]
pub struct FileRows {
    pub rows: usize,
    /// One per column of the table, in the table's order: `None` when the file has
    /// no such column.
    pub columns: Vec<Option<ArrayRef>>,
    /// How to name row `i` in a message (`line 7`, `row 7`).
    lines: Option<Vec<usize>>,
    format: Format,
}

impl FileRows {
    /// Where row `i` (0-based) is in the file, as a person counts.
    pub fn position(&self, i: usize) -> String {
        match (&self.lines, self.format) {
            (Some(lines), _) => format!("line {}", lines.get(i).copied().unwrap_or(i + 1)),
            (None, Format::Csv) => format!("row {} (line {} counting the header)", i + 1, i + 2),
            (None, _) => format!("row {}", i + 1),
        }
    }

    /// The column named `name`, when the file has it.
    pub fn column(&self, table: Table, name: &str) -> Option<&ArrayRef> {
        let i = table.columns().iter().position(|c| c.name == name)?;
        self.columns.get(i)?.as_ref()
    }
}

/// Reads `path` (of `format`) into `table`'s columns. `Err` is the problem, to be
/// said of the file.
pub fn read(path: &Path, format: Format, table: Table) -> Result<FileRows, String> {
    let file = File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    match format {
        Format::Parquet => read_parquet(file, table),
        Format::Ndjson => read_json(file, table),
        Format::Csv => read_csv(file, table),
    }
}

/// One value of a text format.
#[derive(Clone, Copy)]
enum Cell<'a> {
    Json(&'a Value),
    /// A CSV field (never empty: empty fields are nulls).
    Text(&'a str),
}

/// Builds one column of the table's type from cells.
enum Builder {
    Text(StringBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Bool(BooleanBuilder),
}

impl Builder {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Text => Builder::Text(StringBuilder::new()),
            Kind::Timestamp => {
                Builder::Timestamp(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            Kind::Int32 => Builder::Int32(Int32Builder::new()),
            Kind::Int64 => Builder::Int64(Int64Builder::new()),
            Kind::Float64 => Builder::Float64(Float64Builder::new()),
            Kind::Bool => Builder::Bool(BooleanBuilder::new()),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Text(b) => b.append_null(),
            Builder::Timestamp(b) => b.append_null(),
            Builder::Int32(b) => b.append_null(),
            Builder::Int64(b) => b.append_null(),
            Builder::Float64(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
        }
    }

    /// Appends `cell` as this column's type, or says why it is not one.
    fn append(&mut self, cell: Cell<'_>) -> Result<(), String> {
        match (self, cell) {
            (b, Cell::Json(Value::Null)) => b.append_null(),
            (Builder::Text(b), Cell::Json(Value::String(s))) => b.append_value(s),
            // JSON-object columns (headers, attributes, payload_issues) may be given
            // as the object itself.
            (Builder::Text(b), Cell::Json(v @ (Value::Object(_) | Value::Array(_)))) => {
                b.append_value(v.to_string())
            }
            (Builder::Text(b), Cell::Text(s)) => b.append_value(s),
            (Builder::Timestamp(b), cell) => b.append_value(timestamp(cell)?),
            (Builder::Int32(b), cell) => {
                let v = integer(cell)?;
                b.append_value(
                    i32::try_from(v).map_err(|_| format!("{v} is out of range for int32"))?,
                )
            }
            (Builder::Int64(b), cell) => b.append_value(integer(cell)?),
            (Builder::Float64(b), Cell::Json(Value::Number(n))) => {
                b.append_value(n.as_f64().ok_or_else(|| format!("{n} is not a number"))?)
            }
            (Builder::Float64(b), Cell::Text(s)) => match s.trim().parse::<f64>() {
                Ok(v) if v.is_finite() => b.append_value(v),
                _ => return Err(format!("expected a number, got {s:?}")),
            },
            (Builder::Bool(b), cell) => b.append_value(boolean(cell)?),
            (b, Cell::Json(v)) => return Err(format!("expected {}, got {v}", b.expected())),
        }
        Ok(())
    }

    fn expected(&self) -> &'static str {
        match self {
            Builder::Text(_) => "text (a JSON string)",
            Builder::Timestamp(_) => "a timestamp",
            Builder::Int32(_) | Builder::Int64(_) => "an integer",
            Builder::Float64(_) => "a number",
            Builder::Bool(_) => "true or false",
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Text(mut b) => Arc::new(b.finish()),
            Builder::Timestamp(mut b) => Arc::new(b.finish()),
            Builder::Int32(mut b) => Arc::new(b.finish()),
            Builder::Int64(mut b) => Arc::new(b.finish()),
            Builder::Float64(mut b) => Arc::new(b.finish()),
            Builder::Bool(mut b) => Arc::new(b.finish()),
        }
    }
}

fn integer(cell: Cell<'_>) -> Result<i64, String> {
    match cell {
        Cell::Json(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("expected an integer, got {n}")),
        Cell::Text(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("expected an integer, got {s:?}")),
        Cell::Json(v) => Err(format!("expected an integer, got {v}")),
    }
}

fn boolean(cell: Cell<'_>) -> Result<bool, String> {
    match cell {
        Cell::Json(Value::Bool(b)) => Ok(*b),
        Cell::Json(Value::Number(n)) if n.as_i64() == Some(0) => Ok(false),
        Cell::Json(Value::Number(n)) if n.as_i64() == Some(1) => Ok(true),
        Cell::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(format!("expected true or false (or 1 or 0), got {s:?}")),
        },
        Cell::Json(v) => Err(format!("expected true or false (or 1 or 0), got {v}")),
    }
}

const TIME_FORMATS: &str = "RFC 3339 (2026-03-01T12:00:00Z, 2026-03-01 12:00:00.123+02:00; no offset means UTC) or an integer epoch in seconds, milliseconds, microseconds or nanoseconds";

fn timestamp(cell: Cell<'_>) -> Result<i64, String> {
    let parsed = match cell {
        Cell::Json(Value::String(s)) => parse_timestamp(s),
        Cell::Text(s) => parse_timestamp(s),
        Cell::Json(Value::Number(n)) => match n.as_i64() {
            Some(i) => Some(epoch(i)),
            None => n.as_f64().and_then(epoch_seconds),
        },
        Cell::Json(_) => None,
    };
    parsed.ok_or_else(|| {
        let got = match cell {
            Cell::Json(v) => v.to_string(),
            Cell::Text(s) => format!("{s:?}"),
        };
        format!("expected a timestamp, {TIME_FORMATS}; got {got}")
    })
}

/// A time in microseconds since the epoch (UTC) from the ways exports write one.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let s = text.trim();
    if let Ok(i) = s.parse::<i64>() {
        return Some(epoch(i));
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return s.parse::<f64>().ok().and_then(epoch_seconds);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc).timestamp_micros());
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.with_timezone(&Utc).timestamp_micros());
        }
    }
    let naive = s.strip_suffix(" UTC").unwrap_or(s);
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(naive, f) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    None
}

/// An integer epoch, its unit told by its size (for times after 1973): seconds,
/// milliseconds, microseconds or nanoseconds.
fn epoch(i: i64) -> i64 {
    match i.unsigned_abs() {
        n if n < 100_000_000_000 => i.saturating_mul(1_000_000),
        n if n < 100_000_000_000_000 => i.saturating_mul(1_000),
        n if n < 100_000_000_000_000_000 => i,
        _ => i / 1_000,
    }
}

/// Fractional epoch seconds (Python's `time.time()`).
fn epoch_seconds(f: f64) -> Option<i64> {
    let us = (f * 1e6).round();
    (f.is_finite() && us.abs() < 9e18).then_some(us as i64)
}

/// One builder per column of the table, in its order.
fn builders(table: Table) -> Vec<Builder> {
    table
        .columns()
        .iter()
        .map(|c| Builder::new(c.kind))
        .collect()
}

fn index_of(table: Table, name: &str) -> Option<usize> {
    table.columns().iter().position(|c| c.name == name)
}

fn unknown_column(table: Table, name: &str) -> String {
    format!(
        "column `{name}` is not a column of {} (see docs/tables.md or DESCRIBE {}); rename or drop it",
        table.name(),
        table.name()
    )
}

fn read_json(file: File, table: Table) -> Result<FileRows, String> {
    let mut reader = BufReader::new(file);
    // A `.json` file may hold one array of objects rather than a line each.
    let starts_array = {
        let buf = reader
            .fill_buf()
            .map_err(|e| format!("cannot read it: {e}"))?;
        buf.iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'[')
    };
    let mut records: Vec<(usize, Value)> = Vec::new();
    let array = starts_array;
    if array {
        let value: Value =
            serde_json::from_reader(reader).map_err(|e| format!("not a JSON array: {e}"))?;
        if let Value::Array(items) = value {
            records.extend(items.into_iter().enumerate().map(|(i, v)| (i + 1, v)));
        }
    } else {
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| format!("cannot read line {}: {e}", i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&line)
                .map_err(|e| format!("line {}: not JSON ({e})", i + 1))?;
            records.push((i + 1, value));
        }
    }
    let name = if array { "row" } else { "line" };
    let mut columns = builders(table);
    let mut present = vec![false; columns.len()];
    let mut lines = Vec::with_capacity(records.len());
    for (line, value) in &records {
        let Value::Object(map) = value else {
            return Err(format!(
                "{name} {line}: expected a JSON object, got {value}"
            ));
        };
        for key in map.keys() {
            if index_of(table, key).is_none() {
                return Err(format!("{name} {line}: {}", unknown_column(table, key)));
            }
        }
        for (i, c) in table.columns().iter().enumerate() {
            match map.get(c.name) {
                Some(v) => {
                    present[i] = true;
                    columns[i]
                        .append(Cell::Json(v))
                        .map_err(|e| format!("{name} {line}, column `{}`: {e}", c.name))?;
                }
                None => columns[i].append_null(),
            }
        }
        lines.push(*line);
    }
    let columns = columns
        .into_iter()
        .zip(present)
        .map(|(b, p)| p.then(|| b.finish()))
        .collect();
    Ok(FileRows {
        rows: records.len(),
        columns,
        // Array items are counted as rows, not lines.
        lines: (!array).then_some(lines),
        format: Format::Ndjson,
    })
}

fn read_csv(mut file: File, table: Table) -> Result<FileRows, String> {
    use std::io::Seek as _;
    let format = arrow::csv::reader::Format::default().with_header(true);
    let (inferred, _) = format
        .infer_schema(&mut file, Some(0))
        .map_err(|e| format!("cannot read the CSV header: {e}"))?;
    file.rewind()
        .map_err(|e| format!("cannot read it again: {e}"))?;
    let names: Vec<String> = inferred.fields().iter().map(|f| f.name().clone()).collect();
    let mut index = Vec::with_capacity(names.len());
    for (n, name) in names.iter().enumerate() {
        let i = index_of(table, name)
            .ok_or_else(|| format!("header: {}", unknown_column(table, name)))?;
        if names[..n].contains(name) {
            return Err(format!("header: column `{name}` appears twice"));
        }
        index.push(i);
    }
    // Every field as text; each is then parsed as its column's type.
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let reader = arrow::csv::ReaderBuilder::new(schema)
        .with_header(true)
        .build(file)
        .map_err(|e| format!("cannot read it as CSV: {e}"))?;
    let mut columns = builders(table);
    let mut rows = 0;
    for batch in reader {
        let batch = batch.map_err(|e| format!("after row {rows}: {e}"))?;
        let texts: Vec<&StringArray> = batch
            .columns()
            .iter()
            .map(|c| c.as_any().downcast_ref::<StringArray>())
            .collect::<Option<_>>()
            .ok_or("the CSV reader returned a non-text column")?;
        for r in 0..batch.num_rows() {
            let row = rows + r;
            for (f, &i) in index.iter().enumerate() {
                let column: &Column = &table.columns()[i];
                let text = texts[f];
                if text.is_null(r) || text.value(r).is_empty() {
                    // An empty field is null, except in a required text column the
                    // import does not derive, where it is the empty string (an empty
                    // query string).
                    match &mut columns[i] {
                        Builder::Text(b)
                            if !column.nullable && !super::derivable(table, column.name) =>
                        {
                            b.append_value("")
                        }
                        b => b.append_null(),
                    }
                    continue;
                }
                columns[i].append(Cell::Text(text.value(r))).map_err(|e| {
                    format!(
                        "row {} (line {} counting the header), column `{}`: {e}",
                        row + 1,
                        row + 2,
                        column.name
                    )
                })?;
            }
        }
        rows += batch.num_rows();
    }
    let mut out: Vec<Option<ArrayRef>> = vec![None; table.columns().len()];
    for (i, b) in columns.into_iter().enumerate() {
        if index.contains(&i) {
            out[i] = Some(b.finish());
        }
    }
    Ok(FileRows {
        rows,
        columns: out,
        lines: None,
        format: Format::Csv,
    })
}

fn read_parquet(file: File, table: Table) -> Result<FileRows, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("cannot read it as Parquet: {e}"))?;
    let file_schema = Arc::clone(builder.schema());
    let mut index = Vec::new();
    for field in file_schema.fields() {
        let i = index_of(table, field.name()).ok_or_else(|| unknown_column(table, field.name()))?;
        index.push(i);
    }
    let reader = builder
        .build()
        .map_err(|e| format!("cannot read it as Parquet: {e}"))?;
    let mut parts: Vec<Vec<ArrayRef>> = vec![Vec::new(); table.columns().len()];
    let mut rows = 0;
    for batch in reader {
        let batch = batch.map_err(|e| format!("after row {rows}: {e}"))?;
        for (f, &i) in index.iter().enumerate() {
            let column = &table.columns()[i];
            let array = convert(batch.column(f), column, rows)?;
            parts[i].push(array);
        }
        rows += batch.num_rows();
    }
    let mut columns: Vec<Option<ArrayRef>> = vec![None; table.columns().len()];
    for &i in &index {
        let c = &table.columns()[i];
        let array = if parts[i].is_empty() {
            arrow::array::new_empty_array(&c.kind.data_type())
        } else {
            let refs: Vec<&dyn Array> = parts[i].iter().map(|a| a.as_ref()).collect();
            arrow::compute::concat(&refs).map_err(|e| format!("column `{}`: {e}", c.name))?
        };
        columns[i] = Some(array);
    }
    Ok(FileRows {
        rows,
        columns,
        lines: None,
        format: Format::Parquet,
    })
}

/// A Parquet column as the table column's type: the same type, or one that converts
/// without loss (other string or timestamp encodings, narrower numbers); timestamps
/// may also be text or integer epochs, parsed as in the text formats. `first_row`:
/// the file row of the array's first value.
fn convert(array: &ArrayRef, column: &Column, first_row: usize) -> Result<ArrayRef, String> {
    let target = column.kind.data_type();
    let from = array.data_type();
    if from == &target {
        return Ok(Arc::clone(array));
    }
    let lossless = match (column.kind, from) {
        (Kind::Text, DataType::LargeUtf8 | DataType::Utf8View) => true,
        (Kind::Text, DataType::Dictionary(_, v)) => {
            matches!(
                **v,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        }
        (Kind::Timestamp, DataType::Timestamp(_, _)) => true,
        (Kind::Int32, DataType::Int8 | DataType::Int16 | DataType::UInt8 | DataType::UInt16) => {
            true
        }
        (
            Kind::Int64,
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32,
        ) => true,
        (Kind::Float64, DataType::Float16 | DataType::Float32) => true,
        (Kind::Float64, t) => t.is_integer(),
        _ => false,
    };
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let wider_int = matches!(column.kind, Kind::Int32 | Kind::Int64) && from.is_integer();
    let epoch_or_text = column.kind == Kind::Timestamp
        && (from.is_integer()
            || matches!(
                from,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ));
    if lossless {
        return arrow::compute::cast_with_options(array, &target, &strict)
            .map_err(|e| format!("column `{}`: {e}", column.name));
    }
    if wider_int {
        // Integers that may not fit: checked value by value, so the row is named.
        let as_i64 = arrow::compute::cast_with_options(array, &DataType::Int64, &strict)
            .map_err(|e| format!("column `{}`: {e}", column.name))?;
        let values = as_i64
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .ok_or("an Int64 cast returned another type")?;
        let mut b = Builder::new(column.kind);
        for (r, v) in values.iter().enumerate() {
            match v {
                None => b.append_null(),
                Some(v) => b.append(Cell::Json(&Value::from(v))).map_err(|e| {
                    format!("row {}, column `{}`: {e}", first_row + r + 1, column.name)
                })?,
            }
        }
        return Ok(b.finish());
    }
    if epoch_or_text {
        let text = arrow::compute::cast(array, &DataType::Utf8)
            .map_err(|e| format!("column `{}`: {e}", column.name))?;
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or("a Utf8 cast returned another type")?;
        let mut b = Builder::new(Kind::Timestamp);
        for (r, v) in text.iter().enumerate() {
            match v {
                None => b.append_null(),
                Some(v) => b.append(Cell::Text(v)).map_err(|e| {
                    format!("row {}, column `{}`: {e}", first_row + r + 1, column.name)
                })?,
            }
        }
        return Ok(b.finish());
    }
    Err(format!(
        "column `{}` is {from} in the file; the table's `{}` is {} (see docs/tables.md)",
        column.name, column.name, target
    ))
}
