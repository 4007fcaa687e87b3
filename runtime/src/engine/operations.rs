//! Lakehouse operations on one frame: `DESCRIBE HISTORY`, `RESTORE`, `OPTIMIZE`, `VACUUM`,
//! `ALTER TABLE … ADD COLUMN` and `ALTER TABLE … CLUSTER BY` (the statements themselves are parsed in `sql::operations`; the
//! work is done by the storage crate's ledger).

use std::sync::Arc;

use apiary_storage::{FrameSnapshot, PartitionCondition};
use arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

use super::{Engine, Output, Session, catalog};
use crate::error::{Error, Result};
use crate::sql::travel::AsOf;
use crate::sql::{Command, DEFAULT_HISTORY_LIMIT, NameParts};

impl Engine {
    /// The latest snapshot of a frame a statement names, to be changed.
    pub(super) async fn target(
        &self,
        session: &Session,
        name: &NameParts,
    ) -> Result<FrameSnapshot> {
        let frame = catalog::frame_ref(session, name)?;
        Ok(self.lakehouse.frame(&frame, None).await?)
    }

    /// `DESCRIBE HISTORY f [LIMIT n]`: one row per commit, newest first.
    pub(super) async fn history(
        &self,
        session: &Session,
        name: &NameParts,
        limit: Option<usize>,
    ) -> Result<RecordBatch> {
        let snapshot = self.target(session, name).await?;
        let commits = self
            .lakehouse
            .ledger()
            .history(&snapshot, limit.unwrap_or(DEFAULT_HISTORY_LIMIT))
            .await?;
        let schema = Arc::new(Schema::new(commit_fields()));
        Ok(RecordBatch::try_new(schema, commit_columns(&commits))?)
    }

    /// `VACUUM … DRY RUN`: the files a VACUUM would delete, without deleting them.
    pub(super) async fn vacuum_dry_run(
        &self,
        session: &Session,
        name: &NameParts,
        retain_hours: Option<f64>,
    ) -> Result<RecordBatch> {
        let snapshot = self.target(session, name).await?;
        let done = self
            .lakehouse
            .ledger()
            .vacuum(
                &snapshot,
                retain_hours.unwrap_or(apiary_storage::maintain::DEFAULT_RETENTION_HOURS),
                self.vacuum_min_retention_hours,
                true,
                &session.user,
            )
            .await?;
        files_batch(&done.files, true)
    }

    /// `RESTORE`, `OPTIMIZE`, `VACUUM`, `ADD COLUMN` and `CLUSTER BY`: the count they report.
    pub(super) async fn operate(
        &self,
        env: Option<&Arc<datafusion::execution::runtime_env::RuntimeEnv>>,
        session: &Session,
        cmd: &Command,
    ) -> Result<Output> {
        let ledger = self.lakehouse.ledger();
        let user = session.user.as_str();
        match cmd {
            Command::Restore { name, to } => {
                let snapshot = self.target(session, name).await?;
                let version = match to {
                    AsOf::Version(v) => *v,
                    AsOf::Timestamp(t) => ledger.version_at(&snapshot, *t).await?,
                };
                let r = ledger.restore(&snapshot, version, user).await?;
                Ok(Output::Count(r.cells_added + r.cells_removed))
            }
            Command::Optimize {
                name,
                predicate,
                zorder,
            } => {
                let snapshot = self.target(session, name).await?;
                let conditions = match predicate {
                    Some(p) => self.partition_conditions(&snapshot, p)?,
                    None => Vec::new(),
                };
                // Rewriting runs in the bee's memory pool when there is one.
                let mut state = self.base_state().clone();
                if let Some(env) = env {
                    state = datafusion::execution::session_state::SessionStateBuilder::new_from_existing(state)
                        .with_runtime_env(env.clone())
                        .build();
                }
                // A rewrite of cells is a write: it waits while the node runs hot, as INSERTs do.
                if let Some(gate) = &self.write_gate {
                    gate.admit(0).await;
                }
                let o = ledger
                    .optimize(&snapshot, &conditions, zorder.clone(), &state, user)
                    .await?;
                Ok(Output::Count(o.cells_removed))
            }
            Command::Vacuum {
                name,
                retain_hours,
                dry_run: false,
            } => {
                let snapshot = self.target(session, name).await?;
                let done = ledger
                    .vacuum(
                        &snapshot,
                        retain_hours.unwrap_or(apiary_storage::maintain::DEFAULT_RETENTION_HOURS),
                        self.vacuum_min_retention_hours,
                        false,
                        user,
                    )
                    .await?;
                self.evict_vacuumed(snapshot.frame(), &done.files).await;
                Ok(Output::Count(done.files.len() as u64))
            }
            Command::ClusterBy { name, columns } => {
                let snapshot = self.target(session, name).await?;
                ledger.set_cluster_by(&snapshot, columns, user).await?;
                Ok(Output::Done)
            }
            Command::AddColumns { name, columns } => {
                let snapshot = self.target(session, name).await?;
                self.within_column_limit(snapshot.schema().fields().len() + columns.len())?;
                let mut fields = Vec::with_capacity(columns.len());
                for (column, ty) in columns {
                    fields.push(self.sql_type(ty).await?.with_name(column));
                }
                // Stored as CREATE TABLE stores the same types (INT UNSIGNED, TIME, TIMESTAMP
                // WITH TIME ZONE, nanoseconds): added as given, some were narrowed or refused.
                let fields = apiary_storage::schema::frame_schema_for(&Schema::new(fields))?
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                ledger.add_columns(&snapshot, fields, user).await?;
                Ok(Output::Done)
            }
            other => Err(Error::Internal(format!(
                "operate() given another command: {other:?}"
            ))),
        }
    }

    /// The Arrow type a SQL type name means here (the same type planner as CREATE TABLE).
    /// As a nullable field: a declared `VARCHAR(n)` is in its metadata. (DataFusion plans the
    /// cast here directly, past `sql_types::casts_cut`, so the cast keeps the type's length.)
    pub(super) async fn sql_type(&self, ty: &str) -> Result<Field> {
        let plan = self
            .base_state()
            .create_logical_plan(&format!("SELECT CAST(NULL AS {ty}) AS c"))
            .await
            .map_err(|e| Error::Sql(format!("column type {ty}: {e}")))?;
        match plan.schema().fields().as_ref() {
            [f] => Ok(f.as_ref().clone().with_nullable(true)),
            _ => Err(Error::Sql(format!("{ty} is not a column type"))),
        }
    }

    /// `OPTIMIZE … WHERE p`: `p` as conditions on partition columns (`=`, `<`, …, `IN`, `AND`).
    fn partition_conditions(
        &self,
        snapshot: &FrameSnapshot,
        predicate: &str,
    ) -> Result<Vec<PartitionCondition>> {
        let schema = DFSchema::try_from(snapshot.served_schema().as_ref().clone())?;
        let expr = self
            .base_state()
            .create_logical_expr(predicate, &schema)
            .map_err(|e| Error::Sql(format!("OPTIMIZE … WHERE {predicate}: {e}")))?;
        let bad = || {
            Error::Sql(format!(
                "OPTIMIZE … WHERE takes conditions on partition columns joined by AND \
                 (col = value, col < value, col IN (…)); not {predicate}"
            ))
        };
        let value = |e: &Expr| match e.clone().unalias_nested().data {
            Expr::Literal(v, _) if !v.is_null() => Ok(literal_text(&v)),
            Expr::Cast(c) => match *c.expr {
                Expr::Literal(v, _) if !v.is_null() => Ok(literal_text(&v)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        };
        let column = |e: &Expr| match e.clone().unalias_nested().data {
            Expr::Column(c) => Ok(c.name),
            Expr::Cast(c) => match *c.expr {
                Expr::Column(c) => Ok(c.name),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        };
        let mut out = Vec::new();
        for e in split_conjunction(&expr) {
            match e {
                Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                    let op = match op {
                        Operator::Eq => "=",
                        Operator::NotEq => "!=",
                        Operator::Lt => "<",
                        Operator::LtEq => "<=",
                        Operator::Gt => ">",
                        Operator::GtEq => ">=",
                        _ => return Err(bad()),
                    };
                    out.push(PartitionCondition {
                        column: column(left)?,
                        op: op.into(),
                        values: vec![value(right)?],
                    });
                }
                Expr::InList(l) => out.push(PartitionCondition {
                    column: column(&l.expr)?,
                    op: if l.negated { "not in" } else { "in" }.into(),
                    values: l.list.iter().map(value).collect::<Result<_>>()?,
                }),
                _ => return Err(bad()),
            }
        }
        Ok(out)
    }

    /// Drop the cells VACUUM deleted (paths relative to the frame's table) from the node's cell
    /// cache. Other nodes' caches keep them until they age out: only a read of a version from
    /// before the VACUUM can meet them there, and it gets that version's rows.
    async fn evict_vacuumed(&self, frame: &apiary_storage::FrameRef, files: &[String]) {
        let Some(cache) = &self.cell_cache else {
            return;
        };
        let storage = self.lakehouse.storage();
        let root = apiary_storage::paths::frame_root(frame);
        let keys: Vec<String> = files
            .iter()
            .map(|f| {
                let relative = object_store::path::Path::from_iter(
                    root.parts()
                        .chain(apiary_storage::paths::table_file_key(f).parts()),
                );
                storage.absolute(&relative).to_string()
            })
            .collect();
        let evicted = cache.evict(&keys).await;
        tracing::debug!(%frame, deleted = files.len(), evicted, "VACUUM cleared the cell cache");
    }
}

/// The columns of one commit, as `DESCRIBE HISTORY` and `system.lakehouse.history` show it.
pub(super) fn commit_fields() -> Vec<Field> {
    vec![
        Field::new("version", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("operation", DataType::Utf8, true),
        Field::new("operation_parameters", DataType::Utf8, true),
        Field::new("user", DataType::Utf8, true),
        Field::new("cells_added", DataType::UInt64, false),
        Field::new("cells_removed", DataType::UInt64, false),
        Field::new("rows_added", DataType::UInt64, true),
        Field::new("rows_removed", DataType::UInt64, true),
    ]
}

pub(super) fn commit_columns(commits: &[apiary_storage::Commit]) -> Vec<ArrayRef> {
    vec![
        Arc::new(Int64Array::from_iter_values(
            commits.iter().map(|c| c.version),
        )),
        Arc::new(
            TimestampMillisecondArray::from_iter(commits.iter().map(|c| c.timestamp_ms))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter(
            commits.iter().map(|c| c.operation.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            commits.iter().map(|c| c.parameters.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            commits.iter().map(|c| c.user.as_deref()),
        )),
        Arc::new(UInt64Array::from_iter_values(
            commits.iter().map(|c| c.cells_added),
        )),
        Arc::new(UInt64Array::from_iter_values(
            commits.iter().map(|c| c.cells_removed),
        )),
        Arc::new(UInt64Array::from_iter(commits.iter().map(|c| c.rows_added))),
        Arc::new(UInt64Array::from_iter(
            commits.iter().map(|c| c.rows_removed),
        )),
    ]
}

/// A literal as a Delta partition value string.
fn literal_text(v: &ScalarValue) -> String {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => s.clone(),
        other => other.to_string(),
    }
}

/// The files of a VACUUM, one row each.
pub(super) fn files_batch(files: &[String], dry_run: bool) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("dry_run", DataType::Boolean, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(files.iter())),
            Arc::new(BooleanArray::from(vec![dry_run; files.len()])),
        ],
    )?)
}
