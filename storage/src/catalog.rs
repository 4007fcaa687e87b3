//! The namespace — hives, boxes and the frame list — as marker objects in storage.
//!
//! Each hive, box and frame is one small JSON marker created with put-if-absent, so creation is
//! atomic on every backend (including a local directory, which supports create-only but not
//! update-if-match) and a duplicate create is an [`Error::AlreadyExists`]. Listing reads only the
//! markers of what exists now: drops delete markers, so nothing grows with history.
//!
//! Drops and creates of children can race (`DROP BOX b` while another process creates `b.t`).
//! Both sides re-check after acting: a creator whose parent vanished undoes its work and reports
//! the parent missing; a non-cascading drop that finds a child appeared restores its marker and
//! reports the parent not empty. The frame's own data is handled by [`crate::ledger`].

use chrono::{DateTime, Utc};
use object_store::path::Path;

use crate::backend::Storage;
use crate::error::{Error, ObjectKind, Result};
use crate::format::{CreatingV1, MarkerV1, Versioned};
use crate::paths::{self, BoxRef, FrameRef, Ident};

/// The catalog of one storage root.
#[derive(Debug, Clone)]
pub struct Catalog {
    storage: Storage,
}

impl Catalog {
    pub fn new(storage: Storage) -> Self {
        Self { storage }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Make sure `default.default` exists. Idempotent and safe to race.
    pub async fn ensure_defaults(&self) -> Result<()> {
        let hive = Ident::default_hive();
        self.storage
            .put_if_absent(&paths::hive_marker(&hive), MarkerV1::new().encode())
            .await?;
        self.storage
            .put_if_absent(
                &paths::box_marker(&BoxRef::new(hive, Ident::default_box())),
                MarkerV1::new().encode(),
            )
            .await?;
        Ok(())
    }

    // ---- hives -------------------------------------------------------------------------------

    pub async fn hive_exists(&self, hive: &Ident) -> Result<bool> {
        self.storage.exists(&paths::hive_marker(hive)).await
    }

    pub async fn require_hive(&self, hive: &Ident) -> Result<()> {
        if self.hive_exists(hive).await? {
            Ok(())
        } else {
            Err(Error::NotFound {
                kind: ObjectKind::Hive,
                name: hive.to_string(),
            })
        }
    }

    /// Create a hive and its `default` box. Returns `false` if it existed and `if_not_exists`.
    pub async fn create_hive(&self, hive: &Ident, if_not_exists: bool) -> Result<bool> {
        let created = self
            .storage
            .put_if_absent(&paths::hive_marker(hive), MarkerV1::new().encode())
            .await?;
        if !created {
            return if if_not_exists {
                Ok(false)
            } else {
                Err(Error::AlreadyExists {
                    kind: ObjectKind::Hive,
                    name: hive.to_string(),
                })
            };
        }
        // A new hive comes with a `default` box, as a new database comes with a default schema.
        self.storage
            .put_if_absent(
                &paths::box_marker(&BoxRef::new(hive.clone(), Ident::default_box())),
                MarkerV1::new().encode(),
            )
            .await?;
        Ok(true)
    }

    pub async fn list_hives(&self) -> Result<Vec<Ident>> {
        let mut out: Vec<Ident> = self
            .storage
            .list(&paths::hives_prefix())
            .await?
            .iter()
            .filter_map(|m| paths::marker_name(&m.location))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    // ---- boxes -------------------------------------------------------------------------------

    pub async fn box_exists(&self, b: &BoxRef) -> Result<bool> {
        self.storage.exists(&paths::box_marker(b)).await
    }

    pub async fn require_box(&self, b: &BoxRef) -> Result<()> {
        if self.box_exists(b).await? {
            return Ok(());
        }
        if !self.hive_exists(&b.hive).await? {
            return Err(Error::NotFound {
                kind: ObjectKind::Hive,
                name: b.hive.to_string(),
            });
        }
        Err(Error::NotFound {
            kind: ObjectKind::Box,
            name: b.to_string(),
        })
    }

    pub async fn create_box(&self, b: &BoxRef, if_not_exists: bool) -> Result<bool> {
        self.require_hive(&b.hive).await?;
        let key = paths::box_marker(b);
        if !self
            .storage
            .put_if_absent(&key, MarkerV1::new().encode())
            .await?
        {
            return if if_not_exists {
                Ok(false)
            } else {
                Err(Error::AlreadyExists {
                    kind: ObjectKind::Box,
                    name: b.to_string(),
                })
            };
        }
        // The hive may have been dropped while we created the box: undo and report it missing.
        if !self.hive_exists(&b.hive).await? {
            self.storage.delete(&key).await?;
            return Err(Error::NotFound {
                kind: ObjectKind::Hive,
                name: b.hive.to_string(),
            });
        }
        Ok(true)
    }

    /// Boxes of one hive, or of every hive.
    pub async fn list_boxes(&self, hive: Option<&Ident>) -> Result<Vec<BoxRef>> {
        let prefix = match hive {
            Some(h) => paths::boxes_prefix(h),
            None => paths::all_boxes_prefix(),
        };
        let base = paths::all_boxes_prefix();
        let mut out: Vec<BoxRef> = self
            .storage
            .list(&prefix)
            .await?
            .iter()
            .filter_map(|m| {
                let parts = paths::segments_after(&m.location, &base)?;
                let [hive, file] = parts.as_slice() else {
                    return None;
                };
                let (hive, file) = (hive.as_str(), file.as_str());
                let hive = Ident::parse(hive).ok()?;
                let name = Ident::parse(file.strip_suffix(".json")?).ok()?;
                Some(BoxRef::new(hive, name))
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    // ---- frames ------------------------------------------------------------------------------

    /// A frame's marker and when storage wrote it (its clock, the same for every writer);
    /// `None` if the frame does not exist.
    pub(crate) async fn frame_marker_written(
        &self,
        f: &FrameRef,
    ) -> Result<Option<(MarkerV1, DateTime<Utc>)>> {
        match self.storage.get_opt(&paths::frame_marker(f)).await? {
            Some((body, meta)) => Ok(Some((MarkerV1::decode(&body)?, meta.last_modified))),
            None => Ok(None),
        }
    }

    /// Read a frame's marker; `None` if the frame does not exist.
    pub async fn frame_marker(&self, f: &FrameRef) -> Result<Option<MarkerV1>> {
        Ok(self.frame_marker_written(f).await?.map(|(m, _)| m))
    }

    /// Reserve a frame name with `marker` (an external frame's carries its location; a new
    /// table's has its lease put first). `Ok(None)` if the name is taken.
    pub(crate) async fn reserve_frame_as(
        &self,
        f: &FrameRef,
        marker: MarkerV1,
    ) -> Result<Option<MarkerV1>> {
        if self
            .storage
            .put_if_absent(&paths::frame_marker(f), marker.encode())
            .await?
        {
            Ok(Some(marker))
        } else {
            Ok(None)
        }
    }

    /// Remove a frame from the namespace (its data is deleted separately, after this).
    pub(crate) async fn unregister_frame(&self, f: &FrameRef) -> Result<()> {
        self.storage.delete(&paths::frame_marker(f)).await
    }

    /// Frames of one box, sorted by name.
    pub async fn list_frames(&self, b: &BoxRef) -> Result<Vec<Ident>> {
        let base = paths::frames_prefix(b);
        let mut out: Vec<Ident> = self
            .storage
            .list(&base)
            .await?
            .iter()
            // Markers sit right in the box's folder: a key deeper down (put there by hand or
            // by another tool) named a frame nothing could read or drop.
            .filter(|m| paths::segments_after(&m.location, &base).is_some_and(|p| p.len() == 1))
            .filter_map(|m| paths::marker_name(&m.location))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The creation leases in one box (keys), of live, dead and finished creations alike.
    pub(crate) async fn list_leases(&self, b: &BoxRef) -> Result<Vec<Path>> {
        let listed = self.storage.list(&paths::creations_prefix(b)).await?;
        Ok(listed.into_iter().map(|m| m.location).collect())
    }

    /// Every frame of a hive, as (box, frame) pairs.
    pub async fn list_hive_frames(&self, hive: &Ident) -> Result<Vec<FrameRef>> {
        let base = paths::hive_frames_prefix(hive);
        let mut out: Vec<FrameRef> = self
            .storage
            .list(&base)
            .await?
            .iter()
            .filter_map(|m| {
                let parts = paths::segments_after(&m.location, &base)?;
                let [b, file] = parts.as_slice() else {
                    return None;
                };
                let (b, file) = (b.as_str(), file.as_str());
                Some(FrameRef::new(
                    hive.clone(),
                    Ident::parse(b).ok()?,
                    Ident::parse(file.strip_suffix(".json")?).ok()?,
                ))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    // ---- creations ---------------------------------------------------------------------------

    /// Put or renew the lease of `f`'s creation under the marker id `incarnation`.
    pub(crate) async fn renew_creation(&self, f: &FrameRef, incarnation: &str) -> Result<()> {
        let lease = paths::creation_lease(f, incarnation);
        self.storage.put(&lease, CreatingV1::now().encode()).await?;
        Ok(())
    }

    /// When storage last wrote the lease of `f`'s creation under `incarnation` (its clock, the
    /// same for every writer); `None` without a lease (a creator of an older version, or one
    /// that has ended).
    pub(crate) async fn creation_renewed(
        &self,
        f: &FrameRef,
        incarnation: &str,
    ) -> Result<Option<DateTime<Utc>>> {
        let lease = paths::creation_lease(f, incarnation);
        Ok(self
            .storage
            .head_opt(&lease)
            .await?
            .map(|m| m.last_modified))
    }

    /// Delete the lease of `f`'s creation under `incarnation`.
    pub(crate) async fn end_creation(&self, f: &FrameRef, incarnation: &str) -> Result<()> {
        self.remove_lease(&paths::creation_lease(f, incarnation))
            .await
    }

    /// Delete one lease by its key (as [`Catalog::list_leases`] gives it).
    pub(crate) async fn remove_lease(&self, lease: &Path) -> Result<()> {
        self.storage.delete(lease).await
    }

    /// Delete every lease under `prefix` (a dropped frame's, box's or hive's): a creation
    /// still running there ends ABORTED, and its next renewal only puts back a lease that no
    /// marker names. Failures are logged: a lease left only costs listings a read.
    pub(crate) async fn end_creations_under(&self, prefix: &Path) {
        if let Err(e) = self.storage.delete_prefix(prefix).await {
            tracing::warn!(prefix = %prefix, error = %e, "removing creation leases");
        }
    }

    // ---- drops -------------------------------------------------------------------------------

    /// Delete a box marker after checking it is empty. Frames are dropped by the caller when
    /// cascading (see [`crate::Lakehouse::drop_box`]); here `allow_frames` says whether frames
    /// found after the marker is gone are the caller's business.
    pub(crate) async fn remove_box_marker(&self, b: &BoxRef, cascade: bool) -> Result<()> {
        let key = paths::box_marker(b);
        let marker = self.storage.get_opt(&key).await?;
        self.storage.delete(&key).await?;
        if !cascade {
            let frames = self.list_frames(b).await?;
            if !frames.is_empty() {
                // A frame was created while we dropped: put the box back, report it.
                if let Some((body, _)) = marker {
                    self.storage.put_if_absent(&key, body).await?;
                }
                return Err(Error::NotEmpty {
                    kind: ObjectKind::Box,
                    name: b.to_string(),
                    detail: format!("{} frame(s)", frames.len()),
                });
            }
        }
        Ok(())
    }

    pub(crate) async fn remove_hive_marker(&self, hive: &Ident) -> Result<()> {
        self.storage.delete(&paths::hive_marker(hive)).await
    }
}
