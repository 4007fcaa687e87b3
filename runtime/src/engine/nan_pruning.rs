//! Parquet scans that do not prune away NaN rows.
//!
//! A Parquet scan prunes row groups and pages with its predicate and the footers' statistics,
//! which leave NaN out of a float column's bounds (see `apiary_storage::nan`): `x > 30000` over
//! one cell of 50,000 rows answered 20,000 rows instead of 20,001, its page with the NaN
//! skipped. [`NanSafePruning`] leaves such parts of each scan's predicate (join and TopK
//! filters included) out of it; the rows are still filtered by them above the scan.
//!
//! When the scan filters rows itself (`datafusion.execution.parquet.pushdown_filters`, set by
//! an operator), its predicate is the only filter and stays whole; the scan then prunes nothing
//! by statistics.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::datasource::physical_plan::{
    FileScanConfig, FileScanConfigBuilder, FileSource, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result as DfResult;
use datafusion::physical_expr::expressions::lit;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;

/// The rule; see the module's documentation. Idempotent.
#[derive(Debug, Default)]
pub(super) struct NanSafePruning;

impl PhysicalOptimizerRule for NanSafePruning {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            Ok(match nan_safe(&node) {
                Some(safe) => Transformed::yes(safe),
                None => Transformed::no(node),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_nan_safe_pruning"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `node` without the parts of its predicate that could prune a NaN row away, when it is a
/// Parquet scan with such parts.
fn nan_safe(node: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    let exec = node.downcast_ref::<DataSourceExec>()?;
    let config = exec.data_source().downcast_ref::<FileScanConfig>()?;
    let parquet = config.file_source().downcast_ref::<ParquetSource>()?;
    let predicate = parquet.filter()?;
    let schema = parquet.table_schema().table_schema().clone();
    let (kept, dropped) = apiary_storage::nan::prunable(&predicate, &schema);
    if !dropped {
        return None;
    }
    let options = parquet.table_parquet_options().global.clone();
    let source = if options.pushdown_filters {
        if !options.pruning && !options.enable_page_index {
            return None;
        }
        let mut all = parquet.table_parquet_options().clone();
        all.global.pruning = false;
        all.global.enable_page_index = false;
        parquet.clone().with_table_parquet_options(all)
    } else {
        // A scan without a predicate prunes nothing, as one whose predicate is `true`.
        parquet.with_predicate(kept.unwrap_or_else(|| lit(true)))
    };
    let config = FileScanConfigBuilder::from(config.clone())
        .with_source(Arc::new(source))
        .build();
    Some(DataSourceExec::from_data_source(config))
}
