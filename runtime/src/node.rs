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
use crate::colony::{Band, Colony, Temperature};
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
            cpu_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
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
    queries_total: AtomicU64,
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
        let engine = Engine::try_new(lakehouse.clone(), config.engine.clone(), base_env)?
            .with_write_gate(Arc::new(ColonyGate { bees: bees.clone() }));
        Ok(Arc::new_cyclic(|weak| {
            let engine = engine.with_system_catalog(Arc::new(SystemTables::new(weak.clone())));
            Node {
                world: Arc::new(WorldView::new(config.swarm)),
                queries: QueryRegistry::new(),
                started_at: Utc::now(),
                started: Instant::now(),
                seq: AtomicU64::new(0),
                background: Mutex::new(Vec::new()),
                queries_total: AtomicU64::new(0),
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

    pub fn world(&self) -> &Arc<WorldView> {
        &self.world
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

    /// Start heartbeats, the world view and maintenance.
    pub fn start(self: &Arc<Self>) {
        let node = Arc::downgrade(self);
        let interval = self.config.swarm.interval;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(node) = node.upgrade() else { return };
                if let Err(e) = node.beat().await {
                    warn!(error = %e, "writing heartbeat");
                }
                if let Err(e) = node.world.refresh(node.storage()).await {
                    warn!(error = %e, "reading heartbeats");
                }
                if node.temperature().band == Band::Cold {
                    node.maintenance().await;
                }
            }
        });
        self.background.lock().expect("background").push(task);
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
            cache: CacheSummaryV1::default(),
            started_at: self.started_at + skew,
            written_at: writer_clock(),
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
        }
    }

    /// Low-priority upkeep, run only when the colony is cold.
    async fn maintenance(&self) {
        // Cancel markers of queries long finished.
        let Ok(listed) = self.storage().list(&paths::queries_prefix()).await else {
            return;
        };
        let cutoff = Utc::now() - chrono::Duration::hours(1);
        for meta in listed {
            if meta.location.filename() == Some("cancel") && meta.last_modified < cutoff {
                let _ = self.storage().delete(&meta.location).await;
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

    /// Run a query in a bee; the stream holds the bee until it ends or is dropped.
    /// Several parameter rows run as several statements, one after the other.
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
        // Status queries answer even when every bee is busy: they take none.
        let lease: Arc<Option<crate::bees::BeeLease>> =
            Arc::new(if self.engine.reads_only_system(stmt) {
                None
            } else {
                guard.entry().set_queued();
                let lease = self.bees.acquire(query_id).await?;
                guard.entry().set_bee(Some(lease.bee()));
                Some(lease)
            });
        let explain = {
            let lease = lease.clone();
            move |e: Error| match lease.as_ref() {
                Some(l) => l.explain(e),
                None => e,
            }
        };
        let env = lease.as_ref().as_ref().map(|l| l.env().clone());
        let mut plans = Vec::with_capacity(param_rows.len().max(1));
        for params in if param_rows.is_empty() {
            vec![None]
        } else {
            param_rows
        } {
            let planned = self
                .engine
                .plan_query_in(env.as_ref(), session, stmt, params, pins)
                .await
                .map_err(&explain)?;
            plans.push(planned);
        }
        let schema = plans[0].schema.clone();
        let cpu_schema = schema.clone();
        let stream = self.cpu.stream(schema.clone(), move || {
            let streams = futures::stream::iter(plans)
                .map(|p: PlannedQuery| {
                    p.execute()
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
        let timeout = self.config.bees.query_timeout;
        let deadline = lease
            .as_ref()
            .as_ref()
            .map(|l| l.deadline())
            .unwrap_or_else(|| Instant::now() + timeout);
        let stream = TrackedStream::new(stream, guard, vec![Box::new(lease)])
            .with_deadline(deadline, timeout)
            .with_error_map(explain);
        Ok((schema, stream.boxed()))
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
