//! Running queries: a registry for status and cancellation, and the stream wrapper that makes a
//! query observable (rows, bytes, duration, one log line when it ends) and cancellable.
//!
//! Cancellation reaches a query three ways: the client hangs up (the stream is dropped), a
//! `CancelFlightInfo` arrives at this node (the registry fires the query's token), or it arrives at
//! another node, which writes a cancel marker into storage that the executing node polls for.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apiary_storage::Storage;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use chrono::{DateTime, Utc};
use datafusion::error::DataFusionError;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use futures::{FutureExt, Stream, StreamExt};
use std::future::Future;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::Error;
use crate::executor::AbortOnDrop;
use crate::status::{FailureStatus, QueryStatus};

/// How often a running query checks storage for a cancel marker written by another node.
const CANCEL_POLL: Duration = Duration::from_secs(1);

/// One running (or queued) query.
#[derive(Debug)]
pub struct QueryEntry {
    pub id: String,
    pub user: String,
    pub sql: String,
    pub started_at: DateTime<Utc>,
    started: Instant,
    token: CancellationToken,
    rows: AtomicU64,
    bytes: AtomicU64,
    /// Which bee runs it (set once it has one).
    bee: Mutex<Option<usize>>,
    queued: AtomicBool,
}

impl QueryEntry {
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn bee(&self) -> Option<usize> {
        *self.bee.lock().expect("query entry")
    }

    /// The query got a bee (`Some`) or runs without one (`None`, status queries).
    pub fn set_bee(&self, bee: Option<usize>) {
        *self.bee.lock().expect("query entry") = bee;
        self.queued.store(false, Ordering::Relaxed);
    }

    /// The query waits for a bee.
    pub fn set_queued(&self) {
        self.queued.store(true, Ordering::Relaxed);
    }

    pub fn is_queued(&self) -> bool {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn cancel_token(&self) -> &CancellationToken {
        &self.token
    }
}

/// Failures kept for the status page.
const RECENT_FAILURES: usize = 20;

/// The queries of this node.
#[derive(Debug, Default)]
pub struct QueryRegistry {
    queries: Mutex<HashMap<String, Arc<QueryEntry>>>,
    /// Other names of running queries (a distributed run's id → its query), held weakly.
    aliases: Mutex<HashMap<String, std::sync::Weak<QueryEntry>>>,
    failures: Mutex<std::collections::VecDeque<FailureStatus>>,
}

impl QueryRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Register a query; it stays listed until the returned guard drops.
    pub fn register(self: &Arc<Self>, id: &str, user: &str, sql: &str) -> QueryGuard {
        let entry = Arc::new(QueryEntry {
            id: id.to_string(),
            user: user.to_string(),
            sql: sql.to_string(),
            started_at: Utc::now(),
            started: Instant::now(),
            token: CancellationToken::new(),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            bee: Mutex::new(None),
            queued: AtomicBool::new(false),
        });
        // Several DoGets may redeem one ticket; the registry keeps the latest under the id.
        self.queries
            .lock()
            .expect("query registry")
            .insert(id.to_string(), entry.clone());
        QueryGuard {
            registry: self.clone(),
            entry,
            finished: false,
            failed: false,
            watcher: None,
            first_check: None,
        }
    }

    /// Cancel a query running on this node. Returns whether it was found.
    pub fn cancel(&self, id: &str) -> bool {
        match self.queries.lock().expect("query registry").get(id) {
            Some(e) => {
                e.token.cancel();
                true
            }
            None => false,
        }
    }

    /// Another name for a running query; it lasts as long as the query does.
    pub fn alias(&self, alias: &str, entry: &Arc<QueryEntry>) {
        let mut aliases = self.aliases.lock().expect("query registry");
        aliases.retain(|_, e| e.strong_count() > 0);
        aliases.insert(alias.to_string(), Arc::downgrade(entry));
    }

    /// The cancellation token of a query of this node (by id or alias), if it runs here.
    pub fn token_of(&self, id: &str) -> Option<CancellationToken> {
        if let Some(e) = self.queries.lock().expect("query registry").get(id) {
            return Some(e.token.clone());
        }
        self.aliases
            .lock()
            .expect("query registry")
            .get(id)
            .and_then(|e| e.upgrade())
            .map(|e| e.token.clone())
    }

    /// Rows for status: every registered query, oldest first.
    pub fn status(&self) -> Vec<QueryStatus> {
        self.list()
            .iter()
            .map(|e| QueryStatus {
                id: e.id.clone(),
                user: e.user.clone(),
                queued: e.is_queued(),
                bee: e.bee(),
                started_at: e.started_at,
                elapsed: e.elapsed(),
                rows: e.rows(),
                bytes: e.bytes(),
                sql: e.sql.clone(),
            })
            .collect()
    }

    pub fn list(&self) -> Vec<Arc<QueryEntry>> {
        let mut v: Vec<Arc<QueryEntry>> = self
            .queries
            .lock()
            .expect("query registry")
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|e| e.started_at);
        v
    }

    /// The latest failures, newest first.
    pub fn recent_failures(&self) -> Vec<FailureStatus> {
        self.failures
            .lock()
            .expect("query registry")
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    fn record_failure(&self, entry: &QueryEntry, error: String) {
        let mut f = self.failures.lock().expect("query registry");
        if f.len() >= RECENT_FAILURES {
            f.pop_front();
        }
        f.push_back(FailureStatus {
            id: entry.id.clone(),
            user: entry.user.clone(),
            sql: entry.sql.clone(),
            error,
            at: Utc::now(),
        });
    }

    fn remove(&self, entry: &Arc<QueryEntry>) {
        let mut map = self.queries.lock().expect("query registry");
        if map.get(&entry.id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            map.remove(&entry.id);
        }
    }
}

/// Keeps a query registered; logs one line when the query ends.
#[derive(Debug)]
pub struct QueryGuard {
    registry: Arc<QueryRegistry>,
    entry: Arc<QueryEntry>,
    finished: bool,
    failed: bool,
    watcher: Option<AbortOnDrop<()>>,
    /// Answered (sent or dropped) once the first look for a cancel marker is over, when the
    /// query is watched from its start; its result does not end before.
    first_check: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl QueryGuard {
    pub fn entry(&self) -> &Arc<QueryEntry> {
        &self.entry
    }

    /// Also cancel the query when another node writes its cancel marker into `storage`.
    pub fn watch_storage(&mut self, storage: Storage) {
        let id = self.entry.id.clone();
        self.watch_storage_for(storage, &id);
    }

    /// Cancel when the marker of `query_id` appears (fragments watch their query's marker).
    pub fn watch_storage_for(&mut self, storage: Storage, query_id: &str) {
        self.watch(storage, query_id, None);
    }

    /// [`watch_storage`](Self::watch_storage), looking at once as well: a marker written before
    /// the query started (a CancelFlightInfo ahead of the DoGet) cancels it. The look runs
    /// beside the query — no storage round trip before the first batch — and its result
    /// ([`TrackedStream`]) does not end before the look is over, so a cancelled query never
    /// finishes as if it had not been.
    pub fn watch_storage_from_start(&mut self, storage: Storage) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.first_check = Some(rx);
        let id = self.entry.id.clone();
        self.watch(storage, &id, Some(tx));
    }

    fn watch(
        &mut self,
        storage: Storage,
        query_id: &str,
        mut first: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let entry = self.entry.clone();
        let query_id = query_id.to_string();
        self.watcher = Some(crate::executor::spawn(async move {
            loop {
                if first.is_none() {
                    tokio::select! {
                        _ = entry.token.cancelled() => return,
                        _ = tokio::time::sleep(CANCEL_POLL) => {}
                    }
                }
                match crate::cancel::requested(&storage, &query_id).await {
                    Ok(true) => {
                        info!(query_id = %entry.id, "cancel marker found");
                        // Cancelled before the first look is reported over.
                        entry.token.cancel();
                        return;
                    }
                    Ok(false) => {}
                    Err(e) => warn!(query_id = %entry.id, error = %e, "checking cancel marker"),
                }
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            }
        }));
    }

    /// Cancel with `parent`, a query of this node that already watches for cancellation (a
    /// fragment of a query this node coordinates): no second poll of the same marker.
    pub fn follow(&mut self, parent: CancellationToken) {
        let entry = self.entry.clone();
        self.watcher = Some(crate::executor::spawn(async move {
            tokio::select! {
                _ = parent.cancelled() => entry.token.cancel(),
                _ = entry.token.cancelled() => {}
            }
        }));
    }

    /// Take a bee for this query from `bees`, showing it queued while it waits.
    pub async fn admit(
        &self,
        bees: &Arc<crate::bees::BeePool>,
    ) -> crate::Result<crate::bees::BeeLease> {
        self.entry.set_queued();
        let lease = bees.acquire(&self.entry.id).await?;
        self.entry.set_bee(Some(lease.bee()));
        Ok(lease)
    }

    /// Mark the query done (a statement that returns no stream).
    pub fn finish(mut self, rows: u64) {
        self.entry.rows.store(rows, Ordering::Relaxed);
        self.finished = true;
    }

    /// Mark the query failed with `error` (kept among the node's recent failures).
    pub fn fail(mut self, error: &dyn std::fmt::Display) {
        self.failed = true;
        self.finished = true;
        self.registry.record_failure(&self.entry, error.to_string());
    }
}

impl Drop for QueryGuard {
    fn drop(&mut self) {
        self.watcher.take();
        self.registry.remove(&self.entry);
        let e = &self.entry;
        let outcome = if self.failed {
            "failed"
        } else if self.finished {
            "finished"
        } else if e.token.is_cancelled() {
            "cancelled"
        } else {
            "abandoned by the client"
        };
        info!(
            query_id = %e.id,
            user = %e.user,
            duration_ms = e.started.elapsed().as_millis() as u64,
            rows = e.rows(),
            bytes = e.bytes(),
            outcome,
            "query"
        );
    }
}

/// A result stream that counts what it yields, stops when its query is cancelled, and keeps the
/// query registered (and what it holds, `H`: a bee, a distributed run) until it is dropped.
pub struct TrackedStream<H = ()> {
    inner: SendableRecordBatchStream,
    guard: Option<QueryGuard>,
    schema: SchemaRef,
    cancelled: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
    map_err: Option<Box<dyn Fn(Error) -> Error + Send>>,
    /// The inner stream has ended (it is not polled again).
    inner_done: bool,
    done: bool,
    _held: H,
}

impl<H> std::fmt::Debug for TrackedStream<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedStream")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<H: Send + Unpin + 'static> TrackedStream<H> {
    pub fn new(inner: SendableRecordBatchStream, guard: QueryGuard, held: H) -> Self {
        let schema = inner.schema();
        let cancelled = Box::pin(guard.entry.token.clone().cancelled_owned());
        Self {
            inner,
            guard: Some(guard),
            schema,
            cancelled,
            deadline: None,
            map_err: None,
            inner_done: false,
            done: false,
            _held: held,
        }
    }

    /// End the query with a timeout error at `deadline`.
    pub fn with_deadline(mut self, deadline: Instant, timeout: Duration) -> Self {
        self.deadline = Some((Box::pin(tokio::time::sleep_until(deadline.into())), timeout));
        self
    }

    /// Rewrite errors the query fails with (e.g. to name the memory budget).
    pub fn with_error_map(mut self, f: impl Fn(Error) -> Error + Send + 'static) -> Self {
        self.map_err = Some(Box::new(f));
        self
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<RecordBatch, DataFusionError>>> {
        self.done = true;
        if let Some(g) = self.guard.take() {
            g.fail(&e);
        }
        Poll::Ready(Some(Err(e.into())))
    }

    pub fn boxed(self) -> SendableRecordBatchStream {
        Box::pin(self)
    }

    /// Serve the result through a task that keeps the query's deadline, its cancellation and an
    /// idle bound (`idle`; zero: none) while the reader reads nothing. A stream is only checked
    /// when it is polled, and a client that stops reading stops the polling (HTTP/2 flow
    /// control): its query held its bee and memory past `--query-timeout`, for as long as the
    /// client kept the connection open. Stopped, the query frees them at once; the reader gets
    /// what was already sent, then the error.
    pub fn served(self, idle: Duration) -> SendableRecordBatchStream {
        let schema = self.schema.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let stopped: Arc<Mutex<Option<DataFusionError>>> = Arc::default();
        let stop = stopped.clone();
        let token = self.guard.as_ref().map(|g| g.entry.token.clone());
        let deadline = self.deadline.as_ref().map(|(s, t)| (s.deadline(), *t));
        let on_panic = stopped.clone();
        // Held by the task until a panic is recorded: the channel must not end before that.
        let open = tx.clone();
        let pump = async move {
            let mut tracked = self;
            while let Some(item) = tracked.next().await {
                let quiet = async {
                    match idle.is_zero() {
                        true => std::future::pending().await,
                        false => tokio::time::sleep(idle).await,
                    }
                };
                let past_deadline = async {
                    match deadline {
                        Some((at, _)) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                let cancelled = async {
                    match &token {
                        Some(t) => t.cancelled().await,
                        None => std::future::pending().await,
                    }
                };
                let why = tokio::select! {
                    sent = tx.send(item) => match sent {
                        Ok(()) => continue,
                        // The reader is gone: dropping the stream ends the query.
                        Err(_) => return,
                    },
                    _ = quiet => Error::ReaderIdle(idle),
                    _ = past_deadline => Error::Timeout(deadline.map(|(_, t)| t).unwrap_or_default()),
                    _ = cancelled => Error::Cancelled,
                };
                // Record why before the sender goes, so the reader finds it when the channel ends.
                // A cancelled query is recorded as such when its guard is dropped, as when the
                // stream itself sees the cancellation.
                let e = match why {
                    Error::Cancelled => Some(Error::Cancelled.into()),
                    why => match tracked.fail(why) {
                        Poll::Ready(Some(Err(e))) => Some(e),
                        _ => None,
                    },
                };
                *stop.lock().expect("stopped") = e;
                return;
            }
        };
        // A panic while pumping must fail the result: unhandled, it ended the task and the
        // channel, and the reader saw a short result as if it were whole.
        let task = crate::executor::spawn(async move {
            if std::panic::AssertUnwindSafe(pump)
                .catch_unwind()
                .await
                .is_err()
            {
                *on_panic.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Error::Internal("the query's result stream panicked".into()).into());
            }
            drop(open);
        });
        Box::pin(Served {
            schema,
            rx,
            stopped,
            done: false,
            _task: task,
        })
    }
}

/// The reading end of [`TrackedStream::served`].
struct Served {
    schema: SchemaRef,
    rx: tokio::sync::mpsc::Receiver<Result<RecordBatch, DataFusionError>>,
    stopped: Arc<Mutex<Option<DataFusionError>>>,
    done: bool,
    _task: AbortOnDrop<()>,
}

impl Stream for Served {
    type Item = Result<RecordBatch, DataFusionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(None) => {
                self.done = true;
                let why = self
                    .stopped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                Poll::Ready(why.map(Err))
            }
            other => other,
        }
    }
}

impl RecordBatchStream for Served {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

impl<H: Send + Unpin + 'static> Stream for TrackedStream<H> {
    type Item = Result<RecordBatch, DataFusionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.cancelled.poll_unpin(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(Error::Cancelled.into())));
        }
        if let Some((sleep, timeout)) = &mut self.deadline
            && sleep.as_mut().poll(cx).is_ready()
        {
            let timeout = *timeout;
            return self.fail(Error::Timeout(timeout));
        }
        if self.inner_done {
            return self.finish(cx);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                if let Some(g) = &self.guard {
                    g.entry
                        .rows
                        .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    g.entry
                        .bytes
                        .fetch_add(batch.get_array_memory_size() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e = Error::from(e);
                let e = match &self.map_err {
                    Some(f) => f(e),
                    None => e,
                };
                self.fail(e)
            }
            Poll::Ready(None) => {
                self.inner_done = true;
                self.finish(cx)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<H: Send + Unpin + 'static> TrackedStream<H> {
    /// The end of the result, once the first look for a cancel marker (if any) is over: a
    /// marker found makes it `Cancelled` instead.
    fn finish(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<RecordBatch, DataFusionError>>> {
        if let Some(g) = self.guard.as_mut()
            && let Some(rx) = g.first_check.as_mut()
        {
            if Pin::new(rx).poll(cx).is_pending() {
                return Poll::Pending;
            }
            g.first_check = None;
            if self.cancelled.poll_unpin(cx).is_ready() {
                self.done = true;
                return Poll::Ready(Some(Err(Error::Cancelled.into())));
            }
        }
        self.done = true;
        if let Some(mut g) = self.guard.take() {
            g.finished = true;
        }
        Poll::Ready(None)
    }
}

impl<H: Send + Unpin + 'static> RecordBatchStream for TrackedStream<H> {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
