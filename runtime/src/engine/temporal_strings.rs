//! A string beside a date, time or timestamp reads as a value of that type.
//!
//! DataFusion's type coercion brings a string compared with (or unified with) a `TIMESTAMP` of
//! any unit to a nanosecond timestamp, whose range is 1677–2262: `valid_to =
//! '9999-12-31 23:59:59'`, the usual open end of a slowly changing dimension, failed with
//! "Overflow converting … to Nanosecond" although the column (microseconds) holds that value,
//! and `CAST('9999-12-31' AS TIMESTAMP)` is fine. PostgreSQL types such a literal as the other
//! operand; [`TimestampStrings`], an analyzer rule that runs before DataFusion's type coercion,
//! does the same: a string literal in a comparison, `BETWEEN`, `IN` list, `CASE` or unifying
//! function beside a timestamp is cast to that timestamp's type (its unit and its zone) when
//! that type holds it exactly or a nanosecond cannot hold it.
//!
//! A value with digits below the timestamp's unit (`'… 12:00:00.5'` beside a `TIMESTAMP(0)`)
//! cannot be read in that type without changing it, and left to DataFusion it was changed
//! anyway: its simplifier, unwrapping the cast of the column to nanoseconds, truncated the
//! literal to the column's unit, so `at = '… 12:00:00.5'` matched 12:00:00 and `at >= …`
//! took 12:00:00 in. A comparison with such a value is rewritten as the same comparison with
//! the value's floor in the column's unit, which the column's values (whole units) meet
//! exactly as they meet the value: `at < v` and `at <= v` are `at <= floor(v)`, `at > v` and
//! `at >= v` are `at > floor(v)`, `at = v` holds for no row (and is NULL where `at` is), `at
//! <> v` for every row that has a value; an `IN` list drops such a value, and `BETWEEN` is its
//! two comparisons. Elsewhere (a `CASE` result, `coalesce`) the value is left to DataFusion,
//! which keeps it in nanoseconds.
//!
//! Arrow reads a timestamp's text only with two-digit months, days and hours and with its
//! seconds: `ts >= '2024-06-01 08:00'`, `TIMESTAMP '2024-6-1 8:00'` and `CAST('…' AS
//! TIMESTAMP)` failed ("error parsing time"), where PostgreSQL and DuckDB read them, and where
//! Arrow reads a `DATE` or `TIME` so written. Such a literal cast to a timestamp, or beside one,
//! is written out in full first ([`written_out`]); values read from a column are not.
//!
//! DataFusion types a function's result while it plans the SQL, before any analyzer rule:
//! `coalesce(ts, '2024-12-31')` failed there ("Expect to get struct but got Timestamp"), and
//! `nvl(d, '2024-12-31')` and `ifnull` answered a string. [`TemporalFirst`] wraps those
//! functions so that a date, time or timestamp among strings (and NULLs) makes every argument
//! that type, as PostgreSQL's `COALESCE` does (`nvl` of two timestamps answered a string too).

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ExprSchema, Result as DfResult, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr::{Between, BinaryExpr, Cast, InList, TryCast};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExprSchemable, LogicalPlan, Operator, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, binary_expr, lit,
};
use datafusion::optimizer::AnalyzerRule;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};

use super::checked::{any_expression, rewrite_expressions};
use super::literals::{comparison, unified_groups};

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct TimestampStrings;

impl AnalyzerRule for TimestampStrings {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        rewrite_expressions(
            plan,
            |node| any_expression(node, string_literal),
            |e, schema| Ok(typed(e, schema)),
        )
    }

    fn name(&self) -> &str {
        "apiary_timestamp_strings"
    }
}

fn string_literal(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Literal(
            ScalarValue::Utf8(_) | ScalarValue::LargeUtf8(_) | ScalarValue::Utf8View(_),
            _
        )
    )
}

/// `e` with the string literals of each group it unifies cast to the group's timestamp type,
/// and its comparisons with a string below the timestamp's unit rewritten (see the module's
/// documentation).
fn typed(mut e: Expr, schema: &DFSchema) -> Transformed<Expr> {
    let written = literals_in_full(&mut e, schema);
    let mut changed = below_unit(&mut e, schema) || written;
    for group in unified_groups(&mut e) {
        let Some(timestamp) = group.iter().find_map(|m| timestamp_of(m, schema)) else {
            continue;
        };
        // DataFusion compares at nanoseconds (1677-2262). A value the timestamp's own unit
        // holds exactly, or one beyond that range, is read in the timestamp's type; one with
        // digits below its unit is left to DataFusion (a comparison with one was rewritten
        // above).
        let typed = |m: &Expr| reading(m, &timestamp).is_some_and(|r| r.exact || !r.nanos);
        for member in group.into_iter().filter(|m| typed(m)) {
            *member = in_type(
                std::mem::replace(member, lit(ScalarValue::Null)),
                &timestamp,
            );
            changed = true;
        }
    }
    Transformed::new_transformed(e, changed)
}

/// Writes out in full ([`written_out`]) the string literals `e` casts to a timestamp or unifies
/// with one, and says whether it changed any.
fn literals_in_full(e: &mut Expr, schema: &DFSchema) -> bool {
    let full = |m: &mut Expr| match m {
        Expr::Literal(v, _) => text_in_full(v),
        _ => false,
    };
    match e {
        Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field })
            if matches!(field.data_type(), DataType::Timestamp(..)) =>
        {
            full(expr)
        }
        _ => {
            let mut changed = false;
            for group in unified_groups(e) {
                if group.iter().any(|m| timestamp_of(m, schema).is_some()) {
                    for member in group {
                        changed |= full(member);
                    }
                }
            }
            changed
        }
    }
}

/// `v`, a value bound to a parameter of type `to`, with its text written out in full
/// ([`written_out`]) when it is a string and `to` a timestamp.
pub(super) fn in_full(mut v: ScalarValue, to: &DataType) -> ScalarValue {
    if matches!(to, DataType::Timestamp(..)) {
        text_in_full(&mut v);
    }
    v
}

/// Writes `v`'s text out in full ([`written_out`]) when it is a string that needs it, and says
/// whether it did.
fn text_in_full(v: &mut ScalarValue) -> bool {
    let text = match v {
        ScalarValue::Utf8(Some(t))
        | ScalarValue::LargeUtf8(Some(t))
        | ScalarValue::Utf8View(Some(t)) => t,
        _ => return false,
    };
    match written_out(text) {
        Some(full) => {
            *text = full;
            true
        }
        None => false,
    }
}

/// `text`, a timestamp written with a one-digit month, day or hour or without its seconds
/// (`2024-6-1 8:00`), written out as Arrow reads it (`2024-06-01 08:00:00`); its fraction
/// and zone are kept as written. None when it is not such a timestamp, is written out already,
/// or does not read as one even so.
fn written_out(text: &str) -> Option<String> {
    let mut t = Cursor { text, at: 0 };
    let year = t.number(4, 4)?;
    let month = t.after(b'-')?.number(1, 2)?;
    let day = t.after(b'-')?.number(1, 2)?;
    let date = format!("{year}-{month}-{day}");
    let full = match t.next() {
        None => date,
        Some(sep @ (b' ' | b'T' | b't')) => {
            let hour = t.after(sep)?.number(1, 2)?;
            let minute = t.after(b':')?.number(2, 2)?;
            let second = match t.next() {
                Some(b':') => t.after(b':')?.number(2, 2)?,
                _ => "00".to_string(),
            };
            format!("{date}{}{hour}:{minute}:{second}{}", sep as char, t.rest())
        }
        Some(_) => return None,
    };
    // A text that is no timestamp either way fails naming what the client wrote.
    let reads = arrow::compute::kernels::cast_utils::string_to_datetime(&chrono::Utc, &full);
    (full != text && reads.is_ok()).then_some(full)
}

/// A place in a text [`written_out`] reads.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl Cursor<'_> {
    fn next(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    /// Past `c`, when it is next.
    fn after(&mut self, c: u8) -> Option<&mut Self> {
        (self.next() == Some(c)).then(|| {
            self.at += 1;
            self
        })
    }

    /// The next run of `min` to `max` digits (no more follow), zero-padded to `max`.
    fn number(&mut self, min: usize, max: usize) -> Option<String> {
        let start = self.at;
        while self.at - start < max && self.next().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        let digits = &self.text[start..self.at];
        (digits.len() >= min && !self.next().is_some_and(|c| c.is_ascii_digit()))
            .then(|| format!("{digits:0>max$}"))
    }
}

/// The timestamp type of `e`, unless it is a string literal.
fn timestamp_of(e: &Expr, schema: &DFSchema) -> Option<DataType> {
    match e.get_type(schema as &dyn ExprSchema) {
        Ok(t @ DataType::Timestamp(..)) if !string_literal(e) => Some(t),
        _ => None,
    }
}

/// `e` read as a value of `timestamp`'s type.
fn in_type(e: Expr, timestamp: &DataType) -> Expr {
    Expr::Cast(Cast::new(Box::new(e), timestamp.clone()))
}

/// A string literal read as a timestamp.
struct Reading {
    /// The value in the timestamp's type: its floor in the timestamp's unit, as Arrow reads a
    /// string with more digits (chrono's seconds since the epoch and the fraction above them).
    floor: ScalarValue,
    /// Whether the string has no digits below the timestamp's unit.
    exact: bool,
    /// Whether a nanosecond timestamp holds the value (1677-2262).
    nanos: bool,
}

/// `e`, a non-NULL string literal, read as a value of `timestamp` (None when it is not one).
fn reading(e: &Expr, timestamp: &DataType) -> Option<Reading> {
    let Expr::Literal(v, _) = e else { return None };
    if !string_literal(e) || v.is_null() {
        return None;
    }
    let DataType::Timestamp(unit, zone) = timestamp else {
        return None;
    };
    let floor = v.cast_to(timestamp).ok()?;
    let at = |u: TimeUnit| DataType::Timestamp(u, zone.clone());
    let nanos = v.cast_to(&at(TimeUnit::Nanosecond)).is_ok();
    // Whether the value is exact is read in the finest unit that holds it.
    let finer = [
        TimeUnit::Nanosecond,
        TimeUnit::Microsecond,
        TimeUnit::Millisecond,
    ]
    .into_iter()
    .take_while(|u| u != unit)
    .find_map(|u| Some((at(u), v.cast_to(&at(u)).ok()?)));
    let exact = match finer {
        Some((fine, value)) => floor.cast_to(&fine).is_ok_and(|back| back == value),
        // No finer unit holds it (beyond 1677-2262 at microseconds): its text says.
        None => !digits_below(&v.to_string(), unit),
    };
    Some(Reading {
        floor,
        exact,
        nanos,
    })
}

/// Whether `text`, a timestamp, has a non-zero digit of its seconds' fraction below `unit`.
fn digits_below(text: &str, unit: &TimeUnit) -> bool {
    let held = match unit {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        TimeUnit::Microsecond => 6,
        TimeUnit::Nanosecond => 9,
    };
    // The fraction follows the seconds' `.`, the only one in a timestamp's text (a zone's
    // offset follows it: `… 00:00:00.0000005+01:00`).
    let Some((_, fraction)) = text.split_once('.') else {
        return false;
    };
    fraction
        .chars()
        .take_while(char::is_ascii_digit)
        .skip(held)
        .any(|d| d != '0')
}

/// Rewrites `e` when it compares a timestamp with a string below the timestamp's unit, and
/// says whether it did.
fn below_unit(e: &mut Expr, schema: &DFSchema) -> bool {
    rewrite_below_unit(
        e,
        &Reader {
            timestamp: &|e| timestamp_of(e, schema).map(|t| (e.clone(), t)),
            below: &|v, t| reading(v, t).filter(|r| !r.exact).map(|r| r.floor),
            bound: &|b, t| match reading(b, t) {
                Some(_) => in_type(b.clone(), t),
                None => b.clone(),
            },
        },
    )
}

/// How [`rewrite_below_unit`] reads the expressions of a comparison.
struct Reader<'a> {
    /// The timestamp an expression compares (itself, or what it casts to a finer unit), and
    /// that timestamp's type.
    timestamp: &'a dyn Fn(&Expr) -> Option<(Expr, DataType)>,
    /// The floor, in a timestamp type, of a value with digits below its unit.
    below: &'a dyn Fn(&Expr, &DataType) -> Option<ScalarValue>,
    /// A `BETWEEN` bound that is not below the unit, as the timestamp meets it.
    bound: &'a dyn Fn(&Expr, &DataType) -> Expr,
}

/// Rewrites `e` when it compares a timestamp with a value below its unit (a comparison,
/// `BETWEEN` or `IN`), as `reader` reads them, and says whether it did.
fn rewrite_below_unit(e: &mut Expr, reader: &Reader) -> bool {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (x, timestamp, value, op) =
                match ((reader.timestamp)(left), (reader.timestamp)(right)) {
                    (Some((x, t)), _) => (x, t, right, *op),
                    (None, Some((x, t))) => match op.swap() {
                        Some(swapped) => (x, t, left, swapped),
                        None => return false,
                    },
                    _ => return false,
                };
            match (reader.below)(value, &timestamp).and_then(|floor| floored(x, op, floor)) {
                Some(rewritten) => {
                    *e = rewritten;
                    true
                }
                None => false,
            }
        }
        Expr::Between(Between {
            expr,
            negated,
            low,
            high,
        }) => {
            let Some((x, timestamp)) = (reader.timestamp)(expr) else {
                return false;
            };
            let (from, to) = (
                (reader.below)(low, &timestamp),
                (reader.below)(high, &timestamp),
            );
            if from.is_none() && to.is_none() {
                return false;
            }
            let bound = |b: &Expr, floor: Option<ScalarValue>, op: Operator| match floor {
                Some(f) => floored(x.clone(), op, f),
                None => Some(binary_expr(
                    expr.as_ref().clone(),
                    op,
                    (reader.bound)(b, &timestamp),
                )),
            };
            let (Some(from), Some(to)) = (
                bound(low, from, Operator::GtEq),
                bound(high, to, Operator::LtEq),
            ) else {
                return false;
            };
            let both = from.and(to);
            *e = match negated {
                true => Expr::Not(Box::new(both)),
                false => both,
            };
            true
        }
        Expr::InList(InList {
            expr,
            list,
            negated,
        }) => {
            let Some((x, timestamp)) = (reader.timestamp)(expr) else {
                return false;
            };
            let Some(first) = list.iter().find_map(|m| (reader.below)(m, &timestamp)) else {
                return false;
            };
            // No value of the timestamp's type equals one below its unit.
            list.retain(|m| (reader.below)(m, &timestamp).is_none());
            if list.is_empty() {
                let op = match negated {
                    true => Operator::NotEq,
                    false => Operator::Eq,
                };
                match floored(x, op, first) {
                    Some(rewritten) => *e = rewritten,
                    None => return false,
                }
            }
            true
        }
        _ => false,
    }
}

/// `x op v`, for `x` of a timestamp type and `v` a value with digits below its unit whose
/// floor in that unit is `floor`, as a comparison of `x` with `floor` (None for an operator
/// that is not a comparison).
fn floored(x: Expr, op: Operator, floor: ScalarValue) -> Option<Expr> {
    let f = || lit(floor.clone());
    Some(match op {
        Operator::Lt | Operator::LtEq => x.lt_eq(f()),
        Operator::Gt | Operator::GtEq => x.gt(f()),
        // Never true, and NULL where `x` is, as `x = v` is (`x` once: it may be volatile).
        Operator::Eq => x.is_null().and(lit(ScalarValue::Boolean(None))),
        Operator::NotEq => x.is_not_null().or(lit(ScalarValue::Boolean(None))),
        Operator::IsNotDistinctFrom => lit(false),
        Operator::IsDistinctFrom => lit(true),
        _ => return None,
    })
}

/// A comparison of a timestamp with a value below its unit once types are coerced: DataFusion
/// casts the column to the value's finer unit (`CAST(at AS TIMESTAMP(9)) >= TIMESTAMP '…
/// 12:00:00.5'`, or a parameter bound in microseconds), and its simplifier, unwrapping that
/// cast, truncated the value to the column's unit (`at = TIMESTAMP '… 12:00:00.5'` matched
/// 12:00:00). Such a comparison is rewritten with the value's floor in the column's unit, as
/// [`TimestampStrings`] does for a string; a value the column's unit holds exactly is left to
/// DataFusion. The value is any constant of literals and casts, folded here.
#[derive(Debug, Default)]
pub(super) struct SubUnitValues;

impl AnalyzerRule for SubUnitValues {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        rewrite_expressions(
            plan,
            |node| {
                any_expression(node, |e| {
                    matches!(e, Expr::InList(_) | Expr::Between(_))
                        || matches!(e, Expr::BinaryExpr(b) if comparison(b.op))
                })
            },
            |mut e, schema| {
                if coerced_below_unit(&mut e, schema) {
                    // A `BETWEEN` with one bound below the unit keeps its other as it was,
                    // which may be a value DataFusion folds only later (a function's): that
                    // comparison is written with floors too.
                    return e
                        .transform_up(|mut c| {
                            let changed = unfolded_below_unit(&mut c, schema);
                            Ok(Transformed::new_transformed(c, changed))
                        })
                        .map(|t| Transformed::yes(t.data));
                }
                let changed = unfolded_below_unit(&mut e, schema);
                Ok(Transformed::new_transformed(e, changed))
            },
        )
    }

    fn name(&self) -> &str {
        "apiary_sub_unit_values"
    }
}

/// `x` when `e` is `x`, of a timestamp type, cast to a timestamp of a finer unit.
fn widened(e: &Expr, schema: &DFSchema) -> Option<(Expr, DataType)> {
    let Expr::Cast(Cast { expr, field }) = e else {
        return None;
    };
    let DataType::Timestamp(fine, zone) = field.data_type() else {
        return None;
    };
    // Only a change of unit: a naive timestamp cast into a zone is read in that zone.
    match expr.get_type(schema as &dyn ExprSchema) {
        Ok(t @ DataType::Timestamp(coarse, _))
            if per(&coarse) > per(fine) && matches!(&t, DataType::Timestamp(_, z) if z == zone) =>
        {
            Some((expr.as_ref().clone(), t))
        }
        _ => None,
    }
}

/// Nanoseconds in one `unit`.
fn per(unit: &TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// `e`'s value when it is a constant of literals, casts and arithmetic (never a function:
/// `now()` folded here would be another instant than the statement's).
fn folded(e: &Expr) -> Option<ScalarValue> {
    if let Expr::Literal(v, _) = e {
        return Some(v.clone());
    }
    if !built_of_constants(e, false) {
        return None;
    }
    let simplifier = datafusion::optimizer::simplify_expressions::ExprSimplifier::new(
        SimplifyContext::default(),
    );
    match simplifier.simplify(e.clone()) {
        Ok(Expr::Literal(v, _)) => Some(v),
        _ => None,
    }
}

/// The floor of `v`, a constant timestamp of a finer unit, in `coarse` (a timestamp type),
/// when it has digits below that unit.
fn inexact_in(v: &Expr, coarse: &DataType) -> Option<ScalarValue> {
    let DataType::Timestamp(unit, zone) = coarse else {
        return None;
    };
    let value = folded(v)?;
    let (n, fine) = match value {
        ScalarValue::TimestampSecond(Some(n), _) => (n, TimeUnit::Second),
        ScalarValue::TimestampMillisecond(Some(n), _) => (n, TimeUnit::Millisecond),
        ScalarValue::TimestampMicrosecond(Some(n), _) => (n, TimeUnit::Microsecond),
        ScalarValue::TimestampNanosecond(Some(n), _) => (n, TimeUnit::Nanosecond),
        _ => return None,
    };
    let ratio = per(unit) / per(&fine);
    if ratio <= 1 || n.rem_euclid(ratio) == 0 {
        return None;
    }
    let floor = Some(n.div_euclid(ratio));
    Some(match unit {
        TimeUnit::Second => ScalarValue::TimestampSecond(floor, zone.clone()),
        TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(floor, zone.clone()),
        TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(floor, zone.clone()),
        TimeUnit::Nanosecond => return None,
    })
}

/// [`below_unit`] once types are coerced: rewrites `e` when it compares a timestamp, cast to a
/// finer unit, with a constant below the timestamp's unit, and says whether it did.
fn coerced_below_unit(e: &mut Expr, schema: &DFSchema) -> bool {
    rewrite_below_unit(
        e,
        &Reader {
            timestamp: &|e| widened(e, schema),
            below: &inexact_in,
            bound: &|b, _| b.clone(),
        },
    )
}

/// A comparison of a timestamp, cast to a finer unit, with a constant [`folded`] cannot fold
/// here (`now() - INTERVAL '1' HOUR`, `to_timestamp('…')`): DataFusion folds it while it
/// optimizes and then truncates it as above, so `at >= now() - INTERVAL '1' HOUR` took in a
/// row up to one unit older than the bound. Its value is not known here, so the comparison is
/// written with two floors in the timestamp's unit, of the value and of the value less one of
/// its own units, which DataFusion folds in turn: over whole units, `x < v` is `x <=
/// floor(v - 1)`, `x <= v` is `x <= floor(v)`, `x > v` is `x > floor(v)`, `x >= v` is `x >
/// floor(v - 1)`, and `x = v` is both halves of a range that is empty when `v` has digits below
/// the unit. Rewrites `e` when it is such a comparison (or a `BETWEEN` with such a bound), and
/// says whether it did.
fn unfolded_below_unit(e: &mut Expr, schema: &DFSchema) -> bool {
    let rewritten = match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            match (widened(left, schema), widened(right, schema)) {
                (Some((x, coarse)), None) => floors(x, *op, right, &coarse),
                (None, Some((x, coarse))) => op.swap().and_then(|op| floors(x, op, left, &coarse)),
                _ => None,
            }
        }
        Expr::Between(Between {
            expr,
            negated,
            low,
            high,
        }) => widened(expr, schema).and_then(|(x, coarse)| {
            let bound = |b: &Expr, op: Operator| {
                floors(x.clone(), op, b, &coarse)
                    .ok_or_else(|| binary_expr(expr.as_ref().clone(), op, b.clone()))
            };
            let (from, to) = (bound(low, Operator::GtEq), bound(high, Operator::LtEq));
            if from.is_err() && to.is_err() {
                return None;
            }
            let both = from.unwrap_or_else(|e| e).and(to.unwrap_or_else(|e| e));
            Some(match negated {
                true => Expr::Not(Box::new(both)),
                false => both,
            })
        }),
        _ => None,
    };
    match rewritten {
        Some(rewritten) => {
            *e = rewritten;
            true
        }
        None => false,
    }
}

/// `x op v` over the whole units of `coarse` (`x`'s timestamp type), for `v` a constant of a
/// finer unit that [`folded`] cannot fold, as comparisons of `x` with floors of `v` in that unit
/// (None when `v` is not such a constant, or `op` is not a comparison).
fn floors(x: Expr, op: Operator, v: &Expr, coarse: &DataType) -> Option<Expr> {
    let DataType::Timestamp(unit, _) = coarse else {
        return None;
    };
    let Ok(DataType::Timestamp(fine, _)) = v.get_type(&DFSchema::empty()) else {
        return None;
    };
    if !unfolded_constant(v) || per(unit) <= per(&fine) {
        return None;
    }
    let ratio = per(unit) / per(&fine);
    // The floor, in `coarse`, of `v` less `less` of its own units: integer arithmetic on the
    // value's count of units, floored below zero as above it.
    let floor = |less: i64| {
        let n = Expr::Cast(Cast::new(Box::new(v.clone()), DataType::Int64)) - lit(less);
        let r = || lit(ratio);
        let below = ((n.clone() % r()) + r()) % r();
        Expr::Cast(Cast::new(Box::new((n - below) / r()), coarse.clone()))
    };
    let at_most = || x.clone().lt_eq(floor(0));
    let above = || x.clone().gt(floor(1));
    let equal = || at_most().and(above());
    // `x` is read twice below: never a volatile one (two reads could meet both halves).
    let twice = |e: Expr| (!x.is_volatile()).then_some(e);
    match op {
        Operator::Lt => Some(x.clone().lt_eq(floor(1))),
        Operator::LtEq => Some(at_most()),
        Operator::Gt => Some(x.clone().gt(floor(0))),
        Operator::GtEq => Some(above()),
        Operator::Eq => twice(equal()),
        Operator::NotEq => twice(x.clone().gt(floor(0)).or(x.clone().lt_eq(floor(1)))),
        // Equal, or both NULL: a NULL value leaves both halves NULL, never true.
        Operator::IsNotDistinctFrom | Operator::IsDistinctFrom => {
            let same = equal()
                .is_true()
                .or(x.clone().is_null().and(v.clone().is_null()));
            twice(match op {
                Operator::IsDistinctFrom => Expr::Not(Box::new(same)),
                _ => same,
            })
        }
        _ => None,
    }
}

/// Whether `e` is a constant DataFusion folds while it optimizes: literals, casts, arithmetic
/// and functions that are not volatile, without a column, a parameter or a subquery (a
/// parameter is bound to a literal before the plan is analyzed again).
fn unfolded_constant(e: &Expr) -> bool {
    built_of_constants(e, true) && !e.is_volatile() && folded(e).is_none()
}

/// Whether `e` is built of literals, casts and arithmetic only (and of functions, when
/// `functions`).
fn built_of_constants(e: &Expr, functions: bool) -> bool {
    !e.exists(|n| {
        Ok(!(matches!(
            n,
            Expr::Literal(..)
                | Expr::Cast(_)
                | Expr::TryCast(_)
                | Expr::BinaryExpr(_)
                | Expr::Negative(_)
        ) || (functions && matches!(n, Expr::ScalarFunction(_)))))
    })
    .unwrap_or(true)
}

/// The functions [`TemporalFirst`] wraps (`ifnull` is `nvl`'s alias).
const WRAPPED: [&str; 2] = ["coalesce", "nvl"];

/// `registered`'s [`WRAPPED`] functions, wrapped.
pub(super) fn wrap(registered: impl Fn(&str) -> Option<Arc<ScalarUDF>>) -> Vec<Arc<ScalarUDF>> {
    WRAPPED
        .iter()
        .filter_map(|name| registered(name))
        .map(|inner| {
            let signature = Signature::user_defined(inner.signature().volatility);
            Arc::new(ScalarUDF::new_from_impl(TemporalFirst { inner, signature }))
        })
        .collect()
}

/// A function of DataFusion's whose arguments are of a date, time or timestamp type when one
/// of them is and the others are strings, NULL or the same type; see the module's
/// documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TemporalFirst {
    inner: Arc<ScalarUDF>,
    /// User-defined, so that [`ScalarUDFImpl::coerce_types`] is asked (`nvl` lists its types).
    signature: Signature,
}

/// The one temporal type among `types` when every other is a string, NULL or that type (a
/// string literal may have been cast to it already, by [`TimestampStrings`]).
fn temporal_among_strings(types: &[DataType]) -> Option<DataType> {
    let temporal = |t: &DataType| {
        matches!(
            t,
            DataType::Timestamp(..)
                | DataType::Date32
                | DataType::Date64
                | DataType::Time32(_)
                | DataType::Time64(_)
        )
    };
    let mut found: Option<&DataType> = None;
    for t in types {
        match t {
            t if temporal(t) => match found {
                Some(f) if f != t => return None,
                _ => found = Some(t),
            },
            t if t.is_string() => {}
            DataType::Null => {}
            _ => return None,
        }
    }
    found.cloned()
}

impl ScalarUDFImpl for TemporalFirst {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        // `nvl`'s own signature takes two arguments; this one is open.
        if self.inner.name() == "nvl" && arg_types.len() != 2 {
            return datafusion::common::plan_err!(
                "{}() takes 2 arguments, {} given",
                self.inner.name(),
                arg_types.len()
            );
        }
        if let Some(t) = temporal_among_strings(arg_types) {
            return Ok(vec![t; arg_types.len()]);
        }
        // Otherwise as DataFusion coerces them for the function's own signature.
        let fields: Vec<FieldRef> = arg_types
            .iter()
            .map(|t| Arc::new(Field::new("argument", t.clone(), true)))
            .collect();
        Ok(
            datafusion::logical_expr::type_coercion::functions::fields_with_udf(
                &fields,
                self.inner.as_ref(),
            )?
            .iter()
            .map(|f| f.data_type().clone())
            .collect(),
        )
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        self.inner.invoke_with_args(args)
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(s: &str, unit: TimeUnit) -> Reading {
        reading(&lit(s), &DataType::Timestamp(unit, None)).expect("a timestamp")
    }

    #[test]
    fn a_timestamp_written_short_is_written_out_as_arrow_reads_it() {
        for (short, full) in [
            ("2024-06-01 08:00", "2024-06-01 08:00:00"),
            ("2024-6-1 8:00", "2024-06-01 08:00:00"),
            ("2024-06-01T8:05:09.25", "2024-06-01T08:05:09.25"),
            ("2024-06-01 08:00+02:00", "2024-06-01 08:00:00+02:00"),
            ("2024-06-01 08:00Z", "2024-06-01 08:00:00Z"),
            ("2024-6-1", "2024-06-01"),
        ] {
            assert_eq!(written_out(short).as_deref(), Some(full), "{short}");
        }
        for left in [
            "2024-06-01 08:00:00",
            "2024-06-01",
            "2024-06-01 25:00",
            "2024-06-01 8:0",
            "2024-06-01 123:00",
            "2024-06-01 08:00 junk",
            "20240601",
            "24-06-01 08:00",
            "hello",
            "",
        ] {
            assert_eq!(written_out(left), None, "{left}");
        }
    }

    #[test]
    fn a_string_reads_as_its_floor_in_the_unit_and_says_whether_it_was_exact() {
        let r = read("2024-01-01 12:00:00.5", TimeUnit::Second);
        assert_eq!(
            r.floor,
            ScalarValue::TimestampSecond(Some(1_704_110_400), None)
        );
        assert!(!r.exact && r.nanos);
        // Before 1970 too the floor, not the value truncated toward zero.
        let r = read("1969-12-31 23:59:59.5", TimeUnit::Second);
        assert_eq!(r.floor, ScalarValue::TimestampSecond(Some(-1), None));
        assert!(!r.exact);
        let r = read("1969-12-31 23:59:59.999", TimeUnit::Millisecond);
        assert!(r.exact);
        assert!(read("2024-01-01 12:00:00.0000001", TimeUnit::Microsecond).nanos);
        assert!(!read("2024-01-01 12:00:00.0000001", TimeUnit::Microsecond).exact);
        assert!(read("2024-01-01 12:00:00.000001", TimeUnit::Nanosecond).exact);
        // Beyond the nanosecond range, exactness is read in microseconds.
        let r = read("9999-12-31 23:59:59.5", TimeUnit::Second);
        assert!(!r.exact && !r.nanos);
        let r = read("9999-12-31 23:59:59", TimeUnit::Second);
        assert!(r.exact && !r.nanos);
        assert!(!read("9999-12-31 23:59:59.9999995", TimeUnit::Microsecond).exact);
        assert!(read("9999-12-31 23:59:59.9999990", TimeUnit::Microsecond).exact);
        assert!(!read("1500-01-01 00:00:00.0000005+01:00", TimeUnit::Microsecond).exact);
        assert!(
            reading(
                &lit("not a time"),
                &DataType::Timestamp(TimeUnit::Second, None)
            )
            .is_none()
        );
    }

    #[test]
    fn a_temporal_type_among_strings_is_every_arguments() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        let cases = [
            (vec![ts.clone(), DataType::Utf8], Some(ts.clone())),
            (
                vec![DataType::Null, DataType::Date32, DataType::Utf8View],
                Some(DataType::Date32),
            ),
            (
                vec![ts.clone(), ts.clone(), DataType::LargeUtf8],
                Some(ts.clone()),
            ),
            // `nvl`'s own signature would make two timestamps strings.
            (vec![ts.clone(), ts.clone()], Some(ts.clone())),
            (vec![ts.clone(), DataType::Null], Some(ts.clone())),
            // Otherwise DataFusion's own coercion.
            (vec![ts.clone(), DataType::Date32, DataType::Utf8], None),
            (vec![DataType::Int32, DataType::Utf8], None),
            (vec![DataType::Utf8, DataType::Null], None),
        ];
        for (types, want) in cases {
            assert_eq!(temporal_among_strings(&types), want, "{types:?}");
        }
    }
}
