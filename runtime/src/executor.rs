//! The CPU runtime: query execution runs on its own Tokio runtime, apart from the IO runtime that
//! serves gRPC, heartbeats and storage polling, so a busy query cannot starve them.
//!
//! Results cross back to the IO side through a small bounded channel; the task driving a query
//! is aborted when its receiving stream is dropped (a client hang-up cancels the query).
//!
//! This module is also the only place that spawns tasks (`clippy.toml` forbids raw
//! `tokio::spawn` elsewhere). Every task has an owner that ends it:
//!
//! | helper                 | ends when                                                      |
//! |------------------------|----------------------------------------------------------------|
//! | [`spawn`]              | its [`AbortOnDrop`] handle is dropped (per-query watchers)    |
//! | [`Background::spawn`]  | the node shuts down (heartbeats, inbox worker, fragment runs)  |
//! | [`Background::spawn_finishing`] | it finishes, or the shutdown grace runs out (cleanup) |
//! | [`CpuExecutor::spawn`] | its handle is dropped (query execution on the CPU runtime)    |
//! | [`CpuExecutor::run`]   | its caller goes, unless it is putting a commit: then it ends (a statement) |

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use apiary_storage::commit_point;

use crate::error::{Error, Result};

/// Batches in flight between the CPU and IO runtimes per query.
const CHANNEL_DEPTH: usize = 2;

/// Stack of a CPU-runtime thread. Planning recurses over the statement's expression tree; a
/// deep one (a BI tool's `a = 1 OR a = 2 OR …` with thousands of terms) needs far more than the
/// 2 MiB default. Reserved, not committed: untouched pages cost nothing.
pub const CPU_THREAD_STACK: usize = 256 * 1024 * 1024;

/// A dedicated multi-threaded runtime for CPU work.
#[derive(Debug)]
pub struct CpuExecutor {
    runtime: Option<Runtime>,
    handle: Handle,
    /// Tasks spawned here that have not ended (nor been dropped, aborted).
    live: Arc<AtomicUsize>,
}

/// Counts a task of the CPU runtime as live until its future is dropped.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CpuExecutor {
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_stack_size(CPU_THREAD_STACK)
            .thread_name("apiary-cpu")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
            live: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Tasks on the CPU runtime that have not ended yet. A task aborted while it computes ends
    /// when it next yields: until then it still runs, and its drop (a write's cleanup) is to come.
    pub fn running(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Run a future on the CPU runtime.
    #[allow(clippy::disallowed_methods)]
    pub fn spawn<F>(&self, fut: F) -> AbortOnDrop<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.live.fetch_add(1, Ordering::AcqRel);
        let live = Live(self.live.clone());
        AbortOnDrop(Some(self.handle.spawn(async move {
            let _live = live;
            fut.await
        })))
    }

    /// Run `work` on the CPU runtime until it ends, `cancel` fires (Cancelled) or `timeout`
    /// passes (Timeout); the work is aborted in the latter two cases, unless it has begun to put
    /// a commit ([`commit_point`]): then it runs to its end, and its outcome is returned.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T>> + Send + 'static,
        cancel: &CancellationToken,
        timeout: Option<Duration>,
    ) -> Result<T> {
        let gate = Arc::new(commit_point::Gate::default());
        let mut task = UnlessCommitting {
            task: Some(self.spawn(commit_point::scope(gate.clone(), work))),
            gate: gate.clone(),
        };
        let task = task.task.as_mut().expect("just spawned");
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let ended = |r: Result<Result<T>, tokio::task::JoinError>| {
            r.map_err(|e| Error::Internal(format!("task on the CPU runtime: {e}")))?
        };
        let stopped = tokio::select! {
            r = &mut *task => return ended(r),
            _ = cancel.cancelled() => Error::Cancelled,
            _ = deadline => Error::Timeout(timeout.unwrap_or_default()),
        };
        if gate.stop() {
            return Err(stopped);
        }
        // A commit is being put: it may land, so the statement is seen to its end and its
        // outcome is the answer (a "failed" INSERT that had committed was run again, twice).
        tracing::info!(why = %stopped, "stopped during its commit; waiting for its outcome");
        ended(task.await)
    }

    /// Start a stream on the CPU runtime and read it from the caller's runtime.
    pub fn stream(
        &self,
        schema: SchemaRef,
        make: impl FnOnce() -> Result<SendableRecordBatchStream, DataFusionError> + Send + 'static,
    ) -> SendableRecordBatchStream {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let on_panic = tx.clone();
        let drive = async move {
            let mut stream = match make() {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(item) = stream.next().await {
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        };
        // A panic in the plan (DataFusion re-raises one from any partition's task here) must
        // fail the stream: unhandled, it ended the task, and with it the channel, so the client
        // saw a short result as if it were whole.
        let task = self.spawn(async move {
            if let Err(panic) = std::panic::AssertUnwindSafe(drive).catch_unwind().await {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                let _ = on_panic
                    .send(Err(DataFusionError::Internal(format!(
                        "the query's execution panicked: {what}"
                    ))))
                    .await;
            }
        });
        Box::pin(ChannelStream {
            schema,
            rx,
            _task: task,
        })
    }
}

impl Drop for CpuExecutor {
    fn drop(&mut self) {
        // Dropping a runtime from inside another runtime panics; this does not.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Spawn `fut` on the current runtime; it is aborted when the returned handle is dropped.
#[allow(clippy::disallowed_methods)]
pub fn spawn<F>(fut: F) -> AbortOnDrop<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    AbortOnDrop(Some(tokio::spawn(fut)))
}

/// Run blocking work (file IO, encoding) on the blocking pool.
#[allow(clippy::disallowed_methods)]
pub fn spawn_blocking<F, R>(f: F) -> AbortOnDrop<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    AbortOnDrop(Some(tokio::task::spawn_blocking(f)))
}

/// The background work of one node, ended by [`Background::shutdown`].
#[derive(Debug, Default)]
pub struct Background {
    token: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
    /// The runtime the node was made on (its IO runtime), where every task runs, wherever it
    /// is spawned from: a cleanup handed over from a `Drop` on the CPU runtime included.
    runtime: Option<Handle>,
}

impl Background {
    /// Tasks run on the current runtime (when there is one).
    pub fn new() -> Self {
        Self {
            runtime: Handle::try_current().ok(),
            ..Self::default()
        }
    }

    /// Fires when the node shuts down.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Run `fut` until it ends or the node shuts down.
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let token = self.token.clone();
        self.track(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = fut => {}
            }
        });
    }

    /// Run `fut` to its end; shutdown waits for it (up to its grace period) instead of cutting
    /// it short. For cleanup that should not be lost to a restart.
    pub fn spawn_finishing(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.track(fut);
    }

    #[allow(clippy::disallowed_methods)]
    fn track(&self, fut: impl Future<Output = ()> + Send + 'static) {
        // Called from a `Drop` too, which may run outside any runtime (a runtime shutting
        // down drops its tasks): spawning there would panic, in a destructor.
        let Some(runtime) = self.runtime.clone().or_else(|| Handle::try_current().ok()) else {
            tracing::warn!("no runtime to run a background task on; it is skipped");
            return;
        };
        let mut tasks = self.tasks.lock().expect("background tasks");
        // Reap what finished, so a long-lived node does not accumulate handles.
        while tasks.try_join_next().is_some() {}
        tasks.spawn_on(fut, &runtime);
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        let mut tasks = self.tasks.lock().expect("background tasks");
        while tasks.try_join_next().is_some() {}
        tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stop: cancel what runs until shutdown, give the rest `grace` to finish, abort leftovers.
    /// Tasks spawned after this starts are cancelled at once.
    pub async fn shutdown(&self, grace: Duration) {
        self.token.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("background tasks"));
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "background tasks still running after the grace period; aborting them"
            );
            tasks.shutdown().await;
        }
    }
}

/// A task handle that aborts the task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop<T>(Option<JoinHandle<T>>);

impl<T> AbortOnDrop<T> {
    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.0.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Let the task run on when this is dropped.
    fn detach(mut self) {
        self.0 = None;
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.as_mut() {
            Some(h) => Pin::new(h).poll(cx),
            None => Poll::Pending,
        }
    }
}

/// A statement's task that is aborted when dropped, unless it has begun to put a commit: a
/// caller that goes away (a client that hung up) leaves a commit under way to finish, rather
/// than cutting it short at an unknown point.
struct UnlessCommitting<T> {
    task: Option<AbortOnDrop<T>>,
    gate: Arc<commit_point::Gate>,
}

impl<T> Drop for UnlessCommitting<T> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take()
            && !self.gate.stop()
        {
            task.detach();
        }
    }
}

struct ChannelStream {
    schema: SchemaRef,
    rx: mpsc::Receiver<Result<RecordBatch, DataFusionError>>,
    _task: AbortOnDrop<()>,
}

impl Stream for ChannelStream {
    type Item = Result<RecordBatch, DataFusionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl RecordBatchStream for ChannelStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_on_its_own_threads_and_cancels_on_drop() {
        let cpu = CpuExecutor::new(1).unwrap();
        let name = cpu
            .spawn(async { std::thread::current().name().map(str::to_string) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("apiary-cpu"));

        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let task = cpu.spawn(async move {
            let _keep = tx;
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        });
        assert_eq!(cpu.running(), 1);
        drop(task);
        // The sender is dropped when the aborted task is.
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(5), &mut rx)
                .await
                .is_ok()
        );
        // Counted until its future is dropped (what it drops, first), which the shutdown
        // waits for.
        let counted_out = async {
            while cpu.running() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(5), counted_out)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_stream_that_panics_ends_in_an_error_not_short() {
        use std::sync::Arc;

        use arrow::array::Int32Array;
        use arrow::datatypes::{DataType, Field, Schema};
        use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
        let cpu = CpuExecutor::new(1).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int32Array::from(vec![1]))])
            .unwrap();
        let (s, b) = (schema.clone(), batch.clone());
        let mut stream = cpu.stream(schema, move || {
            let items = futures::stream::iter([0, 1]).map(move |i| {
                assert!(i == 0, "a partition's task panicked");
                Ok(b.clone())
            });
            Ok(Box::pin(RecordBatchStreamAdapter::new(s, items)) as SendableRecordBatchStream)
        });
        assert_eq!(stream.next().await.unwrap().unwrap(), batch);
        let err = stream.next().await.unwrap().unwrap_err().to_string();
        assert!(
            err.contains("panicked: a partition's task panicked"),
            "{err}"
        );
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn background_tasks_end_on_shutdown() {
        let bg = Background::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        bg.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        bg.spawn_finishing(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done_tx.send(());
        });
        assert_eq!(bg.len(), 2);
        bg.shutdown(Duration::from_secs(5)).await;
        // The endless task was cancelled (its sender dropped); the finishing one completed.
        assert!(rx.await.is_err());
        assert!(done_rx.await.is_ok());
        assert!(bg.is_empty());
        // After shutdown, new background work is cancelled at once.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        bg.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        assert!(
            tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .unwrap()
                .is_err()
        );
    }

    #[tokio::test]
    async fn run_races_cancel_and_timeout() {
        let cpu = CpuExecutor::new(1).unwrap();
        let token = CancellationToken::new();
        let ok = cpu.run(async { Ok(7) }, &token, None).await.unwrap();
        assert_eq!(ok, 7);
        let slow = cpu
            .run(
                async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                },
                &token,
                Some(Duration::from_millis(20)),
            )
            .await;
        assert!(matches!(slow, Err(Error::Timeout(_))));
        token.cancel();
        let cancelled = cpu
            .run(std::future::pending::<Result<()>>(), &token, None)
            .await;
        assert!(matches!(cancelled, Err(Error::Cancelled)));
    }
}
