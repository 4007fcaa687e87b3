//! The node: everything one `apiary` process runs, assembled. `Node` owns the parts, starts and
//! stops their background work, and implements what the server calls ([`QueryService`]) and
//! what status views read ([`StatusSource`]); the work itself lives in the parts.
//!
//! ```text
//!             ┌──────────────────────────── Node ───────────────────────────────┐
//!  server ───▶│ QueryService: query / update / ingest ─▶ BeePool ─▶ Engine (bee) │
//!             │                 └─ large, on a swarm ─▶ distributed (DistContext) │
//!             │ background: heartbeat ─▶ storage ◀─ WorldView; inbox worker; sweep │
//!             └─────────────────────────────────────────────────────────────────┘
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use apiary_storage::format::{CacheSummaryV1, HeartbeatV1, SwarmKey};
use apiary_storage::{Lakehouse, Storage, WriteGate, paths};
use chrono::{DateTime, Utc};
use datafusion::execution::runtime_env::RuntimeEnv;
use tracing::{info, warn};

mod plans;
mod service;
#[cfg(test)]
mod tests;
mod work;

use crate::bees::{BeeConfig, BeePool};
use crate::cache::{CachedStore, CellCache};
use crate::colony::{Band, Colony, Temperature};
use crate::distributed::{self, DistContext, DistMetrics, DistributionConfig};
use crate::engine::{Engine, EngineConfig};
use crate::error::{Error, Result};
use crate::executor::{Background, CpuExecutor};
use crate::queries::QueryRegistry;
use crate::status::StatusSource;
use crate::swarm::{self, HeartbeatInput, SwarmTiming, WorldView};
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
    /// How long shutdown waits for cleanups in flight before aborting them.
    pub shutdown_grace: Duration,
    /// Longest an ingest waits for its client's next batch; zero: no bound.
    pub ingest_idle_timeout: Duration,
    /// Longest a query's result waits for its reader to read (zero: no bound).
    pub result_idle_timeout: Duration,
    /// Seals the objects nodes exchange (tasks, plans, outputs, heartbeats); shared by every
    /// node of the swarm.
    pub swarm_key: SwarmKey,
    /// Fault injection for tests: shift the wall clock written into heartbeats by this many
    /// seconds, to show that liveness never depends on writers' clocks. 0 in production.
    pub fault_clock_skew_secs: i64,
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
                spill_limit: 100 << 30,
            },
            engine: EngineConfig::default(),
            swarm: SwarmTiming::default(),
            cpu_threads: bees.max(1),
            distribution: DistributionConfig::default(),
            cache: None,
            shutdown_grace: Duration::from_secs(5),
            ingest_idle_timeout: Duration::from_secs(60),
            result_idle_timeout: Duration::from_secs(300),
            // Only nodes built this way in one process share it: tests and one-shot use.
            swarm_key: SwarmKey::new(b"apiary local swarm key"),
            fault_clock_skew_secs: 0,
        }
    }
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
    dist: Arc<DistContext>,
    background: Arc<Background>,
    cache: Option<Arc<CellCache>>,
    started_at: DateTime<Utc>,
    started: Instant,
    seq: AtomicU64,
    queries_total: AtomicU64,
    /// Plans GetFlightInfo made, waiting for their DoGet.
    plans: plans::PlanCache,
    /// Statements that lately spread nothing, or shipped back much of what they scanned:
    /// planned for this node alone.
    stays_local: Arc<plans::StaysLocal>,
    /// Set once [`Node::shutdown`] has run to its end.
    left: tokio::sync::OnceCell<()>,
}

impl Node {
    /// Assemble a node on an opened lakehouse. Background work starts with [`Node::start`].
    pub fn new(lakehouse: Lakehouse, mut config: NodeConfig) -> Result<Arc<Node>> {
        paths::validate_node_id(&config.node_id)?;
        let bee_budget = config.bees.memory_budget / config.bees.bees.max(1) as u64;
        config.engine.batch_size = crate::bees::batch_size_for(bee_budget);
        config.engine.bee_memory = bee_budget;
        let cpu = Arc::new(
            CpuExecutor::new(config.cpu_threads)
                .map_err(|e| Error::Internal(format!("starting the CPU runtime: {e}")))?,
        );
        let engine = Engine::try_new(
            lakehouse.clone(),
            config.engine.clone(),
            Arc::new(RuntimeEnv::default()),
        )?;
        // The engine's registry reaches the storage root only; bees use the same one.
        let registry = engine.runtime_env().object_store_registry.clone();
        let bees = BeePool::new(config.bees.clone(), registry.clone());
        let background = Arc::new(Background::new());
        let engine = engine
            .with_write_gate(Arc::new(ColonyGate { bees: bees.clone() }))
            .with_background(background.clone());
        // Scans of an object store go through the local cell cache (confined like the rest).
        let cache = match (&config.cache, lakehouse.storage().kind()) {
            (Some((dir, capacity)), apiary_storage::BackendKind::S3) => {
                let cache = CellCache::new(dir.clone(), *capacity).map_err(|e| {
                    Error::Internal(format!("cell cache at {}: {e}", dir.display()))
                })?;
                let storage = lakehouse.storage();
                let cached = CachedStore::new(storage.raw_store().clone(), cache.clone());
                registry.register_store(
                    storage.object_store_url().as_ref(),
                    Arc::new(apiary_storage::confine::ConfinedStore::new(
                        Arc::new(cached),
                        storage.prefix().clone(),
                    )),
                );
                Some(cache)
            }
            _ => None,
        };
        let engine = match &cache {
            Some(c) => engine.with_cell_cache(c.clone()),
            None => engine,
        };
        Ok(Arc::new_cyclic(|weak: &Weak<Node>| {
            let status: Weak<dyn StatusSource> = weak.clone();
            let engine = engine.with_system_catalog(Arc::new(SystemTables::new(status)));
            let world = Arc::new(WorldView::new(config.swarm));
            let queries = QueryRegistry::new();
            let dist = Arc::new(DistContext {
                node_id: config.node_id.clone(),
                storage: lakehouse.storage().clone(),
                world: world.clone(),
                bees: bees.clone(),
                queries: queries.clone(),
                cpu: cpu.clone(),
                engine: engine.clone(),
                inbox_wake: tokio::sync::Notify::new(),
                outcomes: Default::default(),
                config: config.distribution.clone(),
                metrics: DistMetrics::default(),
                background: background.clone(),
                key: config.swarm_key.clone(),
                last_remote_post: std::sync::Mutex::new(None),
            });
            Node {
                world,
                queries,
                dist,
                background,
                started_at: Utc::now(),
                started: Instant::now(),
                seq: AtomicU64::new(0),
                queries_total: AtomicU64::new(0),
                plans: plans::PlanCache::default(),
                stays_local: Default::default(),
                left: tokio::sync::OnceCell::new(),
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

    #[cfg(test)]
    pub(crate) fn dist(&self) -> &Arc<DistContext> {
        &self.dist
    }

    #[cfg(test)]
    pub(crate) fn background(&self) -> &Background {
        &self.background
    }

    pub fn temperature(&self) -> Temperature {
        self.bees.temperature()
    }

    /// Start heartbeats, the world view with maintenance, and the inbox worker. Heartbeats run
    /// on their own so that a slow read of the swarm or a long maintenance pass never delays
    /// them (a late heartbeat makes the others suspect this node). All of it ends on
    /// [`Node::shutdown`] (or when the node is dropped).
    pub fn start(self: &Arc<Self>) {
        let interval = self.config.swarm.interval;
        let every = move || {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        };
        let node = Arc::downgrade(self);
        let mut tick = every();
        let stop = self.background.token().clone();
        // A write under way finishes before shutdown deletes the heartbeat: cut short, a local
        // write could still land after the delete and leave a heartbeat behind.
        self.background.spawn_finishing(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
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
        let ttl = self.config.distribution.orphan_ttl;
        let sweep_every = ttl.min(Duration::from_secs(60));
        self.background.spawn(async move {
            let mut swept: Option<Instant> = None;
            loop {
                tick.tick().await;
                let Some(node) = node.upgrade() else { return };
                if let Err(e) = node
                    .world
                    .refresh(node.storage(), &node.config.swarm_key)
                    .await
                {
                    warn!(error = %e, "reading heartbeats");
                }
                if node.temperature().band == Band::Cold
                    && swept.is_none_or(|t| t.elapsed() >= sweep_every)
                {
                    swept = Some(Instant::now());
                    distributed::sweep_orphans(node.storage(), &node.config.swarm_key, ttl).await;
                }
            }
        });
        // Watching starts before `start` returns: a task posted here from now on wakes the worker.
        let watch = distributed::watch_storage(&self.dist);
        self.background
            .spawn(distributed::run_worker(Arc::downgrade(&self.dist), watch));
    }

    /// Write this node's heartbeat once.
    pub async fn beat(&self) -> Result<()> {
        let now = Utc::now();
        let skew = chrono::Duration::seconds(self.config.fault_clock_skew_secs);
        let hb: HeartbeatV1 = swarm::heartbeat(HeartbeatInput {
            node_id: &self.config.node_id,
            flight_url: &self.config.advertise_url,
            load: self.bees.load(),
            temperature: self.bees.temperature(),
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
            now: now + skew,
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            coordinating: self.dist.coordinated_lately(),
            interval: self.world.interval(),
        });
        self.world.beating(&hb);
        let path = paths::heartbeat(&self.config.node_id);
        let sealed = self.config.swarm_key.seal_object(&path, &hb);
        self.storage().put(&path, sealed).await?;
        Ok(())
    }

    /// Stop claiming fragments, hand back the ones running (each ends with a retryable
    /// `failed` marker, so its coordinator reassigns it at once), stop heartbeats and the world
    /// view, and leave the swarm (delete the heartbeat). A second call waits for the first; one
    /// after it does nothing. A call dropped part-way (its caller raced it against something
    /// else that finished first) leaves the rest to the next call, which finishes it.
    pub async fn shutdown(&self) {
        self.left
            .get_or_init(|| async {
                self.background.shutdown(self.config.shutdown_grace).await;
                match self
                    .storage()
                    .delete(&paths::heartbeat(&self.config.node_id))
                    .await
                {
                    Ok(()) => info!(node = %self.config.node_id, "left the swarm"),
                    Err(e) => warn!(error = %e, "deleting heartbeat"),
                }
            })
            .await;
    }
}

impl Node {
    /// Cancel every statement still running and wait, up to `grace`, for their tasks to end;
    /// then give the cleanup of those cut short (a creation undone, a half-written frame's name
    /// freed), and any handed over while the node drained, `grace` more to finish. A shutdown
    /// whose timeout ran out used to exit under them, leaving a CTAS's name reserved, as after
    /// `kill -9`. Returns how many statements were cancelled.
    pub async fn stop_statements(&self, grace: Duration) -> usize {
        let running = self.queries.list();
        for q in &running {
            q.cancel_token().cancel();
        }
        let deadline = tokio::time::Instant::now() + grace;
        // A statement's task ends when its computation next yields, after its call answered.
        while (!self.queries.list().is_empty() || self.cpu.running() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.background.shutdown(grace).await;
        running.len()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Background work holds only weak references; make sure none outlives the node.
        self.background.token().cancel();
    }
}
