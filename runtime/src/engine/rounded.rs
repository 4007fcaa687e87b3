//! Decimals cast to integers round, half away from zero, as in PostgreSQL and DuckDB.
//!
//! Arrow's cast truncates: `INSERT INTO t (n INT) VALUES (2.5)` stored 2, `(-2.7)` stored -2,
//! and `UPDATE t SET n = 2.7` stored 2, where PostgreSQL and DuckDB store 3, -3 and 3.
//! [`RoundedCasts`] rewrites, once types are coerced, every cast of a decimal with a fraction to
//! an integer type as a cast of the value plus or minus one half (truncating that is rounding
//! half away from zero), in the decimal's own arithmetic: no float in between, so every digit
//! of a wide decimal counts.

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{Cast, Expr, ExprSchemable, LogicalPlan, lit, when};
use datafusion::optimizer::AnalyzerRule;

use super::checked::{any_expression, input_schema};

/// The rule; see the module's documentation. Runs after DataFusion's type coercion (which
/// adds the casts of an `INSERT`'s values and an `UPDATE`'s assignments).
#[derive(Debug, Default)]
pub(super) struct RoundedCasts;

impl AnalyzerRule for RoundedCasts {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let integer_cast =
                |e: &Expr| matches!(e, Expr::Cast(c) if c.field.data_type().is_integer());
            if !any_expression(&node, integer_cast)? {
                return Ok(Transformed::no(node));
            }
            let schema = input_schema(&node)?;
            // Results keep the names their columns had (`CAST(t.x AS INT)`).
            let names = NamePreserver::new(&node);
            node.map_expressions(|e| {
                let name = names.save(&e);
                Ok(e.transform_up(|e| rounded(e, &schema))?
                    .update_data(|e| name.restore(e)))
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_rounded_casts"
    }
}

fn rounded(e: Expr, schema: &DFSchema) -> DfResult<Transformed<Expr>> {
    let Expr::Cast(Cast { expr, field }) = &e else {
        return Ok(Transformed::no(e));
    };
    if !field.data_type().is_integer() {
        return Ok(Transformed::no(e));
    }
    // Zero and one half in the decimal's own type: the rule runs after type coercion, so the
    // new expressions must need none.
    let (zero, half) = match expr.get_type(schema) {
        Ok(arrow::datatypes::DataType::Decimal128(p, s)) if s > 0 => (
            ScalarValue::Decimal128(Some(0), p, s),
            ScalarValue::Decimal128(Some(5 * 10i128.pow(s as u32 - 1)), p, s),
        ),
        Ok(arrow::datatypes::DataType::Decimal256(p, s)) if s > 0 => {
            let ten = arrow::datatypes::i256::from_i128(10);
            (
                ScalarValue::Decimal256(Some(arrow::datatypes::i256::ZERO), p, s),
                ScalarValue::Decimal256(
                    Some(
                        arrow::datatypes::i256::from_i128(5)
                            .wrapping_mul(ten.wrapping_pow(s as u32 - 1)),
                    ),
                    p,
                    s,
                ),
            )
        }
        _ => return Ok(Transformed::no(e)),
    };
    let x = expr.as_ref().clone();
    let away =
        when(x.clone().gt_eq(lit(zero)), x.clone() + lit(half.clone())).otherwise(x - lit(half))?;
    Ok(Transformed::yes(Expr::Cast(Cast {
        expr: Box::new(away),
        field: field.clone(),
    })))
}
