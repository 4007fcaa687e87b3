//! Which plans may run: an allowlist on the logical plan, checked after planning and before
//! anything executes — not a denylist on the first words of the text, which `EXPLAIN ANALYZE`,
//! comments and nesting walk around.
//!
//! | where                    | allowed                                                        |
//! |--------------------------|----------------------------------------------------------------|
//! | anywhere                 | relational operators over frames, `system.*` and table functions |
//! | at the top of a statement | `CREATE TABLE [AS]`, `INSERT`, `DELETE`, `UPDATE` (one frame, no subquery), `MERGE`, `TRUNCATE`, `CREATE EXTERNAL TABLE` (read-only, under the allowed roots) |
//! | `EXPLAIN [ANALYZE]`       | a query (never a write: `EXPLAIN ANALYZE` runs what it explains) |
//!
//! Everything else — `COPY`, DataFusion's other DDL (its own views and catalogs), `SET`,
//! `PREPARE`, transactions, extension nodes — is refused, with DataFusion's own `SQLOptions`
//! check behind ours as a second layer. Apiary's own commands (`CREATE VIEW`, `OPTIMIZE`,
//! `VACUUM`, `RESTORE`, `ALTER TABLE … ADD COLUMN`, `DESCRIBE HISTORY`) are not DataFusion plans:
//! each names one frame and writes through the ledger, which refuses external frames and past
//! versions; a stored view's query is checked here again, as a query, each time it is planned. Reading or writing outside the storage root is also impossible one
//! level down: the engine's object-store registry knows the root only
//! (`apiary_storage::confine`).

use std::ops::ControlFlow;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{DdlStatement, DmlStatement, Expr, LogicalPlan, WriteOp};
use datafusion::sql::parser::Statement as DfStatement;

use crate::error::{Error, Result};

/// What a plan is planned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A result set (GetFlightInfo, DoGet, prepared queries).
    Query,
    /// A statement run for its effect (updates, `apiary sql`).
    Statement,
}

/// Refuse `plan` unless it is allowed for `purpose`.
pub(crate) fn check(plan: &LogicalPlan, purpose: Purpose) -> Result<()> {
    let writes = purpose == Purpose::Statement;
    // A view has no data of its own (as OPTIMIZE and the other operations say). DataFusion
    // answered NOT_IMPLEMENTED, and an UPDATE of one that it had planned over the view's query
    // was refused as if it had a subquery.
    if let LogicalPlan::Dml(DmlStatement {
        table_name, target, ..
    }) = plan
        && datafusion::datasource::source_as_provider(target)
            .is_ok_and(|t| t.table_type() == datafusion::datasource::TableType::View)
    {
        return Err(Error::NotAllowed(
            match table_name.schema() == Some(super::information_schema::INFORMATION_SCHEMA)
                || table_name.catalog() == Some(apiary_storage::paths::SYSTEM_HIVE)
            {
                true => format!("{table_name} is a system table: it is read-only"),
                false => format!(
                    "{table_name} is a view: it has no data of its own (write to the frames it \
                     reads)"
                ),
            },
        ));
    }
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c)) if writes => reads_only(&c.input)?,
        // Registers data in place; where it may be is checked against the allowed roots.
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(_)) if writes => {}
        LogicalPlan::Dml(DmlStatement {
            op: WriteOp::Insert(_),
            input,
            ..
        }) if writes => reads_only(input)?,
        LogicalPlan::Dml(DmlStatement {
            op: op @ (WriteOp::Delete | WriteOp::Update),
            input,
            ..
        }) if writes => one_frame_filtered(input, op)?,
        LogicalPlan::Dml(DmlStatement {
            op: WriteOp::Truncate,
            ..
        }) if writes => {}
        LogicalPlan::Dml(DmlStatement {
            op: WriteOp::MergeInto(_),
            input,
            ..
        }) if writes => reads_only(input)?,
        other => reads_only(other)?,
    }
    // Second layer: DataFusion's own verdict on the same plan.
    SQLOptions::new()
        .with_allow_ddl(writes)
        .with_allow_dml(writes)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| Error::NotAllowed(e.to_string()))
}

/// The input of a `DELETE` or `UPDATE`: the target frame, filtered and projected, and nothing
/// else. Row-level changes take their predicate from the plan's filters, so a join (`UPDATE …
/// FROM`) or a subquery (which the optimizer turns into a join) would be lost from it: those are
/// refused, not run with a weaker predicate.
fn one_frame_filtered(input: &LogicalPlan, op: &WriteOp) -> Result<()> {
    let mut refused = false;
    input.apply(|node| {
        let shape_ok = matches!(
            node,
            LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::SubqueryAlias(_)
                | LogicalPlan::TableScan(_)
        );
        let exprs_ok = node.expressions().iter().all(|e| {
            !e.exists(|e| {
                Ok(matches!(
                    e,
                    Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
                ))
            })
            .unwrap_or(true)
        });
        refused = !(shape_ok && exprs_ok);
        Ok(if refused {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    match refused {
        true => Err(Error::Unsupported(format!(
            "{op} with a subquery or another table; write it as MERGE INTO … USING"
        ))),
        false => Ok(()),
    }
}

/// Every node of `plan`, subqueries included, only reads.
fn reads_only(plan: &LogicalPlan) -> Result<()> {
    let mut refused: Option<Error> = None;
    plan.apply_with_subqueries(|node| {
        let ok = match node {
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Aggregate(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Join(_)
            | LogicalPlan::Repartition(_)
            | LogicalPlan::Union(_)
            | LogicalPlan::TableScan(_)
            | LogicalPlan::EmptyRelation(_)
            | LogicalPlan::Subquery(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Values(_)
            | LogicalPlan::Distinct(_)
            | LogicalPlan::Unnest(_)
            | LogicalPlan::RecursiveQuery(_)
            | LogicalPlan::DescribeTable(_)
            // Explaining is reading; what is explained is walked as a child.
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_) => true,
            LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Extension(_) => false,
        };
        if ok {
            Ok(TreeNodeRecursion::Continue)
        } else {
            refused = Some(refusal(node));
            Ok(TreeNodeRecursion::Stop)
        }
    })?;
    match refused {
        None => Ok(()),
        Some(r) => Err(r),
    }
}

/// Why `node` may not run: writing files or writing where a query is expected is not allowed;
/// the rest (other DDL, `SET`, `PREPARE`, transactions, extensions) is not supported.
fn refusal(node: &LogicalPlan) -> Error {
    match node {
        LogicalPlan::Copy(_) => Error::NotAllowed(
            "COPY writes files; Apiary writes only frames (CREATE TABLE AS, INSERT)".into(),
        ),
        LogicalPlan::Dml(d) => Error::NotAllowed(format!(
            "{} inside a query or EXPLAIN; run it as a statement of its own",
            d.op
        )),
        LogicalPlan::Ddl(d) => Error::Unsupported(d.name().to_string()),
        LogicalPlan::Statement(s) => Error::Unsupported(s.name().to_string()),
        LogicalPlan::Extension(e) => Error::Unsupported(e.node.name().to_string()),
        other => Error::Unsupported(other.display().to_string()),
    }
}

/// Refuse a parsed statement nested deeper than `limits.max_sql_depth` (expressions and
/// subqueries) or reading more than `limits.max_sql_relations` relations (tables, subqueries and
/// functions in `FROM` and `JOIN`, and the terms of `UNION`, `INTERSECT` and `EXCEPT`): planning
/// recurses over the tree and costs more than linearly in its depth and in its relations (300
/// joined subqueries planned for 20 s, 6,000 `UNION ALL` terms for minutes, none of it
/// interruptible), so both are bounded before anything plans. The walk itself is one pass; it
/// runs on a CPU-runtime thread, whose stack has room for any depth the parser produces (chains
/// of binary operators are parsed in a loop, so they are the deep case).
pub(crate) fn check_shape(statement: &DfStatement, limits: &super::Limits) -> Result<()> {
    let mut shape = Shape {
        now: 0,
        max: limits.max_sql_depth,
        relations: 0,
        max_relations: limits.max_sql_relations,
    };
    match visit_parsed(statement, &mut shape) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(Beyond::Depth) => Err(Error::Sql(format!(
            "the statement nests deeper than {} levels (--max-sql-depth); \
             a long chain of OR or + is one level per term: use IN (...) or split the statement",
            limits.max_sql_depth
        ))),
        ControlFlow::Break(Beyond::Relations) => Err(Error::Sql(format!(
            "the statement reads more than {} relations (--max-sql-relations: tables, \
             subqueries and UNION terms); for many rows use one VALUES list or bulk ingest, \
             or split the statement",
            limits.max_sql_relations
        ))),
    }
}

/// `visitor` over the SQL of `statement`: a statement's, an `EXPLAIN`'s, a `COPY`'s query.
pub(super) fn visit_parsed<V: datafusion::sql::sqlparser::ast::Visitor>(
    statement: &DfStatement,
    visitor: &mut V,
) -> ControlFlow<V::Break> {
    use datafusion::sql::sqlparser::ast::Visit;
    match statement {
        DfStatement::Statement(s) => s.visit(visitor),
        DfStatement::Explain(e) => visit_parsed(&e.statement, visitor),
        DfStatement::CopyTo(c) => match &c.source {
            datafusion::sql::parser::CopyToSource::Query(q) => q.visit(visitor),
            _ => ControlFlow::Continue(()),
        },
        _ => ControlFlow::Continue(()),
    }
}

/// Which bound a statement passed.
enum Beyond {
    Depth,
    Relations,
}

struct Shape {
    now: usize,
    max: usize,
    relations: usize,
    max_relations: usize,
}

impl Shape {
    fn enter(&mut self) -> ControlFlow<Beyond> {
        self.now += 1;
        match self.now > self.max {
            true => ControlFlow::Break(Beyond::Depth),
            false => ControlFlow::Continue(()),
        }
    }

    fn leave(&mut self) -> ControlFlow<Beyond> {
        self.now = self.now.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn read(&mut self, relations: usize) -> ControlFlow<Beyond> {
        self.relations = self.relations.saturating_add(relations);
        match self.relations > self.max_relations {
            true => ControlFlow::Break(Beyond::Relations),
            false => ControlFlow::Continue(()),
        }
    }
}

/// The terms of a set operation beyond its first (none for a plain `SELECT`). Left-deep chains
/// of thousands are walked without recursion.
fn more_terms(body: &datafusion::sql::sqlparser::ast::SetExpr) -> usize {
    use datafusion::sql::sqlparser::ast::SetExpr;
    let mut pending = vec![body];
    let mut terms = 0usize;
    while let Some(e) = pending.pop() {
        match e {
            SetExpr::SetOperation { left, right, .. } => {
                pending.push(left);
                pending.push(right);
            }
            _ => terms += 1,
        }
    }
    terms.saturating_sub(1)
}

impl datafusion::sql::sqlparser::ast::Visitor for Shape {
    type Break = Beyond;

    fn pre_visit_expr(&mut self, _: &datafusion::sql::sqlparser::ast::Expr) -> ControlFlow<Beyond> {
        self.enter()
    }

    fn post_visit_expr(
        &mut self,
        _: &datafusion::sql::sqlparser::ast::Expr,
    ) -> ControlFlow<Beyond> {
        self.leave()
    }

    fn pre_visit_query(
        &mut self,
        query: &datafusion::sql::sqlparser::ast::Query,
    ) -> ControlFlow<Beyond> {
        self.read(more_terms(&query.body))?;
        self.enter()
    }

    fn post_visit_query(
        &mut self,
        _: &datafusion::sql::sqlparser::ast::Query,
    ) -> ControlFlow<Beyond> {
        self.leave()
    }

    fn pre_visit_table_factor(
        &mut self,
        _: &datafusion::sql::sqlparser::ast::TableFactor,
    ) -> ControlFlow<Beyond> {
        self.read(1)
    }
}
