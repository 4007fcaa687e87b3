//! Row-level changes of a frame — `DELETE`, `UPDATE`, `MERGE`, `TRUNCATE` — through delta-rs'
//! copy-on-write operations, run on the caller's DataFusion session.
//!
//! ```text
//!  DataFusion plans DELETE/UPDATE/MERGE ─▶ FrameTable::delete_from / update / merge_into
//!        ─▶ ChangeExec (nothing runs until executed) ─▶ Ledger::delete / update / merge
//!        ─▶ delta-rs operation on the pinned snapshot, our session state and writer properties
//!        ─▶ one commit (remove rewritten cells, add new ones) ─▶ one `count` row
//! ```
//!
//! Each operation reads the frame at the version the statement pinned and commits once; delta-rs'
//! conflict checker decides whether a concurrent commit invalidates what it read, in which case
//! the statement fails with [`Error::Conflict`] (ABORTED, retryable) and nothing is applied.
//! Partition-only predicates remove whole cells without rewriting them (delta-rs does that).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use arrow::array::{RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef, ScalarValue, TableReference};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::SessionState;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::dml::{MergeIntoAction, MergeIntoClause, MergeIntoClauseKind};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use deltalake::DeltaTable;
use deltalake::DeltaTableError;
use deltalake::kernel::transaction::{CommitProperties, TransactionError};
use deltalake::table::state::DeltaTableState;
use futures::future::BoxFuture;
use object_store::ObjectStore;
use tracing::info;
use url::Url;

use crate::error::{Error, Result};
use crate::ledger::{FrameSnapshot, Ledger};

/// What a row-level change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// The version committed; `None` when nothing matched and nothing was committed.
    pub version: Option<i64>,
    /// Rows deleted, updated, inserted (MERGE counts all three).
    pub rows: u64,
}

/// A MERGE as DataFusion planned it, with the clauses in their SQL order.
#[derive(Debug, Clone)]
pub struct MergeSpec {
    /// The `USING` side, already planned on the caller's session.
    pub source: Arc<dyn ExecutionPlan>,
    /// Target columns (qualified by the target's name) followed by the source's.
    pub merge_schema: DFSchemaRef,
    pub on: Expr,
    pub clauses: Vec<MergeIntoClause>,
}

/// The qualifiers delta-rs sees: target and source columns are renamed to these.
const TARGET: &str = "__apiary_target";
const SOURCE: &str = "__apiary_source";

impl Ledger {
    /// `snapshot` as a delta-rs table (state and log store), for its operations; refused for
    /// a snapshot that may not be written.
    pub(crate) fn delta_table(&self, snapshot: &FrameSnapshot) -> Result<DeltaTable> {
        let mut table = DeltaTable::new(self.writing_log_store(snapshot)?);
        table.state = Some(snapshot.delta_state().clone());
        Ok(table)
    }

    /// [`delta_table`](Self::delta_table), committing only the version after `snapshot`'s: for
    /// changes that replace every cell, which delta-rs would rebase over an append or a
    /// compaction without seeing their cells.
    pub(crate) fn delta_table_only_next(&self, snapshot: &FrameSnapshot) -> Result<DeltaTable> {
        let mut table = DeltaTable::new(crate::commit_hooks::only_at(
            self.writing_log_store(snapshot)?,
            snapshot.version() as u64 + 1,
        ));
        table.state = Some(snapshot.delta_state().clone());
        Ok(table)
    }

    pub(crate) fn commit_properties(&self, user: &str) -> CommitProperties {
        self.commit_properties_with(user, None)
    }

    /// Commit properties recording `user` and, when given, the operation's metrics.
    pub(crate) fn commit_properties_with(
        &self,
        user: &str,
        metrics: Option<serde_json::Value>,
    ) -> CommitProperties {
        let mut metadata = vec![("userName".to_string(), serde_json::Value::from(user))];
        if let Some(m) = metrics {
            metadata.push(("operationMetrics".to_string(), m));
        }
        CommitProperties::default()
            .with_max_retries(self.config().commit_retries)
            .with_metadata(metadata)
    }

    /// After an operation: remember the new state, report the version if one was committed.
    pub(crate) fn settle(
        &self,
        snapshot: &FrameSnapshot,
        table: &DeltaTable,
        what: &str,
    ) -> Option<i64> {
        let state: DeltaTableState = table.snapshot().ok()?.clone();
        let version = state.version() as i64;
        if version == snapshot.version() {
            return None;
        }
        info!(frame = %snapshot.frame(), version, what, "committed");
        self.remember(snapshot.frame(), snapshot.incarnation(), state);
        Some(version)
    }

    /// The outcome of a delta-rs operation on `snapshot`'s frame, its failure said as
    /// [`conflict`] says it, or as the drop it was ([`Ledger::unless_dropped`]).
    pub(crate) async fn checked<T>(
        &self,
        snapshot: &FrameSnapshot,
        outcome: std::result::Result<T, DeltaTableError>,
    ) -> Result<T> {
        self.unless_dropped_in(snapshot, outcome.map_err(|e| conflict(snapshot, e)))
            .await
    }

    /// `DELETE FROM frame [WHERE predicate]`.
    pub async fn delete(
        &self,
        snapshot: &FrameSnapshot,
        predicate: Option<Expr>,
        session: &SessionState,
        user: &str,
    ) -> Result<Changed> {
        // Without a predicate it replaces the frame with nothing: on the version it read only
        // (see `Ledger::commit`; delta-rs rebased it over an OPTIMIZE and kept every row).
        let table = match predicate {
            Some(_) => self.delta_table(snapshot)?,
            None => self.delta_table_only_next(snapshot)?,
        };
        let mut op = table
            .delete()
            .with_session_state(Arc::new(operation_session(session)?))
            .with_writer_properties(self.writer_properties()?)
            .with_commit_properties(self.commit_properties(user));
        if let Some(p) = predicate {
            let p = stored_columns(snapshot, p)?;
            let p = crate::nan::guard(p, snapshot.schema());
            let p = exactly_by_partition(p, snapshot.partition_columns());
            op = op.with_predicate(spellable(p, snapshot.schema(), snapshot.served_schema())?);
        }
        let (table, metrics) = self.checked(snapshot, op.await).await?;
        let version = self.settle(snapshot, &table, "delete");
        Ok(Changed {
            version,
            rows: metrics.num_deleted_rows.unwrap_or(0) as u64,
        })
    }

    /// `UPDATE frame SET c = e, … [WHERE predicate]`.
    pub async fn update(
        &self,
        snapshot: &FrameSnapshot,
        assignments: Vec<(String, Expr)>,
        predicate: Option<Expr>,
        session: &SessionState,
        user: &str,
    ) -> Result<Changed> {
        if assignments.is_empty() {
            return Err(Error::Internal(
                "an UPDATE that sets nothing is counted, not run".into(),
            ));
        }
        let table = self.delta_table(snapshot)?;
        let mut op = table
            .update()
            .with_session_state(Arc::new(operation_session(session)?))
            .with_writer_properties(self.writer_properties()?)
            .with_commit_properties(self.commit_properties(user))
            .with_safe_cast(false);
        for (column, value) in assignments {
            let field = snapshot.schema().field_with_name(&column).map_err(|_| {
                Error::Schema(format!(
                    "{} has no column {column} to SET",
                    snapshot.frame()
                ))
            })?;
            let value = crate::values::checked(
                stored_columns(snapshot, value)?,
                field,
                snapshot.partition_columns().contains(&column),
            );
            op = op.with_update(Column::new_unqualified(column), value);
        }
        if let Some(p) = predicate {
            let p = stored_columns(snapshot, p)?;
            op = op.with_predicate(spellable(
                crate::nan::guard(p, snapshot.schema()),
                snapshot.schema(),
                snapshot.served_schema(),
            )?);
        }
        let (table, metrics) = self.checked(snapshot, op.await).await?;
        let version = self.settle(snapshot, &table, "update");
        Ok(Changed {
            version,
            rows: metrics.num_updated_rows as u64,
        })
    }

    /// `MERGE INTO frame USING source ON … WHEN …`.
    pub async fn merge(
        &self,
        snapshot: &FrameSnapshot,
        target: &TableReference,
        spec: MergeSpec,
        session: &SessionState,
        user: &str,
    ) -> Result<Changed> {
        let session = operation_session(session)?;
        let rename = Qualifiers::new(target, &spec.merge_schema);
        let source_schema = spec.source.schema();
        let source = datafusion::prelude::DataFrame::new(
            session.clone(),
            datafusion::logical_expr::LogicalPlanBuilder::scan(
                SOURCE,
                datafusion::datasource::provider_as_source(Arc::new(
                    datafusion::catalog::streaming::StreamingTable::try_new(
                        source_schema.clone(),
                        vec![Arc::new(PlanPartition {
                            plan: Arc::new(CoalescePartitionsExec::new(spec.source.clone())),
                            schema: source_schema.clone(),
                        }) as Arc<dyn PartitionStream>],
                    )?,
                )),
                None,
            )?
            .build()?,
        );
        // delta-rs records the clauses as SQL text; a target column served as another type is
        // compared in its stored one (TIMESTAMP(3) in `ON t.v = s.v` failed INTERNAL).
        let on = spellable(
            rename.apply(snapshot, spec.on)?,
            snapshot.schema(),
            snapshot.served_schema(),
        )?;
        let table = self.delta_table(snapshot)?;
        let mut op = table
            .merge(source, on)
            .with_source_alias(SOURCE)
            .with_target_alias(TARGET)
            .with_session_state(Arc::new(session))
            .with_writer_properties(self.writer_properties()?)
            .with_commit_properties(self.commit_properties(user));
        let columns: Vec<String> = snapshot
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        // delta-rs copies a target row once per source row it matches when no MATCHED clause
        // rewrites it, so `WHEN NOT MATCHED BY SOURCE` alone duplicated target rows whose key
        // appears twice in the source (delta-rs Python does the same). A MATCHED clause makes
        // delta-rs refuse such duplicates instead.
        let by_source = spec
            .clauses
            .iter()
            .any(|c| c.kind == MergeIntoClauseKind::NotMatchedBySource);
        let matched = spec
            .clauses
            .iter()
            .any(|c| c.kind == MergeIntoClauseKind::Matched);
        if by_source && !matched {
            return Err(Error::InvalidArgument(
                "MERGE with WHEN NOT MATCHED BY SOURCE needs a WHEN MATCHED clause too (for \
                 example WHEN MATCHED THEN UPDATE SET <column> = <column>): without one, a \
                 target row that matches two source rows would be written twice"
                    .into(),
            ));
        }
        for clause in spec.clauses {
            let predicate = clause
                .predicate
                .map(|p| {
                    spellable(
                        rename.apply(snapshot, p)?,
                        snapshot.schema(),
                        snapshot.served_schema(),
                    )
                })
                .transpose()?;
            let mut sets = Vec::new();
            match &clause.action {
                MergeIntoAction::Update(a) => {
                    for (c, e) in a {
                        sets.push((c.clone(), rename.apply(snapshot, e.clone())?));
                    }
                }
                MergeIntoAction::Insert {
                    columns: named,
                    values,
                } => {
                    let names = if named.is_empty() { &columns } else { named };
                    if names.len() != values.len() {
                        return Err(Error::InvalidArgument(format!(
                            "MERGE INSERT lists {} column(s) and {} value(s)",
                            names.len(),
                            values.len()
                        )));
                    }
                    for (c, e) in names.iter().zip(values) {
                        sets.push((c.clone(), rename.apply(snapshot, e.clone())?));
                    }
                }
                MergeIntoAction::Delete => {}
            }
            for (c, _) in &sets {
                if !columns.contains(c) {
                    return Err(Error::Schema(format!(
                        "{} has no column {c}",
                        snapshot.frame()
                    )));
                }
            }
            let sets: Vec<(String, Expr)> = sets
                .into_iter()
                .map(|(c, e)| {
                    let partition = snapshot.partition_columns().contains(&c);
                    // delta-rs unites the clauses' values for a column with the target's own in
                    // one CASE: a column served as another type than it is stored (a TIME,
                    // stored as an integer) takes its values in the stored type.
                    let e = crate::schema::written_as_stored(
                        snapshot.schema(),
                        snapshot.served_schema(),
                        &c,
                        e,
                    );
                    let field = snapshot.schema().field_with_name(&c)?;
                    Ok((c, crate::values::checked(e, field, partition)))
                })
                .collect::<Result<_>>()?;
            let with_sets = |mut b: deltalake::operations::merge::UpdateBuilder| {
                if let Some(p) = predicate.clone() {
                    b = b.predicate(p);
                }
                for (c, e) in sets.clone() {
                    b = b.update(Column::new_unqualified(c), e);
                }
                b
            };
            op = match (clause.kind, &clause.action) {
                (MergeIntoClauseKind::Matched, MergeIntoAction::Update(_)) => {
                    op.when_matched_update(with_sets)?
                }
                (MergeIntoClauseKind::Matched, MergeIntoAction::Delete) => {
                    op.when_matched_delete(|mut d| {
                        if let Some(p) = predicate.clone() {
                            d = d.predicate(p);
                        }
                        d
                    })?
                }
                (k, MergeIntoAction::Insert { .. }) if k.is_not_matched_by_target() => op
                    .when_not_matched_insert(|mut i| {
                        if let Some(p) = predicate.clone() {
                            i = i.predicate(p);
                        }
                        for (c, e) in sets.clone() {
                            i = i.set(Column::new_unqualified(c), e);
                        }
                        i
                    })?,
                (MergeIntoClauseKind::NotMatchedBySource, MergeIntoAction::Update(_)) => {
                    op.when_not_matched_by_source_update(with_sets)?
                }
                (MergeIntoClauseKind::NotMatchedBySource, MergeIntoAction::Delete) => op
                    .when_not_matched_by_source_delete(|mut d| {
                        if let Some(p) = predicate.clone() {
                            d = d.predicate(p);
                        }
                        d
                    })?,
                (kind, action) => {
                    return Err(Error::InvalidArgument(format!(
                        "MERGE: WHEN {kind:?} THEN {} is not a valid clause",
                        match action {
                            MergeIntoAction::Update(_) => "UPDATE",
                            MergeIntoAction::Insert { .. } => "INSERT",
                            MergeIntoAction::Delete => "DELETE",
                        }
                    )));
                }
            };
        }
        let (table, metrics) = self.checked(snapshot, op.await).await?;
        let version = self.settle(snapshot, &table, "merge");
        Ok(Changed {
            version,
            rows: (metrics.num_target_rows_inserted
                + metrics.num_target_rows_updated
                + metrics.num_target_rows_deleted) as u64,
        })
    }
}

/// A delta-rs failure as ours: a lost conflict names the frame and the version read.
pub(crate) fn conflict(snapshot: &FrameSnapshot, e: DeltaTableError) -> Error {
    // A value the table cannot hold (`values::checked`), refused before it was written; it
    // comes back as text, under whatever delta-rs wrapped it in.
    if let Some((_, refused)) = e.to_string().split_once(crate::values::REFUSED) {
        return Error::InvalidArgument(format!("{}: {refused}", snapshot.frame()));
    }
    match e {
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(c),
        } => Error::Conflict {
            frame: snapshot.frame().to_string(),
            detail: format!(
                "{c} (this statement read version {}); run it again",
                snapshot.version()
            ),
        },
        DeltaTableError::Transaction {
            source: TransactionError::MaxCommitAttempts(n),
        } => Error::Conflict {
            frame: snapshot.frame().to_string(),
            detail: match n {
                // An operation that never retries (RESTORE): "gave up after 0 attempts".
                0 | 1 => format!(
                    "another commit landed after version {}, which this statement read; run it \
                     again",
                    snapshot.version()
                ),
                n => format!(
                    "gave up after {n} commit attempts from version {}; run it again",
                    snapshot.version()
                ),
            },
        },
        DeltaTableError::Generic(m) if m.contains("multiple source rows") => {
            Error::InvalidArgument(format!("MERGE into {}: {m}", snapshot.frame()))
        }
        DeltaTableError::Generic(m) if m.contains("failed validation check") => {
            Error::Schema(format!(
                "{}: the change would put NULL into a NOT NULL column ({m})",
                snapshot.frame()
            ))
        }
        // A value the change computes fails (a cast, a division by zero, an overflow): the
        // statement's fault, as the same expression in a query is.
        DeltaTableError::Arrow { source } if data_error(&source) => {
            Error::InvalidArgument(format!(
                "{}: the change failed on a value: {source}",
                snapshot.frame()
            ))
        }
        // Out of memory inside delta-rs (a MERGE's join): as the same join in a query says.
        DeltaTableError::Generic(m) if m.contains("Resources exhausted") => Error::DataFusion(
            Box::new(datafusion::error::DataFusionError::ResourcesExhausted(
                format!("{}: {m}", snapshot.frame()),
            )),
        ),
        DeltaTableError::Generic(m) if DATA_ERRORS.iter().any(|d| m.contains(d)) => {
            Error::InvalidArgument(format!(
                "{}: the change failed on a value: {m}",
                snapshot.frame()
            ))
        }
        other => other.into(),
    }
}

/// What Arrow's kernels say of a value they cannot compute, as delta-rs passes it on in text.
const DATA_ERRORS: [&str; 7] = [
    "Cast error",
    "Divide by zero",
    "Arithmetic overflow",
    "Compute error",
    "Parser error",
    // A decimal past its precision (`… is too large to store in a Decimal128 of precision 5`).
    "Invalid argument error",
    // A timestamp past nanoseconds' range (`Cannot cast Timestamp(µs) value … to Timestamp(ns)`).
    "Cannot cast",
];

fn data_error(e: &arrow::error::ArrowError) -> bool {
    use arrow::error::ArrowError as A;
    matches!(
        e,
        A::CastError(_)
            | A::DivideByZero
            | A::ArithmeticOverflow(_)
            | A::ComputeError(_)
            | A::ParseError(_)
            | A::InvalidArgumentError(_)
    )
}

/// A DELETE predicate over partition columns only, as `(predicate) IS TRUE` unless it is one
/// the Delta kernel decides exactly: the same rows, but delta-rs then finds the cells to remove
/// by evaluating it with DataFusion over their partition values. Otherwise it hands the
/// predicate to the kernel's file skipping, which keeps a cell whenever it cannot tell (a
/// NULL, an operator it reads loosely), and delta-rs removes every cell kept: `WHERE (p = 'x')
/// IS NULL`, a `CASE` or `coalesce` over `p`, `p NOT IN ('x', NULL)` deleted rows they do not
/// match. Plain comparisons are left as they are: the predicate is also what delta-rs records
/// as the commit's read, and `IS TRUE` there prunes nothing, so concurrent changes to other
/// partitions would conflict with it.
fn exactly_by_partition(p: Expr, partition_columns: &[String]) -> Expr {
    let columns = p.column_refs();
    let partition_only = !partition_columns.is_empty()
        && columns.iter().all(|c| partition_columns.contains(&c.name));
    if !partition_only || decided_by_kernel(&p) {
        return p;
    }
    match p {
        Expr::IsTrue(_) => p,
        p => p.is_true(),
    }
}

/// Whether the Delta kernel evaluates `p` exactly over partition values: `AND` and `OR` of a
/// column compared with a value (`=`, `<`, `<=`, `>`, `>=`), `IN` a list of values, `IS [NOT]
/// NULL`.
fn decided_by_kernel(p: &Expr) -> bool {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let value = |e: &Expr| matches!(e, Expr::Literal(v, _) if !v.is_null());
    let column = |e: &Expr| matches!(e, Expr::Column(_));
    match p {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And | Operator::Or,
            right,
        }) => decided_by_kernel(left) && decided_by_kernel(right),
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq,
            right,
        }) => (column(left) && value(right)) || (value(left) && column(right)),
        Expr::IsNull(e) | Expr::IsNotNull(e) => column(e),
        Expr::InList(l) => !l.negated && column(&l.expr) && l.list.iter().all(value),
        _ => false,
    }
}

/// `p` in a form delta-rs can record. delta-rs writes a DELETE's or UPDATE's predicate into the
/// commit as SQL text, and failed the whole statement (INTERNAL "Unable to convert expression
/// to string") on a literal it has no SQL for: an interval, a time, a duration, a float16, a
/// timestamp not in microseconds. A comparison of a column stored as another type (a float16
/// stored as a float, a time as an integer) with such a literal compares the stored column
/// with the literal in the stored type, when that is exact; a predicate still unspellable
/// (`d + INTERVAL '1 day' < current_date`) is refused, saying how to write it. delta-rs
/// simplifies the predicate again, so rewriting the literal as a cast of another would be
/// undone.
fn spellable(p: Expr, stored: &Schema, served: &Schema) -> Result<Expr> {
    use datafusion::logical_expr::{BinaryExpr, Cast, ExprSchemable, Operator, TryCast};
    let comparison = |op: Operator| {
        matches!(
            op,
            Operator::Eq
                | Operator::NotEq
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq
                | Operator::IsDistinctFrom
                | Operator::IsNotDistinctFrom
        )
    };
    // The literal in the stored type of `column`, when casting it there and back is exact.
    let in_stored = |column: &Expr, v: &ScalarValue| -> Option<ScalarValue> {
        let Expr::Column(c) = column else { return None };
        let to = stored.field_with_name(&c.name).ok()?.data_type();
        let there = v.cast_to(to).ok()?;
        (there.cast_to(&v.data_type()).ok()? == *v && !there.is_null()).then_some(there)
    };
    // The stored type of a MERGE target column read as served (`cast`, of the served type),
    // when the two differ: that cast is exact both ways.
    let stored_target = |column: &Expr, cast: &DataType| -> Option<DataType> {
        let Expr::Column(c) = column else { return None };
        c.relation.as_ref().filter(|r| r.table() == TARGET)?;
        let stored = stored.field_with_name(&c.name).ok()?.data_type();
        let served = served.field_with_name(&c.name).ok()?.data_type();
        (served == cast && served != stored).then(|| stored.clone())
    };
    // Types of the expressions of a DELETE's or UPDATE's predicate (unqualified columns).
    let typed = datafusion::common::DFSchema::try_from(stored.clone()).ok();
    let is_literal = |e: &Expr| matches!(e, Expr::Literal(..));
    let p = p
        .transform_up(|e| {
            // The engine plans a timestamp's date or time of day as a `TRY_CAST` (which
            // delta-rs cannot spell) to keep it out of interval analysis; over a timestamp it
            // answers as the cast, which delta-rs plans through the same rule.
            if let Expr::TryCast(TryCast { expr, field }) = &e
                && typed.as_ref().is_some_and(|schema| {
                    matches!(expr.get_type(schema), Ok(DataType::Timestamp(..)))
                })
                && matches!(
                    field.data_type(),
                    DataType::Date32 | DataType::Time32(_) | DataType::Time64(_)
                )
            {
                return Ok(Transformed::yes(Expr::Cast(Cast {
                    expr: expr.clone(),
                    field: field.clone(),
                })));
            }
            let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &e else {
                return Ok(Transformed::no(e));
            };
            if !comparison(*op) {
                return Ok(Transformed::no(e));
            }
            let rewritten = match (left.as_ref(), right.as_ref()) {
                (Expr::Cast(Cast { expr, .. }), Expr::Literal(v, _)) if !spelled_by_delta(v) => {
                    in_stored(expr, v).map(|v| {
                        Expr::BinaryExpr(BinaryExpr::new(
                            expr.clone(),
                            *op,
                            Box::new(Expr::Literal(v, None)),
                        ))
                    })
                }
                (Expr::Literal(v, _), Expr::Cast(Cast { expr, .. })) if !spelled_by_delta(v) => {
                    in_stored(expr, v).map(|v| {
                        Expr::BinaryExpr(BinaryExpr::new(
                            Box::new(Expr::Literal(v, None)),
                            *op,
                            expr.clone(),
                        ))
                    })
                }
                // MERGE: a target column served as another type, compared with a value that
                // is not a literal (`t.v = s.v` over TIMESTAMP(3), stored in microseconds):
                // the value is cast to the stored type instead, which delta-rs can spell.
                (Expr::Cast(Cast { expr, field }), other) if !is_literal(other) => {
                    stored_target(expr, field.data_type()).map(|to| {
                        Expr::BinaryExpr(BinaryExpr::new(
                            expr.clone(),
                            *op,
                            Box::new(Expr::Cast(Cast::new(Box::new(other.clone()), to))),
                        ))
                    })
                }
                (other, Expr::Cast(Cast { expr, field })) if !is_literal(other) => {
                    stored_target(expr, field.data_type()).map(|to| {
                        Expr::BinaryExpr(BinaryExpr::new(
                            Box::new(Expr::Cast(Cast::new(Box::new(other.clone()), to))),
                            *op,
                            expr.clone(),
                        ))
                    })
                }
                _ => None,
            };
            Ok(match rewritten {
                Some(r) => Transformed::yes(r),
                None => Transformed::no(e),
            })
        })?
        .data;
    match deltalake::delta_datafusion::expr::fmt_expr_to_sql(&p) {
        Ok(_) => Ok(p),
        Err(_) => Err(Error::Unsupported(format!(
            "delta-rs cannot record the predicate {p} in the table's history: it has no SQL for \
             an interval, time, duration or nanosecond timestamp value. Keep such arithmetic \
             off the column (`d < current_date - 1` rather than `d + 1 < current_date`), or \
             cast the column to a type with such values"
        ))),
    }
}

/// Whether delta-rs spells a literal of this kind as SQL (`fmt_expr_to_sql`; nanosecond
/// timestamps only with a feature we do not build).
fn spelled_by_delta(v: &ScalarValue) -> bool {
    use ScalarValue as S;
    match v {
        S::Dictionary(_, inner) => spelled_by_delta(inner),
        S::Boolean(_)
        | S::Float32(_)
        | S::Float64(_)
        | S::Int8(_)
        | S::Int16(_)
        | S::Int32(_)
        | S::Int64(_)
        | S::UInt8(_)
        | S::UInt16(_)
        | S::UInt32(_)
        | S::UInt64(_)
        | S::Decimal128(..)
        | S::Date32(_)
        | S::Date64(_)
        | S::TimestampMicrosecond(..)
        | S::Utf8(_)
        | S::LargeUtf8(_)
        | S::Utf8View(_)
        | S::Binary(_)
        | S::FixedSizeBinary(..)
        | S::LargeBinary(_)
        | S::BinaryView(_)
        | S::Null => true,
        _ => false,
    }
}

/// Columns served as another type than they are stored in are read through a cast, as the scan
/// reads them, so that expressions typed for the served schema evaluate on stored data.
fn stored_columns(snapshot: &FrameSnapshot, e: Expr) -> Result<Expr> {
    Ok(crate::schema::columns_as_served(
        snapshot.schema(),
        snapshot.served_schema(),
        e,
    )?)
}

/// Renames MERGE's qualifiers to the aliases delta-rs is given.
struct Qualifiers {
    target: TableReference,
    source: Vec<TableReference>,
}

impl Qualifiers {
    fn new(target: &TableReference, merge_schema: &DFSchemaRef) -> Self {
        let source = merge_schema
            .iter()
            .filter_map(|(q, _)| q.cloned())
            .filter(|q| !q.resolved_eq(target))
            .collect();
        Self {
            target: target.clone(),
            source,
        }
    }

    fn apply(&self, snapshot: &FrameSnapshot, e: Expr) -> Result<Expr> {
        // delta-rs records clauses as SQL text, which has no place for aliases.
        let e = e.unalias_nested().data;
        let mut subquery = false;
        e.apply(|e| {
            if matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
            ) {
                subquery = true;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if subquery {
            return Err(Error::Unsupported("subqueries inside MERGE clauses".into()));
        }
        let served = snapshot.served_schema();
        let stored = snapshot.schema();
        Ok(e.transform(|e| match &e {
            Expr::Column(c) => {
                let is_target = match &c.relation {
                    Some(r) => r.resolved_eq(&self.target),
                    None => false,
                };
                let is_source = c
                    .relation
                    .as_ref()
                    .is_some_and(|r| self.source.iter().any(|s| s.resolved_eq(r)));
                if is_target {
                    let col = Expr::Column(Column::new(Some(TARGET), c.name.clone()));
                    return Ok(Transformed::yes(crate::schema::read_as_served(
                        stored, served, &c.name, col,
                    )));
                }
                if is_source || c.relation.is_none() {
                    return Ok(Transformed::yes(Expr::Column(Column::new(
                        Some(SOURCE),
                        c.name.clone(),
                    ))));
                }
                Ok(Transformed::no(e))
            }
            _ => Ok(Transformed::no(e)),
        })?
        .data)
    }
}

/// DataFusion's optimizer rules that move expressions into projections of their own.
const FIELD_EXTRACTION: [&str; 3] = [
    "extract_leaf_expressions",
    "push_down_leaf_projections",
    "common_sub_expression_eliminate",
];

/// `state` without DataFusion's rules that move a field access (`s.a`) below a filter, or a
/// repeated expression (`v * 2 > 30 AND v * 2 < 50`), into a projection of its own, as
/// `__datafusion_extracted_N` or `__common_expr_N`. A row-level change is planned with it: the
/// predicate and assignments DataFusion hands a DELETE or UPDATE, and the plans delta-rs makes
/// of them, are read over the frame's own columns, where that column is not, and they failed
/// INTERNAL ("No field named __datafusion_extracted_1", "… __common_expr_3").
pub fn without_field_extraction(state: &SessionState) -> SessionState {
    without_field_extraction_builder(state).build()
}

fn without_field_extraction_builder(state: &SessionState) -> SessionStateBuilder {
    let rules = state
        .optimizers()
        .iter()
        .filter(|r| !FIELD_EXTRACTION.contains(&r.name()))
        .cloned()
        .collect();
    SessionStateBuilder::new_from_existing(state.clone()).with_optimizer_rules(rules)
}

/// The session an operation runs on: the caller's (configuration, functions, memory pool, disk
/// manager, the storage root's object store), with room for the stores delta-rs registers for
/// the frame it works on (its own `delta-rs://` URLs over our log store).
pub(crate) fn operation_session(state: &SessionState) -> Result<SessionState> {
    let env = state.runtime_env();
    let registry = Arc::new(OperationRegistry {
        inner: env.object_store_registry.clone(),
        own: RwLock::new(HashMap::new()),
    });
    let env = RuntimeEnvBuilder::from_runtime_env(env)
        .with_object_store_registry(registry)
        .build_arc()?;
    Ok(without_field_extraction_builder(state)
        .with_runtime_env(env)
        // delta-rs plans its own nodes (metric observers, merge barriers) with its planner.
        .with_query_planner(deltalake::delta_datafusion::planner::DeltaPlanner::new())
        .build())
}

/// The storage root's registry, plus the stores an operation registers (delta-rs' own URLs
/// for the frame's log store).
struct OperationRegistry {
    inner: Arc<dyn ObjectStoreRegistry>,
    own: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl fmt::Debug for OperationRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperationRegistry").finish_non_exhaustive()
    }
}

fn registry_key(url: &Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}

impl ObjectStoreRegistry for OperationRegistry {
    /// Registrations stay in this operation's registry: the engine's shared one is never
    /// changed (delta-rs registers only where nothing answers yet).
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.own
            .write()
            .expect("registry")
            .insert(registry_key(url), store)
    }

    fn deregister_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        self.own
            .write()
            .expect("registry")
            .remove(&registry_key(url))
            .ok_or_else(|| DataFusionError::Plan(format!("no object store registered for {url}")))
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        if let Some(s) = self.own.read().expect("registry").get(&registry_key(url)) {
            return Ok(s.clone());
        }
        self.inner.get_store(url)
    }
}

/// An already planned [`ExecutionPlan`] with one partition (MERGE's source, given to delta-rs
/// as a streaming table: batches flow, nothing is collected).
#[derive(Debug)]
struct PlanPartition {
    plan: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
}

impl PartitionStream for PlanPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// delta-rs reads the source more than once; a scan keeps the files it has handed out in
    /// its state, so each read runs on a fresh copy of the plan.
    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        match reset_plan_states(self.plan.clone()).and_then(|p| p.execute(0, ctx)) {
            Ok(s) => s,
            Err(e) => Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::once(async move { Err(e) }),
            )),
        }
    }
}

/// Work that a row-level statement does when executed, given the (optimized) inputs.
pub(crate) type Change = Arc<
    dyn Fn(Arc<TaskContext>, Vec<Arc<dyn ExecutionPlan>>) -> BoxFuture<'static, Result<Changed>>
        + Send
        + Sync,
>;

/// The physical plan of a row-level statement: runs its change once, when executed, and yields
/// one `count` row (what DataFusion and other servers answer for DML).
pub(crate) struct ChangeExec {
    what: &'static str,
    frame: String,
    change: Change,
    children: Vec<Arc<dyn ExecutionPlan>>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for ChangeExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChangeExec({} {})", self.what, self.frame)
    }
}

pub(crate) fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]))
}

impl ChangeExec {
    pub(crate) fn new(
        what: &'static str,
        frame: String,
        children: Vec<Arc<dyn ExecutionPlan>>,
        change: Change,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(count_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            what,
            frame,
            change,
            children,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for ChangeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: frame={}", self.what, self.frame)
    }
}

impl ExecutionPlan for ChangeExec {
    fn name(&self) -> &str {
        "ChangeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.children.iter().collect()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != self.children.len() {
            return Err(DataFusionError::Internal(
                "ChangeExec: wrong number of children".into(),
            ));
        }
        // The optimizer's rewrite of an input (distribution, sort) is what runs.
        Ok(Arc::new(Self {
            what: self.what,
            frame: self.frame.clone(),
            change: self.change.clone(),
            children,
            properties: self.properties.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "ChangeExec has one partition, asked for {partition}"
            )));
        }
        let change = (self.change)(context, self.children.clone());
        let stream = futures::stream::once(async move {
            let changed = change.await.map_err(DataFusionError::from)?;
            Ok(RecordBatch::try_new(
                count_schema(),
                vec![Arc::new(UInt64Array::from(vec![changed.rows]))],
            )?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            count_schema(),
            stream,
        )))
    }
}
