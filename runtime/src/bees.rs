//! Bees: the units of work of a node.
//!
//! A node has N bees (one per core by default) and a memory budget divided equally among them.
//! Every query runs inside one bee, which gives it
//!
//! - a DataFusion memory pool of the bee's size (spilling operators spill when it is full;
//!   others fail with a RESOURCE_EXHAUSTED error naming the budget),
//! - the bee's own scratch directory for spill files, made when the bee first works and kept
//!   for the node's life (each spill file is removed when the operator that wrote it is done, so
//!   it is empty between queries; a query costs no directory made and removed),
//! - a deadline (the query timeout).
//!
//! Work beyond the bees waits in a bounded FIFO queue; past its depth, or when the colony is
//! critical, new work is refused with a retryable UNAVAILABLE error. CPU threads are shared: a
//! bee bounds how many queries run at once and how much memory each may hold; an idle node lets
//! a single query use every core.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::execution::disk_manager::{DiskManager, DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{MemoryPool, TrackConsumersPool};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::colony::{Band, Colony, Load, Temperature};
use crate::error::{Error, Result};
use crate::memory::HeadroomPool;

/// How a node's bees are set up.
#[derive(Debug, Clone)]
pub struct BeeConfig {
    pub bees: usize,
    /// Memory budget of the whole node, divided equally among bees.
    pub memory_budget: u64,
    /// How many queries may wait for a bee.
    pub queue_depth: usize,
    pub query_timeout: Duration,
    /// Where each bee's scratch directory is made.
    pub scratch_root: PathBuf,
    /// The most spill space the node's queries may hold at once, divided equally among bees (a
    /// query that needs more fails with RESOURCE_EXHAUSTED); 0: queries never spill.
    pub spill_limit: u64,
}

/// What one bee is doing, for status tables and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct BeeStatus {
    pub id: usize,
    pub busy: bool,
    pub query_id: Option<String>,
    pub memory_reserved: u64,
    pub memory_budget: u64,
}

#[derive(Debug, Default)]
struct Slot {
    query_id: Option<String>,
    pool: Option<Arc<dyn MemoryPool>>,
    /// The bee's spill space, made on its first query.
    disk: Option<Arc<DiskManager>>,
}

/// The bees of one node.
#[derive(Debug)]
pub struct BeePool {
    config: BeeConfig,
    per_bee: u64,
    permits: Arc<Semaphore>,
    slots: Vec<Mutex<Slot>>,
    queued: AtomicUsize,
    colony: Colony,
    object_stores: Arc<dyn ObjectStoreRegistry>,
}

/// Counts a waiter in the queue until it gets a bee or gives up.
struct QueueTicket<'a>(&'a AtomicUsize);

impl Drop for QueueTicket<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BeePool {
    pub fn new(config: BeeConfig, object_stores: Arc<dyn ObjectStoreRegistry>) -> Arc<Self> {
        let bees = config.bees.max(1);
        let per_bee = (config.memory_budget / bees as u64).max(1);
        Arc::new(Self {
            per_bee,
            permits: Arc::new(Semaphore::new(bees)),
            slots: (0..bees).map(|_| Mutex::new(Slot::default())).collect(),
            queued: AtomicUsize::new(0),
            colony: Colony::new(),
            object_stores,
            config: BeeConfig { bees, ..config },
        })
    }

    pub fn config(&self) -> &BeeConfig {
        &self.config
    }

    /// Memory budget of one bee, in bytes.
    pub fn bee_budget(&self) -> u64 {
        self.per_bee
    }

    pub fn load(&self) -> Load {
        let mut busy = 0;
        let mut reserved = 0u64;
        for s in &self.slots {
            let s = s.lock().expect("bee slot");
            if s.query_id.is_some() {
                busy += 1;
            }
            if let Some(p) = &s.pool {
                reserved += p.reserved() as u64;
            }
        }
        Load {
            bees: self.slots.len(),
            busy,
            memory_budget: self.config.memory_budget,
            memory_reserved: reserved,
            queue_capacity: self.config.queue_depth,
            queued: self.queued.load(Ordering::SeqCst),
        }
    }

    /// The current temperature (logs band transitions).
    pub fn temperature(&self) -> Temperature {
        self.colony.observe(&self.load())
    }

    pub fn status(&self) -> Vec<BeeStatus> {
        self.slots
            .iter()
            .enumerate()
            .map(|(id, s)| {
                let s = s.lock().expect("bee slot");
                BeeStatus {
                    id,
                    busy: s.query_id.is_some(),
                    query_id: s.query_id.clone(),
                    memory_reserved: s.pool.as_ref().map(|p| p.reserved() as u64).unwrap_or(0),
                    memory_budget: self.per_bee,
                }
            })
            .collect()
    }

    /// Wait for a bee (FIFO), unless the node is critical or the queue is full.
    pub async fn acquire(self: &Arc<Self>, query_id: &str) -> Result<BeeLease> {
        let t = self.temperature();
        if t.band == Band::Critical {
            return Err(Error::Unavailable(format!(
                "node overloaded (colony temperature {:.2}, critical); retry later",
                t.value
            )));
        }
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let waiting = self.queued.fetch_add(1, Ordering::SeqCst);
                let ticket = QueueTicket(&self.queued);
                if waiting >= self.config.queue_depth {
                    drop(ticket);
                    return Err(Error::Unavailable(format!(
                        "all {} bees are busy and {} queries are queued (the limit); retry later",
                        self.slots.len(),
                        self.config.queue_depth
                    )));
                }
                self.temperature();
                let permit = self
                    .permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::Unavailable("node is shutting down".into()))?;
                drop(ticket);
                permit
            }
        };
        // Find a free bee and take it under its lock: two queries admitted at once must never
        // find the same bee free (each would run on it and the first to end would free it).
        let bee = self
            .slots
            .iter()
            .position(|s| {
                let mut slot = s.lock().expect("bee slot");
                let free = slot.query_id.is_none();
                if free {
                    slot.query_id = Some(query_id.to_string());
                }
                free
            })
            .ok_or_else(|| Error::Internal("a permit without a free bee".into()))?;
        let pool: Arc<dyn MemoryPool> = Arc::new(TrackConsumersPool::new(
            HeadroomPool::new(self.per_bee as usize),
            std::num::NonZeroUsize::new(3).expect("non-zero"),
        ));
        let env = match self.runtime_of(bee, &pool) {
            Ok(env) => env,
            Err(e) => {
                self.slots[bee].lock().expect("bee slot").query_id = None;
                return Err(e);
            }
        };
        self.slots[bee].lock().expect("bee slot").pool = Some(pool);
        debug!(bee, query_id, "bee assigned");
        self.temperature();
        Ok(BeeLease {
            pool: self.clone(),
            bee,
            env,
            _permit: permit,
            deadline: Instant::now() + self.config.query_timeout,
        })
    }

    /// Bee `bee`'s runtime for one query: the query's memory pool and the bee's spill space.
    fn runtime_of(&self, bee: usize, pool: &Arc<dyn MemoryPool>) -> Result<Arc<RuntimeEnv>> {
        let mut env = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .with_object_store_registry(self.object_stores.clone());
        env.disk_manager = Some(self.disk_of(bee)?);
        Ok(env.build_arc()?)
    }

    /// Bee `bee`'s spill space: a directory of its own under the scratch root (DataFusion's
    /// `.tmp…`), made the first time the bee works and removed when the pool and the last query
    /// runtime holding it are dropped. Several nodes may share one scratch root.
    fn disk_of(&self, bee: usize) -> Result<Arc<DiskManager>> {
        // Held while the directory is made (once per bee), so a bee never gets two.
        let mut slot = self.slots[bee].lock().expect("bee slot");
        if let Some(d) = &slot.disk {
            return Ok(d.clone());
        }
        std::fs::create_dir_all(&self.config.scratch_root).map_err(|e| {
            Error::Internal(format!(
                "creating scratch directory {}: {e}",
                self.config.scratch_root.display()
            ))
        })?;
        let per_bee = self.config.spill_limit / self.config.bees as u64;
        let mode = match per_bee {
            0 => DiskManagerMode::Disabled,
            _ => DiskManagerMode::Directories(vec![self.config.scratch_root.clone()]),
        };
        let disk = Arc::new(
            DiskManagerBuilder::default()
                .with_mode(mode)
                .with_max_temp_directory_size(per_bee)
                .build()?,
        );
        slot.disk = Some(disk.clone());
        Ok(disk)
    }
}

/// A bee held by one query. Dropping it frees the bee.
#[derive(Debug)]
pub struct BeeLease {
    pool: Arc<BeePool>,
    bee: usize,
    env: Arc<RuntimeEnv>,
    _permit: OwnedSemaphorePermit,
    deadline: Instant,
}

impl BeeLease {
    pub fn bee(&self) -> usize {
        self.bee
    }

    /// The runtime (memory pool, scratch space, object stores) the query must run with.
    pub fn env(&self) -> &Arc<RuntimeEnv> {
        &self.env
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Reword a memory error so that it names the budget.
    pub fn explain(&self, e: Error) -> Error {
        (self.explainer())(e)
    }

    /// [`BeeLease::explain`] as a function that outlives the lease (for result streams).
    pub fn explainer(&self) -> impl Fn(Error) -> Error + Send + Sync + 'static {
        let per_bee = self.pool.per_bee;
        let budget = self.pool.config.memory_budget;
        let bees = self.pool.slots.len();
        move |e| match e {
            // (A bound on what a function generates says its own, `engine::bounded`, and so
            // does a refusal to spill, `error::spill_refused`.)
            Error::ResourceExhausted(msg)
                if !msg.contains(GENERATED_BOUND) && !msg.contains(crate::error::SPILL_FLAG) =>
            {
                Error::ResourceExhausted(format!(
                    "query needs more memory than its bee's budget of {} (node budget {} over {bees} bees): {msg}",
                    human_bytes(per_bee),
                    human_bytes(budget),
                ))
            }
            other => other,
        }
    }
}

impl Drop for BeeLease {
    fn drop(&mut self) {
        {
            let mut slot = self.pool.slots[self.bee].lock().expect("bee slot");
            slot.query_id = None;
            slot.pool = None;
        }
        self.pool.temperature();
    }
}

/// How the bound on what one function call may generate is named in its error (values a
/// function generates are allocated outside the memory pool).
pub(crate) const GENERATED_BOUND: &str = "the most one function call may generate";

/// Rows per batch for a bee of `budget` bytes: 8192 from 256 MiB up, halving with the budget down
/// to 1024. Operators that cannot spill (merges, hash tables) hold a few batches per input; small
/// bees need small batches to sort and merge within budget.
pub fn batch_size_for(budget: u64) -> usize {
    let target = (budget / (32 * 1024)).clamp(1024, 8192) as usize;
    // Round down to a power of two.
    1 << (usize::BITS - 1 - target.leading_zeros())
}

/// `1.5 GiB`-style sizes for messages.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::object_store::DefaultObjectStoreRegistry;

    fn pool(bees: usize, queue: usize) -> (Arc<BeePool>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (
            BeePool::new(
                BeeConfig {
                    bees,
                    memory_budget: 64 << 20,
                    queue_depth: queue,
                    query_timeout: Duration::from_secs(60),
                    scratch_root: dir.path().to_path_buf(),
                    spill_limit: 1 << 30,
                },
                Arc::new(DefaultObjectStoreRegistry::new()),
            ),
            dir,
        )
    }

    #[tokio::test]
    async fn leases_divide_memory_and_clean_scratch() {
        let (p, d) = pool(2, 4);
        assert_eq!(p.bee_budget(), 32 << 20);
        let a = p.acquire("a").await.unwrap();
        let b = p.acquire("b").await.unwrap();
        assert_ne!(a.bee(), b.bee());
        assert!(matches!(
            a.env().memory_pool.memory_limit(),
            datafusion::execution::memory_pool::MemoryLimit::Finite(n) if n == 32 << 20
        ));
        // A spill file lives in the bee's own directory until its writer is done with it.
        let spill = a.env().disk_manager.create_tmp_file("test").unwrap();
        let file = spill.path().unwrap().to_path_buf();
        let bee_dir = file.parent().unwrap().to_path_buf();
        assert_eq!(bee_dir.parent().unwrap(), d.path());
        assert!(file.exists());
        assert_eq!(p.load().busy, 2);
        let bee = a.bee();
        drop((spill, a));
        assert!(!file.exists());
        assert_eq!(p.load().busy, 1);
        // The bee's next query spills into the same directory: none is made per query.
        let again = p.acquire("c").await.unwrap();
        assert_eq!(again.bee(), bee);
        let spill = again.env().disk_manager.create_tmp_file("test").unwrap();
        assert_eq!(spill.path().unwrap().parent().unwrap(), bee_dir);
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            2,
            "one directory per bee"
        );
    }

    /// Queries admitted at the same moment each get a bee of their own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_leases_never_share_a_bee() {
        let (p, _d) = pool(3, 1024);
        let running: Arc<Vec<std::sync::atomic::AtomicUsize>> = Arc::new(
            (0..3)
                .map(|_| std::sync::atomic::AtomicUsize::new(0))
                .collect(),
        );
        let tasks: Vec<_> = (0..24)
            .map(|t| {
                let (p, running) = (p.clone(), running.clone());
                crate::executor::spawn(async move {
                    for i in 0..50 {
                        let lease = p.acquire(&format!("q{t}-{i}")).await.unwrap();
                        let on_bee = &running[lease.bee()];
                        assert_eq!(
                            on_bee.fetch_add(1, Ordering::SeqCst),
                            0,
                            "a bee leased twice"
                        );
                        tokio::task::yield_now().await;
                        on_bee.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(p.load().busy, 0);
    }

    #[tokio::test]
    async fn queue_is_fifo_and_bounded() {
        let (p, _d) = pool(1, 1);
        let first = p.acquire("1").await.unwrap();
        let p2 = p.clone();
        let waiter = crate::executor::spawn(async move { p2.acquire("2").await.map(|l| l.bee()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(p.load().queued, 1);
        // The queue holds one: a third is refused, retryably.
        let err = p.acquire("3").await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err}");
        drop(first);
        assert_eq!(waiter.await.unwrap().unwrap(), 0);
        assert_eq!(p.load().queued, 0);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_the_queue() {
        let (p, _d) = pool(1, 4);
        let _held = p.acquire("1").await.unwrap();
        let p2 = p.clone();
        let waiter = crate::executor::spawn(async move { p2.acquire("2").await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(p.load().queued, 1);
        // Dropping the handle aborts the waiter, which leaves the queue.
        drop(waiter);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(p.load().queued, 0);
    }

    #[tokio::test]
    async fn the_critical_band_refuses_work_and_recovers() {
        use datafusion::execution::memory_pool::MemoryConsumer;
        let (p, _d) = pool(1, 1);
        let hog = p.acquire("hog").await.unwrap();
        // The running query holds its whole budget (an unspillable consumer may)...
        let held = MemoryConsumer::new("hog").register(&hog.env().memory_pool);
        held.try_grow(p.bee_budget() as usize).unwrap();
        // ...and one more waits: all bees busy, memory full, queue full.
        let p2 = p.clone();
        let waiter =
            crate::executor::spawn(async move { p2.acquire("waiting").await.map(|l| l.bee()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(p.temperature().band, Band::Critical);
        let err = p.acquire("refused").await.unwrap_err();
        match &err {
            Error::Unavailable(m) => assert!(m.contains("critical") && m.contains("retry"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Load drops: the waiter runs, then new work is accepted again.
        drop(held);
        drop(hog);
        assert_eq!(waiter.await.unwrap().unwrap(), 0);
        assert!(p.temperature().band < Band::Hot);
        let again = p.acquire("again").await.unwrap();
        assert_eq!(again.bee(), 0);
    }

    #[test]
    fn batch_sizes_follow_the_budget() {
        assert_eq!(batch_size_for(6 << 30), 8192);
        assert_eq!(batch_size_for(256 << 20), 8192);
        assert_eq!(batch_size_for(128 << 20), 4096);
        assert_eq!(batch_size_for(100 << 20), 2048);
        assert_eq!(batch_size_for(1 << 20), 1024);
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(128 << 20), "128.0 MiB");
    }
}
