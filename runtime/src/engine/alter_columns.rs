//! `ALTER TABLE … DROP COLUMN`, `RENAME COLUMN`, `ALTER COLUMN … TYPE` and `… SET/DROP NOT
//! NULL`: one rewrite of the frame in its new shape.
//!
//! A Delta table without column mapping names its Parquet columns by the table's column names,
//! so a column cannot be dropped or renamed by changing the log alone (Spark refuses both
//! unless column mapping is on, which delta-rs 1.1 does not write). Each change here reads the
//! frame at the version it names, writes every row again in the new shape (renamed, without the
//! dropped column, cast to the new type), and commits the new cells and the new schema in one
//! overwrite commit onto that version ([`FrameSnapshot::reshaped`]): readers see the old frame
//! or the new one, never a mix, and a write that committed meanwhile makes the change fail
//! (ABORTED, to retry) rather than be lost. Time travel still reads the old shape at the old
//! versions. The cost is a full rewrite, as `CREATE OR REPLACE TABLE … AS SELECT` would be.

use std::sync::Arc;

use apiary_storage::FrameSnapshot;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::Column;
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, cast};
use datafusion::physical_plan::execute_stream;

use super::ingest::Target;
use super::{Engine, Output, Session};
use crate::error::{Error, Result};
use crate::sql::{ColumnChange, NameParts};

/// The frame's column `name` is: the one so named, else the one named so in another case.
fn position(schema: &Schema, name: &str, frame: &str) -> Result<Option<usize>> {
    let fields = schema.fields();
    if let Some(i) = fields.iter().position(|f| f.name() == name) {
        return Ok(Some(i));
    }
    let mut alike = fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name().eq_ignore_ascii_case(name));
    match (alike.next(), alike.next()) {
        (Some((i, _)), None) => Ok(Some(i)),
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(Error::Sql(format!(
            "{frame} has several columns named {name} in other cases; quote the one meant"
        ))),
    }
}

fn no_column(frame: &str, name: &str) -> Error {
    apiary_storage::Error::NotFound {
        kind: apiary_storage::ObjectKind::Frame,
        name: format!("column {name} of {frame}"),
    }
    .into()
}

/// A rewrite: the new schema, and for each of its columns the expression over the old frame.
struct Rewrite {
    schema: Schema,
    columns: Vec<Expr>,
    cluster_by: Vec<String>,
}

impl Engine {
    /// `ALTER TABLE name <change>`; see the module's documentation.
    pub(super) async fn alter_column(
        &self,
        env: Option<&Arc<datafusion::execution::runtime_env::RuntimeEnv>>,
        session: &Session,
        name: &NameParts,
        change: &ColumnChange,
    ) -> Result<Output> {
        let snapshot = self.target(session, name).await?;
        snapshot.writable()?;
        let Some(rewrite) = self.rewrite(&snapshot, change).await? else {
            return Ok(Output::Done);
        };
        let schema = apiary_storage::schema::frame_schema_for(&rewrite.schema)?;
        let reshaped =
            snapshot.reshaped(&schema, snapshot.partition_columns(), &rewrite.cluster_by)?;

        // Rows are read from the version the change was decided on, and written in the bee's
        // memory pool when there is one.
        let mut state = self.base_state().clone();
        if let Some(env) = env {
            state =
                datafusion::execution::session_state::SessionStateBuilder::new_from_existing(state)
                    .with_runtime_env(env.clone())
                    .build();
        }
        let source = provider_as_source(Arc::new(self.frame_table(snapshot.clone())));
        let plan = LogicalPlanBuilder::scan(snapshot.frame().to_string(), source, None)?
            .project(rewrite.columns)?
            .build()?;
        let physical = state.create_physical_plan(&plan).await?;
        // A rewrite of cells is a write: it waits while the node runs hot, as INSERTs do.
        if let Some(gate) = &self.write_gate {
            gate.admit(0).await;
        }
        let data = execute_stream(physical, state.task_ctx())?;
        let target = Target::Write {
            table: Box::new(self.frame_table(reshaped)),
            overwrite: true,
        };
        self.write_target(target, data, state.task_ctx()).await?;
        Ok(Output::Done)
    }

    /// What `change` makes of `snapshot`'s columns; `None` when it changes nothing (`DROP
    /// COLUMN IF EXISTS` of a column the frame lacks).
    async fn rewrite(
        &self,
        snapshot: &FrameSnapshot,
        change: &ColumnChange,
    ) -> Result<Option<Rewrite>> {
        let frame = snapshot.frame().to_string();
        let old: SchemaRef = snapshot.schema().clone();
        let target = match change {
            ColumnChange::Drop { column, .. }
            | ColumnChange::Retype { column, .. }
            | ColumnChange::Nullability { column, .. } => column,
            ColumnChange::Rename { from, .. } => from,
        };
        let i = match (position(&old, target, &frame)?, change) {
            (Some(i), _) => i,
            (
                None,
                ColumnChange::Drop {
                    if_exists: true, ..
                },
            ) => return Ok(None),
            (None, _) => return Err(no_column(&frame, target)),
        };
        let found = old.field(i).name().clone();
        if snapshot.partition_columns().contains(&found) {
            return Err(apiary_storage::Error::NotAllowed(format!(
                "{found} is a partition column of {frame}: its values name the cells' \
                 directories; recreate the frame to change it"
            ))
            .into());
        }
        let mut fields: Vec<Field> = old.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut columns: Vec<Expr> = fields
            .iter()
            .map(|f| Expr::Column(Column::from_name(f.name())))
            .collect();
        let mut cluster_by = snapshot.cluster_by();
        match change {
            ColumnChange::Drop { .. } => {
                if fields.len() == 1 {
                    return Err(Error::Sql(format!(
                        "{found} is the only column of {frame}; a frame needs one (DROP TABLE \
                         drops the frame)"
                    )));
                }
                fields.remove(i);
                columns.remove(i);
                cluster_by.retain(|c| *c != found);
            }
            ColumnChange::Rename { to, .. } => {
                if let Some(j) = position(&old, to, &frame)?.filter(|j| *j != i) {
                    return Err(apiary_storage::Error::AlreadyExists {
                        kind: apiary_storage::ObjectKind::Frame,
                        name: format!("column {} of {frame}", old.field(j).name()),
                    }
                    .into());
                }
                fields[i] = fields[i].clone().with_name(to);
                for c in cluster_by.iter_mut().filter(|c| **c == found) {
                    *c = to.clone();
                }
            }
            ColumnChange::Retype { ty, .. } => {
                let wanted = self.sql_type(ty).await?.with_name(&found);
                // Stored as CREATE TABLE stores the same type (nanoseconds as microseconds …),
                // with its own metadata: the type it serves, a declared length.
                let stored = apiary_storage::schema::frame_schema_for(&Schema::new(vec![wanted]))?;
                let data_type = stored.field(0).data_type().clone();
                columns[i] = cast(columns[i].clone(), data_type);
                fields[i] = stored
                    .field(0)
                    .clone()
                    .with_nullable(fields[i].is_nullable());
            }
            ColumnChange::Nullability { nullable, .. } => {
                fields[i] = fields[i].clone().with_nullable(*nullable);
            }
        }
        let columns = columns
            .into_iter()
            .zip(&fields)
            .map(|(e, f)| e.alias(f.name()))
            .collect();
        Ok(Some(Rewrite {
            schema: Schema::new(fields),
            columns,
            cluster_by,
        }))
    }
}
