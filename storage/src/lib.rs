//! Apiary storage: everything that lives in object storage.
//!
//! The crate owns the storage root (a local directory, an S3-compatible bucket or memory), the
//! keys inside it, the namespace of hives, boxes and frames, and each frame's data as a Delta Lake
//! table whose Parquet files are Apiary's *cells*.
//!
//! ```text
//!              ┌──────────────────────── Lakehouse ───────────────────────┐
//!  SQL layer ─▶│ Catalog (markers, put-if-absent)   Ledger (delta-rs log) │
//!              │        │                             │  CellWriter ─▶ cells
//!              │        ▼                             ▼                    │
//!              │     paths ──────────────▶ Storage (object_store backend)  │
//!              └───────────────────────────────────────────────────────────┘
//!  DataFusion ─▶ FrameTable (scan: DataSourceExec over cells, insert: FrameSink)
//! ```
//!
//! | module        | owns                                                                  |
//! |---------------|-----------------------------------------------------------------------|
//! | [`backend`]   | opening a storage root by URL; conditional puts, lists, deletes       |
//! | [`paths`]     | every key, and the validation of names that go into keys              |
//! | [`format`]    | every persisted object besides Delta's (markers, heartbeats, tasks…)  |
//! | [`catalog`]   | hive, box and frame markers                                           |
//! | [`ledger`]    | Delta tables: create, snapshot (pinned versions), cell writing, commit |
//! | [`schema`]    | which Arrow types a frame stores; casting incoming batches            |
//! | `shape`       | valid partition and cluster columns; the Delta protocol columns need  |
//! | `cluster`     | sorting a clustered frame's writes (`CLUSTER BY`), spilling if big     |
//! | `spread`      | cells over partitions or tasks: whole cells where even, else ranges   |
//! | [`footers`]   | the node's cache of decoded Parquet footers (hits counted)            |
//! | [`provider`]  | DataFusion `TableProvider` and `DataSink` over a pinned snapshot      |
//! | [`lakehouse`] | flows that touch catalog and ledger together (create/drop)            |
//! | [`new_frame`] | creating a frame with its first cells in one commit (CTAS, ingest)     |
//! | [`dml`]       | DELETE, UPDATE, MERGE through delta-rs on the caller's session          |
//! | [`history`]   | a frame's commits, the version at an instant, RESTORE                  |
//! | [`maintain`]  | OPTIMIZE, VACUUM (deleting object by object), ADD COLUMN, CLUSTER BY    |
//! | [`confine`]   | the object-store registry the engine gets: the root and nothing else   |

pub mod backend;
pub mod catalog;
mod cluster;
mod codec;
mod commit_hooks;
pub mod commit_point;
pub mod confine;
pub mod dml;
pub mod error;
pub mod footers;
pub mod format;
pub mod history;
pub mod lakehouse;
pub mod ledger;
pub mod lengths;
pub mod maintain;
pub mod nan;
pub mod new_frame;
pub mod paths;
pub mod provider;
mod retire;
mod scan_stats;
pub mod schema;
pub(crate) mod shape;
mod spread;
mod values;
mod written;

pub use backend::{BackendKind, S3Options, Storage};
pub use codec::CellCompression;
pub use dml::{Changed, without_field_extraction};
pub use error::{Error, ObjectKind, Result, Trouble, trouble_of};
pub use footers::{FooterCache, FooterStats};
pub use format::{ExternalFormat, ExternalV1, ViewV1};
pub use history::{Commit, Restored};
pub use lakehouse::{Lakehouse, Opened};
pub use ledger::{FrameSnapshot, FrameStats, Ledger, LedgerConfig, cell_size_for_budget};
pub use maintain::{Optimized, PartitionCondition, Vacuumed};
pub use new_frame::{
    Begun, FirstCommit, NewFrame, NewShape, Uncommitted, being_created, still_creating,
};
pub use paths::{BoxRef, FrameRef, Ident};
pub use provider::{FrameSink, FrameTable, WriteGate};
pub use spread::{spread_cells, spread_cells_within};
pub use values::decimal_out_of_range;
