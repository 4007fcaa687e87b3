//! The worker's side: poll this node's inbox, claim attempts, run them in a bee, write the output.
//!
//! Workers only LIST their own inbox prefix. The interval adapts: `poll_min` while tasks arrive
//! and for 50 × `poll_min` after, for three heartbeat intervals after the node starts (its peers
//! place work on it once they have seen its heartbeat move, up to two intervals after it starts),
//! and while another live node's heartbeat says it coordinated lately; otherwise growing by half
//! on each empty poll up to `poll_max` (2 s by default: 1,800 LIST requests per idle node per
//! hour). A coordinator may claim and run an attempt it posted here before this worker polls
//! (see `Dispatch::steal`). A fragment that cannot run here for a retryable reason (no bee free
//! and the queue full, the node critical, a storage failure) is given up with a retryable
//! `failed` marker, and its coordinator tries another node.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use apiary_storage::format::{ClaimV1, DoneV1, FailedV1, TaskV1, Versioned, now_ms};
use apiary_storage::paths::{self, AttemptKey};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use futures::StreamExt;
use tracing::{debug, info, warn};

use super::DistContext;
use super::parts::{PartWriter, Written};
use super::shuffle::SliceWriter;
use super::watch::StorageWatch;
use crate::error::{Error, Result};
use datafusion::physical_plan::repartition::RepartitionExec;

/// Poll this node's inbox until the node goes away (or shuts down: the caller spawns this on
/// the node's background). `watch`, the node's watch of a local root, ends with it.
pub(crate) async fn run(ctx: Weak<DistContext>, watch: Option<StorageWatch>) {
    let _watch = watch;
    let Some(mut interval) = ctx.upgrade().map(|c| c.config.poll_min) else {
        return;
    };
    let started = Instant::now();
    let mut last_work = started;
    loop {
        let Some(c) = ctx.upgrade() else { return };
        // Tasks this node posted to itself wake it at once, and so do tasks posted to it on a
        // watched local root; others are found by polling.
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = c.inbox_wake.notified() => {}
        }
        let found = match poll_once(&c).await {
            Ok(found) => found,
            Err(e) => {
                warn!(error = %e, "polling the inbox");
                0
            }
        };
        // Fast while busy, and for a moment after (the next query's tasks, the next stage's
        // tasks usually follow within a second); then back off gently up to poll_max.
        if found > 0 {
            last_work = Instant::now();
        }
        let fast = last_work.elapsed() < c.config.poll_min * 50
            || started.elapsed() < c.world.interval() * 3
            || c.peer_coordinating();
        interval = if fast {
            c.config.poll_min
        } else {
            (interval * 3 / 2).min(c.config.poll_max)
        };
    }
}

/// One look at the inbox: claim every entry we can and start it. Returns entries seen.
pub(crate) async fn poll_once(ctx: &Arc<DistContext>) -> Result<usize> {
    let storage = &ctx.storage;
    let prefix = paths::inbox_prefix(&ctx.node_id)?;
    ctx.metrics.inbox_polls.fetch_add(1, Ordering::Relaxed);
    let mut entries = storage.list(&prefix).await?;
    entries.sort_by(|a, b| a.location.cmp(&b.location));
    let seen = entries.len();
    for meta in entries {
        let Some((body, _)) = storage.get_opt(&meta.location).await? else {
            continue;
        };
        let task = match ctx.key.open_object::<TaskV1>(&meta.location, &body) {
            Ok(t) => t,
            Err(e) => {
                warn!(key = %meta.location, error = %e, "dropping an unreadable inbox entry");
                storage.delete(&meta.location).await?;
                continue;
            }
        };
        // Claimed or not (another worker has it, or it expired), the entry has done its job.
        let claimed = claim(ctx, &task).await?;
        storage.delete(&meta.location).await?;
        if claimed {
            // Not cut short by shutdown: the run notices it and hands the fragment back.
            let c = ctx.clone();
            ctx.background
                .spawn_finishing(async move { execute(c, task).await });
        }
    }
    Ok(seen)
}

/// Claim an attempt posted to another node that has not claimed it yet, and run it here.
/// Returns whether this node won the claim (the other node may have claimed it meanwhile;
/// when it polls later, its claim fails and it drops the inbox entry).
pub(crate) async fn steal(ctx: &Arc<DistContext>, task: TaskV1) -> Result<bool> {
    if !claim(ctx, &task).await? {
        return Ok(false);
    }
    ctx.metrics.stolen.fetch_add(1, Ordering::Relaxed);
    let c = ctx.clone();
    ctx.background
        .spawn_finishing(async move { execute(c, task).await });
    Ok(true)
}

fn key_of(task: &TaskV1) -> AttemptKey {
    AttemptKey::new(task.query_id.clone(), task.stage, task.task, task.attempt)
}

/// Try to claim an attempt. Exactly one put-if-absent of the claim object wins.
async fn claim(ctx: &DistContext, task: &TaskV1) -> Result<bool> {
    if task.deadline_at_ms < now_ms() {
        debug!(query_id = %task.query_id, "skipping an expired task");
        return Ok(false);
    }
    let body = ClaimV1 {
        v: 1,
        node_id: ctx.node_id.clone(),
        claimed_at_ms: now_ms(),
    }
    .encode();
    Ok(ctx
        .storage
        .put_if_absent(&paths::task_claim(&key_of(task))?, body)
        .await?)
}

/// Run a claimed attempt and write its outcome.
async fn execute(ctx: Arc<DistContext>, task: TaskV1) {
    let key = key_of(&task);
    let claimed_at = now_ms();
    let started = Instant::now();
    let outcome = run_task(&ctx, &key).await;
    let storage = &ctx.storage;
    let result = match outcome {
        Ok(w) => {
            let dispatch_ms = claimed_at - task.posted_at_ms;
            let done = DoneV1 {
                v: 1,
                node_id: ctx.node_id.clone(),
                attempt: key.attempt,
                rows: w.rows,
                bytes: w.bytes,
                parts: w.parts,
                sha256: w.sha256,
                slices: w.slices,
                dispatch_ms,
                run_ms: started.elapsed().as_millis() as i64,
            };
            ctx.metrics
                .record_dispatch(dispatch_ms.max(0) as f64 / 1000.0);
            ctx.metrics.fragments.fetch_add(1, Ordering::Relaxed);
            if !done.slices.is_empty() {
                ctx.metrics
                    .shuffle_output_bytes
                    .fetch_add(w.bytes, Ordering::Relaxed);
            }
            ctx.metrics
                .fragment_output_bytes
                .fetch_add(w.bytes, Ordering::Relaxed);
            info!(query_id = %key.query_id, stage = key.stage, task = key.task, attempt = key.attempt, rows = w.rows, "fragment executed");
            match paths::task_done(&key) {
                Ok(k) => storage
                    .put(&k, ctx.key.seal_object(&k, &done))
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            }
        }
        Err(Error::Cancelled) => {
            // Its query ended or was cancelled: a marker would only recreate a deleted prefix.
            info!(query_id = %key.query_id, stage = key.stage, task = key.task, "fragment dropped: its query ended");
            Ok(())
        }
        Err(e) => {
            let retryable = e.is_retryable() || (memory_short(&e) && larger_bees_elsewhere(&ctx));
            if retryable {
                warn!(query_id = %key.query_id, stage = key.stage, task = key.task, error = %e, "giving up a fragment; another node will run it");
            } else {
                warn!(query_id = %key.query_id, stage = key.stage, task = key.task, error = %e, "fragment failed");
            }
            let failed = FailedV1 {
                v: 1,
                node_id: ctx.node_id.clone(),
                attempt: key.attempt,
                retryable,
                kind: failure_kind(&e).into(),
                error: e.to_string(),
            };
            match paths::task_failed(&key) {
                Ok(k) => storage
                    .put(&k, ctx.key.seal_object(&k, &failed))
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = result {
        warn!(query_id = %key.query_id, error = %e, "writing a fragment's outcome");
    }
    ctx.outcomes.wake(&key.query_id);
}

/// Whether `e` is a fragment needing more memory than this node's bees have (not a bound
/// every node applies alike, such as a function's output size).
fn memory_short(e: &Error) -> bool {
    matches!(e, Error::ResourceExhausted(m) if m.contains("more memory than its bee's budget"))
}

/// Whether another live node gives each bee more memory than this one: a fragment too big for
/// a bee here is given up for it (in a swarm of a Raspberry Pi and a NUC, a query failed each
/// time one of its fragments was placed on the Pi).
fn larger_bees_elsewhere(ctx: &DistContext) -> bool {
    let per_bee = |budget: u64, bees: u32| budget / u64::from(bees.max(1));
    let ours = ctx.bees.bee_budget();
    ctx.world.nodes().iter().any(|n| {
        n.heartbeat.node_id != ctx.node_id
            && n.state == crate::swarm::NodeState::Alive
            && per_bee(n.heartbeat.memory_budget, n.heartbeat.bees_total) > ours
    })
}

/// Where a task's output goes.
enum Output {
    Parts(Box<PartWriter>),
    Slices(Box<SliceWriter>),
}

impl Output {
    async fn write(&mut self, partition: usize, batch: &arrow::array::RecordBatch) -> Result<()> {
        match self {
            Output::Parts(w) => w.write(batch).await,
            Output::Slices(w) => w.write(partition, batch).await,
        }
    }

    async fn finish(self) -> Result<Written> {
        match self {
            Output::Parts(w) => w.finish().await,
            Output::Slices(w) => w.finish().await,
        }
    }
}

/// The most hash partitions a shuffled output may have (one per bee of the swarm is planned).
const MAX_SHUFFLE_PARTITIONS: usize = 4096;

/// The number of hash partitions of a task whose output is shuffled (its plan ends in a hash
/// repartition).
fn shuffle_partitions(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    let r = plan.downcast_ref::<RepartitionExec>()?;
    match r.partitioning() {
        datafusion::physical_plan::Partitioning::Hash(_, n) => Some(*n),
        _ => None,
    }
}

/// Run an attempt, or give it back if the node shuts down first.
async fn run_task(ctx: &Arc<DistContext>, key: &AttemptKey) -> Result<Written> {
    let shutdown = ctx.background.token().clone();
    tokio::select! {
        r = run_attempt(ctx, key) => r,
        _ = shutdown.cancelled() => Err(Error::Unavailable(format!(
            "node {} is shutting down", ctx.node_id
        ))),
    }
}

async fn run_attempt(ctx: &Arc<DistContext>, key: &AttemptKey) -> Result<Written> {
    let id = key.id();
    let mut guard = ctx.queries.register(&id, "fragment", &key.to_string());
    // The coordinating query, when it runs here, already watches the cancel marker.
    match ctx.queries.token_of(&key.query_id) {
        Some(token) => guard.follow(token),
        None => guard.watch_storage_for(ctx.storage.clone(), &key.query_id),
    }
    let lease = match guard.admit(&ctx.bees).await {
        Ok(l) => l,
        Err(e) => {
            guard.fail(&e);
            return Err(e);
        }
    };
    if let Some(delay) = ctx.config.fault_fragment_delay {
        tokio::time::sleep(delay).await;
    }
    let storage = ctx.storage.clone();
    let plan_path = paths::task_plan(key)?;
    let (sealed, _) = storage
        .get_opt(&plan_path)
        .await?
        // The coordinator deletes a query's objects when it ends: nobody waits for this task.
        .ok_or(Error::Cancelled)?;
    let plan_bytes = ctx.key.open("plan", &plan_path, &sealed)?;
    let task_ctx: Arc<TaskContext> = ctx.engine.task_context(lease.env());
    // A plan this node cannot decode (another build's) is never the statement's fault.
    let plan = super::shuffle::decode(&plan_bytes, &task_ctx, Some(storage.clone()))
        .map_err(|e| Error::Internal(format!("decoding the fragment's plan: {e}")))?;
    // A decoded plan carries no Parquet reader: give it the node's footer cache.
    let plan = apiary_storage::footers::read_footers_through(
        plan,
        ctx.engine.lakehouse().ledger().footers(),
        task_ctx.runtime_env().as_ref(),
    )?;
    // Only what the cutter makes runs here: a stage's operators over cells and shuffle reads.
    super::cut::validate_fragment(&plan, ctx.storage.prefix(), &key.query_id)?;
    // Apiary's own rewrites do not travel: apply them here, as to a plan made here.
    let plan = crate::engine::in_fragment(
        plan,
        task_ctx.session_config().options(),
        ctx.bees.bee_budget(),
    )?;
    // A shuffled output drains every hash partition into one slice writer; any other output is
    // merged into one stream of parts.
    let (streams, mut out) = match shuffle_partitions(&plan) {
        Some(n) if n > MAX_SHUFFLE_PARTITIONS => {
            let e = Error::NotAllowed(format!(
                "fragment refused: {n} shuffle partitions (at most {MAX_SHUFFLE_PARTITIONS})"
            ));
            guard.fail(&e);
            return Err(e);
        }
        Some(n) => (
            (0..n).map(|p| (p, plan.clone())).collect::<Vec<_>>(),
            Output::Slices(Box::new(SliceWriter::new(
                storage,
                key.clone(),
                n,
                ctx.config.part_bytes,
            ))),
        ),
        None => {
            let merged: Arc<dyn ExecutionPlan> =
                if plan.output_partitioning().partition_count() <= 1 {
                    plan
                } else if let Some(ordering) = plan.output_ordering().cloned() {
                    Arc::new(SortPreservingMergeExec::new(ordering, plan))
                } else {
                    Arc::new(CoalescePartitionsExec::new(plan))
                };
            (
                vec![(0, merged)],
                Output::Parts(Box::new(PartWriter::new(
                    storage,
                    key.clone(),
                    ctx.config.part_bytes,
                ))),
            )
        }
    };
    let token = guard.entry().cancel_token().clone();
    let result = ctx
        .cpu
        .run(
            async move {
                let streams = streams
                    .into_iter()
                    .map(|(p, plan)| {
                        plan.execute(p, task_ctx.clone())
                            .map(|s| s.map(move |b| (p, b)))
                    })
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                let mut all = futures::stream::select_all(streams);
                while let Some((p, b)) = all.next().await {
                    out.write(p, &b?).await?;
                }
                out.finish().await
            },
            &token,
            None,
        )
        .await;
    match &result {
        Ok(w) => guard.finish(w.rows),
        Err(e) => guard.fail(e),
    }
    result.map_err(|e| lease.explain(e))
}

/// A fragment's failure as its `FailedV1` records it, so that the coordinator answers the
/// client with the status a single node would: `data_loss`, and the statement's own failures
/// `invalid_argument` (bad input: overflow, a cast), `resource_exhausted` (a limit) and
/// `not_found` (a cell VACUUM deleted); empty for anything else (INTERNAL). Nodes that do not
/// know a kind read it as empty.
pub(crate) fn failure_kind(e: &Error) -> &'static str {
    use apiary_storage::Error as S;
    match e {
        Error::DataLoss(_) => "data_loss",
        Error::Sql(_) => "invalid_argument",
        Error::ResourceExhausted(_) => "resource_exhausted",
        Error::Storage(S::Gone(_)) => "not_found",
        _ => "",
    }
}

/// Whether a failure of `kind` is the statement's own (its message is the client's).
pub(crate) fn is_the_statements(kind: &str) -> bool {
    matches!(
        kind,
        "invalid_argument" | "resource_exhausted" | "not_found"
    )
}

/// The error a fragment's failure of `kind`, said as `message`, is to the client.
pub(crate) fn error_of_kind(kind: &str, message: String) -> Error {
    match kind {
        "data_loss" => Error::DataLoss(message),
        "invalid_argument" => Error::Sql(message),
        "resource_exhausted" => Error::ResourceExhausted(message),
        "not_found" => Error::Storage(apiary_storage::Error::Gone(message)),
        _ => Error::Internal(message),
    }
}
