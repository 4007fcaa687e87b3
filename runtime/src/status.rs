//! One snapshot of a node's state, read by everything that shows it: the `system.*` tables
//! (the system module) and the server's `/metrics` and `/healthz` render the same
//! [`NodeStatus`], taken from a [`StatusSource`] (the node implements it).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::bees::BeeStatus;
use crate::cache::CacheStats;
use crate::colony::{Load, Temperature};
use crate::swarm::NodeView;

/// Provides status snapshots; implemented by the node.
pub trait StatusSource: Send + Sync + std::fmt::Debug {
    fn status(&self) -> NodeStatus;
}

/// A node's state at one instant.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub node_id: String,
    pub flight_url: String,
    pub cores: usize,
    pub bees: usize,
    pub memory_budget: u64,
    pub bee_memory_budget: u64,
    /// The storage root, for display (no credentials).
    pub storage: String,
    pub version: &'static str,
    pub started_at: DateTime<Utc>,
    pub uptime: Duration,
    /// Queries and statements started since the node started.
    pub queries_total: u64,
    /// DoGets that ran the plan GetFlightInfo made here, and those that planned again.
    pub plans: PlanCacheStats,
    pub distributed: DistributedStats,
    /// `None` without a cell cache (local roots).
    pub cache: Option<CacheStats>,
    /// Decoded Parquet footers kept for the node's scans.
    pub footers: apiary_storage::FooterStats,
    pub load: Load,
    pub temperature: Temperature,
    pub bee_slots: Vec<BeeStatus>,
    /// Running and queued queries and fragments, oldest first.
    pub queries: Vec<QueryStatus>,
    /// The latest failed queries and fragments, newest first.
    pub failures: Vec<FailureStatus>,
    /// The swarm as this node sees it, sorted by node id.
    pub swarm: Vec<NodeView>,
}

/// Figures of distributed execution on one node.
#[derive(Debug, Clone, Copy, Default)]
pub struct DistributedStats {
    /// LIST requests on this node's inbox.
    pub inbox_polls: u64,
    /// Fragments this node executed.
    pub fragments: u64,
    /// Bytes those fragments wrote to storage as their output.
    pub fragment_output_bytes: u64,
    /// The part of those bytes written as hash-partitioned (shuffle) output.
    pub shuffle_output_bytes: u64,
    /// Distributed queries this node coordinated.
    pub coordinated: u64,
    /// Shares of results this node served (one endpoint of several).
    pub shares_served: u64,
    /// Attempts this node, as coordinator, took over from a node that had not claimed them.
    pub stolen: u64,
    /// Wakes of the inbox worker or a query's monitor by a change seen in a watched local root.
    pub storage_wakes: u64,
    /// Posting to claiming of recent fragments: (p50, p95) in seconds, and how many.
    pub dispatch_p50: f64,
    pub dispatch_p95: f64,
    pub dispatch_count: usize,
}

/// One running or queued query (or fragment).
#[derive(Debug, Clone)]
pub struct QueryStatus {
    pub id: String,
    pub user: String,
    pub queued: bool,
    pub bee: Option<usize>,
    pub started_at: DateTime<Utc>,
    pub elapsed: Duration,
    pub rows: u64,
    pub bytes: u64,
    pub sql: String,
}

/// A query or fragment that failed.
#[derive(Debug, Clone)]
pub struct FailureStatus {
    pub id: String,
    pub user: String,
    pub sql: String,
    pub error: String,
    pub at: DateTime<Utc>,
}

/// The plan cache's counts since the node started (`runtime/src/node/plans.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanCacheStats {
    /// DoGets that ran the plan GetFlightInfo made.
    pub reused: u64,
    /// DoGets of a ticket with a plan key whose plan was not here (another node made it, it
    /// expired, or the ticket was redeemed before): planned again.
    pub missed: u64,
}
