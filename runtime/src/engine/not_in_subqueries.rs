//! `x NOT IN (subquery)` in a `WHERE`, answered right where DataFusion's null-aware join cannot.
//!
//! `x NOT IN (SELECT y …)` is unknown, so the row is dropped, when some `y` is NULL and none
//! equals `x`, or when `x` is NULL and the subquery returns rows. DataFusion 55 plans it as a
//! null-aware anti join on `x = y`, which is right when `x` reads the outer row and the subquery
//! is uncorrelated. Otherwise it was not:
//! - with no column in `x` (a constant, a bound value), the join had no key and forgot the
//!   NULLs: `WHERE 5 NOT IN (SELECT b FROM t)` kept every row although `b` held a NULL;
//! - with a correlated subquery the join had two keys, which its null-aware join refuses:
//!   `WHERE a NOT IN (SELECT b FROM t2 WHERE t2.k = t.k)` failed ("null_aware anti join only
//!   supports single column join key").
//!
//! [`NotInSubqueries`], an analyzer rule, writes each such `NOT IN` that is one of a filter's
//! `AND`ed conditions (where unknown drops the row as false does) as what keeps the row:
//! `NOT EXISTS (SELECT … WHERE y = x OR y IS NULL OR x IS NULL)` over the subquery's rows, `x`
//! read from the outer row. A subquery that always returns one row (an aggregate without
//! groups) is one value, and `x NOT IN` it is `x <>` it. A correlated subquery is rewritten only
//! when it filters, projects and joins rows (DataFusion's decorrelation of NOT EXISTS loses an
//! aggregate's row for an outer row without matches, and refuses a limit); anywhere else
//! (`NOT`, `OR`), for other shapes and for the shape DataFusion answers right, the `NOT IN` is
//! left as it is.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Column, DFSchema, Result as DfResult};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr::InSubquery;
use datafusion::logical_expr::utils::{conjunction, split_conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    BinaryExpr, Distinct, Expr, Filter, JoinType, LogicalPlan, LogicalPlanBuilder, Operator,
    Projection, Subquery, SubqueryAlias, not_exists, or,
};
use datafusion::optimizer::AnalyzerRule;

use super::scalar_subqueries::one_row;

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct NotInSubqueries;

impl AnalyzerRule for NotInSubqueries {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let LogicalPlan::Filter(filter) = node else {
                return Ok(Transformed::no(node));
            };
            let wanted = split_conjunction(&filter.predicate)
                .iter()
                .any(|c| misanswered(c).is_some());
            if !wanted {
                return Ok(Transformed::no(LogicalPlan::Filter(filter)));
            }
            let outer = filter.input.schema().as_ref().clone();
            let conditions = split_conjunction_owned(filter.predicate)
                .into_iter()
                .map(|c| match misanswered(&c) {
                    Some(_) => kept_rows(c, &outer),
                    None => Ok(c),
                })
                .collect::<DfResult<Vec<_>>>()?;
            let predicate = conjunction(conditions).expect("a filter has a condition");
            Ok(Transformed::yes(LogicalPlan::Filter(Filter::try_new(
                predicate,
                filter.input,
            )?)))
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_not_in_subqueries"
    }
}

/// `e`'s `NOT IN` when DataFusion's null-aware anti join answers it wrong or not at all: `x`
/// reads no column of the outer row, or the subquery is correlated. `x` with a subquery or an
/// outer reference of its own (a `NOT IN` inside a subquery naming a query further out) is
/// left alone.
fn misanswered(e: &Expr) -> Option<&InSubquery> {
    let Expr::InSubquery(in_subquery) = e else {
        return None;
    };
    let x = in_subquery.expr.as_ref();
    if !in_subquery.negated || x.contains_outer() || has_subquery(x) {
        return None;
    }
    let plan = in_subquery.subquery.subquery.as_ref();
    let correlated = !in_subquery.subquery.outer_ref_columns.is_empty();
    let rewritten = match correlated {
        // `<>` its one value, or NOT EXISTS over rows DataFusion decorrelates right.
        true => one_row(plan) || plain(plan),
        // Uncorrelated, the NOT EXISTS reads the subquery as it is.
        false => x.column_refs().is_empty(),
    };
    rewritten.then_some(in_subquery)
}

/// Whether `plan` only filters, projects and joins rows, so that DataFusion's decorrelation of
/// a NOT EXISTS over it keeps its meaning. Over an aggregate it did not (an outer row without
/// matches had no row where `count(*)` answers 0), nor under a limit, an offset or a window;
/// such a `NOT IN` is left to DataFusion.
fn plain(plan: &LogicalPlan) -> bool {
    let here = matches!(
        plan,
        LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::TableScan(_)
            | LogicalPlan::Values(_)
            | LogicalPlan::EmptyRelation(_)
            | LogicalPlan::Distinct(Distinct::All(_))
    ) || matches!(plan, LogicalPlan::Join(j) if j.join_type == JoinType::Inner);
    here && plan.inputs().into_iter().all(plain)
}

fn has_subquery(e: &Expr) -> bool {
    e.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
        ))
    })
    .unwrap_or(true)
}

/// A one-row `plan` without the `DISTINCT` and sorts that change nothing over one row, which
/// DataFusion refuses in a correlated scalar subquery.
fn bare(plan: &LogicalPlan) -> DfResult<LogicalPlan> {
    Ok(match plan {
        LogicalPlan::Distinct(Distinct::All(input)) => bare(input)?,
        LogicalPlan::Sort(sort) => bare(&sort.input)?,
        LogicalPlan::Projection(p) => LogicalPlan::Projection(Projection::try_new(
            p.expr.clone(),
            Arc::new(bare(&p.input)?),
        )?),
        LogicalPlan::SubqueryAlias(a) => LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(
            Arc::new(bare(&a.input)?),
            a.alias.clone(),
        )?),
        other => other.clone(),
    })
}

/// `x NOT IN (subquery)` as the rows it keeps: `NOT EXISTS (SELECT … WHERE y = x OR y IS NULL
/// OR x IS NULL)`, `x`'s columns read from the outer row (`outer`).
fn kept_rows(e: Expr, outer: &DFSchema) -> DfResult<Expr> {
    let Expr::InSubquery(InSubquery { expr, subquery, .. }) = e else {
        return Ok(e);
    };
    // A subquery that always returns one row (an aggregate without groups) is one value, and
    // `NOT IN` is `<>` it: a NOT EXISTS over it would find no row for an outer row that
    // matches nothing, where the aggregate answers 0 or NULL.
    if one_row(&subquery.subquery) {
        let value = Subquery {
            subquery: Arc::new(bare(&subquery.subquery)?),
            ..subquery
        };
        return Ok(Expr::BinaryExpr(BinaryExpr::new(
            expr,
            Operator::NotEq,
            Box::new(Expr::ScalarSubquery(value)),
        )));
    }
    let x = expr
        .transform(|e| match e {
            Expr::Column(c) => {
                let (qualifier, field) = outer.qualified_field_from_column(&c)?;
                let c = Column::new(qualifier.cloned(), field.name());
                Ok(Transformed::yes(Expr::OuterReferenceColumn(
                    Arc::clone(field),
                    c,
                )))
            }
            other => Ok(Transformed::no(other)),
        })?
        .data;
    let plan = subquery.subquery.as_ref();
    let y = Expr::Column(Column::from(plan.schema().qualified_field(0)));
    let matching = or(or(y.clone().eq(x.clone()), y.is_null()), x.is_null());
    let rows = LogicalPlanBuilder::from(plan.clone())
        .filter(matching)?
        .build()?;
    Ok(not_exists(Arc::new(rows)))
}
