//! A bound on the calls one node handles at once: beyond `--max-calls`, a call is refused at
//! once with RESOURCE_EXHAUSTED (clients back off and retry) instead of queueing without bound.
//! Together with `--max-message-size` and `--max-calls-per-connection` this bounds the memory
//! that clients' messages can pin.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tracing::debug;

/// Tower layer holding the node-wide call budget.
#[derive(Debug, Clone)]
pub struct CallLimitLayer {
    permits: Arc<Semaphore>,
    max: usize,
}

impl CallLimitLayer {
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
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
        Box::pin(async move {
            let resp = inner.call(req).await;
            drop(permit);
            resp
        })
    }
}
