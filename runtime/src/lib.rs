//! Apiary runtime: the node.
//!
//! The crate turns a storage root into a database node: it parses and plans SQL against pinned
//! frame snapshots, and (in later modules) runs every query inside a *bee* — one core with its own
//! memory budget — publishes heartbeats, keeps a view of the swarm, and executes plan fragments
//! that other nodes post through storage.
//!
//! ```text
//!   server ──▶ Engine::parse ──▶ Engine::execute / plan_query ──▶ DataFusion ──▶ FrameTable
//!                                      │                                        (storage)
//!                                      ▼
//!                                 Output::{Rows, Count, Done}
//! ```
//!
//! | module     | owns                                                         |
//! |------------|--------------------------------------------------------------|
//! | [`sql`]    | statement splitting, `?` rewriting, namespace commands       |
//! | [`engine`] | sessions, per-statement catalogs with pinned snapshots, DDL, DML, queries |
//! | [`error`]  | the error type and its classification of DataFusion errors  |
//! | [`queries`] | running queries: registry, cancellation, tracked result streams |

pub mod engine;
pub mod error;
pub mod queries;
pub mod sql;

pub use engine::{
    Engine, EngineConfig, Output, Pins, PlannedQuery, Session, Statement, StatementInfo,
    SystemCatalog,
};
pub use error::{Error, Result};
pub use queries::{QueryGuard, QueryRegistry, TrackedStream};
