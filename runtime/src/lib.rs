//! Apiary runtime: the node.
//!
//! The crate turns a storage root into a database node: it parses and plans SQL against pinned
//! frame snapshots, runs every query inside a *bee* — a slot with its own memory budget, scratch
//! space and deadline — on a CPU runtime kept apart from IO, publishes heartbeats and keeps a view
//! of the swarm through storage, and exposes all of it as `system.*` tables.
//!
//! ```text
//!   server ──▶ Node::query / update ──▶ BeePool::acquire (FIFO queue, colony temperature)
//!                 │                              │
//!                 ▼                              ▼
//!              Engine (parse, plan, pinned snapshots) ──▶ CpuExecutor ──▶ DataFusion ──▶ cells
//!   background: heartbeat ──▶ _apiary/nodes/<id>.json ◀── WorldView (Alive/Suspect/Dead)
//! ```
//!
//! | module       | owns                                                               |
//! |--------------|--------------------------------------------------------------------|
//! | [`sql`]      | statement splitting, `?` rewriting, namespace commands             |
//! | [`engine`]   | sessions, per-statement catalogs with pinned snapshots, DDL, DML, queries |
//! | [`bees`]     | bees: memory pools, scratch directories, the FIFO queue            |
//! | [`colony`]   | colony temperature, its bands and what they change                 |
//! | [`executor`] | the CPU runtime queries execute on                                 |
//! | [`queries`]  | running queries: registry, cancellation, tracked result streams    |
//! | [`abandon`]  | retry-then-abandon for retryable failures                          |
//! | [`swarm`]    | heartbeats and the world view                                      |
//! | [`system`]   | the `system` hive's status tables                                  |
//! | [`distributed`] | cutting plans into fragments run by the swarm through storage   |
//! | [`cache`]    | the local cell cache in front of object storage                   |
//! | [`node`]     | the node, assembled                                                |
//! | [`error`]    | the error type and its classification of DataFusion errors        |

pub mod abandon;
pub mod bees;
pub mod cache;
pub mod colony;
pub mod distributed;
pub mod engine;
pub mod error;
pub mod executor;
pub mod node;
pub mod queries;
pub mod sql;
pub mod swarm;
pub mod system;

pub use engine::{
    Engine, EngineConfig, Output, Pins, PlannedQuery, Session, Statement, StatementInfo,
    SystemCatalog,
};
pub use error::{Error, Result};
pub use node::{Node, NodeConfig};
pub use queries::{QueryGuard, QueryRegistry, TrackedStream};
