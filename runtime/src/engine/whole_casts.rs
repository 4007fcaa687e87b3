//! Decimals with a fraction cast to integers, in a form DataFusion's simplifier reads right.
//!
//! The simplifier "unwraps" a cast compared with a literal: `CAST(d AS INT) = 2` becomes
//! `d = 2.00`. That holds only when the cast loses nothing, and a decimal cast to an integer
//! drops its fraction: over a `DECIMAL(5,2)` holding 2.20, `WHERE CAST(d AS INT) = 2` found no
//! row (and `DELETE` deleted none). [`WholeCasts`] rewrites, once types are coerced, every cast
//! of a decimal with a fraction to an integer as a cast of [`whole_number`]`(d)`: `d` rounded
//! half away from zero in its own scale, as PostgreSQL casts a numeric (Arrow's cast truncated:
//! `3.7::int` was 3, and an INSERT of 2.5 into an `INT` column stored 2), now with no fraction to
//! drop, so the unwrapped comparison is exact. A float cast to an integer is rounded half to
//! even first, as PostgreSQL's `rint` does (`2.5::double::int` is 2, `3.5` gives 4). A decimal cast to fewer decimal digits
//! rounds them (`CAST(2.49 AS DECIMAL(3,1))` is 2.5): over 2.20 and 2.49, `WHERE CAST(d AS
//! DECIMAL(10,0)) = 2` found neither; such a cast is rewritten over the value rounded in its own
//! scale first (half away from zero, as the cast does). The rewrite leaves its own output alone:
//! delta-rs plans the expressions of an UPDATE or DELETE again, through the same rules.

use arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::{
    BinaryExpr, Cast, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
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
        || matches!(expr.as_ref(), Expr::ScalarFunction(f) if f.name() == WHOLE)
    {
        return Ok(Transformed::no(e));
    }
    let exact = match (expr.get_type(schema), field.data_type()) {
        // Rounded as PostgreSQL rounds what it casts to an integer: a numeric half away from
        // zero, a float half to even (`rint`); Arrow's cast truncates.
        (Ok(DataType::Decimal128(_, s)), to) if to.is_integer() && s > 0 => {
            whole_number(expr.as_ref().clone())
        }
        (Ok(DataType::Float64 | DataType::Float32), to) if to.is_integer() => {
            whole_number(expr.as_ref().clone())
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

/// [`whole_number`]'s name, by which it travels to other nodes.
const WHOLE: &str = "whole_number";

/// The function, by the name it travels under.
pub(crate) fn function_named(name: &str) -> Option<std::sync::Arc<ScalarUDF>> {
    (name == WHOLE).then(whole_udf)
}

fn whole_udf() -> std::sync::Arc<ScalarUDF> {
    std::sync::Arc::new(ScalarUDF::from(Whole {
        signature: Signature::any(1, Volatility::Immutable),
    }))
}

/// `whole_number(x)`: `x` rounded to a whole number in its own kind of type, as PostgreSQL
/// rounds what it casts to an integer: a `DECIMAL(p, s)` half away from zero (as a
/// `DECIMAL(p + 1, s)`, which holds the carry), a float half to even. One call, so a chain of
/// casts grows the plan by one node a cast.
fn whole_number(x: Expr) -> Expr {
    Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
        whole_udf(),
        vec![x],
    ))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Whole {
    signature: Signature,
}

impl ScalarUDFImpl for Whole {
    fn name(&self) -> &str {
        WHOLE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        match args {
            [DataType::Decimal128(p, s)] => Ok(DataType::Decimal128((*p + 1).min(38), *s)),
            [t @ (DataType::Float64 | DataType::Float32 | DataType::Null)] => Ok(t.clone()),
            _ => datafusion::common::plan_err!("{WHOLE}() takes a decimal or a float"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        use arrow::array::AsArray;
        let scalar = matches!(args.args[..], [ColumnarValue::Scalar(_)]);
        let [arg] = args.args.as_slice() else {
            return datafusion::common::plan_err!("{WHOLE}() takes one argument");
        };
        let a = arg.to_array(1)?;
        let out: arrow::array::ArrayRef = match a.data_type() {
            DataType::Decimal128(_, s) => {
                let unit = 10i128.pow(u32::try_from(*s).unwrap_or(0));
                let rounded = a
                    .as_primitive::<arrow::datatypes::Decimal128Type>()
                    .unary::<_, arrow::datatypes::Decimal128Type>(|v| {
                    let (q, r) = (v / unit, v % unit);
                    let away = i128::from(r.abs() * 2 >= unit) * v.signum();
                    (q + away) * unit
                });
                std::sync::Arc::new(rounded.with_data_type(args.return_field.data_type().clone()))
            }
            DataType::Float64 => std::sync::Arc::new(
                a.as_primitive::<arrow::datatypes::Float64Type>()
                    .unary::<_, arrow::datatypes::Float64Type>(f64::round_ties_even),
            ),
            DataType::Float32 => std::sync::Arc::new(
                a.as_primitive::<arrow::datatypes::Float32Type>()
                    .unary::<_, arrow::datatypes::Float32Type>(f32::round_ties_even),
            ),
            _ => a,
        };
        Ok(match scalar {
            true => ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?),
            false => ColumnarValue::Array(out),
        })
    }
}
