//! The objects a cell writer has put, recorded as it puts them, so that a write that ends
//! without committing — failed, or cut short with its future dropped — deletes exactly its own
//! cells and nothing another writer put beside them.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use tracing::warn;

/// The paths a writer has put (or begun to put). Clones share the record.
#[derive(Debug, Clone, Default)]
pub(crate) struct Written(Arc<Mutex<Vec<Path>>>);

impl Written {
    fn record(&self, location: &Path) {
        self.0.lock().expect("written paths").push(location.clone());
    }

    /// Delete every object recorded, through `store` (the store they were put through). One
    /// already gone counts as deleted, so this may run again for a put that landed late.
    pub(crate) async fn delete_from(&self, store: &Arc<dyn ObjectStore>) {
        let paths = self.0.lock().expect("written paths").clone();
        delete_uncommitted(store, paths).await;
    }
}

/// Delete cells that were put and never committed; one already gone counts as deleted, one
/// that cannot be deleted stays as an unreferenced file (for VACUUM).
pub(crate) async fn delete_uncommitted(store: &Arc<dyn ObjectStore>, paths: Vec<Path>) {
    for path in paths {
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => warn!(cell = %path, error = %e, "uncommitted cell left for VACUUM"),
        }
    }
}

/// `inner`, recording into a [`Written`] every path put through it.
#[derive(Debug)]
pub(crate) struct RecordingStore {
    inner: Arc<dyn ObjectStore>,
    written: Written,
}

impl RecordingStore {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, written: Written) -> Self {
        Self { inner, written }
    }
}

impl fmt::Display for RecordingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recording({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for RecordingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        // Recorded first: a put cut short may still land.
        self.written.record(location);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.written.record(location);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.written.record(to);
        self.inner.copy_opts(from, to, options).await
    }
}
