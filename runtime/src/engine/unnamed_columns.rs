//! Unnamed columns that repeat where their names never show.
//!
//! DataFusion names an unnamed column after its expression, and a projection's names must
//! differ: `INSERT INTO t SELECT id, NULL, NULL FROM s` failed with "Projections require unique
//! expression names", as did a `UNION` whose second branch selects `0, 0`. PostgreSQL, DuckDB and
//! Spark run both. An INSERT takes its rows' columns by position, and a set operation's later
//! branches give it no names (the first does), so [`renamed_repeats`] names each repeat there
//! `?columnN?` (N its position) before the statement is planned. Where the names show (a query's
//! result, the first branch of a `UNION`, a derived table, `UNION BY NAME`), a repeat is still
//! DataFusion's error.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    Expr, Ident, Query, Select, SelectItem, SetExpr, SetQuantifier, Statement, VisitorMut,
};

/// `statement` with the repeated unnamed columns of its INSERT rows and later set-operation
/// branches named.
pub(super) fn renamed_repeats(statement: &mut DfStatement) {
    super::visit_parsed(statement, &mut Repeats);
}

struct Repeats;

impl VisitorMut for Repeats {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &mut Statement) -> ControlFlow<()> {
        if let Statement::Insert(insert) = statement
            && let Some(source) = insert.source.as_mut()
        {
            rename(&mut source.body, true);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        rename(&mut query.body, false);
        ControlFlow::Continue(())
    }
}

/// Name the repeats of `body`'s selects whose names do not show: all of them when `hidden`,
/// else those of a set operation's branches after the first.
fn rename(body: &mut SetExpr, hidden: bool) {
    match body {
        SetExpr::Select(select) if hidden => rename_select(select),
        SetExpr::SetOperation {
            left,
            right,
            set_quantifier,
            ..
        } if !matches!(
            set_quantifier,
            SetQuantifier::ByName | SetQuantifier::AllByName | SetQuantifier::DistinctByName
        ) =>
        {
            rename(left, hidden);
            rename(right, true);
        }
        SetExpr::Query(q) => rename(&mut q.body, hidden),
        _ => {}
    }
}

fn rename_select(select: &mut Select) {
    let mut seen = HashSet::new();
    for (i, item) in select.projection.iter_mut().enumerate() {
        match item {
            SelectItem::ExprWithAlias { alias, .. } => {
                seen.insert(alias.value.to_lowercase());
            }
            SelectItem::UnnamedExpr(e) => {
                // A column is named by its last part (`t.a` and `a` are both `a`).
                let key = match &*e {
                    Expr::Identifier(id) => id.value.to_lowercase(),
                    Expr::CompoundIdentifier(ids) => ids
                        .last()
                        .map(|id| id.value.to_lowercase())
                        .unwrap_or_default(),
                    other => other.to_string(),
                };
                if !seen.insert(key) {
                    *item = SelectItem::ExprWithAlias {
                        expr: e.clone(),
                        alias: Ident::with_quote('"', format!("?column{}?", i + 1)),
                    };
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::DFParser;

    use super::*;

    fn renamed(sql: &str) -> String {
        let mut s = DFParser::parse_sql(sql).unwrap().pop_front().unwrap();
        renamed_repeats(&mut s);
        s.to_string()
    }

    #[test]
    fn repeats_are_named_only_where_names_do_not_show() {
        assert_eq!(
            renamed("INSERT INTO t SELECT id, NULL, NULL, s.id FROM s"),
            r#"INSERT INTO t SELECT id, NULL, NULL AS "?column3?", s.id AS "?column4?" FROM s"#
        );
        assert_eq!(
            renamed("SELECT 1, 2 UNION ALL SELECT 0, 0"),
            r#"SELECT 1, 2 UNION ALL SELECT 0, 0 AS "?column2?""#
        );
        // A result's own names, and UNION BY NAME, are left to DataFusion.
        assert_eq!(renamed("SELECT 0, 0"), "SELECT 0, 0");
        assert_eq!(
            renamed("SELECT 0, 0 UNION BY NAME SELECT 1, 1"),
            "SELECT 0, 0 UNION BY NAME SELECT 1, 1"
        );
    }
}
