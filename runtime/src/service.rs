//! What the server asks of a node: the [`QueryService`] trait. The Flight SQL layer holds an
//! `Arc<dyn QueryService>` and nothing else of the runtime, so it can be tested against a
//! stand-in (as InfluxDB 3's Flight layer depends on its `QueryExecutor` trait).
//!
//! ```text
//!  Flight SQL ──▶ QueryService ──▶ Node ──▶ Engine (plan) ─┬─▶ bee ──▶ CpuExecutor ──▶ stream
//!                                                          └─▶ distributed (swarm) ──▶ stream
//! ```

use apiary_storage::{BoxRef, FrameRef, Ident};
use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;

pub use crate::engine::FrameEntry;
use crate::engine::{Pins, Role, Session, Statement, StatementInfo, WriteMode};
use crate::error::Result;

/// A query to run: what a ticket carries, decoded.
#[derive(Debug, Clone)]
pub struct QueryRequest {
    /// Names the query in `system.runtime.queries`, cancellation and cancel markers.
    pub query_id: String,
    pub session: Session,
    pub sql: String,
    /// Bound parameter rows; the statement runs once per row (once when empty).
    pub params: Vec<Vec<ScalarValue>>,
    /// Frame versions to read (from planning); frames not listed are read at their latest.
    pub pins: Pins,
    /// The key under which the node that planned the query keeps its plan (from
    /// [`Planned::plan_key`]); any node without it plans again.
    pub plan_key: Option<String>,
    /// Run only this share of the result (one endpoint of several); `None`: all of it.
    pub share: Option<Share>,
}

/// A query planned but not run: what GetFlightInfo needs.
#[derive(Debug, Clone)]
pub struct Planned {
    pub schema: SchemaRef,
    pub pins: Pins,
    /// Where this node keeps the plan for a short while, so that the DoGet of the ticket runs
    /// it instead of planning again. Travels in the ticket.
    pub plan_key: Option<String>,
    /// Set when the result is a plain union over the cells of one scan, big enough to be
    /// served by several nodes at once: one endpoint per share.
    pub shares: Option<Shares>,
}

/// Share `index` of a result split `of` ways by its cells. Every node splits a query's cells
/// alike (at the same pinned versions, for the same `partitions`), so the shares are disjoint
/// and together are the whole result, whichever nodes serve them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: u32,
    pub of: u32,
    /// The partitions the issuing node planned for (`None`: the redeeming node's own).
    pub partitions: Option<usize>,
}

/// How a result splits into shares, and where each is best served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shares {
    /// The split every node computes (`Share::of`); at least `homes.len()`.
    pub of: u32,
    pub partitions: Option<usize>,
    /// The Flight URL of the node that serves share `i` (its cells are spread there); the
    /// first is the planning node itself. One share per entry.
    pub homes: Vec<String>,
}

/// A bulk write into a frame.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    pub frame: FrameRef,
    pub mode: WriteMode,
    pub user: String,
    pub role: Role,
}

/// The node as the server sees it.
#[async_trait::async_trait]
pub trait QueryService: Send + Sync + std::fmt::Debug + 'static {
    /// Split, rewrite `?` markers and classify every statement of `sql`.
    fn parse(&self, sql: &str) -> Result<Vec<Statement>>;

    /// Plan a query (result schema, pinned versions) without running it. With `keep`, the node
    /// keeps the plan for the ticket's DoGet ([`Planned::plan_key`]).
    async fn plan(
        &self,
        session: &Session,
        stmt: &Statement,
        params: Option<Vec<ScalarValue>>,
        keep: bool,
    ) -> Result<Planned>;

    /// Result schema and parameter types of a statement (prepared statements).
    async fn statement_info(&self, session: &Session, stmt: &Statement) -> Result<StatementInfo>;

    /// Run a query; the stream's schema is the result's.
    async fn query(&self, request: QueryRequest) -> Result<SendableRecordBatchStream>;

    /// Run a statement that returns no result set, once per parameter row (once when empty).
    /// Returns the rows affected and the session afterwards (`USE` changes it).
    async fn update(
        &self,
        session: &Session,
        stmt: &Statement,
        params: Vec<Vec<ScalarValue>>,
    ) -> Result<(u64, Session)>;

    /// Stream batches into a frame by `request.mode`. `schema` is the incoming data's, if the
    /// client sent one. Returns the rows written.
    async fn ingest(
        &self,
        request: IngestRequest,
        schema: Option<SchemaRef>,
        data: SendableRecordBatchStream,
    ) -> Result<u64>;

    async fn list_hives(&self) -> Result<Vec<Ident>>;
    /// Boxes of one hive, or of every hive.
    async fn list_boxes(&self, hive: Option<&Ident>) -> Result<Vec<BoxRef>>;
    /// Frames and views of a box that a client sees (not the names still being created).
    async fn list_frames(&self, b: &BoxRef) -> Result<Vec<Ident>>;
    /// What a name in a box is (a frame or a view) and, when asked, the columns it serves;
    /// `None` if it does not exist (any more).
    async fn frame_entry(&self, frame: &FrameRef, with_schema: bool) -> Result<Option<FrameEntry>>;
    async fn hive_exists(&self, hive: &Ident) -> Result<bool>;
    async fn box_exists(&self, b: &BoxRef) -> Result<bool>;
    /// The box a session that enters `hive` without naming one is placed in.
    async fn entry_box(&self, hive: &Ident) -> Result<Ident>;

    /// Cancel a query wherever it runs: here at once, elsewhere through a cancel marker.
    async fn cancel(&self, query_id: &str) -> Result<()>;
}
