//! DataFusion access to one pinned frame snapshot: [`FrameTable`] scans its cells and accepts
//! `INSERT` through [`FrameSink`].
//!
//! ```text
//!  filters ──▶ PruningPredicate over Delta file stats + partition values ──▶ surviving cells
//!  surviving cells ──▶ DataSourceExec(ParquetSource) + pushed-down filter ──▶ row-group / page pruning
//! ```
//!
//! The scan is a plain DataFusion `DataSourceExec` over Parquet files with partition values and
//! per-file statistics from the Delta log attached (`scan_stats`), so the optimizer sees what
//! ListingTable would show it, the plan serialises with datafusion-proto's default codec, and
//! any node can run it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, DFSchemaRef, ScalarValue, Statistics};
use datafusion::datasource::TableProvider;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::SessionState;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::{InsertOp, MergeIntoClause};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use deltalake::kernel::Add;
use deltalake::kernel::scalars::ScalarExt;
use futures::StreamExt;
use tracing::debug;

use crate::dml::{Change, ChangeExec, MergeSpec};
use crate::error::Error;
use crate::footers::cached_source;
use crate::ledger::{CellInfo, CellWriter, FrameSnapshot, Ledger};
use crate::scan_stats::{LogColumnStats, SafeBounds, summarise};
use crate::spread::spread_cells;

/// Called before each batch of an `INSERT` is written, and once before a `DELETE`, `UPDATE`,
/// `MERGE` or `OPTIMIZE` starts (with 0 rows), so the node can throttle writes when it runs hot.
/// Implemented by the runtime; storage only calls it.
#[async_trait]
pub trait WriteGate: Send + Sync + fmt::Debug {
    async fn admit(&self, rows: usize);
}

/// A frame as DataFusion sees it, pinned to one snapshot.
#[derive(Debug, Clone)]
pub struct FrameTable {
    snapshot: FrameSnapshot,
    ledger: Arc<Ledger>,
    object_store_url: ObjectStoreUrl,
    gate: Option<Arc<dyn WriteGate>>,
    /// Who writes (recorded in the commits of row-level changes).
    user: Option<String>,
    /// What queries see: the served schema, with strings as views when
    /// [`FrameTable::with_view_types`] asked for them.
    served: SchemaRef,
    views: bool,
}

impl FrameTable {
    pub fn new(snapshot: FrameSnapshot, ledger: Arc<Ledger>) -> Self {
        let object_store_url = ledger.storage().object_store_url().clone();
        let served = snapshot.served_schema().clone();
        Self {
            snapshot,
            ledger,
            object_store_url,
            gate: None,
            user: None,
            served,
            views: false,
        }
    }

    /// Strings are read as views (`Utf8View`), as DataFusion's own Parquet tables read them by
    /// default: decoded without copying into offsets, and compared inline when short. Results
    /// still reach clients as plain strings (the Flight layer casts).
    pub fn with_view_types(mut self, views: bool) -> Self {
        self.views = views;
        self.served = match views {
            true => crate::schema::as_views(self.snapshot.served_schema()),
            false => self.snapshot.served_schema().clone(),
        };
        self
    }

    /// Commits of row-level changes through this table record `user`.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn with_write_gate(mut self, gate: Arc<dyn WriteGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    pub fn snapshot(&self) -> &FrameSnapshot {
        &self.snapshot
    }

    /// File columns followed by partition columns: the schema the Parquet scan produces.
    fn scan_schema(&self) -> (SchemaRef, Vec<FieldRef>) {
        let schema = self.snapshot.schema();
        let parts = self.snapshot.partition_columns();
        // The served type kept in a column's metadata is ours, not part of the scan's schema.
        let plain = |f: &Field| f.clone().with_metadata(Default::default());
        let file_fields: Vec<Field> = schema
            .fields()
            .iter()
            .filter(|f| !parts.contains(f.name()))
            .map(|f| plain(f))
            .collect();
        let part_fields: Vec<FieldRef> = parts
            .iter()
            .filter_map(|p| schema.field_with_name(p).ok())
            .map(|f| Arc::new(plain(f)))
            .collect();
        (Arc::new(Schema::new(file_fields)), part_fields)
    }

    /// [`Self::scan_schema`] as the scan produces it: with views where the table reads them.
    fn read_schema(&self) -> (SchemaRef, Vec<FieldRef>) {
        let (file, parts) = self.scan_schema();
        if !self.views {
            return (file, parts);
        }
        let parts = crate::schema::as_views(&Schema::new(parts));
        (
            crate::schema::as_views(&file),
            parts.fields().iter().cloned().collect(),
        )
    }

    /// Which cells may hold rows matching `filters` (partition values and file statistics).
    fn prune(
        &self,
        state: &dyn Session,
        filters: &[Expr],
        scan_schema: &SchemaRef,
    ) -> DfResult<Vec<bool>> {
        let n = self.snapshot.delta_state().log_data().num_files();
        // Filters are typed for the served schema and statistics for the stored one: a column
        // served as another type is read through the same cast the scan applies.
        let served = self.snapshot.served_schema();
        let usable = filters
            .iter()
            .cloned()
            .map(|e| crate::schema::columns_as_served(scan_schema, served, e))
            .collect::<DfResult<Vec<Expr>>>()?;
        let Some(expr) = conjunction(usable) else {
            return Ok(vec![true; n]);
        };
        let df_schema = DFSchema::try_from(scan_schema.as_ref().clone())?;
        let physical = state.create_physical_expr(expr, &df_schema)?;
        let Some(physical) = crate::nan::prunable(&physical, scan_schema).0 else {
            return Ok(vec![true; n]);
        };
        let keep = match PruningPredicateBuilder::new()
            .with_file_schema(scan_schema.clone())
            .build(physical)
        {
            Some(p) => match p.prune(&SafeBounds::new(
                &self.snapshot.delta_state().log_data(),
                scan_schema,
            )) {
                Ok(keep) => keep,
                Err(e) => {
                    debug!(error = %e, "file pruning skipped");
                    vec![true; n]
                }
            },
            None => vec![true; n],
        };
        Ok(keep)
    }
}

fn partition_value(field: &Field, raw: Option<&String>) -> DfResult<ScalarValue> {
    match raw {
        None => ScalarValue::try_from(field.data_type()),
        Some(v) => match field.data_type() {
            // Delta writes timestamps in partition paths as "yyyy-MM-dd HH:mm:ss[.SSSSSS]".
            DataType::Timestamp(..) => {
                let utf8 = ScalarValue::Utf8(Some(v.clone()));
                utf8.cast_to(field.data_type())
            }
            dt => ScalarValue::try_from_string(v.clone(), dt),
        },
    }
}

fn file_for(
    cell: &CellInfo,
    part_fields: &[FieldRef],
    stats: Statistics,
) -> DfResult<PartitionedFile> {
    let values = part_fields
        .iter()
        .map(|f| {
            partition_value(
                f,
                cell.partition_values.get(f.name()).and_then(|v| v.as_ref()),
            )
        })
        .collect::<DfResult<Vec<_>>>()?;
    // The cell's key as it is: `PartitionedFile::new` would parse its text again and escape
    // the `%` of an escaped partition value a second time.
    let mut file = PartitionedFile::new(String::new(), cell.size);
    file.object_meta.location = cell.location.clone();
    let file_columns = stats.column_statistics.len();
    let rows = stats.num_rows;
    let nulls: Vec<bool> = values.iter().map(ScalarValue::is_null).collect();
    let mut file = file
        .with_partition_values(values)
        .with_statistics(Arc::new(stats));
    // DataFusion appends each partition column's statistics as "never null" (a value taken
    // from a path), but a Delta cell's partition value may be NULL: `count(p)` over a NULL
    // partition was answered from these statistics as the number of rows.
    if nulls.iter().any(|n| *n)
        && let Some(stats) = file.statistics.as_mut()
    {
        let stats = Arc::make_mut(stats);
        for (i, null) in nulls.iter().enumerate() {
            if let (true, Some(c)) = (*null, stats.column_statistics.get_mut(file_columns + i)) {
                c.null_count = rows;
                c.min_value = datafusion::common::stats::Precision::Absent;
                c.max_value = datafusion::common::stats::Precision::Absent;
            }
        }
    }
    Ok(file)
}

/// Cast the scan's stored columns to the types the frame serves (`wanted` are the declared
/// column indices the scan produces, in order); the scan itself when nothing differs.
fn serve(
    scan: Arc<dyn ExecutionPlan>,
    wanted: &[usize],
    served: &SchemaRef,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let produced = scan.schema();
    let differs = wanted
        .iter()
        .enumerate()
        .any(|(i, &d)| produced.field(i) != served.field(d));
    if !differs {
        return Ok(scan);
    }
    let exprs = wanted
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let field = served.field(d);
            let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(field.name(), i));
            let expr: Arc<dyn PhysicalExpr> = if produced.field(i).data_type() == field.data_type()
            {
                column
            } else {
                Arc::new(CastExpr::new(column, field.data_type().clone(), None))
            };
            (expr, field.name().clone())
        })
        .collect::<Vec<_>>();
    Ok(Arc::new(ProjectionExec::try_new(exprs, scan)?))
}

#[async_trait]
impl TableProvider for FrameTable {
    fn schema(&self) -> SchemaRef {
        self.served.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Used for pruning only; DataFusion still applies every filter to the rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let table_schema = self.snapshot.schema().clone();
        let joined = |(file, parts): &(SchemaRef, Vec<FieldRef>)| {
            let mut fields: Vec<FieldRef> = file.fields().iter().cloned().collect();
            fields.extend(parts.iter().cloned());
            Arc::new(Schema::new(fields))
        };
        // Pruning reads the log's statistics, in stored types; the scan may decode views.
        let stored = self.scan_schema();
        let stored_schema = joined(&stored);
        let (file_schema, part_fields) = self.read_schema();
        let scan_schema = joined(&(file_schema.clone(), part_fields.clone()));
        // Declared column index → index in the scan's (file columns, partition columns) order.
        let to_scan: HashMap<&str, usize> = scan_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name().as_str(), i))
            .collect();
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..table_schema.fields().len()).collect(),
        };
        let indices: Vec<usize> = wanted
            .iter()
            .map(|&i| to_scan[table_schema.field(i).name().as_str()])
            .collect();

        let keep = self.prune(state, filters, &stored_schema)?;
        let cells = self.snapshot.cells();
        let log = self.snapshot.delta_state().log_data();
        // Null counts of the cells the scan keeps only (each is a JSON object to convert).
        let null_counts: Vec<_> = log
            .iter()
            .zip(&keep)
            .map(|(f, &k)| k.then(|| f.null_counts().map(|n| n.to_json())).flatten())
            .collect();
        let log_stats = LogColumnStats::read(
            &SafeBounds::new(&log, &file_schema),
            &null_counts,
            &file_schema,
        );
        let mut files = Vec::new();
        for (i, (cell, keep)) in cells.iter().zip(keep).enumerate() {
            if !keep {
                continue;
            }
            let stats = log_stats.for_file(i, cell.rows.map(|r| r as usize));
            files.push(file_for(cell, &part_fields, stats)?);
        }
        if self.snapshot.is_historic() {
            // A past version's cells may be gone (VACUUM), and a cell cache, this node's or a
            // worker's, may still hold them: a read of the version would be answered there
            // while every other node says NOT_FOUND. Storage is asked whether each is still
            // there (a HEAD each; time travel is rare).
            let store = state.runtime_env().object_store(&self.object_store_url)?;
            let keys: Vec<object_store::path::Path> = files
                .iter()
                .map(|f| f.object_meta.location.clone())
                .collect();
            let mut heads = futures::stream::iter(keys)
                .map(|key| {
                    let store = store.clone();
                    async move { object_store::ObjectStoreExt::head(&store, &key).await }
                })
                .buffer_unordered(16);
            while let Some(head) = heads.next().await {
                head.map_err(|e| DataFusionError::ObjectStore(Box::new(e)))?;
            }
        }
        debug!(
            frame = %self.snapshot.frame(),
            version = self.snapshot.version(),
            cells = cells.len(),
            scanned = files.len(),
            "scan"
        );
        // The row filter reaches the Parquet source through DataFusion's filter pushdown, which
        // uses it for row-group and page pruning; here it only prunes whole cells.
        let source = ParquetSource::new(
            TableSchema::builder(file_schema)
                .with_table_partition_cols(part_fields)
                .build(),
        )
        .with_table_parquet_options(state.table_options().parquet.clone());
        let source = cached_source(
            source,
            self.ledger.footers(),
            state.runtime_env(),
            &self.object_store_url,
        )?;
        // Per-group and whole-scan statistics merged from the cells', as ListingTable does.
        let (groups, stats) = summarise(
            spread_cells(
                files,
                state.config().target_partitions(),
                state.config().options().optimizer.repartition_file_min_size,
            ),
            &scan_schema,
        )?;
        let config = FileScanConfigBuilder::new(self.object_store_url.clone(), Arc::new(source))
            .with_file_groups(groups)
            .with_statistics(stats)
            .with_limit(limit)
            .with_projection_indices(Some(indices))?
            .build();
        let scan = DataSourceExec::from_data_source(config);
        serve(scan, &wanted, &self.served)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let overwrite = match insert_op {
            InsertOp::Append => false,
            InsertOp::Overwrite => true,
            InsertOp::Replace => {
                return Err(DataFusionError::NotImplemented(
                    "REPLACE INTO is not supported; use INSERT OVERWRITE".into(),
                ));
            }
        };
        let sink = FrameSink {
            table: self.clone(),
            overwrite,
            schema: input.schema(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.snapshot.writable()?;
        let predicate = conjunction(filters);
        let (ledger, snapshot, user) = self.parts();
        let state = session_state(state)?;
        Ok(Arc::new(ChangeExec::new(
            "DELETE",
            snapshot.frame().to_string(),
            vec![],
            gated(
                &self.gate,
                Arc::new(move |ctx, _| {
                    let (ledger, snapshot, user) = (ledger.clone(), snapshot.clone(), user.clone());
                    let (state, predicate) = (on_task(&state, &ctx), predicate.clone());
                    Box::pin(
                        async move { ledger.delete(&snapshot, predicate, &state, &user).await },
                    )
                }),
            ),
        )))
    }

    async fn update(
        &self,
        state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.snapshot.writable()?;
        let predicate = conjunction(filters);
        let state = session_state(state)?;
        if assignments.is_empty() {
            return self.count_matching("UPDATE", predicate, state);
        }
        let (ledger, snapshot, user) = self.parts();
        Ok(Arc::new(ChangeExec::new(
            "UPDATE",
            snapshot.frame().to_string(),
            vec![],
            gated(
                &self.gate,
                Arc::new(move |ctx, _| {
                    let (ledger, snapshot, user) = (ledger.clone(), snapshot.clone(), user.clone());
                    let state = on_task(&state, &ctx);
                    let (assignments, predicate) = (assignments.clone(), predicate.clone());
                    Box::pin(async move {
                        ledger
                            .update(&snapshot, assignments, predicate, &state, &user)
                            .await
                    })
                }),
            ),
        )))
    }

    async fn truncate(&self, state: &dyn Session) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.delete_from(state, vec![]).await
    }

    async fn merge_into(
        &self,
        state: &dyn Session,
        source: Arc<dyn ExecutionPlan>,
        merge_schema: DFSchemaRef,
        on: Expr,
        clauses: Vec<MergeIntoClause>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.snapshot.writable()?;
        let (ledger, snapshot, user) = self.parts();
        let state = session_state(state)?;
        // The target's qualifier in the clauses is the name the statement used for it.
        let target = merge_schema
            .iter()
            .next()
            .and_then(|(q, _)| q.cloned())
            .ok_or_else(|| DataFusionError::Internal("MERGE without a target".into()))?;
        Ok(Arc::new(ChangeExec::new(
            "MERGE",
            snapshot.frame().to_string(),
            vec![source],
            gated(
                &self.gate,
                Arc::new(move |ctx, children| {
                    let (ledger, snapshot, user) = (ledger.clone(), snapshot.clone(), user.clone());
                    let state = on_task(&state, &ctx);
                    let spec = MergeSpec {
                        source: children[0].clone(),
                        merge_schema: merge_schema.clone(),
                        on: on.clone(),
                        clauses: clauses.clone(),
                    };
                    let target = target.clone();
                    Box::pin(
                        async move { ledger.merge(&snapshot, &target, spec, &state, &user).await },
                    )
                }),
            ),
        )))
    }
}

impl FrameTable {
    /// A row-level change that changes nothing (`UPDATE t SET c = c`: DataFusion drops
    /// assignments of a column to itself) answers the rows its predicate matches, as an UPDATE
    /// that rewrites them would (ORMs check that count), and commits nothing.
    fn count_matching(
        &self,
        op: &'static str,
        predicate: Option<Expr>,
        state: SessionState,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let table: Arc<dyn TableProvider> = Arc::new(self.clone());
        // The predicate names the frame as the statement did; the scan below is unnamed.
        let predicate = predicate.map(unqualified).transpose()?;
        Ok(Arc::new(ChangeExec::new(
            op,
            self.snapshot.frame().to_string(),
            vec![],
            gated(
                &self.gate,
                Arc::new(move |ctx, _| {
                    let (table, predicate) = (table.clone(), predicate.clone());
                    let state = on_task(&state, &ctx);
                    Box::pin(async move {
                        let ctx = datafusion::prelude::SessionContext::new_with_state(state);
                        let mut rows = ctx.read_table(table)?;
                        if let Some(p) = predicate {
                            rows = rows.filter(p)?;
                        }
                        Ok(crate::dml::Changed {
                            version: None,
                            rows: rows.count().await? as u64,
                        })
                    })
                }),
            ),
        )))
    }
}

/// `e` with its columns unqualified (an expression over one table).
fn unqualified(e: Expr) -> DfResult<Expr> {
    use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
    e.transform(|e| {
        Ok(match e {
            Expr::Column(c) => Transformed::yes(Expr::Column(
                datafusion::common::Column::new_unqualified(c.name),
            )),
            other => Transformed::no(other),
        })
    })
    .data()
}

/// `change`, started only once `gate` (if any) admits it.
fn gated(gate: &Option<Arc<dyn WriteGate>>, change: Change) -> Change {
    let Some(gate) = gate.clone() else {
        return change;
    };
    Arc::new(move |ctx, children| {
        let (gate, run) = (gate.clone(), change(ctx, children));
        Box::pin(async move {
            gate.admit(0).await;
            run.await
        })
    })
}

impl FrameTable {
    fn parts(&self) -> (Arc<Ledger>, FrameSnapshot, String) {
        (
            self.ledger.clone(),
            self.snapshot.clone(),
            self.user.clone().unwrap_or_default(),
        )
    }
}

/// The caller's session state (DataFusion always plans with one).
fn session_state(state: &dyn Session) -> DfResult<SessionState> {
    state
        .as_any()
        .downcast_ref::<SessionState>()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal("row-level changes need a SessionState".into()))
}

/// `state` with the runtime of the task that executes (a bee's memory pool and scratch space).
fn on_task(state: &SessionState, ctx: &TaskContext) -> SessionState {
    SessionStateBuilder::new_from_existing(state.clone())
        .with_runtime_env(ctx.runtime_env())
        .build()
}

/// Writes an `INSERT`'s batches into cells and commits them as one Delta commit.
#[derive(Debug)]
pub struct FrameSink {
    table: FrameTable,
    overwrite: bool,
    schema: SchemaRef,
}

impl FrameSink {
    /// A sink for a frame outside DataFusion's `INSERT` planning (CTAS, bulk ingest).
    pub fn new(table: FrameTable, overwrite: bool) -> Self {
        let schema = table.snapshot.served_schema().clone();
        Self {
            table,
            overwrite,
            schema,
        }
    }

    /// Write every batch of `data` and commit. Returns (rows, committed version).
    ///
    /// A clustered frame's rows are sorted by its cluster columns first, in `ctx` (the writing
    /// bee's memory pool and scratch space).
    pub async fn write_stream(
        &self,
        data: SendableRecordBatchStream,
        ctx: Arc<TaskContext>,
    ) -> crate::Result<(u64, i64)> {
        let ledger = &self.table.ledger;
        let snapshot = &self.table.snapshot;
        snapshot.writable()?;
        let written = crate::written::Written::default();
        let writer = ledger.cell_writer(
            snapshot.frame(),
            snapshot.schema(),
            snapshot.partition_columns(),
            written.clone(),
        )?;
        let cut_short =
            CleanUpWhenCutShort(Some((ledger.clone(), snapshot.frame().clone(), written)));
        let written = write_cells(
            ledger,
            writer,
            &snapshot.cluster_by(),
            self.table.gate.as_ref(),
            data,
            ctx,
        )
        .await;
        // Ended: a failed write deleted its cells, and from here the commit may land however
        // the future ends, so they stay.
        cut_short.disarm();
        let (rows, adds) = written?;
        if adds.is_empty() && !self.overwrite && !snapshot.reshapes() {
            // Nothing to append: no commit, the frame stays at its version (an append that
            // widens the schema still commits the new columns).
            return Ok((0, snapshot.version()));
        }
        match ledger
            .commit(
                snapshot,
                adds.clone(),
                self.overwrite,
                self.table.user.as_deref(),
            )
            .await
        {
            Ok(version) => Ok((rows, version)),
            // Nothing was committed (a lost race, or the frame was dropped meanwhile): the
            // cells go. Other errors may come after the commit: the cells stay, for VACUUM.
            Err(e @ (crate::Error::Conflict { .. } | crate::Error::NotFound { .. })) => {
                ledger.discard_cells(snapshot.frame(), &adds).await;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

/// Deletes the cells of a write whose future was dropped before its commit began (a client
/// that hung up mid-ingest, a cancelled INSERT): they were left unreferenced, for a VACUUM a
/// week later. A write that failed has deleted them itself ([`write_cells`]).
struct CleanUpWhenCutShort(Option<(Arc<Ledger>, crate::FrameRef, crate::written::Written)>);

impl CleanUpWhenCutShort {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CleanUpWhenCutShort {
    // Detached: a drop cannot wait, and the deletes are few and bounded by the store's own
    // timeouts. Outside a runtime (one shutting down) the cells stay, for VACUUM.
    #[allow(clippy::disallowed_methods)]
    fn drop(&mut self) {
        let Some((ledger, frame, written)) = self.0.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        tracing::info!(frame = %frame, "a write was cut short; deleting its cells");
        runtime.spawn(async move {
            // A put under way when the write was dropped may still land: wait it out.
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            ledger.discard_written(&frame, &written).await;
        });
    }
}

/// Write every batch of `data` into cells through `writer`, each batch admitted by `gate` first.
/// Rows are sorted by `cluster_by` (if any) in `ctx`, the writing bee's memory pool and scratch
/// space. Returns the rows and the cells' `Add` actions, not committed; when anything fails, the
/// cells written so far are deleted.
pub(crate) async fn write_cells(
    ledger: &Ledger,
    mut writer: CellWriter,
    cluster_by: &[String],
    gate: Option<&Arc<dyn WriteGate>>,
    data: SendableRecordBatchStream,
    ctx: Arc<TaskContext>,
) -> crate::Result<(u64, Vec<Add>)> {
    let written: crate::Result<()> = async {
        let mut data = match cluster_by.is_empty() {
            true => data,
            false => crate::cluster::sorted(
                data,
                cluster_by,
                ctx,
                crate::cluster::sort_memory(ledger.config().cell_target_bytes),
            )?,
        };
        while let Some(batch) = data.next().await {
            let batch = batch?;
            if let Some(gate) = gate {
                gate.admit(batch.num_rows()).await;
            }
            writer.write(&batch).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        writer.discard().await;
        return Err(e);
    }
    let rows = writer.rows();
    Ok((rows, writer.finish().await?))
}

impl DisplayAs for FrameSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FrameSink: frame={} mode={}",
            self.table.snapshot.frame(),
            if self.overwrite {
                "overwrite"
            } else {
                "append"
            }
        )
    }
}

#[async_trait]
impl DataSink for FrameSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        data: SendableRecordBatchStream,
        context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let (rows, _) = self
            .write_stream(data, context.clone())
            .await
            .map_err(|e: Error| DataFusionError::from(e))?;
        Ok(rows)
    }
}
