//! An interval times or divided by a number, as PostgreSQL and DuckDB compute it.
//!
//! DataFusion has no arithmetic between an interval and a number: `now() - 7 * INTERVAL '1
//! day'`, `value * INTERVAL '1 hour'` and `INTERVAL '3 days' / 2` failed while planning
//! ("Invalid interval arithmetic operation"). [`IntervalArithmetic`], an expression planner
//! (asked first about every operator of the SQL), plans `n * interval`, `interval * n` and
//! `interval / n` as [`Scaled`], which scales each field of the interval.
//!
//! An integer scales the months, days and nanoseconds exactly, and a result beyond a field's
//! range is an error ("interval out of range"), as an integer's overflow is. A fraction (a
//! `DECIMAL` or `DOUBLE` factor, or any divisor) carries what it leaves of a month into days
//! at 30 days a month and what it leaves of a day into time at 24 hours a day, as PostgreSQL
//! does: `INTERVAL '1 month' * 1.5` is 1 month 15 days, `INTERVAL '3 days' / 2` is 1 day 12
//! hours. Dividing by zero is an error.
//!
//! The planner also reads `date ± interval` as PostgreSQL does when the interval has a time of
//! day: the date's midnight plus the interval, a timestamp ([`on_dates`]).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Float64Type, Int64Type, IntervalMonthDayNano, IntervalMonthDayNanoType, IntervalUnit,
};
use arrow::error::ArrowError;
use datafusion::common::{DFSchema, ExprSchema, Result as DfResult, ScalarValue, plan_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::sql::sqlparser::ast::BinaryOperator;

/// The planner; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct IntervalArithmetic;

impl ExprPlanner for IntervalArithmetic {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> DfResult<PlannerResult<RawBinaryExpr>> {
        let type_of = |x: &Expr| x.get_type(schema as &dyn ExprSchema).ok();
        let divide = match expr.op {
            BinaryOperator::Multiply => false,
            BinaryOperator::Divide => true,
            BinaryOperator::Plus | BinaryOperator::Minus => return Ok(on_dates(expr, type_of)),
            _ => return Ok(PlannerResult::Original(expr)),
        };
        let number = |t: Option<DataType>| t.as_ref().and_then(factor_type).is_some();
        let interval = |t: &Option<DataType>| matches!(t, Some(DataType::Interval(_)));
        let (left, right) = (type_of(&expr.left), type_of(&expr.right));
        let args = if interval(&left) && number(right.clone()) {
            vec![expr.left, expr.right]
        } else if !divide && number(left) && interval(&right) {
            vec![expr.right, expr.left]
        } else {
            return Ok(PlannerResult::Original(expr));
        };
        let call = ScalarFunction::new_udf(function(divide), args);
        Ok(PlannerResult::Planned(Expr::ScalarFunction(call)))
    }
}

/// `date ± interval` with a time of day in the interval, as a timestamp: DataFusion kept the
/// date's type and dropped the time (`DATE '2024-01-01' - INTERVAL '1 hour'` was 2024-01-01,
/// PostgreSQL answers 2023-12-31 23:00:00). The date is read as its midnight first. An
/// interval of whole days or months keeps the date a date.
fn on_dates(
    expr: RawBinaryExpr,
    type_of: impl Fn(&Expr) -> Option<DataType>,
) -> PlannerResult<RawBinaryExpr> {
    let date = |e: &Expr| matches!(type_of(e), Some(DataType::Date32 | DataType::Date64));
    let timed = |e: &Expr| match e {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) => v.nanoseconds != 0,
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => v.milliseconds != 0,
        _ => false,
    };
    let midnight = |e: Expr| {
        Expr::Cast(datafusion::logical_expr::Cast::new(
            Box::new(e),
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
        ))
    };
    let op = match expr.op {
        BinaryOperator::Plus => datafusion::logical_expr::Operator::Plus,
        _ => datafusion::logical_expr::Operator::Minus,
    };
    let (left, right) = match (&expr.left, &expr.right) {
        (l, r) if date(l) && timed(r) => (midnight(expr.left), expr.right),
        (l, r) if op == datafusion::logical_expr::Operator::Plus && timed(l) && date(r) => {
            (expr.left, midnight(expr.right))
        }
        _ => return PlannerResult::Original(expr),
    };
    PlannerResult::Planned(datafusion::logical_expr::binary_expr(left, op, right))
}

/// The type a factor of `t` is computed in: integers exactly, other numbers as `DOUBLE`.
fn factor_type(t: &DataType) -> Option<DataType> {
    match t {
        t if t.is_integer() => Some(DataType::Int64),
        t if t.is_numeric() => Some(DataType::Float64),
        DataType::Null => Some(DataType::Int64),
        _ => None,
    }
}

/// [`Scaled`]'s names, by which it travels to other nodes.
const TIMES: &str = "interval_times";
const DIVIDED: &str = "interval_divided_by";

/// [`Scaled`], dividing or multiplying.
fn function(divide: bool) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(Scaled {
        divide,
        signature: Signature::user_defined(Volatility::Immutable),
    }))
}

/// The function a fragment names, to decode it on another node.
pub(crate) fn function_named(name: &str) -> Option<Arc<ScalarUDF>> {
    match name {
        TIMES => Some(function(false)),
        DIVIDED => Some(function(true)),
        _ => None,
    }
}

/// An interval times, or divided by, a number; see the module's documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Scaled {
    divide: bool,
    signature: Signature,
}

const SPAN: DataType = DataType::Interval(IntervalUnit::MonthDayNano);

impl ScalarUDFImpl for Scaled {
    fn name(&self) -> &str {
        match self.divide {
            true => DIVIDED,
            false => TIMES,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        match arg_types {
            [DataType::Interval(_) | DataType::Null, n] => match factor_type(n) {
                // A divisor is a fraction: `INTERVAL '3 days' / 2` is 1 day 12 hours.
                Some(_) if self.divide => Ok(vec![SPAN, DataType::Float64]),
                Some(t) => Ok(vec![SPAN, t]),
                None => plan_err!("an interval is scaled by a number, not by {n}"),
            },
            _ => plan_err!("{}() takes an interval and a number", self.name()),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(SPAN)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [spans, factors] = arrays.as_slice() else {
            return plan_err!("{}() takes an interval and a number", self.name());
        };
        let spans = spans.as_primitive::<IntervalMonthDayNanoType>();
        let out = match factors.data_type() {
            DataType::Int64 => arrow::compute::try_binary::<_, _, _, IntervalMonthDayNanoType>(
                spans,
                factors.as_primitive::<Int64Type>(),
                times_integer,
            ),
            _ => {
                let factors = arrow::compute::cast(factors, &DataType::Float64)?;
                let divide = self.divide;
                arrow::compute::try_binary::<_, _, _, IntervalMonthDayNanoType>(
                    spans,
                    factors.as_primitive::<Float64Type>(),
                    |s, f| times_fraction(s, f, divide),
                )
            }
        }?;
        let out: ArrayRef = Arc::new(out);
        match scalar {
            true => Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)),
            false => Ok(ColumnarValue::Array(out)),
        }
    }
}

fn out_of_range() -> ArrowError {
    ArrowError::ComputeError("interval out of range".into())
}

/// `s` times `n`, each field exactly.
fn times_integer(s: IntervalMonthDayNano, n: i64) -> Result<IntervalMonthDayNano, ArrowError> {
    let small = |v: i32| {
        i64::from(v)
            .checked_mul(n)
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(out_of_range)
    };
    Ok(IntervalMonthDayNano {
        months: small(s.months)?,
        days: small(s.days)?,
        nanoseconds: s.nanoseconds.checked_mul(n).ok_or_else(out_of_range)?,
    })
}

const DAYS_PER_MONTH: f64 = 30.0;
const NANOS_PER_DAY: f64 = 86_400e9;

/// `s` times `f` (divided by `f` when `divide`), carrying a month's fraction into days and a
/// day's into time.
fn times_fraction(
    s: IntervalMonthDayNano,
    f: f64,
    divide: bool,
) -> Result<IntervalMonthDayNano, ArrowError> {
    if divide && f == 0.0 {
        return Err(ArrowError::DivideByZero);
    }
    let by = |v: f64| if divide { v / f } else { v * f };
    let months = by(f64::from(s.months));
    let days = by(f64::from(s.days)) + months.fract() * DAYS_PER_MONTH;
    let nanoseconds = by(s.nanoseconds as f64) + days.fract() * NANOS_PER_DAY;
    // Whole, and held by a signed integer of `bits` + 1 bits.
    let whole = |v: f64, bits: i32| {
        let bound = 2f64.powi(bits);
        (v.is_finite() && v >= -bound && v < bound)
            .then_some(v)
            .ok_or_else(out_of_range)
    };
    Ok(IntervalMonthDayNano {
        months: whole(months.trunc(), 31)? as i32,
        days: whole(days.trunc(), 31)? as i32,
        nanoseconds: whole(nanoseconds.round(), 63)? as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(months: i32, days: i32, nanoseconds: i64) -> IntervalMonthDayNano {
        IntervalMonthDayNano {
            months,
            days,
            nanoseconds,
        }
    }

    const HOUR: i64 = 3_600_000_000_000;

    #[test]
    fn an_integer_scales_each_field_and_fails_beyond_its_range() {
        assert_eq!(
            times_integer(span(1, 2, HOUR), 3).unwrap(),
            span(3, 6, 3 * HOUR)
        );
        assert_eq!(
            times_integer(span(1, -2, HOUR), -2).unwrap(),
            span(-2, 4, -2 * HOUR)
        );
        assert!(times_integer(span(0, i32::MAX, 0), 2).is_err());
        assert!(times_integer(span(0, 0, i64::MAX), 2).is_err());
    }

    #[test]
    fn a_fraction_carries_into_days_and_time_as_postgresql_does() {
        // PostgreSQL: '1 mon' * 1.5 = '1 mon 15 days'; '3 days' / 2 = '1 day 12:00:00';
        // '1 day' / 3 = '08:00:00'; '1 mon 1 day' * 0.5 = '15 days 12:00:00'.
        assert_eq!(
            times_fraction(span(1, 0, 0), 1.5, false).unwrap(),
            span(1, 15, 0)
        );
        assert_eq!(
            times_fraction(span(0, 3, 0), 2.0, true).unwrap(),
            span(0, 1, 12 * HOUR)
        );
        assert_eq!(
            times_fraction(span(0, 1, 0), 3.0, true).unwrap(),
            span(0, 0, 8 * HOUR)
        );
        assert_eq!(
            times_fraction(span(1, 1, 0), 0.5, false).unwrap(),
            span(0, 15, 12 * HOUR)
        );
        assert!(matches!(
            times_fraction(span(0, 1, 0), 0.0, true),
            Err(ArrowError::DivideByZero)
        ));
        assert!(times_fraction(span(0, 0, HOUR), 1e300, false).is_err());
        assert!(times_fraction(span(0, 1, 0), f64::NAN, false).is_err());
    }
}
