//! Apiary runtime: the node.
//!
//! The crate turns a storage root into a database node: it parses and plans SQL against pinned
//! frame snapshots, runs every query inside a *bee* — a slot with its own memory budget, scratch
//! space and deadline — on a CPU runtime kept apart from IO, spreads large queries over the
//! swarm through storage, publishes heartbeats and keeps a view of the swarm, and exposes its
//! state as `system.*` tables. The server sees it through one trait, [`QueryService`].
//!
//! ```text
//!   server ──▶ QueryService (Node) ──▶ Engine: parse, plan at pinned versions
//!                 │                      │
//!                 │      small ──▶ BeePool::acquire (FIFO, colony temperature) ──▶ CpuExecutor
//!                 │      large, ≥ 2 nodes ──▶ distributed: fragments through storage
//!                 │                             (docs/distributed.md) ──▶ StageExec ──▶ stream
//!   background: heartbeat ──▶ _apiary/nodes/<id>.json ◀── WorldView (Alive/Suspect/Dead)
//!               inbox worker ◀── _apiary/inbox/<id>/ ; orphan sweep
//! ```
//!
//! Import floors, top down (a module imports only from floors below it; no circles):
//!
//! ```text
//!  node
//!  distributed   service   system
//!  queries       status    engine
//!  bees          swarm     cache     sql
//!  colony        executor  cancel    error     memory
//! ```
//!
//! | module          | owns                                                               |
//! |-----------------|--------------------------------------------------------------------|
//! | [`service`]     | [`QueryService`], the trait the server calls                       |
//! | [`node`]        | the node: assembles the parts, starts and stops them               |
//! | [`status`]      | [`NodeStatus`], one snapshot for system tables and metrics         |
//! | [`system`]      | the `system` hive's status tables                                  |
//! | [`sql`]         | statement splitting, `?` rewriting, namespace commands             |
//! | [`engine`]      | sessions, per-statement pinned catalogs, DDL, ingest, queries      |
//! | [`bees`]        | bees: memory pools, scratch directories, the FIFO queue            |
//! | [`memory`]      | a bee's memory pool, with headroom for operators that cannot spill |
//! | [`colony`]      | colony temperature, its bands and what they change                 |
//! | [`executor`]    | the CPU runtime, and the only place tasks are spawned              |
//! | [`queries`]     | running queries: registry, cancellation, tracked result streams    |
//! | `cancel`        | cancel markers in storage                                          |
//! | [`swarm`]       | heartbeats and the world view                                      |
//! | [`distributed`] | cutting plans into fragments run by the swarm through storage      |
//! | [`cache`]       | the local cell cache in front of object storage                   |
//! | [`error`]       | the error type and its classification of DataFusion errors        |

pub mod bees;
pub mod cache;
mod cancel;
pub mod colony;
pub mod distributed;
pub mod engine;
pub mod error;
pub mod executor;
pub mod memory;
pub mod node;
pub mod queries;
pub mod service;
pub mod sql;
pub mod status;
pub mod swarm;
pub mod system;

pub use engine::{
    Engine, EngineConfig, IfExists, IfMissing, Limits, Output, Pin, Pins, PlannedQuery, Role,
    Session, Statement, StatementInfo, SystemCatalog, WriteMode, merges_schema,
};
pub use error::{Error, Result};
pub use node::{Node, NodeConfig};
pub use queries::{QueryGuard, QueryRegistry, TrackedStream};
pub use service::{IngestRequest, Planned, QueryRequest, QueryService, Share, Shares};
pub use status::{NodeStatus, StatusSource};
