//! Row values compare field by field, as PostgreSQL compares them.
//!
//! DataFusion 55 plans `(a, b)` as a struct and compares structs as whole values, a NULL field
//! ordered before any other: `(3, NULL) = (3, 1)` was false and `(1, NULL) < (1, 1)` true, where
//! PostgreSQL answers NULL (unknown), so `NOT ((a, b) = (3, 1))` kept a row PostgreSQL drops.
//! `(NULL, NULL) IS NULL` was false and `ROW(1, NULL) IS NOT NULL` true; PostgreSQL says a row
//! is NULL when every field is, and NOT NULL when none is. A struct comparison also cannot
//! prune a scan, and a join `ON (t.a, t.b) = (u.a, u.b)` had no equality to hash on.
//!
//! [`RowValues`], an analyzer rule run before type coercion (so that each pair of fields is
//! coerced on its own, as PostgreSQL does), writes a comparison of two row constructors of the
//! same width as the comparisons of their fields:
//! - `=` as every field equal, `<>` as any field different, `IS [NOT] DISTINCT FROM` likewise;
//! - `<`, `<=`, `>`, `>=` in order: the first pair that differs decides, and a NULL before it
//!   leaves the answer unknown (`a1 < b1 OR (a1 = b1 AND (a2 < b2 OR …))`, the last pair with
//!   the operator itself);
//! - `IS NULL` of a constructor as every field NULL, `IS NOT NULL` as none.
//!
//! A row inside a row is a field like any other, compared whole (PostgreSQL compares such a
//! record with NULL fields equal); a struct column, or a row beside one, is left to DataFusion.

use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, Result as DfResult};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator, and, or};
use datafusion::optimizer::AnalyzerRule;

use super::checked::{any_expression, rewrite_expressions};

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct RowValues;

impl AnalyzerRule for RowValues {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        rewrite_expressions(
            plan,
            |node| any_expression(node, compared_rows),
            |e, _schema: &DFSchema| {
                Ok(match rewritten(e.clone()) {
                    Some(e) => Transformed::yes(e),
                    None => Transformed::no(e),
                })
            },
        )
    }

    fn name(&self) -> &str {
        "apiary_row_values"
    }
}

/// The fields of `e` when it is a row constructor: `(a, b)`, `ROW(a, b)` (which DataFusion
/// plans as an aliased `struct`).
fn fields(e: &Expr) -> Option<&[Expr]> {
    match e {
        Expr::Alias(a) => fields(&a.expr),
        Expr::ScalarFunction(f)
            if matches!(f.func.name(), "struct" | "row") && !f.args.is_empty() =>
        {
            Some(&f.args)
        }
        _ => None,
    }
}

/// Whether [`rewritten`] writes `e` anew.
fn compared_rows(e: &Expr) -> bool {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            compared_by_field(*op)
                && matches!((fields(left), fields(right)), (Some(l), Some(r)) if l.len() == r.len())
        }
        Expr::IsNull(row) | Expr::IsNotNull(row) => fields(row).is_some(),
        _ => false,
    }
}

/// `e` written field by field, when it is a comparison of two rows of one width or a row's
/// `IS [NOT] NULL`.
fn rewritten(e: Expr) -> Option<Expr> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (l, r) = (fields(&left)?, fields(&right)?);
            (l.len() == r.len() && compared_by_field(op))
                .then(|| compare(l.to_vec(), op, r.to_vec()))
        }
        Expr::IsNull(row) => all(fields(&row)?, |f| f.is_null()),
        Expr::IsNotNull(row) => all(fields(&row)?, |f| f.is_not_null()),
        _ => None,
    }
}

fn compared_by_field(op: Operator) -> bool {
    use Operator::*;
    matches!(
        op,
        Eq | NotEq | Lt | LtEq | Gt | GtEq | IsDistinctFrom | IsNotDistinctFrom
    )
}

/// `f` of every field, joined by `AND`.
fn all(fields: &[Expr], f: impl Fn(Expr) -> Expr) -> Option<Expr> {
    fields.iter().cloned().map(f).reduce(and)
}

/// Rows `l` and `r` (of one width) compared by `op`, field by field.
fn compare(l: Vec<Expr>, op: Operator, r: Vec<Expr>) -> Expr {
    let mut pairs = l.into_iter().zip(r).rev();
    // A row inside a row is one value, compared whole as PostgreSQL compares records (a NULL
    // field equal to a NULL): DataFusion's struct comparison.
    let pair = |(a, b): (Expr, Expr), op: Operator| -> Expr {
        Expr::BinaryExpr(BinaryExpr::new(Box::new(a), op, Box::new(b)))
    };
    let last = pairs
        .next()
        .map(|p| pair(p, op))
        .expect("a row has a field");
    match op {
        Operator::Eq | Operator::IsNotDistinctFrom => {
            pairs.fold(last, |acc, p| and(pair(p, op), acc))
        }
        Operator::NotEq | Operator::IsDistinctFrom => {
            pairs.fold(last, |acc, p| or(pair(p, op), acc))
        }
        _ => {
            let strict = match op {
                Operator::Lt | Operator::LtEq => Operator::Lt,
                _ => Operator::Gt,
            };
            pairs.fold(last, |acc, p| {
                or(pair(p.clone(), strict), and(pair(p, Operator::Eq), acc))
            })
        }
    }
}
