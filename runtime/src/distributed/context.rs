//! What distributed execution needs from a node, and nothing more: the node builds one
//! [`DistContext`] from its parts, so `distributed/` never sees the `Node` itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiary_storage::Storage;
use apiary_storage::format::SwarmKey;
use tokio::sync::Notify;

use super::metrics::DistMetrics;
use crate::bees::BeePool;
use crate::engine::Engine;
use crate::executor::{Background, CpuExecutor};
use crate::queries::QueryRegistry;
use crate::swarm::{NodeView, WorldView};

/// Timing and limits of distributed execution.
#[derive(Debug, Clone)]
pub struct DistributionConfig {
    /// Queries scanning fewer bytes than this run on the node that received them.
    pub min_bytes: u64,
    /// Fastest storage polling (workers with work, coordinators waiting).
    pub poll_min: Duration,
    /// Slowest storage polling (idle workers back off to this).
    pub poll_max: Duration,
    /// An attempt nobody claimed within this is reassigned.
    pub claim_timeout: Duration,
    /// A coordinator with a free bee and nothing queued claims and runs an attempt it posted to
    /// another node that has not claimed it within this (that node's inbox poll may have backed
    /// off, or it may be stalled). Zero: never.
    pub steal_after: Duration,
    /// A node that posted fragments to other nodes within this says so in its heartbeats, and
    /// workers that see it poll at `poll_min` instead of backing off. Zero: never.
    pub awake_window: Duration,
    /// Attempts per task (each on another node where possible) before the query fails.
    pub trials: u32,
    /// Query prefixes and inbox entries older than this with no live coordinator are deleted.
    pub orphan_ttl: Duration,
    /// Size of one output object of a task.
    pub part_bytes: usize,
    /// Serve a result that is a plain union over one scan's cells from every live node, one
    /// endpoint per share (clients read them in parallel).
    pub share_results: bool,
    /// On a local root, also watch `_apiary/` for changes, so that a task posted here or a
    /// fragment's end wakes its reader at once instead of at its next poll.
    pub storage_events: bool,
    /// Fault injection for failure tests: every fragment takes this much longer, so a test can
    /// kill a worker while it is busy with one. `None` in production.
    pub fault_fragment_delay: Option<Duration>,
}

/// Attempts per task by default.
pub(crate) const DEFAULT_TRIALS: u32 = 3;

impl Default for DistributionConfig {
    fn default() -> Self {
        Self {
            min_bytes: 64 * 1024 * 1024,
            poll_min: Duration::from_millis(20),
            poll_max: Duration::from_secs(2),
            claim_timeout: Duration::from_secs(10),
            steal_after: Duration::from_millis(100),
            awake_window: Duration::from_secs(30),
            trials: DEFAULT_TRIALS,
            orphan_ttl: Duration::from_secs(3600),
            part_bytes: 8 * 1024 * 1024,
            share_results: true,
            storage_events: true,
            fault_fragment_delay: None,
        }
    }
}

/// A node's parts as distributed execution uses them (coordinator and worker sides).
#[derive(Debug)]
pub(crate) struct DistContext {
    pub(crate) node_id: String,
    pub(crate) storage: Storage,
    pub(crate) world: Arc<WorldView>,
    pub(crate) bees: Arc<BeePool>,
    pub(crate) queries: Arc<QueryRegistry>,
    pub(crate) cpu: Arc<CpuExecutor>,
    /// For decoding plans and building task contexts (functions, options, object stores).
    pub(crate) engine: Engine,
    /// Wakes this node's inbox worker when it posts a task to itself.
    pub(crate) inbox_wake: Notify,
    /// Wakes the monitor of a query coordinated here when one of its fragments ends here.
    pub(crate) outcomes: OutcomeWakes,
    pub(crate) config: DistributionConfig,
    pub(crate) metrics: DistMetrics,
    /// Fragment runs and cleanups end with the node.
    pub(crate) background: Arc<Background>,
    /// Seals tasks, plans and outcomes; nothing unsealed is acted on.
    pub(crate) key: SwarmKey,
    /// When this node last posted an attempt to another node's inbox.
    pub(crate) last_remote_post: Mutex<Option<Instant>>,
}

/// The monitors of the queries this node coordinates, by query id. A fragment that ends on this
/// node (its own share, or one it took over) wakes its query's monitor, which reads the outcome
/// at once instead of at its next poll of storage; so does an outcome another node writes to a
/// local root this node watches (`watch`). The others are found by polling.
#[derive(Debug, Default)]
pub(crate) struct OutcomeWakes(Mutex<HashMap<String, Arc<Notify>>>);

/// The wakes of one query coordinated here, from before its tasks are posted (so that none is
/// lost before its monitor starts) until the monitor that holds it ends.
pub(crate) struct OutcomeWatch {
    ctx: Arc<DistContext>,
    query_id: String,
    notify: Arc<Notify>,
}

impl OutcomeWatch {
    /// Start watching `query_id`'s outcomes.
    pub(crate) fn new(ctx: &Arc<DistContext>, query_id: &str) -> Self {
        let notify = ctx
            .outcomes
            .lock()
            .entry(query_id.to_string())
            .or_default()
            .clone();
        Self {
            ctx: ctx.clone(),
            query_id: query_id.to_string(),
            notify,
        }
    }

    /// Until a fragment of the query ends (at once if one ended since the last wait).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await
    }
}

impl Drop for OutcomeWatch {
    fn drop(&mut self) {
        self.ctx.outcomes.lock().remove(&self.query_id);
    }
}

impl OutcomeWakes {
    /// A fragment of `query_id` ended. The wake is kept until the monitor next waits, so none
    /// is lost while it is busy; a query coordinated elsewhere has no entry (`false`).
    pub(crate) fn wake(&self, query_id: &str) -> bool {
        match self.lock().get(query_id) {
            Some(n) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DistContext {
    /// The swarm as this node sees it, for placing work (itself always alive).
    pub(crate) fn swarm_view(&self) -> Vec<NodeView> {
        self.world.seen_from(&self.node_id)
    }

    /// Note that this node just posted an attempt to another node.
    pub(crate) fn posted_remotely(&self) {
        *self
            .last_remote_post
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Whether this node posted to another node within the awake window (its heartbeat then
    /// keeps the other workers polling fast).
    pub(crate) fn coordinated_lately(&self) -> bool {
        let last = *self
            .last_remote_post
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        last.is_some_and(|t| t.elapsed() < self.config.awake_window)
    }

    /// Whether another live node says it coordinated lately: this node's worker should keep
    /// polling its inbox fast, since more fragments are likely on the way.
    pub(crate) fn peer_coordinating(&self) -> bool {
        self.world
            .any_alive_other(&self.node_id, |hb| hb.coordinating)
    }
}
