//! Result encodings: json (array of row objects), ndjson, csv (with header), arrow
//! (IPC stream), parquet and table (the CLI's text grid).
//!
//! An [`Encoder`] takes batches one at a time and returns the bytes to emit for each,
//! so json, ndjson, csv and arrow stream; parquet and table emit everything at the end.
//! The HTTP API and the CLI use the same encoders.

use std::str::FromStr;
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;
use arrow::json::writer::{JsonArray, LineDelimited};
use arrow::record_batch::RecordBatch;
use bytes::{Bytes, BytesMut};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::QueryError;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResultFormat {
    Json,
    Ndjson,
    Csv,
    Arrow,
    Parquet,
    Table,
}

impl FromStr for ResultFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "json" => Self::Json,
            "ndjson" | "jsonl" => Self::Ndjson,
            "csv" => Self::Csv,
            "arrow" | "ipc" => Self::Arrow,
            "parquet" => Self::Parquet,
            "table" => Self::Table,
            other => {
                return Err(format!(
                    "unknown format {other:?}; use json, ndjson, csv, arrow, parquet or table"
                ));
            }
        })
    }
}

impl ResultFormat {
    /// The HTTP content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Ndjson => "application/x-ndjson",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Arrow => "application/vnd.apache.arrow.stream",
            Self::Parquet => "application/vnd.apache.parquet",
            Self::Table => "text/plain; charset=utf-8",
        }
    }

    /// The format an `Accept` header asks for, if it names one.
    pub fn from_accept(accept: &str) -> Option<Self> {
        accept.split(',').find_map(|part| {
            let mime = part.split(';').next()?.trim();
            Some(match mime {
                "application/json" => Self::Json,
                "application/x-ndjson" | "application/jsonl" => Self::Ndjson,
                "text/csv" => Self::Csv,
                "application/vnd.apache.arrow.stream" => Self::Arrow,
                "application/vnd.apache.parquet" | "application/parquet" => Self::Parquet,
                "text/plain" => Self::Table,
                _ => return None,
            })
        })
    }

    /// True when output can be sent batch by batch.
    pub fn streams(self) -> bool {
        !matches!(self, Self::Parquet | Self::Table)
    }
}

enum State {
    Json { rows: usize },
    Ndjson,
    Csv { header_done: bool },
    Arrow(Box<StreamWriter<Vec<u8>>>),
    Parquet(Box<ArrowWriter<Vec<u8>>>),
    Table(Vec<RecordBatch>),
}

/// About the bytes of the text grid of `batches`: per column, its widest value
/// (text) or 24 bytes (anything else), times the rows.
fn table_bytes(batches: &[RecordBatch]) -> u64 {
    let Some(first) = batches.first() else {
        return 0;
    };
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    let width: u64 = (0..first.num_columns())
        .map(|c| {
            batches
                .iter()
                .map(|b| {
                    let column = b.column(c);
                    match column.as_string_opt::<i32>() {
                        Some(s) => s
                            .offsets()
                            .windows(2)
                            .map(|w| (w[1] - w[0]).max(0) as u64)
                            .max()
                            .unwrap_or(0),
                        None => 24,
                    }
                })
                .max()
                .unwrap_or(0)
                + 3
        })
        .sum();
    rows.saturating_add(4).saturating_mul(width)
}

/// Bytes of rows encoded at a time (see [`Encoder::write`]).
const ENCODE_STEP: usize = 1 << 20;

/// Encodes a result, batch by batch. See the module docs.
pub(crate) struct Encoder {
    state: State,
    emitted: u64,
    limit: u64,
}

fn enc_err(e: impl std::fmt::Display) -> QueryError {
    QueryError::Internal(format!("could not encode the result: {e}"))
}

impl Encoder {
    /// An encoder for results of `schema`, failing past `limit` bytes of output.
    pub fn new(format: ResultFormat, schema: &SchemaRef, limit: u64) -> Result<Self, QueryError> {
        let state = match format {
            ResultFormat::Json => State::Json { rows: 0 },
            ResultFormat::Ndjson => State::Ndjson,
            ResultFormat::Csv => State::Csv { header_done: false },
            ResultFormat::Arrow => State::Arrow(Box::new(
                StreamWriter::try_new(Vec::new(), schema).map_err(enc_err)?,
            )),
            ResultFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                State::Parquet(Box::new(
                    ArrowWriter::try_new(Vec::new(), Arc::clone(schema), Some(props))
                        .map_err(enc_err)?,
                ))
            }
            ResultFormat::Table => State::Table(Vec::new()),
        };
        Ok(Self {
            state,
            emitted: 0,
            limit,
        })
    }

    /// Encodes one batch; returns the bytes to send now (may be empty).
    ///
    /// Works in row slices of about [`ENCODE_STEP`] bytes and checks the result limit
    /// before and after each, so a batch of huge values never becomes a huge encoding
    /// first.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<Bytes, QueryError> {
        let rows = batch.num_rows();
        let bytes = super::limits::batch_bytes(batch);
        if bytes <= ENCODE_STEP || rows <= 1 {
            return self.write_step(batch, bytes);
        }
        let per_step = (rows * ENCODE_STEP / bytes).max(1);
        let mut out = BytesMut::new();
        let mut start = 0;
        while start < rows {
            let slice = batch.slice(start, per_step.min(rows - start));
            let bytes = super::limits::batch_bytes(&slice);
            out.extend_from_slice(&self.write_step(&slice, bytes)?);
            start += slice.num_rows();
        }
        Ok(out.freeze())
    }

    fn write_step(&mut self, batch: &RecordBatch, bytes: usize) -> Result<Bytes, QueryError> {
        // Text and Arrow encodings are at least as large as the values' bytes: a step
        // that cannot fit is refused before it is encoded. A single huge row (a step
        // of one row) may grow up to six times as text (JSON escapes a control
        // character as six bytes), so it must fit that.
        let compresses = matches!(self.state, State::Parquet(_) | State::Table(_));
        let growth = match self.state {
            State::Json { .. } | State::Ndjson | State::Csv { .. } if bytes > ENCODE_STEP => 6,
            _ => 1,
        };
        if !compresses
            && self
                .emitted
                .saturating_add((bytes as u64).saturating_mul(growth))
                > self.limit
        {
            return Err(QueryError::TooLarge(self.limit));
        }
        let out = match &mut self.state {
            State::Json { rows } => {
                if batch.num_rows() == 0 {
                    Vec::new()
                } else {
                    let mut w = arrow::json::WriterBuilder::new()
                        .with_explicit_nulls(true)
                        .build::<_, JsonArray>(Vec::new());
                    w.write(batch).map_err(enc_err)?;
                    w.finish().map_err(enc_err)?;
                    let mut buf = w.into_inner();
                    // `[{..},{..}]` → continue the one array of the whole result.
                    buf[0] = if *rows == 0 { b'[' } else { b',' };
                    buf.pop();
                    *rows += batch.num_rows();
                    buf
                }
            }
            State::Ndjson => {
                let mut w = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, LineDelimited>(Vec::new());
                w.write(batch).map_err(enc_err)?;
                w.finish().map_err(enc_err)?;
                w.into_inner()
            }
            State::Csv { header_done } => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(!*header_done)
                    .build(Vec::new());
                w.write(batch).map_err(enc_err)?;
                *header_done = true;
                w.into_inner()
            }
            State::Arrow(w) => {
                w.write(batch).map_err(enc_err)?;
                std::mem::take(w.get_mut())
            }
            State::Parquet(w) => {
                w.write(batch).map_err(enc_err)?;
                if w.bytes_written() as u64 + w.in_progress_size() as u64 > self.limit {
                    return Err(QueryError::TooLarge(self.limit));
                }
                Vec::new()
            }
            State::Table(batches) => {
                batches.push(batch.clone());
                // The grid pads every cell to its column's widest value: count that.
                if table_bytes(batches) > self.limit {
                    return Err(QueryError::TooLarge(self.limit));
                }
                Vec::new()
            }
        };
        self.count(out)
    }

    /// Ends the result; returns the last bytes to send.
    pub fn finish(self) -> Result<Bytes, QueryError> {
        let mut this = self;
        let state = std::mem::replace(&mut this.state, State::Ndjson);
        let out = match state {
            State::Json { rows } => {
                if rows == 0 {
                    b"[]".to_vec()
                } else {
                    b"]".to_vec()
                }
            }
            State::Ndjson | State::Csv { .. } => Vec::new(),
            State::Arrow(mut w) => {
                w.finish().map_err(enc_err)?;
                std::mem::take(w.get_mut())
            }
            State::Parquet(w) => w.into_inner().map_err(enc_err)?,
            State::Table(batches) => {
                let mut s = arrow::util::pretty::pretty_format_batches(&batches)
                    .map_err(enc_err)?
                    .to_string();
                s.push('\n');
                s.into_bytes()
            }
        };
        this.count(out)
    }

    fn count(&mut self, out: Vec<u8>) -> Result<Bytes, QueryError> {
        self.emitted += out.len() as u64;
        if self.emitted > self.limit {
            return Err(QueryError::TooLarge(self.limit));
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(from: i64, n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let ns: Vec<i64> = (from..from + n).collect();
        let ss: Vec<Option<String>> = ns
            .iter()
            .map(|i| (i % 2 == 0).then(|| format!("v{i}")))
            .collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ns)),
                Arc::new(StringArray::from(ss)),
            ],
        )
        .unwrap()
    }

    fn encode_all(format: ResultFormat, batches: &[RecordBatch]) -> Vec<u8> {
        let schema = batches[0].schema();
        let mut enc = Encoder::new(format, &schema, u64::MAX).unwrap();
        let mut out = Vec::new();
        for b in batches {
            out.extend_from_slice(&enc.write(b).unwrap());
        }
        out.extend_from_slice(&enc.finish().unwrap());
        out
    }

    #[test]
    fn json_is_one_array_across_batches() {
        let out = encode_all(ResultFormat::Json, &[batch(0, 2), batch(2, 0), batch(2, 1)]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"n":0,"s":"v0"},{"n":1,"s":null},{"n":2,"s":"v2"}])
        );
        let empty = encode_all(ResultFormat::Json, &[batch(0, 0)]);
        assert_eq!(empty, b"[]");
    }

    #[test]
    fn csv_has_one_header() {
        let out =
            String::from_utf8(encode_all(ResultFormat::Csv, &[batch(0, 1), batch(1, 1)])).unwrap();
        assert_eq!(out, "n,s\n0,v0\n1,\n");
    }

    #[test]
    fn ndjson_is_one_object_per_line() {
        let out = String::from_utf8(encode_all(ResultFormat::Ndjson, &[batch(0, 2)])).unwrap();
        assert_eq!(out.lines().count(), 2);
    }

    #[test]
    fn arrow_and_parquet_read_back() {
        let out = encode_all(ResultFormat::Arrow, &[batch(0, 3), batch(3, 2)]);
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(out), None).unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 5);
        let out = encode_all(ResultFormat::Parquet, &[batch(0, 3)]);
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            Bytes::from(out),
        )
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 3);
    }

    #[test]
    fn output_past_the_limit_is_refused() {
        let schema = batch(0, 1).schema();
        let mut enc = Encoder::new(ResultFormat::Ndjson, &schema, 10).unwrap();
        assert!(matches!(
            enc.write(&batch(0, 100)),
            Err(QueryError::TooLarge(10))
        ));
    }

    fn texts(values: Vec<String>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(values))]).unwrap()
    }

    #[test]
    fn a_grid_padded_past_the_limit_is_refused_before_it_is_drawn() {
        // One wide value and many empty ones: little data, a huge padded grid.
        let mut values = vec!["x".repeat(100_000)];
        values.extend((0..10_000).map(|_| String::new()));
        let batch = texts(values);
        let mut enc = Encoder::new(ResultFormat::Table, &batch.schema(), 64 << 20).unwrap();
        assert!(matches!(enc.write(&batch), Err(QueryError::TooLarge(_))));
    }

    #[test]
    fn one_huge_row_is_refused_before_it_is_escaped_into_json() {
        // 2 MiB of control characters would be 12 MiB of JSON.
        let batch = texts(vec!["\u{1}".repeat(2 << 20)]);
        let mut enc = Encoder::new(ResultFormat::Json, &batch.schema(), 8 << 20).unwrap();
        assert!(matches!(enc.write(&batch), Err(QueryError::TooLarge(_))));
        // Under the limit it is written.
        let mut enc = Encoder::new(ResultFormat::Json, &batch.schema(), 16 << 20).unwrap();
        assert!(enc.write(&batch).unwrap().len() > 12 << 20);
    }

    #[test]
    fn formats_parse_from_names_and_accept_headers() {
        assert_eq!("CSV".parse::<ResultFormat>(), Ok(ResultFormat::Csv));
        assert!("xml".parse::<ResultFormat>().is_err());
        assert_eq!(
            ResultFormat::from_accept("text/html, application/x-ndjson;q=0.9"),
            Some(ResultFormat::Ndjson)
        );
        assert_eq!(ResultFormat::from_accept("*/*"), None);
    }
}
