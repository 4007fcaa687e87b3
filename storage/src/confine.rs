//! What the query engine may reach: the storage root and nothing else.
//!
//! DataFusion resolves every file a plan names through an object-store registry. The engine and
//! the workers get a [`RootRegistry`], which knows one store — the root's, wrapped in a
//! [`ConfinedStore`] — and refuses every other URL. The confined store in turn refuses any path
//! outside the root's prefix (on a local root the underlying store is the whole filesystem, so
//! this is what keeps `/etc/passwd` out of reach). Nothing a plan, a ticket or a storage object
//! says can make the engine read or write outside the root.

use std::fmt;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreRegistry;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use url::Url;

/// What a [`ShortObject`] says after its path.
pub const SHORT_OBJECT: &str = "holds fewer bytes than recorded";

/// A read that returned fewer bytes than it asked for: the object is shorter than what refers
/// to it says (a cell whose recorded size is more than it holds).
#[derive(Debug, thiserror::Error)]
#[error("{path} {SHORT_OBJECT}: asked for {asked:?}, got {got:?}")]
pub struct ShortObject {
    pub path: String,
    pub asked: std::ops::Range<u64>,
    pub got: std::ops::Range<u64>,
}

/// An object store that serves only paths under `prefix`, plus reads (never writes) under the
/// external roots an operator allowed (`--external-root`).
#[derive(Debug)]
pub struct ConfinedStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    read_only: Vec<Path>,
    /// Keys are paths of this local filesystem (mapped to files as it maps them), where a
    /// symlink may lead elsewhere.
    local: Option<object_store::local::LocalFileSystem>,
}

impl ConfinedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        Self {
            inner,
            prefix,
            read_only: Vec::new(),
            local: None,
        }
    }

    /// Keys are local paths: a read goes where the path really leads, symlinks resolved, and
    /// must stay inside too. A listing of an external directory found a symlink to a file
    /// outside every root, and a query read it.
    pub fn on_local_filesystem(mut self) -> Self {
        self.local = Some(object_store::local::LocalFileSystem::new());
        self
    }

    /// Also serve reads under each of `prefixes`.
    pub fn with_read_only(mut self, prefixes: Vec<Path>) -> Self {
        self.read_only = prefixes;
        self
    }

    /// A write (or delete) target: under the root only.
    fn check(&self, location: &Path) -> Result<()> {
        if location.prefix_matches(&self.prefix) {
            Ok(())
        } else {
            Err(outside(location))
        }
    }

    /// A read: under the root or an allowed external root.
    fn check_read(&self, location: &Path) -> Result<()> {
        let allowed = |key: &Path| {
            key.prefix_matches(&self.prefix) || self.read_only.iter().any(|p| key.prefix_matches(p))
        };
        if !allowed(location) {
            return Err(outside(location));
        }
        // Roots are canonical paths; what does not exist (yet) is the inner store's to report.
        if let Some(fs) = &self.local
            && let Ok(real) = fs.path_to_filesystem(location).and_then(|p| {
                std::fs::canonicalize(p).map_err(|e| object_store::Error::Generic {
                    store: "local",
                    source: Box::new(e),
                })
            })
            && !Path::from_absolute_path(&real).is_ok_and(|real| allowed(&real))
        {
            return Err(object_store::Error::PermissionDenied {
                path: location.to_string(),
                source: "a symlink that leads outside the storage root and every \
                         --external-root"
                    .into(),
            });
        }
        Ok(())
    }

    /// A listing prefix: `None` (the store's root) means the root's prefix.
    fn list_prefix<'a>(&'a self, prefix: Option<&'a Path>) -> Result<&'a Path> {
        match prefix {
            None => Ok(&self.prefix),
            Some(p) => self.check_read(p).map(|_| p),
        }
    }
}

fn outside(location: &Path) -> object_store::Error {
    object_store::Error::PermissionDenied {
        path: location.to_string(),
        source: "outside the storage root".into(),
    }
}

impl fmt::Display for ConfinedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Confined({}, {})", self.inner, self.prefix)
    }
}

#[async_trait]
impl ObjectStore for ConfinedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.check_read(location)?;
        let asked = match &options.range {
            Some(object_store::GetRange::Bounded(r)) => Some(r.clone()),
            _ => None,
        };
        let got = self.inner.get_opts(location, options).await?;
        // A reader asks for the bytes a file's recorded size says it has; a file cut short (a
        // damaged upload, a truncated copy) returns fewer, and the Parquet reader panicked on
        // them.
        match asked {
            Some(r) if got.range != r => Err(object_store::Error::Generic {
                store: "apiary",
                source: Box::new(ShortObject {
                    path: location.to_string(),
                    asked: r,
                    got: got.range,
                }),
            }),
            _ => Ok(got),
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let prefix = self.prefix.clone();
        let checked = locations
            .map(move |l| match l {
                Ok(p) if p.prefix_matches(&prefix) => Ok(p),
                Ok(p) => Err(outside(&p)),
                Err(e) => Err(e),
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.list_prefix(prefix) {
            Ok(p) => self.inner.list(Some(p)),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.list_prefix(prefix) {
            Ok(p) => self.inner.list_with_offset(Some(p), offset),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let p = self.list_prefix(prefix)?;
        self.inner.list_with_delimiter(Some(p)).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// An object-store registry that knows one URL, the storage root's; every other is refused.
#[derive(Debug)]
pub struct RootRegistry {
    /// `scheme://authority` of the root's store.
    key: String,
    store: RwLock<Arc<dyn ObjectStore>>,
}

fn url_key(url: &Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}

impl RootRegistry {
    /// A registry serving `store` (already confined to the root) at `url`.
    pub fn new(url: &Url, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            key: url_key(url),
            store: RwLock::new(store),
        }
    }
}

impl ObjectStoreRegistry for RootRegistry {
    /// Replacing the root's store (with a caching wrapper, say) is allowed; any other URL is
    /// ignored, so that no plan can name it.
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        if url_key(url) != self.key {
            tracing::warn!(%url, "refusing to register an object store outside the storage root");
            return None;
        }
        let mut slot = self.store.write().expect("registry");
        Some(std::mem::replace(&mut *slot, store))
    }

    fn deregister_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        Err(DataFusionError::Plan(format!(
            "object stores cannot be removed ({url})"
        )))
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        if url_key(url) == self.key {
            Ok(self.store.read().expect("registry").clone())
        } else {
            Err(DataFusionError::Plan(format!(
                "{url} is outside the storage root; only frames can be read or written"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn paths_outside_the_prefix_are_refused() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        inner
            .put(&Path::from("secret/key"), "k".into())
            .await
            .unwrap();
        inner
            .put(&Path::from("root/h/b/f/c.parquet"), "c".into())
            .await
            .unwrap();
        let store = ConfinedStore::new(inner, Path::from("root"));
        assert!(store.get(&Path::from("root/h/b/f/c.parquet")).await.is_ok());
        for bad in ["secret/key", "rootx/a", "other"] {
            let e = store.get(&Path::from(bad)).await.unwrap_err();
            assert!(
                matches!(e, object_store::Error::PermissionDenied { .. }),
                "{bad}"
            );
            assert!(store.put(&Path::from(bad), "x".into()).await.is_err());
        }
        // Listing the store's root lists only the prefix.
        let all: Vec<_> = store.list(None).collect().await;
        assert_eq!(all.len(), 1);
        assert!(
            store
                .list(Some(&Path::from("secret")))
                .collect::<Vec<_>>()
                .await[0]
                .is_err()
        );
    }

    /// On a local root a listing finds symlinks: one that leads outside every root is refused
    /// when read (a query over an external directory read the file it led to).
    #[tokio::test]
    async fn a_symlink_out_of_a_local_root_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let (root, outside) = (base.join("root"), base.join("outside"));
        std::fs::create_dir_all(root.join("imports")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.csv"), "TOP-SECRET").unwrap();
        std::fs::write(root.join("imports/plain.csv"), "ordinary").unwrap();
        std::fs::write(root.join("imports/elsewhere.csv"), "inside").unwrap();
        // Names a store key spells differently from the file's name.
        std::os::unix::fs::symlink(outside.join("secret.csv"), root.join("imports/a%b c.csv"))
            .unwrap();
        std::os::unix::fs::symlink(
            root.join("imports/elsewhere.csv"),
            root.join("imports/inside.csv"),
        )
        .unwrap();
        let key = |p: &std::path::Path| Path::from_absolute_path(p).unwrap();
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
        let store = ConfinedStore::new(inner, key(&root)).on_local_filesystem();
        let listed: Vec<Path> = store
            .list(Some(&key(&root.join("imports"))))
            .map(|m| m.unwrap().location)
            .collect()
            .await;
        assert_eq!(listed.len(), 4, "{listed:?}");
        let mut read = Vec::new();
        for location in &listed {
            match store.get(location).await {
                Ok(r) => read.push(String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap()),
                Err(e) => assert!(
                    matches!(e, object_store::Error::PermissionDenied { .. })
                        && location.as_ref().contains("a%b c"),
                    "{location}: {e}"
                ),
            }
        }
        read.sort();
        assert_eq!(read, ["inside", "inside", "ordinary"]);
        // What does not exist is the store's NotFound, as Delta's log probing expects.
        let missing = store
            .get(&key(&root.join("imports/none.json")))
            .await
            .unwrap_err();
        assert!(
            matches!(missing, object_store::Error::NotFound { .. }),
            "{missing}"
        );
    }

    #[test]
    fn only_the_root_url_resolves() {
        let root = Url::parse("file:///").unwrap();
        let reg = RootRegistry::new(&root, Arc::new(InMemory::new()));
        assert!(
            reg.get_store(&Url::parse("file:///etc/passwd").unwrap())
                .is_ok()
        );
        for other in ["s3://bucket/x", "http://host/x", "memory://m/"] {
            assert!(
                reg.get_store(&Url::parse(other).unwrap()).is_err(),
                "{other}"
            );
        }
        assert!(
            reg.register_store(&Url::parse("s3://evil").unwrap(), Arc::new(InMemory::new()))
                .is_none()
        );
        assert!(reg.get_store(&Url::parse("s3://evil/").unwrap()).is_err());
    }
}
