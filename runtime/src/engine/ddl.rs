//! Statements that change things: namespace commands (`CREATE/DROP HIVE|BOX|TABLE`, `USE`),
//! `CREATE TABLE [AS SELECT]` and `INSERT`.

use std::sync::Arc;

use apiary_storage::{BoxRef, Ident};
use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{
    CreateMemoryTable, DdlStatement, DmlStatement, LogicalPlan, WriteOp,
};
use datafusion::physical_plan::execute_stream;
use futures::StreamExt;

use super::catalog;
use super::ingest::{IfExists, IfMissing, Target, WriteMode, empty_stream};
use super::{Engine, Output, Session};
use crate::error::{Error, Result};
use crate::sql::{Command, Layout};

impl Engine {
    /// Hive and box commands, `DROP TABLE` and `USE` (which updates `session`).
    pub(super) async fn namespace(&self, session: &mut Session, cmd: &Command) -> Result<Output> {
        let lh = &self.lakehouse;
        match cmd {
            Command::CreateHive {
                name,
                if_not_exists,
            } => {
                let hive = Ident::parse_hive(name)?;
                lh.create_hive(&hive, *if_not_exists).await?;
            }
            Command::CreateBox {
                name,
                if_not_exists,
            } => {
                let b = catalog::box_ref(session, name)?;
                not_system(&b.hive)?;
                let b = BoxRef::new(b.hive, Ident::parse_box(b.name.as_str())?);
                lh.catalog().create_box(&b, *if_not_exists).await?;
            }
            Command::DropHive {
                name,
                if_exists,
                cascade,
            } => {
                let hive = catalog::hive(name)?;
                not_system(&hive)?;
                lh.drop_hive(&hive, *if_exists, *cascade).await?;
            }
            Command::DropBox {
                name,
                if_exists,
                cascade,
            } => {
                let b = catalog::box_ref(session, name)?;
                not_system(&b.hive)?;
                lh.drop_box(&b, *if_exists, *cascade).await?;
            }
            Command::DropFrames { names, if_exists } => {
                for n in names {
                    let frame = catalog::frame_ref(session, n)?;
                    not_system_frame(&frame)?;
                    lh.drop_frame(&frame, *if_exists).await?;
                }
            }
            Command::SetOption { name, value } => {
                self.set_option(session, name, value.as_deref())?;
            }
            Command::Use { hive, box_name } => {
                let hive = match hive {
                    Some(h) => catalog::hive(h)?,
                    None => session.hive.clone(),
                };
                let box_name = match box_name {
                    Some(b) => Ident::parse(b)?,
                    None => self.entry_box(&hive).await?,
                };
                let place = BoxRef::new(hive.clone(), box_name.clone());
                if !self.box_exists(&place).await? {
                    if hive.as_str() == apiary_storage::paths::SYSTEM_HIVE {
                        return Err(apiary_storage::Error::NotFound {
                            kind: apiary_storage::ObjectKind::Box,
                            name: place.to_string(),
                        }
                        .into());
                    }
                    // The catalog's own error: which of the hive or the box is missing.
                    lh.catalog().require_box(&place).await?;
                }
                session.hive = hive;
                session.box_name = box_name;
            }
            Command::CreateView {
                name,
                query,
                or_replace,
                if_not_exists,
            } => {
                let frame = catalog::frame_ref(session, name)?;
                not_system_frame(&frame)?;
                self.parsed_as_every_reader_would(session)?;
                let query = crate::sql::travel::rewrite(query)?.unwrap_or_else(|| query.clone());
                // The query must plan now, as a query without parameters, where it was written.
                let stmt = self.parse_one(&query)?;
                if !stmt.returns_rows() || stmt.params > 0 {
                    return Err(Error::Sql(
                        "a view is a query (SELECT, WITH, VALUES) without parameters".into(),
                    ));
                }
                let (plan, state, resolved) = self
                    .logical_plan(
                        session,
                        &stmt,
                        None,
                        &super::Pins::new(),
                        super::PlanTarget::default(),
                        super::policy::Purpose::Query,
                    )
                    .await?;
                // Replacing a view with a query that reads it (itself, or through another
                // view) would leave a view that never plans: refused, the old one kept.
                if resolved.views.contains(&frame) {
                    return Err(Error::Sql(format!(
                        "view {frame} would read itself (through its own query or a view it reads)"
                    )));
                }
                state.create_physical_plan(&plan).await?;
                let view = apiary_storage::ViewV1 {
                    query,
                    hive: session.hive.to_string(),
                    box_name: session.box_name.to_string(),
                };
                lh.create_view(&frame, view, *or_replace, *if_not_exists)
                    .await?;
            }
            Command::DropView { name, if_exists } => {
                lh.drop_view(&catalog::frame_ref(session, name)?, *if_exists)
                    .await?;
            }
            other => {
                return Err(Error::Internal(format!(
                    "namespace() given another command: {other:?}"
                )));
            }
        }
        Ok(Output::Done)
    }

    /// A view is kept as its SQL and read back by every session with the server's parser
    /// settings: one created under other ones (`datafusion.sql_parser.dialect`,
    /// `enable_ident_normalization`, `parse_float_as_decimal`, ...) failed for everyone else,
    /// or meant something else to them (0.3 as a decimal, not a double). Refused.
    fn parsed_as_every_reader_would(&self, session: &Session) -> Result<()> {
        const PARSER: &str = "datafusion.sql_parser.";
        let defaults = self.base_state().config().options().entries();
        for (key, value) in &session.options {
            if !key.starts_with(PARSER) || key.ends_with(".recursion_limit") {
                continue;
            }
            let default = defaults
                .iter()
                .find(|e| &e.key == key)
                .and_then(|e| e.value.clone())
                .unwrap_or_default();
            if !value.eq_ignore_ascii_case(&default) {
                return Err(Error::Sql(format!(
                    "a view is read by every session with the server's SQL parser settings, and \
                     this session set {key} = '{value}': SET it back to '{default}' to create the \
                     view"
                )));
            }
        }
        Ok(())
    }

    /// Run a planned DataFusion statement: CREATE TABLE, INSERT or a query.
    pub(super) async fn run_plan(
        &self,
        plan: LogicalPlan,
        state: SessionState,
        layout: &Layout,
    ) -> Result<Output> {
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => {
                self.create_table(create, state, layout).await
            }
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(create)) => {
                let frame = catalog::frame_ref(
                    &session_of(&state)?,
                    &catalog::table_ref_parts(&create.name),
                )?;
                not_system_frame(&frame)?;
                self.create_external(create, &state, frame).await
            }
            LogicalPlan::Ddl(other) => Err(Error::Unsupported(other.name().to_string())),
            LogicalPlan::Dml(DmlStatement {
                op:
                    WriteOp::Insert(_)
                    | WriteOp::Delete
                    | WriteOp::Update
                    | WriteOp::Truncate
                    | WriteOp::MergeInto(_),
                ..
            }) => {
                if !layout.is_empty() {
                    return Err(Error::Sql(
                        "PARTITIONED BY and CLUSTER BY belong to CREATE TABLE".into(),
                    ));
                }
                let plan = values_nullable(plan)?;
                let state = match &plan {
                    LogicalPlan::Dml(DmlStatement {
                        op: WriteOp::Insert(_),
                        ..
                    }) => state,
                    _ => apiary_storage::without_field_extraction(&state),
                };
                let plan = state.optimize(&plan)?;
                if changes_no_row(&plan) {
                    return Ok(Output::Count(0));
                }
                let physical = state
                    .query_planner()
                    .create_physical_plan(&plan, &state)
                    .await?;
                let mut stream = execute_stream(physical, state.task_ctx())?;
                let mut count = 0u64;
                while let Some(batch) = stream.next().await {
                    count += count_of(&batch?);
                }
                Ok(Output::Count(count))
            }
            LogicalPlan::Dml(other) => Err(Error::Unsupported(other.op.name().to_string())),
            LogicalPlan::Statement(s) => Err(Error::Unsupported(s.name().to_string())),
            LogicalPlan::Copy(_) => Err(Error::Unsupported("COPY".into())),
            plan => {
                let physical = state.create_physical_plan(&plan).await?;
                Ok(Output::Rows(execute_stream(physical, state.task_ctx())?))
            }
        }
    }

    /// `CREATE [OR REPLACE] TABLE [IF NOT EXISTS] … [AS SELECT …]`, by the ingest rules.
    async fn create_table(
        &self,
        create: CreateMemoryTable,
        state: SessionState,
        layout: &Layout,
    ) -> Result<Output> {
        if create.temporary {
            return Err(Error::Unsupported("temporary frames".into()));
        }
        if !create.constraints.is_empty() {
            return Err(Error::Unsupported(
                "PRIMARY KEY, UNIQUE and other constraints besides NOT NULL".into(),
            ));
        }
        if !create.column_defaults.is_empty() {
            return Err(Error::Unsupported("column DEFAULT values".into()));
        }
        let frame = catalog::frame_ref(
            &session_of(&state)?,
            &catalog::table_ref_parts(&create.name),
        )?;
        not_system_frame(&frame)?;
        let has_data = !matches!(
            create.input.as_ref(),
            LogicalPlan::EmptyRelation(e) if !e.produce_one_row
        );
        let incoming = Arc::new(create.input.schema().as_arrow().clone());
        let mode = WriteMode {
            if_exists: if create.or_replace {
                IfExists::Replace
            } else if create.if_not_exists {
                IfExists::Skip
            } else {
                IfExists::Fail
            },
            if_missing: IfMissing::Create,
            partition_by: Some(layout.partition_by.clone()),
            cluster_by: Some(layout.cluster_by.clone()),
            merge_schema: false,
        };
        // Plan the rows before touching the namespace: a query that cannot plan creates nothing.
        let physical = match has_data {
            true => Some(state.create_physical_plan(&create.input).await?),
            false => None,
        };
        let target = self.open_target(&frame, Some(&incoming), &mode).await?;
        // A replace built from the frame's own rows commits onto the version it read, never a
        // newer one: the rows written to it since would be removed unread.
        if let Target::Write {
            table,
            overwrite: true,
        } = &target
            && let Some(read) = version_read(&create.input, &frame)
            && read != table.snapshot().version()
        {
            return Err(apiary_storage::Error::Conflict {
                frame: frame.to_string(),
                detail: format!(
                    "it changed since this statement read version {read}; run it again"
                ),
            }
            .into());
        }
        match &target {
            Target::Skip => return Ok(Output::Done),
            // A frame created concurrently and no rows: nothing to commit. A replace without
            // rows still commits, emptying the frame; a new frame commits its version 0.
            Target::Write {
                overwrite: false, ..
            } if !has_data => return Ok(Output::Done),
            Target::Write { .. } | Target::Create { .. } => {}
        }
        let data = match physical {
            Some(plan) => match execute_stream(plan, state.task_ctx()) {
                Ok(s) => s,
                Err(e) => {
                    self.discard_target(target).await;
                    return Err(e.into());
                }
            },
            None => empty_stream(incoming),
        };
        Ok(Output::Count(
            self.write_target(target, data, state.task_ctx()).await?,
        ))
    }
}

/// The version of `frame` that `plan` reads as it stands (not a past version), through views
/// too; `None` when it does not read it. A statement reads one version of each frame.
fn version_read(plan: &LogicalPlan, frame: &apiary_storage::FrameRef) -> Option<i64> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        let LogicalPlan::TableScan(scan) = node else {
            return Ok(TreeNodeRecursion::Continue);
        };
        let Ok(provider) = datafusion::datasource::source_as_provider(&scan.source) else {
            return Ok(TreeNodeRecursion::Continue);
        };
        found = match provider.downcast_ref::<apiary_storage::FrameTable>() {
            Some(t) => {
                let s = t.snapshot();
                (s.frame() == frame && !s.is_historic()).then(|| s.version())
            }
            None => provider
                .get_logical_plan()
                .and_then(|view| version_read(&view, frame)),
        };
        Ok(match found {
            Some(_) => TreeNodeRecursion::Stop,
            None => TreeNodeRecursion::Continue,
        })
    });
    found
}

/// `plan` with the columns of its VALUES lists nullable. DataFusion types an `INSERT`'s VALUES
/// by the frame's columns, NOT NULL included, so a NULL failed as "Column 'column1' is declared
/// as non-nullable"; the frame's own check then names the column (`column k does not accept
/// NULL`).
fn values_nullable(plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::common::DFSchema;
    use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
    use datafusion::logical_expr::Values;
    Ok(plan
        .transform_up(|node| match node {
            LogicalPlan::Values(Values { schema, values })
                if schema.fields().iter().any(|f| !f.is_nullable()) =>
            {
                let schema = DFSchema::try_from(super::nullable(schema.as_arrow()))?;
                Ok(Transformed::yes(LogicalPlan::Values(Values {
                    schema: Arc::new(schema),
                    values,
                })))
            }
            LogicalPlan::Dml(_) => Ok(Transformed::no(node)),
            other => other.recompute_schema().map(Transformed::yes),
        })
        .data()?)
}

/// Refuse a namespace change in the `system` hive: it is the node's own status, in no storage (a
/// box created in it was NOT_FOUND, "hive system does not exist", though clients list it).
fn not_system(hive: &Ident) -> Result<()> {
    match hive.as_str() == apiary_storage::paths::SYSTEM_HIVE {
        true => Err(Error::NotAllowed(
            "hive system holds the node's status tables: it is read-only".into(),
        )),
        false => Ok(()),
    }
}

/// Refuse a frame or view created or dropped where no storage is: in `system`, or in a hive's
/// `information_schema` (a session can be placed in either).
fn not_system_frame(frame: &apiary_storage::FrameRef) -> Result<()> {
    not_system(&frame.hive)?;
    match frame.box_name.as_str() == super::information_schema::INFORMATION_SCHEMA {
        true => Err(Error::NotAllowed(format!(
            "{}.information_schema describes the hive's frames: it is read-only",
            frame.hive
        ))),
        false => Ok(()),
    }
}

/// Whether `plan`, optimized, is a `DELETE` or `UPDATE` whose input no longer reads its frame:
/// the optimizer found its predicate never true (`WHERE false`, `a = NULL`, a bound NULL,
/// `IS NULL` on a NOT NULL column) and put an empty relation there. DataFusion then hands the
/// frame no predicate at all, which for a `DELETE` means every row.
fn changes_no_row(plan: &LogicalPlan) -> bool {
    use datafusion::common::tree_node::TreeNode;
    match plan {
        LogicalPlan::Dml(DmlStatement {
            op: WriteOp::Delete | WriteOp::Update,
            table_name,
            input,
            ..
        }) => !input
            .exists(|node| {
                Ok(matches!(node, LogicalPlan::TableScan(scan)
                    if scan.table_name.resolved_eq(table_name)))
            })
            .unwrap_or(false),
        _ => false,
    }
}

/// The session a planned statement runs in (its default hive and box), for naming frames.
fn session_of(state: &SessionState) -> Result<Session> {
    let options = state.config().options();
    Ok(Session {
        hive: Ident::parse(&options.catalog.default_catalog)?,
        box_name: Ident::parse(&options.catalog.default_schema)?,
        ..Session::new("")
    })
}

/// The row count an INSERT plan reports (its single UInt64 column).
fn count_of(batch: &RecordBatch) -> u64 {
    use arrow::array::AsArray;
    if batch.num_columns() == 0 {
        return 0;
    }
    match batch.column(0).data_type() {
        DataType::UInt64 => batch
            .column(0)
            .as_primitive::<arrow::datatypes::UInt64Type>()
            .iter()
            .flatten()
            .sum(),
        _ => 0,
    }
}
