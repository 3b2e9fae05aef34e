//! `date_trunc` to the hour or day of a UTC timestamp by arithmetic. Every time
//! column of the lake is `Timestamp(µs, "UTC")`; DataFusion's `date_trunc` takes
//! its fast path only for timestamps without a zone and converts each value through
//! the zone otherwise, which dominated per-hour and per-day rollups (measurements in
//! benches/RESULTS.md).
//!
//! Invariant: the answer is DataFusion's own. UTC has no offset, so the values are
//! truncated by DataFusion's `date_trunc` itself on a view of the same values without
//! the zone, and the zone is put back; every other call goes to it unchanged.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Field, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

/// See the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct UtcDateTrunc {
    inner: ScalarUDF,
}

impl UtcDateTrunc {
    /// In place of DataFusion's `date_trunc` (registered under the same name).
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            inner: datafusion::functions::datetime::date_trunc()
                .as_ref()
                .clone(),
        })
    }
}

fn is_utc(tz: &str) -> bool {
    matches!(tz, "UTC" | "utc" | "+00:00" | "Z" | "Etc/UTC")
}

/// The same values with the time zone `tz` (`None`: without one).
fn with_zone(array: &ArrayRef, tz: Option<Arc<str>>) -> Option<ArrayRef> {
    let DataType::Timestamp(unit, _) = array.data_type() else {
        return None;
    };
    Some(match unit {
        TimeUnit::Second => Arc::new(
            array
                .as_primitive::<TimestampSecondType>()
                .clone()
                .with_timezone_opt(tz),
        ),
        TimeUnit::Millisecond => Arc::new(
            array
                .as_primitive::<TimestampMillisecondType>()
                .clone()
                .with_timezone_opt(tz),
        ),
        TimeUnit::Microsecond => Arc::new(
            array
                .as_primitive::<TimestampMicrosecondType>()
                .clone()
                .with_timezone_opt(tz),
        ),
        TimeUnit::Nanosecond => Arc::new(
            array
                .as_primitive::<TimestampNanosecondType>()
                .clone()
                .with_timezone_opt(tz),
        ),
    })
}

impl ScalarUDFImpl for UtcDateTrunc {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<arrow::datatypes::FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn output_ordering(&self, input: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(input)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let granularity = match args.args.first() {
            Some(ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(g))
                | ScalarValue::Utf8View(Some(g))
                | ScalarValue::LargeUtf8(Some(g)),
            )) => g.to_ascii_lowercase(),
            _ => String::new(),
        };
        let utc_array = match args.args.get(1) {
            Some(ColumnarValue::Array(a)) => match a.data_type() {
                DataType::Timestamp(_, Some(tz)) if is_utc(tz) => {
                    Some((Arc::clone(a), Arc::clone(tz)))
                }
                _ => None,
            },
            _ => None,
        };
        if let (true, Some((array, tz))) =
            (matches!(granularity.as_str(), "hour" | "day"), utc_array)
            && let Some(naive) = with_zone(&array, None)
        {
            args.args[1] = ColumnarValue::Array(naive);
            if let Some(field) = args.arg_fields.get_mut(1) {
                *field = Arc::new(Field::new(
                    field.name(),
                    args.args[1].data_type(),
                    field.is_nullable(),
                ));
            }
            let return_type = args.return_field.data_type().clone();
            if let DataType::Timestamp(unit, _) = return_type {
                args.return_field = Arc::new(Field::new(
                    args.return_field.name(),
                    DataType::Timestamp(unit, None),
                    args.return_field.is_nullable(),
                ));
            }
            return match self.inner.invoke_with_args(args)? {
                ColumnarValue::Array(out) => with_zone(&out, Some(tz))
                    .map(ColumnarValue::Array)
                    .ok_or_else(|| {
                        datafusion::error::DataFusionError::Internal(
                            "date_trunc returned no timestamp".into(),
                        )
                    }),
                scalar => Ok(scalar),
            };
        }
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn answers_what_datafusion_answers() {
        let plain = SessionContext::new();
        let fast = SessionContext::new();
        fast.register_udf(UtcDateTrunc::udf());
        let values = "SELECT arrow_cast(column1, 'Timestamp(Microsecond, Some(\"UTC\"))') AS t FROM \
                      (VALUES ('2024-02-29T23:59:59.999999Z'), ('1969-12-31T23:30:00Z'), ('2026-12-05T13:44:01Z'), (NULL))";
        for unit in ["hour", "day", "minute", "month", "week", "year"] {
            let sql = format!(
                "SELECT t, date_trunc('{unit}', t) AS a, date_trunc('{unit}', arrow_cast(t, 'Timestamp(Second, Some(\"+00:00\"))')) AS b, \
                 date_trunc('{unit}', arrow_cast(t, 'Timestamp(Microsecond, Some(\"Europe/Berlin\"))')) AS c FROM ({values})"
            );
            let show = |batches: Vec<arrow::record_batch::RecordBatch>| {
                arrow::util::pretty::pretty_format_batches(&batches)
                    .unwrap()
                    .to_string()
            };
            let a = show(plain.sql(&sql).await.unwrap().collect().await.unwrap());
            let b = show(fast.sql(&sql).await.unwrap().collect().await.unwrap());
            assert_eq!(a, b, "{unit}");
        }
        // The types stay as they were.
        let df = fast
            .sql(&format!("SELECT date_trunc('day', t) AS d FROM ({values})"))
            .await
            .unwrap();
        assert_eq!(
            df.schema().field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
    }
}
