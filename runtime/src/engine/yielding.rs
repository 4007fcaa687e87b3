//! Joins that give their thread back now and then.
//!
//! Queries share the CPU runtime's threads (one per core). Tokio moves to another task only when
//! the running one returns `Pending`, and DataFusion's scans do so through their cooperative
//! budget (`CooperativeExec`, one unit per batch). A join can emit batch after batch without
//! polling its input: a cross join or nested-loop join of two small inputs yields billions of
//! rows, and an aggregate above it consumed them for a minute on each of the two threads of a
//! 2-core node, so every other client's statement waited that minute for a thread to plan on.
//!
//! [`YieldInJoins`] puts a `CooperativeExec` above every join, so that a join's output spends
//! the same budget a scan's does: after 128 batches the task yields and other queries run.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, SortMergeJoinExec,
};

/// The rule; see the module's documentation. Idempotent: it runs again on fragments decoded on
/// another node, whose plans already hold its wrappers.
#[derive(Debug, Default)]
pub(super) struct YieldInJoins;

impl PhysicalOptimizerRule for YieldInJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if let Some(coop) = node.downcast_ref::<CooperativeExec>()
                && coop.input().is::<CooperativeExec>()
            {
                return Ok(Transformed::yes(coop.input().clone()));
            }
            if !is_join(&node) {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(
                Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>
            ))
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_yield_in_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn is_join(node: &Arc<dyn ExecutionPlan>) -> bool {
    node.is::<CrossJoinExec>()
        || node.is::<NestedLoopJoinExec>()
        || node.is::<HashJoinExec>()
        || node.is::<SortMergeJoinExec>()
}
