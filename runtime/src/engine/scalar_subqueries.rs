//! A scalar subquery that can return no row can be NULL.
//!
//! DataFusion 55 takes a scalar subquery's nullability from its one column, but a subquery
//! that returns no row answers NULL whatever its column is. Its simplifier reads that
//! nullability: `(SELECT count(*) FROM u WHERE u.a = t.a HAVING count(*) > 1) IS NULL` was
//! folded to `FALSE` (the query returned no row; PostgreSQL returns every `t` row without two
//! matches), `IS NOT NULL` to `TRUE`, and `coalesce(<subquery>, -1)` to the subquery. The same
//! held for a `NOT NULL` column read through a `WHERE` or a `LIMIT`.
//!
//! [`NullableSubqueries`], an analyzer rule (the simplifier runs after the analyzer), wraps
//! the column of every scalar subquery that can return no row and reads as non-nullable in
//! [`maybe_null`], which returns its argument as it is and says it may be NULL. A subquery that
//! always returns one row (an aggregate without `GROUP BY`, `HAVING` or `LIMIT`, under
//! projections) is left alone: DataFusion's decorrelation gives its `count(*)` 0 for an outer
//! row without matches, and that is right.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, Result as DfResult, plan_err};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, Projection, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Subquery, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

use super::checked::{any_expression, rewrite_expressions};

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct NullableSubqueries;

impl AnalyzerRule for NullableSubqueries {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        let mut found = false;
        plan.apply_with_subqueries(|node| {
            found = any_expression(node, |e| misread(e).is_some())?;
            Ok(match found {
                true => TreeNodeRecursion::Stop,
                false => TreeNodeRecursion::Continue,
            })
        })?;
        if !found {
            return Ok(plan);
        }
        let plan = rewrite_expressions(
            plan,
            |node| any_expression(node, |e| misread(e).is_some()),
            |e, _schema: &DFSchema| match misread(&e) {
                Some(subquery) => {
                    let subquery = subquery.clone();
                    Ok(Transformed::yes(Expr::ScalarSubquery(Subquery {
                        subquery: Arc::new(wrapped(&subquery.subquery)?),
                        ..subquery
                    })))
                }
                None => Ok(Transformed::no(e)),
            },
        )?;
        // Every schema above reads the column again: a derived table, a CTE or a view over
        // the subquery said NOT NULL, and `x IS NULL` over it was folded to false.
        plan.transform_up_with_subqueries(|node| Ok(Transformed::yes(node.recompute_schema()?)))
            .data()
    }

    fn name(&self) -> &str {
        "apiary_nullable_subqueries"
    }
}

/// `e`'s subquery when `e` is a scalar subquery that reads as non-nullable yet can return no
/// row.
fn misread(e: &Expr) -> Option<&Subquery> {
    let Expr::ScalarSubquery(subquery) = e else {
        return None;
    };
    let plan = subquery.subquery.as_ref();
    let nullable = plan
        .schema()
        .fields()
        .first()
        .is_none_or(|f| f.is_nullable());
    (!nullable && !one_row(plan)).then_some(subquery)
}

/// Whether `plan` always returns exactly one row: an aggregate without groups, under
/// projections, aliases, `DISTINCT` and sorts without a limit only.
pub(super) fn one_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Projection(p) => one_row(&p.input),
        LogicalPlan::SubqueryAlias(a) => one_row(&a.input),
        LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(input)) => one_row(input),
        LogicalPlan::Sort(s) => s.fetch.is_none() && one_row(&s.input),
        LogicalPlan::Aggregate(a) => a.group_expr.is_empty(),
        _ => false,
    }
}

/// `plan` under a projection of its one column through [`maybe_null`], under the same name.
fn wrapped(plan: &Arc<LogicalPlan>) -> DfResult<LogicalPlan> {
    let schema = plan.schema();
    if schema.fields().len() != 1 {
        return plan_err!(
            "a scalar subquery returns one column, not {}",
            schema.fields().len()
        );
    }
    let (qualifier, field) = schema.qualified_field(0);
    let column = Expr::Column(Column::new(qualifier.cloned(), field.name()));
    let call = Expr::ScalarFunction(ScalarFunction::new_udf(function(), vec![column]))
        .alias_qualified(qualifier.cloned(), field.name());
    Ok(LogicalPlan::Projection(Projection::try_new(
        vec![call],
        Arc::clone(plan),
    )?))
}

/// [`maybe_null`]'s name, by which it travels to other nodes.
const NAME: &str = "maybe_null";

/// The function, by the name it travels under.
pub(crate) fn function_named(name: &str) -> Option<Arc<ScalarUDF>> {
    (name == NAME).then(function)
}

fn function() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(MaybeNull {
        signature: Signature::any(1, Volatility::Immutable),
    }))
}

/// `maybe_null(x)`: `x`, typed as nullable; see the module's documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
struct MaybeNull {
    signature: Signature,
}

impl ScalarUDFImpl for MaybeNull {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(
        &self,
        args: &[arrow::datatypes::DataType],
    ) -> DfResult<arrow::datatypes::DataType> {
        match args {
            [t] => Ok(t.clone()),
            _ => plan_err!("{NAME}() takes one value"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        match <[ColumnarValue; 1]>::try_from(args.args) {
            Ok([value]) => Ok(value),
            Err(_) => plan_err!("{NAME}() takes one value"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{LogicalPlanBuilder, col, lit};

    #[test]
    fn the_wrapped_column_is_nullable_and_keeps_its_name() {
        let plan = LogicalPlanBuilder::empty(true)
            .project(vec![lit(1_i64).alias("n")])
            .unwrap()
            .build()
            .unwrap();
        assert!(!plan.schema().field(0).is_nullable());
        let wrapped = wrapped(&Arc::new(plan)).unwrap();
        assert!(wrapped.schema().field(0).is_nullable());
        assert_eq!(wrapped.schema().field(0).name(), "n");
        // Reading it by name still resolves.
        LogicalPlanBuilder::from(wrapped)
            .project(vec![col("n")])
            .unwrap();
    }
}
