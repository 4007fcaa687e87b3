//! `extract` / `date_part` of seconds and of an epoch, as PostgreSQL answers them.
//!
//! DataFusion 55 answers `extract(second FROM ts)` as a whole number (5 for 10:00:05.25, where
//! PostgreSQL answers 5.25), and the epoch of a duration (a timestamp difference) from its
//! nanoseconds as a 32-bit number, which overflows past 2.1 seconds and drops the fraction:
//! `extract(epoch FROM ts2 - ts1)` of a day and a half second was 86400, not 86400.5. The epoch of
//! an interval counted a year as 360 days (PostgreSQL: 365.25). [`PgDatePart`] wraps DataFusion's
//! function: `second` of a timestamp or time is a `DOUBLE` with its fraction, the epoch of a
//! duration its exact length in seconds, and of an interval PostgreSQL's length; every other part
//! (and the year pruning DataFusion derives from `date_part`) is DataFusion's.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array};
use arrow::datatypes::{
    DataType, DurationMicrosecondType, DurationMillisecondType, DurationNanosecondType,
    DurationSecondType, Field, FieldRef, Int64Type, IntervalMonthDayNanoType, IntervalUnit,
    TimeUnit,
};
use datafusion::common::{Result as DfResult, ScalarValue};

use super::text_casts::nanos_per;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};

/// `registered`'s `date_part`, answering as PostgreSQL does; see the module's documentation.
pub(super) fn wrap(registered: impl Fn(&str) -> Option<Arc<ScalarUDF>>) -> Option<Arc<ScalarUDF>> {
    registered("date_part").map(|inner| Arc::new(ScalarUDF::new_from_impl(PgDatePart { inner })))
}

/// Plans `EXTRACT(part FROM x)` as the wrapped `date_part`: DataFusion's own planner, asked
/// before the registry, calls its `date_part` directly. Put first among the expression planners.
#[derive(Debug)]
pub(super) struct Extract;

impl datafusion::logical_expr::planner::ExprPlanner for Extract {
    fn plan_extract(
        &self,
        args: Vec<Expr>,
    ) -> DfResult<datafusion::logical_expr::planner::PlannerResult<Vec<Expr>>> {
        let inner = datafusion::functions::datetime::date_part();
        let ours = ScalarUDF::new_from_impl(PgDatePart { inner });
        Ok(datafusion::logical_expr::planner::PlannerResult::Planned(
            ours.call(args),
        ))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct PgDatePart {
    inner: Arc<ScalarUDF>,
}

/// What this wrapper answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Own {
    /// Seconds with their fraction.
    Second,
    /// The length of a duration or an interval, in seconds.
    Epoch,
    /// A field of a duration read as PostgreSQL's interval of days and a time of day.
    Span(Span),
}

/// The fields of a span of time PostgreSQL extracts: a duration (a timestamp difference) is
/// days and a time of day under a day, an interval's time of day is its nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    /// Years and months: none in a duration, which counts no months.
    Months,
    /// Its months' quarter, counted from 1: the first.
    Quarter,
    Day,
    Hour,
    Minute,
    /// Seconds of the minute with their fraction, and the same in milli- and microseconds.
    Second,
    Millisecond,
    Microsecond,
}

impl Own {
    /// The type answered: whole fields as `BIGINT`, seconds and lengths as `DOUBLE`.
    fn data_type(self) -> DataType {
        match self {
            Own::Span(Span::Months | Span::Quarter | Span::Day | Span::Hour | Span::Minute) => {
                DataType::Int64
            }
            _ => DataType::Float64,
        }
    }
}

/// The part `part` names, as DataFusion normalises it (trimmed, quotes and case aside).
fn own(part: &str, value: &DataType) -> Option<Own> {
    let part = part
        .trim()
        .trim_matches(|c| c == '\'' || c == '"')
        .to_ascii_lowercase();
    let span = match part.as_str() {
        "second" | "seconds" | "s" | "sec" | "secs" => Span::Second,
        "millisecond" | "milliseconds" | "ms" | "msec" | "msecs" => Span::Millisecond,
        "microsecond" | "microseconds" | "us" | "usec" | "usecs" => Span::Microsecond,
        "minute" | "minutes" | "m" | "min" | "mins" => Span::Minute,
        "hour" | "hours" | "h" | "hr" | "hrs" => Span::Hour,
        "day" | "days" | "d" => Span::Day,
        "year" | "years" | "y" | "yr" | "yrs" | "month" | "months" | "mon" | "mons" | "decade"
        | "century" | "millennium" => Span::Months,
        "quarter" => Span::Quarter,
        "epoch" => {
            return matches!(
                value,
                DataType::Duration(_) | DataType::Interval(IntervalUnit::MonthDayNano)
            )
            .then_some(Own::Epoch);
        }
        _ => return None,
    };
    match value {
        DataType::Timestamp(..) | DataType::Time32(_) | DataType::Time64(_) => {
            (span == Span::Second).then_some(Own::Second)
        }
        DataType::Duration(_) => Some(Own::Span(span)),
        // DataFusion reads an interval's whole fields right, but drops the fraction of its
        // seconds.
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            matches!(span, Span::Second | Span::Millisecond | Span::Microsecond)
                .then_some(Own::Span(span))
        }
        _ => None,
    }
}

fn part_text(v: &ScalarValue) -> Option<&str> {
    v.try_as_str().flatten()
}

impl ScalarUDFImpl for PgDatePart {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(args)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let mine = match (args.scalar_arguments.first(), args.arg_fields.get(1)) {
            (Some(Some(part)), Some(value)) => {
                part_text(part).and_then(|p| own(p, value.data_type()))
            }
            _ => None,
        };
        match mine {
            Some(own) => Ok(Arc::new(Field::new(
                self.name(),
                own.data_type(),
                args.arg_fields[1].is_nullable(),
            ))),
            None => self.inner.return_field_from_args(args),
        }
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> DfResult<PreimageResult> {
        self.inner.preimage(args, lit_expr, info)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let mine = match args.args.as_slice() {
            [ColumnarValue::Scalar(part), value] => {
                part_text(part).and_then(|p| own(p, &value.data_type()))
            }
            _ => None,
        };
        let Some(mine) = mine else {
            return self.inner.invoke_with_args(args);
        };
        let scalar = matches!(args.args[1], ColumnarValue::Scalar(_));
        let values = args.args[1].to_array(1)?;
        let seconds: Float64Array = match mine {
            Own::Span(span) => {
                let answer = span_part(values.as_ref(), span)?;
                return Ok(match scalar {
                    true => ColumnarValue::Scalar(ScalarValue::try_from_array(&answer, 0)?),
                    false => ColumnarValue::Array(answer),
                });
            }
            Own::Second => {
                // DataFusion's nanoseconds of the minute, seconds included, as a 64-bit number.
                let mut nanos_args = args.clone();
                nanos_args.args[0] =
                    ColumnarValue::Scalar(ScalarValue::Utf8(Some("nanosecond".into())));
                nanos_args.args[1] = ColumnarValue::Array(values.clone());
                nanos_args.number_rows = values.len();
                nanos_args.return_field = Arc::new(Field::new("n", DataType::Int64, true));
                let nanos = self
                    .inner
                    .invoke_with_args(nanos_args)?
                    .into_array(values.len())?;
                let nanos = arrow::compute::cast(&nanos, &DataType::Int64)?;
                nanos.as_primitive::<Int64Type>().unary(|n| n as f64 / 1e9)
            }
            Own::Epoch => epoch(values.as_ref()),
        };
        Ok(match scalar {
            true => ColumnarValue::Scalar(ScalarValue::try_from_array(&seconds, 0)?),
            false => ColumnarValue::Array(Arc::new(seconds)),
        })
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// Seconds in PostgreSQL's year (365.25 days), month (30) and day, for an interval's epoch.
const YEAR: f64 = 365.25 * 86_400.0;
const MONTH: f64 = 30.0 * 86_400.0;
const DAY: f64 = 86_400.0;

/// Nanoseconds in a minute, an hour and a day.
const MINUTE_NANOS: i128 = 60_000_000_000;
const HOUR_NANOS: i128 = 60 * MINUTE_NANOS;
const DAY_NANOS: i128 = 24 * HOUR_NANOS;

/// `span` of each duration or interval in `a`, as PostgreSQL extracts it from an interval
/// (a duration being days and a time of day): the signs of the fields are the value's, as C's
/// truncating division gives them.
fn span_part(a: &dyn Array, span: Span) -> DfResult<ArrayRef> {
    // Each value's days and nanoseconds of its time of day (a duration in nanoseconds counted
    // in 128 bits: a duration of seconds past 292 years overflows 64).
    let split = |n: i128| (n / DAY_NANOS, n % DAY_NANOS);
    let parts: Vec<Option<(i128, i128)>> = match a.data_type() {
        DataType::Duration(unit) => {
            let per = i128::from(nanos_per(unit));
            let raw = arrow::compute::cast(a, &DataType::Int64)?;
            raw.as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.map(|n| split(i128::from(n) * per)))
                .collect()
        }
        _ => a
            .as_primitive::<IntervalMonthDayNanoType>()
            .iter()
            .map(|v| v.map(|x| (i128::from(x.days), i128::from(x.nanoseconds))))
            .collect(),
    };
    // Divided by the unit's nanoseconds, which is exact for a whole count of units
    // (`nanos / 1e9 * 1e3` wrote 1.001 s as 1000.9999999999999 ms).
    let seconds = |unit_nanos: f64| -> ArrayRef {
        Arc::new(
            parts
                .iter()
                .map(|p| p.map(|(_, nanos)| (nanos % MINUTE_NANOS) as f64 / unit_nanos))
                .collect::<Float64Array>(),
        )
    };
    let whole = |field: fn((i128, i128)) -> i128| -> ArrayRef {
        // Within 64 bits: days of a duration are at most 2^63 seconds' worth.
        Arc::new(
            parts
                .iter()
                .map(|p| p.map(|p| field(p) as i64))
                .collect::<Int64Array>(),
        )
    };
    Ok(match span {
        Span::Months => whole(|_| 0),
        Span::Quarter => whole(|_| 1),
        Span::Day => whole(|(days, _)| days),
        Span::Hour => whole(|(_, nanos)| nanos / HOUR_NANOS),
        Span::Minute => whole(|(_, nanos)| nanos % HOUR_NANOS / MINUTE_NANOS),
        Span::Second => seconds(1e9),
        Span::Millisecond => seconds(1e6),
        Span::Microsecond => seconds(1e3),
    })
}

/// The length of each duration or interval in seconds, as PostgreSQL's `extract(epoch …)`.
fn epoch(a: &dyn Array) -> Float64Array {
    let exact = |n: i64, per_second: i64| {
        (n / per_second) as f64 + (n % per_second) as f64 / per_second as f64
    };
    match a.data_type() {
        DataType::Duration(TimeUnit::Second) => {
            a.as_primitive::<DurationSecondType>().unary(|n| n as f64)
        }
        DataType::Duration(TimeUnit::Millisecond) => a
            .as_primitive::<DurationMillisecondType>()
            .unary(|n| exact(n, 1_000)),
        DataType::Duration(TimeUnit::Microsecond) => a
            .as_primitive::<DurationMicrosecondType>()
            .unary(|n| exact(n, 1_000_000)),
        DataType::Duration(TimeUnit::Nanosecond) => a
            .as_primitive::<DurationNanosecondType>()
            .unary(|n| exact(n, 1_000_000_000)),
        _ => a.as_primitive::<IntervalMonthDayNanoType>().unary(|x| {
            let months = i64::from(x.months);
            (months / 12) as f64 * YEAR
                + (months % 12) as f64 * MONTH
                + f64::from(x.days) * DAY
                + exact(x.nanoseconds, 1_000_000_000)
        }),
    }
}

#[cfg(test)]
mod tests {
    /// When an upgrade answers right, this fails and the wrapper can go.
    #[tokio::test]
    async fn datafusion_still_drops_fractions_of_seconds() {
        let ctx = datafusion::prelude::SessionContext::new();
        let sql = "SELECT CAST(extract(second FROM TIMESTAMP '2024-01-01 10:00:05.25') AS DOUBLE), \
                   extract(epoch FROM TIMESTAMP '2024-01-02 00:00:00.5' - TIMESTAMP '2024-01-01')";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let answers: Vec<f64> = batches[0]
            .columns()
            .iter()
            .map(|c| {
                arrow::array::AsArray::as_primitive::<arrow::datatypes::Float64Type>(c).value(0)
            })
            .collect();
        assert_eq!(answers, [5.0, 86400.0], "PostgreSQL: 5.25, 86400.5");
    }
}
