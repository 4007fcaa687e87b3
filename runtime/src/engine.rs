//! The SQL engine of a node: statements in, record-batch streams or counts out.
//!
//! ```text
//!  text ─▶ sql::split / rewrite ? ─▶ sql::classify ─┬─ namespace commands ─▶ Lakehouse
//!                                                  └─ DataFusion statement
//!                                                       │ resolve table refs, pin one snapshot
//!                                                       │ per frame (FrameTable), per-query
//!                                                       ▼ catalog of hives/boxes/frames
//!                                                    LogicalPlan ─▶ CREATE TABLE / INSERT / query
//! ```
//!
//! Every statement plans against a catalog built for it: each frame it names is loaded once, at
//! one version, so all references to a frame inside a statement see the same snapshot. The pins
//! are returned with the plan so that a later execution (another node redeeming a ticket) can
//! plan against exactly the same versions.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use apiary_storage::{FrameRef, FrameSink, FrameTable, Ident, Lakehouse, WriteGate};
use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider, TableProvider,
};
use datafusion::common::{ParamValues, ScalarValue, TableReference};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SessionState;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{DdlStatement, DmlStatement, LogicalPlan, WriteOp};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::Statement as DfStatement;
use futures::StreamExt;
use tracing::{debug, info};

use crate::error::{Error, Result};
use crate::sql::{self, Command, NameParts};

/// Knobs of the SQL engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Partitions DataFusion splits a query into.
    pub target_partitions: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// DataFusion options (`datafusion.execution.…` = value) applied on top of Apiary's.
    pub datafusion_options: Vec<(String, String)>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            target_partitions: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            batch_size: 8192,
            datafusion_options: Vec::new(),
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
}

impl Session {
    pub fn new(user: impl Into<String>) -> Self {
        Self {
            hive: Ident::default_hive(),
            box_name: Ident::default_box(),
            user: user.into(),
        }
    }
}

/// One parsed statement.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The statement text, with `?` markers rewritten to `$n`.
    pub text: String,
    pub command: Command,
    /// Number of parameters the statement takes.
    pub params: usize,
}

impl Statement {
    pub fn returns_rows(&self) -> bool {
        self.command.returns_rows()
    }
}

/// Frame versions a statement was planned against.
pub type Pins = BTreeMap<FrameRef, i64>;

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
    state: SessionState,
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

    pub fn session_state(&self) -> &SessionState {
        &self.state
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

/// The SQL engine of one node.
#[derive(Debug, Clone)]
pub struct Engine {
    lakehouse: Lakehouse,
    base: SessionState,
    system: Option<Arc<dyn SystemCatalog>>,
    write_gate: Option<Arc<dyn WriteGate>>,
}

impl Engine {
    pub fn new(lakehouse: Lakehouse, config: EngineConfig, runtime: Arc<RuntimeEnv>) -> Self {
        Self::try_new(lakehouse, config, runtime).expect("valid engine options")
    }

    /// Like [`Engine::new`], refusing unknown or invalid DataFusion options.
    pub fn try_new(
        lakehouse: Lakehouse,
        config: EngineConfig,
        runtime: Arc<RuntimeEnv>,
    ) -> Result<Self> {
        runtime.register_object_store(
            lakehouse.storage().object_store_url().as_ref(),
            lakehouse.storage().raw_store().clone(),
        );
        let mut session_config = SessionConfig::new()
            .with_target_partitions(config.target_partitions.max(1))
            .with_batch_size(config.batch_size.max(1))
            .with_information_schema(false)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(
                apiary_storage::paths::DEFAULT_HIVE,
                apiary_storage::paths::DEFAULT_BOX,
            );
        let opts = session_config.options_mut();
        opts.sql_parser.dialect = datafusion::config::Dialect::Generic;
        for (k, v) in &config.datafusion_options {
            opts.set(k, v)
                .map_err(|e| Error::Sql(format!("DataFusion option {k}={v}: {e}")))?;
        }
        let base = SessionStateBuilder::new()
            .with_config(session_config)
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        Ok(Self {
            lakehouse,
            base,
            system: None,
            write_gate: None,
        })
    }

    /// Writes through this engine ask `gate` before every batch (throttling when hot).
    pub fn with_write_gate(mut self, gate: Arc<dyn WriteGate>) -> Self {
        self.write_gate = Some(gate);
        self
    }

    pub fn write_gate(&self) -> Option<&Arc<dyn WriteGate>> {
        self.write_gate.as_ref()
    }

    /// A frame table with this engine's write gate.
    pub fn frame_table(&self, snapshot: apiary_storage::FrameSnapshot) -> FrameTable {
        let t = FrameTable::new(snapshot, self.lakehouse.ledger().clone());
        match &self.write_gate {
            Some(g) => t.with_write_gate(g.clone()),
            None => t,
        }
    }

    pub fn with_system_catalog(mut self, system: Arc<dyn SystemCatalog>) -> Self {
        self.system = Some(system);
        self
    }

    pub fn lakehouse(&self) -> &Lakehouse {
        &self.lakehouse
    }

    /// The base DataFusion state (functions, config, object stores) every query starts from.
    pub fn base_state(&self) -> &SessionState {
        &self.base
    }

    /// A task context for executing physical plans with `env` (a bee's pool and scratch space).
    pub fn task_context(&self, env: &Arc<RuntimeEnv>) -> Arc<datafusion::execution::TaskContext> {
        SessionStateBuilder::new_from_existing(self.base.clone())
            .with_runtime_env(env.clone())
            .build()
            .task_ctx()
    }

    /// A context for decoding plans (functions and options; no memory pool of its own).
    pub fn plan_context(&self) -> Arc<datafusion::execution::TaskContext> {
        self.base.task_ctx()
    }

    /// Whether a statement reads only `system.*` tables (status queries, which must answer even
    /// when every bee is busy).
    pub fn reads_only_system(&self, stmt: &Statement) -> bool {
        let Command::Sql { text, .. } = &stmt.command else {
            return false;
        };
        if !stmt.returns_rows() {
            return false;
        }
        let Ok(parsed) = self
            .base
            .sql_to_statement(text, &datafusion::config::Dialect::Generic)
        else {
            return false;
        };
        let Ok(refs) = self.base.resolve_table_references(&parsed) else {
            return false;
        };
        !refs.is_empty()
            && refs.iter().all(|r| {
                matches!(r, TableReference::Full { catalog, .. }
                    if catalog.as_ref() == apiary_storage::paths::SYSTEM_HIVE)
            })
    }

    /// Split, rewrite placeholders and classify every statement of `text`.
    pub fn parse(&self, text: &str) -> Result<Vec<Statement>> {
        let parts = sql::split_statements(text)?;
        if parts.is_empty() {
            return Err(Error::Sql("no statement given".into()));
        }
        parts
            .into_iter()
            .map(|p| {
                let (text, params) = sql::rewrite_placeholders(&p)?;
                let command = sql::classify(&text)?;
                Ok(Statement {
                    text,
                    command,
                    params,
                })
            })
            .collect()
    }

    /// Parse text that must hold exactly one statement.
    pub fn parse_one(&self, text: &str) -> Result<Statement> {
        let mut all = self.parse(text)?;
        if all.len() != 1 {
            return Err(Error::Sql(format!(
                "expected one statement, found {}",
                all.len()
            )));
        }
        Ok(all.remove(0))
    }

    // ---- name resolution ---------------------------------------------------------------------

    fn hive_name(raw: &str) -> Result<Ident> {
        Ok(Ident::parse(raw)?)
    }

    fn box_ref(session: &Session, parts: &NameParts) -> Result<apiary_storage::BoxRef> {
        Ok(match parts.as_slice() {
            [b] => apiary_storage::BoxRef::new(session.hive.clone(), Ident::parse(b)?),
            [h, b] => apiary_storage::BoxRef::new(Ident::parse(h)?, Ident::parse(b)?),
            _ => return Err(Error::Sql("a box name has one or two parts".into())),
        })
    }

    fn frame_ref(session: &Session, parts: &NameParts) -> Result<FrameRef> {
        Ok(match parts.as_slice() {
            [f] => FrameRef::new(
                session.hive.clone(),
                session.box_name.clone(),
                Ident::parse(f)?,
            ),
            [b, f] => FrameRef::new(session.hive.clone(), Ident::parse(b)?, Ident::parse(f)?),
            [h, b, f] => FrameRef::new(Ident::parse(h)?, Ident::parse(b)?, Ident::parse(f)?),
            _ => return Err(Error::Sql("a frame name has one to three parts".into())),
        })
    }

    fn table_ref_parts(r: &TableReference) -> NameParts {
        match r {
            TableReference::Bare { table } => vec![table.to_string()],
            TableReference::Partial { schema, table } => {
                vec![schema.to_string(), table.to_string()]
            }
            TableReference::Full {
                catalog,
                schema,
                table,
            } => vec![catalog.to_string(), schema.to_string(), table.to_string()],
        }
    }

    // ---- execution ---------------------------------------------------------------------------

    /// Run one statement with the engine's shared runtime. `USE` updates `session`.
    pub async fn execute(
        &self,
        session: &mut Session,
        stmt: &Statement,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<Output> {
        self.execute_in(None, session, stmt, params).await
    }

    /// Run one statement with `env` (a bee's memory pool and scratch space). `USE` updates
    /// `session`.
    pub async fn execute_in(
        &self,
        env: Option<&Arc<RuntimeEnv>>,
        session: &mut Session,
        stmt: &Statement,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<Output> {
        check_param_count(stmt, params.as_deref())?;
        let lh = &self.lakehouse;
        match &stmt.command {
            Command::CreateHive {
                name,
                if_not_exists,
            } => {
                let hive = Ident::parse_hive(name)?;
                lh.catalog().create_hive(&hive, *if_not_exists).await?;
                Ok(Output::Done)
            }
            Command::CreateBox {
                name,
                if_not_exists,
            } => {
                let b = Self::box_ref(session, name)?;
                let b = apiary_storage::BoxRef::new(b.hive, Ident::parse_box(b.name.as_str())?);
                lh.catalog().create_box(&b, *if_not_exists).await?;
                Ok(Output::Done)
            }
            Command::DropHive {
                name,
                if_exists,
                cascade,
            } => {
                lh.drop_hive(&Self::hive_name(name)?, *if_exists, *cascade)
                    .await?;
                Ok(Output::Done)
            }
            Command::DropBox {
                name,
                if_exists,
                cascade,
            } => {
                lh.drop_box(&Self::box_ref(session, name)?, *if_exists, *cascade)
                    .await?;
                Ok(Output::Done)
            }
            Command::DropFrames { names, if_exists } => {
                for n in names {
                    lh.drop_frame(&Self::frame_ref(session, n)?, *if_exists)
                        .await?;
                }
                Ok(Output::Done)
            }
            Command::Use { hive, box_name } => {
                let hive = match hive {
                    Some(h) => Self::hive_name(h)?,
                    None => session.hive.clone(),
                };
                let box_name = match box_name {
                    Some(b) => Ident::parse(b)?,
                    None => Ident::default_box(),
                };
                lh.catalog()
                    .require_box(&apiary_storage::BoxRef::new(hive.clone(), box_name.clone()))
                    .await?;
                session.hive = hive;
                session.box_name = box_name;
                Ok(Output::Done)
            }
            Command::ShowHives | Command::ShowBoxes { .. } | Command::ShowFrames { .. } => {
                let batch = self.show(session, &stmt.command).await?;
                Ok(Output::Rows(one_batch_stream(batch)))
            }
            Command::Describe { name } => {
                let batch = self.describe(session, name).await?;
                Ok(Output::Rows(one_batch_stream(batch)))
            }
            Command::Unsupported(what) => Err(Error::Unsupported(what.clone())),
            Command::Sql { partition_by, .. } => {
                let (plan, state, _pins) = self
                    .logical_plan(session, stmt, params, &Pins::new(), env, None)
                    .await?;
                self.run_plan(plan, state, partition_by).await
            }
        }
    }

    /// Plan a query (a statement that returns rows) against pinned frame versions; frames not in
    /// `pins` are read at their latest version and pinned in the result.
    pub async fn plan_query(
        &self,
        session: &Session,
        stmt: &Statement,
        params: Option<Vec<ScalarValue>>,
        pins: &Pins,
    ) -> Result<PlannedQuery> {
        self.plan_query_in(None, session, stmt, params, pins, None)
            .await
    }

    /// [`Engine::plan_query`] with `env` (a bee's memory pool and scratch space).
    /// `partitions` overrides the target partitions (a swarm plans for all its bees).
    pub async fn plan_query_in(
        &self,
        env: Option<&Arc<RuntimeEnv>>,
        session: &Session,
        stmt: &Statement,
        params: Option<Vec<ScalarValue>>,
        pins: &Pins,
        partitions: Option<usize>,
    ) -> Result<PlannedQuery> {
        check_param_count(stmt, params.as_deref())?;
        match &stmt.command {
            Command::Sql { .. } if stmt.returns_rows() => {
                let (plan, state, pins) = self
                    .logical_plan(session, stmt, params, pins, env, partitions)
                    .await?;
                let plan = state.create_physical_plan(&plan).await?;
                let schema = plan.schema();
                Ok(PlannedQuery {
                    schema,
                    plan,
                    pins,
                    state,
                })
            }
            Command::ShowHives
            | Command::ShowBoxes { .. }
            | Command::ShowFrames { .. }
            | Command::Describe { .. } => {
                let batch = match &stmt.command {
                    Command::Describe { name } => self.describe(session, name).await?,
                    other => self.show(session, other).await?,
                };
                PlannedQuery::from_batch_in(batch, self.base.clone())
            }
            _ => Err(Error::Sql(
                "this statement does not return rows; execute it as an update".into(),
            )),
        }
    }

    /// Result schema and parameter types of a statement, without running it.
    pub async fn statement_info(
        &self,
        session: &Session,
        stmt: &Statement,
    ) -> Result<StatementInfo> {
        let returns_rows = stmt.returns_rows();
        let empty = Arc::new(Schema::empty());
        let Command::Sql { .. } = &stmt.command else {
            let schema = if returns_rows {
                self.plan_query(session, stmt, None, &Pins::new())
                    .await?
                    .schema
            } else {
                empty
            };
            return Ok(StatementInfo {
                returns_rows,
                schema,
                parameters: vec![],
            });
        };
        let (plan, state, _) = self
            .logical_plan(session, stmt, None, &Pins::new(), None, None)
            .await?;
        let types = plan.get_parameter_types()?;
        let parameters = (1..=stmt.params)
            .map(|i| {
                let dt = types.get(&format!("${i}")).cloned().flatten();
                Field::new(format!("${i}"), dt.unwrap_or(DataType::Null), true)
            })
            .collect();
        let schema = if returns_rows {
            // The physical schema is what the stream will carry (nullability included).
            match state.create_physical_plan(&plan).await {
                Ok(p) => p.schema(),
                Err(_) => Arc::new(plan.schema().as_arrow().clone()),
            }
        } else {
            empty
        };
        Ok(StatementInfo {
            returns_rows,
            schema,
            parameters,
        })
    }

    /// Build the per-statement catalog and the logical plan.
    async fn logical_plan(
        &self,
        session: &Session,
        stmt: &Statement,
        params: Option<Vec<ScalarValue>>,
        pins: &Pins,
        env: Option<&Arc<RuntimeEnv>>,
        partitions: Option<usize>,
    ) -> Result<(LogicalPlan, SessionState, Pins)> {
        let Command::Sql { text, .. } = &stmt.command else {
            return Err(Error::Internal("logical_plan on a non-SQL command".into()));
        };
        let parsed = self
            .base
            .sql_to_statement(text, &datafusion::config::Dialect::Generic)?;
        let (state, used, missing) = self
            .statement_state(session, &parsed, pins, env, partitions)
            .await?;
        let plan = match state.statement_to_plan(parsed).await {
            Ok(p) => p,
            Err(e) => {
                // Report a frame we could not find rather than DataFusion's generic message.
                if let Some(missing) = missing {
                    return Err(missing.into());
                }
                return Err(e.into());
            }
        };
        let plan = match params {
            Some(values) if !values.is_empty() => {
                // Bind each value in the type the statement expects where DataFusion knows it,
                // so that clients may send e.g. int32 for a BIGINT comparison.
                let types = plan.get_parameter_types()?;
                let values = values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| match types.get(&format!("${}", i + 1)) {
                        Some(Some(dt)) if &v.data_type() != dt && !v.is_null() => v
                            .cast_to(dt)
                            .map_err(|e| Error::Sql(format!("parameter ${}: {e}", i + 1))),
                        Some(Some(dt)) if v.is_null() => ScalarValue::try_from(dt)
                            .map_err(|e| Error::Sql(format!("parameter ${}: {e}", i + 1))),
                        _ => Ok(v),
                    })
                    .collect::<Result<Vec<_>>>()?;
                plan.with_param_values(ParamValues::from(values))?
            }
            _ => plan,
        };
        Ok((plan, state, used))
    }

    /// A session state whose catalog holds exactly the frames `statement` names, each pinned.
    async fn statement_state(
        &self,
        session: &Session,
        statement: &DfStatement,
        pins: &Pins,
        env: Option<&Arc<RuntimeEnv>>,
        partitions: Option<usize>,
    ) -> Result<(SessionState, Pins, Option<apiary_storage::Error>)> {
        let refs = self.base.resolve_table_references(statement)?;
        let catalogs = MemoryCatalogProviderList::new();
        let ensure_schema = |hive: &str, b: &str| -> Result<Arc<dyn SchemaProvider>> {
            let catalog = match catalogs.catalog(hive) {
                Some(c) => c,
                None => {
                    let c: Arc<dyn CatalogProvider> = Arc::new(MemoryCatalogProvider::new());
                    catalogs.register_catalog(hive.to_string(), c.clone());
                    c
                }
            };
            Ok(match catalog.schema(b) {
                Some(s) => s,
                None => {
                    let s: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
                    catalog.register_schema(b, s.clone())?;
                    s
                }
            })
        };
        ensure_schema(session.hive.as_str(), session.box_name.as_str())?;
        if let Some(system) = &self.system {
            catalogs.register_catalog(
                apiary_storage::paths::SYSTEM_HIVE.to_string(),
                system.catalog(),
            );
        }
        let mut used = Pins::new();
        let mut missing = None;
        let mut loaded: HashMap<FrameRef, Arc<dyn TableProvider>> = HashMap::new();
        for r in refs {
            let parts = Self::table_ref_parts(&r);
            if parts.len() == 3 && parts[0] == apiary_storage::paths::SYSTEM_HIVE {
                continue;
            }
            let Ok(frame) = Self::frame_ref(session, &parts) else {
                continue;
            };
            if loaded.contains_key(&frame) {
                continue;
            }
            match self
                .lakehouse
                .frame_table(&frame, pins.get(&frame).copied())
                .await
            {
                Ok(table) => {
                    used.insert(frame.clone(), table.snapshot().version());
                    let schema = ensure_schema(frame.hive.as_str(), frame.box_name.as_str())?;
                    let table: Arc<dyn TableProvider> = Arc::new(table);
                    schema.register_table(frame.name.to_string(), table.clone())?;
                    loaded.insert(frame, table);
                }
                Err(e @ apiary_storage::Error::NotFound { .. }) => {
                    debug!(frame = %frame, "referenced frame not found");
                    missing.get_or_insert(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut config = self.base.config().clone();
        config.options_mut().catalog.default_catalog = session.hive.to_string();
        config.options_mut().catalog.default_schema = session.box_name.to_string();
        if let Some(n) = partitions {
            config.options_mut().execution.target_partitions = n.max(1);
        }
        let mut builder = SessionStateBuilder::new_from_existing(self.base.clone())
            .with_config(config)
            .with_catalog_list(Arc::new(catalogs));
        if let Some(env) = env {
            builder = builder.with_runtime_env(env.clone());
        }
        let state = builder.build();
        Ok((state, used, missing))
    }

    async fn run_plan(
        &self,
        plan: LogicalPlan,
        state: SessionState,
        partition_by: &[String],
    ) -> Result<Output> {
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => {
                self.create_table(create, state, partition_by).await
            }
            LogicalPlan::Ddl(other) => Err(Error::Unsupported(other.name().to_string())),
            LogicalPlan::Dml(DmlStatement {
                op: WriteOp::Insert(_),
                ..
            }) => {
                if !partition_by.is_empty() {
                    return Err(Error::Sql("PARTITIONED BY belongs to CREATE TABLE".into()));
                }
                let physical = state.create_physical_plan(&plan).await?;
                let mut stream = execute_stream(physical, state.task_ctx())?;
                let mut count = 0u64;
                while let Some(batch) = stream.next().await {
                    count += count_of(&batch?);
                }
                Ok(Output::Count(count))
            }
            LogicalPlan::Dml(other) => Err(Error::Unsupported(other.op.name().to_string())),
            LogicalPlan::Statement(s) => Err(Error::Unsupported(s.name().to_string())),
            LogicalPlan::Copy(_) => Err(Error::Unsupported("COPY".into())),
            plan => {
                let physical = state.create_physical_plan(&plan).await?;
                Ok(Output::Rows(execute_stream(physical, state.task_ctx())?))
            }
        }
    }

    async fn create_table(
        &self,
        create: datafusion::logical_expr::CreateMemoryTable,
        state: SessionState,
        partition_by: &[String],
    ) -> Result<Output> {
        if create.temporary {
            return Err(Error::Unsupported("temporary frames".into()));
        }
        if !create.constraints.is_empty() {
            return Err(Error::Unsupported(
                "PRIMARY KEY, UNIQUE and other constraints besides NOT NULL".into(),
            ));
        }
        if !create.column_defaults.is_empty() {
            return Err(Error::Unsupported("column DEFAULT values".into()));
        }
        let session_hive = state.config().options().catalog.default_catalog.clone();
        let session_box = state.config().options().catalog.default_schema.clone();
        let frame = match &create.name {
            TableReference::Bare { table } => FrameRef::new(
                Ident::parse(&session_hive)?,
                Ident::parse(&session_box)?,
                Ident::parse(table)?,
            ),
            TableReference::Partial { schema, table } => FrameRef::new(
                Ident::parse(&session_hive)?,
                Ident::parse(schema)?,
                Ident::parse(table)?,
            ),
            TableReference::Full {
                catalog,
                schema,
                table,
            } => FrameRef::new(
                Ident::parse(catalog)?,
                Ident::parse(schema)?,
                Ident::parse(table)?,
            ),
        };
        let has_data = !matches!(
            create.input.as_ref(),
            LogicalPlan::EmptyRelation(e) if !e.produce_one_row
        );
        let incoming = Arc::new(create.input.schema().as_arrow().clone());
        let schema = apiary_storage::schema::frame_schema_for(&incoming)?;
        let lh = &self.lakehouse;

        if create.or_replace {
            match lh.frame(&frame, None).await {
                Ok(existing)
                    if existing.schema() == &schema
                        && existing.partition_columns() == partition_by =>
                {
                    // Same shape: replace the contents in one atomic overwrite commit.
                    let table = self.frame_table(existing);
                    let rows = self
                        .write_query(&state, &create.input, table, true, has_data)
                        .await?;
                    return Ok(Output::Count(rows));
                }
                Ok(_) => {
                    info!(frame = %frame, "CREATE OR REPLACE with a new shape: drop and create");
                    lh.drop_frame(&frame, true).await?;
                }
                Err(apiary_storage::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let Some(snapshot) = lh
            .create_frame(&frame, &schema, partition_by, create.if_not_exists)
            .await?
        else {
            return Ok(Output::Done);
        };
        if !has_data {
            return Ok(Output::Done);
        }
        let table = self.frame_table(snapshot);
        match self
            .write_query(&state, &create.input, table, false, true)
            .await
        {
            Ok(rows) => Ok(Output::Count(rows)),
            Err(e) => {
                // CREATE TABLE AS is all or nothing.
                let _ = lh.drop_frame(&frame, true).await;
                Err(e)
            }
        }
    }

    async fn write_query(
        &self,
        state: &SessionState,
        input: &LogicalPlan,
        table: FrameTable,
        overwrite: bool,
        has_data: bool,
    ) -> Result<u64> {
        let sink = FrameSink::new(table, overwrite);
        let stream = if has_data {
            let physical = state.create_physical_plan(input).await?;
            execute_stream(physical, state.task_ctx())?
        } else {
            let schema = Arc::new(input.schema().as_arrow().clone());
            Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::empty(),
            ))
        };
        let (rows, _version) = sink.write_stream(stream).await?;
        Ok(rows)
    }

    // ---- SHOW / DESCRIBE ---------------------------------------------------------------------

    async fn show(&self, session: &Session, cmd: &Command) -> Result<RecordBatch> {
        let cat = self.lakehouse.catalog();
        match cmd {
            Command::ShowHives => {
                let hives = cat.list_hives().await?;
                string_batch(
                    &["hive"],
                    vec![hives.iter().map(|h| h.to_string()).collect()],
                )
            }
            Command::ShowBoxes { hive } => {
                let hive = match hive {
                    Some(h) => Ident::parse(h)?,
                    None => session.hive.clone(),
                };
                cat.require_hive(&hive).await?;
                let boxes = cat.list_boxes(Some(&hive)).await?;
                string_batch(
                    &["hive", "box"],
                    vec![
                        boxes.iter().map(|b| b.hive.to_string()).collect(),
                        boxes.iter().map(|b| b.name.to_string()).collect(),
                    ],
                )
            }
            Command::ShowFrames { scope } => {
                let b = match scope {
                    None => {
                        apiary_storage::BoxRef::new(session.hive.clone(), session.box_name.clone())
                    }
                    Some(parts) => Self::box_ref(session, parts)?,
                };
                cat.require_box(&b).await?;
                let frames = cat.list_frames(&b).await?;
                string_batch(
                    &["hive", "box", "frame"],
                    vec![
                        frames.iter().map(|_| b.hive.to_string()).collect(),
                        frames.iter().map(|_| b.name.to_string()).collect(),
                        frames.iter().map(|f| f.to_string()).collect(),
                    ],
                )
            }
            _ => Err(Error::Internal("show() on another command".into())),
        }
    }

    /// `DESCRIBE f` in the layout Spark and Databricks users know: one row per column, then a
    /// partition section and a detail section, as (col_name, data_type, comment).
    async fn describe(&self, session: &Session, name: &NameParts) -> Result<RecordBatch> {
        let frame = Self::frame_ref(session, name)?;
        let snap = self.lakehouse.frame(&frame, None).await?;
        let stats = snap.stats();
        let mut rows: Vec<(String, String, String)> = Vec::new();
        for f in snap.schema().fields() {
            rows.push((
                f.name().clone(),
                apiary_storage::schema::sql_type_name(f.data_type()),
                if f.is_nullable() { "" } else { "NOT NULL" }.to_string(),
            ));
        }
        if !snap.partition_columns().is_empty() {
            rows.push((
                "# Partition Information".into(),
                String::new(),
                String::new(),
            ));
            for p in snap.partition_columns() {
                let dt = snap
                    .schema()
                    .field_with_name(p)
                    .map(|f| apiary_storage::schema::sql_type_name(f.data_type()))
                    .unwrap_or_default();
                rows.push((p.clone(), dt, String::new()));
            }
        }
        rows.push(("# Frame Information".into(), String::new(), String::new()));
        let location = self
            .lakehouse
            .storage()
            .url_for(&apiary_storage::paths::frame_root(&frame))?;
        for (k, v) in [
            ("Frame", frame.to_string()),
            ("Version", snap.version().to_string()),
            ("Cells", stats.cells.to_string()),
            ("Rows", stats.rows.to_string()),
            ("Bytes", stats.bytes.to_string()),
            ("Partition columns", snap.partition_columns().join(", ")),
            ("Location", location.to_string()),
        ] {
            rows.push((k.to_string(), v, String::new()));
        }
        string_batch(
            &["col_name", "data_type", "comment"],
            vec![
                rows.iter().map(|r| r.0.clone()).collect(),
                rows.iter().map(|r| r.1.clone()).collect(),
                rows.iter().map(|r| r.2.clone()).collect(),
            ],
        )
    }
}

fn check_param_count(stmt: &Statement, params: Option<&[ScalarValue]>) -> Result<()> {
    let given = params.map(|p| p.len()).unwrap_or(0);
    if given != stmt.params && !(given == 0 && stmt.params == 0) {
        return Err(Error::Sql(format!(
            "the statement takes {} parameter(s), {given} given",
            stmt.params
        )));
    }
    Ok(())
}

fn count_of(batch: &RecordBatch) -> u64 {
    use arrow::array::AsArray;
    if batch.num_columns() == 0 {
        return 0;
    }
    match batch.column(0).data_type() {
        DataType::UInt64 => batch
            .column(0)
            .as_primitive::<arrow::datatypes::UInt64Type>()
            .iter()
            .flatten()
            .sum(),
        _ => 0,
    }
}

fn string_batch(names: &[&str], columns: Vec<Vec<String>>) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = columns
        .into_iter()
        .map(|c| Arc::new(StringArray::from(c)) as ArrayRef)
        .collect();
    Ok(RecordBatch::try_new(schema, arrays)?)
}

fn one_batch_stream(batch: RecordBatch) -> SendableRecordBatchStream {
    let schema = batch.schema();
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::iter(vec![Ok(batch)]),
    ))
}
