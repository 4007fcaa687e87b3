//! Deciding whether and how a query spreads: cut its plan into leaf stages, split them into
//! tasks and place the tasks, before anything is posted. `EXPLAIN` shows the same proposal.

use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use tracing::{debug, warn};

use super::DistContext;
use super::assign::{Candidate, assign};
use super::cut;
use crate::swarm::NodeState;

/// One task of a proposal.
#[derive(Debug)]
pub(crate) struct ProposedTask {
    /// Index into [`Proposal::stages`].
    pub(crate) stage: usize,
    /// The output partition of its stage it feeds.
    pub(crate) partition: usize,
    /// The task's plan, serialised with datafusion-proto.
    pub(crate) plan: bytes::Bytes,
    /// Cells it reads (for placement and EXPLAIN).
    pub(crate) cells: Vec<String>,
    /// The node it is assigned to.
    pub(crate) node: String,
}

/// The tasks a plan would be cut into, before anything is posted.
#[derive(Debug)]
pub(crate) struct Proposal {
    pub(crate) stages: Vec<cut::Stage>,
    pub(crate) tasks: Vec<ProposedTask>,
}

/// Cut `plan` and place its tasks, if the query should be distributed at all: only over at least
/// two live nodes and `min_bytes` of cells; `None` means run it here.
pub(crate) fn propose(ctx: &DistContext, plan: &Arc<dyn ExecutionPlan>) -> Option<Proposal> {
    let views = ctx.swarm_view();
    let alive: Vec<_> = views
        .iter()
        .filter(|v| v.state == NodeState::Alive)
        .collect();
    let mut candidates: Vec<Candidate> = alive
        .iter()
        .filter_map(|v| Candidate::from_view(v))
        .collect();
    if candidates.len() < 2 {
        return None;
    }
    // A chain whose plan does not survive serialisation (a scalar subquery's expression, say)
    // stays on the coordinator; the rest of the query still spreads.
    let decode_ctx = ctx.engine.plan_context();
    let stages = cut::retain_stages(cut::find_stages(plan), |s| {
        let round_trip = datafusion_proto::bytes::physical_plan_to_bytes(s.leaf.clone())
            .and_then(|b| datafusion_proto::bytes::physical_plan_from_bytes(&b, &decode_ctx));
        if let Err(e) = &round_trip {
            debug!(leaf = s.leaf.name(), error = %e, "a stage stays local: its plan cannot travel");
        }
        round_trip.is_ok()
    });
    let bytes: u64 = stages.iter().map(|s| s.bytes).sum();
    if stages.is_empty() || bytes < ctx.config.min_bytes {
        return None;
    }
    let stages = cut::retain_stages(stages, |s| {
        let pays = pays_to_spread(s, ctx.config.min_bytes);
        if !pays {
            debug!(
                leaf = s.leaf.name(),
                bytes = s.bytes,
                "a stage stays local: shipping its output would cost more than it saves"
            );
        }
        pays
    });
    if stages.is_empty() {
        return None;
    }
    let bees: usize = alive
        .iter()
        .map(|v| v.heartbeat.bees_total.max(1) as usize)
        .sum();
    let mut tasks = Vec::new();
    for (si, stage) in stages.iter().enumerate() {
        for (t, group) in cut::task_groups(stage, bees).into_iter().enumerate() {
            let cells: Vec<String> = group
                .files()
                .iter()
                .map(|f| f.object_meta.location.to_string())
                .collect();
            let partition = if stage.ordered {
                t
            } else {
                t % stage.partitions.max(1)
            };
            let plan = match cut::task_plan(stage, group)
                .and_then(datafusion_proto::bytes::physical_plan_to_bytes)
            {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "a stage cannot be serialised; running the query locally");
                    return None;
                }
            };
            tasks.push(ProposedTask {
                stage: si,
                partition,
                plan,
                cells,
                node: String::new(),
            });
        }
    }
    let cells: Vec<Vec<String>> = tasks.iter().map(|t| t.cells.clone()).collect();
    for (t, node) in tasks.iter_mut().zip(assign(&mut candidates, &cells, &[])) {
        t.node = node;
    }
    Some(Proposal { stages, tasks })
}

/// A stage whose output is not small by construction is shipped through storage when its
/// output is estimated at most this share of the rows it scans. Measured on two pinned one-core
/// nodes on a local root (bench/results/swarm-2-pinned.md): a filter keeping a few percent of
/// `lineitem` (q14) wins, one keeping half of it (q03) loses to reading the output back. Filters
/// DataFusion cannot analyse are estimated at its default selectivity (20 %), so they spread.
const SHIP_SHARE: f64 = 0.25;

/// Whether running a stage on the swarm pays for shipping its output back: it scans at least
/// `min_bytes` of cells, and its output is small — by construction (a partial aggregate, a
/// per-partition top-K, a limit) or by the estimate of DataFusion's statistics (row counts and
/// column bounds from the Delta log let a filter's selectivity be estimated). `min_bytes` of
/// zero spreads every stage (tests, and measuring the protocol itself).
pub(super) fn pays_to_spread(stage: &cut::Stage, min_bytes: u64) -> bool {
    if min_bytes == 0 {
        return true;
    }
    if stage.bytes < min_bytes {
        return false;
    }
    if cut::reduces(&stage.leaf) {
        return true;
    }
    let rows = |plan: &Arc<dyn ExecutionPlan>| {
        StatisticsContext::new()
            .compute(plan.as_ref(), &StatisticsArgs::new())
            .ok()
            .and_then(|s| s.num_rows.get_value().copied())
    };
    let (out, scanned) = (rows(&stage.leaf), rows(&cut::bottom(&stage.leaf)));
    debug!(
        leaf = stage.leaf.name(),
        bytes = stage.bytes,
        ?out,
        ?scanned,
        "stage output estimate"
    );
    match (out, scanned) {
        (Some(out), Some(scanned)) => out as f64 <= SHIP_SHARE * scanned as f64,
        _ => false,
    }
}

/// What EXPLAIN shows for a distributed query: stages, tasks, cells and assigned nodes.
pub(crate) fn describe(p: &Proposal) -> String {
    let mut out = String::new();
    for (si, s) in p.stages.iter().enumerate() {
        let tasks: Vec<&ProposedTask> = p.tasks.iter().filter(|t| t.stage == si).collect();
        out.push_str(&format!(
            "Stage {}: {} task(s) over {} cell(s), {} bytes, leaf: {}\n",
            s.id,
            tasks.len(),
            s.files,
            s.bytes,
            s.leaf.name()
        ));
        for (i, t) in tasks.iter().enumerate() {
            out.push_str(&format!(
                "  task {i}: {} cell(s) on {}\n",
                t.cells.len(),
                t.node
            ));
        }
    }
    out
}
