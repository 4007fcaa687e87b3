//! `ORDER BY … LIMIT n` with an n too large for its bee's memory: a sort that spills.
//!
//! DataFusion runs a sort with a limit as a TopK: a heap of the n best rows so far, with the
//! batches they came from, which cannot spill. Where n rows do not fit in the bee's budget the
//! query fails with RESOURCES_EXHAUSTED, although the same sort without its limit completes by
//! spilling: on a 64 MiB bee, `ORDER BY k, v LIMIT 1500000` over 2 M narrow rows failed at
//! 45 MB of TopK, while `ORDER BY k, v` alone answered.
//!
//! [`SpillableTopK`] estimates what each TopK would hold: n rows of its input, about three times
//! over (the batches the rows came from until it compacts them, the compacted copy, what it
//! emits), and their sort keys. When that is over half the bee's budget, the sort is planned
//! without its limit, so it spills, under a `LocalLimitExec` of n rows per partition: the same
//! rows in the same order. Such an n is far above what DataFusion's heap wins by (the TopK is
//! kept for every smaller n, TPC-H's `LIMIT 100` among them).

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::limit::LocalLimitExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

/// Times over a TopK holds each of its rows (see the module's documentation).
const COPIES: usize = 3;
/// A TopK row's own bookkeeping besides its sort key: the heap entry and its allocation.
const PER_ROW: usize = 64;
/// Bytes guessed for a value of variable width whose size the statistics do not tell.
const VARIABLE: usize = 32;

/// The rule; see the module's documentation. Idempotent: a sort it rewrote has no limit left.
#[derive(Debug)]
pub(super) struct SpillableTopK {
    /// The memory budget of the bee a query runs on, in bytes.
    pub(super) bee_memory: usize,
}

impl PhysicalOptimizerRule for SpillableTopK {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(sort) = node.downcast_ref::<SortExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(fetch) = sort.fetch() else {
                return Ok(Transformed::no(node));
            };
            if topk_bytes(sort, fetch) <= self.bee_memory / 2 {
                return Ok(Transformed::no(node));
            }
            let whole = sort.clone().with_fetch(None);
            Ok(Transformed::yes(
                Arc::new(LocalLimitExec::new(Arc::new(whole), fetch)) as Arc<dyn ExecutionPlan>,
            ))
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_spillable_topk"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// What the TopKs of `sort` would hold for `fetch` rows: one per partition it keeps apart.
fn topk_bytes(sort: &SortExec, fetch: usize) -> usize {
    let input = sort.input();
    let heaps = if sort.preserve_partitioning() {
        input.output_partitioning().partition_count().max(1)
    } else {
        1
    };
    let row = row_bytes(input);
    let key: usize = sort
        .expr()
        .iter()
        .map(|e| {
            e.expr
                .data_type(&input.schema())
                .map_or(VARIABLE, |t| width(&t))
        })
        .sum();
    fetch
        .saturating_mul(row.saturating_mul(COPIES) + key + PER_ROW)
        .saturating_mul(heaps)
}

/// Bytes per row of `input`: its statistics' when they tell both its size and its rows, else
/// guessed from its schema.
fn row_bytes(input: &Arc<dyn ExecutionPlan>) -> usize {
    let guessed = guess(&input.schema());
    let Ok(stats) = StatisticsContext::new().compute(input.as_ref(), &StatisticsArgs::new()) else {
        return guessed;
    };
    match (
        stats.total_byte_size.get_value(),
        stats.num_rows.get_value(),
    ) {
        (Some(&bytes), Some(&rows)) if bytes > 0 && rows > 0 => bytes / rows,
        _ => guessed,
    }
}

fn guess(schema: &Schema) -> usize {
    schema.fields().iter().map(|f| width(f.data_type())).sum()
}

/// Bytes one value of `t` takes in a batch, guessed for the types of variable width.
fn width(t: &DataType) -> usize {
    if let Some(w) = t.primitive_width() {
        return w;
    }
    match t {
        DataType::Null => 0,
        DataType::Boolean => 1,
        DataType::Utf8 | DataType::Binary => 4 + VARIABLE,
        DataType::LargeUtf8 | DataType::LargeBinary => 8 + VARIABLE,
        DataType::Utf8View | DataType::BinaryView => 16 + VARIABLE,
        DataType::Dictionary(key, value) => width(key) + width(value) / 4,
        DataType::FixedSizeBinary(n) => usize::try_from(*n).unwrap_or(VARIABLE),
        DataType::Struct(fields) => fields.iter().map(|f| width(f.data_type())).sum(),
        _ => 2 * VARIABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    /// `sql` planned in `ctx` with the rule for a bee of `bee_memory`, and its text.
    async fn planned(
        ctx: &SessionContext,
        sql: &str,
        bee_memory: usize,
    ) -> (Arc<dyn ExecutionPlan>, String) {
        let physical = ctx.sql(sql).await.unwrap().create_physical_plan().await;
        let rule = SpillableTopK { bee_memory };
        let planned = rule
            .optimize(physical.unwrap(), &ConfigOptions::default())
            .unwrap();
        let text = datafusion::physical_plan::displayable(planned.as_ref())
            .indent(false)
            .to_string();
        (planned, text)
    }

    async fn plan(sql: &str, bee_memory: usize) -> String {
        planned(&SessionContext::new(), sql, bee_memory).await.1
    }

    const TOP: &str = "SELECT value, CAST(value AS VARCHAR) AS s FROM generate_series(1, 100000) \
                       ORDER BY s DESC";

    #[tokio::test]
    async fn a_limit_whose_rows_fit_half_the_bee_keeps_its_topk() {
        // 100 rows of about 60 bytes, three times over: far below 32 MiB.
        let p = plan(&format!("{TOP} LIMIT 100"), 64 << 20).await;
        assert!(p.contains("TopK(fetch=100)"), "{p}");
        assert!(!p.contains("LocalLimitExec"), "{p}");
    }

    #[tokio::test]
    async fn a_limit_beyond_half_the_bee_sorts_the_whole_input_under_a_limit() {
        // 500,000 rows: about 100 MB held by a TopK, for a 64 MiB bee.
        let p = plan(&format!("{TOP} LIMIT 500000 OFFSET 7"), 64 << 20).await;
        assert!(!p.contains("TopK"), "{p}");
        assert!(p.contains("LocalLimitExec: fetch=500007"), "{p}");
        assert!(p.contains("GlobalLimitExec: skip=7, fetch=500000"), "{p}");
        // A bee large enough keeps the heap.
        let p = plan(&format!("{TOP} LIMIT 500000"), 4 << 30).await;
        assert!(p.contains("TopK(fetch=500000)"), "{p}");
    }

    #[tokio::test]
    async fn the_sort_without_its_limit_answers_the_rows_the_topk_answers() {
        let ctx = SessionContext::new();
        let sql = format!("{TOP} LIMIT 3000 OFFSET 5");
        let run = |bee_memory: usize| {
            let (ctx, sql) = (ctx.clone(), sql.clone());
            async move {
                let (plan, text) = planned(&ctx, &sql, bee_memory).await;
                let rows = datafusion::physical_plan::collect(plan, ctx.task_ctx())
                    .await
                    .unwrap();
                (text.contains("TopK"), rows)
            }
        };
        let (heap, by_heap) = run(1 << 30).await;
        let (sorted_heap, by_sort) = run(1 << 20).await;
        assert!(heap && !sorted_heap);
        let text = |b: &[arrow::array::RecordBatch]| {
            arrow::util::pretty::pretty_format_batches(b)
                .unwrap()
                .to_string()
        };
        assert_eq!(text(&by_heap), text(&by_sort));
        let rows: usize = by_sort.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 3000);
    }
}
