//! The coordinator's side of a distributed query: post tasks, watch them through storage,
//! reassign what stalls, and stream finished outputs into the part of the plan that stays here.
//!
//! ```text
//!   post plan + inbox entry ──▶ worker claims (put-if-absent) ──▶ writes parts ──▶ done marker
//!        ▲                                                                          │
//!        └── Monitor: LIST _apiary/queries/<q>/ every poll; reassign on Suspect/Dead │
//!            node, unclaimed or overdue attempt (trial limit) ◀──────────────────────┘
//!   StageExec partition p ◀── tasks of p as they complete (Arrow IPC parts, checksummed)
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiary_storage::{Storage, paths};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;
use object_store::path::Path;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::protocol::{DoneV1, FailedV1, TaskV1, now_ms};
use crate::error::Error;
use crate::swarm::{NodeState, NodeView};

/// Timing and limits of distributed execution.
#[derive(Debug, Clone)]
pub struct DistributionConfig {
    /// Queries scanning fewer bytes than this run on the node that received them.
    pub min_bytes: u64,
    /// Fastest storage polling (workers with work, coordinators waiting).
    pub poll_min: Duration,
    /// Slowest storage polling (idle workers back off to this).
    pub poll_max: Duration,
    /// An attempt nobody claimed within this is reassigned.
    pub claim_timeout: Duration,
    /// Attempts per task before the query fails.
    pub trials: u32,
    /// Query prefixes and inbox entries older than this with no live coordinator are deleted.
    pub orphan_ttl: Duration,
    /// Size of one output object of a task.
    pub part_bytes: usize,
}

impl Default for DistributionConfig {
    fn default() -> Self {
        Self {
            min_bytes: 64 * 1024 * 1024,
            poll_min: Duration::from_millis(20),
            poll_max: Duration::from_secs(2),
            claim_timeout: Duration::from_secs(10),
            trials: crate::abandon::DEFAULT_TRIALS,
            orphan_ttl: Duration::from_secs(3600),
            part_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Where a task stands, as the coordinator knows it.
#[derive(Debug, Clone)]
pub enum TaskState {
    Posted { since: Instant },
    Claimed { since: Instant, by: String },
    Done(DoneV1),
    Failed(String),
}

/// One task of a distributed query.
#[derive(Debug)]
pub struct TaskSlot {
    pub stage: u32,
    pub task: u32,
    /// Output partition of its stage this task feeds.
    pub partition: usize,
    pub attempt: u32,
    pub node: String,
    pub state: TaskState,
    pub tried: Vec<String>,
    pub errors: Vec<String>,
    /// Cell paths it reads (for cache-aware reassignment).
    pub cells: Vec<String>,
}

/// A candidate node for tasks.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub node_id: String,
    pub capacity: f64,
    pub bloom: Option<crate::cache::Bloom>,
}

impl Candidate {
    pub fn from_view(v: &NodeView) -> Option<Candidate> {
        if v.state != NodeState::Alive || v.heartbeat.band == "critical" {
            return None;
        }
        let idle = (v.heartbeat.bees_total as f64 - v.heartbeat.bees_busy as f64).max(0.0);
        Some(Candidate {
            node_id: v.heartbeat.node_id.clone(),
            // Busy nodes still take work, just less of it; hot ones less again.
            capacity: (idle + 0.5) * (1.0 - v.heartbeat.temperature).max(0.05),
            bloom: crate::cache::Bloom::from_hex(&v.heartbeat.cache.bloom),
        })
    }
}

/// Pick a node for each task: the most spare capacity, plus a bonus where the cells are cached
/// and a bee is free.
pub fn assign(
    candidates: &mut [Candidate],
    tasks: &[Vec<String>],
    avoid: &[String],
) -> Vec<String> {
    let mut out = Vec::with_capacity(tasks.len());
    for cells in tasks {
        let best = candidates
            .iter_mut()
            .filter(|c| !avoid.contains(&c.node_id))
            .map(|c| {
                let cached = match &c.bloom {
                    Some(b) if !cells.is_empty() => {
                        cells.iter().filter(|p| b.contains(p)).count() as f64 / cells.len() as f64
                    }
                    _ => 0.0,
                };
                // Cached cells count only where a bee is still free for the task: a queue
                // behind a warm cache is slower than a cold read on an idle node.
                let bonus = if c.capacity >= 1.0 { 2.0 * cached } else { 0.0 };
                let score = c.capacity + bonus;
                (score, c)
            })
            .max_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then_with(|| b.1.node_id.cmp(&a.1.node_id))
            });
        match best {
            Some((_, c)) => {
                c.capacity -= 1.0;
                out.push(c.node_id.clone());
            }
            // Nothing else left: retry where we avoided.
            None => out.push(avoid.first().cloned().unwrap_or_default()),
        }
    }
    out
}

/// A finished task of a partition: its index into `slots`, or why the query fails.
type Completion = Result<usize, String>;

/// Shared state of one distributed query on its coordinator.
pub struct Dispatch {
    pub query_id: String,
    storage: Storage,
    config: DistributionConfig,
    pub slots: Mutex<Vec<TaskSlot>>,
    /// (stage, partition) → completion channel: indices into `slots`, or an error.
    senders: Mutex<HashMap<(u32, usize), mpsc::UnboundedSender<Completion>>>,
    receivers: Mutex<HashMap<(u32, usize), mpsc::UnboundedReceiver<Completion>>>,
    /// Inbox entries we posted, deleted on cleanup.
    posted: Mutex<Vec<Path>>,
    finished: AtomicBool,
    coordinator: String,
    deadline_ms: i64,
    /// Wakes this node's own worker when a task lands in its own inbox (no storage poll wait).
    local_inbox: Arc<tokio::sync::Notify>,
}

impl fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatch")
            .field("query_id", &self.query_id)
            .finish_non_exhaustive()
    }
}

impl Dispatch {
    /// A query coordinated by `node`, whose tasks are `slots`, read back per (stage, partition).
    pub fn new(
        node: &crate::node::Node,
        query_id: String,
        slots: Vec<TaskSlot>,
        partitions: &[(u32, usize)],
        deadline_ms: i64,
    ) -> Arc<Self> {
        let mut senders = HashMap::new();
        let mut receivers = HashMap::new();
        for &(stage, p) in partitions {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.insert((stage, p), tx);
            receivers.insert((stage, p), rx);
        }
        Arc::new(Self {
            query_id,
            storage: node.storage().clone(),
            config: node.distribution().clone(),
            slots: Mutex::new(slots),
            senders: Mutex::new(senders),
            receivers: Mutex::new(receivers),
            posted: Mutex::new(Vec::new()),
            finished: AtomicBool::new(false),
            coordinator: node.id().to_string(),
            deadline_ms,
            local_inbox: node.inbox_wake().clone(),
        })
    }

    /// Post attempt `slot.attempt` of a task to its node's inbox.
    pub async fn post(&self, stage: u32, task: u32, attempt: u32, node: &str) -> crate::Result<()> {
        let entry = TaskV1 {
            v: 1,
            query_id: self.query_id.clone(),
            stage,
            task,
            attempt,
            coordinator: self.coordinator.clone(),
            posted_at_ms: now_ms(),
            deadline_at_ms: self.deadline_ms,
        };
        let key = paths::inbox_entry(node, &self.query_id, stage, task, attempt)?;
        self.storage.put(&key, entry.encode()).await?;
        self.posted.lock().expect("posted").push(key);
        if node == self.coordinator {
            self.local_inbox.notify_one();
        }
        Ok(())
    }

    /// Every node that ran (or runs) a task of this query.
    pub fn nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .slots
            .lock()
            .expect("slots")
            .iter()
            .map(|s| s.node.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// One line per task: `s0t1@node-a(done)`.
    pub fn describe(&self) -> String {
        self.slots
            .lock()
            .expect("slots")
            .iter()
            .map(|s| {
                let st = match &s.state {
                    TaskState::Posted { .. } => "posted",
                    TaskState::Claimed { .. } => "running",
                    TaskState::Done(_) => "done",
                    TaskState::Failed(_) => "failed",
                };
                format!(
                    "s{}t{}@{}({st}, attempt {})",
                    s.stage, s.task, s.node, s.attempt
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn notify(&self, stage: u32, partition: usize, msg: Completion) {
        if let Some(tx) = self
            .senders
            .lock()
            .expect("senders")
            .get(&(stage, partition))
        {
            let _ = tx.send(msg);
        }
    }

    fn fail_all(&self, error: String) {
        for tx in self.senders.lock().expect("senders").values() {
            let _ = tx.send(Err(error.clone()));
        }
    }

    /// Poll storage until every task is done or the query failed. `view` gives the swarm as the
    /// coordinator sees it now.
    pub async fn monitor(self: Arc<Self>, view: impl Fn() -> Vec<NodeView> + Send + 'static) {
        let prefix = match paths::query_prefix(&self.query_id) {
            Ok(p) => p,
            Err(e) => return self.fail_all(e.to_string()),
        };
        let mut interval = self.config.poll_min;
        loop {
            tokio::time::sleep(interval).await;
            let listed = match self.storage.list(&prefix).await {
                Ok(l) => l,
                Err(e) => {
                    warn!(query_id = %self.query_id, error = %e, "polling tasks");
                    continue;
                }
            };
            let names: std::collections::HashSet<String> =
                listed.iter().map(|m| m.location.to_string()).collect();
            let progressed = self.step(&names, &view()).await;
            let all_done = self
                .slots
                .lock()
                .expect("slots")
                .iter()
                .all(|s| matches!(s.state, TaskState::Done(_) | TaskState::Failed(_)));
            if all_done {
                return;
            }
            interval = if progressed {
                self.config.poll_min
            } else {
                // A coordinator is busy by definition: it never backs off far (5 × poll_min,
                // 100 ms by default), so finished fragments are noticed quickly.
                (interval * 3 / 2)
                    .min(self.config.poll_min * 5)
                    .max(self.config.poll_min)
            };
        }
    }

    /// One round of bookkeeping over the listed object names. Returns whether anything changed.
    async fn step(&self, names: &std::collections::HashSet<String>, nodes: &[NodeView]) -> bool {
        let key = |p: crate::Result<Path>| p.map(|p| p.to_string()).unwrap_or_default();
        let mut progressed = false;
        // Work out what to do under the lock, then do the IO without it.
        let mut reads: Vec<(usize, String, bool)> = Vec::new(); // (slot, key, is_done)
        let mut reassign: Vec<(usize, String)> = Vec::new();
        {
            let mut slots = self.slots.lock().expect("slots");
            for (i, s) in slots.iter_mut().enumerate() {
                if matches!(s.state, TaskState::Done(_) | TaskState::Failed(_)) {
                    continue;
                }
                let q = &self.query_id;
                let done = key(paths::task_done(q, s.stage, s.task, s.attempt).map_err(Into::into));
                let failed =
                    key(paths::task_failed(q, s.stage, s.task, s.attempt).map_err(Into::into));
                let claim =
                    key(paths::task_claim(q, s.stage, s.task, s.attempt).map_err(Into::into));
                if names.contains(&done) {
                    reads.push((i, done, true));
                    continue;
                }
                if names.contains(&failed) {
                    reads.push((i, failed, false));
                    continue;
                }
                if let TaskState::Posted { since } = s.state {
                    if names.contains(&claim) {
                        s.state = TaskState::Claimed {
                            since: Instant::now(),
                            by: s.node.clone(),
                        };
                        progressed = true;
                    } else if since.elapsed() > self.config.claim_timeout {
                        reassign.push((
                            i,
                            format!(
                                "not claimed by {} within {:?}",
                                s.node, self.config.claim_timeout
                            ),
                        ));
                        continue;
                    }
                }
                let state = nodes
                    .iter()
                    .find(|n| n.heartbeat.node_id == s.node)
                    .map(|n| n.state);
                match state {
                    Some(NodeState::Alive) => {}
                    Some(other) => {
                        reassign.push((i, format!("node {} is {}", s.node, other.as_str())))
                    }
                    None => reassign.push((i, format!("node {} left the swarm", s.node))),
                }
            }
        }
        for (i, k, is_done) in reads {
            progressed = true;
            let body = match self.storage.get_opt(&Path::from(k)).await {
                Ok(Some((b, _))) => b,
                _ => continue,
            };
            let (stage, partition) = {
                let s = &self.slots.lock().expect("slots")[i];
                (s.stage, s.partition)
            };
            if is_done {
                match DoneV1::decode(&body) {
                    Ok(d) => {
                        debug!(query_id = %self.query_id, stage, task = i, node = %d.node_id, rows = d.rows, "task done");
                        self.slots.lock().expect("slots")[i].state = TaskState::Done(d);
                        self.notify(stage, partition, Ok(i));
                    }
                    Err(e) => reassign.push((i, e.to_string())),
                }
            } else {
                match FailedV1::decode(&body) {
                    Ok(f) if f.retryable => reassign.push((i, f.error)),
                    Ok(f) => {
                        let what = {
                            let s = &self.slots.lock().expect("slots")[i];
                            format!("fragment s{}t{} on {}", s.stage, s.task, f.node_id)
                        };
                        let msg = format!("{what}: {}", f.error);
                        self.slots.lock().expect("slots")[i].state = TaskState::Failed(msg.clone());
                        self.fail_all(msg);
                        return true;
                    }
                    Err(e) => reassign.push((i, e.to_string())),
                }
            }
        }
        for (i, why) in reassign {
            progressed = true;
            if let Err(e) = self.reassign(i, why, nodes).await {
                let msg = e.to_string();
                self.slots.lock().expect("slots")[i].state = TaskState::Failed(msg.clone());
                self.fail_all(msg);
                return true;
            }
        }
        progressed
    }

    async fn reassign(&self, i: usize, why: String, nodes: &[NodeView]) -> crate::Result<()> {
        let (stage, task, attempt, tried, cells) = {
            let mut slots = self.slots.lock().expect("slots");
            let s = &mut slots[i];
            s.errors
                .push(format!("attempt {} on {}: {why}", s.attempt, s.node));
            if s.attempt >= self.config.trials {
                return Err(Error::Abandoned {
                    what: format!(
                        "fragment s{}t{} of query {}",
                        s.stage, s.task, self.query_id
                    ),
                    attempts: s.attempt,
                    last_error: s.errors.join("; "),
                });
            }
            (
                s.stage,
                s.task,
                s.attempt + 1,
                s.tried.clone(),
                s.cells.clone(),
            )
        };
        let mut candidates: Vec<Candidate> =
            nodes.iter().filter_map(Candidate::from_view).collect();
        if candidates.is_empty() {
            return Err(Error::Unavailable(format!(
                "no live node to run fragment s{stage}t{task}"
            )));
        }
        let node = assign(&mut candidates, &[cells], &tried).remove(0);
        warn!(query_id = %self.query_id, stage, task, attempt, node = %node, reason = %why, "reassigning fragment");
        {
            let mut slots = self.slots.lock().expect("slots");
            let s = &mut slots[i];
            s.attempt = attempt;
            s.node = node.clone();
            s.tried.push(node.clone());
            s.state = TaskState::Posted {
                since: Instant::now(),
            };
        }
        self.post(stage, task, attempt, &node).await
    }

    /// The stream of one output partition of one stage.
    pub fn partition_stream(
        self: &Arc<Self>,
        stage: u32,
        partition: usize,
        schema: SchemaRef,
    ) -> DfResult<SendableRecordBatchStream> {
        let rx = self
            .receivers
            .lock()
            .expect("receivers")
            .remove(&(stage, partition))
            .ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "stage {stage} partition {partition} executed twice"
                ))
            })?;
        let expected = self
            .slots
            .lock()
            .expect("slots")
            .iter()
            .filter(|s| s.stage == stage && s.partition == partition)
            .count();
        let this = self.clone();
        let stream = futures::stream::unfold(
            (rx, expected, this),
            |(mut rx, remaining, this)| async move {
                if remaining == 0 {
                    return None;
                }
                let batches: DfResult<Vec<RecordBatch>> = match rx.recv().await {
                    Some(Ok(i)) => this.read_output(i).await.map_err(DataFusionError::from),
                    Some(Err(e)) => Err(DataFusionError::External(Box::new(Error::Internal(e)))),
                    None => Err(DataFusionError::Execution("distributed query ended".into())),
                };
                Some((batches, (rx, remaining - 1, this)))
            },
        )
        .flat_map(|r| {
            futures::stream::iter(match r {
                Ok(v) => v.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    /// Fetch and check one finished task's output.
    async fn read_output(&self, i: usize) -> crate::Result<Vec<RecordBatch>> {
        let (stage, task, done) = {
            let s = &self.slots.lock().expect("slots")[i];
            match &s.state {
                TaskState::Done(d) => (s.stage, s.task, d.clone()),
                _ => return Err(Error::Internal("output of an unfinished task".into())),
            }
        };
        let mut hasher = Sha256::new();
        let mut batches = Vec::new();
        for part in 0..done.parts {
            let key = paths::task_part(&self.query_id, stage, task, done.attempt, part)?;
            let (body, _) = self
                .storage
                .get_opt(&key)
                .await?
                .ok_or_else(|| Error::Internal(format!("missing output part {key}")))?;
            hasher.update(&body);
            let reader =
                arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
            for b in reader {
                batches.push(b?);
            }
        }
        let sum: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if sum != done.sha256 || rows != done.rows {
            return Err(Error::Internal(format!(
                "output of fragment s{stage}t{task} is corrupt (checksum or row count mismatch)"
            )));
        }
        Ok(batches)
    }

    pub fn mark_finished(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }

    /// Remove everything the query put into storage (and ask workers to stop if unfinished).
    pub async fn cleanup(&self) {
        if !self.finished.load(Ordering::SeqCst) {
            let _ = crate::queries::write_cancel_marker(&self.storage, &self.query_id).await;
        }
        let posted: Vec<Path> = self.posted.lock().expect("posted").drain(..).collect();
        for k in posted {
            let _ = self.storage.delete(&k).await;
        }
        if let Ok(prefix) = paths::query_prefix(&self.query_id) {
            match self.storage.delete_prefix(&prefix).await {
                Ok(n) => debug!(query_id = %self.query_id, objects = n, "query objects deleted"),
                Err(e) => warn!(query_id = %self.query_id, error = %e, "deleting query objects"),
            }
        }
        info!(query_id = %self.query_id, "distributed query cleaned up");
    }
}

/// Placeholder for a leaf stage on the coordinator: streams its tasks' outputs.
pub struct StageExec {
    stage: u32,
    tasks: usize,
    dispatch: Arc<Dispatch>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for StageExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StageExec(stage={})", self.stage)
    }
}

impl StageExec {
    pub fn new(stage: &super::cut::Stage, tasks: usize, dispatch: Arc<Dispatch>) -> Self {
        let schema = stage.leaf.schema();
        let eq: EquivalenceProperties = stage.leaf.equivalence_properties().clone();
        let properties = PlanProperties::new(
            eq,
            Partitioning::UnknownPartitioning(stage.partitions.max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            stage: stage.id,
            tasks,
            dispatch,
            schema,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for StageExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StageExec: stage={}, tasks={}, nodes=[{}]",
            self.stage,
            self.tasks,
            self.dispatch.nodes().join(", ")
        )
    }
}

impl ExecutionPlan for StageExec {
    fn name(&self) -> &str {
        "StageExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        self.dispatch
            .partition_stream(self.stage, partition, self.schema.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, capacity: f64) -> Candidate {
        Candidate {
            node_id: id.into(),
            capacity,
            bloom: None,
        }
    }

    #[test]
    fn spreads_by_capacity_and_prefers_cached_cells() {
        let mut c = vec![cand("a", 2.0), cand("b", 2.0)];
        let got = assign(&mut c, &vec![vec![]; 4], &[]);
        assert_eq!(got.iter().filter(|n| *n == "a").count(), 2);
        assert_eq!(got.iter().filter(|n| *n == "b").count(), 2);

        let mut bloom = crate::cache::Bloom::default();
        bloom.insert("x/cell.parquet");
        let mut c = vec![
            cand("a", 2.0),
            Candidate {
                bloom: Some(bloom),
                ..cand("b", 1.0)
            },
        ];
        let got = assign(&mut c, &[vec!["x/cell.parquet".into()]], &[]);
        assert_eq!(got, vec!["b".to_string()]);
        // Avoided nodes are skipped.
        let got = assign(&mut c, &[vec!["x/cell.parquet".into()]], &["b".to_string()]);
        assert_eq!(got, vec!["a".to_string()]);

        // A warm cache does not pull every task onto one node: once its bee is taken, an idle
        // node gets the next task.
        let mut bloom = crate::cache::Bloom::default();
        bloom.insert("x/cell.parquet");
        let mut c = vec![
            cand("cold", 1.5),
            Candidate {
                bloom: Some(bloom),
                ..cand("warm", 1.5)
            },
        ];
        let cell = vec!["x/cell.parquet".to_string()];
        let got = assign(&mut c, &[cell.clone(), cell], &[]);
        assert_eq!(got, vec!["warm".to_string(), "cold".to_string()]);
    }
}
