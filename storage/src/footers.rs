//! The node's Parquet metadata cache: each cell's footer (schema, row groups, column statistics,
//! and its page index once a scan has read it) decoded once and kept for every later scan on the
//! node, within a byte bound, least recently used out first.
//!
//! ```text
//!  scan of cell c ──▶ CachedParquetFileReaderFactory ──▶ FooterCache.get(c) ── hit ──▶ decoded footer
//!                                                              │ miss
//!                                                              ▼
//!                                      ranged GETs of c's tail ──▶ decode ──▶ FooterCache.put(c)
//! ```
//!
//! A cell never changes once written (Delta gives new data new file names), so its path is the
//! key; DataFusion also checks the size recorded with the entry. One cache serves every query,
//! bee and frame of the node: without it, each query decoded each footer again, because every
//! bee runs with a runtime environment of its own. Scans planned here get the cache from
//! [`crate::FrameTable`]; plans decoded from another node get it through [`read_footers_through`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{HashMap, TableReference};
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result as DfResult;
use datafusion::execution::cache::cache_manager::{CachedFileMetadataEntry, FileMetadataCache};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::cache::{Cache, CacheEntryInfo};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::ExecutionPlan;
use object_store::path::Path;

/// Default bound of a node's metadata cache.
pub const DEFAULT_METADATA_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Decoded Parquet footers of this node's cells, with hits and misses counted.
pub struct FooterCache {
    inner: DefaultCache<Path, CachedFileMetadataEntry>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What [`FooterCache::stats`] reports (in `system.runtime.node` and `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FooterStats {
    pub entries: u64,
    pub bytes: u64,
    pub limit: u64,
    pub hits: u64,
    pub misses: u64,
}

impl std::fmt::Debug for FooterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FooterCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl FooterCache {
    /// A cache holding at most `limit` bytes of decoded footers; 0 keeps none.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: DefaultCache::new(limit).with_name("apiary_parquet_metadata"),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> FooterStats {
        FooterStats {
            entries: self.inner.len() as u64,
            bytes: self.inner.memory_used() as u64,
            limit: self.inner.cache_limit() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Whether scans should read through the cache at all.
    pub fn enabled(&self) -> bool {
        self.inner.cache_limit() > 0
    }
}

impl Cache<Path, CachedFileMetadataEntry> for FooterCache {
    fn get(&self, key: &Path) -> Option<CachedFileMetadataEntry> {
        let found = self.inner.get(key);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    fn put(&self, key: &Path, value: CachedFileMetadataEntry) -> Option<CachedFileMetadataEntry> {
        self.inner.put(key, value)
    }

    fn remove(&self, k: &Path) -> Option<CachedFileMetadataEntry> {
        self.inner.remove(k)
    }

    fn contains_key(&self, k: &Path) -> bool {
        self.inner.contains_key(k)
    }

    fn len(&self) -> usize {
        self.inner.len()
    }

    fn clear(&self) {
        self.inner.clear()
    }

    fn name(&self) -> String {
        self.inner.name()
    }

    fn cache_limit(&self) -> usize {
        self.inner.cache_limit()
    }

    fn update_cache_limit(&self, limit: usize) {
        self.inner.update_cache_limit(limit)
    }

    fn cache_ttl(&self) -> Option<Duration> {
        self.inner.cache_ttl()
    }

    fn update_cache_ttl(&self, ttl: Option<Duration>) {
        self.inner.update_cache_ttl(ttl)
    }

    fn drop_table_entries(&self, table_ref: &TableReference) -> DfResult<()> {
        self.inner.drop_table_entries(table_ref)
    }

    fn list_entries(&self) -> HashMap<Path, CacheEntryInfo<CachedFileMetadataEntry>> {
        self.inner.list_entries()
    }
}

/// A Parquet source that reads footers through `cache`, with the footer size hint of the
/// session's options (one ranged GET for footer and page index on a miss, not two).
pub(crate) fn cached_source(
    source: ParquetSource,
    cache: &Arc<FooterCache>,
    env: &RuntimeEnv,
    url: &datafusion::execution::object_store::ObjectStoreUrl,
) -> DfResult<ParquetSource> {
    let hint = source.table_parquet_options().global.metadata_size_hint;
    let source = match hint {
        Some(hint) => source.with_metadata_size_hint(hint),
        None => source,
    };
    if !cache.enabled() {
        return Ok(source);
    }
    let store = env.object_store(url)?;
    let cache: Arc<FileMetadataCache> = cache.clone();
    Ok(
        source.with_parquet_file_reader_factory(Arc::new(CachedParquetFileReaderFactory::new(
            store, cache,
        ))),
    )
}

/// `plan` with every Parquet scan that has no reader of its own reading footers through
/// `cache` (for plans decoded from bytes, which do not carry a reader factory).
pub fn read_footers_through(
    plan: Arc<dyn ExecutionPlan>,
    cache: &Arc<FooterCache>,
    env: &RuntimeEnv,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(exec) = node.downcast_ref::<DataSourceExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some((config, parquet)) = exec.downcast_to_file_source::<ParquetSource>() else {
            return Ok(Transformed::no(node));
        };
        if parquet.parquet_file_reader_factory().is_some() {
            return Ok(Transformed::no(node));
        }
        let source = cached_source(parquet.clone(), cache, env, &config.object_store_url)?;
        let config = FileScanConfigBuilder::from(config.clone())
            .with_source(Arc::new(source))
            .build();
        let exec: Arc<dyn ExecutionPlan> =
            Arc::new(exec.clone().with_data_source(Arc::new(config)));
        Ok(Transformed::yes(exec))
    })
    .map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FrameRef, FrameTable, Ident, Lakehouse, LedgerConfig, S3Options, Storage};
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    /// A frame of `cells` cells of 100 rows each, opened with a metadata cache of `limit` bytes.
    async fn frame(dir: &std::path::Path, cells: i64, limit: usize) -> (Lakehouse, FrameTable) {
        let storage = Storage::open(dir.to_str().unwrap(), &S3Options::default()).unwrap();
        let config = LedgerConfig {
            metadata_cache_bytes: limit,
            ..Default::default()
        };
        let lh = Lakehouse::open(storage, config).await.unwrap();
        let name = |s| Ident::parse(s).unwrap();
        let frame = FrameRef::new(name("default"), name("default"), name("f"));
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        if lh.frame(&frame, None).await.is_err() {
            lh.create_frame(&frame, &schema, &[], &[], false)
                .await
                .unwrap();
            for c in 0..cells {
                let snap = lh.frame(&frame, None).await.unwrap();
                let mut w = lh.ledger().writer(&snap).unwrap();
                let rows = Int64Array::from_iter_values(c * 100..(c + 1) * 100);
                w.write(&RecordBatch::try_new(schema.clone(), vec![Arc::new(rows)]).unwrap())
                    .await
                    .unwrap();
                let adds = w.finish().await.unwrap();
                lh.ledger().commit(&snap, adds, false, None).await.unwrap();
            }
        }
        let snap = lh.frame(&frame, None).await.unwrap();
        let table = FrameTable::new(snap, lh.ledger().clone());
        (lh, table)
    }

    async fn sum(ctx: &SessionContext, plan: Arc<dyn ExecutionPlan>) -> i64 {
        let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .unwrap();
        let rows: Vec<_> = batches.iter().filter(|b| b.num_rows() > 0).collect();
        assert_eq!(rows.len(), 1, "{batches:?}");
        let col = rows[0].column(0);
        col.as_any().downcast_ref::<Int64Array>().unwrap().value(0)
    }

    #[tokio::test]
    async fn scans_decode_each_footer_once_and_decoded_plans_join_in() {
        let dir = tempfile::tempdir().unwrap();
        let (lh, table) = frame(dir.path(), 3, DEFAULT_METADATA_CACHE_BYTES).await;
        let ctx = SessionContext::new();
        ctx.register_table("f", Arc::new(table)).unwrap();
        let plan = || async {
            let df = ctx.sql("SELECT sum(v) FROM f").await.unwrap();
            df.create_physical_plan().await.unwrap()
        };
        let footers = lh.ledger().footers();
        assert_eq!(sum(&ctx, plan().await).await, 44_850);
        let first = footers.stats();
        assert_eq!(first.entries, 3);
        assert!(first.misses >= 3 && first.bytes > 0, "{first:?}");
        assert_eq!(sum(&ctx, plan().await).await, 44_850);
        let second = footers.stats();
        assert_eq!(second.misses, first.misses, "{second:?}");
        assert!(second.hits >= first.hits + 3, "{second:?}");

        // A plan without a reader (as one decoded from bytes is) reads through the cache it is
        // given, and one that has a reader keeps it.
        let (_, bare) = frame(dir.path(), 3, 0).await;
        let ctx = SessionContext::new();
        ctx.register_table("f", Arc::new(bare)).unwrap();
        // A plan runs once (its scan hands out its files as it goes): plan each run afresh.
        let bare_plan = || async {
            let df = ctx.sql("SELECT sum(v) FROM f").await.unwrap();
            df.create_physical_plan().await.unwrap()
        };
        let other = Arc::new(FooterCache::new(DEFAULT_METADATA_CACHE_BYTES));
        let env = ctx.runtime_env();
        assert_eq!(sum(&ctx, bare_plan().await).await, 44_850);
        assert_eq!(
            other.stats().entries,
            0,
            "the bare plan read without a cache"
        );
        let joined = read_footers_through(bare_plan().await, &other, &env).unwrap();
        assert_eq!(sum(&ctx, joined).await, 44_850);
        assert_eq!(other.stats().entries, 3);
        let joined = read_footers_through(bare_plan().await, &other, &env).unwrap();
        let again = read_footers_through(joined, &Arc::new(FooterCache::new(0)), &env).unwrap();
        assert_eq!(sum(&ctx, again).await, 44_850);
        assert!(other.stats().hits >= 3, "the reader it had was kept");
    }
}
