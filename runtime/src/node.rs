//! The node: everything one `apiary` process runs, assembled.
//!
//! ```text
//!             ┌──────────────────────── Node ─────────────────────────┐
//!  server ───▶│ query / update ─▶ BeePool::acquire ─▶ Engine (bee env) │
//!             │                        │                │              │
//!             │                  Colony temperature  CpuExecutor       │
//!             │ background: heartbeat ─▶ storage ◀─ WorldView::refresh │
//!             └────────────────────────────────────────────────────────┘
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiary_storage::{Lakehouse, Storage, WriteGate, paths};
use arrow::datatypes::SchemaRef;
use chrono::{DateTime, Utc};
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::TryStreamExt;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::bees::{BeeConfig, BeePool};
use crate::cache::{CachedStore, CellCache};
use crate::colony::{Band, Colony, Temperature};
use crate::distributed::{self, DistributionConfig};
use crate::engine::{Engine, EngineConfig, Output, Pins, PlannedQuery, Session, Statement};
use crate::error::{Error, Result};
use crate::executor::CpuExecutor;
use crate::queries::{QueryRegistry, TrackedStream};
use crate::swarm::{CacheSummaryV1, HeartbeatV1, SwarmTiming, WorldView};
use crate::system::SystemTables;

/// Everything that shapes a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    /// The Flight URL other nodes and clients should use for this node.
    pub advertise_url: String,
    pub bees: BeeConfig,
    pub engine: EngineConfig,
    pub swarm: SwarmTiming,
    /// Threads of the CPU runtime.
    pub cpu_threads: usize,
    pub distribution: DistributionConfig,
    /// Local cell cache (directory, capacity in bytes) for object-store backends.
    pub cache: Option<(PathBuf, u64)>,
}

impl NodeConfig {
    /// A configuration for tests and one-shot use: `bees` bees sharing `memory` bytes.
    pub fn local(bees: usize, memory: u64, scratch_root: PathBuf) -> Self {
        Self {
            node_id: format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            advertise_url: String::new(),
            bees: BeeConfig {
                bees,
                memory_budget: memory,
                queue_depth: 64,
                query_timeout: Duration::from_secs(1800),
                scratch_root,
            },
            engine: EngineConfig::default(),
            swarm: SwarmTiming::default(),
            cpu_threads: bees.max(1),
            distribution: DistributionConfig::default(),
            cache: None,
        }
    }
}

/// Test hook: `APIARY_FAULT_CLOCK_SKEW_SECS=n` shifts the wall clock this node writes into its
/// heartbeats, to show that liveness never depends on writers' clocks.
fn writer_clock() -> DateTime<Utc> {
    let skew = std::env::var("APIARY_FAULT_CLOCK_SKEW_SECS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    Utc::now() + chrono::Duration::seconds(skew)
}

/// Throttles writes when the colony runs hot.
#[derive(Debug)]
struct ColonyGate {
    bees: Arc<BeePool>,
}

#[async_trait::async_trait]
impl WriteGate for ColonyGate {
    async fn admit(&self, _rows: usize) {
        let t = self.bees.temperature();
        let delay = Colony::write_delay(&t);
        if !delay.is_zero() {
            tracing::debug!(temperature = t.value, ?delay, "throttling a write");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Counters of distributed execution, for metrics.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// LIST requests on this node's inbox.
    pub inbox_polls: AtomicU64,
    /// Fragments this node executed.
    pub fragments: AtomicU64,
    /// Distributed queries this node coordinated.
    pub coordinated: AtomicU64,
    /// Recent fragment dispatch latencies (posting to claiming), seconds.
    dispatch: Mutex<std::collections::VecDeque<f64>>,
}

impl NodeMetrics {
    pub fn record_dispatch(&self, secs: f64) {
        let mut d = self.dispatch.lock().expect("metrics");
        if d.len() >= 1024 {
            d.pop_front();
        }
        d.push_back(secs);
    }

    /// (p50, p95, count) of recent dispatch latencies.
    pub fn dispatch_quantiles(&self) -> (f64, f64, usize) {
        let mut v: Vec<f64> = self
            .dispatch
            .lock()
            .expect("metrics")
            .iter()
            .copied()
            .collect();
        if v.is_empty() {
            return (0.0, 0.0, 0);
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        (q(0.5), q(0.95), v.len())
    }
}

/// One Apiary node.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    lakehouse: Lakehouse,
    engine: Engine,
    bees: Arc<BeePool>,
    queries: Arc<QueryRegistry>,
    world: Arc<WorldView>,
    cpu: Arc<CpuExecutor>,
    started_at: DateTime<Utc>,
    started: Instant,
    seq: AtomicU64,
    background: Mutex<Vec<JoinHandle<()>>>,
    /// Wakes the inbox worker when this node posts a task to itself.
    inbox_wake: Arc<tokio::sync::Notify>,
    queries_total: AtomicU64,
    metrics: NodeMetrics,
    cache: Option<Arc<CellCache>>,
}

impl Node {
    /// Assemble a node on an opened lakehouse. Background work starts with [`Node::start`].
    pub fn new(lakehouse: Lakehouse, mut config: NodeConfig) -> Result<Arc<Node>> {
        paths::validate_node_id(&config.node_id)?;
        let bee_budget = config.bees.memory_budget / config.bees.bees.max(1) as u64;
        config.engine.batch_size = crate::bees::batch_size_for(bee_budget);
        let cpu = Arc::new(
            CpuExecutor::new(config.cpu_threads)
                .map_err(|e| Error::Internal(format!("starting the CPU runtime: {e}")))?,
        );
        let base_env = Arc::new(RuntimeEnv::default());
        let bees = BeePool::new(config.bees.clone(), base_env.object_store_registry.clone());
        let engine = Engine::try_new(lakehouse.clone(), config.engine.clone(), base_env.clone())?
            .with_write_gate(Arc::new(ColonyGate { bees: bees.clone() }));
        // Scans of an object store go through the local cell cache.
        let cache = match (&config.cache, lakehouse.storage().kind()) {
            (Some((dir, capacity)), apiary_storage::BackendKind::S3) => {
                let cache = CellCache::new(dir.clone(), *capacity).map_err(|e| {
                    Error::Internal(format!("cell cache at {}: {e}", dir.display()))
                })?;
                let storage = lakehouse.storage();
                base_env.register_object_store(
                    storage.object_store_url().as_ref(),
                    Arc::new(CachedStore::new(storage.raw_store().clone(), cache.clone())),
                );
                Some(cache)
            }
            _ => None,
        };
        Ok(Arc::new_cyclic(|weak| {
            let engine = engine.with_system_catalog(Arc::new(SystemTables::new(weak.clone())));
            Node {
                world: Arc::new(WorldView::new(config.swarm)),
                queries: QueryRegistry::new(),
                started_at: Utc::now(),
                started: Instant::now(),
                seq: AtomicU64::new(0),
                background: Mutex::new(Vec::new()),
                inbox_wake: Arc::new(tokio::sync::Notify::new()),
                queries_total: AtomicU64::new(0),
                metrics: NodeMetrics::default(),
                cache,
                config,
                lakehouse,
                engine,
                bees,
                cpu,
            }
        }))
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn id(&self) -> &str {
        &self.config.node_id
    }

    pub fn lakehouse(&self) -> &Lakehouse {
        &self.lakehouse
    }

    pub fn storage(&self) -> &Storage {
        self.lakehouse.storage()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn bees(&self) -> &Arc<BeePool> {
        &self.bees
    }

    pub fn queries(&self) -> &Arc<QueryRegistry> {
        &self.queries
    }

    pub fn inbox_wake(&self) -> &Arc<tokio::sync::Notify> {
        &self.inbox_wake
    }

    pub fn world(&self) -> &Arc<WorldView> {
        &self.world
    }

    /// The swarm as this node sees it, for placing work: a node running this code is alive
    /// whatever its own heartbeat's age says, so the coordinator is always a place of last resort.
    pub fn swarm_view(&self) -> Vec<crate::swarm::NodeView> {
        swarm_view(&self.world, &self.config.node_id)
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn queries_total(&self) -> u64 {
        self.queries_total.load(Ordering::Relaxed)
    }

    pub fn temperature(&self) -> Temperature {
        self.bees.temperature()
    }

    pub fn distribution(&self) -> &DistributionConfig {
        &self.config.distribution
    }

    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    pub fn cpu(&self) -> &Arc<CpuExecutor> {
        &self.cpu
    }

    pub fn cache_stats(&self) -> Option<crate::cache::CacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// Start heartbeats, the world view and maintenance. Heartbeats run on their own so that a
    /// slow read of the swarm or a long maintenance pass never delays them (a late heartbeat makes
    /// the others suspect this node).
    pub fn start(self: &Arc<Self>) {
        let interval = self.config.swarm.interval;
        let every = move || {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        };
        let node = Arc::downgrade(self);
        let mut tick = every();
        let beats = tokio::spawn(async move {
            loop {
                tick.tick().await;
                let Some(node) = node.upgrade() else { return };
                if let Err(e) = node.beat().await {
                    warn!(error = %e, "writing heartbeat");
                }
            }
        });
        let node = Arc::downgrade(self);
        let mut tick = every();
        // Orphans are looked for at most once a minute (sooner only with a shorter TTL): each
        // look costs two LISTs, and an idle node should cost little on a metered bucket.
        let sweep_every = self
            .config
            .distribution
            .orphan_ttl
            .min(Duration::from_secs(60));
        let view = tokio::spawn(async move {
            let mut swept: Option<Instant> = None;
            loop {
                tick.tick().await;
                let Some(node) = node.upgrade() else { return };
                if let Err(e) = node.world.refresh(node.storage()).await {
                    warn!(error = %e, "reading heartbeats");
                }
                if node.temperature().band == Band::Cold
                    && swept.is_none_or(|t| t.elapsed() >= sweep_every)
                {
                    swept = Some(Instant::now());
                    node.maintenance().await;
                }
            }
        });
        let worker = tokio::spawn(distributed::worker::run(Arc::downgrade(self)));
        let mut bg = self.background.lock().expect("background");
        bg.extend([beats, view, worker]);
    }

    /// Write this node's heartbeat once.
    pub async fn beat(&self) -> Result<()> {
        let hb = self.heartbeat();
        self.storage()
            .put(&paths::heartbeat(&self.config.node_id), hb.encode())
            .await?;
        Ok(())
    }

    pub fn heartbeat(&self) -> HeartbeatV1 {
        let load = self.bees.load();
        let t = self.bees.temperature();
        let skew = writer_clock() - Utc::now();
        HeartbeatV1 {
            v: 1,
            node_id: self.config.node_id.clone(),
            flight_url: self.config.advertise_url.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            bees_total: load.bees as u32,
            bees_busy: load.busy as u32,
            memory_budget: load.memory_budget,
            memory_reserved: load.memory_reserved,
            queue_depth: load.queued as u32,
            temperature: t.value,
            band: t.band.to_string(),
            cache: match &self.cache {
                Some(c) => {
                    let st = c.stats();
                    CacheSummaryV1 {
                        entries: st.entries,
                        bytes: st.bytes,
                        hits: st.hits,
                        misses: st.misses,
                        bloom: c.bloom().to_hex(),
                    }
                }
                None => CacheSummaryV1::default(),
            },
            started_at: self.started_at + skew,
            written_at: writer_clock(),
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
        }
    }

    /// Low-priority upkeep, run only when the colony is cold: delete what distributed queries
    /// left behind (their coordinator died), once older than the orphan TTL.
    pub async fn maintenance(&self) {
        let ttl = chrono::Duration::from_std(self.config.distribution.orphan_ttl)
            .unwrap_or(chrono::Duration::hours(1));
        let cutoff = Utc::now() - ttl;
        let storage = self.storage();
        let Ok(queries) = storage.list_dirs(&paths::queries_prefix()).await else {
            return;
        };
        for q in queries {
            let Ok(objects) = storage.list(&q).await else {
                continue;
            };
            // A query is orphaned when nothing under it changed within the TTL.
            let newest = objects.iter().map(|m| m.last_modified).max();
            if newest.is_some_and(|t| t < cutoff) {
                match storage.delete_prefix(&q).await {
                    Ok(n) => info!(prefix = %q, objects = n, "removed an orphaned query"),
                    Err(e) => warn!(prefix = %q, error = %e, "removing an orphaned query"),
                }
            }
        }
        if let Ok(entries) = storage.list(&paths::inboxes_prefix()).await {
            for e in entries.iter().filter(|m| m.last_modified < cutoff) {
                let _ = storage.delete(&e.location).await;
            }
        }
    }

    /// Stop background work and leave the swarm (delete the heartbeat).
    pub async fn shutdown(&self) {
        for t in self.background.lock().expect("background").drain(..) {
            t.abort();
        }
        match self
            .storage()
            .delete(&paths::heartbeat(&self.config.node_id))
            .await
        {
            Ok(()) => info!(node = %self.config.node_id, "left the swarm"),
            Err(e) => warn!(error = %e, "deleting heartbeat"),
        }
    }

    // ---- work ---------------------------------------------------------------------------------

    /// Plan a query without running it (FlightInfo, GetSchema).
    pub async fn plan(
        &self,
        session: &Session,
        stmt: &Statement,
        params: Option<Vec<ScalarValue>>,
        pins: &Pins,
    ) -> Result<PlannedQuery> {
        self.engine.plan_query(session, stmt, params, pins).await
    }

    /// Run a query; the stream holds what the query uses (a bee, or a distributed run) until it
    /// ends or is dropped. Several parameter rows run as several statements, one after the
    /// other.
    ///
    /// Status queries (only `system.*`) take no bee, so they answer on a saturated node. A query
    /// over enough cells on a swarm of two or more is cut into fragments for the swarm; its
    /// coordinator part runs outside the bee slots (with a bee-sized memory pool), so that this
    /// node's own bees stay free for the fragments it is assigned. Everything else runs in a bee.
    pub async fn query(
        self: &Arc<Self>,
        query_id: &str,
        session: &Session,
        stmt: &Statement,
        param_rows: Vec<Option<Vec<ScalarValue>>>,
        pins: &Pins,
    ) -> Result<(SchemaRef, SendableRecordBatchStream)> {
        self.queries_total.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.queries.register(query_id, &session.user, &stmt.text);
        let param_sets = if param_rows.is_empty() {
            vec![None]
        } else {
            param_rows
        };
        // On a swarm, plan for every bee of it, so that aggregations and sorts split into
        // partial and final steps that fragments can run.
        let swarm_bees: usize = self
            .world
            .nodes()
            .iter()
            .filter(|v| v.state == crate::swarm::NodeState::Alive)
            .map(|v| v.heartbeat.bees_total.max(1) as usize)
            .sum();
        let partitions = (swarm_bees > self.config.bees.bees).then_some(swarm_bees);
        let mut plans = Vec::with_capacity(param_sets.len());
        for params in param_sets {
            plans.push(
                self.engine
                    .plan_query_in(None, session, stmt, params, pins, partitions)
                    .await?,
            );
        }
        let schema = plans[0].schema.clone();
        let timeout = self.config.bees.query_timeout;
        let mut hold: Vec<Box<dyn std::any::Any + Send>> = Vec::new();

        let explain_distributed = is_explain(&stmt.text);
        let (ctx, lease): (
            Arc<datafusion::execution::TaskContext>,
            Option<crate::bees::BeeLease>,
        ) = if self.engine.reads_only_system(stmt) || explain_distributed {
            (self.engine.task_context(&self.coordinator_env()?), None)
        } else if let Some(proposal) = (plans.len() == 1)
            .then(|| distributed::propose(self, &plans[0].plan))
            .flatten()
        {
            let (root, run) = distributed::start(
                self,
                query_id,
                &stmt.text,
                &plans[0].plan,
                proposal,
                timeout,
            )
            .await?;
            self.metrics.coordinated.fetch_add(1, Ordering::Relaxed);
            plans[0].plan = root;
            hold.push(Box::new(run));
            guard.entry().set_bee(None);
            (self.engine.task_context(&self.coordinator_env()?), None)
        } else {
            guard.entry().set_queued();
            let lease = self.bees.acquire(query_id).await?;
            guard.entry().set_bee(Some(lease.bee()));
            (self.engine.task_context(lease.env()), Some(lease))
        };
        let lease = Arc::new(lease);
        let explain = {
            let lease = lease.clone();
            move |e: Error| match lease.as_ref() {
                Some(l) => l.explain(e),
                None => e,
            }
        };
        if explain_distributed {
            // EXPLAIN shows, besides DataFusion's plan, how the swarm would run the query.
            if let Some(batch) = self.explain_distributed(session, stmt, pins).await? {
                plans.push(PlannedQuery::from_batch(batch)?);
            }
        }
        let cpu_schema = schema.clone();
        let stream = self.cpu.stream(schema.clone(), move || {
            let streams = futures::stream::iter(plans)
                .map(move |p: PlannedQuery| {
                    p.execute_with(ctx.clone())
                        .map_err(datafusion::error::DataFusionError::from)
                })
                .try_flatten();
            Ok(Box::pin(
                datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                    cpu_schema, streams,
                ),
            ) as SendableRecordBatchStream)
        });
        guard.watch_storage(self.storage().clone());
        let deadline = lease
            .as_ref()
            .as_ref()
            .map(|l| l.deadline())
            .unwrap_or_else(|| Instant::now() + timeout);
        hold.push(Box::new(lease));
        let stream = TrackedStream::new(stream, guard, hold)
            .with_deadline(deadline, timeout)
            .with_error_map(explain);
        Ok((schema, stream.boxed()))
    }

    /// A memory pool the size of one bee that takes no bee slot (coordinators, status queries).
    fn coordinator_env(&self) -> Result<Arc<RuntimeEnv>> {
        Ok(datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(
                datafusion::execution::memory_pool::FairSpillPool::new(
                    self.bees.bee_budget() as usize
                ),
            ))
            .with_object_store_registry(
                self.engine
                    .base_state()
                    .runtime_env()
                    .object_store_registry
                    .clone(),
            )
            .build_arc()?)
    }

    /// For `EXPLAIN <query>`: one more (plan_type, plan) row with the distributed plan.
    async fn explain_distributed(
        &self,
        session: &Session,
        stmt: &Statement,
        pins: &Pins,
    ) -> Result<Option<arrow::array::RecordBatch>> {
        let inner = strip_explain(&stmt.text);
        let Ok(inner) = self.engine.parse_one(inner) else {
            return Ok(None);
        };
        if !inner.returns_rows() || inner.params > 0 {
            return Ok(None);
        }
        let planned = self.engine.plan_query(session, &inner, None, pins).await?;
        let text = match distributed::propose(self, &planned.plan) {
            Some(p) => distributed::describe(&p),
            None => format!(
                "runs on this node ({}): fewer than two live nodes or less than {} bytes of cells\n",
                self.id(),
                self.config.distribution.min_bytes
            ),
        };
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("plan_type", arrow::datatypes::DataType::Utf8, false),
            arrow::datatypes::Field::new("plan", arrow::datatypes::DataType::Utf8, false),
        ]));
        Ok(Some(arrow::array::RecordBatch::try_new(
            schema,
            vec![
                Arc::new(arrow::array::StringArray::from(vec!["distributed_plan"])),
                Arc::new(arrow::array::StringArray::from(vec![text])),
            ],
        )?))
    }

    /// Run a statement that returns no result set in a bee, once per parameter row (or once).
    /// Returns the rows affected and the session afterwards.
    pub async fn update(
        self: &Arc<Self>,
        query_id: &str,
        session: &Session,
        stmt: &Statement,
        param_rows: Vec<Vec<ScalarValue>>,
    ) -> Result<(u64, Session)> {
        self.queries_total.fetch_add(1, Ordering::Relaxed);
        let guard = self.queries.register(query_id, &session.user, &stmt.text);
        let lease = match self.bees.acquire(query_id).await {
            Ok(l) => l,
            Err(e) => {
                guard.fail();
                return Err(e);
            }
        };
        guard.entry().set_bee(Some(lease.bee()));
        let engine = self.engine.clone();
        let env = lease.env().clone();
        let mut session = session.clone();
        let stmt = stmt.clone();
        let token = guard.entry().cancel_token().clone();
        let timeout = self.config.bees.query_timeout;
        let work = self.cpu.spawn(async move {
            let runs: Vec<Option<Vec<ScalarValue>>> = if param_rows.is_empty() {
                vec![None]
            } else {
                param_rows.into_iter().map(Some).collect()
            };
            let mut total = 0u64;
            for params in runs {
                total += match engine
                    .execute_in(Some(&env), &mut session, &stmt, params)
                    .await?
                {
                    Output::Count(n) => n,
                    Output::Done => 0,
                    Output::Rows(s) => {
                        let batches: Vec<arrow::array::RecordBatch> = s.try_collect().await?;
                        batches.iter().map(|b| b.num_rows() as u64).sum()
                    }
                };
            }
            Ok::<_, Error>((total, session))
        });
        let outcome = tokio::select! {
            r = work => r.map_err(|e| Error::Internal(format!("statement task: {e}"))).and_then(|r| r),
            _ = token.cancelled() => Err(Error::Cancelled),
            _ = tokio::time::sleep(timeout) => Err(Error::Timeout(timeout)),
        };
        match outcome {
            Ok((n, s)) => {
                guard.finish(n);
                Ok((n, s))
            }
            Err(e) => {
                guard.fail();
                Err(lease.explain(e))
            }
        }
    }

    /// Take a bee for work that is not a SQL statement (bulk ingest).
    pub async fn admit(&self, query_id: &str) -> Result<crate::bees::BeeLease> {
        self.queries_total.fetch_add(1, Ordering::Relaxed);
        self.bees.acquire(query_id).await
    }
}

use futures::StreamExt as _;

/// `EXPLAIN <query>` (not `EXPLAIN ANALYZE`, which runs the query as planned here).
fn is_explain(text: &str) -> bool {
    let t = text.trim_start().to_ascii_uppercase();
    t.starts_with("EXPLAIN ") && !t["EXPLAIN ".len()..].trim_start().starts_with("ANALYZE")
}

fn strip_explain(text: &str) -> &str {
    let t = text.trim_start();
    let rest = &t["EXPLAIN".len()..];
    let rest = rest.trim_start();
    match rest.get(..7) {
        Some(v) if v.eq_ignore_ascii_case("VERBOSE") => rest[7..].trim_start(),
        _ => rest,
    }
}

/// [`Node::swarm_view`] of `world` seen from node `me`.
pub fn swarm_view(world: &WorldView, me: &str) -> Vec<crate::swarm::NodeView> {
    let mut nodes = world.nodes();
    for n in nodes.iter_mut().filter(|n| n.heartbeat.node_id == me) {
        n.state = crate::swarm::NodeState::Alive;
    }
    nodes
}
