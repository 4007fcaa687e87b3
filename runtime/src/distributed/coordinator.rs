//! The coordinator's side of a distributed query: post tasks, watch them through storage,
//! reassign what stalls or is given up, and hand finished outputs to the [`StageExec`]s of the
//! part of the plan that stays here.
//!
//! ```text
//!   post plan + inbox entry ──▶ worker claims (put-if-absent) ──▶ writes parts ──▶ done marker
//!        ▲                                                                          │
//!        └── monitor: LIST _apiary/queries/<q>/ every poll, or at once when a       │
//!            fragment ends on this node; reassign on Suspect/Dead                   │
//!            node, unclaimed attempt, or a retryable failure (the node gave it up) ◀─┘
//!   StageExec partition p ◀── tasks of p as they complete (Arrow IPC parts, checksummed)
//! ```
//!
//! A coordinator with a free bee also *takes over* an attempt that the node it was posted to
//! has not claimed within `steal_after`: it claims the attempt itself (the same put-if-absent),
//! and runs it here.
//!
//! A node *abandons* a fragment by writing a retryable `failed` marker (its bees are all busy
//! and its queue is full, it runs critical, storage failed it); the coordinator then posts the
//! next attempt to another node, avoiding every node that already tried, up to
//! [`DistributionConfig::trials`](super::DistributionConfig::trials) attempts.
//!
//! [`StageExec`]: super::stage_exec::StageExec

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use apiary_storage::Storage;
use apiary_storage::format::{DoneV1, FailedV1, TaskV1, now_ms};
use apiary_storage::paths::{self, AttemptKey};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use object_store::path::Path;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::DistContext;
use super::assign::{Candidate, assign};
use super::context::{DistributionConfig, OutcomeWatch};
use super::cut::Stage;
use super::shuffle::ShuffleSource;
use crate::error::{Error, Result};
use crate::swarm::{NodeState, NodeView};

/// Where a task stands, as the coordinator knows it.
#[derive(Debug, Clone)]
pub(crate) enum TaskState {
    /// Fed by shuffles whose producers are not all done: nothing posted yet.
    Waiting,
    Posted {
        since: Instant,
    },
    /// Claimed by the process of the node that started at this time (from its heartbeat): a
    /// node restarted under the same name has another, and its old claims are lost.
    Claimed {
        incarnation: Option<chrono::DateTime<chrono::Utc>>,
    },
    Done(DoneV1),
    /// Run here, by the coordinator, instead of being posted (a stage fed by small shuffles).
    Local,
    Failed,
}

/// One task of a distributed query.
#[derive(Debug)]
pub(crate) struct TaskSlot {
    /// The attempt now expected.
    pub(crate) key: AttemptKey,
    /// Output partition of its stage this task feeds.
    pub(crate) partition: usize,
    pub(crate) node: String,
    pub(crate) state: TaskState,
    pub(crate) tried: Vec<String>,
    pub(crate) errors: Vec<String>,
    /// Cell paths it reads (for cache-aware reassignment).
    pub(crate) cells: Vec<String>,
}

impl TaskSlot {
    pub(crate) fn new(key: AttemptKey, partition: usize, node: String, cells: Vec<String>) -> Self {
        Self {
            key,
            partition,
            tried: vec![node.clone()],
            node,
            state: TaskState::Posted {
                since: Instant::now(),
            },
            errors: vec![],
            cells,
        }
    }

    /// A task of a stage fed by shuffles, posted once its inputs are done.
    pub(crate) fn waiting(key: AttemptKey, partition: usize, node: String) -> Self {
        Self {
            state: TaskState::Waiting,
            ..Self::new(key, partition, node, vec![])
        }
    }

    fn is_settled(&self) -> bool {
        matches!(
            self.state,
            TaskState::Done(_) | TaskState::Local | TaskState::Failed
        )
    }
}

/// What feeds one partition of a stage streamed back here.
enum Feed {
    /// A finished task: its index into `slots`.
    Task(usize),
    /// A task's plan, run here (its shuffled inputs were small).
    Local(Arc<dyn ExecutionPlan>),
}

/// A partition's next feed, or why the query fails (a message, and whether it lost data).
/// A feed, or why the query failed: the message and the failure's kind
/// ([`crate::distributed::worker::failure_kind`]).
type Completion = std::result::Result<Feed, (String, String)>;

/// A stage that streams its output back here runs here instead of on the swarm when all of its
/// shuffled inputs together are at most this big: reading them costs less than a round of
/// posting, claiming and polling (about 60–100 ms measured on two pinned nodes), and q01's
/// final aggregate over a few kilobytes of partial states should not wait for one.
const LOCAL_STAGE_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// Producer stage → its finished attempts, with every slice they wrote.
type Sources = HashMap<u32, Vec<ShuffleSource>>;

/// Every task finished: done on a worker, or run here.
fn all_done(slots: &[TaskSlot]) -> bool {
    slots
        .iter()
        .all(|s| matches!(s.state, TaskState::Done(_) | TaskState::Local))
}

/// A waiting stage whose producers are all done.
struct ReadyStage {
    stage: Stage,
    /// (slot, partition) of each of its tasks.
    tasks: Vec<(usize, usize)>,
    sources: Sources,
}

/// Shared state of one distributed query on its coordinator.
pub(crate) struct Dispatch {
    pub(crate) query_id: String,
    storage: Storage,
    config: DistributionConfig,
    slots: Mutex<Vec<TaskSlot>>,
    /// (stage, partition) → completion channel: indices into `slots`, or an error.
    senders: Mutex<HashMap<(u32, usize), mpsc::UnboundedSender<Completion>>>,
    receivers: Mutex<HashMap<(u32, usize), mpsc::UnboundedReceiver<Completion>>>,
    /// Inbox entries we posted, deleted on cleanup.
    posted: Mutex<Vec<Path>>,
    /// Every task is done: no worker needs telling to stop.
    finished: AtomicBool,
    coordinator: String,
    deadline_ms: i64,
    ctx: Arc<DistContext>,
    /// Stages fed by shuffles, whose task plans are written once their producers are done.
    waiting: Mutex<Vec<Stage>>,
}

impl fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatch")
            .field("query_id", &self.query_id)
            .finish_non_exhaustive()
    }
}

impl Dispatch {
    /// A query coordinated here, whose tasks are `slots`, read back per (stage, partition).
    pub(crate) fn new(
        ctx: &Arc<DistContext>,
        query_id: String,
        slots: Vec<TaskSlot>,
        partitions: &[(u32, usize)],
        waiting: Vec<Stage>,
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
            storage: ctx.storage.clone(),
            config: ctx.config.clone(),
            slots: Mutex::new(slots),
            senders: Mutex::new(senders),
            receivers: Mutex::new(receivers),
            posted: Mutex::new(Vec::new()),
            finished: AtomicBool::new(false),
            coordinator: ctx.node_id.clone(),
            deadline_ms,
            ctx: ctx.clone(),
            waiting: Mutex::new(waiting),
        })
    }

    /// The inbox entry of attempt `key`, posted at `posted_at_ms`.
    fn task_entry(&self, key: &AttemptKey, posted_at_ms: i64) -> TaskV1 {
        TaskV1 {
            v: 1,
            query_id: key.query_id.clone(),
            stage: key.stage,
            task: key.task,
            attempt: key.attempt,
            coordinator: self.coordinator.clone(),
            posted_at_ms,
            deadline_at_ms: self.deadline_ms,
        }
    }

    /// Post one attempt of a task to `node`'s inbox.
    pub(crate) async fn post(&self, key: &AttemptKey, node: &str) -> Result<()> {
        let entry = self.task_entry(key, now_ms());
        let path = paths::inbox_entry(node, key)?;
        let sealed = self.ctx.key.seal_object(&path, &entry);
        self.storage.put(&path, sealed).await?;
        self.posted.lock().expect("posted").push(path);
        if node == self.coordinator {
            self.ctx.inbox_wake.notify_one();
        } else {
            self.ctx.posted_remotely();
        }
        Ok(())
    }

    /// Every node that ran (or runs) a task of this query.
    pub(crate) fn nodes(&self) -> Vec<String> {
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

    /// The (key, node) of every posted task's current attempt.
    pub(crate) fn attempts(&self) -> Vec<(AttemptKey, String)> {
        self.slots
            .lock()
            .expect("slots")
            .iter()
            .filter(|s| !matches!(s.state, TaskState::Waiting))
            .map(|s| (s.key.clone(), s.node.clone()))
            .collect()
    }

    /// Post the tasks of every waiting stage whose producers are all done: write each task's
    /// plan, naming the finished producer attempts and the slices of its partition, then post
    /// it (to another live node if the one chosen at the start is gone). Returns whether any
    /// stage started.
    async fn start_ready(&self, nodes: &[NodeView]) -> Result<bool> {
        let ready: Vec<ReadyStage> = {
            let mut waiting = self.waiting.lock().expect("waiting");
            let slots = self.slots.lock().expect("slots");
            let mut ready = Vec::new();
            waiting.retain(|stage| {
                let producers: HashSet<u32> = stage.inputs.iter().map(|(_, p)| *p).collect();
                let inputs: Vec<&TaskSlot> = slots
                    .iter()
                    .filter(|s| producers.contains(&s.key.stage))
                    .collect();
                if !inputs.iter().all(|s| matches!(s.state, TaskState::Done(_))) {
                    return true;
                }
                let mut sources: Sources = HashMap::new();
                for s in inputs {
                    if let TaskState::Done(d) = &s.state {
                        sources.entry(s.key.stage).or_default().push(ShuffleSource {
                            stage: s.key.stage,
                            task: s.key.task,
                            attempt: s.key.attempt,
                            slices: d.slices.clone(),
                        });
                    }
                }
                let mine: Vec<(usize, usize)> = slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.key.stage == stage.id)
                    .map(|(i, s)| (i, s.partition))
                    .collect();
                ready.push(ReadyStage {
                    stage: stage.clone(),
                    tasks: mine,
                    sources,
                });
                false
            });
            ready
        };
        let started = !ready.is_empty();
        for ReadyStage {
            stage,
            tasks: mine,
            sources,
        } in ready
        {
            let input_bytes: u64 = sources
                .values()
                .flatten()
                .flat_map(|source| &source.slices)
                .map(|s| s.len)
                .sum();
            let local = stage.output.is_none() && input_bytes <= LOCAL_STAGE_MAX_BYTES;
            for (i, partition) in mine {
                let p = partition as u32;
                let storage = local.then(|| self.storage.clone());
                let plan = super::cut::shuffle_task_plan(
                    &stage,
                    &self.query_id,
                    p,
                    storage,
                    |producer| {
                        sources
                            .get(&producer)
                            .into_iter()
                            .flatten()
                            .filter_map(|source| source.of_partition(p))
                            .collect()
                    },
                )?;
                if local {
                    {
                        let mut slots = self.slots.lock().expect("slots");
                        slots[i].state = TaskState::Local;
                        slots[i].node = self.coordinator.clone();
                        if all_done(&slots) {
                            self.finished.store(true, Ordering::SeqCst);
                        }
                    }
                    self.notify(stage.id, partition, Ok(Feed::Local(plan)));
                    continue;
                }
                let plan = super::shuffle::encode(plan)?;
                let (key, mut node) = {
                    let s = &self.slots.lock().expect("slots")[i];
                    (s.key.clone(), s.node.clone())
                };
                let path = paths::task_plan(&key)?;
                self.storage
                    .put(&path, self.ctx.key.seal("plan", &path, &plan))
                    .await?;
                let alive = nodes
                    .iter()
                    .any(|n| n.heartbeat.node_id == node && n.state == NodeState::Alive);
                if !alive {
                    let mut candidates: Vec<Candidate> =
                        nodes.iter().filter_map(Candidate::from_view).collect();
                    if candidates.is_empty() {
                        return Err(Error::Unavailable(format!("no live node to run {key}")));
                    }
                    node = assign(&mut candidates, &[vec![]], &[]).remove(0);
                }
                {
                    let mut slots = self.slots.lock().expect("slots");
                    let s = &mut slots[i];
                    s.node = node.clone();
                    s.tried = vec![node.clone()];
                    s.state = TaskState::Posted {
                        since: Instant::now(),
                    };
                }
                self.post(&key, &node).await?;
            }
            debug!(query_id = %self.query_id, stage = stage.id, input_bytes, local, "shuffle stage started");
        }
        Ok(started)
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
        self.fail_all_with(error, "")
    }

    fn fail_all_with(&self, error: String, kind: &str) {
        for tx in self.senders.lock().expect("senders").values() {
            let _ = tx.send(Err((error.clone(), kind.to_string())));
        }
    }

    /// Poll storage until every task is done or the query failed. `wake` (the query's wakes,
    /// stopped when the monitor ends: settled, failed, or dropped with its query) cuts a poll's
    /// wait short.
    pub(crate) async fn monitor(self: Arc<Self>, wake: OutcomeWatch) {
        let prefix = match paths::query_prefix(&self.query_id) {
            Ok(p) => p,
            Err(e) => return self.fail_all(e.to_string()),
        };
        let mut interval = self.config.poll_min;
        loop {
            // A fragment ending on this node wakes the monitor at once; the others are found by
            // polling.
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = wake.notified() => {}
            }
            let listed = match self.storage.list(&prefix).await {
                Ok(l) => l,
                Err(e) => {
                    warn!(query_id = %self.query_id, error = %e, "polling tasks");
                    continue;
                }
            };
            let names: HashSet<String> = listed.iter().map(|m| m.location.to_string()).collect();
            let view = self.ctx.swarm_view();
            let mut progressed = self.step(&names, &view).await;
            match self.start_ready(&view).await {
                Ok(started) => progressed |= started,
                Err(e) => {
                    warn!(query_id = %self.query_id, error = %e, "starting a shuffle stage");
                    return self.fail_all(e.to_string());
                }
            }
            let settled = self
                .slots
                .lock()
                .expect("slots")
                .iter()
                .all(TaskSlot::is_settled);
            if settled {
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
    pub(crate) async fn step(&self, names: &HashSet<String>, nodes: &[NodeView]) -> bool {
        let mut progressed = false;
        // Work out what to do under the lock, then do the IO without it.
        let mut reads: Vec<(usize, Path, bool)> = Vec::new(); // (slot, key, is_done)
        let mut reassign: Vec<(usize, String)> = Vec::new();
        // Attempts another node left unclaimed that a free bee here takes over (the bees are
        // counted only when there is such an attempt).
        let mut steals: Vec<usize> = Vec::new();
        let mut free: Option<usize> = None;
        {
            let mut slots = self.slots.lock().expect("slots");
            for (i, s) in slots.iter_mut().enumerate() {
                if s.is_settled() || matches!(s.state, TaskState::Waiting) {
                    continue;
                }
                let (done, failed, claim) = match (
                    paths::task_done(&s.key),
                    paths::task_failed(&s.key),
                    paths::task_claim(&s.key),
                ) {
                    (Ok(d), Ok(f), Ok(c)) => (d, f, c),
                    _ => {
                        reassign.push((i, format!("{} has an invalid key", s.key)));
                        continue;
                    }
                };
                if names.contains(done.as_ref()) {
                    reads.push((i, done, true));
                    continue;
                }
                if names.contains(failed.as_ref()) {
                    reads.push((i, failed, false));
                    continue;
                }
                let node = nodes.iter().find(|n| n.heartbeat.node_id == s.node);
                if let TaskState::Posted { since } = s.state {
                    if names.contains(claim.as_ref()) {
                        s.state = TaskState::Claimed {
                            incarnation: node.map(|n| n.heartbeat.started_at),
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
                    } else if s.node != self.coordinator
                        && since.elapsed() > self.config.steal_after
                    {
                        let free = free.get_or_insert_with(|| self.free_bees());
                        if *free > 0 {
                            *free -= 1;
                            steals.push(i);
                            continue;
                        }
                    }
                }
                if let (
                    TaskState::Claimed {
                        incarnation: Some(then),
                    },
                    Some(n),
                ) = (&s.state, node)
                    && n.heartbeat.started_at != *then
                {
                    reassign.push((i, format!("node {} restarted", s.node)));
                    continue;
                }
                match node.map(|n| n.state) {
                    Some(NodeState::Alive) => {}
                    Some(other) => {
                        reassign.push((i, format!("node {} is {}", s.node, other.as_str())))
                    }
                    None => reassign.push((i, format!("node {} left the swarm", s.node))),
                }
            }
        }
        for i in steals {
            progressed |= self.steal(i).await;
        }
        for (i, path, is_done) in reads {
            progressed = true;
            let body = match self.storage.get_opt(&path).await {
                Ok(Some((b, _))) => b,
                _ => continue,
            };
            let (key, partition) = {
                let s = &self.slots.lock().expect("slots")[i];
                (s.key.clone(), s.partition)
            };
            if is_done {
                match self.ctx.key.open_object::<DoneV1>(&path, &body) {
                    Ok(d) => {
                        debug!(query_id = %self.query_id, stage = key.stage, task = key.task, node = %d.node_id, rows = d.rows, "task done");
                        {
                            let mut slots = self.slots.lock().expect("slots");
                            slots[i].state = TaskState::Done(d);
                            // Marked before the last output is handed on, so a result stream
                            // that ends finds the query finished: no cancel marker is written.
                            if all_done(&slots) {
                                self.finished.store(true, Ordering::SeqCst);
                            }
                        }
                        self.notify(key.stage, partition, Ok(Feed::Task(i)));
                    }
                    Err(e) => reassign.push((i, e.to_string())),
                }
            } else {
                match self.ctx.key.open_object::<FailedV1>(&path, &body) {
                    // The node gave the fragment up: another node tries.
                    Ok(f) if f.retryable => {
                        reassign.push((i, format!("given up by {}: {}", f.node_id, f.error)))
                    }
                    Ok(f) => {
                        let msg = format!("{key} on {}: {}", f.node_id, f.error);
                        self.slots.lock().expect("slots")[i].state = TaskState::Failed;
                        // The statement's own failure (bad input, a limit, a vacuumed cell)
                        // reaches the client as on a single node; anything else keeps where
                        // it happened.
                        match super::worker::is_the_statements(&f.kind) {
                            true => {
                                warn!(query_id = %self.query_id, error = %msg, "fragment failed");
                                self.fail_all_with(f.error, &f.kind)
                            }
                            false => self.fail_all_with(msg, &f.kind),
                        }
                        return true;
                    }
                    Err(e) => reassign.push((i, e.to_string())),
                }
            }
        }
        for (i, why) in reassign {
            progressed = true;
            if let Err(e) = self.reassign(i, why, nodes).await {
                self.slots.lock().expect("slots")[i].state = TaskState::Failed;
                self.fail_all(e.to_string());
                return true;
            }
        }
        progressed
    }

    /// Bees of this node free to take over unclaimed attempts: none while anything is queued
    /// for a bee here, and none when stealing is off.
    fn free_bees(&self) -> usize {
        if self.config.steal_after.is_zero() {
            return 0;
        }
        let load = self.ctx.bees.load();
        if load.queued > 0 {
            0
        } else {
            load.bees.saturating_sub(load.busy)
        }
    }

    /// Claim slot `i`'s attempt, posted to another node that has not claimed it, and run it
    /// here. Returns whether this node took it.
    async fn steal(&self, i: usize) -> bool {
        let (key, since, node) = {
            let s = &self.slots.lock().expect("slots")[i];
            match s.state {
                TaskState::Posted { since } => (s.key.clone(), since, s.node.clone()),
                _ => return false,
            }
        };
        let task = self.task_entry(&key, now_ms() - since.elapsed().as_millis() as i64);
        match super::worker::steal(&self.ctx, task).await {
            Ok(true) => {
                debug!(query_id = %self.query_id, stage = key.stage, task = key.task, from = %node, "took over an unclaimed fragment");
                let mut slots = self.slots.lock().expect("slots");
                let s = &mut slots[i];
                s.node = self.coordinator.clone();
                s.tried.push(self.coordinator.clone());
                s.state = TaskState::Claimed { incarnation: None };
                true
            }
            // The other node claimed it first: the next round sees its claim.
            Ok(false) => false,
            Err(e) => {
                warn!(query_id = %self.query_id, error = %e, "taking over an unclaimed fragment");
                false
            }
        }
    }

    async fn reassign(&self, i: usize, why: String, nodes: &[NodeView]) -> Result<()> {
        let (key, tried, cells) = {
            let mut slots = self.slots.lock().expect("slots");
            let s = &mut slots[i];
            s.errors
                .push(format!("attempt {} on {}: {why}", s.key.attempt, s.node));
            if s.key.attempt >= self.config.trials {
                return Err(Error::Abandoned {
                    what: s.key.to_string(),
                    attempts: s.key.attempt,
                    last_error: s.errors.join("; "),
                });
            }
            (s.key.next(), s.tried.clone(), s.cells.clone())
        };
        let mut candidates: Vec<Candidate> =
            nodes.iter().filter_map(Candidate::from_view).collect();
        if candidates.is_empty() {
            return Err(Error::Unavailable(format!("no live node to run {key}")));
        }
        let node = assign(&mut candidates, &[cells], &tried).remove(0);
        warn!(query_id = %self.query_id, stage = key.stage, task = key.task, attempt = key.attempt, node = %node, reason = %why, "reassigning fragment");
        {
            let mut slots = self.slots.lock().expect("slots");
            let s = &mut slots[i];
            s.key = key.clone();
            s.node = node.clone();
            s.tried.push(node.clone());
            s.state = TaskState::Posted {
                since: Instant::now(),
            };
        }
        self.post(&key, &node).await
    }

    /// The stream of one output partition of one stage: each task's output as it finishes
    /// (or, for a task run here, its plan's stream).
    pub(crate) fn partition_stream(
        self: &Arc<Self>,
        stage: u32,
        partition: usize,
        schema: SchemaRef,
        context: Arc<TaskContext>,
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
            .filter(|s| s.key.stage == stage && s.partition == partition)
            .count();
        let this = self.clone();
        // One task's output is read whole (its checksum covers all of it), inside the query's
        // memory pool: an output larger than the pool fails the query instead of the process.
        let reservation = datafusion::execution::memory_pool::MemoryConsumer::new(format!(
            "StageExec[{stage}] partition {partition} task output"
        ))
        .register(context.memory_pool());
        type Batches = futures::stream::BoxStream<'static, DfResult<RecordBatch>>;
        let fail = |e: DataFusionError| -> Batches { Box::pin(futures::stream::iter([Err(e)])) };
        let stream = futures::stream::unfold(
            (rx, expected, this, reservation, context),
            move |(mut rx, remaining, this, mut reservation, context)| async move {
                if remaining == 0 {
                    return None;
                }
                let batches: Batches = match rx.recv().await {
                    Some(Ok(Feed::Task(i))) => match this.read_output(i, &mut reservation).await {
                        Ok(v) => Box::pin(futures::stream::iter(v.into_iter().map(Ok))),
                        Err(e) => fail(e),
                    },
                    Some(Ok(Feed::Local(plan))) => {
                        // A stage run here is a fragment too, for fault injection.
                        if let Some(delay) = this.config.fault_fragment_delay {
                            tokio::time::sleep(delay).await;
                        }
                        match plan.execute(0, context.clone()) {
                            Ok(s) => Box::pin(s),
                            Err(e) => fail(e),
                        }
                    }
                    Some(Err((e, kind))) => fail(DataFusionError::External(Box::new(
                        super::worker::error_of_kind(&kind, e),
                    ))),
                    None => fail(DataFusionError::Execution("distributed query ended".into())),
                };
                Some((batches, (rx, remaining - 1, this, reservation, context)))
            },
        )
        .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    /// Fetch and check one finished task's output.
    async fn read_output(
        &self,
        i: usize,
        reservation: &mut datafusion::execution::memory_pool::MemoryReservation,
    ) -> DfResult<Vec<RecordBatch>> {
        let (key, done) = {
            let s = &self.slots.lock().expect("slots")[i];
            match &s.state {
                TaskState::Done(d) => (s.key.clone(), d.clone()),
                _ => return Err(Error::Internal("output of an unfinished task".into()).into()),
            }
        };
        // The previous output has been handed on; this one takes its place in the pool.
        reservation.try_resize(usize::try_from(done.bytes).unwrap_or(usize::MAX))?;
        Ok(super::parts::read(&self.storage, &key, &done).await?)
    }

    /// The kind of storage the query's objects go through.
    pub(crate) fn storage_kind(&self) -> apiary_storage::BackendKind {
        self.storage.kind()
    }

    /// Bytes of output that the finished tasks of `stage` wrote.
    pub(crate) fn output_bytes(&self, stage: u32) -> u64 {
        self.slots
            .lock()
            .expect("slots")
            .iter()
            .filter(|s| s.key.stage == stage)
            .filter_map(|s| match &s.state {
                TaskState::Done(d) => Some(d.bytes),
                _ => None,
            })
            .sum()
    }

    /// Whether every task finished (then ending the query writes no cancel marker).
    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// Remove everything the query put into storage, and ask workers to stop unless every
    /// task already finished.
    pub(crate) async fn cleanup(&self) {
        // A query cut short leaves its cancel marker for the workers still running fragments
        // of it to find (the orphan sweep deletes it later): deleted with the rest at once,
        // it was almost never seen, and they ran on and wrote their outputs.
        let mut marker = None;
        if !self.is_finished() {
            let _ = crate::cancel::write_marker(&self.storage, &self.query_id).await;
            marker = paths::cancel_marker(&self.query_id).ok();
        }
        let posted: Vec<Path> = self.posted.lock().expect("posted").drain(..).collect();
        for k in posted {
            let _ = self.storage.delete(&k).await;
        }
        if let Ok(prefix) = paths::query_prefix(&self.query_id) {
            match self
                .storage
                .delete_prefix_but(&prefix, marker.as_ref())
                .await
            {
                Ok(n) => debug!(query_id = %self.query_id, objects = n, "query objects deleted"),
                Err(e) => warn!(query_id = %self.query_id, error = %e, "deleting query objects"),
            }
        }
        info!(query_id = %self.query_id, "distributed query cleaned up");
    }
}
