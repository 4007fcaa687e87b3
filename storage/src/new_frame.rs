//! Creating a frame with its first rows in one commit.
//!
//! ```text
//!   begin_frame ──put lease, put-if-absent catalog marker──▶ name reserved (unlisted; NOT_FOUND)
//!       │ write_new_frame: cells written under the frame's root, invisible; lease renewed
//!       ▼
//!   version 0 ──put-if-absent _delta_log/0.json (schema, layout, marker id, the cells' adds)──▶ visible
//!       │
//!       ▼ lease deleted
//! ```
//!
//! A `CREATE TABLE … AS SELECT` or a bulk ingest that creates its frame commits the frame's
//! schema and its cells together, so a writer killed at any point leaves either no frame (a
//! reservation without a log, which opens as NOT_FOUND, is not listed, and is taken over once
//! stale, and unreferenced cells) or the whole frame: never an empty frame that the statement
//! did not ask for. The creation lease ([`crate::format::CreatingV1`]) is what keeps a live
//! creation from going stale, however long it writes, and what keeps a name out of listings
//! until its version 0 is there.
//!
//! Only the writer holding the reservation commits version 0, and version 0 records the id of
//! that reservation's marker. So a version 0 always says whose it is: after an unclear commit
//! error, after a takeover (which makes a new marker), and when a creator commits after its
//! frame was dropped and the name reserved again (its version 0 then reads as no frame, and the
//! new holder clears it). A writer that may append and finds the name being created writes its
//! cells at the same time, waits for the holder's version 0, and gets its cells back
//! ([`FirstCommit::Taken`]) to append, replace or delete as its statement says.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use deltalake::kernel::Add;
use object_store::path::Path;
use tracing::{info, warn};

use crate::error::{Error, ObjectKind, Result};
use crate::format::MarkerV1;
use crate::lakehouse::Lakehouse;
use crate::ledger::{Created, FrameSnapshot, Ledger, Log};
use crate::paths::{self, BoxRef, FrameRef, Ident};
use crate::provider::{WriteGate, write_cells};
pub use crate::shape::NewShape;
use crate::written::Written;

/// A reserved frame name whose table never appeared (its creator died) may be taken over once
/// neither its marker nor its creation lease has been written for this long.
pub const STALE_RESERVATION: Duration = Duration::from_secs(60);

/// How long a plain create waits for another writer creating the same name before it is
/// ALREADY_EXISTS: long enough for a creation that was cancelled or failed to give the name up,
/// short enough that a client is not held behind a long `CREATE TABLE … AS SELECT`.
pub const CREATE_WAITS: Duration = Duration::from_secs(10);

/// How often a writer waiting for another's creation looks whether that creator has gone stale
/// ([`STALE_RESERVATION`]), so as to take the name over.
const CREATOR_CHECK: Duration = Duration::from_secs(2);

/// A frame whose name is reserved in the catalog and whose version 0 is not written yet.
#[derive(Debug, Clone)]
pub struct NewFrame {
    frame: FrameRef,
    /// Id of the catalog marker the frame is created under.
    incarnation: String,
    shape: NewShape,
    /// This writer made (or took over) the reservation: if it gives up before version 0, it
    /// removes the name again. A writer that joins another's creation leaves it.
    held: bool,
    /// The stale marker this writer's reservation replaced, if it took one over.
    took_over: Option<MarkerV1>,
    /// The cells this writer has put (clones share it), which a held creation given up before
    /// its version 0 deletes, even when its write was cut short mid-way.
    written: Written,
    /// Set once this writer starts committing version 0 (clones share it): from then on a
    /// write cut short may have committed, and is not given up from outside.
    committing: Arc<AtomicBool>,
    /// Set once this writer ends its creation's lease (clones share it): renewals stop.
    lease_ended: Arc<AtomicBool>,
}

impl NewFrame {
    pub(crate) fn new(frame: &FrameRef, incarnation: String, shape: NewShape, held: bool) -> Self {
        Self {
            frame: frame.clone(),
            incarnation,
            shape,
            held,
            took_over: None,
            written: Written::default(),
            committing: Arc::default(),
            lease_ended: Arc::default(),
        }
    }

    pub fn frame(&self) -> &FrameRef {
        &self.frame
    }

    pub fn shape(&self) -> &NewShape {
        &self.shape
    }

    /// Whether this writer has started committing version 0: a write cut short after this may
    /// have committed, so only its own end (or the stale limit) settles the name.
    pub fn committing(&self) -> bool {
        self.committing.load(Ordering::SeqCst)
    }

    /// `adds` (`rows` rows), written for this frame and not committed.
    fn uncommitted(&self, rows: u64, adds: Vec<Add>) -> Uncommitted {
        Uncommitted {
            frame: self.frame.clone(),
            shape: self.shape.clone(),
            rows,
            adds,
        }
    }
}

/// What a reservation attempt found.
#[derive(Debug)]
pub enum Begun {
    /// The name is ours to create.
    Reserved(NewFrame),
    /// Another writer reserved the name moments ago and has not committed version 0: a writer
    /// that may append can write its cells and race it for version 0.
    BeingCreated(NewFrame),
    /// The frame exists.
    Exists,
}

/// What a writer waiting for another's creation saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaited {
    /// Version 0 is there.
    Committed,
    /// The name is no longer that creation's (given up, dropped, or taken over).
    GaveUp,
    /// Still being created when the wait ran out.
    Pending,
}

/// How a new frame's first commit went.
#[derive(Debug)]
pub enum FirstCommit {
    /// Version 0 holds this write's cells.
    Created { snapshot: FrameSnapshot, rows: u64 },
    /// Another writer created the frame first; these cells are not committed.
    Taken(Uncommitted),
}

/// Cells written for a frame and not committed.
#[derive(Debug)]
pub struct Uncommitted {
    frame: FrameRef,
    shape: NewShape,
    rows: u64,
    adds: Vec<Add>,
}

impl Uncommitted {
    /// The shape the cells were written in.
    pub fn shape(&self) -> &NewShape {
        &self.shape
    }

    /// Commit the cells onto `read`, whose schema and partitioning must be the cells' (an
    /// overwrite replaces its cells; with a reshaped snapshot, its shape too). Returns (rows,
    /// version). When nothing was committed (ABORTED) the cells are deleted.
    pub async fn commit(
        self,
        lakehouse: &Lakehouse,
        read: &FrameSnapshot,
        overwrite: bool,
    ) -> Result<(u64, i64)> {
        let fits = read.schema() == &self.shape.schema
            && read.partition_columns() == self.shape.partition_columns.as_slice();
        if !fits {
            self.discard(lakehouse).await;
            return Err(Error::Conflict {
                frame: read.frame().to_string(),
                detail: "another writer created it meanwhile with other columns or \
                         partitioning than this write's"
                    .into(),
            });
        }
        let ledger = lakehouse.ledger();
        match ledger
            .commit(read, self.adds.clone(), overwrite, None)
            .await
        {
            Ok(version) => Ok((self.rows, version)),
            // A lost race, or a frame dropped meanwhile, commits nothing. Any other error may
            // come after the commit (delta-rs checkpoints after committing): the cells stay,
            // for VACUUM if unreferenced.
            Err(e @ (Error::Conflict { .. } | Error::NotFound { .. })) => {
                self.discard(lakehouse).await;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Delete the cells.
    pub async fn discard(self, lakehouse: &Lakehouse) {
        lakehouse
            .ledger()
            .discard_cells(&self.frame, &self.adds)
            .await;
    }
}

impl Lakehouse {
    /// Create an empty frame. Returns `Ok(None)` if it already exists and `if_not_exists` is
    /// set: then a frame another writer is creating is waited for (a caller that goes on to use
    /// it, create-or-append, finds its log there).
    pub async fn create_frame(
        &self,
        frame: &FrameRef,
        schema: &arrow::datatypes::SchemaRef,
        partition_columns: &[String],
        cluster_by: &[String],
        if_not_exists: bool,
    ) -> Result<Option<FrameSnapshot>> {
        let shape = NewShape {
            schema: schema.clone(),
            partition_columns: partition_columns.to_vec(),
            cluster_by: cluster_by.to_vec(),
        };
        let exists = || {
            if if_not_exists {
                Ok(None)
            } else {
                Err(Error::AlreadyExists {
                    kind: ObjectKind::Frame,
                    name: frame.to_string(),
                })
            }
        };
        let wait = match if_not_exists {
            true => STALE_RESERVATION,
            false => CREATE_WAITS,
        };
        let new = match self.begin_frame_waiting(frame, shape, wait).await? {
            Begun::Reserved(new) => new,
            Begun::Exists => return exists(),
            Begun::BeingCreated(_) if if_not_exists => return Err(still_creating(frame)),
            Begun::BeingCreated(_) => return Err(being_created(frame)),
        };
        match self.first_commit(&new, 0, Vec::new()).await? {
            FirstCommit::Created { snapshot, .. } => Ok(Some(snapshot)),
            FirstCommit::Taken(_) => exists(),
        }
    }

    /// Reserve `frame` for a creation with `shape`, which is checked first. A reservation whose
    /// creator died (older than the stale limit, with no log) is taken over under a new marker
    /// id, so a creator that was only slow finds the name no longer its own; leftovers of an
    /// interrupted drop under a name reserved anew are removed.
    pub async fn begin_frame(&self, frame: &FrameRef, shape: NewShape) -> Result<Begun> {
        self.catalog().require_box(&frame.box_ref()).await?;
        shape.validate()?;
        // The name can be freed (dropped, given up) between a reservation that fails and the
        // read of whose it is: then reserve again, a few times.
        let mut attempts = 0;
        let (marker, written) = loop {
            if let Some(marker) = self.reserve_creation(frame).await? {
                match self.ledger().log_of(frame).await? {
                    Log::Missing => {}
                    // A log that loads and records no incarnation is a Delta table Apiary did
                    // not create (what an interrupted drop of an Apiary frame leaves records
                    // one, or does not load): another engine's, written at the name's
                    // location, never ours to delete.
                    Log::Loaded(state) if Ledger::incarnation_of(&state).is_none() => {
                        self.catalog().unregister_frame(frame).await?;
                        self.end_lease(frame, &marker.id).await;
                        return Err(foreign_table(frame));
                    }
                    // Cells of an earlier frame of this name whose drop was interrupted. Its
                    // log stays: this frame begins after it ([`crate::retire`]).
                    Log::Loaded(_) | Log::Unreadable(_) => {
                        let before = self.storage().watermark().await?;
                        let removed = self.ledger().delete_cells(frame, before).await?;
                        if removed > 0 {
                            warn!(frame = %frame, removed, "removed cells of an interrupted drop");
                        }
                    }
                }
                return Ok(Begun::Reserved(NewFrame::new(
                    frame, marker.id, shape, true,
                )));
            }
            match self.catalog().frame_marker_written(frame).await? {
                Some(found) => break found,
                None if attempts < 3 => attempts += 1,
                None => return Err(dropped_meanwhile(frame)),
            }
        };
        if marker.view.is_some()
            || marker.external.is_some()
            || self.ledger().log_holds(frame, &marker.id).await?
        {
            return Ok(Begun::Exists);
        }
        // A live creator renews its lease while it writes, however long it takes. Both times
        // are storage's, never a writer's clock.
        let renewed = self.catalog().creation_renewed(frame, &marker.id).await?;
        let since = renewed.map_or(written, |r| r.max(written));
        let age = (chrono::Utc::now() - since).to_std().unwrap_or_default();
        if age < STALE_RESERVATION {
            return Ok(Begun::BeingCreated(NewFrame::new(
                frame, marker.id, shape, false,
            )));
        }
        warn!(frame = %frame, "taking over a reservation whose creator died");
        self.catalog().unregister_frame(frame).await?;
        self.end_lease(frame, &marker.id).await;
        match self.reserve_creation(frame).await? {
            Some(mine) => Ok(Begun::Reserved(NewFrame {
                took_over: Some(marker),
                ..NewFrame::new(frame, mine.id, shape, true)
            })),
            None => Err(Error::Conflict {
                frame: frame.to_string(),
                detail: "another writer took over its creation; retry".into(),
            }),
        }
    }

    /// Reserve `frame`'s name for a creation under a new marker, its lease put first (a crash
    /// between the two leaves a lease that no marker names, which nothing reads). `None` if
    /// the name is taken.
    async fn reserve_creation(&self, frame: &FrameRef) -> Result<Option<MarkerV1>> {
        let marker = MarkerV1::new();
        self.catalog().renew_creation(frame, &marker.id).await?;
        let reserved = self.catalog().reserve_frame_as(frame, marker.clone()).await;
        if !matches!(reserved, Ok(Some(_))) {
            self.end_lease(frame, &marker.id).await;
        }
        reserved
    }

    /// Delete the lease of `frame`'s creation under `incarnation`; a lease left behind only
    /// keeps an uncreated name unlisted, so a failure is logged, not returned.
    async fn end_lease(&self, frame: &FrameRef, incarnation: &str) {
        if let Err(e) = self.catalog().end_creation(frame, incarnation).await {
            warn!(frame = %frame, error = %e, "removing a creation's lease");
        }
    }

    /// End `new`'s own lease: no renewal starts after this.
    async fn end_own_lease(&self, new: &NewFrame) {
        new.lease_ended.store(true, Ordering::SeqCst);
        self.end_lease(&new.frame, &new.incarnation).await;
    }

    /// Run `work` for `new`, renewing its creation's lease meanwhile when this writer holds the
    /// reservation, so that a creation outlasting [`STALE_RESERVATION`] is not taken over.
    async fn renewing<T>(&self, new: &NewFrame, work: impl std::future::Future<Output = T>) -> T {
        if !new.held {
            return work.await;
        }
        let every = self.ledger().config().creation_lease_renewal;
        let renew = async {
            loop {
                tokio::time::sleep(every).await;
                if new.lease_ended.load(Ordering::SeqCst) {
                    return;
                }
                // Bounded, so that one put retried for minutes does not hold up the next.
                let put = self.catalog().renew_creation(&new.frame, &new.incarnation);
                match tokio::time::timeout(every, put).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        warn!(frame = %new.frame, error = %e, "renewing a creation's lease")
                    }
                    Err(_) => warn!(frame = %new.frame, "renewing a creation's lease timed out"),
                }
            }
        };
        let (work, renew) = (std::pin::pin!(work), std::pin::pin!(renew));
        match futures::future::select(work, renew).await {
            futures::future::Either::Left((out, _)) => out,
            futures::future::Either::Right(((), work)) => work.await,
        }
    }

    /// The frames and views of one box that a client sees, sorted by name: the catalog's,
    /// without the names still being created (their marker's lease is there and the frame
    /// does not open yet), which open as NOT_FOUND until created, and without a creation a
    /// crash interrupted. A table being created in a transaction is not listed elsewhere
    /// either. Costs one more listing, plus a few reads per name with a lease; leases that
    /// no longer count (another marker's, or a created frame's that its writer did not get to
    /// delete) are removed on the way.
    pub async fn list_visible_frames(&self, b: &BoxRef) -> Result<Vec<Ident>> {
        let frames = self.catalog().list_frames(b).await?;
        let leases = self.catalog().list_leases(b).await?;
        if leases.is_empty() {
            return Ok(frames);
        }
        let mut out = Vec::with_capacity(frames.len());
        for name in frames {
            let f = FrameRef::new(b.hive.clone(), b.name.clone(), name.clone());
            let dir = paths::creations_of(&f);
            let own: Vec<&Path> = leases.iter().filter(|l| l.prefix_matches(&dir)).collect();
            if own.is_empty() || self.shown_despite_leases(&f, &own).await? {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Whether `f`, which has `leases`, is listed: not while its current marker's creation is
    /// under way or was interrupted.
    async fn shown_despite_leases(&self, f: &FrameRef, leases: &[&Path]) -> Result<bool> {
        let Some(marker) = self.catalog().frame_marker(f).await? else {
            return Ok(false);
        };
        let current = paths::creation_lease(f, &marker.id);
        for stale in leases.iter().filter(|l| ***l != current) {
            // A lease no marker will ever name again (ids are never reused).
            if let Err(e) = self.catalog().remove_lease(stale).await {
                warn!(frame = %f, error = %e, "removing a creation's lease");
            }
        }
        if !leases.contains(&&current) {
            return Ok(true);
        }
        match self.open_frame(f, None).await {
            Ok(_) => {
                // Created; its writer died (or was cut short) before deleting the lease.
                self.end_lease(f, &marker.id).await;
                Ok(true)
            }
            Err(Error::NotFound { .. }) => Ok(false),
            // Listed, so that opening it shows what is wrong.
            Err(_) => Ok(true),
        }
    }

    /// Write `data` into cells of `new` (rows admitted by `gate`, sorted in `ctx` when the frame
    /// is clustered), then commit them as its version 0 if this writer holds the reservation.
    /// A writer that joined another's creation waits for that version 0 instead and gets its
    /// cells back uncommitted ([`FirstCommit::Taken`]): only the holder commits version 0, so
    /// a holder that gives up never hides a joiner's acknowledged rows. On an error the cells
    /// are deleted and a held reservation is given up.
    pub async fn write_new_frame(
        &self,
        new: &NewFrame,
        data: SendableRecordBatchStream,
        ctx: Arc<TaskContext>,
        gate: Option<&Arc<dyn WriteGate>>,
    ) -> Result<FirstCommit> {
        let ledger = self.ledger();
        let shape = &new.shape;
        let writer = ledger.cell_writer(
            &new.frame,
            &shape.schema,
            &shape.partition_columns,
            new.written.clone(),
        );
        let written = match writer {
            Ok(writer) => {
                let write = write_cells(ledger, writer, &shape.cluster_by, gate, data, ctx);
                self.renewing(new, write).await
            }
            Err(e) => Err(e),
        };
        let (rows, adds) = match written {
            Ok(w) => w,
            Err(e) => {
                self.abandon_frame(new).await;
                return Err(e);
            }
        };
        if new.held {
            // Renewed through the commit too, which retries for a while on a slow store.
            return self.renewing(new, self.first_commit(new, rows, adds)).await;
        }
        let cells = new.uncommitted(rows, adds);
        match self.await_first_commit(new).await {
            Ok(()) => Ok(FirstCommit::Taken(cells)),
            Err(e) => {
                cells.discard(self).await;
                Err(e)
            }
        }
    }

    /// Wait (at most [`STALE_RESERVATION`]) until the writer holding `new`'s reservation has
    /// committed its version 0; ABORTED when it gives up, is taken over, or takes longer.
    pub async fn await_first_commit(&self, new: &NewFrame) -> Result<()> {
        match self.await_creation(new, STALE_RESERVATION).await? {
            Awaited::Committed => Ok(()),
            Awaited::GaveUp => Err(Error::Conflict {
                frame: new.frame.to_string(),
                detail: "another writer gave up creating it; retry".into(),
            }),
            Awaited::Pending => Err(still_creating(&new.frame)),
        }
    }

    /// Wait at most `limit` for the writer holding `new`'s reservation to commit its version
    /// 0 or to give the name up.
    async fn await_creation(&self, new: &NewFrame, limit: Duration) -> Result<Awaited> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut pause = Duration::from_millis(10);
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
            let marker = self.catalog().frame_marker(&new.frame).await?;
            if marker.is_none_or(|m| m.id != new.incarnation) {
                return Ok(Awaited::GaveUp);
            }
            match self.open_frame(&new.frame, None).await {
                Ok(_) => return Ok(Awaited::Committed),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Awaited::Pending);
            }
        }
    }

    /// [`Lakehouse::begin_frame`] for a writer that needs the name itself (a plain create, or
    /// `IF NOT EXISTS`): a name another writer is creating is waited for, at most `wait`, as
    /// PostgreSQL waits for the transaction creating a table. If that writer commits, the
    /// frame exists; if it gives up (it failed, or was cancelled or cut short, which frees the
    /// name at once), the name is reserved again. Still being created after `wait`:
    /// `BeingCreated`, never a takeover of a creator that may be alive.
    pub async fn begin_frame_waiting(
        &self,
        frame: &FrameRef,
        shape: NewShape,
        wait: Duration,
    ) -> Result<Begun> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let new = match self.begin_frame(frame, shape.clone()).await? {
                Begun::BeingCreated(new) => new,
                begun => return Ok(begun),
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Begun::BeingCreated(new));
            }
            // Waited in slices: between them `begin_frame` looks again, and takes the name over
            // once its creator has been silent long enough to be dead. A wait behind a killed
            // creator ran its whole minute, then failed, and the next try got the name at once.
            match self.await_creation(&new, left.min(CREATOR_CHECK)).await? {
                Awaited::Committed => return Ok(Begun::Exists),
                Awaited::GaveUp | Awaited::Pending => continue,
            }
        }
    }

    /// Commit version 0 of `new` (held) with `adds`, then check that the name is still its own.
    pub(crate) async fn first_commit(
        &self,
        new: &NewFrame,
        rows: u64,
        adds: Vec<Add>,
    ) -> Result<FirstCommit> {
        let ledger = self.ledger();
        new.committing.store(true, Ordering::SeqCst);
        // A log of the name that does not load is deleted once; the log moving on under
        // this create (a late commit of a frame dropped before) is followed a few times.
        let mut cleared = false;
        let mut moved = 0;
        let snapshot = loop {
            // The creator whose stale reservation this one took over may have committed between
            // the takeover's look at the log and its new marker: its frame is not replaced.
            let taken_over_committed = match &new.took_over {
                Some(old) => ledger.log_is_of(&new.frame, &old.id).await,
                None => Ok(false),
            };
            let created = match taken_over_committed {
                Ok(true) => Ok(Created::Foreign {
                    version: 0,
                    commit: new.took_over.as_ref().expect("checked").id.clone(),
                }),
                Ok(false) => {
                    ledger
                        .create_table(&new.frame, &new.incarnation, &new.shape, adds.clone())
                        .await
                }
                Err(e) => Err(e),
            };
            match created {
                Ok(Created::Ours(s)) => {
                    // The first version now says the frame exists; the lease has done its work.
                    self.end_own_lease(new).await;
                    break s;
                }
                // The cells may be committed: leave them (VACUUM removes what is not).
                Ok(Created::Unsure(e)) => return Err(e),
                // The creator whose stale reservation we took over was alive after all, and
                // committed (its client may have been told so): its marker goes back, and this
                // write meets a frame that exists.
                Ok(Created::Foreign { commit, .. })
                    if new
                        .took_over
                        .as_ref()
                        .is_some_and(|old| commit.contains(&old.id)) =>
                {
                    let old = new.took_over.clone().expect("checked");
                    warn!(frame = %new.frame, "the creator taken over committed: its marker is restored");
                    self.end_own_lease(new).await;
                    if self.holds(new).await? {
                        self.catalog().unregister_frame(&new.frame).await?;
                        self.catalog().reserve_frame_as(&new.frame, old).await?;
                    }
                    return Ok(FirstCommit::Taken(new.uncommitted(rows, adds)));
                }
                Ok(Created::Foreign { version: 0, commit })
                    if !commit.contains(crate::ledger::INCARNATION_PROPERTY) =>
                {
                    // Another engine wrote a table here meanwhile: never ours to clear.
                    ledger.discard_cells(&new.frame, &adds).await;
                    self.abandon_frame(new).await;
                    return Err(foreign_table(&new.frame));
                }
                // A commit of an earlier frame of the name took the version (a version 0 whose
                // creator committed after a drop, a write that passed its fence before the
                // drop): the log has moved on, and the frame begins after it.
                Ok(Created::Foreign { version, .. }) if moved < 3 && self.holds(new).await? => {
                    warn!(frame = %new.frame, version, "a commit of a dropped frame of the name came first");
                    moved += 1;
                }
                Ok(Created::Foreign { .. }) if moved >= 3 => {
                    ledger.discard_cells(&new.frame, &adds).await;
                    self.abandon_frame(new).await;
                    return Err(Error::Conflict {
                        frame: new.frame.to_string(),
                        detail: "commits of a frame of the name dropped before kept landing \
                                 while it was created; retry"
                            .into(),
                    });
                }
                Ok(Created::Foreign { .. }) => {
                    ledger.discard_cells(&new.frame, &adds).await;
                    self.end_own_lease(new).await;
                    return Err(dropped_meanwhile(&new.frame));
                }
                Ok(Created::Unreadable(e)) if !cleared && self.holds(new).await? => {
                    // An interrupted drop's remainder, under our reservation.
                    warn!(frame = %new.frame, error = %e, "removing an unreadable log of a dropped frame");
                    let log = paths::frame_root(&new.frame).join("_delta_log");
                    let before = self.storage().watermark().await?;
                    self.storage().delete_prefix_before(&log, before).await?;
                    ledger.forget(&new.frame);
                    cleared = true;
                }
                Ok(Created::Unreadable(_)) if !self.holds(new).await? => {
                    ledger.discard_cells(&new.frame, &adds).await;
                    self.end_own_lease(new).await;
                    return Err(dropped_meanwhile(&new.frame));
                }
                Ok(Created::Unreadable(e)) | Err(e) => {
                    ledger.discard_cells(&new.frame, &adds).await;
                    self.abandon_frame(new).await;
                    return Err(e);
                }
            }
        };
        // The frame was dropped (or dropped and reserved again) while we wrote, or its box was.
        if !self.holds(new).await? {
            // Our version 0 stays where the drop left the name: it reads as no frame under
            // another marker, and the next creation of the name clears it.
            return Err(dropped_meanwhile(&new.frame));
        }
        if !self.catalog().box_exists(&new.frame.box_ref()).await? {
            self.undo_create(&new.frame, &new.incarnation).await;
            return Err(Error::NotFound {
                kind: ObjectKind::Box,
                name: new.frame.box_ref().to_string(),
            });
        }
        info!(frame = %new.frame, rows, cells = adds.len(), "frame created");
        Ok(FirstCommit::Created { snapshot, rows })
    }

    /// Whether the catalog marker of `new`'s name is still the one it was created under.
    async fn holds(&self, new: &NewFrame) -> Result<bool> {
        Ok(self
            .catalog()
            .frame_marker(&new.frame)
            .await?
            .is_some_and(|m| m.id == new.incarnation))
    }

    /// Give up creating `new` before its version 0: a held reservation is removed, with the
    /// cells its writer put and its lease, unless it is no longer this writer's or a version 0
    /// exists (then only its lease goes). Safe
    /// to call at any point of a creation, also for a write that was cut short (its future
    /// dropped) mid-way. Returns whether the name was given up.
    pub async fn abandon_frame(&self, new: &NewFrame) -> bool {
        if !new.held {
            return false;
        }
        let given_up = async {
            if !self.holds(new).await?
                || self
                    .ledger()
                    .log_holds(&new.frame, &new.incarnation)
                    .await?
            {
                self.end_own_lease(new).await;
                return Ok(false);
            }
            // The name first, right after the checks (a marker removed late could be a new
            // holder's); then the cells, which only this writer's version 0 could refer to.
            self.catalog().unregister_frame(&new.frame).await?;
            self.clear_given_up(new).await;
            Ok(true)
        };
        given_up.await.unwrap_or_else(|e: Error| {
            warn!(frame = %new.frame, error = %e, "giving up a frame's creation");
            false
        })
    }

    /// Delete every cell `new`'s writer put, and its lease. Only for a creation given up
    /// ([`Lakehouse::abandon_frame`] returned true): then nothing refers to them, and this may
    /// run again later for a put (a cell, a lease renewal) that was in flight when the write
    /// was cut short.
    pub async fn clear_given_up(&self, new: &NewFrame) {
        self.ledger()
            .discard_written(&new.frame, &new.written)
            .await;
        self.end_own_lease(new).await;
    }
}

/// ALREADY_EXISTS for a name that another writer is still creating.
pub fn being_created(frame: &FrameRef) -> Error {
    Error::AlreadyExists {
        kind: ObjectKind::Frame,
        name: format!(
            "{frame} (being created by another statement, or by one stopped less than a minute \
             ago: retry, or DROP TABLE it)"
        ),
    }
}

/// ABORTED for a name another writer is still creating after a waiter's longest wait.
pub fn still_creating(frame: &FrameRef) -> Error {
    Error::Conflict {
        frame: frame.to_string(),
        detail: "another writer is still creating it; retry".into(),
    }
}

fn foreign_table(frame: &FrameRef) -> Error {
    let location = crate::paths::frame_root(frame);
    Error::InvalidArgument(format!(
        "cannot create {frame}: its location '{location}' holds a Delta table that Apiary did \
         not create under this name (written by another engine, or by an Apiary build older \
         than 2026-12-05). Read it with CREATE EXTERNAL TABLE … STORED AS DELTA LOCATION \
         '{location}', or move it away first; it is not deleted"
    ))
}

fn dropped_meanwhile(frame: &FrameRef) -> Error {
    Error::Conflict {
        frame: frame.to_string(),
        detail: "it was dropped while being created; retry".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ident, LedgerConfig, S3Options, Storage};
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::error::DataFusionError;
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
    use futures::StreamExt;

    /// A lakehouse whose cells are small, so a write of a few batches makes several.
    async fn lakehouse() -> (Lakehouse, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        let config = LedgerConfig {
            cell_target_bytes: 1,
            ..LedgerConfig::default()
        };
        (Lakehouse::open(storage, config).await.unwrap(), dir)
    }

    fn frame() -> FrameRef {
        named("t")
    }

    fn named(name: &str) -> FrameRef {
        let id = |s| Ident::parse(s).unwrap();
        FrameRef::new(id("default"), id("default"), id(name))
    }

    /// Names of the leases of creations in `default.default`.
    async fn leases(lh: &Lakehouse) -> Vec<String> {
        let listed = lh
            .storage()
            .list(&paths::creations_prefix(&frame().box_ref()))
            .await
            .unwrap();
        listed.iter().map(|m| m.location.to_string()).collect()
    }

    /// Names listed to clients in `default.default`.
    async fn visible(lh: &Lakehouse) -> Vec<String> {
        let listed = lh.list_visible_frames(&frame().box_ref()).await;
        listed.unwrap().iter().map(|f| f.to_string()).collect()
    }

    /// Make storage say `key` was last written five minutes ago.
    fn backdate(dir: &tempfile::TempDir, key: &Path) {
        let file = std::fs::File::options()
            .write(true)
            .open(dir.path().join(key.as_ref()))
            .unwrap();
        let then = std::time::SystemTime::now() - std::time::Duration::from_secs(300);
        file.set_modified(then).unwrap();
    }

    fn shape() -> NewShape {
        NewShape {
            schema: Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)])),
            partition_columns: Vec::new(),
            cluster_by: Vec::new(),
        }
    }

    /// `batches` batches of 300,000 rows each, then `Err` if `fail`.
    fn rows(batches: i64, fail: bool) -> SendableRecordBatchStream {
        let schema = shape().schema;
        let s = schema.clone();
        let items = (0..batches)
            .map(move |b| {
                let v = Int64Array::from_iter_values(b * 300_000..(b + 1) * 300_000);
                Ok(RecordBatch::try_new(s.clone(), vec![Arc::new(v)]).unwrap())
            })
            .chain(fail.then(|| Err(DataFusionError::Execution("the query failed".into()))));
        Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(items.collect::<Vec<_>>()),
        ))
    }

    fn ctx() -> Arc<TaskContext> {
        Arc::new(TaskContext::default())
    }

    fn files(dir: &tempfile::TempDir) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.path().join("default/default/t")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                match e.file_type().unwrap().is_dir() {
                    true => stack.push(e.path()),
                    false => out.push(e.file_name().to_string_lossy().into_owned()),
                }
            }
        }
        out
    }

    async fn reserved(lh: &Lakehouse) -> NewFrame {
        match lh.begin_frame(&frame(), shape()).await.unwrap() {
            Begun::Reserved(n) => n,
            other => panic!("{other:?}"),
        }
    }

    /// A holder writing `holder_batches` (failing at the end if `fail`), 300 ms late, and a
    /// joiner writing one batch at the same time: both outcomes.
    async fn holder_and_joiner(
        lh: &Lakehouse,
        holder_batches: i64,
        fail: bool,
    ) -> (Result<FirstCommit>, Result<FirstCommit>, NewFrame) {
        let holder = reserved(lh).await;
        let Begun::BeingCreated(joiner) = lh.begin_frame(&frame(), shape()).await.unwrap() else {
            panic!("the name was not seen as being created")
        };
        let (held, joined) = tokio::join!(
            async {
                // The joiner finishes its cells first and must wait.
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                lh.write_new_frame(&holder, rows(holder_batches, fail), ctx(), None)
                    .await
            },
            lh.write_new_frame(&joiner, rows(1, false), ctx(), None)
        );
        (held, joined, holder)
    }

    /// The frame's schema and its cells are one commit, version 0.
    #[tokio::test]
    async fn a_new_frame_appears_with_its_rows_in_version_0() {
        let (lh, dir) = lakehouse().await;
        let new = reserved(&lh).await;
        // Reserved, not created: nothing to read yet.
        assert!(matches!(
            lh.open_frame(&frame(), None).await,
            Err(Error::NotFound { .. })
        ));
        let done = lh.write_new_frame(&new, rows(3, false), ctx(), None).await;
        let FirstCommit::Created { snapshot, rows } = done.unwrap() else {
            panic!("not created")
        };
        assert_eq!((snapshot.version(), rows), (0, 900_000));
        assert!(snapshot.cells().len() >= 3, "{:?}", snapshot.cells().len());
        let read = lh.frame(&frame(), None).await.unwrap();
        assert_eq!((read.version(), read.stats().rows), (0, 900_000));
        let logs: Vec<_> = files(&dir)
            .into_iter()
            .filter(|f| f.ends_with(".json"))
            .collect();
        assert_eq!(logs, vec!["00000000000000000000.json".to_string()]);
    }

    /// A write that fails part way leaves no frame, no name and no cells.
    #[tokio::test]
    async fn a_failed_first_write_leaves_nothing() {
        let (lh, dir) = lakehouse().await;
        let new = reserved(&lh).await;
        let err = lh.write_new_frame(&new, rows(3, true), ctx(), None).await;
        assert!(err.unwrap_err().to_string().contains("the query failed"));
        assert!(lh.catalog().frame_marker(&frame()).await.unwrap().is_none());
        assert_eq!(files(&dir), Vec::<String>::new());
        assert_eq!(leases(&lh).await, Vec::<String>::new());
        // The name is free again.
        reserved(&lh).await;
    }

    /// A writer that joins another's creation writes its cells at the same time, waits for the
    /// holder's version 0 and gets its cells back to append; a third that may not append
    /// deletes its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_joining_writer_appends_after_the_holders_version_0() {
        let (lh, dir) = lakehouse().await;
        let (held, joined, holder) = holder_and_joiner(&lh, 2, false).await;
        assert!(matches!(
            held.unwrap(),
            FirstCommit::Created { rows: 600_000, .. }
        ));
        let FirstCommit::Taken(cells) = joined.unwrap() else {
            panic!("the joiner committed version 0")
        };
        let read = lh.frame(&frame(), None).await.unwrap();
        assert_eq!(read.stats().rows, 600_000, "uncommitted cells were read");
        let parquet =
            |d: &tempfile::TempDir| files(d).iter().filter(|f| f.ends_with(".parquet")).count();
        let before = parquet(&dir);
        let committed = cells.commit(&lh, &read, false).await.unwrap();
        assert_eq!(committed, (300_000, 1));
        let read = lh.frame(&frame(), None).await.unwrap();
        assert_eq!(read.stats().rows, 900_000);
        assert_eq!(parquet(&dir), before, "cells were rewritten");
        // A late joiner whose statement may not append deletes its cells again.
        let late = NewFrame::new(&frame(), holder.incarnation.clone(), shape(), false);
        let lost = lh.write_new_frame(&late, rows(1, false), ctx(), None).await;
        let FirstCommit::Taken(cells) = lost.unwrap() else {
            panic!("version 0 was taken")
        };
        cells.discard(&lh).await;
        assert_eq!(parquet(&dir), before);
    }

    /// A holder that gives up removes the name, and a joiner waiting on it is ABORTED with its
    /// cells deleted, never committed into a frame nobody can see.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_joiner_of_a_holder_that_gives_up_is_aborted() {
        let (lh, dir) = lakehouse().await;
        let (held, joined, _) = holder_and_joiner(&lh, 2, true).await;
        assert!(held.is_err());
        assert!(matches!(joined, Err(Error::Conflict { .. })), "{joined:?}");
        assert_eq!(files(&dir), Vec::<String>::new());
        assert!(lh.catalog().frame_marker(&frame()).await.unwrap().is_none());
    }

    /// A version 0 committed under an earlier marker of the name (its writer committed after a
    /// DROP, and the name was reserved again meanwhile) reads as no frame, and the new holder
    /// clears it and creates its own.
    #[tokio::test]
    async fn a_version_0_of_a_dropped_creation_is_no_frame_and_is_replaced() {
        let (lh, _dir) = lakehouse().await;
        let late = reserved(&lh).await;
        lh.drop_frame(&frame(), false).await.unwrap();
        let holder = reserved(&lh).await;
        let err = lh.write_new_frame(&late, rows(1, false), ctx(), None).await;
        assert!(matches!(err, Err(Error::Conflict { .. })), "{err:?}");
        assert!(matches!(
            lh.open_frame(&frame(), None).await,
            Err(Error::NotFound { .. })
        ));
        let done = lh
            .write_new_frame(&holder, rows(2, false), ctx(), None)
            .await;
        assert!(matches!(
            done.unwrap(),
            FirstCommit::Created { rows: 600_000, .. }
        ));
        assert_eq!(
            lh.frame(&frame(), None).await.unwrap().stats().rows,
            600_000
        );
    }

    /// A creator whose stale reservation was taken over, but which committed its version 0
    /// just after the taker looked for a log (its client may have been told of success): the
    /// taker puts its marker back and meets a frame that exists, instead of clearing it.
    #[tokio::test]
    async fn a_taken_over_creator_that_committed_keeps_its_frame() {
        let (lh, dir) = lakehouse().await;
        let old = MarkerV1::new();
        lh.catalog()
            .reserve_frame_as(&frame(), old.clone())
            .await
            .unwrap()
            .unwrap();
        backdate(&dir, &paths::frame_marker(&frame()));
        let Begun::Reserved(taker) = lh.begin_frame(&frame(), shape()).await.unwrap() else {
            panic!("a stale reservation was not taken over")
        };
        assert_ne!(taker.incarnation, old.id, "a takeover makes a new marker");
        // The slow creator commits now, its fence check passed before the takeover's new
        // marker (put back for the check here, as it was then).
        let takers = lh.catalog().frame_marker(&frame()).await.unwrap().unwrap();
        let swap = |to: MarkerV1| async {
            lh.catalog().unregister_frame(&frame()).await.unwrap();
            lh.catalog().reserve_frame_as(&frame(), to).await.unwrap();
        };
        swap(old.clone()).await;
        lh.ledger()
            .create_table(&frame(), &old.id, &shape(), Vec::new())
            .await
            .unwrap();
        swap(takers).await;
        let got = lh
            .write_new_frame(&taker, rows(1, false), ctx(), None)
            .await;
        let FirstCommit::Taken(cells) = got.unwrap() else {
            panic!("the taker created the frame over the committed one")
        };
        cells.discard(&lh).await;
        let marker = lh.catalog().frame_marker(&frame()).await.unwrap().unwrap();
        assert_eq!(marker.id, old.id, "the slow creator's marker is back");
        assert_eq!(lh.frame(&frame(), None).await.unwrap().version(), 0);
    }

    /// A creation that outlasts the stale limit renews its lease while it writes and while it
    /// commits, so another writer sees it being created instead of taking it over; its lease
    /// goes with version 0.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_creation_renewing_its_lease_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        let config = LedgerConfig {
            creation_lease_renewal: std::time::Duration::from_millis(20),
            pause_before_commit: Some(std::time::Duration::from_millis(1500)),
            ..LedgerConfig::default()
        };
        let lh = Lakehouse::open(storage, config).await.unwrap();
        // A reservation made five minutes ago (past the stale limit), without a lease yet.
        let old = MarkerV1::new();
        let reserved = lh.catalog().reserve_frame_as(&frame(), old.clone()).await;
        assert!(reserved.unwrap().is_some());
        backdate(&dir, &paths::frame_marker(&frame()));
        let creator = NewFrame::new(&frame(), old.id.clone(), shape(), true);
        let slow = rows(3, false).then(|b| async {
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            b
        });
        let slow = Box::pin(RecordBatchStreamAdapter::new(shape().schema, slow));
        let lh = &lh;
        let lease = paths::creation_lease(&frame(), &old.id);
        // Another writer, once storage shows the lease renewed (within the last 10 s).
        let other_once_renewed = || async {
            let fresh = loop {
                let meta = lh.storage().head_opt(&lease).await.unwrap();
                let age = meta.map(|m| chrono::Utc::now() - m.last_modified);
                if age.is_some_and(|a| a < chrono::Duration::seconds(10)) {
                    break true;
                }
                if lh.open_frame(&frame(), None).await.is_ok() {
                    break false;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            };
            assert!(fresh, "the creation ended before its lease was renewed");
            lh.begin_frame(&frame(), shape()).await.unwrap()
        };
        // While it writes its cells (450 ms), then while it commits (1.5 s), with its lease
        // made to look five minutes old first.
        let (created, writing, committing) = tokio::join!(
            lh.write_new_frame(&creator, slow, ctx(), None),
            other_once_renewed(),
            async {
                tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
                while lh.storage().head_opt(&lease).await.unwrap().is_none() {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                backdate(&dir, &lease);
                other_once_renewed().await
            },
        );
        for other in [writing, committing] {
            assert!(
                !matches!(other, Begun::Reserved(_)),
                "a live creation was taken over: {other:?}"
            );
        }
        assert!(matches!(
            created.unwrap(),
            FirstCommit::Created { rows: 900_000, .. }
        ));
        assert_eq!(leases(lh).await, Vec::<String>::new());
    }

    /// Clients are not shown a name until its version 0 is there: not while it is being
    /// created, not after its creator died; a frame whose creator died between its version 0
    /// and its lease's removal is shown, and so is a name with only another marker's lease.
    #[tokio::test]
    async fn names_are_listed_once_created() {
        let (lh, _dir) = lakehouse().await;
        let creating = reserved(&lh).await;
        assert_eq!(visible(&lh).await, Vec::<String>::new());
        let all = lh.catalog().list_frames(&frame().box_ref()).await.unwrap();
        assert_eq!(all.len(), 1, "the reservation is in the catalog");
        let done = lh
            .write_new_frame(&creating, rows(1, false), ctx(), None)
            .await;
        assert!(matches!(done.unwrap(), FirstCommit::Created { .. }));
        assert_eq!(visible(&lh).await, vec!["t"]);

        // A creator that dies (its writer never returns) leaves a name nobody is shown, and
        // DROP TABLE removes it with its lease.
        let Begun::Reserved(_dead) = lh.begin_frame(&named("u"), shape()).await.unwrap() else {
            panic!("u was not reserved")
        };
        assert_eq!(visible(&lh).await, vec!["t"]);
        assert!(lh.drop_frame(&named("u"), false).await.unwrap());
        assert_eq!(leases(&lh).await, Vec::<String>::new());

        // Died after its version 0, before removing its lease: created, so shown.
        let t = lh.catalog().frame_marker(&frame()).await.unwrap().unwrap();
        lh.catalog().renew_creation(&frame(), &t.id).await.unwrap();
        // Only a lease of an earlier marker of the name (a creator that died between its lease
        // and its marker): the frame of the current one is shown.
        lh.catalog()
            .renew_creation(&named("v"), "gone")
            .await
            .unwrap();
        lh.create_frame(&named("v"), &shape().schema, &[], &[], false)
            .await
            .unwrap();
        assert_eq!(visible(&lh).await, vec!["t", "v"]);
        // Neither lease counts any more, and the listing removed both.
        assert_eq!(leases(&lh).await, Vec::<String>::new());
    }

    /// A creator that died is taken over once storage has written neither its marker nor its
    /// lease for the stale limit; a fresh lease keeps an old marker its creator's.
    #[tokio::test]
    async fn a_dead_creation_is_taken_over_once_its_lease_is_stale() {
        let (lh, dir) = lakehouse().await;
        let dead = reserved(&lh).await;
        backdate(&dir, &paths::frame_marker(&frame()));
        let got = lh.begin_frame(&frame(), shape()).await.unwrap();
        assert!(matches!(got, Begun::BeingCreated(_)), "{got:?}");
        backdate(&dir, &paths::creation_lease(&frame(), &dead.incarnation));
        let Begun::Reserved(taker) = lh.begin_frame(&frame(), shape()).await.unwrap() else {
            panic!("a dead creation was not taken over")
        };
        let taker_lease = paths::creation_lease(&frame(), &taker.incarnation);
        let want = vec![taker_lease.to_string()];
        assert_eq!(leases(&lh).await, want, "the dead creator's lease stays");
    }

    /// Creates racing for version 0 at once (four tries of one creation): one creates the
    /// table, the others find it theirs, and the log holds one commit (delta-rs rebased a
    /// losing create to version 1, where it recorded its own schema over the winner's).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creators_racing_for_version_0_leave_one_commit() {
        let (lh, dir) = lakehouse().await;
        let marker = MarkerV1::new();
        lh.catalog()
            .reserve_frame_as(&frame(), marker.clone())
            .await
            .unwrap()
            .unwrap();
        let (f, sh) = (frame(), shape());
        let creates = (0..4).map(|_| lh.ledger().create_table(&f, &marker.id, &sh, Vec::new()));
        let outcomes = futures::future::join_all(creates).await;
        let ours = outcomes
            .iter()
            .filter(|o| matches!(o, Ok(Created::Ours(_))))
            .count();
        assert_eq!(ours, 4, "{outcomes:?}");
        let logs: Vec<_> = files(&dir)
            .into_iter()
            .filter(|f| f.ends_with(".json"))
            .collect();
        assert_eq!(logs, vec!["00000000000000000000.json".to_string()]);
    }
}
