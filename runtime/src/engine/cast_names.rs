//! Casts in a select list that would take the name of another column.
//!
//! DataFusion names a cast's result after what it casts (`CAST(id AS BIGINT)` is `id`, as in
//! PostgreSQL), but it refuses two result columns of one name, so `SELECT id, CAST(id AS
//! BIGINT)`, `SELECT id, id::text` and `SELECT *, CAST(id AS BIGINT)` failed with
//! "Projections require unique expression names". When DataFusion refuses a statement so
//! ([`planned`]), each cast without an alias of its own is named by its SQL text
//! (`CAST(id AS BIGINT)`, as DuckDB names it) where another column of the same select list could
//! share its name (another item reading the same name, or a wildcard beside a cast of a
//! column), and the statement is planned again. In a sorted query, where the ORDER BY's
//! columns join the select list (`SELECT x::int FROM t ORDER BY x` failed so), a cast of a
//! column is given its column's name as an alias, which ORDER BY then reads as PostgreSQL reads
//! an output name. Statements DataFusion plans keep its names.

use std::collections::HashMap;
use std::ops::ControlFlow;

use datafusion::error::Result as DfResult;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::{CopyToSource, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    CastKind, Expr, Ident, Query, Select, SelectItem, SetExpr, VisitMut, VisitorMut,
};

/// `parsed` planned with `state`, again with its casts named when DataFusion refused two result
/// columns of one name.
pub(crate) async fn planned(state: &SessionState, parsed: DfStatement) -> DfResult<LogicalPlan> {
    let mut again = parsed.clone();
    match state.statement_to_plan(parsed).await {
        Err(e) if e.to_string().contains("require unique expression names") => {
            let mut by_column = again.clone();
            distinct(&mut by_column, Sorted::ByColumn);
            match state.statement_to_plan(by_column).await {
                Ok(plan) => Ok(plan),
                // `SELECT t.x::int FROM t ORDER BY t.x`: the alias `x` beside the column
                // `t.x` is ambiguous; the cast is named by its text instead.
                Err(_) => {
                    distinct(&mut again, Sorted::ByText);
                    state.statement_to_plan(again).await
                }
            }
        }
        other => other,
    }
}

/// How a cast of a column in a sorted query is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sorted {
    /// By its column's name, which its ORDER BY then reads.
    ByColumn,
    /// By its text.
    ByText,
}

/// Name the casts of `statement`'s select lists that may share a name (see the module page).
fn distinct(statement: &mut DfStatement, sorted: Sorted) {
    match statement {
        DfStatement::Statement(s) => {
            let _ = s.visit(&mut Selects(sorted));
        }
        DfStatement::Explain(e) => distinct(&mut e.statement, sorted),
        DfStatement::CopyTo(c) => {
            if let CopyToSource::Query(q) = &mut c.source {
                let _ = q.visit(&mut Selects(sorted));
            }
        }
        _ => {}
    }
}

struct Selects(Sorted);

impl VisitorMut for Selects {
    type Break = ();

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        let ordered = query.order_by.is_some().then_some(self.0);
        selects_in(&mut query.body, ordered);
        ControlFlow::Continue(())
    }
}

fn selects_in(body: &mut SetExpr, ordered: Option<Sorted>) {
    match body {
        SetExpr::Select(select) => name_casts(select, ordered),
        SetExpr::SetOperation { left, right, .. } => {
            // Left-deep chains of thousands of terms are bounded before this runs
            // (`policy::check_shape`). An ORDER BY after a set operation sorts its output.
            selects_in(left, None);
            selects_in(right, None);
        }
        _ => {}
    }
}

/// The column `e` names, as written (`t.x` is `x`).
fn column_ident(e: &Expr) -> Option<&Ident> {
    match e {
        Expr::Identifier(i) => Some(i),
        Expr::CompoundIdentifier(parts) => parts.last(),
        Expr::Nested(inner) => column_ident(inner),
        _ => None,
    }
}

/// A cast DataFusion names after what it casts, and that inner expression.
fn cast_of(e: &Expr) -> Option<&Expr> {
    match e {
        Expr::Cast {
            kind: CastKind::Cast | CastKind::DoubleColon,
            expr,
            ..
        } => Some(expr),
        Expr::Nested(inner) => cast_of(inner),
        _ => None,
    }
}

/// The name DataFusion would give `e`'s result, loosely: the last part of a column's name, the
/// text of anything else, a cast's inner expression's. Two items of one key may share a name.
fn key(e: &Expr) -> String {
    if let Some(inner) = cast_of(e) {
        return key(inner);
    }
    match e {
        Expr::Nested(inner) => key(inner),
        Expr::Identifier(i) => i.value.to_lowercase(),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .map(|i| i.value.to_lowercase())
            .unwrap_or_default(),
        e => e.to_string(),
    }
}

fn is_column(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
}

/// Names `select`'s casts that may share a name; `ordered` when its query sorts, where a column
/// the ORDER BY reads joins the select list and may share a cast's name.
fn name_casts(select: &mut Select, ordered: Option<Sorted>) {
    let wildcard = select.projection.iter().any(|i| {
        matches!(
            i,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
        )
    });
    let mut count: HashMap<String, usize> = HashMap::new();
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(e) => *count.entry(key(e)).or_default() += 1,
            SelectItem::ExprWithAlias { alias, .. } => {
                *count.entry(alias.value.to_lowercase()).or_default() += 1
            }
            _ => {}
        }
    }
    for item in select.projection.iter_mut() {
        let SelectItem::UnnamedExpr(e) = item else {
            continue;
        };
        let Some(inner) = cast_of(e) else { continue };
        let shared = count.get(&key(e)).is_some_and(|n| *n > 1);
        let by_text = ordered == Some(Sorted::ByText) && is_column(inner);
        if shared || by_text || (wildcard && is_column(inner)) {
            let alias = Ident::with_quote('"', e.to_string());
            *item = SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias,
            };
        } else if ordered == Some(Sorted::ByColumn)
            && let Some(column) = column_ident(inner)
        {
            // `SELECT x::int FROM t ORDER BY x` (or `ORDER BY y`): the result keeps its name
            // `x`, now an alias, and ORDER BY x sorts it, as PostgreSQL reads an output name.
            let alias = column.clone();
            *item = SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn named(sql: &str) -> String {
        named_so(sql, Sorted::ByColumn)
    }

    fn named_so(sql: &str, sorted: Sorted) -> String {
        let mut s = DFParser::parse_sql(sql).unwrap().pop_front().unwrap();
        distinct(&mut s, sorted);
        s.to_string()
    }

    #[test]
    fn a_cast_sharing_a_name_is_named_by_its_text() {
        assert_eq!(
            named("SELECT id, CAST(id AS BIGINT) FROM t"),
            "SELECT id, CAST(id AS BIGINT) AS \"CAST(id AS BIGINT)\" FROM t"
        );
        assert_eq!(
            named("SELECT t.id, id::TEXT FROM t"),
            "SELECT t.id, id::TEXT AS \"id::TEXT\" FROM t"
        );
        assert_eq!(
            named("SELECT *, CAST(id AS BIGINT) FROM t"),
            "SELECT *, CAST(id AS BIGINT) AS \"CAST(id AS BIGINT)\" FROM t"
        );
        assert_eq!(
            named("SELECT x FROM (SELECT CAST(a AS INT), CAST(a AS DOUBLE) FROM t)"),
            "SELECT x FROM (SELECT CAST(a AS INT) AS \"CAST(a AS INT)\", \
             CAST(a AS DOUBLE) AS \"CAST(a AS DOUBLE)\" FROM t)"
        );
        // Sorted: a column the ORDER BY reads joins the select list, so a cast of a column is
        // named as DataFusion names it, by an alias.
        assert_eq!(
            named("SELECT t.x::INT, y FROM t ORDER BY y"),
            "SELECT t.x::INT AS x, y FROM t ORDER BY y"
        );
        assert_eq!(
            named_so("SELECT t.x::INT FROM t ORDER BY t.x", Sorted::ByText),
            "SELECT t.x::INT AS \"t.x::INT\" FROM t ORDER BY t.x"
        );
        // Nothing to share a name with: DataFusion's own names stay.
        for alone in [
            "SELECT CAST(id AS BIGINT), name FROM t",
            "SELECT id, CAST(id AS BIGINT) AS big FROM t",
            "SELECT *, CAST(1 AS BIGINT) FROM t",
        ] {
            assert_eq!(named(alone), alone);
        }
    }
}
