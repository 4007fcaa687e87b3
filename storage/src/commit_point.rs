//! A statement's point of no return: the put of a Delta commit. Before it, a statement that is
//! cancelled or passes its deadline can be stopped and has changed nothing; once a commit is
//! being put, the commit may land, so the statement must run to its end and report what
//! happened. Stopped at any point, an INSERT whose commit had landed was reported as failed
//! (DEADLINE_EXCEEDED), and a client that ran it again doubled its rows.
//!
//! The runtime runs each statement inside [`scope`] with a [`Gate`]; every commit put through
//! the ledger's log stores passes [`reached`] first, and is refused once the gate is stopped.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

const RUNNING: u8 = 0;
const COMMITTING: u8 = 1;
const STOPPED: u8 = 2;

tokio::task_local! {
    static GATE: Arc<Gate>;
}

/// Whether a statement may still be stopped, shared by the statement and whoever stops it.
#[derive(Debug, Default)]
pub struct Gate(AtomicU8);

impl Gate {
    /// Stop the statement if it has not begun a commit: `true` when it may be dropped now (and
    /// no commit of it will begin), `false` when a commit has begun and its end must be awaited.
    pub fn stop(&self) -> bool {
        match self
            .0
            .compare_exchange(RUNNING, STOPPED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now == STOPPED,
        }
    }

    /// Pass the point of no return; `false` if the statement was stopped first.
    fn enter(&self) -> bool {
        match self
            .0
            .compare_exchange(RUNNING, COMMITTING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now == COMMITTING,
        }
    }
}

/// Run `work` with `gate` as its statement's.
pub async fn scope<F: Future>(gate: Arc<Gate>, work: F) -> F::Output {
    GATE.scope(gate, work).await
}

/// Whether the statement this task runs was stopped (its deadline passed, it was cancelled or
/// its caller went away): work that cannot be aborted at an await point, such as planning,
/// asks this to give up early. Outside any [`scope`], never.
pub fn stopped() -> bool {
    GATE.try_with(|g| g.0.load(Ordering::Acquire) == STOPPED)
        .unwrap_or(false)
}

/// Called just before a commit is put: `false` when the statement was stopped, and the commit
/// must not be put. Work outside any [`scope`] (maintenance, tests) always passes.
pub(crate) fn reached() -> bool {
    GATE.try_with(|g| g.enter()).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stopped_statement_commits_nothing_and_a_committing_one_is_not_stopped() {
        let gate = Arc::new(Gate::default());
        assert!(scope(gate.clone(), async { reached() }).await);
        assert!(
            !gate.stop(),
            "a commit began: the statement runs to its end"
        );
        let gate = Arc::new(Gate::default());
        assert!(gate.stop());
        assert!(!scope(gate.clone(), async { reached() }).await);
        assert!(reached(), "outside a statement");
        assert!(scope(gate, async { stopped() }).await);
        assert!(!stopped(), "outside a statement");
        assert!(!scope(Arc::new(Gate::default()), async { stopped() }).await);
    }
}
