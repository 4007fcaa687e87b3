//! The worker's side: poll this node's inbox, claim attempts, run them in a bee, write the output.
//!
//! Workers only LIST their own inbox prefix. The interval adapts: `poll_min` while tasks arrive,
//! doubling to `poll_max` while idle (2 s by default: 1,800 LIST requests per idle node per hour).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use apiary_storage::paths;
use arrow::array::RecordBatch;
use bytes::Bytes;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::protocol::{ClaimV1, DoneV1, FailedV1, TaskV1, now_ms};
use crate::error::{Error, Result};
use crate::node::Node;

/// Poll this node's inbox until the node goes away.
pub async fn run(node: Weak<Node>) {
    let (mut interval, wake) = match node.upgrade() {
        Some(n) => (n.distribution().poll_min, n.inbox_wake().clone()),
        None => return,
    };
    let mut last_work = Instant::now();
    loop {
        // Tasks this node posted to itself wake it at once; others are found by polling.
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = wake.notified() => {}
        }
        let Some(n) = node.upgrade() else { return };
        let cfg = n.distribution().clone();
        let found = match poll_once(&n).await {
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
        interval = if last_work.elapsed() < cfg.poll_min * 50 {
            cfg.poll_min
        } else {
            (interval * 3 / 2).min(cfg.poll_max)
        };
    }
}

/// One look at the inbox: claim every entry we can and start it. Returns entries seen.
pub async fn poll_once(node: &Arc<Node>) -> Result<usize> {
    let storage = node.storage().clone();
    let prefix = paths::inbox_prefix(node.id())?;
    node.metrics().inbox_polls.fetch_add(1, Ordering::Relaxed);
    let mut entries = storage.list(&prefix).await?;
    entries.sort_by(|a, b| a.location.cmp(&b.location));
    let seen = entries.len();
    for meta in entries {
        let Some((body, _)) = storage.get_opt(&meta.location).await? else {
            continue;
        };
        let task = match TaskV1::decode(&body) {
            Ok(t) => t,
            Err(e) => {
                warn!(key = %meta.location, error = %e, "dropping an unreadable inbox entry");
                storage.delete(&meta.location).await?;
                continue;
            }
        };
        if claim(node, &task).await? {
            storage.delete(&meta.location).await?;
            let n = node.clone();
            tokio::spawn(async move { execute(n, task).await });
        } else {
            // Another worker has it (or it expired).
            storage.delete(&meta.location).await?;
        }
    }
    Ok(seen)
}

/// Try to claim an attempt. Exactly one put-if-absent of the claim object wins.
pub async fn claim(node: &Node, task: &TaskV1) -> Result<bool> {
    if task.deadline_at_ms < now_ms() {
        debug!(query_id = %task.query_id, "skipping an expired task");
        return Ok(false);
    }
    let key = paths::task_claim(&task.query_id, task.stage, task.task, task.attempt)?;
    let body = ClaimV1 {
        v: 1,
        node_id: node.id().to_string(),
        claimed_at_ms: now_ms(),
    }
    .encode();
    Ok(node.storage().put_if_absent(&key, body).await?)
}

/// Run a claimed attempt and write its outcome.
pub async fn execute(node: Arc<Node>, task: TaskV1) {
    let claimed_at = now_ms();
    let started = Instant::now();
    let outcome = run_task(&node, &task).await;
    let storage = node.storage();
    let result = match outcome {
        Ok((rows, bytes, parts, sha256)) => {
            let done = DoneV1 {
                v: 1,
                node_id: node.id().to_string(),
                attempt: task.attempt,
                rows,
                bytes,
                parts,
                sha256,
                dispatch_ms: claimed_at - task.posted_at_ms,
                run_ms: started.elapsed().as_millis() as i64,
            };
            node.metrics()
                .record_dispatch((claimed_at - task.posted_at_ms).max(0) as f64 / 1000.0);
            node.metrics().fragments.fetch_add(1, Ordering::Relaxed);
            info!(query_id = %task.query_id, stage = task.stage, task = task.task, attempt = task.attempt, rows, "fragment executed");
            match paths::task_done(&task.query_id, task.stage, task.task, task.attempt) {
                Ok(k) => storage.put(&k, done.encode()).await.map(|_| ()),
                Err(e) => Err(e),
            }
        }
        Err(Error::Cancelled) => {
            // Its query ended or was cancelled: a marker would only recreate a deleted prefix.
            info!(query_id = %task.query_id, stage = task.stage, task = task.task, "fragment dropped: its query ended");
            Ok(())
        }
        Err(e) => {
            warn!(query_id = %task.query_id, stage = task.stage, task = task.task, error = %e, "fragment failed");
            let failed = FailedV1 {
                v: 1,
                node_id: node.id().to_string(),
                attempt: task.attempt,
                retryable: crate::abandon::is_retryable(&e),
                error: e.to_string(),
            };
            match paths::task_failed(&task.query_id, task.stage, task.task, task.attempt) {
                Ok(k) => storage.put(&k, failed.encode()).await.map(|_| ()),
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = result {
        warn!(query_id = %task.query_id, error = %e, "writing a fragment's outcome");
    }
}

/// Returns (rows, bytes, parts, sha256).
async fn run_task(node: &Arc<Node>, task: &TaskV1) -> Result<(u64, u64, u32, String)> {
    let id = format!(
        "{}/s{}t{}a{}",
        task.query_id, task.stage, task.task, task.attempt
    );
    let mut guard = node.queries().register(
        &id,
        "fragment",
        &format!(
            "fragment s{}t{} of query {}",
            task.stage, task.task, task.query_id
        ),
    );
    guard.entry().set_queued();
    // The coordinating query, when it runs here, already watches the cancel marker.
    let local = node
        .queries()
        .list()
        .into_iter()
        .find(|q| q.id == task.query_id);
    match local {
        Some(q) => guard.follow(q.cancel_token().clone()),
        None => guard.watch_storage_for(node.storage().clone(), &task.query_id),
    }
    let lease = node.bees().acquire(&id).await?;
    guard.entry().set_bee(Some(lease.bee()));
    // Test hook: `APIARY_FAULT_FRAGMENT_DELAY_MS=n` makes every fragment take n ms longer, so
    // failure tests can kill a worker while it is busy with one.
    if let Some(ms) = std::env::var("APIARY_FAULT_FRAGMENT_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let storage = node.storage().clone();
    let (plan_bytes, _) = storage
        .get_opt(&paths::task_plan(&task.query_id, task.stage, task.task)?)
        .await?
        // The coordinator deletes a query's objects when it ends: nobody waits for this task.
        .ok_or(Error::Cancelled)?;
    let ctx: Arc<TaskContext> = node.engine().task_context(lease.env());
    let plan = datafusion_proto::bytes::physical_plan_from_bytes(&plan_bytes, &ctx)?;
    let merged: Arc<dyn ExecutionPlan> = if plan.output_partitioning().partition_count() <= 1 {
        plan
    } else if let Some(ordering) = plan.output_ordering().cloned() {
        Arc::new(SortPreservingMergeExec::new(ordering, plan))
    } else {
        Arc::new(CoalescePartitionsExec::new(plan))
    };
    let query_id = task.query_id.clone();
    let (stage, task_no, attempt) = (task.stage, task.task, task.attempt);
    let part_bytes = node.distribution().part_bytes;
    let token = guard.entry().cancel_token().clone();
    let work = node.cpu().spawn(async move {
        let mut stream = merged.execute(0, ctx)?;
        let mut out = PartWriter::new(storage, query_id, stage, task_no, attempt, part_bytes);
        while let Some(b) = stream.next().await {
            out.write(&b?).await?;
        }
        out.finish().await
    });
    let result = tokio::select! {
        r = work => r.map_err(|e| Error::Internal(format!("fragment task: {e}"))).and_then(|r| r),
        _ = token.cancelled() => Err(Error::Cancelled),
    };
    match &result {
        Ok((rows, ..)) => guard.finish(*rows),
        Err(_) => guard.fail(),
    }
    result.map_err(|e| lease.explain(e))
}

/// Writes a task's output as Arrow IPC stream objects of about `part_bytes` each.
struct PartWriter {
    storage: apiary_storage::Storage,
    query_id: String,
    stage: u32,
    task: u32,
    attempt: u32,
    part_bytes: usize,
    buf: Option<arrow::ipc::writer::StreamWriter<Vec<u8>>>,
    parts: u32,
    rows: u64,
    bytes: u64,
    hasher: Sha256,
    schema: Option<arrow::datatypes::SchemaRef>,
}

impl PartWriter {
    fn new(
        storage: apiary_storage::Storage,
        query_id: String,
        stage: u32,
        task: u32,
        attempt: u32,
        part_bytes: usize,
    ) -> Self {
        Self {
            storage,
            query_id,
            stage,
            task,
            attempt,
            part_bytes,
            buf: None,
            parts: 0,
            rows: 0,
            bytes: 0,
            hasher: Sha256::new(),
            schema: None,
        }
    }

    async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.schema.get_or_insert_with(|| batch.schema());
        if self.buf.is_none() {
            self.buf = Some(arrow::ipc::writer::StreamWriter::try_new(
                Vec::new(),
                &batch.schema(),
            )?);
        }
        let w = self.buf.as_mut().expect("set above");
        w.write(batch)?;
        self.rows += batch.num_rows() as u64;
        if w.get_ref().len() >= self.part_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let Some(mut w) = self.buf.take() else {
            return Ok(());
        };
        w.finish()?;
        let body = Bytes::from(w.into_inner()?);
        self.hasher.update(&body);
        self.bytes += body.len() as u64;
        let key = paths::task_part(
            &self.query_id,
            self.stage,
            self.task,
            self.attempt,
            self.parts,
        )?;
        self.storage.put(&key, body).await?;
        self.parts += 1;
        Ok(())
    }

    async fn finish(mut self) -> Result<(u64, u64, u32, String)> {
        self.flush().await?;
        let sum = self
            .hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok((self.rows, self.bytes, self.parts, sum))
    }
}
