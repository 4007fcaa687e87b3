//! A sort pushed below an `OFFSET` keeps the rows the offset skips.
//!
//! `SELECT * FROM (SELECT a FROM t ORDER BY a LIMIT 4 OFFSET 3) ORDER BY a` answered one row
//! instead of four, with no error. DataFusion 55's sort enforcement moves the outer sort below
//! the `GlobalLimitExec` (skip 3, fetch 4) as a TopK, and gives that TopK the limit's fetch, 4
//! rows, forgetting the 3 it skips; its limit pushdown then reads the plan as "skip 3 of 4" and
//! keeps one (apache/datafusion#24958, fixed after 55). [`SkippedRowsKept`], run right after the
//! sort enforcement, gives each sort and merge under such a limit that holds exactly the
//! limit's fetch (under projections) `skip + fetch` rows, as DataFusion's planner gives a sort under a limit with
//! an offset. No plan DataFusion builds otherwise has such a sort there: a sort under an offset
//! keeps at least `skip + fetch` rows, or its own inner limit is merged into the offset's.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::limit::GlobalLimitExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct SkippedRowsKept;

/// The rule DataFusion enforces sorting in, which [`SkippedRowsKept`] runs right after.
pub(super) const AFTER: &str = "EnsureRequirements";

impl PhysicalOptimizerRule for SkippedRowsKept {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| {
            let Some(limit) = node.downcast_ref::<GlobalLimitExec>() else {
                return Ok(Transformed::no(node));
            };
            let (skip, Some(fetch)) = (limit.skip(), limit.fetch()) else {
                return Ok(Transformed::no(node));
            };
            if skip == 0 {
                return Ok(Transformed::no(node));
            }
            match kept(limit.input(), fetch, skip + fetch) {
                Some(input) => {
                    Ok(Transformed::yes(
                        Arc::new(GlobalLimitExec::new(input, skip, Some(fetch)))
                            as Arc<dyn ExecutionPlan>,
                    ))
                }
                None => Ok(Transformed::no(node)),
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_skipped_rows_kept"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan` with each sort or merge at its top (under projections, which keep every row) that
/// keeps exactly `fetch` rows keeping `rows` instead; None when there is none.
fn kept(
    plan: &Arc<dyn ExecutionPlan>,
    fetch: usize,
    rows: usize,
) -> Option<Arc<dyn ExecutionPlan>> {
    let below = |plan: Arc<dyn ExecutionPlan>| match plan.children()[..] {
        [child] => match kept(child, fetch, rows) {
            Some(child) => replace_children_if_necessary(plan, vec![child]).ok(),
            None => None,
        },
        _ => None,
    };
    if plan.is::<ProjectionExec>() {
        return below(plan.clone());
    }
    let ordering = plan.is::<SortExec>()
        || plan.is::<SortPreservingMergeExec>()
        || plan.is::<CoalescePartitionsExec>();
    if !ordering || plan.fetch() != Some(fetch) {
        return None;
    }
    let widened = plan.with_fetch(Some(rows))?;
    Some(below(widened.clone()).unwrap_or(widened))
}

#[cfg(test)]
pub(super) mod tests {
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// Column 0 of what `sql` answers in `ctx`, as integers.
    pub(in crate::engine) async fn answered(ctx: &SessionContext, sql: &str) -> Vec<i64> {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        batches
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any();
                let a = a.downcast_ref::<arrow::array::Int64Array>().unwrap();
                a.values().to_vec()
            })
            .collect()
    }

    /// Plain DataFusion with `config`, and DataFusion with Apiary's physical rules (those that
    /// correct its plans among them, where the engine runs them).
    pub(in crate::engine) fn plain_and_fixed(
        config: SessionConfig,
    ) -> (SessionContext, SessionContext) {
        let fixed = SessionContext::new_with_state(
            datafusion::execution::SessionStateBuilder::new()
                .with_config(config.clone())
                .with_default_features()
                .with_physical_optimizer_rules(super::super::physical_rules(u64::MAX))
                .build(),
        );
        (SessionContext::new_with_config(config), fixed)
    }

    #[tokio::test]
    async fn an_outer_sort_over_an_offset_keeps_the_rows_it_skips() {
        let (plain, fixed) = plain_and_fixed(SessionConfig::new());
        let sql = "SELECT * FROM (SELECT a FROM (VALUES (5),(3),(9),(1),(7),(2),(8),(4),(6),(10)) \
                   AS v(a) ORDER BY a LIMIT 4 OFFSET 3) ORDER BY a";
        assert_eq!(
            answered(&plain, sql).await,
            vec![4],
            "DataFusion's answer changed"
        );
        assert_eq!(answered(&fixed, sql).await, vec![4, 5, 6, 7]);
    }
}
