//! Merges that start their inputs when first polled, so that a join filter from above reaches
//! them complete.
//!
//! DataFusion starts a plan's streams when it is executed: `RepartitionExec` executes its inputs
//! at once, and `CoalescePartitionsExec` and `SortPreservingMergeExec` over several partitions
//! spawn a task per input partition there and then, which read as fast as they can. A scan
//! below such a merge so starts with the query, before the hash joins above it have built: the
//! join filters those joins hand down are still empty when it reads its rows. TPC-H q21 at SF10:
//! `supplier` (two partitions at that size) builds the join with `lineitem` below a
//! `CoalescePartitionsExec`; the filter `s_nationkey = 20` from the join with `nation` at the top
//! arrived after all 100 K suppliers were read, so the joins above carried 38 M `lineitem` rows
//! instead of 1.5 M.
//!
//! [`StartWhenPolled`] puts such a merge behind [`LazyStartExec`] when a scan below it holds a
//! join filter made by a join outside that subtree. A hash join polls its build side before
//! its probe side, so the merge now starts once the joins above it have built theirs.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    Statistics,
};
use futures::{StreamExt, TryStreamExt};

use super::join_filters::{filters_made, scan_predicate};

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct StartWhenPolled;

impl PhysicalOptimizerRule for StartWhenPolled {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if !eager_merge(&node) || !awaits_filter(&node) {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(
                Arc::new(LazyStartExec::new(node)) as Arc<dyn ExecutionPlan>
            ))
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_start_when_polled"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A merge that starts reading its input partitions when it is executed. (A merge already
/// behind [`LazyStartExec`] reads as one, but its input then has one partition.)
fn eager_merge(node: &Arc<dyn ExecutionPlan>) -> bool {
    let merges = node.is::<CoalescePartitionsExec>() || node.is::<SortPreservingMergeExec>();
    merges
        && node
            .children()
            .first()
            .is_some_and(|c| c.output_partitioning().partition_count() > 1)
}

/// Whether a scan in `node`'s subtree holds a join filter that no join in the subtree makes.
fn awaits_filter(node: &Arc<dyn ExecutionPlan>) -> bool {
    let mut used = HashSet::new();
    let _ = node.apply(|n| {
        if let Some(predicate) = scan_predicate(n) {
            let _ = predicate.apply(|e| {
                if e.downcast_ref::<DynamicFilterPhysicalExpr>().is_some()
                    && let Some(id) = e.expression_id()
                {
                    used.insert(id);
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        Ok(TreeNodeRecursion::Continue)
    });
    used.difference(&filters_made(node)).next().is_some()
}

/// Its input, executed when its stream is first polled rather than when it is executed.
/// Otherwise the same plan: it reports its input's properties and statistics, and reads as its
/// input to `is` and `downcast_ref` (so a plan that travels to another node carries the input,
/// where no join above waits).
#[derive(Debug)]
pub(crate) struct LazyStartExec {
    input: Arc<dyn ExecutionPlan>,
}

impl LazyStartExec {
    fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self { input }
    }
}

impl DisplayAs for LazyStartExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LazyStartExec")
    }
}

impl ExecutionPlan for LazyStartExec {
    fn name(&self) -> &str {
        "LazyStartExec"
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.input.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self::new(input))),
            _ => datafusion::common::internal_err!("LazyStartExec has one input"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.clone();
        let started = futures::stream::once(async move { input.execute(partition, context) })
            .try_flatten()
            .boxed();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.input.schema(),
            started,
        )))
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        Ok(input_stats
            .first()
            .cloned()
            .unwrap_or_else(|| Arc::new(Statistics::new_unknown(&self.input.schema()))))
    }

    fn supports_limit_pushdown(&self) -> bool {
        true
    }
}
