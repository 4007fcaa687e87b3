//! Two `IN` lists over one value that leave nothing keep NULL's answer.
//!
//! DataFusion 55's simplifier merges two `IN` lists over the same value joined by `AND` or
//! `OR`, and when the merged list is empty it answers a constant: `x NOT IN (1) OR x NOT IN (2)`
//! became `TRUE`, `x IN (1) AND x IN (2)` `FALSE`. For a NULL `x` the answer is NULL, so a row
//! with a NULL `x` passed `WHERE x NOT IN (1) OR x NOT IN (2)` (it does not in PostgreSQL), and
//! `NOT (x IN (1) AND x IN (2))` kept it too. [`EmptyInLists`], an analyzer rule (the
//! simplifier runs after the analyzer), writes those pairs as what they answer: NULL for a NULL
//! value, else the constant. Only lists of non-NULL literals are rewritten; any other pair is
//! left to DataFusion, whose merge of it is right when its list is not empty.
//!
//! The simplifier first writes an `OR` of equalities over one value as an `IN` list (and an
//! `AND` of `<>` as `NOT IN`), then merges: `(x = 1 OR x = 2) AND (x = 3 OR x = 4)` answered
//! `FALSE` for a NULL `x` (PostgreSQL: NULL), and `NOT (…)` passed the row. Such chains count
//! as the lists they become.

use std::collections::HashSet;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr::Cast;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator, lit, when};
use datafusion::optimizer::AnalyzerRule;

use super::checked::{any_expression, rewrite_expressions};

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct EmptyInLists;

impl AnalyzerRule for EmptyInLists {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        rewrite_expressions(
            plan,
            |node| any_expression(node, |e| pair(e).is_some()),
            answered,
        )
    }

    fn name(&self) -> &str {
        "apiary_empty_in_lists"
    }
}

/// A list over one value as DataFusion's simplifier sees it: an `IN` list, or a chain it turns
/// into one before merging (`x = 1 OR x = 2` is `x IN (1, 2)`, `x <> 1 AND x <> 2` is `x NOT
/// IN (1, 2)`), each item a non-NULL literal (cast or not). `None` for anything else.
struct List<'a> {
    value: &'a Expr,
    items: HashSet<ScalarValue>,
    negated: bool,
}

impl<'a> List<'a> {
    fn of(e: &'a Expr) -> Option<Self> {
        if let Expr::InList(l) = e {
            let items = l.list.iter().map(literal).collect::<Option<_>>()?;
            return Some(List {
                value: &l.expr,
                items,
                negated: l.negated,
            });
        }
        // The simplifier writes an `OR` of `=` (an `AND` of `<>`) as an `IN` (`NOT IN`) list.
        let (chain, compare, negated) = match e {
            Expr::BinaryExpr(BinaryExpr {
                op: Operator::Or, ..
            }) => (Operator::Or, Operator::Eq, false),
            Expr::BinaryExpr(BinaryExpr {
                op: Operator::And, ..
            }) => (Operator::And, Operator::NotEq, true),
            _ => return None,
        };
        let mut value: Option<&Expr> = None;
        let mut items = HashSet::new();
        let mut pending = vec![e];
        while let Some(e) = pending.pop() {
            let (x, item) = match e {
                Expr::BinaryExpr(BinaryExpr { left, op, right }) if *op == chain => {
                    pending.extend([left.as_ref(), right.as_ref()]);
                    continue;
                }
                Expr::BinaryExpr(BinaryExpr { left, op, right }) if *op == compare => {
                    match (literal(left), literal(right)) {
                        (None, Some(item)) => (left.as_ref(), item),
                        (Some(item), None) => (right.as_ref(), item),
                        _ => return None,
                    }
                }
                _ => return None,
            };
            if value.is_some_and(|v| v != x) {
                return None;
            }
            value = Some(x);
            items.insert(item);
        }
        Some(List {
            value: value?,
            items,
            negated,
        })
    }
}

/// Two lists over one value, joined by `AND` or `OR`: (the lists, the operator).
fn pair(e: &Expr) -> Option<(List<'_>, List<'_>, Operator)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    if !matches!(op, Operator::And | Operator::Or) {
        return None;
    }
    let (l, r) = (List::of(left)?, List::of(right)?);
    // Values are compared in one type, or not at all.
    let mut types = l.items.iter().chain(&r.items).map(ScalarValue::data_type);
    let first = types.next();
    let one_type = types.all(|t| Some(t) == first);
    (l.value == r.value && one_type).then_some((l, r, *op))
}

/// `e` as what it answers, when it is a pair DataFusion would merge into an empty list.
fn answered(e: Expr, schema: &DFSchema) -> DfResult<Transformed<Expr>> {
    let Some((l, r, op)) = pair(&e) else {
        return Ok(Transformed::no(e));
    };
    let (left, right) = (&l.items, &r.items);
    // The constant DataFusion answers when its merged list is empty, as its simplifier merges.
    let constant = match (l.negated, r.negated, op) {
        (false, false, Operator::And) if left.is_disjoint(right) => false,
        (false, true, Operator::And) if left.is_subset(right) => false,
        (true, false, Operator::And) if right.is_subset(left) => false,
        (true, true, Operator::Or) if left.is_disjoint(right) => true,
        _ => return Ok(Transformed::no(e)),
    };
    if !l.value.nullable(schema)? {
        // DataFusion's constant is right.
        return Ok(Transformed::no(e));
    }
    let null = Expr::Literal(ScalarValue::Boolean(None), None);
    let answer = when(l.value.clone().is_null(), null).otherwise(lit(constant))?;
    Ok(Transformed::yes(answer))
}

/// The value of `item` when it is a non-NULL literal, cast or not, as the list compares it:
/// `CAST(1 AS DOUBLE)` and `1.0` are one value.
fn literal(item: &Expr) -> Option<ScalarValue> {
    let value = match item {
        Expr::Literal(v, _) => v.clone(),
        Expr::Cast(Cast { expr, field }) => match expr.as_ref() {
            Expr::Literal(v, _) => v.cast_to(field.data_type()).ok()?,
            _ => return None,
        },
        _ => return None,
    };
    (!value.is_null()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::{cast, col};

    fn schema(nullable: bool) -> DFSchema {
        let s = Schema::new(vec![Field::new("x", DataType::Int64, nullable)]);
        DFSchema::try_from(s).unwrap()
    }

    fn in_list(values: &[i64], negated: bool) -> Expr {
        col("x").in_list(values.iter().map(|v| lit(*v)).collect(), negated)
    }

    /// When an upgrade answers right, this fails and the rule can go.
    #[tokio::test]
    async fn datafusion_still_passes_a_null_through_an_empty_merge() {
        let ctx = datafusion::prelude::SessionContext::new();
        let sql = "SELECT count(*) FROM (VALUES (1), (NULL), (3)) AS t(x) \
                   WHERE x NOT IN (1) OR x NOT IN (2)";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let n = batches[0].column(0).as_any();
        let n = n
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(n.value(0), 3, "PostgreSQL: 2");
    }

    fn eq(v: i64) -> Expr {
        col("x").eq(lit(v))
    }

    fn ne(v: i64) -> Expr {
        lit(v).not_eq(col("x"))
    }

    #[test]
    fn only_pairs_that_merge_to_nothing_over_a_nullable_value_are_rewritten() {
        let nullable = schema(true);
        for (e, rewritten) in [
            (in_list(&[1], true).or(in_list(&[2], true)), true),
            (in_list(&[1], false).and(in_list(&[2], false)), true),
            (in_list(&[1], false).and(in_list(&[1, 2], true)), true),
            (in_list(&[1, 2], true).and(in_list(&[2], false)), true),
            // Lists that merge to something: DataFusion answers right.
            (in_list(&[1, 2], true).or(in_list(&[2], true)), false),
            (in_list(&[1, 2], false).and(in_list(&[2], false)), false),
            (in_list(&[1, 3], false).and(in_list(&[1], true)), false),
            // Chains the simplifier makes lists of, before it merges them.
            (eq(1).or(eq(2)).and(eq(3).or(eq(4))), true),
            (eq(1).or(eq(2)).and(in_list(&[3], false)), true),
            (ne(1).and(ne(2)).or(ne(3).and(ne(4))), true),
            (eq(1).or(eq(2)).and(eq(2).or(eq(4))), false),
            (eq(1).or(col("y").eq(lit(2))).and(eq(3)), false),
            // One value written two ways is one value: the lists meet.
            (
                eq(1)
                    .or(eq(2))
                    .and(col("x").eq(cast(lit(1_i32), DataType::Int64)).or(eq(3))),
                false,
            ),
            // A NULL item: left as it is.
            (
                col("x")
                    .in_list(vec![lit(ScalarValue::Int64(None))], true)
                    .or(in_list(&[2], true)),
                false,
            ),
        ] {
            let done = answered(e.clone(), &nullable).unwrap();
            assert_eq!(done.transformed, rewritten, "{e}");
        }
        let e = in_list(&[1], true).or(in_list(&[2], true));
        assert!(!answered(e, &schema(false)).unwrap().transformed);
    }
}
