//! Distributed execution: a query arriving at any node is cut into fragments that the swarm runs,
//! coordinated only through storage.
//!
//! ```text
//!  coordinator                       storage                            workers
//!  cut plan ─▶ manifest, plan.bin ─▶ _apiary/queries/<q>/…
//!           ─▶ inbox entries ──────▶ _apiary/inbox/<node>/<q>.s.t.a ◀── poll own inbox
//!                                    …/claim-<a>  ◀──────────────────── put-if-absent (one wins)
//!                                    …/out-<a>/part-*.arrow ◀────────── run in a bee
//!  StageExec streams parts ◀──────── …/done-<a>.json ◀───────────────── written last
//!  cleanup: delete _apiary/queries/<q>/; orphans past a TTL are deleted by any cold node
//! ```
//!
//! | module          | owns                                                        |
//! |-----------------|-------------------------------------------------------------|
//! | [`cut`]         | finding leaf stages and splitting their cells into tasks    |
//! | [`coordinator`] | posting, watching, reassigning, streaming outputs back      |
//! | [`worker`]      | polling the inbox, claiming, running, writing outputs       |
//! | [`protocol`]    | the versioned objects exchanged                             |

pub mod coordinator;
pub mod cut;
pub mod protocol;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use apiary_storage::paths;
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use tracing::{debug, info, warn};

use crate::error::Result;
use crate::node::Node;
use crate::swarm::NodeState;
use coordinator::{Candidate, Dispatch, StageExec, TaskSlot, TaskState, assign};
use protocol::{QueryManifestV1, StageManifestV1, now_ms};

pub use coordinator::DistributionConfig;

/// A distributed query in flight: keeps its monitor running; cleans storage up when dropped.
#[derive(Debug)]
pub struct Run {
    pub dispatch: Arc<Dispatch>,
    monitor: tokio::task::JoinHandle<()>,
}

impl Drop for Run {
    fn drop(&mut self) {
        self.monitor.abort();
        let d = self.dispatch.clone();
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move { d.cleanup().await });
        }
    }
}

/// The tasks a plan would be cut into, before anything is posted.
#[derive(Debug)]
pub struct Proposal {
    pub stages: Vec<cut::Stage>,
    /// Per task: (stage index, partition, serialised plan, cells).
    pub tasks: Vec<(usize, usize, bytes::Bytes, Vec<String>)>,
    pub nodes: Vec<String>,
    pub candidates: Vec<Candidate>,
}

/// Cut `plan` and place its tasks, if the query should be distributed at all: only over at least
/// two live nodes and `min_bytes` of cells; `None` means run it here.
pub fn propose(node: &Node, plan: &Arc<dyn ExecutionPlan>) -> Option<Proposal> {
    let views = node.swarm_view();
    let alive: Vec<_> = views
        .iter()
        .filter(|v| v.state == NodeState::Alive)
        .collect();
    let candidates: Vec<Candidate> = alive
        .iter()
        .filter_map(|v| Candidate::from_view(v))
        .collect();
    if candidates.len() < 2 {
        return None;
    }
    // A chain whose plan does not survive serialisation (a scalar subquery's expression, say)
    // stays on the coordinator; the rest of the query still spreads.
    let ctx = node.engine().plan_context();
    let stages = cut::retain_stages(cut::find_stages(plan), |s| {
        let round_trip = datafusion_proto::bytes::physical_plan_to_bytes(s.leaf.clone())
            .and_then(|b| datafusion_proto::bytes::physical_plan_from_bytes(&b, &ctx));
        if let Err(e) = &round_trip {
            debug!(leaf = s.leaf.name(), error = %e, "a stage stays local: its plan cannot travel");
        }
        round_trip.is_ok()
    });
    let bytes: u64 = stages.iter().map(|s| s.bytes).sum();
    if stages.is_empty() || bytes < node.distribution().min_bytes {
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
            tasks.push((si, partition, plan, cells));
        }
    }
    let cells: Vec<Vec<String>> = tasks.iter().map(|t| t.3.clone()).collect();
    let nodes = assign(&mut candidates.clone(), &cells, &[]);
    Some(Proposal {
        stages,
        tasks,
        nodes,
        candidates,
    })
}

/// Post a proposal's tasks and return the coordinator's plan (leaf stages replaced by
/// [`StageExec`]s) with the run that feeds it.
pub async fn start(
    node: &Arc<Node>,
    query_id: &str,
    sql: &str,
    plan: &Arc<dyn ExecutionPlan>,
    proposal: Proposal,
    timeout: Duration,
) -> Result<(Arc<dyn ExecutionPlan>, Run)> {
    let storage = node.storage().clone();
    let deadline = now_ms() + timeout.as_millis() as i64;
    let Proposal {
        stages,
        tasks,
        nodes,
        ..
    } = proposal;
    let mut per_stage = vec![0u32; stages.len()];
    let mut slots = Vec::with_capacity(tasks.len());
    let mut writes = Vec::with_capacity(tasks.len());
    for ((si, partition, plan_bytes, cells), assigned) in tasks.into_iter().zip(nodes) {
        let stage = stages[si].id;
        let task = per_stage[si];
        per_stage[si] += 1;
        writes.push((paths::task_plan(query_id, stage, task)?, plan_bytes));
        slots.push(TaskSlot {
            stage,
            task,
            partition,
            attempt: 1,
            node: assigned.clone(),
            state: TaskState::Posted {
                since: std::time::Instant::now(),
            },
            tried: vec![assigned],
            errors: vec![],
            cells,
        });
    }
    let manifest = QueryManifestV1 {
        v: 1,
        query_id: query_id.to_string(),
        coordinator: node.id().to_string(),
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
    storage
        .put(&paths::query_manifest(query_id)?, manifest.encode())
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
    let partitions: Vec<(u32, usize)> = stages
        .iter()
        .flat_map(|s| (0..s.partitions.max(1)).map(move |p| (s.id, p)))
        .collect();
    let posts: Vec<(u32, u32, String)> = slots
        .iter()
        .map(|s| (s.stage, s.task, s.node.clone()))
        .collect();
    let dispatch = Dispatch::new(node, query_id.to_string(), slots, &partitions, deadline);
    let posted: Vec<_> = futures::stream::iter(posts)
        .map(|(stage, task, n)| {
            let d = dispatch.clone();
            async move { d.post(stage, task, 1, &n).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for r in posted {
        r?;
    }
    let execs: Vec<(Arc<dyn ExecutionPlan>, Arc<dyn ExecutionPlan>)> = stages
        .iter()
        .zip(&per_stage)
        .map(|(s, n)| {
            let exec: Arc<dyn ExecutionPlan> =
                Arc::new(StageExec::new(s, *n as usize, dispatch.clone()));
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
    let world = node.world().clone();
    let me = node.config().node_id.clone();
    let monitor = tokio::spawn(
        dispatch
            .clone()
            .monitor(move || crate::node::swarm_view(&world, &me)),
    );
    Ok((root, Run { dispatch, monitor }))
}

/// What EXPLAIN shows for a distributed query: stages, tasks, cells and assigned nodes.
pub fn describe(p: &Proposal) -> String {
    let mut out = String::new();
    for (si, s) in p.stages.iter().enumerate() {
        let tasks: Vec<(usize, &String)> = p
            .tasks
            .iter()
            .zip(&p.nodes)
            .filter(|((ti, ..), _)| *ti == si)
            .map(|((_, _, _, cells), n)| (cells.len(), n))
            .collect();
        out.push_str(&format!(
            "Stage {}: {} task(s) over {} cell(s), {} bytes, leaf: {}\n",
            s.id,
            tasks.len(),
            s.files,
            s.bytes,
            s.leaf.name()
        ));
        for (t, (cells, n)) in tasks.iter().enumerate() {
            out.push_str(&format!("  task {t}: {cells} cell(s) on {n}\n"));
        }
    }
    out
}
