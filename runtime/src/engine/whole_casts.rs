//! Decimals with a fraction cast to integers, in a form DataFusion's simplifier reads right.
//!
//! The simplifier "unwraps" a cast compared with a literal: `CAST(d AS INT) = 2` becomes
//! `d = 2.00`. That holds only when the cast loses nothing, and a decimal cast to an integer
//! drops its fraction: over a `DECIMAL(5,2)` holding 2.20, `WHERE CAST(d AS INT) = 2` found no
//! row (and `DELETE` deleted none). [`WholeCasts`] rewrites, once types are coerced, every cast
//! of a decimal with a fraction to an integer as a cast of `d` rounded half away from zero in its
//! own scale, as PostgreSQL casts a numeric (Arrow's cast truncated: `3.7::int` was 3, and an
//! INSERT of 2.5 into an `INT` column stored 2), now with no fraction to drop, so the unwrapped
//! comparison is exact. A float cast to an integer is rounded half to even first, as
//! PostgreSQL's `rint` does (`2.5::double::int` is 2, `3.5` gives 4; Arrow truncated). A decimal cast to fewer decimal digits
//! rounds them (`CAST(2.49 AS DECIMAL(3,1))` is 2.5): over 2.20 and 2.49, `WHERE CAST(d AS
//! DECIMAL(10,0)) = 2` found neither; such a cast is rewritten over the value rounded in its own
//! scale first (half away from zero, as the cast does). The rewrite leaves its own output alone:
//! delta-rs plans the expressions of an UPDATE or DELETE again, through the same rules.

use arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::{BinaryExpr, Cast, Expr, ExprSchemable, LogicalPlan, Operator};
use datafusion::optimizer::AnalyzerRule;

use super::checked::{any_expression, rewrite_expressions};

/// The rule; see the module's documentation. Runs after DataFusion's type coercion (which adds
/// the casts of an `INSERT`'s values and an `UPDATE`'s assignments), before integer arithmetic
/// is checked.
#[derive(Debug, Default)]
pub(super) struct WholeCasts;

impl AnalyzerRule for WholeCasts {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        let dropping_cast = |e: &Expr| {
            matches!(e, Expr::Cast(c) if c.field.data_type().is_integer()
                || matches!(c.field.data_type(), DataType::Decimal128(..)))
        };
        // Results keep the names their columns had (`CAST(t.d AS Int32)`).
        rewrite_expressions(plan, |node| any_expression(node, dropping_cast), whole)
    }

    fn name(&self) -> &str {
        "apiary_whole_casts"
    }
}

fn whole(e: Expr, schema: &DFSchema) -> DfResult<Transformed<Expr>> {
    let Expr::Cast(Cast { expr, field }) = &e else {
        return Ok(Transformed::no(e));
    };
    if is_whole(expr)
        || matches!(expr.as_ref(), Expr::Case(c) if c.else_expr.as_deref().is_some_and(is_whole))
    {
        return Ok(Transformed::no(e));
    }
    let exact = match (expr.get_type(schema), field.data_type()) {
        // Rounded as PostgreSQL rounds a numeric it casts to an integer: half away from zero.
        (Ok(DataType::Decimal128(p, s)), to) if to.is_integer() && s > 0 => {
            // Widened when the type holds no whole digit (`0.5`, a `DECIMAL(1,1)`), so that
            // the literals the rounding adds fit it.
            let (x, p) = match p > s as u8 {
                true => (expr.as_ref().clone(), p),
                false => {
                    let wide = (s as u8 + 1).min(38);
                    let x = Expr::Cast(Cast::new(expr.clone(), DataType::Decimal128(wide, s)));
                    (x, wide)
                }
            };
            match rounded(x, p, s, 0) {
                Some(e) => e,
                None => return Ok(Transformed::no(e)),
            }
        }
        // PostgreSQL rounds a float it casts to an integer half to even (`rint`); Arrow's cast
        // truncates.
        (Ok(from @ (DataType::Float64 | DataType::Float32)), to) if to.is_integer() => {
            if is_even_rounding(expr) {
                return Ok(Transformed::no(e));
            }
            even(expr.as_ref().clone(), &from)
        }
        (Ok(DataType::Decimal128(p, s)), DataType::Decimal128(_, to)) if *to < s => {
            match rounded(expr.as_ref().clone(), p, s, *to) {
                Some(e) => e,
                None => return Ok(Transformed::no(e)),
            }
        }
        _ => return Ok(Transformed::no(e)),
    };
    Ok(Transformed::yes(Expr::Cast(Cast {
        expr: Box::new(exact),
        field: field.clone(),
    })))
}

fn binary(left: Expr, op: Operator, right: Expr) -> Expr {
    Expr::BinaryExpr(BinaryExpr::new(Box::new(left), op, Box::new(right)))
}

/// `x - x % unit`: `x` without the digits below `unit`, toward zero (`%` keeps the sign of `x`).
fn truncated(x: Expr, unit: ScalarValue) -> Expr {
    let fraction = binary(x.clone(), Operator::Modulo, Expr::Literal(unit, None));
    binary(x, Operator::Minus, fraction)
}

/// `x`, a `DECIMAL(p, s)`, rounded to `to` < `s` digits half away from zero as Arrow's cast
/// rounds, still in its own scale: `CASE WHEN x < 0 THEN trunc(x - h) ELSE trunc(x + h) END`
/// with `h` half the last kept digit. `None` where the literals do not fit `p` digits.
fn rounded(x: Expr, p: u8, s: i8, to: i8) -> Option<Expr> {
    let dropped = u32::try_from(i32::from(s) - i32::from(to)).ok()?;
    // DataFusion caps the sums' precision at 38: only values within `h` of the type's largest
    // could overflow, and those overflow the cast itself too.
    if u32::from(p) <= dropped {
        return None;
    }
    let unit = ScalarValue::Decimal128(Some(10i128.pow(dropped)), p, s);
    let half = Expr::Literal(
        ScalarValue::Decimal128(Some(5 * 10i128.pow(dropped - 1)), p, s),
        None,
    );
    let zero = Expr::Literal(ScalarValue::Decimal128(Some(0), p, s), None);
    let down = truncated(
        binary(x.clone(), Operator::Minus, half.clone()),
        unit.clone(),
    );
    let up = truncated(binary(x.clone(), Operator::Plus, half), unit);
    Some(Expr::Case(datafusion::logical_expr::Case::new(
        None,
        vec![(Box::new(binary(x, Operator::Lt, zero)), Box::new(down))],
        Some(Box::new(up)),
    )))
}

/// `x`, a float, rounded half to even: `CASE WHEN abs(x % 1) = 0.5 THEN 2 * round(x / 2)
/// ELSE round(x) END` (`round` goes half away from zero; halving a float is exact).
fn even(x: Expr, t: &DataType) -> Expr {
    let float = |v: f64| match t {
        DataType::Float32 => Expr::Literal(ScalarValue::Float32(Some(v as f32)), None),
        _ => Expr::Literal(ScalarValue::Float64(Some(v)), None),
    };
    let round = |e: Expr| datafusion::functions::math::round().call(vec![e]);
    let abs = |e: Expr| datafusion::functions::math::abs().call(vec![e]);
    let fraction = abs(binary(x.clone(), Operator::Modulo, float(1.0)));
    let tie = binary(fraction, Operator::Eq, float(0.5));
    let halved = binary(x.clone(), Operator::Divide, float(2.0));
    let to_even = binary(float(2.0), Operator::Multiply, round(halved));
    Expr::Case(datafusion::logical_expr::Case::new(
        None,
        vec![(Box::new(tie), Box::new(to_even))],
        Some(Box::new(round(x))),
    ))
}

/// Whether `e` is [`even`]'s rounding already.
fn is_even_rounding(e: &Expr) -> bool {
    matches!(e, Expr::Case(c) if c.when_then_expr.len() == 1
        && matches!(c.else_expr.as_deref(), Some(Expr::ScalarFunction(f)) if f.name() == "round"))
}

/// Whether `e` is this rule's `d - d % 1` (or the truncation of a rounding) already.
fn is_whole(e: &Expr) -> bool {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Minus,
        right,
    }) = e
    else {
        return false;
    };
    matches!(right.as_ref(), Expr::BinaryExpr(BinaryExpr { left: l, op: Operator::Modulo, .. }) if l == left)
}
