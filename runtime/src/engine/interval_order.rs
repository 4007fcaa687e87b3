//! Intervals compare by their length, as PostgreSQL compares them.
//!
//! Arrow orders `INTERVAL` values field by field (months, then days, then nanoseconds), so
//! DataFusion 55 answered `INTERVAL '1 day' = INTERVAL '24 hours'` false and `INTERVAL '25
//! hours' > INTERVAL '1 day'` false, and a timestamp difference (a duration) beside an interval
//! was no better: `ts2 - ts1 > INTERVAL '1 day'` was false for two days apart, so
//! `WHERE ended - started > INTERVAL '1 day'` found no row. PostgreSQL compares an interval by one number, a
//! month counting 30 days and a day 24 hours. [`IntervalOrder`], an analyzer rule run after
//! type coercion, writes every comparison (`=`, `<>`, `<`, `<=`, `>`, `>=`, `IS [NOT] DISTINCT
//! FROM`, `BETWEEN`, `IN` lists) with an interval on one side and an interval or a duration on
//! the other as the same comparison of [`interval_length`]s: that number in nanoseconds.
//! `ORDER BY` sorts intervals by that length too, and `min`/`max` of an interval is the value
//! first in that order. `GROUP BY`, `DISTINCT` and window functions' `ORDER BY` over intervals
//! still go field by field.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Decimal128Array, Decimal128Builder};
use arrow::datatypes::{
    DataType, DurationMicrosecondType, DurationMillisecondType, DurationNanosecondType,
    DurationSecondType, IntervalDayTimeType, IntervalMonthDayNanoType, IntervalUnit,
    IntervalYearMonthType, TimeUnit,
};
use datafusion::common::tree_node::{Transformed, TransformedResult};
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue, plan_err};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr::{
    AggregateFunction, Between, Cast, InList, ScalarFunction, Sort, TryCast,
};
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

use super::checked::{any_expression, rewrite_expressions};
use super::literals::comparison;

/// The name [`interval_length`] travels to other nodes under.
pub(super) const LENGTH: &str = "interval_length";

/// Nanoseconds in a day, and in PostgreSQL's month of 30 days.
const DAY: i128 = 86_400_000_000_000;
const MONTH: i128 = 30 * DAY;

/// Whether `t` is an interval or a duration.
fn timespan(t: &DataType) -> bool {
    matches!(t, DataType::Interval(_) | DataType::Duration(_))
}

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct IntervalOrder;

impl AnalyzerRule for IntervalOrder {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        rewrite_expressions(
            plan,
            |node| {
                any_expression(node, |e| {
                    matches!(e, Expr::Between(_) | Expr::InList(_))
                        || matches!(e, Expr::BinaryExpr(b) if comparison(b.op))
                })
            },
            by_length,
        )?
        .transform_up_with_subqueries(|node| match node {
            LogicalPlan::Sort(sort) => sorted_by_length(sort),
            LogicalPlan::Aggregate(aggregate) => extremes_by_length(aggregate),
            other => Ok(Transformed::no(other)),
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_interval_order"
    }
}

/// Whether values of `t` are ordered field by field where PostgreSQL orders them by length:
/// an interval with more than one field.
fn ordered_by_fields(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Interval(IntervalUnit::MonthDayNano | IntervalUnit::DayTime)
    )
}

/// `sort` ordering its intervals by their length.
fn sorted_by_length(
    mut sort: datafusion::logical_expr::Sort,
) -> DfResult<Transformed<LogicalPlan>> {
    let schema = Arc::clone(sort.input.schema());
    let mut changed = false;
    for key in &mut sort.expr {
        if ordered_by_fields(&key.expr.get_type(&schema)?) {
            key.expr = length_of(key.expr.clone());
            changed = true;
        }
    }
    Ok(Transformed::new_transformed(
        LogicalPlan::Sort(sort),
        changed,
    ))
}

/// `aggregate` with each `min`/`max` of an interval taken by length: the first value in the
/// order of lengths (NULLs last, so that they count only when every value is NULL).
fn extremes_by_length(aggregate: Aggregate) -> DfResult<Transformed<LogicalPlan>> {
    let schema = Arc::clone(aggregate.input.schema());
    let mut taken = Vec::with_capacity(aggregate.aggr_expr.len());
    for e in &aggregate.aggr_expr {
        taken.push(by_length_extreme(e, &schema)?);
    }
    if taken.iter().all(Option::is_none) {
        return Ok(Transformed::no(LogicalPlan::Aggregate(aggregate)));
    }
    let aggr_expr = aggregate
        .aggr_expr
        .into_iter()
        .zip(taken)
        .map(|(e, taken)| taken.unwrap_or(e))
        .collect();
    Ok(Transformed::yes(LogicalPlan::Aggregate(
        Aggregate::try_new(aggregate.input, aggregate.group_expr, aggr_expr)?,
    )))
}

/// `e` as `first_value` in the order of lengths, under `e`'s name, when it is `min` or `max`
/// of an interval.
fn by_length_extreme(e: &Expr, schema: &DFSchema) -> DfResult<Option<Expr>> {
    let (inner, name) = match e {
        Expr::Alias(a) => (a.expr.as_ref(), a.name.clone()),
        other => (other, other.schema_name().to_string()),
    };
    let Expr::AggregateFunction(f) = inner else {
        return Ok(None);
    };
    let [arg] = f.params.args.as_slice() else {
        return Ok(None);
    };
    let wanted = matches!(f.func.name(), "min" | "max")
        && f.params.order_by.is_empty()
        && ordered_by_fields(&arg.get_type(schema)?);
    if !wanted {
        return Ok(None);
    }
    let order = Sort::new(length_of(arg.clone()), f.func.name() == "min", false);
    let first = Expr::AggregateFunction(AggregateFunction::new_udf(
        datafusion::functions_aggregate::first_last::first_value_udaf(),
        vec![arg.clone()],
        false,
        f.params.filter.clone(),
        vec![order],
        None,
    ));
    Ok(Some(first.alias(name)))
}

/// `e` without the casts type coercion put between an interval and a duration.
fn uncast(e: &Expr, schema: &DFSchema) -> DfResult<(Expr, DataType)> {
    if let Expr::Cast(Cast { expr, field, .. }) | Expr::TryCast(TryCast { expr, field, .. }) = e
        && timespan(field.data_type())
    {
        let inner = expr.get_type(schema)?;
        if timespan(&inner) {
            return Ok((expr.as_ref().clone(), inner));
        }
    }
    Ok((e.clone(), e.get_type(schema)?))
}

/// The operands as lengths, when one is an interval and every other an interval or duration.
fn lengths(operands: &[&Expr], schema: &DFSchema) -> DfResult<Option<Vec<Expr>>> {
    let mut uncast_all = Vec::with_capacity(operands.len());
    for e in operands {
        uncast_all.push(uncast(e, schema)?);
    }
    let any_interval = uncast_all
        .iter()
        .any(|(_, t)| matches!(t, DataType::Interval(_)));
    let all_spans = uncast_all
        .iter()
        .all(|(e, t)| timespan(t) || matches!(e, Expr::Literal(v, _) if v.is_null()));
    if !(any_interval && all_spans) {
        return Ok(None);
    }
    Ok(Some(
        uncast_all.into_iter().map(|(e, _)| length_of(e)).collect(),
    ))
}

fn length_of(e: Expr) -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(interval_length(), vec![e]))
}

/// `e` comparing lengths, when it compares intervals.
fn by_length(e: Expr, schema: &DFSchema) -> DfResult<Transformed<Expr>> {
    match &e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if comparison(*op) => {
            match lengths(&[left, right], schema)? {
                Some(mut l) => {
                    let right = l.pop().expect("two operands");
                    let left = l.pop().expect("two operands");
                    let e = Expr::BinaryExpr(BinaryExpr::new(Box::new(left), *op, Box::new(right)));
                    Ok(Transformed::yes(e))
                }
                None => Ok(Transformed::no(e)),
            }
        }
        Expr::Between(Between {
            expr,
            negated,
            low,
            high,
        }) => match lengths(&[expr, low, high], schema)? {
            Some(mut l) => {
                let high = l.pop().expect("three operands");
                let low = l.pop().expect("three operands");
                let expr = l.pop().expect("three operands");
                let e = Expr::Between(Between::new(
                    Box::new(expr),
                    *negated,
                    Box::new(low),
                    Box::new(high),
                ));
                Ok(Transformed::yes(e))
            }
            None => Ok(Transformed::no(e)),
        },
        Expr::InList(InList {
            expr,
            list,
            negated,
        }) => {
            let operands: Vec<&Expr> = std::iter::once(expr.as_ref()).chain(list).collect();
            match lengths(&operands, schema)? {
                Some(mut l) => {
                    let expr = l.remove(0);
                    let e = Expr::InList(InList::new(Box::new(expr), l, *negated));
                    Ok(Transformed::yes(e))
                }
                None => Ok(Transformed::no(e)),
            }
        }
        _ => Ok(Transformed::no(e)),
    }
}

/// The function, by the name it travels under.
pub(crate) fn function_named(name: &str) -> Option<Arc<ScalarUDF>> {
    (name == LENGTH).then(interval_length)
}

/// `interval_length(x)`: an interval's or a duration's length in nanoseconds, a month counting
/// 30 days and a day 24 hours (PostgreSQL's `interval_cmp_value`), as a `DECIMAL(38, 0)`.
pub(super) fn interval_length() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(Length {
        signature: Signature::any(1, Volatility::Immutable),
    }))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Length {
    signature: Signature,
}

impl ScalarUDFImpl for Length {
    fn name(&self) -> &str {
        LENGTH
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        match args {
            [t] if timespan(t) || t.is_null() => Ok(DataType::Decimal128(38, 0)),
            _ => plan_err!("{LENGTH}() takes an interval or a duration"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let scalar = matches!(args.args[..], [ColumnarValue::Scalar(_)]);
        let [arg] = args.args.as_slice() else {
            return plan_err!("{LENGTH}() takes one argument");
        };
        let array = arg.to_array(1)?;
        let out = lengths_of(array.as_ref())?;
        Ok(match scalar {
            true => ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?),
            false => ColumnarValue::Array(Arc::new(out)),
        })
    }
}

/// Each interval's or duration's length in `a`; see [`interval_length`].
pub(super) fn lengths_of(a: &dyn Array) -> DfResult<Decimal128Array> {
    let n = a.len();
    let each = |f: &dyn Fn(usize) -> i128| -> Vec<Option<i128>> {
        (0..n).map(|i| a.is_valid(i).then(|| f(i))).collect()
    };
    let values = match a.data_type() {
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            let v = a.as_primitive::<IntervalMonthDayNanoType>();
            each(&|i| {
                let x = v.value(i);
                i128::from(x.months) * MONTH + i128::from(x.days) * DAY + i128::from(x.nanoseconds)
            })
        }
        DataType::Interval(IntervalUnit::DayTime) => {
            let v = a.as_primitive::<IntervalDayTimeType>();
            each(&|i| {
                let x = v.value(i);
                i128::from(x.days) * DAY + i128::from(x.milliseconds) * 1_000_000
            })
        }
        DataType::Interval(IntervalUnit::YearMonth) => {
            let v = a.as_primitive::<IntervalYearMonthType>();
            each(&|i| i128::from(v.value(i)) * MONTH)
        }
        DataType::Duration(unit) => {
            let (scale, values): (i128, Vec<Option<i64>>) = match unit {
                TimeUnit::Second => (
                    1_000_000_000,
                    a.as_primitive::<DurationSecondType>().iter().collect(),
                ),
                TimeUnit::Millisecond => (
                    1_000_000,
                    a.as_primitive::<DurationMillisecondType>().iter().collect(),
                ),
                TimeUnit::Microsecond => (
                    1_000,
                    a.as_primitive::<DurationMicrosecondType>().iter().collect(),
                ),
                TimeUnit::Nanosecond => (
                    1,
                    a.as_primitive::<DurationNanosecondType>().iter().collect(),
                ),
            };
            values
                .into_iter()
                .map(|v| v.map(|v| i128::from(v) * scale))
                .collect()
        }
        DataType::Null => vec![None; n],
        other => return plan_err!("{LENGTH}() takes an interval or a duration, not {other}"),
    };
    let mut out = Decimal128Builder::with_capacity(n).with_data_type(DataType::Decimal128(38, 0));
    out.extend(values);
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    /// When an upgrade answers right, this fails and the rule can go.
    #[tokio::test]
    async fn datafusion_still_compares_intervals_field_by_field() {
        let ctx = datafusion::prelude::SessionContext::new();
        let sql = "SELECT INTERVAL '1 day' = INTERVAL '24 hours', \
                   TIMESTAMP '2024-01-03' - TIMESTAMP '2024-01-01' > INTERVAL '1 day'";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let answers: Vec<bool> = batches[0]
            .columns()
            .iter()
            .map(|c| arrow::array::AsArray::as_boolean(c).value(0))
            .collect();
        assert_eq!(answers, [false, false], "PostgreSQL: true, true");
    }
}
