//! Decimals with a fraction cast to integers, in a form DataFusion's simplifier reads right.
//!
//! The simplifier "unwraps" a cast compared with a literal: `CAST(d AS INT) = 2` becomes
//! `d = 2.00`. That holds only when the cast loses nothing, and a decimal cast to an integer
//! drops its fraction: over a `DECIMAL(5,2)` holding 2.20, `WHERE CAST(d AS INT) = 2` found no
//! row (and `DELETE` deleted none). [`WholeCasts`] rewrites, once types are coerced, every cast
//! of a decimal with a fraction to an integer as a cast of `d - d % 1`: the same whole number
//! (Arrow's cast truncates, and `%` keeps the sign of `d`), now with no fraction to drop, so the
//! unwrapped comparison (`d - d % 1 = 2.00`) is exact. The rewrite leaves its own output alone:
//! delta-rs plans the expressions of an UPDATE or DELETE again, through the same rules.

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{BinaryExpr, Cast, Expr, ExprSchemable, LogicalPlan, Operator};
use datafusion::optimizer::AnalyzerRule;

use super::checked::{any_expression, input_schema};

/// The rule; see the module's documentation. Runs after DataFusion's type coercion (which adds
/// the casts of an `INSERT`'s values and an `UPDATE`'s assignments), before integer arithmetic
/// is checked.
#[derive(Debug, Default)]
pub(super) struct WholeCasts;

impl AnalyzerRule for WholeCasts {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let integer_cast =
                |e: &Expr| matches!(e, Expr::Cast(c) if c.field.data_type().is_integer());
            if !any_expression(&node, integer_cast)? {
                return Ok(Transformed::no(node));
            }
            let schema = input_schema(&node)?;
            // Results keep the names their columns had (`CAST(t.d AS Int32)`).
            let names = NamePreserver::new(&node);
            node.map_expressions(|e| {
                let name = names.save(&e);
                Ok(e.transform_up(|e| whole(e, &schema))?
                    .update_data(|e| name.restore(e)))
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_whole_casts"
    }
}

fn whole(e: Expr, schema: &DFSchema) -> DfResult<Transformed<Expr>> {
    let Expr::Cast(Cast { expr, field }) = &e else {
        return Ok(Transformed::no(e));
    };
    if !field.data_type().is_integer() || is_whole(expr) {
        return Ok(Transformed::no(e));
    }
    // One, in the decimal's own type: the rule runs after type coercion, so what it adds must
    // need none.
    let one = match expr.get_type(schema) {
        Ok(DataType::Decimal128(p, s)) if s > 0 && p > s as u8 => {
            ScalarValue::Decimal128(Some(10i128.pow(s as u32)), p, s)
        }
        _ => return Ok(Transformed::no(e)),
    };
    let x = expr.as_ref().clone();
    let fraction = Expr::BinaryExpr(BinaryExpr::new(
        Box::new(x.clone()),
        Operator::Modulo,
        Box::new(Expr::Literal(one, None)),
    ));
    let whole = Expr::BinaryExpr(BinaryExpr::new(
        Box::new(x),
        Operator::Minus,
        Box::new(fraction),
    ));
    Ok(Transformed::yes(Expr::Cast(Cast {
        expr: Box::new(whole),
        field: field.clone(),
    })))
}

/// Whether `e` is this rule's `d - d % 1` already.
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
