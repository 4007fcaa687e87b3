//! Cutting a physical plan into stages that other nodes can run.
//!
//! A *leaf stage* is a maximal chain, read top-down, of operators that work on each input
//! partition independently, ending in a Parquet scan of cells:
//!
//! ```text
//!   AggregateExec(Partial) / SortExec(preserve partitioning) / FilterExec / ProjectionExec /
//!   LocalLimitExec / CooperativeExec / PacedExec / RepartitionExec(RoundRobin, dropped in a task)
//!        ▲ … ▲
//!   DataSourceExec(Parquet cells)
//! ```
//!
//! For such a chain, running it over any split of the cells and taking the union of the outputs
//! gives what the whole chain gives, up to how rows are spread over partitions.
//!
//! With shuffles, a stage may also rest on `RepartitionExec(Hash)` boundaries — the hash-
//! partitioned outputs of other stages — and hold what works on one hash partition alone:
//! `AggregateExec(FinalPartitioned)`, partitioned hash joins, and probe-only `CollectLeft` joins
//! whose small build side each task computes whole. Everything else stays on the coordinator,
//! above a [`StageExec`](super::stage_exec::StageExec) that streams the top stage's outputs back,
//! so every plan stays correct. `docs/distributed.md` describes the rules.

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result as DfResult;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::limit::LocalLimitExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};

use super::shuffle::{ShuffleReadExec, ShuffleSource};
use crate::engine::PacedExec;

/// One stage found in a plan: a subtree the swarm runs as tasks.
#[derive(Debug, Clone)]
pub(crate) struct Stage {
    pub(crate) id: u32,
    /// The stage's top operator (its root), as planned.
    pub(crate) leaf: Arc<dyn ExecutionPlan>,
    /// The scan whose cells are split into tasks; `None` for a stage fed by shuffles.
    pub(crate) scan: Option<FileScanConfig>,
    scan_node: Option<PlanRef>,
    /// Shuffled inputs: each `RepartitionExec(Hash)` as planned, and the stage producing it.
    /// Task `p` of this stage reads partition `p` of every input.
    pub(crate) inputs: Vec<(PlanRef, u32)>,
    /// `Some(RepartitionExec(Hash))` when the output is shuffled into a consumer stage;
    /// `None` when it is streamed back to the coordinator.
    pub(crate) output: Option<PlanRef>,
    /// Output partitions of the stage on the coordinator (hash partitions when shuffled).
    pub(crate) partitions: usize,
    /// Whether each output partition is sorted (then tasks keep the planned file groups).
    pub(crate) ordered: bool,
    pub(crate) files: usize,
    pub(crate) bytes: u64,
}

impl Stage {
    /// The stage takes part in a shuffle (reads one or feeds one).
    pub(crate) fn shuffles(&self) -> bool {
        self.output.is_some() || !self.inputs.is_empty()
    }

    /// The driving scan (the bottom of a leaf chain).
    pub(crate) fn scan_node(&self) -> Option<&PlanRef> {
        self.scan_node.as_ref()
    }

    /// `hash(keys) → P` of a shuffled output, for EXPLAIN.
    pub(crate) fn output_partitioning(&self) -> Option<String> {
        self.output.as_ref().map(|o| {
            let p = o.output_partitioning();
            match p {
                Partitioning::Hash(exprs, n) => format!(
                    "hash({}) → {n} partitions",
                    exprs
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                other => other.to_string(),
            }
        })
    }
}

fn scan_config(node: &Arc<dyn ExecutionPlan>) -> Option<FileScanConfig> {
    let ds = node.downcast_ref::<DataSourceExec>()?;
    ds.data_source().downcast_ref::<FileScanConfig>().cloned()
}

/// Operators that process each partition on its own, whatever the split of their input.
fn per_partition(node: &Arc<dyn ExecutionPlan>) -> bool {
    if node.is::<FilterExec>()
        || node.is::<ProjectionExec>()
        || node.is::<LocalLimitExec>()
        || node.is::<CooperativeExec>()
        || node.is::<PacedExec>()
    {
        return true;
    }
    if let Some(a) = node.downcast_ref::<AggregateExec>() {
        return *a.mode() == AggregateMode::Partial;
    }
    if let Some(s) = node.downcast_ref::<SortExec>() {
        return s.preserve_partitioning();
    }
    round_robin(node)
}

/// Operators that process each partition on its own when their input is hash-partitioned on
/// their keys (a shuffle gives them exactly that).
fn per_key_partition(node: &Arc<dyn ExecutionPlan>) -> bool {
    node.downcast_ref::<AggregateExec>().is_some_and(|a| {
        matches!(
            a.mode(),
            AggregateMode::FinalPartitioned | AggregateMode::SinglePartitioned
        )
    })
}

/// A round-robin repartition only spreads batches over more partitions (DataFusion adds one
/// under a partial aggregate when the scan has fewer partitions than the plan): it belongs to
/// the leaf stage, and a task, which runs on one bee, drops it.
fn round_robin(node: &Arc<dyn ExecutionPlan>) -> bool {
    node.downcast_ref::<RepartitionExec>().is_some_and(|r| {
        matches!(r.partitioning(), Partitioning::RoundRobinBatch(_)) && !r.preserve_order()
    })
}

fn hash_repartition(node: &Arc<dyn ExecutionPlan>) -> bool {
    node.downcast_ref::<RepartitionExec>()
        .is_some_and(|r| matches!(r.partitioning(), Partitioning::Hash(..)) && !r.preserve_order())
}

/// Join types whose every output row comes from one probe row: a `CollectLeft` join of them
/// can run on any split of its probe side. (The others also emit the build rows no probe row
/// matched, which needs every probe partition in one process.)
fn probe_driven(j: &HashJoinExec) -> bool {
    matches!(
        j.join_type(),
        JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
    )
}

/// Operators a task may run at all (checked again on the worker by [`validate_fragment`]).
fn runnable(node: &Arc<dyn ExecutionPlan>) -> bool {
    node.is::<FilterExec>()
        || node.is::<ProjectionExec>()
        || node.is::<LocalLimitExec>()
        || node.is::<CooperativeExec>()
        || node.is::<PacedExec>()
        || node.is::<AggregateExec>()
        || node.is::<SortExec>()
        || node.is::<SortPreservingMergeExec>()
        || node.is::<CoalescePartitionsExec>()
        || node.is::<RepartitionExec>()
        || node.is::<HashJoinExec>()
        || node.is::<ShuffleReadExec>()
        || scan_config(node).is_some()
}

/// A subtree a task computes in full (the build side of a `CollectLeft` join: every task
/// builds the same small table).
fn whole(node: &Arc<dyn ExecutionPlan>) -> bool {
    runnable(node) && !node.is::<ShuffleReadExec>() && node.children().into_iter().all(whole)
}

/// What a stage body rests on.
#[derive(Default)]
struct Body {
    /// The one scan whose cells are split into tasks.
    scan: Option<PlanRef>,
    /// Shuffle boundaries (`RepartitionExec(Hash)`) below the body.
    inputs: Vec<PlanRef>,
    /// Passes an operator that needs its input hash-partitioned.
    keyed: bool,
}

/// A `CollectLeft` build side every task recomputes scans at most 1/`BUILD_SHARE` of the bytes
/// its probe scan has.
const BUILD_SHARE: u64 = 4;

/// The most a recomputed build side may scan when the probe side is a shuffle read.
const SHUFFLED_PROBE_BUILD_MAX: u64 = 32 * 1024 * 1024;

/// Bytes of cells the scans of a subtree read.
fn scan_bytes(node: &PlanRef) -> u64 {
    let own = scan_config(node).map_or(0, |c| cells_of(&c).1);
    own + node.children().into_iter().map(scan_bytes).sum::<u64>()
}

/// How many cells a scan reads and their bytes, each cell once: the planned scan may have cut
/// a cell into byte ranges for several partitions.
fn cells_of(scan: &FileScanConfig) -> (usize, u64) {
    let cells = whole_cells(scan);
    (cells.len(), cells.iter().map(|f| f.object_meta.size).sum())
}

/// Whether `node`'s subtree can be one stage, and what it rests on.
/// Which `RepartitionExec(Hash)` boundaries may become shuffles between stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shuffles {
    /// None: only stages over one scan.
    None,
    /// Those whose producer ships partial states: a partial aggregate, top-K or limit over one
    /// scan (grouped aggregates finish per hash partition on the swarm).
    PartialStates,
    /// Every one (rows into partitioned joins too).
    All,
}

fn stage_body(node: &PlanRef, shuffle: Shuffles) -> Option<Body> {
    let mut b = Body::default();
    (body(node, shuffle, &mut b) && !(b.keyed && b.scan.is_some())).then_some(b)
}

fn body(node: &PlanRef, shuffle: Shuffles, b: &mut Body) -> bool {
    if scan_config(node).is_some() {
        if b.scan.is_some() || !b.inputs.is_empty() {
            return false;
        }
        b.scan = Some(node.clone());
        return true;
    }
    if shuffle != Shuffles::None && hash_repartition(node) {
        let child = node.children()[0];
        let producer = stage_body(child, shuffle);
        let ships = match &producer {
            None => false,
            Some(_) if shuffle == Shuffles::All => true,
            Some(p) => p.scan.is_some() && p.inputs.is_empty() && reduces(child),
        };
        if b.scan.is_some() || !ships {
            return false;
        }
        b.inputs.push(node.clone());
        return true;
    }
    let children = node.children();
    if per_partition(node) || (shuffle != Shuffles::None && per_key_partition(node)) {
        b.keyed |= per_key_partition(node);
        return children.len() == 1 && body(children[0], shuffle, b);
    }
    // A `CollectLeft` join needs no shuffle: every task builds the small side whole.
    let Some(j) = node.downcast_ref::<HashJoinExec>() else {
        return false;
    };
    match j.partition_mode() {
        PartitionMode::Partitioned if shuffle != Shuffles::None => {
            b.keyed = true;
            body(&j.left, shuffle, b) && body(&j.right, shuffle, b)
        }
        PartitionMode::Partitioned => false,
        PartitionMode::CollectLeft => {
            if !(probe_driven(j) && whole(&j.left) && body(&j.right, shuffle, b)) {
                return false;
            }
            // Every task builds the left side again: only when that is cheap against the
            // probe side it splits (q12's filtered `lineitem` building against `orders` is not).
            let build = scan_bytes(&j.left);
            match &b.scan {
                Some(probe) => build.saturating_mul(BUILD_SHARE) <= scan_bytes(probe),
                None => build <= SHUFFLED_PROBE_BUILD_MAX,
            }
        }
        PartitionMode::Auto => false,
    }
}

/// Whether a leaf chain's output is small by construction: it aggregates (partially), or keeps
/// a top-K or a limit of each partition. A partial aggregate whose group keys may take about as
/// many values as it has input rows (by the keys' bounds in the statistics: an integer key
/// spanning 1..6 M over 6 M rows, as q18's `l_orderkey`) does not count: its output is about
/// as big as its input.
pub(crate) fn reduces(node: &Arc<dyn ExecutionPlan>) -> bool {
    if let Some(a) = node.downcast_ref::<AggregateExec>()
        && *a.mode() == AggregateMode::Partial
    {
        return !groups_like_rows(a);
    }
    if node.is::<LocalLimitExec>()
        || node
            .downcast_ref::<SortExec>()
            .is_some_and(|s| s.fetch().is_some())
    {
        return true;
    }
    match node.children().as_slice() {
        [child] => reduces(child),
        _ => false,
    }
}

/// A partial aggregate's groups may number at least a quarter of its input rows: every group
/// key is an integer (or date) column whose bounds in the input's statistics span that many
/// values. Unknown bounds (strings, computed keys) count as few groups.
fn groups_like_rows(a: &AggregateExec) -> bool {
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
    let keys = a.group_expr().expr();
    if keys.is_empty() {
        return false;
    }
    let Ok(stats) = StatisticsContext::new().compute(a.input().as_ref(), &StatisticsArgs::new())
    else {
        return false;
    };
    let Some(rows) = stats.num_rows.get_value().copied() else {
        return false;
    };
    let mut span: f64 = 1.0;
    for (expr, _) in keys {
        let Some(col) = expr.downcast_ref::<Column>() else {
            return false;
        };
        let Some(c) = stats.column_statistics.get(col.index()) else {
            return false;
        };
        let (Some(lo), Some(hi)) = (c.min_value.get_value(), c.max_value.get_value()) else {
            return false;
        };
        let as_i64 = |v: &datafusion::common::ScalarValue| {
            v.cast_to(&arrow::datatypes::DataType::Int64)
                .ok()
                .and_then(|v| match v {
                    datafusion::common::ScalarValue::Int64(Some(x)) => Some(x),
                    _ => None,
                })
        };
        let integral = lo.data_type().is_integer()
            || matches!(lo.data_type(), arrow::datatypes::DataType::Date32);
        let (Some(lo), Some(hi)) = (as_i64(lo), as_i64(hi)) else {
            return false;
        };
        if !integral {
            return false;
        }
        span *= (hi.saturating_sub(lo) as f64) + 1.0;
    }
    span >= 0.25 * rows as f64
}

/// The stages of a plan, producers before their consumers. With shuffles, a stage may rest on
/// hash-partitioned outputs of other stages (joins and grouped aggregates spread over the
/// swarm); without, only stages over one scan (leaf chains, and `CollectLeft` joins probing it).
pub(crate) fn find_stages(plan: &Arc<dyn ExecutionPlan>, shuffle: Shuffles) -> Vec<Stage> {
    let mut out = Vec::new();
    collect(plan, shuffle, &mut out);
    out
}

fn collect(node: &Arc<dyn ExecutionPlan>, shuffle: Shuffles, out: &mut Vec<Stage>) {
    if let Some(b) = stage_body(node, shuffle) {
        register(node, b, None, shuffle, out);
        return;
    }
    for c in node.children() {
        collect(c, shuffle, out);
    }
}

fn register(
    root: &PlanRef,
    b: Body,
    output: Option<PlanRef>,
    shuffle: Shuffles,
    out: &mut Vec<Stage>,
) -> u32 {
    let mut inputs = Vec::new();
    for rep in b.inputs {
        let child = rep.children()[0].clone();
        let cb = stage_body(&child, shuffle).expect("checked by body");
        let id = register(&child, cb, Some(rep.clone()), shuffle, out);
        inputs.push((rep, id));
    }
    let scan = b.scan.as_ref().and_then(scan_config);
    let (files, bytes) = scan.as_ref().map_or((0, 0), cells_of);
    let id = out.len() as u32;
    let partitions = match &output {
        Some(o) => o.output_partitioning().partition_count(),
        None => root.output_partitioning().partition_count(),
    };
    out.push(Stage {
        id,
        leaf: root.clone(),
        partitions,
        ordered: root.output_ordering().is_some(),
        files,
        bytes,
        scan,
        scan_node: b.scan,
        inputs,
        output,
    });
    id
}

/// A physical plan node.
pub(crate) type PlanRef = Arc<dyn ExecutionPlan>;

fn same(a: &PlanRef, b: &PlanRef) -> bool {
    std::ptr::eq(Arc::as_ptr(a) as *const (), Arc::as_ptr(b) as *const ())
}

/// The plan with each stage's subtree replaced: `replacements` pairs a stage's `leaf` (as
/// found by [`find_stages`] on this very plan) with what takes its place. Others stay.
pub(crate) fn replace_stages(
    plan: &Arc<dyn ExecutionPlan>,
    replacements: &[(PlanRef, PlanRef)],
) -> DfResult<Arc<dyn ExecutionPlan>> {
    if let Some((_, r)) = replacements.iter().find(|(leaf, _)| same(leaf, plan)) {
        return Ok(r.clone());
    }
    let children = plan.children();
    if children.is_empty() {
        return Ok(plan.clone());
    }
    let new_children = children
        .into_iter()
        .map(|c| replace_stages(c, replacements))
        .collect::<DfResult<Vec<_>>>()?;
    plan.clone().replace_children(new_children, recompute())
}

/// Keep the stages `keep` accepts, numbered again from 0 (a kept stage's inputs must be kept).
pub(crate) fn retain_stages(
    stages: Vec<Stage>,
    mut keep: impl FnMut(&Stage) -> bool,
) -> Vec<Stage> {
    let mut renumber = std::collections::HashMap::new();
    let mut out: Vec<Stage> = stages.into_iter().filter(|s| keep(s)).collect();
    for (i, s) in out.iter_mut().enumerate() {
        renumber.insert(s.id, i as u32);
        s.id = i as u32;
    }
    for s in &mut out {
        for (_, producer) in &mut s.inputs {
            *producer = renumber[producer];
        }
    }
    out
}

/// How far above the mean the heaviest task of a stage may be and still own whole cells. A
/// stage ends when its slowest task does, so whole cells are kept only when nearly even; else
/// cells are cut by byte range (one cell per task boundary), which both nodes then read.
/// Measured in `bench/results/swarm-balanced-tasks.md` against the 15 % kept for one node's
/// partitions.
const TASKS_EVEN_ENOUGH: f64 = 1.03;

/// How a stage's cells are split into tasks: the planned groups when partitions are ordered,
/// else about `want` groups of nearly equal bytes — whole cells where they spread evenly
/// enough, so a task (and the node running it, and that node's cell cache) owns its cells;
/// else byte ranges. A stage fed by shuffles has no cells: its tasks are its partitions.
pub(crate) fn task_groups(stage: &Stage, want: usize) -> Vec<FileGroup> {
    let Some(scan) = &stage.scan else {
        return vec![];
    };
    if stage.ordered && stage.output.is_none() {
        return scan.file_groups.clone();
    }
    let files = whole_cells(scan);
    if files.is_empty() {
        return vec![];
    }
    apiary_storage::spread_cells_within(files, want, 4 * 1024 * 1024, TASKS_EVEN_ENOUGH)
}

/// The cells of a scan, each once and whole, in the order planned: the planned scan may have
/// cut cells into ranges for the planning node's partitions.
pub(crate) fn whole_cells(scan: &FileScanConfig) -> Vec<PartitionedFile> {
    let mut seen = std::collections::HashSet::new();
    scan.file_groups
        .iter()
        .flat_map(|g| g.files().iter())
        .filter(|f| seen.insert(f.object_meta.location.clone()))
        .map(|f| {
            let mut whole = f.clone();
            whole.range = None;
            whole
        })
        .collect()
}

/// The stage's subtree scanning only `group` (a stage resting on a scan).
pub(crate) fn task_plan(stage: &Stage, group: FileGroup) -> DfResult<Arc<dyn ExecutionPlan>> {
    let (Some(scan), Some(node)) = (&stage.scan, &stage.scan_node) else {
        return Err(no_cells());
    };
    let config = FileScanConfigBuilder::from(scan.clone())
        .with_file_groups(vec![group])
        .build();
    let new_scan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
    finish_task(stage, substitute(&stage.leaf, &[(node.clone(), new_scan)])?)
}

/// The stage's subtree (without its output) scanning `groups`, one partition each, in no
/// particular order: a share of a result computed where it is served.
pub(crate) fn task_plan_over(stage: &Stage, groups: Vec<FileGroup>) -> DfResult<PlanRef> {
    let (Some(scan), Some(node)) = (&stage.scan, &stage.scan_node) else {
        return Err(no_cells());
    };
    let config = FileScanConfigBuilder::from(scan.clone())
        .with_file_groups(groups)
        .with_output_ordering(vec![])
        .build();
    let new_scan: PlanRef = DataSourceExec::from_data_source(config);
    substitute(&stage.leaf, &[(node.clone(), new_scan)])
}

fn no_cells() -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::Internal(
        "a stage fed by shuffles has no cells to split".into(),
    )
}

/// Task `partition` of a stage fed by shuffles: each input reads that partition of its
/// producer's output, from the finished attempts `sources` gives for the producer stage.
/// `storage` is for a plan run where it is built (on the coordinator); a plan that travels is
/// given its worker's storage when decoded.
pub(crate) fn shuffle_task_plan(
    stage: &Stage,
    query_id: &str,
    partition: u32,
    storage: Option<apiary_storage::Storage>,
    mut sources: impl FnMut(u32) -> Vec<ShuffleSource>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let subs: Vec<(PlanRef, PlanRef)> = stage
        .inputs
        .iter()
        .map(|(rep, producer)| {
            let read: PlanRef = Arc::new(ShuffleReadExec::new(
                query_id.to_string(),
                *producer,
                partition,
                sources(*producer),
                rep.schema(),
                storage.clone(),
            ));
            (rep.clone(), read)
        })
        .collect();
    finish_task(stage, substitute(&stage.leaf, &subs)?)
}

/// A shuffled stage's task ends in the planned hash repartition.
fn finish_task(stage: &Stage, root: PlanRef) -> DfResult<PlanRef> {
    match &stage.output {
        Some(rep) => rep.clone().replace_children(vec![root], recompute()),
        None => Ok(root),
    }
}

/// `node` with the subtrees in `subs` replaced and round-robin repartitions dropped (a task
/// runs on one bee).
fn substitute(node: &PlanRef, subs: &[(PlanRef, PlanRef)]) -> DfResult<PlanRef> {
    if let Some((_, r)) = subs.iter().find(|(k, _)| same(k, node)) {
        return Ok(r.clone());
    }
    let children = node.children();
    if round_robin(node) {
        return substitute(children[0], subs);
    }
    if children.is_empty() {
        return Ok(node.clone());
    }
    let new_children = children
        .into_iter()
        .map(|c| substitute(c, subs))
        .collect::<DfResult<Vec<_>>>()?;
    node.clone().replace_children(new_children, recompute())
}

fn recompute() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
}

/// Check a fragment decoded on a worker before it runs: only operators the cutter puts in a
/// task (no sink, no scan of another file, no other query's shuffle output), every scan a cell
/// under a frame of this storage root, every shuffle read one of `query_id`'s. Anything else
/// is refused, whoever wrote the plan.
pub(crate) fn validate_fragment(
    plan: &Arc<dyn ExecutionPlan>,
    root: &object_store::path::Path,
    query_id: &str,
) -> crate::Result<()> {
    let refuse = |why: String| Err(crate::Error::NotAllowed(format!("fragment refused: {why}")));
    if !runnable(plan) {
        return refuse(format!("{} is not part of a stage", plan.name()));
    }
    if let Some(read) = plan.downcast_ref::<ShuffleReadExec>()
        && read.query_id() != query_id
    {
        return refuse("a shuffle read of another query".into());
    }
    if let Some(scan) = scan_config(plan) {
        if scan.file_source().file_type() != "parquet" {
            return refuse(format!("a {} scan", scan.file_source().file_type()));
        }
        for f in scan.file_groups.iter().flat_map(|g| g.files().iter()) {
            let path = &f.object_meta.location;
            let parts: Option<Vec<String>> = path
                .prefix_match(root)
                .map(|p| p.map(|s| s.as_ref().to_string()).collect());
            let is_cell = parts.as_ref().is_some_and(|p| {
                p.len() >= 4
                    && !p[0].starts_with('_')
                    && !p.iter().any(|s| s == "_delta_log")
                    && path.extension() == Some("parquet")
            });
            if !is_cell {
                return refuse(format!("{path} is not a cell of a frame"));
            }
        }
    }
    for c in plan.children() {
        validate_fragment(c, root, query_id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::physical_plan::ParquetSource;
    use datafusion::execution::object_store::ObjectStoreUrl;

    #[test]
    fn a_cell_cut_into_ranges_counts_once() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let ranged =
            |start, end| PartitionedFile::new_with_range("c/a.parquet".into(), 1000, start, end);
        let scan = FileScanConfigBuilder::new(
            ObjectStoreUrl::local_filesystem(),
            Arc::new(ParquetSource::new(schema)),
        )
        .with_file_groups(vec![
            FileGroup::new(vec![ranged(0, 600)]),
            FileGroup::new(vec![
                ranged(600, 1000),
                PartitionedFile::new("c/b.parquet", 300),
            ]),
        ])
        .build();
        assert_eq!(cells_of(&scan), (2, 1300));
        let node: PlanRef = DataSourceExec::from_data_source(scan);
        assert_eq!(scan_bytes(&node), 1300);
    }
}
