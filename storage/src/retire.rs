//! A frame's name used again: the log a drop leaves, and where the next frame of the name
//! begins.
//!
//! A write checks that its frame's name is still the incarnation it read just before it puts
//! its commit (the fence, [`crate::commit_hooks`]), and on one node a drop waits for such a
//! write. A DROP and a complete CREATE of the name on another node can still fall between the
//! check and the put. Had the drop deleted the log, the new frame's log would begin again at
//! version 0, and the late commit would take the version after the one it read there: a commit
//! of the dropped frame in the new frame (rows nobody wrote into it), or past the new log's
//! newest version (a gap: the frame no longer loads). Create-only puts cannot make a put depend
//! on the catalog marker, so the log itself is the fence, as Delta's commit protocol makes it:
//!
//! - A drop keeps the frame's log and ends it with one commit that removes every cell and
//!   records the incarnation as [`RETIRED`] (new metadata); then it deletes the cells.
//! - A create of the name writes its first commit right after the newest one there: a replacing
//!   commit (Delta's `CREATE OR REPLACE`, new metadata again) that records its own incarnation
//!   and the version it begins at (`apiary.since`, [`crate::ledger::SINCE_PROPERTY`]).
//! - A late commit of the dropped frame needs a version that one of those took. Delta's conflict
//!   checker sees the new metadata in it and fails the write; an append, which is rebased over
//!   new metadata of the same shape, fails when the incarnation is no longer the one it read.
//!
//! What a drop leaves reads as a Delta table without rows (its log: the commits since the last
//! checkpoint, and the retiring one). A frame's history, time travel and RESTORE begin at the
//! version it began at.

use deltalake::DeltaTableError;
use deltalake::kernel::Action;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::protocol::DeltaOperation;

use crate::backend::Watermark;
use crate::error::{Error, Result};
use crate::ledger::{INCARNATION_PROPERTY, Ledger, Log};
use crate::paths::{self, FrameRef};

/// The incarnation that a dropped frame's log records in its last commit.
pub(crate) const RETIRED: &str = "retired";

impl Ledger {
    /// Delete what `frame`, of the catalog marker `incarnation`, held once its name has left
    /// the namespace: the objects under its root written before `before` (a
    /// [`crate::backend::Storage::watermark`]) but its log, which stays, ended by a commit that
    /// removes every cell ([`RETIRED`]). The log is never deleted here: one that cannot be
    /// ended (it does not load, or needs a Delta feature delta-rs cannot write) stays as it
    /// is, and the next frame of the name replaces it or, unreadable, begins it again. Returns
    /// how many objects were deleted.
    pub(crate) async fn clear(
        &self,
        frame: &FrameRef,
        incarnation: &str,
        before: Watermark,
    ) -> Result<usize> {
        match self.retire(frame, incarnation).await {
            Ok(_) => {}
            // The name is free already: the drop is done, with a log that a new frame of the
            // name replaces all the same (its first commit has new metadata too).
            Err(
                e
                @ (Error::Delta(_) | Error::Gone(_) | Error::Conflict { .. } | Error::Internal(_)),
            ) => {
                tracing::warn!(frame = %frame, error = %e, "the dropped frame's log was not ended")
            }
            Err(e) => return Err(e),
        }
        self.delete_cells(frame, before).await
    }

    /// Delete the objects under `frame`'s root written before `before` but its log: the cells
    /// of a frame of the name that was dropped (or whose drop was interrupted).
    pub(crate) async fn delete_cells(&self, frame: &FrameRef, before: Watermark) -> Result<usize> {
        let root = paths::frame_root(frame);
        let log = root.clone().join("_delta_log");
        self.storage()
            .delete_prefix_before_but(&root, before, Some(&log))
            .await
    }

    /// End `frame`'s log, of the marker `incarnation`, with one commit at the version after
    /// its newest only, that removes every cell and records the incarnation as [`RETIRED`]:
    /// unless there is none, or it does not load. A log that a frame created under the name
    /// since has taken over is its own, and left as it is.
    async fn retire(&self, frame: &FrameRef, incarnation: &str) -> Result<()> {
        let log_store = self.log_store(frame)?;
        for _ in 0..=self.config().commit_retries.max(3) {
            let state = match self.log_of(frame).await? {
                Log::Loaded(state) => state,
                Log::Missing | Log::Unreadable(_) => return Ok(()),
            };
            // Ended already (by another drop), or begun again by a new frame of the name
            // (on another node, in the moment since this drop freed it). A log of an Apiary
            // that recorded no incarnation is the dropped frame's.
            if Self::incarnation_of(&state).is_some_and(|i| i != incarnation) {
                return Ok(());
            }
            let old = state.metadata();
            let mut configuration = old.configuration().clone();
            configuration.insert(INCARNATION_PROPERTY.to_string(), RETIRED.to_string());
            let metadata = deltalake::kernel::new_metadata(
                state.schema().as_ref(),
                old.partition_columns(),
                configuration,
            )
            .and_then(|m| {
                use deltalake::kernel::MetadataExt;
                m.with_table_id(old.id().to_string())
            })
            .map_err(|e| Error::Internal(format!("ending the log of {frame}: {e}")))?;
            let mut actions = vec![Action::Metadata(metadata)];
            actions.extend(
                state
                    .log_data()
                    .iter()
                    .map(|f| Action::Remove(f.remove_action(true))),
            );
            // At the next version only: rebased over a commit that landed meanwhile, the
            // retiring commit would leave that commit's cells in place.
            let next = crate::commit_hooks::only_at(log_store.clone(), state.version() + 1);
            let committed = CommitBuilder::from(CommitProperties::default())
                .with_actions(actions)
                .build(
                    Some(&*state),
                    next,
                    DeltaOperation::Delete { predicate: None },
                )
                .await;
            match committed {
                // Known as it now stands: the next create of the name reads it.
                Ok(finalized) => {
                    self.keep_log(frame, &finalized.snapshot());
                    return Ok(());
                }
                Err(DeltaTableError::Transaction {
                    source:
                        TransactionError::CommitConflict(_)
                        | TransactionError::VersionAlreadyExists(_)
                        | TransactionError::MaxCommitAttempts(_),
                }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict {
            frame: frame.to_string(),
            detail: "it was written all the while its log was being ended".into(),
        })
    }

    /// Whether `frame`'s newest metadata records the catalog marker `incarnation`.
    pub(crate) async fn log_is_of(&self, frame: &FrameRef, incarnation: &str) -> Result<bool> {
        Ok(match self.log_of(frame).await? {
            Log::Loaded(state) => Self::incarnation_of(&state) == Some(incarnation),
            Log::Missing | Log::Unreadable(_) => false,
        })
    }

    /// Whether `frame`'s log holds the frame of the catalog marker `incarnation`: its newest
    /// metadata records that incarnation, or none (a frame of an Apiary that recorded none). A
    /// log that does not load counts as held: no creation may take it over.
    pub(crate) async fn log_holds(&self, frame: &FrameRef, incarnation: &str) -> Result<bool> {
        Ok(match self.log_of(frame).await? {
            Log::Missing => false,
            Log::Unreadable(_) => true,
            Log::Loaded(state) => Self::incarnation_of(&state).is_none_or(|i| i == incarnation),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use deltalake::kernel::Add;
    use deltalake::kernel::transaction::CommitConflictError;
    use deltalake::protocol::SaveMode;
    use deltalake::table::state::DeltaTableState;

    use super::*;
    use crate::ledger::storage_trouble;
    use crate::{FrameSnapshot, Ident, Lakehouse, LedgerConfig, S3Options, Storage};

    async fn lakehouse() -> (Lakehouse, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        let lh = Lakehouse::open(storage, LedgerConfig::default())
            .await
            .unwrap();
        (lh, dir)
    }

    fn frame() -> FrameRef {
        let name = |n: &str| Ident::parse(n).unwrap();
        FrameRef::new(name("default"), name("default"), name("t"))
    }

    fn schema(data_type: DataType) -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("v", data_type, true)]))
    }

    async fn create(lh: &Lakehouse, data_type: DataType) -> FrameSnapshot {
        lh.create_frame(&frame(), &schema(data_type), &[], &[], false)
            .await
            .unwrap()
            .unwrap()
    }

    /// Cells of one row `v` written for `snap`, not committed.
    async fn cells(lh: &Lakehouse, snap: &FrameSnapshot, v: i64) -> Vec<Add> {
        let mut w = lh.ledger().writer(snap).unwrap();
        let column = Arc::new(Int64Array::from(vec![v]));
        w.write(&RecordBatch::try_new(schema(DataType::Int64), vec![column]).unwrap())
            .await
            .unwrap();
        w.finish().await.unwrap()
    }

    async fn append(lh: &Lakehouse, v: i64) -> i64 {
        let snap = lh.frame(&frame(), None).await.unwrap();
        let adds = cells(lh, &snap, v).await;
        lh.ledger().commit(&snap, adds, false, None).await.unwrap()
    }

    fn parquet_files(dir: &tempfile::TempDir) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo = vec![dir.path().to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else if p.extension().is_some_and(|x| x == "parquet")
                    && !p.to_string_lossy().contains("_delta_log")
                {
                    out.push(p.to_string_lossy().into_owned());
                }
            }
        }
        out
    }

    /// A write whose fence check passed before a drop on another node, and whose commit is put
    /// after that drop (and a create of the name), fails: the version it takes holds new
    /// metadata, the drop's or the new frame's first. Before, the drop deleted the log, the new
    /// frame's began again at version 0, and the late commit landed in it, past its newest
    /// version (a gap: the frame no longer loaded) or right after it (rows nobody wrote there).
    #[tokio::test]
    async fn a_commit_of_a_dropped_frame_never_lands_in_the_next_frame_of_its_name() {
        for created_again in [false, true] {
            let (lh, _dir) = lakehouse().await;
            create(&lh, DataType::Int64).await;
            append(&lh, 1).await;
            assert_eq!(append(&lh, 2).await, 2);
            let read = lh.frame(&frame(), None).await.unwrap();
            let adds = cells(&lh, &read, 3).await;
            lh.drop_frame(&frame(), false).await.unwrap();
            if created_again {
                create(&lh, DataType::Int64).await;
            }
            // Put as that write puts it once its fence passed: on the frame's plain log store.
            let late = CommitBuilder::default()
                .with_actions(adds.into_iter().map(Action::Add).collect())
                .build(
                    Some(read.delta_state()),
                    lh.ledger().log_store(&frame()).unwrap(),
                    DeltaOperation::Write {
                        mode: SaveMode::Append,
                        partition_by: None,
                        predicate: None,
                    },
                )
                .await;
            assert!(
                matches!(
                    late,
                    Err(DeltaTableError::Transaction {
                        source: TransactionError::CommitConflict(
                            CommitConflictError::MetadataChanged
                        )
                    })
                ),
                "created again: {created_again}; {:?}",
                late.map(|c| c.version())
            );
            if created_again {
                let now = lh.frame(&frame(), None).await.unwrap();
                assert_eq!((now.first_version(), now.version()), (4, 4));
                assert_eq!(now.stats().rows, 0);
            }
        }
    }

    /// A log that storage failed to give (the kernel wraps the store's error in its own) is
    /// not unreadable: nothing is cleared for it.
    #[test]
    fn storage_failing_is_not_an_unreadable_log() {
        for e in [
            DeltaTableError::Generic(
                "Kernel error: Error interacting with object store: Generic S3 error: 503".into(),
            ),
            DeltaTableError::ObjectStore {
                source: object_store::Error::NotFound {
                    path: "t/_delta_log/00000000000000000003.json".into(),
                    source: "gone".into(),
                },
            },
        ] {
            assert!(storage_trouble(&e), "{e}");
        }
        let gap = DeltaTableError::Generic(
            "Kernel error: Generic delta kernel error: Expected contiguous commit files, but \
             found gap"
                .into(),
        );
        assert!(!storage_trouble(&gap));
    }

    /// What a drop leaves reads as a Delta table without rows, and no cell; a frame created
    /// under the name again, in another shape, begins after it, and its history, time travel
    /// and RESTORE stop there.
    #[tokio::test]
    async fn a_frame_created_again_begins_after_the_dropped_frames_log() {
        let (lh, dir) = lakehouse().await;
        create(&lh, DataType::Int64).await;
        append(&lh, 1).await;
        append(&lh, 2).await;
        assert_eq!(parquet_files(&dir).len(), 2);
        lh.drop_frame(&frame(), false).await.unwrap();
        let log_store = lh.ledger().log_store(&frame()).unwrap();
        let left = DeltaTableState::try_new(log_store.as_ref(), None)
            .await
            .unwrap();
        assert_eq!((left.version(), left.log_data().iter().count()), (3, 0));
        assert_eq!(Ledger::incarnation_of(&left), Some(RETIRED));
        assert!(parquet_files(&dir).is_empty(), "{:?}", parquet_files(&dir));

        let now = create(&lh, DataType::Utf8).await;
        assert_eq!((now.first_version(), now.version()), (4, 4));
        assert_eq!(now.schema().field(0).data_type(), &DataType::Utf8);
        let history = lh.ledger().history(&now, 100).await.unwrap();
        let versions: Vec<i64> = history.iter().map(|c| c.version).collect();
        assert_eq!(versions, [4]);
        for v in [1, 3] {
            let old = lh.frame(&frame(), Some(v)).await;
            assert!(
                matches!(&old, Err(Error::NotFound { name, .. }) if name.contains("dropped and created again")),
                "{old:?}"
            );
            let restored = lh.ledger().restore(&now, v, "u").await;
            assert!(
                matches!(restored, Err(Error::NotFound { .. })),
                "{restored:?}"
            );
        }
        // Dropped and created once more: after that log again.
        lh.drop_frame(&frame(), false).await.unwrap();
        assert_eq!(create(&lh, DataType::Int64).await.first_version(), 6);
        assert_eq!(append(&lh, 7).await, 7);
        assert_eq!(lh.frame(&frame(), None).await.unwrap().stats().rows, 1);
    }
}
