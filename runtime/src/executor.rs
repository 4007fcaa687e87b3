//! The CPU runtime: query execution runs on its own Tokio runtime, apart from the IO runtime that
//! serves gRPC, heartbeats and storage polling, so a busy query cannot starve them.
//!
//! Results cross back to the IO side through a small bounded channel; the task driving a query
//! is aborted when its receiving stream is dropped (a client hang-up cancels the query).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use futures::{Stream, StreamExt};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Batches in flight between the CPU and IO runtimes per query.
const CHANNEL_DEPTH: usize = 2;

/// A dedicated multi-threaded runtime for CPU work.
#[derive(Debug)]
pub struct CpuExecutor {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl CpuExecutor {
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("apiary-cpu")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
        })
    }

    /// Run a future on the CPU runtime.
    pub fn spawn<F>(&self, fut: F) -> AbortOnDrop<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        AbortOnDrop(self.handle.spawn(fut))
    }

    /// Start a stream on the CPU runtime and read it from the caller's runtime.
    pub fn stream(
        &self,
        schema: SchemaRef,
        make: impl FnOnce() -> Result<SendableRecordBatchStream, DataFusionError> + Send + 'static,
    ) -> SendableRecordBatchStream {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let task = self.handle.spawn(async move {
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
        });
        Box::pin(ChannelStream {
            schema,
            rx,
            _task: AbortOnDrop(task),
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

/// A task handle that aborts the task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
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
        drop(task);
        // The sender is dropped when the aborted task is.
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(5), &mut rx)
                .await
                .is_ok()
        );
    }
}
