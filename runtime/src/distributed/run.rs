//! Starting a distributed query on its coordinator: post the proposal's tasks and return the
//! plan that stays here, with the [`DistributedRun`] that feeds it.

use std::sync::Arc;
use std::time::Duration;

use apiary_storage::BackendKind;
use apiary_storage::format::{QueryManifestV1, StageManifestV1, now_ms};
use apiary_storage::paths::{self, AttemptKey};
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use tracing::info;

use super::DistContext;
use super::context::OutcomeWatch;
use super::coordinator::{Dispatch, TaskSlot};
use super::cut;
use super::proposal::Proposal;
use super::stage_exec::StageExec;
use crate::error::Result;
use crate::executor::{AbortOnDrop, Background};

/// A distributed query in flight: keeps its monitor running; cleans storage up when dropped.
pub(crate) struct DistributedRun {
    dispatch: Arc<Dispatch>,
    _monitor: AbortOnDrop<()>,
    background: Arc<Background>,
    /// (stage, bytes of the cells it scans) of each stage that ships its output to this node.
    shipped_here: Vec<(u32, u64)>,
    /// Told when the run ends with every task done, if it shipped much (see
    /// [`DistributedRun::when_it_shipped_much`]).
    shipped_much: Option<Box<dyn FnOnce(f64) + Send>>,
}

impl std::fmt::Debug for DistributedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributedRun")
            .field("dispatch", &self.dispatch)
            .finish_non_exhaustive()
    }
}

/// The share of the bytes of cells they scanned above which the stages shipping to the
/// coordinator did not pay for spreading, on `kind` of storage. DataFusion estimates a filter
/// it cannot analyse and a selective join alike, at its default selectivity, so the proposal
/// cannot tell them apart before running them; the bytes a run shipped can. Measured on two
/// pinned one-core nodes at SF1 (`bench/results/swarm-2-pinned-wake.md`):
/// - on a local root (parts as they are): TPC-H q10's `lineitem` filter shipped 36 % of its
///   cells' bytes (59 MB) and ran at 0.55–0.68× of one node; q09 shipped 11 % and broke even
///   (1.0–1.1×); q08 and q17, under 2 %, won 1.15–1.5×;
/// - on S3 (SeaweedFS; parts LZ4-framed, and every byte crosses the S3 server): q10 shipped
///   12 % (19 MB) and ran at 0.49×; q09 shipped 3.7 % and ran at 0.95×; q08, 0.3 %, at 1.12×.
pub(crate) fn shipped_share_max(kind: BackendKind) -> f64 {
    match kind {
        BackendKind::S3 => 0.06,
        BackendKind::Local | BackendKind::Memory => 0.25,
    }
}

impl DistributedRun {
    /// Every task finished (dropping the run then writes no cancel marker).
    pub(crate) fn is_finished(&self) -> bool {
        self.dispatch.is_finished()
    }

    /// The bytes that the stages shipping to this node wrote, as a share of the bytes of cells
    /// they scanned; `None` until every task is done.
    fn shipped_share(&self) -> Option<f64> {
        if !self.is_finished() {
            return None;
        }
        let scanned: u64 = self.shipped_here.iter().map(|(_, b)| b).sum();
        let shipped: u64 = self
            .shipped_here
            .iter()
            .map(|(s, _)| self.dispatch.output_bytes(*s))
            .sum();
        (scanned > 0).then(|| shipped as f64 / scanned as f64)
    }

    /// Call `f` with the shipped share when the run ends finished, if that share is above
    /// [`shipped_share_max`]: the coordinator then plans the statement for itself for a while.
    pub(crate) fn when_it_shipped_much(&mut self, f: impl FnOnce(f64) + Send + 'static) {
        self.shipped_much = Some(Box::new(f));
    }
}

impl Drop for DistributedRun {
    fn drop(&mut self) {
        if let (Some(share), Some(f)) = (self.shipped_share(), self.shipped_much.take())
            && share > shipped_share_max(self.dispatch.storage_kind())
        {
            f(share);
        }
        let d = self.dispatch.clone();
        self.background
            .spawn_finishing(async move { d.cleanup().await });
    }
}

/// Post `proposal`'s tasks (manifest, plans, inbox entries) and replace each leaf stage of
/// `plan` with a [`StageExec`] reading the tasks' outputs.
pub(crate) async fn start(
    ctx: &Arc<DistContext>,
    query_id: &str,
    sql: &str,
    plan: &Arc<dyn ExecutionPlan>,
    proposal: Proposal,
    timeout: Duration,
) -> Result<(Arc<dyn ExecutionPlan>, DistributedRun)> {
    let storage = ctx.storage.clone();
    let deadline = now_ms() + timeout.as_millis() as i64;
    let Proposal { stages, tasks } = proposal;
    let mut per_stage = vec![0u32; stages.len()];
    let mut slots = Vec::with_capacity(tasks.len());
    let mut writes = Vec::with_capacity(tasks.len());
    for t in tasks {
        let stage = stages[t.stage].id;
        let key = AttemptKey::new(query_id, stage, per_stage[t.stage], 1);
        per_stage[t.stage] += 1;
        if t.plan.is_empty() {
            // Fed by shuffles: its plan is written when its inputs are done.
            slots.push(TaskSlot::waiting(key, t.partition, t.node));
            continue;
        }
        let path = paths::task_plan(&key)?;
        let sealed = ctx.key.seal("plan", &path, &t.plan);
        writes.push((path, sealed));
        slots.push(TaskSlot::new(key, t.partition, t.node, t.cells));
    }
    let manifest = QueryManifestV1 {
        v: 1,
        query_id: query_id.to_string(),
        coordinator: ctx.node_id.clone(),
        created_at_ms: now_ms(),
        deadline_at_ms: deadline,
        sql: sql.to_string(),
        stages: stages
            .iter()
            .zip(&per_stage)
            .map(|(s, n)| StageManifestV1 {
                stage: s.id,
                tasks: *n,
                files: s.files as u64,
                bytes: s.bytes,
            })
            .collect(),
    };
    let path = paths::query_manifest(query_id)?;
    storage
        .put(&path, ctx.key.seal_object(&path, &manifest))
        .await?;
    let results: Vec<_> = futures::stream::iter(writes)
        .map(|(k, b)| {
            let storage = storage.clone();
            async move { storage.put(&k, b).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for r in results {
        r?;
    }
    // Stages streamed back here; the others feed shuffles.
    let partitions: Vec<(u32, usize)> = stages
        .iter()
        .filter(|s| s.output.is_none())
        .flat_map(|s| (0..s.partitions.max(1)).map(move |p| (s.id, p)))
        .collect();
    let waiting: Vec<cut::Stage> = stages
        .iter()
        .filter(|s| !s.inputs.is_empty())
        .cloned()
        .collect();
    let dispatch = Dispatch::new(
        ctx,
        query_id.to_string(),
        slots,
        &partitions,
        waiting,
        deadline,
    );
    // Outcomes are watched from before the first post: a fragment may end before the monitor
    // starts.
    let wake = OutcomeWatch::new(ctx, query_id);
    let posted: Vec<_> = futures::stream::iter(dispatch.attempts())
        .map(|(key, node)| {
            let d = dispatch.clone();
            async move { d.post(&key, &node).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for r in posted {
        r?;
    }
    let execs: Vec<(cut::PlanRef, cut::PlanRef)> = stages
        .iter()
        .zip(&per_stage)
        .filter(|(s, _)| s.output.is_none())
        .map(|(s, n)| {
            let exec: cut::PlanRef = Arc::new(StageExec::new(s, *n as usize, dispatch.clone()));
            (s.leaf.clone(), exec)
        })
        .collect();
    let root = cut::replace_stages(plan, &execs)?;
    info!(
        query_id,
        stages = stages.len(),
        tasks = per_stage.iter().sum::<u32>(),
        nodes = ?dispatch.nodes(),
        "distributed query started"
    );
    let shipped_here = stages
        .iter()
        .filter(|s| s.output.is_none() && s.inputs.is_empty())
        .map(|s| (s.id, s.bytes))
        .collect();
    let monitor = crate::executor::spawn(dispatch.clone().monitor(wake));
    Ok((
        root,
        DistributedRun {
            dispatch,
            _monitor: monitor,
            background: ctx.background.clone(),
            shipped_here,
            shipped_much: None,
        },
    ))
}
