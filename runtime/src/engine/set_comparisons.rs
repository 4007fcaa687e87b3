//! `x op ANY (subquery)` and `x op ALL (subquery)`, answered right.
//!
//! DataFusion 55 decorrelates a set comparison into a join on the subquery's column. When the
//! subquery reads the table the outer query reads, and neither side is aliased, the join's
//! condition named the subquery's column twice (`__correlated_sq_1.id = __correlated_sq_1.id`)
//! and the answer was wrong, with no error: `WHERE id = ANY (SELECT id FROM s WHERE id < 3)`
//! over `s` returned every row, `> ANY` and `> ALL` none (apache/datafusion#25258).
//! [`SetComparisons`], an analyzer rule, gives every uncorrelated set comparison's subquery an
//! alias of its own, which its join then names apart from the outer table. (Planning `= ANY` as `IN` and `<>
//! ALL` as `NOT IN`, as the standard defines them, was tried: DataFusion 55 answers `NOT IN`
//! wrong in other shapes, a constant or a correlated subquery with NULLs, where its set
//! comparison answers right.)
//!
//! Outside a `WHERE` or `HAVING` (a select list, a join condition), DataFusion cannot run a set
//! comparison (nor `IN (subquery)`); with a constant on its left it failed with an internal
//! error. It is refused as not supported.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Result as DfResult, not_impl_err};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr::SetComparison;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{Expr, LogicalPlan, Subquery, SubqueryAlias};
use datafusion::optimizer::AnalyzerRule;

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct SetComparisons;

impl AnalyzerRule for SetComparisons {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        let aliases = AtomicUsize::new(0);
        plan.transform_up_with_subqueries(|node| {
            let mut any = false;
            node.apply_expressions(|e| {
                any |= e.exists(|e| Ok(matches!(e, Expr::SetComparison(_))))?;
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })?;
            if !any {
                return Ok(Transformed::no(node));
            }
            let in_filter = matches!(node, LogicalPlan::Filter(_));
            let names = NamePreserver::new(&node);
            node.map_expressions(|e| {
                let name = names.save(&e);
                Ok(e.transform_up(|e| planned(e, in_filter, &aliases))?
                    .update_data(|e| name.restore(e)))
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_set_comparisons"
    }
}

/// `e` planned as the module's documentation says, when it is a set comparison.
fn planned(e: Expr, in_filter: bool, aliases: &AtomicUsize) -> DfResult<Transformed<Expr>> {
    let Expr::SetComparison(SetComparison {
        expr,
        subquery,
        op,
        quantifier,
    }) = e
    else {
        return Ok(Transformed::no(e));
    };
    if !in_filter {
        return not_impl_err!("{op} {quantifier} (subquery) outside a WHERE or HAVING clause");
    }
    // A correlated subquery names the outer table apart already (its reference needs it), and
    // an alias over it hides the columns its correlation is decorrelated on.
    if !subquery.outer_ref_columns.is_empty() {
        let kept = SetComparison::new(expr, subquery, op, quantifier);
        return Ok(Transformed::no(Expr::SetComparison(kept)));
    }
    let n = aliases.fetch_add(1, Ordering::Relaxed);
    let aliased = SubqueryAlias::try_new(subquery.subquery, format!("__apiary_set_{n}"))?;
    let subquery = Subquery {
        subquery: Arc::new(LogicalPlan::SubqueryAlias(aliased)),
        ..subquery
    };
    Ok(Transformed::yes(Expr::SetComparison(SetComparison::new(
        expr, subquery, op, quantifier,
    ))))
}
