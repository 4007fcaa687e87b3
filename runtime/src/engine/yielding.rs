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
//!
//! A join can also work through its input without emitting anything: a nested-loop join
//! evaluates its filter for every build row against each probe batch, and a hash join every
//! pair of rows with equal keys, and neither returns until a batch of output is ready or its
//! input is. Where the filter rejects every pair (`ON a.v + b.v < 0` over 200,000 rows each,
//! or the same keys on both sides), one poll ran for the whole join: 80 and 120 seconds past a
//! 2-second `--query-timeout`, during which the node's one bee planned nothing, not even
//! `SELECT 1`. So [`YieldInJoins`] also puts a [`PacedExec`] under the probe side of each hash,
//! nested-loop and sort-merge join (a cross join emits as it goes). It hands the join its
//! input in slices the join gets through in about [`SLICE`], measured between one slice and the
//! join's next poll, and gives the thread back every [`SLICE`]; a join that keeps up gets whole
//! batches after a few slices.
//!
//! A nested-loop join is paced more loosely. It evaluates its filter once per build row over
//! each probe slice, and that call's own cost is about a microsecond: over 1,024-row slices the
//! join took 1.9 times as long as over 8,192-row batches, over 2,048-row ones 1.35 times
//! (DataFusion 55, `ON a.value + b.value < 0` over 20,000 rows each). So its slices begin as
//! whole batches, shrink only when one takes over [`NESTED_LOOP_SLICE`] (a join building more
//! than about 15,000 rows on a 2-core VM), and never below a quarter of a batch: after its
//! first batch, one poll takes at most 2,048 probe rows times its build rows of pairs. There, a
//! statement waited 1.5 s behind a join building 200,000 rows, against 80 s before.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, SortMergeJoinExec,
};
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, Statistics,
};
use futures::{Stream, ready};

/// How long a join may work on one slice of its probe side, and run before it gives its thread
/// back.
const SLICE: Duration = Duration::from_millis(10);
/// What a nested-loop join may take over one slice of its probe side (see the module's
/// documentation).
const NESTED_LOOP_SLICE: Duration = Duration::from_millis(250);
/// Rows of the first slice of a probe side: small, since nothing is known of the join yet.
const FIRST_SLICE_ROWS: usize = 64;

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
            let node = paced_probe(node)?;
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

/// `join` with a [`PacedExec`] under its probe side (the side it streams; the other is built or
/// buffered whole), unless one is there already.
fn paced_probe(join: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    let nested_loop = join.is::<NestedLoopJoinExec>();
    let probe = match () {
        _ if join.is::<SortMergeJoinExec>() => 0,
        _ if join.is::<HashJoinExec>() || nested_loop => 1,
        _ => return Ok(join),
    };
    let mut children: Vec<_> = join.children().into_iter().cloned().collect();
    match children.get_mut(probe) {
        Some(child) if !child.is::<PacedExec>() => {
            *child = Arc::new(PacedExec::new(child.clone(), nested_loop));
            join.replace_children(
                children,
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
            )
        }
        _ => Ok(join),
    }
}

fn is_join(node: &Arc<dyn ExecutionPlan>) -> bool {
    node.is::<CrossJoinExec>()
        || node.is::<NestedLoopJoinExec>()
        || node.is::<HashJoinExec>()
        || node.is::<SortMergeJoinExec>()
}

/// Its input, handed on in slices its consumer gets through in about [`SLICE`] (see the
/// module's documentation). Otherwise the same plan: the same rows in the same order, its
/// input's properties and statistics. It does not travel: a fragment drops it
/// ([`without_pacing`]) and gets it again from the rules applied where it runs.
#[derive(Debug)]
pub(crate) struct PacedExec {
    input: Arc<dyn ExecutionPlan>,
    /// It feeds a nested-loop join (paced more loosely).
    nested_loop: bool,
}

impl PacedExec {
    fn new(input: Arc<dyn ExecutionPlan>, nested_loop: bool) -> Self {
        Self { input, nested_loop }
    }
}

/// `plan` without its [`PacedExec`]s.
pub(crate) fn without_pacing(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| match node.downcast_ref::<PacedExec>() {
        Some(paced) => Ok(Transformed::new(
            paced.input.clone(),
            true,
            TreeNodeRecursion::Continue,
        )),
        None => Ok(Transformed::no(node)),
    })
    .data()
}

impl DisplayAs for PacedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PacedExec")
    }
}

impl ExecutionPlan for PacedExec {
    fn name(&self) -> &str {
        "PacedExec"
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
            (Some(input), true) => Ok(Arc::new(Self::new(input, self.nested_loop))),
            _ => datafusion::common::internal_err!("PacedExec has one input"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let pace = match self.nested_loop {
            true => {
                let batch = context.session_config().batch_size().max(1);
                Pace {
                    slice: NESTED_LOOP_SLICE,
                    first: batch,
                    least: (batch / 4).max(1),
                }
            }
            false => Pace {
                slice: SLICE,
                first: FIRST_SLICE_ROWS,
                least: 1,
            },
        };
        let input = self.input.execute(partition, context)?;
        Ok(Box::pin(Paced::new(input, pace)))
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

/// How a [`Paced`] slices: the time it aims at per slice, and its first and least rows.
#[derive(Debug, Clone, Copy)]
struct Pace {
    slice: Duration,
    first: usize,
    least: usize,
}

/// The stream of a [`PacedExec`].
struct Paced {
    input: SendableRecordBatchStream,
    pace: Pace,
    /// The batch being handed on, and the offset of its next slice.
    held: Option<(RecordBatch, usize)>,
    /// Rows per slice, fitted to how long the consumer takes over one.
    rows: usize,
    /// When the last slice was handed on.
    handed: Option<Instant>,
    /// Since when the task has run without this stream giving its thread back.
    running: Instant,
}

impl Paced {
    fn new(input: SendableRecordBatchStream, pace: Pace) -> Self {
        Self {
            input,
            pace,
            held: None,
            rows: pace.first,
            handed: None,
            running: Instant::now(),
        }
    }

    /// Fit the slice to what the consumer took over the last one: shrink it in proportion
    /// when that was over the pace's time, double it when it was under a quarter of it.
    fn fit(&mut self, now: Instant) {
        let Some(handed) = self.handed.take() else {
            return;
        };
        let took = now.saturating_duration_since(handed);
        let aim = self.pace.slice;
        if took > aim {
            let scaled = self.rows as u128 * aim.as_nanos() / took.as_nanos().max(1);
            self.rows = usize::try_from(scaled).unwrap_or(1).max(self.pace.least);
        } else if took < aim / 4 {
            self.rows = self.rows.saturating_mul(2).min(1 << 24);
        }
    }
}

impl Stream for Paced {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let now = Instant::now();
        self.fit(now);
        if now.saturating_duration_since(self.running) >= SLICE {
            self.running = now;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.held.is_none() {
            let polled = self.input.as_mut().poll_next(cx);
            if polled.is_pending() {
                self.running = Instant::now();
            }
            match ready!(polled) {
                Some(Ok(batch)) => self.held = Some((batch, 0)),
                other => return Poll::Ready(other),
            }
        }
        let rows = self.rows;
        let Some((batch, offset)) = self.held.take() else {
            return Poll::Ready(None);
        };
        let len = rows.min(batch.num_rows() - offset);
        let slice = if offset == 0 && len == batch.num_rows() {
            batch
        } else {
            let slice = batch.slice(offset, len);
            if offset + len < batch.num_rows() {
                self.held = Some((batch, offset + len));
            }
            slice
        };
        self.handed = Some(Instant::now());
        Poll::Ready(Some(Ok(slice)))
    }
}

impl RecordBatchStream for Paced {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;
    use futures::StreamExt;

    /// A join whose filter rejects every pair gives its thread back now and then (it held it
    /// for the whole join), and answers as before.
    #[tokio::test]
    async fn a_join_that_emits_nothing_still_gives_its_thread_back() {
        // One partition: no task of its own for a merge, so the test polls the join itself.
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_target_partitions(1),
        );
        for sql in [
            "SELECT count(*) FROM generate_series(1, 2000) a \
             JOIN generate_series(1, 200000) b ON a.value + b.value < 0",
            "SELECT count(*) FROM generate_series(1, 2000) a \
             JOIN generate_series(1, 20000) b ON a.value % 2 = b.value % 2 \
             AND a.value + b.value < 0",
        ] {
            let physical = ctx
                .sql(sql)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let plan = YieldInJoins
                .optimize(physical, &ConfigOptions::default())
                .unwrap();
            let text = displayable(&plan);
            assert!(text.contains("PacedExec"), "{text}");
            // Idempotent: fragments get the rule again.
            let again = YieldInJoins
                .optimize(plan.clone(), &ConfigOptions::default())
                .unwrap();
            assert_eq!(text, displayable(&again));
            assert!(!displayable(&without_pacing(plan.clone()).unwrap()).contains("PacedExec"));
            let mut stream =
                datafusion::physical_plan::execute_stream(plan, ctx.task_ctx()).unwrap();
            // Poll by hand: count the polls that give the thread back, and the longest.
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let (mut pending, mut longest, mut rows) = (0, Duration::ZERO, None);
            let all = Instant::now();
            loop {
                let started = Instant::now();
                let polled = stream.poll_next_unpin(&mut cx);
                longest = longest.max(started.elapsed());
                match polled {
                    Poll::Pending => pending += 1,
                    Poll::Ready(Some(batch)) => rows = Some(batch.expect(sql)),
                    Poll::Ready(None) => break,
                }
            }
            let all = all.elapsed();
            eprintln!("{sql}: {pending} yields, longest poll {longest:?} of {all:?}");
            let count = rows.unwrap();
            let count = count
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>();
            assert_eq!(count.unwrap().value(0), 0, "{sql}");
            assert!(pending > 0, "{sql}: never gave its thread back");
            // The join's work was spread over many polls (generous for a loaded debug build).
            assert!(
                longest * 8 < all,
                "{sql}: one poll took {longest:?} of {all:?}"
            );
        }
    }

    /// The slices are the input's rows in order, smaller while the consumer is slow and larger
    /// again once it keeps up.
    #[tokio::test]
    async fn slices_follow_the_consumer_and_keep_every_row_in_order() {
        use arrow::array::{Int64Array, RecordBatch};
        use arrow::datatypes::{DataType, Field, Schema};
        use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batches: Vec<DfResult<RecordBatch>> = (0..4)
            .map(|b| {
                let values = Int64Array::from_iter_values(b * 8192..(b + 1) * 8192);
                Ok(RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap())
            })
            .collect();
        let input = RecordBatchStreamAdapter::new(schema, futures::stream::iter(batches));
        let pace = Pace {
            slice: SLICE,
            first: FIRST_SLICE_ROWS,
            least: 1,
        };
        let mut paced = Paced::new(Box::pin(input), pace);
        let (mut next, mut sizes) = (0i64, Vec::new());
        while let Some(slice) = paced.next().await {
            let slice = slice.unwrap();
            let values = slice
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            for v in values.values() {
                assert_eq!(*v, next);
                next += 1;
            }
            sizes.push(slice.num_rows());
            // Slow over the first three slices, then fast.
            if sizes.len() <= 3 {
                std::thread::sleep(3 * SLICE);
            }
        }
        assert_eq!(next, 4 * 8192);
        assert_eq!(sizes[0], FIRST_SLICE_ROWS);
        assert!(sizes[1] < sizes[0] && sizes[2] < sizes[1], "{sizes:?}");
        assert!(sizes.iter().skip(3).any(|&n| n > 8 * sizes[2]), "{sizes:?}");
    }

    fn displayable(plan: &Arc<dyn ExecutionPlan>) -> String {
        datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string()
    }
}
