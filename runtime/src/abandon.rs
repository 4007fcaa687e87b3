//! Abandonment: a task that fails for a retryable reason is tried again, up to a trial limit,
//! then abandoned with an error that names every attempt.
//!
//! The tracker is generic over what a "try" is: a statement on this node here; a plan fragment
//! reassigned to another node in distributed execution.

use std::future::Future;
use std::time::Duration;

use tracing::warn;

use crate::error::Error;

/// Default number of trials before a task is abandoned.
pub const DEFAULT_TRIALS: u32 = 3;

/// Whether an error is worth another try as is.
pub fn is_retryable(e: &Error) -> bool {
    match e {
        Error::Unavailable(_) => true,
        Error::Storage(s) => matches!(
            s,
            apiary_storage::Error::Conflict { .. } | apiary_storage::Error::ObjectStore(_)
        ),
        _ => false,
    }
}

/// Retries a task up to `trials` times.
#[derive(Debug, Clone, Copy)]
pub struct Abandonment {
    pub trials: u32,
    /// Wait before the second try; doubles after each failure.
    pub backoff: Duration,
}

impl Default for Abandonment {
    fn default() -> Self {
        Self {
            trials: DEFAULT_TRIALS,
            backoff: Duration::from_millis(100),
        }
    }
}

impl Abandonment {
    pub fn new(trials: u32) -> Self {
        Self {
            trials: trials.max(1),
            ..Default::default()
        }
    }

    /// Run `task(attempt)` (attempt counts from 1) until it succeeds, fails for good, or has
    /// failed retryably `trials` times.
    pub async fn run<T, F, Fut>(&self, what: &str, mut task: F) -> Result<T, Error>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut delay = self.backoff;
        let mut errors = Vec::new();
        for attempt in 1..=self.trials {
            match task(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) if is_retryable(&e) && attempt < self.trials => {
                    warn!(what, attempt, error = %e, "retrying");
                    errors.push(e.to_string());
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) if is_retryable(&e) => {
                    errors.push(e.to_string());
                    return Err(Error::Abandoned {
                        what: what.to_string(),
                        attempts: attempt,
                        last_error: errors.join("; "),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Internal("abandonment without trials".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick(trials: u32) -> Abandonment {
        Abandonment {
            trials,
            backoff: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn retries_retryable_failures_then_succeeds() {
        let calls = AtomicU32::new(0);
        let v = quick(3)
            .run("t", |attempt| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if attempt < 3 {
                        Err(Error::Unavailable("busy".into()))
                    } else {
                        Ok(attempt)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(v, 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn abandons_after_the_trial_limit_naming_the_attempts() {
        let err = quick(3)
            .run::<(), _, _>("fragment 7", |a| async move {
                Err(Error::Unavailable(format!("try {a}")))
            })
            .await
            .unwrap_err();
        match err {
            Error::Abandoned {
                what,
                attempts,
                last_error,
            } => {
                assert_eq!(what, "fragment 7");
                assert_eq!(attempts, 3);
                assert!(last_error.contains("try 1") && last_error.contains("try 3"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn does_not_retry_permanent_errors() {
        let calls = AtomicU32::new(0);
        let err = quick(3)
            .run::<(), _, _>("t", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(Error::Sql("bad".into())) }
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Sql(_)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
