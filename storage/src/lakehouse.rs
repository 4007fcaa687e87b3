//! [`Lakehouse`]: the catalog and the ledger of one storage root, and the flows that touch both
//! (creating and dropping frames, boxes and hives).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use tracing::{debug, info, warn};

use crate::backend::{Storage, Watermark};
use crate::catalog::Catalog;
use crate::error::{Error, ObjectKind, Result};
use crate::format::{ExternalFormat, ExternalV1, MarkerV1, ViewV1};
use crate::ledger::{FrameSnapshot, Ledger, LedgerConfig};
use crate::paths::{BoxRef, FrameRef, Ident};

/// Catalog + ledger of one storage root.
#[derive(Debug, Clone)]
pub struct Lakehouse {
    storage: Storage,
    catalog: Catalog,
    ledger: Arc<Ledger>,
}

/// What a frame name opens to.
#[derive(Debug)]
pub enum Opened {
    /// A Delta table: one of ours, or an external one (read-only).
    Frame(FrameSnapshot),
    /// External Parquet or CSV files, read in place through DataFusion's listing table.
    Files(ExternalV1),
    /// A view: a stored query.
    View(ViewV1),
}

impl Lakehouse {
    /// Open a storage root, creating `default.default` if it is new.
    pub async fn open(storage: Storage, config: LedgerConfig) -> Result<Self> {
        let catalog = Catalog::new(storage.clone());
        catalog.ensure_defaults().await?;
        Ok(Self {
            ledger: Arc::new(Ledger::new(storage.clone(), config)),
            catalog,
            storage,
        })
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    // ---- frames ------------------------------------------------------------------------------

    pub(crate) async fn undo_create(&self, frame: &FrameRef, incarnation: &str) {
        // Read before the name is freed: what is written after is a new creator's. Without
        // it the name is freed all the same, and the next create clears what stays.
        let before = self.storage.watermark().await;
        if let Err(e) = self.catalog.unregister_frame(frame).await {
            warn!(frame = %frame, error = %e, "undoing frame creation");
        }
        let deleted = match before {
            Ok(before) => self.ledger.clear(frame, incarnation, before).await,
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            warn!(frame = %frame, error = %e, "undoing frame creation");
        }
    }

    /// Drop a frame: it leaves the namespace first, then its cells are deleted (its log stays,
    /// ended), so an interrupted drop leaves an invisible remainder that the next create of the
    /// name clears.
    pub async fn drop_frame(&self, frame: &FrameRef, if_exists: bool) -> Result<bool> {
        self.drop_frame_before(frame, if_exists, None).await
    }

    /// [`Lakehouse::drop_frame`], deleting what is older than `before` (a watermark read
    /// before the frame left the namespace; one for a whole cascade) or, if `None`, than one
    /// read here.
    async fn drop_frame_before(
        &self,
        frame: &FrameRef,
        if_exists: bool,
        before: Option<Watermark>,
    ) -> Result<bool> {
        let marker = self.catalog.frame_marker(frame).await?;
        if marker.as_ref().is_some_and(|m| m.view.is_some()) {
            return Err(Error::InvalidArgument(format!(
                "{frame} is a view, not a table: use DROP VIEW"
            )));
        }
        if marker.is_none() {
            if if_exists {
                return Ok(false);
            }
            self.catalog.require_box(&frame.box_ref()).await?;
            return Err(Error::NotFound {
                kind: ObjectKind::Frame,
                name: frame.to_string(),
            });
        }
        // Only what was written before the name is freed is deleted: a drop held up half way
        // (a paused or partitioned node) otherwise deleted the cells of a frame created under
        // the name meanwhile, page by page as it listed them.
        let before = match before {
            Some(t) => t,
            None => self.storage.watermark().await?,
        };
        let marker = {
            // Never between a write's fence check and its commit on this node: that commit
            // would land in the log of a frame created under the name next. Under the gate,
            // the name is read again: a drop on this node that removed it meanwhile dropped
            // the frame, and this one finds none (both answered OK).
            let _gate = crate::commit_hooks::gate(&self.storage, frame)
                .write()
                .await;
            let Some(marker) = self.catalog.frame_marker(frame).await? else {
                return match if_exists {
                    true => Ok(false),
                    false => Err(Error::NotFound {
                        kind: ObjectKind::Frame,
                        name: frame.to_string(),
                    }),
                };
            };
            self.catalog.unregister_frame(frame).await?;
            marker
        };
        // Its log stays, ended by a commit that removes every cell: a write of the frame that
        // passed its fence on another node fails on it, never landing in a frame created
        // under the name next ([`crate::retire`]).
        let objects = self.ledger.clear(frame, &marker.id, before).await?;
        // A creation dropped before its version 0 leaves no lease behind.
        self.catalog
            .end_creations_under(&crate::paths::creations_of(frame))
            .await;
        info!(frame = %frame, objects, "frame dropped");
        Ok(true)
    }

    /// Drop what `frame` names, a view or a frame, for a `DROP … CASCADE` of its box or hive.
    /// (Dropping only tables, a cascade over a box with a view stopped half done: its tables
    /// gone, its view and box left.)
    /// `before`: a watermark read before any of the cascade's frames left the namespace.
    async fn drop_member(&self, frame: &FrameRef, before: Watermark) -> Result<()> {
        match self.catalog.frame_marker(frame).await? {
            Some(m) if m.view.is_some() => self.catalog.unregister_frame(frame).await,
            Some(_) => self
                .drop_frame_before(frame, true, Some(before))
                .await
                .map(|_| ()),
            None => Ok(()),
        }
    }

    /// Drop every one of `frames` (a cascade), with one watermark for them all: on S3 each
    /// takes a second to read.
    async fn drop_members(&self, frames: &[FrameRef]) -> Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let before = self.storage.watermark().await?;
        for f in frames {
            self.drop_member(f, before).await?;
        }
        Ok(())
    }

    /// Register data in place as a read-only frame (`CREATE EXTERNAL TABLE`). The location was
    /// resolved by [`crate::Storage::external_location`]; it must hold something (a Delta log
    /// for `delta`). Returns `false` if the name is taken and `if_not_exists`.
    pub async fn create_external(
        &self,
        frame: &FrameRef,
        external: ExternalV1,
        if_not_exists: bool,
    ) -> Result<bool> {
        self.catalog.require_box(&frame.box_ref()).await?;
        let key = crate::paths::external_key(&external.location)?;
        self.storage.check_external_key(&key)?;
        let delta = external.format == ExternalFormat::Delta;
        let probe = match delta {
            true => key.clone().join("_delta_log"),
            false => key.clone(),
        };
        let found = self
            .storage
            .raw_store()
            .list(Some(&probe))
            .next()
            .await
            .transpose()?
            .is_some();
        let found = found || (!delta && self.storage.raw_store().head(&key).await.is_ok());
        if !found {
            return Err(Error::NotFound {
                kind: ObjectKind::Frame,
                name: format!(
                    "data for {frame}: nothing at /{probe}{}",
                    if delta {
                        " (a Delta table has a _delta_log directory)"
                    } else {
                        ""
                    }
                ),
            });
        }
        let marker = MarkerV1 {
            external: Some(external),
            ..MarkerV1::new()
        };
        let incarnation = marker.id.clone();
        if self
            .catalog
            .reserve_frame_as(frame, marker)
            .await?
            .is_none()
        {
            return match if_not_exists {
                true => Ok(false),
                false => Err(Error::AlreadyExists {
                    kind: ObjectKind::Frame,
                    name: frame.to_string(),
                }),
            };
        }
        if !self.catalog.box_exists(&frame.box_ref()).await? {
            self.undo_create(frame, &incarnation).await;
            return Err(Error::NotFound {
                kind: ObjectKind::Box,
                name: frame.box_ref().to_string(),
            });
        }
        info!(frame = %frame, "external frame registered");
        Ok(true)
    }

    /// The frame at `version` (latest if `None`): a Delta snapshot (of our own table or an
    /// external one), or the location of external Parquet/CSV files.
    ///
    /// A log that changes under the reader is read again, four times at most: a creation of
    /// the name clears what a drop left of an earlier frame's log before its own version 0,
    /// and a reader that listed those commits found them gone as it read them (a commit not
    /// found, a gap in the versions, no metadata): INTERNAL, for a race the next read does not
    /// see.
    pub async fn open_frame(&self, frame: &FrameRef, version: Option<i64>) -> Result<Opened> {
        let mut pause = Duration::from_millis(20);
        for _ in 1..LOG_READS {
            match self.open_frame_once(frame, version).await {
                Err(Error::Delta(e)) if changed_under_reader(&e) => {
                    debug!(frame = %frame, error = %e, "the log changed while it was read; reading it again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
        self.open_frame_once(frame, version).await
    }

    /// [`Lakehouse::open_frame`], reading the log once.
    async fn open_frame_once(&self, frame: &FrameRef, version: Option<i64>) -> Result<Opened> {
        let Some(marker) = self.catalog.frame_marker(frame).await? else {
            self.catalog.require_box(&frame.box_ref()).await?;
            return Err(Error::NotFound {
                kind: ObjectKind::Frame,
                name: frame.to_string(),
            });
        };
        if let Some(view) = marker.view {
            if version.is_some() {
                return Err(Error::InvalidArgument(format!(
                    "{frame} is a view: it has no versions (time travel the frames it reads)"
                )));
            }
            return Ok(Opened::View(view));
        }
        let external = match marker.external {
            Some(e) if e.format == ExternalFormat::Delta => {
                Some(crate::paths::external_key(&e.location)?)
            }
            Some(e) => {
                self.storage
                    .check_external_key(&crate::paths::external_key(&e.location)?)?;
                if version.is_some() {
                    return Err(Error::InvalidArgument(format!(
                        "{frame} is external {} data: it has no versions",
                        e.format.as_str()
                    )));
                }
                return Ok(Opened::Files(e));
            }
            None => None,
        };
        match self
            .ledger
            .snapshot_in(frame, &marker.id, version, external.as_ref())
            .await
        {
            Ok(s) => Ok(Opened::Frame(s)),
            Err(e) => {
                // Dropped (and perhaps created again) while its log was read: the drop deleted
                // the log under the reader, which saw a gap, a missing commit or no metadata.
                let marker_now = self.catalog.frame_marker(frame).await?;
                if external.is_none() && marker_now.is_none_or(|m| m.id != marker.id) {
                    return Err(Error::NotFound {
                        kind: ObjectKind::Frame,
                        name: format!("{frame} (it was dropped while this statement read it)"),
                    });
                }
                // Registered, but no Delta log (yet): another writer is creating it right now,
                // or its creation was interrupted. Either way there is no frame to read.
                // (Or holding only what a drop of the name left: the log has not begun.)
                let no_log = external.is_none()
                    && (!self.ledger.has_leftovers(frame).await?
                        || !self.ledger.log_began(frame).await?);
                let not_a_table = not_a_table_yet(&e);
                match no_log || not_a_table {
                    true => Err(Error::NotFound {
                        kind: ObjectKind::Frame,
                        name: format!(
                            "{frame} (it is being created, or its creation was interrupted: \
                             retry, or drop and re-create it)"
                        ),
                    }),
                    false => Err(e),
                }
            }
        }
    }

    /// A Delta-backed frame at `version` (latest if `None`); external Parquet/CSV files are
    /// [`Error::NotAllowed`] here (they have no snapshot to write to or describe by version).
    pub async fn frame(&self, frame: &FrameRef, version: Option<i64>) -> Result<FrameSnapshot> {
        match self.open_frame(frame, version).await? {
            Opened::Frame(s) => Ok(s),
            Opened::Files(e) => Err(Error::NotAllowed(format!(
                "{frame} is an external frame over {} files: it is read in place and never \
                 written",
                e.format.as_str()
            ))),
            Opened::View(_) => Err(Error::NotAllowed(format!(
                "{frame} is a view: it has no data of its own"
            ))),
        }
    }

    /// `CREATE [OR REPLACE] VIEW`: store `view` under `frame`'s name. The name is shared with
    /// frames (one marker, created only if absent). Replacing deletes the old view's marker and
    /// creates the new one, so a reader in between finds no view; a frame is never replaced.
    /// Returns `false` if the name is taken and `if_not_exists`.
    pub async fn create_view(
        &self,
        frame: &FrameRef,
        view: ViewV1,
        or_replace: bool,
        if_not_exists: bool,
    ) -> Result<bool> {
        self.catalog.require_box(&frame.box_ref()).await?;
        for _ in 0..8 {
            let marker = MarkerV1 {
                view: Some(view.clone()),
                ..MarkerV1::new()
            };
            if self
                .catalog
                .reserve_frame_as(frame, marker)
                .await?
                .is_some()
            {
                info!(frame = %frame, "view created");
                return Ok(true);
            }
            match self.catalog.frame_marker(frame).await? {
                Some(m) if m.view.is_some() && or_replace => {
                    self.catalog.unregister_frame(frame).await?;
                }
                Some(m) if m.view.is_some() && if_not_exists => return Ok(false),
                Some(m) if m.view.is_none() => {
                    return Err(Error::AlreadyExists {
                        kind: ObjectKind::Frame,
                        name: format!("{frame} (a table, not a view)"),
                    });
                }
                Some(_) => {
                    return Err(Error::AlreadyExists {
                        kind: ObjectKind::Frame,
                        name: format!("view {frame}"),
                    });
                }
                // Dropped meanwhile: try again.
                None => {}
            }
        }
        Err(Error::Conflict {
            frame: frame.to_string(),
            detail: "the view kept changing while it was replaced; retry".into(),
        })
    }

    /// `DROP VIEW`: remove a view (never a frame). Returns `false` if absent and `if_exists`.
    pub async fn drop_view(&self, frame: &FrameRef, if_exists: bool) -> Result<bool> {
        match self.catalog.frame_marker(frame).await? {
            Some(m) if m.view.is_some() => {
                self.catalog.unregister_frame(frame).await?;
                info!(frame = %frame, "view dropped");
                Ok(true)
            }
            Some(_) => Err(Error::InvalidArgument(format!(
                "{frame} is a table, not a view: use DROP TABLE"
            ))),
            None if if_exists => Ok(false),
            None => {
                self.catalog.require_box(&frame.box_ref()).await?;
                Err(Error::NotFound {
                    kind: ObjectKind::Frame,
                    name: format!("view {frame}"),
                })
            }
        }
    }

    // ---- boxes -------------------------------------------------------------------------------

    pub async fn drop_box(&self, b: &BoxRef, if_exists: bool, cascade: bool) -> Result<bool> {
        if b.is_default() {
            return Err(Error::InvalidArgument(
                "default.default always exists and cannot be dropped".into(),
            ));
        }
        if !self.catalog.box_exists(b).await? {
            if if_exists {
                return Ok(false);
            }
            return self.catalog.require_box(b).await.map(|_| false);
        }
        let frames = self.catalog.list_frames(b).await?;
        if !frames.is_empty() && !cascade {
            return Err(Error::NotEmpty {
                kind: ObjectKind::Box,
                name: b.to_string(),
                detail: format!("{} frame(s)", frames.len()),
            });
        }
        let in_box = |names: Vec<Ident>| -> Vec<FrameRef> {
            names
                .into_iter()
                .map(|f| FrameRef::new(b.hive.clone(), b.name.clone(), f))
                .collect()
        };
        self.drop_members(&in_box(frames)).await?;
        self.catalog.remove_box_marker(b, cascade).await?;
        if cascade {
            // Frames created while we dropped (a watermark of their own: they are newer).
            self.drop_members(&in_box(self.catalog.list_frames(b).await?))
                .await?;
        }
        self.catalog
            .end_creations_under(&crate::paths::creations_prefix(b))
            .await;
        info!(box_ = %b, "box dropped");
        Ok(true)
    }

    // ---- hives -------------------------------------------------------------------------------

    /// `CREATE HIVE`. What an interrupted `DROP HIVE … CASCADE` left under the name (it removes
    /// the hive first, then its frames and boxes) is dropped first: the boxes of the old hive
    /// came back in the new one, and `CREATE BOX` of one of their names was ALREADY_EXISTS.
    /// Nothing else can be there: a box is created only in a hive that exists.
    pub async fn create_hive(&self, hive: &Ident, if_not_exists: bool) -> Result<bool> {
        if !self.catalog.hive_exists(hive).await? {
            let frames = self.catalog.list_hive_frames(hive).await?;
            let boxes = self.catalog.list_boxes(Some(hive)).await?;
            if !frames.is_empty() || !boxes.is_empty() {
                warn!(hive = %hive, frames = frames.len(), boxes = boxes.len(), "removing leftovers of an interrupted DROP HIVE");
            }
            self.drop_members(&frames).await?;
            for b in &boxes {
                self.catalog.remove_box_marker(b, true).await?;
            }
        }
        self.catalog.create_hive(hive, if_not_exists).await
    }

    pub async fn drop_hive(&self, hive: &Ident, if_exists: bool, cascade: bool) -> Result<bool> {
        if hive.as_str() == crate::paths::DEFAULT_HIVE {
            return Err(Error::InvalidArgument(
                "the default hive always exists and cannot be dropped".into(),
            ));
        }
        if !self.catalog.hive_exists(hive).await? {
            if if_exists {
                return Ok(false);
            }
            return self.catalog.require_hive(hive).await.map(|_| false);
        }
        let check_empty = |boxes: &[BoxRef], frames: &[FrameRef]| -> Result<()> {
            let extra_boxes = boxes
                .iter()
                .filter(|b| b.name.as_str() != "default")
                .count();
            if cascade || (extra_boxes == 0 && frames.is_empty()) {
                Ok(())
            } else {
                Err(Error::NotEmpty {
                    kind: ObjectKind::Hive,
                    name: hive.to_string(),
                    detail: format!(
                        "{extra_boxes} box(es) besides default, {} frame(s)",
                        frames.len()
                    ),
                })
            }
        };
        let boxes = self.catalog.list_boxes(Some(hive)).await?;
        let frames = self.catalog.list_hive_frames(hive).await?;
        check_empty(&boxes, &frames)?;
        self.catalog.remove_hive_marker(hive).await?;
        // Re-check after the hive is gone: children created meanwhile either undo themselves
        // (they re-check their parent) or, if they finished first, are seen here.
        let boxes = self.catalog.list_boxes(Some(hive)).await?;
        let frames = self.catalog.list_hive_frames(hive).await?;
        if let Err(e) = check_empty(&boxes, &frames) {
            self.catalog.create_hive(hive, true).await?;
            return Err(e);
        }
        self.drop_members(&frames).await?;
        for b in &boxes {
            self.catalog.remove_box_marker(b, true).await?;
        }
        self.catalog
            .end_creations_under(&crate::paths::hive_creations_prefix(hive))
            .await;
        info!(hive = %hive, "hive dropped");
        Ok(true)
    }
}

/// Times [`Lakehouse::open_frame`] reads a log that changes under it (in all: the first read
/// and four more, over 300 ms; on a busy machine a creation clearing a drop's leftovers took
/// longer than three reads' 60 ms).
const LOG_READS: usize = 5;

/// Whether reading a log failed as one does when its commits are deleted while it is read.
fn changed_under_reader(e: &deltalake::DeltaTableError) -> bool {
    const GONE: [&str; 5] = [
        "File not found",
        "No files in log segment",
        "No protocol found",
        "No table metadata",
        "not found: No such file",
    ];
    let text = e.to_string();
    matches!(e, deltalake::DeltaTableError::InvalidVersion(_))
        || GONE.iter().any(|g| text.contains(g))
}

/// Whether opening a registered frame failed because its Delta table is not there (yet): its
/// creator is at work, or its creation was interrupted. delta-kernel says so in text only
/// ("Kernel error: Invalid table location: Path does not exist").
fn not_a_table_yet(e: &Error) -> bool {
    match e {
        Error::Delta(d) => {
            matches!(**d, deltalake::DeltaTableError::NotATable(_))
                || d.to_string().contains("Invalid table location")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FrameRef, Ident, S3Options};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use std::time::Duration;

    async fn lakehouse() -> (Lakehouse, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        (
            Lakehouse::open(storage, LedgerConfig::default())
                .await
                .unwrap(),
            dir,
        )
    }

    fn frame() -> FrameRef {
        FrameRef::new(
            Ident::parse("default").unwrap(),
            Ident::parse("default").unwrap(),
            Ident::parse("t").unwrap(),
        )
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]))
    }

    fn shape() -> crate::shape::NewShape {
        crate::shape::NewShape {
            schema: schema(),
            partition_columns: Vec::new(),
            cluster_by: Vec::new(),
        }
    }

    /// Another writer's creation of `frame()`: reserved now, committed 300 ms after the
    /// returned future starts.
    async fn another_creator(lh: &Lakehouse) -> impl std::future::Future<Output = ()> + '_ {
        let marker = lh
            .catalog
            .reserve_frame_as(&frame(), crate::format::MarkerV1::new())
            .await
            .unwrap()
            .unwrap();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            lh.ledger
                .create_table(&frame(), &marker.id, &shape(), Vec::new())
                .await
                .unwrap();
        }
    }

    /// A create-or-append that finds another writer mid-creation returns once the frame's log
    /// is there, never before: the append that follows can read the frame.
    #[tokio::test]
    async fn create_if_not_exists_waits_for_a_frame_another_writer_is_creating() {
        let (lh, _dir) = lakehouse().await;
        let creator = another_creator(&lh).await;
        let waiter = async {
            let got = lh.create_frame(&frame(), &schema(), &[], &[], true).await;
            assert!(got.unwrap().is_none(), "another writer created it");
            assert!(
                lh.ledger.has_leftovers(&frame()).await.unwrap(),
                "returned before the frame's log existed"
            );
        };
        tokio::join!(creator, waiter);
        // Without `if not exists` it is an error at once, as before.
        let err = lh.create_frame(&frame(), &schema(), &[], &[], false).await;
        assert!(matches!(err, Err(Error::AlreadyExists { .. })));
    }

    /// A frame registered but not created yet (its creator is at work) is not found, not an
    /// internal error.
    #[tokio::test]
    async fn a_frame_mid_creation_is_not_found() {
        let (lh, _dir) = lakehouse().await;
        lh.catalog
            .reserve_frame_as(&frame(), crate::format::MarkerV1::new())
            .await
            .unwrap()
            .unwrap();
        let err = lh.open_frame(&frame(), None).await;
        assert!(matches!(err, Err(Error::NotFound { .. })), "{err:?}");
    }

    /// What delta-rs says of a frame whose directory its creator has not made yet: a reader
    /// racing a CTAS got INTERNAL "Kernel error: Invalid table location: Path does not exist".
    #[test]
    fn a_frame_whose_directory_is_not_there_yet_is_not_a_table_yet() {
        use deltalake::DeltaTableError as D;
        for e in [
            D::NotATable("t".into()),
            // (The kernel's error, as its text reaches us.)
            D::Generic(
                "Kernel error: Invalid table location: Path does not exist: \"/r/t/\"".into(),
            ),
        ] {
            assert!(not_a_table_yet(&Error::Delta(Box::new(e))));
        }
        assert!(!not_a_table_yet(&Error::Delta(Box::new(D::NoSchema))));
    }

    /// A hive re-created after a `DROP HIVE … CASCADE` that died after removing the hive starts
    /// empty: the old boxes and frames are dropped, and their names are free.
    #[tokio::test]
    async fn a_hive_recreated_after_an_interrupted_drop_starts_empty() {
        let (lh, _dir) = lakehouse().await;
        let hive = Ident::parse("h").unwrap();
        let b = BoxRef::new(hive.clone(), Ident::parse("b").unwrap());
        lh.create_hive(&hive, false).await.unwrap();
        lh.catalog.create_box(&b, false).await.unwrap();
        let t = FrameRef::new(hive.clone(), b.name.clone(), Ident::parse("t").unwrap());
        lh.create_frame(&t, &schema(), &[], &[], false)
            .await
            .unwrap();
        // The drop's first step, then the process died.
        lh.catalog.remove_hive_marker(&hive).await.unwrap();
        assert!(lh.create_hive(&hive, false).await.unwrap());
        let boxes: Vec<String> = lh
            .catalog
            .list_boxes(Some(&hive))
            .await
            .unwrap()
            .iter()
            .map(|b| b.name.to_string())
            .collect();
        assert_eq!(boxes, ["default"]);
        assert!(lh.catalog.list_hive_frames(&hive).await.unwrap().is_empty());
        assert!(
            !lh.ledger.log_holds(&t, "").await.unwrap(),
            "its log was ended"
        );
        lh.catalog.create_box(&b, false).await.unwrap();
        let again = lh.create_frame(&t, &schema(), &[], &[], false).await;
        assert_eq!(again.unwrap().unwrap().stats().rows, 0);
    }

    /// When the other writer gives up, a waiting create (with or without `IF NOT EXISTS`)
    /// takes the name and creates the frame, as PostgreSQL's does once the transaction
    /// creating the table rolls back.
    #[tokio::test]
    async fn a_creator_giving_up_leaves_the_name_to_the_waiter() {
        for if_not_exists in [true, false] {
            let (lh, _dir) = lakehouse().await;
            lh.catalog
                .reserve_frame_as(&frame(), crate::format::MarkerV1::new())
                .await
                .unwrap()
                .unwrap();
            let quitter = async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                lh.catalog.unregister_frame(&frame()).await.unwrap();
            };
            let (f, sch) = (frame(), schema());
            let (_, got) =
                tokio::join!(quitter, lh.create_frame(&f, &sch, &[], &[], if_not_exists));
            assert_eq!(got.unwrap().unwrap().version(), 0);
        }
    }

    /// A plain create waiting for another writer that commits is ALREADY_EXISTS.
    #[tokio::test]
    async fn a_plain_create_waits_for_the_creator_and_then_exists() {
        let (lh, _dir) = lakehouse().await;
        let creator = another_creator(&lh).await;
        let (f, sch) = (frame(), schema());
        let (_, err) = tokio::join!(creator, lh.create_frame(&f, &sch, &[], &[], false));
        match err {
            Err(Error::AlreadyExists { name, .. }) => assert!(!name.contains("being created")),
            other => panic!("{other:?}"),
        }
    }

    async fn append(lh: &Lakehouse, v: i64) -> i64 {
        let snap = lh.frame(&frame(), None).await.unwrap();
        let mut w = lh.ledger().writer(&snap).unwrap();
        let column = Arc::new(arrow::array::Int64Array::from(vec![v]));
        w.write(&arrow::array::RecordBatch::try_new(schema(), vec![column]).unwrap())
            .await
            .unwrap();
        let adds = w.finish().await.unwrap();
        lh.ledger().commit(&snap, adds, false, None).await.unwrap()
    }

    /// An append that widens the schema records its columns in its own commit, with its cells;
    /// appends still land past other appends, but never past a change of the frame's shape
    /// (even one hidden behind an append, which a rebase jumps over).
    #[tokio::test]
    async fn a_widening_append_commits_its_columns_with_its_cells() {
        let (lh, _dir) = lakehouse().await;
        lh.create_frame(&frame(), &schema(), &[], &[], false)
            .await
            .unwrap();
        let s0 = lh.frame(&frame(), None).await.unwrap();
        let wide = s0
            .widened(&[Field::new("note", DataType::Utf8, false)])
            .unwrap();
        assert!(
            s0.widened(&[Field::new("V", DataType::Utf8, true)])
                .is_err()
        );
        let cells = |snap: FrameSnapshot, v: i64| {
            let lh = &lh;
            async move {
                let mut w = lh.ledger().writer(&snap).unwrap();
                // v, then text columns.
                let columns: Vec<arrow::array::ArrayRef> = (0..snap.schema().fields().len())
                    .map(|i| -> arrow::array::ArrayRef {
                        match i {
                            0 => Arc::new(arrow::array::Int64Array::from(vec![v])),
                            _ => Arc::new(arrow::array::StringArray::from(vec!["n"])),
                        }
                    })
                    .collect();
                let batch = arrow::array::RecordBatch::try_new(snap.schema().clone(), columns);
                w.write(&batch.unwrap()).await.unwrap();
                w.finish().await.unwrap()
            }
        };
        let adds = cells(wide.clone(), 1).await;
        append(&lh, 2).await;
        // Past another append: committed, the new column nullable, read as NULL before.
        let v = lh.ledger().commit(&wide, adds, false, None).await.unwrap();
        let now = lh.frame(&frame(), None).await.unwrap();
        assert_eq!(now.version(), v);
        assert_eq!(now.schema().fields().len(), 2);
        assert!(now.schema().field(1).is_nullable());
        assert_eq!(now.stats().rows, 2);
        // A plain append that read the old shape, with an append and a change of shape landed
        // since: refused, nothing committed.
        let adds = cells(s0.clone(), 3).await;
        append(&lh, 4).await;
        let err = lh
            .ledger()
            .commit(&s0, adds, false, None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
        let after = lh.frame(&frame(), None).await.unwrap();
        assert_eq!((after.version(), after.stats().rows), (v + 1, 3));
        // New metadata of the same shape (CLUSTER BY, a RESTORE): an append lands past it.
        let adds = cells(after.clone(), 5).await;
        lh.ledger()
            .set_cluster_by(&after, &["v".to_string()], "test")
            .await
            .unwrap();
        lh.ledger().commit(&after, adds, false, None).await.unwrap();
        let last = lh.frame(&frame(), None).await.unwrap();
        assert_eq!(
            (last.stats().rows, last.cluster_by()),
            (4, vec!["v".to_string()])
        );
        // A widening append does not: its metadata would undo the CLUSTER BY.
        let wider = after
            .widened(&[Field::new("w", DataType::Utf8, true)])
            .unwrap();
        let adds = cells(wider.clone(), 6).await;
        let err = lh.ledger().commit(&wider, adds, false, None).await;
        assert!(matches!(err, Err(Error::Conflict { .. })), "{err:?}");
    }

    /// A Delta table another engine wrote at a name's location is never taken for leftovers of
    /// an interrupted drop and deleted: creating the name is refused, the table stays, and the
    /// name is left free.
    #[tokio::test]
    async fn a_create_never_deletes_a_table_another_engine_wrote_at_its_location() {
        let (lh, _dir) = lakehouse().await;
        let v0 = object_store::path::Path::from(
            "default/default/t/_delta_log/00000000000000000000.json",
        );
        let commit = concat!(
            r#"{"protocol":{"minReaderVersion":1,"minWriterVersion":2}}"#,
            "\n",
            r#"{"metaData":{"id":"x","format":{"provider":"parquet","options":{}},"schemaString":"{\"type\":\"struct\",\"fields\":[{\"name\":\"id\",\"type\":\"long\",\"nullable\":true,\"metadata\":{}}]}","partitionColumns":[],"configuration":{},"createdTime":0}}"#,
            "\n"
        );
        lh.storage().put(&v0, commit.into()).await.unwrap();
        for if_not_exists in [false, true] {
            let err = lh
                .create_frame(&frame(), &schema(), &[], &[], if_not_exists)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m.contains("did not create")),
                "{err:?}"
            );
            assert!(lh.storage().get_opt(&v0).await.unwrap().is_some());
            assert!(lh.catalog.frame_marker(&frame()).await.unwrap().is_none());
        }
    }

    /// A write commits only into the frame it read. Dropped meanwhile, its commit is NOT_FOUND;
    /// dropped and created again (with other columns), its commit is refused as a conflict,
    /// and the new frame is untouched: it begins after the dropped frame's log (version 0,
    /// the drop's 1), at 2.
    #[tokio::test]
    async fn a_write_commits_only_into_the_frame_it_read() {
        let other = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, false)]));
        for recreated in [false, true] {
            let (lh, _dir) = lakehouse().await;
            lh.create_frame(&frame(), &schema(), &[], &[], false)
                .await
                .unwrap();
            let snap = lh.frame(&frame(), None).await.unwrap();
            let mut w = lh.ledger().writer(&snap).unwrap();
            let column = Arc::new(arrow::array::Int64Array::from(vec![7]));
            w.write(&arrow::array::RecordBatch::try_new(schema(), vec![column]).unwrap())
                .await
                .unwrap();
            let adds = w.finish().await.unwrap();
            lh.drop_frame(&frame(), false).await.unwrap();
            if recreated {
                lh.create_frame(&frame(), &other, &[], &[], false)
                    .await
                    .unwrap();
            }
            let err = lh.ledger().commit(&snap, adds, false, None).await;
            match (recreated, err) {
                (false, Err(Error::NotFound { .. })) => {}
                (true, Err(Error::Conflict { detail, .. })) => {
                    assert!(detail.contains("dropped and created again"), "{detail}")
                }
                (_, other) => panic!("recreated {recreated}: {other:?}"),
            }
            if recreated {
                let now = lh.frame(&frame(), None).await.unwrap();
                assert_eq!((now.first_version(), now.version()), (2, 2));
                assert_eq!(now.stats().rows, 0);
                assert_eq!(now.schema(), &other);
            }
        }
    }

    /// An UPDATE whose frame is dropped while it runs finds its cells gone: that is the frame
    /// not existing any more (NOT_FOUND), or a new frame of the name to run it against again
    /// (a conflict), never an internal error.
    #[tokio::test]
    async fn a_change_whose_frame_was_dropped_under_it_says_so() {
        let session = datafusion::prelude::SessionContext::new().state();
        for recreated in [false, true] {
            let (lh, _dir) = lakehouse().await;
            lh.create_frame(&frame(), &schema(), &[], &[], false)
                .await
                .unwrap();
            append(&lh, 1).await;
            let snap = lh.frame(&frame(), None).await.unwrap();
            lh.drop_frame(&frame(), false).await.unwrap();
            if recreated {
                lh.create_frame(&frame(), &schema(), &[], &[], false)
                    .await
                    .unwrap();
            }
            let set = vec![("v".to_string(), datafusion::prelude::lit(2i64))];
            let err = lh.ledger().update(&snap, set, None, &session, "u").await;
            match (recreated, err) {
                (false, Err(Error::NotFound { name, .. })) => {
                    assert!(name.contains("dropped while this statement ran"), "{name}")
                }
                (true, Err(Error::Conflict { detail, .. })) => {
                    assert!(detail.contains("dropped and created again"), "{detail}")
                }
                (_, other) => panic!("recreated {recreated}: {:?}", other.map(|c| c.rows)),
            }
        }
    }

    /// On one node a drop never removes a name between a write's fence check and its commit
    /// (held here as that write would hold it): the commit would land in the log of the frame
    /// created under the name next, which then had a gap and could not be read.
    #[tokio::test]
    async fn a_drop_waits_for_a_commit_that_passed_its_fence() {
        let (lh, _dir) = lakehouse().await;
        lh.create_frame(&frame(), &schema(), &[], &[], false)
            .await
            .unwrap();
        let passed = crate::commit_hooks::gate(&lh.storage, &frame())
            .read()
            .await;
        let t = frame();
        let dropping = lh.drop_frame(&t, false);
        tokio::pin!(dropping);
        let waited = tokio::time::timeout(Duration::from_millis(300), &mut dropping).await;
        assert!(waited.is_err(), "the drop did not wait: {waited:?}");
        assert!(
            lh.catalog.frame_marker(&frame()).await.unwrap().is_some(),
            "the name was removed while a commit was on its way"
        );
        drop(passed);
        assert!(dropping.await.unwrap());
        assert!(lh.catalog.frame_marker(&frame()).await.unwrap().is_none());
    }

    /// Of two drops of one frame at once on one node, one drops it and the other finds none
    /// (both answered OK).
    #[tokio::test]
    async fn of_two_drops_of_one_frame_at_once_one_drops_it() {
        let (lh, _dir) = lakehouse().await;
        for _ in 0..5 {
            lh.create_frame(&frame(), &schema(), &[], &[], false)
                .await
                .unwrap();
            let t = frame();
            let (a, b) = tokio::join!(lh.drop_frame(&t, false), lh.drop_frame(&t, false));
            let dropped = [&a, &b].iter().filter(|r| matches!(r, Ok(true))).count();
            let none = [&a, &b]
                .iter()
                .filter(|r| matches!(r, Err(Error::NotFound { .. })))
                .count();
            assert_eq!((dropped, none), (1, 1), "{a:?} {b:?}");
        }
    }

    /// A node that knows a frame's latest state checks only whether the next commit exists; a
    /// commit another node made is seen at once, however many there were.
    #[tokio::test]
    async fn a_latest_read_sees_commits_made_by_another_node() {
        let (a, dir) = lakehouse().await;
        let b = Lakehouse::open(
            Storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap(),
            LedgerConfig::default(),
        )
        .await
        .unwrap();
        a.create_frame(&frame(), &schema(), &[], &[], false)
            .await
            .unwrap();
        let v1 = append(&a, 1).await;
        assert_eq!(a.frame(&frame(), None).await.unwrap().version(), v1);
        assert_eq!(a.frame(&frame(), None).await.unwrap().stats().rows, 1);
        let v2 = append(&b, 2).await;
        assert_eq!(v2, v1 + 1);
        let seen = a.frame(&frame(), None).await.unwrap();
        assert_eq!((seen.version(), seen.stats().rows), (v2, 2));
        append(&b, 3).await;
        let v4 = append(&b, 4).await;
        let seen = a.frame(&frame(), None).await.unwrap();
        assert_eq!((seen.version(), seen.stats().rows), (v4, 4));
        // Unchanged since: the same state again.
        assert_eq!(a.frame(&frame(), None).await.unwrap().version(), v4);
    }
}
