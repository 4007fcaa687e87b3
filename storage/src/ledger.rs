//! The per-frame transaction ledger: each frame is a Delta Lake table, read and written through
//! delta-rs.
//!
//! ```text
//!   CellWriter ──write──▶ Parquet cells (uncommitted, invisible)
//!       │ finish → Vec<Add>
//!       ▼
//!   Ledger::commit ──put-if-absent _delta_log/<v>.json──▶ visible at version v
//! ```
//!
//! Cells become visible only when the commit object is created, so a writer that dies between
//! writing cells and committing leaves the frame exactly as it was (the orphaned cells are
//! unreferenced files). Concurrent appends from any number of processes are retried by delta-rs'
//! commit loop (blind appends never conflict); an overwrite that races another writer reports
//! [`Error::Conflict`].

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use deltalake::DeltaTableError;
use deltalake::kernel::transaction::{
    CommitBuilder, CommitConflictError as ConflictError, CommitProperties, TransactionError,
};
use deltalake::kernel::{Action, Add};
use deltalake::logstore::{
    LogStore, LogStoreFactory, LogStoreRef, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, logstore_with,
};
use deltalake::operations::create::CreateBuilder;
use deltalake::operations::write::writer::{DeltaWriter, WriterConfig};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::state::DeltaTableState;
use object_store::path::Path;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use tracing::{Instrument, debug, info, info_span, warn};
use url::Url;

use crate::backend::Storage;
use crate::codec::CellCompression;
use crate::error::{Error, Result};
use crate::footers::FooterCache;
use crate::paths::{self, FrameRef};
use crate::schema;
use crate::shape::{
    CLUSTER_BY_PROPERTY, NewShape, cluster_property, parse_cluster_property, protocol_for,
    validate_clustering, validate_partitioning,
};
use crate::written::{RecordingStore, Written, delete_uncommitted};

/// The table property that records which catalog marker (incarnation of the name) a frame's
/// version 0 was committed under.
pub(crate) const INCARNATION_PROPERTY: &str = "apiary.incarnation";

/// The version a frame begins at when its name was used before (its first commit replaced the
/// dropped frame's log, [`crate::retire`]); absent for a frame that began at version 0.
pub(crate) const SINCE_PROPERTY: &str = "apiary.since";

/// A frame's log as it stands. One that does not load (a gap, a commit that does not parse) is
/// no fence ([`crate::retire`]): a drop leaves it as it is, and a create of the name deletes it
/// and begins again at version 0.
pub(crate) enum Log {
    Missing,
    Unreadable(DeltaTableError),
    Loaded(Box<DeltaTableState>),
}

/// What [`Ledger::create_table`] found.
#[derive(Debug)]
pub enum Created {
    /// The frame's first version is this create's.
    Ours(FrameSnapshot),
    /// The version this create tried to begin the frame at (`version`: 0, or after the
    /// versions of a frame dropped before under its name) exists and is not this create's
    /// (`commit`, its text).
    Foreign { version: u64, commit: String },
    /// The commit failed and whether it landed could not be read: its cells must stay.
    Unsure(Error),
    /// The name's log, left by a frame dropped before, does not load: nothing was committed.
    Unreadable(Error),
}

/// Rows per Parquet row group: small enough for useful pruning and parallel scans, large enough
/// for good compression.
const ROW_GROUP_ROWS: usize = 256 * 1024;

/// How a ledger writes.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Target size of one cell (Parquet file), in bytes.
    pub cell_target_bytes: u64,
    /// How many times a commit that lost a race is retried before giving up.
    pub commit_retries: usize,
    /// How cells' pages are compressed.
    pub compression: CellCompression,
    /// Fault injection for crash tests: sleep this long between writing cells and committing
    /// (any commit: a new frame's first, appends, DML, maintenance), so a test can kill the
    /// writer at exactly that point. Set from config; `None` in production.
    pub pause_before_commit: Option<Duration>,
    /// A checkpoint every this many commits, recorded in each new frame's table properties
    /// (`delta.checkpointInterval`, which every Delta writer honours), so that reading a frame's
    /// state never replays more than this many commits.
    pub checkpoint_interval: u64,
    /// Bound of the node's decoded Parquet footers ([`crate::footers::FooterCache`]); 0 keeps none.
    pub metadata_cache_bytes: usize,
    /// How often a writer creating a frame renews its creation's lease (well inside
    /// [`crate::new_frame::STALE_RESERVATION`], so a few failed renewals do not matter).
    pub creation_lease_renewal: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            cell_target_bytes: 64 * 1024 * 1024,
            commit_retries: 200,
            compression: CellCompression::default(),
            pause_before_commit: None,
            checkpoint_interval: 100,
            metadata_cache_bytes: crate::footers::DEFAULT_METADATA_CACHE_BYTES,
            creation_lease_renewal: Duration::from_secs(10),
        }
    }
}

/// Cell size derived from the memory one bee may use: a writer buffers about one cell per open
/// partition, so a cell is an eighth of a bee's budget, between 8 MiB and 32 MiB. The ceiling
/// keeps cells small enough for a swarm to share out whole: TPC-H SF1 `lineitem` (6 M rows,
/// about 220 MB in LZ4) is 7 cells of 3 to 4 row groups, so two nodes' tasks each own whole
/// cells and cache only those.
pub fn cell_size_for_budget(bee_memory_bytes: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    (bee_memory_bytes / 8).clamp(8 * MIB, 32 * MIB)
}

/// One pinned version of a frame: schema, partitioning and the list of its cells.
#[derive(Debug, Clone)]
pub struct FrameSnapshot {
    frame: FrameRef,
    /// Id of the frame's catalog marker: a dropped and re-created frame has another.
    incarnation: String,
    state: DeltaTableState,
    /// Stored columns (with the served type in the metadata of columns that differ).
    schema: SchemaRef,
    /// What queries see: [`schema::served_schema`] of `schema`.
    served: SchemaRef,
    partition_columns: Vec<String>,
    /// Absolute key of the frame root inside the raw store.
    root: Path,
    /// Set by [`FrameSnapshot::reshaped`]: the metadata (and protocol, when the new columns need
    /// a table feature) that the replacing commit records with its cells.
    reshape: Option<Vec<Action>>,
    /// An external frame's table: read in place, never written.
    read_only: bool,
    /// A past version a statement asked for (time travel): read, never written.
    historic: bool,
}

/// Size figures of a frame snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStats {
    pub cells: u64,
    pub rows: u64,
    pub bytes: u64,
}

/// One cell of a snapshot, as a scan needs it.
#[derive(Debug, Clone)]
pub struct CellInfo {
    /// Key in the raw store.
    pub location: Path,
    pub size: u64,
    pub rows: Option<u64>,
    pub partition_values: HashMap<String, Option<String>>,
}

impl FrameSnapshot {
    pub fn frame(&self) -> &FrameRef {
        &self.frame
    }

    pub fn version(&self) -> i64 {
        self.state.version() as i64
    }

    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// The frame's columns in declared order, with the types cells are written in.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The frame's columns as queries see them: the types clients gave (see
    /// [`crate::schema`]).
    pub fn served_schema(&self) -> &SchemaRef {
        &self.served
    }

    /// Key of the frame's Delta table in the raw store (elsewhere for an external frame).
    pub fn location(&self) -> &Path {
        &self.root
    }

    /// Whether writes may go to this frame (not to an external one).
    pub fn writable(&self) -> Result<()> {
        if self.historic {
            return Err(Error::NotAllowed(format!(
                "{} at version {} is a past version: it is read, never written",
                self.frame,
                self.version()
            )));
        }
        match self.read_only {
            true => Err(Error::NotAllowed(format!(
                "{} is an external frame: it is read in place and never written",
                self.frame
            ))),
            false => Ok(()),
        }
    }

    /// This snapshot as a past version a statement asked for: writes through it are refused.
    pub fn historic(mut self) -> Self {
        self.historic = true;
        self
    }

    /// Whether this is a past version a statement asked for (`VERSION AS OF`, …).
    pub fn is_historic(&self) -> bool {
        self.historic
    }

    /// Whether this is an external frame's table (its log is not under the frame's root).
    pub fn is_external(&self) -> bool {
        self.read_only
    }

    pub fn partition_columns(&self) -> &[String] {
        &self.partition_columns
    }

    /// This frame in a new shape, for a replace that changes its columns or partitioning: cells
    /// are written in the new shape, and the one commit that removes every current cell also
    /// records the new schema, so readers see the old frame or the new one, never neither.
    pub fn reshaped(
        &self,
        schema: &SchemaRef,
        partition_columns: &[String],
        cluster_by: &[String],
    ) -> Result<Self> {
        validate_partitioning(schema, partition_columns)?;
        validate_clustering(schema, partition_columns, cluster_by)?;
        let delta_schema = schema::to_delta(schema)?;
        let old = self.state.metadata();
        let mut configuration = old.configuration().clone();
        match cluster_by.is_empty() {
            true => configuration.remove(CLUSTER_BY_PROPERTY),
            false => configuration.insert(
                CLUSTER_BY_PROPERTY.to_string(),
                cluster_property(cluster_by),
            ),
        };
        let metadata =
            deltalake::kernel::new_metadata(&delta_schema, partition_columns, configuration)
                .and_then(|m| {
                    use deltalake::kernel::MetadataExt;
                    m.with_table_id(old.id().to_string())
                })
                .map_err(|e| Error::Schema(format!("the new shape of {}: {e}", self.frame)))?;
        let mut actions = vec![Action::Metadata(metadata)];
        if let Some(p) = protocol_for(self.state.protocol(), &delta_schema)? {
            actions.push(Action::Protocol(p));
        }
        Ok(Self {
            schema: schema.clone(),
            served: schema::served_schema(schema),
            partition_columns: partition_columns.to_vec(),
            reshape: Some(actions),
            ..self.clone()
        })
    }

    /// Whether a commit onto this snapshot records a new shape ([`FrameSnapshot::reshaped`]).
    pub fn reshapes(&self) -> bool {
        self.reshape.is_some()
    }

    /// This frame with `fields` added as nullable columns at the end, for an append that merges
    /// its schema: the append's one commit records the wider schema with its cells, so a write
    /// that fails leaves the frame's columns as they were. Delta column names are
    /// case-insensitive: a field named like a column (or like another new field) is refused.
    pub fn widened(&self, fields: &[arrow::datatypes::Field]) -> Result<Self> {
        let mut columns: Vec<arrow::datatypes::FieldRef> = self.schema.fields().to_vec();
        for f in fields {
            if columns
                .iter()
                .any(|g| g.name().eq_ignore_ascii_case(f.name()))
            {
                return Err(Error::AlreadyExists {
                    kind: crate::error::ObjectKind::Frame,
                    name: format!("column {} of {}", f.name(), self.frame),
                });
            }
            columns.push(Arc::new(f.clone().with_nullable(true)));
        }
        let schema = Arc::new(arrow::datatypes::Schema::new_with_metadata(
            columns,
            self.schema.metadata().clone(),
        ));
        self.reshaped(&schema, &self.partition_columns, &self.cluster_by())
    }

    /// The columns this frame's writes sort their rows by (`CLUSTER BY`); empty when none. Only
    /// columns the frame has count, whatever another writer recorded.
    pub fn cluster_by(&self) -> Vec<String> {
        let Some(value) = self
            .state
            .metadata()
            .configuration()
            .get(CLUSTER_BY_PROPERTY)
        else {
            return Vec::new();
        };
        let cols = parse_cluster_property(value);
        match cols
            .iter()
            .all(|c| self.schema.field_with_name(c).is_ok() && !self.partition_columns.contains(c))
        {
            true => cols,
            false => Vec::new(),
        }
    }

    /// The Delta state, for pruning with delta-rs' statistics.
    pub fn delta_state(&self) -> &DeltaTableState {
        &self.state
    }

    /// The version this frame began at: 0, or the one after the versions of a frame dropped
    /// before under its name ([`crate::retire`]). Its history begins there.
    pub fn first_version(&self) -> i64 {
        self.state
            .metadata()
            .configuration()
            .get(SINCE_PROPERTY)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Cells in log order (the order [`FrameSnapshot::delta_state`]'s log data iterates).
    pub fn cells(&self) -> Vec<CellInfo> {
        self.state
            .log_data()
            .iter()
            .map(|f| CellInfo {
                location: Path::from_iter(self.root.parts().chain(f.object_store_path().parts())),
                size: f.size().max(0) as u64,
                rows: f.num_records().map(|n| n as u64),
                partition_values: f.partition_values_map(),
            })
            .collect()
    }

    pub fn stats(&self) -> FrameStats {
        let mut s = FrameStats {
            cells: 0,
            rows: 0,
            bytes: 0,
        };
        for f in self.state.log_data().iter() {
            s.cells += 1;
            s.rows += f.num_records().unwrap_or(0) as u64;
            s.bytes += f.size().max(0) as u64;
        }
        s
    }
}

/// Writes cells for one commit. Batches are cast to the frame's schema first.
pub struct CellWriter {
    inner: Option<DeltaWriter>,
    /// The frame's root, where the cells go (and are deleted from by [`CellWriter::discard`]).
    store: ObjectStoreRef,
    /// Every cell put so far, whole or begun.
    written: Written,
    schema: SchemaRef,
    partition_columns: Vec<String>,
    rows: u64,
}

impl std::fmt::Debug for CellWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellWriter")
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl CellWriter {
    /// The schema batches are cast to.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Cast and buffer a batch; full cells are uploaded as they fill.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = schema::conform_batch(batch, &self.schema)?;
        let batch = crate::values::writable(batch, &self.partition_columns)?;
        let writer = self
            .inner
            .as_mut()
            .ok_or_else(|| Error::Internal("cell writer used after finish".into()))?;
        writer.write(&batch).await?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Flush the last cells and return their `Add` actions (not yet committed). When that
    /// fails, the cells are deleted.
    pub async fn finish(mut self) -> Result<Vec<Add>> {
        let Some(w) = self.inner.take() else {
            return Ok(Vec::new());
        };
        match w.close().await {
            Ok(adds) => Ok(adds),
            Err(e) => {
                self.written.delete_from(&self.store).await;
                Err(e.into())
            }
        }
    }

    /// Abandon the write and delete the cells it put; rows still buffered are dropped. Cells
    /// that cannot be deleted stay as unreferenced files (for VACUUM).
    pub async fn discard(mut self) {
        if let Some(w) = self.inner.take() {
            // Uploads in progress are aborted (S3 keeps the parts of one merely dropped).
            let _ = w.abort().await;
        }
        self.written.delete_from(&self.store).await;
    }
}

/// Delete the cells of `adds` (written, never committed) from a frame's root.
async fn delete_cells(store: &ObjectStoreRef, adds: &[Add]) {
    let mut paths = Vec::with_capacity(adds.len());
    for add in adds {
        match Path::parse(&add.path) {
            Ok(path) => paths.push(path),
            Err(e) => warn!(cell = %add.path, error = %e, "uncommitted cell left for VACUUM"),
        }
    }
    delete_uncommitted(store, paths).await;
}

/// The ledger of every frame under one storage root.
#[derive(Debug)]
pub struct Ledger {
    storage: Storage,
    config: LedgerConfig,
    /// Latest known state per frame, refreshed incrementally. Keyed by frame, tagged with the
    /// catalog incarnation the state belongs to.
    cache: Mutex<HashMap<FrameRef, Known>>,
    /// Decoded footers of the cells scanned on this node.
    footers: Arc<FooterCache>,
}

/// The latest state of a frame this node knows, and when its log was last listed.
#[derive(Debug, Clone)]
struct Known {
    incarnation: String,
    state: DeltaTableState,
    listed: Instant,
}

/// How long a known state is trusted on the next commit being absent alone. Delta versions are
/// contiguous, so while commit `v + 1` does not exist, version `v` is the latest: one existence
/// check instead of reading `_last_checkpoint` and listing the log. Commits are only removed
/// from a log once older than its retention (30 days by default) and behind a checkpoint, so a
/// state older than this is listed in full again rather than trusted on that check.
const TRUST_NEXT_COMMIT_CHECK: Duration = Duration::from_secs(60);

/// delta-rs picks a log store by URL scheme and only knows `file` and `memory` without its AWS
/// crate. Our S3 stores do conditional puts, which is all the default log store needs.
#[derive(Debug)]
struct ConditionalPutLogStoreFactory;

impl LogStoreFactory for ConditionalPutLogStoreFactory {
    fn with_options(
        &self,
        prefixed_store: deltalake::logstore::ObjectStoreRef,
        root_store: deltalake::logstore::ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_log_stores() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3://", "s3a://"] {
            logstore_factories().insert(
                Url::parse(scheme).expect("static URL"),
                Arc::new(ConditionalPutLogStoreFactory),
            );
        }
    });
}

impl Ledger {
    pub fn new(storage: Storage, config: LedgerConfig) -> Self {
        register_log_stores();
        Self {
            footers: Arc::new(FooterCache::new(config.metadata_cache_bytes)),
            storage,
            config,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    /// The node's Parquet metadata cache, which every scan of a cell reads through.
    pub fn footers(&self) -> &Arc<FooterCache> {
        &self.footers
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub(crate) fn log_store(&self, frame: &FrameRef) -> Result<LogStoreRef> {
        Ok(self.pausing(self.plain_log_store(frame)?))
    }

    /// `frame`'s log store as delta-rs makes it, passing the statement's point of no return
    /// before each commit ([`crate::commit_point`]).
    fn plain_log_store(&self, frame: &FrameRef) -> Result<LogStoreRef> {
        let url = self.storage.url_for(&paths::frame_root(frame))?;
        Ok(crate::commit_hooks::marked(logstore_with(
            self.storage.raw_store().clone(),
            &url,
            StorageConfig::default(),
        )?))
    }

    /// The log store a write that read `snapshot` commits through: it commits only while the
    /// frame's name is still the incarnation `snapshot` was read from (`commit_hooks::fenced`).
    pub(crate) fn writing_log_store(&self, snapshot: &FrameSnapshot) -> Result<LogStoreRef> {
        snapshot.writable()?;
        Ok(self.pausing(crate::commit_hooks::fenced(
            self.plain_log_store(&snapshot.frame)?,
            self.storage.clone(),
            snapshot.frame.clone(),
            snapshot.incarnation.clone(),
        )))
    }

    /// `store`, pausing before each commit when fault injection asks for it.
    fn pausing(&self, store: LogStoreRef) -> LogStoreRef {
        match self.config.pause_before_commit {
            Some(pause) => crate::commit_hooks::pausing(store, pause),
            None => store,
        }
    }

    fn root(&self, frame: &FrameRef) -> Path {
        self.storage.absolute(&paths::frame_root(frame))
    }

    /// The log store of an external Delta table at `key` (a key in the raw store).
    pub(crate) fn external_log_store(&self, key: &Path) -> Result<LogStoreRef> {
        self.storage.check_external_key(key)?;
        let url = self.storage.url_for_key(key)?;
        Ok(logstore_with(
            self.storage.raw_store().clone(),
            &url,
            StorageConfig::default(),
        )?)
    }

    /// `e`, a write's failure, unless the frame it read was dropped meanwhile: the drop deleted
    /// its log or its cells under the write, which then failed reading a commit or a file that
    /// was gone. That is the frame not existing (any more), or a new frame of its name the
    /// statement may run against again, not an internal error.
    pub(crate) async fn unless_dropped(&self, read: &FrameSnapshot, e: Error) -> Error {
        // The fence's own verdicts (dropped; dropped and created again) say it already, and
        // a refused statement is refused for itself. What failed below it (a read, a cell, a
        // stopped commit) is said as the drop when the frame was dropped meanwhile.
        if !matches!(
            e,
            Error::Delta(_)
                | Error::Gone(_)
                | Error::ObjectStore(_)
                | Error::Parquet(_)
                | Error::DataFusion(_)
                | Error::Internal(_)
        ) {
            return e;
        }
        match crate::catalog::Catalog::new(self.storage.clone())
            .frame_marker(&read.frame)
            .await
        {
            Ok(Some(m)) if m.id == read.incarnation => e,
            Ok(Some(_)) => Error::Conflict {
                frame: read.frame.to_string(),
                detail: "it was dropped and created again while this statement ran; nothing \
                         was committed, run it again"
                    .into(),
            },
            Ok(None) => Error::NotFound {
                kind: crate::ObjectKind::Frame,
                name: format!(
                    "{} (it was dropped while this statement ran; nothing was committed)",
                    read.frame
                ),
            },
            Err(_) => e,
        }
    }

    /// `outcome`, a failure said as [`Ledger::unless_dropped`] says it.
    pub(crate) async fn unless_dropped_in<T>(
        &self,
        read: &FrameSnapshot,
        outcome: Result<T>,
    ) -> Result<T> {
        match outcome {
            Err(e) => Err(self.unless_dropped(read, e).await),
            done => done,
        }
    }

    /// Whether the frame's log has begun: its first commit, or a checkpoint (after which early
    /// commits may be cleaned up). A log without either holds only what a drop left behind
    /// while a creation of the name is under way.
    pub(crate) async fn log_began(&self, frame: &FrameRef) -> Result<bool> {
        use object_store::ObjectStoreExt;
        let log_store = self.log_store(frame)?;
        if version_exists(log_store.as_ref(), 0).await? {
            return Ok(true);
        }
        let last = log_store.log_path().clone().join("_last_checkpoint");
        match log_store.object_store(None).head(&last).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// `frame`'s log as it stands. Read from the state this node knows of it, whichever frame
    /// of the name that was read for, brought up to date: a drop and a create of the name each
    /// read the log, and a full replay of a long one costs tens of milliseconds. A known state
    /// counts only while its version is still in the log (a log that did not load is deleted
    /// and begun again).
    pub(crate) async fn log_of(&self, frame: &FrameRef) -> Result<Log> {
        let log_store = self.log_store(frame)?;
        let known = self
            .cache
            .lock()
            .expect("ledger cache")
            .get(frame)
            .map(|k| k.state.clone());
        if let Some(mut state) = known
            && commit_or_checkpoint_exists(log_store.as_ref(), state.version()).await?
        {
            match state.update(log_store.as_ref(), None).await {
                Ok(()) => {
                    self.keep_log(frame, &state);
                    return Ok(Log::Loaded(Box::new(state)));
                }
                Err(e) if storage_trouble(&e) => return Err(e.into()),
                // Read again from the start.
                Err(_) => {}
            }
        }
        if !self.has_leftovers(frame).await? {
            return Ok(Log::Missing);
        }
        match DeltaTableState::try_new(log_store.as_ref(), None).await {
            Ok(state) => {
                self.keep_log(frame, &state);
                Ok(Log::Loaded(Box::new(state)))
            }
            Err(e) if storage_trouble(&e) => Err(e.into()),
            Err(e) => Ok(Log::Unreadable(e)),
        }
    }

    /// Make `state` the known state of `frame`'s log, tagged with the incarnation it records
    /// (as a snapshot's is with the one it was read for, which is the same).
    pub(crate) fn keep_log(&self, frame: &FrameRef, state: &DeltaTableState) {
        let tag = Self::incarnation_of(state).unwrap_or_default().to_string();
        self.remember(frame, &tag, state.clone());
    }

    /// Whether any object exists under the frame's root (a leftover of an interrupted drop or
    /// create).
    pub async fn has_leftovers(&self, frame: &FrameRef) -> Result<bool> {
        Ok(!self
            .storage
            .list(&paths::frame_root(frame).join("_delta_log"))
            .await?
            .is_empty())
    }

    /// Drop what this node knows of `frame`'s log (its log was removed).
    pub(crate) fn forget(&self, frame: &FrameRef) {
        self.cache.lock().expect("ledger cache").remove(frame);
    }

    /// Create the Delta table of a new frame: version 0 records its schema and layout together
    /// with `adds`, the cells already written, so the frame appears with its first rows or not
    /// at all. Version 0 also records `incarnation` (the catalog marker it belongs to,
    /// [`INCARNATION_PROPERTY`]), which says whose a version 0 is when the outcome of its
    /// commit is unclear.
    pub async fn create_table(
        &self,
        frame: &FrameRef,
        incarnation: &str,
        shape: &NewShape,
        adds: Vec<Add>,
    ) -> Result<Created> {
        let NewShape {
            partition_columns,
            cluster_by,
            ..
        } = shape;
        let delta_schema = shape.validate()?;
        // After the versions of a frame dropped before under the name, if its log is there
        // ([`crate::retire`]).
        let first = match self.log_of(frame).await? {
            Log::Missing => 0,
            Log::Unreadable(e) => return Ok(Created::Unreadable(e.into())),
            Log::Loaded(state) if Self::incarnation_of(&state) == Some(incarnation) => {
                return self
                    .snapshot_from_state(frame, incarnation, *state, None)
                    .map(Created::Ours);
            }
            Log::Loaded(state) => state.version() + 1,
        };
        // Our own properties (`apiary.*`) are not ones delta-rs knows.
        let mut configuration = HashMap::from([(
            INCARNATION_PROPERTY.to_string(),
            Some(incarnation.to_string()),
        )]);
        if first > 0 {
            configuration.insert(SINCE_PROPERTY.to_string(), Some(first.to_string()));
        }
        if !cluster_by.is_empty() {
            configuration.insert(
                CLUSTER_BY_PROPERTY.to_string(),
                Some(cluster_property(cluster_by)),
            );
        }
        let create = CreateBuilder::new()
            .with_raise_if_key_not_exists(false)
            .with_configuration(configuration);
        // That version only: delta-rs would otherwise rebase a create that lost the race onto
        // the winner's table, as a commit at version 1 that records its own schema over the
        // winner's (two loaders creating one frame at once left two CREATE TABLE commits).
        // And only while the name is this creation's: a creator whose name was dropped (or
        // taken over) must not replace the frame created under it since.
        let log_store = crate::commit_hooks::fenced(
            crate::commit_hooks::only_at(self.log_store(frame)?, first),
            self.storage.clone(),
            frame.clone(),
            incarnation.to_string(),
        );
        let created = create
            .with_log_store(log_store)
            .with_table_name(frame.name.as_str())
            .with_columns(delta_schema.fields().cloned())
            .with_partition_columns(partition_columns.to_vec())
            .with_configuration_property(
                deltalake::TableProperty::CheckpointInterval,
                Some(self.config.checkpoint_interval.max(1).to_string()),
            )
            // Row-level changes and OPTIMIZE (delta-rs) write cells of the same target size as
            // our own writes.
            .with_configuration_property(
                deltalake::TableProperty::TargetFileSize,
                Some(self.config.cell_target_bytes.max(1).to_string()),
            )
            // Over a dropped frame's log, a replacing commit that also removes its cells.
            .with_save_mode(match first {
                0 => SaveMode::ErrorIfExists,
                _ => SaveMode::Overwrite,
            })
            .with_actions(adds.into_iter().map(Action::Add))
            .await;
        match created {
            Ok(table) => match table.snapshot() {
                Ok(state) => self
                    .snapshot_from_state(frame, incarnation, state.clone(), None)
                    .map(Created::Ours),
                // Committed, but not loaded: the cells must stay.
                Err(e) => Ok(Created::Unsure(e.into())),
            },
            // Lost the race to the version, or delta-rs found a table there before committing
            // (an error it does not export), or an error after the commit itself (delta-rs
            // loads the table it wrote; a retried conditional put may find its own object): the
            // commit at that version, if there is one, says whose it is.
            Err(e) => match self.commit_at(frame, first).await {
                Ok(Some(commit)) if String::from_utf8_lossy(&commit).contains(incarnation) => {
                    warn!(frame = %frame, error = %e, first, "the first version was committed despite an error");
                    match self.snapshot(frame, incarnation, Some(first as i64)).await {
                        Ok(state) => Ok(Created::Ours(state)),
                        Err(load) => Ok(Created::Unsure(load)),
                    }
                }
                Ok(Some(commit)) => Ok(Created::Foreign {
                    version: first,
                    commit: String::from_utf8_lossy(&commit).into_owned(),
                }),
                // delta-rs could not load the table it had just committed, whose log is gone
                // now: a DROP (of the frame's box, say) took it meanwhile.
                Ok(None)
                    if matches!(e, DeltaTableError::NotATable(_))
                        || e.to_string().contains("File not found")
                        || e.to_string().contains("No files in log segment")
                        // The frame's folder itself, removed under delta-rs as it loaded
                        // what it wrote (a local root).
                        || e.to_string().contains("Invalid table location") =>
                {
                    Err(Error::Conflict {
                        frame: frame.to_string(),
                        detail: "it was dropped while being created; retry".into(),
                    })
                }
                Ok(None) => match Error::from(e) {
                    // The fence: the name is no longer this creation's.
                    Error::NotFound { .. } | Error::Conflict { .. } => Err(Error::Conflict {
                        frame: frame.to_string(),
                        detail: "it was dropped while being created; retry".into(),
                    }),
                    other => Err(other),
                },
                Err(check) => Ok(Created::Unsure(Error::Internal(format!(
                    "creating {frame} failed ({e}), and whether its first commit landed is \
                     unknown ({check})"
                )))),
            },
        }
    }

    /// The bytes of commit `version` of `frame`'s log, if it exists.
    async fn commit_at(&self, frame: &FrameRef, version: u64) -> Result<Option<bytes::Bytes>> {
        let log_store = self.log_store(frame)?;
        Ok(log_store.read_commit_entry(version).await?)
    }

    /// The catalog marker id that version 0 of `state`'s table recorded; `None` for a table
    /// created before Apiary recorded it, or by another writer.
    pub(crate) fn incarnation_of(state: &DeltaTableState) -> Option<&str> {
        state
            .metadata()
            .configuration()
            .get(INCARNATION_PROPERTY)
            .map(String::as_str)
    }

    fn snapshot_from_state(
        &self,
        frame: &FrameRef,
        incarnation: &str,
        state: DeltaTableState,
        external: Option<&Path>,
    ) -> Result<FrameSnapshot> {
        crate::shape::readable(&state, &frame.to_string())?;
        let schema = schema::from_delta(state.schema().as_ref())?;
        let served = schema::served_schema(&schema);
        let partition_columns = state.metadata().partition_columns().to_vec();
        Ok(FrameSnapshot {
            frame: frame.clone(),
            incarnation: incarnation.to_string(),
            state,
            schema,
            served,
            partition_columns,
            root: external.cloned().unwrap_or_else(|| self.root(frame)),
            reshape: None,
            read_only: external.is_some(),
            historic: false,
        })
    }

    /// Load a frame at `version`, or at its latest version. Latest loads refresh a cached state
    /// incrementally instead of replaying the log.
    pub async fn snapshot(
        &self,
        frame: &FrameRef,
        incarnation: &str,
        version: Option<i64>,
    ) -> Result<FrameSnapshot> {
        self.snapshot_in(frame, incarnation, version, None).await
    }

    /// As [`Ledger::snapshot`], for an external frame whose Delta table is at `external` (a
    /// key in the raw store): a read-only snapshot.
    pub async fn snapshot_in(
        &self,
        frame: &FrameRef,
        incarnation: &str,
        version: Option<i64>,
        external: Option<&Path>,
    ) -> Result<FrameSnapshot> {
        let span = info_span!("frame_snapshot", frame = %frame, version = ?version);
        async move {
            let log_store = match external {
                Some(key) => self.external_log_store(key)?,
                None => self.log_store(frame)?,
            };
            let cached = self
                .cache
                .lock()
                .expect("ledger cache")
                .get(frame)
                .filter(|k| k.incarnation == incarnation)
                .cloned();
            let wanted = version.map(|v| v as u64);
            let mut listed = Instant::now();
            let state = match (cached, wanted) {
                (Some(k), Some(v)) if k.state.version() == v => k.state,
                (Some(k), None)
                    if k.listed.elapsed() < TRUST_NEXT_COMMIT_CHECK
                        && !next_commit_exists(log_store.as_ref(), k.state.version()).await? =>
                {
                    listed = k.listed;
                    k.state
                }
                (Some(mut k), None) => {
                    k.state.update(log_store.as_ref(), None).await?;
                    k.state
                }
                // A version with no commit is not looked for: delta's kernel searches the log
                // backwards from it, a thousand versions a listing, so `VERSION AS OF 2^32` held
                // a core for hours (millions of listings on S3), past the query's deadline.
                (ref known, Some(v))
                    if known.as_ref().is_none_or(|k| v > k.state.version())
                        && !commit_or_checkpoint_exists(log_store.as_ref(), v).await? =>
                {
                    return Err(Error::NotFound {
                        kind: crate::error::ObjectKind::Frame,
                        name: format!("{frame} at version {v}"),
                    });
                }
                (_, wanted) => DeltaTableState::try_new(log_store.as_ref(), wanted)
                    .await
                    .map_err(|e| match (e, wanted) {
                        (DeltaTableError::InvalidVersion(v), _) => Error::NotFound {
                            kind: crate::error::ObjectKind::Frame,
                            name: format!("{frame} at version {v}"),
                        },
                        // A version past the newest, or older than the log keeps (its commit
                        // cleaned up: no log segment ends there).
                        (
                            DeltaTableError::KernelError(_)
                            | DeltaTableError::Kernel { .. }
                            | DeltaTableError::NotATable(_),
                            Some(v),
                        ) => Error::NotFound {
                            kind: crate::error::ObjectKind::Frame,
                            name: format!("{frame} at version {v}"),
                        },
                        // A table needing a reader feature the kernel lacks.
                        (
                            e @ (DeltaTableError::KernelError(_) | DeltaTableError::Kernel { .. }),
                            None,
                        ) if e.to_string().contains("is not supported") => {
                            Error::Unsupported(format!("a Delta reader feature of {frame} ({e})"))
                        }
                        (other, _) => other.into(),
                    })?,
            };
            // A version committed under another marker of the name (a version 0 whose creator
            // committed after a drop and a new reservation; a frame dropped before this one
            // was created under its name) is no frame of this one: never cached as one.
            if external.is_none() && Self::incarnation_of(&state).is_some_and(|i| i != incarnation)
            {
                return Err(Error::NotFound {
                    kind: crate::error::ObjectKind::Frame,
                    name: match version {
                        Some(v) => format!(
                            "{frame} at version {v} (it was dropped and created again since)"
                        ),
                        None => format!("{frame} (it is being created: retry)"),
                    },
                });
            }
            if version.is_none() {
                let mut cache = self.cache.lock().expect("ledger cache");
                let newer = cache.get(frame).is_none_or(|k| {
                    k.incarnation != incarnation || k.state.version() <= state.version()
                });
                if newer {
                    cache.insert(
                        frame.clone(),
                        Known {
                            incarnation: incarnation.to_string(),
                            state: state.clone(),
                            listed,
                        },
                    );
                }
            }
            self.snapshot_from_state(frame, incarnation, state, external)
        }
        .instrument(span)
        .await
    }

    /// How cells are written: the configured codec, row groups of [`ROW_GROUP_ROWS`], page statistics.
    pub(crate) fn writer_properties(&self) -> Result<WriterProperties> {
        Ok(WriterProperties::builder()
            .set_compression(self.config.compression.parquet()?)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_created_by(format!("apiary {}", env!("CARGO_PKG_VERSION")))
            .build())
    }

    /// Make `state` the latest known state of `frame`, unless a newer one is known already.
    pub(crate) fn remember(&self, frame: &FrameRef, incarnation: &str, state: DeltaTableState) {
        let mut cache = self.cache.lock().expect("ledger cache");
        if cache
            .get(frame)
            .is_none_or(|k| k.incarnation != incarnation || k.state.version() < state.version())
        {
            cache.insert(
                frame.clone(),
                Known {
                    incarnation: incarnation.to_string(),
                    state,
                    listed: Instant::now(),
                },
            );
        }
    }

    /// Delete cells of `frame` that were written and never committed.
    pub(crate) async fn discard_cells(&self, frame: &FrameRef, adds: &[Add]) {
        match self.log_store(frame) {
            Ok(store) => delete_cells(&store.object_store(None), adds).await,
            Err(e) => warn!(frame = %frame, error = %e, "uncommitted cells left for VACUUM"),
        }
    }

    /// Delete the cells recorded in `written`, put for `frame` and never committed.
    pub(crate) async fn discard_written(&self, frame: &FrameRef, written: &Written) {
        match self.log_store(frame) {
            Ok(store) => written.delete_from(&store.object_store(None)).await,
            Err(e) => warn!(frame = %frame, error = %e, "uncommitted cells left for VACUUM"),
        }
    }

    /// A writer for new cells of `snapshot`'s frame.
    pub fn writer(&self, snapshot: &FrameSnapshot) -> Result<CellWriter> {
        snapshot.writable()?;
        self.cell_writer(
            &snapshot.frame,
            &snapshot.schema,
            &snapshot.partition_columns,
            Written::default(),
        )
    }

    /// A writer for cells of `frame` with `schema` and `partition_columns`, whose table may not
    /// exist yet, recording into `written` each cell it puts.
    pub(crate) fn cell_writer(
        &self,
        frame: &FrameRef,
        schema: &SchemaRef,
        partition_columns: &[String],
        written: Written,
    ) -> Result<CellWriter> {
        let store = self.log_store(frame)?.object_store(None);
        let recording: ObjectStoreRef =
            Arc::new(RecordingStore::new(store.clone(), written.clone()));
        let props = self.writer_properties()?;
        let config = WriterConfig::new(
            schema.clone(),
            partition_columns.to_vec(),
            Some(props),
            NonZeroU64::new(self.config.cell_target_bytes),
            None,
            Default::default(),
            None,
        );
        Ok(CellWriter {
            inner: Some(DeltaWriter::new(recording, config)),
            store,
            written,
            schema: schema.clone(),
            partition_columns: partition_columns.to_vec(),
            rows: 0,
        })
    }

    /// Commit new cells. `overwrite` also removes every cell of `read` (replace semantics).
    /// `user` is recorded in the commit. Returns the committed version.
    pub async fn commit(
        &self,
        read: &FrameSnapshot,
        adds: Vec<Add>,
        overwrite: bool,
        user: Option<&str>,
    ) -> Result<i64> {
        let log_store = self.writing_log_store(read)?;
        let mut actions: Vec<Action> = Vec::with_capacity(adds.len() + 2);
        if let Some(reshape) = &read.reshape {
            actions.extend(reshape.iter().cloned());
        }
        if overwrite {
            actions.extend(
                read.state
                    .log_data()
                    .iter()
                    .map(|f| Action::Remove(f.remove_action(true))),
            );
        }
        let cells = adds.len();
        actions.extend(adds.into_iter().map(Action::Add));
        let partition_by =
            (!read.partition_columns.is_empty()).then(|| read.partition_columns.clone());
        let operation = DeltaOperation::Write {
            mode: if overwrite {
                SaveMode::Overwrite
            } else {
                SaveMode::Append
            },
            partition_by,
            predicate: None,
        };
        // An append read nothing, so a row-level change (or OPTIMIZE) that committed since it
        // started cannot invalidate it, although Delta's checker (serializable by default) says
        // so: it is committed again on the newer state. A replace, or a change of the frame's
        // shape meanwhile, is a real conflict.
        // An append that widens the frame's schema is blind too: its new metadata holds on any
        // newer version whose shape is still the one it read (checked at each rebase below).
        let blind = !overwrite;
        // And a replace commits only on the version it read. delta-rs's checker lets it land on
        // a newer one when what landed meanwhile is an append (a commit without a read predicate
        // checks no new cells) or a compaction (its removes change no data): the replace then
        // left those cells in place, acknowledged. A TRUNCATE racing an OPTIMIZE kept every row;
        // an INSERT OVERWRITE doubled them; a CREATE OR REPLACE with a new shape kept an old-shape
        // cell no reader could read.
        let log_store = match blind {
            true => log_store,
            false => crate::commit_hooks::only_at(log_store, read.version() as u64 + 1),
        };
        let mut base = read.state.clone();
        let mut rebased = 0usize;
        let finalized = loop {
            let props = match user {
                Some(u) => self.commit_properties(u),
                None => CommitProperties::default().with_max_retries(self.config.commit_retries),
            };
            match CommitBuilder::from(props)
                .with_actions(actions.clone())
                .build(Some(&base), log_store.clone(), operation.clone())
                .await
            {
                Ok(f) => break f,
                Err(DeltaTableError::Transaction {
                    source:
                        TransactionError::CommitConflict(
                            ConflictError::ConcurrentDeleteRead
                            | ConflictError::ConcurrentDeleteDelete
                            | ConflictError::ConcurrentAppend
                            // A RESTORE or a CLUSTER BY: new metadata, maybe the same shape.
                            | ConflictError::MetadataChanged,
                        ),
                }) if blind && rebased < self.config.commit_retries => {
                    rebased += 1;
                    if let Err(e) = base.update(log_store.as_ref(), None).await {
                        return Err(self.unless_dropped(read, e.into()).await);
                    }
                    // Rebased past every commit since: one of them may have changed the frame's
                    // shape (ADD COLUMN, a replace with new columns), which cells written in
                    // the shape read must not land on, nor an older schema be written back.
                    // Or ended it: a drop's commit, or the first of a frame created under
                    // the name since ([`crate::retire`]), whatever its shape.
                    if Self::incarnation_of(&base) != Self::incarnation_of(&read.state) {
                        let ended = Error::Gone(format!(
                            "{} was dropped while this statement wrote it; nothing was committed",
                            read.frame
                        ));
                        return Err(self.unless_dropped(read, ended).await);
                    }
                    if reshaped_since(&read.state, &base, read.reshape.is_some()) {
                        return Err(Error::Conflict {
                            frame: read.frame.to_string(),
                            detail: format!(
                                "its columns or partitioning changed since this write read \
                                 version {}; run it again",
                                read.version()
                            ),
                        });
                    }
                    debug!(frame = %read.frame, rebased, "append rebased on a newer version");
                }
                Err(DeltaTableError::Transaction {
                    source: TransactionError::CommitConflict(c),
                }) => {
                    return Err(Error::Conflict {
                        frame: read.frame.to_string(),
                        detail: format!(
                            "{c} (this write read version {}); run it again",
                            read.version()
                        ),
                    });
                }
                Err(other) => return Err(self.unless_dropped(read, other.into()).await),
            }
        };
        let version = finalized.version() as i64;
        info!(frame = %read.frame, version, cells, overwrite, "committed");
        // The next latest read starts from the committed state.
        self.remember(&read.frame, &read.incarnation, finalized.snapshot());
        debug!(version, "cache updated");
        Ok(version)
    }
}

/// Whether `e`, from loading a log, is storage failing (a timeout, a refusal, an object gone
/// while the log was read), never the log itself: delta's kernel wraps those in its own error,
/// whose text says so. Such a log is not unreadable, and nothing is cleared for it.
pub(crate) fn storage_trouble(e: &DeltaTableError) -> bool {
    matches!(e, DeltaTableError::ObjectStore { .. })
        || e.to_string().to_ascii_lowercase().contains("object store")
}

/// Whether the frame changed shape between two states: its schema, partitioning or protocol;
/// and with `metadata` (a commit that records metadata of its own, which would undo theirs),
/// its properties too.
fn reshaped_since(read: &DeltaTableState, now: &DeltaTableState, metadata: bool) -> bool {
    let (a, b) = (read.metadata(), now.metadata());
    read.schema() != now.schema()
        || a.partition_columns() != b.partition_columns()
        || read.protocol() != now.protocol()
        || (metadata && a.configuration() != b.configuration())
}

/// Whether commit `version + 1` exists in the log: one existence check (a HEAD on S3).
async fn next_commit_exists(log_store: &dyn LogStore, version: u64) -> Result<bool> {
    version_exists(log_store, version + 1).await
}

/// Whether version `version` can be read without a search: its commit is in the log, or its
/// checkpoint is (the commit itself may have been cleaned up since). Two existence checks at
/// most.
async fn commit_or_checkpoint_exists(log_store: &dyn LogStore, version: u64) -> Result<bool> {
    use object_store::ObjectStoreExt;
    if version_exists(log_store, version).await? {
        return Ok(true);
    }
    let checkpoint = log_store
        .log_path()
        .clone()
        .join(format!("{version:020}.checkpoint.parquet").as_str());
    match log_store.object_store(None).head(&checkpoint).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether commit `version` exists in the log.
async fn version_exists(log_store: &dyn LogStore, version: u64) -> Result<bool> {
    use object_store::ObjectStoreExt;
    let next = deltalake::logstore::commit_uri_from_version(Some(version));
    match log_store.object_store(None).head(&next).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
