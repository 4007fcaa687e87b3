//! Deciding whether and how a query spreads: cut its plan into leaf stages, split them into
//! tasks and place the tasks, before anything is posted. `EXPLAIN` shows the same proposal.

use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use tracing::{debug, warn};

use super::DistContext;
use super::assign::{Candidate, assign};
use super::cut::{self, Shuffles};
use super::shuffle;
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
    propose_or_why_not(ctx, plan).ok()
}

/// Why a query runs on its coordinator alone (for EXPLAIN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Local {
    /// Fewer than two nodes are alive.
    FewNodes,
    /// The stages that could travel scan fewer than `min_bytes` of cells.
    FewBytes,
    /// No stage's output is small enough to pay for shipping it through storage.
    NothingPays,
    /// A stage's plan could not be serialised.
    NotSerialisable,
}

impl Local {
    /// The reason in words, for a node with threshold `min_bytes`.
    pub(crate) fn explain(self, min_bytes: u64) -> String {
        match self {
            Local::FewNodes => "fewer than two live nodes".to_string(),
            Local::FewBytes => {
                format!("the stages that could spread scan less than {min_bytes} bytes of cells")
            }
            Local::NothingPays => {
                "no stage's output is small enough to pay for shipping it through storage"
                    .to_string()
            }
            Local::NotSerialisable => "a stage's plan cannot be serialised".to_string(),
        }
    }
}

/// [`propose`], or why the query runs here.
pub(crate) fn propose_or_why_not(
    ctx: &DistContext,
    plan: &Arc<dyn ExecutionPlan>,
) -> Result<Proposal, Local> {
    let started = std::time::Instant::now();
    let p = propose_inner(ctx, plan);
    debug!(
        elapsed_us = started.elapsed().as_micros() as u64,
        spreads = p.is_ok(),
        "proposal"
    );
    p
}

fn propose_inner(ctx: &DistContext, plan: &Arc<dyn ExecutionPlan>) -> Result<Proposal, Local> {
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
        return Err(Local::FewNodes);
    }
    let decode_ctx = ctx.engine.plan_context();
    // With a threshold of zero every shuffle is used (tests, measuring the protocol);
    // otherwise only shuffles of partial states pay (see `SHUFFLES`).
    let mode = if ctx.config.min_bytes == 0 {
        Shuffles::All
    } else {
        SHUFFLES
    };
    let shuffled = travelling_stages(plan, mode, &decode_ctx);
    let stages = if shuffled.iter().any(|s| !s.1) {
        // A shuffle needs every stage of its tree to travel: without one, fall back to stages
        // over one scan (the rest of the query runs here).
        debug!("a shuffle stage cannot travel; spreading leaf stages only");
        let leaves = travelling_stages(plan, Shuffles::None, &decode_ctx);
        cut::retain_stages(
            leaves.into_iter().filter(|s| s.1).map(|s| s.0).collect(),
            |_| true,
        )
    } else {
        shuffled.into_iter().map(|s| s.0).collect()
    };
    let bytes: u64 = stages.iter().map(|s| s.bytes).sum();
    if stages.is_empty() || bytes < ctx.config.min_bytes {
        return Err(Local::FewBytes);
    }
    let stages = cut::retain_stages(stages, |s| {
        // A stage in a shuffle spreads with its tree: the work above it runs on the swarm too.
        let pays = s.shuffles() || pays_to_spread(s, ctx.config.min_bytes);
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
        return Err(Local::NothingPays);
    }
    let bees: usize = alive
        .iter()
        .map(|v| v.heartbeat.bees_total.max(1) as usize)
        .sum();
    let mut tasks = Vec::new();
    for (si, stage) in stages.iter().enumerate() {
        if stage.scan.is_none() {
            // Fed by shuffles: one task per partition, its plan written once its inputs exist.
            for p in 0..stage.partitions.max(1) {
                tasks.push(ProposedTask {
                    stage: si,
                    partition: p,
                    plan: bytes::Bytes::new(),
                    cells: vec![],
                    node: String::new(),
                });
            }
            continue;
        }
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
            let plan = match cut::task_plan(stage, group).and_then(shuffle::encode) {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "a stage cannot be serialised; running the query locally");
                    return Err(Local::NotSerialisable);
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
    Ok(Proposal { stages, tasks })
}

/// The stages of `plan` (with or without shuffles), each with whether it can travel: its task
/// plans survive serialisation (a scalar subquery's expression, say, does not) and the scan it
/// splits waits for no join filter made outside it that pays on its rows.
pub(super) fn travelling_stages(
    plan: &Arc<dyn ExecutionPlan>,
    shuffle: Shuffles,
    decode_ctx: &datafusion::execution::TaskContext,
) -> Vec<(cut::Stage, bool)> {
    cut::find_stages(plan, shuffle)
        .into_iter()
        .map(|s| {
            let sample = if s.scan.is_some() {
                match s.output.clone() {
                    Some(rep) => Ok(rep),
                    None => Ok(s.leaf.clone()),
                }
            } else {
                cut::shuffle_task_plan(
                    &s,
                    "0192f5a0-6f1c-7c2e-9b1d-2d6a1f3e4c01",
                    0,
                    None,
                    |_| vec![],
                )
            };
            let round_trip = sample
                .and_then(shuffle::encode)
                .and_then(|b| shuffle::decode(&b, decode_ctx, None));
            if let Err(e) = &round_trip {
                debug!(leaf = s.leaf.name(), error = %e, "a stage cannot travel");
            }
            // A join filter made outside the stage that pays on the rows of the scan it splits
            // stays here: the stage would run elsewhere without it. TPC-H q17: the join with
            // the 200-odd `part` keys hands its keys to the `lineitem` scan under the
            // `l_partkey` aggregate, which on this node keeps about 6 K of the 6 M rows it
            // scans, and on the swarm would aggregate all. (On its own join's probe side a
            // filter only does early what that join does anyway: q08's `lineitem` stage
            // travels.)
            let filtered_here = s
                .scan_node()
                .is_some_and(|scan| crate::engine::awaits_paying_filter(&s.leaf, scan));
            if filtered_here {
                debug!(
                    leaf = s.leaf.name(),
                    "a stage stays local: it waits for a join filter from outside it"
                );
            }
            let ok = round_trip.is_ok() && !filtered_here;
            (s, ok)
        })
        .collect()
}

/// The shuffles a query uses when the threshold is above zero: those carrying partial states.
/// Measured on two pinned one-core nodes at SF1 (`bench/results/swarm-2-pinned-shuffle-all.md`):
/// shuffling rows into partitioned joins lost on most TPC-H join queries — every shuffle level
/// adds a round of posting, claiming and polling, and hashing a row and writing it through
/// storage costs about what probing it on the other core saves — while finishing a grouped
/// aggregate per hash partition on the swarm (q18's 1.5 M order keys) pays.
const SHUFFLES: Shuffles = Shuffles::PartialStates;

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
    let Some(scan) = stage.scan_node() else {
        return true;
    };
    let (out, scanned) = (rows(&stage.leaf), rows(scan));
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

/// What EXPLAIN shows for a distributed query: stages, their exchanges, tasks, cells and
/// assigned nodes.
pub(crate) fn describe(p: &Proposal) -> String {
    let mut out = String::new();
    for (si, s) in p.stages.iter().enumerate() {
        let tasks: Vec<&ProposedTask> = p.tasks.iter().filter(|t| t.stage == si).collect();
        let input = if s.inputs.is_empty() {
            format!("{} cell(s), {} bytes", s.files, s.bytes)
        } else {
            let from: Vec<String> = s
                .inputs
                .iter()
                .map(|(_, producer)| format!("stage {producer}"))
                .collect();
            format!("shuffle read of {}", from.join(", "))
        };
        let output = match s.output_partitioning() {
            Some(h) => format!("shuffle write {h}"),
            None => "to the coordinator".to_string(),
        };
        out.push_str(&format!(
            "Stage {}: {} task(s) over {input}, root: {}, output: {output}\n",
            s.id,
            tasks.len(),
            s.leaf.name()
        ));
        for (i, t) in tasks.iter().enumerate() {
            if t.cells.is_empty() {
                out.push_str(&format!(
                    "  task {i}: partition {} on {}\n",
                    t.partition, t.node
                ));
            } else {
                out.push_str(&format!(
                    "  task {i}: {} cell(s) on {}\n",
                    t.cells.len(),
                    t.node
                ));
            }
        }
    }
    out
}
