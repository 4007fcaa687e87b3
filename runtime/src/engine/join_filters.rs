//! Small join filters applied to rows.
//!
//! DataFusion hands a hash join's keys to the scan on its probe side as a dynamic filter. With
//! row-level filtering off (our default: turned on for every scan it lost overall, see
//! `bench/results/pushdown-filters.md`) the scan uses it for statistics pruning only and decodes
//! every row. This rule turns row filtering on for frame scans whose only predicate is such join
//! filters, and lets each filter reach the rows only while it is cheap and selective: an `IN`
//! list or bounds (a small build side, such as the 57 order keys of TPC-H q18's `HAVING`
//! subquery). A filter that probes the join's hash table (a big build side, which keeps most
//! rows and costs a hash per row) is read as `true` there, so the scan behaves as before.
//! Either way the join itself still checks every row: a filter only ever drops rows the join
//! would drop.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{FieldRef, Schema};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::datasource::physical_plan::{
    FileScanConfig, FileScanConfigBuilder, FileSource, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{DynamicFilterPhysicalExpr, lit};
use datafusion::physical_expr::utils::{conjunction, split_conjunction};
use datafusion::physical_expr_common::physical_expr::snapshot_physical_expr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::HashTableLookupExpr;

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct JoinFiltersOnRows;

impl PhysicalOptimizerRule for JoinFiltersOnRows {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            Ok(match rows_filtered(&node) {
                Some(scan) => Transformed::yes(scan),
                None => Transformed::no(node),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_join_filters_on_rows"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `node` with row filtering on, when it is a Parquet scan whose only predicate is join filters.
fn rows_filtered(node: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    let exec = node.downcast_ref::<DataSourceExec>()?;
    let config = exec.data_source().downcast_ref::<FileScanConfig>()?;
    let parquet = config.file_source().downcast_ref::<ParquetSource>()?;
    if parquet.table_parquet_options().global.pushdown_filters {
        return None;
    }
    let predicate = parquet.filter()?;
    let filters = split_conjunction(&predicate);
    if !filters
        .iter()
        .all(|f| f.downcast_ref::<DynamicFilterPhysicalExpr>().is_some())
    {
        return None;
    }
    let wrapped = conjunction(
        filters
            .into_iter()
            .map(|f| Arc::new(WhileSmall(f.clone())) as Arc<dyn PhysicalExpr>),
    );
    let source = parquet
        .with_predicate(wrapped)
        .with_pushdown_filters(true)
        .with_reorder_filters(true);
    let config = FileScanConfigBuilder::from(config.clone())
        .with_source(Arc::new(source))
        .build();
    Some(DataSourceExec::from_data_source(config))
}

/// A join filter that reads as `true` whenever its current form probes a hash table.
#[derive(Debug, Eq)]
struct WhileSmall(Arc<dyn PhysicalExpr>);

impl PartialEq for WhileSmall {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_ref() == other.0.as_ref()
    }
}

impl std::hash::Hash for WhileSmall {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_ref().hash(state)
    }
}

impl WhileSmall {
    /// What the join filter means to the scan now: its current form, or `true` when that form
    /// probes a hash table.
    fn current(&self) -> DfResult<Arc<dyn PhysicalExpr>> {
        let filter = snapshot_physical_expr(self.0.clone())?;
        let probes = filter.exists(|e| Ok(e.downcast_ref::<HashTableLookupExpr>().is_some()))?;
        Ok(match probes {
            true => lit(ScalarValue::Boolean(Some(true))),
            false => filter,
        })
    }
}

impl fmt::Display for WhileSmall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WhileSmall({})", self.0)
    }
}

impl PhysicalExpr for WhileSmall {
    fn return_field(&self, input_schema: &Schema) -> DfResult<FieldRef> {
        self.0.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        self.current()?.evaluate(batch)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.0]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        match children.pop() {
            Some(child) if children.is_empty() => Ok(Arc::new(WhileSmall(child))),
            _ => Err(datafusion::error::DataFusionError::Internal(
                "WhileSmall takes one child".into(),
            )),
        }
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_sql(f)
    }

    fn snapshot(&self) -> DfResult<Option<Arc<dyn PhysicalExpr>>> {
        self.current().map(Some)
    }

    fn try_to_proto(
        &self,
        ctx: &datafusion::physical_expr_common::physical_expr::proto_encode::PhysicalExprEncodeCtx<
            '_,
        >,
    ) -> DfResult<Option<datafusion_proto::protobuf::PhysicalExprNode>> {
        // Another node decodes the join filter itself.
        ctx.encode_child(&self.0).map(Some)
    }
}
