//! Cutting a physical plan into stages that other nodes can run.
//!
//! A *leaf stage* is a maximal chain, read top-down, of operators that work on each input
//! partition independently, ending in a Parquet scan of cells:
//!
//! ```text
//!   AggregateExec(Partial) / SortExec(preserve partitioning) / FilterExec / ProjectionExec /
//!   LocalLimitExec / CooperativeExec / RepartitionExec(RoundRobin, dropped in a task)
//!        ▲ … ▲
//!   DataSourceExec(Parquet cells)
//! ```
//!
//! For such a chain, running it over any split of the cells and taking the union of the outputs
//! gives what the whole chain gives, up to how rows are spread over partitions: partial
//! aggregates are merged by the final aggregate above, per-partition top-K and local limits are
//! finished by the merge or global limit above, filters and projections are per row. Everything
//! else — final aggregates, joins, repartitions, merges — stays on the coordinator, above a
//! [`StageExec`](super::stage_exec::StageExec) that streams the tasks' outputs back, so every
//! plan stays correct.

use std::sync::Arc;

use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result as DfResult;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::limit::LocalLimitExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};

/// One leaf stage found in a plan.
#[derive(Debug, Clone)]
pub(crate) struct Stage {
    pub(crate) id: u32,
    /// The chain's top operator (the stage root), as planned.
    pub(crate) leaf: Arc<dyn ExecutionPlan>,
    /// The scan at the bottom of the chain.
    pub(crate) scan: FileScanConfig,
    /// Output partitions of the chain on the coordinator.
    pub(crate) partitions: usize,
    /// Whether each output partition is sorted (then tasks keep the planned file groups).
    pub(crate) ordered: bool,
    pub(crate) files: usize,
    pub(crate) bytes: u64,
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

/// A round-robin repartition only spreads batches over more partitions (DataFusion adds one
/// under a partial aggregate when the scan has fewer partitions than the plan): it belongs to
/// the leaf stage, and a task, which runs on one bee, drops it.
fn round_robin(node: &Arc<dyn ExecutionPlan>) -> bool {
    node.downcast_ref::<RepartitionExec>().is_some_and(|r| {
        matches!(r.partitioning(), Partitioning::RoundRobinBatch(_)) && !r.preserve_order()
    })
}

/// Whether a leaf chain's output is small by construction: it aggregates (partially), or keeps
/// a top-K or a limit of each partition.
pub(crate) fn reduces(node: &Arc<dyn ExecutionPlan>) -> bool {
    if node.is::<LocalLimitExec>()
        || node
            .downcast_ref::<AggregateExec>()
            .is_some_and(|a| *a.mode() == AggregateMode::Partial)
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

fn is_leaf_chain(node: &Arc<dyn ExecutionPlan>) -> bool {
    if scan_config(node).is_some() {
        return true;
    }
    let children = node.children();
    per_partition(node) && children.len() == 1 && is_leaf_chain(children[0])
}

/// The scan at the bottom of a leaf chain.
pub(crate) fn bottom(node: &Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    match node.children().first() {
        Some(child) if scan_config(node).is_none() => bottom(child),
        _ => node.clone(),
    }
}

fn bottom_scan(node: &Arc<dyn ExecutionPlan>) -> FileScanConfig {
    match scan_config(node) {
        Some(c) => c,
        None => bottom_scan(node.children()[0]),
    }
}

/// The leaf stages of a plan, in a fixed (pre-order) order.
pub(crate) fn find_stages(plan: &Arc<dyn ExecutionPlan>) -> Vec<Stage> {
    let mut out = Vec::new();
    collect(plan, &mut out);
    out
}

fn collect(node: &Arc<dyn ExecutionPlan>, out: &mut Vec<Stage>) {
    if is_leaf_chain(node) {
        let scan = bottom_scan(node);
        let files: Vec<_> = scan
            .file_groups
            .iter()
            .flat_map(|g| g.files().iter())
            .collect();
        out.push(Stage {
            id: out.len() as u32,
            leaf: node.clone(),
            partitions: node.output_partitioning().partition_count(),
            ordered: node.output_ordering().is_some(),
            files: files.len(),
            bytes: files.iter().map(|f| f.object_meta.size).sum(),
            scan,
        });
        return;
    }
    for c in node.children() {
        collect(c, out);
    }
}

/// A physical plan node.
pub(crate) type PlanRef = Arc<dyn ExecutionPlan>;

/// The plan with each stage's chain replaced: `replacements` pairs a stage's `leaf` (as found by
/// [`find_stages`] on this very plan) with what takes its place. Chains not listed stay as they are.
pub(crate) fn replace_stages(
    plan: &Arc<dyn ExecutionPlan>,
    replacements: &[(PlanRef, PlanRef)],
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let same = |a: &Arc<dyn ExecutionPlan>, b: &Arc<dyn ExecutionPlan>| {
        std::ptr::eq(Arc::as_ptr(a) as *const (), Arc::as_ptr(b) as *const ())
    };
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

/// Keep the stages `keep` accepts, numbered again from 0.
pub(crate) fn retain_stages(
    stages: Vec<Stage>,
    mut keep: impl FnMut(&Stage) -> bool,
) -> Vec<Stage> {
    let mut out: Vec<Stage> = stages.into_iter().filter(|s| keep(s)).collect();
    for (i, s) in out.iter_mut().enumerate() {
        s.id = i as u32;
    }
    out
}

/// How a stage's cells are split into tasks: the planned groups when partitions are ordered,
/// else about `want` groups of similar size — whole cells where they spread evenly, so a task
/// (and the node running it, and that node's cell cache) owns its cells; else byte ranges.
pub(crate) fn task_groups(stage: &Stage, want: usize) -> Vec<FileGroup> {
    if stage.ordered {
        return stage.scan.file_groups.clone();
    }
    // The planned scan may have cut cells into ranges for this node's partitions: whole cells
    // again, each once, before spreading them over the swarm's tasks.
    let mut seen = std::collections::HashSet::new();
    let files: Vec<_> = stage
        .scan
        .file_groups
        .iter()
        .flat_map(|g| g.files().iter())
        .filter(|f| seen.insert(f.object_meta.location.clone()))
        .map(|f| {
            let mut whole = f.clone();
            whole.range = None;
            whole
        })
        .collect();
    if files.is_empty() {
        return vec![];
    }
    apiary_storage::spread_cells(files, want, 4 * 1024 * 1024)
}

/// The stage's chain, scanning only `group`.
pub(crate) fn task_plan(stage: &Stage, group: FileGroup) -> DfResult<Arc<dyn ExecutionPlan>> {
    let config = FileScanConfigBuilder::from(stage.scan.clone())
        .with_file_groups(vec![group])
        .build();
    let scan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
    rebuild(&stage.leaf, scan)
}

fn rebuild(
    node: &Arc<dyn ExecutionPlan>,
    scan: Arc<dyn ExecutionPlan>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    if scan_config(node).is_some() {
        return Ok(scan);
    }
    let child = rebuild(node.children()[0], scan)?;
    if round_robin(node) {
        return Ok(child);
    }
    node.clone().replace_children(vec![child], recompute())
}

fn recompute() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
}

/// Check a fragment decoded on a worker before it runs: exactly the kind of plan the cutter
/// makes — a chain of per-partition operators over one Parquet scan — whose every file is a
/// cell under a frame of this storage root. Anything else (a sink, a join, a scan of another
/// file) is refused, whoever wrote the plan.
pub(crate) fn validate_fragment(
    plan: &Arc<dyn ExecutionPlan>,
    root: &object_store::path::Path,
) -> crate::Result<()> {
    let refuse = |why: String| Err(crate::Error::NotAllowed(format!("fragment refused: {why}")));
    let mut node = plan;
    loop {
        if let Some(scan) = scan_config(node) {
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
            return Ok(());
        }
        let children = node.children();
        if !per_partition(node) || children.len() != 1 {
            return refuse(format!("{} is not part of a leaf stage", node.name()));
        }
        node = children[0];
    }
}
