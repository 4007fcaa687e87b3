//! The engine's public types: configuration, sessions, statements, pins, outputs and plans.

use std::collections::BTreeMap;
use std::sync::Arc;

use apiary_storage::{FrameRef, Ident};
use arrow::array::RecordBatch;
use arrow::datatypes::{Field, SchemaRef};
use datafusion::catalog::CatalogProvider;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};

use crate::error::Result;
use crate::sql::Command;

/// Knobs of the SQL engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Partitions DataFusion splits a query into.
    pub target_partitions: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// DataFusion options (`datafusion.execution.…` = value) applied on top of Apiary's.
    pub datafusion_options: Vec<(String, String)>,
    pub limits: Limits,
    /// Shortest `VACUUM … RETAIN n HOURS` allowed (Delta's default retention, a week, unless
    /// the operator lowers it).
    pub vacuum_min_retention_hours: f64,
    /// The memory budget of the bee a query runs on (plans keep within it where they can
    /// choose: a sort with a large limit spills rather than hold its rows).
    pub bee_memory: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            target_partitions: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            batch_size: 8192,
            datafusion_options: Vec::new(),
            limits: Limits::default(),
            vacuum_min_retention_hours: apiary_storage::maintain::DEFAULT_RETENTION_HOURS,
            bee_memory: u64::MAX,
        }
    }
}

/// Bounds on what one request may ask of the engine; each is a server flag. Beyond them a
/// request is refused with a message naming the limit, before any work is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest SQL text, in bytes (`--max-sql-bytes`).
    pub max_sql_bytes: usize,
    /// Most tokens in one SQL text, whitespace and comments not counted (`--max-sql-tokens`).
    pub max_sql_tokens: usize,
    /// Deepest nesting of expressions and subqueries in one statement (`--max-sql-depth`).
    pub max_sql_depth: usize,
    /// Most relations (tables, subqueries, `UNION` terms) one statement reads
    /// (`--max-sql-relations`).
    pub max_sql_relations: usize,
    /// Most parameter rows one execution binds (`--max-param-rows`).
    pub max_param_rows: usize,
    /// Most columns a frame may have (`--max-columns`).
    pub max_columns: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sql_bytes: 1024 * 1024,
            max_sql_tokens: 100_000,
            max_sql_depth: 2_500,
            max_sql_relations: 256,
            max_param_rows: 10_000,
            max_columns: 4_096,
        }
    }
}

/// The per-client state a statement runs in. Carried by the client (Flight session options or
/// token), never kept by the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub hive: Ident,
    pub box_name: Ident,
    pub user: String,
    /// What the user may do (from the server's user list, never from the client).
    pub role: Role,
    /// DataFusion options set with `SET datafusion.… = …`, sorted by key (see
    /// [`crate::engine::Engine::set_option`]).
    pub options: Vec<(String, String)>,
}

impl Session {
    /// A session in `default.default` with every right (one-shot use, tests, auth off).
    pub fn new(user: impl Into<String>) -> Self {
        Self {
            hive: Ident::default_hive(),
            box_name: Ident::default_box(),
            user: user.into(),
            role: Role::Admin,
            options: Vec::new(),
        }
    }
}

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, and sees every user's queries in `system.runtime.queries`.
    Admin,
    /// Reads and writes; sees their own queries.
    Writer,
    /// Reads only (queries, SHOW, DESCRIBE, USE); sees their own queries.
    Reader,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "writer" => Some(Role::Writer),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }
}

/// One parsed statement. Everything the rest of the system asks about it is worked out once,
/// when it is parsed.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The statement text, with `?` markers rewritten to `$n`.
    pub text: String,
    pub command: Command,
    /// Number of parameters the statement takes.
    pub params: usize,
    /// Whether it returns a result set (a query) rather than a count.
    pub returns_rows: bool,
    /// For `EXPLAIN [VERBOSE] <query>` (not `EXPLAIN ANALYZE`): the explained query, whose
    /// distributed plan EXPLAIN shows too.
    pub explained: Option<String>,
}

impl Statement {
    pub fn returns_rows(&self) -> bool {
        self.returns_rows
    }

    /// Whether, run as a query, it answers one `count` row of the rows it changed.
    pub fn counts_rows(&self) -> bool {
        self.command.counts_rows()
    }
}

/// Frame versions a statement was planned against.
pub type Pins = BTreeMap<FrameRef, Pin>;

/// One frame version a statement was planned against, and which table that was: a frame
/// dropped and created again under its name begins after the dropped one's versions, but a
/// log that did not load is deleted and begun again at 0, so the version alone could name
/// rows of another table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub version: i64,
    /// The frame's catalog marker id; empty when not known (not checked then).
    pub incarnation: String,
}

impl Pin {
    pub fn new(version: i64, incarnation: impl Into<String>) -> Self {
        Pin {
            version,
            incarnation: incarnation.into(),
        }
    }
}

/// What a statement produced.
pub enum Output {
    /// A result set, streamed.
    Rows(SendableRecordBatchStream),
    /// Rows written by INSERT / CTAS.
    Count(u64),
    /// DDL or USE: nothing to return.
    Done,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Rows(s) => write!(f, "Rows({:?})", s.schema()),
            Output::Count(n) => write!(f, "Count({n})"),
            Output::Done => write!(f, "Done"),
        }
    }
}

/// A planned query, ready to execute.
pub struct PlannedQuery {
    pub schema: SchemaRef,
    pub plan: Arc<dyn ExecutionPlan>,
    pub pins: Pins,
    /// It reads only `system.*` tables (status queries, which run without a bee).
    pub system_only: bool,
    /// It reads a `system.*` table: status as it was when planned, so the plan is not kept for
    /// later (a DoGet plans it again and shows the status of then).
    pub reads_system: bool,
    /// The partitions it was planned for when not the engine's own (a swarm's bees).
    pub planned_for: Option<usize>,
    pub(crate) state: SessionState,
}

impl std::fmt::Debug for PlannedQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannedQuery")
            .field("schema", &self.schema)
            .field("pins", &self.pins)
            .finish_non_exhaustive()
    }
}

impl PlannedQuery {
    /// Start executing; batches are produced as the stream is polled.
    pub fn execute(&self) -> Result<SendableRecordBatchStream> {
        Ok(execute_stream(self.plan.clone(), self.state.task_ctx())?)
    }

    /// A "plan" that yields one ready batch (for rows computed outside DataFusion).
    pub fn from_batch(batch: RecordBatch) -> Result<PlannedQuery> {
        Self::from_batch_in(batch, SessionStateBuilder::new().build())
    }

    /// [`PlannedQuery::from_batch`] with the session state the plan should carry.
    pub fn from_batch_in(batch: RecordBatch, state: SessionState) -> Result<PlannedQuery> {
        let schema = batch.schema();
        let plan = datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            schema.clone(),
            None,
        )?;
        Ok(PlannedQuery {
            schema,
            plan,
            pins: Pins::new(),
            system_only: false,
            reads_system: false,
            planned_for: None,
            state,
        })
    }

    /// Start executing with another task context (a bee's memory pool and scratch space).
    pub fn execute_with(
        &self,
        ctx: Arc<datafusion::execution::TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Ok(execute_stream(self.plan.clone(), ctx)?)
    }
}

/// What a prepared statement looks like before it runs.
#[derive(Debug, Clone)]
pub struct StatementInfo {
    pub returns_rows: bool,
    /// Result schema (empty for statements that return a count).
    pub schema: SchemaRef,
    /// One field per parameter `$1..$n`, typed when DataFusion could infer it.
    pub parameters: Vec<Field>,
}

/// Provides the read-only `system` hive (node status); implemented by the node.
pub trait SystemCatalog: Send + Sync + std::fmt::Debug {
    fn catalog(&self) -> Arc<dyn CatalogProvider>;
}

/// Who runs the statement being planned, attached to its DataFusion config so that table
/// providers (the `system` tables) can answer per caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub role: Role,
}

/// One entry of a box, as catalog metadata lists it.
#[derive(Debug, Clone)]
pub struct FrameEntry {
    /// A view (a stored query) rather than a frame with data.
    pub view: bool,
    /// The columns it serves, when asked for.
    pub schema: Option<SchemaRef>,
}

/// `schema` with every field nullable (at the top level): the schema of one result answered
/// for several parameter rows, each planned on its own, and of VALUES rows bound for a frame
/// whose own check names a NOT NULL column a NULL reaches.
pub fn nullable(schema: &arrow::datatypes::Schema) -> arrow::datatypes::Schema {
    arrow::datatypes::Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    )
}
