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

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result as DfResult, not_impl_err};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr::SetComparison;
use datafusion::logical_expr::{Expr, LogicalPlan, Subquery, SubqueryAlias};
use datafusion::optimizer::AnalyzerRule;

use super::checked::rewrite_expressions;

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct SetComparisons;

impl AnalyzerRule for SetComparisons {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        let aliases = AtomicUsize::new(0);
        rewrite_expressions(plan, in_a_filter, |e, _| planned(e, &aliases))
    }

    fn name(&self) -> &str {
        "apiary_set_comparisons"
    }
}

/// Whether `node` holds a set comparison, refused unless `node` is a filter.
fn in_a_filter(node: &LogicalPlan) -> DfResult<bool> {
    let mut found = None;
    node.apply_expressions(|e| {
        e.apply(|e| {
            if let Expr::SetComparison(c) = e {
                found = Some(format!("{} {}", c.op, c.quantifier));
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })
    })?;
    match (found, node) {
        (None, _) => Ok(false),
        (Some(_), LogicalPlan::Filter(_)) => Ok(true),
        (Some(comparison), _) => {
            not_impl_err!("{comparison} (subquery) outside a WHERE or HAVING clause")
        }
    }
}

/// `e` planned as the module's documentation says, when it is a set comparison.
fn planned(e: Expr, aliases: &AtomicUsize) -> DfResult<Transformed<Expr>> {
    let Expr::SetComparison(SetComparison {
        expr,
        subquery,
        op,
        quantifier,
    }) = e
    else {
        return Ok(Transformed::no(e));
    };
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
