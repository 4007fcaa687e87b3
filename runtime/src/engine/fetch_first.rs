//! `FETCH FIRST n ROWS ONLY`, the SQL standard's `LIMIT`.
//!
//! DataFusion parses the clause and refuses it ("FETCH clause is not supported yet"), so
//! `SELECT … ORDER BY x OFFSET 10 ROWS FETCH NEXT 5 ROWS ONLY`, which BI tools and users of
//! Oracle, DB2 and SQL Server write, failed as NOT_IMPLEMENTED. [`as_limit`] writes it as the
//! `LIMIT` it means (`FETCH FIRST ROW ONLY` is `LIMIT 1`) before the statement is planned.
//! `WITH TIES`, `PERCENT`, and a `FETCH` beside a `LIMIT` are left to DataFusion's refusal.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Expr, Fetch, LimitClause, Query, Value, VisitorMut};

/// `statement` with each plain `FETCH FIRST|NEXT n ROW|ROWS ONLY` written as `LIMIT n`.
pub(crate) fn as_limit(statement: &mut DfStatement) {
    super::visit_parsed(statement, &mut Fetches);
}

struct Fetches;

impl VisitorMut for Fetches {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        let plain = matches!(
            query.fetch,
            Some(Fetch {
                with_ties: false,
                percent: false,
                ..
            })
        );
        let limit = match &mut query.limit_clause {
            None if plain => query.limit_clause.insert(LimitClause::LimitOffset {
                limit: None,
                offset: None,
                limit_by: Vec::new(),
            }),
            Some(clause @ LimitClause::LimitOffset { limit: None, .. }) if plain => clause,
            _ => return ControlFlow::Continue(()),
        };
        let LimitClause::LimitOffset { limit, .. } = limit else {
            return ControlFlow::Continue(());
        };
        let rows = query.fetch.take().and_then(|f| f.quantity);
        *limit = Some(rows.unwrap_or_else(|| Expr::value(Value::Number("1".into(), false))));
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn rewritten(sql: &str) -> String {
        let mut s = DFParser::parse_sql(sql).unwrap().pop_front().unwrap();
        as_limit(&mut s);
        s.to_string()
    }

    #[test]
    fn a_plain_fetch_becomes_the_limit_it_means() {
        assert_eq!(
            rewritten("SELECT a FROM t ORDER BY a FETCH FIRST 5 ROWS ONLY"),
            "SELECT a FROM t ORDER BY a LIMIT 5"
        );
        assert_eq!(
            rewritten("SELECT a FROM t ORDER BY a OFFSET 10 ROWS FETCH NEXT ROW ONLY"),
            "SELECT a FROM t ORDER BY a LIMIT 1 OFFSET 10 ROWS"
        );
        assert_eq!(
            rewritten("SELECT * FROM (SELECT a FROM t FETCH FIRST 2 ROWS ONLY) AS s"),
            "SELECT * FROM (SELECT a FROM t LIMIT 2) AS s"
        );
        for kept in [
            "SELECT a FROM t ORDER BY a FETCH FIRST 5 ROWS WITH TIES",
            "SELECT a FROM t FETCH FIRST 5 PERCENT ROWS ONLY",
        ] {
            assert!(rewritten(kept).contains("FETCH FIRST"), "{kept}");
        }
    }
}
