//! Version 1 of every persisted object. Frozen: a change is a new version, never an edit here.
//! `docs/distributed.md` describes the protocol the query objects implement.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Versioned;

macro_rules! versioned {
    ($($t:ty => $what:literal),* $(,)?) => {$(
        impl Versioned for $t {
            const WHAT: &'static str = $what;
            const VERSION: u32 = 1;
        }
    )*};
}

versioned!(
    MarkerV1 => "catalog marker",
    HeartbeatV1 => "heartbeat",
    QueryManifestV1 => "query manifest",
    TaskV1 => "task",
    ClaimV1 => "claim",
    DoneV1 => "done marker",
    FailedV1 => "failed marker",
    CancelV1 => "cancel marker",
    CreatingV1 => "creation lease",
);

/// A hive, box or frame marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MarkerV1 {
    /// Always 1 for this type.
    pub v: u32,
    /// Unique id of this incarnation of the object (a dropped and re-created frame gets a new id).
    pub id: String,
    pub created_at: DateTime<Utc>,
    /// Set on the marker of an external frame (`CREATE EXTERNAL TABLE`): data Apiary reads in
    /// place and never writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalV1>,
    /// Set on the marker of a view (`CREATE VIEW`): a stored query, no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<ViewV1>,
}

/// A view: its query as written (time-travel clauses already rewritten), and the hive and box
/// its unqualified names resolve in (the creator's current ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewV1 {
    pub query: String,
    pub hive: String,
    pub box_name: String,
}

impl MarkerV1 {
    /// A marker for a new incarnation.
    pub fn new() -> Self {
        Self {
            v: 1,
            id: uuid::Uuid::now_v7().to_string(),
            created_at: Utc::now(),
            external: None,
            view: None,
        }
    }
}

/// The lease of a frame being created: its writer puts it with its reservation, rewrites it
/// while it writes (a plain put, which every backend has), and deletes it once version 0 is
/// committed or the creation is given up. A reservation whose lease is fresh is not stale,
/// however old its marker; a name whose lease is there without a version 0 is not listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatingV1 {
    /// Always 1 for this type.
    pub v: u32,
    /// The writer's clock when it last renewed the lease; informational only: staleness is
    /// judged by when storage last wrote the object, the same clock for every writer.
    pub renewed_at: DateTime<Utc>,
}

impl CreatingV1 {
    pub fn now() -> Self {
        Self {
            v: 1,
            renewed_at: Utc::now(),
        }
    }
}

/// What an external frame reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExternalFormat {
    Parquet,
    Csv,
    /// A Delta table, read through the ledger (pinned versions, statistics).
    Delta,
}

impl ExternalFormat {
    /// The format `STORED AS name` names, if it is one an external frame reads.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "parquet" => Some(Self::Parquet),
            "csv" => Some(Self::Csv),
            "delta" => Some(Self::Delta),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::Csv => "csv",
            Self::Delta => "delta",
        }
    }
}

/// Where an external frame's data is and how to read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalV1 {
    pub format: ExternalFormat,
    /// Key of the data's directory (or file) in the root's object store, checked against the
    /// allowed roots when the frame was created and again on every read.
    pub location: String,
    /// Format options as given (`'format.has_header' 'true'`, …).
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
}

impl Default for MarkerV1 {
    fn default() -> Self {
        Self::new()
    }
}

/// Compact summary of a node's cell cache, for assignment decisions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CacheSummaryV1 {
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    /// Hex bitmap (a Bloom filter over cell keys); empty when the cache is empty.
    #[serde(default)]
    pub bloom: String,
}

/// A node's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatV1 {
    pub v: u32,
    pub node_id: String,
    pub flight_url: String,
    pub version: String,
    pub bees_total: u32,
    pub bees_busy: u32,
    pub memory_budget: u64,
    pub memory_reserved: u64,
    pub queue_depth: u32,
    pub temperature: f64,
    pub band: String,
    pub cache: CacheSummaryV1,
    /// The writer's wall clock; informational only, never used for liveness.
    pub started_at: DateTime<Utc>,
    pub written_at: DateTime<Utc>,
    pub seq: u64,
    /// This node posted fragments to other nodes lately: their workers keep polling their
    /// inboxes fast while they see it (absent in heartbeats of older nodes: false).
    #[serde(default)]
    pub coordinating: bool,
    /// How often this node writes its heartbeat, in milliseconds: observers judge its liveness by
    /// its own interval when that is longer than theirs (absent in heartbeats of older nodes: 0,
    /// the observer's interval).
    #[serde(default)]
    pub interval_ms: u64,
}

/// What a coordinator is running (for orphan cleanup and operators).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryManifestV1 {
    pub v: u32,
    pub query_id: String,
    pub coordinator: String,
    pub created_at_ms: i64,
    pub deadline_at_ms: i64,
    pub sql: String,
    pub stages: Vec<StageManifestV1>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageManifestV1 {
    pub stage: u32,
    pub tasks: u32,
    pub files: u64,
    pub bytes: u64,
}

/// One attempt of one task, posted to the inbox of the node it is assigned to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskV1 {
    pub v: u32,
    pub query_id: String,
    pub stage: u32,
    pub task: u32,
    pub attempt: u32,
    pub coordinator: String,
    pub posted_at_ms: i64,
    pub deadline_at_ms: i64,
}

/// Created with put-if-absent by the worker that runs an attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimV1 {
    pub v: u32,
    pub node_id: String,
    pub claimed_at_ms: i64,
}

/// Written last, after every output part of an attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DoneV1 {
    pub v: u32,
    pub node_id: String,
    pub attempt: u32,
    pub rows: u64,
    pub bytes: u64,
    pub parts: u32,
    /// SHA-256 (hex) over the parts' bytes, in order.
    pub sha256: String,
    /// From posting to claiming, by the wall clocks involved.
    pub dispatch_ms: i64,
    pub run_ms: i64,
    /// For a hash-partitioned (shuffle) output: where each output partition's rows are inside
    /// the parts. Each part is the concatenation of one Arrow IPC stream per partition that
    /// had rows; a consumer of partition `p` reads only its slices (ranged GETs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<SliceV1>,
}

/// One output partition's Arrow IPC stream inside one part of a shuffle output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SliceV1 {
    pub partition: u32,
    pub part: u32,
    pub offset: u64,
    pub len: u64,
    pub rows: u64,
    /// SHA-256 (hex) over the slice's bytes.
    pub sha256: String,
}

/// Written by a worker when an attempt failed (or was given up).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedV1 {
    pub v: u32,
    pub node_id: String,
    pub attempt: u32,
    pub error: String,
    /// Whether another attempt (elsewhere) may succeed.
    pub retryable: bool,
    /// `data_loss` when the attempt's inputs in storage were gone or damaged; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

/// Asks every node to stop a query's work.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CancelV1 {
    pub v: u32,
}

impl CancelV1 {
    pub fn new() -> Self {
        Self { v: 1 }
    }
}
