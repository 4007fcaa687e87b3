//! The object-store backend behind a storage root: a local directory, an S3-compatible bucket or
//! process memory, chosen by URL.
//!
//! | URL                         | store                         | notes                            |
//! |-----------------------------|-------------------------------|----------------------------------|
//! | `./dir`, `/abs/dir`, `file://` | `LocalFileSystem`          | directory created if missing     |
//! | `s3://bucket[/prefix]`      | `AmazonS3` (conditional puts) | endpoint/keys from [`S3Options`] |
//! | `memory://[name]`           | `InMemory`, shared by name    | tests                            |
//!
//! Every key below the root goes through [`Storage`], which applies the root prefix, so callers
//! only ever pass keys from [`crate::paths`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use datafusion::execution::object_store::ObjectStoreUrl;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult,
};
use url::Url;

use crate::error::{Error, Result};

/// Connection settings for S3-compatible stores. Unset fields fall back to the standard `AWS_*`
/// environment variables.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// e.g. `http://127.0.0.1:9000`; when set, path-style requests are used.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Allow plain `http://` endpoints (S3-compatible test servers).
    pub allow_http: bool,
}

/// Which backend a storage root lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Local,
    S3,
    Memory,
}

impl BackendKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::S3 => "s3",
            BackendKind::Memory => "memory",
        }
    }
}

/// A storage root: one object store and the prefix inside it that holds everything of ours.
#[derive(Debug, Clone)]
pub struct Storage {
    /// The store at its own root (bucket root, filesystem root, memory root).
    store: Arc<dyn ObjectStore>,
    /// Where our root lives inside `store`.
    prefix: Path,
    /// URL of our root, ending in `/`; frame URLs are joined onto it.
    root_url: Url,
    /// The URL DataFusion resolves `store` by (`file://`, `s3://bucket`, `memory://name`).
    object_store_url: ObjectStoreUrl,
    kind: BackendKind,
    /// The URL as the user gave it, for status output.
    display: String,
    /// Keys in `store` outside the root that external frames may read (`--external-root`).
    external_roots: Vec<Path>,
    /// The root's directory, canonical, on a local root.
    local_dir: Option<PathBuf>,
}

fn memory_stores() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

impl Storage {
    /// Open the storage root named by `url` (see the module docs for the accepted forms).
    pub fn open(url: &str, s3: &S3Options) -> Result<Self> {
        let trimmed = url.trim();
        if trimmed.is_empty() {
            return Err(Error::InvalidArgument("storage URL is empty".into()));
        }
        if let Some(rest) = trimmed.strip_prefix("memory://") {
            return Self::open_memory(rest);
        }
        if trimmed.starts_with("s3://") || trimmed.starts_with("s3a://") {
            return Self::open_s3(trimmed, s3);
        }
        if let Some(rest) = trimmed.strip_prefix("file://") {
            return Self::open_local(PathBuf::from(rest), trimmed);
        }
        if trimmed.contains("://") {
            return Err(Error::InvalidArgument(format!(
                "unsupported storage URL {trimmed:?}: use a directory, file://, s3:// or memory://"
            )));
        }
        Self::open_local(PathBuf::from(trimmed), trimmed)
    }

    fn open_memory(name: &str) -> Result<Self> {
        let name = name.trim_matches('/');
        let name = if name.is_empty() { "default" } else { name };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::InvalidArgument(format!(
                "memory store names use [A-Za-z0-9_-], got {name:?}"
            )));
        }
        let store = memory_stores()
            .lock()
            .expect("memory store registry poisoned")
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(InMemory::new()))
            .clone();
        let base = format!("memory://{name}");
        Ok(Self {
            store,
            prefix: Path::default(),
            root_url: Url::parse(&format!("{base}/")).map_err(url_err)?,
            object_store_url: ObjectStoreUrl::parse(&base)?,
            kind: BackendKind::Memory,
            display: base,
            external_roots: Vec::new(),
            local_dir: None,
        })
    }

    fn open_local(dir: PathBuf, display: &str) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::InvalidArgument(format!(
                "cannot create storage directory {}: {e}",
                dir.display()
            ))
        })?;
        let dir = dir.canonicalize().map_err(|e| {
            Error::InvalidArgument(format!(
                "cannot resolve storage directory {}: {e}",
                dir.display()
            ))
        })?;
        let dir_str = dir
            .to_str()
            .ok_or_else(|| Error::InvalidArgument("storage directory is not valid UTF-8".into()))?;
        let prefix = Path::from_absolute_path(&dir)
            .map_err(|e| Error::InvalidArgument(format!("storage directory {dir_str}: {e}")))?;
        let mut root_url = Url::from_directory_path(&dir)
            .map_err(|_| Error::InvalidArgument(format!("storage directory {dir_str}")))?;
        if !root_url.path().ends_with('/') {
            root_url.set_path(&format!("{}/", root_url.path()));
        }
        // Cleaning up empty directories keeps a dropped frame from leaving a tree of them behind.
        let store = Arc::new(LocalFileSystem::new().with_automatic_cleanup(true));
        Ok(Self {
            store,
            prefix,
            root_url,
            object_store_url: ObjectStoreUrl::local_filesystem(),
            kind: BackendKind::Local,
            display: display.to_string(),
            external_roots: Vec::new(),
            local_dir: Some(dir),
        })
    }

    fn open_s3(url: &str, opts: &S3Options) -> Result<Self> {
        let parsed = Url::parse(url).map_err(url_err)?;
        let bucket = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| Error::InvalidArgument(format!("{url}: missing bucket name")))?
            .to_string();
        let prefix_str = parsed.path().trim_matches('/').to_string();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
        if let Some(endpoint) = &opts.endpoint {
            builder = builder
                .with_endpoint(endpoint.trim_end_matches('/'))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(region) = &opts.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &opts.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &opts.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &opts.session_token {
            builder = builder.with_token(token);
        }
        if opts.allow_http {
            builder = builder.with_allow_http(true);
        }
        let store = builder
            .build()
            .map_err(|e| Error::InvalidArgument(format!("S3 storage {url}: {e}")))?;
        let base = format!("s3://{bucket}");
        let root_url = if prefix_str.is_empty() {
            format!("{base}/")
        } else {
            format!("{base}/{prefix_str}/")
        };
        Ok(Self {
            store: Arc::new(store),
            prefix: Path::from(prefix_str),
            root_url: Url::parse(&root_url).map_err(url_err)?,
            object_store_url: ObjectStoreUrl::parse(&base)?,
            kind: BackendKind::S3,
            display: url.to_string(),
            external_roots: Vec::new(),
            local_dir: None,
        })
    }

    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The directory of a local root (what a node may watch for changes); `None` for other
    /// backends.
    pub fn local_dir(&self) -> Option<PathBuf> {
        self.local_dir.clone()
    }

    /// The URL as given by the user.
    pub fn display_url(&self) -> &str {
        &self.display
    }

    /// The store at its own root; keys for it must be built with [`Storage::absolute`].
    pub fn raw_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where the root lives inside [`Storage::raw_store`].
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// An object-store registry for the query engine that reaches this root and nothing else
    /// (see [`crate::confine`]).
    pub fn confined_registry(&self) -> crate::confine::RootRegistry {
        let store = crate::confine::ConfinedStore::new(self.store.clone(), self.prefix.clone())
            .with_read_only(self.external_roots.clone());
        let store = match self.kind {
            BackendKind::Local => store.on_local_filesystem(),
            BackendKind::S3 | BackendKind::Memory => store,
        };
        crate::confine::RootRegistry::new(self.object_store_url.as_ref(), Arc::new(store))
    }

    /// Allow external frames to read under `roots` too (`--external-root`): directories for a
    /// local root, `s3://<the root's bucket>/<prefix>` for an S3 root. Nothing is ever written
    /// there.
    pub fn with_external_roots(mut self, roots: &[String]) -> Result<Self> {
        for r in roots {
            let key = self.key_of(r, true).map_err(|e| match e {
                Error::NotAllowed(m) | Error::InvalidArgument(m) => {
                    Error::InvalidArgument(format!("--external-root {r}: {m}"))
                }
                other => other,
            })?;
            self.external_roots.push(key);
        }
        Ok(self)
    }

    /// The key in [`Storage::raw_store`] of the data an external frame names by `location`: a
    /// path relative to the root, or an absolute path or URL under the root or an external root.
    /// Anything else — another bucket, `..`, a symlink out, Apiary's own `_apiary/` objects — is
    /// [`Error::NotAllowed`].
    pub fn external_location(&self, location: &str) -> Result<Path> {
        let key = self.key_of(location, false)?;
        self.check_external_key(&key)?;
        Ok(key)
    }

    /// Whether an external frame may read `key` (checked again on every read: a marker is
    /// only as trustworthy as whoever could write the storage).
    pub fn check_external_key(&self, key: &Path) -> Result<()> {
        let internal = self.absolute(&Path::from(crate::paths::INTERNAL_ROOT));
        let inside_root = key.prefix_matches(&self.prefix);
        if inside_root && key.prefix_matches(&internal) {
            return Err(Error::NotAllowed(format!(
                "{key} holds Apiary's own objects"
            )));
        }
        if inside_root || self.external_roots.iter().any(|r| key.prefix_matches(r)) {
            Ok(())
        } else {
            Err(Error::NotAllowed(format!(
                "/{key} is outside the storage root and every --external-root"
            )))
        }
    }

    /// The store key a location names (not yet checked against the roots). `root` is set for
    /// an operator's `--external-root`, which must be absolute.
    fn key_of(&self, location: &str, root: bool) -> Result<Path> {
        let location = location.trim();
        let bad = |why: &str| Error::NotAllowed(format!("{location}: {why}"));
        let relative = |rel: &str| -> Result<Path> {
            let rel = Path::parse(rel.trim_matches('/'))
                .map_err(|e| bad(&format!("not a plain path ({e})")))?;
            Ok(self.absolute(&rel))
        };
        match self.kind {
            BackendKind::Local => {
                let raw = location.strip_prefix("file://").unwrap_or(location);
                if raw.contains("://") {
                    return Err(bad("a local storage root reads local paths only"));
                }
                let path = if raw.starts_with('/') {
                    PathBuf::from(raw)
                } else if root {
                    return Err(bad("must be an absolute directory"));
                } else {
                    // The key under the root (`..` and empty segments refused), as a path.
                    PathBuf::from(format!("/{}", relative(raw)?.as_ref()))
                };
                // Resolve symlinks and `..` so that the key is where the data really is.
                let real = path
                    .canonicalize()
                    .map_err(|e| Error::InvalidArgument(format!("{location}: {e}")))?;
                Path::from_absolute_path(&real).map_err(|e| bad(&e.to_string()))
            }
            BackendKind::S3 | BackendKind::Memory => {
                let base = self.object_store_url.as_str().trim_end_matches('/');
                match location.strip_prefix(base) {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                        let key = Path::parse(rest.trim_matches('/'))
                            .map_err(|e| bad(&format!("not a plain path ({e})")))?;
                        Ok(key)
                    }
                    _ if location.contains("://") => {
                        Err(bad("another bucket or store than the storage root's"))
                    }
                    _ if root => Err(bad(&format!("must be a URL under {base}/"))),
                    _ => relative(location),
                }
            }
        }
    }

    /// URL of a directory given by its key in [`Storage::raw_store`], with a trailing slash.
    pub fn url_for_key(&self, key: &Path) -> Result<Url> {
        let s = match self.kind {
            BackendKind::Local => format!("file:///{}/", key.as_ref()),
            _ => format!(
                "{}/{}/",
                self.object_store_url.as_str().trim_end_matches('/'),
                key.as_ref()
            ),
        };
        Url::parse(&s).map_err(url_err)
    }

    /// The URL DataFusion must map to [`Storage::raw_store`].
    pub fn object_store_url(&self) -> &ObjectStoreUrl {
        &self.object_store_url
    }

    /// URL of a directory below the root, with a trailing slash (what delta-rs expects).
    pub fn url_for(&self, relative: &Path) -> Result<Url> {
        let mut s = self.root_url.to_string();
        s.push_str(relative.as_ref());
        if !s.ends_with('/') {
            s.push('/');
        }
        Url::parse(&s).map_err(url_err)
    }

    /// The key in [`Storage::raw_store`] of a key relative to our root.
    pub fn absolute(&self, relative: &Path) -> Path {
        if self.prefix.as_ref().is_empty() {
            relative.clone()
        } else {
            Path::from_iter(self.prefix.parts().chain(relative.parts()))
        }
    }

    /// The key relative to our root of a key in [`Storage::raw_store`].
    pub fn relative(&self, absolute: &Path) -> Option<Path> {
        if self.prefix.as_ref().is_empty() {
            return Some(absolute.clone());
        }
        absolute.prefix_match(&self.prefix).map(Path::from_iter)
    }

    /// Create `key` only if it does not exist. `Ok(false)` means somebody else created it first.
    pub async fn put_if_absent(&self, key: &Path, body: Bytes) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.put_with(key, body, opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Unconditional put (the caller owns `key`, e.g. its own heartbeat).
    pub async fn put(&self, key: &Path, body: Bytes) -> Result<PutResult> {
        Ok(self.put_with(key, body, PutOptions::default()).await?)
    }

    /// One put, run again (at most [`LOCAL_PUT_ATTEMPTS`] times) when it lost a race with a
    /// delete in the same directory on a local root ([`lost_dir_race`]).
    async fn put_with(
        &self,
        key: &Path,
        body: Bytes,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let location = self.absolute(key);
        let payload = PutPayload::from_bytes(body);
        let mut attempt = 1;
        loop {
            match self
                .store
                .put_opts(&location, payload.clone(), opts.clone())
                .await
            {
                Err(e) if attempt < LOCAL_PUT_ATTEMPTS && lost_dir_race(&e) => attempt += 1,
                other => return other,
            }
        }
    }

    /// Read a whole (small) object; `Ok(None)` if it does not exist.
    pub async fn get_opt(&self, key: &Path) -> Result<Option<(Bytes, ObjectMeta)>> {
        match self.store.get(&self.absolute(key)).await {
            Ok(res) => {
                let meta = res.meta.clone();
                Ok(Some((res.bytes().await?, meta)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Read `range` of an object; `Ok(None)` if it does not exist.
    pub async fn get_range_opt(
        &self,
        key: &Path,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Bytes>> {
        match self.store.get_range(&self.absolute(key), range).await {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn head_opt(&self, key: &Path) -> Result<Option<ObjectMeta>> {
        match self.store.head(&self.absolute(key)).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn exists(&self, key: &Path) -> Result<bool> {
        Ok(self.head_opt(key).await?.is_some())
    }

    /// Delete `key`; deleting something already gone is not an error (deletes race).
    pub async fn delete(&self, key: &Path) -> Result<()> {
        match self.store.delete(&self.absolute(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every object below `prefix` (recursively), with keys relative to our root.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        let abs = self.absolute(prefix);
        let mut out: Vec<ObjectMeta> = self.store.list(Some(&abs)).try_collect().await?;
        for meta in &mut out {
            meta.location = self.relative(&meta.location).ok_or_else(|| {
                Error::Internal(format!("listed key {} outside root", meta.location))
            })?;
        }
        Ok(out)
    }

    /// The "directories" directly below `prefix` (relative keys), one level deep.
    pub async fn list_dirs(&self, prefix: &Path) -> Result<Vec<Path>> {
        let abs = self.absolute(prefix);
        let listed = self.store.list_with_delimiter(Some(&abs)).await?;
        listed
            .common_prefixes
            .iter()
            .map(|p| {
                self.relative(p)
                    .ok_or_else(|| Error::Internal(format!("listed key {p} outside root")))
            })
            .collect()
    }

    /// Delete every object below `prefix`. Returns how many were deleted.
    pub async fn delete_prefix(&self, prefix: &Path) -> Result<usize> {
        self.delete_prefix_but(prefix, None).await
    }

    /// A time by storage's own clock that every object written before this call began is
    /// older than (its `last_modified` is below it), and no object written after it returned
    /// is. A delete of what is older than it cannot reach objects written meanwhile by another
    /// node, however long the deleting node was held up (a drop paused half way took the cells
    /// of a new frame of the same name).
    ///
    /// The clock is read from a probe object, twice: an object written just before the first
    /// probe can carry the same time (Linux stamps files from a clock of a few milliseconds'
    /// grain; S3 keeps whole seconds), so the watermark is the first later time it shows.
    pub async fn watermark(&self) -> Result<Watermark> {
        let probe = crate::paths::clock_probe();
        let read = async || -> Result<Watermark> {
            self.put(&probe, Bytes::new()).await?;
            let meta = self.head_opt(&probe).await?;
            meta.map(|m| m.last_modified)
                .ok_or_else(|| Error::Internal("a clock probe vanished as it was read".into()))
        };
        let read_twice = async || -> Result<Watermark> {
            let first = read().await?;
            // Waits double: a tick is 1–10 ms on Linux (by its HZ), a second on S3.
            let mut wait = match first.timestamp_subsec_nanos() {
                0 => std::time::Duration::from_secs(1),
                _ => std::time::Duration::from_millis(2),
            };
            for _ in 0..WATERMARK_READS {
                tokio::time::sleep(wait).await;
                wait *= 2;
                let next = read().await?;
                if next > first {
                    return Ok(next);
                }
            }
            Err(Error::Internal(format!(
                "storage's clock stayed at {first} for {WATERMARK_READS} reads"
            )))
        };
        let at = read_twice().await;
        let _ = self.delete(&probe).await;
        at
    }

    /// [`Storage::delete_prefix`] of the objects older than `before` (a [`Storage::watermark`]):
    /// objects written since are someone else's and stay.
    ///
    /// Cells have names of their own, but a log's keys (`_delta_log/00…0.json`) are the same
    /// for every frame of a name: one listed as old may have been written again by a new
    /// creator since. Those are looked at again just before they are deleted.
    pub async fn delete_prefix_before(&self, prefix: &Path, before: Watermark) -> Result<usize> {
        self.delete_prefix_before_but(prefix, before, None).await
    }

    /// [`Storage::delete_prefix_before`], keeping every object under `keep` (a prefix under
    /// `prefix`).
    pub async fn delete_prefix_before_but(
        &self,
        prefix: &Path,
        before: Watermark,
        keep: Option<&Path>,
    ) -> Result<usize> {
        let store = self.store.clone();
        let abs = self.absolute(prefix);
        let keep = keep.map(|k| self.absolute(k));
        let locations = self
            .store
            .list(Some(&abs))
            .try_filter(move |m| {
                let kept = keep.as_ref().is_some_and(|k| m.location.prefix_matches(k));
                futures::future::ready(m.last_modified < before && !kept)
            })
            .try_filter_map(move |m| {
                let store = store.clone();
                async move {
                    if !m.location.as_ref().contains("/_delta_log/") {
                        return Ok(Some(m.location));
                    }
                    match store.head(&m.location).await {
                        Ok(now) if now.last_modified < before => Ok(Some(m.location)),
                        Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .boxed();
        self.delete_located(locations).await
    }

    /// [`Storage::delete_prefix`], keeping the object at `keep` (a key under `prefix`).
    pub async fn delete_prefix_but(&self, prefix: &Path, keep: Option<&Path>) -> Result<usize> {
        let keep = keep.map(|k| self.absolute(k));
        self.delete_matching(prefix, move |m| Some(&m.location) != keep.as_ref())
            .await
    }

    async fn delete_matching(
        &self,
        prefix: &Path,
        wanted: impl Fn(&ObjectMeta) -> bool + Send + 'static,
    ) -> Result<usize> {
        let abs = self.absolute(prefix);
        let locations = self
            .store
            .list(Some(&abs))
            .try_filter(move |m| futures::future::ready(wanted(m)))
            .map_ok(|m| m.location)
            .boxed();
        self.delete_located(locations).await
    }

    async fn delete_located(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> Result<usize> {
        let deleted: Vec<Path> = self
            .store
            .delete_stream(locations)
            .or_else(|e| async move {
                match e {
                    object_store::Error::NotFound { path, .. } => Ok(Path::from(path)),
                    e => Err(e),
                }
            })
            .try_collect()
            .await?;
        Ok(deleted.len())
    }
}

fn url_err(e: url::ParseError) -> Error {
    Error::InvalidArgument(format!("bad storage URL: {e}"))
}

use futures::StreamExt as _;

/// A time by storage's own clock ([`Storage::watermark`]).
pub type Watermark = chrono::DateTime<chrono::Utc>;

/// Reads of storage's clock a watermark waits for it to move on.
const WATERMARK_READS: u32 = 5;

/// Attempts of a put on a local root that lost a race with a delete ([`lost_dir_race`]).
const LOCAL_PUT_ATTEMPTS: u32 = 4;

/// Whether `e` is a put on a local root that lost a race with a delete in the same directory,
/// and wrote nothing.
///
/// The local store removes a directory that a delete leaves empty (automatic cleanup). A put
/// that finds its directory gone creates it again; but when the directory is removed between
/// `mkdir` answering that it exists and the check that it is a directory, the put fails with
/// "Unable to create dir …: File exists" (seen in a swarm test, between a worker deleting the
/// last entry of an inbox and a coordinator posting to it). The put had not opened its file yet,
/// so running it again is safe. A conflict of `put_if_absent` is `AlreadyExists`, never this.
fn lost_dir_race(e: &object_store::Error) -> bool {
    let object_store::Error::Generic {
        store: "LocalFileSystem",
        source,
    } = e
    else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            // Or the parent went between `mkdir` of it and of the put's own directory:
            // "Unable to create dir …: No such file or directory" (a worker deleting the last
            // entry of the last inbox while a coordinator posts to a new one).
            return io.kind() == std::io::ErrorKind::AlreadyExists
                || (io.kind() == std::io::ErrorKind::NotFound
                    && source.to_string().contains("Unable to create dir"));
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw put of `key` is taken for a lost race, and a put through [`Storage`], run again a
    /// bounded number of times, fails with the store's own error. Returns the raw error.
    async fn lost_race_every_time(storage: &Storage, key: &Path) -> object_store::Error {
        let raw = storage
            .store
            .put(&storage.absolute(key), PutPayload::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(lost_dir_race(&raw), "{raw}");
        let err = storage
            .put(key, Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("Unable to create dir"), "{err}");
        raw
    }

    /// The error a put gets when its directory vanishes between `mkdir` and the check that it
    /// is a directory, made to happen every time: the directory is a dangling symbolic link
    /// (`mkdir` says it exists, and it is no directory). The put is recognised as having lost
    /// that race, is tried a bounded number of times, and fails with the store's own error.
    #[tokio::test]
    async fn a_put_that_loses_its_directory_to_a_delete_is_retried_a_bounded_number_of_times() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        std::fs::create_dir(dir.path().join("inbox")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join("inbox/node-2"))
            .unwrap();
        let key = Path::from("inbox/node-2/task.json");
        lost_race_every_time(&storage, &key).await;
        assert!(
            storage
                .put_if_absent(&key, Bytes::from_static(b"{}"))
                .await
                .is_err()
        );
        // Other failures and conflicts are not mistaken for it.
        storage.put(&Path::from("a"), Bytes::new()).await.unwrap();
        let conflict = storage
            .store
            .put_opts(
                &storage.absolute(&Path::from("a")),
                PutPayload::from_static(b"x"),
                PutMode::Create.into(),
            )
            .await
            .unwrap_err();
        assert!(!lost_dir_race(&conflict));
        assert!(
            !storage
                .put_if_absent(&Path::from("a"), Bytes::new())
                .await
                .unwrap()
        );
    }

    /// The other face of that race: the put's parent directory is removed between the `mkdir`
    /// of the parent and of the put's own directory, so the second `mkdir` answers "No such
    /// file or directory". Made to happen every time: the parent is a link to a directory that
    /// is still open but already removed (it is a directory, and nothing can be created in it).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_put_whose_parent_directory_is_removed_under_it_is_retried_a_bounded_number_of_times()
    {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        let removed = dir.path().join("removed");
        std::fs::create_dir(&removed).unwrap();
        let open = std::fs::File::open(&removed).unwrap();
        std::fs::remove_dir(&removed).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&open);
        std::os::unix::fs::symlink(format!("/proc/self/fd/{fd}"), dir.path().join("inbox"))
            .unwrap();
        let key = Path::from("inbox/node-1/task.json");
        let raw = lost_race_every_time(&storage, &key).await;
        assert!(
            raw.to_string().contains("No such file or directory"),
            "{raw}"
        );
        // A read of a missing object is a plain NotFound, never taken for the race.
        let missing = storage
            .store
            .get(&storage.absolute(&Path::from("nothing")))
            .await
            .unwrap_err();
        assert!(!lost_dir_race(&missing));
        drop(open);
    }

    #[test]
    fn external_locations_stay_under_the_allowed_roots() {
        let opts = S3Options {
            endpoint: Some("http://127.0.0.1:1".into()),
            region: Some("us-east-1".into()),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            session_token: None,
            allow_http: true,
        };
        let s = Storage::open("s3://bucket/root", &opts).unwrap();
        let ok = |s: &Storage, l: &str| s.external_location(l).map(|k| k.to_string());
        assert_eq!(ok(&s, "imports/a").unwrap(), "root/imports/a");
        assert_eq!(ok(&s, "s3://bucket/root/imports/").unwrap(), "root/imports");
        for bad in [
            "s3://bucket/elsewhere/x",
            "s3://other/root/x",
            "../x",
            "imports/../../x",
            "_apiary/catalog",
            "s3://bucket/root/_apiary",
            "file:///etc",
        ] {
            assert!(
                matches!(s.external_location(bad), Err(Error::NotAllowed(_))),
                "{bad}: {:?}",
                s.external_location(bad)
            );
        }
        let s = s
            .with_external_roots(&["s3://bucket/shared".to_string()])
            .unwrap();
        assert_eq!(ok(&s, "s3://bucket/shared/x").unwrap(), "shared/x");
        assert!(s.external_location("s3://bucket/sharedx/y").is_err());
        for bad_root in ["s3://other/x", "relative/dir", "/abs"] {
            assert!(
                Storage::open("s3://bucket/root", &opts)
                    .unwrap()
                    .with_external_roots(&[bad_root.to_string()])
                    .is_err(),
                "{bad_root}"
            );
        }
        // The engine's store reads the external root, and writes nothing there.
        let registry = s.confined_registry();
        let store = datafusion::execution::object_store::ObjectStoreRegistry::get_store(
            &registry,
            &Url::parse("s3://bucket/").unwrap(),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(store.put(&Path::from("shared/x"), PutPayload::from_static(b"x")))
            .unwrap_err();
        assert!(
            matches!(err, object_store::Error::PermissionDenied { .. }),
            "{err}"
        );
    }

    #[test]
    fn local_root_urls_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        assert_eq!(s.kind(), BackendKind::Local);
        let url = s.url_for(&Path::from("h/b/f")).unwrap();
        assert!(url.as_str().starts_with("file:///"));
        assert!(url.as_str().ends_with("/h/b/f/"));
        let abs = s.absolute(&Path::from("h/b/f"));
        assert_eq!(s.relative(&abs).unwrap().as_ref(), "h/b/f");
        assert_eq!(s.local_dir(), Some(dir.path().canonicalize().unwrap()));
    }

    #[test]
    fn s3_urls() {
        let s = Storage::open(
            "s3://bucket/some/prefix",
            &S3Options {
                endpoint: Some("http://127.0.0.1:1".into()),
                region: Some("us-east-1".into()),
                access_key_id: Some("x".into()),
                secret_access_key: Some("y".into()),
                allow_http: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.object_store_url().as_str(), "s3://bucket/");
        assert_eq!(
            s.url_for(&Path::from("h/b/f")).unwrap().as_str(),
            "s3://bucket/some/prefix/h/b/f/"
        );
        assert_eq!(s.absolute(&Path::from("k")).as_ref(), "some/prefix/k");
    }

    #[test]
    fn rejects_unknown_schemes() {
        assert!(Storage::open("gopher://x", &S3Options::default()).is_err());
        assert!(Storage::open("", &S3Options::default()).is_err());
    }

    #[tokio::test]
    async fn put_if_absent_on_memory() {
        let s = Storage::open("memory://put_if_absent_test", &S3Options::default()).unwrap();
        let k = Path::from("a/b.json");
        assert!(s.put_if_absent(&k, Bytes::from_static(b"1")).await.unwrap());
        assert!(!s.put_if_absent(&k, Bytes::from_static(b"2")).await.unwrap());
        let (body, _) = s.get_opt(&k).await.unwrap().unwrap();
        assert_eq!(&body[..], b"1");
    }
}
