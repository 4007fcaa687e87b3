//! Log stores that act before each commit they write:
//!
//! - [`only_at`] commits at one version only, for commits that must not be rebased over
//!   another. delta-rs rebases a commit over those that landed since it read the table when its
//!   conflict checker sees no conflict, and it sees none between two compactions that removed
//!   the same cells (their removes change no data). Both then add the rows of those cells again:
//!   two OPTIMIZEs at once turned a frame of 500 rows into one of 2,000. A compaction written
//!   through [`only_at`] fails instead (a `ConcurrentDeleteDelete` conflict) and is planned again.
//! - [`fenced`] commits only while the frame's name is still the incarnation the write read.
//!   A frame dropped while a statement wrote it may be created again under the same name, at
//!   the same path, with a log that starts again at version 0: the write's next version is
//!   free there, and its commit would land in the new frame (another schema, rows nobody
//!   wrote into it). The check reads the catalog marker just before the commit is put; a
//!   drop and a complete re-creation would have to fit between that read and the put. On one
//!   node they cannot: the check and the put hold the frame's [`gate`] for reading, and a
//!   drop removes the name holding it for writing. (A race test on one node met a commit of
//!   the dropped frame landing in the new frame's log, which then had a gap and could not be
//!   read.) Across nodes the window stays.
//! - [`pausing`] is fault injection for Apiary's own crash tests: it pauses before writing a
//!   commit, after the commit's cells are written, so a test can kill the writer exactly there.
//!   Used only when `LedgerConfig::pause_before_commit` is set (a hidden server flag).

use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use deltalake::DeltaResult;
use deltalake::kernel::Version;
use deltalake::kernel::transaction::{CommitConflictError, TransactionError};
use deltalake::logstore::{CommitOrBytes, LogStore, LogStoreConfig, LogStoreRef};
use object_store::ObjectStore;
use object_store::path::Path;
use tracing::warn;

use crate::catalog::Catalog;
use crate::error::{Error, ObjectKind};
use crate::{FrameRef, Storage};
use url::Url;
use uuid::Uuid;

/// `inner`, refusing to write any commit but `version`.
pub(crate) fn only_at(inner: LogStoreRef, version: Version) -> LogStoreRef {
    Arc::new(HookedLogStore {
        inner,
        hook: Hook::OnlyAt(version),
    })
}

/// `frame`'s commit gate in this process: a fenced write holds it for reading from its fence
/// check until its commit is put, and a drop holds it for writing while it removes the name, so
/// no drop on this node falls between a write's check and its put. Frames share 64 gates by
/// the hash of their root; sharing only makes a drop wait for another frame's puts too.
pub(crate) fn gate(storage: &Storage, frame: &FrameRef) -> &'static tokio::sync::RwLock<()> {
    const GATES: usize = 64;
    static ALL: LazyLock<Vec<tokio::sync::RwLock<()>>> =
        LazyLock::new(|| (0..GATES).map(|_| tokio::sync::RwLock::new(())).collect());
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    storage
        .absolute(&crate::paths::frame_root(frame))
        .as_ref()
        .hash(&mut hasher);
    &ALL[(hasher.finish() % GATES as u64) as usize]
}

/// `inner`, writing a commit only while `frame`'s catalog marker is `incarnation`'s.
pub(crate) fn fenced(
    inner: LogStoreRef,
    storage: Storage,
    frame: FrameRef,
    incarnation: String,
) -> LogStoreRef {
    Arc::new(HookedLogStore {
        inner,
        hook: Hook::Fenced(Box::new(Fence {
            gate: gate(&storage, &frame),
            catalog: Catalog::new(storage),
            frame,
            incarnation,
        })),
    })
}

/// `inner`, passing the statement's point of no return before each commit
/// ([`crate::commit_point`]); every log store the ledger makes is one.
pub(crate) fn marked(inner: LogStoreRef) -> LogStoreRef {
    Arc::new(HookedLogStore {
        inner,
        hook: Hook::Marked,
    })
}

/// `inner`, pausing `pause` before writing any commit (a new frame's first carries its cells).
pub(crate) fn pausing(inner: LogStoreRef, pause: Duration) -> LogStoreRef {
    Arc::new(HookedLogStore {
        inner,
        hook: Hook::Pause(pause),
    })
}

enum Hook {
    /// The statement's point of no return ([`crate::commit_point`]), just before the put: the
    /// innermost layer of every log store the ledger makes, under the checks that may refuse.
    Marked,
    OnlyAt(Version),
    Pause(Duration),
    Fenced(Box<Fence>),
}

/// The incarnation of a frame's name a write read.
struct Fence {
    /// Held for reading from the check until the commit is put.
    gate: &'static tokio::sync::RwLock<()>,
    catalog: Catalog,
    frame: FrameRef,
    incarnation: String,
}

impl Fence {
    /// Whether the name is still the write's; the refusal carries the error the writer gets.
    async fn check(&self) -> Result<(), TransactionError> {
        let refused = |e: Error| TransactionError::LogStoreError {
            msg: e.to_string(),
            source: Box::new(e),
        };
        match self.catalog.frame_marker(&self.frame).await {
            Ok(Some(m)) if m.id == self.incarnation => Ok(()),
            Ok(Some(_)) => Err(refused(Error::Conflict {
                frame: self.frame.to_string(),
                detail: "it was dropped and created again while this statement wrote it; \
                         nothing was committed"
                    .into(),
            })),
            Ok(None) => Err(refused(Error::NotFound {
                kind: ObjectKind::Frame,
                name: self.frame.to_string(),
            })),
            Err(e) => Err(refused(e)),
        }
    }
}

struct HookedLogStore {
    inner: LogStoreRef,
    hook: Hook,
}

#[async_trait::async_trait]
impl LogStore for HookedLogStore {
    fn name(&self) -> String {
        self.inner.name()
    }

    async fn refresh(&self) -> DeltaResult<()> {
        self.inner.refresh().await
    }

    async fn read_commit_entry(&self, version: Version) -> DeltaResult<Option<Bytes>> {
        self.inner.read_commit_entry(version).await
    }

    async fn write_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        // A statement stopped (cancelled, past its deadline) before its commit puts none; one
        // that passes here is not stopped until it ends. Passed just before the put (the
        // innermost layer, `Marked`), after the fence and version checks that may refuse it;
        // the fault hook's pause stands for a slow put, so it comes after the point too.
        if matches!(self.hook, Hook::Marked | Hook::Pause(_)) && !crate::commit_point::reached() {
            let stopped = "the statement was stopped before its commit; nothing was committed";
            return Err(TransactionError::LogStoreError {
                msg: stopped.into(),
                source: Box::new(Error::Gone(stopped.into())),
            });
        }
        let _held = match &self.hook {
            Hook::Marked => None,
            Hook::Pause(pause) => {
                warn!(?pause, version, "fault injection: pausing before commit");
                tokio::time::sleep(*pause).await;
                None
            }
            Hook::OnlyAt(only) if version != *only => {
                return Err(TransactionError::CommitConflict(
                    CommitConflictError::ConcurrentDeleteDelete,
                ));
            }
            Hook::Fenced(fence) => {
                let held = fence.gate.read().await;
                fence.check().await?;
                Some(held)
            }
            _ => None,
        };
        self.inner
            .write_commit_entry(version, commit_or_bytes, operation_id)
            .await
    }

    async fn abort_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        self.inner
            .abort_commit_entry(version, commit_or_bytes, operation_id)
            .await
    }

    async fn get_latest_version(&self, start_version: Version) -> DeltaResult<Version> {
        let latest = self.inner.get_latest_version(start_version).await;
        if let (Err(_), Hook::Fenced(fence)) = (&latest, &self.hook) {
            // A log that is gone (its frame dropped): say so, rather than "invalid version".
            fence.check().await?;
        }
        latest
    }

    fn object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.object_store(operation_id)
    }

    fn root_object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.root_object_store(operation_id)
    }

    fn to_uri(&self, location: &Path) -> String {
        self.inner.to_uri(location)
    }

    fn root_url(&self) -> &Url {
        self.inner.root_url()
    }

    fn log_path(&self) -> &Path {
        self.inner.log_path()
    }

    fn config(&self) -> &LogStoreConfig {
        self.inner.config()
    }
}
