//! No sort between an aggregate's two stages keeps only the query's `LIMIT` in rows.
//!
//! `SELECT DISTINCT x FROM t ORDER BY x LIMIT 3` over an input already in `x` order answered
//! one or two rows where three distinct values exist, differently from run to run, with no
//! error. DataFusion 55's sort enforcement, finding the order satisfied, hands the query's
//! fetch to every sort below it, also below the final aggregate: a TopK of three rows then
//! reads the partial aggregates, where one value still comes once from each partition, and
//! three copies of `0` fill it (apache/datafusion#24927, fixed after 55). [`GroupsBeforeFetch`],
//! run right after the sort enforcement, takes the fetch off each sort or merge between a final
//! aggregate and its partial stage: nothing a query says limits rows there, since both stages
//! are one aggregate. The limit above the final aggregate stays.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct GroupsBeforeFetch;

impl PhysicalOptimizerRule for GroupsBeforeFetch {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| {
            let final_stage = node.downcast_ref::<AggregateExec>().is_some_and(|a| {
                matches!(
                    a.mode(),
                    AggregateMode::Final | AggregateMode::FinalPartitioned
                )
            });
            let [input] = node.children()[..] else {
                return Ok(Transformed::no(node));
            };
            if !final_stage {
                return Ok(Transformed::no(node));
            }
            match unlimited(input)? {
                Some(input) => Ok(Transformed::yes(replace_children_if_necessary(
                    node,
                    vec![input],
                )?)),
                None => Ok(Transformed::no(node)),
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_groups_before_fetch"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan`, the input of a final aggregate, with no fetch on the sorts and merges above its
/// partial stage (through repartitions and projections); None when none had one.
fn unlimited(plan: &Arc<dyn ExecutionPlan>) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let ordering = plan.is::<SortExec>() || plan.is::<SortPreservingMergeExec>();
    let passes = ordering
        || plan.is::<RepartitionExec>()
        || plan.is::<CoalescePartitionsExec>()
        || plan.is::<ProjectionExec>();
    let [child] = plan.children()[..] else {
        return Ok(None);
    };
    if !passes {
        return Ok(None);
    }
    let own = match ordering && plan.fetch().is_some() {
        true => plan.with_fetch(None),
        false => None,
    };
    let below = unlimited(child)?;
    if own.is_none() && below.is_none() {
        return Ok(None);
    }
    let plan = own.unwrap_or_else(|| plan.clone());
    Ok(Some(match below {
        Some(child) => replace_children_if_necessary(plan, vec![child])?,
        None => plan,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::skipped_rows::tests::{answered, plain_and_fixed};
    use datafusion::prelude::SessionConfig;

    #[tokio::test]
    async fn distinct_keeps_every_group_the_limit_asks_for() {
        let (plain, fixed) = plain_and_fixed(SessionConfig::new().with_target_partitions(2));
        let sql = "WITH s(x) AS (VALUES (0), (1), (2) ORDER BY 1 LIMIT 3), \
                   t AS (SELECT * FROM s UNION ALL SELECT * FROM s UNION ALL SELECT * FROM s) \
                   SELECT DISTINCT x FROM t ORDER BY x LIMIT 3";
        for _ in 0..20 {
            assert_eq!(answered(&fixed, sql).await, vec![0, 1, 2]);
        }
        // DataFusion's answer varies from run to run; it is short on most.
        let mut short = false;
        for _ in 0..200 {
            short = answered(&plain, sql).await.len() < 3;
            if short {
                break;
            }
        }
        assert!(short, "DataFusion's answer changed");
        let grouped = "WITH s(x) AS (VALUES (0), (1), (2) ORDER BY 1 LIMIT 3), \
                       t AS (SELECT * FROM s UNION ALL SELECT * FROM s) \
                       SELECT x FROM t GROUP BY x ORDER BY x LIMIT 2";
        for _ in 0..10 {
            assert_eq!(answered(&fixed, grouped).await, vec![0, 1]);
        }
    }
}
