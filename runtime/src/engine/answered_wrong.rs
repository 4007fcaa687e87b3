//! Statements DataFusion 55 would answer wrong, refused before they plan.
//!
//! A database that answers a query with the wrong rows, with no error, does more harm than one
//! that says it cannot run it. These constructs plan and run in DataFusion 55 but answer wrong
//! rows, so [`refuse`] turns them into NOT_IMPLEMENTED with the spelling that answers right:
//!
//! | construct | what DataFusion 55 answers | upstream |
//! |---|---|---|
//! | `EXCEPT ALL` | no copy of a row the right side holds at all (a semi-anti join), not the left's count less the right's | apache/datafusion#12956 |
//! | `INTERSECT ALL` | every left copy of a row the right side holds, not the smaller count | apache/datafusion#12955 |
//! | `RIGHT` or `FULL` join with `USING` or `NATURAL` | the shared column is the left side's, NULL on rows only the right side has | apache/datafusion#22881 |
//!
//! The check reads the parsed statement (views too, each time one is planned), so it sees what
//! the user wrote; a `LEFT`/`INNER` join with `USING`, and `UNION ALL`, answer right and pass.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    Join, JoinConstraint, JoinOperator, Query, SetExpr, SetOperator, SetQuantifier, TableFactor,
    Visitor,
};

use crate::error::{Error, Result};

/// Refuse `statement` if it holds a construct DataFusion 55 answers wrong.
pub(crate) fn refuse(statement: &DfStatement) -> Result<()> {
    match super::policy::visit_parsed(statement, &mut Wrong) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(why) => Err(Error::Unsupported(why)),
    }
}

struct Wrong;

impl Visitor for Wrong {
    type Break = String;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<String> {
        // The set operations and FROM lists of this query's own body; its subqueries are
        // queries of their own, visited in turn. Left-deep chains are walked without recursion.
        let mut pending = vec![query.body.as_ref()];
        while let Some(body) = pending.pop() {
            match body {
                SetExpr::SetOperation {
                    left,
                    op,
                    set_quantifier,
                    right,
                } => {
                    set_operation(op, set_quantifier)?;
                    pending.push(left);
                    pending.push(right);
                }
                SetExpr::Select(select) => {
                    for from in &select.from {
                        joins(&from.joins)?;
                    }
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<String> {
        match factor {
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => joins(&table_with_joins.joins),
            _ => ControlFlow::Continue(()),
        }
    }
}

fn set_operation(op: &SetOperator, quantifier: &SetQuantifier) -> ControlFlow<String> {
    let all = matches!(quantifier, SetQuantifier::All | SetQuantifier::AllByName);
    match op {
        SetOperator::Except | SetOperator::Minus if all => ControlFlow::Break(
            "EXCEPT ALL (DataFusion 55 answers it with the wrong number of copies of each row, \
             apache/datafusion#12956; EXCEPT, without ALL, answers right, and NOT EXISTS keeps \
             duplicates)"
                .into(),
        ),
        SetOperator::Intersect if all => ControlFlow::Break(
            "INTERSECT ALL (DataFusion 55 answers it with the wrong number of copies of each \
             row, apache/datafusion#12955; INTERSECT, without ALL, answers right)"
                .into(),
        ),
        _ => ControlFlow::Continue(()),
    }
}

fn joins(joins: &[Join]) -> ControlFlow<String> {
    for join in joins {
        let (kind, constraint) = match &join.join_operator {
            JoinOperator::Right(c) | JoinOperator::RightOuter(c) => ("RIGHT", c),
            JoinOperator::FullOuter(c) => ("FULL", c),
            _ => continue,
        };
        let spelled = match constraint {
            JoinConstraint::Using(_) => format!("{kind} JOIN … USING"),
            JoinConstraint::Natural => format!("NATURAL {kind} JOIN"),
            _ => continue,
        };
        return ControlFlow::Break(format!(
            "{spelled} (DataFusion 55 answers the shared column from the left side, NULL on \
             rows only the right side has, apache/datafusion#22881; write the join with ON and \
             select COALESCE(l.k, r.k) for the shared column)"
        ));
    }
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn refused(sql: &str) -> Option<String> {
        let s = DFParser::parse_sql(sql).unwrap().pop_front().unwrap();
        refuse(&s).err().map(|e| e.to_string())
    }

    #[test]
    fn what_datafusion_answers_wrong_is_refused_wherever_it_is_written() {
        for sql in [
            "SELECT a FROM t EXCEPT ALL SELECT a FROM u",
            "SELECT a FROM t UNION SELECT a FROM v INTERSECT ALL SELECT a FROM u",
            "SELECT * FROM (SELECT a FROM t EXCEPT ALL SELECT a FROM u) s",
            "SELECT * FROM t WHERE a IN (SELECT a FROM t INTERSECT ALL SELECT a FROM u)",
            "EXPLAIN SELECT a FROM t EXCEPT ALL SELECT a FROM u",
            "INSERT INTO w SELECT a FROM t EXCEPT ALL SELECT a FROM u",
            "SELECT * FROM t RIGHT JOIN u USING (k)",
            "SELECT * FROM t FULL OUTER JOIN u USING (k)",
            "SELECT * FROM t NATURAL FULL JOIN u",
            "SELECT * FROM t JOIN (u RIGHT JOIN v USING (k)) ON t.k = u.k",
            "WITH c AS (SELECT * FROM t FULL JOIN u USING (k)) SELECT * FROM c",
        ] {
            let why = refused(sql).unwrap_or_else(|| panic!("{sql} passed"));
            assert!(why.ends_with("is not supported yet"), "{why}");
        }
    }

    /// What plain DataFusion answers; when an upgrade answers right, this fails and the
    /// refusal can go.
    #[tokio::test]
    async fn datafusion_still_answers_these_wrong() {
        let ctx = datafusion::prelude::SessionContext::new();
        let answer = async |sql: &str| {
            let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            let mut rows: Vec<Option<i64>> = batches
                .iter()
                .flat_map(|b| {
                    let a = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64)
                        .unwrap();
                    let a = a
                        .as_any()
                        .downcast_ref::<arrow::array::Int64Array>()
                        .unwrap();
                    a.iter().collect::<Vec<_>>()
                })
                .collect();
            rows.sort();
            rows
        };
        let l = "(VALUES (1), (1), (1), (2)) AS l(k)";
        let r = "(VALUES (1), (4)) AS r(k)";
        // PostgreSQL: 1, 1, 2.
        let except = format!("SELECT k FROM {l} EXCEPT ALL SELECT k FROM {r}");
        assert_eq!(answer(&except).await, vec![Some(2)]);
        // PostgreSQL: 1.
        let intersect = format!("SELECT k FROM {l} INTERSECT ALL SELECT k FROM {r}");
        assert_eq!(answer(&intersect).await, vec![Some(1), Some(1), Some(1)]);
        // PostgreSQL: 4.
        let right = format!("SELECT k FROM {l} RIGHT JOIN {r} USING (k) WHERE r.k = 4");
        assert_eq!(answer(&right).await, vec![None]);
    }

    #[test]
    fn what_datafusion_answers_right_passes() {
        for sql in [
            "SELECT a FROM t EXCEPT SELECT a FROM u",
            "SELECT a FROM t INTERSECT SELECT a FROM u",
            "SELECT a FROM t UNION ALL SELECT a FROM u",
            "SELECT * FROM t LEFT JOIN u USING (k)",
            "SELECT * FROM t JOIN u USING (k)",
            "SELECT * FROM t NATURAL JOIN u",
            "SELECT * FROM t RIGHT JOIN u ON t.k = u.k",
            "SELECT * FROM t FULL JOIN u ON t.k = u.k",
        ] {
            assert_eq!(refused(sql), None, "{sql}");
        }
    }
}
