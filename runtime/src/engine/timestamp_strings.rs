//! A string beside a timestamp reads as a value of that timestamp's type.
//!
//! DataFusion's type coercion brings a string compared with (or unified with) a `TIMESTAMP` of
//! any unit to a nanosecond timestamp, whose range is 1677–2262: `valid_to =
//! '9999-12-31 23:59:59'`, the usual open end of a slowly changing dimension, failed with
//! "Overflow converting … to Nanosecond" although the column (microseconds) holds that value,
//! and `CAST('9999-12-31' AS TIMESTAMP)` is fine. PostgreSQL types such a literal as the other
//! operand; [`TimestampStrings`], an analyzer rule that runs before DataFusion's type coercion,
//! does the same: a string literal in a comparison, `BETWEEN`, `IN` list, `CASE` or unifying
//! function beside a timestamp is cast to that timestamp's type (its unit and its zone).

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{DFSchema, ExprSchema, Result as DfResult, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr::Cast;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan};
use datafusion::optimizer::AnalyzerRule;

use arrow::datatypes::DataType;

use super::checked::{any_expression, input_schema};
use super::literals::unified_groups;

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct TimestampStrings;

impl AnalyzerRule for TimestampStrings {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            if !any_expression(&node, string_literal)? {
                return Ok(Transformed::no(node));
            }
            let schema = input_schema(&node)?;
            // Output columns keep the names they were planned with.
            let names = NamePreserver::new(&node);
            node.map_expressions(|e| {
                let name = names.save(&e);
                Ok(e.transform_up(|e| Ok(typed(e, &schema)))?
                    .update_data(|e| name.restore(e)))
            })
        })
        .data()
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

/// `e` with the string literals of each group it unifies cast to the group's timestamp type.
fn typed(mut e: Expr, schema: &DFSchema) -> Transformed<Expr> {
    let mut changed = false;
    for group in unified_groups(&mut e) {
        let timestamp = group
            .iter()
            .find_map(|m| match m.get_type(schema as &dyn ExprSchema) {
                Ok(t @ DataType::Timestamp(..)) if !string_literal(m) => Some(t),
                _ => None,
            });
        let Some(timestamp) = timestamp else {
            continue;
        };
        for member in group.into_iter().filter(|m| string_literal(m)) {
            let literal = std::mem::replace(member, Expr::Literal(ScalarValue::Null, None));
            *member = Expr::Cast(Cast::new(Box::new(literal), timestamp.clone()));
            changed = true;
        }
    }
    Transformed::new_transformed(e, changed)
}
