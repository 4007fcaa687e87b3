//! `age(a, b)` and `age(a)`: the time between two timestamps in years, months and days, as
//! PostgreSQL answers it (DataFusion has no `age`: "Invalid function 'age'").
//!
//! The difference is taken field by field (years, months, days, then the time of day) and a
//! negative field borrows from the one above it, a day borrowing the length of the earlier
//! value's month: `age('2024-03-01', '2024-01-31')` is `1 mon 1 day`, not `30 days`. `age(a)` is
//! the age of `a` at midnight today, `age(current_date, a)`. A timestamp with a zone is read in
//! its zone; a date is its midnight.

use std::sync::{Arc, OnceLock};

use arrow::array::temporal_conversions::as_datetime_with_timezone;
use arrow::array::{Array, AsArray, IntervalMonthDayNanoBuilder};
use arrow::datatypes::{DataType, IntervalMonthDayNano, TimeUnit, TimestampMicrosecondType};
use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};
use datafusion::common::{Result as DfResult, ScalarValue, plan_err};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, DocSection, Documentation, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility, cast,
};

/// The function, for the session's registry.
pub(super) fn age() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(Age {
        signature: Signature::user_defined(Volatility::Immutable),
    }))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Age {
    signature: Signature,
}

/// The microsecond timestamp type both arguments are read as: the zone of the first that has
/// one, else none.
fn common(types: &[DataType]) -> DfResult<DataType> {
    if !(1..=2).contains(&types.len()) {
        return plan_err!("age() takes 1 or 2 arguments, {} given", types.len());
    }
    let mut zone = None;
    for t in types {
        match t {
            DataType::Timestamp(_, z) => zone = zone.or(z.clone()),
            DataType::Date32
            | DataType::Date64
            | DataType::Null
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View => {}
            other => return plan_err!("age() takes timestamps or dates, not {other}"),
        }
    }
    Ok(DataType::Timestamp(TimeUnit::Microsecond, zone))
}

impl ScalarUDFImpl for Age {
    fn name(&self) -> &str {
        "age"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        let t = common(arg_types)?;
        Ok(vec![t; arg_types.len()])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Interval(
            arrow::datatypes::IntervalUnit::MonthDayNano,
        ))
    }

    // `age(a)` is `age(current_date, a)`, the date fixed when the statement is planned.
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        let [a] = match <[Expr; 1]>::try_from(args) {
            Ok(one) => one,
            Err(args) => return Ok(ExprSimplifyResult::Original(args)),
        };
        // Today's midnight where `a` is: a date cast to a zoned timestamp is UTC midnight, a
        // timestamp without a zone cast to one is read in that zone.
        let today = datafusion::functions::datetime::current_date().call(vec![]);
        let midnight = cast(today, DataType::Timestamp(TimeUnit::Microsecond, None));
        let t = info.get_data_type(&a)?;
        Ok(ExprSimplifyResult::Simplified(
            age().call(vec![cast(midnight, t), a]),
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let (a, b) = match arrays.as_slice() {
            [a, b] => (a, b),
            _ => return plan_err!("age() of one argument is planned as age(current_date, a)"),
        };
        let zone = match a.data_type() {
            DataType::Timestamp(_, Some(z)) => Some(z.parse::<arrow::array::timezone::Tz>()?),
            _ => None,
        };
        let local = |array: &dyn Array, i: usize| -> Option<NaiveDateTime> {
            let v = array.as_primitive::<TimestampMicrosecondType>().value(i);
            match &zone {
                Some(tz) => as_datetime_with_timezone::<TimestampMicrosecondType>(v, *tz)
                    .map(|t| t.naive_local()),
                None => arrow::array::temporal_conversions::timestamp_us_to_datetime(v),
            }
        };
        let mut out = IntervalMonthDayNanoBuilder::with_capacity(a.len());
        for i in 0..a.len() {
            if a.is_null(i) || b.is_null(i) {
                out.append_null();
                continue;
            }
            match (local(a, i), local(b, i)) {
                (Some(x), Some(y)) => out.append_value(between(x, y)),
                _ => out.append_null(),
            }
        }
        let out = out.finish();
        match scalar {
            true => Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)),
            false if out.len() == rows => Ok(ColumnarValue::Array(Arc::new(out))),
            false => plan_err!("age() produced {} rows for {rows}", out.len()),
        }
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        Some(DOC.get_or_init(|| {
            Documentation::builder(
                DocSection {
                    include: true,
                    label: "Time and Date Functions",
                    description: None,
                },
                "Subtracts the second argument from the first in years, months and days (and \
                 time of day), as PostgreSQL's age() does; with one argument, from today's \
                 midnight.",
                "age(timestamp, timestamp) or age(timestamp)",
            )
            .build()
        }))
    }
}

/// Days in the month of `d`.
fn month_days(d: NaiveDate) -> i64 {
    let (y, m) = (d.year(), d.month());
    let next = match m {
        12 => NaiveDate::from_ymd_opt(y + 1, 1, 1),
        m => NaiveDate::from_ymd_opt(y, m + 1, 1),
    };
    let first = NaiveDate::from_ymd_opt(y, m, 1);
    match (first, next) {
        (Some(f), Some(n)) => (n - f).num_days(),
        _ => 31,
    }
}

/// `x - y` as PostgreSQL's `age` forms it (its `timestamp_age`).
fn between(x: NaiveDateTime, y: NaiveDateTime) -> IntervalMonthDayNano {
    let field = |f: fn(&NaiveDateTime) -> i64| f(&x) - f(&y);
    let mut micros = field(|t| i64::from(t.nanosecond() / 1000));
    let mut sec = field(|t| i64::from(t.second()));
    let mut min = field(|t| i64::from(t.minute()));
    let mut hour = field(|t| i64::from(t.hour()));
    let mut day = field(|t| i64::from(t.day()));
    let mut mon = field(|t| i64::from(t.month()));
    let mut year = field(|t| i64::from(t.year()));
    let negative = x < y;
    let mut all = [
        &mut micros,
        &mut sec,
        &mut min,
        &mut hour,
        &mut day,
        &mut mon,
        &mut year,
    ];
    if negative {
        for f in all.iter_mut() {
            **f = -**f;
        }
    }
    // Negative fields borrow from the next one up; a day borrows the earlier value's month.
    let earlier = if negative { x } else { y };
    while micros < 0 {
        micros += 1_000_000;
        sec -= 1;
    }
    while sec < 0 {
        sec += 60;
        min -= 1;
    }
    while min < 0 {
        min += 60;
        hour -= 1;
    }
    while hour < 0 {
        hour += 24;
        day -= 1;
    }
    while day < 0 {
        day += month_days(earlier.date());
        mon -= 1;
    }
    while mon < 0 {
        mon += 12;
        year -= 1;
    }
    let sign = if negative { -1 } else { 1 };
    let months = sign * (year * 12 + mon);
    let nanos = sign * ((((hour * 60 + min) * 60 + sec) * 1_000_000 + micros) * 1000);
    IntervalMonthDayNano::new(
        i32::try_from(months).unwrap_or(i32::MAX),
        i32::try_from(sign * day).unwrap_or(i32::MAX),
        nanos,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap()
    }

    /// Each answer is PostgreSQL 16's `age(TIMESTAMP a, TIMESTAMP b)`.
    #[test]
    fn ages_are_postgresql_s() {
        let hour = 3_600_000_000_000_i64;
        for (a, b, (months, days, nanos)) in [
            ("2024-03-05 00:00:00", "2020-01-01 00:00:00", (50, 4, 0)),
            ("2024-03-01 00:00:00", "2024-01-31 00:00:00", (1, 1, 0)),
            ("2024-01-31 00:00:00", "2024-03-01 00:00:00", (-1, -1, 0)),
            (
                "2023-03-01 00:00:00",
                "2023-02-28 12:00:00",
                (0, 0, 12 * hour),
            ),
            (
                "2024-03-05 08:00:00",
                "2024-03-05 09:30:00.5",
                (0, 0, -(hour + hour / 2 + 500_000_000)),
            ),
            ("2001-04-10 00:00:00", "1957-06-13 00:00:00", (525, 27, 0)),
        ] {
            let got = between(at(a), at(b));
            assert_eq!(
                (got.months, got.days, got.nanoseconds),
                (months, days, nanos),
                "age({a}, {b})"
            );
        }
    }
}
