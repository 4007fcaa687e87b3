//! The SQL engine of a node: statements in, record-batch streams or counts out.
//!
//! ```text
//!  text ─▶ sql::split / rewrite ? ─▶ sql::classify ─┬─ namespace commands (ddl) ─▶ Lakehouse
//!                                                  ├─ SHOW / DESCRIBE (show)
//!                                                  └─ DataFusion statement
//!                                                       │ resolve table refs, pin one snapshot
//!                                                       │ per frame (catalog), per-statement
//!                                                       ▼ catalog of hives/boxes/frames
//!                                                    LogicalPlan ─▶ CREATE TABLE (ddl) / INSERT
//!                                                                   / query
//!  bulk ingest (ingest) ─▶ the same create/append/replace rules as CREATE TABLE AS ─▶ cells
//! ```
//!
//! Every statement plans against a catalog built for it: each frame it names is loaded once, at
//! one version, so all references to a frame inside a statement see the same snapshot. The pins
//! are returned with the plan so that a later execution (another node redeeming a ticket) can
//! plan against exactly the same versions.
//!
//! | module      | owns                                                              |
//! |-------------|-------------------------------------------------------------------|
//! | `types`     | [`Session`], [`Statement`], [`Pins`], [`Output`], [`PlannedQuery`] |
//! | `catalog`   | the per-statement pinned catalog and the one name resolver        |
//! | `ddl`       | namespace commands, CREATE TABLE / CTAS, INSERT                   |
//! | `ingest`    | writing a stream into a frame: [`WriteMode`] and its rules        |
//! | `show`      | SHOW and DESCRIBE                                                 |
//! | `literals`  | numeric literals are exact decimals (scientific notation written out) |
//! | `age` | PostgreSQL's `age()`: years, months and days between two timestamps |
//! | `interval_order` | intervals compare by length (a month 30 days), as in PostgreSQL |
//! | `caret` | `^` is PostgreSQL's exponent, binding tighter than `*` |
//! | `date_parts` | `extract(second …)` with its fraction, epochs of durations and intervals |
//! | `alter_columns` | DROP / RENAME / ALTER COLUMN: one rewrite of the frame in its new shape |
//! | `answered_wrong` | refuses what DataFusion 55 would answer wrong (EXCEPT ALL, RIGHT JOIN USING) |
//! | `join_filters` | physical rule: join filters reach a scan's rows while they pay  |
//! | `lazy_start` | physical rule: merges under a join filter start when first polled |
//! | `decimals` | physical rule: decimal `+ - *` without a checked multiply per row  |
//! | `nan_pruning` | physical rule: scans prune no NaN row away                      |
//! | `templates` | PostgreSQL's date/time templates in `to_char`, `to_timestamp`, `to_date` |
//! | `skipped_rows`, `grouped_fetch` | physical rules: no sort's fetch drops rows an `OFFSET` or a final aggregate needs |

mod age;
mod alter_columns;
mod answered_wrong;
mod batched;
mod bounded;
mod caret;
mod cast_names;
mod catalog;
mod checked;
mod date_parts;
mod ddl;
mod decimals;
mod division;
mod external;
mod fetch_first;
mod functions;
mod grouped_fetch;
mod history_table;
mod in_lists;
mod information_schema;
mod ingest;
mod interval_order;
mod intervals;
mod join_filters;
mod json;
mod lazy_start;
mod literals;
mod nan_pruning;
mod not_in_subqueries;
mod number_templates;
mod operations;
mod options;
mod ordered_sets;
mod patterns;
mod policy;
mod postgres_functions;
mod row_values;
mod scalar_subqueries;
mod set_comparisons;
mod show;
mod similar_to;
mod skipped_rows;
mod spillable_topk;
mod sql_types;
mod stoppable;
mod templates;
mod temporal_casts;
mod temporal_strings;
mod text_casts;
mod types;
mod unnamed_columns;
mod whole_casts;
mod yielding;

use std::sync::{Arc, LazyLock};

use apiary_storage::{FrameTable, Lakehouse, WriteGate};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::execution::context::SessionState;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, VisitorMut};

use crate::error::{Error, Result};
use crate::sql::{self, Command};
use policy::Purpose;

/// Apiary's own physical rules, in the order they run after DataFusion's (and in a fragment).
fn own_rules(bee_memory: u64) -> [Arc<dyn PhysicalOptimizerRule + Send + Sync>; 6] {
    [
        Arc::new(spillable_topk::SpillableTopK {
            bee_memory: usize::try_from(bee_memory).unwrap_or(usize::MAX),
        }),
        Arc::new(nan_pruning::NanSafePruning),
        Arc::new(join_filters::JoinFiltersOnRows),
        Arc::new(lazy_start::StartWhenPolled),
        Arc::new(decimals::FastDecimals),
        Arc::new(yielding::YieldInJoins),
    ]
}

/// A fragment decoded on another node, with Apiary's own physical rules applied as the
/// session's optimizer applies them to a plan made here. Their rewrites do not travel: a
/// fragment carries plain decimal arithmetic (see `decimals::DecimalArith`'s encoding) and its
/// join filters without the wrapper that decides how they reach a scan's rows. The encoding
/// keeps each join filter one expression in its join and in its scans
/// (`distributed::shuffle::encode`), so the rules find them linked. (TPC-H q21: the `nation`
/// filter reaches `supplier` in every task, as on one node, instead of a task joining all
/// 10,000 suppliers with its `lineitem` rows.)
pub(crate) use yielding::{PacedExec, without_pacing};

pub(crate) fn in_fragment(
    plan: Arc<dyn ExecutionPlan>,
    config: &datafusion::config::ConfigOptions,
    bee_memory: u64,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    own_rules(bee_memory)
        .iter()
        .try_fold(plan, |plan, rule| rule.optimize(plan, config))
}

/// A function of ours that an analyzer rule puts into plans without registering it, by the
/// name it travels to other nodes under (the fragment codec decodes it with this).
pub(crate) fn planted_function(name: &str) -> Option<Arc<datafusion::logical_expr::ScalarUDF>> {
    checked::function_named(name)
        .or_else(|| patterns::function_named(name))
        .or_else(|| intervals::function_named(name))
        .or_else(|| similar_to::function_named(name))
        .or_else(|| interval_order::function_named(name))
        .or_else(|| whole_casts::function_named(name))
        .or_else(|| text_casts::function_named(name))
        .or_else(|| scalar_subqueries::function_named(name))
}
pub use history_table::history_schema;
pub use ingest::{IfExists, IfMissing, WriteMode};
pub(crate) use join_filters::awaits_paying_filter;
pub use options::{MERGE_SCHEMA, merges_schema};
pub(crate) use show::redact_text;
pub use types::{
    Caller, EngineConfig, FrameEntry, Limits, Output, Pin, Pins, PlannedQuery, Role, Session,
    Statement, StatementInfo, SystemCatalog, nullable,
};

/// The session time zone `config` sets, for the SQL type planner.
fn time_zone_of(config: &SessionConfig) -> Option<Arc<str>> {
    config
        .options()
        .execution
        .time_zone
        .as_deref()
        .map(Arc::from)
}

/// The type planner for a statement under `config`: its time zone and its string type.
fn sql_types_for(config: &SessionConfig) -> Arc<sql_types::SqlTypes> {
    Arc::new(sql_types::SqlTypes {
        time_zone: time_zone_of(config),
        views: config.options().sql_parser.map_string_types_to_utf8view,
    })
}

/// The base state, made once by its builder closure when first used.
type BaseState = LazyLock<SessionState, Box<dyn FnOnce() -> SessionState + Send>>;

/// The SQL engine of one node.
#[derive(Debug, Clone)]
pub struct Engine {
    lakehouse: Lakehouse,
    /// Built at the first statement, not at start: a node that has answered nothing has not
    /// paged in DataFusion's function registry (several hundred constructors spread over the
    /// binary's text, a quarter of what a server touches to start).
    base: Arc<BaseState>,
    /// The runtime every statement's state starts from (its object stores reach the storage
    /// root only); shared with the bees without building the base state.
    runtime: Arc<RuntimeEnv>,
    limits: Limits,
    system: Option<Arc<dyn SystemCatalog>>,
    write_gate: Option<Arc<dyn WriteGate>>,
    /// The node's cell cache (S3 roots), which VACUUM clears of the cells it deletes.
    cell_cache: Option<Arc<crate::cache::CellCache>>,
    /// Shortest `VACUUM … RETAIN n HOURS` allowed.
    vacuum_min_retention_hours: f64,
    /// Runs the cleanup of a write cut short (its future dropped), which cannot wait inside
    /// `Drop`: the node's background work, or nothing (the cleanup is then left undone).
    background: Option<Arc<crate::executor::Background>>,
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
        // Whatever registry the runtime came with, plans reach the storage root and nothing
        // else: no file a statement or a decoded plan names can be outside it.
        let mut runtime = RuntimeEnvBuilder::from_runtime_env(&runtime)
            .with_object_store_registry(Arc::new(lakehouse.storage().confined_registry()));
        // DataFusion keeps file listings forever by default; external files are listed again
        // by each query so that new files are seen (frames list their cells from the log).
        runtime.cache_manager = runtime
            .cache_manager
            .with_list_files_cache(None)
            .with_list_files_cache_limit(0);
        let runtime = runtime.build_arc()?;
        let mut session_config = SessionConfig::new()
            .with_target_partitions(config.target_partitions.max(1))
            .with_batch_size(config.batch_size.max(1))
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(
                apiary_storage::paths::DEFAULT_HIVE,
                apiary_storage::paths::DEFAULT_BOX,
            );
        let opts = session_config.options_mut();
        opts.sql_parser.dialect = datafusion::config::Dialect::Generic;
        // `0.1` is an exact DECIMAL, as in PostgreSQL and DuckDB (see `literals`).
        opts.sql_parser.parse_float_as_decimal = true;
        join_thresholds(opts, config.target_partitions);
        for (k, v) in &config.datafusion_options {
            opts.set(k, v)
                .map_err(|e| Error::Sql(format!("DataFusion option {k}={v}: {e}")))?;
        }
        let sql_types = sql_types_for(&session_config);
        let bee_memory = config.bee_memory;
        let for_base = runtime.clone();
        let build = move || {
            // Every rule gives up once its statement is stopped (`stoppable`).
            let mut builder = SessionStateBuilder::new()
                .with_config(session_config)
                .with_runtime_env(for_base)
                .with_default_features()
                .with_type_planner(sql_types)
                .with_analyzer_rules(stoppable::analyzer(analyzer_rules()))
                .with_optimizer_rules(stoppable::optimizer(
                    datafusion::optimizer::Optimizer::new().rules,
                ))
                .with_physical_optimizer_rules(stoppable::physical(physical_rules(bee_memory)));
            if let Some(planners) = builder.expr_planners() {
                planners.insert(0, Arc::new(date_parts::Extract));
            }
            let mut base = builder.build();
            let registered = |name: &str| base.scalar_functions().get(name).cloned();
            let growing = bounded::wrap(registered);
            let unifying = temporal_strings::wrap(registered);
            let clocks = functions::microseconds(registered);
            let templated = templates::wrap(registered);
            let parts = date_parts::wrap(registered);
            let postgres = postgres_functions::aliased_scalars(registered);
            let aggregates = postgres_functions::aliased_aggregates(|name| {
                base.aggregate_functions().get(name).cloned()
            });
            for f in aggregates.into_iter().chain(ordered_sets::aggregates()) {
                let _ = datafusion::execution::FunctionRegistry::register_udaf(&mut base, f);
            }
            for f in functions::own()
                .into_iter()
                .chain([age::age()])
                .chain(postgres_functions::scalars())
                .chain(json::scalars())
                .chain(postgres)
                .chain(growing)
                .chain(unifying)
                .chain(clocks)
                .chain(templated)
                .chain(parts)
            {
                let _ = datafusion::execution::FunctionRegistry::register_udf(&mut base, f);
            }
            let _ = datafusion::execution::FunctionRegistry::register_expr_planner(
                &mut base,
                Arc::new(intervals::IntervalArithmetic),
            );
            let _ = datafusion::execution::FunctionRegistry::register_expr_planner(
                &mut base,
                Arc::new(division::DecimalDivision),
            );
            let _ = datafusion::execution::FunctionRegistry::register_expr_planner(
                &mut base,
                Arc::new(json::JsonOperators),
            );
            if let Some(sum) = checked::sum(base.aggregate_functions().get("sum").cloned()) {
                let _ = datafusion::execution::FunctionRegistry::register_udaf(&mut base, sum);
            }
            for name in ["generate_series", "range"] {
                if let Some(f) = base
                    .table_functions()
                    .get(name)
                    .map(|f| f.function().clone())
                {
                    base.register_udtf(name, Arc::new(sql_types::NanosecondArgs(f)));
                }
            }
            base
        };
        Ok(Self {
            lakehouse,
            base: Arc::new(LazyLock::new(Box::new(build))),
            runtime,
            limits: config.limits,
            system: None,
            write_gate: None,
            cell_cache: None,
            vacuum_min_retention_hours: config.vacuum_min_retention_hours,
            background: None,
        })
    }

    /// A write cut short (a client hang-up, a cancel, the query deadline) is cleaned up in
    /// `background`.
    pub fn with_background(mut self, background: Arc<crate::executor::Background>) -> Self {
        self.background = Some(background);
        self
    }

    /// Writes through this engine ask `gate` before every batch (throttling when hot).
    pub fn with_write_gate(mut self, gate: Arc<dyn WriteGate>) -> Self {
        self.write_gate = Some(gate);
        self
    }

    /// VACUUM removes the cells it deletes from `cache` too.
    pub fn with_cell_cache(mut self, cache: Arc<crate::cache::CellCache>) -> Self {
        self.cell_cache = Some(cache);
        self
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
        // `system.lakehouse.history` reads the frames' logs, which the engine owns.
        let lakehouse = datafusion::catalog::MemorySchemaProvider::new();
        let history = Arc::new(history_table::HistoryTable {
            lakehouse: self.lakehouse.clone(),
        });
        if datafusion::catalog::SchemaProvider::register_table(
            &lakehouse,
            "history".into(),
            history,
        )
        .is_ok()
        {
            let _ = system
                .catalog()
                .register_schema("lakehouse", Arc::new(lakehouse));
        }
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

    /// Whether the base state has been built (by a statement, a task or a plan decoded here).
    pub fn base_built(&self) -> bool {
        LazyLock::get(&self.base).is_some()
    }

    /// The runtime environment statements start from; reading it builds nothing.
    pub fn runtime_env(&self) -> &Arc<RuntimeEnv> {
        &self.runtime
    }

    /// A task context for executing physical plans with `env` (a bee's pool and scratch space):
    /// the base's functions and options, taken as they are rather than registered again.
    pub fn task_context(&self, env: &Arc<RuntimeEnv>) -> Arc<datafusion::execution::TaskContext> {
        Arc::new(
            datafusion::execution::TaskContext::from(self.base_state()).with_runtime(env.clone()),
        )
    }

    /// A statement's state: the base with the statement's options and catalogs.
    ///
    /// `SessionStateBuilder::build` registers every function again (several hundred, with
    /// their aliases), which was most of what the server spends on `SELECT 1`; a clone of the
    /// base shares the functions as they are. The builder still makes the state when the
    /// statement needs functions built for its options — today `now()` and `to_timestamp*`,
    /// which take the session's time zone — or another runtime environment.
    fn state_for(
        &self,
        config: SessionConfig,
        catalogs: Arc<dyn datafusion::catalog::CatalogProviderList>,
        env: Option<&Arc<RuntimeEnv>>,
    ) -> SessionState {
        let base = self.base_state().config().options();
        let options = config.options();
        if env.is_none()
            && options.execution.time_zone == base.execution.time_zone
            && options.sql_parser.map_string_types_to_utf8view
                == base.sql_parser.map_string_types_to_utf8view
        {
            let mut state = self.base_state().clone();
            *state.config_mut() = config;
            state.register_catalog_list(catalogs);
            return state;
        }
        // `TIMESTAMP WITH TIME ZONE` is planned in the session's zone too (it kept the base's:
        // after `SET TIME ZONE 'Europe/Berlin'`, `TIMESTAMPTZ '2024-06-01 12:00'` read as UTC).
        let sql_types = sql_types_for(&config);
        let mut builder = SessionStateBuilder::new_from_existing(self.base_state().clone())
            .with_config(config)
            .with_catalog_list(catalogs)
            .with_type_planner(sql_types);
        if let Some(env) = env {
            builder = builder.with_runtime_env(env.clone());
        }
        builder.build()
    }

    /// A context for decoding plans (functions and options; no memory pool of its own).
    pub fn plan_context(&self) -> Arc<datafusion::execution::TaskContext> {
        self.base_state().task_ctx()
    }

    /// Split, rewrite placeholders and classify every statement of `text`.
    pub fn parse(&self, text: &str) -> Result<Vec<Statement>> {
        parse_with(text, &self.limits)
    }

    /// The bounds this engine enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
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
        match &stmt.command {
            Command::ShowHives
            | Command::ShowBoxes { .. }
            | Command::ShowFrames { .. }
            | Command::ShowOptions { .. } => {
                let batch = self.show(session, &stmt.command).await?;
                Ok(Output::Rows(show::one_batch_stream(batch)))
            }
            Command::Describe { name } => {
                let batch = self.describe(session, name).await?;
                Ok(Output::Rows(show::one_batch_stream(batch)))
            }
            Command::History { name, limit } => {
                let batch = self.history(session, name, *limit).await?;
                Ok(Output::Rows(show::one_batch_stream(batch)))
            }
            Command::Vacuum {
                name,
                retain_hours,
                dry_run: true,
            } => {
                let batch = self.vacuum_dry_run(session, name, *retain_hours).await?;
                Ok(Output::Rows(show::one_batch_stream(batch)))
            }
            Command::Restore { .. }
            | Command::Optimize { .. }
            | Command::Vacuum { .. }
            | Command::AddColumns { .. }
            | Command::ClusterBy { .. } => self.operate(env, session, &stmt.command).await,
            Command::AlterColumn { name, change } => {
                self.alter_column(env, session, name, change).await
            }
            Command::Unsupported(what) => Err(Error::Unsupported(what.clone())),
            Command::Sql { layout, .. } => {
                let (plan, state) = self.statement_plan(env, session, stmt, params).await?;
                self.run_plan(plan, state, layout).await
            }
            namespace => self.namespace(session, namespace).await,
        }
    }

    /// The logical plan of a statement run here (not a query planned for a swarm), with
    /// `params` bound.
    async fn statement_plan(
        &self,
        env: Option<&Arc<RuntimeEnv>>,
        session: &Session,
        stmt: &Statement,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<(LogicalPlan, SessionState)> {
        let planning = PlanTarget {
            env,
            ..Default::default()
        };
        let (plan, state, _pins) = self
            .logical_plan(
                session,
                stmt,
                params,
                &Pins::new(),
                planning,
                Purpose::Statement,
            )
            .await?;
        Ok((plan, state))
    }

    /// Run a statement that returns no result set once per parameter row (once when there are
    /// none), and answer the rows it changed. An `INSERT … VALUES` whose placeholders all sit in
    /// its VALUES list runs once, with a row per parameter row: one commit, all rows or none.
    pub async fn execute_rows(
        &self,
        env: Option<&Arc<RuntimeEnv>>,
        session: &mut Session,
        stmt: &Statement,
        rows: Vec<Vec<ScalarValue>>,
    ) -> Result<u64> {
        if rows.len() > 1
            && let Command::Sql { layout, .. } = &stmt.command
            && stmt.counts_rows()
        {
            for row in &rows {
                check_param_count(stmt, Some(row))?;
            }
            let (plan, state) = self.statement_plan(env, session, stmt, None).await?;
            if let Some(merged) = batched::merge_rows(&plan, rows.clone())? {
                return counted(self.run_plan(merged, state, layout).await?).await;
            }
        }
        let runs: Vec<Option<Vec<ScalarValue>>> = if rows.is_empty() {
            vec![None]
        } else {
            rows.into_iter().map(Some).collect()
        };
        let mut total = 0u64;
        for params in runs {
            total += counted(self.execute_in(env, session, stmt, params).await?).await?;
        }
        Ok(total)
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
        self.plan_query_for(session, stmt, params, pins, PlanTarget::default())
            .await
    }

    /// [`Engine::plan_query`] for a target: a bee's runtime, or the partitions of a swarm.
    pub(crate) async fn plan_query_for(
        &self,
        session: &Session,
        stmt: &Statement,
        params: Option<Vec<ScalarValue>>,
        pins: &Pins,
        target: PlanTarget<'_>,
    ) -> Result<PlannedQuery> {
        check_param_count(stmt, params.as_deref())?;
        match &stmt.command {
            Command::Sql { .. } if stmt.returns_rows() => {
                let (plan, state, resolved) = self
                    .logical_plan(session, stmt, params, pins, target, Purpose::Query)
                    .await?;
                let plan = state.create_physical_plan(&plan).await?;
                let schema = plan.schema();
                Ok(PlannedQuery {
                    schema,
                    plan,
                    pins: resolved.pins,
                    system_only: resolved.system_only,
                    reads_system: resolved.reads_system,
                    planned_for: resolved.planned_for,
                    state,
                })
            }
            Command::ShowHives
            | Command::ShowBoxes { .. }
            | Command::ShowFrames { .. }
            | Command::ShowOptions { .. }
            | Command::Describe { .. }
            | Command::History { .. }
            | Command::Vacuum { dry_run: true, .. } => {
                let batch = match &stmt.command {
                    Command::Describe { name } => self.describe(session, name).await?,
                    Command::History { name, limit } => self.history(session, name, *limit).await?,
                    Command::Vacuum {
                        name, retain_hours, ..
                    } => self.vacuum_dry_run(session, name, *retain_hours).await?,
                    other => self.show(session, other).await?,
                };
                PlannedQuery::from_batch_in(batch, self.base_state().clone())
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
            .logical_plan(
                session,
                stmt,
                None,
                &Pins::new(),
                PlanTarget::default(),
                if returns_rows {
                    Purpose::Query
                } else {
                    Purpose::Statement
                },
            )
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

    /// Build the per-statement catalog and the logical plan, parameters bound.
    async fn logical_plan(
        &self,
        session: &Session,
        stmt: &Statement,
        params: Option<Vec<ScalarValue>>,
        pins: &Pins,
        target: PlanTarget<'_>,
        purpose: Purpose,
    ) -> Result<(LogicalPlan, SessionState, catalog::Resolved)> {
        let Command::Sql { text, .. } = &stmt.command else {
            return Err(Error::Internal("logical_plan on a non-SQL command".into()));
        };
        let mut parsed = self
            .base_state()
            .sql_to_statement(text, &self.dialect(session)?)?;
        check_parsed(&parsed, &self.limits)?;
        let (state, resolved) = self.statement_state(session, &parsed, pins, target).await?;
        rewrite_parsed(&mut parsed, state.config().options());
        let plan = match cast_names::planned(&state, parsed).await {
            Ok(p) => p,
            Err(e) => {
                // Report a frame we could not find rather than DataFusion's generic message —
                // but only when a missing table is what failed; any other planning error (a type
                // it does not know, a table function's arguments) keeps its own message.
                if let Some(name) = crate::error::missing_table(&e)
                    && let Some((_, missing)) =
                        resolved.missing.into_iter().find(|(f, _)| *f == name)
                {
                    return Err(missing.into());
                }
                return Err(e.into());
            }
        };
        policy::check(&plan, purpose)?;
        let plan = match stmt.params {
            0 => plan,
            _ => literals::parameter_types(plan)?,
        };
        let plan = match params {
            Some(values) if !values.is_empty() => bind(plan, values)?,
            _ => plan,
        };
        let resolved = catalog::Resolved {
            missing: Vec::new(),
            ..resolved
        };
        Ok((plan, state, resolved))
    }
}

/// Refuse a parsed statement (a client's or a stored view's) before anything plans it: beyond
/// the limits of its shape, or holding what DataFusion would answer wrong.
fn check_parsed(parsed: &DfStatement, limits: &Limits) -> Result<()> {
    policy::check_shape(parsed, limits)?;
    answered_wrong::refuse(parsed)
}

/// Visit the SQL a parsed statement holds with `visitor`: the statement, an EXPLAINed one, or a
/// COPY's query.
pub(super) fn visit_parsed<V: VisitorMut<Break = ()>>(
    statement: &mut DfStatement,
    visitor: &mut V,
) {
    use datafusion::sql::parser::CopyToSource;
    use datafusion::sql::sqlparser::ast::VisitMut;
    match statement {
        DfStatement::Statement(s) => {
            let _ = s.visit(visitor);
        }
        DfStatement::Explain(e) => visit_parsed(&mut e.statement, visitor),
        DfStatement::CopyTo(c) => {
            if let CopyToSource::Query(q) = &mut c.source {
                let _ = q.visit(visitor);
            }
        }
        _ => {}
    }
}

/// A visitor that applies its function to every expression, children first (as sqlparser's
/// `visit_expressions_mut`).
pub(super) struct EachExpr<F>(pub F);

impl<F: FnMut(&mut SqlExpr) -> std::ops::ControlFlow<()>> VisitorMut for EachExpr<F> {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut SqlExpr) -> std::ops::ControlFlow<()> {
        (self.0)(expr)
    }
}

/// A checked statement as DataFusion is to plan it: numeric literals exact, `FETCH FIRST` as
/// `LIMIT`, `^` as a power, JSON operators bound as PostgreSQL binds them, repeated unnamed
/// columns named where names do not show, a cast to `VARCHAR(n)` as a cut.
fn rewrite_parsed(parsed: &mut DfStatement, options: &datafusion::config::ConfigOptions) {
    literals::exact_numbers(parsed, options);
    fetch_first::as_limit(parsed);
    caret::as_power(parsed, options);
    json::as_postgres_binds(parsed, options);
    unnamed_columns::renamed_repeats(parsed);
    sql_types::casts_cut(parsed);
}

/// DataFusion's physical rules, after one of ours that must see the plan as planned: constants a
/// projection copies to every row are bounded before DataFusion pushes the projection into the
/// scan, where the rule no longer sees it (`bounded::BoundedConstants`); two right after its
/// sort enforcement that take back a fetch it put where the fetch drops rows (`skipped_rows`,
/// `grouped_fetch`); then ours that must follow DataFusion's own, its filter pushdown among
/// them ([`own_rules`]).
fn physical_rules(bee_memory: u64) -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> =
        vec![Arc::new(bounded::BoundedConstants)];
    for rule in datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules {
        let after = rule.name() == skipped_rows::AFTER;
        rules.push(rule);
        if after {
            rules.push(Arc::new(skipped_rows::SkippedRowsKept));
            rules.push(Arc::new(grouped_fetch::GroupsBeforeFetch));
        }
    }
    rules.extend(own_rules(bee_memory));
    rules
}

/// DataFusion's analyzer rules with ours: a `NOT IN (subquery)` its null-aware join cannot
/// answer is planned as the rows it keeps, row values compare field by field, string literals
/// beside timestamps take their type and decimal literals beside floats become floats before
/// its type coercion; after it, decimals
/// cast to integers drop their fraction first, casts to a timestamp's date or time of day are
/// kept out of interval analysis, integer arithmetic is checked (before constant folding), two
/// `IN` lists over a value that leave nothing answer NULL for a NULL value, a scalar subquery
/// that can return no row may be NULL,
/// `information_schema.columns` counts its ordinals from 1, `information_schema.views` lists
/// only views, and the functions that grow and the patterns of the matching operators are
/// bounded.
fn analyzer_rules() -> Vec<Arc<dyn datafusion::optimizer::AnalyzerRule + Send + Sync>> {
    let mut rules = datafusion::optimizer::Analyzer::new().rules;
    rules.insert(0, Arc::new(literals::FloatNeighbours));
    rules.insert(0, Arc::new(temporal_strings::TimestampStrings));
    rules.insert(0, Arc::new(set_comparisons::SetComparisons));
    rules.insert(0, Arc::new(row_values::RowValues));
    rules.insert(0, Arc::new(not_in_subqueries::NotInSubqueries));
    rules.push(Arc::new(whole_casts::WholeCasts));
    rules.push(Arc::new(text_casts::TextCasts));
    rules.push(Arc::new(temporal_strings::SubUnitValues));
    rules.push(Arc::new(temporal_casts::TemporalCasts));
    rules.push(Arc::new(interval_order::IntervalOrder));
    rules.push(Arc::new(checked::CheckedIntegers));
    rules.push(Arc::new(in_lists::EmptyInLists));
    rules.push(Arc::new(scalar_subqueries::NullableSubqueries));
    rules.push(Arc::new(information_schema::OrdinalsFromOne));
    rules.push(Arc::new(information_schema::OnlyViewsInViews));
    rules.push(Arc::new(bounded::BoundedCalls));
    rules.push(Arc::new(patterns::BoundedPatterns));
    rules
}

/// Split, rewrite placeholders and classify every statement of `text` (what
/// [`Engine::parse`] does, with the default limits; it needs no engine).
pub fn parse(text: &str) -> Result<Vec<Statement>> {
    parse_with(text, &Limits::default())
}

/// [`parse`] within `limits`.
pub fn parse_with(text: &str, limits: &Limits) -> Result<Vec<Statement>> {
    if text.len() > limits.max_sql_bytes {
        return Err(Error::Sql(format!(
            "the SQL text is {} bytes; the limit is {} (--max-sql-bytes)",
            text.len(),
            limits.max_sql_bytes
        )));
    }
    let parts = sql::split_statements(text, limits.max_sql_tokens)?;
    if parts.is_empty() {
        return Err(Error::Sql("no statement given".into()));
    }
    parts
        .into_iter()
        .map(|p| {
            let (text, params) = sql::rewrite_placeholders(&p)?;
            let command = match sql::classify(&text)? {
                Command::Sql { text, layout } => Command::Sql {
                    text: sql::travel::rewrite(&text)?.unwrap_or(text),
                    layout,
                },
                other => other,
            };
            let returns_rows = command.returns_rows();
            let explained = match &command {
                Command::Sql { .. } if returns_rows => sql::explained(&text),
                _ => None,
            };
            Ok(Statement {
                text,
                command,
                params,
                returns_rows,
                explained,
            })
        })
        .collect()
}

/// What a plan is made for: the runtime it executes with (a bee's pool and scratch space) and
/// how many partitions (a swarm plans for all its bees). Defaults: the engine's own.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PlanTarget<'a> {
    pub(crate) env: Option<&'a Arc<RuntimeEnv>>,
    pub(crate) partitions: Option<usize>,
    /// Plan for `partitions` only when the frames the statement reads hold at least this many
    /// bytes of cells (less cannot spread over a swarm); otherwise for the engine's own.
    pub(crate) spread_from: u64,
}

/// Bind each value in the type the statement expects where DataFusion knows it, so that clients
/// may send e.g. int32 for a BIGINT comparison.
fn bind(plan: LogicalPlan, values: Vec<ScalarValue>) -> Result<LogicalPlan> {
    let values = batched::typed(&plan.get_parameter_types()?, values)?;
    Ok(plan.with_param_values(ParamValues::from(values))?)
}

/// The rows a statement run for its count changed (or returned).
async fn counted(output: Output) -> Result<u64> {
    use futures::TryStreamExt;
    Ok(match output {
        Output::Count(n) => n,
        Output::Done => 0,
        Output::Rows(s) => {
            s.try_fold(0u64, |n, b| async move { Ok(n + b.num_rows() as u64) })
                .await?
        }
    })
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

/// Apiary's join thresholds, before the operator's own options (which win).
fn join_thresholds(opts: &mut datafusion::config::ConfigOptions, target_partitions: usize) {
    opts.optimizer.hash_join_inlist_pushdown_max_distinct_values = join_filters::LISTED_KEYS;
    opts.optimizer.hash_join_inlist_pushdown_max_size = join_filters::LISTED_BYTES;
    if target_partitions <= FEW_PARTITIONS {
        opts.optimizer.hash_join_single_partition_threshold_rows = FEW_PARTITIONS_COLLECT_ROWS;
        opts.optimizer.hash_join_single_partition_threshold = FEW_PARTITIONS_COLLECT_BYTES;
    }
}

/// Up to this many partitions (cores), a hash join builds one table for all of them from a
/// build side of up to [`FEW_PARTITIONS_COLLECT_ROWS`] rows, instead of DataFusion's 128 K.
const FEW_PARTITIONS: usize = 4;

/// On 2 cores, hashing both sides of a join into partitions costs more than building one table
/// that every partition probes: TPC-H q05 repartitioned all 6 M `lineitem` rows to meet 228 K
/// orders. `bench/run --sf 1`, alternated twice: Apiary/DuckDB 1.31 and 1.37 with 1 M rows
/// against 1.44 and 1.45 with 128 K (`bench/results/planning-and-stats.md`, section 5). More
/// cores keep DataFusion's default, which was not measured against here.
const FEW_PARTITIONS_COLLECT_ROWS: usize = 1 << 20;

/// The same, by the build side's estimated bytes where the statistics give them (they decide
/// before rows do): DataFusion's 1 MiB kept TPC-H q05's orders side (228 K rows, estimated
/// above 1 MiB once joined with `customer`) partitioned, so all 6 M `lineitem` rows were
/// hashed into partitions again. TPC-H SF1 took 0.90× the time with 32 MiB (six alternated
/// rounds; 8 MiB: 0.95×), SF10 the same as with 1 MiB (`bench/results/join-collect-bytes.md`).
const FEW_PARTITIONS_COLLECT_BYTES: usize = 32 << 20;

#[cfg(test)]
mod join_threshold_tests {
    use super::*;

    #[test]
    fn few_cores_build_one_table_from_larger_build_sides() {
        let defaults = datafusion::config::ConfigOptions::default().optimizer;
        let (rows, bytes) = (
            defaults.hash_join_single_partition_threshold_rows,
            defaults.hash_join_single_partition_threshold,
        );
        for (partitions, want) in [
            (1, (1 << 20, 32 << 20)),
            (4, (1 << 20, 32 << 20)),
            (8, (rows, bytes)),
        ] {
            let mut opts = datafusion::config::ConfigOptions::default();
            join_thresholds(&mut opts, partitions);
            let got = (
                opts.optimizer.hash_join_single_partition_threshold_rows,
                opts.optimizer.hash_join_single_partition_threshold,
            );
            assert_eq!(got, want, "{partitions} partitions");
        }
        assert!(rows < 1 << 20 && bytes < 32 << 20);
    }
}
