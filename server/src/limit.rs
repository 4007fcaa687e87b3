//! A bound on the calls one node handles at once: beyond `--max-calls`, a call is refused at
//! once with RESOURCE_EXHAUSTED (clients back off and retry) instead of queueing without bound.
//! Together with `--max-message-size` and `--max-calls-per-connection` this bounds the memory
//! that clients' messages can pin.
//!
//! The layer also drains the node ([`Drain`]): once a shutdown begins, calls that start new work
//! are refused (UNAVAILABLE: clients go to another node), while the results of statements
//! already run are still fetched — ADBC runs an INSERT in GetFlightInfo and reads its count
//! with a DoGet, and that DoGet refused made a committed INSERT look failed (and retried).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::debug;

/// A node's drain at shutdown; see the module's documentation.
#[derive(Debug)]
pub struct Drain {
    begun: AtomicBool,
    /// Admitted calls whose response has not been returned yet.
    pending: AtomicUsize,
    /// When a call was last admitted or answered.
    last_admitted: Mutex<Instant>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            begun: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            last_admitted: Mutex::new(Instant::now()),
        }
    }
}

impl Drain {
    /// Refuse new work from now on.
    pub fn begin(&self) {
        self.begun.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.begun.load(Ordering::SeqCst)
    }

    /// Until no admitted call is pending and none was admitted for `quiet` (a client fetches
    /// a statement's result within milliseconds of its GetFlightInfo).
    pub async fn settled(&self, quiet: Duration) {
        loop {
            let idle = self.last_admitted.lock().expect("drain").elapsed();
            if self.pending.load(Ordering::SeqCst) == 0 && idle >= quiet {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn admitted(&self) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        *self.last_admitted.lock().expect("drain") = Instant::now();
    }

    /// A call answered: the quiet period counts from here too (a 2 s INSERT admitted before the
    /// signal is answered now, and its client's DoGet follows).
    fn answered(&self) {
        *self.last_admitted.lock().expect("drain") = Instant::now();
        self.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether the Flight method at `path` starts new work (refused while draining); DoGet
/// (fetching a result), DoAction (closing, cancelling) and ListActions do not.
fn starts_work(path: &str) -> bool {
    matches!(
        path.rsplit('/').next(),
        Some(
            "GetFlightInfo"
                | "PollFlightInfo"
                | "GetSchema"
                | "DoPut"
                | "DoExchange"
                | "Handshake"
                | "ListFlights"
        )
    )
}

/// Tower layer holding the node-wide call budget.
#[derive(Debug, Clone)]
pub struct CallLimitLayer {
    permits: Arc<Semaphore>,
    max: usize,
    drain: Arc<Drain>,
}

impl CallLimitLayer {
    pub fn new(max: usize, drain: Arc<Drain>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            drain,
        }
    }
}

impl<S> tower::Layer<S> for CallLimitLayer {
    type Service = CallLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLimit {
            inner,
            limit: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallLimit<S> {
    inner: S,
    limit: CallLimitLayer,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for CallLimit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if self.limit.drain.is_draining() && starts_work(req.uri().path()) {
            return Box::pin(async move {
                Ok(tonic::Status::unavailable(
                    "the node is shutting down; run the statement on another node",
                )
                .into_http())
            });
        }
        let Ok(permit) = self.limit.permits.clone().try_acquire_owned() else {
            let max = self.limit.max;
            debug!(path = %req.uri().path(), max, "call shed: the node is at --max-calls");
            return Box::pin(async move {
                Ok(tonic::Status::resource_exhausted(format!(
                    "the server is handling its maximum of {max} calls (--max-calls); retry shortly"
                ))
                .into_http())
            });
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let drain = self.limit.drain.clone();
        drain.admitted();
        // Answered however the call ends (its future dropped, even before it first ran).
        let answered = Answered(drain);
        Box::pin(async move {
            let _answered = answered;
            let resp = inner.call(req).await;
            drop(permit);
            resp
        })
    }
}

struct Answered(Arc<Drain>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.answered();
    }
}
