//! The local cell cache: cells (Parquet files) fetched from object storage are kept on local disk,
//! least recently used first out, within a size bound.
//!
//! Cells are immutable — Delta never rewrites a data file in place, new data gets new file names
//! with a UUID — so a cell is keyed by its path; its size is recorded and checked on every hit.
//! The Parquet files of an external table may be rewritten in place, though: every listing and
//! HEAD that passes through names an object's current size and ETag, and a cached copy that
//! differs is dropped (an external table lists its files at every query, so a rewritten file
//! is read anew; it was served stale, and a longer one panicked the Parquet reader). The cache sits in front of the object store that
//! DataFusion scans through ([`CachedStore`]); everything that is not a cell passes through.
//! Hits and misses are counted for metrics, and a Bloom filter of the cached keys travels in the
//! heartbeat so coordinators can send work where the cells already are.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, Result,
};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

/// Bits of the heartbeat's Bloom filter.
const BLOOM_BITS: usize = 4096;
const BLOOM_HASHES: usize = 3;

/// A Bloom filter over cell keys, hex-encoded for heartbeats.
#[derive(Debug, Clone)]
pub struct Bloom {
    bits: Vec<u8>,
}

impl Default for Bloom {
    fn default() -> Self {
        Self {
            bits: vec![0; BLOOM_BITS / 8],
        }
    }
}

impl Bloom {
    fn positions(key: &str) -> [usize; BLOOM_HASHES] {
        let h = Sha256::digest(key.as_bytes());
        let mut out = [0; BLOOM_HASHES];
        for (i, o) in out.iter_mut().enumerate() {
            let v = u32::from_le_bytes([h[4 * i], h[4 * i + 1], h[4 * i + 2], h[4 * i + 3]]);
            *o = v as usize % BLOOM_BITS;
        }
        out
    }

    pub fn insert(&mut self, key: &str) {
        for p in Self::positions(key) {
            self.bits[p / 8] |= 1 << (p % 8);
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        Self::positions(key)
            .iter()
            .all(|p| self.bits[p / 8] & (1 << (p % 8)) != 0)
    }

    pub fn to_hex(&self) -> String {
        if self.bits.iter().all(|b| *b == 0) {
            return String::new();
        }
        apiary_storage::format::hex(&self.bits)
    }

    pub fn from_hex(s: &str) -> Option<Bloom> {
        if s.is_empty() {
            return Some(Bloom::default());
        }
        // A heartbeat is read from storage: anything but exact hex is refused, never sliced.
        if s.len() != BLOOM_BITS / 4 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let bits = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(Bloom { bits })
    }
}

#[derive(Debug)]
struct Entry {
    file: PathBuf,
    size: u64,
    /// The object's ETag when it was fetched, if the store gives one.
    e_tag: Option<String>,
    last_used: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    bytes: u64,
    clock: u64,
    /// Cells evicted because storage deleted them, newest last (at most [`GONE_KEPT`]): a fetch
    /// that began before the delete must not put one back.
    gone: std::collections::VecDeque<String>,
}

/// Deleted cells remembered so that a fetch under way cannot cache them again (cell names are
/// never reused, so the newest few thousand are all that matter).
const GONE_KEPT: usize = 4096;

/// The cache's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

/// Cells on local disk, LRU within `capacity` bytes.
#[derive(Debug)]
pub struct CellCache {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
    /// Cells being fetched now, each behind a gate that later readers of the cell wait on.
    fills: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CellCache {
    pub fn new(dir: PathBuf, capacity: u64) -> std::io::Result<Arc<Self>> {
        // Start empty: a previous process's files are not trusted to be complete.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(Self {
            dir,
            capacity,
            state: Mutex::new(State::default()),
            fills: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }))
    }

    pub fn stats(&self) -> CacheStats {
        let s = self.state.lock().expect("cache");
        CacheStats {
            entries: s.entries.len() as u64,
            bytes: s.bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Bloom filter of the cached cells' paths.
    pub fn bloom(&self) -> Bloom {
        let mut b = Bloom::default();
        for key in self.state.lock().expect("cache").entries.keys() {
            b.insert(key);
        }
        b
    }

    /// Forget the cells at `keys` (object paths, as scans name them) and delete their files:
    /// VACUUM deleted them from storage, so a read must fail as it does on every other node
    /// rather than be served from here, and their space is free at once. Returns how many
    /// were cached.
    pub async fn evict(&self, keys: &[String]) -> usize {
        let mut files = Vec::new();
        {
            let mut s = self.state.lock().expect("cache");
            for key in keys {
                if let Some(e) = s.entries.remove(key) {
                    s.bytes -= e.size;
                    files.push(e.file);
                }
                s.gone.push_back(key.clone());
            }
            let excess = s.gone.len().saturating_sub(GONE_KEPT);
            s.gone.drain(..excess);
        }
        let evicted = files.len();
        let _ = crate::executor::spawn_blocking(move || {
            for f in &files {
                let _ = std::fs::remove_file(f);
            }
        })
        .await;
        evicted
    }

    /// Drop the cached copy of `meta`'s object if the object changed since it was fetched (a
    /// listing or HEAD gives its size and ETag now).
    fn refresh(&self, meta: &ObjectMeta) {
        let key = meta.location.as_ref();
        let stale = {
            let mut s = self.state.lock().expect("cache");
            let changed = s.entries.get(key).is_some_and(|e| {
                let tag =
                    |t: &Option<String>| t.as_deref().map(|t| t.trim_matches('"').to_string());
                e.size != meta.size
                    || (meta.e_tag.is_some()
                        && e.e_tag.is_some()
                        && tag(&e.e_tag) != tag(&meta.e_tag))
            });
            match changed {
                true => s.entries.remove(key).inspect(|e| s.bytes -= e.size),
                false => None,
            }
        };
        if let Some(e) = stale {
            debug!(object = %meta.location, "changed in storage; dropped from the cell cache");
            let _ = std::fs::remove_file(e.file);
        }
    }

    /// The local file and size of a cached cell.
    fn lookup(&self, key: &str) -> Option<(PathBuf, u64)> {
        let mut s = self.state.lock().expect("cache");
        s.clock += 1;
        let clock = s.clock;
        s.entries.get_mut(key).map(|e| {
            e.last_used = clock;
            (e.file.clone(), e.size)
        })
    }

    fn admit(&self, key: String, bytes: &Bytes, e_tag: Option<String>) -> Option<PathBuf> {
        let size = bytes.len() as u64;
        if size > self.capacity / 2 {
            return None;
        }
        let name = apiary_storage::format::hex(&Sha256::digest(key.as_bytes()));
        let file = self.dir.join(&name);
        let tmp = self
            .dir
            .join(format!("{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &file)) {
            warn!(error = %e, "writing to the cell cache");
            let _ = std::fs::remove_file(&tmp);
            return None;
        }
        let mut evicted = Vec::new();
        {
            let mut s = self.state.lock().expect("cache");
            if s.gone.contains(&key) {
                drop(s);
                let _ = std::fs::remove_file(&file);
                return None;
            }
            s.clock += 1;
            let clock = s.clock;
            if let Some(old) = s.entries.insert(
                key,
                Entry {
                    file: file.clone(),
                    size,
                    e_tag,
                    last_used: clock,
                },
            ) {
                s.bytes -= old.size;
            }
            s.bytes += size;
            while s.bytes > self.capacity {
                let Some(victim) = s
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                if let Some(e) = s.entries.remove(&victim) {
                    s.bytes -= e.size;
                    evicted.push(e.file);
                }
            }
        }
        for f in evicted {
            let _ = std::fs::remove_file(f);
        }
        Some(file)
    }
}

fn resolve(range: &GetRange, len: u64) -> Range<u64> {
    match range {
        GetRange::Bounded(r) => r.start.min(len)..r.end.min(len),
        GetRange::Offset(o) => (*o).min(len)..len,
        GetRange::Suffix(n) => len.saturating_sub(*n)..len,
    }
}

/// An object store that serves cells from the [`CellCache`].
#[derive(Debug)]
pub struct CachedStore {
    inner: Arc<dyn ObjectStore>,
    cache: Arc<CellCache>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, cache: Arc<CellCache>) -> Self {
        Self { inner, cache }
    }

    /// The requested range of a cached cell, read from its local file (only that range).
    async fn read_cached(&self, location: &Path, range: Option<&GetRange>) -> Option<GetResult> {
        let (file, size) = self.cache.lookup(location.as_ref())?;
        let r = match range {
            Some(r) => resolve(r, size),
            None => 0..size,
        };
        let want = r.clone();
        let read = crate::executor::spawn_blocking(move || -> std::io::Result<Bytes> {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = std::fs::File::open(&file)?;
            if f.metadata()?.len() != size {
                return Err(std::io::Error::other("cached cell has the wrong size"));
            }
            f.seek(SeekFrom::Start(want.start))?;
            let mut buf = vec![0; (want.end - want.start) as usize];
            f.read_exact(&mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await;
        let body = match read {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                warn!(cell = %location, error = %e, "reading the cell cache; fetching instead");
                return None;
            }
            Err(_) => return None,
        };
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified: chrono::DateTime::<chrono::Utc>::MIN_UTC,
            size,
            e_tag: None,
            version: None,
        };
        Some(GetResult {
            payload: GetResultPayload::Stream(Box::pin(futures::stream::once(
                async move { Ok(body) },
            ))),
            meta,
            range: r,
            attributes: Default::default(),
        })
    }

    /// `listing`, dropping from the cache each object it shows changed.
    fn refreshing(
        &self,
        listing: BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let cache = self.cache.clone();
        Box::pin(futures::StreamExt::inspect(listing, move |m| {
            if let Ok(m) = m {
                cache.refresh(m);
            }
        }))
    }

    fn is_cell(path: &Path) -> bool {
        path.extension() == Some("parquet") && !path.as_ref().contains("_delta_log")
    }
}

impl fmt::Display for CachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CachedStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CachedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let plain = options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none()
            && !options.head;
        if !plain || !Self::is_cell(location) {
            let got = self.inner.get_opts(location, options).await;
            match &got {
                Ok(g) => self.cache.refresh(&g.meta),
                // Deleted in storage (VACUUM on another node): not served from here either.
                Err(object_store::Error::NotFound { .. }) if Self::is_cell(location) => {
                    self.cache.evict(&[location.to_string()]).await;
                }
                Err(_) => {}
            }
            return got;
        }
        let key = location.to_string();
        if let Some(hit) = self.read_cached(location, options.range.as_ref()).await {
            self.cache.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        // One fetch per cell however many partitions miss it at once: the others wait for it
        // and then read from disk.
        let gate = self
            .cache
            .fills
            .lock()
            .expect("cache")
            .entry(key.clone())
            .or_default()
            .clone();
        let _filling = gate.lock().await;
        if let Some(hit) = self.read_cached(location, options.range.as_ref()).await {
            self.cache.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.cache.misses.fetch_add(1, Ordering::Relaxed);
        let fetched = async {
            let whole = self.inner.get(location).await?;
            let meta = whole.meta.clone();
            Ok::<_, object_store::Error>((meta, whole.bytes().await?))
        }
        .await;
        let served = fetched.map(|(meta, bytes)| {
            if bytes.len() as u64 == meta.size {
                self.cache.admit(key.clone(), &bytes, meta.e_tag.clone());
                debug!(cell = %location, size = meta.size, "cached");
            }
            serve_with_meta(meta, bytes, options.range.as_ref())
        });
        // Only now, with the cell on disk, may a new reader stop waiting on this gate.
        self.cache.fills.lock().expect("cache").remove(&key);
        served
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.refreshing(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.refreshing(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let listed = self.inner.list_with_delimiter(prefix).await?;
        for m in &listed.objects {
            self.cache.refresh(m);
        }
        Ok(listed)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn serve_with_meta(meta: ObjectMeta, bytes: Bytes, range: Option<&GetRange>) -> GetResult {
    let r = match range {
        Some(r) => resolve(r, bytes.len() as u64),
        None => 0..bytes.len() as u64,
    };
    let body = bytes.slice(r.start as usize..r.end as usize);
    GetResult {
        payload: GetResultPayload::Stream(Box::pin(futures::stream::once(async move { Ok(body) }))),
        meta,
        range: r,
        attributes: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn cells_are_served_from_disk_after_the_first_read() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cell = Path::from("h/b/f/part-1.parquet");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        inner.put(&cell, data.clone().into()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = CellCache::new(dir.path().join("c"), 1 << 20).unwrap();
        let store = CachedStore::new(inner.clone(), cache.clone());
        let r = store.get_range(&cell, 100..200).await.unwrap();
        assert_eq!(&r[..], &data[100..200]);
        assert_eq!((cache.stats().hits, cache.stats().misses), (0, 1));
        let r = store.get_range(&cell, 9_990..10_000).await.unwrap();
        assert_eq!(&r[..], &data[9_990..]);
        let all = store.get(&cell).await.unwrap().bytes().await.unwrap();
        assert_eq!(all.len(), 10_000);
        assert_eq!((cache.stats().hits, cache.stats().misses), (2, 1));
        assert!(cache.bloom().contains(cell.as_ref()));
        // Non-cells pass through uncached.
        let log = Path::from("h/b/f/_delta_log/00000000000000000000.json");
        inner
            .put(&log, Bytes::from_static(b"{}").into())
            .await
            .unwrap();
        store.get(&log).await.unwrap();
        assert_eq!(cache.stats().entries, 1);
    }

    #[tokio::test]
    async fn a_file_rewritten_in_place_is_read_anew_once_a_listing_shows_it_changed() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let file = Path::from("imports/raw/data.parquet");
        inner.put(&file, vec![1u8; 700].into()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = CellCache::new(dir.path().join("c"), 1 << 20).unwrap();
        let store = CachedStore::new(inner.clone(), cache.clone());
        assert_eq!(store.get(&file).await.unwrap().bytes().await.unwrap()[0], 1);
        let listed = || async {
            let mut l = store.list(Some(&Path::from("imports/raw")));
            while futures::StreamExt::next(&mut l).await.is_some() {}
        };
        // Listed unchanged: still served from the cache.
        listed().await;
        store.get(&file).await.unwrap();
        assert_eq!((cache.stats().hits, cache.stats().entries), (1, 1));
        // Rewritten at the same size, then at another: each listing drops the stale copy.
        for (byte, len) in [(2u8, 700), (3u8, 900)] {
            inner.put(&file, vec![byte; len].into()).await.unwrap();
            listed().await;
            let read = store.get(&file).await.unwrap().bytes().await.unwrap();
            assert_eq!((read[0], read.len()), (byte, len));
        }
        // So does a HEAD.
        inner.put(&file, vec![4u8; 10].into()).await.unwrap();
        store.head(&file).await.unwrap();
        assert_eq!(
            store.get(&file).await.unwrap().bytes().await.unwrap()[..],
            [4u8; 10]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_of_one_cell_fetch_it_once() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cell = Path::from("h/b/f/part-2.parquet");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
        inner.put(&cell, data.clone().into()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = CellCache::new(dir.path().join("c"), 1 << 20).unwrap();
        let store = Arc::new(CachedStore::new(inner, cache.clone()));
        let reads = (0..8u64).map(|i| {
            let (store, cell) = (store.clone(), cell.clone());
            crate::executor::spawn(
                async move { store.get_range(&cell, i * 1000..i * 1000 + 10).await },
            )
        });
        for (i, r) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            let start = i * 1000;
            assert_eq!(&r.unwrap().unwrap()[..], &data[start..start + 10]);
        }
        let s = cache.stats();
        assert_eq!((s.hits, s.misses), (7, 1));
    }

    #[tokio::test]
    async fn eviction_keeps_the_cache_within_its_bound() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let dir = tempfile::tempdir().unwrap();
        let cache = CellCache::new(dir.path().join("c"), 25_000).unwrap();
        let store = CachedStore::new(inner.clone(), cache.clone());
        for i in 0..5 {
            let p = Path::from(format!("t/c{i}.parquet"));
            inner.put(&p, vec![i as u8; 10_000].into()).await.unwrap();
            store.get(&p).await.unwrap().bytes().await.unwrap();
        }
        let s = cache.stats();
        assert!(s.bytes <= 25_000, "{s:?}");
        assert_eq!(s.entries, 2);
        // The most recent stay.
        assert!(cache.bloom().contains("t/c4.parquet"));
    }

    #[tokio::test]
    async fn evicted_cells_are_read_from_storage_again() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let dir = tempfile::tempdir().unwrap();
        let cache = CellCache::new(dir.path().join("c"), 1 << 20).unwrap();
        let store = CachedStore::new(inner.clone(), cache.clone());
        let (a, b) = (Path::from("t/a.parquet"), Path::from("t/b.parquet"));
        for p in [&a, &b] {
            inner.put(p, vec![7u8; 1_000].into()).await.unwrap();
            store.get(p).await.unwrap().bytes().await.unwrap();
        }
        assert_eq!((cache.stats().entries, cache.stats().bytes), (2, 2_000));
        // VACUUM deleted `a` from storage: evicted, a read fails as it does on every node.
        inner.delete(&a).await.unwrap();
        let keys = vec![a.to_string(), "t/never-cached.parquet".to_string()];
        assert_eq!(cache.evict(&keys).await, 1);
        assert_eq!((cache.stats().entries, cache.stats().bytes), (1, 1_000));
        assert!(matches!(
            store.get(&a).await,
            Err(object_store::Error::NotFound { .. })
        ));
        // Its file is gone from the cache directory; `b` is still served from there.
        assert_eq!(std::fs::read_dir(dir.path().join("c")).unwrap().count(), 1);
        store.get(&b).await.unwrap().bytes().await.unwrap();
        assert_eq!(cache.stats().hits, 1);
        // A fetch of `a` that began before the delete cannot cache it again.
        assert!(
            cache
                .admit(a.to_string(), &Bytes::from(vec![7u8; 1_000]), None)
                .is_none()
        );
        assert_eq!(cache.stats().entries, 1);
    }

    #[test]
    fn bloom_round_trips() {
        let mut b = Bloom::default();
        assert_eq!(b.to_hex(), "");
        b.insert("a/b.parquet");
        let h = b.to_hex();
        let back = Bloom::from_hex(&h).unwrap();
        assert!(back.contains("a/b.parquet"));
        assert!(!back.contains("zzz"));
        // Hostile heartbeats: a multi-byte character or the wrong length is refused, not sliced.
        let mut odd = "é".to_string();
        odd.push_str(&"0".repeat(BLOOM_BITS / 4 - 2));
        assert_eq!(odd.len(), BLOOM_BITS / 4);
        assert!(Bloom::from_hex(&odd).is_none());
        assert!(Bloom::from_hex("00").is_none());
    }
}
